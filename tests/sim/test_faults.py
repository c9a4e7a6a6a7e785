"""Injected faults: seeded and reproducible, and each kind looks the way a client would meet it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import WEB_TOKEN
from tests.sim.helpers import Open, Web, bearer, enlarge, open_error, wait_for
from vance_provider.sim import Faults, SimulatorServer

Connect = Callable[..., httpx.Client]
Factory = Callable[..., SimulatorServer]
MIXED = {"error": 0.2, "drop": 0.15, "rate_limit": 0.15}


def outcome(send: Callable[[], httpx.Response]) -> Any:
    """What the client saw: an exception name, a status, or (200, code) for a web API answer."""
    try:
        resp = send()
    except httpx.HTTPError as exc:
        return type(exc).__name__
    if resp.status_code == 200 and "code" in resp.json():
        return resp.status_code, resp.json()["code"]
    return resp.status_code


def run_sequence(
    server: SimulatorServer, connect: Connect, n: int = 40
) -> tuple[list[str | None], list[Any]]:
    """Alternate Open API and web API requests, one at a time; the fault log and what the client saw."""
    client = connect(server)
    seen = []
    for i in range(n):
        if i % 2:
            seen.append(outcome(lambda: client.post("/web_api/v1/point", data={"api_token": WEB_TOKEN})))
        else:
            seen.append(outcome(lambda: client.get("/api/v1/credits", headers=bearer())))
    return [r.fault for r in server.state.requests], seen


def test_same_seed_same_faults_other_seed_other_faults(sim_factory: Factory, connect: Connect) -> None:
    first = run_sequence(sim_factory(faults=Faults(**MIXED, seed=7)), connect)
    again = run_sequence(sim_factory(faults=Faults(**MIXED, seed=7)), connect)
    other = run_sequence(sim_factory(faults=Faults(**MIXED, seed=8)), connect)
    assert len(first[0]) == 40
    assert {"error", "drop", "rate_limit", None} <= set(first[0])
    assert first == again
    assert first[0] != other[0]


def test_no_faults_by_default(sim: SimulatorServer, connect: Connect) -> None:
    faults, seen = run_sequence(sim, connect, 10)
    assert faults == [None] * 10
    assert seen == [200 if i % 2 == 0 else (200, 200) for i in range(10)]
    assert sim.state.faults_injected == {}


def test_error_faults_on_the_open_api(sim_factory: Factory, connect: Connect) -> None:
    server = sim_factory(faults=Faults(error=1.0, seed=1))
    api = Open(connect(server))
    statuses = set()
    for _ in range(20):
        resp = api.client.get("/api/v1/credits", headers=api.headers)
        code = {500: "internal_error", 503: "service_unavailable"}.get(resp.status_code)
        assert code, resp.status_code
        assert open_error(resp, resp.status_code, code)["type"] == "server"
        statuses.add(resp.status_code)
    assert statuses == {500, 503}
    assert api.submit().status_code in {500, 503}
    assert server.state.jobs == {}  # the request never reached the service: a retry is safe
    assert server.state.faults_injected["error"] == 21


def test_error_faults_on_the_web_api(sim_factory: Factory, connect: Connect) -> None:
    server = sim_factory(faults=Faults(error=1.0, seed=1))
    client = connect(server)
    kinds = set()
    for _ in range(20):
        resp = client.post("/web_api/v1/point", data={"api_token": WEB_TOKEN})
        if resp.status_code == 200:
            assert resp.json() == {"code": 10010, "msg": "Internal error"}
            kinds.add("10010")
        else:
            assert resp.status_code == 503
            kinds.add("503")
    assert kinds == {"10010", "503"}


def test_drop_faults_break_the_connection(sim_factory: Factory, connect: Connect) -> None:
    server = sim_factory(faults=Faults(drop=1.0))
    api = Open(connect(server))
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        api.client.get("/api/v1/credits", headers=api.headers)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        api.submit()
    assert len(server.state.jobs) == 1  # processed although the client never heard back
    assert [r.status for r in server.state.requests] == [-1, -1]
    web = Web(connect(server))
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        web.post("point")


def test_slow_faults_exceed_a_short_timeout(sim_factory: Factory, connect: Connect) -> None:
    server = sim_factory(faults=Faults(slow=1.0, slow_seconds=0.5))
    with pytest.raises(httpx.ReadTimeout):
        connect(server, timeout=0.2).get("/api/v1/credits", headers=bearer())
    started = time.monotonic()
    resp = connect(server, timeout=5).get("/api/v1/credits", headers=bearer())
    assert resp.status_code == 200 and time.monotonic() - started >= 0.45
    assert server.state.faults_injected["slow"] == 2


def short_reads(get: Callable[[], httpx.Response], size: int, times: int) -> set[str]:
    kinds = set()
    for _ in range(times):
        try:
            resp = get()
        except httpx.RemoteProtocolError:
            kinds.add("cut")
            continue
        assert resp.status_code == 200
        assert 0 < len(resp.content) < size
        assert "content-length" not in resp.headers  # only the expected size gives it away
        kinds.add("short")
    return kinds


def test_truncated_open_api_downloads(sim_factory: Factory, connect: Connect) -> None:
    server = sim_factory(faults=Faults(truncate=1.0, seed=3))
    api = Open(connect(server))
    job_id = api.create()
    # Wait on the state, not by polling: every request draws from the seeded RNG, so a fixed
    # number of requests keeps the truncation pattern reproducible.
    wait_for(lambda: server.state.jobs[job_id].status == "succeeded")
    assert server.state.jobs[job_id].result_info is not None
    size = server.state.jobs[job_id].result_info["size"]
    kinds = short_reads(lambda: httpx.get(api.result_location(job_id)), size, 8)
    assert kinds == {"cut", "short"}
    assert server.state.faults_injected["truncate"] == 8
    assert server.state.double_charges() == []


def test_truncated_web_downloads_charge_once(sim_factory: Factory, connect: Connect) -> None:
    server = sim_factory(faults=Faults(truncate=1.0, seed=3))
    web = Web(connect(server))
    trans_id = web.start(enlarge(2))
    wait_for(lambda: server.state.jobs[trans_id].status == "succeeded")
    size = int(web.progress(trans_id)["filesize"])
    kinds = short_reads(lambda: web.download(trans_id), size, 8)
    assert kinds == {"cut", "short"}
    assert [e.amount for e in server.state.charges(trans_id)] == [1.0]


def test_fail_job_fails_and_refunds(sim_factory: Factory, connect: Connect) -> None:
    server = sim_factory(faults=Faults(fail_job=0.5, seed=5))
    api = Open(connect(server))
    ids = [api.create() for _ in range(8)]
    bodies = {job_id: api.wait(job_id) for job_id in ids}
    failed = [j for j, b in bodies.items() if b["status"] == "failed"]
    succeeded = [j for j, b in bodies.items() if b["status"] == "succeeded"]
    assert failed and succeeded and len(failed) + len(succeeded) == 8
    assert server.state.faults_injected["fail_job"] == len(failed)
    for job_id in failed:
        assert bodies[job_id]["error"]["code"] == "processing_failed"
        assert bodies[job_id]["error"]["type"] == "processing"
        assert [(e.kind, e.amount) for e in server.state.ledger if e.job_id == job_id] == [
            ("reserve", 1.0),
            ("refund", 1.0),
        ]
    assert api.credits() == {"balance": 1000.0 - len(succeeded), "used": float(len(succeeded)), "frozen": 0.0}


def test_fail_job_on_the_web_api_is_fatal(sim_factory: Factory, connect: Connect) -> None:
    server = sim_factory(faults=Faults(fail_job=1.0))
    web = Web(connect(server))
    trans_id = web.start(enlarge(2))
    data = web.wait(trans_id)
    assert data["status"] == "fatal" and "filesize" not in data


def test_rate_limit_faults_only_on_the_open_api(sim_factory: Factory, connect: Connect) -> None:
    server = sim_factory(faults=Faults(rate_limit=1.0))
    client = connect(server)
    resp = client.get("/api/v1/credits", headers=bearer())
    open_error(resp, 429, "rate_limited")
    assert int(resp.headers["retry-after"]) >= 1 and "x-ratelimit-limit" in resp.headers
    assert client.post("/web_api/v1/point", data={"api_token": WEB_TOKEN}).json()["code"] == 200
    assert server.state.faults_injected["rate_limit"] == 1
