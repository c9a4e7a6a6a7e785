"""A big bucket starts at once: inputs are checked as they stream into jobs, not all before the first.

The order is what is asserted, never a time: the instrumented input checker notes, for each input,
how many jobs the service had created when it was checked.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.core.conftest import batch_spec
from tests.core.helpers import charged_jobs, created_jobs, uploads
from vance_provider.core import Progress, VanceClient
from vance_provider.core.batch import planning
from vance_provider.core.batch.planning import CHECK_CHUNK
from vance_provider.core.batch.stream import FIRST_CHUNK
from vance_provider.core.state.manifest import ItemState, Manifest, ManifestItem
from vance_provider.sim import SimulatorServer

BAD = b"not an image at all"
N = CHECK_CHUNK + 40  # more than the first chunks together: the last inputs are checked late


@pytest.fixture
def checks(sim: SimulatorServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """Every input checked, in order, with the number of jobs created by then. Before it checks
    the last input the checker waits (10 s at most) for a first job: a batch that checks every input
    before its first job never gets one, and shows it (0 jobs at the last check)."""
    seen: list[tuple[str, int]] = []
    real = planning.check_input
    lock = threading.Lock()

    def checked(url: str, *args: Any, **kwargs: Any) -> Any:
        if url.endswith(f"img{N - 1:04d}.jpg"):
            deadline = time.monotonic() + 10
            while not created_jobs(sim) and time.monotonic() < deadline:
                time.sleep(0.01)
        with lock:
            seen.append((url, len(created_jobs(sim))))
        return real(url, *args, **kwargs)

    monkeypatch.setattr(planning, "check_input", checked)
    yield seen


def make_bucket(make_image: Callable[..., Path], n: int = N) -> None:
    for i in range(n):
        make_image(f"in/img{i:04d}.jpg", 8, 6)


@pytest.mark.slow
def test_the_first_job_is_created_before_the_last_input_is_checked(
    api: str,
    sim: SimulatorServer,
    client: VanceClient,
    make_image: Callable[..., Path],
    tmp_path: Path,
    checks: list[tuple[str, int]],
) -> None:
    make_bucket(make_image)
    totals: list[int] = []

    def progress(p: Progress) -> None:
        totals.append(p.total)

    result = client.run_batch(
        batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), max_concurrency=4), on_progress=progress
    )
    assert (result.done, result.failed, result.skipped) == (N, 0, 0), result.summary()
    assert [url for url, _ in checks] == sorted(url for url, _ in checks)  # each once, in order
    assert len(checks) == N
    assert checks[0][1] == 0  # nothing is sent before the first input is checked
    assert checks[-1][1] > 0, "every input was checked before the first job was created"
    assert set(totals) == {N}  # the total is known from the listing, from the first report on
    assert sum(charged_jobs(sim).values()) == N and set(charged_jobs(sim).values()) == {1}


@pytest.mark.slow
def test_a_bad_input_late_in_the_stream_fails_alone_before_it_is_paid(
    api: str,
    sim: SimulatorServer,
    client: VanceClient,
    make_image: Callable[..., Path],
    tmp_path: Path,
    checks: list[tuple[str, int]],
) -> None:
    make_bucket(make_image, N - 1)
    (tmp_path / "in" / f"img{N - 1:04d}.jpg").write_bytes(BAD)  # listed last
    result = client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), max_concurrency=4))
    assert (result.done, result.failed, result.skipped) == (N - 1, 1, 0), result.summary()
    bad = result.items[-1]
    assert bad.state == "failed" and bad.job_id is None and bad.error_code == "UnsupportedFormatError"
    assert checks[-1][1] > 0  # it was found while the first jobs ran...
    assert len(created_jobs(sim)) == N - 1  # ...and never sent nor paid for
    assert hashlib.sha256(BAD).hexdigest() not in {j.source_sha256 for j in sim.state.jobs.values()}
    assert len(uploads(sim)) % (N - 1) == 0  # as many requests to send each good input, none for it
    assert sum(charged_jobs(sim).values()) == N - 1


def test_a_budget_reached_while_streaming_skips_the_rest_unpaid(
    api: str,
    sim: SimulatorServer,
    client: VanceClient,
    make_image: Callable[..., Path],
    tmp_path: Path,
    checks: list[tuple[str, int]],
) -> None:
    make_bucket(make_image)
    result = client.run_batch(
        batch_spec(
            str(tmp_path / "in"),
            str(tmp_path / "out"),
            max_concurrency=2,
            credit_budget=3,
            on_insufficient_credits="partial",
        )
    )
    assert result.done == 3 and result.skipped == N - 3, result.summary()
    assert result.stopped and "budget" in result.stopped
    assert all(i.job_id is None for i in result.items if i.state == "skipped")
    assert len(created_jobs(sim)) == 3 and sum(charged_jobs(sim).values()) == 3


@pytest.mark.slow
def test_new_inputs_items_are_made_as_they_stream_and_the_first_write_holds_them_all(
    api: str,
    sim: SimulatorServer,
    client: VanceClient,
    make_image: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new input's manifest item is made when the stream reaches it, not all before the first
    job; the rest are made once the first job is created, so the manifest's first write (which
    makes the outputs this batch's own) holds every planned item."""
    make_bucket(make_image)
    made: list[int] = []  # for each item made, the jobs the engine had created by then
    written: list[int] = []  # the items in each whole write of the manifest
    submitted: list[str] = []  # the engine's own count: the simulator logs a request after answering
    first_job = threading.Event()
    new, write, set_state, check = ManifestItem.new, Manifest._write, ManifestItem.set, planning.check_input

    def counted_new(cls: type[ManifestItem], *args: Any, **kwargs: Any) -> ManifestItem:
        made.append(len(submitted))
        return new(*args, **kwargs)

    def counted_write(self: Manifest, items: list[ManifestItem]) -> None:
        written.append(len(items))
        write(self, items)

    def counted_set(self: ManifestItem, state: ItemState, **changes: Any) -> None:
        if state is ItemState.SUBMITTED:
            submitted.append(self.source)
            first_job.set()
        set_state(self, state, **changes)

    def held_check(url: str, *args: Any, **kwargs: Any) -> Any:
        # The second chunk's check (in a thread) waits for the first job, which needs only the
        # first chunk: else the stream may reach the last input before the first job's answer, and
        # every item is made before any job by chance. A batch whose first job waits for every
        # item never gets one: 10 s, then it shows.
        if url.endswith(f"img{FIRST_CHUNK:04d}.jpg"):
            first_job.wait(10)
        return check(url, *args, **kwargs)

    monkeypatch.setattr(ManifestItem, "set", counted_set)
    monkeypatch.setattr(planning, "check_input", held_check)
    monkeypatch.setattr(ManifestItem, "new", classmethod(counted_new))
    monkeypatch.setattr(Manifest, "_write", counted_write)
    result = client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), max_concurrency=4))
    assert (result.done, result.failed, result.skipped) == (N, 0, 0), result.summary()
    assert len(made) == N  # one item per input
    assert made[0] == 0 and made[-1] > 0, "every item was made before the first job was created"
    assert written[0] == N  # the first write: the whole plan


def test_what_is_kept_for_an_input_goes_when_it_is_finished(
    api: str,
    sim: SimulatorServer,
    client: VanceClient,
    make_image: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run of 100k inputs keeps per input only the manifest's item: each job's submission time,
    size and record go once its item is finished."""
    from vance_provider.core.batch.runner import BatchRunner

    make_bucket(make_image, 12)
    kept: list[dict[str, int]] = []
    close = BatchRunner.close

    async def closing(self: BatchRunner, **kwargs: Any) -> None:
        kept.append(
            {
                "submissions": self._submissions,
                "submitted_at": len(self._submitted_at),
                "sizes": len(self._sizes_in_units),
                "recorded": len(self._recorded),
                "ended_before": len(self._ended_before),
            }
        )
        await close(self, **kwargs)

    monkeypatch.setattr(BatchRunner, "close", closing)
    result = client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), max_concurrency=4))
    assert result.done == 12 and len(created_jobs(sim)) == 12
    assert kept == [{"submissions": 12, "submitted_at": 0, "sizes": 0, "recorded": 0, "ended_before": 0}]
