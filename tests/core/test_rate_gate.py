"""The client-wide rate gate and the 429 retry rules, in virtual time (no sleeping, no server).

``VirtualTime`` drives the gate's clocks and sleeps: every timer fires in order, so each test
is deterministic. ``FixedWindowServer`` is a model of a per-key limit of ``limit`` requests per
fixed window, answering 429 with the documented headers.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Awaitable
from typing import Any

import httpx
import pytest

from tests.conftest import OPEN_KEY
from vance_provider.core import AsyncVanceClient, RetryPolicy
from vance_provider.core.api.errors import RateLimitedError, ServerError
from vance_provider.core.batch.latency import LatencyEstimate
from vance_provider.core.transport.rate_gate import RateGate

EPOCH = 1_800_000_000.0  # wall time at the start of every virtual run (a window boundary)


class VirtualTime:
    """A monotonic clock, a wall clock and ``sleep`` that only move when every task waits."""

    def __init__(self) -> None:
        self.now = 100.0
        self._start = self.now
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return EPOCH + (self.now - self._start)

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + max(0.0, seconds), next(self._seq), fut))
        await fut

    async def run(self, main: Awaitable[Any]) -> Any:
        task = asyncio.ensure_future(main)
        while not task.done():
            for _ in range(20):  # let every ready task run until it waits on a timer
                await asyncio.sleep(0)
            if task.done():
                break
            assert self._timers, "every task waits and no timer is set: a deadlock"
            at, _, fut = heapq.heappop(self._timers)
            self.now = max(self.now, at)
            if not fut.done():
                fut.set_result(None)
        return task.result()

    def gate(self) -> RateGate:
        return RateGate(clock=self.clock, wall=self.wall, sleep=self.sleep)


class FixedWindowServer:
    """``limit`` requests per ``window`` (aligned to the epoch); ``always``: headers on every answer."""

    def __init__(self, vt: VirtualTime, limit: int, window: float, *, always: bool = False) -> None:
        self.vt, self.limit, self.window, self.always = vt, limit, window, always
        self.counts: dict[float, int] = {}
        self.refused = 0

    def answer(self) -> tuple[bool, httpx.Headers]:
        wall = self.vt.wall()
        start = math.floor(wall / self.window) * self.window
        used = self.counts.get(start, 0)
        ok = used < self.limit
        if ok:
            self.counts[start] = used + 1
        else:
            self.refused += 1
        reset = start + self.window
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.limit - used - 1 if ok else 0),
            "X-RateLimit-Reset": f"{reset:.3f}",
        }
        if not ok:
            headers["Retry-After"] = f"{reset - wall:.3f}"
        return ok, httpx.Headers(headers if self.always or not ok else {})


async def callers(
    vt: VirtualTime, gate: RateGate, server: FixedWindowServer, *, jobs: int, per_job: int, concurrency: int
) -> None:
    """``jobs`` tasks, ``concurrency`` at a time, each making ``per_job`` requests until answered."""
    slots = asyncio.Semaphore(concurrency)

    async def job() -> None:
        async with slots:
            for _ in range(per_job):
                while True:
                    sent = await gate.wait()
                    await vt.sleep(0.003)  # on the way
                    ok, headers = server.answer()
                    await vt.sleep(0.003)  # on the way back
                    retry_after = float(headers["Retry-After"]) if "Retry-After" in headers else None
                    gate.observe(headers, sent, limited=not ok, retry_after=retry_after)
                    if ok:
                        break

    await asyncio.gather(*(job() for _ in range(jobs)))


def refusal(limit: int, *, reset: float) -> httpx.Headers:
    """The headers of a 429: the window's limit, nothing left, when it resets (epoch seconds)."""
    return httpx.Headers(
        {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": f"{reset:.0f}"}
    )


# --- issue 17: a late answer from the previous window --------------------------------------------
async def test_a_late_answer_from_an_older_window_does_not_stall_the_new_one() -> None:
    """Replays the headers that stalled Open API batches: 999 left must stay 999, not drop to 2."""
    vt = VirtualTime()
    gate = vt.gate()
    old, new = EPOCH + 1, EPOCH + 2  # the resets of two successive one-second windows

    def answer(remaining: int, reset: float) -> None:
        headers = {"X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": str(remaining)}
        gate.observe(httpx.Headers({**headers, "X-RateLimit-Reset": f"{reset:.0f}"}), vt.now)

    for remaining in (5, 3, 4, 2):  # the old window; out of order: the lowest count is trusted
        answer(remaining, old)
    assert gate.remaining == 2
    vt.now += 1.0  # the new window
    answer(999, new)
    answer(2, old)  # late: from the window that has ended
    answer(3, old)
    assert (gate.remaining, gate.reset) == (999, new)
    await vt.run(asyncio.gather(*(gate.wait() for _ in range(50))))
    assert vt.now == 101.0  # no call waited for anything
    assert gate.remaining == 949


async def test_a_spent_window_holds_calls_until_it_resets_then_spreads_them() -> None:
    vt = VirtualTime()
    gate = vt.gate()
    gate.observe(refusal(4, reset=EPOCH + 2))
    times = await vt.run(asyncio.gather(*(gate.wait() for _ in range(4))))
    assert times[0] == pytest.approx(102.0)  # the first at the reset
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap == pytest.approx(gate.interval) and gap > 0 for gap in gaps)  # then one by one


