"""Nothing lost, nothing paid twice, on the paths users really take (issue: integrity).

Each case was a data-loss, double-charge or overspend bug, or a batch that never finished. Every
check counts on the simulator's ledger and request log, never on timing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import as_from_a_terminal, image_bytes
from tests.core.conftest import FAST_RETRY, FAST_VIDEO_POLL, TOKENS, batch_spec
from tests.core.helpers import (
    charged_jobs,
    charges,
    created_jobs,
    manifest_job_ids,
    release_held_jobs,
    uploads,
)
from vance_provider.core import BatchSpec, ItemState, VanceClient
from vance_provider.core.api.errors import (
    BatchLockedError,
    BudgetExceededError,
    ConfigurationError,
    InvalidConfigError,
    ManifestError,
    ManifestMismatchError,
    TruncatedDownloadError,
)
from vance_provider.core.state.lease import BatchLease
from vance_provider.core.state.manifest import MANIFEST_NAME
from vance_provider.core.state.storage import AtomicWriter
from vance_provider.sim import SimulatorServer
from vance_provider.sim.processing import make_test_video


def photos(folder: Path, n: int, prefix: str = "p") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{prefix}{i:02d}.jpg"
        p.write_bytes(image_bytes(16 + i, 12, "JPEG"))
        paths.append(p)
    return paths


def nothing_spent(sim: SimulatorServer) -> None:
    assert uploads(sim) == [] and created_jobs(sim) == [] and charges(sim) == []


# --- 1. a destination that overlaps its source ---------------------------------------------------
@pytest.mark.parametrize("where", ["same", "inside", "contains", "symlink"])
def test_destination_overlapping_the_source_is_refused_before_anything_is_spent(
    where: str, api: str, sim: SimulatorServer, client: VanceClient, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    inputs = photos(src, 2)
    before = {p: p.read_bytes() for p in inputs}
    if where == "symlink":
        (tmp_path / "link").symlink_to(src)
    source, dest = {
        "same": (src, src),
        "inside": (src, src / "out"),
        "contains": (src, tmp_path),
        "symlink": (src, tmp_path / "link"),
    }[where]
    with pytest.raises(ConfigurationError, match="overlaps the source") as err:
        client.run_batch(batch_spec(str(source), str(dest)))
    assert str(dest) in str(err.value) and str(source) in str(err.value)
    nothing_spent(sim)
    assert {p: p.read_bytes() for p in inputs} == before
    assert not (src / MANIFEST_NAME).exists() and not (src / "out").exists()


def test_a_single_file_enhanced_into_its_own_folder_never_overwrites_itself(
    api: str, sim: SimulatorServer, client: VanceClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`vance enhance photo.jpg .` inside the photo's folder."""
    [photo] = photos(tmp_path / "here", 1)
    original = photo.read_bytes()
    monkeypatch.chdir(photo.parent)
    with pytest.raises(ConfigurationError, match="would overwrite the input") as err:
        client.run_batch(batch_spec(photo.name, "."))
    assert "p00" in str(err.value)
    # Into the same folder under another format is fine: the input is left as it was.
    if api == "open":
        result = client.run_batch(batch_spec(photo.name, ".", output_format="png"))
        assert [Path(o).name for o in result.outputs] == ["p00.png"]
        assert photo.read_bytes() == original and sum(charges(sim)) == 1
    else:
        nothing_spent(sim)
    assert photo.read_bytes() == original


def test_same_s3_prefix_is_refused(api: str, sim: SimulatorServer, client: VanceClient, s3: Any) -> None:
    fs, options, bucket = s3
    fs.pipe(f"{bucket}/in/a.jpg", image_bytes(16, 12))
    for dest in (f"s3://{bucket}/in/", f"s3://{bucket}/in/out/", f"s3a://{bucket}/in"):
        with pytest.raises(ConfigurationError, match="overlaps the source"):
            client.run_batch(batch_spec(f"s3://{bucket}/in", dest, storage_options=options))
    nothing_spent(sim)


