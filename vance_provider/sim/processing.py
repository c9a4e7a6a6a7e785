"""Real image and video processing for the simulator (Pillow and PyAV).

The effects are cheap stand-ins for the vendor's models, but they are real: an
upscale multiplies the dimensions exactly, background removal returns a PNG with
an alpha channel, and every other tool applies a visible filter of its kind.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from PIL import Image, ImageFilter, ImageOps

# Upscale-like operations (web API module or Open API tool) and their scale key.
SCALERS = {"enlarge3", "enlarge", "chainner", "real_esrgan", "upscale"}


def scale_of(params: dict[str, Any]) -> int:
    """Read a scale given as 4 or "4x"; "1x" means enhance without enlarging."""
    raw = params.get("scale", 2)
    if isinstance(raw, str):
        raw = raw.lower().rstrip("x")
    return int(raw)


def _remove_background(img: Image.Image) -> Image.Image:
    """Alpha from the distance to the corner colour: a crude but real cut-out."""
    rgb = img.convert("RGB")
    corner = rgb.getpixel((0, 0))
    assert isinstance(corner, tuple)
    diff = Image.new("RGB", rgb.size, corner)
    from PIL import ImageChops

    dist = ImageChops.difference(rgb, diff).convert("L")
    alpha = dist.point(lambda v: 255 if v > 24 else 0)
    out = rgb.convert("RGBA")
    out.putalpha(alpha)
    return out


def _cartoon(img: Image.Image) -> Image.Image:
    base = ImageOps.posterize(img.convert("RGB"), 3)
    edges = base.filter(ImageFilter.FIND_EDGES).convert("L").point(lambda v: 0 if v > 60 else 255)
    return Image.composite(base, Image.new("RGB", base.size, (20, 20, 20)), edges)


def _colorize(img: Image.Image) -> Image.Image:
    return ImageOps.colorize(img.convert("L"), black=(30, 20, 60), white=(255, 235, 190), mid=(190, 120, 90))


def _passport(img: Image.Image) -> Image.Image:
    w, h = img.size
    target_w = min(w, int(h * 35 / 45))
    target_h = int(target_w * 45 / 35)
    left, top = (w - target_w) // 2, (h - target_h) // 2
    return img.convert("RGB").crop((left, top, left + target_w, top + target_h))


def apply_step(img: Image.Image, op: str, params: dict[str, Any]) -> Image.Image:
    """Apply one operation (a web API module or an Open API tool) to an image."""
    if op in SCALERS:
        s = scale_of(params)
        if s > 1:
            img = img.resize((img.width * s, img.height * s), Image.Resampling.LANCZOS)
        return img.filter(ImageFilter.DETAIL)
    if op in {"denoise"}:
        return img.convert("RGB").filter(ImageFilter.MedianFilter(3))
    if op in {"sharpen3", "sharpen"}:
        return img.convert("RGB").filter(ImageFilter.UnsharpMask(radius=2, percent=160, threshold=2))
    if op in {"matting", "remove_bg"}:
        return _remove_background(img)
    if op in {"crease_repair", "img2sr", "restore", "CodeFormer", "custom"}:
        return ImageOps.autocontrast(img.convert("RGB").filter(ImageFilter.SMOOTH_MORE))
    if op in {"cartoonize", "img2anime", "animegan2"}:
        return _cartoon(img)
    if op in {"sd_recolor", "deoldify2", "colorize"}:
        return _colorize(img)
    if op == "passport_photo":
        return _passport(img)
    raise ValueError(f"unknown operation {op!r}")


def encode_image(
    img: Image.Image,
    fmt: str,
    quality: int = 90,
    dpi: int | None = None,
    bg_color: tuple[int, int, int] | None = None,
) -> bytes:
    """Encode to jpg / png / webp; a transparent image on jpg gets a solid background."""
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt.lower()]
    if bg_color is not None and img.mode == "RGBA":
        canvas = Image.new("RGB", img.size, bg_color)
        canvas.paste(img, mask=img.getchannel("A"))
        img = canvas
    if fmt == "JPEG" and img.mode != "RGB":
        img = img.convert("RGB")
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {}
    if fmt in {"JPEG", "WEBP"}:
        kwargs["quality"] = quality
    if dpi:
        kwargs["dpi"] = (dpi, dpi)
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def image_format(data: bytes) -> str | None:
    """The format by magic bytes: 'jpg', 'png', 'webp' or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


