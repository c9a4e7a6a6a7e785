# Every target creates or updates the environment itself: on a fresh machine with
# Python 3.11 and pip, `make demo` and `make test` are all a newcomer types.
# The interpreter's real path: a pyenv shim's path would make uv rebuild .venv on every target.
PYTHON ?= $(shell "$$(command -v python3.11 || command -v python3)" -c 'import sys; print(sys.executable)')
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
# Installed packages get their bytecode now, as pip does: uv leaves it out by default, and where
# PYTHONDONTWRITEBYTECODE is set every process compiled Airflow, httpx, ... afresh at import
# (`import vance_provider.core, httpcore, anyio`: 0.32 -> 0.19 s; each task start pays it).
export UV_COMPILE_BYTECODE := 1
PYTEST_ARGS ?=

.PHONY: env demo test test-fast compat compat-lock lint bench soak docs clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

env: $(UV)
	$(UV) sync --frozen --all-extras --quiet

demo: env
	$(VENV)/bin/python -m vance_provider.demo

# The suite runs on $(TEST_WORKERS) pytest-xdist workers: most tests wait on loopback I/O (the
# simulator, S3, Airflow's and Dagster's subprocesses), so more workers than cores pay. loadgroup keeps
# the tests marked xdist_group(name) on one worker. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 4
PYTEST_XDIST = -n $(TEST_WORKERS) --dist loadgroup
# The test targets keep the bytecode of the project's modules and of pytest's rewritten test modules
# (in __pycache__, which git ignores) even where PYTHONDONTWRITEBYTECODE is set: every worker and every
# process a test starts compiled them afresh otherwise (collecting the suite: 9.4 -> 5.0 s of CPU).
test test-fast soak: export PYTHONDONTWRITEBYTECODE :=

test: env
	@$(VENV)/bin/python -m pytest $(PYTEST_XDIST) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose"; exit 1; fi; exit $$rc

# The inner loop: the tests not marked slow, i.e. the engine, client, simulator, stores and both faces' units;
# `make test` adds dag.test() and Dagster dataset runs, processes of their own, batches of hundreds of inputs.
test-fast: env
	$(VENV)/bin/python -m pytest $(PYTEST_XDIST) -m "not slow" $(PYTEST_ARGS)

# The Airflow suite on the lowest and highest supported Airflow, the Dagster suite on the lowest
# and highest supported Dagster: four virtualenvs in .compat/, each installed from its committed
# lock in .ci/compat/. `make compat COMPAT_ENVS="airflow-lowest"` runs one of them;
# `make compat-lock` re-resolves the locks from the registry (run it on purpose, then commit).
COMPAT_ENVS ?=
compat: $(UV)
	UV=$(UV) PYTHON=$(PYTHON) bash .ci/compat.sh $(COMPAT_ENVS)

compat-lock: $(UV)
	UV=$(UV) PYTHON=$(PYTHON) bash .ci/compat.sh --lock $(COMPAT_ENVS)

lint: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy vance_provider dagster_vance

bench: env
	$(VENV)/bin/python -m bench.run

docs: env
	$(VENV)/bin/mkdocs build --strict

soak: env
	VANCE_SOAK=1 $(VENV)/bin/python -m pytest tests/reliability/test_faults.py -s $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(TOOLS) .compat demo-output .pytest_cache .ruff_cache
