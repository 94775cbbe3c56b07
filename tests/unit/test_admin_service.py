"""The admin service (``posthog_customerio.admin``) that the CLI and the admin API share, on a
real SQLite queue."""

from __future__ import annotations

import asyncio
from pathlib import Path

from posthog_customerio import admin
from posthog_customerio.admin import Selection
from posthog_customerio.mapping.mapper import EventMapper
from posthog_customerio.mapping.operation import Endpoint
from posthog_customerio.mapping.rules import MappingRules
from posthog_customerio.queue.base import DeadLetter, ForgetResult, Queue, Rejection
from posthog_customerio.queue.sqlite import SQLiteQueue
from tests.unit.test_queue_contract import BIG, MAPPER, NOW, ev


def letter(body: bytes) -> DeadLetter:
    return DeadLetter(
        id=7,
        op_id=3,
        partition="user_1",
        endpoint=Endpoint.BATCH,
        action="event",
        body_json=body,
        reason="rejected",
        detail="HTTP 400: bad",
        request="POST /api/v2/batch",
        response="{}",
        status=400,
        created_at=2.0,
        event_uuid="uuid-1",
    )


def test_dead_letter_json_shows_a_corrupt_body_as_text() -> None:
    good = admin.dead_letter_json(letter(b'{"type":"person"}'))
    assert good["operation"] == {"type": "person"}
    assert good["endpoint"] == "batch" and good["request"] == "POST /api/v2/batch"
    corrupt = admin.dead_letter_json(letter(b'\xff{"type": broken'))
    assert corrupt["operation"] == '\ufffd{"type": broken'
    assert {k: v for k, v in corrupt.items() if k != "operation"} == {
        k: v for k, v in good.items() if k != "operation"
    }
    short = admin.dead_letter_json(letter(b"{}"), full=False)
    assert not {"operation", "request", "response"} & short.keys()


async def _two_dead_letters(q: Queue) -> tuple[int, int]:
    """One ``rejected`` and one ``expired`` dead letter (oldest first), one op delivered."""
    await q.ingest([ev("a", "a1"), ev("b", "b1"), ev("c", "c1")], MAPPER)
    a, b, c = await q.claim(100, BIG, NOW)
    await q.dead_letter([Rejection(a.id, "rejected", "bad email"), Rejection(b.id, "expired")])
    await q.ack([c.id])
    rejected, expired = sorted(await q.dead_letter_ids())
    return rejected, expired


def test_selection_replay_and_purge(tmp_path: Path) -> None:
    async def body() -> None:
        q = SQLiteQueue.open(tmp_path / "queue.db", owner=True)
        try:
            rejected, expired = await _two_dead_letters(q)
            assert await admin.select(q, Selection(ids=(expired, rejected, expired))) == [
                expired,
                rejected,
            ]
            assert await admin.select(q, Selection()) == [rejected, expired]
            assert await admin.select(q, Selection(reason="expired")) == [expired]
            assert await admin.select(q, Selection(since=NOW * 2)) == []

            listed = await admin.list_dead_letters(q)
            assert [d["id"] for d in listed] == [expired, rejected]  # newest first
            shown = await admin.show_dead_letter(q, rejected)
            assert shown is not None and shown == listed[1] and shown["detail"] == "bad email"
            assert await admin.show_dead_letter(q, 10**9) is None

            assert await admin.replay(q, Selection(reason="rejected"), via="test") == 1
            [replayed] = await q.claim(100, BIG, NOW)
            assert replayed.event_uuid == shown["event_uuid"]
            assert await admin.purge(q, Selection(), via="test") == 1
            assert await admin.list_dead_letters(q) == []
        finally:
            await q.close()

    asyncio.run(body())


def test_offline_status_reads_the_queue_only(tmp_path: Path) -> None:
    async def body() -> None:
        owner = SQLiteQueue.open(tmp_path / "queue.db", owner=True)
        try:
            await _two_dead_letters(owner)
            await owner.ingest([ev("d", "d1")], MAPPER)
        finally:
            await owner.close()
        q = SQLiteQueue.open(tmp_path / "queue.db", owner=False)
        try:
            status = await admin.offline_status(q)
        finally:
            await q.close()
        assert status["server"] == "not running"
        assert status["credentials"] == "unknown" and status["delivery"] is None
        assert status["queue"]["depth"] == 1 and status["queue"]["dead_letters"] == 2
        assert set(status["queue"]) == {
            "depth",
            "oldest_age_secs",
            "dead_letters",
            "partitions_blocked",
        }
        assert isinstance(status["workers"], list)

    asyncio.run(body())


def test_forget_json_adds_the_mode_to_the_counts() -> None:
    result = ForgetResult(("u1", "u2"), identities=2, operations=3, dead_letters=1, enqueued=2)
    assert admin.forget_json(result, True) == {
        "distinct_ids": ("u1", "u2"),
        "identities": 2,
        "operations": 3,
        "dead_letters": 1,
        "in_flight": 0,
        "enqueued": 2,
        "suppress": True,
    }


def test_forget_takes_each_distinct_id_once(tmp_path: Path) -> None:
    async def body() -> ForgetResult:
        q = SQLiteQueue.open(tmp_path / "queue.db", owner=True)
        try:
            await q.ingest([ev("u1", "clicked", set={"plan": "pro"})], MAPPER)
            return await admin.forget(
                q, EventMapper(MappingRules()), ["u1", "u2", "u1"], suppress=False, via="test"
            )
        finally:
            await q.close()

    result = asyncio.run(body())
    assert result.distinct_ids == ("u1", "u2")
    assert (result.identities, result.operations, result.enqueued) == (1, 2, 2)
