"""The deferrable batch operator against worker mode and the physical bound.

    python -m bench.deferrable [dagtest|deployment|repeat|all]

* ``dagtest``: ``dag.test()`` in a fresh process per run (the trigger runs in-process);
* ``deployment``: a real Airflow on loopback - API server, scheduler (LocalExecutor), DAG
  processor and triggerer as separate processes sharing a SQLite metadata DB;
* ``repeat``: the deferrable batch in the deployment ``BENCH_REPEAT`` times (does any resumed
  task fail?), every component's log kept under ``bench/results/deferrable-logs/`` when a run fails.

Each run: N images, C jobs at once, job time T (uniform, or log-normal of sigma ``BENCH_SPREAD``
around T: the simulator's ``time_spread``), against a simulator in its own process. The bound is
N·T/C. ``service_busy`` is the mean number of jobs on the service over the batch's span divided
by C (1.0: the account's concurrency was full the whole time).

In ``deployment`` each size runs ``BENCH_ROUNDS`` times, worker and deferrable in turn (the
order alternating from round to round, the simulator's job times drawn from the same seed for
both modes of a round) in one deployment, after one unmeasured run of each mode; each row keeps every round and the
min/median/max of the task's time, the run's wall time and the deferrable ÷ worker ratio of each
round. ``BENCH_CODE`` runs the deployment on another checkout of the provider (say the commit
before a change, from ``git archive``; its processes start outside this checkout so that its
``vance_provider`` is imported), to measure a baseline beside the change in the same conditions.

Knobs (env): BENCH_SIZES (50,200,1000), BENCH_T (0.25), BENCH_C (16), BENCH_SPREAD (1.0),
BENCH_SPREADS (the deployment's job-time spreads: 0,<BENCH_SPREAD>), BENCH_POLL (the operator's
poll_interval, 0.5), BENCH_ROUNDS (3), BENCH_REPEAT (7), BENCH_CODE, BENCH_LABEL (names the result
keys: deployment_<label>). Results: bench/results/deferrable.json (earlier keys are kept).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
# The provider the Airflow processes import: this checkout, or BENCH_CODE (another checkout, put
# first on PYTHONPATH; the processes then start outside this checkout, whose folder would come first).
CODE = Path(os.environ.get("BENCH_CODE") or ROOT).resolve()
LABEL = os.environ.get("BENCH_LABEL", "")  # names the result keys (dag_test_<label>)
ENV = {
    "SIZES": [int(n) for n in os.environ.get("BENCH_SIZES", "50,200,1000").split(",")],
    "T": float(os.environ.get("BENCH_T", "0.25")),
    "C": int(os.environ.get("BENCH_C", "16")),
    "SPREAD": float(os.environ.get("BENCH_SPREAD", "1.0")),
    "POLL": float(os.environ.get("BENCH_POLL", "0.5")),
    "REPEAT": int(os.environ.get("BENCH_REPEAT", "7")),
    "ROUNDS": int(os.environ.get("BENCH_ROUNDS", "3")),
}
ENV["SPREADS"] = [float(s) for s in os.environ.get("BENCH_SPREADS", f"0,{ENV['SPREAD']}").split(",")]

DAG_FILE = """
import os
from datetime import datetime
from airflow.sdk import DAG, Param
from vance_provider.operators.vanceai import VanceAIEnhanceOperator

for mode in ("worker", "deferrable"):
    with DAG(f"vb_{mode}", schedule=None, start_date=datetime(2025, 1, 1), catchup=False,
             params={"source": Param("/tmp/in", type="string"),
                     "destination": Param("/tmp/out", type="string")}):
        VanceAIEnhanceOperator(
            task_id="enhance", source="{{ params.source }}", destination="{{ params.destination }}",
            tool="upscale", config={"scale": 2}, deferrable=mode == "deferrable",
            max_concurrency=int(os.environ.get("VB_C", "16")),
            poll_interval=float(os.environ.get("VB_POLL", "0.5")), max_poll_interval=2.0,
            timeout=3600)