# --- 2. two runs at once on the same batch -------------------------------------------------------
RUN = """
import json, os, sys
from vance_provider.core import BatchSpec, VanceClient
from vance_provider.core.api.errors import BatchLockedError
so = json.loads(os.environ.get("SO") or "null")
spec = BatchSpec(sys.argv[1], sys.argv[2], "upscale", {"scale": 2}, max_concurrency=4, poll_interval=0.05,
                 lock_timeout=float(sys.argv[3]), storage_options=so)
with VanceClient(os.environ["T"], base_url=os.environ["U"]) as c:
    try:
        r = c.run_batch(spec)
    except BatchLockedError as e:
        print("LOCKED", e); sys.exit(3)
print("DONE", r.done, r.credits_spent)
"""


def _run(
    sim: SimulatorServer, api: str, src: str, dest: str, wait: float, so: Any = None
) -> subprocess.Popen:
    env = {**os.environ, "T": TOKENS[api], "U": sim.base_url, "SO": json.dumps(so)}
    return subprocess.Popen(
        [sys.executable, "-c", RUN, src, dest, str(wait)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["local", "s3"])
def test_two_processes_on_one_batch_pay_once(
    storage: str, api: str, sim: SimulatorServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    n = 8
    if storage == "local":
        photos(tmp_path / "in", n)
        src, dest, so = str(tmp_path / "in"), str(tmp_path / "out"), None
    else:
        fs, so, bucket = request.getfixturevalue("s3")
        for p in photos(tmp_path / "in", n):
            fs.pipe(f"{bucket}/in/{p.name}", p.read_bytes())
        src, dest = f"s3://{bucket}/in", f"s3://{bucket}/out"
    # Both wait for the other's lease: whichever runs second finds the batch done.
    procs = [_run(sim, api, src, dest, 120, so) for _ in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum(charges(sim)) == n and max(charged_jobs(sim).values()) == 1, outs
    assert sorted(float(o.split()[-1]) for o in outs) == [0.0, float(n)], outs


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_a_second_run_fails_at_once_naming_the_holder(
    storage: str,
    api: str,
    sim: SimulatorServer,
    client: VanceClient,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """The holder is another lease object, as another process's would be (a local lease is an OS
    lock on its own open file: two in one process exclude each other as two processes do; the
    two-process test above runs real processes)."""
    photos(tmp_path / "in", 2)
    if storage == "local":
        src, dest, so = str(tmp_path / "in"), str(tmp_path / "out"), None
    else:
        fs, so, bucket = request.getfixturevalue("s3")
        for p in (tmp_path / "in").iterdir():
            fs.pipe(f"{bucket}/in/{p.name}", p.read_bytes())
        src, dest = f"s3://{bucket}/in", f"s3://{bucket}/out"
    spec = batch_spec(src, dest, lock_timeout=0, storage_options=so)
    holder = BatchLease(f"{dest}/{MANIFEST_NAME}", so, owner="nightly-run-42")
    holder.acquire()
    try:
        with pytest.raises(BatchLockedError, match="being run by nightly-run-42") as locked:
            client.run_batch(spec)
        assert locked.value.holder["owner"] == "nightly-run-42" and "token" not in locked.value.holder
        nothing_spent(sim)
    finally:
        holder.release()
    result = client.run_batch(spec)  # released: the next run goes ahead
    assert result.done == 2 and sum(charges(sim)) == 2


def test_a_lease_left_by_a_killed_local_process_is_taken_over(
    api: str, sim: SimulatorServer, client: VanceClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    photos(tmp_path / "in", 1)
    (tmp_path / "out").mkdir()
    dead = {
        "owner": "killed",
        "host": "h",
        "pid": 999999,
        "heartbeat": time.time(),
        "expires": time.time() + 999,
    }
    (tmp_path / "out" / f"{MANIFEST_NAME}.lock").write_text(json.dumps(dead))  # no process holds its lock
    with caplog.at_level(logging.WARNING, "vance_provider.lease"):
        result = client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out")))
    assert result.done == 1
    assert any("left by killed" in r.getMessage() for r in caplog.records)


# --- 3. a manifest that belongs to another batch ---------------------------------------------------
def test_a_manifest_copied_to_a_new_destination_is_refused(
    api: str, sim: SimulatorServer, client: VanceClient, tmp_path: Path
) -> None:
    photos(tmp_path / "in", 3)
    client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "a")))
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / MANIFEST_NAME, tmp_path / "b" / MANIFEST_NAME)
    with pytest.raises(ManifestMismatchError, match="its destination is") as err:
        client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "b")))
    assert "--fresh" in str(err.value)
    # manifest= reused with another destination: the same refusal.
    with pytest.raises(ManifestMismatchError, match="destination"):
        client.run_batch(
            batch_spec(
                str(tmp_path / "in"), str(tmp_path / "c"), manifest=str(tmp_path / "a" / MANIFEST_NAME)
            )
        )
    assert sum(charges(sim)) == 3
    fresh = client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "b"), fresh=True))
    assert fresh.done == 3 and len(list((tmp_path / "b").glob("*.jpg"))) == 3
    assert len(list((tmp_path / "b").glob("_vance_manifest.*.json"))) == 1  # the old one, archived


