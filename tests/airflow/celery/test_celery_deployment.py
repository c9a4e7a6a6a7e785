"""A real distributed Airflow: the CeleryExecutor with four Celery workers, each on a test host of
its own (a network namespace joined to this one by a private bridge: see hosts.py), a real
PostgreSQL for the metadata DB and a real Redis as the broker, both started by tests/servers.py;
the API server, scheduler, DAG processor and triggerer in this namespace. Where network namespaces
cannot be made (not root), the workers are plain processes on loopback, and the test says so.

The example DAG ``vanceai_sharded_enhance`` runs eight shards (sub-folders on local disk, which
the test hosts share as they would a network file system) against the simulator, on one account
(one key), under the ``vanceai`` pool of 16 slots (the account's 16 jobs in flight). Asserted:

* every input is processed exactly once and paid exactly once (the simulator's charge records,
  by the bytes each job was made from);
* the work was spread over at least two workers: the task instances' hosts, and (with
  namespaces) the network addresses the jobs were created from, each a worker's;
* the account's concurrency cap was never exceeded: the simulator's jobs, from creation to end,
  never overlap more than its cap, and no creation was refused for it.

The simulator holds every job (its time runs on the simulator's clock) until jobs of at least two
workers are in flight, so the spread does not depend on timing; then the jobs run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.airflow.celery.hosts import HostNetwork
from tests.airflow.helpers import stop_process_groups
from tests.conftest import OPEN_KEY, fast_config
from tests.servers import PostgresServer, RedisServer, ServerNotAvailable, free_port
from vance_provider.sim import SimulatorServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[3]
DAG_ID = "vanceai_sharded_enhance"
WORKERS = 4
SHARDS = 8
PER_SHARD = 5
POOL = 16  # the account's jobs in flight: the simulator's cap, and the pool's slots
JOBS_PER_TASK = 4  # the DAG's max_concurrency of one mapped task
HOLD = 3600.0  # simulated seconds a job takes until the test lets the jobs run


def unique_image(index: int) -> bytes:
    """A small JPEG whose bytes differ for every index (so no two inputs share a job or a cache)."""
    img = Image.new("RGB", (24, 16), (index * 37 % 256, index * 91 % 256, index * 53 % 256))
    img.putpixel((index % 24, index // 24 % 16), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


class ClientAddresses:
    """ASGI middleware in front of the simulator: who (which network address) made each request."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[tuple[str, str, str, int]] = []  # (client address, method, path, status)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("?", 0))[0]

        async def recording_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.seen.append((client, scope["method"], scope["path"], message["status"]))
            await send(message)

        await self.app(scope, receive, recording_send)

    def creates(self) -> list[tuple[str, int]]:
        return [(c, s) for c, m, p, s in self.seen if m == "POST" and p == "/api/v1/jobs"]