@dataclass
class VideoInfo:
    width: int
    height: int
    duration: float
    size: int
    codec: str
    fps: float


def probe_video(path: Path) -> VideoInfo:
    """What ffprobe would say: dimensions, duration, codec, frame rate."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        header = float(container.duration / 1_000_000) if container.duration else 0.0
        if not header and stream.duration and stream.time_base:
            header = float(stream.duration * stream.time_base)
        fps = float(stream.average_rate or 25)
        # Measured from the content, as the service does (it never trusts the header): the span of
        # the packets' timestamps, the last frame's length included. A header that says otherwise
        # (a 6 s clip whose header claims 0.1 s) changes nothing.
        duration = _measured_seconds(container, stream, fps) or header
        return VideoInfo(
            stream.codec_context.width,
            stream.codec_context.height,
            round(duration, 3),
            path.stat().st_size,
            stream.codec_context.name,
            fps,
        )


def _measured_seconds(container: Any, stream: Any, fps: float) -> float:
    """The video's length from its packets (demuxed, not decoded): last end minus first start."""
    first = end = None
    frames = 0
    for packet in container.demux(stream):
        if packet.pts is None:
            continue
        frames += 1
        first = packet.pts if first is None else min(first, packet.pts)
        stop = packet.pts + (packet.duration or 0)
        end = stop if end is None else max(end, stop)
    if first is None or end is None or not stream.time_base:
        return 0.0
    seconds = float((end - first) * stream.time_base)
    return seconds if seconds > 0 else frames / fps


def process_video(src: Path, dst: Path, tool: str, config: dict[str, Any]) -> VideoInfo:
    """Decode, transform each frame, and encode a real MP4."""
    import av

    scale = int(config.get("scale", 2)) if tool == "video_upscale" else 1
    codec = {"h264": "libx264", "h265": "libx265"}.get(str(config.get("codec", "h264")), "libx264")
    if tool == "video_upscale":
        codec = "libx264"  # the engine picks the encoding for upscales
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        in_stream = inp.streams.video[0]
        fps = config.get("fps") or in_stream.average_rate or 25
        rate = Fraction(str(fps)).limit_denominator(1000)
        w = in_stream.codec_context.width * scale
        h = in_stream.codec_context.height * scale
        stream = out.add_stream(codec, rate=rate)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = w - w % 2, h - h % 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for frame in inp.decode(in_stream):
            img = frame.to_image()
            if scale > 1:
                img = img.resize((stream.width, stream.height), Image.Resampling.BILINEAR)
            elif tool == "video_hdr":
                img = ImageOps.autocontrast(img, cutoff=1)
            elif tool == "video_face_enhance":
                img = img.filter(ImageFilter.DETAIL)
            if img.size != (stream.width, stream.height):
                img = img.resize((stream.width, stream.height))
            for packet in stream.encode(av.VideoFrame.from_image(img)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    info = probe_video(dst)
    return info


def make_test_video(
    path: Path, width: int = 64, height: int = 48, seconds: float = 1.0, fps: int = 10
) -> Path:
    """Write a small real H.264 MP4 (moving gradient), for tests and demos."""
    import av

    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(int(seconds * fps)):
            img = Image.linear_gradient("L").resize((width, height)).rotate(i * 10)
            shift = i * 20
            img = Image.merge("RGB", (img, ImageOps.invert(img), img.point(lambda v, s=shift: (v + s) % 256)))
            for packet in stream.encode(av.VideoFrame.from_image(img)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
