"""The simulator's time scale: a scaled simulator answers as the unscaled one would at the same
simulated instants, every time it tells a client on the wall clock, divided by the scale.

Both simulators run with a frozen wall clock (the clock's ``wall`` hook) that the test moves: the
scaled one by ``s / SCALE`` when the unscaled one moves by ``s``. Nothing races a sleep.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import OPEN_KEY, WEB_TOKEN, image_bytes
from tests.sim.helpers import scheduler_passes
from vance_provider.sim import SimConfig, SimulatorServer
from vance_provider.sim.cli import build_parser, config_from_args
from vance_provider.sim.state import Clock

SCALE = 64.0  # a power of two: s / SCALE * SCALE is s exactly, so both clocks read the same instant
T0 = 1_750_000_020.0  # the start of a 60 s window (windows are aligned to the epoch)
WINDOW, LIMIT = 60.0, 6


class Frozen:
    """A wall clock that moves only when told."""

    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


class Pair:
    """The same simulator twice, unscaled and scaled, both at simulated instant ``T0 + s``."""

    def __init__(self, **config: Any) -> None:
        self.servers: list[SimulatorServer] = []
        self.walls: list[Frozen] = []
        self.clients: list[httpx.Client] = []
        for scale in (1.0, SCALE):
            server = SimulatorServer(SimConfig(time_scale=scale, **config)).start()
            wall = Frozen(T0)
            server.state.clock.wall, server.state.clock.origin = wall, T0
            self.servers.append(server)
            self.walls.append(wall)
            self.clients.append(httpx.Client(base_url=server.base_url, timeout=10))

    def at(self, s: float) -> None:
        """Both simulators at simulated instant ``T0 + s``; wait until their schedulers saw it."""
        self.walls[0].at, self.walls[1].at = T0 + s, T0 + s / SCALE
        for server in self.servers:
            scheduler_passes(server)

    def both(self, call: Callable[[httpx.Client], httpx.Response]) -> tuple[httpx.Response, httpx.Response]:
        plain, scaled = (call(c) for c in self.clients)
        return plain, scaled

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for server in self.servers:
            server.stop()


@pytest.fixture
def pair_factory() -> Iterator[Callable[..., Pair]]:
    made: list[Pair] = []

    def make(**config: Any) -> Pair:
        made.append(Pair(**config))
        return made[-1]

    yield make
    for pair in made:
        pair.close()


def simulated(wall: float) -> float:
    """A wall-clock instant the scaled simulator told, as its simulated instant."""
    return T0 + (wall - T0) * SCALE


def parse_iso(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def same_answer(plain: httpx.Response, scaled: httpx.Response) -> None:
    """``scaled`` is ``plain`` with every time on the wall clock, divided by the scale."""
    assert scaled.status_code == plain.status_code, (plain.text, scaled.text)
    for name in ("x-ratelimit-limit", "x-ratelimit-remaining"):
        assert scaled.headers.get(name) == plain.headers.get(name), name
    assert ("x-ratelimit-reset" in scaled.headers) == ("x-ratelimit-reset" in plain.headers)
    if "x-ratelimit-reset" in plain.headers:
        reset = float(scaled.headers["x-ratelimit-reset"])
        assert simulated(reset) == pytest.approx(float(plain.headers["x-ratelimit-reset"]), abs=SCALE * 1e-3)
    assert ("retry-after" in scaled.headers) == ("retry-after" in plain.headers)
    if "retry-after" in plain.headers:
        told = float(scaled.headers["retry-after"])
        assert told * SCALE == pytest.approx(float(plain.headers["retry-after"]), abs=SCALE * 1e-3)
        assert told * SCALE >= float(plain.headers["retry-after"])  # rounded up: never early
    if plain.headers.get("content-type", "").startswith("application/json"):
        plain_times: list[float] = []
        scaled_times: list[float] = []
        assert normal(scaled.json(), scaled_times) == normal(plain.json(), plain_times)
        for told, whole in zip(scaled_times, plain_times, strict=True):
            # The unscaled answer has whole seconds (truncated); the scaled one wall milliseconds
            # (truncated): SCALE milliseconds of simulated time.
            assert whole - SCALE * 1e-3 <= simulated(told) < whole + 1


def normal(body: Any, times: list[float]) -> Any:
    """A JSON answer without its ids, links and instants (put in ``times``, as epoch seconds)."""
    if isinstance(body, list):
        return [normal(v, times) for v in body]
    if not isinstance(body, dict):
        return body
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key in {"job_id", "trans_id", "uid", "result_url", "ip", "upload_id", "put_url"}:
            out[key] = "<id>" if value is not None else None
        elif key in {"created_at", "finished_at", "expires_at"} and isinstance(value, str):
            out[key] = "<instant>"
            times.append(parse_iso(value) if "T" in value else parse_record_time(value))
        else:
            out[key] = normal(value, times)
    return out


def parse_record_time(text: str) -> float:
    """The web API's points record time ("2026-01-01 10:00:00", UTC)."""
    form = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
    return dt.datetime.strptime(text, form).replace(tzinfo=dt.UTC).timestamp()


