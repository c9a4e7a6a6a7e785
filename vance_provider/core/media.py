"""Media by their bytes: the file type by its magic number (the project's one sniffer), image
and video probes, and the extensions of media types. Used by inputs, the cache and the backends."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from .state.storage import open_ranged

if TYPE_CHECKING:
    import httpx

VIDEO_FORMATS = {"mp4", "mov", "mkv", "webm", "avi"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def sniff(head: bytes) -> str | None:
    """The file type by its magic bytes, whatever its name says (the project's one sniffer)."""
    if head[:3] == b"\xff\xd8\xff":
        return "jpg"
    if head[:8] == PNG_SIGNATURE:
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[4:8] == b"ftyp":
        return "mov" if head[8:10] == b"qt" else "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm" if b"webm" in head[:64] else "mkv"
    return None


def probe_video(
    url: str, fmt: str, storage_options: dict[str, Any] | None = None
) -> tuple[int | None, int | None, float | None]:
    """Width, height and duration (s) of a video, from its container header; ``None`` if unknown.

    MP4/MOV headers are read directly (a few small reads: on an object store, small ranged
    reads, never the whole video); other containers need PyAV.
    """
    try:
        with open_ranged(url, storage_options) as fh:
            if fmt in ("mp4", "mov"):
                return _probe_isobmff(fh)
            try:
                import av
            except ImportError:
                return None, None, None
            with av.open(fh) as container:
                stream = container.streams.video[0]
                duration = container.duration / 1e6 if container.duration else None
                return stream.width, stream.height, duration
    except Exception:  # an unreadable header: the service measures the file itself
        return None, None, None


def _boxes(fh: Any, end: int) -> Any:
    """(type, payload start, payload end) of the ISO-BMFF boxes from the current position to ``end``."""
    while fh.tell() + 8 <= end:
        start = fh.tell()
        size, kind = struct.unpack(">I4s", fh.read(8))
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", fh.read(8))[0], 16
        elif size == 0:
            size = end - start
        if size < header:
            return
        yield kind, start + header, start + size
        fh.seek(start + size)


def _probe_isobmff(fh: Any) -> tuple[int | None, int | None, float | None]:
    end = fh.seek(0, 2)
    fh.seek(0)
    width = height = duration = None
    for kind, body, stop in _boxes(fh, end):
        if kind != b"moov":
            continue
        fh.seek(body)
        for sub, sbody, sstop in list(_boxes(fh, stop)):
            fh.seek(sbody)
            if sub == b"mvhd":
                version = fh.read(1)[0]
                fh.read(3 + (16 if version == 1 else 8))
                timescale = struct.unpack(">I", fh.read(4))[0]
                raw = fh.read(8 if version == 1 else 4)
                length = int.from_bytes(raw, "big")
                duration = length / timescale if timescale else None
            elif sub == b"trak":
                for tkind, tbody, _ in list(_boxes(fh, sstop)):
                    if tkind == b"tkhd" and not width:
                        fh.seek(tbody)
                        version = fh.read(1)[0]
                        fh.read(3 + (32 if version == 1 else 20) + 52)
                        w, h = struct.unpack(">II", fh.read(8))
                        width, height = (w >> 16) or None, (h >> 16) or None
        break
    return width, height, duration


EXT_BY_TYPE = {
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "video/mp4": "mp4",
    "video/quicktime": "mov",
    "image/gif": "gif",
}


MEDIA_EXTS = {"jpg", "jpeg", "png", "webp", "mp4", "mov", "gif"}


def _has_media_ext(url: str) -> bool:
    name = url.rsplit("/", 1)[-1]
    return "." in name and name.rsplit(".", 1)[1].lower() in MEDIA_EXTS


def ext_from_response(response: httpx.Response, default: str = "jpg") -> str:
    """The extension the ``Content-Type`` names (used only when the first bytes name none)."""
    ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
    return EXT_BY_TYPE.get(ctype, default)
