"""Pictures for the demo: a before/after contact sheet and a chart of credits per tool."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageOps


def contact_sheet(pairs: list[tuple[Path, Path]], out: Path, cell: int = 180) -> Path:
    """One row per input: before | after, each fitted into a ``cell`` square, with sizes."""
    cols = 2
    per_row = 2  # two pairs side by side
    rows = (len(pairs) + per_row - 1) // per_row
    label_h = 18
    sheet = Image.new("RGB", (per_row * cols * (cell + 10) + 10, rows * (cell + label_h + 10) + 40), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((10, 10), "VanceAI demo: before | after (sizes in pixels)", fill="black")
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
            with Image.open(path) as img:
                size = img.size
                thumb = ImageOps.contain(img.convert("RGBA"), (cell, cell))
            tile = checker.copy()
            tile.paste(thumb, ((cell - thumb.width) // 2, (cell - thumb.height) // 2), thumb)
            sheet.paste(tile, (x, y))
            draw.text((x, y + cell + 2), f"{'in ' if j == 0 else 'out'} {size[0]}x{size[1]} {path.name[:18]}",
                      fill="black")
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
