"""Local checks of inputs before upload: format by magic bytes, size, megapixels, media type."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import fsspec

from .errors import (
    FileTooLargeError,
    MediaMismatchError,
    TooManyPixelsError,
    UnreadableInputError,
    UnsupportedFormatError,
)
from .models import ApiName, Media
from .storage import broken_link, read_head

VIDEO_FORMATS = {"mp4", "mov", "mkv", "webm", "avi"}


@dataclass(frozen=True)
class InputInfo:
    url: str
    format: str
    media: Media
    size: int
    width: int | None = None
    height: int | None = None
    duration: float | None = None  # seconds, for video
    sha256: str | None = None  # of the bytes, when asked for


def sniff(head: bytes) -> str | None:
    """The file type by its magic bytes, whatever its name says (the project's one sniffer)."""
    if head[:3] == b"\xff\xd8\xff":
        return "jpg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
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


def check_input(
    url: str,
    size: int,
    media: Media,
    api: ApiName,
    storage_options: dict[str, Any] | None = None,
    *,
    want_sha256: bool = False,
) -> InputInfo:
    """Raise a typed error naming the file and the limit, or describe the input.

    The formats and limits are those of ``api`` (its backend's :class:`~.models.Capabilities`).
    ``want_sha256``: also the SHA-256 of its bytes (for the result cache), hashed while the image
    is decoded, so it costs no second read."""
    from .backends import capabilities_of  # the backends read this module's sniffer: import late

    caps = capabilities_of(api)
    if size == 0:
        if (why := broken_link(url)) is not None:
            raise UnreadableInputError(why, source=url, hint="fix or remove the link")
        raise UnreadableInputError("the file is empty", source=url)
    try:
        head = read_head(url, 64, storage_options)
    except (OSError, ValueError) as exc:
        raise UnreadableInputError(f"cannot read the file ({type(exc).__name__})", source=url) from None
    fmt = sniff(head)
    if fmt is None:
        raise UnsupportedFormatError(
            "the content is not a supported image or video",
            source=url,
            hint="images must be JPG or PNG (web API) or JPG/PNG/WEBP (Open API); "
            "videos MP4/MOV/MKV/WEBM/AVI",
        )
    is_video = fmt in VIDEO_FORMATS
    if media == "image" and is_video:
        raise MediaMismatchError(
            f"this is a {fmt} video but the tool takes images",
            source=url,
            hint="use a video tool such as video_upscale",
        )
    if media == "video" and not is_video:
        raise MediaMismatchError(
            f"this is a {fmt} image but the tool takes videos",
            source=url,
            hint="use an image tool such as upscale",
        )
    if is_video:
        if caps.max_video_bytes is not None and size > caps.max_video_bytes:
            raise FileTooLargeError(
                f"{size} bytes is over the {caps.max_video_bytes}-byte upload limit", source=url
            )
        width, height, duration = probe_video(url, fmt, storage_options)
        digest = _sha256(url, storage_options) if want_sha256 else None
        return InputInfo(url, fmt, "video", size, width, height, duration, digest)
    allowed = caps.image_formats
    if fmt not in allowed:
        raise UnsupportedFormatError(
            f"{fmt} is not accepted by the {api} API",
            source=url,
            hint="convert it to " + " or ".join(a.upper() for a in allowed),
        )
    limit = caps.max_image_bytes
    if limit is not None and size > limit:
        raise FileTooLargeError(
            f"{size} bytes is over the {limit // (1024 * 1024)} MB limit of the {api} API",
            source=url,
            hint="compress or resize it",
        )
    (width, height), digest = decode_image(url, fmt, storage_options, want_sha256=want_sha256)
    pixels = caps.max_image_pixels
    if pixels is not None and width * height > pixels:
        raise TooManyPixelsError(
            f"{width}x{height} is {width * height / 1e6:.1f} MP, over the {pixels / 1e6:g} MP limit",
            source=url,
            hint=f"resize it below {pixels / 1e6:g} megapixels",
        )
    return InputInfo(url, fmt, "image", size, width, height, sha256=digest)


def _sha256(url: str, storage_options: dict[str, Any] | None) -> str:
    from .cache import sha256_of  # the cache module reads this one's sniffer: import late

    return sha256_of(url, storage_options)


def decode_image(
    url: str, fmt: str, storage_options: dict[str, Any] | None = None, *, want_sha256: bool = False
) -> tuple[tuple[int, int], str | None]:
    """Decode the image to judge it (not its last bytes: a phone's Motion Photo carries a video
    after the JPEG, and a PNG may have a stray byte after its end). Returns its size.

    Memory stays small: a JPEG is decoded at 1/8 scale (every byte is still read and checked),
    a PNG's chunks are verified (CRC) without inflating the pixels.
    """
    from PIL import Image, UnidentifiedImageError

    from .cache import HashingReader

    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as raw:
            fh: Any = HashingReader(raw) if want_sha256 else raw
            with Image.open(fh) as img:
                size = img.size
                if fmt == "png":
                    img.verify()
                else:
                    if fmt == "jpg":
                        img.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
                    img.load()
            return size, fh.hexdigest() if want_sha256 else None
    except Image.DecompressionBombError:
        raise TooManyPixelsError(
            "the image has too many pixels to decode safely (a decompression bomb?)",
            source=url,
            hint="resize it to a realistic size",
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise UnreadableInputError(
            f"the {fmt.upper()} file is truncated or corrupt ({exc})", source=url
        ) from None


def probe_video(
    url: str, fmt: str, storage_options: dict[str, Any] | None = None
) -> tuple[int | None, int | None, float | None]:
    """Width, height and duration (s) of a video, from its container header; ``None`` if unknown.

    MP4/MOV headers are read directly (a few small reads); other containers need PyAV.
    """
    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as fh:
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
