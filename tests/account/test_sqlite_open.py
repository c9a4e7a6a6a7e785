"""Workers that open a new SQLite store at the same moment all get it (none is told "locked")."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

from vance_provider.core.account.sqlite import SqliteStore


def _open_at_once(path: str, barrier: Any, answers: Any) -> None:
    barrier.wait()
    try:
        SqliteStore(path)._open().close()
        answers.put("opened")
    except Exception as exc:  # the answer is the test's verdict
        answers.put(f"{type(exc).__name__}: {exc}")


def test_workers_opening_a_new_store_at_once_all_open_it(tmp_path: Path) -> None:
    """Switching a new file to WAL needs it alone: the processes that lose the race are answered
    "database is locked" at once, not after the busy timeout, and must ask again."""
    ctx = multiprocessing.get_context("fork")
    processes = 8
    for round_ in range(20):
        path = str(tmp_path / f"round{round_}" / "account.sqlite3")
        barrier, answers = ctx.Barrier(processes), ctx.Queue()
        workers = [ctx.Process(target=_open_at_once, args=(path, barrier, answers)) for _ in range(processes)]
        for worker in workers:
            worker.start()
        got = [answers.get(timeout=60) for _ in workers]
        for worker in workers:
            worker.join(60)
        assert got == ["opened"] * processes, (round_, got)
