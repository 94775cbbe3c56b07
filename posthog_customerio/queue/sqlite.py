"""The embedded queue: one SQLite file, one writer thread, group commit.

Why one thread: a sqlite3 connection is cheap to use from the thread that owns it and SQLite
has one writer anyway. Async callers hand that thread a job (a function of the connection) and
await a future. Why group commit: with ``synchronous=FULL`` every COMMIT is an fsync, so the
thread takes every job already waiting, runs them in one transaction (a SAVEPOINT each, so one
job's failure fails only its caller) and commits once; many concurrent webhooks share an fsync.

Claiming stays cheap at millions of rows because ``partitions`` keeps, per partition, its state
(ready, in flight, blocked) and its first operation id: a claim merges the ready partitions in
head order through a partial index and never reads operations of busy partitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import heapq
import os
import queue
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypeVar

import orjson

from posthog_customerio.errors import QueueUnavailable, StoreNotFound
from posthog_customerio.mapping.identity import IdentityState
from posthog_customerio.queue import plan
from posthog_customerio.queue import sqlite_queries as q
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
from posthog_customerio.queue.migrations import migrations
from posthog_customerio.queue.rows import claimed_from_row, dead_letter_from_row
from posthog_customerio.queue.wakeup import WorkSignal

__all__ = ["SQLiteQueue", "apply_migrations", "migrate_file", "owner_running"]

T = TypeVar("T")

GROUP_COMMIT_MAX_JOBS = 512
PRUNE_CHUNK_ROWS = 10_000
# A claim steps over at most this many operations of unclaimable partitions before it falls
# back from the scan to the heap merge (_claim_by_scan).
SCAN_SKIP_LIMIT = 4_096
DEFAULT_BUSY_TIMEOUT_MS = 5_000
CHECKPOINT_INTERVAL_SECS = 1.0
# The writer checkpoints itself only past this many WAL pages (~400 MiB): a backstop in case
# the checkpointer thread cannot keep up. Normally it never does, so commits never stall.
WRITER_AUTOCHECKPOINT_PAGES = 100_000

# Primary result codes meaning "the store cannot take this now", not "the code is wrong":
# BUSY, LOCKED, NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL, NOTADB.
_UNAVAILABLE_CODES = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15, 26})


def _translate(exc: BaseException) -> BaseException:
    """sqlite3 errors that mean "try later" become QueueUnavailable; bugs stay themselves."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and (code & 0xFF) in _UNAVAILABLE_CODES:
            err = QueueUnavailable(f"sqlite: {exc}")
            err.__cause__ = exc
            return err
    return exc


# --- migrations ----------------------------------------------------------------------------


def _statements(script: str) -> Iterator[str]:
    """Split a migration into statements; sqlite3.complete_statement understands triggers."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if any(ln.strip() and not ln.strip().startswith("--") for ln in buffer.splitlines()):
        raise ValueError(f"migration ends with an incomplete statement: {buffer.strip()[:80]!r}")


def apply_migrations(conn: sqlite3.Connection) -> list[int]:
    """Apply the pending migrations in one IMMEDIATE transaction; returns the versions applied.

    The version is read inside the write transaction, so two processes starting at once
    cannot both apply the same migration.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(q.CREATE_SCHEMA_VERSION)
        current = int(conn.execute(q.CURRENT_SCHEMA_VERSION).fetchone()[0])
        applied = []
        for version, name, script in migrations("sqlite"):
            if version <= current:
                continue
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(q.RECORD_SCHEMA_VERSION, (version, name, time.time()))
            applied.append(version)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return applied


def _schema_version(conn: sqlite3.Connection) -> int:
    if conn.execute(q.SCHEMA_VERSION_EXISTS).fetchone() is None:
        return 0
    return int(conn.execute(q.CURRENT_SCHEMA_VERSION).fetchone()[0])


