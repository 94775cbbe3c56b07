"""Reporting webhook acknowledgement latency under load (docs/benchmarks.md, docs/reporting.md).

Customer.io waits 4 s for an answer and holds back every later webhook after a timeout, so
what matters is the tail of the time to a 200. This starts the sandbox, ``serve`` with
reporting enabled and a capture sink standing in for PostHog, then sends correctly signed
reporting webhooks and reports p50/p99/max of the time to each 200, and whether all events
reached the sink. Two loads: ``--rate`` sends open-loop from Python (a fixed arrival rate, as
Customer.io sends, not a closed loop that slows down with the server; the Python client tops
out at a few hundred requests/s on a shared core), ``--wrk N`` runs wrk with N connections
(closed loop, pre-signed bodies, bench/wrk/reporting.lua): the server's own ceiling.

    .venv/bin/python -m bench.reporting_ack --rate 200 --secs 20
    .venv/bin/python -m bench.reporting_ack --wrk 32 --secs 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.loopback import Sandbox, Serve, free_port, wait_until
from posthog_customerio.mapping.ulid import CROCKFORD
from posthog_customerio.sources.reporting import sign

KEY = "bench-reporting-key"
PROJECT_KEY = "phc_bench"
METRICS = ("sent", "delivered", "opened", "clicked")


class Sink:
    """PostHog's ``/batch/``, counting distinct uuids."""

    def __init__(self) -> None:
        self.uuids: set[str] = set()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    async def batch(self, request: Request) -> JSONResponse:
        body = orjson.loads(await request.body())
        self.uuids.update(event["uuid"] for event in body["batch"])
        return JSONResponse({"status": "Ok"})

    def start(self) -> None:
        app = Starlette(routes=[Route("/batch/", self.batch, methods=["POST"])])
        config = uvicorn.Config(app, port=self.port, log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        threading.Thread(target=server.run, daemon=True).start()
        wait_until(lambda: server.started)


def ulid() -> str:
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    return "".join(CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def signed(i: int) -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps(
        {
            "event_id": ulid(),
            "object_type": "email",
            "metric": METRICS[i % len(METRICS)],
            "timestamp": int(time.time()),
            "data": {
                "identifiers": {"id": f"user-{i % 500}"},
                "delivery_id": f"d{i}",
                "campaign_id": 1,
                "subject": "Hello",
            },
        }
    )
    ts = str(int(time.time()))
    headers = {"X-CIO-Timestamp": ts, "X-CIO-Signature": sign(KEY, ts, body)}
    return body, headers


async def load(url: str, rate: float, secs: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    failures = 0
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:

        async def one(i: int) -> None:
            nonlocal failures
            body, headers = signed(i)
            started = time.perf_counter()
            r = await client.post("/customerio/reporting", content=body, headers=headers)
            latencies.append(time.perf_counter() - started)
            if r.status_code != 200:
                failures += 1

        tasks: list[asyncio.Task[None]] = []
        start = time.perf_counter()
        total = int(rate * secs)
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return latencies, failures


def run_wrk(root: Path, url: str, connections: int, secs: float) -> dict[str, float]:
    """wrk over pre-signed bodies (one per request, so none is a duplicate)."""
    path = root / "reporting.tsv"
    with path.open("w") as fh:
        for i in range(int(connections * secs * 400) + 1000):  # more than wrk can send
            body, headers = signed(i)
            ts, sig = headers["X-CIO-Timestamp"], headers["X-CIO-Signature"]
            fh.write(f"{ts}\t{sig}\t{body.decode()}\n")
    script = Path(__file__).resolve().parent / "wrk" / "reporting.lua"
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{secs:g}s",
            "-s",
            str(script),
            f"{url}/customerio/reporting",
        ],
        env={**os.environ, "BODIES": str(path)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("WRK_RESULT"))
    fields = dict(part.split("=") for part in line.split()[1:])
    return {k: float(v) for k, v in fields.items()}


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=300.0, help="webhooks per second")
    parser.add_argument("--secs", type=float, default=20.0)
    parser.add_argument("--wrk", type=int, default=0, help="wrk with this many connections")
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    args = parser.parse_args()
    sink = Sink()
    sink.start()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sandbox = Sandbox(root)
        env: dict[str, Any] = {
            "CUSTOMERIO_REPORTING_SIGNING_KEYS": KEY,
            "POSTHOG_CUSTOMERIO_POSTHOG_CAPTURE_URL": sink.url,
            "POSTHOG_CUSTOMERIO_POSTHOG_PROJECT_API_KEY": PROJECT_KEY,
        }
        if args.database_url:
            env["POSTHOG_CUSTOMERIO_DATABASE_URL"] = args.database_url
        serve = Serve(root, root / "data", sandbox, **env)
        try:
            if args.wrk:
                figures = run_wrk(root, serve.url, args.wrk, args.secs)
                sent = int(figures["requests"] - figures["non2xx"] - figures["errors"])
                wait_until(lambda: len(sink.uuids) >= sent, timeout=300)
                figures["captured"] = len(sink.uuids)
                figures["req_per_sec"] = round(figures["requests"] / args.secs)
                print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
                return
            latencies, failures = asyncio.run(load(serve.url, args.rate, args.secs))
            wait_until(lambda: len(sink.uuids) >= len(latencies) - failures, timeout=120)
        finally:
            serve.close()
            sandbox.close()
    ms = [v * 1000 for v in latencies]
    result = {
        "webhooks": len(ms),
        "rate_per_sec": args.rate,
        "non_200": failures,
        "captured": len(sink.uuids),
        "p50_ms": round(pct(ms, 0.5), 2),
        "p99_ms": round(pct(ms, 0.99), 2),
        "max_ms": round(max(ms), 2),
    }
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
