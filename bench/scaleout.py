#!/usr/bin/env python3
"""Throughput of 1, 2 and 4 ``serve`` processes on one PostgreSQL vs one on SQLite.

    .venv/bin/python bench/scaleout.py --events 20000 --processes 1 2 4
    .venv/bin/python bench/scaleout.py --admin-dsn postgresql://postgres@127.0.0.1/postgres

For each setup: a fresh sandbox and a fresh database (PostgreSQL: a new database created and
dropped here; SQLite: a temporary data dir), N ``serve`` processes, webhooks of
``--batch-size`` events posted round-robin over the N processes by ``--concurrency`` senders.
Reports events/s ingested (first post → last 200) and delivered (first post → every queue
empty). Rate limit set high so the connector, not the fair-use limit, is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.events import bodies_of, make_events, post_all
from bench.loopback import Sandbox, Serve, wait_until


async def admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def run_setup(
    label: str, processes: int, database_url: str | None, bodies: list[Any], args: Any
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        sandbox = Sandbox(tmpdir)
        env = {
            "POSTHOG_CUSTOMERIO_RATE_LIMIT_RPS": "1000",
            "POSTHOG_CUSTOMERIO_BATCH_LINGER_SECS": "0.2",
        }
        if database_url is not None:
            env["POSTHOG_CUSTOMERIO_DATABASE_URL"] = database_url
        servers: list[Serve] = []
        try:
            for n in range(processes):
                servers.append(Serve(tmpdir, tmpdir / f"data{n}", sandbox, **env))
            t0 = time.perf_counter()
            failures = asyncio.run(post_all([s.url for s in servers], bodies, args.concurrency))
            t_ingest = time.perf_counter() - t0
            wait_until(
                lambda: all(s.status()["queue"]["depth"] == 0 for s in servers),
                timeout=3_600,
                interval=0.1,
            )
            t_deliver = time.perf_counter() - t0
            stats = sandbox.stats()
        finally:
            for s in servers:
                s.close()
            sandbox.close()
    return {
        "setup": label,
        "failures": failures,
        "ingest_eps": args.events / t_ingest,
        "deliver_eps": args.events / t_deliver,
        "stored": stats.get("events_stored"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--users", type=int, default=2_000)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument(
        "--admin-dsn",
        default=os.environ.get(
            "POSTHOG_CUSTOMERIO_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = ap.parse_args()
    bodies = bodies_of(make_events(args.events, args.users), args.batch_size)
    results = [run_setup("sqlite x1", 1, None, bodies, args)]
    base, _, _ = args.admin_dsn.rpartition("/")
    for n in args.processes:
        db = f"phcio_bench_{os.getpid()}_{n}"
        asyncio.run(admin(args.admin_dsn, f'CREATE DATABASE "{db}"'))
        try:
            results.append(run_setup(f"postgres x{n}", n, f"{base}/{db}", bodies, args))
        finally:
            asyncio.run(admin(args.admin_dsn, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    print(
        f"events: {args.events}  batch size: {args.batch_size}  "
        f"concurrency: {args.concurrency}  users: {args.users}"
    )
    print(f"{'setup':<12} {'ingested ev/s':>14} {'delivered ev/s':>15} {'failures':>9}")
    for r in results:
        print(
            f"{r['setup']:<12} {r['ingest_eps']:>14.0f} {r['deliver_eps']:>15.0f} "
            f"{r['failures']:>9}"
        )


if __name__ == "__main__":
    main()
