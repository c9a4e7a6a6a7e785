"""The documentation builds without warnings, and its examples run against the simulator.

Python: a block whose first line is ``# not run: <why>`` is only compiled (it needs a real Airflow
DAG folder or similar); every other ``python`` block is executed in a fresh namespace, in a folder
that holds the demo photos, with ``VANCE_API_TOKEN`` and ``VANCE_BASE_URL`` set.

Shell: the ``bash`` blocks of a page run in order in one shell, as a reader would type them, in
an empty temporary folder that looks like a checkout (``.venv`` and ``examples/``), with
``VANCE_API_TOKEN`` and ``VANCE_BASE_URL`` set to a running simulator, an S3 server
(``AWS_ENDPOINT_URL``) holding ``s3://bucket/in/``, and temporary Airflow and Dagster homes. They
run verbatim but for these, each checked: the simulator's port 8765 becomes a free port; a
``vance-sim serve`` is started in the background (when the page does not) and waited for;
``VANCE_API_TOKEN=...`` (a placeholder) becomes the simulator's key; and the commands of
``NOT_RUN`` are checked another way (each says how).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import OPEN_KEY, WEB_TOKEN, image_bytes
from vance_provider.core.tools import FRIENDLY, OPEN_TOOLS, WEB_MODULES
from vance_provider.demo.data import make_dataset

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
SHELL = re.compile(r"```(?:bash|sh|shell)\n(.*?)```", re.S)
SHELL_PAGES = [*DOCS, ROOT / "README.md", ROOT / "examples" / "dagster_project" / "README.md"]
BIN = Path(sys.executable).parent
# Commands checked another way than by running them here: command prefix -> how.
NOT_RUN = {
    "make demo": "tests/examples/test_demo.py runs the demo",
    "make test": "it is the test suite this test is part of",
    "make env": "this test runs in the environment it creates",
    "pip install": "the extra it names is checked to exist in pyproject.toml",
    ".venv/bin/dagster dev": "a web UI that runs until stopped; `dagster definitions validate` loads the "
    "same file below, and tests/dagster/test_definitions.py materializes its assets",
}


def _blocks() -> list[tuple[str, int, str]]:
    found = []
    for page in [*DOCS, ROOT / "README.md"]:
        for i, code in enumerate(BLOCK.findall(page.read_text())):
            found.append((page.name, i, code))
    return found


BLOCKS = _blocks()


def test_mkdocs_builds_strict(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "WARNING" not in out.stderr
    assert (tmp_path / "site" / "index.html").exists()


def test_every_tool_is_documented() -> None:
    text = (ROOT / "docs" / "tools.md").read_text()
    for name in [*FRIENDLY, *OPEN_TOOLS, *WEB_MODULES]:
        assert f"`{name}`" in text, name


@pytest.mark.parametrize("page,index,code", BLOCKS, ids=[f"{p}#{i}" for p, i, _ in BLOCKS])
def test_python_examples(
    page: str, index: int, code: str, sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if code.startswith("# not run") or page == "README.md":
        compile(code, f"{page}#{index}", "exec")  # at least valid Python
        return
    make_dataset(tmp_path / "photos", video=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VANCE_API_TOKEN", OPEN_KEY)
    monkeypatch.setenv("VANCE_BASE_URL", sim.base_url)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    exec(compile(code, f"{page}#{index}", "exec"), {"__name__": "__docs__"})


# --- shell commands -------------------------------------------------------------------------------
def _shell_pages() -> list[tuple[str, str]]:
    found = []
    for page in SHELL_PAGES:
        blocks = SHELL.findall(page.read_text())
        if blocks:
            found.append((str(page.relative_to(ROOT)), "\n".join(blocks)))
    return found


SHELL_BLOCKS = _shell_pages()
WAIT_FOR_PORT = """
wait_for_port() {  # the background simulator answers (a reader would see its banner first)
  python - "$1" <<'PY'
import socket, sys, time
deadline = time.monotonic() + 60
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.5).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("the simulator did not start")
        time.sleep(0.05)
PY
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _commands(text: str) -> list[str]:
    """One entry per command, continuation lines joined."""
    commands, current = [], ""
    for line in text.splitlines():
        current += line
        if line.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            commands.append(current)
        current = ""
    return commands


