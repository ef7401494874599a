#!/usr/bin/env python3
"""The benchmark peer: dlt loading backlinks/live pages into Postgres and
into Parquet files, timed.

Reads every `page-*.json` of --pages (whole API answers, as the suite
writes them), yields their items as plain dicts (what a dlt user writes for
a JSON API) and runs one dlt pipeline per destination: Postgres (when
--postgres is given) and the filesystem destination with Parquet files.
dlt flattens the nested fields itself (`ranked_keywords_info__*` columns,
child tables for `attributes` and `indirect_link_path`). Prints one JSON
object: dlt's version and, per destination, rows of the `backlinks` table
and seconds from the first page read to the load's end.

    .venv-bench-peer/bin/python scripts/bench-peer/peer.py \
        --pages DIR --parquet-dir DIR --work DIR [--postgres URL]
"""

import argparse
import glob
import json
import os
import sys
import time


def items(pages_dir):
    """Every backlink item of every page, in file order."""
    for path in sorted(glob.glob(os.path.join(pages_dir, "page-*.json"))):
        with open(path, "rb") as f:
            body = json.load(f)
        for task in body.get("tasks") or []:
            for result in task.get("result") or []:
                yield from result.get("items") or []


def with_password(url):
    """dlt insists on a password; servers with trust auth ignore it."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is not None or not parts.username:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:unused@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def count_rows(pipeline):
    """Rows of the `backlinks` table as loaded (read back, after the timing)."""
    if pipeline.destination.destination_name == "filesystem":
        import pyarrow.parquet as pq

        root = pipeline.destination_client().config.bucket_url.removeprefix("file://")
        files = glob.glob(os.path.join(root, pipeline.dataset_name, "backlinks", "*.parquet"))
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    with pipeline.sql_client() as client:
        with client.execute_query("SELECT count(*) FROM backlinks") as cursor:
            return cursor.fetchone()[0]


def run(dlt, name, destination, pages_dir, work, **run_args):
    resource = dlt.resource(
        items(pages_dir), name="backlinks", write_disposition="append"
    )
    pipeline = dlt.pipeline(
        pipeline_name=f"bench_peer_{name}",
        destination=destination,
        dataset_name="dlt_bench",
        pipelines_dir=os.path.join(work, "pipelines"),
    )
    start = time.perf_counter()
    pipeline.run(resource, **run_args)
    seconds = time.perf_counter() - start
    return {
        "rows": count_rows(pipeline),
        "seconds": seconds,
        "format": run_args.get("loader_file_format", "default"),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", required=True)
    parser.add_argument("--parquet-dir", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--postgres", help="connection string of a scratch database")
    parser.add_argument(
        "--postgres-format",
        default="csv",
        help="dlt loader_file_format for Postgres: csv (COPY, dlt's fastest) or insert_values (its default)",
    )
    args = parser.parse_args()
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
    import dlt

    out = {"dlt_version": dlt.__version__}
    out["parquet"] = run(
        dlt,
        "parquet",
        dlt.destinations.filesystem(bucket_url="file://" + os.path.abspath(args.parquet_dir)),
        args.pages,
        args.work,
        loader_file_format="parquet",
    )
    if args.postgres:
        out["postgres"] = run(
            dlt,
            "postgres",
            dlt.destinations.postgres(credentials=with_password(args.postgres)),
            args.pages,
            args.work,
            loader_file_format=args.postgres_format,
        )
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
