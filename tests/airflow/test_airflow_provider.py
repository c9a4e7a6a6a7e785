"""Provider metadata, the hook and its connection, against the simulator."""

from __future__ import annotations

import asyncio
import importlib
import json
import subprocess
import sys

import pytest

from tests.conftest import OPEN_KEY, WEB_TOKEN
from vance_provider.get_provider_info import get_provider_info


def test_provider_info_lists_importable_modules() -> None:
    info = get_provider_info()
    assert info["package-name"] == "vance-pipelines"
    modules = [
        m
        for kind in ("hooks", "operators", "sensors", "triggers")
        for entry in info[kind]
        for m in entry["python-modules"]
    ]
    assert len(modules) == 4
    for name in modules:
        importlib.import_module(name)
    for conn in info["connection-types"]:
        module, _, cls = conn["hook-class-name"].rpartition(".")
        hook = getattr(importlib.import_module(module), cls)
        assert hook.conn_type == conn["connection-type"] == "vanceai"
    for link in info["extra-links"]:
        module, _, cls = link.rpartition(".")
        assert getattr(importlib.import_module(module), cls)().name
    names = {i["integration-name"] for i in info["integrations"]}
    assert all(
        entry["integration-name"] in names
        for kind in ("hooks", "operators", "sensors", "triggers")
        for entry in info[kind]
    )


def test_provider_info_matches_schema() -> None:
    import jsonschema
    from airflow import providers_manager

    schema = json.loads(
        importlib.resources.files("airflow").joinpath("provider_info.schema.json").read_text()
    )
    jsonschema.validate(get_provider_info(), schema)
    assert providers_manager  # the module that reads it


def test_airflow_providers_list_shows_the_provider() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    # Airflow 3.0 prints its log lines on stdout too: the JSON is the last line.
    listing = next(line for line in reversed(out.stdout.splitlines()) if line.startswith("[{"))
    providers = {p["package_name"]: p for p in json.loads(listing)}
    assert providers["vance-pipelines"]["version"] == "0.1.0"
    hooks = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "hooks", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "vance_provider.hooks.vanceai.VanceAIHook" in hooks.stdout


def test_connection_ui_metadata() -> None:
    from vance_provider.hooks.vanceai import VanceAIHook

    behaviour = VanceAIHook.get_ui_field_behaviour()
    assert set(behaviour["hidden_fields"]) == {"schema", "port", "login"}
    assert behaviour["relabeling"] == {"password": "API Token", "host": "Base URL (optional)"}
    from vance_provider.airflow_compat import AIRFLOW_V
    from vance_provider.get_provider_info import API_CHOICES, CONN_FIELDS, get_provider_info
    from vance_provider.hooks.vanceai import conn_fields_to_widgets

    [conn_type] = get_provider_info()["connection-types"]
    assert conn_type["conn-fields"]["api"]["schema"]["enum"] == list(API_CHOICES)
    assert "visioncraft" in API_CHOICES
    # Airflow >= 3.2 reads conn-fields; the hook's WTForms method exists only where it is read.
    assert ("get_connection_form_widgets" in VanceAIHook.__dict__) == (AIRFLOW_V < (3, 2))
    pytest.importorskip("wtforms")
    widgets = conn_fields_to_widgets(CONN_FIELDS)
    assert set(widgets) == {"api", "timeout", "max_retries", "max_concurrency"}
    assert widgets["api"].kwargs["choices"] == list(API_CHOICES)  # one source for the choices


@pytest.mark.parametrize("api", ["open", "web"])
def test_hook_client_against_simulator(api, sim, vance_conn) -> None:
    from vance_provider.hooks.vanceai import VanceAIHook

    token = vance_conn(api, extra={"max_concurrency": 3})
    hook = VanceAIHook()
    assert hook.settings["api"] == api and hook.settings["max_concurrency"] == 3
    assert hook.client.api == api
    assert hook.client.base_url.startswith(sim.base_url)
    assert hook.client.balance().available > 0
    assert token not in repr(hook) and token not in repr(hook.client)
    assert hook.get_conn() is hook.client
    hook.close()


def test_hook_async_client(sim, vance_conn) -> None:
    from vance_provider.hooks.vanceai import VanceAIHook

    vance_conn("open")

    async def go() -> float:
        async with VanceAIHook().async_client() as client:
            return (await client.balance()).available

    assert asyncio.run(go()) == sim.state.balance()


@pytest.mark.parametrize("api", ["open", "web"])
def test_test_connection_good_and_bad_token(api, sim, vance_conn) -> None:
    from vance_provider.hooks.vanceai import VanceAIHook

    vance_conn(api)
    ok, message = VanceAIHook().test_connection()
    assert ok, message
    assert "credits available" in message
    bad = ("sk_live_" if api == "open" else "") + "wrong0123456789abcdef0123456789"
    vance_conn(api, token=bad)
    ok, message = VanceAIHook().test_connection()
    assert not ok
    assert "token" in message.lower()
    assert bad not in message and OPEN_KEY not in message and WEB_TOKEN not in message


def test_test_connection_without_token_or_with_bad_extras(vance_conn) -> None:
    from vance_provider.hooks.vanceai import VanceAIHook

    vance_conn("open", token="")
    ok, message = VanceAIHook().test_connection()
    assert not ok and "no API token" in message
    vance_conn("open", extra={"api": "cloud"})
    ok, message = VanceAIHook().test_connection()
    assert not ok and "'api'" in message


def test_test_connection_unreachable(vance_conn, sim_factory) -> None:
    from vance_provider.hooks.vanceai import VanceAIHook

    server = sim_factory()
    server.stop()
    token = vance_conn("open", server=server, extra={"max_retries": 0, "timeout": 2})
    ok, message = VanceAIHook().test_connection()
    assert not ok and token not in message


def test_storage_options_from_connection(monkeypatch) -> None:
    from vance_provider.hooks.vanceai import storage_options_from_connection

    assert storage_options_from_connection(None) is None
    monkeypatch.setenv(
        "AIRFLOW_CONN_S3_TEST",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "AKIA",
                "password": "secret",
                "extra": {"endpoint_url": "http://127.0.0.1:9", "region_name": "eu-west-1"},
            }
        ),
    )
    assert storage_options_from_connection("s3_test") == {
        "key": "AKIA",
        "secret": "secret",
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9", "region_name": "eu-west-1"},
    }


def test_storage_connection_refuses_what_s3fs_cannot_use(monkeypatch: pytest.MonkeyPatch) -> None:
    from vance_provider.core.errors import ConfigurationError
    from vance_provider.hooks.vanceai import storage_options_from_connection

    monkeypatch.setenv(
        "AIRFLOW_CONN_S3_ROLE",
        json.dumps({"conn_type": "aws", "extra": {"role_arn": "arn:aws:iam::1:role/r"}}),
    )
    with pytest.raises(ConfigurationError, match="role_arn"):
        storage_options_from_connection("s3_role")
    monkeypatch.setenv(
        "AIRFLOW_CONN_S3_PROFILE", json.dumps({"conn_type": "aws", "extra": {"profile_name": "prod"}})
    )
    assert storage_options_from_connection("s3_profile") == {"profile": "prod"}
