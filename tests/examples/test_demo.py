"""``make demo`` end to end: the Dagster and Airflow steps, the report and pictures, nothing left running."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import av
import pandas as pd
import psutil
import pytest
from PIL import Image

from tests.conftest import OPEN_KEY, WEB_TOKEN
from vance_provider.core.reports.credits import COLUMNS

# One worker runs this module under pytest-xdist (`--dist loadgroup`): its tests share one run of
# the demo (the module fixture), which would otherwise run once on each worker given one of them.
pytestmark = [pytest.mark.slow, pytest.mark.airflow, pytest.mark.dagster, pytest.mark.xdist_group("demo")]

ROOT = Path(__file__).resolve().parents[2]
IMAGES = 12
REMOVE_BG = {"portrait_face", "face_small", "product_shot", "tiny_icon"}
CARTOONIZE = {"landscape_wide", "sunset", "pattern_a", "old_photo_gray"}


def _ours(proc: psutil.Process, marker: str, out: Path) -> bool:
    """A process the demo started: it carries the run's marker or names its output folder."""
    try:
        if proc.pid == os.getpid():
            return False
        if str(out) in " ".join(proc.cmdline()):
            return True
        return proc.environ().get("VANCE_DEMO_TEST_MARKER") == marker
    except (psutil.Error, OSError):
        return False


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("demo") / "demo-output"
    marker = uuid.uuid4().hex
    # The demo sets up its own Airflow and Dagster homes: none of the test session's settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "DAGSTER", "VANCE_"))}
    env.update({"VANCE_DEMO_OUTPUT": str(out), "VANCE_DEMO_TEST_MARKER": marker, "COLUMNS": "200"})
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vance_provider.demo"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Every process the demo starts, seen while it runs (they must all be gone once it exits).
    seen: dict[int, psutil.Process] = {}
    parent = psutil.Process(proc.pid)
    while proc.poll() is None and time.monotonic() - started < 280:
        try:
            for child in parent.children(recursive=True):
                seen.setdefault(child.pid, child)
        except psutil.Error:
            pass
        time.sleep(0.1)
    stdout, stderr = proc.communicate(timeout=20)
    return {
        "rc": proc.returncode,
        "stdout": stdout,
        "stderr": stderr,
        "out": out,
        "marker": marker,
        "seen": list(seen.values()),
        "elapsed": time.monotonic() - started,
    }


def test_demo_exits_cleanly(demo: dict) -> None:
    assert demo["rc"] == 0, demo["stdout"][-3000:] + demo["stderr"][-3000:]
    stdout = demo["stdout"]
    assert "using the core engine" not in stdout  # the Dagster and Airflow steps ran, not the fallback
    for label in ("Dagster: 13 outputs", "Airflow: 8 outputs", "nothing left running"):
        assert label in stdout, stdout
    assert re.search(r"deferred [1-9]\d* time", stdout), stdout  # the deferrable path was taken
    assert demo["elapsed"] < 120, f"the demo took {demo['elapsed']:.0f}s"