def test_two_tools_alternating_on_one_destination_never_repay(
    api: str, sim: SimulatorServer, client: VanceClient, tmp_path: Path
) -> None:
    photos(tmp_path / "in", 5)
    src, dest = str(tmp_path / "in"), str(tmp_path / "out")
    client.run_batch(batch_spec(src, dest))
    for _ in range(3):
        with pytest.raises(ManifestMismatchError, match="its tool is 'upscale'"):
            client.run_batch(batch_spec(src, dest, "denoise", {}))
        client.run_batch(batch_spec(src, dest))  # the first tool again: all done already
    assert sum(charges(sim)) == 5


@pytest.mark.parametrize(
    "damage",
    ["truncated", "list", "wrong-types", "bad-state", "directory", "version"],
)
def test_a_malformed_manifest_is_a_typed_error_and_nothing_is_spent(
    damage: str, api: str, sim: SimulatorServer, client: VanceClient, tmp_path: Path
) -> None:
    photos(tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    path = out / MANIFEST_NAME
    good = {
        "version": 1,
        "meta": {},
        "items": [{"source": "x", "fingerprint": "f", "call": "c", "state": "done"}],
    }
    if damage == "directory":
        path.mkdir()
    else:
        text = {
            "truncated": json.dumps(good)[:40],
            "list": "[]",
            "wrong-types": json.dumps({**good, "items": [{"source": 1, "bogus": True}]}),
            "bad-state": json.dumps({**good, "items": [{**good["items"][0], "state": "weird"}]}),
            "version": json.dumps({**good, "version": 99}),
        }[damage]
        path.write_text(text)
    with pytest.raises(ManifestError) as err:
        client.run_batch(batch_spec(str(tmp_path / "in"), str(out)))
    assert str(path) in str(err.value)
    nothing_spent(sim)


# --- 4. budgets that hold for video -----------------------------------------------------------------
@pytest.fixture
def clips(tmp_path: Path) -> Path:
    folder = tmp_path / "clips"
    folder.mkdir()
    first = make_test_video(folder / "c0.mp4", 32, 24, seconds=6.0, fps=5)
    for i in (1, 2):
        shutil.copy(first, folder / f"c{i}.mp4")
    return folder


def test_video_budget_is_checked_against_the_clips_real_length(
    sim: SimulatorServer, clips: Path, tmp_path: Path
) -> None:
    with VanceClient(TOKENS["open"], base_url=sim.base_url, retry=FAST_RETRY) as client:
        client.aio.backend.video_poll_interval = FAST_VIDEO_POLL  # the simulator's clips take 0.3 s
        with pytest.raises(BudgetExceededError, match="about 18 credits"):
            client.run_batch(
                batch_spec(str(clips), str(tmp_path / "o1"), "video_upscale", {}, credit_budget=3)
            )
        nothing_spent(sim)
        # partial: as many clips as the budget covers, never more than one clip's cost over it.
        result = client.run_batch(
            batch_spec(
                str(clips),
                str(tmp_path / "o2"),
                "video_upscale",
                {},
                credit_budget=8,
                on_insufficient_credits="partial",
            )
        )
    assert sum(charges(sim)) == result.credits_spent == 6.0
    assert (result.done, result.skipped) == (1, 2) and "budget" in (result.stopped or "")


def test_the_services_video_estimate_replaces_ours(
    sim: SimulatorServer, clips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our price table underestimates tenfold: the service's ``credits_estimated`` holds the budget."""
    from vance_provider.core import tools

    monkeypatch.setitem(tools.VIDEO_CREDITS_PER_SECOND, "video_upscale", 0.05)
    with VanceClient(TOKENS["open"], base_url=sim.base_url, retry=FAST_RETRY) as client:
        client.aio.backend.video_poll_interval = FAST_VIDEO_POLL  # the simulator's clips take 0.3 s
        result = client.run_batch(
            batch_spec(
                str(clips),
                str(tmp_path / "o"),
                "video_upscale",
                {},
                credit_budget=8,
                on_insufficient_credits="partial",
                max_concurrency=3,
            )
        )
    assert sum(charges(sim)) <= 8 + 6  # over by one clip's true cost at most; here not at all
    assert sum(charges(sim)) == result.credits_spent == 6.0 and result.done == 1
    with sim.state.lock:
        canceled = [j for j in sim.state.jobs.values() if j.status == "canceled"]
    assert len(canceled) <= 1  # a job priced over the budget is canceled (refunded), not run


@pytest.mark.parametrize("budget", [float("nan"), -1.0, "50", float("inf"), True])
def test_budgets_that_mean_nothing_are_refused(budget: Any, tmp_path: Path) -> None:
    with pytest.raises(InvalidConfigError, match="credit_budget"):
        BatchSpec(str(tmp_path), str(tmp_path / "o"), "upscale", credit_budget=budget)


# --- 5. one bad item never sinks the batch ----------------------------------------------------------
def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG that claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\x00" * (width // 8 + 1) * 16, 9)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_bad_items_fail_alone_with_the_file_named(
    api: str, sim: SimulatorServer, client: VanceClient, tmp_path: Path
) -> None:
    src = tmp_path / "in"
    photos(src, 3)
    long_name = "é" * 124 + ".jpg"  # 252 bytes: a legal name on every common file system
    (src / long_name).write_bytes(image_bytes(20, 10))
    (src / "bomb.png").write_bytes(_bomb_png(20000, 20000))
    (src / "blocked").mkdir()
    (src / "blocked" / "x.jpg").write_bytes(image_bytes(8, 8))
    out = tmp_path / "out"
    out.mkdir()
    (out / "blocked").write_text("a file where the output folder must go")
    result = client.run_batch(batch_spec(str(src), str(out), on_failure="continue"))
    by_name = {Path(i.source).name: i for i in result.items}
    assert by_name["bomb.png"].state == "failed" and "bomb.png" in (by_name["bomb.png"].error or "")
    assert by_name["bomb.png"].error_code == "TooManyPixelsError"
    assert by_name["x.jpg"].state == "failed" and "cannot be created" in (by_name["x.jpg"].error or "")
    assert by_name[long_name].state == "done"
    assert len(Path(by_name[long_name].output or "").name.encode()) <= 255
    assert result.done == 4 and result.failed == 2
    assert sum(charges(sim)) == 4 and len(created_jobs(sim)) == 4  # no job for a failed input


def test_an_unexpected_error_in_one_item_is_that_items_failure(
    api: str, sim: SimulatorServer, client: VanceClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos(tmp_path / "in", 4)
    real = client.aio.download

    async def flaky(job: Any, dest: str, **kw: Any) -> str:
        if Path(dest).stem == "p02":
            raise KeyError("surprise")  # not a VanceError: a bug or an odd answer
        return await real(job, dest, **kw)

    monkeypatch.setattr(client.aio, "download", flaky)
    result = client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), on_failure="continue"))
    [bad] = [i for i in result.items if i.state != "done"]
    assert (
        bad.source.endswith("p02.jpg") and "KeyError" in (bad.error or "") and "p02.jpg" in (bad.error or "")
    )
    assert result.done == 3
    manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
    [kept] = [i for i in manifest["items"] if i["source"].endswith("p02.jpg")]
    assert kept["state"] == ItemState.SUCCEEDED and kept["job_id"]  # paid job kept: a rerun fetches it
    monkeypatch.undo()
    again = client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out")))
    assert again.done == 4 and sum(charges(sim)) == 4 and max(charged_jobs(sim).values()) == 1


