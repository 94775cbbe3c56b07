#!/usr/bin/env python3
"""posthog-customerio against the alternatives, on one event stream, in one run.

    bash bench/setup.sh                      # once: .[bench] extra, wrk
    .venv/bin/python bench/compare.py        # ~10 min on 2 cores; writes docs/benchmarks.md

Systems (each against a fresh sandbox, ``posthog-customerio sandbox``, on loopback):
  sqlite      ``serve`` with the embedded SQLite queue
  postgres x2 two ``serve`` processes on one PostgreSQL database (``--admin-dsn``)
  app         the PostHog app's approach: PUT + POST per event (bench/alternatives.py app)
  official    Customer.io's Python client, identify + track per event (... official)

Scenarios: the sandbox unthrottled, then answering 429 + Retry-After above 100 requests/s.

Measured per system and scenario:
  delivered ev/s   N events available at t0 until every one is stored or given up. For the
                   connector the N events are first ingested into its queue while the sandbox
                   rejects credentials (delivery paused), then the sandbox accepts: a backlog
                   drain, as the alternatives start with the N events in memory.
  requests/1k ev   every Track request the sandbox saw (429s included) per 1,000 events
  lost             events that should be stored as events in Customer.io and are not (the
                   connector sends ``$identify`` as an identify only; the others as an event too)
  p50/p99 latency  1,000 events/s offered for ``--latency-secs``: offered time → the sandbox's
                   receive time of the request carrying it (``bench_seq`` in the event data).
                   The connector gets them as webhooks of 10 events every 10 ms.
  peak RSS         VmHWM of each system under test (every ``serve`` process summed)
  CPU µs/event     process CPU time / events (connector: ingest + delivery)
And for the connector alone: webhook ingest rates measured with wrk (single-event and
100-event bodies), a py-spy profile (top hot spots) and RSS with a 1,000,000-operation backlog.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.events import bodies_of, make_events, make_web_events, post_all
from bench.loopback import API_KEY, SITE_ID, Sandbox, Serve, wait_until

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
LUA = ROOT / "bench" / "wrk" / "webhook.lua"
EVENT_ACTIONS = {"event", "page", "screen"}


# --- small helpers ---------------------------------------------------------------------------


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_secs(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def sandbox_requests(sandbox: Sandbox) -> Iterator[dict[str, Any]]:
    since = 0
    while True:
        rows = sandbox.http.get("/_sandbox/requests", params={"since": since, "limit": 10_000})
        page = rows.json()
        if not page:
            return
        yield from page
        since = page[-1]["seq"]


def delivered_times(sandbox: Sandbox) -> dict[int, float]:
    """bench_seq → the sandbox's receive time of the first accepted request carrying it."""
    seen: dict[int, float] = {}
    for req in sandbox_requests(sandbox):
        body = req.get("body")
        if req["status"] not in (200, 207) or not isinstance(body, dict):
            continue
        if req["path"].endswith("/api/v2/batch"):
            failed = set()
            if req["status"] == 207:
                failed = {
                    e.get("batch_index") for e in (req.get("response") or {}).get("errors", [])
                }
            for index, item in enumerate(body.get("batch", [])):
                if index in failed or item.get("action") not in EVENT_ACTIONS:
                    continue
                seq = (item.get("attributes") or {}).get("bench_seq")
                if isinstance(seq, int):
                    seen.setdefault(seq, req["time"])
        elif req["path"].endswith("/events"):
            seq = (body.get("data") or {}).get("bench_seq")
            if isinstance(seq, int):
                seen.setdefault(seq, req["time"])
    return seen


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def expected_stored(events: list[dict[str, Any]], system: str) -> int:
    if system in ("app", "official"):
        return len(events)
    return sum(1 for e in events if e["event"]["event"] != "$identify")


@contextlib.contextmanager
def postgres_db(admin_dsn: str) -> Iterator[str]:
    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    db = f"phcio_compare_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
    asyncio.run(run(f'CREATE DATABASE "{db}"'))
    try:
        yield f"{admin_dsn.rpartition('/')[0]}/{db}"
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))


