"""The shared queue: one PostgreSQL database, any number of processes on any number of machines.

This module is the only place that talks to PostgreSQL (procrastinate's connector habit): an
asyncpg pool, the migrations, and the ``Queue`` as calls to the named statements of
``postgres_queries``.

Ingest is group-committed like SQLite's: concurrent calls queue up and a few writer tasks each
take every call waiting and run them in one transaction. The transaction first locks the
identity rows of every distinct_id the group's events relate to (one statement, sorted ids), so
two processes mapping events of the same person serialise and sticky flags only ever merge;
dedup by uuid is checked under those locks and re-checked by the insert.

Delivery is shared through leased partitions. A claim takes ready partitions with
``FOR UPDATE SKIP LOCKED``, marks its operations ``claimed_by`` this worker and leases their
partitions (``owner``, ``lease_until``) for ``lease_secs``. A background task renews the leases
and the worker's heartbeat every ``heartbeat_secs``. A partition is in flight while one of its
operations is claimed by its owner, so it is never in two requests at once; when a process
dies its leases run out and any other process takes the partitions, operations included.
Settles are fenced: retry and release only touch this worker's own claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from typing import Any, TypeVar

import asyncpg
import orjson

from posthog_customerio.errors import QueueUnavailable, StoreNotFound
from posthog_customerio.mapping.identity import IdentityState
from posthog_customerio.queue import plan
from posthog_customerio.queue import postgres_queries as q
from posthog_customerio.queue.base import (
    ClaimedOperation,
    DeadLetter,
    ForgetResult,
    Forgetter,
    IngestResult,
    Lane,
    QueueStats,
    Rejection,
    WorkerInfo,
)
from posthog_customerio.queue.codec import decode_state, encode_state
from posthog_customerio.queue.forget import Erasure
from posthog_customerio.queue.group_commit import (
    GroupCommittedIngest,
    PendingIngest,
    settle,
    take_waiting,
)
from posthog_customerio.queue.location import redact_url
from posthog_customerio.queue.migrations import migrations
from posthog_customerio.queue.rows import claimed_from_row, dead_letter_from_row
from posthog_customerio.queue.wakeup import WorkSignal

__all__ = ["PostgresQueue", "apply_migrations", "migrate_database", "schema_version"]

log = logging.getLogger("posthog_customerio.queue.postgres")

GROUP_COMMIT_MAX_CALLS = 512
INGEST_WRITERS = 2  # transactions forming while another commits
PRUNE_CHUNK_ROWS = 10_000
DEFAULT_LOCK_TIMEOUT_MS = 5_000
DEFAULT_POOL_SIZE = 12
CONNECT_TIMEOUT_SECS = 5.0
ACQUIRE_TIMEOUT_SECS = 10.0
SEEN_RACE_ATTEMPTS = 3
WORKER_SAMPLE_PARTITIONS = 20
_EMPTY_STATE = encode_state(IdentityState())
_T = TypeVar("_T")

# SQLSTATE classes and codes meaning "the database cannot take this now", not "the code is
# wrong": connection exceptions, insufficient resources, operator intervention (restart,
# shutdown), system errors, lock timeouts, serialisation failures and deadlocks.
_UNAVAILABLE_CLASSES = ("08", "53", "57", "58")
_UNAVAILABLE_CODES = frozenset({"55P03", "40001", "40P01"})


def _translate(exc: BaseException) -> BaseException:
    """Driver errors that mean "try later" become QueueUnavailable; bugs stay themselves."""
    if isinstance(exc, QueueUnavailable):
        return exc
    unavailable = False
    if isinstance(exc, asyncpg.PostgresError):
        code = str(getattr(exc, "sqlstate", "") or "")
        unavailable = code.startswith(_UNAVAILABLE_CLASSES) or code in _UNAVAILABLE_CODES
    elif isinstance(
        exc,
        asyncpg.InterfaceError | asyncpg.exceptions.InternalClientError | OSError | TimeoutError,
    ):
        unavailable = True  # connection lost, refused or left broken by a restart; pool full
    if not unavailable:
        return exc
    err = QueueUnavailable(f"postgresql: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


@contextlib.asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    try:
        yield
    except Exception as exc:
        translated = _translate(exc)
        if translated is exc:
            raise
        raise translated from exc


@contextlib.asynccontextmanager
async def _database_named(url: str) -> AsyncIterator[None]:
    """A database that does not exist is a store not found, not a driver error."""
    try:
        yield
    except asyncpg.InvalidCatalogNameError as exc:
        raise StoreNotFound(f"the PostgreSQL database {redact_url(url)}") from exc


# --- migrations ----------------------------------------------------------------------------


async def schema_version(conn: Any) -> int:
    if not await conn.fetchval(q.SCHEMA_VERSION_EXISTS):
        return 0
    return int(await conn.fetchval(q.CURRENT_SCHEMA_VERSION))


async def apply_migrations(conn: Any, target: int | None = None) -> list[int]:
    """Apply the pending migrations (up to ``target``) in one transaction; returns them.

    Every migrating process takes the same transaction-scoped advisory lock first and reads
    the version after it, so processes starting at once apply each migration exactly once.
    """
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute(q.MIGRATION_LOCK, q.MIGRATION_LOCK_KEY)
        await conn.execute(q.CREATE_SCHEMA_VERSION)
        current = int(await conn.fetchval(q.CURRENT_SCHEMA_VERSION))
        for version, name, script in migrations("postgres"):
            if version <= current or (target is not None and version > target):
                continue
            await conn.execute(script)
            await conn.execute(q.RECORD_SCHEMA_VERSION, version, name)
            applied.append(version)
    return applied


async def migrate_database(url: str) -> list[int]:
    """Migrate the database at ``url`` (the ``migrate`` command, backfill's first run): one
    connection, no registration; safe beside running ``serve`` processes."""
    try:
        conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_SECS)
    except asyncpg.InvalidCatalogNameError as exc:
        raise StoreNotFound(f"the PostgreSQL database {redact_url(url)}") from exc
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise QueueUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    try:
        async with _translated():
            return await apply_migrations(conn)
    finally:
        await conn.close()


# --- ingest jobs ---------------------------------------------------------------------------


class _SeenRace(Exception):
    """Another process committed one of this group's uuids between our check and insert."""


async def _insert_operations(conn: Any, rows: Sequence[plan.OperationRow], now: float) -> None:
    """Insert ``rows`` in order (one statement, one array per column) and add the partitions
    they start, or move a partition's head back to them."""
    columns = [list(column) for column in zip(*rows, strict=True)]
    inserted = await conn.fetch(q.INSERT_OPERATIONS, *columns, now)
    heads = plan.partition_heads((row[0], row[1]) for row in inserted)
    keys = sorted(heads)
    await conn.execute(q.ADD_PARTITIONS, keys, [heads[k] for k in keys])


# --- the queue -----------------------------------------------------------------------------


class PostgresQueue(GroupCommittedIngest):
    """The ``Queue`` on PostgreSQL. Create with :meth:`open`; it connects on :meth:`start` (or
    the first call) and is closed with :meth:`close`.

    ``owner=True`` is a serving worker: it migrates the schema, registers in ``workers``,
    heartbeats and renews its leases in the background, and gives its claims back on close.
    ``owner=False`` is for CLI commands: no migration (it requires the current schema), no
    registration, and no claims.
    """

    def __init__(
        self,
        url: str,
        *,
        owner: bool,
        lease_secs: float,
        heartbeat_secs: float,
        lock_timeout_ms: int,
        pool_size: int,
    ) -> None:
        self.url = url
        self.owner = owner
        self.lease_secs = lease_secs
        self.heartbeat_secs = heartbeat_secs
        self._lock_timeout_ms = lock_timeout_ms
        self._pool_size = pool_size
        self._pool: Any = None
        self._start_lock: asyncio.Lock | None = None
        self._closed = False
        self.worker_id: int | None = None
        self.commit_count = 0
        self._calls: asyncio.Queue[PendingIngest | None] | None = None
        self._writers: list[asyncio.Task[None]] = []
        self._heartbeat: asyncio.Task[None] | None = None
        self._work = WorkSignal()
        self.lease_lost_count = 0  # heartbeats that found this worker presumed dead
        # Claimed and not yet settled, op id → partition: only these partitions' leases are
        # renewed, so a claim whose answer was lost (connection cut after COMMIT) expires.
        self._outstanding: dict[int, str] = {}
        # Settles that failed (database away): retried by the heartbeat until they succeed.
        self._pending_ack: set[int] = set()
        self._pending_release: set[int] = set()

    @classmethod
    def open(
        cls,
        url: str,
        *,
        owner: bool = True,
        lease_secs: float = 30.0,
        heartbeat_secs: float = 5.0,
        lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
        pool_size: int = DEFAULT_POOL_SIZE,
    ) -> PostgresQueue:
        """A queue on ``url`` (``postgresql://`` or ``postgres://``); no I/O until started."""
        return cls(
            url,
            owner=owner,
            lease_secs=lease_secs,
            heartbeat_secs=heartbeat_secs,
            lock_timeout_ms=lock_timeout_ms,
            pool_size=pool_size,
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, migrate (owner), register and start heartbeats; idempotent."""
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._closed:
                raise QueueUnavailable("the queue is closed")
            if self._pool is not None:
                return
            async with _translated(), _database_named(self.url):
                pool = await asyncpg.create_pool(
                    self.url,
                    min_size=1,
                    max_size=self._pool_size,
                    timeout=CONNECT_TIMEOUT_SECS,
                    server_settings={
                        "application_name": "posthog-customerio",
                        "lock_timeout": str(self._lock_timeout_ms),
                        "idle_in_transaction_session_timeout": "60000",
                    },
                )
            try:
                await self._prepare(pool)
            except BaseException:
                await pool.close()
                raise
            self._pool = pool
            self._calls = asyncio.Queue()
            self._writers = [
                asyncio.create_task(self._writer(), name=f"pg-ingest-{i}")
                for i in range(INGEST_WRITERS)
            ]
            if self.owner:
                self._heartbeat = asyncio.create_task(self._beat(), name="pg-heartbeat")

    async def _prepare(self, pool: Any) -> None:
        async with _translated(), pool.acquire(timeout=ACQUIRE_TIMEOUT_SECS) as conn:
            if self.owner:
                applied = await apply_migrations(conn)
                if applied:
                    log.info("migrated the postgres queue", extra={"ctx": {"applied": applied}})
                self.worker_id = int(
                    await conn.fetchval(q.REGISTER_WORKER, socket.gethostname(), os.getpid())
                )
            else:
                have, want = await schema_version(conn), len(migrations("postgres"))
                if have != want:
                    raise QueueUnavailable(
                        f"the postgres queue at {redact_url(self.url)} has schema version "
                        f"{have}, this version needs {want}; "
                        "run `posthog-customerio migrate` (or start `serve` once)"
                    )

    async def _ready(self) -> Any:
        if self._pool is None:
            await self.start()
        return self._pool

    async def close(self) -> None:
        """Finish queued ingests, give back this worker's claims, disconnect; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._pool is None:
            return
        if self._calls is not None:
            for _ in self._writers:
                self._calls.put_nowait(None)
            await asyncio.gather(*self._writers, return_exceptions=True)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        if self.worker_id is not None:
            with contextlib.suppress(Exception):
                await self._settle_pending()  # delivered during an outage: ack them now
            try:
                async with (
                    self._pool.acquire(timeout=ACQUIRE_TIMEOUT_SECS) as conn,
                    conn.transaction(),
                ):
                    await conn.execute(q.RELEASE_WORKER_OPERATIONS, self.worker_id)
                    await conn.execute(q.RELEASE_WORKER_PARTITIONS, self.worker_id)
                    await conn.execute(q.UNREGISTER_WORKER, self.worker_id)
            except Exception:  # the leases run out by themselves
                log.warning("could not release the claims on close; they expire with the lease")
        await self._pool.close()

    # -- heartbeats -----------------------------------------------------------------------

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_secs)
            try:
                await self.heartbeat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "heartbeat failed; leases run out after lease_secs without one",
                    extra={"ctx": {"error": f"{type(exc).__name__}: {exc}"}},
                )

    async def heartbeat(self) -> None:
        """Renew this worker's heartbeat and leases; reap workers long dead."""
        pool = await self._ready()
        assert self.worker_id is not None
        async with _translated(), pool.acquire(timeout=ACQUIRE_TIMEOUT_SECS) as conn:
            async with conn.transaction():
                alive = await conn.fetchval(q.HEARTBEAT, self.worker_id)
                if alive is None:
                    self.lease_lost_count += 1
                    log.warning("this worker was presumed dead; registering again")
                    await conn.execute(
                        q.REREGISTER_WORKER, self.worker_id, socket.gethostname(), os.getpid()
                    )
                held = sorted(set(self._outstanding.values()))
                await conn.execute(q.RENEW_LEASES, self.worker_id, self.lease_secs, held)
            await conn.execute(q.REAP_WORKERS, max(10 * self.lease_secs, 300.0))
        await self._settle_pending()

    # -- the account's rate budget ------------------------------------------------------

    async def update_rate_budget(
        self, step: Callable[[dict[str, Any] | None, float, int], tuple[dict[str, Any], _T]]
    ) -> _T:
        """Run ``step`` (delivery/budget.py) on the budget every process shares: it gets the
        stored state (None at first), the database clock and the live workers, and returns the
        new state and its result. One short transaction holds the row lock over two statements,
        so grants of all processes are serialised and never overlap."""
        pool = await self._ready()
        async with (
            _translated(),
            pool.acquire(timeout=ACQUIRE_TIMEOUT_SECS) as conn,
            conn.transaction(),
        ):
            stored, now, live = await conn.fetchrow(q.LOCK_RATE_BUDGET, self.lease_secs)
            state, result = step(
                None if stored is None else orjson.loads(stored), float(now), int(live)
            )
            await conn.execute(q.PUT_RATE_BUDGET, orjson.dumps(state).decode())
        return result

    # -- wake-ups -------------------------------------------------------------------------

    async def wait_for_work(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Sleep until this process adds pending work (ingest, replay, release).

        Other processes' work is found by polling: delivery waits at most ``timeout``.
        """
        await self._ready()
        return await self._work.wait(timeout)

    # -- ingest ---------------------------------------------------------------------------

    async def _enqueue_ingest(self, call: PendingIngest) -> None:
        await self._ready()
        if self._closed or self._calls is None:
            raise QueueUnavailable("the queue is closed")
        self._calls.put_nowait(call)

    async def _writer(self) -> None:
        assert self._calls is not None
        while True:
            first = await self._calls.get()
            if first is None:
                return
            calls, stopping = take_waiting(first, self._calls.get_nowait, GROUP_COMMIT_MAX_CALLS)
            await self._run_group(calls)
            if stopping:
                return

    async def _run_group(self, calls: list[PendingIngest]) -> None:
        """One transaction for ``calls`` (again if another process won a uuid meanwhile, or a
        deadlock rolled it back); a failed transaction fails every call with QueueUnavailable."""
        error: BaseException = QueueUnavailable("concurrent ingest of the same uuids; try again")
        for _attempt in range(SEEN_RACE_ATTEMPTS):
            try:
                async with (
                    self._pool.acquire(timeout=ACQUIRE_TIMEOUT_SECS) as conn,
                    conn.transaction(),
                ):
                    results = await self._ingest_group(conn, calls)
            except (_SeenRace, asyncpg.DeadlockDetectedError):
                # The merge-chain rounds lock identity rows after the first sorted batch, so
                # two groups can deadlock: PostgreSQL rolled this one back; run it again.
                continue
            except Exception as exc:
                error = _translate(exc)
                if not isinstance(error, QueueUnavailable):
                    error = QueueUnavailable(f"the transaction failed: {exc!r}")
                    error.__cause__ = exc
                break
            self.commit_count += 1
            settle(calls, results)
            return
        settle(calls, [error] * len(calls))

    async def _ingest_group(
        self, conn: Any, calls: list[PendingIngest]
    ) -> list[IngestResult | Exception]:
        """Lock the identity rows the calls read, check dedup under those locks, plan
        (``queue.plan``) and write; raises _SeenRace when another process won a uuid."""
        now = time.time()
        read = plan.reads(calls)
        stored: dict[str, IdentityState] = {}
        more: Collection[str] = read.distinct_ids
        for _round in range(plan.MERGE_READS + 1):  # the merge chains: see plan.load_states
            if not more:
                break
            rows = await conn.fetch(q.LOCK_IDENTITIES, sorted(more), _EMPTY_STATE, now)
            stored.update((row[0], decode_state(bytes(row[1]))) for row in rows)
            more = plan.more_reads(read, stored)
        uuids = sorted(read.uuids)
        seen = {row[0] for row in await conn.fetch(q.SEEN_ALREADY, uuids)} if uuids else set()
        planned = plan.plan(calls, read, seen, stored)
        if planned.new_uuids:
            ordered = sorted(planned.new_uuids)
            inserted = await conn.fetch(q.MARK_SEEN, ordered, now)
            if len(inserted) != len(ordered):
                raise _SeenRace()
        if planned.rows:
            await _insert_operations(conn, planned.rows, now)
        changed = sorted(planned.states)
        if changed:
            await conn.execute(
                q.PUT_IDENTITIES, changed, [encode_state(planned.states[k]) for k in changed], now
            )
        for source, position in sorted(planned.checkpoints.items()):
            await conn.execute(q.PUT_CHECKPOINT, source, position, now)
        return planned.results

    async def get_checkpoint(self, source: str) -> str | None:
        pool = await self._ready()
        async with _translated():
            value = await pool.fetchval(q.GET_CHECKPOINT, source)
        return None if value is None else str(value)

    async def distinct_id_for_email(self, email: str) -> str | None:
        pool = await self._ready()
        async with _translated():
            value = await pool.fetchval(q.DISTINCT_ID_FOR_EMAIL, email)
        return None if value is None else str(value)

    async def was_seen(self, uuid: str) -> bool:
        pool = await self._ready()
        async with _translated():
            value = await pool.fetchval(q.WAS_SEEN, uuid)
        return value is not None

    # -- claim and settle -----------------------------------------------------------------

    async def claim(
        self, max_ops: int, max_bytes: int, now: float, *, lanes: frozenset[Lane] | None = None
    ) -> list[ClaimedOperation]:
        if max_ops <= 0:
            return []
        pool = await self._ready()
        if self.worker_id is None:
            raise RuntimeError("only a serving worker (owner=True) claims operations")
        lane_values = None if lanes is None else sorted(lane.value for lane in lanes)
        async with _translated(), pool.acquire(timeout=ACQUIRE_TIMEOUT_SECS) as conn:
            async with conn.transaction():
                await conn.execute(q.FREE_DUE_PARTITIONS, now)
            rows = await conn.fetch(
                q.CLAIM, max_ops, max_bytes, self.worker_id, lane_values, self.lease_secs
            )
        claimed = sorted((claimed_from_row(row) for row in rows), key=lambda op: op.id)
        self._outstanding.update((op.id, op.partition) for op in claimed)
        return claimed

    async def _settle(self, op_ids: Sequence[int], action: Any, *, delivered: bool) -> None:
        """Run ``action`` on the operations and re-settle their partitions, in one transaction.

        If the database is away, the operations stay this worker's (their leases renewed) and
        the heartbeat settles them later: acked if they were delivered, else released.
        """
        ids = sorted(set(op_ids))
        if not ids:
            return
        try:
            pool = await self._ready()
            async with (
                _translated(),
                pool.acquire(timeout=ACQUIRE_TIMEOUT_SECS) as conn,
                conn.transaction(),
            ):
                keys = [row[0] for row in await conn.fetch(q.LOCK_PARTITIONS_OF, ids)]
                await action(conn, ids, keys)
                await conn.execute(q.DELETE_EMPTY_PARTITIONS, keys)
                await conn.execute(q.SETTLE_PARTITIONS, keys)
        except QueueUnavailable:
            mine = [i for i in ids if i in self._outstanding]
            (self._pending_ack if delivered else self._pending_release).update(mine)
            raise
        for op_id in ids:
            self._outstanding.pop(op_id, None)
        self._pending_ack.difference_update(ids)
        if not delivered:
            self._pending_release.difference_update(ids)

    async def _settle_pending(self) -> None:
        """Retry the settles the database refused (acks first: those were delivered)."""
        if self._pending_ack:
            await self.ack(sorted(self._pending_ack))
        self._pending_release -= self._pending_ack
        if self._pending_release:
            await self.release(sorted(self._pending_release))

    async def ack(self, op_ids: Sequence[int]) -> None:
        async def action(conn: Any, ids: list[int], keys: list[str]) -> None:
            await conn.execute(q.DELETE_OPERATIONS, ids)

        await self._settle(op_ids, action, delivered=True)

    async def retry(self, op_ids: Sequence[int], not_before: float, error: str) -> None:
        async def action(conn: Any, ids: list[int], keys: list[str]) -> None:
            rows = await conn.fetch(q.RETRY_OPERATIONS, ids, error, self.worker_id)
            retried = sorted({row[0] for row in rows})
            if retried:
                await conn.execute(q.BLOCK_PARTITIONS, retried, not_before, self.worker_id)

        await self._settle(op_ids, action, delivered=False)

    async def release(self, op_ids: Sequence[int]) -> None:
        async def action(conn: Any, ids: list[int], keys: list[str]) -> None:
            await conn.execute(q.RELEASE_OPERATIONS, ids, self.worker_id)

        await self._settle(op_ids, action, delivered=False)
        if op_ids:
            self._work.set()

    async def dead_letter(self, rejections: Sequence[Rejection]) -> None:
        by_id = {r.op_id: r for r in rejections}

        async def action(conn: Any, ids: list[int], keys: list[str]) -> None:
            chosen = [by_id[i] for i in ids]
            await conn.execute(
                q.INSERT_DEAD_LETTERS,
                [r.op_id for r in chosen],
                [r.reason for r in chosen],
                [r.detail for r in chosen],
                [r.request for r in chosen],
                [r.response for r in chosen],
                [r.status for r in chosen],
                time.time(),
            )
            await conn.execute(q.DELETE_OPERATIONS, ids)

        await self._settle(list(by_id), action, delivered=False)

    # -- status ---------------------------------------------------------------------------

    async def stats(self, now: float) -> QueueStats:
        pool = await self._ready()
        async with _translated(), pool.acquire(timeout=ACQUIRE_TIMEOUT_SECS) as conn:
            depth = await conn.fetchval(q.COUNT_OPERATIONS)
            oldest = await conn.fetchval(q.OLDEST_ENQUEUED_AT)
            dead = await conn.fetchval(q.COUNT_DEAD_LETTERS)
            blocked = await conn.fetchval(q.BLOCKED_PARTITIONS, now)
        return QueueStats(
            depth=int(depth),
            oldest_age_secs=max(0.0, now - oldest) if oldest is not None else 0.0,
            dead_letters=int(dead),
            partitions_blocked=int(blocked),
        )

    async def workers(self) -> list[WorkerInfo]:
        """Every live serving process (heartbeat within ``lease_secs``) with its partitions."""
        pool = await self._ready()
        async with _translated():
            rows = await pool.fetch(q.LIVE_WORKERS, self.lease_secs, WORKER_SAMPLE_PARTITIONS)
        return [
            WorkerInfo(
                id=str(row[0]),
                host=row[1],
                pid=row[2],
                started_at=row[3],
                heartbeat_at=row[4],
                partitions=int(row[5]),
                partition_sample=tuple(row[6]),
                this_process=row[0] == self.worker_id,
            )
            for row in rows
        ]

    # -- dead letters ---------------------------------------------------------------------

    async def list_dead_letters(
        self, reason: str | None = None, since: float | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        pool = await self._ready()
        async with _translated():
            rows = await pool.fetch(q.LIST_DEAD_LETTERS, reason, since, limit)
        return [dead_letter_from_row(row) for row in rows]

    async def get_dead_letter(self, dead_letter_id: int) -> DeadLetter | None:
        pool = await self._ready()
        async with _translated():
            row = await pool.fetchrow(q.GET_DEAD_LETTER, dead_letter_id)
        return dead_letter_from_row(row) if row is not None else None

    async def dead_letter_ids(
        self, reason: str | None = None, since: float | None = None
    ) -> list[int]:
        """Ids of the dead letters matching the filters, oldest first (for replay/purge all)."""
        pool = await self._ready()
        async with _translated():
            rows = await pool.fetch(q.DEAD_LETTER_IDS, reason, since)
        return [int(row[0]) for row in rows]

    async def replay_dead_letters(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        pool = await self._ready()
        async with (
            _translated(),
            pool.acquire(timeout=ACQUIRE_TIMEOUT_SECS) as conn,
            conn.transaction(),
        ):
            rows = await conn.fetch(q.REPLAY_DEAD_LETTERS, sorted(set(ids)), time.time())
            heads = plan.partition_heads((row[0], row[1]) for row in rows)
            if heads:
                keys = sorted(heads)
                await conn.execute(q.ADD_PARTITIONS, keys, [heads[k] for k in keys])
        replayed = len(rows)
        if replayed:
            self._work.set()
        return replayed

    async def purge_dead_letters(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        pool = await self._ready()
        async with _translated():
            status = await pool.execute(q.PURGE_DEAD_LETTERS, sorted(set(ids)))
        return int(status.split()[-1])

    async def forget(
        self,
        distinct_ids: Sequence[str],
        forgetter: Forgetter,
        *,
        suppress: bool = False,
        now: float,
    ) -> ForgetResult:
        targets = list(dict.fromkeys(distinct_ids))
        if not targets:
            return ForgetResult(distinct_ids=())
        pool = await self._ready()
        async with (
            _translated(),
            pool.acquire(timeout=ACQUIRE_TIMEOUT_SECS) as conn,
            conn.transaction(),
        ):
            result = await self._forget(conn, targets, forgetter, suppress, now)
        if result.enqueued:
            self._work.set()
        return result

    async def _forget(
        self, conn: Any, targets: list[str], forgetter: Forgetter, suppress: bool, now: float
    ) -> ForgetResult:
        # Lock (creating when absent) the identity rows first, as ingest does: an ingest of
        # these ids waits for this transaction, so nothing of theirs slips in between.
        rows = await conn.fetch(q.LOCK_IDENTITIES, sorted(targets), _EMPTY_STATE, now)
        decoded = ((row[0], decode_state(bytes(row[1]))) for row in rows)
        states = {d: state for d, state in decoded if state != IdentityState()}
        erasure = Erasure.of(targets, states)

        candidates = await conn.fetch(q.FORGET_OPERATION_CANDIDATES, targets, erasure.needles)
        chosen = [
            (row[0], row[1], row[3]) for row in candidates if erasure.names(row[1], bytes(row[2]))
        ]
        keys = sorted({partition for _, partition, _ in chosen} | erasure.ids)
        await conn.fetch(q.LOCK_PARTITIONS, keys)
        deleted = await conn.fetch(q.DELETE_UNCLAIMED_OPERATIONS, [c[0] for c in chosen])
        await conn.execute(q.DELETE_EMPTY_PARTITIONS, keys)
        await conn.execute(q.SETTLE_PARTITIONS, keys)

        letters = [
            row[0]
            for row in await conn.fetch(q.FORGET_DEAD_LETTER_CANDIDATES, targets, erasure.needles)
            if erasure.names(row[1], bytes(row[2]))
        ]
        if letters:
            await conn.execute(q.PURGE_DEAD_LETTERS, letters)
        await conn.execute(q.DELETE_IDENTITIES, targets)
        await conn.execute(q.RECORD_FORGOTTEN, targets, now)

        ops = erasure.operations(forgetter, suppress=suppress)
        if ops:
            rows = [plan.operation_row(op, Lane.LIVE.value) for op in ops]
            await _insert_operations(conn, rows, now)
        return erasure.result(
            operations=len(deleted),
            dead_letters=len(letters),
            in_flight=len(chosen) - len(deleted),
            enqueued=len(ops),
        )

    async def prune_seen(self, older_than: float) -> int:
        """Forget uuids first seen before the Unix time ``older_than``; returns how many."""
        pool = await self._ready()
        total = 0
        while True:
            async with _translated():
                status = await pool.execute(q.PRUNE_SEEN_CHUNK, older_than, PRUNE_CHUNK_ROWS)
            deleted = int(status.split()[-1])
            total += deleted
            if deleted < PRUNE_CHUNK_ROWS:
                return total
