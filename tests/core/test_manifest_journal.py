"""Manifest writes follow the work done, not the batch's size (a journal of changed items)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from vance_provider.core.state.manifest import ItemState, Manifest, ManifestItem


def filled(url: str, n: int, so: Any = None) -> Manifest:
    m = Manifest(url, so)
    for i in range(n):
        m.items[f"s{i}"] = ManifestItem(f"s{i}", "f", "c", output=f"o{i}")
    m.touch()
    return m


def written(fs_root: Path) -> int:
    return sum(p.stat().st_size for p in fs_root.rglob("*") if p.is_file())


def test_a_flush_writes_only_the_changed_items(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Manifest, "JOURNAL_FROM", 100)
    url = str(tmp_path / "m.json")
    m = filled(url, 1000)
    asyncio.run(m.flush())
    base = (tmp_path / "m.json").stat().st_size
    m.items["s5"].set(ItemState.SUBMITTED, job_id="j5")
    m.items["s7"].generation = 3  # a plain assignment is a change too
    m.touch()
    asyncio.run(m.flush())
    [segment] = list((tmp_path / "m.json.journal").iterdir())
    rows = json.loads(segment.read_text())["items"]
    assert {r["source"] for r in rows} == {"s5", "s7"} and segment.stat().st_size < base / 100
    assert (tmp_path / "m.json").stat().st_size == base  # the big file was not rewritten
    # A crash now: a new process loads the same state from the manifest plus its journal.
    again = Manifest(url).load()
    assert again.items["s5"].job_id == "j5" and again.items["s7"].generation == 3
    assert again.items["s6"].state == ItemState.PENDING and len(again.items) == 1000
    # The batch's end folds the journal in.
    m.touch()
    asyncio.run(m.flush(compact=True))
    assert not (tmp_path / "m.json.journal").exists()
    data = json.loads((tmp_path / "m.json").read_text())
    assert {i["source"]: i["job_id"] for i in data["items"]}["s5"] == "j5"


def test_bytes_written_per_change_do_not_grow_with_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Manifest, "JOURNAL_FROM", 100)
    per_change = []
    for n in (1_000, 10_000):
        root = tmp_path / str(n)
        root.mkdir()
        m = filled(str(root / "m.json"), n)
        asyncio.run(m.flush())
        before = written(root)
        for k in range(200):  # 200 flushes of 5 changed items each
            for j in range(5):
                m.items[f"s{(k * 5 + j) % n}"].set(ItemState.DONE, credits=1.0)
            m.touch()
            asyncio.run(m.flush())
        per_change.append((written(root) - before) / 1000)
    # Compaction may rewrite the whole file now and then, but the journal keeps writes linear.
    assert per_change[1] < 1.5 * per_change[0] + 1000, per_change


def test_segments_already_folded_in_are_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash between writing the compacted manifest and removing the old segments."""
    monkeypatch.setattr(Manifest, "JOURNAL_FROM", 10)
    url = str(tmp_path / "m.json")
    m = filled(url, 50)
    asyncio.run(m.flush())
    m.items["s1"].set(ItemState.DONE)
    m.touch()
    asyncio.run(m.flush())
    stale = (tmp_path / "m.json.journal" / "00000001.json").read_text()
    m.items["s1"].set(ItemState.FAILED, error="later")
    m.touch()
    asyncio.run(m.flush(compact=True))
    (tmp_path / "m.json.journal").mkdir()
    (tmp_path / "m.json.journal" / "00000001.json").write_text(stale)  # left behind
    assert Manifest(url).load().items["s1"].state == ItemState.FAILED


def test_journal_on_an_object_store(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Manifest, "JOURNAL_FROM", 10)
    fs, so, bucket = s3
    url = f"s3://{bucket}/out/_vance_manifest.json"
    m = filled(url, 40, so)
    asyncio.run(m.flush())
    m.items["s3"].set(ItemState.DONE, credits=2.0)
    m.touch()
    asyncio.run(m.flush())
    fs.invalidate_cache()
    assert len(fs.ls(f"{bucket}/out/_vance_manifest.json.journal")) == 1
    assert Manifest(url, so).load().items["s3"].credits == 2.0


def test_a_cancelled_flush_finishes_its_write_before_the_next_one_starts(tmp_path: Path) -> None:
    """Ctrl-C during a periodic write, then the final write: the two never overlap, so an older
    snapshot cannot land after the newer one."""
    import threading

    m = filled(str(tmp_path / "m.json"), 3)
    release, started = threading.Event(), threading.Event()
    order: list[str] = []
    real = m._write

    def slow_write(items: list[ManifestItem]) -> None:
        order.append(f"start {len(order)}")
        if not started.is_set():
            started.set()
            release.wait(10)
        real(items)
        order.append("end")

    m._write = slow_write  # type: ignore[method-assign]

    async def scenario() -> None:
        first = asyncio.create_task(m.flush())
        await asyncio.to_thread(started.wait, 10)
        first.cancel()
        m.items["s1"].set(ItemState.SUBMITTED, job_id="j1")
        m.touch()
        final = asyncio.create_task(m.flush(compact=True))
        await asyncio.sleep(0)  # the final flush is waiting for the lock, not writing
        assert order == ["start 0"]
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await first
        await final

    asyncio.run(scenario())
    assert order == ["start 0", "end", "start 2", "end"]
    assert Manifest(str(tmp_path / "m.json")).load().items["s1"].job_id == "j1"
