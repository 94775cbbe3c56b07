"""The queue interface: the one durable store behind ingest and delivery.

Three implementations share this contract and one contract test suite: SQLite (embedded, one
process), PostgreSQL (many processes on many machines) and memory (tests, and the reference
for what the contract means). The queue owns transactions; mapping is injected as a pure
function, so "load identity state → map → store operations and new state" is one atomic step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from posthog_customerio.mapping.identity import IdentityState
from posthog_customerio.mapping.mapper import Mapper
from posthog_customerio.mapping.operation import Endpoint, Operation
from posthog_customerio.sources.event import PostHogEvent


class Lane(StrEnum):
    """Where operations came from; delivery gives live traffic priority over history."""

    LIVE = "live"  # webhooks and --follow
    BACKFILL = "backfill"  # history files and the PostHog API catching up


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A source's resume position, committed in the same transaction as its operations.

    ``source`` names the stream (for example ``file:/exports/2024-10.jsonl.gz`` or
    ``posthog-api:project=2``); ``position`` is opaque to the queue (JSON text).
    """

    source: str
    position: str


@dataclass(frozen=True, slots=True)
class IngestResult:
    """Counts for one ingest call.

    ``accepted`` counts events that produced at least one operation; ``dropped`` maps reason →
    count (a repeated uuid counts as ``duplicate``); ``actions`` maps action → operations
    enqueued; ``truncations`` sums the mapper's.
    """

    accepted: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    actions: dict[str, int] = field(default_factory=dict)
    truncations: dict[str, int] = field(default_factory=dict)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


@dataclass(frozen=True, slots=True)
class ClaimedOperation:
    """An operation claimed for delivery; ``id`` is its queue row, increasing in ingest order."""

    id: int
    partition: str
    endpoint: Endpoint
    action: str
    body_json: bytes  # the stored JSON, sent as is (no re-serialisation on the hot path)
    attempts: int
    enqueued_at: float
    event_uuid: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected operation with everything needed to understand and replay it."""

    id: int
    op_id: int
    partition: str
    endpoint: Endpoint
    action: str
    body_json: bytes
    reason: str
    detail: str
    request: str
    response: str
    status: int | None
    created_at: float
    event_uuid: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one claimed operation is being dead-lettered."""

    op_id: int
    reason: str  # short, stable, used as a metric label: "rejected", "expired", ...
    detail: str = ""  # Customer.io's reason/field/message, human readable
    request: str = ""  # the request sent, secrets removed
    response: str = ""  # the response body
    status: int | None = None


@dataclass(frozen=True, slots=True)
class QueueStats:
    depth: int
    oldest_age_secs: float
    dead_letters: int
    partitions_blocked: int


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A live serving process and the partitions it holds (leases, on PostgreSQL).

    SQLite has exactly one, the owner of the file; PostgreSQL lists every process whose
    heartbeat is younger than ``lease_secs``.
    """

    id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    partitions: int  # partitions in flight (leased) by this process now
    partition_sample: tuple[str, ...] = ()  # some of them, sorted, for status
    this_process: bool = False


@dataclass(frozen=True, slots=True)
class ForgetResult:
    """What ``Queue.forget`` removed and enqueued, summed over the distinct_ids given.

    ``in_flight`` operations were being delivered at that moment and were left alone: they
    reach Customer.io before the ``delete`` enqueued behind them in the same partition.
    """

    distinct_ids: tuple[str, ...]
    identities: int = 0
    operations: int = 0
    dead_letters: int = 0
    in_flight: int = 0
    enqueued: int = 0


class Forgetter(Protocol):
    """Pure: the Customer.io operations that delete (or suppress) a forgotten person."""

    def forget_operations(
        self, distinct_id: str, state: IdentityState | None, *, suppress: bool = False
    ) -> Sequence[Operation]: ...


class QueueLifecycle(Protocol):
    """Open → ``start`` → use → ``close``, the same for both stores (see ``queue.location``)."""

    async def start(self) -> None:
        """Connect; as owner also create or migrate the schema, recover what a crashed owner
        left and register as the serving process. Idempotent; call it before anything else
        (a non-owner on a store that does not exist raises ``StoreNotFound``)."""
        ...

    async def close(self) -> None:
        """Finish the writes in progress, give back this process's claims, disconnect;
        idempotent."""
        ...


class IngestQueue(Protocol):
    """What ingest (webhooks, backfill, follow) and its upkeep call."""

    async def ingest(
        self,
        events: Sequence[PostHogEvent],
        mapper: Mapper,
        *,
        lane: Lane = Lane.LIVE,
        checkpoint: Checkpoint | None = None,
    ) -> IngestResult:
        """Dedup by uuid, map and commit atomically; returns only once durable.

        With ``checkpoint``, the source's position is stored in the same transaction, so a
        resumed source never skips nor re-reads what was committed.
        """
        ...

    async def get_checkpoint(self, source: str) -> str | None:
        """The last committed position of ``source``, or None."""
        ...

    async def prune_seen(self, older_than: float) -> int:
        """Forget dedup uuids first seen before ``older_than`` (Unix time); returns how many."""
        ...


class DeliveryQueue(Protocol):
    """What the delivery worker calls: claim a batch, settle it, wait for more."""

    async def claim(
        self, max_ops: int, max_bytes: int, now: float, *, lanes: frozenset[Lane] | None = None
    ) -> list[ClaimedOperation]:
        """Claim pending operations in ingest order, at most ``max_ops`` and ``max_bytes``.

        Takes only partitions that have no operation claimed already and are not in backoff
        (``blocked_until > now``), so one partition is never in two batches at once. One claim
        is meant to become one request, so concurrent claims never reorder a partition.
        ``lanes`` restricts the claim to partitions whose oldest pending operation is in one of
        those lanes (None = any); a partition's later operations follow its head whatever their
        lane, so per-person order holds across lanes.
        """
        ...

    async def ack(self, op_ids: Sequence[int]) -> None:
        """Delivered: delete them."""
        ...

    async def retry(self, op_ids: Sequence[int], not_before: float, error: str) -> None:
        """Release the claim, count an attempt and block their partitions until ``not_before``."""
        ...

    async def release(self, op_ids: Sequence[int]) -> None:
        """Give claimed operations back untouched (shutdown, credentials paused)."""
        ...

    async def dead_letter(self, rejections: Sequence[Rejection]) -> None:
        """Move operations to the dead-letter table with their reason."""
        ...

    async def wait_for_work(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Sleep until this process adds pending work (ingest, replay, release); False after
        ``timeout``. Work added by other processes is not signalled: poll with a timeout."""
        ...


