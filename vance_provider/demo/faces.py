"""The Dagster and Airflow steps of ``make demo``.

Each step runs in a child process of its own, in a new session, with its own temporary home
(``DAGSTER_HOME`` / ``AIRFLOW_HOME``), so that the environment is set before Dagster or Airflow is
imported, the demo process stays clean, and whatever the step starts is ended with it:

* **Dagster**: a real, persistent Dagster instance in a temporary ``DAGSTER_HOME`` materializes
  two enhanced datasets built with :func:`dagster_vance.build_enhanced_dataset_asset` - the images
  upscaled x2 on the web API and the video upscaled x2 on the Open API - and a credit-usage asset
  per API (:func:`dagster_vance.build_credit_usage_asset`). The tokens reach the
  :class:`dagster_vance.VanceAIResource` through ``dg.EnvVar``: only variable names are stored.
* **Airflow**: a real SQLite metadata database in a temporary ``AIRFLOW_HOME`` (migrated like
  ``airflow db migrate``), the connection ``vanceai_default`` from ``AIRFLOW_CONN_VANCEAI_DEFAULT``,
  and the DAG :func:`airflow_demo_dag` run with ``dag.test()``: a credit check, then background
  removal and cartoonizing of a few images on the Open API with deferrable
  ``VanceAIEnhanceOperator`` tasks (the waiting happens in the trigger).

Outputs go to ``<out>/dagster_images_x2``, ``<out>/dagster_video_x2``, ``<out>/airflow_remove_bg``
and ``<out>/airflow_cartoonize``, each with its ``_vance_manifest.json``; each child's log is kept
in ``<out>/logs``. The child writes its result (summary rows and notes) as JSON to a file.

Run one step by hand (the simulator must be running)::

    python -m vance_provider.demo.faces dagster --base-url http://127.0.0.1:8765 \\
        --inputs demo-output/input --out demo-output --home /tmp/dh --result /tmp/dagster.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from ..core.api.models import API_TITLES
from ..sim import DEMO_OPEN_KEY, DEMO_WEB_TOKEN, SimulatorServer

# Airflow and Dagster are imported only in the child processes; without them the demo falls back to
# the core engine (it catches this ImportError).
_MISSING = [
    name for name in ("airflow", "dagster", "dagster_vance") if importlib.util.find_spec(name) is None
]
if _MISSING:
    raise ImportError(f"{', '.join(_MISSING)} not installed")

console = Console()
ROOT = Path(__file__).resolve().parents[2]
STEP_TIMEOUT = 300.0  # seconds; the steps take a few seconds each on a 2-core machine
DAG_ID = "vanceai_demo_enhance"
# Images a background removal suits (plain backgrounds), and images worth a cartoon.
REMOVE_BG = ("portrait_face.jpg", "face_small.jpg", "product_shot.png", "tiny_icon.png")
CARTOONIZE = ("landscape_wide.jpg", "sunset.jpg", "pattern_a.jpg", "old_photo_gray.png")
ENV_WEB, ENV_OPEN = "VANCE_DEMO_WEB_TOKEN", "VANCE_DEMO_OPEN_KEY"
TOKEN_ENV = {"web": ENV_WEB, "open": ENV_OPEN}
# The Dagster step's datasets: (API, what, inputs, tool, credit budget, jobs in flight).
DATASETS = (
    ("web", "images", "*.[jp][pn]g", "upscale", 50, 8),
    ("open", "video", "*.mp4", "video_upscale", 20, 2),
)


# --- the steps, as the demo calls them ----------------------------------------------------------------
def step_dagster(sim: SimulatorServer, inputs: Path, out: Path) -> list[dict[str, Any]]:
    """Materialize the demo's Dagster assets in a temporary instance (in a child process)."""
    return _run_child("dagster", sim, inputs, out)


def step_airflow(sim: SimulatorServer, inputs: Path, out: Path) -> list[dict[str, Any]]:
    """Run the demo DAG with ``dag.test()`` on a temporary metadata database (in a child process)."""
    rows = _run_child("airflow", sim, inputs, out)
    # dag.test() runs the triggers in-process; the task log tells how often the tasks deferred.
    deferred = (out / "logs" / "airflow.log").read_text(errors="replace").count("Pausing task as DEFERRED")
    console.print(f"  deferrable path: the enhance tasks deferred {deferred} time(s) to their trigger")
    return rows