async def test_calls_the_account_paced_are_not_paced_again_but_a_block_still_holds_them() -> None:
    """Once the account has let calls go (paced for every worker, or spending a window it counts),
    the gate's own pace would only send them later than the account counted them: into the next
    window, where the account counts them no more. A 429's block still holds them."""
    vt = VirtualTime()
    gate = vt.gate()
    gate.observe(
        httpx.Headers(
            {
                "X-RateLimit-Limit": "60",
                "X-RateLimit-Remaining": "59",
                "X-RateLimit-Reset": f"{EPOCH + 60:.0f}",
            }
        )
    )
    vt.now += 61.0  # that window has ended; no answer has told the next one yet
    paced = await vt.run(asyncio.gather(*(gate.wait() for _ in range(3))))
    assert paced[-1] - paced[0] == pytest.approx(2 * gate.interval) and gate.interval > 1.0
    start = vt.now
    assert await vt.run(asyncio.gather(*(gate.wait(paced=False) for _ in range(8)))) == [start] * 8
    gate.observe(refusal(60, reset=EPOCH + 180), vt.now, limited=True, retry_after=5.0)
    held = await vt.run(asyncio.gather(*(gate.wait(paced=False) for _ in range(3))))
    assert min(held) >= start + 5.0


# --- after a 429: one probe, then the others one by one ----------------------------------------
async def test_after_a_429_one_request_probes_and_the_rest_follow_one_by_one() -> None:
    vt = VirtualTime()
    gate = vt.gate()
    sent = await gate.wait()
    gate.observe(refusal(2, reset=EPOCH + 1), sent, limited=True, retry_after=1.0)
    times = await vt.run(asyncio.gather(*(gate.wait() for _ in range(6))))
    assert times[0] == pytest.approx(101.0)  # the probe, when Retry-After ends
    assert len(set(times)) == 6  # never two at once: no thundering herd
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) == pytest.approx(gate.interval) and gate.interval > 0


async def test_a_429_answering_a_request_sent_before_the_block_is_old_news() -> None:
    vt = VirtualTime()
    gate = vt.gate()
    burst = [await gate.wait() for _ in range(5)]
    headers = refusal(2, reset=EPOCH + 1)
    gate.observe(headers, burst[0], limited=True, retry_after=1.0)
    epoch, not_before, window = gate.epoch, gate.not_before, gate.window
    vt.now += 0.5
    for sent in burst[1:]:  # the rest of the burst, refused in the same window
        gate.observe(headers, sent, limited=True, retry_after=0.5)
    assert (gate.epoch, gate.not_before, gate.window) == (epoch, not_before, window)
    assert gate.limited == 5


async def test_a_server_clock_ahead_of_ours_is_read_through_retry_after() -> None:
    """X-RateLimit-Reset is the server's clock: two minutes ahead, it must not mean two minutes' wait."""
    vt = VirtualTime()
    gate = vt.gate()
    headers = refusal(2, reset=EPOCH + 120 + 1)  # the server's clock says 120 s later than ours
    headers["Retry-After"] = "1"
    gate.observe(headers, await gate.wait(), limited=True, retry_after=1.0)
    assert gate.not_before == pytest.approx(101.0) and gate.window == pytest.approx(1.0)
    await vt.run(gate.wait())
    assert vt.now == pytest.approx(101.0)


