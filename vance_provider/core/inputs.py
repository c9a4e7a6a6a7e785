"""Local checks of inputs before upload: format by magic bytes, size, megapixels, media type."""

from __future__ import annotations

import io
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
from .storage import read_head, read_tail

WEB_MAX_BYTES = 10 * 1024 * 1024
WEB_MAX_PIXELS = 34_000_000
OPEN_MAX_IMAGE_BYTES = 200 * 1024 * 1024
OPEN_MAX_VIDEO_BYTES = 5261334937
VIDEO_FORMATS = {"mp4", "mov", "mkv", "webm", "avi"}


@dataclass(frozen=True)
class InputInfo:
    url: str
    format: str
    media: Media
    size: int
    width: int | None = None
    height: int | None = None


def sniff(head: bytes) -> str | None:
    """The file type by its magic bytes, whatever its name says."""
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


def _truncated(fmt: str, tail: bytes) -> bool:
    if fmt == "jpg":
        return not tail.rstrip(b"\x00").endswith(b"\xff\xd9")
    if fmt == "png":
        return not tail.endswith(b"IEND\xaeB`\x82")
    return False


def check_input(
    url: str, size: int, media: Media, api: ApiName, storage_options: dict[str, Any] | None = None
) -> InputInfo:
    """Raise a typed error naming the file and the limit, or describe the input."""
    if size == 0:
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
        if size > OPEN_MAX_VIDEO_BYTES:
            raise FileTooLargeError(
                f"{size} bytes is over the {OPEN_MAX_VIDEO_BYTES}-byte upload limit", source=url
            )
        return InputInfo(url, fmt, "video", size)
    allowed = ("jpg", "png") if api == "web" else ("jpg", "png", "webp")
    if fmt not in allowed:
        raise UnsupportedFormatError(
            f"{fmt} is not accepted by the {api} API",
            source=url,
            hint="convert it to " + " or ".join(a.upper() for a in allowed),
        )
    limit = WEB_MAX_BYTES if api == "web" else OPEN_MAX_IMAGE_BYTES
    if size > limit:
        raise FileTooLargeError(
            f"{size} bytes is over the {limit // (1024 * 1024)} MB limit of the {api} API",
            source=url,
            hint="compress or resize it",
        )
    if _truncated(fmt, read_tail(url, size, 16, storage_options)):
        raise UnreadableInputError(f"the {fmt.upper()} file is truncated or corrupt", source=url)
    width, height = _dimensions(url, storage_options)
    if api == "web" and width * height > WEB_MAX_PIXELS:
        raise TooManyPixelsError(
            f"{width}x{height} is {width * height / 1e6:.1f} MP, over the 34 MP limit",
            source=url,
            hint="resize it below 34 megapixels",
        )
    return InputInfo(url, fmt, "image", size, width, height)


def _dimensions(url: str, storage_options: dict[str, Any] | None) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as fh:
            # Pillow reads only the header to learn the size.
            data = fh.read(256 * 1024)
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except (UnidentifiedImageError, OSError, ValueError):
        raise UnreadableInputError("the image header cannot be decoded", source=url) from None