"""

# --- the simulator, in its own process -------------------------------------------------------------
SERVE = """
import json, sys
from vance_provider.sim import SimulatorServer
from vance_provider.sim.config import Account, SimConfig
knobs = json.loads(sys.argv[1])
config = SimConfig(accounts=[Account(credits=1e7)], queue_delay=0.0, time_per_job=knobs["T"],
                   time_spread=knobs["spread"], max_concurrent_images=knobs["C"], tick=0.01)
with SimulatorServer(config) as sim:
    print(sim.base_url, flush=True)
    for line in sys.stdin:  # "dump <path>": the service's record of its jobs and charges
        if line.startswith("reseed "):  # the job times drawn from here on: the same for each mode
            import random
            with sim.state.lock:
                sim.state.__dict__["_spread_rng"] = random.Random(int(line.split()[1]))
            print("ok", flush=True)
            continue
        path = line.split(None, 1)[1].strip()
        with sim.state.lock:
            jobs = [(j.created_at, j.started_at, j.finished_at, j.status) for j in sim.state.jobs.values()]
        data = {"jobs": jobs, "charges": len(sim.state.charges()),
                "double_charges": sim.state.double_charges(),
                "created": len([r for r in sim.state.requests if r.created_job])}
        open(path, "w").write(json.dumps(data))
        print("ok", flush=True)
"""


class Sim:
    def __init__(self, t: float, c: int, spread: float) -> None:
        knobs = json.dumps({"T": t, "C": c, "spread": spread})
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, knobs],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().strip()

    def dump(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            path = f.name
        self.proc.stdin.write(f"dump {path}\n")
        self.proc.stdin.flush()
        self.proc.stdout.readline()
        data = json.loads(Path(path).read_text())
        os.unlink(path)
        return data

    def reseed(self, seed: int) -> None:
        """Job times (``time_spread``) drawn afresh from ``seed``: two runs reseeded alike draw the
        same times for their jobs in the order they start."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"reseed {seed}\n")
        self.proc.stdin.flush()
        self.proc.stdout.readline()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def service_stats(dump: dict[str, Any], c: int) -> dict[str, Any]:
    jobs = [j for j in dump["jobs"] if j[2] is not None]
    if not jobs:
        return {}
    first, last = min(j[0] for j in jobs), max(j[2] for j in jobs)
    busy = sum(j[2] - j[0] for j in jobs)
    return {
        "service_span_s": round(last - first, 2),
        "service_busy": round(busy / max(1e-9, (last - first) * c), 3),
        "jobs_created": dump["created"],
        "charges": dump["charges"],
        "double_charges": len(dump["double_charges"]),
    }


def make_inputs(folder: Path, n: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (32, 24), (i % 256, (i * 7) % 256, 90)).save(folder / f"img{i:05d}.jpg")


def airflow_env(home: Path, base_url: str, poll: float, c: int) -> dict[str, str]:
    from vance_provider.sim import DEMO_OPEN_KEY

    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW_CONN_VANCEAI_DEFAULT": json.dumps(
                {
                    "conn_type": "vanceai",
                    "password": DEMO_OPEN_KEY,
                    "host": base_url,
                    "extra": {"api": "open"},
                }
            ),
            "VB_POLL": str(poll),
            "VB_C": str(c),
            "PYTHONPATH": str(CODE),
        }
    )
    return env


def new_home() -> Path:
    home = Path(tempfile.mkdtemp(prefix="vance-bench-airflow-"))
    (home / "dags").mkdir()
    (home / "dags" / "vb_batch.py").write_text(DAG_FILE)
    return home


# --- dag.test() ---------------------------------------------------------------------------------------
RUN_DAG_TEST = """
import json, sys, time
try:
    from airflow.dag_processing.dagbag import DagBag
except ImportError:
    from airflow.models.dagbag import DagBag
import os
from vance_provider.triggers import vanceai as triggers
cycles = [0]
original = triggers._VanceAITrigger.run
async def counted(self):
    cycles[0] += 1
    async for event in original(self):
        yield event
triggers._VanceAITrigger.run = counted
bag = DagBag(dag_folder=os.path.join(os.environ["AIRFLOW__CORE__DAGS_FOLDER"], "vb_batch.py"))
dag = bag.dags[sys.argv[1]]
t0 = time.perf_counter()
dr = dag.test(run_conf={"source": sys.argv[2], "destination": sys.argv[3]})
wall = time.perf_counter() - t0
from airflow.models.taskinstance import TaskInstance
from airflow.utils.session import create_session
from sqlalchemy import select
with create_session() as session:
    ti = session.scalars(select(TaskInstance).where(
        TaskInstance.dag_id == dag.dag_id, TaskInstance.run_id == dr.run_id)).one()
    task = (ti.end_date - ti.start_date).total_seconds()
print(json.dumps({"wall_s": round(wall, 2), "task_s": round(task, 2), "state": str(dr.state),
                  "deferrals": cycles[0]}))
"""