# --- 6. inputs users really have ---------------------------------------------------------------------
def test_inputs_users_really_have(
    api: str, sim: SimulatorServer, client: VanceClient, tmp_path: Path
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "_DSC0001.JPG").write_bytes(image_bytes(20, 10))  # a camera's name
    motion = image_bytes(24, 16) + b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000)  # video after the JPEG
    (src / "PXL_MOTION.jpg").write_bytes(motion)
    (src / "stray.png").write_bytes(image_bytes(20, 10, "PNG") + b"\n")  # one byte after IEND
    (src / "cut.jpg").write_bytes(image_bytes(64, 48)[:-200])  # really truncated
    (src / "readme.txt").write_text("notes")
    result = client.run_batch(batch_spec(str(src), str(tmp_path / "out"), on_failure="continue"))
    states = {Path(i.source).name: i.state for i in result.items}
    assert states == {
        "_DSC0001.JPG": "done",
        "PXL_MOTION.jpg": "done",
        "stray.png": "done",
        "cut.jpg": "failed",
    }
    assert [(Path(u).name, why) for u, why in result.ignored] == [
        ("readme.txt", "not an image or video (by its extension)")
    ]
    assert result.summary()["ignored"]


def test_one_sniffer_for_the_whole_project() -> None:
    root = Path(__file__).resolve().parents[2] / "vance_provider" / "core"
    sniffers = [p.name for p in root.rglob("*.py") if "\\x89PNG" in p.read_text() and p.name != "media.py"]
    assert sniffers == []


