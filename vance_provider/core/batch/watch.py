"""Waiting for one job: when to look at it first, how often after that, and what its end
teaches about the next ones (the lengths the service reports, the engine's timing of its looks).

Two looks at one job never come closer than the batch's ``poll_interval`` (the vendor's guidance:
about 2 s for images); a video's come ``VIDEO_LOOKS`` times further apart.

A job's first look is aimed by its size too (an image's megapixels, a video's seconds): the
lengths seen are fitted to the sizes of their jobs (see :mod:`.looks`), and the jobs that wait
for the scout take its length, shorter in proportion for a smaller one. A video is looked at
first by the engine's timing, or sooner where the videos that ended say one of its duration
ends sooner.

Until a first image job has ended, nothing tells how long jobs take: one job, the scout, is looked
at early and often, and the others wait for what it tells: its pace (two readings of its progress)
gives the length of a job like it, and their first looks come at that length. Where the service
shows no progress (the web API), nobody waits: the first looks of all teach the latency estimate
sooner than one job's end would. (Looked at all alike, every job of a first wave was looked at
several times before any length was known: where the rate binds, those looks are the batch's time.)
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from ..api.models import Job
from ..transport.rate_gate import RateGate
from .latency import AdaptiveLimit, LatencyEstimate
from .looks import LookPlanner, scaled_down
from .polling import poll_jobs, time_left
from .spec import BatchSpec

# Until the service tells its rate limit, the rate is taken to be the documented example's, 60
# requests a minute: early looks must not burn a window whose size is not known yet.
ASSUMED_RATE = 1.0
VIDEO_LOOKS = 2.5  # a video job is looked at this much less often than an image job (5 s vs 2 s)


class JobWatch:
    """The look plan of one batch: shared by its jobs, each waited for with :meth:`wait`."""

    def __init__(self, spec: BatchSpec, gate: RateGate, limit: AdaptiveLimit, requests_per_job: int) -> None:
        self.spec, self.gate, self.limit = spec, gate, limit
        self.requests_per_job = requests_per_job
        self.latency = LatencyEstimate(spec.poll_interval, gate.pressure, floor=spec.poll_interval)
        self.looks = LookPlanner(floor=spec.poll_interval)  # aimed by the service's job lengths
        self.video_looks = LookPlanner(floor=spec.poll_interval * VIDEO_LOOKS, min_samples=1)
        self.waiting = 0  # this batch's jobs waited for now: its jobs on the service
        self.scout: str | None = None  # the image job looked at to learn how long jobs take
        self.scouted = False  # a scout's job ended: the estimates have learned from it
        self.guess: float | None = None  # a job's length, by the scout's pace (seconds)
        self._scout_started = 0.0  # when the scout's job was created (time.monotonic())
        self._scout_size: float | None = None  # the scout's size (megapixels)
        self._reading: tuple[float, int] | None = None  # the scout's first progress reading

    def first_look(self, size: float | None = None) -> float:
        """When to look first at an image job of ``size`` megapixels: by the lengths the service
        reported, once enough are known (see :mod:`.looks`); before that, by the scout's length
        (shorter for a smaller job) or the engine's own timing of its looks."""
        if not self.looks.ready:
            if self.guess is not None and not self.scouted:
                return scaled_down(self.guess, size, self._scout_size)
            return self.latency.value
        return self.looks.point(
            slots=self.limit.limit, rate=self._rate(), least_requests=self.requests_per_job, size=size
        )

    def video_look(self, size: float | None = None) -> float:
        """When to look first at a video job of ``size`` seconds: by the engine's own timing of
        its looks, or sooner where the videos that ended say one of this duration ends sooner.

        Never later: a few videos' lengths, of minutes and with their spread, tell a video's end
        too loosely to wait for it (a slot idles), and a few more looks at a video cost little
        of the rate."""
        if not self.video_looks.ready:
            return self.latency.value
        planned = self.video_looks.point(
            slots=self.limit.limit, rate=self._rate(), least_requests=self.requests_per_job, size=size
        )
        return min(self.latency.value, planned)

    def _rate(self) -> float:
        gate = self.gate
        return 1 / gate.interval if gate.limit and gate.window else ASSUMED_RATE

    async def wait(
        self,
        get_job: Callable[[str], Awaitable[Job]],
        job_id: str,
        started: float,
        *,
        video: bool,
        timed: bool,
        size: float | None = None,
    ) -> Job:
        """Look at ``job_id`` (created at ``started``, ``time.monotonic()``) until it ends.
        ``timed``: this run created the job, so its timing teaches when to look at the next ones.
        ``size``: the input's megapixels (an image) or seconds (a video), when known."""
        spec = self.spec
        point: Callable[[], float] = lambda: self.first_look(size)  # noqa: E731
        on_update: Callable[[Job], None] | None = None
        if timed and not video and not self.scouted:
            if self.scout is None:
                self.scout, self._scout_started, self._reading = job_id, started, None
                self._scout_size = size
                on_update = self._read_scout
            else:
                point = lambda: self._after_scout(started, size)  # noqa: E731
        floor = spec.poll_interval  # never two looks at one job closer than the guidance
        if video:
            point = lambda: self.video_look(size)  # noqa: E731
            floor *= VIDEO_LOOKS
            if spec.credit_budget is not None:  # look early enough to cancel it, if need be
                point = lambda: min(self.video_look(size), spec.poll_interval)  # noqa: E731
        self.waiting += 1
        try:
            result = await poll_jobs(
                get_job,
                [job_id],
                # First look when jobs like this one usually finish, by the point at the time of the
                # look: a miss meanwhile may have raised it (read once at creation, the jobs in flight
                # when the rate began to bind all looked too early and missed together). A job still
                # running then is usually nearly done: look again soon, then back off.
                first_delay=lambda: started + point() - time.monotonic(),
                started=started,
                interval=floor,
                min_interval=floor,
                max_interval=spec.max_poll_interval,
                # No deadline of its own: the batch's timeout stops the batch, and its jobs stay
                # recorded in flight, to be canceled or collected. A job given up here would be
                # marked failed while it runs on: no cancel would find it, and it would be paid.
                on_update=on_update,
            )
        finally:
            self.waiting -= 1
            if self.scout == job_id:
                self.scout = None  # ended or gone: the next job waited for scouts, if need be
        done = result.done[job_id]
        if on_update is not None:
            self.scouted = True
        if done.length is not None:
            (self.video_looks if video else self.looks).observe(done.length, size)
        if timed:
            self.latency.observe(
                result.last_look_at - started,
                first_poll_hit=result.looks == 1,
                in_flight=self.waiting + 1,  # the jobs whose answers share its point
                running_at=result.previous_look_at - started if result.looks > 1 else None,
                running_progress=result.previous_progress,
                point=result.first_look_at - started,
            )
        return done

    def _after_scout(self, started: float, size: float | None) -> float:
        """The first look of a job created (at ``started``) while the scout runs: at the length
        the scout's pace tells (shorter for a smaller job); until it tells, a little later than
        now, to ask again (the point is read again on waking)."""
        if self.guess is not None or self.scouted or self.scout is None:
            return self.first_look(size)
        return time.monotonic() - started + self.spec.poll_interval / 4

    def _read_scout(self, job: Job) -> None:
        """The scout's progress at a look: the pace since its first reading gives its end (the
        longer apart, the less the whole percents blur it; see :func:`.polling.time_left`)."""
        if job.progress is None and not job.status.terminal:
            self.scouted = True  # no progress shown: nothing to tell before its end
            return
        elapsed = time.monotonic() - self._scout_started
        if (left := time_left(job, elapsed, self._reading)) is not None:
            self.guess = elapsed + left
        if self._reading is None and job.phase in (None, "processing") and 0 < (job.progress or 0) < 100:
            self._reading = (elapsed, job.progress or 0)