def shell_script(text: str, port: int) -> tuple[str, list[str]]:
    """The page's commands as a script, and the commands checked another way."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    lines, skipped = ["set -eo pipefail", WAIT_FOR_PORT], []
    for command in _commands(text):
        stripped = command.strip()
        if stripped.startswith("pip install"):
            for extra in re.findall(r"vance-pipelines\[(\w+)\]", stripped):
                assert extra in extras, f"{stripped}: no extra {extra!r} in pyproject.toml"
        if any(stripped.startswith(prefix) for prefix in NOT_RUN):
            skipped.append(stripped)
            continue
        command = command.replace("8765", str(port)).replace(
            "VANCE_API_TOKEN=...", f"VANCE_API_TOKEN={OPEN_KEY}"
        )
        if re.match(r"\s*(\.venv/bin/)?vance-sim serve\b", command):
            body = command.split("#", 1)[0].rstrip().removesuffix("&").rstrip()
            lines += [f"{body} &", f"wait_for_port {port}"]
            continue
        lines.append(command)
    return "\n".join(lines) + "\n", skipped


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory, pristine_airflow_db: Path) -> dict[str, str]:
    """A migrated Airflow metadata database for the pages' ``airflow`` commands (a copy of the run's)."""
    home = tmp_path_factory.mktemp("airflow_home")
    shutil.copyfile(pristine_airflow_db, home / "airflow.db")
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
    }


def _marks(text: str) -> list[Any]:
    marks = [pytest.mark.slow]  # a shell and the processes its commands start
    if re.search(r"^\s*airflow ", text, re.M):
        marks.append(pytest.mark.airflow)
    if "dagster " in text:
        marks.append(pytest.mark.dagster)
    return marks


@pytest.mark.parametrize(
    "page,text",
    [pytest.param(p, t, marks=_marks(t), id=p) for p, t in SHELL_BLOCKS],
)
def test_shell_commands(
    page: str, text: str, sim: Any, s3_server: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    port = _free_port()
    script, skipped = shell_script(text, port)
    for command in skipped:
        assert any(command.startswith(prefix) for prefix in NOT_RUN)
    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(BIN.parent)  # commands written for a checkout: .venv/bin/...
    for folder in ("examples/dagster_project", "examples/notebooks", "dags"):  # the pages' recipes use them
        shutil.copytree(ROOT / folder, work / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (work / "my_photos").mkdir()
    for i in range(2):
        (work / "my_photos" / f"mine{i}.jpg").write_bytes(image_bytes(32, 24))
    if "photos/" in text and "vance_provider.demo.data" not in text:
        make_dataset(work / "photos", video=False)
    _s3_inputs(s3_server)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VANCE_", "AIRFLOW", "DAGSTER"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        VANCE_API_TOKEN=OPEN_KEY,
        VANCE_BASE_URL=sim.base_url,
        AWS_ENDPOINT_URL=s3_server,
        DAGSTER_HOME=str(tmp_path / "dagster_home"),
        NO_COLOR="1",
        COLUMNS="200",
    )
    (tmp_path / "dagster_home").mkdir()
    if re.search(r"^\s*airflow ", text, re.M):
        env.update(request.getfixturevalue("airflow_home"))
    out_file, err_file = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out_file, "w") as out, open(err_file, "w") as err:
        # Files, not pipes: a background server keeps a pipe open after the script has ended.
        proc = subprocess.Popen(
            ["bash", "-c", script],
            cwd=work,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,  # the page's background servers are in this group: ended below
        )
        try:
            proc.wait(timeout=240)
        finally:
            _end_group(proc)
    out_text, err_text = out_file.read_text(), err_file.read_text()
    assert proc.returncode == 0, (
        f"{page}:\n--- script\n{script}\n--- stdout\n{out_text[-4000:]}\n--- stderr\n{err_text[-4000:]}"
    )


def _end_group(proc: subprocess.Popen[Any]) -> None:
    """End the script and whatever it left running in the background: SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; are its background children?
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)  # give the rest of the group the same grace, then SIGKILL what is left


def _s3_inputs(endpoint: str) -> None:
    """``s3://bucket/in/`` with two images, for the pages' S3 examples."""
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
    if not fs.exists("bucket"):
        fs.mkdir("bucket")
    for i in range(2):
        fs.pipe(f"bucket/in/s{i}.jpg", image_bytes(24, 16))


def test_pages_using_the_simulator_say_how_to_start_it() -> None:
    """A page whose commands need the simulator says how to start it and which token to use."""
    for page, text in SHELL_BLOCKS:
        if re.search(r"^\s*vance ", text, re.M) and "VANCE_API_TOKEN=..." not in text:
            assert "vance-sim serve" in text and "export VANCE_API_TOKEN=" in text, page
        for token in re.findall(r"VANCE_API_TOKEN=(\S+)", text):
            assert token in (OPEN_KEY, WEB_TOKEN, "...") or token.startswith('"$'), (page, token)
