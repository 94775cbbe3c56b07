"""The Queue contract, run against every implementation.

Tests use only the ``Queue`` protocol; what differs between implementations (how to open one,
how to count commits, how to make the store refuse writes) lives in a ``Harness``. SQLite runs
on real files in ``tmp_path``; PostgreSQL on a fresh database per test (tests/pg.py); the
in-memory queue on a fresh ``MemoryStore`` per test, shared by the handles a test opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import orjson
import pytest

from posthog_customerio.errors import QueueUnavailable
from posthog_customerio.mapping.identity import IdentityState
from posthog_customerio.mapping.mapper import EventMapper, MappingOutcome
from posthog_customerio.mapping.operation import Endpoint, Operation
from posthog_customerio.mapping.rules import MappingRules
from posthog_customerio.queue.base import Checkpoint, Lane, Queue, Rejection
from posthog_customerio.queue.memory import MemoryQueue, MemoryStore
from posthog_customerio.queue.postgres import PostgresQueue
from posthog_customerio.queue.sqlite import SQLiteQueue
from posthog_customerio.sources.event import PostHogEvent

T = TypeVar("T")
NOW = 1_700_000_000.0
BIG = 10_000_000


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# --- a tiny deterministic mapper ------------------------------------------------------------


class TinyMapper:
    """Maps each event to an ``event`` op, preceded by an ``identify`` op when it sets
    properties; drops events named in ``drop``. The body records what the state said, so tests
    can see state flow between events. ``properties["pad"]`` makes bodies bigger.
    """

    def __init__(self, drop: frozenset[str] = frozenset(), fail_on: str | None = None) -> None:
        self.drop = drop
        self.fail_on = fail_on

    def distinct_ids(self, event: PostHogEvent) -> Sequence[str]:
        return [event.distinct_id]

    def map(self, event: PostHogEvent, states: Mapping[str, IdentityState]) -> MappingOutcome:
        if event.event == self.fail_on:
            raise RuntimeError("mapper bug")
        before = states[event.distinct_id]
        after = replace(
            before,
            seen=True,
            identified=before.identified or event.event == "$identify",
            email=event.set.get("email", before.email),
            sent_attribute_keys=before.sent_attribute_keys | frozenset(event.set_once),
        )
        new_states = {event.distinct_id: after}
        if event.event in self.drop:
            return MappingOutcome(states=new_states, operations=(), dropped="not_in_allowlist")
        ops = []
        if event.set:
            ops.append(
                Operation(
                    partition=event.distinct_id,
                    endpoint=Endpoint.BATCH,
                    action="identify",
                    body={"type": "person", "action": "identify", "attributes": event.set},
                    event_uuid=event.uuid,
                )
            )
        ops.append(
            Operation(
                partition=event.distinct_id,
                endpoint=Endpoint.BATCH,
                action="event",
                body={
                    "type": "person",
                    "action": "event",
                    "name": event.event,
                    "id": event.uuid,
                    "seen_before": before.seen,
                    "pad": event.properties.get("pad", ""),
                },
                event_uuid=event.uuid,
            )
        )
        return MappingOutcome(states=new_states, operations=ops, truncations={"value": 1})


_counter = iter(range(1, 10**9))


def ev(
    distinct_id: str = "u1", name: str = "clicked", uuid: str | None = None, **kw: Any
) -> PostHogEvent:
    uuid = uuid or f"00000000-0000-4000-8000-{next(_counter):012d}"
    return PostHogEvent(uuid=uuid, event=name, distinct_id=distinct_id, timestamp_ms=1, **kw)


MAPPER = TinyMapper(drop=frozenset({"dropme"}))


# --- harnesses ------------------------------------------------------------------------------


@dataclass
class Harness:
    """How to open, observe and break one implementation."""

    open: Callable[[bool], Queue]
    commits: Callable[[Queue], int]
    # None: nothing can refuse a write (the in-memory store has no file, lock or transaction)
    hold_write_lock: Callable[[], contextlib.AbstractContextManager[None]] | None
    has_owner_lock: bool

    def write_lock(self) -> contextlib.AbstractContextManager[None]:
        """Another writer holding the store's write lock; call ``need_write_lock`` first."""
        assert self.hold_write_lock is not None
        return self.hold_write_lock()

    def need_write_lock(self) -> None:
        if self.hold_write_lock is None:
            pytest.skip("a write to memory cannot fail: no file, no lock, no transaction")

    @contextlib.asynccontextmanager
    async def queue(self, owner: bool = True) -> AsyncIterator[Queue]:
        q = self.open(owner)
        try:
            await q.start()
            yield q
        finally:
            await q.close()