def serve_env(rps: float, database_url: str | None) -> dict[str, str]:
    env = {
        "POSTHOG_CUSTOMERIO_RATE_LIMIT_RPS": str(rps),
        "POSTHOG_CUSTOMERIO_BATCH_LINGER_SECS": "0.2",
        "POSTHOG_CUSTOMERIO_CREDENTIALS_RECHECK_SECS": "0.2",
        "POSTHOG_CUSTOMERIO_RETRY_MAX_BACKOFF_SECS": "5",
    }
    if database_url:
        env["POSTHOG_CUSTOMERIO_DATABASE_URL"] = database_url
    return env


class Profiler:
    """py-spy record on a pid until stopped; top self-time frames from its raw output."""

    IDLE = ("Condition.wait", "Event.wait", "_Checkpointer", "SimpleQueue.get", "select (")

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        spy = Path(PY).with_name("py-spy")
        self.proc = subprocess.Popen(
            [str(spy), "record", "-p", str(pid), "-r", "100", "--format", "raw", "-o", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> list[tuple[str, float]]:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        counts: Counter[str] = Counter()
        total = 0
        if not self.out.exists():
            return []
        for line in self.out.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit() or any(s in stack for s in self.IDLE):
                continue
            total += int(n)
            counts[stack.split(";")[-1]] += int(n)
        return [(frame, n / total) for frame, n in counts.most_common(8)] if total else []


# --- the connector ------------------------------------------------------------------------


def run_connector(
    label: str,
    processes: int,
    database_url: str | None,
    events: list[dict[str, Any]],
    scenario: dict[str, Any],
    tmp: Path,
    profile: Path | None = None,
) -> dict[str, Any]:
    sandbox = Sandbox(tmp, *scenario["sandbox_args"])
    sandbox.faults(reject_credentials=True)  # delivery paused while the backlog is ingested
    servers: list[Serve] = []
    try:
        for _ in range(processes):
            env = serve_env(scenario["connector_rps"], database_url)
            servers.append(Serve(tmp, Path(tempfile.mkdtemp(dir=tmp)), sandbox, **env))
        pids = [s.pid for s in servers]
        cpu0 = sum(cpu_secs(p) for p in pids)
        spy = Profiler(pids[0], profile) if profile else None
        t_fill = time.time()
        failures = asyncio.run(post_all([s.url for s in servers], bodies_of(events, 100), 4))
        t_fill = time.time() - t_fill
        before = sandbox.stats()["requests_total"]
        sandbox_cpu0 = cpu_secs(sandbox.pid)
        serve_cpu0 = sum(cpu_secs(p) for p in pids)
        t0 = time.time()
        sandbox.faults(reject_credentials=False)
        want = expected_stored(events, label)
        wait_until(lambda: sandbox.stats()["events_stored"] >= want, timeout=600, interval=0.05)
        t1 = time.time()
        sandbox_cpu = cpu_secs(sandbox.pid) - sandbox_cpu0
        serve_cpu = sum(cpu_secs(p) for p in pids) - serve_cpu0
        for s in servers:
            s.wait_drained(120)
        stats = sandbox.stats()
        hot = spy.stop() if spy else []
        cpu = sum(cpu_secs(p) for p in pids) - cpu0
        rss = sum(vm_hwm_mb(p) for p in pids)
    finally:
        for s in servers:
            s.close()
        sandbox.close()
    return {
        "system": label,
        "delivered_eps": stats["events_stored"] / (t1 - t0),
        "requests_per_1k": 1000 * (stats["requests_total"] - before) / len(events),
        "lost": want - stats["events_stored"],
        "rss_mb": rss,
        "cpu_us_per_event": 1e6 * cpu / len(events),
        "ingest_eps_batched_httpx": len(events) / t_fill,
        "webhook_failures": failures,
        "hot": hot,
        "status": stats["requests_by_status"],
        # during the drain: CPU seconds per wall second (2.0 = both cores busy)
        "drain_cpu_sandbox": sandbox_cpu / (t1 - t0),
        "drain_cpu_connector": serve_cpu / (t1 - t0),
    }


def connector_latency(
    processes: int,
    database_url: str | None,
    events: list[dict[str, Any]],
    scenario: dict[str, Any],
    rate: float,
    tmp: Path,
    label: str,
) -> dict[str, Any]:
    sandbox = Sandbox(tmp, *scenario["sandbox_args"])
    servers: list[Serve] = []
    try:
        for _ in range(processes):
            env = serve_env(scenario["connector_rps"], database_url)
            servers.append(Serve(tmp, Path(tempfile.mkdtemp(dir=tmp)), sandbox, **env))
        sent = asyncio.run(paced_webhooks([s.url for s in servers], events, rate))
        want = expected_stored(events, label)
        with contextlib.suppress(AssertionError):
            wait_until(lambda: sandbox.stats()["events_stored"] >= want, timeout=300)
        got = delivered_times(sandbox)
    finally:
        for s in servers:
            s.close()
        sandbox.close()
    lat = [got[i] - sent[i] for i in sent if i in got]
    return {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "n": len(lat)}


async def paced_webhooks(
    urls: list[str], events: list[dict[str, Any]], rate: float
) -> dict[int, float]:
    """Offer ``rate`` events/s as a webhook of the events due every 10 ms."""
    sent: dict[int, float] = {}
    tick = 0.01
    per_tick = max(1, round(rate * tick))
    async with httpx.AsyncClient(timeout=60) as client:
        tasks = []
        t0 = time.time()
        for n, start in enumerate(range(0, len(events), per_tick)):
            delay = t0 + n * tick - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            chunk = events[start : start + per_tick]
            now = time.time()
            for e in chunk:
                sent[e["event"]["properties"]["bench_seq"]] = now
            url = f"{urls[n % len(urls)]}/webhook"
            tasks.append(asyncio.create_task(client.post(url, json={"batch": chunk})))
        await asyncio.gather(*tasks)
    return sent


# --- the alternatives -----------------------------------------------------------------------


def run_alternative(
    which: str,
    events_file: Path,
    n_events: int,
    scenario: dict[str, Any],
    tmp: Path,
    rate: float = 0.0,
) -> dict[str, Any]:
    sandbox = Sandbox(tmp, *scenario["sandbox_args"])
    out = tmp / f"{which}.json"
    try:
        argv = [PY, str(ROOT / "bench" / "alternatives.py"), which, "--events", str(events_file)]
        argv += ["--track-url", sandbox.url, "--site-id", SITE_ID, "--api-key", API_KEY]
        argv += ["--rate", str(rate), "--out", str(out)]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        result = orjson.loads(out.read_bytes())
        stats = sandbox.stats()
        got = delivered_times(sandbox) if rate > 0 else {}
    finally:
        sandbox.close()
    offered = result["offered"]
    lat = [got[i] - offered[i] for i in got if i < len(offered)]
    return {
        "system": which,
        "delivered_eps": stats["events_stored"] / (result["t1"] - result["t0"]),
        "requests_per_1k": 1000 * stats["requests_total"] / n_events,
        "lost": n_events - stats["events_stored"],
        "rss_mb": result["rss_peak_mb"],
        "cpu_us_per_event": 1e6 * result["cpu_secs"] / n_events,
        "status": stats["requests_by_status"],
        "p50": percentile(lat, 50),
        "p99": percentile(lat, 99),
        "events": n_events,
        "elapsed": result["t1"] - result["t0"],
    }


# --- ingest with wrk, backlog RSS ------------------------------------------------------------


def wrk(url: str, bodies_file: Path, secs: int, connections: int) -> dict[str, float]:
    salt = str(time.time_ns() // 1000 % 2**32)  # a fresh uuid space per run: no duplicates
    env = dict(os.environ, BODIES=str(bodies_file), SALT=salt)
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{secs}s", "-s", str(LUA), f"{url}/webhook"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("WRK_RESULT"))
    fields = dict(kv.split("=") for kv in line.split()[1:])
    return {k: float(v) for k, v in fields.items()}


def write_bodies(path: Path, events: list[dict[str, Any]], batch: int) -> None:
    templated = []
    for e in events:
        e = json.loads(json.dumps(e))
        e["event"]["uuid"] = "@@UUID@@"
        templated.append(e)
    with path.open("wb") as f:
        for body in bodies_of(templated, batch):
            f.write(orjson.dumps(body) + b"\n")


def ingest_rates(tmp: Path, users: int, secs: int, *, paused: bool) -> dict[str, Any]:
    """wrk against one fresh ``serve``: single-event then 100-event bodies.

    ``paused``: the sandbox rejects the credentials, so delivery waits and what is measured
    is the ingest path alone (parse, map, commit); else delivery (and the sandbox validating
    every request) runs on the same two cores at the same time.
    """
    events = make_events(2_000, users, seed=11, start=10_000_000)
    single, batched = tmp / "bodies1.jsonl", tmp / "bodies100.jsonl"
    write_bodies(single, events, 1)
    write_bodies(batched, events, 100)
    sandbox = Sandbox(tmp)
    if paused:
        sandbox.faults(reject_credentials=True)
    serve = Serve(tmp, tmp / f"data-ingest-{int(paused)}", sandbox, **serve_env(1000, None))
    pid = serve.pid
    try:
        out: dict[str, Any] = {"healthz_rps": wrk_get(f"{serve.url}/healthz", 5, 32)}
        failures = 0.0
        wrk(serve.url, single, 2, 32)  # warm-up: the first seconds after a start are slowest
        # The usual connection counts, then twice as many: the second is the saturated rate.
        for key, bodies, per_body, connections in (
            ("single", single, 1, 32),
            ("single_c64", single, 1, 64),
            ("batched", batched, 100, 8),
            ("batched_c16", batched, 100, 16),
        ):
            cpu0 = cpu_secs(pid)
            r = wrk(serve.url, bodies, secs, connections)
            cpu = cpu_secs(pid) - cpu0
            ok = per_body * (r["requests"] - r["non2xx"])
            out[f"{key}_eps"] = ok / (r["duration_us"] / 1e6)
            out[f"{key}_p99_ms"] = r["p99_ms"]
            out[f"{key}_cpu_us"] = 1e6 * cpu / max(1, ok)
            failures += r["non2xx"] + r["errors"]
        if not paused:
            serve.wait_drained(300)
    finally:
        serve.close()
        sandbox.close()
    out["failures"] = failures
    return out


def wrk_get(url: str, secs: int, connections: int) -> float:
    """Requests/s of a plain GET: how fast this machine serves HTTP at all (a yardstick)."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{secs}s", url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("Requests/sec:"))
    return float(line.split()[1])


def backlog_rss(tmp: Path, users: int, target_ops: int) -> dict[str, Any]:
    events = make_events(2_000, users, seed=13, start=20_000_000)
    bodies = tmp / "backlog.jsonl"
    write_bodies(bodies, events, 500)
    sandbox = Sandbox(tmp)
    sandbox.faults(reject_credentials=True)  # nothing leaves: everything waits in the queue
    serve = Serve(tmp, tmp / "data-backlog", sandbox, **serve_env(100, None))
    try:
        depth = 0
        started = time.time()
        while depth < target_ops and time.time() - started < 900:
            wrk(serve.url, bodies, 10, 4)
            time.sleep(1.1)
            depth = int(serve.status()["queue"]["depth"])
        pid = serve.pid
        rss_now = psutil.Process(pid).memory_info().rss / 2**20
        return {"depth": depth, "rss_mb": rss_now, "hwm_mb": vm_hwm_mb(pid)}
    finally:
        serve.close()
        sandbox.close()


# --- report ------------------------------------------------------------------------------


def fmt(v: float, digits: int = 0) -> str:
    if v != v:  # nan
        return "–"
    return f"{v:,.{digits}f}"


def write_report(results: dict[str, Any], args: argparse.Namespace, png: Path) -> str:
    lines = []
    for scen in results["scenarios"]:
        lines.append(f"\n**{scen['title']}**\n")
        lines.append(
            "| system | events | delivered ev/s | Customer.io requests / 1,000 events | lost "
            "| p50 latency | p99 latency | peak RSS | CPU µs / event |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in scen["rows"]:
            lines.append(
                f"| {r['system']} | {r['events']:,} | {fmt(r['delivered_eps'])} | "
                f"{fmt(r['requests_per_1k'], 1)} | {r['lost']:,} | {fmt(r['p50'], 3)} s | "
                f"{fmt(r['p99'], 3)} s | {fmt(r['rss_mb'])} MB | {fmt(r['cpu_us_per_event'])} |"
            )
    return "\n".join(lines)


def plot(results: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    systems = [r["system"] for r in results["scenarios"][0]["rows"]]
    width = 0.38
    colors = ["#1f77b4", "#d62728"]
    metrics = [
        ("delivered_eps", "events/s delivered (log)", True),
        ("requests_per_1k", "Customer.io requests per 1,000 events (log)", True),
        ("p99", "p99 ingest→delivered at 1,000 ev/s offered, s (log)", True),
    ]
    for ax, (key, title, log) in zip(axes, metrics, strict=True):
        for k, scen in enumerate(results["scenarios"]):
            vals = [max(float(r[key]), 1e-3) if r[key] == r[key] else 0 for r in scen["rows"]]
            xs = [i + (k - 0.5) * width for i in range(len(systems))]
            bars = ax.bar(xs, vals, width, label=scen["short"], color=colors[k])
            for b, v in zip(bars, vals, strict=True):
                if v:
                    ax.annotate(
                        f"{v:,.0f}" if v >= 10 else f"{v:.2g}",
                        (b.get_x() + width / 2, v),
                        ha="center",
                        va="bottom",
                        fontsize=7,
                    )
        ax.set_xticks(range(len(systems)), systems, fontsize=8)
        ax.set_title(title, fontsize=9)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.suptitle(
        f"posthog-customerio vs the alternatives — {os.cpu_count()} cores, "
        f"everything on one machine (bench/compare.py)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(png, dpi=110)


# --- main ----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=20_000, help="events per throughput run")
    ap.add_argument(
        "--alt-events",
        type=int,
        default=4_000,
        help="events for the app / official client, unthrottled (they are slower)",
    )
    ap.add_argument(
        "--alt-events-limited",
        type=int,
        default=1_000,
        help="events for the app / official client under the 100 requests/s limit",
    )
    ap.add_argument("--users", type=int, default=1_000)
    ap.add_argument(
        "--mix",
        choices=["identified", "web"],
        default="identified",
        help="identified users only, or web traffic (bench/events.py make_web_events)",
    )
    ap.add_argument("--anonymous-share", type=float, default=0.7, help="of the web mix")
    ap.add_argument("--latency-rate", type=float, default=1_000.0)
    ap.add_argument("--latency-secs", type=float, default=10.0)
    ap.add_argument("--ingest-secs", type=int, default=10)
    ap.add_argument("--backlog-ops", type=int, default=1_000_000, help="0 = skip")
    ap.add_argument(
        "--admin-dsn",
        default=os.environ.get(
            "POSTHOG_CUSTOMERIO_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    ap.add_argument("--systems", nargs="*", default=["sqlite", "postgres x2", "app", "official"])
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "compare.json")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "images" / "benchmarks.png")
    args = ap.parse_args()

    def make(count: int, seed: int = 7, start: int = 0) -> list[dict[str, Any]]:
        if args.mix == "web":
            share = args.anonymous_share
            return make_web_events(count, args.users, seed, start, anonymous_share=share)
        return make_events(count, args.users, seed, start)

    events = make(args.events)
    alt_counts = [args.alt_events, args.alt_events_limited]
    n_lat = int(args.latency_rate * args.latency_secs)
    lat_events = make(n_lat, seed=9, start=5_000_000)
    for e in lat_events:  # bench_seq from 0 for the latency runs
        e["event"]["properties"]["bench_seq"] -= 5_000_000
    scenarios = [
        {
            "title": "Sandbox unthrottled (connector rate_limit_rps = 1000)",
            "short": "unthrottled",
            "sandbox_args": [],
            "connector_rps": 1000.0,
        },
        {
            "title": "Sandbox limited to 100 requests/s, 429 + Retry-After: 1 "
            "(connector rate_limit_rps = 100)",
            "short": "100 req/s limit",
            "sandbox_args": ["--rate-limit-rps", "100"],
            "connector_rps": 100.0,
        },
    ]
    results: dict[str, Any] = {
        "machine": {
            "cores": os.cpu_count(),
            "cpu": next(
                (
                    ln.split(":", 1)[1].strip()
                    for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")
                ),
                platform.processor(),
            ),
            "python": sys.version.split()[0],
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        },
        "args": {k: str(v) for k, v in vars(args).items()},
        "scenarios": [],
    }
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        files = {}
        for name, evs in (("alt", events[: max(alt_counts)]), ("lat", lat_events)):
            files[name] = tmp / f"{name}.jsonl"
            files[name].write_bytes(b"\n".join(orjson.dumps(e) for e in evs) + b"\n")
        for k, scen in enumerate(scenarios):
            rows = []
            for system in args.systems:
                print(f"[{scen['short']}] {system} ...", file=sys.stderr, flush=True)
                if system in ("sqlite", "postgres x2"):
                    procs = 1 if system == "sqlite" else 2
                    with (
                        contextlib.nullcontext(None) if procs == 1 else postgres_db(args.admin_dsn)
                    ) as url:
                        prof = tmp / "profile.txt" if (k == 0 and system == "sqlite") else None
                        row = run_connector(system, procs, url, events, scen, tmp, prof)
                    with (
                        contextlib.nullcontext(None) if procs == 1 else postgres_db(args.admin_dsn)
                    ) as url:
                        row.update(
                            connector_latency(
                                procs, url, lat_events, scen, args.latency_rate, tmp, system
                            )
                        )
                    row["events"] = len(events)
                else:
                    n_alt = alt_counts[k]
                    alt_file = tmp / f"alt-{n_alt}.jsonl"
                    alt_file.write_bytes(b"\n".join(orjson.dumps(e) for e in events[:n_alt]))
                    row = run_alternative(system, alt_file, n_alt, scen, tmp)
                    if k == 0:  # under the limit they cannot keep up with 1,000 ev/s at all
                        lat = run_alternative(
                            system, files["lat"], len(lat_events), scen, tmp, rate=args.latency_rate
                        )
                        row["p50"], row["p99"] = lat["p50"], lat["p99"]
                        row["latency_lost"] = lat["lost"]
                print(
                    f"    {json.dumps({k2: v for k2, v in row.items() if k2 != 'hot'})}",
                    file=sys.stderr,
                    flush=True,
                )
                rows.append(row)
            results["scenarios"].append({**scen, "rows": rows})
        if shutil_which("wrk"):
            print("ingest (wrk) ...", file=sys.stderr, flush=True)
            for key, paused in (("ingest_paused", True), ("ingest", False)):
                results[key] = ingest_rates(tmp, args.users, args.ingest_secs, paused=paused)
                print(f"    {key}: {results[key]}", file=sys.stderr, flush=True)
            if args.backlog_ops:
                print("backlog RSS ...", file=sys.stderr, flush=True)
                results["backlog"] = backlog_rss(tmp, args.users, args.backlog_ops)
                print(f"    {results['backlog']}", file=sys.stderr, flush=True)
    if not args.systems and args.json.exists():  # ingest/backlog only: keep the last scenarios
        results["scenarios"] = json.loads(args.json.read_text())["scenarios"]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    args.png.parent.mkdir(parents=True, exist_ok=True)
    plot(results, args.png)
    print(write_report(results, args, args.png))
    print(f"\nresults: {args.json}\nplot: {args.png}")


def shutil_which(cmd: str) -> str | None:
    import shutil

    return shutil.which(cmd)


if __name__ == "__main__":
    main()
