"""Provider metadata, the hook and its connection, against the simulator."""

from __future__ import annotations

import asyncio
import importlib
import json
from typing import Any

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
    assert len(modules) == 7
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
    # The module that reads it found the entry point and kept every field (it adds its defaults).
    info = get_provider_info()
    provider = providers_manager.ProvidersManager().providers["vance-pipelines"]
    assert {k: provider.data.get(k) for k in info} == info and provider.version == "0.1.0"


def test_airflow_providers_list_shows_the_provider(capsys: pytest.CaptureFixture[str]) -> None:
    """``airflow providers list`` and ``airflow providers hooks``: the CLI's own parser and commands,
    in-process (``python -m airflow`` does just this, after ~10 s of starting a new interpreter)."""
    from airflow.cli import cli_parser

    def airflow_cli(*argv: str) -> Any:
        args = cli_parser.get_parser().parse_args(list(argv))
        capsys.readouterr()
        args.func(args)
        out = capsys.readouterr().out
        # Airflow 3.0 prints its log lines on stdout too: the JSON is the last line.
        return json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("[{")))

    providers = {p["package_name"]: p for p in airflow_cli("providers", "list", "-o", "json")}
    assert providers["vance-pipelines"]["version"] == "0.1.0"
    hooks = {h["connection_type"]: h for h in airflow_cli("providers", "hooks", "-o", "json")}
    assert hooks["vanceai"]["class"] == "vance_provider.hooks.vanceai.VanceAIHook"
    assert hooks["vanceai"]["package_name"] == "vance-pipelines"


def test_connection_ui_metadata() -> None:
    from vance_provider.hooks.vanceai import VanceAIHook

    behaviour = VanceAIHook.get_ui_field_behaviour()
    assert set(behaviour["hidden_fields"]) == {"schema", "port", "login"}
    assert behaviour["relabeling"] == {"password": "API Token", "host": "Base URL (optional)"}
    from vance_provider.airflow_compat import AIRFLOW_V
    from vance_provider.get_provider_info import API_CHOICES, CONN_FIELDS, get_provider_info
    from vance_provider.hooks.vanceai import conn_fields_to_widgets

    [conn_type] = get_provider_info()["connection-types"]
    from vance_provider.get_provider_info import FORM_API_VALUES

    # The form's values name every API (empty: auto), each long enough for Airflow's masker.
    assert conn_type["conn-fields"]["api"]["schema"]["enum"] == list(FORM_API_VALUES)
    assert {*FORM_API_VALUES.values(), "auto"} == set(API_CHOICES)
    assert "visioncraft" in API_CHOICES
    # Airflow >= 3.2 reads conn-fields; the hook's WTForms method exists only where it is read.
    assert ("get_connection_form_widgets" in VanceAIHook.__dict__) == (AIRFLOW_V < (3, 2))
    pytest.importorskip("wtforms")
    widgets = conn_fields_to_widgets(CONN_FIELDS)
    assert set(widgets) == {
        "api",
        "timeout",
        "max_retries",
        "max_concurrency",
        "account_store",
        "account_max_jobs",
    }
    from wtforms import BooleanField, IntegerField, PasswordField, StringField

    # Airflow 3.0/3.1 register a hook only if every field is one of these (else no VanceAI type at all).
    assert {w.field_class for w in widgets.values()} <= {
        BooleanField,
        IntegerField,
        PasswordField,
        StringField,
    }
    any_of = widgets["api"].kwargs["validators"][-1]
    assert any_of.values == [v for v in FORM_API_VALUES if v]  # one source for the choices


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