def _sqlite_harness(tmp_path: Path) -> Harness:
    path = tmp_path / "queue.db"

    def open_queue(owner: bool) -> Queue:
        return SQLiteQueue.open(path, owner=owner, busy_timeout_ms=200)

    def commits(q: Queue) -> int:
        assert isinstance(q, SQLiteQueue)
        return q.commit_count

    @contextlib.contextmanager
    def hold_write_lock() -> Iterator[None]:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("BEGIN EXCLUSIVE")
            yield
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    return Harness(open_queue, commits, hold_write_lock, has_owner_lock=True)


def _postgres_harness(url: str) -> Harness:
    """A fresh database per test (tests/pg.py); 200 ms lock timeout like SQLite's busy one."""

    def open_queue(owner: bool) -> Queue:
        return PostgresQueue.open(url, owner=owner, lock_timeout_ms=200, heartbeat_secs=0.5)

    def commits(q: Queue) -> int:
        assert isinstance(q, PostgresQueue)
        return q.commit_count

    @contextlib.contextmanager
    def hold_write_lock() -> Iterator[None]:
        # Another session holding an EXCLUSIVE lock (reads pass, writes wait), from a thread of
        # its own so that the test's event loop stays free.
        locked, done = threading.Event(), threading.Event()
        failure: list[BaseException] = []

        async def hold() -> None:
            conn = await asyncpg.connect(url)
            try:
                async with conn.transaction():
                    await conn.execute(
                        "LOCK TABLE identity, seen_events, operations IN EXCLUSIVE MODE"
                    )
                    locked.set()
                    await asyncio.to_thread(done.wait)
            finally:
                await conn.close()

        def run_hold() -> None:
            try:
                asyncio.run(hold())
            except BaseException as exc:
                failure.append(exc)
                locked.set()

        thread = threading.Thread(target=run_hold)
        thread.start()
        locked.wait(10)
        try:
            assert not failure, failure
            yield
        finally:
            done.set()
            thread.join()

    return Harness(open_queue, commits, hold_write_lock, has_owner_lock=False)


def _memory_harness() -> Harness:
    """One store per test: every handle the test opens (reopen, a CLI beside) shares it."""
    store = MemoryStore()

    def open_queue(owner: bool) -> Queue:
        return MemoryQueue.open(store, owner=owner)

    def commits(q: Queue) -> int:
        assert isinstance(q, MemoryQueue)
        return q.commit_count

    return Harness(open_queue, commits, hold_write_lock=None, has_owner_lock=True)


