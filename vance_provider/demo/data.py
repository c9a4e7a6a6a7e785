"""A small but real demo dataset: varied images (JPG/PNG, sizes, a face, grayscale) and a short video."""

from __future__ import annotations

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter


def _landscape(w: int, h: int, seed: int) -> Image.Image:
    rnd = random.Random(seed)
    img = Image.new("RGB", (w, h))
    d = ImageDraw.Draw(img)
    for y in range(h):  # sky gradient
        t = y / h
        d.line((0, y, w, y), fill=(int(90 + 120 * t), int(150 + 60 * t), int(230 - 80 * t)))
    d.ellipse((w * 0.7, h * 0.1, w * 0.85, h * 0.1 + w * 0.15), fill=(255, 220, 120))
    for i in range(3):  # hills
        base = h * (0.55 + 0.12 * i)
        pts = (
            [(0, h)]
            + [
                (x, base - 25 * math.sin(x / (40 + 20 * i) + seed + i) - rnd.random() * 6)
                for x in range(0, w + 8, 8)
            ]
            + [(w, h)]
        )
        d.polygon(pts, fill=(40 + 30 * i, 110 - 20 * i, 50 + 10 * i))
    return img


def _face(w: int, h: int) -> Image.Image:
    img = Image.new("RGB", (w, h), (90, 130, 170))  # a studio backdrop, well apart from the skin
    d = ImageDraw.Draw(img)
    cx, cy, r = w // 2, h // 2, min(w, h) // 3
    d.ellipse(
        (cx - r, cy - int(r * 1.2), cx + r, cy + int(r * 1.2)),
        fill=(240, 200, 170),
        outline=(120, 80, 60),
        width=3,
    )
    for dx in (-r // 2, r // 2):  # eyes
        d.ellipse(
            (cx + dx - r // 7, cy - r // 3, cx + dx + r // 7, cy - r // 6), fill="white", outline="black"
        )
        d.ellipse((cx + dx - r // 16, cy - r // 3 + 1, cx + dx + r // 16, cy - r // 6 - 1), fill=(60, 40, 30))
    d.line(
        (cx, cy - r // 8, cx - r // 10, cy + r // 5, cx + r // 12, cy + r // 5), fill=(150, 100, 80), width=3
    )
    d.arc((cx - r // 2, cy + r // 5, cx + r // 2, cy + r // 1.6), 20, 160, fill=(170, 40, 50), width=4)
    d.pieslice((cx - r, cy - int(r * 1.35), cx + r, cy - r // 3), 180, 360, fill=(70, 45, 25))  # hair
    return img


def _product(w: int, h: int) -> Image.Image:
    img = Image.new("RGB", (w, h), (250, 250, 250))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle(
        (w * 0.3, h * 0.2, w * 0.7, h * 0.85), radius=18, fill=(200, 40, 60), outline=(90, 10, 20), width=4
    )
    d.ellipse((w * 0.38, h * 0.1, w * 0.62, h * 0.28), fill=(220, 220, 230), outline=(120, 120, 130), width=3)
    return img


def _pattern(w: int, h: int, seed: int) -> Image.Image:
    rnd = random.Random(seed)
    img = Image.new("RGB", (w, h), (20, 20, 30))
    d = ImageDraw.Draw(img)
    for _ in range(40):
        x, y, s = rnd.randrange(w), rnd.randrange(h), rnd.randrange(4, max(5, w // 6))
        d.ellipse((x, y, x + s, y + s), fill=(rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)))
    return img.filter(ImageFilter.GaussianBlur(1))


def make_dataset(folder: Path, video: bool = True) -> list[Path]:
    """Write 12 varied images (and a 2-second video) into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    specs = [
        ("portrait_face.jpg", _face(160, 200)),
        ("old_photo_gray.png", _landscape(180, 120, 3).convert("L")),
        ("landscape_wide.jpg", _landscape(240, 120, 1)),
        ("landscape_small.png", _landscape(96, 64, 2)),
        ("product_shot.png", _product(150, 150)),
        ("pattern_a.jpg", _pattern(128, 96, 4)),
        ("pattern_b.png", _pattern(100, 100, 5)),
        ("sunset.jpg", _landscape(200, 150, 6)),
        ("tiny_icon.png", _product(48, 48)),
        ("face_small.jpg", _face(80, 100)),
        ("noisy_scan.jpg", _pattern(160, 120, 7).convert("L").convert("RGB")),
        ("tall_banner.png", _landscape(90, 220, 8)),
    ]
    paths = []
    for name, img in specs:
        path = folder / name
        img.save(path, quality=88) if name.endswith(".jpg") else img.save(path)
        paths.append(path)
    if video:
        from vance_provider.sim.processing import make_test_video

        paths.append(make_test_video(folder / "clip.mp4", 96, 64, seconds=2.0, fps=10))
    return paths


def main(argv: list[str] | None = None) -> None:
    """``python -m vance_provider.demo.data FOLDER [--video]``: sample inputs to try things on."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m vance_provider.demo.data",
        description="Write the demo's 12 sample images (and, with --video, a 2-second clip) into a folder.",
    )
    parser.add_argument("folder", type=Path, help="where to write them (created if missing)")
    parser.add_argument("--video", action="store_true", help="also write clip.mp4 (needs the sim extra)")
    args = parser.parse_args(argv)
    paths = make_dataset(args.folder, video=args.video)
    print(f"{len(paths)} files in {args.folder}")


if __name__ == "__main__":
    main()