# --- 8. writes to object stores -----------------------------------------------------------------------
def test_object_store_writes_go_straight_to_the_key_and_leave_nothing_on_failure(s3: Any) -> None:
    fs, options, bucket = s3
    url = f"s3://{bucket}/res/out.jpg"
    w = AtomicWriter(url, options).open()
    w.write(b"x" * 10)
    assert fs.find(bucket) == []  # nothing visible yet
    with pytest.raises(TruncatedDownloadError, match="ended at 10 of 11"):
        w.commit(11)
    fs.invalidate_cache()
    assert fs.find(bucket) == []  # no partial object, no temporary object
    w = AtomicWriter(url, options).open()
    w.write(b"y" * 5)
    w.commit(5)
    fs.invalidate_cache()
    assert fs.find(bucket) == [f"{bucket}/res/out.jpg"] and fs.cat(url) == b"y" * 5


def test_an_object_store_result_under_the_block_size_goes_in_one_write(
    s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks given to put() are held and sent in one write (one PutObject), not copied through
    a file object's buffer; nothing is visible before the commit, nor after an abort."""
    fs, options, bucket = s3
    url = f"s3://{bucket}/res/out.jpg"
    w = AtomicWriter(url, options)

    def no_file(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a result under the block size opened a file object")

    monkeypatch.setattr(w.fs, "open", no_file)
    w.put(b"a" * 3, b"b" * 4)
    w.put(b"c" * 5)
    assert w.is_open and w.written == 12
    assert fs.find(bucket) == []  # held, not sent
    with pytest.raises(TruncatedDownloadError, match="ended at 12 of 13"):
        w.finish(expected_size=13)
    fs.invalidate_cache()
    assert fs.find(bucket) == []
    w = AtomicWriter(url, options)
    monkeypatch.setattr(w.fs, "open", no_file)
    w.put(b"x" * 2)
    w.abort()
    assert not w.is_open
    fs.invalidate_cache()
    assert fs.find(bucket) == []
    w.finish(b"a" * 3, b"b" * 4, expected_size=7)
    fs.invalidate_cache()
    assert fs.cat(url) == b"aaabbbb"


def test_an_object_store_result_past_the_block_size_streams_through_the_file(s3: Any) -> None:
    """Past the store's block size the held chunks go to the file object, in order, and the rest
    follows them there: no more than a block is held."""
    fs, options, bucket = s3
    url = f"s3://{bucket}/res/big.jpg"
    w = AtomicWriter(url, options)
    w._hold_limit = 8  # s3fs's is 50 MiB
    w.put(b"a" * 5)
    assert w._fh is None
    w.put(b"b" * 5)  # 10 > 8: the file is opened and given both
    assert w._fh is not None and w._held == [] and w.written == 10
    w.finish(b"c" * 2, expected_size=12)
    fs.invalidate_cache()
    assert fs.cat(url) == b"a" * 5 + b"b" * 5 + b"c" * 2


def test_a_killed_local_download_leaves_no_partial_after_the_next_run(
    api: str, sim: SimulatorServer, client: VanceClient, tmp_path: Path
) -> None:
    photos(tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".p00.jpg.partial-deadbeef").write_bytes(b"half")  # what a SIGKILL mid-download leaves
    result = client.run_batch(batch_spec(str(tmp_path / "in"), str(out)))
    assert result.done == 2
    assert [p.name for p in out.iterdir() if "partial" in p.name] == []


def test_an_over_budget_refusal_leaves_no_output_folder(
    api: str, sim: SimulatorServer, client: VanceClient, tmp_path: Path
) -> None:
    photos(tmp_path / "in", 3)
    with pytest.raises(BudgetExceededError):
        client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), credit_budget=1))
    assert not (tmp_path / "out").exists()
    nothing_spent(sim)


