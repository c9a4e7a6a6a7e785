"""Local checks of inputs before upload: format by magic bytes, size, megapixels, media type, and
the file's structure (see :mod:`.media_check`): whole, or its header only when the upload's reader
checks the rest as it streams (a batch: each byte is read once)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fsspec.core import url_to_fs

from .api.errors import (
    FileTooLargeError,
    MediaMismatchError,
    TooManyPixelsError,
    UnreadableInputError,
    UnsupportedFormatError,
)
from .api.models import ApiName, Media
from .media import VIDEO_FORMATS, probe_video, sniff
from .media_check import CheckedRead
from .state.storage import CHUNK, broken_link, open_remote, read_range
from .vendors.capabilities import capabilities_of

HEAD_BYTES = 64 * 1024  # read at first: the format, and the header of almost every image
# Pillow's limit for a decompression bomb (2 x Image.MAX_IMAGE_PIXELS), whatever the API allows.
BOMB_PIXELS = 2 * 89_478_485


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

    @property
    def job_size(self) -> float | None:
        """What its job's length goes by: a video's seconds, an image's megapixels (None: not known)."""
        if self.media == "video":
            return self.duration or None
        return self.width * self.height / 1e6 if self.width and self.height else None


def check_input(
    url: str,
    size: int,
    media: Media,
    api: ApiName,
    storage_options: dict[str, Any] | None = None,
    *,
    want_sha256: bool = False,
    whole: bool = True,
) -> InputInfo:
    """Raise a typed error naming the file and the limit, or describe the input.

    The formats and limits are those of ``api`` (its backend's :class:`~.models.Capabilities`).
    ``whole``: read an image to its end and check its structure (JPEG markers, PNG chunks and
    CRCs, WebP chunks), as a single submit does. ``whole=False`` reads only its header (one
    small ranged read: format, size in pixels), and checks the whole file only when that read
    took it all: the upload's reader checks the rest as the bytes go (a truncated file aborts
    its upload before any job exists), so a batch reads each byte once.
    ``want_sha256``: also the SHA-256 of its bytes (for the result cache), in the same read as
    the structure's check (a whole read, videos included)."""

    caps = capabilities_of(api)
    if size == 0:
        if (why := broken_link(url)) is not None:
            raise UnreadableInputError(why, source=url, hint="fix or remove the link")
        raise UnreadableInputError("the file is empty", source=url)
    try:
        head = read_range(url, 0, min(size, HEAD_BYTES), storage_options)
    except (OSError, ValueError) as exc:
        raise UnreadableInputError(f"cannot read the file ({type(exc).__name__})", source=url) from None
    fmt = sniff(head[:64])
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
        digest = _read_rest(CheckedRead(url, fmt), head, storage_options) if want_sha256 else None
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
    read = CheckedRead(url, fmt)
    width, height = _header(read, head, size, storage_options)
    pixels = caps.max_image_pixels
    if pixels is not None and width * height > pixels:
        raise TooManyPixelsError(
            f"{width}x{height} is {width * height / 1e6:.1f} MP, over the {pixels / 1e6:g} MP limit",
            source=url,
            hint=f"resize it below {pixels / 1e6:g} megapixels",
        )
    if width * height > BOMB_PIXELS:
        raise TooManyPixelsError(
            f"{width}x{height} is too many pixels to decode safely (a decompression bomb?)",
            source=url,
            hint="resize it to a realistic size",
        )
    digest = None
    if whole or want_sha256 or read.size >= size:
        digest = _read_rest(read, b"", storage_options)
    return InputInfo(url, fmt, "image", size, width, height, sha256=digest if want_sha256 else None)


def _header(
    read: CheckedRead, head: bytes, size: int, storage_options: dict[str, Any] | None
) -> tuple[int, int]:
    """The image's size in pixels from its header: ``head``, and more ranged reads if the header
    is longer (a JPEG's metadata before its frame header)."""
    read.feed(head)
    step = HEAD_BYTES
    while read.dimensions is None and read.size < size:
        step *= 2
        try:
            more = read_range(read.url, read.size, min(size, read.size + step), storage_options)
        except (OSError, ValueError) as exc:
            raise UnreadableInputError(
                f"cannot read the file ({type(exc).__name__})", source=read.url
            ) from None
        if not more:
            break
        read.feed(more)
    if read.dimensions is None:
        read.finish()  # raises: the file ends before its header does
        raise UnreadableInputError(f"the {read.fmt} file gives no image size", source=read.url)
    return read.dimensions


def _read_rest(read: CheckedRead, head: bytes, storage_options: dict[str, Any] | None) -> str:
    """Feed ``read`` what it has not seen of its file (``head`` first), to the end: the SHA-256,
    once the structure is found whole."""
    read.feed(head)
    fs, path = url_to_fs(read.url, **(storage_options or {}))
    try:
        with open_remote(fs, path) as fh:
            fh.seek(read.size)
            while data := fh.read(CHUNK):
                read.feed(data)
    except (OSError, ValueError) as exc:
        raise UnreadableInputError(f"cannot read the file ({type(exc).__name__})", source=read.url) from None
    return read.finish()
