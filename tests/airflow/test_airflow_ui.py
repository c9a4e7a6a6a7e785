"""What users see in the Airflow UI: the trigger form's params reach the tasks, the connection form
is complete, the extra link leads to the outputs and the return value says where the preview is."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.airflow.helpers import EXAMPLE_DAGS, dagbag_class, load_dag, rendered_fields, ti_states, xcom


def _uses(task, name: str) -> bool:
    """Whether ``task`` reads the param ``name``: in a templated field, or in a ``@task``'s body."""
    pattern = re.compile(rf"params\W{{1,4}}{name}\b")  # params.x, params["x"], context["params"]["x"]
    for field in task.template_fields:
        if pattern.search(repr(getattr(task, field, None))):
            return True
    for attr in ("partial_kwargs", "expand_input"):  # mapped operators keep their arguments here
        if pattern.search(repr(getattr(task, attr, None))):
            return True
    python_callable = getattr(task, "python_callable", None)
    return python_callable is not None and bool(pattern.search(inspect.getsource(python_callable)))


def test_every_param_of_every_example_dag_reaches_a_task() -> None:
    bag = dagbag_class()(dag_folder=str(EXAMPLE_DAGS))
    assert bag.import_errors == {}
    unused = {
        (dag_id, name)
        for dag_id, dag in bag.dags.items()
        for name in dag.params
        if not any(_uses(task, name) for task in dag.tasks)
    }
    assert unused == set()


def _secrets_masker() -> type:
    """Airflow's secrets masker class (it moved in Airflow 3.1)."""
    try:
        from airflow.sdk._shared.secrets_masker.secrets_masker import SecretsMasker
    except ImportError:  # Airflow 3.0
        from airflow.sdk.execution_time.secrets_masker import SecretsMasker  # type: ignore[no-redef]
    return SecretsMasker


@pytest.mark.slow
def test_credit_budget_typed_at_trigger_time_bounds_the_run(
    sim, vance_conn, make_image, tmp_path, caplog
) -> None:
    """The trigger form's ``credit_budget`` is what the run may spend: 2 credits cannot pay for
    3 upscales (the batch fails before paying anything); the default 500 can. A successful run
    with a connection as the form saves it logs no warning about a secret too short to mask."""
    SecretsMasker = _secrets_masker()
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(SecretsMasker, "_has_warned_short_secret", False)  # it warns once a process
    vance_conn("open", extra={"api": "open_api"})  # as the connection form stores it
    for i in range(3):
        make_image(f"in/photo_{i}.jpg", 32, 24)
    conf = {"source": str(tmp_path / "in"), "destination": str(tmp_path / "out")}
    dag = load_dag("vanceai_credit_checked_batch")
    dag.get_task("enhance").poll_interval = 0.1

    tight = dag.test(run_conf={**conf, "credit_budget": 2})
    assert ti_states(tight) == {"check_credits": "success", "enhance": "failed"}
    assert sim.state.charges() == []
    [enhance_fields] = [f for f in rendered_fields(tight) if "credit_budget" in f]
    assert enhance_fields["credit_budget"] == "2"

    dag = load_dag("vanceai_credit_checked_batch")  # dag.test() renders into the task objects
    dag.get_task("enhance").poll_interval = 0.1
    dr = dag.test(run_conf=conf)  # the form's default
    assert ti_states(dr) == {"check_credits": "success", "enhance": "success"}
    assert xcom(dr, "enhance")["credits_spent"] == 3.0
    assert len(sim.state.charges()) == 3
    assert not [r for r in caplog.records if "too short" in r.getMessage()]
    monkeypatch.undo()


def test_a_budget_that_is_not_a_number_fails_by_name() -> None:
    from vance_provider.airflow_compat import AirflowFailException
    from vance_provider.operators.vanceai import credit_budget

    assert credit_budget("50") == 50.0 and credit_budget(7) == 7.0
    assert credit_budget("") is None and credit_budget(None) is None and credit_budget("None") is None
    with pytest.raises(AirflowFailException, match="credit_budget must be a number, got 'lots'"):
        credit_budget("lots")
    with pytest.raises(AirflowFailException, match="must not be negative"):
        credit_budget("-1")


