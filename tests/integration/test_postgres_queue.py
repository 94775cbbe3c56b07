"""PostgreSQL-only behaviour: migrations, leases, many processes on one database.

The shared ``Queue`` contract runs against PostgreSQL in tests/unit/test_queue_contract.py;
this file covers what only a shared database has. Each "process" is a ``PostgresQueue`` of its
own (own pool, own worker id), which is what a ``serve`` process is to the database.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import asyncpg
import orjson
import pytest

from posthog_customerio.delivery.budget import BudgetAsk, Grant, SharedRateLimiter, take_grant
from posthog_customerio.mapping.identity import IdentityState
from posthog_customerio.mapping.mapper import MappingOutcome
from posthog_customerio.mapping.operation import Endpoint, Operation
from posthog_customerio.queue.codec import decode_state
from posthog_customerio.queue.migrations import migrations
from posthog_customerio.queue.postgres import (
    PostgresQueue,
    apply_migrations,
    schema_version,
)
from posthog_customerio.sources.event import PostHogEvent
from tests.pg import PgServer, crash, dsn_for
from tests.unit.test_queue_contract import MAPPER, ev

BIG = 10_000_000


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def opened(url: str, **kw: Any) -> PostgresQueue:
    kw.setdefault("lease_secs", 30.0)
    kw.setdefault("heartbeat_secs", 0.2)
    return PostgresQueue.open(url, **kw)


# --- schema: migrated == fresh --------------------------------------------------------------

SCHEMA_DUMP = {
    "columns": """
        SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, a.attidentity, a.attgenerated,
               coalesce(pg_get_expr(d.adbin, d.adrelid), '')
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm')
          AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1, 2""",
    "constraints": """
        SELECT c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid)
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' ORDER BY 1, 2""",
    "sequences": """
        SELECT sequencename, data_type::text, start_value, increment_by, cycle
        FROM pg_sequences WHERE schemaname = 'public' ORDER BY 1""",
    "triggers": """
        SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid)
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND NOT t.tgisinternal ORDER BY 1, 2""",
    "functions": """
        SELECT p.proname, pg_get_functiondef(p.oid)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public' ORDER BY 1""",
    "types": """
        SELECT t.typname, t.typtype FROM pg_type t
        JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'c')
          AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.reltype = t.oid)
        ORDER BY 1""",
    "versions": "SELECT version, name FROM schema_version ORDER BY version",
}


