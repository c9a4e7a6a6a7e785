"""Nothing paid twice, round two (issue 25, sections 2 to 8): identity by content, no overwrite of
paid outputs, videos priced by the service, hand-edited manifests, unusable caches, secrets and
signals, and the smaller cases.

Every check counts on the simulator's ledger and request log, never on timing: jobs that must
outlive a moment are held by a long simulated processing time, released by the simulator's clock.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import OPEN_KEY, image_bytes
from tests.core.conftest import FAST_RETRY, FAST_VIDEO_POLL, TOKENS, batch_spec
from tests.core.helpers import (
    charged_jobs,
    charges,
    created_jobs,
    manifest_job_ids,
    release_held_jobs,
    uploads,
)
from vance_provider import cli
from vance_provider.core import BatchSpec, VanceClient
from vance_provider.core.api.errors import (
    BudgetExceededError,
    InvalidConfigError,
    ManifestError,
    ManifestMismatchError,
    TransportError,
)
from vance_provider.core.state.cache import CacheUnusableError
from vance_provider.core.state.manifest import MANIFEST_NAME
from vance_provider.core.state.storage import OutputExistsError, StorageUnavailableError
from vance_provider.sim import SimulatorServer
from vance_provider.sim.processing import make_test_video


def photos(folder: Path, n: int, prefix: str = "p", shade: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{prefix}{i:02d}.jpg"
        p.write_bytes(with_comment(image_bytes(16 + i + shade, 12, "JPEG"), b"AAAA"))
        paths.append(p)
    return paths


def with_comment(jpeg: bytes, text: bytes) -> bytes:
    """The JPEG with a comment segment right after its start: same pixels, chosen bytes."""
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + jpeg[2:]


def nothing_spent(sim: SimulatorServer) -> None:
    assert uploads(sim) == [] and created_jobs(sim) == [] and charges(sim) == []


def outputs_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(("_", "."))}


# --- 2. identity by content, not by mtime ------------------------------------------------------------
def test_a_touched_input_costs_nothing_and_a_changed_one_is_paid(
    api: str, sim: SimulatorServer, client: VanceClient, tmp_path: Path
) -> None:
    inputs = photos(tmp_path / "in", 3)
    src, dest = str(tmp_path / "in"), str(tmp_path / "out")
    assert client.run_batch(batch_spec(src, dest)).done == 3
    # Same bytes, new mtimes: touched, copied without -p, restored from a backup.
    later = time.time() + 3600
    os.utime(inputs[0], (later, later))
    shutil.copy(inputs[1], tmp_path / "copy.jpg")
    shutil.copy(tmp_path / "copy.jpg", inputs[1])
    inputs[2].write_bytes(inputs[2].read_bytes())
    os.utime(inputs[2], (later + 5, later + 5))
    again = client.run_batch(batch_spec(src, dest))
    assert again.done == 3 and again.credits_spent == 0
    assert len(created_jobs(sim)) == 3 and sum(charges(sim)) == 3
    # Then touched a second time: still the same input (the manifest keeps what it has seen).
    os.utime(inputs[0], (later + 60, later + 60))
    assert client.run_batch(batch_spec(src, dest)).credits_spent == 0 and sum(charges(sim)) == 3
    # Same size, other bytes: another input, paid once; another size: paid once too.
    same_size = inputs[0].read_bytes().replace(b"AAAA", b"BBBB", 1)
    assert len(same_size) == inputs[0].stat().st_size
    inputs[0].write_bytes(same_size)
    inputs[1].write_bytes(with_comment(inputs[1].read_bytes(), b"longer"))
    third = client.run_batch(batch_spec(src, dest))
    assert third.done == 3 and sum(charges(sim)) == 5 and max(charged_jobs(sim).values()) == 1


def test_a_reuploaded_object_costs_nothing_on_s3(
    api: str, sim: SimulatorServer, client: VanceClient, s3: Any
) -> None:
    fs, options, bucket = s3
    data = [with_comment(image_bytes(20 + i, 12, "JPEG"), b"AAAA") for i in range(3)]
    for i, body in enumerate(data):
        fs.pipe(f"{bucket}/in/p{i}.jpg", body)
    src, dest = f"s3://{bucket}/in/", f"s3://{bucket}/out/"
    assert client.run_batch(batch_spec(src, dest, storage_options=options)).done == 3
    for i, body in enumerate(data):  # uploaded again: a new LastModified, the same bytes
        fs.pipe(f"{bucket}/in/p{i}.jpg", body)
    new_process()
    # A store whose content tag changed for the same bytes (a multipart upload's ETag depends on
    # its part size): the recorded fingerprints say so, the hash says the bytes are the same.
    manifest = json.loads(fs.cat_file(f"{bucket}/out/{MANIFEST_NAME}"))
    for row in manifest["items"]:
        row["fingerprint"] = row["fingerprint"].split(":", 1)[0] + ":0123456789abcdef-2"
    fs.pipe(f"{bucket}/out/{MANIFEST_NAME}", json.dumps(manifest).encode())
    again = client.run_batch(batch_spec(src, dest, storage_options=options))
    assert again.done == 3 and again.credits_spent == 0 and sum(charges(sim)) == 3
    fs.pipe(f"{bucket}/in/p0.jpg", data[0].replace(b"AAAA", b"BBBB", 1))  # other bytes: paid
    new_process()
    assert client.run_batch(batch_spec(src, dest, storage_options=options)).credits_spent > 0
    assert sum(charges(sim)) == 4 and max(charged_jobs(sim).values()) == 1


def new_process() -> None:
    """The next run sees the store afresh, as another process would (no listing cached by s3fs)."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


