"""One backend per vendor API, all behind :class:`Backend`."""

from ..api.errors import ConfigurationError
from ..api.models import Capabilities
from .base import Backend
from .open.backend import OpenApiBackend
from .visioncraft.backend import VisionCraftBackend
from .web.backend import WebApiBackend

#: The backend of each API, by its name.
BACKENDS: dict[str, type[Backend]] = {b.api: b for b in (WebApiBackend, OpenApiBackend, VisionCraftBackend)}


def capabilities_of(api: str) -> Capabilities:
    """What the API named ``api`` can do (its backend's :class:`Capabilities`), without a client:
    for code that knows only an API's name (a manifest's, a tool call's)."""
    try:
        return BACKENDS[api].capabilities
    except KeyError:
        raise ConfigurationError(f"unknown API {api!r}", hint=f"use one of {', '.join(BACKENDS)}") from None


__all__ = ["BACKENDS", "Backend", "OpenApiBackend", "VisionCraftBackend", "WebApiBackend", "capabilities_of"]
