"""One backend per vendor API, all behind :class:`Backend`."""

from .base import Backend
from .capabilities import capabilities_of
from .open.backend import OpenApiBackend
from .visioncraft.backend import VisionCraftBackend
from .web.backend import WebApiBackend

#: The backend of each API, by its name.
BACKENDS: dict[str, type[Backend]] = {b.api: b for b in (WebApiBackend, OpenApiBackend, VisionCraftBackend)}


__all__ = ["BACKENDS", "Backend", "OpenApiBackend", "VisionCraftBackend", "WebApiBackend", "capabilities_of"]
