#!/usr/bin/env python3
"""The DuckDB peer: runs one SQL statement (the `COPY (SELECT ...) TO
'....parquet'` that `backlinks-bench duckdb` writes) in an in-memory DuckDB
and times it.

Prints one JSON object: DuckDB's version, the threads it used, the rows the
COPY wrote, the seconds the statement took (from the call to the end of
the write; the interpreter's start and `import duckdb` are not counted) and
the CPU time the process used meanwhile (user + system, every thread).

    .venv-bench-peer/bin/python scripts/bench-peer/duckdb_peer.py \
        --sql FILE [--threads N]
"""

import argparse
import json
import sys
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sql", required=True, help="file holding the statement")
    parser.add_argument("--threads", type=int, help="DuckDB's threads (default: its own)")
    args = parser.parse_args()
    try:
        import duckdb
    except ImportError as e:
        print(f"duckdb is not installed ({e}): run scripts/bench-peer/setup.sh", file=sys.stderr)
        return 3
    with open(args.sql, encoding="utf-8") as f:
        statement = f.read()
    con = duckdb.connect(":memory:")
    if args.threads:
        con.execute(f"SET threads = {int(args.threads)}")
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    start = time.perf_counter()
    cpu_start = time.process_time()
    result = con.execute(statement).fetchall()
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    rows = result[0][0] if result and result[0] else None
    con.close()
    print(
        json.dumps(
            {
                "duckdb_version": duckdb.__version__,
                "threads": int(threads),
                "rows": rows,
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
