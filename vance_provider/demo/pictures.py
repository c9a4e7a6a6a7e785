"""Pictures for the demo: a before/after contact sheet, and charts of credits per tool and over time.

On the contact sheet every picture is drawn at one common scale, so an output twice the size of
its input is drawn twice as large; a video is a strip of frames before and after.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from ..core.api.models import API_TITLES

VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MARGIN, GAP, CAPTION = 24, 16, 24  # pixels
INK, BLUE, GREY = (30, 30, 30), (20, 60, 150), (110, 110, 110)
BY = "\u00d7"  # the multiplication sign of "160x200"


def _font(size: int, bold: bool = False) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """DejaVu Sans (shipped with matplotlib, which the charts need; it has the multiplication sign and arrows),
    else Pillow's own scalable font."""
    try:
        from matplotlib import font_manager

        path = font_manager.findfont(
            font_manager.FontProperties(family="DejaVu Sans", weight="bold" if bold else "normal"),
            fallback_to_default=False,
        )
        return ImageFont.truetype(path, size)
    except (ImportError, OSError, ValueError):
        try:
            return ImageFont.load_default(size=size)
        except (TypeError, OSError):  # pragma: no cover - Pillow without FreeType
            return ImageFont.load_default()


TITLE, HEADING, TEXT, SMALL = _font(32, bold=True), _font(22, bold=True), _font(18), _font(16)


@dataclass
class _Clip:
    frames: list[Image.Image]  # a few frames, evenly spaced
    size: tuple[int, int]
    seconds: float
    count: int  # frames in the whole clip


def _picture(path: Path) -> tuple[Image.Image, tuple[int, int]]:
    """The image (a video's first frame) as RGBA, and its size in pixels."""
    if path.suffix.lower() in VIDEO_SUFFIXES:
        clip = _clip(path, 1)
        return clip.frames[0].convert("RGBA"), clip.size
    with Image.open(path) as img:
        return img.convert("RGBA"), img.size


def _clip(path: Path, keep: int = 5) -> _Clip:
    """``keep`` frames of a video, evenly spaced from the first to the last."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_image() for f in container.decode(video=0)]
        seconds = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
    picks = sorted({round(i * (len(frames) - 1) / max(1, keep - 1)) for i in range(keep)})
    chosen = [frames[i].convert("RGBA") for i in picks]
    return _Clip(chosen, frames[0].size, seconds or len(frames) / 10, len(frames))


def _checker(size: tuple[int, int]) -> Image.Image:
    """A checkerboard, so that transparency shows."""
    tile = Image.new("RGB", size, (236, 236, 236))
    draw = ImageDraw.Draw(tile)
    for y in range(0, size[1], 10):
        for x in range((y // 10) % 2 * 10, size[0], 20):
            draw.rectangle((x, y, x + 9, y + 9), fill=(208, 208, 208))
    return tile


def _scaled(img: Image.Image, scale: float) -> Image.Image:
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.NEAREST)


Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def _fit(draw: ImageDraw.ImageDraw, text: str, width: float, font: Font) -> str:
    """``text``, shortened with ``…`` until it fits in ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


@dataclass
class _Card:
    """One before/after pair, ready to draw: pictures at the sheet's scale, and captions."""

    before: Image.Image
    after: Image.Image
    captions: tuple[str, str]
    columns: tuple[int, int]  # the width of each side: its picture or its caption, the wider

    @property
    def width(self) -> int:
        return self.columns[0] + GAP + self.columns[1]

    @property
    def height(self) -> int:
        return max(self.before.height, self.after.height) + CAPTION * 2 + 4


