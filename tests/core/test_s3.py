"""Batches from s3:// to s3:// against a moto S3 server on loopback, on both APIs."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from tests.conftest import image_bytes
from tests.core.conftest import batch_spec
from tests.core.helpers import created_jobs
from vance_provider.core import VanceClient
from vance_provider.core.state.manifest import MANIFEST_NAME
from vance_provider.sim import SimulatorServer

INPUTS = {"in/a.jpg": (32, 24, "JPEG"), "in/b.png": (20, 10, "PNG"), "in/sub/c.jpg": (16, 16, "JPEG")}


def put_inputs(fs: Any, bucket: str) -> None:
    for key, (w, h, fmt) in INPUTS.items():
        fs.pipe(f"{bucket}/{key}", image_bytes(w, h, fmt))
    fs.pipe(f"{bucket}/in/readme.txt", b"not an input")


def test_batch_from_s3_to_s3(
    api: str,
    sim: SimulatorServer,
    client_factory: Callable[..., VanceClient],
    s3: tuple[Any, dict[str, Any], str],
) -> None:
    fs, options, bucket = s3
    put_inputs(fs, bucket)
    client = client_factory(sim, api, storage_options=options)
    spec = batch_spec(f"s3://{bucket}/in/", f"s3://{bucket}/out/", storage_options=options)
    result = client.run_batch(spec)
    assert (result.done, result.failed) == (3, 0), result.summary()
    assert result.manifest == f"s3://{bucket}/out/{MANIFEST_NAME}"
    keys = sorted(fs.find(f"{bucket}/out/"))
    assert f"{bucket}/out/{MANIFEST_NAME}" in keys
    outputs = [k for k in keys if not k.endswith(MANIFEST_NAME)]
    assert len(outputs) == 3
    assert not [
        k for k in fs.find(bucket) if k.rsplit("/", 1)[1].startswith(".")
    ]  # no partial or probe objects
    by_stem = {k.split("/out/", 1)[1].rsplit(".", 1)[0]: k for k in outputs}
    assert set(by_stem) == {"a", "b", "sub/c"}
    for key, (w, h, _) in INPUTS.items():
        stem = key.removeprefix("in/").rsplit(".", 1)[0]
        with Image.open(io.BytesIO(fs.cat(by_stem[stem]))) as img:
            img.load()
            assert img.size == (2 * w, 2 * h)
    for item in result.items:
        assert item.source.startswith(f"s3://{bucket}/in/") and (item.output or "").startswith(
            f"s3://{bucket}/out/"
        )
    manifest = json.loads(fs.cat(f"{bucket}/out/{MANIFEST_NAME}"))
    assert {i["state"] for i in manifest["items"]} == {"done"} and len(manifest["items"]) == 3
    assert all(i["fingerprint"] for i in manifest["items"])  # ETags of the inputs
    # resume from the manifest in the bucket: nothing new
    jobs = created_jobs(sim)
    again = client.run_batch(spec)
    assert again.done == 3 and created_jobs(sim) == jobs and again.credits_spent == 0


def test_single_files_on_s3(
    sim: SimulatorServer,
    client_factory: Callable[..., VanceClient],
    s3: tuple[Any, dict[str, Any], str],
    test_video: Path,
) -> None:
    """The client alone: image and video inputs streamed from S3, results written to S3 atomically."""
    import av

    fs, options, bucket = s3
    fs.pipe(f"{bucket}/src/photo.png", image_bytes(24, 18, "PNG"))
    fs.put(str(test_video), f"{bucket}/src/clip.mp4")
    client = client_factory(sim, "open", storage_options=options)
    job = client.wait(
        client.submit(f"s3://{bucket}/src/photo.png", "upscale", {"scale": 4}).id,
        poll_interval=0.05,
        timeout=20,
    )
    out = client.download(job, f"s3://{bucket}/dst/photo")
    assert out == f"s3://{bucket}/dst/photo.jpg"
    with Image.open(io.BytesIO(fs.cat(out.removeprefix("s3://")))) as img:
        assert img.size == (96, 72)
    video = client.wait(
        client.submit(f"s3://{bucket}/src/clip.mp4", "video_upscale", {"scale": 2}).id,
        poll_interval=0.05,
        timeout=60,
    )
    out = client.download(video, f"s3://{bucket}/dst/clip_x2.mp4")
    with av.open(io.BytesIO(fs.cat(out.removeprefix("s3://")))) as container:
        ctx = container.streams.video[0].codec_context
        assert (ctx.width, ctx.height) == (128, 96)
    put = [r for r in sim.state.requests if r.method == "PUT"]
    assert len(put) == 1 and not put[0].authorization
    web = client_factory(sim, "web", storage_options=options)
    job = web.wait(
        web.submit(f"s3://{bucket}/src/photo.png", "upscale", {"scale": 2}).id, poll_interval=0.05, timeout=20
    )
    out = web.download(job, f"s3://{bucket}/dst/web")
    with Image.open(io.BytesIO(fs.cat(out.removeprefix("s3://")))) as img:
        assert img.size == (48, 36)
    assert sorted(k.rsplit("/", 1)[1] for k in fs.find(f"{bucket}/dst")) == sorted(
        ["photo.jpg", "clip_x2.mp4", out.rsplit("/", 1)[1]]
    )