def open_call(method: str, path: str, **kwargs: Any) -> Callable[[httpx.Client], httpx.Response]:
    headers = {"Authorization": f"Bearer {OPEN_KEY}"}
    return lambda client: client.request(method, path, headers=headers, **kwargs)


def create(client: httpx.Client) -> httpx.Response:
    files = {"image": ("photo.jpg", image_bytes(), "image/jpeg")}
    data = {"tool": "upscale", "config": json.dumps({"scale": 2})}
    return client.post(
        "/api/v1/jobs", data=data, files=files, headers={"Authorization": f"Bearer {OPEN_KEY}"}
    )


FIELD = {  # the documented profile in miniature: a small window, ~40 s jobs with spread, 2 slots
    "rate_limit": LIMIT,
    "rate_window": WINDOW,
    "queue_delay": 2.0,
    "time_per_job": 40.0,
    "time_spread": 0.5,
    "max_concurrent_images": 2,
    "tick": 0.02,
}


def test_open_api_answers_as_unscaled_at_the_same_instants(pair_factory: Callable[..., Pair]) -> None:
    pair = pair_factory(**FIELD)
    pair.at(10.0)
    a_plain, a_scaled = pair.both(create)
    same_answer(a_plain, a_scaled)
    b_plain, b_scaled = pair.both(create)
    same_answer(b_plain, b_scaled)
    same_answer(*pair.both(create))  # a third job: 429 concurrency_limit_exceeded, Retry-After 1 s
    jobs = [
        (a_plain.json()["job_id"], a_scaled.json()["job_id"]),
        (b_plain.json()["job_id"], b_scaled.json()["job_id"]),
    ]

    def poll(which: int) -> tuple[httpx.Response, httpx.Response]:
        plain_id, scaled_id = jobs[which]
        plain = open_call("GET", f"/api/v1/jobs/{plain_id}")(pair.clients[0])
        scaled = open_call("GET", f"/api/v1/jobs/{scaled_id}")(pair.clients[1])
        return plain, scaled

    pair.at(12.5)  # both started (queue delay 2 s)
    same_answer(*poll(0))
    same_answer(*poll(1))
    pair.at(13.25)
    same_answer(*poll(1))  # the window's sixth request (the refused create counts)
    plain, scaled = poll(0)  # the seventh: 429 rate_limited, 46.75 s before the window ends
    same_answer(plain, scaled)
    assert plain.status_code == 429 and plain.headers["retry-after"] == "47"
    assert scaled.headers["retry-after"] == "0.735"  # 47 / 64, rounded up to the millisecond
    # The scaled answer is consistent on the wall clock: the window ends Retry-After from now.
    assert float(scaled.headers["x-ratelimit-reset"]) - pair.walls[1].at == pytest.approx(
        46.75 / SCALE, abs=1e-3
    )
    for s in (30.0, 61.0, 90.0):  # progress through the jobs, a new window
        pair.at(s)
        same_answer(*poll(0))
        same_answer(*poll(1))
    pair.at(400.0)  # both done: created_at and finished_at on the same simulated instants
    for which in (0, 1):
        plain, scaled = poll(which)
        same_answer(plain, scaled)
        assert plain.json()["status"] == "succeeded"
        created, finished = (parse_iso(scaled.json()[k]) for k in ("created_at", "finished_at"))
        job = pair.servers[1].state.jobs[jobs[which][1]]
        assert job.finished_at is not None  # the job's length, told on the wall clock
        assert finished - created == pytest.approx((job.finished_at - job.created_at) / SCALE, abs=2e-3)
    same_answer(*pair.both(open_call("GET", "/api/v1/credits")))
    # The request logs and the jobs are on the simulated clock: the same in both.
    logs = [[(r.at, r.status, r.path.count("/")) for r in server.state.requests] for server in pair.servers]
    assert logs[0] == logs[1]
    spans = [
        sorted(
            t or 0.0 for j in server.state.jobs.values() for t in (j.started_at, j.finish_at, j.finished_at)
        )
        for server in pair.servers
    ]
    assert spans[0] == pytest.approx(spans[1])