# --- 5. a stopped batch leaves every submitted job in its manifest --------------------------------
CTRL_C = """
import os, sys
from vance_provider.core import BatchSpec, VanceClient
with VanceClient(os.environ["T"], base_url=os.environ["U"]) as c:
    c.run_batch(BatchSpec(sys.argv[1], sys.argv[2], "upscale", {"scale": 2}, max_concurrency=3,
                          poll_interval=0.05))
"""


@pytest.mark.slow
def test_ctrl_c_leaves_every_submitted_job_in_the_manifest(
    api: str, sim_factory: Any, tmp_path: Path
) -> None:
    sim = sim_factory(time_per_job=600.0, queue_delay=0.0, tick=0.01)  # jobs that outlive the run
    photos(tmp_path / "in", 6)
    env = {**os.environ, "T": TOKENS[api], "U": sim.base_url}
    proc = subprocess.Popen(
        [sys.executable, "-c", CTRL_C, str(tmp_path / "in"), str(tmp_path / "out")],
        env=env,
        preexec_fn=as_from_a_terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    manifest = tmp_path / "out" / MANIFEST_NAME
    # The event: the batch's own periodic write shows it has received three jobs' answers.
    while len(flushed := manifest_job_ids(manifest)) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode != 0 and "KeyboardInterrupt" in out
    recorded = manifest_job_ids(manifest)
    first_run = set(created_jobs(sim))
    assert flushed <= recorded <= first_run  # nothing received is lost by the interruption
    # A job whose create answer was still on the wire at Ctrl-C cannot be recorded; the Open API
    # finds it again by its idempotency key (kept in the manifest before anything was sent), and
    # the web API never charges a job that is not downloaded.
    saved = json.loads(manifest.read_text())["items"]
    assert api == "web" or all(i["idempotency_key"] for i in saved)
    release_held_jobs(sim, 600.0)  # the held jobs finish now, and new ones are quick
    with VanceClient(TOKENS[api], base_url=sim.base_url, retry=FAST_RETRY) as client:
        result = client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out")))
    assert result.done == 6 and sum(charges(sim)) == 6 and max(charged_jobs(sim).values()) == 1
    reused = {i.job_id for i in result.items}
    assert recorded <= reused  # resumed, not resubmitted
    if api == "open":
        assert first_run <= reused  # even the unrecorded ones, by their keys