def test_the_example_dags_say_what_each_param_is() -> None:
    for path in sorted(Path(EXAMPLE_DAGS).glob("*.py")):
        dag = load_dag(path.stem)
        for name, param in dag.params.items():
            assert param.description, f"{path.stem}: param {name!r} has no description"


def test_connection_settings_register_no_short_value_for_masking(monkeypatch) -> None:
    from airflow.sdk import Connection

    from vance_provider.hooks.vanceai import connection_settings

    SecretsMasker = _secrets_masker()
    added: list[object] = []
    monkeypatch.setattr(SecretsMasker, "add_mask", lambda self, secret, name=None: added.append(secret))
    conn = Connection(
        conn_id="v", conn_type="vanceai", password="x" * 32, extra='{"api": "web", "timeout": 9}'
    )
    settings = connection_settings(conn)
    assert (settings["api"], settings["timeout"]) == ("web", 9.0)
    assert added == []  # the hook hands no extra to the masker (Airflow masks the password)
    for stored, api in {"open_api": "open", "web_api": "web", "open": "open", "": "auto"}.items():
        conn = Connection(conn_id="v", conn_type="vanceai", extra=json.dumps({"api": stored}))
        assert connection_settings(conn)["api"] == api
    broken = Connection(conn_id="v", conn_type="vanceai", extra="{api: web")
    from vance_provider.core.api.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="'v': its extra is not valid JSON"):
        connection_settings(broken)


# --- the connection form ------------------------------------------------------------------------
def _documented_extras() -> list[str]:
    """The connection extras docs/configuration.md lists (its "extras:" line)."""
    text = (Path(EXAMPLE_DAGS).parent / "docs" / "configuration.md").read_text()
    [line] = [ln for ln in text.splitlines() if ln.lstrip("- ").startswith("extras:")]
    return re.findall(r"`([a-z_]+)`", line.split("(")[0] + line.split(")")[-1])


def test_connection_form_as_the_ui_gets_it() -> None:
    """What the Airflow UI's API serves for the VanceAI form: every documented extra is a field
    with help text, and the standard fields carry their help in the placeholder (the only text
    Airflow's form shows for them). Airflow 3.0 and 3.1 build the extra fields from the hook's
    WTForms widgets, which needs wtforms (the FAB provider brings it); without it their form has
    the Extra JSON box only."""
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    from vance_provider.airflow_compat import AIRFLOW_V

    if AIRFLOW_V < (3, 2):
        pytest.importorskip("wtforms", reason="Airflow < 3.2 builds the form's extra fields with wtforms")

    HookMetaService.hook_meta_data.cache_clear()
    [meta] = [m for m in HookMetaService.hook_meta_data() if m.connection_type == "vanceai"]
    extras = meta.extra_fields or {}
    documented = _documented_extras()
    assert documented == ["api", "timeout", "max_retries", "max_concurrency"]
    assert set(documented) <= set(extras)
    for name in documented:
        field = extras[name]
        assert field["schema"]["title"], name
        assert len(field["description"] or "") > 40, f"{name}: no help text"
    from vance_provider.defaults import DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_RETRIES

    assert extras["max_retries"]["value"] == DEFAULT_MAX_RETRIES
    assert extras["max_concurrency"]["value"] == DEFAULT_MAX_CONCURRENCY
    std = meta.standard_fields
    assert std.password.title == "API Token" and "sk_live_" in std.password.placeholder
    assert std.host.title == "Base URL (optional)" and "simulator" in std.host.placeholder
    assert std.login.hidden and std.port.hidden and std.url_schema.hidden


def test_form_fields_on_airflow_before_3_2_say_the_same() -> None:
    """Airflow 3.0/3.1 build the form from the hook's WTForms widgets: the same help texts."""
    pytest.importorskip("wtforms")
    from vance_provider.get_provider_info import CONN_FIELDS
    from vance_provider.hooks.vanceai import VanceAIHook, conn_fields_to_widgets

    widgets = conn_fields_to_widgets(CONN_FIELDS)
    for name, spec in CONN_FIELDS.items():
        assert widgets[name].kwargs["description"] == spec["description"]
    placeholders = VanceAIHook.get_ui_field_behaviour()["placeholders"]
    assert {"host", "password", "timeout", "max_retries", "max_concurrency"} <= set(placeholders)


