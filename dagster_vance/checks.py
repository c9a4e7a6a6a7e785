"""Asset checks of an enhanced dataset: every output is real, and every input is accounted for.

``outputs_valid``
    every output exists, decodes (Pillow for images; PyAV for video when ``av`` is installed)
    and has the expected format and size: an upscale's output is the input's size times
    ``ToolCall.scale``.
``inputs_accounted_for``
    no input is left unprocessed without a reason: every manifest item is done, or failed or
    skipped with an error.
``credits_within_budget`` (only with a ``credit_budget``)
    the run spent at most its budget.

The functions here take plain records, so the same checks run right after a materialization
and on their own (select only the checks in the UI: the manifest is read, nothing is paid).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import dagster as dg
import fsspec
from fsspec.core import url_to_fs

from vance_provider.core.batch.spec import ItemResult
from vance_provider.core.reports.preview import INLINE_SIDE, MAX_INLINE_BYTES, inline_image, thumbnail
from vance_provider.core.state.manifest import ItemState, Manifest
from vance_provider.core.tools import ToolCall

from .translator import CHECK_ACCOUNTED, CHECK_BUDGET, CHECK_OUTPUTS, strip_query

PIL_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}
EXT_ALIASES = {
    "jpeg": "jpg",
    "jpg": "jpg",
    "png": "png",
    "webp": "webp",
    "mp4": "mp4",
    "m4v": "mp4",
    "mov": "mov",
}
VIDEO_EXTS = {"mp4", "mov", "mkv", "webm", "avi", "m4v"}


@dataclass(frozen=True)
class MediaInfo:
    format: str  # jpg, png, webp, mp4, ...
    width: int | None
    height: int | None
    frames: int | None = None  # video frames decoded (at least one when decodable)


def _av() -> Any:
    try:
        import av
    except ImportError:  # the sim extra brings it; without it videos are checked by their header
        return None
    return av


def probe(url: str, storage_options: Mapping[str, Any] | None = None, *, decode: bool = True) -> MediaInfo:
    """Format and size of an image or video at any fsspec URL; raises when it does not decode."""
    ext = PurePosixPath(url.split("?", 1)[0]).suffix.lower().lstrip(".")
    with fsspec.open(url, "rb", **dict(storage_options or {})) as fh:
        if ext in VIDEO_EXTS:
            return _probe_video(fh, decode)
        from PIL import Image

        data = fh.read() if decode else fh.read(1 << 20)
    with Image.open(io.BytesIO(data)) as img:
        if decode:
            img.load()  # decodes every pixel: a truncated file raises here
        return MediaInfo(
            PIL_FORMATS.get(img.format or "", (img.format or "?").lower()), img.width, img.height
        )


def _probe_video(fh: Any, decode: bool) -> MediaInfo:
    av = _av()
    if av is None:
        from vance_provider.core.media import sniff

        fmt = sniff(fh.read(64))
        if fmt is None:
            raise ValueError("not a recognised video container")
        return MediaInfo(fmt, None, None)
    with av.open(fh) as container:
        if not container.streams.video:
            raise ValueError("the container has no video stream")
        stream = container.streams.video[0]
        names = set((container.format.name or "").split(","))
        fmt = "mp4" if "mp4" in names else "mov" if "mov" in names else sorted(names)[0]
        frames = 0
        if decode:
            for _frame in container.decode(stream):
                frames += 1
                break
            if not frames:
                raise ValueError("no video frame decodes")
        return MediaInfo(fmt, stream.codec_context.width, stream.codec_context.height, frames or None)


@dataclass(frozen=True)
class OutputReport:
    source: str
    output: str | None
    ok: bool
    problem: str | None = None
    input: MediaInfo | None = None
    result: MediaInfo | None = None

    @property
    def dims(self) -> str:
        def fmt(m: MediaInfo | None) -> str:
            return f"{m.width}x{m.height}" if m and m.width else "?"

        return f"{fmt(self.input)} -> {fmt(self.result)}"


def _expected_format(call: ToolCall, output: str) -> str | None:
    if call.output_format:
        return EXT_ALIASES.get(call.output_format, call.output_format)
    ext = PurePosixPath(output).suffix.lower().lstrip(".")
    return EXT_ALIASES.get(ext)


def verify_output(
    item: ItemResult, call: ToolCall, storage_options: Mapping[str, Any] | None = None
) -> OutputReport:
    """Check one done item's output: it exists, decodes, has the right format and size."""
    output = item.output
    if not output:
        return OutputReport(item.source, None, False, "done but no output recorded")
    so = dict(storage_options or {})
    try:
        fs, path = url_to_fs(output, **so)
        if not fs.exists(path):
            return OutputReport(item.source, output, False, "the output is missing")
    except Exception as exc:  # an unreachable store is a failed check, not a crash
        return OutputReport(item.source, output, False, f"cannot reach the output ({type(exc).__name__})")
    try:
        result = probe(output, so)
    except Exception as exc:
        return OutputReport(item.source, output, False, f"the output does not decode ({type(exc).__name__})")
    try:
        source = probe(item.source, so, decode=False)
    except Exception:
        source = None  # the input may be gone; the output is still checked on its own
    want = _expected_format(call, output)
    if want and result.format != want:
        return OutputReport(
            item.source, output, False, f"format is {result.format}, expected {want}", source, result
        )
    if source and source.width and result.width:
        tolerance = 0 if call.media == "image" else call.scale  # video encoders round to even sizes
        exp_w, exp_h = source.width * call.scale, source.height * call.scale  # type: ignore[operator]
        if abs(result.width - exp_w) > tolerance or abs((result.height or 0) - exp_h) > tolerance:
            return OutputReport(
                item.source,
                output,
                False,
                f"size is {result.width}x{result.height}, expected {exp_w}x{exp_h} (x{call.scale})",
                source,
                result,
            )
    return OutputReport(item.source, output, True, None, source, result)