def test_report_matches_the_ledger(demo: dict) -> None:
    out: Path = demo["out"]
    names = ("credit_usage.csv", "credit_summary.csv", "contact_sheet.png")
    charts = ("credits_per_tool.png", "credits_over_time.png")
    for name in (*names, *charts):
        assert (out / name).is_file(), name
    for name in charts:
        with Image.open(out / name) as img:
            img.load()
            assert img.width > 300 and img.height > 200
    with Image.open(out / "contact_sheet.png") as img:  # pictures at their size, a video strip
        img.load()
        assert img.width == 1500 and img.height > 1200
    df = pd.read_csv(out / "credit_usage.csv")
    # One row per charge (no 0-credit "job" records), the same columns for both APIs, in time order.
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == IMAGES + 1 + len(REMOVE_BG) + len(CARTOONIZE)
    assert pd.to_datetime(df["timestamp"], utc=True, format="mixed").is_monotonic_increasing
    assert df["job_id"].notna().all() and df["batch"].notna().all()
    assert all(Path(p).parent == out / "input" for p in df["source"])
    assert all(Path(p).is_file() for p in df["output"])
    web = df[df["api"] == "web"]
    assert web["balance"].notna().all() and web["balance"].is_monotonic_decreasing
    assert set(zip(web["tool"], web["vendor_tool"], strict=True)) == {("upscale", "enlarge3")}
    summary = pd.read_csv(out / "credit_summary.csv")
    assert list(summary.iloc[-1]) == [
        "all",
        "all",
        4,
        len(df),
        len(df),
        df["credits"].sum(),
        0.0,
    ]  # nothing cached
    assert "Credits in the usage report" in demo["stdout"]
    match = re.search(
        r"usage report:\s*([\d.]+);\s*charged by the simulator's\s+ledger:\s*([\d.]+)", demo["stdout"]
    )
    assert match, demo["stdout"]
    reported, ledger = float(match.group(1)), float(match.group(2))
    assert df["credits"].sum() == pytest.approx(ledger) == pytest.approx(reported)
    # 12 images upscaled (web), the video (2 credits for 2 s) and 4 + 4 images on the Open API.
    assert ledger == pytest.approx(IMAGES + 2 + len(REMOVE_BG) + len(CARTOONIZE))
    per_tool = df.groupby(["api", "tool"])["credits"].sum().to_dict()
    assert per_tool[("web", "upscale")] == IMAGES
    assert per_tool[("open", "remove_bg")] == len(REMOVE_BG)
    assert per_tool[("open", "cartoonize")] == len(CARTOONIZE)
    assert per_tool[("open", "video_upscale")] == 2
    assert "double charges: 0" in demo["stdout"]


def _decoded(path: Path) -> Image.Image:
    img = Image.open(path)
    img.load()
    return img


def test_dagster_outputs_decode(demo: dict) -> None:
    out: Path = demo["out"]
    inputs = {p.stem: p for p in (out / "input").iterdir()}
    images = sorted(p for p in (out / "dagster_images_x2").iterdir() if not p.name.startswith("_"))
    assert len(images) == IMAGES
    for path in images:
        with Image.open(inputs[path.stem]) as src:
            assert _decoded(path).size == (src.width * 2, src.height * 2), path.name
    assert (out / "dagster_images_x2" / "_vance_manifest.json").is_file()
    with av.open(str(out / "dagster_video_x2" / "clip.mp4")) as container:
        frame = next(container.decode(video=0))
        assert (frame.width, frame.height) == (192, 128)


def test_airflow_outputs_decode(demo: dict) -> None:
    out: Path = demo["out"]
    cut = {p.stem: _decoded(p) for p in (out / "airflow_remove_bg").glob("*.png")}
    assert set(cut) == REMOVE_BG
    for name, img in cut.items():
        assert img.mode == "RGBA", name
        alpha = img.getchannel("A").getextrema()
        assert alpha == (0, 255), name  # a cut-out: both transparent and opaque pixels
    cartoons = {
        p.stem: _decoded(p) for p in (out / "airflow_cartoonize").iterdir() if not p.name.startswith("_")
    }
    assert set(cartoons) == CARTOONIZE
    for folder in ("airflow_remove_bg", "airflow_cartoonize"):
        assert (out / folder / "_vance_manifest.json").is_file()


def test_no_token_anywhere(demo: dict) -> None:
    out: Path = demo["out"]
    for secret in (WEB_TOKEN, OPEN_KEY):
        assert secret not in demo["stdout"] and secret not in demo["stderr"]
        leaked = [p for p in out.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
        assert leaked == []
    assert (out / "logs" / "airflow.log").is_file() and (out / "logs" / "dagster.log").is_file()


def test_nothing_left_running(demo: dict) -> None:
    assert len(demo["seen"]) >= 2  # the Dagster and the Airflow step ran as child processes
    deadline = time.monotonic() + 5
    while True:
        left = [p for p in demo["seen"] if _alive(p)]
        left += [p for p in psutil.process_iter() if _alive(p) and _ours(p, demo["marker"], demo["out"])]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert left == [], [(p.pid, p.cmdline()) for p in left if _alive(p)]
