#!/usr/bin/env python3
"""Traffic that looks like a website's: a backlog drain and live single-event webhooks.

    bash bench/setup.sh                                        # once: .[bench] extra
    .venv/bin/python bench/traffic.py backlog --events 20000   # web mix, sandbox at 100 req/s
    .venv/bin/python bench/traffic.py live --rate 10 400 2000  # paced, one event per webhook
    .venv/bin/python bench/traffic.py live --mix identified --events 2000 --rate 0 --senders 8

Each run starts a fresh sandbox (``--sandbox-rps``, default 100: 429 + Retry-After above it)
and a fresh ``serve`` (SQLite) with the connector's default delivery settings, so what is
measured is what a new user gets.

backlog  ``--events`` are ingested as 100-event webhooks while the sandbox rejects the
         credentials (delivery paused), then the sandbox accepts: events/s until every event
         is stored in the sandbox, and Customer.io requests per 1,000 events.
live     the events are posted one per webhook, event ``i`` at ``t0 + i / rate`` (``--rate
         0``: as fast as ``--senders`` keep-alive connections go), for ``--secs`` or
         ``--events``. Requests per 1,000 events (every Track request the sandbox saw, from
         the first webhook until the queue is empty), and the latency of each event from the
         moment its webhook was written to the sandbox's receive time of the request that
         carried it (p50, p99, max), found by ``bench_seq`` in the sandbox's request log.

``--mix web`` (default): ``--anonymous-share`` of the events (default 0.7) from anonymous
visitors, about one in twenty of them signing up (``bench/events.py``); ``--mix identified``:
identified users only. Not part of the test run; nothing here is a pass/fail check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.compare import (
    Profiler,
    cpu_secs,
    delivered_times,
    expected_stored,
    percentile,
    run_connector,
    sandbox_requests,
)
from bench.events import make_events, make_web_events
from bench.loopback import Sandbox, Serve, wait_until
from posthog_customerio.settings import DeliverySettings

_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)


def default_delivery_env(rate_limit_rps: float) -> dict[str, str]:
    """The connector's own defaults (bench/loopback.py shortens the linger and backoffs)."""
    d = DeliverySettings()
    return {
        "POSTHOG_CUSTOMERIO_RATE_LIMIT_RPS": str(rate_limit_rps),
        "POSTHOG_CUSTOMERIO_BATCH_LINGER_SECS": str(d.batch_linger_secs),
        "POSTHOG_CUSTOMERIO_RETRY_INITIAL_BACKOFF_SECS": str(d.retry_initial_backoff_secs),
        "POSTHOG_CUSTOMERIO_RETRY_MAX_BACKOFF_SECS": str(d.retry_max_backoff_secs),
    }


def make(args: argparse.Namespace, count: int, start: int = 0) -> list[dict[str, Any]]:
    if args.mix == "identified":
        return make_events(count, args.users, seed=args.seed, start=start)
    return make_web_events(
        count, args.users, seed=args.seed, start=start, anonymous_share=args.anonymous_share
    )


# --- live: paced single-event webhooks over raw keep-alive connections ------------------------


