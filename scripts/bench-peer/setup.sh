#!/usr/bin/env bash
# Creates the virtual environment of the benchmark peers at .venv-bench-peer
# in the repository root: dlt (with its Postgres and Parquet extras) and
# DuckDB (its Python package, which carries the JSON and Parquet support).
# Safe to run again: an environment that already imports both is kept, and
# one that lacks DuckDB only gets it added.
#
#   scripts/bench-peer/setup.sh
#
# The benchmark suite (`backlinks-bench peer`, `duckdb` / `all`) looks for
# .venv-bench-peer/bin/python (or BENCH_PEER_PYTHON) and says so when it is
# missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${BENCH_PEER_VENV:-.venv-bench-peer}"
DLT_VERSION="${DLT_VERSION:-1.31.0}"
DUCKDB_VERSION="${DUCKDB_VERSION:-2.0.0}"

versions() {
  "$VENV/bin/python" -c 'import dlt, duckdb; print(f"dlt {dlt.__version__}, duckdb {duckdb.__version__}")'
}

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import dlt, pyarrow, psycopg2, duckdb" 2>/dev/null; then
  echo "$VENV already has $(versions)"
  exit 0
fi
if ! [ -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
"$VENV/bin/python" -m pip install --quiet "dlt[postgres,parquet]==${DLT_VERSION}" "duckdb==${DUCKDB_VERSION}"
echo "$VENV ready: $(versions)"
