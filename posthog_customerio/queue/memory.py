"""The in-memory queue: the ``Queue`` contract in plain Python, with nothing stored on disk.

A third implementation beside SQLite and PostgreSQL, not a fake: it ingests through the same
pure plan (``queue.plan``) and group commit (``queue.group_commit``), forgets through the same
``Erasure`` and passes the same contract suite (tests/unit/test_queue_contract.py). What the
other stores do with tables, indexes and locks it does with dicts and a scan, so it is the
reference for what the contract means, and the delivery tests run on it. Nothing is durable:
the data lives as long as its ``MemoryStore``.

Several handles may share one ``MemoryStore``, as processes share a file or a database (a
``serve`` and a CLI command beside it); one of them at a time is its owner.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from posthog_customerio.errors import QueueUnavailable
from posthog_customerio.mapping.identity import IdentityState
from posthog_customerio.mapping.operation import Endpoint
from posthog_customerio.queue import plan
from posthog_customerio.queue.base import (
    ClaimedOperation,
    DeadLetter,
    ForgetResult,
    Forgetter,
    Lane,
    QueueStats,
    Rejection,
    WorkerInfo,
)
from posthog_customerio.queue.forget import Erasure
from posthog_customerio.queue.group_commit import GroupCommittedIngest, PendingIngest, settle
from posthog_customerio.queue.wakeup import WorkSignal

__all__ = ["MemoryQueue", "MemoryStore", "StoredOperation"]

WORKER_SAMPLE = 20  # in-flight partitions listed by ``workers``, as the other stores do


@dataclass(slots=True)
class StoredOperation:
    """One pending operation. ``claimed``: in a request now (its partition is in flight)."""

    id: int
    partition: str
    endpoint: Endpoint
    action: str
    body: bytes
    event_uuid: str
    lane: Lane
    enqueued_at: float
    attempts: int = 0
    claimed: bool = False
    last_error: str = ""

    def as_claimed(self) -> ClaimedOperation:
        return ClaimedOperation(
            id=self.id,
            partition=self.partition,
            endpoint=self.endpoint,
            action=self.action,
            body_json=self.body,
            attempts=self.attempts,
            enqueued_at=self.enqueued_at,
            event_uuid=self.event_uuid,
        )


@dataclass(slots=True)
class MemoryStore:
    """The tables of one store, shared by its handles. ``operations`` and ``dead_letters`` are
    in id order (ids only grow, so insertion order is id order); a partition is the set of
    operations with its key, and exists while it has one."""

    operations: dict[int, StoredOperation] = field(default_factory=dict)
    blocked_until: dict[str, float] = field(default_factory=dict)  # partition -> backoff end
    seen: dict[str, float] = field(default_factory=dict)  # event uuid -> when first seen
    identities: dict[str, IdentityState] = field(default_factory=dict)
    checkpoints: dict[str, str] = field(default_factory=dict)  # source -> position
    dead_letters: dict[int, DeadLetter] = field(default_factory=dict)
    forgotten: list[tuple[str, float]] = field(default_factory=list)  # (distinct_id, when)
    last_operation_id: int = 0
    last_dead_letter_id: int = 0
    owned: bool = False  # an owner handle is started


class MemoryQueue(GroupCommittedIngest):
    """The ``Queue`` on a ``MemoryStore`` (a new one unless given). Construct, :meth:`start`,
    :meth:`close`; :meth:`open` constructs and starts at once. ``clock`` stamps what the
    queue records (enqueued, seen, dead-lettered at)."""

    def __init__(
        self,
        store: MemoryStore | None = None,
        *,
        owner: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store if store is not None else MemoryStore()
        self.owner = owner
        self.commit_count = 0  # ingest groups written; tests use it to prove group commit
        self._clock = clock
        self._started = False
        self._closed = False
        self._owns = False
        self._started_at = 0.0
        self._waiting: list[PendingIngest] = []
        self._work = WorkSignal()

    @classmethod
    def open(
        cls,
        store: MemoryStore | None = None,
        *,
        owner: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> MemoryQueue:
        """Construct and start, from synchronous code."""
        queue = cls(store, owner=owner, clock=clock)
        queue._start()
        return queue

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """As owner, refuse a second one and give back the claims a previous owner left."""
        self._start()

    def _start(self) -> None:
        if self._started:
            return
        if self._closed:
            raise QueueUnavailable("the queue is closed")
        if self.owner:
            if self.store.owned:
                raise QueueUnavailable("another serve process owns this in-memory store")
            self.store.owned = self._owns = True
            for op in self.store.operations.values():
                op.claimed = False
        self._started_at = self._clock()
        self._started = True

    async def close(self) -> None:
        """Write the ingest calls still waiting, then let another owner start; idempotent."""
        if self._closed:
            return
        self._write_waiting()
        self._closed = True
        if self._owns:
            self.store.owned = self._owns = False

    def _check(self) -> MemoryStore:
        if self._closed:
            raise QueueUnavailable("the queue is closed")
        if not self._started:
            raise QueueUnavailable("the queue is not started")
        return self.store

    # -- wake-ups -------------------------------------------------------------------------

    async def wait_for_work(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Sleep until this handle adds pending work (ingest, replay, release, forget)."""
        self._check()
        return await self._work.wait(timeout)

    # -- ingest ---------------------------------------------------------------------------

    async def _enqueue_ingest(self, call: PendingIngest) -> None:
        self._check()
        self._waiting.append(call)
        if len(self._waiting) == 1:  # the calls that arrive before it runs join this write
            asyncio.get_running_loop().call_soon(self._write_waiting)

    def _write_waiting(self) -> None:
        """Plan every waiting call together and apply the plan: one "transaction"."""
        calls, self._waiting = self._waiting, []
        if not calls:
            return
        store, now = self.store, self._clock()
        try:
            read = plan.reads(calls)
            known = store.identities
            stored = plan.load_states(
                read, lambda ids: {d: s for d in ids if (s := known.get(d)) is not None}
            )
            planned = plan.plan(calls, read, store.seen, stored)
        except Exception as exc:  # a bug in the plan: nothing was written
            error = QueueUnavailable(f"the transaction failed: {exc!r}")
            error.__cause__ = exc
            settle(calls, [error] * len(calls))
            return
        store.seen.update(dict.fromkeys(planned.new_uuids, now))
        self._insert(planned.rows, now)
        store.identities.update(planned.states)
        store.checkpoints.update(planned.checkpoints)
        self.commit_count += 1
        settle(calls, planned.results)

    def _insert(self, rows: Iterable[plan.OperationRow], now: float) -> None:
        store = self.store
        for partition, endpoint, action, body, _size, event_uuid, lane in rows:
            store.last_operation_id += 1
            op_id = store.last_operation_id
            store.operations[op_id] = StoredOperation(
                op_id, partition, Endpoint(endpoint), action, body, event_uuid, Lane(lane), now
            )

    async def get_checkpoint(self, source: str) -> str | None:
        return self._check().checkpoints.get(source)

    async def distinct_id_for_email(self, email: str) -> str | None:
        found = [
            (state.identified, did)
            for did, state in self._check().identities.items()
            if state.email == email
        ]
        return max(found)[1] if found else None

    async def was_seen(self, uuid: str) -> bool:
        return uuid in self._check().seen

    async def prune_seen(self, older_than: float) -> int:
        seen = self._check().seen
        old = [uuid for uuid, at in seen.items() if at < older_than]
        for uuid in old:
            del seen[uuid]
        return len(old)

    # -- delivery -------------------------------------------------------------------------

    async def claim(
        self, max_ops: int, max_bytes: int, now: float, *, lanes: frozenset[Lane] | None = None
    ) -> list[ClaimedOperation]:
        """The first operations, in id order, of the partitions that are neither in flight
        nor blocked and whose head is in ``lanes``; stops (never skips) at a limit, so each
        partition's claim is a prefix of its operations."""
        store = self._check()
        for partition, until in list(store.blocked_until.items()):
            if until <= now:
                del store.blocked_until[partition]
        heads: dict[str, StoredOperation] = {}
        busy = set(store.blocked_until)
        for op in store.operations.values():
            heads.setdefault(op.partition, op)
            if op.claimed:
                busy.add(op.partition)
        claimable = {
            partition
            for partition, head in heads.items()
            if partition not in busy and (lanes is None or head.lane in lanes)
        }
        taken: list[StoredOperation] = []
        size = 0
        for op in store.operations.values():
            if len(taken) >= max_ops:
                break
            if op.partition not in claimable:
                continue
            if taken and size + len(op.body) > max_bytes:
                break
            taken.append(op)
            size += len(op.body)
        for op in taken:
            op.claimed = True
        return [op.as_claimed() for op in taken]

    def _existing(self, op_ids: Iterable[int]) -> Iterator[StoredOperation]:
        """The operations still stored among ``op_ids``, once each: settling twice is harmless."""
        operations = self._check().operations
        for op_id in dict.fromkeys(op_ids):
            op = operations.get(op_id)
            if op is not None:
                yield op

    def _delete(self, ops: Sequence[StoredOperation]) -> None:
        """Delete ``ops``; a partition left empty ends, and its backoff with it."""
        store = self.store
        for op in ops:
            del store.operations[op.id]
        remaining = {op.partition for op in store.operations.values()}
        for partition in {op.partition for op in ops} - remaining:
            store.blocked_until.pop(partition, None)

    async def ack(self, op_ids: Sequence[int]) -> None:
        self._delete(list(self._existing(op_ids)))

    async def retry(self, op_ids: Sequence[int], not_before: float, error: str) -> None:
        blocked = self.store.blocked_until
        for op in self._existing(op_ids):
            op.claimed = False
            op.attempts += 1
            op.last_error = error
            blocked[op.partition] = max(blocked.get(op.partition, 0.0), not_before)

    async def release(self, op_ids: Sequence[int]) -> None:
        for op in self._existing(op_ids):
            op.claimed = False
        if op_ids:
            self._work.set()

    async def dead_letter(self, rejections: Sequence[Rejection]) -> None:
        store, now = self.store, self._clock()
        by_id = {r.op_id: r for r in rejections}
        moved = list(self._existing(by_id))
        for op in moved:
            r = by_id[op.id]
            store.last_dead_letter_id += 1
            store.dead_letters[store.last_dead_letter_id] = DeadLetter(
                id=store.last_dead_letter_id,
                op_id=op.id,
                partition=op.partition,
                endpoint=op.endpoint,
                action=op.action,
                body_json=op.body,
                reason=r.reason,
                detail=r.detail,
                request=r.request,
                response=r.response,
                status=r.status,
                created_at=now,
                event_uuid=op.event_uuid,
            )
        self._delete(moved)

    # -- admin ----------------------------------------------------------------------------

    def _matching(self, reason: str | None, since: float | None) -> list[DeadLetter]:
        """Dead letters with that reason and created at or after ``since``, oldest first."""
        return [
            d
            for d in self._check().dead_letters.values()
            if (reason is None or d.reason == reason) and (since is None or d.created_at >= since)
        ]

    async def list_dead_letters(
        self, reason: str | None = None, since: float | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        return self._matching(reason, since)[::-1][:limit]

    async def get_dead_letter(self, dead_letter_id: int) -> DeadLetter | None:
        return self._check().dead_letters.get(dead_letter_id)

    async def dead_letter_ids(
        self, reason: str | None = None, since: float | None = None
    ) -> list[int]:
        return [d.id for d in self._matching(reason, since)]

    async def replay_dead_letters(self, ids: Sequence[int]) -> int:
        """Enqueue the same bodies again, in the live lane (an operator asks for them now)."""
        letters = self._check().dead_letters
        replayed = [d for i in sorted(set(ids)) if (d := letters.pop(i, None)) is not None]
        rows = [
            (
                d.partition,
                d.endpoint.value,
                d.action,
                d.body_json,
                len(d.body_json),
                d.event_uuid,
                Lane.LIVE.value,
            )
            for d in replayed
        ]
        self._insert(rows, self._clock())
        if rows:
            self._work.set()
        return len(rows)

    async def purge_dead_letters(self, ids: Sequence[int]) -> int:
        letters = self._check().dead_letters
        return sum(letters.pop(i, None) is not None for i in set(ids))

    async def forget(
        self,
        distinct_ids: Sequence[str],
        forgetter: Forgetter,
        *,
        suppress: bool = False,
        now: float,
    ) -> ForgetResult:
        store = self._check()
        targets = list(dict.fromkeys(distinct_ids))
        states = {d: store.identities[d] for d in targets if d in store.identities}
        erasure = Erasure.of(targets, states)
        named = [op for op in store.operations.values() if erasure.names(op.partition, op.body)]
        pending = [op for op in named if not op.claimed]  # in flight: delivered before the delete
        self._delete(pending)
        letters = [
            d.id for d in store.dead_letters.values() if erasure.names(d.partition, d.body_json)
        ]
        for dl_id in letters:
            del store.dead_letters[dl_id]
        for distinct_id in targets:
            store.identities.pop(distinct_id, None)
            store.forgotten.append((distinct_id, now))
        ops = erasure.operations(forgetter, suppress=suppress)
        self._insert([plan.operation_row(op, Lane.LIVE.value) for op in ops], now)
        if ops:
            self._work.set()
        return erasure.result(
            operations=len(pending),
            dead_letters=len(letters),
            in_flight=len(named) - len(pending),
            enqueued=len(ops),
        )

    # -- status ---------------------------------------------------------------------------

    async def stats(self, now: float) -> QueueStats:
        store = self._check()
        oldest = next(iter(store.operations.values()), None)
        return QueueStats(
            depth=len(store.operations),
            oldest_age_secs=max(0.0, now - oldest.enqueued_at) if oldest is not None else 0.0,
            dead_letters=len(store.dead_letters),
            partitions_blocked=sum(until > now for until in store.blocked_until.values()),
        )

    async def workers(self) -> list[WorkerInfo]:
        """This process as owner; none seen from a non-owner handle (a CLI command)."""
        store = self._check()
        if not self._owns:
            return []
        in_flight = sorted({op.partition for op in store.operations.values() if op.claimed})
        return [
            WorkerInfo(
                id="memory",
                host=socket.gethostname(),
                pid=os.getpid(),
                started_at=self._started_at,
                heartbeat_at=self._clock(),
                partitions=len(in_flight),
                partition_sample=tuple(in_flight[:WORKER_SAMPLE]),
                this_process=True,
            )
        ]
