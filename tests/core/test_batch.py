"""The batch engine: safe outputs, failures that stay local, resume without paying twice, budgets."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.core.conftest import TOKENS, async_client, batch_spec, image_size
from tests.core.helpers import (
    charged_jobs,
    charges,
    created_jobs,
    manifest_job_ids,
    release_held_jobs,
    uploads,
)
from vance_provider.core import BatchResult, BatchSpec, ItemState, Progress, VanceClient, run_batch
from vance_provider.core.api.errors import (
    BatchFailedError,
    BudgetExceededError,
    InsufficientCreditsError,
    InvalidInputError,
    ManifestMismatchError,
    WaitTimeoutError,
)
from vance_provider.core.state.manifest import MANIFEST_NAME
from vance_provider.core.state.storage import OutputExistsError, safe_name
from vance_provider.sim import Account, Faults, SimulatorServer

SAFE = re.compile(r"^[\w.\-/]+$")


def manifest_items(destination: Path) -> dict[str, dict[str, Any]]:
    data = json.loads((destination / MANIFEST_NAME).read_text())
    assert data["version"] == 1
    return {i["source"]: i for i in data["items"]}


def make_inputs(make_image: Callable[..., Path], names: list[str], size: tuple[int, int] = (16, 12)) -> None:
    for name in names:
        make_image(f"in/{name}", *size)


def test_mixed_folder_with_subfolders(
    api: str, sim: SimulatorServer, client: VanceClient, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    sizes = {"a.jpg": (32, 24), "b.png": (20, 10), "sub/c.jpg": (16, 16), "sub/deeper/d.png": (24, 12)}
    for name, (w, h) in sizes.items():
        make_image(f"in/{name}", w, h)
    (tmp_path / "in" / "notes.txt").write_text("not an input")
    make_image("in/.hidden.jpg", 8, 8)
    make_image("in/_DSC0001.jpg", 8, 8)  # a camera's name, not the engine's: an input like any other
    out = tmp_path / "out"
    result = client.run_batch(batch_spec(str(tmp_path / "in"), str(out)))
    assert isinstance(result, BatchResult)
    assert (result.done, result.failed, result.skipped, result.stopped) == (5, 0, 0, None), result.summary()
    assert result.credits_spent == 5.0 and sum(charges(sim)) == 5.0
    # What is listed but not taken is reported with its reason, never dropped silently.
    ignored = {Path(u).name: why for u, why in result.ignored}
    assert ignored == {"notes.txt": "not an image or video (by its extension)", ".hidden.jpg": "hidden file"}
    sizes["_DSC0001.jpg"] = (8, 8)
    by_source = {Path(i.source).relative_to(tmp_path / "in").as_posix(): i for i in result.items}
    assert set(by_source) == set(sizes)
    for name, (w, h) in sizes.items():
        item = by_source[name]
        assert item.output and item.job_id and item.state == "done"
        rel = Path(item.output).relative_to(out).as_posix()
        assert rel.rsplit(".", 1)[0] == name.rsplit(".", 1)[0]  # same sub-folders, same stem
        assert image_size(item.output) == (2 * w, 2 * h)
    manifest = manifest_items(out)
    assert result.manifest == str(out / MANIFEST_NAME)
    assert {m["state"] for m in manifest.values()} == {"done"} and len(manifest) == 5
    assert {m["job_id"] for m in manifest.values()} == {i.job_id for i in result.items}
    assert sorted(p.name for p in out.rglob("*") if p.name.startswith(".")) == []  # no partial or probe files
    assert (
        sum(result.requests.get(k, 0) for k in ("create_job", "transform")) == 5
    )  # request counts, for metrics


def test_output_format_and_remove_bg(
    api: str, client: VanceClient, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    make_inputs(make_image, ["x.jpg", "y.jpg"])
    result = client.run_batch(
        batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), "remove_bg", {}, output_format="png")
    )
    assert result.done == 2
    assert sorted(Path(o).name for o in result.outputs) == ["x.png", "y.png"]


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("a.jpg", "a.jpg"),
        ("sub/dir/b.png", "sub/dir/b.png"),
        ("../../etc/passwd.jpg", "etc/passwd.jpg"),
        ("/abs/olute.jpg", "abs/olute.jpg"),
        ("x\\..\\..\\evil.jpg", "x/evil.jpg"),
        ("./.././hidden/.x.jpg", "hidden/x.jpg"),
        ("my photo (1).jpg", "my_photo_1_.jpg"),
        ("café ✨.jpg", "café_.jpg"),
        ("cafe\u0301.jpg", "café.jpg"),  # NFD -> NFC
        ("a\x00b\n.jpg", "a_b_.jpg"),
        ("....", "file"),
        ("", "file"),
    ],
)
def test_safe_name(relative: str, expected: str) -> None:
    assert safe_name(relative) == expected
    assert ".." not in safe_name(relative).split("/")


def check_outputs(result: BatchResult, out: Path, count: int) -> list[Path]:
    assert result.done == count, result.summary()
    outputs = [Path(o) for o in result.outputs]
    assert len({o.as_posix().lower() for o in outputs}) == count  # distinct, even case-insensitively
    for o in outputs:
        rel = o.relative_to(out).as_posix()  # inside the destination
        assert o.resolve().is_relative_to(out.resolve())
        assert (
            SAFE.match(rel)
            and ".." not in rel.split("/")
            and not any(p.startswith(".") for p in rel.split("/"))
        )
        assert unicodedata.is_normalized("NFC", rel)
        assert image_size(o) == (32, 24)
    return outputs


def test_safe_and_distinct_output_names(
    api: str, client: VanceClient, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    names = [
        "a.jpg",
        "a.png",
        "A.jpeg",
        "x\\..\\..\\evil.jpg",
        "my photo (1).jpg",
        "my_photo_1_.jpg",
        "sub/a.jpg",
        "café.jpg",
        "semi;colon&amp.png",
    ]
    make_inputs(make_image, names, (16, 12))
    out = tmp_path / "out"
    outputs = check_outputs(client.run_batch(batch_spec(str(tmp_path / "in"), str(out))), out, len(names))
    # nothing was written beside the destination
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]
    stems = Counter(o.relative_to(out).as_posix().rsplit(".", 1)[0].split("-")[0].lower() for o in outputs)
    assert stems["a"] == 3 and stems["my_photo_1_"] == 2  # collisions were made distinct, not overwritten
    assert (out / "x" / "evil.jpg").exists() or any(
        o.relative_to(out).as_posix().startswith("x/evil") for o in outputs
    )


@pytest.mark.parametrize("api", ["open", "web"])
def test_unicode_output_names(
    api: str,
    sim: SimulatorServer,
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    names = ["café ✨ (1).jpg", "cafe\u0301.jpg", "café.jpg", "日本語の写真.png", "Ωmega.jpg"]
    make_inputs(make_image, names, (16, 12))
    out = tmp_path / "out"
    client = client_factory(sim, api)
    outputs = check_outputs(client.run_batch(batch_spec(str(tmp_path / "in"), str(out))), out, len(names))
    stems = Counter(o.stem.split("-")[0] for o in outputs)
    assert stems["café"] == 2  # NFD and NFC spellings of one name: both kept, distinct


@pytest.mark.parametrize("chunk", [256, 2], ids=["one-chunk", "chunks-of-2"])
def test_one_bad_input_fails_alone(
    api: str,
    sim: SimulatorServer,
    client: VanceClient,
    make_image: Callable[..., Path],
    tmp_path: Path,
    chunk: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("vance_provider.core.batch.runner.CHECK_CHUNK", chunk)  # inputs checked per hop
    make_inputs(make_image, ["ok1.jpg", "ok2.png", "ok3.jpg"])
    (tmp_path / "in" / "broken.jpg").write_bytes(b"garbage, not a picture")
    good = (tmp_path / "in" / "ok1.jpg").read_bytes()
    (tmp_path / "in" / "cut.jpg").write_bytes(good[: len(good) // 2])
    snapshots: list[tuple[int, int, int, int]] = []
    result = client.run_batch(
        batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), on_failure="continue"),
        lambda p: snapshots.append((p.total, p.done, p.failed, p.skipped)),
    )
    assert (result.done, result.failed, result.skipped) == (3, 2, 0)
    failed = {Path(i.source).name: i for i in result.items if i.state == "failed"}
    assert set(failed) == {"broken.jpg", "cut.jpg"}
    assert "not a supported image" in (failed["broken.jpg"].error or "")
    assert failed["broken.jpg"].error_code == "UnsupportedFormatError"
    assert "truncated" in (failed["cut.jpg"].error or "") and failed["cut.jpg"].job_id is None
    assert len(created_jobs(sim)) == 3  # the bad ones were never uploaded
    assert sum(1 for r in sim.state.requests if r.path in ("/web_api/v1/upload", "/api/v1/jobs")) == 3
    # the progress reaches the total, bad inputs included
    assert snapshots and snapshots[-1] == (5, 3, 2, 0)
    # policies: "continue" never raises, "fail" does, with the result attached
    assert result.raise_for_failures("continue") is result
    with pytest.raises(BatchFailedError, match="2 of 5 item") as info:
        result.raise_for_failures("fail")
    assert info.value.result is result
    summary = result.summary()
    assert summary["failed"] == 2 and set(summary["failures"]) == {i.source for i in failed.values()}
    assert TOKENS[api] not in json.dumps(summary)


def test_fail_fast_stops_submitting(
    api: str,
    sim_factory: Callable[..., SimulatorServer],
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    sim = sim_factory(faults=Faults(fail_job=1.0))
    client = client_factory(sim, api)
    make_inputs(make_image, ["a.jpg", "b.jpg", "c.jpg"])
    result = client.run_batch(
        batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), on_failure="fail_fast", max_concurrency=1)
    )
    assert (result.done, result.failed, result.skipped) == (0, 1, 2)
    assert result.stopped and result.stopped.startswith("fail_fast")
    assert len(created_jobs(sim)) == 1 and sim.state.charges() == []


def test_fail_fast_with_an_invalid_input_submits_nothing(
    api: str, sim: SimulatorServer, client: VanceClient, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    make_inputs(make_image, ["a.jpg", "b.jpg"])
    (tmp_path / "in" / "bad.png").write_bytes(b"nope")
    result = client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), on_failure="fail_fast"))
    assert (result.done, result.failed, result.skipped) == (0, 1, 2)
    assert result.stopped and "bad.png" in result.stopped
    assert uploads(sim) == []


def test_rerun_resumes_without_paying_again(
    api: str,
    sim: SimulatorServer,
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    make_inputs(make_image, ["a.jpg", "b.jpg", "c.png"])
    spec = batch_spec(str(tmp_path / "in"), str(tmp_path / "out"))
    first = client_factory(sim, api).run_batch(spec)
    assert first.done == 3
    jobs, ledger, requests = created_jobs(sim), len(sim.state.ledger), len(sim.state.requests)
    snapshots: list[Progress] = []
    second = client_factory(sim, api).run_batch(spec, lambda p: snapshots.append(p))
    assert second.done == 3 and second.credits_spent == 0.0
    assert created_jobs(sim) == jobs  # no new submission
    assert len(sim.state.ledger) == ledger  # no new charge
    assert len(sim.state.requests) == requests  # not even a balance check: nothing to do
    assert [i.job_id for i in second.items] == [i.job_id for i in first.items]
    assert second.outputs == first.outputs


def test_changed_or_missing_outputs_are_redone(
    api: str, sim: SimulatorServer, client: VanceClient, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    make_inputs(make_image, ["a.jpg", "b.jpg", "c.jpg"])
    spec = batch_spec(str(tmp_path / "in"), str(tmp_path / "out"))
    first = {Path(i.source).name: i for i in client.run_batch(spec).items}
    make_image("in/a.jpg", 20, 20)  # new content
    Path(first["b.jpg"].output or "").unlink()  # output lost
    jobs_before = len(created_jobs(sim))
    second = {Path(i.source).name: i for i in client.run_batch(spec).items}
    assert all(i.state == "done" for i in second.values())
    assert image_size(second["a.jpg"].output or "") == (40, 40)
    assert second["a.jpg"].job_id != first["a.jpg"].job_id
    assert second["c.jpg"].job_id == first["c.jpg"].job_id
    assert Path(second["b.jpg"].output or "").exists()
    new_jobs = len(created_jobs(sim)) - jobs_before
    if api == "open":  # the lost output is fetched again from the same job (same key): free
        assert second["b.jpg"].job_id == first["b.jpg"].job_id and new_jobs == 1
        assert sum(charges(sim)) == 4.0
    else:  # the web API has no keys: a new job, charged on download
        assert new_jobs == 2 and sum(charges(sim)) == 5.0
    assert sim.state.double_charges() == []


def test_force_redoes_items(
    api: str, sim: SimulatorServer, client: VanceClient, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    make_inputs(make_image, ["a.jpg", "b.jpg"])
    first = client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out")))
    second = client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), force=True))
    assert second.done == 2 and second.credits_spent == 2.0
    assert len(created_jobs(sim)) == 4
    assert not {i.job_id for i in first.items} & {i.job_id for i in second.items}
    assert sum(charges(sim)) == 4.0 and sim.state.double_charges() == []
    assert second.outputs == first.outputs
    third = client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out")))
    assert third.credits_spent == 0 and len(created_jobs(sim)) == 4


def test_progress_callback_counts(
    api: str, client: VanceClient, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    make_inputs(make_image, [f"p{i}.jpg" for i in range(5)])
    seen: list[tuple[int, int, float, str | None]] = []
    client.run_batch(
        batch_spec(str(tmp_path / "in"), str(tmp_path / "out")),
        lambda p: seen.append((p.total, p.done, p.credits_spent, p.last.state if p.last else None)),
    )
    assert [s[1] for s in seen] == [1, 2, 3, 4, 5]
    assert {s[0] for s in seen} == {5} and seen[-1][2] == 5.0 and {s[3] for s in seen} == {"done"}


def test_concurrency_is_bounded(
    api: str,
    sim_factory: Callable[..., SimulatorServer],
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    sim = sim_factory(time_per_job=0.2)
    client = client_factory(sim, api)
    make_inputs(make_image, [f"c{i}.jpg" for i in range(6)])
    result = client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), max_concurrency=2))
    # The exact peak, from the service's own record of when each job existed (no sampling).
    with sim.state.lock:
        events = sorted(
            [(j.created_at, 1) for j in sim.state.jobs.values()]
            + [(j.finished_at or float("inf"), -1) for j in sim.state.jobs.values()]
        )  # at equal times an end (-1) sorts before a start (+1)
    in_flight = [0]
    for _, step in events:
        in_flight.append(in_flight[-1] + step)
    assert result.done == 6 and max(in_flight) == 2


# --- credits: budget and balance ------------------------------------------------------------------
def test_budget_too_small_fails_before_any_upload(
    api: str, sim: SimulatorServer, client: VanceClient, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    make_inputs(make_image, ["a.jpg", "b.jpg", "c.jpg"])
    with pytest.raises(BudgetExceededError, match="needs about 3 credits for 3 item") as info:
        client.run_batch(
            batch_spec(
                str(tmp_path / "in"), str(tmp_path / "out"), credit_budget=2, on_insufficient_credits="fail"
            )
        )
    assert "partial" in (info.value.hint or "")
    assert uploads(sim) == [] and sim.state.ledger == []


def test_balance_too_small_fails_before_any_upload(
    api: str,
    sim_factory: Callable[..., SimulatorServer],
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    sim = sim_factory(accounts=[Account(credits=2)])
    make_inputs(make_image, ["a.jpg", "b.jpg", "c.jpg"])
    with pytest.raises(InsufficientCreditsError, match="the balance is 2"):
        client_factory(sim, api).run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out")))
    assert uploads(sim) == [] and sim.state.ledger == []


def test_partial_budget(
    api: str, sim: SimulatorServer, client: VanceClient, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    make_inputs(make_image, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    result = client.run_batch(
        batch_spec(
            str(tmp_path / "in"), str(tmp_path / "out"), credit_budget=2, on_insufficient_credits="partial"
        )
    )
    assert (result.done, result.skipped, result.failed) == (2, 2, 0)
    assert result.stopped and "budget of 2" in result.stopped
    for item in result.items:
        if item.state == "skipped":
            assert item.job_id is None and "not submitted" in (item.error or "")
    assert result.credits_spent == 2.0 and sum(charges(sim)) == 2.0
    assert len(created_jobs(sim)) == 2


def test_web_sharpener_costs_two_within_the_budget(
    sim: SimulatorServer,
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    make_inputs(make_image, ["a.jpg", "b.jpg", "c.jpg"])
    result = client_factory(sim, "web").run_batch(
        batch_spec(
            str(tmp_path / "in"),
            str(tmp_path / "out"),
            "sharpen",
            {},
            credit_budget=3,
            on_insufficient_credits="partial",
        )
    )
    assert (result.done, result.skipped) == (1, 2)
    assert charges(sim) == [2.0] and result.credits_spent == 2.0


def test_balance_runs_out(
    api: str,
    sim_factory: Callable[..., SimulatorServer],
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    sim = sim_factory(accounts=[Account(credits=3)])
    make_inputs(make_image, [f"i{n}.jpg" for n in range(6)])
    result = client_factory(sim, api).run_batch(
        batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), on_insufficient_credits="partial")
    )
    assert result.done == 3 and result.done + result.skipped + result.failed == 6
    assert "balance" in result.stopped  # the batch says why it stopped; the items not sent, too
    assert {(i.state, i.error) for i in result.items if i.state != "done"} == {
        ("skipped", f"not submitted: {result.stopped}")
    }
    assert sum(charges(sim)) == 3.0 and sim.state.balance() == 0.0  # nothing beyond the balance


def test_balance_drained_mid_batch(
    api: str,
    sim_factory: Callable[..., SimulatorServer],
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """Someone else spends the credits while the batch runs: it stops, and pays for nothing it cannot."""
    sim = sim_factory(accounts=[Account(credits=10)])
    make_inputs(make_image, [f"i{n}.jpg" for n in range(4)])

    def drain(progress: Progress) -> None:
        if progress.done == 1:
            with sim.state.lock:
                sim.state.accounts["demo"].used = 10.0 - sim.state.accounts["demo"].frozen

    result = client_factory(sim, api).run_batch(
        batch_spec(
            str(tmp_path / "in"), str(tmp_path / "out"), max_concurrency=1, on_insufficient_credits="partial"
        ),
        drain,
    )
    assert result.done == 1 and result.skipped + result.failed == 3
    assert result.stopped and "ran out of credits" in result.stopped
    reasons = [i.error or "" for i in result.items if i.state != "done"]
    codes = {str(i.error_code) for i in result.items if i.state != "done"}
    # Refused at creation (402), or (a job slot frees before the first result is stored) failed
    # at its reservation: either way for lack of credits.
    assert all(reasons) and ("insufficient_credits" in codes or any("nsufficient" in r for r in reasons))
    assert sum(charges(sim)) == 1.0 and sim.state.balance() == 0.0


# --- interrupted and timed-out batches ----------------------------------------------------------
HOLD = 600.0  # a job's time on the simulator's clock: it runs until the test releases it


async def interrupt_batch(
    client: Any, spec: BatchSpec, sim: SimulatorServer, jobs: int, recorded: bool = False
) -> None:
    """Run the batch until the service has ``jobs`` jobs (and, with ``recorded``, until the
    manifest on disk holds their ids: the client has read the answers), then cancel it."""
    task = asyncio.create_task(run_batch(client, spec))
    manifest = Path(spec.destination) / MANIFEST_NAME
    async with asyncio.timeout(30):  # the events, however slow the machine; never a hang
        while len(created_jobs(sim)) < jobs:
            assert not task.done(), task
            await asyncio.sleep(0.01)
        while recorded and len(manifest_job_ids(manifest)) < jobs:
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_interrupted_batch_resumes_with_the_same_jobs(
    api: str, sim_factory: Callable[..., SimulatorServer], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    sim = sim_factory(time_per_job=HOLD)
    make_inputs(make_image, [f"s{n}.jpg" for n in range(4)])
    spec = batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), max_concurrency=2)
    async with async_client(sim, api) as client:
        # the client has read both answers (the jobs are held) before the interruption
        await interrupt_batch(client, spec, sim, jobs=2, recorded=True)
    saved = manifest_items(tmp_path / "out")
    submitted = {s: m["job_id"] for s, m in saved.items() if m["state"] == "submitted"}
    assert len(submitted) == 2 and all(submitted.values())
    assert {m["state"] for s, m in saved.items() if s not in submitted} == {"pending"}
    release_held_jobs(sim, HOLD)
    async with async_client(sim, api) as client:
        result = await run_batch(client, dataclasses.replace(spec, max_concurrency=4))
    assert result.done == 4
    for item in result.items:
        if item.source in submitted:
            assert item.job_id == submitted[item.source]  # resumed, not resubmitted
    assert len(created_jobs(sim)) == 4
    assert sim.state.double_charges() == []
    assert charged_jobs(sim) == Counter({i.job_id: 1 for i in result.items})  # each input charged once


async def test_lost_manifest_is_recovered_by_idempotency_replay(
    sim_factory: Callable[..., SimulatorServer], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """Open API: a crash between job creation and the manifest write loses nothing."""
    sim = sim_factory(time_per_job=HOLD)
    make_inputs(make_image, [f"s{n}.jpg" for n in range(3)])
    spec = batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), max_concurrency=2)
    async with async_client(sim, "open") as client:
        await interrupt_batch(client, spec, sim, jobs=2)
    first_jobs = created_jobs(sim)
    assert len(first_jobs) == 2  # held: the window never moved on
    (tmp_path / "out" / MANIFEST_NAME).unlink()
    release_held_jobs(sim, HOLD)
    async with async_client(sim, "open") as client:
        result = await run_batch(client, dataclasses.replace(spec, max_concurrency=4))
    assert result.done == 3
    assert set(first_jobs) <= {i.job_id for i in result.items}
    assert len(sim.state.jobs) == 3 and sim.state.double_charges() == []
    replays = [
        r for r in sim.state.requests if r.path == "/api/v1/jobs" and r.status == 202 and not r.created_job
    ]
    assert len(replays) >= 2


async def test_resumed_jobs_count_against_the_budget(
    api: str, sim_factory: Callable[..., SimulatorServer], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    sim = sim_factory(time_per_job=HOLD)
    make_inputs(make_image, [f"s{n}.jpg" for n in range(4)])
    spec = batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), max_concurrency=2)
    async with async_client(sim, api) as client:
        await interrupt_batch(client, spec, sim, jobs=2, recorded=True)
    assert len(created_jobs(sim)) == 2  # held: the window never moved on
    release_held_jobs(sim, HOLD)
    budget = batch_spec(
        str(tmp_path / "in"),
        str(tmp_path / "out"),
        max_concurrency=4,
        credit_budget=3,
        on_insufficient_credits="partial",
    )
    async with async_client(sim, api) as client:
        result = await run_batch(client, budget)
    assert (result.done, result.skipped) == (3, 1), result.summary()
    assert result.credits_spent + result.credits_taken_over == 3.0 and sum(charges(sim)) == 3.0
    # Open API: the two resumed jobs ended (and were paid for) before the rerun: reported apart.
    assert result.credits_taken_over == (2.0 if api == "open" else 0.0)


def test_timeout_raises_a_typed_error_and_the_rerun_resumes(
    api: str,
    sim_factory: Callable[..., SimulatorServer],
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    sim = sim_factory(time_per_job=HOLD)  # no job can finish within the timeout, however slow the machine
    make_inputs(make_image, ["a.jpg", "b.jpg"])
    client = client_factory(sim, api)
    with pytest.raises(WaitTimeoutError, match=r"did not finish within 0\.8 s") as info:
        client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), timeout=0.8))
    assert "rerun" in (info.value.hint or "")
    saved = manifest_items(tmp_path / "out")
    submitted = {s: m["job_id"] for s, m in saved.items() if m["state"] == "submitted"}
    assert submitted and set(submitted.values()) <= set(created_jobs(sim))
    release_held_jobs(sim, HOLD)
    result = client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out")))
    assert result.done == 2
    for item in result.items:
        if item.source in submitted:
            assert item.job_id == submitted[item.source]
    if api == "open":
        assert len(created_jobs(sim)) == 2
    assert sorted(charged_jobs(sim)) == sorted(i.job_id for i in result.items)


# --- sources and destinations ----------------------------------------------------------------------
def test_glob_and_list_sources(
    api: str, client: VanceClient, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    make_inputs(make_image, ["a.jpg", "b.png", "c.jpg"])
    by_glob = client.run_batch(batch_spec(str(tmp_path / "in" / "*.jpg"), str(tmp_path / "g")))
    assert sorted(Path(i.source).name for i in by_glob.items) == ["a.jpg", "c.jpg"] and by_glob.done == 2
    listed = client.run_batch(
        batch_spec([str(tmp_path / "in" / "b.png"), str(tmp_path / "in" / "c.jpg")], str(tmp_path / "l"))
    )
    assert listed.done == 2 and sorted(Path(o).stem for o in listed.outputs) == ["b", "c"]


def test_empty_source_and_unwritable_destination(
    api: str, sim: SimulatorServer, client: VanceClient, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="no input files"):
        client.run_batch(batch_spec(str(tmp_path / "empty"), str(tmp_path / "out")))
    assert (
        client.run_batch(batch_spec(str(tmp_path / "empty"), str(tmp_path / "out"), allow_empty=True)).items
        == []
    )
    make_inputs(make_image, ["a.jpg"])
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(InvalidInputError, match="not writable"):
        client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "file" / "out")))
    assert uploads(sim) == []


def test_manifest_state_machine(
    api: str, client: VanceClient, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    make_inputs(make_image, ["a.jpg"])
    result = client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out")))
    [item] = manifest_items(tmp_path / "out").values()
    assert item["state"] == ItemState.DONE.value and item["job_id"] == result.items[0].job_id
    assert item["output"] == result.items[0].output and item["credits"] == 1.0
    assert item["fingerprint"] and item["call"] and item["tool"] == "upscale"
    assert (item["idempotency_key"] or "").startswith("vp-")
    assert TOKENS[api] not in (tmp_path / "out" / MANIFEST_NAME).read_text()


def test_inputs_added_later_never_take_an_earlier_output(
    api: str, sim: SimulatorServer, client: VanceClient, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """b.png ran first and owns out/b.jpg; b.jpg, added later, sorts first but must not overwrite it."""
    make_image("in/b.png", 20, 10)
    spec = batch_spec(str(tmp_path / "in"), str(tmp_path / "out"))
    [first] = client.run_batch(spec).items
    kept = Path(first.output or "").read_bytes()
    make_image("in/b.jpg", 30, 30)
    second = {Path(i.source).name: i for i in client.run_batch(spec).items}
    assert second["b.png"].output == first.output and second["b.png"].job_id == first.job_id
    assert second["b.jpg"].state == "done" and second["b.jpg"].output != first.output
    assert Path(first.output or "").read_bytes() == kept  # the earlier result is untouched
    assert image_size(second["b.jpg"].output or "") == (60, 60)


def test_a_new_tool_into_the_same_destination_names_outputs_by_their_type(
    api: str, client: VanceClient, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    make_image("in/a.jpg", 16, 12)
    first = client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out")))
    assert [Path(o).name for o in first.outputs] == ["a.jpg"]
    fmt = None if api == "web" else "png"  # web: the result's type; Open API: output_format
    spec = batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), "remove_bg", {}, output_format=fmt)
    with pytest.raises(ManifestMismatchError, match="its tool is 'upscale', this run's is 'remove_bg'"):
        client.run_batch(spec)  # another tool's batch: refused, not mixed into the old one
    spec.fresh = True
    if api == "web":  # the result's type is known only at the download: a.jpg might be written over
        with pytest.raises(OutputExistsError, match="overwrite"):
            client.run_batch(spec)
        spec.overwrite = True
    second = client.run_batch(spec)
    [out] = second.outputs
    assert Path(out).name == "a.png" and (tmp_path / "out" / "a.jpg").exists()
    from PIL import Image

    with Image.open(out) as img:
        assert img.format == "PNG" and img.mode == "RGBA"


def test_video_batch_on_the_open_api(
    sim: SimulatorServer,
    client_factory: Callable[..., VanceClient],
    test_video: Path,
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    import shutil

    import av

    (tmp_path / "in").mkdir()
    shutil.copy(test_video, tmp_path / "in" / "clip.mp4")
    make_image("in/still.jpg", 16, 16)  # an image given to a video tool fails alone
    result = client_factory(sim, "open").run_batch(
        batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), "video_upscale", {"scale": 2})
    )
    assert (result.done, result.failed) == (1, 1)
    [out] = result.outputs
    assert out.endswith("/clip.mp4")
    with av.open(out) as container:
        ctx = container.streams.video[0].codec_context
        assert (ctx.width, ctx.height) == (128, 96)
    [failed] = [i for i in result.items if i.state == "failed"]
    assert failed.error_code == "MediaMismatchError" and "takes videos" in (failed.error or "")


def test_a_damaged_manifest_stops_the_batch_before_spending(
    api: str, sim: SimulatorServer, client: VanceClient, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    from vance_provider.core.api.errors import ConfigurationError

    make_image("in/a.jpg", 16, 12)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / MANIFEST_NAME).write_text('{"version": 1, "items": [')
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out")))
    assert uploads(sim) == []
    assert (tmp_path / "out" / MANIFEST_NAME).read_text() == '{"version": 1, "items": ['  # left for a human


def test_the_accounts_concurrency_limit_shrinks_the_batch(
    sim_factory: Callable[..., SimulatorServer],
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """Open API: the batch asks for 8 at once, the account allows 2. Each 429 "concurrency limit"
    shrinks the batch's own limit (the client tells it), the client waits the limit out, and
    every item is done and paid once: no item fails for it."""
    sim = sim_factory(max_concurrent_images=2, time_per_job=0.1)
    make_inputs(make_image, [f"k{i}.jpg" for i in range(10)])
    client = client_factory(sim, "open")
    heard: list[int] = []
    client.aio.backend.gate.on_concurrency_limit.append(lambda: heard.append(1))
    result = client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), max_concurrency=8))
    assert result.done == 10 and result.failed == 0
    assert sum(charges(sim)) == 10 and sim.state.double_charges() == []
    refused = sum(1 for r in list(sim.state.requests) if r.status == 429)
    assert refused >= 1 and len(heard) == refused  # every refusal reached the batch's limiter
    assert len(client.aio.backend.gate.on_concurrency_limit) == 1  # the batch's listener is gone