def _run_child(face: str, sim: SimulatorServer, inputs: Path, out: Path) -> list[dict[str, Any]]:
    work = Path(os.environ.get("VANCE_DEMO_TMP") or tempfile.mkdtemp(prefix="vance-demo-"))
    home = work / f"{face}_home"
    result_file = work / f"{face}_result.json"
    log_path = out / "logs" / f"{face}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "DAGSTER"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "vance_provider.demo.faces",
        face,
        "--base-url",
        sim.base_url,
        "--inputs",
        str(inputs),
        "--out",
        str(out),
        "--home",
        str(home),
        "--result",
        str(result_file),
    ]
    with open(log_path, "wb") as log:
        # A new session: the step and anything it starts form one process group, ended below.
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        timed_out = False
        try:
            proc.wait(timeout=STEP_TIMEOUT)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _end_group(proc)
    if timed_out or proc.returncode != 0 or not result_file.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        for secret in (DEMO_WEB_TOKEN, DEMO_OPEN_KEY):
            tail = tail.replace(secret, "***")
        raise RuntimeError(
            f"the {face} step "
            + (f"timed out after {STEP_TIMEOUT:g}s" if timed_out else f"failed (exit code {proc.returncode})")
            + f"; its log is {log_path}:\n{tail}"
        )
    result = json.loads(result_file.read_text())
    for note in result.get("notes", []):
        console.print(f"  {note}")
    rows: list[dict[str, Any]] = result["rows"]
    return rows


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """End the child and every process of its group: SIGTERM, then SIGKILL after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # the group is gone: nothing left running
            break
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader, or the group never looks empty
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            continue
        break
    proc.wait()


# --- Dagster (in the child) --------------------------------------------------------------------------
def _dagster(base_url: str, inputs: Path, out: Path, home: Path) -> dict[str, Any]:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ[ENV_WEB], os.environ[ENV_OPEN] = DEMO_WEB_TOKEN, DEMO_OPEN_KEY

    import dagster as dg

    from dagster_vance import VanceAIResource, build_credit_usage_asset, build_enhanced_dataset_asset

    datasets, reports, resources = [], [], {}
    for api, what, pattern, tool, budget, concurrency in DATASETS:
        key = f"vanceai_{api}"
        dataset = build_enhanced_dataset_asset(
            f"{what}_x2",
            source=str(inputs / pattern),
            destination=str(out / f"dagster_{what}_x2"),
            tool=tool,
            config={"scale": 2},
            credit_budget=budget,
            max_concurrency=concurrency,
            poll_interval=0.3,
            resource_key=key,
            description=f"The demo's {what}, upscaled x2 on the VanceAI {API_TITLES[api]}.",
        )
        datasets.append(dataset)
        reports.append(build_credit_usage_asset(f"{api}_credit_usage", datasets=[dataset], resource_key=key))
        resources[key] = VanceAIResource(api_token=dg.EnvVar(TOKEN_ENV[api]), base_url=base_url, api=api)
    assets = [*datasets, *reports]
    defs = dg.Definitions(assets=assets, resources=resources)
    defs.resolve_all_job_defs()  # the definitions load, as `dagster definitions validate` would check

    with dg.DagsterInstance.get() as instance:
        result = dg.materialize(assets, instance=instance, resources=resources, raise_on_error=False)
        if not result.success:
            raise SystemExit("the Dagster run failed (see the events above)")
        checks = result.get_asset_check_evaluations()
        usage = {name: result.output_for_node(name) for name in (r.key.to_user_string() for r in reports)}
        rows = []
        for event in result.get_asset_materialization_events():
            md = {k.removeprefix("vance/"): v.value for k, v in event.materialization.metadata.items()}
            if "done" in md:
                rows.append(
                    _row("Dagster", event.materialization.asset_key.to_user_string(), str(md["api"]), md)
                )
        runs = len(instance.get_runs())
    passed = sum(c.passed for c in checks)
    usage_note = ", ".join(f"{name} {df['credits'].sum():g} credits" for name, df in usage.items())
    notes = [
        f"temporary DAGSTER_HOME: {runs} run, {len(result.get_asset_materialization_events())} assets "
        f"materialized, {passed}/{len(checks)} asset checks passed",
        f"credit usage assets: {usage_note}",
    ]
    return {"rows": rows, "notes": notes}


# --- Airflow (in the child) --------------------------------------------------------------------------
def airflow_demo_dag() -> Any:
    """The demo DAG: check the credits, then remove backgrounds and cartoonize, deferrable.

    ``params``: ``remove_bg`` and ``cartoonize`` (lists of input files) and ``destination`` (a folder
    under which ``airflow_remove_bg`` and ``airflow_cartoonize`` are written). Templates render to
    native objects, so the lists reach the operators as lists.
    """
    from airflow.sdk import DAG, AssetAlias, Param

    from vance_provider.operators.vanceai import VanceAICreditCheckOperator, VanceAIEnhanceOperator

    with DAG(
        dag_id=DAG_ID,
        description="make demo: VanceAI background removal and cartoons, deferrable",
        schedule=None,
        start_date=datetime(2025, 1, 1),
        catchup=False,
        render_template_as_native_obj=True,
        params={
            "remove_bg": Param([], type="array", description="images to cut out"),
            "cartoonize": Param([], type="array", description="images to cartoonize"),
            "destination": Param("demo-output", type="string", description="the output folder's parent"),
        },
        tags=["vanceai", "demo"],
    ) as dag:
        check = VanceAICreditCheckOperator(
            task_id="check_credits",
            source="{{ params.remove_bg + params.cartoonize }}",
            tool="remove_bg",
            margin=1,
            on_insufficient="fail",
        )
        for tool, output_format in (("remove_bg", "png"), ("cartoonize", None)):
            enhance = VanceAIEnhanceOperator(
                task_id=tool,
                source=f"{{{{ params.{tool} }}}}",
                destination=f"{{{{ params.destination }}}}/airflow_{tool}",
                tool=tool,
                output_format=output_format,  # png keeps the cut-out's transparency
                max_concurrency=4,
                credit_budget=20,
                deferrable=True,  # the worker submits and collects; the trigger waits
                poll_interval=0.3,
                max_poll_interval=1.0,
                outlets=[AssetAlias(f"vanceai_demo_{tool}_outputs")],
            )
            check >> enhance
    return dag


DAG_FILE = '''"""The `make demo` DAG (defined in vance_provider.demo.faces)."""

from vance_provider.demo.faces import airflow_demo_dag

dag = airflow_demo_dag()
'''


def _airflow(base_url: str, inputs: Path, out: Path, home: Path) -> dict[str, Any]:
    dags = home / "dags"
    dags.mkdir(parents=True, exist_ok=True)
    (dags / f"{DAG_ID}.py").write_text(DAG_FILE)
    conn = {"conn_type": "vanceai", "password": DEMO_OPEN_KEY, "host": base_url, "extra": {"api": "open"}}
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            # dag.test() runs the trigger in its own process: no resume race to wait out, so the
            # demo's small deferrable batches defer at once (the path it shows) instead of
            # finishing in the worker as a small batch does in a deployment.
            "AIRFLOW__VANCEAI__RESUME_AFTER_DEFERRAL": "0",
            "AIRFLOW_CONN_VANCEAI_DEFAULT": json.dumps(conn),
        }
    )
    if any(m == "airflow" or m.startswith("airflow.") for m in sys.modules):
        raise RuntimeError("Airflow was imported before its environment was set")

    t0 = time.monotonic()
    from airflow.utils.db import upgradedb

    upgradedb()  # what `airflow db migrate` does
    migrated = time.monotonic() - t0

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(dags / f"{DAG_ID}.py"))
    if bag.import_errors:
        raise RuntimeError(f"the demo DAG does not parse: {bag.import_errors}")
    dag = bag.dags[DAG_ID]
    conf = {
        "remove_bg": [str(inputs / n) for n in REMOVE_BG],
        "cartoonize": [str(inputs / n) for n in CARTOONIZE],
        "destination": str(out),
    }
    dr = dag.test(run_conf=conf)
    states = _ti_states(dr)
    if str(dr.state) != "success" or set(states.values()) != {"success"}:
        raise SystemExit(f"the Airflow DAG run {dr.state}: {states}")
    check = _xcom(dr, "check_credits")
    rows = [_row("Airflow", tool, check["api"], _xcom(dr, tool)) for tool in ("remove_bg", "cartoonize")]
    notes = [
        f"metadata DB (SQLite, temporary AIRFLOW_HOME) migrated in {migrated:.1f}s",
        f"dag.test() of {DAG_ID}: " + ", ".join(states) + " succeeded",
        f"credit check: {check['available']:g} credits available, {check['needed']:g} needed",
    ]
    return {"rows": rows, "notes": notes}


def _row(face: str, dataset: str, api: str, counts: dict[str, Any]) -> dict[str, Any]:
    """A row of the demo's summary table, from a batch's counts (an XCom, or an asset's metadata)."""
    done = {k: counts[k] for k in ("done", "failed", "skipped")}
    return {
        "face": face,
        "dataset": dataset,
        "api": api,
        **done,
        "credits_spent": float(counts["credits_spent"]),
    }


def _ti_states(dr: Any) -> dict[str, str]:
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = sorted(
            dr.get_task_instances(session=session), key=lambda ti: (ti.start_date is None, ti.start_date)
        )
        return {ti.task_id: str(ti.state) for ti in tis}


def _xcom(dr: Any, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(run_id=dr.run_id, dag_ids=dr.dag_id, task_ids=task_id, key="return_value")
        rows = session.scalars(query).all()
        return XComModel.deserialize_value(rows[0]) if rows else None


# --- the child's entry point ---------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("face", choices=("dagster", "airflow"))
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    run = _dagster if args.face == "dagster" else _airflow
    result = run(args.base_url, args.inputs.resolve(), args.out.resolve(), args.home.resolve())
    args.result.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