def _card(before: Path, after: Path, scale: float, draw: ImageDraw.ImageDraw) -> _Card:
    b_img, b_size = _picture(before)
    a_img, a_size = _picture(after)
    ratio = a_size[0] / b_size[0]
    grow = f" ({BY}{ratio:g})" if abs(ratio - 1) > 1e-6 else ""
    b_pic, a_pic = _scaled(b_img, scale), _scaled(a_img, scale)
    name = _fit(draw, before.name, 260, SMALL)
    captions = (f"{name}\n{b_size[0]}{BY}{b_size[1]}", f"after\n{a_size[0]}{BY}{a_size[1]}{grow}")
    columns = tuple(
        max(pic.width, *(round(draw.textlength(line, font=SMALL)) for line in text.splitlines()))
        for pic, text in zip((b_pic, a_pic), captions, strict=True)
    )
    return _Card(b_pic, a_pic, captions, (columns[0], columns[1]))


def _describe(folder: Path) -> str:
    """An output folder, with the tool and the API its batch manifest names."""
    import json

    try:
        meta = json.loads((folder / "_vance_manifest.json").read_text()).get("meta", {})
    except (OSError, ValueError):
        return folder.name
    ident = {**meta, **(meta.get("identity") or {})}
    api = API_TITLES.get(ident.get("api", ""), ident.get("api", ""))
    return f"{folder.name}: {ident.get('tool', '?')} on the {api}" if api else folder.name


def heading(folder: Path, shown: int) -> str:
    """A group's heading: the folder, its tool and API, and how many of its outputs the sheet shows
    when not all (each input is drawn once, under one of the tools it went through)."""
    total = sum(
        1
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(("_", ".")) and p.suffix.lower() in IMAGE_SUFFIXES
    )
    shown_words = f" ({shown} of its {total} outputs shown)" if 0 < shown < total else ""
    return _describe(folder) + shown_words


def _paste(sheet: Image.Image, img: Image.Image, xy: tuple[int, int]) -> None:
    tile = _checker(img.size)
    tile.paste(img, (0, 0), img)
    sheet.paste(tile, xy)


