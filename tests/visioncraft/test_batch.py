"""VisionCraft upscale and img2img over datasets through the batch engine, unchanged."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from tests.visioncraft.conftest import FREE, posts
from vance_provider.core import BatchSpec, InvalidConfigError, VanceClient, run_batch
from vance_provider.sim import SimulatorServer


def dataset(make_image: Callable[..., Path], n: int = 4) -> Path:
    for i in range(n):
        make_image(f"data/img{i}.{'png' if i % 2 else 'jpg'}", 40 + i, 30)
    return make_image("data/img0.jpg", 40, 30).parent


def test_batch_upscale(
    vc: VanceClient, sim: SimulatorServer, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    src = dataset(make_image)
    spec = BatchSpec(source=str(src), destination=str(tmp_path / "out"), tool="upscale", max_concurrency=3)
    result = vc.run_batch(spec)
    assert result.done == 4 and result.failed == 0 and result.credits_spent == 0
    for out in result.outputs:
        assert out.endswith(".png")
        w, h = Image.open(out).size
        assert (w, h)[1] == 60
    assert len(posts(sim, "/upscale")) == 4
    again = vc.run_batch(spec)  # the manifest says done: nothing is requested again
    assert again.done == 4 and len(posts(sim, "/upscale")) == 4


def test_batch_img2img_with_the_async_engine(
    sim: SimulatorServer, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    from vance_provider.core import AsyncVanceClient

    src = dataset(make_image, 2)

    async def go() -> object:
        async with AsyncVanceClient(FREE, api="visioncraft", base_url=sim.base_url) as client:
            spec = BatchSpec(
                source=str(src),
                destination=str(tmp_path / "out"),
                tool="img2img",
                config={
                    "prompt": "watercolour",
                    "scheduler": "DDIM",
                    "refiner": "no_refiner",
                    "strength": 0.6,
                },
            )
            return await run_batch(client, spec)

    import asyncio

    result = asyncio.run(go())
    assert result.done == 2  # type: ignore[attr-defined]


def test_batch_options_are_checked_before_spending(
    vc: VanceClient, sim: SimulatorServer, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    src = dataset(make_image, 2)
    spec = BatchSpec(
        source=str(src),
        destination=str(tmp_path / "out"),
        tool="img2img",
        config={"prompt": "x", "scheduler": "nope"},
    )
    with pytest.raises(InvalidConfigError, match="scheduler"):
        vc.run_batch(spec)
    assert posts(sim) == []


def test_batch_under_the_rate_limit(
    vc_factory: Callable[..., VanceClient],
    sim_factory: Callable[..., SimulatorServer],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    server = sim_factory(visioncraft_rate_limit=3, rate_window=0.5)
    src = dataset(make_image, 6)
    result = vc_factory(FREE, server).run_batch(
        BatchSpec(source=str(src), destination=str(tmp_path / "out"), tool="upscale", max_concurrency=6)
    )
    assert result.done == 6
    statuses = [r.status for r in server.state.requests if r.path == "/upscale"]
    assert statuses.count(200) == 6 and 429 in statuses