async def post_paced(
    port: int, events: list[dict[str, Any]], rate: float, senders: int
) -> tuple[dict[int, float], float, int]:
    """POST each event alone to ``/webhook``; event ``i`` not before ``t0 + i / rate``.

    Hand-written HTTP/1.1 on ``senders`` keep-alive connections: an httpx client costs more
    CPU per request than the server does, and would measure itself at 2,000 requests/s.
    Returns bench_seq → when its request was written, the largest lag behind the schedule,
    and the number of answers other than 200.
    """
    requests = []
    for e in events:
        body = orjson.dumps(e)
        head = (
            f"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        requests.append((e["event"]["properties"]["bench_seq"], head.encode() + body))
    sent: dict[int, float] = {}
    lag = 0.0
    failures = 0
    position = 0
    t0 = time.time() + 0.2

    async def sender() -> None:
        nonlocal position, lag, failures
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while position < len(requests):
                i = position
                position += 1
                if rate > 0:
                    due = t0 + i / rate
                    delay = due - time.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    else:
                        lag = max(lag, -delay)
                seq, raw = requests[i]
                sent[seq] = time.time()
                writer.write(raw)
                head = await reader.readuntil(b"\r\n\r\n")
                match = _LENGTH.search(head)
                if match:
                    await reader.readexactly(int(match.group(1)))
                if head[9:12] != b"200":
                    failures += 1
        finally:
            writer.close()

    await asyncio.gather(*(sender() for _ in range(senders)))
    return sent, lag, failures


def live(args: argparse.Namespace, rate: float, tmp: Path) -> dict[str, Any]:
    count = args.events or max(100, int(rate * args.secs))
    events = make(args, count, start=1_000_000 * (1 + int(rate)))
    sb_args = ["--rate-limit-rps", str(args.sandbox_rps)] if args.sandbox_rps else []
    sandbox = Sandbox(tmp, *sb_args)
    env = default_delivery_env(args.rate_limit_rps)
    if args.linger is not None:
        env["POSTHOG_CUSTOMERIO_BATCH_LINGER_SECS"] = str(args.linger)
    serve = Serve(tmp, Path(tempfile.mkdtemp(dir=tmp)), sandbox, **env)
    load = os.getloadavg()[0]
    spy = None
    try:
        wait_until(lambda: sandbox.stats()["requests_total"] >= 1)  # the credentials check
        before = sandbox.stats()["requests_total"]
        first_seq = before
        if args.profile:
            spy = Profiler(serve.pid, args.profile.with_suffix(f".{rate:g}.raw"))
        cpu0 = cpu_secs(serve.pid)
        t0 = time.time()
        senders = args.senders or (8 if rate == 0 else max(4, min(64, int(rate / 50))))
        sent, lag, failures = asyncio.run(post_paced(serve.port, events, rate, senders))
        t_sent = time.time() - t0
        want = expected_stored(events, "sqlite")
        wait_until(lambda: sandbox.stats()["events_stored"] >= want, timeout=600, interval=0.05)
        serve.wait_drained(120)
        cpu = cpu_secs(serve.pid) - cpu0
        stats = sandbox.stats()
        got = delivered_times(sandbox)
        paths = Counter(
            r["path"].rsplit("/api", 1)[-1]
            for r in sandbox_requests(sandbox)
            if r["seq"] > first_seq
        )
    finally:
        hot = spy.stop() if spy else []
        serve.close()
        sandbox.close()
    lat = [got[i] - sent[i] for i in sent if i in got]
    requests = stats["requests_total"] - before
    return {
        "mode": "live",
        "mix": args.mix,
        "rate": rate,
        "events": count,
        "offered_eps": count / t_sent,
        "send_lag_max_s": lag,
        "webhook_failures": failures,
        "requests": requests,
        "requests_per_1k": 1000 * requests / count,
        "requests_by_path": dict(paths),
        "requests_by_status": stats["requests_by_status"],
        "events_per_request": count / max(1, requests),
        "p50": percentile(lat, 50),
        "p99": percentile(lat, 99),
        "max": max(lat) if lat else float("nan"),
        "latency_n": len(lat),
        "serve_cpu_us_per_event": 1e6 * cpu / count,
        "load_avg_1m_at_start": load,
        "hot": hot,
    }


def backlog(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    events = make(args, args.events or 20_000)
    scenario = {
        "sandbox_args": ["--rate-limit-rps", str(args.sandbox_rps)] if args.sandbox_rps else [],
        "connector_rps": args.rate_limit_rps,
    }
    load = os.getloadavg()[0]
    row = run_connector("sqlite", 1, None, events, scenario, tmp, args.profile)
    return {
        "mode": "backlog",
        "mix": args.mix,
        "events": len(events),
        "load_avg_1m_at_start": load,
        **row,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("mode", choices=["backlog", "live"])
    ap.add_argument("--mix", choices=["web", "identified"], default="web")
    ap.add_argument("--anonymous-share", type=float, default=0.7)
    ap.add_argument("--users", type=int, default=1_000, help="identified users")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--events", type=int, default=0, help="[backlog: 20000; live: rate x secs]")
    ap.add_argument("--rate", type=float, nargs="*", default=[10.0, 400.0, 2_000.0])
    ap.add_argument("--secs", type=float, default=20.0, help="live: how long each rate runs")
    ap.add_argument("--senders", type=int, default=0, help="live: connections [rate / 50]")
    ap.add_argument("--sandbox-rps", type=float, default=100.0, help="0 = no limit")
    ap.add_argument("--rate-limit-rps", type=float, default=100.0, help="the connector's")
    ap.add_argument("--linger", type=float, help="batch_linger_secs [the default]")
    ap.add_argument("--profile", type=Path, help="py-spy of serve (raw output file)")
    ap.add_argument("--json", type=Path, help="append each result as a JSON line")
    args = ap.parse_args()
    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}, "
        f"python {sys.version.split()[0]}",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        runs = [backlog(args, tmp)] if args.mode == "backlog" else []
        for rate in args.rate if args.mode == "live" else []:
            runs.append(live(args, rate, tmp))
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "hot"}), flush=True)
        for row in runs:
            if args.mode == "backlog":
                print(json.dumps({k: v for k, v in row.items() if k != "hot"}), flush=True)
            for frame, share in row.get("hot", []):
                print(f"    {share:6.1%}  {frame}")
            if args.json:
                with args.json.open("a") as f:
                    f.write(json.dumps(row, default=str) + "\n")


if __name__ == "__main__":
    main()
