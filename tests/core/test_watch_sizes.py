"""A job's first look goes by its size: a video's seconds, an image's megapixels."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from vance_provider.core import BatchSpec
from vance_provider.core.api.models import Job, JobStatus
from vance_provider.core.batch.latency import AdaptiveLimit
from vance_provider.core.batch.watch import JobWatch
from vance_provider.core.transport.rate_gate import RateGate


def watch() -> JobWatch:
    spec = BatchSpec("/in", "/out", "video_hdr", poll_interval=0.01, max_poll_interval=0.02)
    return JobWatch(spec, RateGate(), AdaptiveLimit(4), requests_per_job=2)


def ended(job_id: str, length: float, media: str = "video") -> Job:
    return Job(job_id, "open", "video_hdr", JobStatus.SUCCEEDED, "finished", media=media, length=length)  # type: ignore[arg-type]


async def wait_for(w: JobWatch, job: Job, *, video: bool, size: float | None) -> None:
    async def get_job(job_id: str) -> Job:
        return job

    # Created long ago: looked at once, at once (the first look's point is in the past).
    await w.wait(get_job, job.id, time.monotonic() - 3600, video=video, timed=True, size=size)


def test_a_shorter_video_is_looked_at_sooner_and_none_later_than_the_engine_times_them() -> None:
    w = watch()
    assert w.video_look(size=100.0) == w.video_look(size=5.0) == w.latency.value  # nothing ended yet
    asyncio.run(wait_for(w, ended("v1", length=90.0), video=True, size=30.0))
    w.latency.value = 60.0  # the engine's own timing of its looks at videos
    # One duration seen: a shorter video is expected to be shorter in proportion, a longer one
    # no longer; and no video is first looked at later than the engine's timing says.
    assert w.video_look(size=10.0) == pytest.approx(w.video_look(size=30.0) * 90.0 / 3 / 60.0)
    assert w.video_look(size=10.0) < 60.0
    assert w.video_look(size=30.0) == w.video_look(size=120.0) == 60.0
    # A second duration tells what grows with it: 20 s plus 2 s of work a second of video.
    asyncio.run(wait_for(w, ended("v2", length=260.0), video=True, size=120.0))
    w.latency.value = 600.0
    assert w.video_look(size=120.0) > 2 * w.video_look(size=30.0)
    assert w.video_look(size=30.0) == pytest.approx(90.0) and w.video_look(size=120.0) == pytest.approx(260.0)
    # Image jobs are planned apart: a video's minutes say nothing of a photo's seconds.
    assert not w.looks.ready


def test_videos_of_no_known_duration_are_planned_alike() -> None:
    w = watch()
    asyncio.run(wait_for(w, ended("v1", length=90.0), video=True, size=None))
    w.latency.value = 600.0
    assert w.video_look(size=10.0) == w.video_look(size=300.0) == w.video_look(size=None) < 600.0


def test_image_jobs_waiting_for_the_scout_take_its_length_shorter_for_a_smaller_one() -> None:
    w = watch()
    w.guess, w._scout_size, w.scout = 20.0, 12.0, "scout"  # the scout, 12 MP, will take 20 s
    assert w.first_look(size=3.0) == pytest.approx(5.0)
    assert w.first_look(size=24.0) == w.first_look(size=None) == pytest.approx(20.0)


def test_a_batch_tells_the_watch_each_photo_s_megapixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner hands each job's size (read from its header at planning) to the look plan,
    and the plan learns each length with its size."""
    from tests.conftest import fast_config, image_bytes
    from vance_provider.core import VanceClient
    from vance_provider.sim import DEMO_OPEN_KEY, SimulatorServer

    seen: dict[str, float | None] = {}
    planned: list[JobWatch] = []
    wait = JobWatch.wait

    async def recording(self: JobWatch, get_job, job_id, started, **kw):  # type: ignore[no-untyped-def]
        seen[job_id] = kw.get("size")
        planned.append(self)
        return await wait(self, get_job, job_id, started, **kw)

    monkeypatch.setattr(JobWatch, "wait", recording)
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    sizes = {"small.jpg": (40, 30), "wide.jpg": (400, 100), "big.jpg": (300, 200)}
    for name, (w, h) in sizes.items():
        (src / name).write_bytes(image_bytes(w, h))
    # Time-scaled: the service's answers then tell its times in milliseconds, as precise as the
    # lengths of such short jobs need to be learned.
    sim = SimulatorServer(fast_config(time_scale=2.0)).start()
    try:
        with VanceClient(DEMO_OPEN_KEY, api="open", base_url=sim.base_url) as client:
            result = client.run_batch(BatchSpec(str(src), str(dst), "sharpen", poll_interval=0.02))
        assert result.done == 3
        by_source = {
            sim.state.jobs[job_id].source_name: size
            for job_id, size in seen.items()  # type: ignore[attr-defined]
        }
    finally:
        sim.stop()
    assert by_source == {name: pytest.approx(w * h / 1e6) for name, (w, h) in sizes.items()}
    learned = sorted(s for s in planned[0].looks.sizes if s is not None)
    assert learned == pytest.approx(sorted(w * h / 1e6 for w, h in sizes.values()))
