"""The result cache inside the batch engine: the same pixels are never paid for twice."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.core.conftest import batch_spec
from tests.core.helpers import charges, created_jobs, uploads
from vance_provider.core import VanceClient
from vance_provider.sim import SimulatorServer


def folder(make_image: Callable[..., Path], name: str, n: int) -> Path:
    paths = [
        make_image(f"{name}/img{i:02d}.{'png' if i % 4 == 0 else 'jpg'}", 16 + i % 7, 12 + i % 5)
        for i in range(n)
    ]
    return paths[0].parent


def api_requests(sim: SimulatorServer) -> list[str]:
    return [r.path for r in list(sim.state.requests) if not r.path.startswith("/storage/")]


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_the_same_files_in_a_second_folder_cost_nothing(
    storage: str,
    api: str,
    sim: SimulatorServer,
    client: VanceClient,
    make_image: Callable[..., Path],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    # Several windows of the default 8 jobs either way; fewer on S3, where each item is a few
    # round trips to the (single-threaded) moto server.
    n = 50 if storage == "local" else 20
    first = folder(make_image, "day1", n)
    second = tmp_path / "day2"
    shutil.copytree(first, second)
    (second / "img03.jpg").rename(second / "renamed-copy.jpg")  # a renamed copy is the same pixels
    if storage == "local":
        cache, so, out = str(tmp_path / "cache"), None, str(tmp_path / "out")
        read = lambda p: Path(p).read_bytes()  # noqa: E731
    else:
        fs, so, bucket = request.getfixturevalue("s3")
        cache, out = f"s3://{bucket}/vance-cache", f"s3://{bucket}/out"
        read = fs.cat
    one = client.run_batch(batch_spec(str(first), f"{out}/1", cache=cache, storage_options=so))
    assert one.done == n and one.credits_spent == n and sum(charges(sim)) == n
    jobs, sent = len(created_jobs(sim)), len(uploads(sim))
    before = len(api_requests(sim))
    two = client.run_batch(batch_spec(str(second), f"{out}/2", cache=cache, storage_options=so))
    assert two.done == n and two.credits_spent == 0 and sum(charges(sim)) == n  # paid 0
    assert all(i.cached for i in two.items) and two.credits_saved == n
    assert len(created_jobs(sim)) == jobs and len(uploads(sim)) == sent
    assert api_requests(sim)[before:] == []  # nothing at all asked of the API
    firsts = {Path(i.source).name: i.output for i in one.items}
    for item in two.items:
        name = Path(item.source).name
        assert read(item.output) == read(firsts["img03.jpg" if name == "renamed-copy.jpg" else name])
    assert two.summary()["cached"] == n and two.summary()["credits_saved"] == n


def test_an_altered_cache_entry_is_a_miss_and_is_paid_once(
    api: str, sim: SimulatorServer, client: VanceClient, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    src = folder(make_image, "in", 3)
    cache = tmp_path / "cache"
    client.run_batch(batch_spec(str(src), str(tmp_path / "a"), cache=str(cache)))
    blobs = sorted(p for p in cache.rglob("*") if p.is_file() and p.suffix in (".jpg", ".png"))
    assert len(blobs) == 3
    blobs[0].write_bytes(blobs[0].read_bytes()[:-10])  # truncated on disk
    blobs[1].write_bytes(b"X" + blobs[1].read_bytes()[1:])  # altered, same size
    result = client.run_batch(batch_spec(str(src), str(tmp_path / "b"), cache=str(cache)))
    assert result.done == 3
    assert sum(1 for i in result.items if i.cached) == 1  # the sound entry only
    assert sum(charges(sim)) == 3 + 2  # each bad entry re-paid once
    again = client.run_batch(batch_spec(str(src), str(tmp_path / "c"), cache=str(cache)))
    assert all(i.cached for i in again.items) and sum(charges(sim)) == 5  # and replaced: served now
