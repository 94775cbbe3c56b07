"""Many ``serve`` processes on one PostgreSQL database (DESIGN.md §9).

Three real processes share a fresh database (tests/pg.py) and the sandbox. Senders spread
their webhooks over all three, each sender's events one after another, so every person's
ingest order is defined even across processes. Checked from the sandbox: every acknowledged
event arrived once, in order per person; with nobody killed, no event was even sent twice
(two processes never had the same operation); after a SIGKILL, the dead process's leased
partitions were taken over within the lease time. And a PostgreSQL restart mid-stream:
webhooks get 503 during the outage, the connector reconnects by itself, nothing is lost.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.e2e.harness import (
    Sandbox,
    Serve,
    assert_delivered_once_in_order,
    make_event,
    record_figures,
    wait_until,
)

pytestmark = pytest.mark.e2e

USERS = 30  # a multiple of SENDERS: each sender owns the users i % SENDERS
SENDERS = 3
LEASE_SECS = 3.0


class SpreadStream(threading.Thread):
    """Sender ``k`` posts seqs k, k+SENDERS, ... in batches, each batch to the next server
    (the next again when one refuses or is dead), retrying like PostHog."""

    def __init__(self, servers: list[Serve], k: int, total: int, batch: int = 4) -> None:
        super().__init__(daemon=True)
        self.servers, self.k, self.total, self.batch = servers, k, total, batch
        self.acked: list[int] = []
        self.refused: Counter[str] = Counter()
        self.posted_to: Counter[int] = Counter()
        self.stopping = threading.Event()

    def run(self) -> None:
        seqs = list(range(self.k, self.total, SENDERS))
        turn = self.k
        with httpx.Client(timeout=10) as client:
            i = 0
            while i < len(seqs) and not self.stopping.is_set():
                chunk = seqs[i : i + self.batch]
                server = self.servers[turn % len(self.servers)]
                turn += 1
                try:
                    r = client.post(
                        f"{server.url}/webhook",
                        json={"batch": [make_event(s, USERS) for s in chunk]},
                    )
                except httpx.HTTPError:
                    self.refused["error"] += 1
                    time.sleep(0.02)
                    continue
                if r.status_code == 200:
                    self.acked.extend(chunk)
                    self.posted_to[server.port] += 1
                    i += len(chunk)
                else:
                    self.refused[str(r.status_code)] += 1
                    time.sleep(0.05)


def start_streams(servers: list[Serve], total: int) -> list[SpreadStream]:
    streams = [SpreadStream(servers, k, total) for k in range(SENDERS)]
    for s in streams:
        s.start()
    return streams


def acked(streams: list[SpreadStream]) -> list[int]:
    return sorted(s for stream in streams for s in stream.acked)


def finish(streams: list[SpreadStream], timeout: float = 180) -> None:
    for s in streams:
        s.join(timeout)
        assert not s.is_alive(), "a sender did not finish"


def stop(streams: list[SpreadStream]) -> None:
    for s in streams:
        s.stopping.set()
    for s in streams:
        s.join(10)


def serve_on(tmp_path: Path, sandbox: Sandbox, url: str, n: int, **env: str) -> Serve:
    return Serve(
        tmp_path,
        tmp_path / f"data{n}",
        sandbox,
        POSTHOG_CUSTOMERIO_DATABASE_URL=url,
        POSTHOG_CUSTOMERIO_LEASE_SECS=str(LEASE_SECS),
        POSTHOG_CUSTOMERIO_HEARTBEAT_SECS="0.5",
        POSTHOG_CUSTOMERIO_BATCH_MAX_OPS="20",
        **env,
    )


def db_fetch(url: str, sql: str, *args: Any) -> list[Any]:
    async def go() -> list[Any]:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def delivered_by(server: Serve) -> int:
    return int(server.status()["delivery"]["totals"]["delivered"])


def test_three_processes_share_delivery_without_overlap(
    tmp_path: Path, sandbox: Sandbox, pg_url: str
) -> None:
    total = 1_200
    sandbox.faults(latency_ms=20)
    servers = [serve_on(tmp_path, sandbox, pg_url, n) for n in range(3)]
    try:
        wait_until(lambda: len(servers[0].status()["workers"]) == 3, timeout=20)
        streams = start_streams(servers, total)
        finish(streams)
        assert acked(streams) == list(range(total))
        wait_until(lambda: all(s.status()["queue"]["depth"] == 0 for s in servers), timeout=120)
        shares = [delivered_by(s) for s in servers]
        workers = servers[1].status()["workers"]
    finally:
        for s in servers:
            s.close()
    assert_delivered_once_in_order(sandbox, list(range(total)))
    stats = sandbox.stats()
    # No operation was ever in two requests: the sandbox never saw an event id twice.
    assert stats["duplicate_events_ignored"] == 0
    assert all(share > 0 for share in shares), shares  # all three delivered
    assert sorted(w["this_process"] for w in workers) == [False, False, True]
    record_figures(
        "scaleout_three_processes",
        {"events": total, "operations_delivered_per_process": shares},
    )


def test_sigkill_one_of_three_its_partitions_are_taken_over(
    tmp_path: Path, sandbox: Sandbox, pg_url: str
) -> None:
    total = 1_500
    sandbox.faults(latency_ms=150)  # requests in flight most of the time: leases to lose
    servers = [serve_on(tmp_path, sandbox, pg_url, n) for n in range(3)]
    victim = servers[1]
    victim_id = int(next(w["id"] for w in victim.status()["workers"] if w["this_process"]))
    streams = start_streams(servers, total)
    try:
        wait_until(lambda: len(acked(streams)) >= total // 3, timeout=120)
        leased = wait_until(
            lambda: db_fetch(
                pg_url,
                "SELECT partition_key FROM partitions WHERE owner = $1 AND lease_until > now()",
                victim_id,
            ),
            timeout=30,
            interval=0.01,
        )
        assert victim.proc is not None
        victim.proc.kill()
        killed_at = time.monotonic()
        held = [row[0] for row in leased]

        def taken_over() -> bool:
            rows = db_fetch(
                pg_url,
                "SELECT count(*) FROM partitions WHERE partition_key = ANY($1) AND owner = $2",
                held,
                victim_id,
            )
            return rows[0][0] == 0

        wait_until(taken_over, timeout=LEASE_SECS + 30, interval=0.05)
        takeover_secs = time.monotonic() - killed_at
        finish(streams)
        alive = [servers[0], servers[2]]
        wait_until(lambda: all(s.status()["queue"]["depth"] == 0 for s in alive), timeout=120)
        live_workers = servers[0].status()["workers"]
    finally:
        stop(streams)
        for s in servers:
            s.close()
    assert acked(streams) == list(range(total))
    assert_delivered_once_in_order(sandbox, list(range(total)))
    # The lease runs out LEASE_SECS after the last heartbeat (<= LEASE_SECS after the kill);
    # the next claim of a live process (it looks at least every second) takes it. The margin
    # is for a loaded 2-core CI machine; the measured figure is recorded below.
    assert takeover_secs <= LEASE_SECS + 4.0, takeover_secs
    assert victim_id not in {int(w["id"]) for w in live_workers}
    record_figures(
        "scaleout_sigkill",
        {
            "events": total,
            "victim_partitions_leased_at_kill": len(held),
            "takeover_secs": round(takeover_secs, 2),
            "lease_secs": LEASE_SECS,
            "resent_after_kill_ignored_by_event_id": sandbox.stats()["duplicate_events_ignored"],
        },
    )


# --- PostgreSQL restarts ------------------------------------------------------------------


def _cluster() -> list[str] | None:
    """``pg_ctlcluster`` arguments for the local cluster, when this machine can restart it."""
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        return None
    if os.geteuid() != 0:
        return None
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir())
    if len(versions) != 1:
        return None
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main"]


def _pg_ready() -> bool:
    return subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"], check=False).returncode == 0


def _ensure_pg_running(cluster: list[str]) -> None:
    deadline = time.monotonic() + 60
    while not _pg_ready():
        if time.monotonic() > deadline:
            raise AssertionError("PostgreSQL did not come back after the restart test")
        subprocess.run([*cluster, "start"], check=False, capture_output=True)
        time.sleep(0.5)


def test_postgres_restart_mid_stream_reconnects_and_loses_nothing(
    tmp_path: Path, sandbox: Sandbox, pg_url: str
) -> None:
    cluster = _cluster()
    if cluster is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: this test restarts the local cluster with pg_ctlcluster (root)")
        pytest.skip("restarting PostgreSQL needs root and a local pg_ctlcluster cluster")
    total = 900
    sandbox.faults(latency_ms=20)
    servers = [serve_on(tmp_path, sandbox, pg_url, n) for n in range(2)]
    streams = start_streams(servers, total)
    try:
        wait_until(lambda: len(acked(streams)) >= total // 3, timeout=120)
        restart = subprocess.run(
            [*cluster, "restart"], check=False, capture_output=True, text=True, timeout=120
        )
        assert restart.returncode == 0, restart.stderr
        restarted_at = len(acked(streams))
        finish(streams)
        wait_until(lambda: all(s.status()["queue"]["depth"] == 0 for s in servers), timeout=120)
        ready = [s.http.get("/readyz").status_code for s in servers]
    finally:
        stop(streams)
        for s in servers:
            s.close()
        _ensure_pg_running(cluster)
    assert acked(streams) == list(range(total))
    assert_delivered_once_in_order(sandbox, list(range(total)))
    assert ready == [200, 200]
    refused = sum((s.refused for s in streams), Counter())
    record_figures(
        "scaleout_postgres_restart",
        {
            "events": total,
            "acked_when_restarted": restarted_at,
            "refused_posts_retried_by_sender": dict(refused),
        },
    )


# --- one rate budget for the account ------------------------------------------------------

BUDGET_RPS = 50


def per_second(times: list[float]) -> int:
    """The most requests in any one-second window."""
    times = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(times):
        while times[first] <= at - 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_three_processes_share_one_rate_budget_and_a_killed_ones_part(
    tmp_path: Path, pg_url: str
) -> None:
    """Customer.io's limit is per account: three processes with ``rate_limit_rps = 50``
    against a Track API that takes 50 requests/s send 50/s together, not 150/s; after a
    SIGKILL the two left send the whole 50/s. One operation per request, so the limiter is
    busy from the first event to the last (2 operations an event: about 16 s)."""
    total, users = 400, 100
    sandbox = Sandbox(tmp_path, "--rate-limit-rps", str(BUDGET_RPS))
    servers = [
        Serve(
            tmp_path,
            tmp_path / f"data{n}",
            sandbox,
            POSTHOG_CUSTOMERIO_DATABASE_URL=pg_url,
            POSTHOG_CUSTOMERIO_LEASE_SECS=str(LEASE_SECS),
            POSTHOG_CUSTOMERIO_HEARTBEAT_SECS="0.5",
            POSTHOG_CUSTOMERIO_BATCH_MAX_OPS="1",
            POSTHOG_CUSTOMERIO_RATE_LIMIT_RPS=str(BUDGET_RPS),
        )
        for n in range(3)
    ]
    victim = servers[1]
    try:
        wait_until(lambda: len(servers[0].status()["workers"]) == 3, timeout=20)
        started = time.time()
        for i, start in enumerate(range(0, total, 50)):  # the backlog, spread over all three
            batch = [make_event(s, users) for s in range(start, start + 50)]
            r = servers[i % 3].post({"batch": batch})
            assert r.status_code == 200, r.text
        time.sleep(max(0.0, started + 6.0 - time.time()))
        assert victim.proc is not None
        victim.proc.kill()
        killed_at = time.time()
        alive = [servers[0], servers[2]]
        wait_until(lambda: all(s.status()["queue"]["depth"] == 0 for s in alive), timeout=120)
        requests = [r for r in sandbox.requests() if "/api/" in r["path"]]
        assert_delivered_once_in_order(sandbox, list(range(total)))
    finally:
        for s in servers:
            s.close()
        sandbox.close()
    times = sorted(r["time"] for r in requests)
    throttled = sum(1 for r in requests if r["status"] == 429)
    assert throttled <= 0.10 * len(requests), (throttled, len(requests))
    assert per_second(times) <= BUDGET_RPS * 1.1
    # The limiter was busy all along: the backlog lasted past the window measured below.
    recovered_from = killed_at + LEASE_SECS + 1.0
    window = (recovered_from, recovered_from + 3.0)
    assert times[-1] > window[1], "the backlog ran out before the rate could be measured"
    before_kill = sum(1 for t in times if killed_at - 4.0 <= t < killed_at) / 4.0
    after_kill = sum(1 for t in times if window[0] <= t < window[1]) / 3.0
    assert before_kill >= BUDGET_RPS * 0.8, before_kill  # three used the budget, not 3 x it
    assert after_kill >= BUDGET_RPS * 0.8, after_kill  # two took the killed one's part
    record_figures(
        "scaleout_one_rate_budget",
        {
            "processes": 3,
            "rate_limit_rps_each_and_account": BUDGET_RPS,
            "requests": len(requests),
            "answered_429": throttled,
            "max_requests_in_one_second": per_second(times),
            "rps_before_kill": round(before_kill, 1),
            "rps_after_kill": round(after_kill, 1),
        },
    )
