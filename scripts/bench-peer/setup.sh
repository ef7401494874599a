#!/usr/bin/env bash
# Creates the virtual environment of the benchmark peer (dlt, with its
# Postgres and Parquet extras) at .venv-bench-peer in the repository root.
# Safe to run again: an environment that already imports dlt is kept.
#
#   scripts/bench-peer/setup.sh
#
# The benchmark suite (`backlinks-bench peer` / `all`) looks for
# .venv-bench-peer/bin/python (or BENCH_PEER_PYTHON) and says so when it is
# missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${BENCH_PEER_VENV:-.venv-bench-peer}"
DLT_VERSION="${DLT_VERSION:-1.31.0}"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import dlt, pyarrow, psycopg2" 2>/dev/null; then
  echo "$VENV already has dlt $("$VENV/bin/python" -c 'import dlt; print(dlt.__version__)')"
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "dlt[postgres,parquet]==${DLT_VERSION}"
echo "$VENV ready: dlt $("$VENV/bin/python" -c 'import dlt; print(dlt.__version__)')"