def dag_test_run(home: Path, env: dict[str, str], mode: str, src: Path, dst: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", RUN_DAG_TEST, f"vb_{mode}", str(src), str(dst)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=CODE,
    )
    if proc.returncode:
        raise RuntimeError(f"dag.test() failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def migrate(env: dict[str, str], cwd: Path | None = None) -> None:
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env,
        check=True,
        capture_output=True,
        cwd=cwd,
    )


def bench_dag_test() -> list[dict[str, Any]]:
    t, c = ENV["T"], ENV["C"]
    rows = []
    home = new_home()
    try:
        migrate(airflow_env(home, "http://127.0.0.1:1", ENV["POLL"], c))
        cases = [(n, s, ENV["POLL"]) for n in ENV["SIZES"] for s in (0.0, ENV["SPREAD"])]
        cases.append((ENV["SIZES"][0], 0.0, 5.0))  # the operator's default poll_interval
        for n, spread, poll in cases:
            src = home / f"in{n}"
            if not src.exists():
                make_inputs(src, n)
            row: dict[str, Any] = {"where": "dag.test()", "N": n, "spread": spread, "poll_interval": poll}
            for mode in ("worker", "deferrable"):
                sim = Sim(t, c, spread)
                try:
                    env = airflow_env(home, sim.base_url, poll, c)
                    dst = home / f"out-{n}-{spread}-{poll}-{mode}"
                    run = dag_test_run(home, env, mode, src, dst)
                    run.update(service_stats(sim.dump(), c))
                finally:
                    sim.close()
                row[mode] = run
            finish(row, n, t, c)
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return rows


def finish(row: dict[str, Any], n: int, t: float, c: int) -> None:
    bound = n * t / c
    row["bound_s"] = round(bound, 2)
    for key in ("task_s", "wall_s", "service_span_s"):
        w, d = row["worker"].get(key), row["deferrable"].get(key)
        if w and d:
            name = key.removesuffix("_s")
            row[f"{name}: worker_vs_bound"] = round(w / bound, 2)
            row[f"{name}: deferrable_vs_bound"] = round(d / bound, 2)
            row[f"{name}: deferrable_vs_worker"] = round(d / w, 2)