class CeleryDeployment:
    """Airflow's components as child processes: the control plane in this namespace, each Celery
    worker on its test host."""

    def __init__(
        self, home: Path, net: HostNetwork, pg: PostgresServer, redis: RedisServer, sim: SimulatorServer
    ) -> None:
        self.home, self.net, self.pg = home, net, pg
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        address = net.address
        port = free_port()
        self.api = f"http://{address}:{port}"
        self.db_url = pg.url_for(address, "airflow", driver="psycopg2")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "VANCE_"))}
        env.update(
            {
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.db_url,
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CELERY__BROKER_URL": redis.url_for(address, 0),
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + pg.url_for(address, "airflow", driver="psycopg2"),
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
                "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
                "AIRFLOW__CORE__PARALLELISM": "32",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.airflow.celery.hostname.hostname",
                "AIRFLOW__API__HOST": address,
                "AIRFLOW__API__PORT": str(port),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API__BASE_URL": self.api,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api}/execution/",
                "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "120",  # a loaded machine: see test_airflow_e2e
                "AIRFLOW__API_AUTH__JWT_SECRET": "vance-celery-jwt-secret-0123456789abcdef",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
                "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "1",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "AIRFLOW_CONN_VANCEAI_DEFAULT": json.dumps(
                    {
                        "conn_type": "vanceai",
                        "password": OPEN_KEY,
                        "host": sim.base_url,
                        "extra": {"api": "open"},
                    }
                ),
                # The account store every worker shares (docs/account.md): the Redis every test
                # host reaches. An engine without the store ignores it.
                "VANCE_ACCOUNT_STORE": redis.url_for(address, 1),
                "VANCE_STATE_DIR": str(home / "vance-state"),
                "PYTHONPATH": str(ROOT),
            }
        )
        self.env = env

    # --- processes -------------------------------------------------------------------------------
    def airflow(self, *args: str, timeout: float = 300) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode:
            raise RuntimeError(f"airflow {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc.stdout

    def start(self, name: str, argv: list[str], **env: str) -> None:
        log = (self.home / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            argv,
            env={**self.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def start_control_plane(self) -> None:
        for name in ("api-server", "scheduler", "dag-processor", "triggerer"):
            self.start(name, [sys.executable, "-m", "airflow", name])

    def start_workers(self) -> None:
        for host in self.net.hosts:
            argv = [sys.executable, "-m", "airflow", "celery", "worker"]
            argv += ["--concurrency", "1", "--celery-hostname", f"{host.name}@%h", "--skip-serve-logs"]
            self.start(host.name, host.wrap(argv), VANCE_TEST_HOST=host.name)

    def stop_all(self) -> None:
        procs = list(self.procs.values())
        self.procs.clear()
        stop_process_groups(procs, signal.SIGTERM, grace=15.0)

    # --- looking -----------------------------------------------------------------------------------
    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        import psycopg2

        conn = psycopg2.connect(self.pg.url_for("127.0.0.1", "airflow"))
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if result := predicate():
                    return result
            except Exception as error:  # not created yet, a connection refused while starting
                if type(error).__name__ not in {"UndefinedTable", "OperationalError", "ConnectError"}:
                    raise
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}\n" + "\n".join(map(self.log_tail, self.procs)))

    def log_tail(self, name: str, chars: int = 2500) -> str:
        path = self.home / f"{name}.log"
        return f"--- {name} ---\n" + (path.read_text(errors="replace")[-chars:] if path.exists() else "")

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        def post() -> str | None:
            token = httpx.get(f"{self.api}/auth/token", timeout=30).json()["access_token"]
            answer = httpx.post(
                f"{self.api}/api/v2/dags/{dag_id}/dagRuns",
                json={"logical_date": None, "conf": conf},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            return str(answer.json()["dag_run_id"])

        return self.wait(post, 240, "the API server to create the DAG run")


@pytest.fixture
def celery_deployment(tmp_path: Path) -> Iterator[tuple[CeleryDeployment, SimulatorServer, ClientAddresses]]:
    pytest.importorskip("airflow.providers.celery", reason="needs apache-airflow-providers-celery")
    pytest.importorskip("psycopg2", reason="needs psycopg2 (Airflow's PostgreSQL driver)")
    with HostNetwork(workers=WORKERS) as net:
        try:
            pg = PostgresServer(hosts=[net.address], clients=[f"{net.subnet}.0/24"])
            redis = RedisServer(hosts=[net.address])
        except ServerNotAvailable as missing:
            pytest.skip(str(missing))
        sim = SimulatorServer(fast_config(time_per_job=HOLD, max_concurrent_images=POOL), host=net.address)
        addresses = ClientAddresses(sim.app)
        sim._server.config.app = addresses  # uvicorn loads its app when it starts
        home = tmp_path / "airflow"
        (home / "dags").mkdir(parents=True)
        shutil.copy(ROOT / "dags" / f"{DAG_ID}.py", home / "dags")
        dep: CeleryDeployment | None = None
        try:
            pg.start()
            redis.start()
            pg.create_database("airflow")
            sim.start()
            dep = CeleryDeployment(home, net, pg, redis, sim)
            dep.airflow("db", "migrate")
            dep.airflow(
                "pools", "set", "vanceai", str(POOL), "VanceAI account: jobs in flight", "--include-deferred"
            )
            dep.start_control_plane()
            dep.start_workers()
            yield dep, sim, addresses
        finally:
            if dep is not None:
                dep.stop_all()
            sim.stop()
            redis.close()
            pg.close()


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = now = 0
    for _, step in events:  # an end at the same instant as a start comes first (-1 < 1)
        now += step
        most = max(most, now)
    return most


def test_sharded_dag_on_four_celery_workers(celery_deployment, tmp_path) -> None:
    dep, sim, addresses = celery_deployment
    net = dep.net
    print(
        f"workers: {'network namespaces' if net.isolated else 'processes on loopback: ' + str(net.why_not)}"
    )
    for host in net.hosts:  # a test host reaches the bridge's subnet and nothing else
        assert all(" via " not in route and "default" not in route for route in net.routes(host))

    src, dst = tmp_path / "in", tmp_path / "out"
    inputs: dict[str, str] = {}  # sha256 -> file
    src.mkdir(parents=True)  # one flat folder: the DAG lists it once and splits it in shards
    for s in range(SHARDS):
        for i in range(PER_SHARD):
            data = unique_image(s * PER_SHARD + i)
            (src / f"s{s}-{i}.jpg").write_bytes(data)
            inputs[hashlib.sha256(data).hexdigest()] = f"s{s}-{i}.jpg"
    assert len(inputs) == SHARDS * PER_SHARD

    dep.wait(lambda: dep.query("select 1 from dag where dag_id = %s", DAG_ID), 300, "the DAG to be parsed")
    run_id = dep.trigger(DAG_ID, {"source": str(src), "destination": str(dst), "shards": SHARDS})

    # Jobs held: a worker's task stays on its worker (concurrency 1) until they run, and one task
    # keeps at most JOBS_PER_TASK jobs in flight, so more jobs than that are jobs of two workers.
    def shards_in_flight() -> bool:
        with sim.state.lock:
            return len(sim.state.jobs) > JOBS_PER_TASK

    dep.wait(shards_in_flight, 600, "jobs of two shards to be in flight")
    with sim.state.lock:
        sim.state.config.time_per_job = 0.05
        for job in sim.state.jobs.values():  # a job still queued would start held: it is quick too
            if job.status == "queued":
                job.processing_time = 0.05
        sim.state.clock.advance(HOLD)

    def finished() -> list[str]:
        states = [s for (s,) in dep.query("select state from dag_run where run_id = %s", run_id)]
        return [s for s in states if s in ("success", "failed")]

    states = dep.wait(finished, 600, "the DAG run to finish")
    tis = dep.query(
        "select map_index, state, hostname from task_instance where run_id = %s and task_id = %s",
        run_id,
        "enhance_shard",
    )
    assert states == ["success"], (tis, "\n".join(map(dep.log_tail, dep.procs)))
    # Hash shards: an empty one gets no task, so up to SHARDS mapped tasks.
    assert 2 <= len(tis) <= SHARDS and all(state == "success" for _, state, _ in tis), tis

    # Every input processed exactly once: one output per input, in its shard's destination.
    outputs = sorted(
        p.relative_to(dst).as_posix()
        for p in dst.rglob("*.jpg")
        if not p.name.startswith("_vance_")  # not a contact sheet
    )
    assert len(outputs) == len(inputs), outputs
    assert sorted(Path(o).name for o in outputs) == sorted(inputs.values())

    # ... and paid exactly once: one charge per input, by the bytes the job was made from.
    charges = sim.state.charges()
    assert not sim.state.double_charges()
    paid = Counter(sim.state.jobs[c.job_id].source_sha256 for c in charges)
    assert paid == Counter(dict.fromkeys(inputs, 1))

    # Spread over at least two workers (hosts).
    hosts = {hostname for _, _, hostname in tis}
    worker_names = {h.name for h in net.hosts}
    assert hosts <= worker_names and len(hosts) >= 2, hosts
    creates = addresses.creates()
    if net.isolated:  # and the jobs were created from at least two hosts' own addresses
        worker_addresses = {h.address for h in net.hosts}
        created_from = {client for client, status in creates if 200 <= status < 300}
        assert created_from <= worker_addresses and len(created_from) >= 2, (created_from, Counter(creates))

    # The account's cap: never more jobs in flight than it allows, and no creation refused for it.
    with sim.state.lock:
        now = sim.state.clock.now()
        intervals = [(j.created_at, j.finished_at or now) for j in sim.state.jobs.values()]
    assert max_overlap(intervals) <= sim.state.config.max_concurrent_images
    refused = [status for _, status in creates if status == 429]
    assert not refused
    print(
        f"hosts {sorted(hosts)}; jobs {len(sim.state.jobs)}; most in flight {max_overlap(intervals)}; "
        f"creates from {sorted({c for c, _ in creates})}"
    )
