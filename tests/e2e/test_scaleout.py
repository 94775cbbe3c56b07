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
