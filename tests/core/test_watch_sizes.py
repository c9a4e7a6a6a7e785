"""A job's first look goes by its size: a video's seconds, an image's megapixels."""

from __future__ import annotations

import asyncio
import time

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