def migrate_file(path: Path, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> list[int]:
    """Create (folder and file) or migrate the queue at ``path`` in WAL mode, as its owner
    would, without taking the owner lock: safe beside a running ``serve``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise QueueUnavailable(f"cannot open the queue at {path}: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        return apply_migrations(conn)
    except sqlite3.Error as exc:
        translated = _translate(exc)
        if translated is exc:
            raise
        raise translated from exc
    finally:
        conn.close()


def _setup(path: Path, owner: bool, busy_timeout_ms: int) -> sqlite3.Connection:
    """Runs in the writer thread: connect, migrate (owner only), recover claims (owner only).

    A non-owner (a CLI command beside a live server) never creates, migrates or resets: it
    requires the file to exist at the schema version this code knows.
    """
    try:
        if owner:
            conn = sqlite3.connect(path, isolation_level=None, cached_statements=256)
        else:
            uri = f"{path.resolve().as_uri()}?mode=rw"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, cached_statements=256)
    except sqlite3.Error as exc:
        raise QueueUnavailable(f"cannot open the queue at {path}: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if owner:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES}")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA cache_size = -32768")  # 32 MiB: the hot index pages of a backlog
        conn.execute("PRAGMA journal_size_limit = 67108864")
        if owner:
            apply_migrations(conn)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(q.RESET_CLAIMED_OPERATIONS)
            conn.execute(q.RESET_CLAIMED_PARTITIONS)
            conn.execute("COMMIT")
        else:
            have, want = _schema_version(conn), len(migrations("sqlite"))
            if have != want:
                raise QueueUnavailable(
                    f"the queue at {path} has schema version {have}, this version needs {want}; "
                    "start `serve` once to migrate it"
                )
    except BaseException as exc:
        conn.close()
        translated = _translate(exc)
        if translated is exc:
            raise
        raise translated from exc
    return conn


# --- the writer thread ---------------------------------------------------------------------


@dataclass(slots=True)
class _Job(Generic[T]):
    fn: Callable[[sqlite3.Connection], T]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]
    write: bool
    # Called in the loop thread with the result when the caller was cancelled meanwhile, so a
    # claim nobody will deliver is given back instead of staying claimed until restart.
    on_orphan: Callable[[T], None] | None


def _settle_future(job: _Job[Any], result: Any, error: BaseException | None) -> None:
    if job.future.cancelled():
        if error is None and job.on_orphan is not None:
            job.on_orphan(result)
        return
    if error is None:
        job.future.set_result(result)
    else:
        job.future.set_exception(error)


class _Writer:
    """Owns the connection; runs submitted jobs in group-committed transactions."""

    def __init__(self, setup: Callable[[], sqlite3.Connection], name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self.commit_count = 0
        self._thread = threading.Thread(target=self._run, args=(setup,), name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            raise self._startup_error

    async def run(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        write: bool = True,
        on_orphan: Callable[[T], None] | None = None,
    ) -> T:
        return await self.submit(fn, write=write, on_orphan=on_orphan)

    def submit(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        write: bool = True,
        on_orphan: Callable[[T], None] | None = None,
    ) -> asyncio.Future[T]:
        """Queue ``fn``; its future is settled in the caller's loop after the COMMIT."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closed:
                raise QueueUnavailable("the queue is closed")
            if not self._thread.is_alive():
                raise QueueUnavailable("the queue is not started")
            self._jobs.put(_Job(fn, loop, future, write, on_orphan))
        return future

    def stop(self) -> None:
        """Ask the thread to finish the jobs already queued, then close the connection."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._jobs.put(None)

    def join(self) -> None:
        if self._thread.is_alive():
            self._thread.join()

    def _run(self, setup: Callable[[], sqlite3.Connection]) -> None:
        try:
            conn = setup()
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            stopping = False
            while not stopping:
                first = self._jobs.get()
                if first is None:
                    break
                batch, stopping = take_waiting(first, self._jobs.get_nowait, GROUP_COMMIT_MAX_JOBS)
                self._run_batch(conn, batch)
        finally:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job[Any]]) -> None:
        outcomes: list[tuple[Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE" if any(job.write for job in batch) else "BEGIN")
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    result = job.fn(conn)
                except Exception as exc:
                    error = _translate(exc)
                    if not conn.in_transaction:
                        # SQLite rolled the whole transaction back (I/O error, disk full):
                        # nothing of this batch is durable, so nobody may be told otherwise.
                        raise
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((None, error))
                else:
                    conn.execute("RELEASE job")
                    outcomes.append((result, None))
            conn.execute("COMMIT")
            self.commit_count += 1
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            error = _translate(exc)
            if not isinstance(error, QueueUnavailable):
                error = QueueUnavailable(f"the transaction failed: {exc!r}")
                error.__cause__ = exc
            outcomes = [(None, error)] * len(batch)
        for job, (result, job_error) in zip(batch, outcomes, strict=True):
            with contextlib.suppress(RuntimeError):  # the caller's loop is already closed
                job.loop.call_soon_threadsafe(_settle_future, job, result, job_error)


class _Checkpointer:
    """Copies the WAL into the database file from its own thread and connection.

    SQLite's automatic checkpoint runs inside the COMMIT that crosses the threshold: a
    hundreds-of-milliseconds stall of the writer, and of every webhook waiting on it. A PASSIVE
    checkpoint from another connection runs beside the writer instead of in its way.
    """

    def __init__(self, path: Path, interval_secs: float) -> None:
        self._path = path
        self._interval = interval_secs
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"sqlite-checkpoint:{path.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None)
        except sqlite3.Error:
            return  # the writer's backstop autocheckpoint still bounds the WAL
        try:
            while not self._stop.wait(self._interval):
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            conn.close()


# --- jobs: each runs in the writer thread inside its own SAVEPOINT --------------------------

_Row = tuple[Any, ...]


def _insert_operations(
    conn: sqlite3.Connection, rows: Sequence[plan.OperationRow], now: float
) -> None:
    """Insert ``rows`` in order and register the partitions they start.

    The writer numbers the rows itself (it is the only writer inside BEGIN IMMEDIATE), so it
    knows each partition's head without reading ``lastrowid`` row by row.
    """
    if not rows:
        return
    first_id = conn.execute(q.LAST_OPERATION_ID).fetchone()[0] + 1
    conn.executemany(
        q.INSERT_OPERATION_WITH_ID,
        [
            (op_id, partition, endpoint, action, body, size, event_uuid, now, lane)
            for op_id, (partition, endpoint, action, body, size, event_uuid, lane) in enumerate(
                rows, first_id
            )
        ],
    )
    conn.execute(q.OPERATIONS_ADDED, (len(rows),))
    heads = plan.partition_heads((op_id, row[0]) for op_id, row in enumerate(rows, first_id))
    conn.executemany(
        q.ADD_PARTITION, [(key, head, rows[head - first_id][6]) for key, head in heads.items()]
    )


def _ingest(
    calls: Sequence[PendingIngest], conn: sqlite3.Connection
) -> list[IngestResult | Exception]:
    """Plan the waiting calls together (``queue.plan``) and write the plan set-at-a-time.

    Per-row statements were the largest cost of batched webhooks (every ``execute`` is a trip
    through the sqlite3 module and a statement reset): here the uuids already seen and the
    identity states are read with one statement each and the rows written with
    ``executemany``, a fixed number of statements however many events and calls there are.
    """
    now = time.time()
    read = plan.reads(calls)
    seen = {row[0] for row in conn.execute(q.SEEN_AMONG, (_json_array(read.uuids),))}
    stored = plan.load_states(
        read,
        lambda ids: {
            distinct_id: decode_state(raw)
            for distinct_id, raw in conn.execute(q.GET_IDENTITIES, (_json_array(ids),))
        },
    )
    planned = plan.plan(calls, read, seen, stored)
    conn.executemany(q.MARK_SEEN, [(uuid, now) for uuid in planned.new_uuids])
    _insert_operations(conn, planned.rows, now)
    conn.executemany(
        q.PUT_IDENTITY,
        [(distinct_id, encode_state(state), now) for distinct_id, state in planned.states.items()],
    )
    for source, position in planned.checkpoints.items():  # committed with the rows, or not
        conn.execute(q.PUT_CHECKPOINT, (source, position, now))
    return planned.results


def _json_array(values: Iterable[str]) -> str:
    """A JSON array of strings, the one parameter of the ``json_each`` lookups."""
    return orjson.dumps(list(values)).decode()


def _claim(
    max_ops: int,
    max_bytes: int,
    now: float,
    lanes: frozenset[Lane] | None,
    conn: sqlite3.Connection,
) -> list[_Row]:
    """Claim the smallest ids of the claimable partitions, in id order, up to a limit.

    Claimable: ready (nothing in flight, not blocked) and, with ``lanes``, whose head is in
    one of them (their later operations follow whatever their lane). Stopping (never
    skipping) at the byte limit keeps every partition's claim a prefix of its operations.
    """
    if lanes is not None and lanes >= frozenset(Lane):
        lanes = None
    if max_ops <= 0 or (lanes is not None and not lanes):
        return []
    conn.execute(q.UNBLOCK_EXPIRED, (now,))
    # Two lanes exist, so a proper non-empty subset is exactly one lane.
    lane = None if lanes is None else next(iter(lanes)).value
    rows = _claim_by_scan(max_ops, max_bytes, lane, conn)
    if rows is None:
        rows = _claim_by_merge(max_ops, max_bytes, lane, conn)
    per_partition = Counter(row[1] for row in rows)
    conn.executemany(q.MARK_CLAIMED, ((row[0],) for row in rows))
    conn.executemany(q.PARTITION_CLAIMED, ((n, p) for p, n in per_partition.items()))
    return rows


def _claim_by_scan(
    max_ops: int, max_bytes: int, lane: str | None, conn: sqlite3.Connection
) -> list[_Row] | None:
    """The usual case in one statement: walk operations in id order from the first ready head,
    taking those of claimable partitions.

    The result is the merge's (the smallest ids of the claimable partitions, stopping, never
    skipping, at a limit), read with one cursor instead of two statements per operation.
    Operations of in-flight or blocked partitions are stepped over; if more than
    ``SCAN_SKIP_LIMIT`` of them come first (a large blocked partition), ``None``: the merge,
    which never reads them, does it instead.
    """
    ready = conn.execute(
        q.READY_PARTITIONS if lane is None else q.READY_PARTITIONS_IN_LANE,
        () if lane is None else (lane,),
    )
    try:
        first = ready.fetchone()
    finally:
        ready.close()
    if first is None:
        return []
    rows: list[_Row] = []
    total_bytes = 0
    skipped = 0
    scan = conn.execute(q.SCAN_FROM, (first[1], lane))
    try:
        for row in scan:
            if not row[9]:
                skipped += 1
                if skipped > SCAN_SKIP_LIMIT:
                    return None
                continue
            if rows and total_bytes + row[5] > max_bytes:
                break
            rows.append(row[:9])
            total_bytes += row[5]
            if len(rows) >= max_ops:
                break
    finally:
        scan.close()
    return rows


def _claim_by_merge(
    max_ops: int, max_bytes: int, lane: str | None, conn: sqlite3.Connection
) -> list[_Row]:
    """The same claim by merging the ready partitions' operations with a heap.

    The heap holds the next operation id of each partition taken so far; the ready cursor
    yields partitions by head id and is read only while its next head is smaller than the
    heap's top. Two statements per operation, but rows are read only for operations actually
    claimed, however many wait in blocked partitions.
    """
    if lane is None:
        ready = conn.execute(q.READY_PARTITIONS)
    else:
        ready = conn.execute(q.READY_PARTITIONS_IN_LANE, (lane,))
    heap: list[tuple[int, str]] = []
    rows: list[_Row] = []
    total_bytes = 0
    try:
        head = ready.fetchone()
        while len(rows) < max_ops:
            if head is not None and (not heap or head[1] < heap[0][0]):
                heapq.heappush(heap, (head[1], head[0]))
                head = ready.fetchone()
                continue
            if not heap:
                break
            op_id, partition = heap[0]
            row = conn.execute(q.GET_OPERATION, (op_id,)).fetchone()
            if row is not None:
                if rows and total_bytes + row[5] > max_bytes:
                    break
                rows.append(row)
                total_bytes += row[5]
            following = conn.execute(q.NEXT_ID_IN_PARTITION, (partition, op_id)).fetchone()
            if following is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (following[0], partition))
    finally:
        ready.close()
    return rows


def _touch(
    conn: sqlite3.Connection, op_ids: Sequence[int], apply: Callable[[int], object]
) -> Counter[str]:
    """Apply ``apply`` to each existing operation; returns partition → claims it released."""
    released: Counter[str] = Counter()
    for op_id in dict.fromkeys(op_ids):
        row = conn.execute(q.OPERATION_PARTITION, (op_id,)).fetchone()
        if row is None:
            continue  # already acked or dead-lettered: settling twice is harmless
        apply(op_id)
        released[row[0]] += row[1]
    return released


def _settle_partitions(conn: sqlite3.Connection, released: Counter[str]) -> None:
    """Drop emptied partitions, move heads and in-flight counts: two statements in all."""
    if not released:
        return
    by_partition = orjson.dumps(dict(released))
    conn.execute(q.DROP_EMPTY_PARTITIONS_IN, (by_partition,))
    conn.execute(q.SETTLE_PARTITIONS_IN, (by_partition,))


def _ack(op_ids: Sequence[int], conn: sqlite3.Connection) -> None:
    """Delete a delivered batch set-at-a-time (the hot path: one ack per request)."""
    ids = orjson.dumps(list(dict.fromkeys(op_ids)))
    released: Counter[str] = Counter()
    for partition, claimed in conn.execute(q.OPERATIONS_PARTITIONS_IN, (ids,)):
        released[partition] += claimed
    conn.execute(q.DELETE_OPERATIONS_IN, (ids,))
    _settle_partitions(conn, released)


def _retry(op_ids: Sequence[int], not_before: float, error: str, conn: sqlite3.Connection) -> None:
    released = _touch(conn, op_ids, lambda op_id: conn.execute(q.RETRY_OPERATION, (error, op_id)))
    for partition in released:
        conn.execute(q.BLOCK_PARTITION, (not_before, partition))
    _settle_partitions(conn, released)


def _release(op_ids: Sequence[int], conn: sqlite3.Connection) -> None:
    released = _touch(conn, op_ids, lambda op_id: conn.execute(q.RELEASE_OPERATION, (op_id,)))
    _settle_partitions(conn, released)


def _dead_letter(rejections: Sequence[Rejection], conn: sqlite3.Connection) -> None:
    now = time.time()
    by_id = {r.op_id: r for r in rejections}

    def move(op_id: int) -> None:
        r = by_id[op_id]
        conn.execute(
            q.INSERT_DEAD_LETTER,
            (r.reason, r.detail, r.request, r.response, r.status, now, op_id),
        )
        conn.execute(q.DELETE_OPERATION, (op_id,))

    _settle_partitions(conn, _touch(conn, list(by_id), move))


def _replay(ids: Sequence[int], conn: sqlite3.Connection) -> int:
    rows: list[plan.OperationRow] = []
    for dl_id in sorted(set(ids)):
        row = conn.execute(q.GET_DEAD_LETTER_FOR_REPLAY, (dl_id,)).fetchone()
        if row is None:
            continue
        partition, endpoint, action, body, event_uuid = row
        # a replay is an operator asking for it now: the live lane
        rows.append((partition, endpoint, action, body, len(body), event_uuid, Lane.LIVE.value))
        conn.execute(q.DELETE_DEAD_LETTER, (dl_id,))
    _insert_operations(conn, rows, time.time())
    return len(rows)


def _purge(ids: Sequence[int], conn: sqlite3.Connection) -> int:
    return sum(conn.execute(q.DELETE_DEAD_LETTER, (i,)).rowcount for i in set(ids))


def _forget(
    distinct_ids: Sequence[str],
    forgetter: Forgetter,
    suppress: bool,
    now: float,
    conn: sqlite3.Connection,
) -> ForgetResult:
    """One savepoint: find, delete, record, enqueue (see ``Queue.forget``)."""
    targets = list(dict.fromkeys(distinct_ids))
    states: dict[str, IdentityState] = {}
    for distinct_id in targets:
        row = conn.execute(q.GET_IDENTITY, (distinct_id,)).fetchone()
        if row is not None:
            states[distinct_id] = decode_state(row[0])
    erasure = Erasure.of(targets, states)

    doomed: dict[int, str] = {}  # op id -> partition; claimed ones are left to deliver
    in_flight: set[int] = set()
    found = [
        (op_id, distinct_id, claimed)
        for distinct_id in targets
        for op_id, claimed in conn.execute(q.PARTITION_OPERATIONS, (distinct_id,)).fetchall()
    ]
    for needle in erasure.needles:
        for op_id, partition, body, claimed in conn.execute(
            q.OPERATIONS_CONTAINING, (needle,)
        ).fetchall():
            if partition not in erasure.ids and erasure.mentioned_in(bytes(body)):
                found.append((op_id, partition, claimed))
    for op_id, partition, claimed in found:
        if claimed:
            in_flight.add(op_id)
        else:
            doomed[op_id] = partition
    conn.executemany(q.DELETE_OPERATION, ((op_id,) for op_id in doomed))
    _settle_partitions(conn, Counter(dict.fromkeys(doomed.values(), 0)))

    letters: set[int] = set()
    for distinct_id in targets:
        letters.update(row[0] for row in conn.execute(q.PARTITION_DEAD_LETTERS, (distinct_id,)))
    for needle in erasure.needles:
        for dl_id, body in conn.execute(q.DEAD_LETTERS_CONTAINING, (needle,)).fetchall():
            if dl_id not in letters and erasure.mentioned_in(bytes(body)):
                letters.add(dl_id)
    conn.executemany(q.DELETE_DEAD_LETTER, ((dl_id,) for dl_id in letters))

    for distinct_id in targets:
        conn.execute(q.DELETE_IDENTITY, (distinct_id,))
        conn.execute(q.RECORD_FORGOTTEN, (distinct_id, now))
    ops = erasure.operations(forgetter, suppress=suppress)
    _insert_operations(conn, [plan.operation_row(op, Lane.LIVE.value) for op in ops], now)
    return erasure.result(
        operations=len(doomed),
        dead_letters=len(letters),
        in_flight=len(in_flight),
        enqueued=len(ops),
    )


def _stats(now: float, conn: sqlite3.Connection) -> QueueStats:
    oldest = conn.execute(q.OLDEST_ENQUEUED_AT).fetchone()
    return QueueStats(
        depth=int(conn.execute(q.COUNTER, ("operations",)).fetchone()[0]),
        oldest_age_secs=max(0.0, now - oldest[0]) if oldest is not None else 0.0,
        dead_letters=int(conn.execute(q.COUNTER, ("dead_letters",)).fetchone()[0]),
        partitions_blocked=int(conn.execute(q.BLOCKED_PARTITIONS, (now,)).fetchone()[0]),
    )


# --- the queue -----------------------------------------------------------------------------


def _take_owner_lock(path: Path) -> int:
    """An exclusive flock on ``<path>.lock``: the kernel drops it if the process dies."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise QueueUnavailable(f"another serve process owns {path}") from exc
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def owner_running(path: Path) -> bool:
    """Whether a process (``serve``) holds the owner lock of the queue at ``path`` now."""
    lock_path = Path(path).with_name(Path(path).name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class SQLiteQueue(GroupCommittedIngest):
    """The ``Queue`` on one SQLite file. Construct (no I/O), :meth:`start`, :meth:`close`;
    :meth:`open` constructs and starts at once."""

    def __init__(
        self,
        path: Path,
        *,
        owner: bool = True,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    ) -> None:
        """``owner=True`` is the serving process: it creates the file, holds ``<path>.lock``
        until close and gives back the claims a crashed predecessor left. ``owner=False`` is
        for CLI commands run beside a live server: no lock, no claim reset, no migration, and
        the file must exist (:class:`StoreNotFound` otherwise; nothing is created)."""
        self.path = Path(path)
        self.owner = owner
        self._writer = _Writer(
            partial(_setup, self.path, owner, busy_timeout_ms),
            name=f"sqlite-queue:{self.path.name}",
        )
        self._checkpointer: _Checkpointer | None = None
        self._lock_fd: int | None = None
        self._start_lock = threading.Lock()
        self._started = False
        self._closed = False
        self._opened_at = time.time()
        self._work = WorkSignal()
        self._background: set[asyncio.Task[None]] = set()
        # Ingest calls waiting for the writer: it takes all of them at once (_take_and_ingest).
        self._ingest_lock = threading.Lock()
        self._ingest_calls: list[PendingIngest] = []
        self._taken: list[PendingIngest] = []

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        owner: bool = True,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    ) -> SQLiteQueue:
        """Construct and start, from synchronous code (tests, benchmarks)."""
        queue = cls(path, owner=owner, busy_timeout_ms=busy_timeout_ms)
        queue._start()
        return queue

    async def start(self) -> None:
        """Open the file and start the writer thread; as owner, create the folder and the
        file, take the owner lock, migrate and recover claims first. Idempotent."""
        await asyncio.to_thread(self._start)

    def _start(self) -> None:
        with self._start_lock:
            if self._started:
                return
            if self._closed:
                raise QueueUnavailable("the queue is closed")
            if self.owner:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._lock_fd = _take_owner_lock(self.path)
            elif not self.path.exists():
                raise StoreNotFound(f"the SQLite file {self.path.absolute()}")
            try:
                self._writer.start()
            except BaseException:
                if self._lock_fd is not None:
                    os.close(self._lock_fd)
                    self._lock_fd = None
                raise
            if self.owner:
                self._checkpointer = _Checkpointer(self.path, CHECKPOINT_INTERVAL_SECS)
                self._checkpointer.start()
            self._opened_at = time.time()
            self._started = True

    @property
    def commit_count(self) -> int:
        """COMMITs so far; tests use it to prove group commit."""
        return self._writer.commit_count

    # -- wake-ups -------------------------------------------------------------------------

    async def wait_for_work(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Sleep until an ingest, replay or release of this process adds pending work.

        Returns False on timeout. Delivery should still poll with a timeout: blocked
        partitions expire, and other processes (a CLI replay) do not wake this one.
        """
        return await self._work.wait(timeout)

    # -- Queue ----------------------------------------------------------------------------

    async def _enqueue_ingest(self, call: PendingIngest) -> None:
        with self._ingest_lock:
            self._ingest_calls.append(call)
            first = len(self._ingest_calls) == 1
        if first:  # else the writer job already queued will take this call too
            taken: list[PendingIngest] = []
            try:
                job = self._writer.submit(partial(self._take_and_ingest, taken))
            except BaseException:
                with self._ingest_lock:
                    self._ingest_calls.remove(call)
                raise
            job.add_done_callback(partial(self._settle_ingests, taken))

    def _take_and_ingest(
        self, taken: list[PendingIngest], conn: sqlite3.Connection
    ) -> list[IngestResult | Exception]:
        """Writer thread: every ingest call waiting right now, in this one job."""
        with self._ingest_lock:
            taken.extend(self._ingest_calls)
            self._ingest_calls = []
        return _ingest(taken, conn)

    def _settle_ingests(
        self, taken: list[PendingIngest], job: asyncio.Future[list[IngestResult | Exception]]
    ) -> None:
        """Loop thread, after the COMMIT (or its failure): answer each call's caller."""
        if job.cancelled() or job.exception() is not None:
            error = job.exception() if not job.cancelled() else None
            error = error or QueueUnavailable("the queue is closed")
            if not taken:  # the transaction failed before the job ran: fail those it would take
                with self._ingest_lock:
                    taken.extend(self._ingest_calls)
                    self._ingest_calls = []
            settle(taken, [error] * len(taken))
        else:
            settle(taken, job.result())

    async def get_checkpoint(self, source: str) -> str | None:
        def job(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(q.GET_CHECKPOINT, (source,)).fetchone()
            return str(row[0]) if row is not None else None

        return await self._writer.run(job, write=False)

    async def distinct_id_for_email(self, email: str) -> str | None:
        def job(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(q.DISTINCT_ID_FOR_EMAIL, (email,)).fetchone()
            return str(row[0]) if row is not None else None

        return await self._writer.run(job, write=False)

    async def was_seen(self, uuid: str) -> bool:
        def job(conn: sqlite3.Connection) -> bool:
            return conn.execute(q.WAS_SEEN, (uuid,)).fetchone() is not None

        return await self._writer.run(job, write=False)

    async def claim(
        self, max_ops: int, max_bytes: int, now: float, *, lanes: frozenset[Lane] | None = None
    ) -> list[ClaimedOperation]:
        rows = await self._writer.run(
            partial(_claim, max_ops, max_bytes, now, lanes), on_orphan=self._release_orphaned
        )
        return [claimed_from_row(row) for row in rows]

    def _release_orphaned(self, rows: list[_Row]) -> None:
        if rows:
            ids = [row[0] for row in rows]
            task = asyncio.get_running_loop().create_task(self._release_quietly(ids))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _release_quietly(self, op_ids: list[int]) -> None:
        with contextlib.suppress(QueueUnavailable):  # closing: the next owner resets claims
            await self.release(op_ids)

    async def ack(self, op_ids: Sequence[int]) -> None:
        if op_ids:
            await self._writer.run(partial(_ack, list(op_ids)))

    async def retry(self, op_ids: Sequence[int], not_before: float, error: str) -> None:
        if op_ids:
            await self._writer.run(partial(_retry, list(op_ids), not_before, error))

    async def release(self, op_ids: Sequence[int]) -> None:
        if op_ids:
            await self._writer.run(partial(_release, list(op_ids)))
            self._work.set()

    async def dead_letter(self, rejections: Sequence[Rejection]) -> None:
        if rejections:
            await self._writer.run(partial(_dead_letter, list(rejections)))

    async def stats(self, now: float) -> QueueStats:
        return await self._writer.run(partial(_stats, now), write=False)

    async def workers(self) -> list[WorkerInfo]:
        """The one serving process: this one as owner; none seen from a CLI command."""
        if self._lock_fd is None:
            return []

        def job(conn: sqlite3.Connection) -> tuple[int, list[str]]:
            count = int(conn.execute(q.IN_FLIGHT_PARTITIONS).fetchone()[0])
            sample = [row[0] for row in conn.execute(q.IN_FLIGHT_SAMPLE, (20,))]
            return count, sample

        count, sample = await self._writer.run(job, write=False)
        return [
            WorkerInfo(
                id="sqlite",
                host=socket.gethostname(),
                pid=os.getpid(),
                started_at=self._opened_at,
                heartbeat_at=time.time(),
                partitions=count,
                partition_sample=tuple(sample),
                this_process=True,
            )
        ]

    async def list_dead_letters(
        self, reason: str | None = None, since: float | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        def job(conn: sqlite3.Connection) -> list[DeadLetter]:
            rows = conn.execute(q.LIST_DEAD_LETTERS, (reason, since, limit)).fetchall()
            return [dead_letter_from_row(row) for row in rows]

        return await self._writer.run(job, write=False)

    async def get_dead_letter(self, dead_letter_id: int) -> DeadLetter | None:
        def job(conn: sqlite3.Connection) -> DeadLetter | None:
            row = conn.execute(q.GET_DEAD_LETTER, (dead_letter_id,)).fetchone()
            return dead_letter_from_row(row) if row is not None else None

        return await self._writer.run(job, write=False)

    async def dead_letter_ids(
        self, reason: str | None = None, since: float | None = None
    ) -> list[int]:
        """Ids of the dead letters matching the filters, oldest first (for replay/purge all)."""

        def job(conn: sqlite3.Connection) -> list[int]:
            return [row[0] for row in conn.execute(q.DEAD_LETTER_IDS, (reason, since))]

        return await self._writer.run(job, write=False)

    async def replay_dead_letters(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        count = await self._writer.run(partial(_replay, list(ids)))
        if count:
            self._work.set()
        return count

    async def purge_dead_letters(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        return await self._writer.run(partial(_purge, list(ids)))

    async def forget(
        self,
        distinct_ids: Sequence[str],
        forgetter: Forgetter,
        *,
        suppress: bool = False,
        now: float,
    ) -> ForgetResult:
        result = await self._writer.run(
            partial(_forget, list(distinct_ids), forgetter, suppress, now)
        )
        if result.enqueued:
            self._work.set()
        return result

    async def prune_seen(self, older_than: float) -> int:
        """Forget uuids first seen before the Unix time ``older_than``; returns how many.

        Deletes in chunks, one job each, so a large prune never holds the writer for long.
        """

        def chunk(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(q.PRUNE_SEEN_CHUNK, (older_than, PRUNE_CHUNK_ROWS))
            return int(cursor.rowcount)

        total = 0
        while True:
            deleted = await self._writer.run(chunk)
            total += deleted
            if deleted < PRUNE_CHUNK_ROWS:
                return total

    async def close(self) -> None:
        """Finish the queued jobs, close the connection and drop the owner lock; idempotent."""
        with self._start_lock:
            self._closed = True
        self._writer.stop()
        await asyncio.to_thread(self._writer.join)
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.stop)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