# --- a real deployment ----------------------------------------------------------------------------------
class Deployment:
    def __init__(self, home: Path, env: dict[str, str]) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.home, self.procs = home, {}
        self.env = {
            **env,
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": "vance-bench-jwt-secret-0123456789abcdef",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        }

    def start(self) -> None:
        migrate(self.env, self.home)
        for name in ("api-server", "scheduler", "dag-processor", "triggerer"):
            log = (self.home / f"{name}.log").open("ab")
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "airflow", name],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.home,  # not this checkout: BENCH_CODE's provider is imported then
            )
        self.wait(lambda: len(self.query("select dag_id from dag where dag_id like 'vb_%'")) == 2, 240)

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        import sqlite3

        con = sqlite3.connect(self.home / "airflow.db", timeout=30)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def wait(self, predicate: Any, timeout: float) -> Any:
        import sqlite3

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if result := predicate():
                    return result
            except sqlite3.OperationalError:
                pass
            time.sleep(0.2)
        raise TimeoutError("deployment: timed out")

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        run_id = f"bench_{int(time.time() * 1000)}"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "airflow",
                "dags",
                "trigger",
                dag_id,
                "-r",
                run_id,
                "-c",
                json.dumps(conf),
            ],
            env=self.env,
            check=True,
            capture_output=True,
            cwd=self.home,
        )
        return run_id

    def run(self, dag_id: str, conf: dict[str, Any]) -> dict[str, Any]:
        from datetime import datetime

        run_id = self.trigger(dag_id, conf)
        q = "select state from dag_run where dag_id = ? and run_id = ?"
        self.wait(lambda: (r := self.query(q, dag_id, run_id)) and r[0][0] in ("success", "failed"), 3600)
        state = self.query(q, dag_id, run_id)[0][0]
        ((start, end, ti_state, tries),) = self.query(
            "select start_date, end_date, state, try_number from task_instance where dag_id = ? and run_id = ?",
            dag_id,
            run_id,
        )
        ((created, run_end),) = self.query(
            "select start_date, end_date from dag_run where dag_id = ? and run_id = ?", dag_id, run_id
        )

        def ts(value: str) -> float:
            return datetime.fromisoformat(value.replace(" ", "T")).timestamp()

        deferrals = sum(
            p.read_text(errors="replace").count("deferring")
            for p in (self.home / "logs").rglob("*")
            if p.is_file() and f"run_id={run_id}" in str(p)
        )
        return {
            "state": state,
            "task_state": ti_state,
            "try_number": tries,
            "task_s": round(ts(end) - ts(start), 2) if start and end else None,
            "wall_s": round(ts(run_end) - ts(created), 2) if created and run_end else None,
            "deferrals": deferrals,
            "run_id": run_id,
        }

    def stop(self) -> None:
        import signal

        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def with_deployment(t: float, c: int, spread: float, body: Any) -> Any:
    """A deployment against one simulator process (restarted per spread: its knob is fixed)."""
    sim = Sim(t, c, spread)
    home = new_home()
    dep = Deployment(home, airflow_env(home, sim.base_url, ENV["POLL"], c))
    try:
        dep.start()
        return body(dep, sim, home)
    finally:
        dep.stop()
        sim.close()
        if not os.environ.get("BENCH_KEEP_HOME"):
            shutil.rmtree(home, ignore_errors=True)


def spread_of(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 2),
        "median": round(statistics.median(values), 2),
        "max": round(max(values), 2),
    }


def summarize(n: int, spread: float, rounds: list[dict[str, Any]], t: float, c: int) -> dict[str, Any]:
    """One size's rounds: each round as measured, and min/median/max per mode and of the ratio."""
    row: dict[str, Any] = {
        "where": "scheduler+triggerer",
        "N": n,
        "spread": spread,
        "bound_s": round(n * t / c, 2),
        "rounds": rounds,
    }
    for key in ("task_s", "wall_s"):
        for mode in ("worker", "deferrable"):
            values = [r[mode][key] for r in rounds if r[mode].get(key)]
            if values:
                row[f"{mode} {key}"] = spread_of(values)
        ratios = [
            r["deferrable"][key] / r["worker"][key]
            for r in rounds
            if r["deferrable"].get(key) and r["worker"].get(key)
        ]
        if ratios:
            row[f"deferrable_vs_worker {key}"] = spread_of(ratios)
    row["states"] = sorted({r[m]["state"] for r in rounds for m in ("worker", "deferrable")})
    row["deferrals"] = [r["deferrable"]["deferrals"] for r in rounds]
    row["double_charges"] = sum(
        r[m].get("double_charges", 0) for r in rounds for m in ("worker", "deferrable")
    )
    row["charges_per_input"] = sorted(
        {r[m].get("charges", 0) / n for r in rounds for m in ("worker", "deferrable")}
    )
    return row