def web(client: httpx.Client, path: str, **fields: Any) -> httpx.Response:
    files = fields.pop("files", None)
    return client.post(f"/web_api/v1/{path}", data={"api_token": WEB_TOKEN, **fields}, files=files)


def test_web_api_answers_as_unscaled_at_the_same_instants(pair_factory: Callable[..., Pair]) -> None:
    pair = pair_factory(**FIELD, web_rate_limit=True, poll_retry_after=2)
    pair.at(5.0)
    jconfig = json.dumps(
        {"name": "real_esrgan", "config": {"module": "real_esrgan", "module_params": {"scale": "2x"}}}
    )
    ids: list[list[str]] = [[], []]
    for _ in range(3):
        answers = pair.both(lambda c: web(c, "upload", files={"file": ("cat.jpg", image_bytes())}))
        same_answer(*answers)
        uids = [a.json()["data"]["uid"] for a in answers]
        answers = (
            web(pair.clients[0], "transform", uid=uids[0], jconfig=jconfig),
            web(pair.clients[1], "transform", uid=uids[1], jconfig=jconfig),
        )
        same_answer(*answers)
        if answers[0].status_code == 200:
            for i in (0, 1):
                ids[i].append(answers[i].json()["data"]["trans_id"])
    assert len(ids[0]) == 3  # 6 requests: the window's budget
    seen: list[set[str]] = []
    for s in (7.5, 20.0, 59.0, 60.0, 130.0, 400.0):  # waiting, busy, process, a 429, finish
        pair.at(s)
        seen.append(set())
        for plain_id, scaled_id in zip(*ids, strict=True):
            plain = web(pair.clients[0], "progress", trans_id=plain_id)
            scaled = web(pair.clients[1], "progress", trans_id=scaled_id)
            same_answer(plain, scaled)
            seen[-1].add(plain.json()["data"]["status"] if plain.status_code == 200 else "429")
    assert seen[0] == {"429"} and seen[-1] == {"finish"}
    assert "process" in set().union(*seen)
    pair.at(460.0)
    same_answer(*pair.both(lambda c: web(c, "points/record")))


def test_scaled_clock_runs_faster_and_tells_the_wall_clock() -> None:
    wall = Frozen(T0)
    clock = Clock(60.0, origin=T0, wall=wall)
    wall.at = T0 + 1.0
    assert clock.now() == pytest.approx(T0 + 60.0)
    assert clock.to_wall(clock.now()) == pytest.approx(wall.at)
    clock.advance(120.0)  # tests move the simulated clock in simulated seconds
    assert clock.now() == pytest.approx(T0 + 180.0)
    assert clock.to_wall(clock.now()) == pytest.approx(wall.at + 2.0)
    assert clock.wall_seconds(40.0) == pytest.approx(40.0 / 60)
    plain = Clock(wall=wall)  # unscaled: the wall clock plus the offset, as ever
    plain.advance(5.0)
    assert plain.now() == wall.at + 5.0 and plain.to_wall(123.0) == 123.0
    with pytest.raises(ValueError):
        Clock(0.0)


def test_serve_flag_sets_the_time_scale() -> None:
    args = build_parser().parse_args(["serve", "--time-scale", "60", "--time-spread", "0.3"])
    config = config_from_args(args)
    assert config.time_scale == 60.0 and config.time_spread == 0.3
    assert config_from_args(build_parser().parse_args(["serve"])).time_scale == 1.0
