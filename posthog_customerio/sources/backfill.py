"""History into the queue: sources cut into chunks, each chunk ingested with its checkpoint.

A source (export files, one pass over the PostHog query API, or the API followed forever) is
an async iterator of ``Chunk``s: up to ``chunk_events`` events, the rows that were unusable, and
the source's position just after them. ``run`` ingests each chunk **with** its checkpoint, in
one transaction, so a resumed backfill starts exactly after the last committed chunk: nothing
skipped, nothing re-read (and what is re-read anyway, say after ``--restart``, is dropped as a
duplicate by uuid; event ids keep Customer.io from ever counting an event twice).

History goes in the ``backfill`` lane and new events (``--follow`` after catching up) in the
``live`` lane, so delivery keeps live traffic flowing while history drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import orjson

from posthog_customerio.errors import ConnectorError
from posthog_customerio.mapping.explain import Explanation, explanation
from posthog_customerio.mapping.identity import IdentityState
from posthog_customerio.mapping.mapper import EventMapper, MappingOutcome
from posthog_customerio.mapping.rules import MappingRules
from posthog_customerio.queue import plan as ingest_plan
from posthog_customerio.queue.base import Checkpoint, IngestResult, Lane
from posthog_customerio.queue.plan import IngestCall
from posthog_customerio.sources.event import PostHogEvent
from posthog_customerio.sources.export_files import BadRow, FilePosition, is_gzip, read_file
from posthog_customerio.sources.normalize import parse_timestamp_ms
from posthog_customerio.sources.posthog_api import (
    ApiCursor,
    ApiQuery,
    PostHogApiError,
    PostHogQueryClient,
)

log = logging.getLogger("posthog_customerio.backfill")

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


# --- files ----------------------------------------------------------------------------------


def file_source(path: Path) -> str:
    return f"file:{path}"


def _file_position(text: str | None) -> tuple[FilePosition | None, bool]:
    """(position, complete) from a stored checkpoint."""
    if text is None:
        return None, False
    data = orjson.loads(text)
    return FilePosition(int(data["line"]), int(data["offset"])), bool(data.get("complete"))


def _position_json(pos: FilePosition | None, complete: bool) -> str:
    line, offset = (pos.line, pos.offset) if pos is not None else (0, 0)
    return orjson.dumps({"line": line, "offset": offset, "complete": complete}).decode()


async def file_chunks(
    paths: Sequence[Path],
    get_checkpoint: CheckpointFn | None,
    stats: BackfillStats,
    *,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
    lane: Lane = Lane.BACKFILL,
) -> AsyncIterator[Chunk]:
    """Chunks of the files, in order, each resumed from its checkpoint (None = from the start).

    Each chunk's events are sorted by event time (stably: a chunk commits as a whole, so this
    never affects resuming). The last chunk of a file marks it complete, so a re-run skips it.
    """
    sizes = {p: p.stat().st_size for p in paths}
    stats.files_total = len(paths)
    stats.bytes_total = sum(sizes.values())
    before = 0  # bytes of the files already behind us
    for path in paths:
        source = file_source(path)
        start, complete = _file_position(
            await get_checkpoint(source) if get_checkpoint is not None else None
        )
        if complete:
            stats.files_done += 1
            stats.files_skipped += 1
            before += sizes[path]
            stats.bytes_done = before
            continue
        if start is not None and not is_gzip(path) and start.offset > sizes[path]:
            raise ConnectorError(
                f"{path}: the checkpoint is at byte {start.offset} but the file has "
                f"{sizes[path]} bytes; it changed since. Use --restart to read it again"
            )
        events: list[PostHogEvent] = []
        bad: list[BadRow] = []
        last = start
        disk = 0
        received_ms = int(time.time() * 1000)
        for row in read_file(path, received_ms=received_ms, start=start):
            if isinstance(row.item, BadRow):
                bad.append(row.item)
            else:
                events.append(row.item)
            last, disk = row.position, row.disk_offset
            if len(events) + len(bad) >= chunk_events:
                events.sort(key=_event_time)
                checkpoint = Checkpoint(source, _position_json(last, complete=False))
                yield Chunk(events, bad, checkpoint, lane, before + disk)
                events, bad = [], []
        events.sort(key=_event_time)
        before += sizes[path]
        stats.files_done += 1
        yield Chunk(events, bad, Checkpoint(source, _position_json(last, True)), lane, before)


def _event_time(event: PostHogEvent) -> int:
    return event.timestamp_ms


# --- the PostHog API ------------------------------------------------------------------------


def api_source(base_url: str, project_id: int, events: Sequence[str] = ()) -> str:
    """The checkpoint name of a query stream; ``--event`` filters make it another stream."""
    name = f"posthog-api:{base_url.rstrip('/')}:project={project_id}"
    return name + (f":events={','.join(sorted(events))}" if events else "")


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _cursor_ms(cursor: ApiCursor) -> int:
    return parse_timestamp_ms(cursor.timestamp) or 0


async def api_pass(
    client: PostHogQueryClient,
    query: ApiQuery,
    source: str,
    *,
    after: ApiCursor | None,
    since: str | None = None,
    lane: Lane,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
    seen: dict[str, int] | None = None,
    floor: ApiCursor | None = None,
) -> AsyncIterator[Chunk]:
    """Pages after ``after`` (from ``since``) until a short page: the source caught up.

    With ``seen`` (uuid → event ms), uuids already read are left out and new ones added (the
    follow loop's lag window). The checkpoint never moves back below ``floor``.
    """
    while True:
        page = await client.page(query, after, since)
        for i in range(0, len(page), chunk_events):
            part = page[i : i + chunk_events]
            events: list[PostHogEvent] = []
            bad: list[BadRow] = []
            for item, _ in part:
                if isinstance(item, BadRow):
                    bad.append(item)
                elif seen is None or item.uuid not in seen:
                    events.append(item)
                    if seen is not None:
                        seen[item.uuid] = item.timestamp_ms
            cursor = part[-1][1]
            if floor is not None and _cursor_ms(cursor) < _cursor_ms(floor):
                cursor = floor
            floor = cursor
            yield Chunk(events, bad, Checkpoint(source, cursor.to_json()), lane)
        if len(page) < query.page_size:
            return
        after = page[-1][1]


@dataclass
class FollowState:
    """What ``serve``'s status shows about the API follower."""

    source: str
    caught_up: bool = False
    polls: int = 0
    last_poll_at: float | None = None
    last_error: str | None = None

    def snapshot(self) -> dict[str, object]:
        return {
            "source": self.source,
            "caught_up": self.caught_up,
            "polls": self.polls,
            "last_poll_at": self.last_poll_at,
            "last_error": self.last_error,
        }


async def follow_chunks(
    client: PostHogQueryClient,
    query: ApiQuery,
    source: str,
    get_checkpoint: CheckpointFn,
    stop: asyncio.Event,
    *,
    poll_secs: float,
    lag_secs: float,
    follow: bool,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
    state: FollowState | None = None,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[Chunk]:
    """Catch up from the checkpoint (or ``query.since``) in the backfill lane; with
    ``follow``, then poll every ``poll_secs``, re-reading the last ``lag_secs`` (events
    arrive late in PostHog) in the live lane, leaving out uuids already read."""
    state = state or FollowState(source)
    stored = await get_checkpoint(source)
    cursor = ApiCursor.from_json(stored) if stored is not None else None
    seen: dict[str, int] = {}
    first = True
    while not stop.is_set():
        lane = Lane.BACKFILL if first else Lane.LIVE
        if first:
            after, since = cursor, None
        else:
            lower_ms = int((clock() - lag_secs) * 1000)
            if cursor is not None:
                lower_ms = min(lower_ms, _cursor_ms(cursor))
            for uuid in [u for u, ms in seen.items() if ms < lower_ms]:
                del seen[uuid]
            after, since = None, iso(max(lower_ms, parse_timestamp_ms(query.since) or 0))
        try:
            async for chunk in api_pass(
                client,
                query,
                source,
                after=after,
                since=since,
                lane=lane,
                chunk_events=chunk_events,
                seen=seen if follow else None,
                floor=cursor,
            ):
                cursor = ApiCursor.from_json(chunk.checkpoint.position)
                if follow:  # remember only the lag window's uuids
                    horizon = int((clock() - lag_secs) * 1000)
                    if len(seen) > 10 * chunk_events:
                        for uuid in [u for u, ms in seen.items() if ms < horizon]:
                            del seen[uuid]
                yield chunk
                if stop.is_set():
                    return
            state.last_error = None
        except PostHogApiError as exc:
            if not follow:
                raise
            state.last_error = str(exc)
            log.warning("posthog api poll failed", extra={"ctx": {"error": str(exc)}})
        state.polls += 1
        state.last_poll_at = clock()
        if not follow:
            return
        if first and state.last_error is None:
            first = False
            state.caught_up = True
            log.info("posthog api caught up; following", extra={"ctx": {"source": source}})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(poll_secs):
                await stop.wait()


# --- dry run --------------------------------------------------------------------------------


class DryRun:
    """An ``IngestFn`` that plans each chunk as the queue would (``queue.plan``) over in-memory
    seen uuids and identity states, and writes nothing; keeps a few samples of what would be
    sent and dropped."""

    def __init__(self, rules: MappingRules, samples: int = 3) -> None:
        self._mapper = EventMapper(rules)
        self._states: dict[str, IdentityState] = {}
        self._seen: set[str] = set()
        self._samples = samples
        self.sends: list[Explanation] = []
        self.drops: list[Explanation] = []

    async def __call__(
        self, events: Sequence[PostHogEvent], *, lane: Lane, checkpoint: Checkpoint | None
    ) -> IngestResult:
        calls = [IngestCall(events, self._mapper, lane, checkpoint)]
        read = ingest_plan.reads(calls)
        stored = {i: self._states[i] for i in read.distinct_ids if i in self._states}
        planned = ingest_plan.plan(calls, read, self._seen, stored, observe=self._sample)
        [result] = planned.results
        if isinstance(result, Exception):
            raise result
        self._seen.update(planned.new_uuids)
        self._states.update(planned.states)
        return result

    def _sample(self, event: PostHogEvent, outcome: MappingOutcome) -> None:
        kept = self.sends if outcome.operations else self.drops
        if len(kept) < self._samples:
            kept.append(explanation(event, outcome))
