"""What only the SQLite queue has: migrations, its writer thread, wake-ups, mid-job failures.

The behaviour every queue shares is in ``test_queue_contract.py``.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from pathlib import Path

import pytest

from posthog_customerio.errors import QueueUnavailable, StoreNotFound
from posthog_customerio.queue import sqlite as sqlite_queue
from posthog_customerio.queue import sqlite_queries as q
from posthog_customerio.queue.base import Lane, Rejection
from posthog_customerio.queue.migrations import migrations
from posthog_customerio.queue.sqlite import SQLiteQueue
from tests.unit.test_queue_contract import BIG, MAPPER, NOW, ev, run


def _schema(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name"
        ).fetchall()
        return [(name, sql) for name, sql in rows]
    finally:
        conn.close()


def test_migrations_are_recorded_and_applied_once(tmp_path: Path) -> None:
    path = tmp_path / "q.db"

    async def body() -> None:
        for _ in range(2):
            queue = SQLiteQueue.open(path)
            await queue.close()

    run(body())
    conn = sqlite3.connect(path)
    try:
        versions = conn.execute("SELECT version, name FROM schema_version").fetchall()
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()
    assert versions == [(v, name) for v, name, _ in migrations("sqlite")]
    assert journal == "wal"
    tables = {name for name, _ in _schema(path)}
    assert {"operations", "partitions", "identity", "seen_events", "dead_letters"} <= tables


def test_non_owner_never_creates_a_database(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFound, match=r"missing\.db"):
        SQLiteQueue.open(tmp_path / "nowhere" / "missing.db", owner=False)
    assert list(tmp_path.iterdir()) == []


def test_claim_uses_indexes_not_scans(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    run(SQLiteQueue.open(path).close())
    conn = sqlite3.connect(path)
    try:
        for sql, args in [
            (q.READY_PARTITIONS, ()),
            (q.READY_PARTITIONS_IN_LANE, ("backfill",)),
            (q.GET_CHECKPOINT, ("file:x",)),
            (q.NEXT_ID_IN_PARTITION, ("p", 1)),
            (q.GET_OPERATION, (1,)),
            (q.UNBLOCK_EXPIRED, (NOW,)),
            (q.BLOCKED_PARTITIONS, (NOW,)),
            (q.SCAN_FROM, (1, None)),
            (q.SCAN_FROM, (1, "live")),
            (q.GET_IDENTITIES, ("[]",)),
            (q.SEEN_AMONG, ("[]",)),
        ]:
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args)]
            # an ordered walk of an index (read lazily) is fine; a bare scan or a sort is not
            # (json_each's own rows are the input list, walked once)
            assert all("USING" in step or "VIRTUAL TABLE" in step for step in plan), (sql, plan)
            assert not any("TEMP B-TREE" in step for step in plan), (sql, plan)
        # rowid order is the table's own order: LIMIT 1 reads one row
        oldest = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {q.OLDEST_ENQUEUED_AT}")]
        assert oldest == ["SCAN operations"]
    finally:
        conn.close()


def _random_queue(path: Path, seed: int) -> None:
    """A queue in a random state: several partitions and lanes, some in flight, some blocked,
    varied body sizes."""
    rng = random.Random(seed)

    async def body() -> None:
        queue = SQLiteQueue.open(path)
        try:
            for _ in range(rng.randint(1, 6)):
                events = [
                    ev(f"u{rng.randint(0, 7)}", f"e{'x' * rng.randint(0, 300)}")
                    for _ in range(rng.randint(1, 30))
                ]
                lane = rng.choice([Lane.LIVE, Lane.BACKFILL])
                await queue.ingest(events, MAPPER, lane=lane)
                if rng.random() < 0.5:
                    claimed = await queue.claim(rng.randint(1, 20), BIG, NOW)
                    if claimed and rng.random() < 0.5:
                        await queue.retry([c.id for c in claimed], NOW + 60, "503")
        finally:
            await queue.close()

    run(body())


@pytest.mark.parametrize("seed", range(40))
def test_claim_scan_and_merge_agree(tmp_path: Path, seed: int) -> None:
    """The one-statement scan claims exactly what the heap merge claims, whatever the state."""
    path = tmp_path / "q.db"
    _random_queue(path, seed)
    rng = random.Random(seed * 7919)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for _ in range(10):
            max_ops, max_bytes = rng.randint(1, 60), rng.randint(50, 5_000)
            lane = rng.choice([None, "live", "backfill"])
            scanned = sqlite_queue._claim_by_scan(max_ops, max_bytes, lane, conn)
            merged = sqlite_queue._claim_by_merge(max_ops, max_bytes, lane, conn)
            assert scanned is not None
            assert [r[0] for r in scanned] == [r[0] for r in merged]
            assert scanned == merged
    finally:
        conn.close()


def test_claim_falls_back_to_the_merge_past_a_large_blocked_partition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_queue, "SCAN_SKIP_LIMIT", 5)
    calls: list[str] = []
    merge = sqlite_queue._claim_by_merge
    monkeypatch.setattr(
        sqlite_queue,
        "_claim_by_merge",
        lambda *a: calls.append("merge") or merge(*a),  # type: ignore[func-returns-value]
    )

    async def body() -> None:
        queue = SQLiteQueue.open(tmp_path / "q.db")
        try:
            # ids: ready r0 = 1, blocked b0..b19 = 2..21, ready r1 = 22
            await queue.ingest([ev("r", "r0")], MAPPER)
            await queue.ingest([ev("b", f"b{i}") for i in range(20)], MAPPER)
            await queue.ingest([ev("r", "r1")], MAPPER)
            taken = await queue.claim(21, BIG, NOW)
            assert [c.partition for c in taken] == ["r"] + ["b"] * 20
            await queue.retry([c.id for c in taken if c.partition == "b"], NOW + 60, "503")
            await queue.release([c.id for c in taken if c.partition == "r"])
            assert calls == []
            # the scan starts at r0, meets 20 operations of the blocked "b": too many to step over
            claimed = await queue.claim(10, BIG, NOW)
            assert calls == ["merge"]
            assert [(c.partition, c.id) for c in claimed] == [("r", 1), ("r", 22)]
        finally:
            await queue.close()

    run(body())


def test_disk_full_mid_job_fails_that_call_and_writes_nothing(tmp_path: Path) -> None:
    async def body() -> None:
        queue = SQLiteQueue.open(tmp_path / "q.db")
        try:
            pages = await queue._writer.run(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
            await queue._writer.run(lambda c: c.execute(f"PRAGMA max_page_count = {pages}"))
            big = ev("a", "a1", properties={"pad": "x" * 200_000})
            with pytest.raises(QueueUnavailable, match="full"):
                await queue.ingest([big], MAPPER)
            await queue._writer.run(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
            assert (await queue.stats(NOW)).depth == 0
            assert (await queue.ingest([big], MAPPER)).accepted == 1
        finally:
            await queue.close()

    run(body())


def test_cancelled_claim_is_given_back(tmp_path: Path) -> None:
    async def body() -> None:
        queue = SQLiteQueue.open(tmp_path / "q.db")
        try:
            await queue.ingest([ev("a", "a1")], MAPPER)
            task = asyncio.create_task(queue.claim(10, BIG, NOW))
            await asyncio.sleep(0)  # the job is queued, then its caller goes away
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(100):
                if await queue.claim(10, BIG, NOW):
                    return
                await asyncio.sleep(0.01)
            raise AssertionError("the orphaned claim was never released")
        finally:
            await queue.close()

    run(body())


def test_wait_for_work_wakes_on_ingest(tmp_path: Path) -> None:
    async def body() -> None:
        queue = SQLiteQueue.open(tmp_path / "q.db")
        try:
            assert await queue.wait_for_work(0.01) is False
            waiter = asyncio.create_task(queue.wait_for_work(5))
            await asyncio.sleep(0)
            started = time.monotonic()
            await queue.ingest([ev("a", "a1")], MAPPER)
            assert await waiter is True
            assert time.monotonic() - started < 1
            await queue.ingest([ev("a", "dropme")], MAPPER)  # nothing enqueued: no wake-up
            assert await queue.wait_for_work(0.01) is False
        finally:
            await queue.close()

    run(body())


def test_prune_seen_and_dead_letter_ids(tmp_path: Path) -> None:
    async def body() -> None:
        queue = SQLiteQueue.open(tmp_path / "q.db")
        try:
            event = ev("a", "a1")
            await queue.ingest([event, ev("b", "b1")], MAPPER)
            assert await queue.prune_seen(time.time() - 3600) == 0
            assert await queue.prune_seen(time.time() + 1) == 2
            assert (await queue.ingest([event], MAPPER)).accepted == 1  # forgotten: new again

            claimed = await queue.claim(10, BIG, NOW)
            await queue.dead_letter([Rejection(c.id, "rejected") for c in claimed[:2]])
            await queue.dead_letter([Rejection(claimed[2].id, "expired")])
            every = await queue.dead_letter_ids()
            assert len(every) == 3 and every == sorted(every)
            assert len(await queue.dead_letter_ids(reason="rejected")) == 2
            assert await queue.dead_letter_ids(since=time.time() + 60) == []
        finally:
            await queue.close()

    run(body())


def test_close_is_idempotent_and_refuses_new_work(tmp_path: Path) -> None:
    async def body() -> None:
        queue = SQLiteQueue.open(tmp_path / "q.db")
        await queue.close()
        await queue.close()
        with pytest.raises(QueueUnavailable, match="closed"):
            await queue.ingest([ev()], MAPPER)

    run(body())
