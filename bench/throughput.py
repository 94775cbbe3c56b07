#!/usr/bin/env python3
"""Drive N PostHog events through ``serve`` into the sandbox and report throughput.

    python3 dev.py bench --events 20000 --batch-size 1 --concurrency 32
    python3 dev.py bench --events 100000 --batch-size 100

Starts the sandbox and ``serve`` as subprocesses on loopback (fresh data dir), posts events
with ``concurrency`` parallel senders, then waits until the queue is drained. Prints events/s
ingested (until the last 200), events/s delivered (first post → queue empty) and Customer.io
requests per 1,000 events. Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.events import bodies_of, make_events, post_all
from bench.loopback import Sandbox, Serve, wait_until


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=1, help="events per webhook request")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--users", type=int, default=1_000)
    ap.add_argument("--sandbox-rps", type=float, default=None, help="sandbox 429 above this")
    ap.add_argument("--rate-limit-rps", type=float, default=100.0)
    args = ap.parse_args()

    bodies = bodies_of(make_events(args.events, args.users), args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        sb_args = ["--rate-limit-rps", str(args.sandbox_rps)] if args.sandbox_rps else []
        sandbox = Sandbox(tmpdir, *sb_args)
        serve = Serve(
            tmpdir,
            tmpdir / "data",
            sandbox,
            POSTHOG_CUSTOMERIO_RATE_LIMIT_RPS=str(args.rate_limit_rps),
            POSTHOG_CUSTOMERIO_BATCH_LINGER_SECS="0.2",
        )
        try:
            t0 = time.perf_counter()
            failures = asyncio.run(post_all([serve.url], bodies, args.concurrency))
            t_ingest = time.perf_counter() - t0
            wait_until(lambda: serve.status()["queue"]["depth"] == 0, timeout=3_600, interval=0.1)
            t_deliver = time.perf_counter() - t0
            stats = sandbox.stats()
        finally:
            serve.close()
            sandbox.close()
    requests = int(stats.get("requests_total", stats.get("requests", 0)))
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    print(
        f"events: {args.events}  batch size: {args.batch_size}  "
        f"concurrency: {args.concurrency}  users: {args.users}"
    )
    print(f"webhook failures:             {failures}")
    print(f"ingested:  {args.events / t_ingest:10.0f} events/s  ({t_ingest:.2f} s)")
    print(f"delivered: {args.events / t_deliver:10.0f} events/s  ({t_deliver:.2f} s)")
    print(f"Customer.io requests per 1,000 events: {1000 * requests / args.events:.2f}")
    print(f"sandbox stats: {stats}")


if __name__ == "__main__":
    main()
