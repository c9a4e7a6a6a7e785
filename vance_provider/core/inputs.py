"""Local checks of inputs before upload: format by magic bytes, size, megapixels, media type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .api.errors import (
    FileTooLargeError,
    MediaMismatchError,
    TooManyPixelsError,
    UnreadableInputError,
    UnsupportedFormatError,
)
from .api.models import ApiName, Media
from .media import VIDEO_FORMATS, decode_image, probe_video, sniff
from .state.storage import broken_link, read_head, sha256_of
from .vendors.capabilities import capabilities_of


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
    return sha256_of(url, storage_options)