# --- the extra link and the preview ------------------------------------------------------------
def test_outputs_link_for_every_kind_of_destination(tmp_path) -> None:
    from vance_provider.operators.vanceai import outputs_url

    assert outputs_url("s3://bucket/out/x2/") == (
        "https://s3.console.aws.amazon.com/s3/buckets/bucket?prefix=out/x2/"
    )
    assert outputs_url("gs://bucket/out/").startswith("https://console.cloud.google.com/storage/browser/")
    assert outputs_url(str(tmp_path / "out")) == (tmp_path / "out").as_uri()
    assert outputs_url("relative/out/") == (Path.cwd() / "relative" / "out").as_uri() + "/"
    assert outputs_url("file:///data/out") == "file:///data/out"
    assert outputs_url("memory://bucket/out") == "memory://bucket/out"
    assert outputs_url("https://user:pw@files.example/out?sig=abc") == "https://user:***@files.example/out"
    assert outputs_url("") == ""


@pytest.mark.parametrize(
    ("base_url", "map_index", "page"),
    [
        ("", -1, "/dags/d%20x/runs/manual__2026-01-01T00%3A00%3A00%2B00%3A00/tasks/t/xcom"),
        (
            "https://airflow.example/team-a/",
            -1,
            "/team-a/dags/d%20x/runs/manual__2026-01-01T00%3A00%3A00%2B00%3A00/tasks/t/xcom",
        ),
        ("", 3, "/dags/d%20x/runs/manual__2026-01-01T00%3A00%3A00%2B00%3A00/tasks/t/mapped/3/xcom"),
    ],
)
def test_a_local_folders_link_is_the_tasks_xcom_page(base_url, map_index, page, monkeypatch) -> None:
    from types import SimpleNamespace

    from vance_provider.operators.links import VanceAIDestinationLink

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", base_url)
    key = SimpleNamespace(
        dag_id="d x", task_id="t", run_id="manual__2026-01-01T00:00:00+00:00", map_index=map_index
    )
    operator = SimpleNamespace(destination="/data/out/")
    assert VanceAIDestinationLink().get_link(operator, ti_key=key) == page
    operator = SimpleNamespace(destination="s3://bucket/out/")
    assert (
        VanceAIDestinationLink()
        .get_link(operator, ti_key=key)
        .startswith("https://s3.console.aws.amazon.com/")
    )


@pytest.mark.slow
@pytest.mark.parametrize("preview", [True, False])
def test_local_batch_links_its_outputs_and_returns_its_preview(
    preview, sim, vance_conn, make_image, tmp_path, monkeypatch, caplog
) -> None:
    from PIL import Image

    from tests.airflow.helpers import all_xcoms

    vance_conn("open", extra={"api": "open_api"})
    if not preview:
        monkeypatch.setenv("AIRFLOW__VANCEAI__PREVIEW", "False")
    for i in range(3):
        make_image(f"in/photo_{i}.jpg", 64, 48)
    dst = tmp_path / "out"
    dag = load_dag("vanceai_credit_checked_batch")
    dag.get_task("enhance").poll_interval = 0.1
    dr = dag.test(run_conf={"source": str(tmp_path / "in"), "destination": str(dst)})
    assert ti_states(dr) == {"check_credits": "success", "enhance": "success"}
    assert xcom(dr, "enhance", key="vanceai_outputs_url") == dst.as_uri()
    # Airflow's UI shows only http(s), mailto and same-origin links: a local folder's link is the
    # task's XCom page, where the return value lists the outputs and the preview.
    page = f"/dags/vanceai_credit_checked_batch/runs/{quote(dr.run_id, safe='')}/tasks/enhance/xcom"
    assert xcom(dr, "enhance", key="_link_VanceAIDestinationLink") == page
    summary = xcom(dr, "enhance")
    sheet = dst / "_vance_preview" / "_vance_contact_sheet.jpg"
    if not preview:
        assert summary["preview"] is None and not sheet.exists()
    else:
        assert summary["preview"] == str(sheet)
        with Image.open(sheet) as img:
            assert img.format == "JPEG" and max(img.size) <= 1200
        assert sheet.stat().st_size < 200_000
    assert not [r for r in caplog.records if "XCom not found" in r.getMessage()]
    assert {k for _, k, _ in all_xcoms(dr)} >= {"vanceai_outputs_url", "return_value"}