# --- 3. a hint never leads to data loss ---------------------------------------------------------------
def test_following_the_fresh_hint_never_overwrites_paid_outputs(
    api: str, sim: SimulatorServer, client: VanceClient, tmp_path: Path
) -> None:
    photos(tmp_path / "a", 3)
    photos(tmp_path / "b", 3, shade=9)  # same names, other pictures
    dest = tmp_path / "out"
    client.run_batch(batch_spec(str(tmp_path / "a"), str(dest)))
    paid = outputs_of(dest)
    assert len(paid) == 3
    with pytest.raises(ManifestMismatchError, match="its source is") as err:
        client.run_batch(batch_spec(str(tmp_path / "b"), str(dest)))
    assert "--fresh" in str(err.value) and "kept" in str(err.value)
    before = len(created_jobs(sim))
    with pytest.raises(OutputExistsError, match="3 output") as refused:  # the hint, followed
        client.run_batch(batch_spec(str(tmp_path / "b"), str(dest), fresh=True))
    assert "overwrite" in str(refused.value) and "another destination" in str(refused.value)
    assert outputs_of(dest) == paid and len(created_jobs(sim)) == before and sum(charges(sim)) == 3
    # The safe choice the hint names: another destination. The first batch's outputs stay.
    elsewhere = client.run_batch(batch_spec(str(tmp_path / "b"), str(tmp_path / "out-b")))
    assert elsewhere.done == 3 and outputs_of(dest) == paid
    # Replacing them takes an option that says so.
    replaced = client.run_batch(batch_spec(str(tmp_path / "b"), str(dest), fresh=True, overwrite=True))
    assert replaced.done == 3 and outputs_of(dest) != paid


def test_a_file_of_the_users_in_the_destination_is_not_overwritten_on_s3(
    api: str, sim: SimulatorServer, client: VanceClient, s3: Any
) -> None:
    fs, options, bucket = s3
    fs.pipe(f"{bucket}/in/p0.jpg", image_bytes(20, 12, "JPEG"))
    fs.pipe(f"{bucket}/in/p1.jpg", image_bytes(21, 12, "JPEG"))
    fs.pipe(f"{bucket}/out/p0.jpg", b"someone's paid result")
    spec = batch_spec(f"s3://{bucket}/in/", f"s3://{bucket}/out/", storage_options=options)
    with pytest.raises(OutputExistsError, match="p0"):
        client.run_batch(spec)
    assert fs.cat_file(f"{bucket}/out/p0.jpg") == b"someone's paid result"
    nothing_spent(sim)
    spec.overwrite = True
    assert client.run_batch(spec).done == 2 and sum(charges(sim)) == 2


