"""One backend per vendor API, all behind :class:`Backend`."""

from .base import Backend
from .open_api import OpenApiBackend
from .web_api import WebApiBackend

__all__ = ["Backend", "OpenApiBackend", "WebApiBackend"]
