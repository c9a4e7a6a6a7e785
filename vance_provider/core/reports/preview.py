"""Before/after previews of a batch: a few small thumbnails, bounded in size.

Two forms, for the two places a user looks:

- :func:`write_contact_sheet` writes one JPEG beside the outputs
  (``_vance_preview/_vance_contact_sheet.jpg``: a glob of the outputs does not match it, and the
  engine's own prefix keeps it out of every listing of inputs): a grid of input | output pairs
  with their names and sizes. An Airflow task returns its URL, a Dagster materialization
  links to it.
- :func:`thumbnail` and :func:`inline_image` make the small inline pictures (``data:`` URIs) of a
  Dagster materialization's Markdown metadata, which the Dagster face cuts to a byte budget.

Both read at most ``max_pairs`` inputs and outputs, each only when smaller than ``max_file_bytes``,
and draw nothing but thumbnails. Videos show their first frame when PyAV is installed. A picture
that cannot be read is left out; a preview never fails a batch. Turn previews off for private data
(the operator's and the dataset's settings say how).
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from ..state.manifest import ItemState, Manifest
from ..state.storage import join, write_bytes_atomic

log = logging.getLogger("vance_provider.preview")

#: Where the contact sheet goes, under the destination: a folder of its own, so that a glob of the
#: outputs (``*.jpg``) never matches it, and a name the engine's listings skip (a destination
#: used as another batch's source).
PREVIEW_NAME = "_vance_preview/_vance_contact_sheet.jpg"
MAX_PAIRS = 6
THUMB_SIDE = 160  # pixels: the longer side of a thumbnail on the contact sheet
INLINE_SIDE = 96  # pixels: of an inline thumbnail in Markdown
MAX_FILE_BYTES = 64 << 20  # inputs or outputs larger than this are not read for a preview
MAX_INLINE_BYTES = 64_000  # the Markdown table's size, thumbnails included
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".m4v", ".avi")
_PAD, _CAPTION = 8, 30  # pixels


@dataclass(frozen=True)
class Pair:
    """An input and its output."""

    source: str
    output: str

    @property
    def name(self) -> str:
        return PurePosixPath(self.source.split("?", 1)[0]).name


@dataclass(frozen=True)
class Thumb:
    image: Any  # a PIL image, RGB, at most the thumbnail size
    size: tuple[int, int]  # the picture's own size in pixels


def pairs_of(items: Iterable[Any], limit: int = MAX_PAIRS) -> list[Pair]:
    """The first ``limit`` done items with an output (batch ``ItemResult`` or manifest items)."""
    pairs = []
    for item in items:
        state = getattr(item.state, "value", item.state)
        if state == ItemState.DONE.value and getattr(item, "output", None):
            pairs.append(Pair(str(item.source), str(item.output)))
            if len(pairs) >= limit:
                break
    return pairs


def pairs_from_manifest(
    url: str, storage_options: Mapping[str, Any] | None = None, limit: int = MAX_PAIRS
) -> list[Pair]:
    """The first ``limit`` done pairs a batch manifest records."""

    manifest = Manifest(url, dict(storage_options or {})).load()
    return pairs_of(manifest.items.values(), limit)


def thumbnail(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    max_side: int = THUMB_SIDE,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> Thumb | None:
    """A thumbnail of the picture (a video's first frame) at ``url``, or None when it cannot be read."""
    from fsspec.core import url_to_fs
    from PIL import Image

    try:
        fs, path = url_to_fs(url, **dict(storage_options or {}))
        if (fs.size(path) or 0) > max_file_bytes:
            return None
        if PurePosixPath(path).suffix.lower() in VIDEO_SUFFIXES:
            img = _first_frame(fs, path)
            if img is None:
                return None
            size = img.size
        else:
            with fs.open(path, "rb") as fh:
                img = Image.open(io.BytesIO(fh.read()))
            size = img.size
            img.draft("RGB", (max_side, max_side))  # JPEG: decode at a fraction of the size
            img.load()
        img = _flatten(img)
        img.thumbnail((max_side, max_side))
        return Thumb(img, size)
    except Exception as exc:  # a preview never fails a batch
        log.debug("no thumbnail of %s: %s", url, type(exc).__name__)
        return None


def _first_frame(fs: Any, path: str) -> Any:
    try:
        import av
    except ImportError:
        return None
    with fs.open(path, "rb") as fh, av.open(fh) as container:
        for frame in container.decode(video=0):
            return frame.to_image()
    return None


def _flatten(img: Any) -> Any:
    """RGB; transparency drawn over white (background removal leaves an alpha channel)."""
    from PIL import Image

    if img.mode in ("RGBA", "LA", "P", "PA"):
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, "white")
        flat.paste(rgba, (0, 0), rgba)
        return flat
    return img if img.mode == "RGB" else img.convert("RGB")


def contact_sheet(
    pairs: Sequence[Pair],
    storage_options: Mapping[str, Any] | None = None,
    *,
    thumb_side: int = THUMB_SIDE,
    columns: int = 2,
) -> bytes | None:
    """A JPEG grid of input | output pairs with names and sizes; None when no pair can be drawn."""
    from PIL import Image, ImageDraw, ImageFont

    drawn = []
    for pair in pairs:
        before = thumbnail(pair.source, storage_options, thumb_side)
        after = thumbnail(pair.output, storage_options, thumb_side)
        if after is not None:
            drawn.append((pair, before, after))
    if not drawn:
        return None
    cell_w = 2 * thumb_side + 3 * _PAD
    cell_h = thumb_side + _CAPTION + 2 * _PAD
    columns = max(1, min(columns, len(drawn)))
    rows = -(-len(drawn) // columns)
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for n, (pair, before, after) in enumerate(drawn):
        x0, y0 = (n % columns) * cell_w, (n // columns) * cell_h
        for side, thumb in enumerate((before, after)):
            x = x0 + _PAD + side * (thumb_side + _PAD)
            if thumb is not None:
                sheet.paste(thumb.image, (x, y0 + _PAD + thumb_side - thumb.image.height))
                w, h = thumb.size
                label = f"after {w}x{h}" if side else f"{_short(pair.name, 24)} {w}x{h}"
            else:
                label = "(input not readable)"
            draw.text((x, y0 + _PAD + thumb_side + 4), label, fill=(40, 40, 40), font=font)
    out = io.BytesIO()
    sheet.save(out, "JPEG", quality=80, optimize=True)
    return out.getvalue()


def write_contact_sheet(
    pairs: Sequence[Pair],
    destination: str,
    storage_options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> str | None:
    """Write the contact sheet of ``pairs`` beside the outputs; its URL, or None when none was made."""
    data = contact_sheet(pairs, storage_options, **kwargs)
    if data is None:
        return None
    url = join(destination, PREVIEW_NAME)
    write_bytes_atomic(url, data, dict(storage_options or {}) or None)
    return url


def inline_image(thumb: Thumb, quality: int = 70) -> str:
    """The thumbnail as a Markdown image with a ``data:`` URI (no file, no link to follow)."""
    out = io.BytesIO()
    thumb.image.save(out, "JPEG", quality=quality, optimize=True)
    return f"![]({'data:image/jpeg;base64,' + base64.b64encode(out.getvalue()).decode()})"


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