# --- 4. a video whose header understates its length ---------------------------------------------------
def lying_clip(path: Path, seconds: float = 6.0, claims: float = 0.1) -> Path:
    """A real clip of ``seconds`` whose movie header (mvhd) claims ``claims`` seconds."""
    make_test_video(path, 32, 24, seconds=seconds, fps=5)
    data = bytearray(path.read_bytes())
    at = data.index(b"mvhd") + 4
    assert data[at] == 0  # version 0: 32-bit fields
    timescale = struct.unpack(">I", data[at + 12 : at + 16])[0]
    data[at + 16 : at + 20] = struct.pack(">I", int(timescale * claims))
    path.write_bytes(bytes(data))
    return path


def test_the_simulator_prices_a_video_as_the_service_documents(sim_factory: Any, tmp_path: Path) -> None:
    """Estimate at creation (from the dimensions the client sent, else 0), the measured charge
    (never the header's) once the job is processing, confirmed at the end or refunded on cancel."""
    sim = sim_factory(time_per_video_second=1000.0, queue_delay=0.0)
    clip = lying_clip(tmp_path / "liar.mp4")
    headers = {"Authorization": f"Bearer {OPEN_KEY}"}
    with httpx.Client(base_url=sim.base_url.removesuffix("/api/v1") + "/api/v1", headers=headers) as http:
        jobs = []
        for config in ({"scale": 2, "duration": 0.1, "source_width": 32, "source_height": 24}, {"scale": 2}):
            up = http.post("/uploads", json={"file_name": "liar.mp4"}).json()
            put = httpx.put(up["put_url"], content=clip.read_bytes(), headers={"Content-Type": "video/mp4"})
            assert put.status_code < 300, put.text
            created = http.post(
                "/jobs", json={"upload_id": up["upload_id"], "tool": "video_upscale", "config": config}
            ).json()
            assert created["credits_charged"] == 0
            jobs.append(created)
        assert [j["credits_estimated"] for j in jobs] == [1.0, 0]  # the header's 0.1 s; no dims: 0
        deadline = time.monotonic() + 30
        while not all(http.get(f"/jobs/{j['job_id']}").json()["status"] == "processing" for j in jobs):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        looks = [http.get(f"/jobs/{j['job_id']}").json() for j in jobs]
        # 6 s measured, at 0.5 credit a second per unit of scale: 6 credits, whatever the header says.
        assert [look["credits_charged"] for look in looks] == [6.0, 6.0]
        assert http.post(f"/jobs/{jobs[0]['job_id']}/cancel").json()["status"] == "canceled"
    kinds = [(e.job_id, e.kind, e.amount) for e in sim.state.ledger if e.job_id == jobs[0]["job_id"]]
    assert kinds == [(jobs[0]["job_id"], "reserve", 6.0), (jobs[0]["job_id"], "refund", 6.0)]
    assert charges(sim) == []


def test_a_video_whose_header_understates_its_length_is_canceled_within_the_budget(
    sim_factory: Any, tmp_path: Path
) -> None:
    # Held: without a cancel the job would run for an hour of the simulator's clock.
    sim = sim_factory(time_per_video_second=1000.0, queue_delay=0.0)
    folder = tmp_path / "clips"
    folder.mkdir()
    lying_clip(folder / "liar.mp4")
    with VanceClient(TOKENS["open"], base_url=sim.base_url, retry=FAST_RETRY) as client:
        client.aio.backend.video_poll_interval = FAST_VIDEO_POLL
        spec = batch_spec(
            str(folder), str(tmp_path / "out"), "video_upscale", {}, credit_budget=2, timeout=60
        )
        result = client.run_batch(spec)  # passes the estimate from the header (1 credit)...
    # ... and is canceled as soon as the service shows what it measured (6 credits).
    assert charges(sim) == [] and result.credits_spent == 0
    assert result.skipped == 1 and "budget of 2" in (result.stopped or "")
    assert "measured the video at 6 credits" in (result.items[0].error or "")
    kinds = [e.kind for e in sim.state.ledger if e.kind in ("reserve", "refund", "confirm")]
    assert kinds == ["reserve", "refund"]


