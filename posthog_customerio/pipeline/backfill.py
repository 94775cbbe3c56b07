"""The backfill runner: a source's chunks ingested, each **with** its checkpoint.

A source (export files, one pass over the PostHog query API, or the API followed forever) is
an async iterator of ``Chunk``s: up to ``chunk_events`` events, the rows that were unusable, and
the source's position just after them. ``run`` ingests each chunk with its checkpoint in one
transaction, so a resumed backfill starts exactly after the last committed chunk: nothing
skipped, nothing re-read (and what is re-read anyway, say after ``--restart``, is dropped as a
duplicate by uuid; event ids keep Customer.io from ever counting an event twice).

History goes in the ``backfill`` lane and new events (``--follow`` after catching up) in the
``live`` lane, so delivery keeps live traffic flowing while history drains.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from posthog_customerio.errors import ConnectorError
from posthog_customerio.mapping.mapper import EventMapper
from posthog_customerio.mapping.rules import MappingRules
from posthog_customerio.pipeline.dryrun import DryRun
from posthog_customerio.queue.base import Checkpoint, IngestResult, Lane, Queue
from posthog_customerio.sources.event import PostHogEvent
from posthog_customerio.sources.export_files import BadRow
from posthog_customerio.sources.posthog_api import PostHogApiError

DEFAULT_CHUNK_EVENTS = 500


class TooManyBadRows(ConnectorError):
    """More unusable rows than ``--max-bad-rows`` allows."""


class IngestFn(Protocol):
    """``Queue.ingest`` with the mapper bound (or ``Connector.ingest``, or a dry run)."""

    async def __call__(
        self, events: Sequence[PostHogEvent], *, lane: Lane, checkpoint: Checkpoint | None
    ) -> IngestResult: ...


CheckpointFn = Callable[[str], Awaitable[str | None]]  # Queue.get_checkpoint


@dataclass(frozen=True, slots=True)
class Chunk:
    events: list[PostHogEvent]
    bad: list[BadRow]
    checkpoint: Checkpoint
    lane: Lane
    done_bytes: int | None = None  # progress of the whole run, for file sources


@dataclass
class BackfillStats:
    """Counts for the progress bar and the summary."""

    started_at: float = field(default_factory=time.monotonic)
    rows: int = 0  # events + bad rows read
    events: int = 0
    accepted: int = 0  # events that produced at least one operation
    operations: Counter[str] = field(default_factory=Counter)  # action -> count
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> count
    bad_rows: int = 0
    bad_samples: list[str] = field(default_factory=list)
    files_total: int = 0
    files_done: int = 0
    files_skipped: int = 0  # complete according to their checkpoint
    bytes_total: int | None = None
    bytes_done: int = 0
    checkpoint: str | None = None  # the last committed position
    stopped: bool = False  # interrupted (Ctrl-C): the next run continues

    @property
    def elapsed_secs(self) -> float:
        return max(time.monotonic() - self.started_at, 1e-9)

    @property
    def rate(self) -> float:
        """Rows per second since the start."""
        return self.rows / self.elapsed_secs

    @property
    def operations_total(self) -> int:
        return sum(self.operations.values())

    def add(self, chunk: Chunk, result: IngestResult) -> None:
        self.rows += len(chunk.events) + len(chunk.bad)
        self.events += len(chunk.events)
        self.accepted += result.accepted
        self.operations.update(result.actions)
        self.dropped.update(result.dropped)
        if chunk.done_bytes is not None:
            self.bytes_done = chunk.done_bytes
        self.checkpoint = chunk.checkpoint.position


async def run(
    chunks: AsyncIterator[Chunk],
    ingest: IngestFn,
    stats: BackfillStats,
    *,
    max_bad_rows: int | None = None,
    stop: asyncio.Event | None = None,
    on_chunk: Callable[[BackfillStats], None] | None = None,
    on_bad_row: Callable[[BadRow], None] | None = None,
    bad_samples: int = 20,
) -> BackfillStats:
    """Ingest every chunk with its checkpoint until the source ends or ``stop`` is set.

    Raises ``TooManyBadRows`` before ingesting the chunk whose bad row crosses
    ``max_bad_rows``, so its checkpoint is not committed and the row is reported again.
    """
    try:
        async for chunk in chunks:
            for bad in chunk.bad:
                stats.bad_rows += 1
                if len(stats.bad_samples) < bad_samples:
                    stats.bad_samples.append(str(bad))
                if on_bad_row is not None:
                    on_bad_row(bad)
                if max_bad_rows is not None and stats.bad_rows > max_bad_rows:
                    raise TooManyBadRows(
                        f"more than --max-bad-rows={max_bad_rows} bad rows; last: {bad}"
                    )
            result = await ingest(chunk.events, lane=chunk.lane, checkpoint=chunk.checkpoint)
            stats.add(chunk, result)
            if on_chunk is not None:
                on_chunk(stats)
            if stop is not None and stop.is_set():
                stats.stopped = True
                break
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    return stats


class ChunkSource(Protocol):
    """What a backfill reads: export files (``files.ExportFiles``) or the PostHog API
    (``follow.PostHogFollow``)."""

    label: str  # for the progress bar and the summary

    def chunks(
        self,
        get_checkpoint: CheckpointFn | None,
        stats: BackfillStats,
        stop: asyncio.Event,
        chunk_events: int,
    ) -> AsyncIterator[Chunk]: ...

    async def aclose(self) -> None: ...


def queue_ingest(queue: Queue, mapper: EventMapper) -> IngestFn:
    """An ``IngestFn`` that maps with ``mapper`` and commits into ``queue``."""

    async def ingest(
        events: Sequence[PostHogEvent], *, lane: Lane, checkpoint: Checkpoint | None
    ) -> IngestResult:
        return await queue.ingest(events, mapper, lane=lane, checkpoint=checkpoint)

    return ingest


class Backfill:
    """One ``backfill`` run: ``source`` into ``queue`` (a dry run without one), resumed from
    the queue's checkpoints unless ``restart``. ``stop`` ends it after the chunk in progress."""

    def __init__(
        self,
        source: ChunkSource,
        rules: MappingRules,
        queue: Queue | None,
        *,
        restart: bool = False,
        chunk_events: int = DEFAULT_CHUNK_EVENTS,
        max_bad_rows: int | None = None,
    ) -> None:
        self.source = source
        self.stats = BackfillStats()
        self.stop = asyncio.Event()
        self.dry_run: DryRun | None = None
        self._ingest: IngestFn
        if queue is None:
            self.dry_run = DryRun(rules)
            self._ingest = self.dry_run
        else:
            self._ingest = queue_ingest(queue, EventMapper(rules))
        self._get_checkpoint = None if (queue is None or restart) else queue.get_checkpoint
        self._chunk_events = chunk_events
        self._max_bad_rows = max_bad_rows

    async def run(
        self,
        *,
        on_chunk: Callable[[BackfillStats], None] | None = None,
        on_bad_row: Callable[[BadRow], None] | None = None,
    ) -> ConnectorError | None:
        """Read until the source ends or ``stop``; returns the error that ended it early
        (too many bad rows, PostHog refusing), whose progress is saved too. Closes the source."""
        try:
            chunks = self.source.chunks(
                self._get_checkpoint, self.stats, self.stop, self._chunk_events
            )
            await run(
                chunks,
                self._ingest,
                self.stats,
                max_bad_rows=self._max_bad_rows,
                stop=self.stop,
                on_chunk=on_chunk,
                on_bad_row=on_bad_row,
            )
        except (TooManyBadRows, PostHogApiError) as exc:
            return exc
        finally:
            await self.source.aclose()
        return None