async def test_a_429_without_rate_headers_paces_by_what_passed() -> None:
    """VisionCraft sends only Retry-After: the rest still follow one by one, never all at once."""
    vt = VirtualTime()
    gate = vt.gate()
    for _ in range(3):  # three passed
        gate.observe({}, await gate.wait())
    gate.observe({"Retry-After": "1"}, await gate.wait(), limited=True, retry_after=1.0)
    assert gate.interval == pytest.approx(1.1 / 3)
    times = await vt.run(asyncio.gather(*(gate.wait() for _ in range(4))))
    assert len(set(times)) == 4 and times[0] == pytest.approx(101.0)


# --- pacing learned from the 429 headers alone ---------------------------------------------------
@pytest.mark.parametrize(
    ("limit", "window"),
    [(2, 1.0), (60, 60.0), (5, 1.0), (2, 0.05)],
    ids=["2/s", "60/min", "5/s", "2/s-time-scaled"],
)
@pytest.mark.parametrize("always", [False, True], ids=["headers-on-429", "headers-always"])
async def test_pacing_learned_from_what_the_server_says(limit: int, window: float, always: bool) -> None:
    """300 jobs of 3 requests, 16 at a time: after the first burst (nothing is known yet, so up
    to 16 are refused) the gate keeps under the limit, and close to it."""
    vt = VirtualTime()
    gate = vt.gate()
    server = FixedWindowServer(vt, limit, window, always=always)
    await vt.run(callers(vt, gate, server, jobs=300, per_job=3, concurrency=16))
    assert sum(server.counts.values()) == 900  # every request went through in the end
    assert server.refused <= 16 + 2  # the first burst, and the learning
    ideal = 900 / limit * window
    assert vt.now - 100.0 <= 1.25 * ideal  # the margin is 10 %


# --- Backend.call: 429s do not use up attempts ---------------------------------------------------
def _client(answers: list[httpx.Response], retry: RetryPolicy) -> tuple[AsyncVanceClient, list[int]]:
    sent: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(1)
        return answers.pop(0) if len(answers) > 1 else answers[0]

    client = AsyncVanceClient(
        OPEN_KEY, base_url="http://vance.test", transport=httpx.MockTransport(handler), retry=retry
    )
    return client, sent