# --- 5. manifests edited by hand ----------------------------------------------------------------------
@pytest.mark.parametrize("edit", ["another-items-output", "null-output", "outside", "elsewhere"])
def test_a_hand_edited_manifest_is_refused_naming_the_item(
    edit: str, api: str, sim: SimulatorServer, client: VanceClient, tmp_path: Path, monkeypatch: Any
) -> None:
    photos(tmp_path / "in", 3)
    src, dest = str(tmp_path / "in"), str(tmp_path / "out")
    client.run_batch(batch_spec(src, dest))
    path = tmp_path / "out" / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    items = manifest["items"]
    victim = items[1]
    victim["state"] = "done" if edit != "null-output" else victim["state"]
    victim["output"] = {
        "another-items-output": items[0]["output"],
        "null-output": None,
        "outside": dest + "/../p01.jpg",
        "elsewhere": str(tmp_path / "p01.jpg"),
    }[edit]
    path.write_text(json.dumps(manifest))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = (len(created_jobs(sim)), sum(charges(sim)), len(uploads(sim)))
    with pytest.raises(ManifestError, match="the item") as err:
        client.run_batch(batch_spec(src, dest))
    assert victim["source"] in str(err.value)
    assert (len(created_jobs(sim)), sum(charges(sim)), len(uploads(sim))) == before
    assert list(cwd.iterdir()) == [] and not (tmp_path / "p01.jpg").exists()


# --- 6. a cache the user asked for but cannot use -----------------------------------------------------
@pytest.mark.parametrize("kind", ["regular-file", "read-only"])
def test_a_cache_that_cannot_be_used_is_refused_before_spending(
    kind: str, api: str, sim: SimulatorServer, client: VanceClient, tmp_path: Path, caplog: Any
) -> None:
    photos(tmp_path / "in", 2)
    if kind == "regular-file":
        cache = tmp_path / "cache"
        cache.write_text("not a folder")
    else:  # sysfs refuses new files even to root, as a read-only mount does
        cache = Path("/sys/vance-cache-test")
        if os.access("/sys", os.W_OK) and not Path("/sys").is_mount():
            pytest.skip("no read-only place to try")
    spec = batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), cache=str(cache))
    with pytest.raises(CacheUnusableError, match="cache") as err:
        client.run_batch(spec)
    assert "--cache-optional" in str(err.value) or "cache_optional" in str(err.value)
    nothing_spent(sim)
    spec.cache_optional = True  # the user said the cache is optional: one warning, the batch runs
    result = client.run_batch(spec)
    assert result.done == 2 and sum(charges(sim)) == 2
    assert sum("running without the result cache" in r.getMessage() for r in caplog.records) == 1


def test_a_cache_that_is_an_object_on_s3_is_refused(
    api: str, sim: SimulatorServer, client: VanceClient, s3: Any
) -> None:
    fs, options, bucket = s3
    fs.pipe(f"{bucket}/in/p0.jpg", image_bytes(20, 12, "JPEG"))
    fs.pipe(f"{bucket}/cache", b"an object where the cache's folder should be")
    spec = batch_spec(
        f"s3://{bucket}/in/", f"s3://{bucket}/out/", storage_options=options, cache=f"s3://{bucket}/cache"
    )
    with pytest.raises(CacheUnusableError):
        client.run_batch(spec)
    nothing_spent(sim)


