"""Webhook ingest rate alone, measured with wrk, with delivery running or paused.

    .venv/bin/python bench/ingest.py [--secs 10] [--paused] [--batch 1 100] [--connections N]
                                     [--profile out.txt] [--database-url postgresql://...]

Delivery "paused" = the sandbox rejects credentials, so the connector keeps everything queued:
what is left is the webhook → parse → map → commit path, which is what the ingest targets of
docs/benchmarks.md are about. With delivery running, the sandbox (a stand-in for Customer.io,
validating every body against the OpenAPI document) shares the same two cores.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.compare import Profiler, cpu_secs, serve_env, write_bodies, wrk
from bench.events import make_events
from bench.loopback import Sandbox, Serve


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) per thread id of ``pid``, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--secs", type=int, default=10)
    ap.add_argument("--batch", type=int, nargs="*", default=[1, 100])
    ap.add_argument("--users", type=int, default=1_000)
    ap.add_argument("--connections", type=int, help="wrk connections [32 single, 8 batched]")
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
        pid = serve.pid
        for batch in args.batch:
            bodies = tmp / f"bodies{batch}.jsonl"
            write_bodies(bodies, events, batch)
            wrk(serve.url, bodies, 2, 8)  # warm up
            spy = Profiler(pid, args.profile.with_suffix(f".{batch}.raw")) if args.profile else None
            cpu0, threads0, t0 = cpu_secs(pid), thread_cpu(pid), time.monotonic()
            r = wrk(serve.url, bodies, args.secs, args.connections or (32 if batch == 1 else 8))
            cpu = cpu_secs(pid) - cpu0
            wall = time.monotonic() - t0
            threads1 = thread_cpu(pid)
            busy = {tid: threads1[tid] - threads0.get(tid, 0.0) for tid in threads1}
            loop_share = busy.get(pid, 0.0) / wall
            other_share = sum(v for tid, v in busy.items() if tid != pid) / wall
            ok = r["requests"] - r["non2xx"]
            eps = batch * ok / (r["duration_us"] / 1e6)
            print(
                f"batch={batch:<4} {eps:>9,.0f} ev/s  p99 {r['p99_ms']:.1f} ms  "
                f"failures {r['non2xx'] + r['errors']:.0f}  "
                f"serve CPU {1e6 * cpu / max(1, batch * ok):.0f} µs/event "
                f"(event-loop thread {loop_share:.0%}, other threads {other_share:.0%} of a core)"
            )
            if spy:
                for frame, share in spy.stop():
                    print(f"    {share:6.1%}  {frame}")
    finally:
        serve.close()
        sandbox.close()


if __name__ == "__main__":
    main()
