"""Renders finished jobs: reads the source, applies the tool, writes the result file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from . import processing
from .state import Job


def web_steps(jconfig: dict[str, Any]) -> list[dict[str, Any]]:
    """The steps of a web API jconfig, single-step or workflow shape."""
    cfg = jconfig.get("config")
    return cfg if isinstance(cfg, list) else [cfg] if isinstance(cfg, dict) else []


def render(job: Job, out_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Process ``job.source`` and return the result path and its reported info."""
    assert job.source is not None
    if job.media == "video":
        dst = out_dir / f"{job.id}.mp4"
        info = processing.process_video(job.source, dst, job.tool, job.config or {})
        return dst, {
            "width": info.width,
            "height": info.height,
            "duration": info.duration,
            "size": info.size,
            "codec": "h265" if "265" in info.codec or info.codec == "hevc" else "h264",
        }
    with Image.open(job.source) as src:
        src.load()
        img: Image.Image = src
        if job.api == "open":
            img = processing.apply_step(img, job.tool, job.config or {})
            fmt = job.output_format
            if job.tool == "remove_bg" and fmt == "jpg":
                fmt = "png"  # a cut-out keeps its alpha
            data = processing.encode_image(img, fmt)
        else:
            steps = web_steps(job.config)
            for step in steps:
                img = processing.apply_step(img, step["module"], step.get("module_params") or {})
            out = steps[-1].get("out_params") or {}
            fmt = out.get("format") or ("png" if img.mode == "RGBA" else "jpg")
            bg = (out.get("bg_composed") or {}).get("bg_color")
            data = processing.encode_image(
                img,
                fmt,
                quality=int((out.get("compress") or {}).get("quality", 90)),
                dpi=out.get("dpi"),
                bg_color=(bg["r"], bg["g"], bg["b"]) if bg else None,
            )
            job.output_format = fmt
    dst = out_dir / f"{job.id}.{job.output_format if job.api == 'web' else fmt}"
    dst.write_bytes(data)
    with Image.open(dst) as done:
        return dst, {"width": done.width, "height": done.height, "size": len(data)}
