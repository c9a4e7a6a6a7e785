"""The batch lease on its own: fencing, the store's clock, dead holders, owner ids (local disk and
moto S3). No test sleeps: time passes by ageing the lease object on the store (its LastModified)."""

from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from vance_provider.core.api.errors import BatchLockedError, ConfigurationError
from vance_provider.core.state.lease import (
    LEASE_TTL,
    BatchLease,
    Identity,
    LeaseLostError,
    _S3Store,
    fence_writes,
    new_owner,
    pid_alive,
    this_process,
)
from vance_provider.core.state.manifest import MANIFEST_NAME, Manifest

LOCK = f"{MANIFEST_NAME}.lock"


def age_object(bucket: str, key: str, seconds: float) -> None:
    """Move an object's LastModified ``seconds`` into the past on the moto server (in this process):
    to the store's clock, that much time has passed since it was written."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    obj = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].buckets[bucket].keys[key]
    obj.last_modified = obj.last_modified - datetime.timedelta(seconds=seconds)


def stranger(pid: int = 4242) -> Identity:
    """A process on a machine of its own."""
    return Identity("elsewhere", uuid.uuid4().hex[:16], pid, None)


def s3_lease(so: dict[str, Any], bucket: str, **kwargs: Any) -> BatchLease:
    kwargs.setdefault("identity", stranger())
    return BatchLease.for_batch(f"s3://{bucket}/out", so, **kwargs)


# --- fencing -------------------------------------------------------------------------------------
def test_a_paused_holder_is_fenced_out_once_another_run_took_over(s3: Any, caplog: Any) -> None:
    fs, so, bucket = s3
    a = s3_lease(so, bucket, owner="run-a")
    a.acquire()
    a.fence()  # held: a conditional renewal
    b = s3_lease(so, bucket, owner="run-b")
    with pytest.raises(BatchLockedError, match="being run by run-a"):
        b.acquire()  # live by the store's clock
    age_object(bucket, f"out/{LOCK}", LEASE_TTL + 5)  # run-a is paused past the lease's life
    with caplog.at_level(logging.WARNING, "vance_provider.lease"):
        b.acquire()
    assert any("stale batch lease of run-a" in r.getMessage() for r in caplog.records)
    with pytest.raises(LeaseLostError, match=r"lost the batch lease .* to run-b") as lost:
        a.fence()  # run-a resumes: its next job or manifest write is refused
    assert "nothing is paid twice" in str(lost.value) and lost.value.holder["owner"] == "run-b"
    with pytest.raises(LeaseLostError):
        a.fence()  # and stays refused
    a.release()  # never removes the lease of the run that holds it now
    assert json.loads(fs.cat(f"{bucket}/out/{LOCK}"))["owner"] == "run-b"
    b.fence()
    b.release()
    assert not fs.exists(f"{bucket}/out/{LOCK}")


def test_each_renewal_is_a_conditional_write_with_a_higher_generation(s3: Any) -> None:
    fs, so, bucket = s3
    a = s3_lease(so, bucket, owner="run-a")
    a.acquire()
    generations = [json.loads(fs.cat(f"{bucket}/out/{LOCK}"))["generation"]]
    for _ in range(3):
        a.fence()
        generations.append(json.loads(fs.cat(f"{bucket}/out/{LOCK}"))["generation"])
    assert generations == [1, 2, 3, 4]
    fs.pipe(f"{bucket}/out/{LOCK}", b'{"owner": "someone by hand"}')  # written behind its back
    with pytest.raises(LeaseLostError, match="someone by hand"):
        a.fence()


def test_a_renewal_whose_answer_was_lost_still_holds(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The write landed but its answer did not (s3fs retried and got 412): the lease is still ours."""
    _fs, so, bucket = s3
    a = s3_lease(so, bucket, owner="run-a")
    a.acquire()
    real = _S3Store.replace

    def landed_but_lost(self: _S3Store, body: bytes, tag: str) -> str | None:
        real(self, body, tag)
        return None

    monkeypatch.setattr(_S3Store, "replace", landed_but_lost)
    a.fence()
    monkeypatch.setattr(_S3Store, "replace", real)
    a.fence()
    assert a.held and a.lost is None


