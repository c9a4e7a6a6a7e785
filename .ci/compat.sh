#!/usr/bin/env bash
# `make compat`: the Airflow suite on the lowest and highest supported Airflow, the Dagster suite
# on the lowest and highest supported Dagster, each in its own virtualenv installed from a lock
# committed in .ci/compat/ (as Airflow installs with its constraints file), so a new upstream
# release cannot change what runs here. Every environment runs; one line each is printed at the
# end, and the script fails if any failed.
#
#   .ci/compat.sh [ENV ...]          run these environments (default: the four above)
#   .ci/compat.sh --lock [ENV ...]   re-resolve their locks from the registry (`make compat-lock`)
#
# ENV is the name of a .ci/compat/ENV.in file: airflow-lowest, airflow-highest, dagster-lowest,
# dagster-highest, and airflow-3.1, airflow-3.2 (the versions between, run by hand).
set -uo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.tools/bin/uv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
ROOT=${COMPAT_DIR:-.compat}
LOCKS=.ci/compat
# The Airflow suite includes the real deployments (scheduler, triggerer, api-server, dag-processor).
AIRFLOW_TESTS=${AIRFLOW_TESTS:-"tests/airflow"}
DAGSTER_TESTS=${DAGSTER_TESTS:-"tests/dagster"}

lock=0
if [ "${1:-}" = "--lock" ]; then lock=1; shift; fi
envs=("$@")
[ ${#envs[@]} -eq 0 ] && envs=(airflow-lowest airflow-highest dagster-lowest dagster-highest)

for name in "${envs[@]}"; do
  [ -f "$LOCKS/$name.in" ] || { echo "unknown compat environment: $name (no $LOCKS/$name.in)" >&2; exit 2; }
done

if [ $lock -eq 1 ]; then
  for name in "${envs[@]}"; do
    echo "=== compat lock $name"
    "$UV" pip compile --quiet --upgrade --universal --python-version 3.11 \
      "$LOCKS/$name.in" -o "$LOCKS/$name.txt" || exit 1
  done
  exit 0
fi

summary=()
failed=0
for name in "${envs[@]}"; do
  case $name in
    airflow-*) tests=$AIRFLOW_TESTS ;;
    dagster-*) tests=$DAGSTER_TESTS ;;
  esac
  venv="$ROOT/$name"
  start=$(date +%s)
  echo "=== compat $name: installing $LOCKS/$name.txt into $venv"
  rm -rf "$venv"
  if ! UV_PYTHON_DOWNLOADS=never "$UV" venv --quiet --python "$PYTHON" "$venv" ||
     ! VIRTUAL_ENV="$venv" "$UV" pip sync --quiet --python "$venv/bin/python" "$LOCKS/$name.txt"; then
    summary+=("$name: FAILED to install $LOCKS/$name.txt")
    failed=1
    continue
  fi
  built=$(date +%s)
  versions=$("$venv/bin/python" -c 'from importlib.metadata import version as v
names = ["apache-airflow", "apache-airflow-task-sdk", "apache-airflow-providers-common-compat", "dagster", "dagster-dg-cli"]
out = []
for n in names:
    try: out.append(f"{n}=={v(n)}")
    except Exception: pass
print(" ".join(out))')
  echo "=== compat $name: $versions (installed in $((built - start))s); running $tests"
  # shellcheck disable=SC2086
  env -u VIRTUAL_ENV PATH="$PWD/$venv/bin:$PATH" "$venv/bin/python" -m pytest $tests -q -p no:cacheprovider
  rc=$?
  end=$(date +%s)
  status=passed
  [ $rc -ne 0 ] && { status="FAILED (pytest exit $rc)"; failed=1; }
  summary+=("$name: $status; $versions; install $((built - start))s, tests $((end - built))s")
done
echo "=== compat summary"
printf '%s\n' "${summary[@]}"
exit $failed
