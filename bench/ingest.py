"""Webhook ingest rate alone, measured with wrk, with delivery running or paused.

    .venv/bin/python bench/ingest.py --secs 10 [--paused] [--batch 100] [--profile out.txt]

Delivery "paused" = the sandbox rejects credentials, so the connector keeps everything queued:
what is left is the webhook → parse → map → commit path, which is what the ingest targets of
docs/benchmarks.md are about. With delivery running, the sandbox (a stand-in for Customer.io,
validating every body against the OpenAPI document) shares the same two cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.compare import Profiler, cpu_secs, serve_env, write_bodies, wrk
from bench.events import make_events
from tests.e2e.harness import Sandbox, Serve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--secs", type=int, default=10)
    ap.add_argument("--batch", type=int, nargs="*", default=[1, 100])
    ap.add_argument("--users", type=int, default=1_000)
    ap.add_argument("--paused", action="store_true", help="sandbox rejects credentials")
    ap.add_argument("--profile", type=Path, help="py-spy top frames of the serve process")
    ap.add_argument("--database-url", help="PostgreSQL instead of SQLite")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="phcio-ingest-"))
    events = make_events(2_000, args.users, seed=11, start=10_000_000)
    sandbox = Sandbox(tmp)
    if args.paused:
        sandbox.faults(reject_credentials=True)
    serve = Serve(tmp, tmp / "data", sandbox, **serve_env(1000, args.database_url))
    try:
        pid = serve.proc.popen.pid if serve.proc else 0
        for batch in args.batch:
            bodies = tmp / f"bodies{batch}.jsonl"
            write_bodies(bodies, events, batch)
            wrk(serve.url, bodies, 2, 8)  # warm up
            spy = Profiler(pid, args.profile.with_suffix(f".{batch}.raw")) if args.profile else None
            cpu0 = cpu_secs(pid)
            r = wrk(serve.url, bodies, args.secs, 32 if batch == 1 else 8)
            cpu = cpu_secs(pid) - cpu0
            ok = r["requests"] - r["non2xx"]
            eps = batch * ok / (r["duration_us"] / 1e6)
            print(
                f"batch={batch:<4} {eps:>9,.0f} ev/s  p99 {r['p99_ms']:.1f} ms  "
                f"failures {r['non2xx'] + r['errors']:.0f}  "
                f"serve CPU {1e6 * cpu / max(1, batch * ok):.0f} µs/event"
            )
            if spy:
                for frame, share in spy.stop():
                    print(f"    {share:6.1%}  {frame}")
    finally:
        serve.close()
        sandbox.close()


if __name__ == "__main__":
    main()