@pytest.fixture(params=["sqlite", "postgres", "memory"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    if request.param == "sqlite":
        return _sqlite_harness(tmp_path)
    if request.param == "postgres":
        return _postgres_harness(request.getfixturevalue("pg_url"))
    if request.param == "memory":
        return _memory_harness()
    raise AssertionError(request.param)


def names(claimed: Sequence[Any]) -> list[tuple[str, str]]:
    return [(c.partition, orjson.loads(c.body_json).get("name", "identify")) for c in claimed]


# --- ingest ---------------------------------------------------------------------------------


def test_ingest_commits_and_dedups_repeated_uuids(harness: Harness) -> None:
    async def body() -> None:
        async with harness.queue() as q:
            a, b = ev("u1", "a"), ev("u2", "b", set={"plan": "pro"})
            first = await q.ingest([a, b, a, ev("u3", "dropme")], MAPPER)
            assert first.accepted == 2
            assert first.dropped == {"duplicate": 1, "not_in_allowlist": 1}
            assert first.actions == {"event": 2, "identify": 1}
            assert first.truncations == {"value": 2}
            again = await q.ingest([b, a], MAPPER)
            assert again.accepted == 0
            assert again.dropped == {"duplicate": 2}
            assert (await q.stats(NOW)).depth == 3

    run(body())


def test_identity_state_persists_across_calls_and_reopen(harness: Harness) -> None:
    async def body() -> None:
        async with harness.queue() as q:
            await q.ingest([ev("u1", "a"), ev("u1", "b")], MAPPER)
            await q.ingest([ev("u1", "c")], MAPPER)
        async with harness.queue() as q:
            await q.ingest([ev("u1", "d"), ev("u2", "e")], MAPPER)
            claimed = await q.claim(100, BIG, NOW)
            seen = {orjson.loads(c.body_json)["name"]: orjson.loads(c.body_json) for c in claimed}
            assert seen["a"]["seen_before"] is False
            assert seen["b"]["seen_before"] is True  # same call: sees the earlier event's state
            assert seen["c"]["seen_before"] is True
            assert seen["d"]["seen_before"] is True  # after reopen
            assert seen["e"]["seen_before"] is False

    run(body())


def test_failed_mapping_writes_nothing_of_that_call(harness: Harness) -> None:
    async def body() -> None:
        async with harness.queue() as q:
            mapper = TinyMapper(fail_on="boom")
            good = ev("u1", "ok")
            results = await asyncio.gather(
                q.ingest([good, ev("u1", "boom")], mapper),
                q.ingest([ev("u2", "fine")], mapper),
                *(q.ingest([ev(f"u{i}", f"e{i}")], mapper) for i in range(3, 12)),
                return_exceptions=True,
            )
            assert isinstance(results[0], RuntimeError)
            for result in results[1:]:  # calls sharing its commit are not affected
                assert not isinstance(result, BaseException)
                assert result.accepted == 1
            assert (await q.stats(NOW)).depth == 10
            assert (await q.ingest([good], mapper)).accepted == 1  # its uuid was not recorded

    run(body())


def test_merge_chain_across_ingest_calls_reaches_its_end(harness: Harness) -> None:
    """A merged into B, later B into C, each in its own ingest call (transaction), then events
    of A: they go to C, and no operation after the second merge addresses B."""

    def person(did: str, name: str) -> PostHogEvent:
        return ev(did, name, properties={"$is_identified": True})

    def alias(primary: str, alias: str) -> PostHogEvent:
        return ev(primary, "$create_alias", properties={"alias": alias})

    mapper = EventMapper(MappingRules())

    async def drain(q: Queue) -> list[dict[str, Any]]:
        bodies: list[dict[str, Any]] = []
        while claimed := await q.claim(100, BIG, NOW):
            bodies += [orjson.loads(c.body_json) for c in claimed]
            await q.ack([c.id for c in claimed])
        return bodies

    async def body() -> None:
        async with harness.queue() as q:
            for did in ("a", "b", "c"):
                await q.ingest([person(did, "signed_up")], mapper)
            await q.ingest([alias("b", "a")], mapper)
            await q.ingest([alias("c", "b")], mapper)
            merges = [b for b in await drain(q) if b["action"] == "merge"]
            assert [(m["primary"], m["secondary"]) for m in merges] == [
                ({"id": "b"}, {"id": "a"}),
                ({"id": "c"}, {"id": "b"}),
            ]
        async with harness.queue() as q:
            assert (await q.ingest([person("a", "late")], mapper)).actions == {"event": 1}
            await q.ingest([person("a", "later")], mapper)  # after path compression
            assert [(b["name"], b["identifiers"]) for b in await drain(q)] == [
                ("late", {"id": "c"}),
                ("later", {"id": "c"}),
            ]

    run(body())


# --- claim ----------------------------------------------------------------------------------


def test_claim_order_and_partition_exclusivity(harness: Harness) -> None:
    async def body() -> None:
        async with harness.queue() as q:
            await q.ingest([ev("a", "a1"), ev("b", "b1"), ev("a", "a2"), ev("c", "c1")], MAPPER)
            first = await q.claim(100, BIG, NOW)
            assert names(first) == [("a", "a1"), ("b", "b1"), ("a", "a2"), ("c", "c1")]
            assert [c.id for c in first] == sorted(c.id for c in first)
            await q.ingest([ev("a", "a3"), ev("d", "d1")], MAPPER)
            second = await q.claim(100, BIG, NOW)
            assert names(second) == [("d", "d1")]  # "a" is in flight: its a3 must wait
            await q.ack([c.id for c in first if c.partition == "a"])
            assert names(await q.claim(100, BIG, NOW)) == [("a", "a3")]
            assert await q.claim(100, BIG, NOW) == []

    run(body())


def test_blocked_partitions_skipped_until_not_before(harness: Harness) -> None:
    async def body() -> None:
        async with harness.queue() as q:
            await q.ingest([ev("a", "a1"), ev("b", "b1")], MAPPER)
            claimed = await q.claim(100, BIG, NOW)
            a_ids = [c.id for c in claimed if c.partition == "a"]
            await q.ack([c.id for c in claimed if c.partition == "b"])
            await q.retry(a_ids, not_before=NOW + 30, error="503")
            await q.ingest([ev("b", "b2"), ev("a", "a2")], MAPPER)
            assert (await q.stats(NOW)).partitions_blocked == 1
            assert names(await q.claim(100, BIG, NOW + 10)) == [("b", "b2")]
            later = await q.claim(100, BIG, NOW + 30)
            assert names(later) == [("a", "a1"), ("a", "a2")]
            assert later[0].attempts == 1 and later[1].attempts == 0
            assert (await q.stats(NOW + 30)).partitions_blocked == 0

    run(body())


def test_max_ops_and_max_bytes_respected(harness: Harness) -> None:
    async def body() -> None:
        async with harness.queue() as q:
            pad = "x" * 1000
            await q.ingest(
                [ev(f"p{i}", f"e{i}", properties={"pad": pad}) for i in range(10)], MAPPER
            )
            assert len(await q.claim(3, BIG, NOW)) == 3
            two = await q.claim(100, 2500, NOW)
            assert len(two) == 2 and sum(len(c.body_json) for c in two) <= 2500
            alone = await q.claim(100, 10, NOW)  # one op over max_bytes still goes, alone
            assert len(alone) == 1
            assert len(await q.claim(0, BIG, NOW)) == 0
            assert len(await q.claim(100, BIG, NOW)) == 4

    run(body())


def test_byte_limit_never_lets_a_partition_skip_ahead(harness: Harness) -> None:
    async def body() -> None:
        async with harness.queue() as q:
            big = "x" * 5000
            await q.ingest(
                [ev("a", "a1"), ev("a", "a2", properties={"pad": big}), ev("a", "a3")], MAPPER
            )
            first = await q.claim(100, 1000, NOW)
            assert names(first) == [("a", "a1")]
            await q.ack([c.id for c in first])
            assert names(await q.claim(100, 1000, NOW)) == [("a", "a2")]

    run(body())


# --- settle ---------------------------------------------------------------------------------


def test_ack_deletes(harness: Harness) -> None:
    async def body() -> None:
        async with harness.queue() as q:
            await q.ingest([ev("a", "a1"), ev("b", "b1")], MAPPER)
            claimed = await q.claim(100, BIG, NOW)
            await q.ack([c.id for c in claimed])
            await q.ack([c.id for c in claimed])  # twice is harmless
            stats = await q.stats(NOW)
            assert stats.depth == 0 and stats.oldest_age_secs == 0.0
            assert await q.claim(100, BIG, NOW) == []

    run(body())


def test_retry_counts_attempts(harness: Harness) -> None:
    async def body() -> None:
        async with harness.queue() as q:
            await q.ingest([ev("a", "a1")], MAPPER)
            for attempt in range(3):
                [op] = await q.claim(100, BIG, NOW + attempt)
                assert op.attempts == attempt
                await q.retry([op.id], not_before=NOW + attempt + 1, error="timeout")
            assert await q.claim(100, BIG, NOW + 2.5) == []
            [op] = await q.claim(100, BIG, NOW + 3)
            assert op.attempts == 3

    run(body())


def test_release_gives_back_without_an_attempt(harness: Harness) -> None:
    async def body() -> None:
        async with harness.queue() as q:
            await q.ingest([ev("a", "a1"), ev("a", "a2")], MAPPER)
            claimed = await q.claim(100, BIG, NOW)
            await q.release([c.id for c in claimed])
            again = await q.claim(100, BIG, NOW)
            assert [c.id for c in again] == [c.id for c in claimed]
            assert [c.attempts for c in again] == [0, 0]

    run(body())


def test_dead_letter_list_get_replay_purge(harness: Harness) -> None:
    async def body() -> None:
        async with harness.queue() as q:
            await q.ingest([ev("a", "a1"), ev("b", "b1"), ev("c", "c1")], MAPPER)
            claimed = await q.claim(100, BIG, NOW)
            a, b, c = claimed
            await q.dead_letter(
                [
                    Rejection(a.id, "rejected", "bad email", "POST /batch", '{"errors":[]}', 207),
                    Rejection(b.id, "expired"),
                ]
            )
            await q.ack([c.id])
            assert (await q.stats(NOW)).dead_letters == 2
            newest_first = await q.list_dead_letters()
            assert [d.op_id for d in newest_first] == [b.id, a.id]
            [rejected] = await q.list_dead_letters(reason="rejected")
            assert (rejected.detail, rejected.status, rejected.event_uuid) == (
                "bad email",
                207,
                a.event_uuid,
            )
            assert await q.list_dead_letters(since=rejected.created_at + 3600) == []
            got = await q.get_dead_letter(rejected.id)
            assert got == rejected and got.body_json == a.body_json
            assert await q.get_dead_letter(10**9) is None
            # the dead letter released the partition: new work for "a" flows
            await q.ingest([ev("a", "a2")], MAPPER)
            [a2] = await q.claim(100, BIG, NOW)
            await q.ack([a2.id])

            assert await q.replay_dead_letters([]) == 0
            assert await q.replay_dead_letters([rejected.id]) == 1
            [replayed] = await q.claim(100, BIG, NOW)
            assert replayed.body_json == a.body_json  # byte for byte: same event id
            assert replayed.id > a.id and replayed.attempts == 0
            [expired] = await q.list_dead_letters()
            assert await q.purge_dead_letters([expired.id, 10**9]) == 1
            assert (await q.stats(NOW)).dead_letters == 0

    run(body())


def test_stats(harness: Harness) -> None:
    async def body() -> None:
        async with harness.queue() as q:
            empty = await q.stats(NOW)
            assert (empty.depth, empty.oldest_age_secs, empty.dead_letters) == (0, 0.0, 0)
            await q.ingest([ev("a", "a1", set={"x": 1}), ev("b", "b1")], MAPPER)
            stats = await q.stats(time.time() + 5)
            assert stats.depth == 3
            assert 4 < stats.oldest_age_secs < 60
            assert stats.partitions_blocked == 0

    run(body())


# --- durability and ownership ---------------------------------------------------------------


def test_claims_released_on_reopen_as_owner(harness: Harness) -> None:
    async def body() -> None:
        async with harness.queue() as q:
            await q.ingest([ev("a", "a1"), ev("b", "b1")], MAPPER)
            claimed = await q.claim(100, BIG, NOW)
            assert len(claimed) == 2
            # the process "dies" here: no ack, no release
        async with harness.queue() as q:
            again = await q.claim(100, BIG, NOW)
            assert [c.id for c in again] == [c.id for c in claimed]

    run(body())


def test_owner_lock_refuses_a_second_owner(harness: Harness) -> None:
    if not harness.has_owner_lock:
        pytest.skip("this implementation has no single owner")

    async def body() -> None:
        async with harness.queue() as q:
            with pytest.raises(QueueUnavailable, match="another serve process"):
                harness.open(True)
            async with harness.queue(owner=False) as cli:  # a CLI command beside the server
                await q.ingest([ev("a", "a1")], MAPPER)
                assert (await cli.stats(NOW)).depth == 1
        async with harness.queue():  # the lock went with close
            pass

    run(body())


# --- concurrency and failure ----------------------------------------------------------------


def test_concurrent_ingests_share_commits(harness: Harness) -> None:
    async def body() -> None:
        async with harness.queue() as q:
            before = harness.commits(q)
            results = await asyncio.gather(
                *(q.ingest([ev(f"u{i % 7}", f"e{i}")], MAPPER) for i in range(200))
            )
            commits = harness.commits(q) - before
            assert all(r.accepted == 1 for r in results)
            assert commits < 50, commits
            assert (await q.stats(NOW)).depth == 200

    run(body())


def test_concurrent_ingests_behave_as_if_one_after_another(harness: Harness) -> None:
    """Calls that share a commit (SQLite maps them in one pass) still see each other in
    order: a uuid repeated across calls is stored once, a person's state carries over."""

    async def body() -> None:
        async with harness.queue() as q:
            repeated = ev("u1", "a")
            calls = [q.ingest([repeated], MAPPER) for _ in range(5)]
            calls += [q.ingest([ev("u2", f"e{i}")], MAPPER) for i in range(20)]
            results = await asyncio.gather(*calls)
            assert sum(r.accepted for r in results[:5]) == 1
            assert sum(r.dropped.get("duplicate", 0) for r in results[:5]) == 4
            assert all(r.accepted == 1 for r in results[5:])
            claimed = await q.claim(1000, BIG, NOW)
            u2 = [orjson.loads(c.body_json) for c in claimed if c.partition == "u2"]
            assert [body["name"] for body in u2] == [f"e{i}" for i in range(20)]
            assert [body["seen_before"] for body in u2] == [False] + [True] * 19

    run(body())


def test_queue_unavailable_fails_every_waiting_call(harness: Harness) -> None:
    harness.need_write_lock()

    async def body() -> None:
        async with harness.queue() as q:
            with harness.write_lock():
                results = await asyncio.gather(
                    *(q.ingest([ev(f"u{i}", f"e{i}")], MAPPER) for i in range(20)),
                    return_exceptions=True,
                )
            assert all(isinstance(r, QueueUnavailable) for r in results), results
            assert (await q.stats(NOW)).depth == 0
            assert (await q.ingest([ev("u1", "e1")], MAPPER)).accepted == 1

    run(body())


def test_queue_unavailable_writes_nothing(harness: Harness) -> None:
    harness.need_write_lock()

    async def body() -> None:
        async with harness.queue() as q:
            event = ev("a", "a1", set={"email": "a@example.com"})
            with harness.write_lock(), pytest.raises(QueueUnavailable):
                await q.ingest([event], MAPPER)
            stats = await q.stats(NOW)
            assert stats.depth == 0
            result = await q.ingest([event], MAPPER)  # not marked seen before
            assert result.accepted == 1
            [_identify, event_op] = await q.claim(100, BIG, NOW)
            assert orjson.loads(event_op.body_json)["seen_before"] is False  # no state written

    run(body())


# --- lanes and checkpoints ------------------------------------------------------------------

LIVE = frozenset({Lane.LIVE})
BACKFILL = frozenset({Lane.BACKFILL})


def test_checkpoint_commits_with_the_ingest_and_survives_reopen(harness: Harness) -> None:
    async def body() -> None:
        async with harness.queue() as q:
            assert await q.get_checkpoint("file:a.jsonl") is None
            first = Checkpoint("file:a.jsonl", '{"line": 2}')
            result = await q.ingest(
                [ev("u1", "a"), ev("u2", "b")], MAPPER, lane=Lane.BACKFILL, checkpoint=first
            )
            assert result.accepted == 2
            assert await q.get_checkpoint("file:a.jsonl") == '{"line": 2}'
            # a chunk with nothing to enqueue (all duplicates, or no events) still moves it
            await q.ingest([], MAPPER, checkpoint=Checkpoint("file:a.jsonl", '{"line": 3}'))
            assert await q.get_checkpoint("file:a.jsonl") == '{"line": 3}'
            assert await q.get_checkpoint("file:other.jsonl") is None
        async with harness.queue(owner=False) as q:  # a CLI beside the server reads it too
            assert await q.get_checkpoint("file:a.jsonl") == '{"line": 3}'
            assert (await q.stats(NOW)).depth == 2

    run(body())


def test_failed_mapping_does_not_move_the_checkpoint(harness: Harness) -> None:
    async def body() -> None:
        async with harness.queue() as q:
            source = "posthog-api:project=2"
            await q.ingest([ev("u1", "a")], MAPPER, checkpoint=Checkpoint(source, "1"))
            with pytest.raises(RuntimeError):
                await q.ingest(
                    [ev("u1", "b"), ev("u1", "boom")],
                    TinyMapper(fail_on="boom"),
                    lane=Lane.BACKFILL,
                    checkpoint=Checkpoint(source, "2"),
                )
            assert await q.get_checkpoint(source) == "1"
            assert (await q.stats(NOW)).depth == 1

    run(body())


def test_failed_write_does_not_move_the_checkpoint(harness: Harness) -> None:
    harness.need_write_lock()

    async def body() -> None:
        async with harness.queue() as q:
            source = "posthog-api:project=2"
            await q.ingest([ev("u1", "a")], MAPPER, checkpoint=Checkpoint(source, "1"))
            with harness.write_lock(), pytest.raises(QueueUnavailable):
                await q.ingest([ev("u1", "c")], MAPPER, checkpoint=Checkpoint(source, "3"))
            assert await q.get_checkpoint(source) == "1"
            assert (await q.stats(NOW)).depth == 1

    run(body())


def test_claim_by_lane_filters_partitions_by_their_head(harness: Harness) -> None:
    async def body() -> None:
        async with harness.queue() as q:
            await q.ingest([ev("h1", "old1"), ev("h2", "old2")], MAPPER, lane=Lane.BACKFILL)
            await q.ingest([ev("l1", "new1"), ev("l2", "new2")], MAPPER, lane=Lane.LIVE)
            live = await q.claim(100, BIG, NOW, lanes=LIVE)
            assert names(live) == [("l1", "new1"), ("l2", "new2")]
            assert await q.claim(100, BIG, NOW, lanes=LIVE) == []
            assert await q.claim(100, BIG, NOW, lanes=frozenset()) == []
            backfill = await q.claim(1, BIG, NOW, lanes=BACKFILL)
            assert names(backfill) == [("h1", "old1")]
            rest = await q.claim(100, BIG, NOW, lanes=frozenset(Lane))  # both lanes = any
            assert names(rest) == [("h2", "old2")]
            await q.ack([c.id for c in live + backfill + rest])
            # the head's lane changes as heads are acknowledged
            await q.ingest([ev("m", "m-backfill")], MAPPER, lane=Lane.BACKFILL)
            await q.ingest([ev("m", "m-live")], MAPPER, lane=Lane.LIVE)
            assert await q.claim(100, BIG, NOW, lanes=LIVE) == []
            [head] = await q.claim(1, BIG, NOW, lanes=BACKFILL)
            await q.ack([head.id])
            assert await q.claim(100, BIG, NOW, lanes=BACKFILL) == []
            assert names(await q.claim(100, BIG, NOW, lanes=LIVE)) == [("m", "m-live")]

    run(body())


def test_per_partition_order_holds_across_lanes(harness: Harness) -> None:
    async def body() -> None:
        async with harness.queue() as q:
            await q.ingest([ev("p", "p1"), ev("p", "p2")], MAPPER, lane=Lane.BACKFILL)
            await q.ingest([ev("p", "p3"), ev("x", "x1")], MAPPER, lane=Lane.LIVE)
            # "p" has a backfill head: a live claim must not take its live p3 ahead of p1, p2
            assert names(await q.claim(100, BIG, NOW, lanes=LIVE)) == [("x", "x1")]
            whole = await q.claim(100, BIG, NOW, lanes=BACKFILL)
            assert names(whole) == [("p", "p1"), ("p", "p2"), ("p", "p3")]
            await q.retry([whole[0].id], not_before=NOW + 5, error="503")
            await q.release([c.id for c in whole[1:]])
            assert await q.claim(100, BIG, NOW + 1) == []  # blocked, whatever the lane
            again = await q.claim(100, BIG, NOW + 5, lanes=BACKFILL)
            assert names(again) == [("p", "p1"), ("p", "p2"), ("p", "p3")]

    run(body())


# --- forget (GDPR erasure) ------------------------------------------------------------------


class NamingMapper(TinyMapper):
    """TinyMapper, except that an event carrying ``properties["op"]`` = (partition, body)
    becomes exactly that operation: how a test puts a body naming someone in any partition."""

    def map(self, event: PostHogEvent, states: Mapping[str, IdentityState]) -> MappingOutcome:
        if "op" not in event.properties:
            return super().map(event, states)
        partition, op_body = event.properties["op"]
        op = Operation(partition, Endpoint.BATCH, str(op_body["action"]), op_body, event.uuid)
        return MappingOutcome(states={}, operations=[op])


NAMING = NamingMapper()


def naming(partition: str, op_body: dict[str, Any]) -> PostHogEvent:
    return ev(partition, "named", properties={"op": (partition, op_body)})


async def _forgotten_rows(q: Queue) -> list[str]:
    """The ``forgotten`` table, read behind the queue's back."""
    if isinstance(q, MemoryQueue):
        return [f"{d}@{t:.0f}" for d, t in q.store.forgotten]
    if isinstance(q, SQLiteQueue):
        with contextlib.closing(sqlite3.connect(q.path)) as conn:
            rows = conn.execute("SELECT distinct_id, forgotten_at FROM forgotten ORDER BY id")
            return [f"{d}@{t:.0f}" for d, t in rows.fetchall()]
    assert isinstance(q, PostgresQueue)
    conn = await asyncpg.connect(q.url)
    try:
        rows = await conn.fetch("SELECT distinct_id, forgotten_at FROM forgotten ORDER BY id")
        return [f"{r[0]}@{r[1]:.0f}" for r in rows]
    finally:
        await conn.close()


def test_forget_removes_the_person_and_enqueues_their_deletion_last(harness: Harness) -> None:
    from posthog_customerio.mapping.mapper import EventMapper
    from posthog_customerio.mapping.rules import MappingRules

    by_email = EventMapper(MappingRules(identify_by_email=True))

    async def body() -> None:
        async with harness.queue() as q:
            # a dead letter of u1
            await q.ingest([ev("u1", "rejected")], NAMING)
            [rejected] = await q.claim(100, BIG, NOW)
            await q.dead_letter([Rejection(rejected.id, "rejected")])
            # u1's partition: one op that will be in flight, then pending ones
            await q.ingest([ev("u1", "first", set={"email": "Jane@x.test"})], NAMING)
            [in_flight] = await q.claim(1, BIG, NOW)  # u1's identify, being delivered
            await q.ingest(
                [
                    ev("u1", "second"),
                    ev("u2", "kept"),
                    naming("p-merge", {"action": "merge", "secondary": {"id": "u1"}}),
                    naming("p-email", {"action": "event", "identifiers": {"email": "jane@x.test"}}),
                    naming("p-u10", {"action": "event", "identifiers": {"id": "u10"}}),
                    naming("p-name", {"action": "event", "attributes": {"note": "u1"}}),
                ],
                NAMING,
            )
            result = await q.forget(["u1", "ghost", "u1"], by_email, now=NOW)
            assert result.distinct_ids == ("u1", "ghost")
            assert (result.identities, result.dead_letters, result.in_flight) == (1, 1, 1)
            # pending: u1's "first" event and "second", the merge, the op naming the email
            assert result.operations == 4
            assert result.enqueued == 3  # u1 by email and by id, ghost by id

            assert await q.list_dead_letters() == []
            assert await _forgotten_rows(q) == ["u1@1700000000", "ghost@1700000000"]
            others = await q.claim(100, BIG, NOW)
            assert sorted(c.partition for c in others) == ["ghost", "p-name", "p-u10", "u2"]
            ghost = [orjson.loads(c.body_json) for c in others if c.partition == "ghost"]
            assert ghost == [{"type": "person", "action": "delete", "identifiers": {"id": "ghost"}}]
            await q.ack([c.id for c in others])
            # the in-flight op is delivered first, then the deletes, in that order
            await q.ack([in_flight.id])
            deletes = await q.claim(100, BIG, NOW)
            assert [(c.partition, orjson.loads(c.body_json)) for c in deletes] == [
                (
                    "u1",
                    {"type": "person", "action": "delete", "identifiers": {"email": "Jane@x.test"}},
                ),
                ("u1", {"type": "person", "action": "delete", "identifiers": {"id": "u1"}}),
            ]
            assert [c.action for c in deletes] == ["delete", "delete"]
            await q.ack([c.id for c in deletes])
            assert (await q.stats(NOW)).depth == 0
            # nothing is remembered: u1 starts again as never seen
            await q.ingest([ev("u1", "again")], NAMING)
            [again] = await q.claim(100, BIG, NOW)
            assert orjson.loads(again.body_json)["seen_before"] is False

    run(body())


def test_forget_with_suppress_and_nothing_stored(harness: Harness) -> None:
    from posthog_customerio.mapping.mapper import EventMapper
    from posthog_customerio.mapping.rules import MappingRules

    async def body() -> None:
        async with harness.queue(owner=True) as q:
            result = await q.forget(["nobody"], EventMapper(MappingRules()), suppress=True, now=NOW)
            assert (result.identities, result.operations, result.dead_letters) == (0, 0, 0)
            assert result.enqueued == 1
            [op] = await q.claim(100, BIG, NOW)
            assert orjson.loads(op.body_json) == {
                "type": "person",
                "action": "suppress",
                "identifiers": {"id": "nobody"},
            }
            assert await _forgotten_rows(q) == ["nobody@1700000000"]

    run(body())


def test_forget_from_a_second_non_owner_queue(harness: Harness) -> None:
    """The CLI beside a running server: forget through a non-owner queue of the same store."""
    from posthog_customerio.mapping.mapper import EventMapper
    from posthog_customerio.mapping.rules import MappingRules

    async def body() -> None:
        async with harness.queue() as owner:
            await owner.ingest([ev("u1", "a"), ev("u1", "b")], NAMING)
            async with harness.queue(owner=False) as cli:
                result = await cli.forget(["u1"], EventMapper(MappingRules()), now=NOW)
            assert (result.identities, result.operations, result.enqueued) == (1, 2, 1)
            [op] = await owner.claim(100, BIG, NOW)
            assert op.action == "delete" and op.partition == "u1"

    run(body())


def test_reporting_lookups_by_email_and_seen_uuid(harness: Harness) -> None:
    """The reverse path's reads: who has a stored email (identified first), which uuids were
    ingested."""

    async def body() -> None:
        async with harness.queue() as q:
            await q.ingest([ev("anon-1", "clicked", set={"email": "ada@example.com"})], MAPPER)
            await q.ingest([ev("ada", "$identify", set={"email": "ada@example.com"})], MAPPER)
            await q.ingest([ev("bob", "clicked", set={"email": "bob@example.com"})], MAPPER)
            seen = ev("bob", "clicked", uuid="01932b8e-7c3a-7d4e-9f00-0123456789ab")
            await q.ingest([seen], MAPPER)
            assert await q.distinct_id_for_email("ada@example.com") == "ada"
            assert await q.distinct_id_for_email("bob@example.com") == "bob"
            assert await q.distinct_id_for_email("nobody@example.com") is None
            assert await q.was_seen("01932b8e-7c3a-7d4e-9f00-0123456789ab") is True
            assert await q.was_seen("01932b8e-7c3a-7d4e-9f00-0123456789ac") is False

    run(body())


def test_a_webhook_body_with_nul_in_its_ids_is_stored_alone_and_with_others(
    harness: Harness,
) -> None:
    """U+0000 in a distinct_id, ``$anon_distinct_id``, alias or uuid: PostgreSQL's text
    refused it and failed the whole group commit (503 for every body in it, on every retry)."""
    from posthog_customerio.mapping.mapper import EventMapper
    from posthog_customerio.mapping.rules import MappingRules
    from posthog_customerio.sources.webhook import parse_webhook_body

    mapper = EventMapper(MappingRules())
    poisoned = parse_webhook_body(
        b'[{"uuid": "019a3c10-0000-7a01-8b01-00000000\\u00001", "event": "$identify",'
        b' "distinct_id": "user_\\u0000a", "properties": {"$anon_distinct_id": "anon\\u0000"}},'
        b' {"uuid": "019a3c10-0000-7a01-8b01-000000000002", "event": "$create_alias",'
        b' "distinct_id": "user_\\u0000a", "properties": {"alias": "al\\u0000"}}]',
        received_ms=0,
    )

    async def body() -> None:
        async with harness.queue() as q:
            alone = await q.ingest(poisoned[:1], mapper)
            assert alone.accepted == 1
            together = await asyncio.gather(
                q.ingest(poisoned[1:], mapper),
                q.ingest([ev("user_good", "clicked")], mapper),
            )
            assert [r.accepted + sum(r.dropped.values()) for r in together] == [1, 1]
            assert together[1].accepted == 1

    run(body())