# --- 7. secrets and signals ---------------------------------------------------------------------------
def test_no_secret_in_the_reprs_of_a_spec_or_a_client(tmp_path: Path, closed_port: int) -> None:
    spec = BatchSpec(
        "s3://bucket/in/",
        "ftp://me:ftp-pa55@files.example/out/",
        "upscale",
        storage_options={
            "key": "AKIAEXAMPLEKEY",
            "secret": "s3-secret-value",
            "token": "session-token-value",
            "client_kwargs": {"endpoint_url": "http://u:endpoint-pa55@minio:9000", "region_name": "eu"},
        },
        cache_storage_options={"account_key": "azure-key-value", "sas_token": "sas-value"},
    )
    text = repr(spec)
    for secret in ("AKIAEXAMPLEKEY", "s3-secret-value", "session-token-value", "endpoint-pa55", "ftp-pa55"):
        assert secret not in text
    assert "azure-key-value" not in text and "sas-value" not in text
    assert "region_name': 'eu'" in text and "minio:9000" in text  # what is not secret still shows
    port = closed_port
    # Quick retries (the default policy backs off for seconds before it gives up on a closed port).
    with VanceClient(
        "tok-secret-123456", base_url=f"http://user:url-pa55@127.0.0.1:{port}", retry=FAST_RETRY
    ) as client:
        assert "url-pa55" not in repr(client) and "user:***@" in repr(client)
        with pytest.raises(TransportError) as err:
            client.balance()
    assert "url-pa55" not in str(err.value) and "tok-secret-123456" not in str(err.value)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nobody listens on, for the whole test: it stays bound here (not listening), so
    a connection to it is refused and no server of a test running meanwhile is given it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def test_an_unreachable_s3_endpoint_is_a_clear_error_and_exit_5(
    sim: SimulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    closed_port: int,
) -> None:
    pytest.importorskip("s3fs")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3-secret-never-shown")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("VANCE_API_TOKEN", TOKENS["open"])
    monkeypatch.setenv("VANCE_BASE_URL", sim.base_url)
    import fsspec

    fsspec.config.conf.setdefault("s3", {})
    monkeypatch.setitem(fsspec.config.conf, "s3", {"skip_instance_cache": True})
    with pytest.raises(SystemExit) as exit_:
        cli.main(["enhance", "s3://bucket/in/", "s3://bucket/out/", "--tool", "upscale"])
    err = capsys.readouterr().err
    assert exit_.value.code == cli.EXIT_SERVICE == 5, err
    assert "cannot be reached" in err and "Traceback" not in err and "hint:" in err
    assert "s3-secret-never-shown" not in err
    nothing_spent(sim)


def test_an_unreachable_store_is_a_typed_error_in_the_library(
    sim: SimulatorServer, client: VanceClient, tmp_path: Path, closed_port: int
) -> None:
    photos(tmp_path / "in", 1)
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{closed_port}"},
        "config_kwargs": {"retries": {"max_attempts": 1}},
        "skip_instance_cache": True,
    }
    with pytest.raises(StorageUnavailableError, match="cannot be reached"):
        client.run_batch(batch_spec(str(tmp_path / "in"), "s3://bucket/out/", storage_options=options))
    nothing_spent(sim)