def bench_deployment() -> list[dict[str, Any]]:
    t, c = ENV["T"], ENV["C"]
    rows: list[dict[str, Any]] = []
    for spread in ENV["SPREADS"]:

        def body(dep: Deployment, sim: Sim, home: Path, spread: float = spread) -> None:
            warm = home / "warm"
            make_inputs(warm, 16)
            for mode in ("worker", "deferrable"):  # unmeasured: a fresh deployment's first runs are slow
                dep.run(f"vb_{mode}", {"source": str(warm), "destination": str(home / f"warm-{mode}")})
            for n in ENV["SIZES"]:
                src = home / f"in{n}"
                make_inputs(src, n)
                rounds: list[dict[str, Any]] = []
                for k in range(ENV["ROUNDS"]):
                    modes = ("worker", "deferrable") if k % 2 == 0 else ("deferrable", "worker")
                    one: dict[str, Any] = {}
                    for mode in modes:
                        sim.reseed(1000 * n + k)  # both modes of a round: the same job times
                        before = sim.dump()
                        out = home / f"o{n}{mode}{k}"
                        run = dep.run(f"vb_{mode}", {"source": str(src), "destination": str(out)})
                        after = sim.dump()
                        after["jobs"] = after["jobs"][len(before["jobs"]) :]
                        after["created"] -= before["created"]
                        after["charges"] -= before["charges"]
                        run.update(service_stats(after, c))
                        one[mode] = run
                    print(json.dumps({"N": n, "spread": spread, "round": k, **one}), flush=True)
                    rounds.append(one)
                row = summarize(n, spread, rounds, t, c)
                print(json.dumps({k: v for k, v in row.items() if k != "rounds"}), flush=True)
                rows.append(row)

        with_deployment(t, c, spread, body)
    return rows


def bench_repeat() -> dict[str, Any]:
    """The deferrable 200-item batch again and again in one deployment: does any resumed task fail?"""
    t, c, n = ENV["T"], ENV["C"], ENV["SIZES"][0]
    logs = RESULTS / "deferrable-logs"

    def body(dep: Deployment, sim: Sim, home: Path) -> dict[str, Any]:
        src = home / "in"
        make_inputs(src, n)
        runs = []
        for i in range(ENV["REPEAT"]):
            run = dep.run("vb_deferrable", {"source": str(src), "destination": str(home / f"out{i}")})
            runs.append(run)
            print(json.dumps(run), flush=True)
            if run["state"] != "success":  # keep every component's log and the task's
                keep = logs / run["run_id"]
                keep.mkdir(parents=True, exist_ok=True)
                for p in home.glob("*.log"):
                    shutil.copy(p, keep / p.name)
                for p in (home / "logs").rglob("*"):
                    if p.is_file() and f"run_id={run['run_id']}" in str(p):
                        rel = p.relative_to(home / "logs")  # the task's log per try, the trigger's
                        (keep / "task" / rel).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy(p, keep / "task" / rel)
                (keep / "run.json").write_text(json.dumps(run, indent=2))
        dump = sim.dump()
        return {
            "N": n,
            "runs": len(runs),
            "failed": sum(1 for r in runs if r["state"] != "success"),
            "retried": sum(1 for r in runs if (r["try_number"] or 1) > 1),
            "wall_s": [r["wall_s"] for r in runs],
            "double_charges": len(dump["double_charges"]),
            "charges": dump["charges"],
        }

    return with_deployment(t, c, 0.0, body)


def main(argv: list[str]) -> None:
    what = argv[0] if argv else "all"
    path = RESULTS / "deferrable.json"
    out: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    params = {
        "T_s": ENV["T"],
        "C": ENV["C"],
        "spread_sigma": ENV["SPREAD"],
        "poll_interval": ENV["POLL"],
    }
    # The top-level params and date describe the unlabelled results; a labelled result carries its own.
    out.setdefault("params", params)
    out["machine"] = f"{platform.machine()} {os.cpu_count()} cpu"
    out.setdefault("date", time.strftime("%Y-%m-%d"))
    suffix = f"_{LABEL}" if LABEL else ""
    runs = {"dagtest": ("dag_test", bench_dag_test), "deployment": ("deployment", bench_deployment)}
    runs["repeat"] = ("repeat", bench_repeat)
    for name, (key, bench) in runs.items():
        if what not in (name, "all"):
            continue
        result = bench()
        if LABEL:
            out[key + suffix] = {
                "date": time.strftime("%Y-%m-%d %H:%M"),
                "params": {
                    **params,
                    "sizes": ENV["SIZES"],
                    "rounds": ENV["ROUNDS"],
                    "spreads": ENV["SPREADS"],
                },
                "code": str(CODE) if os.environ.get("BENCH_CODE") else "this checkout",
                "result": result,
            }
        else:
            out[key] = result
            out["date"] = time.strftime("%Y-%m-%d")
        RESULTS.mkdir(exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
