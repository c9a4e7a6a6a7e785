"""Triggers: serialize() round trip, polling to one event, timeouts and failures, no token anywhere."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.airflow.helpers import rebuild_trigger, submit_jobs
from tests.conftest import fast_config
from vance_provider.sim import Faults, SimulatorServer


async def _events(trigger) -> list:
    return [event async for event in trigger.run()]


@pytest.mark.parametrize("name", ["VanceAIJobTrigger", "VanceAIBatchTrigger"])
@pytest.mark.parametrize("api", ["open", "web"])
def test_serialize_round_trip_and_run(name, api, sim, vance_conn, make_image) -> None:
    from vance_provider.triggers import vanceai

    cls = getattr(vanceai, name)
    ids = submit_jobs(vance_conn, api, make_image)
    token = vance_conn(api)
    extra = (
        {"manifest": "file:///tmp/x/_vance_manifest.json", "carry": {"spent": 1.0}}
        if cls is vanceai.VanceAIBatchTrigger
        else {}
    )
    trigger = cls(
        "vanceai_default", ids, poll_interval=0.05, max_poll_interval=0.2, end_time=time.time() + 60, **extra
    )
    rebuilt, kwargs = rebuild_trigger(trigger)
    assert token not in json.dumps(kwargs)
    assert kwargs["job_ids"] == ids and kwargs["conn_id"] == "vanceai_default"
    assert rebuilt.serialize() == trigger.serialize()
    events = asyncio.run(_events(rebuilt))
    assert len(events) == 1
    payload = events[0].payload
    assert payload["status"] == "success", payload
    assert payload["succeeded"] == 2 and payload["failed"] == 0
    if cls is vanceai.VanceAIBatchTrigger:
        assert payload["carry"] == {"spent": 1.0} and payload["manifest"].endswith("_vance_manifest.json")
    assert token not in json.dumps(payload)


def test_job_trigger_reports_failure(vance_conn, make_image) -> None:
    with SimulatorServer(fast_config(faults=Faults(fail_job=1.0))) as server:
        vance_conn("open", server=server)
        from vance_provider.hooks.vanceai import VanceAIHook
        from vance_provider.triggers.vanceai import VanceAIBatchTrigger, VanceAIJobTrigger

        job_id = VanceAIHook().client.submit(str(make_image()), "upscale", {"scale": 2}).id
        [event] = asyncio.run(_events(VanceAIJobTrigger("vanceai_default", job_id, poll_interval=0.05)))
        assert event.payload["status"] == "error"
        assert job_id in event.payload["message"]
        [event] = asyncio.run(_events(VanceAIBatchTrigger("vanceai_default", [job_id], poll_interval=0.05)))
        assert event.payload["status"] == "success" and event.payload["failed"] == 1


def test_trigger_timeout(sim_factory, vance_conn, make_image) -> None:
    server = sim_factory(time_per_job=30.0)
    vance_conn("open", server=server)
    from vance_provider.hooks.vanceai import VanceAIHook
    from vance_provider.triggers.vanceai import VanceAIJobTrigger

    job_id = VanceAIHook().client.submit(str(make_image()), "upscale", {"scale": 2}).id
    started = time.monotonic()
    [event] = asyncio.run(
        _events(VanceAIJobTrigger("vanceai_default", [job_id], poll_interval=0.1, end_time=time.time() + 0.5))
    )
    assert time.monotonic() - started < 5
    assert event.payload["status"] == "timeout" and event.payload["pending"] == [job_id]


def test_trigger_error_event_has_no_token(vance_conn, sim) -> None:
    from vance_provider.triggers.vanceai import VanceAIJobTrigger

    token = vance_conn("web", token="bad0123456789abcdef0123456789abcd")
    [event] = asyncio.run(_events(VanceAIJobTrigger("vanceai_default", ["123"], poll_interval=0.05)))
    assert event.payload["status"] == "error"
    assert token not in json.dumps(event.payload)


def test_trigger_missing_connection_is_an_error_event(monkeypatch) -> None:
    from vance_provider.triggers.vanceai import VanceAIJobTrigger

    [event] = asyncio.run(_events(VanceAIJobTrigger("no_such_conn", ["1"], poll_interval=0.05)))
    assert event.payload["status"] == "error"
