"""Fixtures of the Dagster face: a real Dagster instance, the resource, image folders, an S3 server."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from tests.conftest import OPEN_KEY, WEB_TOKEN, image_bytes
from vance_provider.sim import SimulatorServer

TOKENS = {"web": WEB_TOKEN, "open": OPEN_KEY}


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    """A persistent Dagster instance in a temporary DAGSTER_HOME (sensors need one)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as inst:
        yield inst


@pytest.fixture(params=["web", "open"])
def api(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def token(api: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The token of ``api``, exported as VANCE_API_TOKEN (the resource reads it through EnvVar)."""
    monkeypatch.setenv("VANCE_API_TOKEN", TOKENS[api])
    return TOKENS[api]


@pytest.fixture
def use_token(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    def use(api: str) -> str:
        monkeypatch.setenv("VANCE_API_TOKEN", TOKENS[api])
        return TOKENS[api]

    return use


def vance_resource(sim: SimulatorServer, **kwargs: Any) -> Any:
    from dagster_vance import VanceAIResource

    return VanceAIResource(api_token=dg.EnvVar("VANCE_API_TOKEN"), base_url=sim.base_url, **kwargs)


@pytest.fixture
def images(tmp_path: Path) -> Callable[..., Path]:
    """``images("in", 3)``: a folder of small real JPEGs (p0.jpg, p1.jpg, ...)."""

    def make(folder: str = "in", n: int = 3, width: int = 64, height: int = 48, start: int = 0) -> Path:
        path = tmp_path / folder
        path.mkdir(parents=True, exist_ok=True)
        for i in range(start, start + n):
            (path / f"p{i}.jpg").write_bytes(image_bytes(width + 8 * i, height))
        return path

    return make


S3_KEY, S3_SECRET = "AKIAVANCETEST", "vance-test-s3-secret-4f2a"


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A fresh bucket: ``{"bucket": name, "options": full storage_options, "fs": s3fs filesystem,
    "public": the options without secrets (for the definitions), "storage": a VanceStorageResource
    whose keys come from EnvVar}``. Bind ``storage`` under ``"vance_storage"``."""
    import s3fs

    from dagster_vance import VanceStorageResource

    monkeypatch.setenv("VANCE_TEST_S3_KEY", S3_KEY)
    monkeypatch.setenv("VANCE_TEST_S3_SECRET", S3_SECRET)
    public = {"client_kwargs": {"endpoint_url": s3_server}}
    options = {**public, "key": S3_KEY, "secret": S3_SECRET}
    fs = s3fs.S3FileSystem(**options)
    bucket = f"vance-{uuid.uuid4().hex[:10]}"
    fs.mkdir(bucket)
    storage = VanceStorageResource(
        aws_access_key_id=dg.EnvVar("VANCE_TEST_S3_KEY"),
        aws_secret_access_key=dg.EnvVar("VANCE_TEST_S3_SECRET"),
    )
    return {"bucket": bucket, "options": options, "fs": fs, "public": public, "storage": storage}


def put_images(fs: Any, prefix: str, n: int, start: int = 0, width: int = 64, height: int = 48) -> list[str]:
    urls = []
    for i in range(start, start + n):
        url = f"{prefix.rstrip('/')}/p{i}.jpg"
        fs.pipe(url, image_bytes(width + 8 * i, height))
        urls.append(url)
    fs.invalidate_cache()
    return urls


def materialization(result: dg.ExecuteInProcessResult, key: str) -> dict[str, Any]:
    """The metadata values of ``key``'s last materialization in ``result``."""
    events = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(key)]
    assert events, f"no materialization of {key}"
    return {k: v.value for k, v in events[-1].materialization.metadata.items()}


def checks(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    return {c.check_name: c for c in result.get_asset_check_evaluations()}


def scan_for(instance: dg.DagsterInstance, secret: str, root: Path | str | None = None) -> list[str]:
    """Where ``secret`` shows up in the instance: event logs, runs, job snapshots, compute logs."""
    from dagster._serdes import serialize_value

    found = []
    for record in instance.get_runs():
        if secret in serialize_value(record):
            found.append(f"run {record.run_id}")
        for event in instance.all_logs(record.run_id):
            if secret in serialize_value(event):
                found.append(f"event {event.dagster_event_type} of {record.run_id}")
        if record.job_snapshot_id:
            snap = instance.get_job_snapshot(record.job_snapshot_id)
            if secret in serialize_value(snap):
                found.append(f"job snapshot of {record.run_id}")
    if root is not None:
        for path in Path(root).rglob("*"):
            if path.is_file() and secret.encode() in path.read_bytes():
                found.append(str(path))
    return found
