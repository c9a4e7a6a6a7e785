"""Pictures for the demo: a before/after contact sheet and a chart of credits per tool."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageOps

VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv")


def _picture(path: Path) -> tuple[Image.Image, tuple[int, int]]:
    """The image (a video's first frame) as RGBA, and its size in pixels."""
    if path.suffix.lower() in VIDEO_SUFFIXES:
        import av

        with av.open(str(path)) as container:
            frame = next(container.decode(video=0)).to_image()
        return frame.convert("RGBA"), frame.size
    with Image.open(path) as img:
        return img.convert("RGBA"), img.size


def _fit(draw: ImageDraw.ImageDraw, text: str, width: float) -> str:
    """``text``, shortened with ``..`` until it fits in ``width`` pixels."""
    if draw.textlength(text) <= width:
        return text
    while len(text) > 1 and draw.textlength(text + "..") > width:
        text = text[:-1]
    return text + ".."


def contact_sheet(pairs: list[tuple[Path, Path]], out: Path, cell: int = 180) -> Path:
    """Before | after pairs, two pairs a row, each fitted into a ``cell`` square on a checkerboard
    (so that transparency shows); a video shows its first frame. Labels: the input's name and size,
    then the output's folder (the tool) and size."""
    cols = 2
    per_row = 2  # two pairs side by side
    rows = (len(pairs) + per_row - 1) // per_row
    label_h = 18
    sheet = Image.new("RGB", (per_row * cols * (cell + 10) + 10, rows * (cell + label_h + 10) + 40), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text(
        (10, 10),
        "VanceAI demo: before | after (output folder = tool; sizes in pixels; videos: first frame)",
        fill="black",
    )
    checker = Image.new("RGB", (cell, cell), (235, 235, 235))
    cd = ImageDraw.Draw(checker)
    for y in range(0, cell, 12):
        for x in range((y // 12) % 2 * 12, cell, 24):
            cd.rectangle((x, y, x + 11, y + 11), fill=(205, 205, 205))
    for i, (before, after) in enumerate(pairs):
        r, c = divmod(i, per_row)
        y = 40 + r * (cell + label_h + 10)
        for j, path in enumerate((before, after)):
            x = 10 + (c * cols + j) * (cell + 10)
            img, size = _picture(path)
            thumb = ImageOps.contain(img, (cell, cell))
            tile = checker.copy()
            tile.paste(thumb, ((cell - thumb.width) // 2, (cell - thumb.height) // 2), thumb)
            sheet.paste(tile, (x, y))
            name = path.name if j == 0 else path.parent.name
            label = f"{name} {size[0]}x{size[1]}"
            if draw.textlength(label) > cell:
                label = (
                    f"{_fit(draw, name, cell - draw.textlength(f' {size[0]}x{size[1]}'))} {size[0]}x{size[1]}"
                )
            draw.text((x, y + cell + 2), label, fill="black" if j == 0 else (20, 60, 150))
        if c == 0 and i + 1 < len(pairs):  # a faint rule between the two pairs of a row
            xm = 10 + cols * (cell + 10) - 5
            draw.line((xm, y, xm, y + cell), fill=(170, 170, 170))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def credits_chart(df: pd.DataFrame, out: Path) -> Path:
    """A bar chart of credits spent per tool (and API)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spent = df[df["credits"] > 0].groupby(["api", "tool"])["credits"].sum().sort_values()
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    labels = [f"{tool} ({api})" for api, tool in spent.index]
    bars = ax.barh(labels, spent.values, color="#4C72B0")
    ax.bar_label(bars, fmt="%g", padding=3)
    ax.set_xlabel("credits")
    ax.set_title("Credits spent per tool")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