def verify_outputs(
    items: Iterable[ItemResult],
    call: ToolCall,
    storage_options: Mapping[str, Any] | None = None,
    max_workers: int = 8,
) -> list[OutputReport]:
    done = [i for i in items if i.state == ItemState.DONE]
    if not done:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(done)))) as pool:
        return list(pool.map(lambda i: verify_output(i, call, storage_options), done))


def items_from_manifests(
    urls: Iterable[str], storage_options: Mapping[str, Any] | None = None
) -> list[ItemResult]:
    """The items recorded in manifests, as the batch engine reports them."""
    items: list[ItemResult] = []
    for url in urls:
        manifest = Manifest(url, dict(storage_options or {})).load()
        items += [
            ItemResult(
                i.source,
                i.state.value,
                i.output if i.state == ItemState.DONE else None,
                i.job_id,
                i.credits,
                i.error,
                i.error_code,
            )
            for i in manifest.items.values()
        ]
    return items


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    def cell(v: str) -> str:
        return strip_query(str(v)).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def outputs_check(
    asset_key: dg.AssetKey, reports: Sequence[OutputReport], max_rows: int = 20
) -> dg.AssetCheckResult:
    bad = [r for r in reports if not r.ok]
    metadata: dict[str, Any] = {"vance/checked": len(reports), "vance/invalid": len(bad)}
    if bad:
        rows = [(r.source, r.output or "", r.problem or "") for r in bad[:max_rows]]
        metadata["vance/problems"] = dg.MetadataValue.md(_table(rows, ("input", "output", "problem")))
    return _error_check(asset_key, CHECK_OUTPUTS, not bad, metadata)


def accounted_check(
    asset_key: dg.AssetKey, items: Sequence[ItemResult], max_rows: int = 20
) -> dg.AssetCheckResult:
    """Done, or failed/skipped with a reason; anything else (pending, a job still running) fails."""
    unaccounted = [
        i
        for i in items
        if not (i.state == ItemState.DONE or (i.state in (ItemState.FAILED, ItemState.SKIPPED) and i.error))
    ]
    reasons = [i for i in items if i.state in (ItemState.FAILED, ItemState.SKIPPED) and i.error]
    metadata: dict[str, Any] = {
        "vance/inputs": len(items),
        "vance/done": sum(i.state == ItemState.DONE for i in items),
        "vance/failed": sum(i.state == ItemState.FAILED for i in items),
        "vance/skipped": sum(i.state == ItemState.SKIPPED for i in items),
        "vance/unaccounted": len(unaccounted),
    }
    if unaccounted:
        rows = [(i.source, i.state) for i in unaccounted[:max_rows]]
        metadata["vance/unaccounted_inputs"] = dg.MetadataValue.md(_table(rows, ("input", "state")))
    if reasons:
        why = [(i.source, i.state, i.error or "") for i in reasons[:max_rows]]
        metadata["vance/reasons"] = dg.MetadataValue.md(_table(why, ("input", "state", "reason")))
    return _error_check(asset_key, CHECK_ACCOUNTED, not unaccounted, metadata)


def _error_check(
    asset_key: dg.AssetKey, check_name: str, passed: bool, metadata: dict[str, Any]
) -> dg.AssetCheckResult:
    """A check whose failure is an error: the dataset is not what it should be."""
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=check_name,
        passed=passed,
        metadata=metadata,
        severity=dg.AssetCheckSeverity.ERROR,
    )


def budget_check(asset_key: dg.AssetKey, spent: float, budget: float) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=CHECK_BUDGET,
        passed=spent <= budget + 1e-9,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"vance/credits_spent": float(spent), "vance/credit_budget": float(budget)},
    )


def preview_table(
    reports: Sequence[OutputReport],
    max_rows: int = 5,
    *,
    thumbnails: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    max_bytes: int = MAX_INLINE_BYTES,
) -> str:
    """A few outputs, for the materialization's metadata: input -> output, dimensions and, with
    ``thumbnails``, small before and after pictures inline (the table stays under ``max_bytes``;
    rows past it show no picture)."""
    shown = list(reports[:max_rows])
    rows = [(PurePosixPath(r.source).name, PurePosixPath(r.output or "").name, r.dims) for r in shown]
    if not thumbnails:
        return _table(rows, ("input", "output", "dims"))
    header = ("input", "output", "dims", "before", "after")
    used = len(_table(rows, header))
    pictures: list[list[str]] = []
    for report in shown:
        cells = ["-", "-"]
        if used < max_bytes:
            thumbs = (
                thumbnail(report.source, storage_options, INLINE_SIDE),
                thumbnail(report.output, storage_options, INLINE_SIDE) if report.output else None,
            )
            drawn = [inline_image(t) if t else "-" for t in thumbs]
            if used + sum(map(len, drawn)) <= max_bytes:
                cells, used = drawn, used + sum(map(len, drawn))
        pictures.append(cells)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, cells in zip(rows, pictures, strict=True):
        text = [strip_query(str(c)).replace("|", "\\|").replace("\n", " ") for c in row]
        lines.append("| " + " | ".join([*text, *cells]) + " |")
    return "\n".join(lines)
