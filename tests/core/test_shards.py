"""Shards of one listing (core/batch/shards.py): an exact partition, stable hash shards, atomic
shard files without secrets, and batches run from them that pay each input once."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import image_bytes
from tests.core.conftest import batch_spec
from tests.core.helpers import charged_jobs, created_jobs
from vance_provider.core import VanceClient
from vance_provider.core.api.errors import ConfigurationError
from vance_provider.core.batch import shards as shards_mod
from vance_provider.core.batch.planning import plan_outputs
from vance_provider.core.batch.shards import (
    output_stem,
    plan_shards,
    read_shard,
    shard_spec,
    with_shard,
)
from vance_provider.core.state.storage import SourceFile, list_sources
from vance_provider.core.tools import resolve
from vance_provider.sim import SimulatorServer


def put_images(folder: Path, names: list[str]) -> None:
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[name.rsplit(".", 1)[1].lower()]
        path.write_bytes(image_bytes(16, 12, fmt))


def members(urls: list[str]) -> list[list[str]]:
    return [read_shard(u).sources for u in urls]


@pytest.mark.parametrize("by", ["count", "hash"])
@pytest.mark.parametrize("n", [1, 3, 7, 40])
def test_shards_partition_the_listing_exactly(tmp_path: Path, by: str, n: int) -> None:
    src = tmp_path / "in"
    put_images(src, [f"img{i:03d}.jpg" for i in range(25)])
    urls = plan_shards(str(src), str(tmp_path / "out"), n, by)  # type: ignore[arg-type]
    assert len(urls) == n
    listed = [f.url for f in list_sources(str(src))]
    got = [u for shard in members(urls) for u in shard]
    assert sorted(got) == sorted(listed) and len(got) == len(set(got))  # none twice, none missing
    if by == "count":
        sizes = [len(s) for s in members(urls)]
        assert max(sizes) - min(sizes) <= 1  # balanced
        assert got == sorted(listed)  # contiguous runs of the sorted listing


@pytest.mark.parametrize("by", ["count", "hash"])
def test_inputs_that_would_share_an_output_name_share_a_shard(tmp_path: Path, by: str) -> None:
    src = tmp_path / "in"
    names = ["a.jpg", "a.png", "A.webp", "x/a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.png"]
    put_images(src, names)
    urls = plan_shards(str(src), str(tmp_path / "out"), 4, by)  # type: ignore[arg-type]
    where = {u: i for i, shard in enumerate(members(urls)) for u in shard}
    a_shards = {i for u, i in where.items() if output_stem(u) == "a"}
    assert len(a_shards) == 1 and sum(1 for u in where if output_stem(u) == "a") == 4
    # The stem is the one the batch gives: outputs of different shards can never meet.
    call = resolve("upscale", {"scale": 2}, api="web")
    for shard in members(urls):
        files = list_sources(shard) if shard else []
        stems = {output_stem(f.url) for f in files}
        planned = plan_outputs(files, str(tmp_path / "out"), call)
        for out in planned.values():
            assert out.rsplit("/", 1)[1].split(".")[0].lower().split("-")[0] in stems


def test_hash_shards_stay_put_when_a_file_is_added(tmp_path: Path) -> None:
    src, out = tmp_path / "in", str(tmp_path / "out")
    put_images(src, [f"p{i}.jpg" for i in range(30)])
    before = {u: i for i, s in enumerate(members(plan_shards(str(src), out, 5, "hash"))) for u in s}
    put_images(src, ["new-one.png"])
    after = {u: i for i, s in enumerate(members(plan_shards(str(src), out, 5, "hash"))) for u in s}
    assert set(after) - set(before) == {(src / "new-one.png").as_posix()}
    assert all(after[u] == i for u, i in before.items())  # no other file moved


def test_a_plan_id_lists_once_and_refuses_other_arguments(tmp_path: Path) -> None:
    src, out = tmp_path / "in", str(tmp_path / "out")
    put_images(src, ["a.jpg", "b.jpg", "c.jpg"])
    first = plan_shards(str(src), out, 2, "count", plan_id="manual__2025-01-01T00:00:00+00:00")
    assert all("/_vance_shards/manual__2025-01-01T00_00_00_00_00-" in u for u in first)
    put_images(src, ["d.jpg"])
    again = plan_shards(str(src), out, 2, "count", plan_id="manual__2025-01-01T00:00:00+00:00")
    assert again == first and sum(len(s) for s in members(again)) == 3  # not listed again
    with pytest.raises(ConfigurationError, match="other arguments"):
        plan_shards(str(src), out, 3, "count", plan_id="manual__2025-01-01T00:00:00+00:00")


def test_shard_files_are_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    put_images(src, [f"i{i}.jpg" for i in range(6)])
    real = shards_mod.write_bytes_atomic
    calls = Counter[str]()

    def failing(url: str, data: bytes, so: Any = None) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real(url, data, so)

    monkeypatch.setattr(shards_mod, "write_bytes_atomic", failing)
    with pytest.raises(OSError):
        plan_shards(str(src), str(out), 3, "hash", plan_id="p1")
    monkeypatch.setattr(shards_mod, "write_bytes_atomic", real)
    written = sorted(p.name for p in (out / "_vance_shards" / "p1").iterdir())
    assert written == ["shard-00000.json"]  # no half file, no plan.json: the plan is not complete
    urls = plan_shards(str(src), str(out), 3, "hash", plan_id="p1")  # made again, whole
    assert sorted(p.name for p in (out / "_vance_shards" / "p1").iterdir()) == [
        "plan.json",
        "shard-00000.json",
        "shard-00001.json",
        "shard-00002.json",
    ]
    assert sum(len(s) for s in members(urls)) == 6


def test_shard_files_carry_no_secret(s3: tuple[Any, dict[str, Any], str], tmp_path: Path) -> None:
    fs, options, bucket = s3
    options = {**options, "key": "AKIASHARDSECRETKEY", "secret": "shard-secret-value-123"}
    for i in range(5):
        fs.pipe(f"{bucket}/in/f{i}.jpg", image_bytes(8, 8, "JPEG"))
    urls = plan_shards(f"s3://{bucket}/in/", f"s3://{bucket}/out", 2, "hash", options)
    assert all(u.startswith(f"s3://{bucket}/out/_vance_shards/") for u in urls)
    written = b"".join(fs.cat(p) for p in fs.find(f"{bucket}/out/_vance_shards"))
    for secret in ("AKIASHARDSECRETKEY", "shard-secret-value-123", "testing", "client_kwargs"):
        assert secret.encode() not in written
    shard = read_shard(urls[0], options)
    assert all(e.size > 0 and e.fingerprint for e in shard.files)  # sizes and ETags of the listing
    with pytest.raises(ConfigurationError, match="credential"):
        plan_shards(["https://user:pw@example.com/a.jpg"], str(tmp_path / "out"), 2)


def test_batches_from_shards_pay_each_input_once(
    api: str, sim: SimulatorServer, client_factory: Callable[..., VanceClient], tmp_path: Path
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    names = ["a.jpg", "a.png", "b.jpg", "c.png", "d.jpg", "e.jpg", "f.jpg"]
    put_images(src, names)
    client = client_factory(sim, api)
    urls = plan_shards(str(src), str(out), 3, "count")
    base = batch_spec("unused", "unused")
    errors: list[BaseException] = []

    def run(url: str) -> None:
        try:
            result = client.run_batch(with_shard(base, read_shard(url)))
            assert result.failed == 0, result.summary()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(u,)) for u in urls]  # side by side: own leases
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(created_jobs(sim)) == len(names)
    assert all(c == 1 for c in charged_jobs(sim).values()) and len(charged_jobs(sim)) == len(names)
    outputs = [p for p in out.iterdir() if p.is_file()]
    assert len(outputs) == len(names)  # one output each, none written over another's
    manifests = sorted((out / "_vance_shards" / "manifests" / "count-3").glob("shard-*.json"))
    assert len(manifests) == 3
    recorded = [i["source"] for m in manifests for i in json.loads(m.read_text())["items"]]
    assert sorted(recorded) == sorted((src / n).as_posix() for n in names)
    # A rerun (a cleared task) resumes from each shard's manifest: nothing created, nothing paid.
    for url in urls:
        again = client.run_batch(shard_spec(read_shard(url), tool="upscale", config={"scale": 2}))
        assert again.credits_spent == 0 and again.failed == 0
    assert len(created_jobs(sim)) == len(names)


def test_an_empty_shard_runs_to_nothing(
    sim: SimulatorServer, client_factory: Callable[..., VanceClient], tmp_path: Path
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    put_images(src, ["only.jpg"])
    urls = plan_shards(str(src), str(out), 3, "count")
    empty = [u for u in urls if not read_shard(u).files]
    assert len(empty) == 2
    assert plan_shards(str(src), str(out), 3, "count", skip_empty=True) == sorted(set(urls) - set(empty))
    result = client_factory(sim, "open").run_batch(with_shard(batch_spec("x", "y"), read_shard(empty[0])))
    assert result.items == [] and result.credits_spent == 0


def test_split_keeps_groups_whole_when_counting() -> None:
    files = [SourceFile(f"/in/{n}", 1, "1:0", n) for n in ["a.jpg", "a.png", "b.jpg", "c.jpg"]]
    shards = shards_mod.split(files, 2, "count")
    assert [[f.relative for f in s] for s in shards] == [["a.jpg", "a.png"], ["b.jpg", "c.jpg"]]


@pytest.mark.parametrize("other_lease", [False, True], ids=["alone", "beside-another-shard"])
def test_partial_files_are_cleared_only_by_a_batch_alone_in_its_destination(
    tmp_path: Path, other_lease: bool
) -> None:
    """A batch clears the partial downloads a killed run left, but not while another shard's batch
    holds a lease on the same destination: its partial files may be downloads in flight."""
    import fsspec

    from vance_provider.core.batch.planning import list_outputs

    out = tmp_path / "out"
    out.mkdir()
    (out / "_vance_lease-aaaa.lock").write_text("{}")  # this batch's
    if other_lease:
        (out / "_vance_lease-bbbb.lock").write_text("{}")
    partial = out / ".a.jpg.partial-1234abcd"
    partial.write_bytes(b"half")
    found = list_outputs(fsspec.filesystem("file"), str(out))
    assert partial.exists() is other_lease
    assert (str(partial) in found) is other_lease
