"""Open API job creation carries an Idempotency-Key, so a retry never creates or charges twice."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.core.conftest import batch_spec, image_size
from tests.core.helpers import charged_jobs, created_jobs
from vance_provider.core import VanceClient, resolve
from vance_provider.core.api.idempotency import default_idempotency_key
from vance_provider.core.state.storage import list_sources
from vance_provider.sim import Faults, SimulatorServer


def test_default_key_is_stable_for_one_logical_submission() -> None:
    up2 = resolve("upscale", {"scale": 2}, api="open")
    key = default_idempotency_key("s3://b/a.jpg", "100:etag1", up2)
    assert key.startswith("vp-") and len(key) == 43
    assert key == default_idempotency_key(
        "s3://b/a.jpg", "100:etag1", resolve("upscale", {"scale": 2}, api="open")
    )
    others = {
        default_idempotency_key("s3://b/a.jpg", "100:etag1", resolve("upscale", {"scale": 4}, api="open")),
        default_idempotency_key(
            "s3://b/a.jpg", "100:etag1", resolve("upscale", {"scale": 2, "face_enhance": True}, api="open")
        ),
        default_idempotency_key(
            "s3://b/a.jpg", "100:etag1", resolve("upscale", {"scale": 2}, api="open", output_format="png")
        ),
        default_idempotency_key("s3://b/a.jpg", "100:etag1", resolve("denoise", {}, api="open")),
        default_idempotency_key("s3://b/a.jpg", "101:etag2", up2),  # the content changed
        default_idempotency_key("s3://b/b.jpg", "100:etag1", up2),  # another input
        default_idempotency_key("s3://b/a.jpg", "100:etag1", up2, generation=1),  # a retry after a failure
    }
    assert key not in others and len(others) == 7


def test_submit_sends_a_stable_key_and_replays(
    sim: SimulatorServer, client_factory: Callable[..., VanceClient], make_image: Callable[..., Path]
) -> None:
    client = client_factory(sim, "open")
    src = str(make_image("a.jpg", 16, 16))
    first = client.submit(src, "upscale", {"scale": 2})
    again = client.submit(src, "upscale", {"scale": 2})
    other = client.submit(src, "upscale", {"scale": 4})
    keys = [r.idempotency_key for r in sim.state.requests if r.path == "/api/v1/jobs"]
    assert keys[0] and keys[0] == keys[1] != keys[2]
    [source] = list_sources(src)
    assert keys[0] == default_idempotency_key(
        source.url, source.fingerprint, resolve("upscale", {"scale": 2}, api="open")
    )
    assert again.id == first.id and other.id != first.id
    assert created_jobs(sim) == [first.id, other.id]


def test_dropped_creations_replay_the_same_key(
    sim_factory: Callable[..., SimulatorServer],
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """The service creates the job but the answer is lost: the retry replays the key, no second job."""
    sim = sim_factory(faults=Faults(drop=0.5, seed=1))
    client = client_factory(sim, "open")
    jobs = []
    for i in range(10):
        jobs.append(client.submit(str(make_image(f"d{i}.jpg", 16, 16)), "upscale", {"scale": 2}))
        if any(r.fault == "drop" and r.path == "/api/v1/jobs" for r in sim.state.requests) and i >= 2:
            break
    creations = [r for r in sim.state.requests if r.path == "/api/v1/jobs"]
    dropped = [r for r in creations if r.fault == "drop"]
    assert dropped, "the seed should drop at least one job creation"
    assert all(r.idempotency_key for r in creations)
    # every dropped creation was retried with the same key and got the one job back
    per_key = Counter(r.idempotency_key for r in creations)
    assert all(per_key[r.idempotency_key] >= 2 for r in dropped)
    jobs_per_key = Counter(j.idempotency_key for j in sim.state.jobs.values())
    assert set(jobs_per_key.values()) == {1} and len(jobs_per_key) == len(jobs)
    assert sorted(j.id for j in jobs) == sorted(sim.state.jobs)
    done = client.wait_all([j.id for j in jobs], poll_interval=0.05, timeout=30)
    for job in done:
        client.download(job, str(tmp_path / "out" / f"{job.id}.jpg"))
    assert sim.state.double_charges() == []
    assert charged_jobs(sim) == Counter({j.id: 1 for j in jobs})


def test_batch_under_dropped_connections(
    api: str,
    sim_factory: Callable[..., SimulatorServer],
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    sim = sim_factory(faults=Faults(drop=0.2, seed=4))
    client = client_factory(sim, api)
    for i in range(6):
        make_image(f"in/p{i}.jpg", 16 + i, 12)
    result = client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out")))
    assert result.done == 6, result.summary()
    assert sim.state.faults_injected["drop"] >= 1
    for item in result.items:
        assert item.output and image_size(item.output)[1] == 24
    assert sim.state.double_charges() == []
    charged = charged_jobs(sim)
    assert sorted(charged) == sorted(i.job_id for i in result.items)  # each input charged exactly once
    assert sum(e.amount for e in sim.state.charges()) == 6
    if api == "open":
        jobs_per_key = Counter(j.idempotency_key for j in sim.state.jobs.values())
        assert len(jobs_per_key) == 6 and set(jobs_per_key.values()) == {1}
