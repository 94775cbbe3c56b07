"""The PostHog query API read from its checkpoint: caught up, then followed for new events.

``follow_chunks`` is the one follow loop; ``PostHogFollow`` builds it from the settings for
both ``backfill --posthog-url [--follow]`` (through the backfill runner, with a progress bar)
and ``serve --follow-posthog`` (``keep_following``, in the server's process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from posthog_customerio.pipeline.backfill import (
    DEFAULT_CHUNK_EVENTS,
    BackfillStats,
    CheckpointFn,
    Chunk,
    IngestFn,
    run,
)
from posthog_customerio.pipeline.checkpoint import api_source, cursor_from_json, cursor_json
from posthog_customerio.queue.base import Checkpoint, Lane
from posthog_customerio.settings import Settings
from posthog_customerio.sources.event import PostHogEvent
from posthog_customerio.sources.export_files import BadRow
from posthog_customerio.sources.normalize import parse_timestamp_ms
from posthog_customerio.sources.posthog_api import (
    ApiCursor,
    ApiQuery,
    PostHogApiError,
    PostHogQueryClient,
    iso,
)

# The logger names these lines have always had, which operators may filter on.
log = logging.getLogger("posthog_customerio.backfill")
serve_log = logging.getLogger("posthog_customerio.runtime")


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
            yield Chunk(events, bad, Checkpoint(source, cursor_json(cursor)), lane)
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
    cursor = cursor_from_json(stored) if stored is not None else None
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
                cursor = cursor_from_json(chunk.checkpoint.position)
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


class PostHogFollow:
    """The PostHog project of ``settings`` as a ``ChunkSource``: ``query`` read from its
    checkpoint and, with ``follow``, polled for new events every ``follow_poll_secs``."""

    def __init__(self, settings: Settings, query: ApiQuery, *, follow: bool) -> None:
        assert settings.posthog_url and settings.posthog_project_id
        assert settings.posthog_personal_api_key is not None
        self.query = query
        self.follow = follow
        self.poll_secs = settings.follow_poll_secs
        self.lag_secs = settings.follow_lag_secs
        self.source = api_source(settings.posthog_url, settings.posthog_project_id, query.events)
        self.label = f"PostHog project {settings.posthog_project_id}"
        self.state = FollowState(self.source)
        self.client = PostHogQueryClient(
            settings.posthog_url,
            settings.posthog_project_id,
            settings.posthog_personal_api_key.get_secret_value(),
        )

    @classmethod
    def new_events(cls, settings: Settings) -> PostHogFollow:
        """``serve --follow-posthog``: every event, followed; without a checkpoint it starts at
        the lag window, as history is ``backfill``'s job."""
        since = iso(int((time.time() - settings.follow_lag_secs) * 1000))
        return cls(settings, ApiQuery(since=since), follow=True)

    def chunks(
        self,
        get_checkpoint: CheckpointFn | None,
        stats: BackfillStats,
        stop: asyncio.Event,
        chunk_events: int,
    ) -> AsyncIterator[Chunk]:
        async def none(_: str) -> str | None:
            return None

        return follow_chunks(
            self.client,
            self.query,
            self.source,
            get_checkpoint or none,
            stop,
            poll_secs=self.poll_secs,
            lag_secs=self.lag_secs,
            follow=self.follow,
            chunk_events=chunk_events,
            state=self.state,
        )

    async def keep_following(
        self, ingest: IngestFn, get_checkpoint: CheckpointFn, stop: asyncio.Event
    ) -> None:
        """Ingest until ``stop``, in the server: PostHog's failures are retried by the loop
        (and shown in ``state``); a chunk the queue refuses is read again from the checkpoint
        after ``poll_secs``. Closes the client at the end."""
        serve_log.info("following PostHog", extra={"ctx": {"source": self.source}})
        try:
            while not stop.is_set():
                stats = BackfillStats()
                chunks = self.chunks(get_checkpoint, stats, stop, DEFAULT_CHUNK_EVENTS)
                try:
                    await run(chunks, ingest, stats, stop=stop)
                except Exception as exc:  # the queue refused a chunk: resume from the checkpoint
                    serve_log.exception("posthog follow failed; retrying")
                    self.state.last_error = f"{type(exc).__name__}: {exc}"
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.poll_secs):
                            await stop.wait()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()
