"""What importing the VanceAI provider adds to parsing a DAG file.

Two DAG files with the same shape (one DAG, one task, a schedule, params):

- ``baseline``: imports only Airflow (``airflow.sdk`` and a ``BaseOperator`` subclass);
- ``provider``: imports ``VanceAIEnhanceOperator`` and ``VanceAIJobSensor`` from this package.

Each parse runs in a fresh Python process (so nothing is cached between runs), after Airflow and
``DagBag`` are imported - as in the DAG processor, where Airflow is already loaded. The process
measures the wall time of ``DagBag(dag_folder=<file>)`` and the growth of its RSS, and counts the
modules the parse imported. Runs alternate between the two files; the JSON holds the medians.

    .venv/bin/python bench/dag_parse.py [--runs 9]   # -> bench/results/dag_parse.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "dag_parse.json"

COMMON = """
from datetime import datetime

with DAG("bench_{name}", schedule="@daily", start_date=datetime(2025, 1, 1), catchup=False,
         params={{"source": "s3://bucket/in/", "destination": "s3://bucket/out/"}}):
    {task}
"""

DAGS = {
    "baseline": "from airflow.sdk import DAG, BaseOperator\n\n\n"
    "class Enhance(BaseOperator):\n"
    "    template_fields = ('source', 'destination')\n\n"
    "    def __init__(self, *, source, destination, **kwargs):\n"
    "        super().__init__(**kwargs)\n"
    "        self.source, self.destination = source, destination\n\n"
    "    def execute(self, context):\n"
    "        return None\n"
    + COMMON.format(
        name="baseline",
        task="Enhance(task_id='enhance', source='{{ params.source }}', "
        "destination='{{ params.destination }}')",
    ),
    "provider": "from airflow.sdk import DAG\n\n"
    "from vance_provider.operators.vanceai import VanceAIEnhanceOperator\n"
    "from vance_provider.sensors.vanceai import VanceAIJobSensor  # noqa: F401\n"
    + COMMON.format(
        name="provider",
        task="VanceAIEnhanceOperator(task_id='enhance', source='{{ params.source }}', "
        "destination='{{ params.destination }}', tool='upscale', config={'scale': 2}, "
        "deferrable=True)",
    ),
}

PROBE = r"""
import json, os, sys, time
import psutil
from airflow.dag_processing.dagbag import DagBag  # Airflow itself is loaded, as in the DAG processor

proc = psutil.Process()
before_modules = set(sys.modules)
rss0 = proc.memory_info().rss
t0 = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
elapsed = time.perf_counter() - t0
rss1 = proc.memory_info().rss
assert not bag.import_errors, bag.import_errors
assert len(bag.dags) == 1
new = set(sys.modules) - before_modules
print(json.dumps({"parse_s": elapsed, "rss_delta_mb": (rss1 - rss0) / 2**20, "new_modules": len(new),
                  "vance_modules": sorted(m for m in new if m.startswith("vance_provider")),
                  "heavy": sorted(m for m in ("pandas", "pyarrow", "httpx", "fsspec", "PIL") if m in new)}))
"""


def run_once(path: Path, env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vance-bench-") as tmp:
        home = Path(tmp) / "airflow"
        home.mkdir()
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
        files = {}
        for name, source in DAGS.items():
            files[name] = Path(tmp) / f"bench_{name}.py"
            files[name].write_text(source)
        samples: dict[str, list[dict]] = {name: [] for name in DAGS}
        run_once(files["baseline"], env)  # warm the OS file cache once
        started = time.time()
        for _ in range(args.runs):
            for name, path in files.items():
                samples[name].append(run_once(path, env))

    def median(name: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[name])

    result = {
        "what": "DagBag parse of one DAG file in a fresh process (Airflow already imported): "
        "a DAG importing only Airflow vs one importing the VanceAI provider",
        "runs": args.runs,
        "python": platform.python_version(),
        "airflow": _airflow_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "bench_seconds": round(time.time() - started, 1),
        "median": {
            name: {
                "parse_ms": round(median(name, "parse_s") * 1000, 1),
                "rss_delta_mb": round(median(name, "rss_delta_mb"), 2),
                "new_modules": int(median(name, "new_modules")),
            }
            for name in DAGS
        },
        "provider_modules_imported": samples["provider"][0]["vance_modules"],
        "heavy_modules_imported": {name: samples[name][0]["heavy"] for name in DAGS},
        "samples_ms": {name: [round(s["parse_s"] * 1000, 1) for s in samples[name]] for name in DAGS},
    }
    base, prov = result["median"]["baseline"], result["median"]["provider"]
    result["provider_adds"] = {
        "parse_ms": round(prov["parse_ms"] - base["parse_ms"], 1),
        "rss_mb": round(prov["rss_delta_mb"] - base["rss_delta_mb"], 2),
        "modules": prov["new_modules"] - base["new_modules"],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                "median": result["median"],
                "provider_adds": result["provider_adds"],
                "heavy_modules_imported": result["heavy_modules_imported"],
            },
            indent=2,
        )
    )
    return 0


def _airflow_version() -> str:
    from importlib.metadata import version

    return version("apache-airflow")


if __name__ == "__main__":
    sys.exit(main())
