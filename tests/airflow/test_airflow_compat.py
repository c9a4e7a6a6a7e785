"""The supported Airflow range and the ecosystem's own helpers.

* an Airflow older than 3.0.6 is refused by name (when Airflow loads the provider info, and when a
  hook or operator module is imported), not later with an ``ImportError``;
* triggers never read the connection on the event loop (Airflow 3.0's triggerer raises there);
* ``ObjectStoragePath`` works as a source and a destination, with its connection's credentials.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from tests.airflow.helpers import NEEDS_AMAZON
from tests.airflow.test_airflow_batch import _context, _drive
from tests.airflow.test_airflow_storage_conn import LOGIN, SECRET, _aws_conn, _put_inputs

pytestmark = NEEDS_AMAZON


@pytest.mark.parametrize("version", ["2.10.5", "2.11.0", "3.0.5", "3.0.0rc1"])
def test_an_unsupported_airflow_is_refused_by_name(version: str, monkeypatch) -> None:
    from vance_provider import supported_airflow
    from vance_provider.get_provider_info import get_provider_info

    with pytest.raises(RuntimeError, match=rf"needs Apache Airflow 3\.0\.6 or later.*Airflow {version}\."):
        supported_airflow.require_supported_airflow(version)
    monkeypatch.setattr(supported_airflow, "version", lambda name: version)
    with pytest.raises(RuntimeError, match=r"needs Apache Airflow 3\.0\.6"):
        get_provider_info()


@pytest.mark.parametrize("version", ["3.0.6", "3.1.0rc1", "3.3.2", "3.10.0"])
def test_a_supported_airflow_is_accepted(version: str) -> None:
    from vance_provider.supported_airflow import require_supported_airflow

    require_supported_airflow(version)


def test_the_package_declares_the_provider_classifiers() -> None:
    from importlib.metadata import metadata

    classifiers = metadata("vance-pipelines").get_all("Classifier") or []
    assert "Framework :: Apache Airflow :: Provider" in classifiers
    assert "Programming Language :: Python :: 3.11" in classifiers


def test_the_trigger_reads_its_connection_off_the_event_loop(sim, vance_conn, monkeypatch) -> None:
    """Airflow 3.0's triggerer answers ``get_connection`` and ``extra_dejson`` (which masks secrets)
    through synchronous calls that raise on the event loop's thread; here both raise the same way."""
    from airflow.sdk import Connection

    from vance_provider.hooks.vanceai import VanceAIHook

    vance_conn("open")
    loop_threads: set[int] = set()
    original_get = VanceAIHook.get_connection
    original_extra = Connection.extra_dejson

    def on_loop() -> bool:
        return threading.get_ident() in loop_threads

    def get_connection(conn_id: str) -> Any:
        if on_loop():
            raise RuntimeError("You cannot use AsyncToSync in the same thread as an async event loop")
        return original_get(conn_id)

    def extra_dejson(self: Any) -> Any:
        if on_loop():
            raise RuntimeError("You cannot use AsyncToSync in the same thread as an async event loop")
        return original_extra.fget(self)  # type: ignore[attr-defined]

    monkeypatch.setattr(VanceAIHook, "get_connection", staticmethod(get_connection))
    monkeypatch.setattr(Connection, "extra_dejson", property(extra_dejson))

    async def balance() -> float:
        loop_threads.add(threading.get_ident())
        async with VanceAIHook("vanceai_default", caller="test").async_client() as client:
            return (await client.balance()).available

    assert asyncio.run(balance()) > 0


@pytest.mark.parametrize(
    ("given", "url", "conn_id"),
    [
        ("s3://aws_default@bucket/in/", "s3://bucket/in", "aws_default"),
        ("s3://bucket/in", "s3://bucket/in", None),
        ("file:///tmp/in", "/tmp/in", None),
        ("/tmp/in", "/tmp/in", None),
    ],
)
def test_object_storage_path_becomes_its_url_and_connection(
    given: str, url: str, conn_id: str | None
) -> None:
    from airflow.sdk import ObjectStoragePath

    from vance_provider.object_storage import adopt_object_storage

    kwargs: dict[str, Any] = {}
    (converted,) = adopt_object_storage(kwargs, ObjectStoragePath(given))
    assert converted == url
    assert kwargs.get("storage_conn_id") == conn_id


def test_object_storage_paths_with_two_connections_are_refused() -> None:
    from airflow.sdk import ObjectStoragePath

    from vance_provider.object_storage import adopt_object_storage

    with pytest.raises(ValueError, match="different connections"):
        adopt_object_storage({}, ObjectStoragePath("s3://a@b/in/"), ObjectStoragePath("s3://c@b/out/"))
    with pytest.raises(ValueError, match="differs from the ObjectStoragePath's connection"):
        adopt_object_storage({"storage_conn_id": "other"}, ObjectStoragePath("s3://a@b/in/"))


def test_object_storage_path_source_and_destination_on_s3(
    sim, vance_conn, make_image, s3_server, bucket, s3fs_plain, monkeypatch
) -> None:
    """A deferrable batch given ``ObjectStoragePath("s3://s3_keys@bucket/in/")``: it reads and writes
    with that connection's keys, and the trigger finds them again by the connection id."""
    from airflow.sdk import ObjectStoragePath

    from vance_provider.hooks import storage
    from vance_provider.operators.vanceai import VanceAIEnhanceOperator

    storage._built.clear()
    token = vance_conn("open")
    _aws_conn(monkeypatch, "s3_keys", s3_server, login=LOGIN, password=SECRET)
    _put_inputs(s3fs_plain, make_image, bucket, 2)

    op = VanceAIEnhanceOperator(
        task_id="enhance",
        source=ObjectStoragePath(f"s3://s3_keys@{bucket}/in/"),
        destination=ObjectStoragePath(f"s3://s3_keys@{bucket}/out/"),
        tool="upscale",
        config={"scale": 2},
        deferrable=True,
        poll_interval=0.05,
        max_poll_interval=0.2,
    )
    assert (op.source, op.destination, op.storage_conn_id) == (
        f"s3://{bucket}/in",
        f"s3://{bucket}/out",
        "s3_keys",
    )
    context = _context()
    summary, _ = _drive(op, context)
    storage._built.clear()
    assert summary["done"] == 2 and summary["credits_spent"] == 2.0
    s3fs_plain.invalidate_cache()
    assert len([p for p in s3fs_plain.glob(f"{bucket}/out/*.jpg") if "/_vance_" not in p]) == 2
    assert len(sim.state.charges()) == 2 and not sim.state.double_charges()
    seen = json.dumps(summary) + repr(context["ti"].pushed)
    assert SECRET not in seen and token not in seen