def _refusal(code: str = "rate_limited", retry_after: str = "0.01") -> httpx.Response:
    headers = {"Retry-After": retry_after, "X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "0"}
    return httpx.Response(429, json={"error": {"code": code, "message": "slow down"}}, headers=headers)


def _ok() -> httpx.Response:
    return httpx.Response(200, json={"ok": True})


async def _call(client: AsyncVanceClient) -> httpx.Response:
    backend = client.backend
    return await backend.call("probe", lambda: backend.http.get("http://vance.test/api/v1/probe"))


async def test_429s_do_not_use_up_attempts() -> None:
    client, sent = _client([*[_refusal()] * 8, _ok()], RetryPolicy(max_attempts=2, initial=0.01))
    async with client:
        assert (await _call(client)).status_code == 200
    assert len(sent) == 9
    assert client.backend.gate.limited == 8


async def test_concurrency_429s_do_not_use_up_attempts_nor_hold_other_calls() -> None:
    refusals = [_refusal("concurrency_limit_exceeded")] * 4
    client, sent = _client([*refusals, _ok()], RetryPolicy(max_attempts=2, initial=0.01))
    heard: list[int] = []
    gate = client.backend.gate
    gate.on_concurrency_limit.append(lambda: heard.append(1))
    async with client:
        assert (await _call(client)).status_code == 200
    assert len(sent) == 5 and gate.limited == 0 and gate.epoch == 0
    assert gate.concurrency_refusals == 4 and len(heard) == 4  # what a batch lowers its concurrency by


async def test_other_errors_still_use_up_attempts() -> None:
    unavailable = httpx.Response(503, json={"error": {"code": "service_unavailable", "message": "x"}})
    client, sent = _client(
        [_refusal(), unavailable, _refusal(), unavailable], RetryPolicy(max_attempts=2, initial=0.01)
    )
    async with client:
        with pytest.raises(ServerError):
            await _call(client)
    assert len(sent) == 4  # two 503s (the attempts) and the 429s between them


async def test_429s_are_bounded_by_the_deadline() -> None:
    client, sent = _client([_refusal()], RetryPolicy(max_attempts=3, rate_limit_deadline=0.1))
    async with client:
        with pytest.raises(RateLimitedError):
            await _call(client)
    assert len(sent) >= 3  # it kept trying, past max_attempts, until the deadline


async def test_no_retries_means_none_for_429s_either() -> None:
    client, sent = _client([_refusal()], RetryPolicy(max_attempts=1))
    async with client:
        with pytest.raises(RateLimitedError) as info:
            await _call(client)
    assert len(sent) == 1 and info.value.retry_after == pytest.approx(0.01)


def window_answer(remaining: int, reset: float = EPOCH + 10) -> httpx.Headers:
    """An answer's rate headers: 100 requests per window, ``remaining`` left until ``reset``."""
    return httpx.Headers(
        {
            "X-RateLimit-Limit": "100",
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": f"{reset:.3f}",
        }
    )


# --- rate pressure: how close the key is to its limit (where the engine aims its first polls) ------
async def test_pressure_is_the_share_of_the_allowed_rate_in_use() -> None:
    vt = VirtualTime()
    gate = vt.gate()
    assert gate.pressure() == 0.0  # no limit known: nothing binds

    gate.observe(window_answer(99))  # 100 per 10 s: 10 calls a second allowed
    for _ in range(10):  # 5 calls a second for 2 s
        vt.now += 0.2
        gate.observe(window_answer(98), await gate.wait())
    # 5 calls a second at its own pace of one per 0.106 s: 0.53; the window's pace says more: 11 of
    # its 100 requests spent (the gate counts its own) in a fifth of it: 0.55.
    assert 5 * gate.interval == pytest.approx(0.53)
    assert gate.pressure() == pytest.approx(0.55)
    for _ in range(25):  # at the gate's own pace for 2 s and more: bound
        vt.now += gate.interval
        gate.observe(window_answer(98), await gate.wait())
    assert gate.pressure() == pytest.approx(1.0, abs=0.06)
    vt.now += 2.5
    # Nothing sent lately: what is left is the window's own pace (a third of it spent in 3/4 of it).
    assert 0.0 < gate.pressure() < 0.6
    gate.observe(window_answer(0), await gate.wait())
    assert gate.pressure() == 1.0  # the window is spent: calls wait for its reset


async def test_a_window_spent_faster_than_it_runs_reads_as_bound() -> None:
    """The gate spends a window's remaining requests without pacing, so over the last couple of
    seconds the rate can look low while the window's budget runs out: that reads as bound too."""
    vt = VirtualTime()
    gate = vt.gate()

    gate.observe(window_answer(99))  # 100 per 10 s
    for left in range(98, 38, -1):  # 60 calls in the first 2 s
        vt.now += 2 / 60
        gate.observe(window_answer(left), await gate.wait())
    vt.now += 2.5  # then nothing for a while: 60 % of the budget gone in 45 % of the window
    assert gate.pressure() == 1.0
    gate.observe(window_answer(39))
    vt.now += 2.0  # 60 % gone in 65 % of the window: no longer ahead of its pace
    assert 0.8 < gate.pressure() < 1.0


@pytest.mark.parametrize(("windows_later", "bound"), [(1, True), (3, False)])
async def test_just_after_a_reset_a_key_that_spent_the_last_window_reads_as_bound(
    windows_later: int, bound: bool
) -> None:
    """A key that spent its window before the reset waited for it, so just after the reset its
    recent rate looks low and the new window is too young to tell (it read 0.67, and the engine
    aimed its first looks lower for a second and a half after each reset). The window just ended
    says it: spent. A window that does not follow it (the key rested meanwhile) says nothing."""
    vt = VirtualTime()
    gate = vt.gate()
    gate.observe(window_answer(99, EPOCH + 10))  # 100 per 10 s
    for left in range(98, -1, -1):  # the budget spent in 8 s...
        vt.now += 8 / 99
        gate.observe(window_answer(left, EPOCH + 10), await gate.wait())
    vt.now = 100 + 10 * windows_later + 0.3  # ...then nothing until just after a reset
    gate.observe(window_answer(99, EPOCH + 10 * (windows_later + 1)), await gate.wait())
    assert (gate.pressure() >= LatencyEstimate.BOUND) is bound
