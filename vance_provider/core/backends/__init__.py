"""One backend per vendor API, all behind :class:`Backend`."""

from .base import Backend
from .open_api import OpenApiBackend
from .visioncraft import VisionCraftBackend
from .web_api import WebApiBackend

__all__ = ["Backend", "OpenApiBackend", "VisionCraftBackend", "WebApiBackend"]
