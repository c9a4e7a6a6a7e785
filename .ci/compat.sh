#!/usr/bin/env bash
# `make compat`: the Airflow suite on the lowest and highest supported Airflow, the Dagster suite
# on the lowest and highest supported Dagster, each in its own virtualenv built from the registry
# with uv (not from uv.lock: that is what `make test` runs). Usage: .ci/compat.sh [ENV ...]
# where ENV is one of airflow-lowest airflow-highest dagster-lowest dagster-highest (default: all).
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.tools/bin/uv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
ROOT=${COMPAT_DIR:-.compat}
# The supported ranges of pyproject.toml, as the two ends tested here.
# Airflow is meant to be installed with its constraints file; 3.0.x predates FastAPI 0.117 and
# Cadwyn 6 (its execution API rejects every request with them), so the lowest pins those two as
# its constraints did.
AIRFLOW_LOWEST=${AIRFLOW_LOWEST:-"apache-airflow==3.0.6 cadwyn<6 fastapi<0.117"}
AIRFLOW_HIGHEST=${AIRFLOW_HIGHEST:-"apache-airflow>=3.3,<3.4"}
DAGSTER_LOWEST=${DAGSTER_LOWEST:-"==1.11.*"}
DAGSTER_HIGHEST=${DAGSTER_HIGHEST:-">=1.13,<1.14"}
# The scheduler + triggerer end-to-end test stays on the locked version (`make test`).
AIRFLOW_TESTS=${AIRFLOW_TESTS:-"tests/airflow --ignore=tests/airflow/test_airflow_e2e.py"}
DAGSTER_TESTS=${DAGSTER_TESTS:-"tests/dagster"}

envs=("$@")
[ ${#envs[@]} -eq 0 ] && envs=(airflow-lowest airflow-highest dagster-lowest dagster-highest)

summary=()
for name in "${envs[@]}"; do
  case $name in
    airflow-lowest)  read -ra pins <<< "$AIRFLOW_LOWEST";  extras="airflow,openlineage,sim,s3,test"; tests=$AIRFLOW_TESTS ;;
    airflow-highest) read -ra pins <<< "$AIRFLOW_HIGHEST"; extras="airflow,openlineage,sim,s3,test"; tests=$AIRFLOW_TESTS ;;
    dagster-lowest)  pins=("dagster$DAGSTER_LOWEST" "dagster-webserver$DAGSTER_LOWEST" "dagster-dg-cli$DAGSTER_LOWEST")
                     extras="dagster,sim,s3,test"; tests=$DAGSTER_TESTS ;;
    dagster-highest) pins=("dagster$DAGSTER_HIGHEST" "dagster-webserver$DAGSTER_HIGHEST" "dagster-dg-cli$DAGSTER_HIGHEST")
                     extras="dagster,sim,s3,test"; tests=$DAGSTER_TESTS ;;
    *) echo "unknown compat environment: $name" >&2; exit 2 ;;
  esac
  venv="$ROOT/$name"
  start=$(date +%s)
  echo "=== compat $name: building $venv (${pins[*]})"
  rm -rf "$venv"
  UV_PYTHON_DOWNLOADS=never "$UV" venv --quiet --python "$PYTHON" "$venv"
  VIRTUAL_ENV="$venv" "$UV" pip install --quiet --python "$venv/bin/python" -e ".[$extras]" "${pins[@]}"
  built=$(date +%s)
  versions=$("$venv/bin/python" -c 'from importlib.metadata import version as v
names = ["apache-airflow", "apache-airflow-task-sdk", "apache-airflow-providers-openlineage", "dagster", "dagster-dg-cli"]
out = []
for n in names:
    try: out.append(f"{n}=={v(n)}")
    except Exception: pass
print(" ".join(out))')
  echo "=== compat $name: $versions (built in $((built - start))s); running $tests"
  # shellcheck disable=SC2086
  set +e
  env -u VIRTUAL_ENV PATH="$PWD/$venv/bin:$PATH" "$venv/bin/python" -m pytest $tests -q -p no:cacheprovider
  rc=$?
  set -e
  end=$(date +%s)
  summary+=("$name: $versions: rc=$rc, build $((built - start))s, tests $((end - built))s")
  if [ $rc -ne 0 ]; then
    printf '%s\n' "${summary[@]}"
    echo "compat $name failed" >&2
    exit $rc
  fi
done
echo "=== compat summary"
printf '%s\n' "${summary[@]}"