def contact_sheet(pairs: list[tuple[Path, Path]], out: Path, width: int = 1500) -> Path:
    """Before | after pairs grouped by output folder (the tool), every picture at one common scale
    (an output twice as large is drawn twice as large), each with its size in pixels; a video
    as a strip of frames before and after."""
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    images = [(b, a) for b, a in pairs if b.suffix.lower() not in VIDEO_SUFFIXES]
    videos = [(b, a) for b, a in pairs if b.suffix.lower() in VIDEO_SUFFIXES]
    # One scale for the whole sheet: the widest pair fills at most half the sheet.
    widest = max((_picture(b)[1][0] + _picture(a)[1][0] for b, a in images), default=1)
    scale = min(1.0, (width / 2 - MARGIN - GAP) / widest)  # 1: every pixel a pixel
    groups: dict[str, list[_Card]] = {}
    for before, after in images:
        groups.setdefault(after.parent.name, []).append(_card(before, after, scale, scratch))

    # Lay out: a heading per folder, then its cards left to right, wrapping.
    placed: list[tuple[str, object, tuple[int, int]]] = []
    y = MARGIN + 80
    for folder, cards in groups.items():
        placed.append(("heading", heading(images[0][1].parent.parent / folder, len(cards)), (MARGIN, y)))
        y += 38
        x, row_h = MARGIN, 0
        for card in cards:
            if x > MARGIN and x + card.width > width - MARGIN:
                x, y, row_h = MARGIN, y + row_h + GAP, 0
            placed.append(("card", card, (x, y)))
            x += card.width + 2 * GAP
            row_h = max(row_h, card.height)
        y += row_h + GAP * 2
    strips = [(b, _clip(b), a, _clip(a)) for b, a in videos]
    for before, b_clip, after, a_clip in strips:
        placed.append(("heading", f"{_describe(after.parent)}: {before.name}, a video", (MARGIN, y)))
        y += 38
        for label, clip in (("before", b_clip), ("after", a_clip)):
            placed.append(("strip", (label, clip), (MARGIN, y)))
            y += round(clip.size[1] * scale) + CAPTION + GAP
        y += GAP

    sheet = Image.new("RGB", (width, y + MARGIN), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((MARGIN, MARGIN), "VanceAI demo: before → after", fill=INK, font=TITLE)
    where = "at its size in pixels" if scale == 1 else f"at the same scale ({scale:.2g}{BY})"
    draw.text(
        (MARGIN, MARGIN + 44),
        f"every picture {where}: an upscaled output is drawn larger than its input; "
        "headings: the output folder, the tool and the API",
        fill=GREY,
        font=TEXT,
    )
    for kind, what, (x, y0) in placed:
        if kind == "heading":
            draw.text((x, y0), str(what), fill=INK, font=HEADING)
        elif kind == "card":
            assert isinstance(what, _Card)
            top = y0
            _paste(sheet, what.before, (x, top))
            draw.multiline_text((x, top + what.before.height + 4), what.captions[0], fill=INK, font=SMALL)
            xa = x + what.columns[0] + GAP
            _paste(sheet, what.after, (xa, top))
            draw.multiline_text((xa, top + what.after.height + 4), what.captions[1], fill=BLUE, font=SMALL)
        else:
            label, clip = what  # type: ignore[misc]
            fx = x
            for frame in clip.frames:
                small = _scaled(frame, scale)
                _paste(sheet, small, (fx, y0))
                fx += small.width + 6
            caption = (
                f"{label}: {clip.size[0]}{BY}{clip.size[1]}, {clip.seconds:g} s, {clip.count} frames "
                f"({len(clip.frames)} shown)"
            )
            draw.text(
                (x, y0 + round(clip.size[1] * scale) + 4),
                caption,
                fill=INK if label == "before" else BLUE,
                font=SMALL,
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


API_COLORS = {"web": "#4C72B0", "open": "#DD8452", "visioncraft": "#55A868"}


@contextmanager
def _chart(out: Path) -> Iterator[Any]:
    """The axes of a chart, written to ``out`` once the block has drawn on them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=110)
    try:
        yield ax
        ax.spines[["top", "right"]].set_visible(False)
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
    finally:
        plt.close(fig)


def credits_chart(df: pd.DataFrame, out: Path) -> Path:
    """A bar chart of the credits spent per tool (our names) and API."""
    spent = df[df["credits"] > 0].groupby(["api", "tool"])["credits"].sum().sort_values()
    with _chart(out) as ax:
        labels = [f"{tool} ({API_TITLES.get(api, api)})" for api, tool in spent.index]
        colors = [API_COLORS.get(api, API_COLORS["open"]) for api, _ in spent.index]
        bars = ax.barh(labels, spent.values, color=colors)
        ax.bar_label(bars, fmt="%g", padding=3)
        ax.set_xlabel("credits")
        ax.set_title(f"Credits spent per tool: {spent.sum():g} in all")
    return out


def credits_over_time_chart(df: pd.DataFrame, out: Path) -> Path:
    """Credits spent over time: the running total per API and in all, one step per charge."""
    charged = df[df["credits"] > 0].sort_values("timestamp", kind="stable")
    with _chart(out) as ax:
        if len(charged):
            start = charged["timestamp"].iloc[0]
            seconds = (charged["timestamp"] - start).dt.total_seconds()
            ax.step(seconds, charged["credits"].cumsum(), where="post", color="#333333", label="all", lw=2)
            for api, color in API_COLORS.items():
                part = charged["api"] == api
                if part.any():
                    ax.step(
                        seconds[part],
                        charged.loc[part, "credits"].cumsum(),
                        where="post",
                        color=color,
                        label=API_TITLES[api],
                    )
            ax.set_xlabel(f"seconds since the first charge ({start:%Y-%m-%d %H:%M:%S} UTC)")
            ax.legend(frameon=False, loc="upper left")
        ax.set_ylabel("credits spent")
        ax.set_title("Credits spent over time")
    return out
