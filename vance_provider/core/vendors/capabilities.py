"""What each vendor API can do, by its name, without a client or a backend: for code that knows
only an API's name (a manifest's, a tool call's)."""

from ..api.errors import ConfigurationError
from ..api.models import Capabilities
from .open.capabilities import CAPABILITIES as OPEN
from .visioncraft.capabilities import CAPABILITIES as VISIONCRAFT
from .web.capabilities import CAPABILITIES as WEB

CAPABILITIES: dict[str, Capabilities] = {"web": WEB, "open": OPEN, "visioncraft": VISIONCRAFT}


def capabilities_of(api: str) -> Capabilities:
    """What the API named ``api`` can do (see :class:`Capabilities`)."""
    try:
        return CAPABILITIES[api]
    except KeyError:
        raise ConfigurationError(
            f"unknown API {api!r}", hint=f"use one of {', '.join(CAPABILITIES)}"
        ) from None