async def dump_schema(url: str) -> dict[str, list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(url)
    try:
        return {
            name: [tuple(r) for r in await conn.fetch(sql)] for name, sql in SCHEMA_DUMP.items()
        }
    finally:
        await conn.close()


async def migrate(url: str, target: int | None = None) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        return await apply_migrations(conn, target)
    finally:
        await conn.close()


def test_migrations_are_numbered_and_more_than_one() -> None:
    found = migrations("postgres")
    assert [v for v, _, _ in found] == list(range(1, len(found) + 1))
    assert len(found) >= 2  # so that the migrated-vs-fresh check below compares something


def test_migrated_one_by_one_with_data_equals_fresh(pg_server: PgServer) -> None:
    """An install upgraded release by release, with data in it between the steps, ends with
    exactly the schema of a fresh install (columns, defaults, constraints, indexes with their
    predicates, sequences, triggers, functions), and its old rows are usable by this code."""
    fresh, stepped = pg_server.empty_database(), pg_server.empty_database()

    async def body() -> None:
        fresh_url, stepped_url = dsn_for(fresh), dsn_for(stepped)
        assert await migrate(fresh_url) == [v for v, _, _ in migrations("postgres")]
        for version, _, _ in migrations("postgres"):
            assert await migrate(stepped_url, version) == [version]
            if version == 1:  # rows written by a version-1 install
                conn = await asyncpg.connect(stepped_url)
                try:
                    body = orjson.dumps({"type": "person", "action": "event", "name": "old"})
                    op_id = await conn.fetchval(
                        "INSERT INTO operations (partition_key, endpoint, action, body, size,"
                        " event_uuid, enqueued_at) VALUES ('old', 'batch', 'event', $1, $2,"
                        " 'u-old', 1.0) RETURNING id",
                        body,
                        len(body),
                    )
                    await conn.execute(
                        "INSERT INTO partitions (partition_key, head_id) VALUES ('old', $1)", op_id
                    )
                finally:
                    await conn.close()
        assert await migrate(stepped_url) == []  # nothing left: idempotent
        want, got = await dump_schema(fresh_url), await dump_schema(stepped_url)
        for part in SCHEMA_DUMP:
            assert got[part] == want[part], part
        assert want["indexes"] and want["columns"] and want["constraints"]
        q = opened(stepped_url)
        try:
            [op] = await q.claim(100, BIG, time.time())
            assert (op.partition, op.event_uuid) == ("old", "u-old")
            await q.ack([op.id])
            assert (await q.stats(time.time())).depth == 0
        finally:
            await q.close()

    try:
        run(body())
    finally:
        pg_server.drop(fresh)
        pg_server.drop(stepped)


def test_schema_dump_sees_a_changed_index_predicate(pg_url: str) -> None:
    """The comparison above is only as good as the dump: a drifted partial index shows."""

    async def body() -> None:
        before = await dump_schema(pg_url)
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute("DROP INDEX partitions_ready")
            await conn.execute(
                "CREATE INDEX partitions_ready ON partitions (head_id) WHERE owner IS NULL"
            )
            await conn.execute("ALTER TABLE operations ALTER COLUMN attempts SET DEFAULT 1")
        finally:
            await conn.close()
        after = await dump_schema(pg_url)
        assert after["indexes"] != before["indexes"]
        assert after["columns"] != before["columns"]

    run(body())


def test_concurrent_starters_migrate_once(pg_server: PgServer) -> None:
    name = pg_server.empty_database()

    async def body() -> None:
        url = dsn_for(name)
        applied = await asyncio.gather(*(migrate(url) for _ in range(6)))
        assert sorted(v for a in applied for v in a) == [v for v, _, _ in migrations("postgres")]
        conn = await asyncpg.connect(url)
        try:
            assert await schema_version(conn) == len(migrations("postgres"))
        finally:
            await conn.close()

    try:
        run(body())
    finally:
        pg_server.drop(name)


def test_a_cli_queue_refuses_an_unmigrated_database(pg_server: PgServer) -> None:
    from posthog_customerio.errors import QueueUnavailable

    name = pg_server.empty_database()

    async def body() -> None:
        q = opened(dsn_for(name), owner=False)
        with pytest.raises(QueueUnavailable, match="posthog-customerio migrate"):
            await q.stats(time.time())
        await q.close()

    try:
        run(body())
    finally:
        pg_server.drop(name)


# --- leases ---------------------------------------------------------------------------------


def test_a_dead_workers_partitions_are_taken_over_after_the_lease(pg_url: str) -> None:
    async def body() -> None:
        a = opened(pg_url, lease_secs=1.0)
        b = opened(pg_url, lease_secs=1.0)
        try:
            await a.ingest([ev("p", "p1"), ev("p", "p2"), ev("r", "r1")], MAPPER)
            claimed = await a.claim(2, BIG, time.time())
            assert [c.partition for c in claimed] == ["p", "p"]
            await crash(a)  # SIGKILL: no release, no more heartbeats
            assert [c.partition for c in await b.claim(100, BIG, time.time())] == ["r"]
            assert await b.claim(100, BIG, time.time()) == []  # "p" is still leased
            await asyncio.sleep(1.3)
            again = await b.claim(100, BIG, time.time())
            assert [c.id for c in again] == [c.id for c in claimed]  # same ops, same order
            [info] = [w for w in await b.workers() if w.this_process]
            assert info.partitions == 2  # "p" and "r"
            assert len(await b.workers()) == 1  # the dead one is not live
        finally:
            await b.close()

    run(body())


def test_heartbeats_keep_a_slow_request_leased(pg_url: str) -> None:
    async def body() -> None:
        a = opened(pg_url, lease_secs=0.6, heartbeat_secs=0.1)
        b = opened(pg_url, lease_secs=0.6, heartbeat_secs=0.1)
        try:
            await a.ingest([ev("p", "p1")], MAPPER)
            [op] = await a.claim(10, BIG, time.time())
            await asyncio.sleep(1.5)  # longer than the lease: only heartbeats keep it
            assert await b.claim(10, BIG, time.time()) == []
            await a.ack([op.id])
        finally:
            await a.close()
            await b.close()

    run(body())


def test_a_worker_that_lost_its_lease_cannot_disturb_the_new_owner(pg_url: str) -> None:
    async def body() -> None:
        a = opened(pg_url, lease_secs=0.5, heartbeat_secs=60)  # never beats in time
        b = opened(pg_url, lease_secs=30)
        try:
            await a.ingest([ev("p", "p1"), ev("p", "p2")], MAPPER)
            stale = await a.claim(10, BIG, time.time())
            await asyncio.sleep(0.8)
            fresh = await b.claim(10, BIG, time.time())
            assert [c.id for c in fresh] == [c.id for c in stale]
            await a.release([c.id for c in stale])  # fenced: not a's claim any more
            await a.retry([c.id for c in stale], time.time() + 60, "late")
            assert await b.claim(10, BIG, time.time()) == []  # still b's, not blocked
            await a.ack([stale[0].id])  # delivered is delivered, whoever says it
            await b.ack([c.id for c in fresh])
            await a.ingest([ev("p", "p3")], MAPPER)
            [p3] = await b.claim(10, BIG, time.time())  # the partition settled normally
            assert p3.attempts == 0 and orjson.loads(p3.body_json)["name"] == "p3"
        finally:
            await a.close()
            await b.close()

    run(body())


def test_clean_close_releases_claims_and_unregisters(pg_url: str) -> None:
    async def body() -> None:
        a, b = opened(pg_url), opened(pg_url)
        try:
            await a.ingest([ev("p", "p1")], MAPPER)
            assert len(await a.claim(10, BIG, time.time())) == 1
            assert sorted(w.partitions for w in await b.workers()) == [0, 1]
            await a.close()
            assert len(await b.claim(10, BIG, time.time())) == 1  # no lease wait
            assert [w.this_process for w in await b.workers()] == [True]
        finally:
            await b.close()

    run(body())


# --- many processes -------------------------------------------------------------------------


class MergeMapper:
    """Each event adds its name to the person's sent_attribute_keys: a lost update loses a name."""

    def distinct_ids(self, event: PostHogEvent) -> Sequence[str]:
        return [event.distinct_id]

    def map(self, event: PostHogEvent, states: Mapping[str, IdentityState]) -> MappingOutcome:
        before = states[event.distinct_id]
        after = replace(
            before,
            identified=before.identified or event.event.startswith("id"),
            sent_attribute_keys=before.sent_attribute_keys | {event.event},
        )
        op = Operation(
            partition=event.distinct_id,
            endpoint=Endpoint.BATCH,
            action="event",
            body={"type": "person", "action": "event", "name": event.event, "id": event.uuid},
            event_uuid=event.uuid,
        )
        return MappingOutcome(states={event.distinct_id: after}, operations=[op])


def test_concurrent_processes_merge_identity_state_and_dedup(pg_url: str) -> None:
    async def body() -> None:
        queues = [opened(pg_url) for _ in range(3)]
        mapper = MergeMapper()
        try:
            events = [ev(f"u{i % 4}", f"{'id' if i % 7 == 0 else 'e'}{i}") for i in range(240)]
            calls = [
                queues[i % 3].ingest([events[i], events[(i * 5) % 240]], mapper) for i in range(240)
            ]
            results = await asyncio.gather(*calls)
            assert sum(r.accepted for r in results) == 240  # every uuid once, whoever won
            assert sum(r.dropped.get("duplicate", 0) for r in results) == 240
            conn = await asyncpg.connect(pg_url)
            try:
                rows = await conn.fetch("SELECT distinct_id, state FROM identity")
            finally:
                await conn.close()
            states = {r[0]: decode_state(bytes(r[1])) for r in rows}
            for user in range(4):
                names = {e.event for e in events if e.distinct_id == f"u{user}"}
                assert states[f"u{user}"].sent_attribute_keys == names  # nothing lost
                assert states[f"u{user}"].identified  # sticky, whoever set it
        finally:
            for q in queues:
                await q.close()

    run(body())


def test_concurrent_claims_never_share_a_partition(pg_url: str) -> None:
    async def body() -> None:
        queues = [opened(pg_url) for _ in range(3)]
        try:
            await queues[0].ingest([ev(f"p{i % 25}", f"e{i}") for i in range(500)], MAPPER)
            in_flight: dict[str, int] = {}
            delivered: list[tuple[str, int]] = []
            overlaps = 0

            async def deliver(worker: int) -> None:
                nonlocal overlaps
                q = queues[worker]
                idle = 0
                while idle < 5:
                    ops = await q.claim(7, BIG, time.time())
                    if not ops:
                        idle += 1
                        await asyncio.sleep(0.01)
                        continue
                    idle = 0
                    for key in {op.partition for op in ops}:
                        if key in in_flight:
                            overlaps += 1
                        in_flight[key] = worker
                    await asyncio.sleep(0.002)
                    delivered.extend((op.partition, op.id) for op in ops)
                    for key in {op.partition for op in ops}:
                        in_flight.pop(key, None)
                    await q.ack([op.id for op in ops])

            await asyncio.gather(*(deliver(w) for w in range(3)))
            assert overlaps == 0
            assert len(delivered) == len({op_id for _, op_id in delivered}) == 500
            for key in {k for k, _ in delivered}:
                ids = [op_id for k, op_id in delivered if k == key]
                assert ids == sorted(ids), key  # per-partition order
        finally:
            for q in queues:
                await q.close()

    run(body())


def test_a_claim_the_worker_lost_track_of_expires_despite_heartbeats(pg_url: str) -> None:
    """A claim whose answer never arrived (connection cut after COMMIT) is not renewed."""

    async def body() -> None:
        a = opened(pg_url, lease_secs=0.6, heartbeat_secs=0.1)
        b = opened(pg_url, lease_secs=0.6, heartbeat_secs=0.1)
        try:
            await a.ingest([ev("p", "p1")], MAPPER)
            [op] = await a.claim(10, BIG, time.time())
            a._outstanding.clear()  # as if the claim's answer had been lost
            await asyncio.sleep(1.2)
            [again] = await b.claim(10, BIG, time.time())
            assert again.id == op.id
        finally:
            await a.close()
            await b.close()

    run(body())


# --- the account's rate budget (delivery/budget.py) ----------------------------------------


def test_concurrent_grants_of_three_processes_never_overlap(pg_url: str) -> None:
    """Grants are taken under the budget row's lock on the database clock: however the
    processes race, their slots follow each other without overlap."""
    ask = BudgetAsk(max_rate=50.0, successes=0, throttled=False, accepted_fraction=1.0)

    def step(
        stored: dict[str, Any] | None, now: float, live: int
    ) -> tuple[dict[str, Any], tuple[float, Grant]]:
        state, grant = take_grant(ask, stored, now, live)
        return state, (now, grant)

    async def body() -> None:
        queues = [opened(pg_url) for _ in range(3)]
        try:
            for q in queues:
                await q.start()
            taken = await asyncio.gather(
                *(q.update_rate_budget(step) for _ in range(20) for q in queues)
            )
        finally:
            for q in queues:
                await q.close()
        spans = sorted((now + g.start, now + g.start + g.slots * g.interval) for now, g in taken)
        assert all(g.live_workers == 3 and g.slots == 5 for _, g in taken)
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end - 1e-6  # no two grants share a slot
        # 60 grants of 0.1 s asked at once: back to back, 6 s of the account's time
        assert spans[-1][1] - spans[0][0] == pytest.approx(6.0, abs=0.05)

    run(body())


def test_the_budget_table_is_unlogged_and_starts_afresh_when_emptied(pg_url: str) -> None:
    """No WAL and no fsync per grant; a crash empties the table and grants go on."""
    ask = BudgetAsk(max_rate=40.0, successes=0, throttled=True, accepted_fraction=0.0)

    async def body() -> None:
        q = opened(pg_url)
        try:
            halved = await q.update_rate_budget(partial(take_grant, ask))
            assert halved.rate == 20.0
            conn = await asyncpg.connect(pg_url)
            try:
                persistence = await conn.fetchval(
                    "SELECT relpersistence::text FROM pg_class WHERE relname = 'rate_budget'"
                )
                state = orjson.loads(await conn.fetchval("SELECT state::text FROM rate_budget"))
                await conn.execute("TRUNCATE rate_budget")  # what crash recovery does to it
            finally:
                await conn.close()
            assert persistence == "u"
            assert state["rate"] == 20.0 and state["max_rate"] == 40.0
            fresh = await q.update_rate_budget(partial(take_grant, replace(ask, throttled=False)))
            assert fresh.rate == 40.0
        finally:
            await q.close()

    run(body())


def test_three_shared_limiters_on_one_database_send_the_rate_together(pg_url: str) -> None:
    async def body() -> None:
        queues = [opened(pg_url) for _ in range(3)]
        sent: list[float] = []
        try:
            limiters = [SharedRateLimiter(q, 50.0) for q in queues]

            async def sender(limiter: SharedRateLimiter) -> None:
                while True:
                    await limiter.acquire()
                    sent.append(time.monotonic())
                    limiter.on_success()

            tasks = [asyncio.create_task(sender(lim)) for lim in limiters for _ in range(3)]
            await asyncio.sleep(3.0)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for q in queues:
                await q.close()
        sent.sort()
        most = max(sum(1 for t in sent[i:] if t < start + 1.0) for i, start in enumerate(sent))
        assert most <= 55
        assert len(sent) >= 3.0 * 50 * 0.9
        assert all(lim.grants > 0 for lim in limiters)

    run(body())