CLI_RUN = """
import sys
from vance_provider.cli import main
main(sys.argv[1:])
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_mid_batch_stops_like_ctrl_c(
    sig: signal.Signals, api: str, sim_factory: Any, tmp_path: Path
) -> None:
    sim = sim_factory(time_per_job=600.0, queue_delay=0.0, tick=0.01)  # jobs that outlive the run
    photos(tmp_path / "in", 6)
    env = {**os.environ, "VANCE_API_TOKEN": TOKENS[api], "VANCE_BASE_URL": sim.base_url}
    out = tmp_path / "out"
    args = ["enhance", str(tmp_path / "in"), str(out), "--tool", "upscale", "--scale", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI_RUN, *args, "--poll-interval", "0.05", "--max-concurrency", "3"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    manifest = out / MANIFEST_NAME
    deadline = time.monotonic() + 60
    while len(manifest_job_ids(manifest)) < 3:  # the batch's own write: three jobs in flight
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, stderr
    assert f"stopped by {sig.name}" in stderr and "job(s) in flight kept" in stderr, stderr
    assert "Traceback" not in stderr
    recorded = manifest_job_ids(manifest)
    assert len(recorded) >= 3 and recorded <= set(created_jobs(sim))
    # The lease was released: a second run starts at once (no waiting for the lock), resumes the
    # jobs in flight and pays for each input once.
    release_held_jobs(sim, 600.0)
    with VanceClient(TOKENS[api], base_url=sim.base_url, retry=FAST_RETRY) as client:
        result = client.run_batch(batch_spec(str(tmp_path / "in"), str(out), lock_timeout=0))
    assert result.done == 6 and sum(charges(sim)) == 6 and max(charged_jobs(sim).values()) == 1
    assert recorded <= {i.job_id for i in result.items}


# --- 8. smaller ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_a_poll_interval_that_means_nothing_is_refused(
    value: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(
            ["enhance", str(tmp_path), str(tmp_path / "o"), "--tool", "upscale", "--poll-interval", value]
        )
    assert exit_.value.code == cli.EXIT_USAGE
    assert "--poll-interval" in capsys.readouterr().err
    with pytest.raises(InvalidConfigError, match="poll_interval"):
        BatchSpec(str(tmp_path), str(tmp_path / "o"), "upscale", poll_interval=float(value))


def test_links_are_reported_for_what_they_are(
    api: str, sim: SimulatorServer, client: VanceClient, tmp_path: Path
) -> None:
    photos(tmp_path / "in", 1)
    photos(tmp_path / "elsewhere", 2, prefix="e")
    (tmp_path / "in" / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    (tmp_path / "in" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    result = client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), on_failure="continue"))
    by_source = {Path(i.source).name: i for i in result.items}
    assert by_source["p00.jpg"].state == "done"
    gone = by_source["gone.jpg"]
    assert gone.state == "failed" and "broken symbolic link" in (gone.error or "")
    assert "empty" not in (gone.error or "") and "missing.jpg" in (gone.error or "")
    [(url, reason)] = result.ignored
    assert url.endswith("linked") and "symbolic link to the folder" in reason
    assert "by its extension" not in reason
    assert sum(charges(sim)) == 1


def test_a_mismatch_shows_the_values_that_differ(
    api: str, sim: SimulatorServer, client: VanceClient, tmp_path: Path
) -> None:
    photos(tmp_path / "in", 1)
    client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), config={"scale": 2}))
    with pytest.raises(ManifestMismatchError) as err:
        client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), config={"scale": 4}))
    text = str(err.value)
    assert '"scale": 2' in text and '"scale": 4' in text, text


def test_a_budget_is_shown_as_it_was_given(
    api: str, sim: SimulatorServer, client: VanceClient, tmp_path: Path
) -> None:
    photos(tmp_path / "in", 3)
    with pytest.raises(BudgetExceededError) as err:
        client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), credit_budget=2.9999999))
    assert "over its budget of 2.9999999" in str(err.value) and "budget of 3" not in str(err.value)
    assert "about 3 credits" in str(err.value)
    nothing_spent(sim)
    result = client.run_batch(
        batch_spec(
            str(tmp_path / "in"),
            str(tmp_path / "out"),
            credit_budget=2.9999999,
            on_insufficient_credits="partial",
        )
    )
    assert result.done == 2 and "budget of 2.9999999" in (result.stopped or "")


def test_a_second_manifest_on_the_same_destination_never_overwrites_paid_outputs(
    api: str, sim: SimulatorServer, client: VanceClient, tmp_path: Path
) -> None:
    photos(tmp_path / "a", 2)
    photos(tmp_path / "b", 2, shade=9)
    dest = tmp_path / "out"
    client.run_batch(batch_spec(str(tmp_path / "a"), str(dest)))
    paid = outputs_of(dest)
    other = str(tmp_path / "elsewhere" / "manifest.json")
    with pytest.raises(OutputExistsError):
        client.run_batch(batch_spec(str(tmp_path / "b"), str(dest), manifest=other))
    assert outputs_of(dest) == paid and sum(charges(sim)) == 2 and len(created_jobs(sim)) == 2


def test_the_cli_refusal_names_the_safe_choices(
    api: str, sim: SimulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    photos(tmp_path / "a", 2)
    photos(tmp_path / "b", 2, shade=9)
    monkeypatch.setenv("VANCE_API_TOKEN", TOKENS[api])
    monkeypatch.setenv("VANCE_BASE_URL", sim.base_url)
    dest = str(tmp_path / "out")
    base = ["enhance", "--tool", "upscale", "--scale", "2", "--poll-interval", "0.05"]
    with pytest.raises(SystemExit) as first:
        cli.main([*base[:1], str(tmp_path / "a"), dest, *base[1:]])
    assert first.value.code == 0
    paid = outputs_of(tmp_path / "out")
    capsys.readouterr()
    with pytest.raises(SystemExit) as second:
        cli.main([*base[:1], str(tmp_path / "b"), dest, *base[1:], "--fresh"])
    err = capsys.readouterr().err
    assert second.value.code == cli.EXIT_USAGE, err
    words = " ".join(err.split())  # the console wraps lines where the paths' length puts the end
    assert "hint:" in words and "--overwrite" in words and "another destination" in words
    assert "overwrite=True" not in words  # the command's words, not the library's
    assert outputs_of(tmp_path / "out") == paid and sum(charges(sim)) == 2
