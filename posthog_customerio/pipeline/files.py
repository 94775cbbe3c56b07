"""Export files cut into chunks, each file resumed from its checkpoint."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from posthog_customerio.errors import ConnectorError
from posthog_customerio.pipeline.backfill import (
    DEFAULT_CHUNK_EVENTS,
    BackfillStats,
    CheckpointFn,
    Chunk,
)
from posthog_customerio.pipeline.checkpoint import file_position, file_position_json, file_source
from posthog_customerio.queue.base import Checkpoint, Lane
from posthog_customerio.sources.event import PostHogEvent
from posthog_customerio.sources.export_files import BadRow, is_gzip, read_file


class ExportFiles:
    """A ``ChunkSource`` over export files, read in the order given."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.label = f"{len(files)} file{'s' if len(files) != 1 else ''}"

    def chunks(
        self,
        get_checkpoint: CheckpointFn | None,
        stats: BackfillStats,
        stop: asyncio.Event,
        chunk_events: int,
    ) -> AsyncIterator[Chunk]:
        return file_chunks(self.files, get_checkpoint, stats, chunk_events=chunk_events)

    async def aclose(self) -> None:
        return None


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
        start, complete = file_position(
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
                checkpoint = Checkpoint(source, file_position_json(last, complete=False))
                yield Chunk(events, bad, checkpoint, lane, before + disk)
                events, bad = [], []
        events.sort(key=_event_time)
        before += sizes[path]
        stats.files_done += 1
        yield Chunk(events, bad, Checkpoint(source, file_position_json(last, True)), lane, before)


def _event_time(event: PostHogEvent) -> int:
    return event.timestamp_ms