def test_a_lost_lease_refuses_manifest_writes(s3: Any) -> None:
    fs, so, bucket = s3
    a = s3_lease(so, bucket, owner="run-a")
    a.acquire()
    manifest = Manifest.for_destination(f"s3://{bucket}/out", so)
    fence_writes(manifest, a)
    manifest.meta["by"] = "run-a"
    manifest.save()
    age_object(bucket, f"out/{LOCK}", LEASE_TTL + 1)
    b = s3_lease(so, bucket, owner="run-b")
    b.acquire()
    theirs = Manifest.for_destination(f"s3://{bucket}/out", so)
    fence_writes(theirs, b)
    theirs.meta["by"] = "run-b"
    theirs.save()
    manifest.meta["by"] = "run-a again"
    with pytest.raises(LeaseLostError):
        manifest.save()
    assert json.loads(fs.cat(f"{bucket}/out/{MANIFEST_NAME}"))["meta"]["by"] == "run-b"


def test_a_local_lease_file_replaced_behind_the_holder_fences_it(tmp_path: Path) -> None:
    a = BatchLease.for_batch(str(tmp_path / "out"), owner="run-a")
    a.acquire()
    a.fence()
    os.unlink(tmp_path / "out" / LOCK)  # removed by hand; then another run takes a new one
    b = BatchLease.for_batch(str(tmp_path / "out"), owner="run-b")
    b.acquire()
    with pytest.raises(LeaseLostError):
        a.fence()
    a.release()
    assert (tmp_path / "out" / LOCK).exists()  # run-b's
    b.release()


# --- the store's clock, not the workers' -----------------------------------------------------------
@pytest.mark.parametrize("skew", [-3600.0, 600.0, 86400.0])
def test_a_skewed_worker_clock_never_takes_over_a_live_lease(s3: Any, skew: float) -> None:
    _fs, so, bucket = s3
    a = s3_lease(so, bucket, owner="run-a")
    a.acquire()
    b = s3_lease(so, bucket, owner="run-b", clock=lambda: datetime.datetime.now().timestamp() + skew)
    with pytest.raises(BatchLockedError, match="being run by run-a"):
        b.acquire()
    age_object(bucket, f"out/{LOCK}", LEASE_TTL - 5)  # nearly expired by the store's clock: still live
    with pytest.raises(BatchLockedError):
        b.acquire()
    a.fence()


def test_a_lease_written_with_a_far_future_expiry_by_an_old_version_still_expires(s3: Any) -> None:
    """What a record says about time (its writer's clock) is ignored; its age on the store decides."""
    fs, so, bucket = s3
    fs.pipe(f"{bucket}/out/{LOCK}", json.dumps({"owner": "old", "expires": 4e9}).encode())
    b = s3_lease(so, bucket, owner="run-b")
    with pytest.raises(BatchLockedError):
        b.acquire()
    age_object(bucket, f"out/{LOCK}", LEASE_TTL + 1)
    b.acquire()


# --- dead holders -------------------------------------------------------------------------------
HOLD = """
import json, sys
from vance_provider.core.state.lease import BatchLease
lease = BatchLease.for_batch(sys.argv[1], json.loads(sys.argv[2]), owner="killed-run")
lease.acquire()
print("HELD", flush=True)
sys.stdin.read()
"""


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["local", "s3"])
def test_after_kill_9_a_rerun_on_the_same_host_goes_ahead_at_once(
    storage: str, tmp_path: Path, request: pytest.FixtureRequest, caplog: Any
) -> None:
    if storage == "s3":
        _fs, so, bucket = request.getfixturevalue("s3")
        dest = f"s3://{bucket}/out"
    else:
        so, dest = {}, str(tmp_path / "out")
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, dest, json.dumps(so)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "HELD"
    with pytest.raises(BatchLockedError, match="being run by killed-run"):
        BatchLease.for_batch(dest, so).acquire()  # alive: refused
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rerun = BatchLease.for_batch(dest, so, owner="rerun")
    with caplog.at_level(logging.WARNING, "vance_provider.lease"):
        rerun.acquire()  # no waiting for the lease to expire
    assert any("left by killed-run" in r.getMessage() for r in caplog.records)
    rerun.release()


def test_a_dead_pid_on_another_host_is_not_trusted(s3: Any) -> None:
    """A pid means nothing on another machine (or pid namespace): only expiry frees its lease."""
    _fs, so, bucket = s3
    a = s3_lease(so, bucket, owner="run-a", identity=stranger(pid=999_999))
    a.acquire()
    with pytest.raises(BatchLockedError):
        s3_lease(so, bucket, identity=this_process(), alive=lambda pid, started: False).acquire()


