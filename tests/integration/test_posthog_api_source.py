"""The PostHog query API source and its follow loop (``pipeline/follow.py``) against a fake
PostHog over loopback, into a real SQLite queue."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from posthog_customerio.mapping.mapper import EventMapper
from posthog_customerio.mapping.rules import MappingRules
from posthog_customerio.pipeline import backfill as bf
from posthog_customerio.pipeline.checkpoint import api_source, cursor_from_json
from posthog_customerio.pipeline.follow import FollowState, PostHogFollow, follow_chunks
from posthog_customerio.queue.base import Checkpoint, IngestResult, Lane
from posthog_customerio.queue.sqlite import SQLiteQueue
from posthog_customerio.settings import Settings
from posthog_customerio.sources.event import PostHogEvent
from posthog_customerio.sources.posthog_api import (
    ApiCursor,
    ApiQuery,
    PostHogApiError,
    PostHogQueryClient,
    build_query,
)
from tests.fake_posthog import FakePostHog, running

KEY = "phx_test_key"
SINCE = "2024-09-01T00:00:00Z"


def sample_rows(samples: Path) -> list[dict[str, Any]]:
    lines = (samples / "export-sample.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


class Recorder:
    """Ingest into a real queue, remembering the lane of every uuid."""

    def __init__(self, queue: SQLiteQueue) -> None:
        self.queue = queue
        self.mapper = EventMapper(MappingRules())
        self.lanes: dict[str, list[Lane]] = {}

    async def __call__(
        self, events: Sequence[PostHogEvent], *, lane: Lane, checkpoint: Checkpoint | None
    ) -> IngestResult:
        for e in events:
            self.lanes.setdefault(e.uuid, []).append(lane)
        return await self.queue.ingest(events, self.mapper, lane=lane, checkpoint=checkpoint)


async def eventually(predicate: Callable[[], bool]) -> None:
    """Poll until ``predicate`` holds; the timeout is a hang guard, not a timing assertion."""
    async with asyncio.timeout(30):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


def client_for(fake: FakePostHog, key: str = KEY) -> PostHogQueryClient:
    return PostHogQueryClient(fake.url, fake.project_id, key, initial_backoff_secs=0.01)


def test_query_text_uses_placeholders_and_keyset_paging() -> None:
    text, values = build_query(
        ApiQuery(since=SINCE, until="2024-10-01T00:00:00Z", events=("a'b",), page_size=50),
        ApiCursor("2024-09-24T12:00:00.000000Z", "0192240a-44e3-7223-9bc4-96cb8e81973e"),
    )
    assert "a'b" not in text and "2024" not in text  # values never spliced into the text
    assert "FROM events" in text and "person.properties" in text
    assert "ORDER BY timestamp, uuid LIMIT 50" in text
    assert "uuid > toUUID({after_uuid})" in text
    assert values["events"] == ["a'b"] and values["after_ts"].startswith("2024-09-24")


def test_pages_through_the_api_with_a_429_into_the_queue(
    tmp_path: Path, posthog_samples: Path
) -> None:
    rows = sample_rows(posthog_samples)
    fake = FakePostHog(rows, key=KEY)
    fake.throttle_every = 3

    async def body() -> None:
        queue = SQLiteQueue.open(tmp_path / "q.db")
        client = client_for(fake)
        try:
            rec = Recorder(queue)
            source = api_source(fake.url, 2)
            chunks = follow_chunks(
                client,
                ApiQuery(since=SINCE, page_size=300),
                source,
                queue.get_checkpoint,
                asyncio.Event(),
                poll_secs=1,
                lag_secs=0,
                follow=False,
                chunk_events=120,
            )
            stats = await bf.run(chunks, rec, bf.BackfillStats())
            assert stats.events == 2000 and stats.bad_rows == 0
            assert sorted(rec.lanes) == sorted(r["uuid"] for r in rows)
            assert all(lanes == [Lane.BACKFILL] for lanes in rec.lanes.values())
            assert stats.dropped.get("duplicate", 0) == 0
            stored = await queue.get_checkpoint(source)
            assert stored is not None and cursor_from_json(stored).uuid == rows[-1]["uuid"]
            assert client.throttled >= 1 and fake.throttled == client.throttled
        finally:
            await client.aclose()
            await queue.close()

    with running(fake):
        asyncio.run(body())
    pages = [q for q in fake.requests if "after_ts" in (q.get("values") or {})]
    assert len(pages) >= 2000 // 300  # keyset-paged, not offset-paged


def test_an_interrupted_api_backfill_resumes_after_its_checkpoint(
    tmp_path: Path, posthog_samples: Path
) -> None:
    rows = sample_rows(posthog_samples)
    fake = FakePostHog(rows, key=KEY)

    async def one_run(stop_after_chunks: int | None) -> tuple[bf.BackfillStats, Recorder]:
        queue = SQLiteQueue.open(tmp_path / "q.db")
        client = client_for(fake)
        stop = asyncio.Event()
        try:
            rec = Recorder(queue)

            def on_chunk(s: bf.BackfillStats) -> None:
                if stop_after_chunks is not None and s.events >= stop_after_chunks * 100:
                    stop.set()

            chunks = follow_chunks(
                client,
                ApiQuery(since=SINCE, page_size=250),
                api_source(fake.url, 2),
                queue.get_checkpoint,
                stop,
                poll_secs=1,
                lag_secs=0,
                follow=False,
                chunk_events=100,
            )
            stats = await bf.run(chunks, rec, bf.BackfillStats(), stop=stop, on_chunk=on_chunk)
            return stats, rec
        finally:
            await client.aclose()
            await queue.close()

    with running(fake):
        first, rec1 = asyncio.run(one_run(stop_after_chunks=7))
        second, rec2 = asyncio.run(one_run(stop_after_chunks=None))
        third, _ = asyncio.run(one_run(stop_after_chunks=None))
    assert first.stopped and first.events == 700
    assert not set(rec1.lanes) & set(rec2.lanes)  # nothing read twice
    assert len(rec1.lanes) + len(rec2.lanes) == 2000
    assert second.dropped.get("duplicate", 0) == 0
    assert third.events == 0  # caught up: the third run reads nothing


def test_follow_picks_up_new_and_late_events_in_the_live_lane(
    tmp_path: Path, posthog_samples: Path
) -> None:
    rows = sample_rows(posthog_samples)
    fake = FakePostHog(rows[:1500], key=KEY)
    late = dict(rows[1500], uuid="0192ffff-0000-7000-8000-00000000000a")  # older than the rest

    async def body() -> None:
        queue = SQLiteQueue.open(tmp_path / "q.db")
        client = client_for(fake)
        stop = asyncio.Event()
        state = FollowState("test")
        try:
            rec = Recorder(queue)
            chunks = follow_chunks(
                client,
                ApiQuery(since=SINCE, page_size=400),
                api_source(fake.url, 2),
                queue.get_checkpoint,
                stop,
                poll_secs=0.02,
                lag_secs=10 * 365 * 86400,  # the whole sample is "recent"
                follow=True,
                state=state,
            )
            task = asyncio.create_task(bf.run(chunks, rec, bf.BackfillStats(), stop=stop))
            await eventually(lambda: state.caught_up)
            assert len(rec.lanes) == 1500
            fake.add(rows[1500:])
            fake.add([late])
            await eventually(lambda: len(rec.lanes) >= 2001)
            polls = state.polls
            await eventually(lambda: state.polls >= polls + 2)  # more polls re-read the window
            stop.set()
            stats = await task
            assert all(len(lanes) == 1 for lanes in rec.lanes.values())  # each read once
            assert rec.lanes[late["uuid"]] == [Lane.LIVE]
            assert rec.lanes[rows[-1]["uuid"]] == [Lane.LIVE]
            assert rec.lanes[rows[0]["uuid"]] == [Lane.BACKFILL]
            assert stats.dropped.get("duplicate", 0) == 0
        finally:
            await client.aclose()
            await queue.close()

    with running(fake):
        asyncio.run(body())


def test_a_refused_key_is_a_clear_error(posthog_samples: Path) -> None:
    fake = FakePostHog(sample_rows(posthog_samples)[:5], key=KEY)

    async def body() -> None:
        client = client_for(fake, key="wrong")
        try:
            with pytest.raises(PostHogApiError, match="refused the personal API key"):
                await client.page(ApiQuery(since=SINCE), None)
        finally:
            await client.aclose()

    with running(fake):
        asyncio.run(body())


def test_serve_keeps_following_after_the_queue_refuses_a_chunk(
    tmp_path: Path, posthog_samples: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``serve --follow-posthog``'s loop: a refused chunk is read again from the checkpoint."""
    now = time.time()
    rows = [  # PostHog events of the last 20 minutes: inside serve's lag window
        dict(row, timestamp=datetime.fromtimestamp(now - 1200 + i, UTC).isoformat())
        for i, row in enumerate(sample_rows(posthog_samples)[:1200])
    ]
    fake = FakePostHog(rows, key=KEY)
    refused: list[str] = []

    async def body() -> None:
        queue = SQLiteQueue.open(tmp_path / "q.db")
        rec = Recorder(queue)

        async def ingest(
            events: Sequence[PostHogEvent], *, lane: Lane, checkpoint: Checkpoint | None
        ) -> IngestResult:
            if not refused:
                refused.extend(e.uuid for e in events)
                raise RuntimeError("database is locked")
            return await rec(events, lane=lane, checkpoint=checkpoint)

        settings = Settings(
            posthog_url=fake.url,
            posthog_project_id=fake.project_id,
            posthog_personal_api_key=KEY,
            follow_poll_secs=0.02,
            follow_lag_secs=3600,
        )
        follower = PostHogFollow.new_events(settings)
        stop = asyncio.Event()
        try:
            task = asyncio.create_task(follower.keep_following(ingest, queue.get_checkpoint, stop))
            await eventually(lambda: follower.state.caught_up and len(rec.lanes) == len(rows))
            stop.set()
            await task
            assert follower.client._http.is_closed  # keep_following closes its client
            assert await queue.get_checkpoint(follower.source) is not None
        finally:
            await queue.close()
        assert refused and all(rec.lanes[u] == [Lane.BACKFILL] for u in refused)
        assert all(len(lanes) == 1 for lanes in rec.lanes.values())

    with caplog.at_level(logging.INFO, logger="posthog_customerio"), running(fake):
        asyncio.run(body())
    failed = [r for r in caplog.records if r.getMessage() == "posthog follow failed; retrying"]
    assert len(failed) == 1 and failed[0].name == "posthog_customerio.runtime"


def test_nul_in_a_query_api_row_becomes_the_replacement_character() -> None:
    """PostgreSQL's text cannot hold U+0000: a distinct_id with one failed the whole chunk."""
    import httpx

    content = json.dumps({"columns": ["distinct_id"], "results": [["user_\x00", {"k\x00": 1}]]})
    columns, rows = PostHogQueryClient._parse(httpx.Response(200, content=content.encode()))
    assert columns == ["distinct_id"] and rows == [["user_\ufffd", {"k\ufffd": 1}]]