class AdminQueue(Protocol):
    """What operators call (CLI and web admin): dead letters and GDPR erasure."""

    async def list_dead_letters(
        self, reason: str | None = None, since: float | None = None, limit: int = 100
    ) -> list[DeadLetter]: ...

    async def get_dead_letter(self, dead_letter_id: int) -> DeadLetter | None: ...

    async def dead_letter_ids(
        self, reason: str | None = None, since: float | None = None
    ) -> list[int]:
        """Ids of the dead letters matching the filters, oldest first (replay/purge all)."""
        ...

    async def replay_dead_letters(self, ids: Sequence[int]) -> int:
        """Re-enqueue (same bodies, so the same event ids) and delete the dead letters."""
        ...

    async def purge_dead_letters(self, ids: Sequence[int]) -> int: ...

    async def forget(
        self,
        distinct_ids: Sequence[str],
        forgetter: Forgetter,
        *,
        suppress: bool = False,
        now: float,
    ) -> ForgetResult:
        """GDPR erasure, in one transaction: delete the identity state, the pending (not
        claimed) operations and the dead letters of each distinct_id (its partition, and any
        other whose identifiers name it by id or stored email), record ``(distinct_id, now)``
        in ``forgotten``, and enqueue ``forgetter``'s delete/suppress operations last in the
        person's partition. Seen-event uuids are kept (docs/mapping.md, "Forgetting a person").
        """
        ...


class ReportingQueue(Protocol):
    """What the reverse path (Customer.io's reporting webhooks) reads before it ingests."""

    async def distinct_id_for_email(self, email: str) -> str | None:
        """The distinct_id whose stored identity state has ``email`` (the one updated last,
        identified first), or None: who a person addressed by email in Customer.io is."""
        ...

    async def was_seen(self, uuid: str) -> bool:
        """Whether an event with ``uuid`` was ingested (and not yet pruned from dedup)."""
        ...


class StatusQueue(Protocol):
    """What status (page, API, CLI, metrics) reads."""

    async def stats(self, now: float) -> QueueStats: ...

    async def workers(self) -> list[WorkerInfo]:
        """The live serving processes sharing this queue, each with its partitions."""
        ...


class Queue(
    QueueLifecycle,
    IngestQueue,
    DeliveryQueue,
    AdminQueue,
    StatusQueue,
    ReportingQueue,
    Protocol,
):
    """Durable operations, identity state, event dedup and dead letters: every role at once,
    as every store (``SQLiteQueue``, ``PostgresQueue``, ``MemoryQueue``) provides them."""