def test_pid_alive(tmp_path: Path) -> None:
    me = this_process()
    assert pid_alive(me.pid, me.started)
    assert not pid_alive(me.pid, "1")  # the same pid, another process (pid reuse)
    assert not pid_alive(0) and not pid_alive(-1)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not pid_alive(child.pid)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped yet
    assert not pid_alive(zombie.pid)
    zombie.wait()


# --- one lease per destination; owners --------------------------------------------------------------
def test_one_local_lease_whatever_the_spelling_of_the_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    a = BatchLease.for_batch("real", owner="run-a")
    a.acquire()
    for spelling in ("real/", str(tmp_path / "real"), "link", "./link/", f"file://{tmp_path}/real"):
        with pytest.raises(BatchLockedError, match="run-a"):
            BatchLease.for_batch(spelling).acquire()
    a.release()


def test_a_scoped_lease_is_its_own(tmp_path: Path) -> None:
    whole = BatchLease.for_batch(str(tmp_path / "out"))
    whole.acquire()
    one = BatchLease.for_batch(str(tmp_path / "out"), scope="partition:a.jpg")
    one.acquire()
    with pytest.raises(BatchLockedError):
        BatchLease.for_batch(str(tmp_path / "out"), scope="partition:a.jpg").acquire()
    one.release()
    whole.release()


def test_owner_ids_are_unique_per_attempt() -> None:
    a, b = new_owner("airflow", "d", "t", "r", -1, "try1"), new_owner("airflow", "d", "t", "r", -1, "try1")
    assert a != b and a.startswith("airflow:d:t:r:-1:try1:") and f":{os.getpid()}:" in a
    assert BatchLease.for_batch("/tmp/x").owner != BatchLease.for_batch("/tmp/x").owner


@pytest.mark.xdist_group("airflow")  # it imports Airflow: on the worker of the Airflow tests
def test_the_airflow_operator_owner_names_the_try(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("airflow")
    from vance_provider.operators.vanceai import VanceAIEnhanceOperator

    class TI:
        dag_id, task_id, run_id, map_index = "d", "t", "r", -1

        def __init__(self, try_number: int) -> None:
            self.try_number = try_number

    op = VanceAIEnhanceOperator(task_id="t", source="/in", destination="/out", tool="upscale")
    first = op._engine_options({"ti": TI(1)})["owner"]  # type: ignore[arg-type]
    retry = op._engine_options({"ti": TI(2)})["owner"]  # type: ignore[arg-type]
    assert first.startswith("airflow:d:t:r:-1:try1:") and retry.startswith("airflow:d:t:r:-1:try2:")


def test_a_store_that_ignores_conditional_writes_is_refused(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fs, so, bucket = s3
    real = _S3Store._call

    def ignore_if_match(self: _S3Store, method: str, **kwargs: Any) -> Any:
        kwargs.pop("IfMatch", None)
        return real(self, method, **kwargs)

    monkeypatch.setattr(_S3Store, "_call", ignore_if_match)
    monkeypatch.setattr(_S3Store, "_checked", set())
    with pytest.raises(ConfigurationError, match="ignores conditional writes"):
        s3_lease(so, bucket).acquire()
    assert not fs.exists(f"{bucket}/out/{LOCK}")


def test_a_store_without_conditional_deletes_still_releases(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fs, so, bucket = s3
    real = _S3Store._call

    def no_conditional_delete(self: _S3Store, method: str, **kwargs: Any) -> Any:
        if method == "delete_object" and "IfMatch" in kwargs:
            raise OSError(95, "conditional deletes are not implemented")
        return real(self, method, **kwargs)

    monkeypatch.setattr(_S3Store, "_call", no_conditional_delete)
    a = s3_lease(so, bucket, owner="run-a")
    a.acquire()
    a.release()
    assert not fs.exists(f"{bucket}/out/{LOCK}")  # released: the next run need not wait for expiry
    a.acquire()
    fs.pipe(f"{bucket}/out/{LOCK}", b'{"owner": "run-b"}')  # taken over meanwhile
    a.release()
    assert fs.exists(f"{bucket}/out/{LOCK}")  # never someone else's
