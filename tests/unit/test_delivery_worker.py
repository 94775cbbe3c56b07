"""DeliveryWorker end to end against the in-memory queue and a scripted Customer.io.

The queue is ``MemoryQueue``, the third implementation of the queue contract (claims in id
order, one claim per partition at a time, retry blocks the partition until ``not_before``,
lanes by partition head): the tests put ready-made operations through its ingest and record
what delivery did with them. The fake Customer.io is an ``httpx.MockTransport`` handler that
records what it accepted, so the assertions are about outcomes (what was delivered, in which
order, what was dead-lettered), never about how long anything took.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from posthog_customerio.customerio.client import TrackClient
from posthog_customerio.delivery.ratelimit import RateLimiter
from posthog_customerio.delivery.state import DeliveryState
from posthog_customerio.delivery.worker import DeliveryWorker
from posthog_customerio.mapping.identity import IdentityState
from posthog_customerio.mapping.mapper import MappingOutcome
from posthog_customerio.mapping.operation import Endpoint, Operation
from posthog_customerio.metrics import Metrics
from posthog_customerio.queue.base import ClaimedOperation, Lane, Rejection
from posthog_customerio.queue.memory import MemoryQueue
from posthog_customerio.settings import DeliverySettings
from posthog_customerio.sources.event import PostHogEvent

SITE_ID = "site-1"
API_KEY = "do-not-leak-this-key"
BASE = "https://track.test"

FAST = DeliverySettings(
    batch_linger_secs=0,
    retry_initial_backoff_secs=0.001,
    retry_max_backoff_secs=0.005,
    retry_after_max_secs=0.05,
    credentials_recheck_secs=0.01,
    shutdown_grace_secs=1,
)
POLL_SECS = 0.002  # how often the worker looks for ended backoffs (milliseconds, here)


# ------------------------------------------------------------------ the queue


@dataclass(frozen=True)
class ReadyMade:
    """A mapper whose every event becomes ``op``: how a test puts a ready-made operation
    through the queue's real ingest (ids, lanes, dedup)."""

    op: Operation

    def distinct_ids(self, event: PostHogEvent) -> Sequence[str]:
        return ()

    def map(self, event: PostHogEvent, states: Mapping[str, IdentityState]) -> MappingOutcome:
        return MappingOutcome(states={}, operations=[self.op])


class RecordingQueue(MemoryQueue):
    """The in-memory queue, recording what delivery did with it; settling an operation that
    is not claimed fails the test."""

    def __init__(self) -> None:
        self.enqueued_at: float | None = None  # the clock, while ``add`` back-dates an op
        super().__init__(clock=self._now)
        self.acked: list[int] = []
        self.dead: list[Rejection] = []
        self.retries: list[tuple[list[int], float, str]] = []
        self.released: list[int] = []
        self.claims = 0
        self._uuids = itertools.count(1)
        asyncio.run(self.start())

    def _now(self) -> float:
        return time.time() if self.enqueued_at is None else self.enqueued_at

    def add(
        self,
        partition: str,
        body: dict[str, Any],
        *,
        endpoint: Endpoint = Endpoint.BATCH,
        action: str = "event",
        enqueued_at: float | None = None,
        lane: Lane = Lane.LIVE,
    ) -> int:
        """Ingest one event that becomes this operation; returns the operation's id."""
        self.enqueued_at = enqueued_at
        try:
            return asyncio.run(
                self.add_live(partition, body, endpoint=endpoint, action=action, lane=lane)
            )
        finally:
            self.enqueued_at = None

    async def add_live(
        self,
        partition: str,
        body: dict[str, Any],
        *,
        endpoint: Endpoint = Endpoint.BATCH,
        action: str = "event",
        lane: Lane = Lane.LIVE,
    ) -> int:
        """``add`` from inside a running worker's loop: an operation arriving live."""
        event = PostHogEvent(
            uuid=f"uuid-{next(self._uuids)}", event=action, distinct_id=partition, timestamp_ms=0
        )
        mapper = ReadyMade(Operation(partition, endpoint, action, body))
        result = await self.ingest([event], mapper, lane=lane)
        assert result.accepted == 1
        return self.store.last_operation_id

    @property
    def empty(self) -> bool:
        return not self.store.operations

    def _assert_claimed(self, op_ids: Sequence[int]) -> None:
        ops = [self.store.operations[i] for i in op_ids]
        assert all(op.claimed for op in ops), "settled an operation that was not claimed"

    async def claim(
        self, max_ops: int, max_bytes: int, now: float, *, lanes: frozenset[Lane] | None = None
    ) -> list[ClaimedOperation]:
        self.claims += 1
        return await super().claim(max_ops, max_bytes, now, lanes=lanes)

    async def ack(self, op_ids: Sequence[int]) -> None:
        self._assert_claimed(op_ids)
        await super().ack(op_ids)
        self.acked.extend(op_ids)

    async def retry(self, op_ids: Sequence[int], not_before: float, error: str) -> None:
        self._assert_claimed(op_ids)
        await super().retry(op_ids, not_before, error)
        self.retries.append((list(op_ids), not_before, error))

    async def release(self, op_ids: Sequence[int]) -> None:
        await super().release(op_ids)  # tolerant, like every queue: a settled id is ignored
        self.released.extend(op_ids)

    async def dead_letter(self, rejections: Sequence[Rejection]) -> None:
        self._assert_claimed([r.op_id for r in rejections])
        await super().dead_letter(rejections)
        self.dead.extend(rejections)

    async def wait_for_work(self, timeout: float) -> bool:  # noqa: ASYNC109
        """The queue's own wake-ups, with a short poll for ended backoffs (a second, live)."""
        return await super().wait_for_work(min(timeout, POLL_SECS))


# ------------------------------------------------------------------ fake Customer.io


def item(partition: str, seq: int, *, bad: bool = False) -> dict[str, Any]:
    return {
        "type": "person",
        "action": "event",
        "identifiers": {"id": partition},
        "name": "e",
        "attributes": {"seq": seq, "bad": bad},
    }


def anon(partition: str, seq: int) -> dict[str, Any]:
    return {"name": "e", "anonymous_id": partition, "data": {"seq": seq, "bad": False}}


def anon_item(partition: str, seq: int) -> dict[str, Any]:
    """An anonymous visitor's event as a v2 item (``Endpoint.ANONYMOUS_ITEM``)."""
    return {
        "type": "person",
        "action": "event",
        "identifiers": {"anonymous_id": partition},
        "name": "e",
        "attributes": {"seq": seq, "bad": False},
    }


@dataclass
class Request:
    path: str
    items: list[dict[str, Any]]
    at: float


Responder = Callable[[Request], httpx.Response | Awaitable[httpx.Response]]


@dataclass
class FakeCustomerIO:
    """Records every request; ``accepted`` gets the items a response accepted."""

    respond: Responder
    requests: list[Request] = field(default_factory=list)
    accepted: list[tuple[str, int]] = field(default_factory=list)  # (partition, seq)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"].startswith("Basic ")
        path = request.url.path
        items: list[dict[str, Any]] = []
        if path == "/api/v2/batch":
            items = orjson.loads(request.content)["batch"]
        elif path == "/api/v1/events":
            items = [orjson.loads(request.content)]
        req = Request(path, items, time.time())
        self.requests.append(req)
        result = self.respond(req)
        response = result if isinstance(result, httpx.Response) else await result
        if response.status_code == 200:
            failed: set[int] = set()
        elif response.status_code == 207:
            failed = {e["batch_index"] for e in orjson.loads(response.content)["errors"]}
        else:
            failed = set(range(len(items)))
        for i, it in enumerate(items):
            if i not in failed:
                self.accepted.append(key(it))
        return response


def key(it: dict[str, Any]) -> tuple[str, int]:
    if "anonymous_id" in it:
        return it["anonymous_id"], it["data"]["seq"]
    ids = it["identifiers"]
    return ids.get("id") or ids["anonymous_id"], it["attributes"]["seq"]


def ok(_: Request) -> httpx.Response:
    return httpx.Response(200, json={})


def region_ok(respond: Responder) -> Responder:
    """Answer the credentials check with 200 and the rest with ``respond``."""

    def handler(req: Request) -> httpx.Response | Awaitable[httpx.Response]:
        if req.path == "/api/v1/accounts/region":
            return httpx.Response(200, json={"region": "us"})
        return respond(req)

    return handler


# ------------------------------------------------------------------ harness


@dataclass
class Run:
    queue: RecordingQueue
    cio: FakeCustomerIO
    state: DeliveryState
    metrics: Metrics
    limiter: RateLimiter

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(f"posthog_customerio_{name}", labels)
        return value or 0.0


def drive(
    queue: RecordingQueue,
    respond: Responder,
    *,
    settings: DeliverySettings = FAST,
    until: Callable[[Run], bool] | None = None,
    state: DeliveryState | None = None,
    clock: Callable[[], float] = time.time,
    linger_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Run:
    """Run a worker until ``until`` holds (default: the queue is empty), then stop it."""
    cio = FakeCustomerIO(respond)
    run = Run(queue, cio, state or DeliveryState(), Metrics(), RateLimiter(10_000))
    done = until or (lambda r: r.queue.empty)

    async def go() -> None:
        client = TrackClient(
            BASE, SITE_ID, API_KEY, timeout_secs=5, transport=httpx.MockTransport(cio)
        )
        worker = DeliveryWorker(
            queue,
            client,
            run.limiter,
            settings,
            run.metrics,
            run.state,
            rng=random.Random(3),
            idle_poll_secs=POLL_SECS,
            clock=clock,
            linger_sleep=linger_sleep,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            async with asyncio.timeout(20):  # a hang guard, not a timing assertion
                while not done(run):
                    if task.done():
                        task.result()
                        raise AssertionError("worker stopped on its own")
                    await asyncio.sleep(0.002)
        finally:
            stop.set()
            await task
            await client.aclose()

    asyncio.run(go())
    assert not any(op.claimed for op in queue.store.operations.values()), "claims left after stop"
    stored = [(d.op_id, d.reason, d.detail) for d in queue.store.dead_letters.values()]
    assert stored == [(r.op_id, r.reason, r.detail) for r in queue.dead]
    return run


def batch_requests(run: Run) -> list[Request]:
    return [r for r in run.cio.requests if r.path == "/api/v2/batch"]


# ------------------------------------------------------------------ tests


def test_200_acks_everything_and_sends_anonymous_events_first() -> None:
    q = RecordingQueue()
    ids = [
        q.add("alice", item("alice", 1)),
        q.add("anon-1", anon("anon-1", 1), endpoint=Endpoint.ANONYMOUS),
        q.add("bob", item("bob", 1), action="identify"),
        q.add("alice", item("alice", 2)),
    ]
    run = drive(q, region_ok(ok))
    assert sorted(q.acked) == ids
    assert q.dead == [] and q.retries == []
    paths = [r.path for r in run.cio.requests]
    assert paths == ["/api/v1/accounts/region", "/api/v1/events", "/api/v2/batch"]
    assert [key(i) for i in batch_requests(run)[0].items] == [
        ("alice", 1),
        ("bob", 1),
        ("alice", 2),
    ]
    assert run.state.delivered == 4 and run.state.credentials == "ok"
    assert run.metric("operations_delivered_total", action="event") == 3
    assert run.metric("operations_delivered_total", action="identify") == 1
    assert run.metric("requests_total", endpoint="batch", status="200") == 1
    assert run.metric("delivery_latency_seconds_count") == 4
    assert run.metric("credentials_ok") == 1
    assert [r.endpoint for r in run.state.recent] == ["region", "anonymous", "batch"]


def test_207_dead_letters_exactly_the_listed_indices() -> None:
    q = RecordingQueue()
    ids = [q.add(f"p{i}", item(f"p{i}", i)) for i in range(5)]
    errors = {
        "errors": [
            {"batch_index": 1, "reason": "invalid", "field": "name", "message": "too long"},
            {"batch_index": 3, "reason": "required", "field": "identifiers", "message": "x"},
            {"batch_index": 99, "reason": "ignored"},
        ]
    }

    def respond(req: Request) -> httpx.Response:
        return httpx.Response(207, json=errors)

    run = drive(q, region_ok(respond))
    assert sorted(q.acked) == [ids[0], ids[2], ids[4]]
    by_op = {r.op_id: r for r in q.dead}
    assert sorted(by_op) == [ids[1], ids[3]]
    assert by_op[ids[1]].reason == "rejected"
    assert by_op[ids[1]].detail == "invalid name: too long"
    assert by_op[ids[3]].detail == "required identifiers: x"
    assert by_op[ids[1]].status == 207
    assert '"seq":1' in by_op[ids[1]].request  # the item itself, as a one-item batch
    assert '"seq":3' not in by_op[ids[1]].request
    assert "batch_index" in by_op[ids[1]].response
    for r in q.dead:
        assert API_KEY not in r.request + r.response + r.detail
    assert run.metric("operations_dead_lettered_total", reason="rejected") == 2
    assert run.state.dead_lettered == 2 and run.state.delivered == 3


def test_400_on_a_batch_of_8_isolates_exactly_the_bad_item() -> None:
    q = RecordingQueue()
    ids = [q.add(f"p{i}", item(f"p{i}", i, bad=i == 5)) for i in range(8)]

    def respond(req: Request) -> httpx.Response:
        if any(i["attributes"]["bad"] for i in req.items):
            return httpx.Response(
                400,
                json={"errors": [{"reason": "invalid", "field": "x", "message": "bad item"}]},
            )
        return httpx.Response(200, json={})

    run = drive(q, region_ok(respond))
    assert [r.op_id for r in q.dead] == [ids[5]]
    assert q.dead[0].reason == "rejected"
    assert q.dead[0].detail == "HTTP 400: invalid x: bad item"
    assert sorted(q.acked) == [i for i in ids if i != ids[5]]
    assert sorted(run.cio.accepted) == sorted((f"p{i}", i) for i in range(8) if i != 5)
    assert len(run.cio.accepted) == 7  # nothing sent twice
    sizes = [len(r.items) for r in batch_requests(run)]
    assert sizes == [8, 4, 4, 2, 1, 1, 2]  # halves, in order, down to the bad item alone
    assert q.retries == []


def test_413_splits_and_a_single_oversized_item_is_rejected() -> None:
    q = RecordingQueue()
    ids = [q.add(f"p{i}", item(f"p{i}", i)) for i in range(4)]

    def respond(req: Request) -> httpx.Response:
        if any(i["attributes"]["seq"] == 2 for i in req.items):
            return httpx.Response(413, content=b"Request Entity Too Large")
        return httpx.Response(200, json={})

    drive(q, region_ok(respond))
    assert [r.op_id for r in q.dead] == [ids[2]]
    assert "413" in q.dead[0].detail


def test_429_with_retry_after_retries_later_then_delivers() -> None:
    q = RecordingQueue()
    ids = [q.add("alice", item("alice", 1)), q.add("bob", item("bob", 1))]
    throttled_at: list[float] = []

    def respond(req: Request) -> httpx.Response:
        if not throttled_at:
            throttled_at.append(req.at)
            return httpx.Response(429, headers={"Retry-After": "30"}, content=b"slow down")
        return httpx.Response(200, json={})

    run = drive(q, region_ok(respond))
    assert sorted(q.acked) == ids
    (retried_ids, not_before, error) = q.retries[0]
    assert sorted(retried_ids) == ids
    # Retry-After 30 s is capped by retry_after_max_secs (0.05) and beats the tiny backoff
    assert not_before >= throttled_at[0] + FAST.retry_after_max_secs
    assert "HTTP 429" in error
    assert run.metric("operations_retried_total", reason="throttled") == 2
    assert run.limiter.current_rate < run.limiter.max_rate  # AIMD halved it
    assert q.dead == []


def test_401_pauses_without_dropping_and_resumes_when_the_region_check_passes() -> None:
    q = RecordingQueue()
    ids = [q.add(f"p{i}", item(f"p{i}", i)) for i in range(3)]
    seen_state: list[str] = []
    region_calls = 0

    def respond(req: Request) -> httpx.Response:
        nonlocal region_calls
        if req.path == "/api/v1/accounts/region":
            region_calls += 1
            # 1: start-up check passes; 2: still refused; 3: fixed
            if region_calls == 2:
                seen_state.append(run_state.credentials)
                return httpx.Response(401, content=b"Unauthorized")
            return httpx.Response(200, json={"region": "us"})
        if region_calls < 3:
            return httpx.Response(401, content=b"Unauthorized")
        return httpx.Response(200, json={})

    run_state = DeliveryState()  # the handler looks at what the worker reports
    run = drive(q, respond, state=run_state)

    assert sorted(q.acked) == ids
    assert q.dead == [] and q.retries == []  # nothing dropped, no attempt counted
    assert set(q.released) == set(ids)
    assert seen_state == ["rejected"]
    assert run.state.credentials == "ok" and run.state.paused_until is None
    assert "credentials rejected" in run.state.last_error
    assert run.metric("credentials_ok") == 1
    assert region_calls == 3


def test_401_at_start_up_pauses_before_claiming() -> None:
    q = RecordingQueue()
    q.add("p", item("p", 1))
    calls: list[str] = []

    def respond(req: Request) -> httpx.Response:
        calls.append(req.path)
        if calls.count("/api/v1/accounts/region") < 3:
            return httpx.Response(401, content=b"Unauthorized")
        return httpx.Response(200, json={})

    run = drive(q, respond)
    assert calls[:3] == ["/api/v1/accounts/region"] * 3
    assert q.claims >= 1 and q.acked == [1] and q.released == []
    assert run.state.credentials == "ok"


def test_expired_operations_are_dead_lettered_and_fresh_ones_retried() -> None:
    q = RecordingQueue()
    old = q.add("old", item("old", 1), enqueued_at=time.time() - 10_000)
    fresh = q.add("fresh", item("fresh", 1))
    settings = FAST.model_copy(update={"max_event_age_secs": 3600})
    answered: list[int] = []

    def respond(req: Request) -> httpx.Response:
        answered.append(1)
        if len(answered) == 1:
            return httpx.Response(503, content=b"unavailable")
        return httpx.Response(200, json={})

    run = drive(q, region_ok(respond), settings=settings)
    assert [(r.op_id, r.reason) for r in q.dead] == [(old, "expired")]
    assert "max_event_age_secs=3600" in q.dead[0].detail and "HTTP 503" in q.dead[0].detail
    assert q.retries[0][0] == [fresh]
    assert q.acked == [fresh]
    assert run.metric("operations_dead_lettered_total", reason="expired") == 1
    assert run.metric("operations_retried_total", reason="server_error") == 1


def test_network_errors_are_retried() -> None:
    q = RecordingQueue()
    q.add("p", item("p", 1))
    failures: list[int] = []

    def respond(req: Request) -> httpx.Response:
        if len(failures) < 2:
            failures.append(1)
            raise httpx.ReadTimeout("slow")
        return httpx.Response(200, json={})

    run = drive(q, region_ok(respond))
    assert q.acked == [1]
    assert run.metric("operations_retried_total", reason="timeout") == 2
    assert run.metric("requests_total", endpoint="batch", status="timeout") == 2


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_per_partition_order_is_kept_across_retries_splits_and_concurrency(seed: int) -> None:
    q = RecordingQueue()
    partitions = [f"p{i}" for i in range(6)]
    rng = random.Random(seed)
    for seq in range(12):
        for p in partitions:
            if rng.random() < 0.15:
                q.add(p, anon(p, seq), endpoint=Endpoint.ANONYMOUS)
            else:
                q.add(p, item(p, seq, bad=seq == 7 and p == "p2"))
    total = len(q.store.operations)
    flaky = random.Random(seed)

    async def respond(req: Request) -> httpx.Response:
        await asyncio.sleep(0)  # let other requests interleave
        if req.path == "/api/v1/accounts/region":
            return httpx.Response(200, json={})
        roll = flaky.random()
        if roll < 0.3:
            return httpx.Response(503, content=b"try again")
        if roll < 0.4:
            raise httpx.ConnectError("refused")
        if any(i.get("attributes", {}).get("bad") for i in req.items):
            return httpx.Response(400, json={"errors": [{"reason": "bad"}]})
        return httpx.Response(200, json={})

    settings = FAST.model_copy(update={"batch_max_ops": 5, "max_in_flight": 4})
    run = drive(q, respond, settings=settings)
    assert [key(orjson.loads(r.request.split("\n\n", 1)[1])["batch"][0]) for r in q.dead] == [
        ("p2", 7)
    ]
    assert len(run.cio.accepted) == total - 1  # each accepted exactly once
    assert len(set(run.cio.accepted)) == total - 1
    for p in partitions:
        seqs = [s for (part, s) in run.cio.accepted if part == p]
        assert seqs == sorted(seqs), f"partition {p} delivered out of order: {seqs}"
    assert q.retries, "the script should have caused retries"


def test_a_retry_inside_a_split_holds_back_the_rest_of_that_partition() -> None:
    q = RecordingQueue()
    q.add("p", item("p", 1))
    q.add("q", item("q", 1, bad=True))
    q.add("p", item("p", 2))
    p1_failures: list[int] = []

    def respond(req: Request) -> httpx.Response:
        keys = [key(i) for i in req.items]
        if keys == [("p", 1)] and not p1_failures:
            p1_failures.append(1)
            return httpx.Response(503, content=b"busy")
        if any(i["attributes"]["bad"] for i in req.items):
            return httpx.Response(400, json={"errors": [{"reason": "bad"}]})
        return httpx.Response(200, json={})

    run = drive(q, region_ok(respond))
    # [p1, q1, p2] → 400 → [p1] 503 (retry) and [q1, p2]: p2 must wait for p1
    assert [s for (p, s) in run.cio.accepted if p == "p"] == [1, 2]
    assert [key(i) for i in batch_requests(run)[2].items] == [("q", 1)]
    assert [r.op_id for r in q.dead] == [2]


def test_a_failed_anonymous_event_holds_back_its_partitions_batch_items() -> None:
    q = RecordingQueue()
    q.add("p", anon("p", 1), endpoint=Endpoint.ANONYMOUS)
    q.add("p", item("p", 2))
    q.add("other", item("other", 1))
    anon_failures: list[int] = []

    def respond(req: Request) -> httpx.Response:
        if req.path == "/api/v1/events" and not anon_failures:
            anon_failures.append(1)
            return httpx.Response(500, content=b"oops")
        return httpx.Response(200, json={})

    run = drive(q, region_ok(respond))
    assert [s for (p, s) in run.cio.accepted if p == "p"] == [1, 2]
    assert [key(i) for i in batch_requests(run)[0].items] == [("other", 1)]


def test_a_partition_mixing_batch_and_anonymous_ops_keeps_its_order() -> None:
    q = RecordingQueue()
    q.add("p", item("p", 1))
    q.add("p", anon("p", 2), endpoint=Endpoint.ANONYMOUS)
    q.add("p", item("p", 3))
    q.add("other", anon("other", 1), endpoint=Endpoint.ANONYMOUS)
    run = drive(q, region_ok(ok))
    assert [s for (p, s) in run.cio.accepted if p == "p"] == [1, 2, 3]
    assert q.dead == [] and q.retries == []


def _refuse_anonymous_items(req: Request) -> httpx.Response:
    """Customer.io refusing the anonymous_id identifier in batches (207), accepting v1."""
    refused = [
        {"batch_index": i, "reason": "invalid", "field": "identifiers", "message": "unknown"}
        for i, it in enumerate(req.items)
        if req.path == "/api/v2/batch" and "anonymous_id" in it.get("identifiers", {})
    ]
    if refused:
        return httpx.Response(207, json={"errors": refused})
    return httpx.Response(200, json={})


ONE_AT_A_TIME = FAST.model_copy(update={"max_in_flight": 1, "batch_max_ops": 2})


def test_anonymous_items_ride_in_the_batch_in_claim_order() -> None:
    q = RecordingQueue()
    ids = [
        q.add("alice", item("alice", 1)),
        q.add("anon-1", anon_item("anon-1", 1), endpoint=Endpoint.ANONYMOUS_ITEM),
        q.add("bob", item("bob", 1)),
        q.add("anon-1", anon_item("anon-1", 2), endpoint=Endpoint.ANONYMOUS_ITEM),
    ]
    run = drive(q, region_ok(ok))
    assert sorted(q.acked) == ids and q.dead == []
    assert [r.path for r in run.cio.requests] == ["/api/v1/accounts/region", "/api/v2/batch"]
    (batch,) = batch_requests(run)
    assert [key(i) for i in batch.items] == [("alice", 1), ("anon-1", 1), ("bob", 1), ("anon-1", 2)]
    assert batch.items[1]["identifiers"] == {"anonymous_id": "anon-1"}
    assert run.metric("anonymous_fallback_total") == 0


def test_anonymous_events_endpoint_v1_sends_each_as_a_v1_anonymous_event() -> None:
    q = RecordingQueue()
    q.add("anon-1", anon_item("anon-1", 1), endpoint=Endpoint.ANONYMOUS_ITEM)
    q.add("alice", item("alice", 1))
    settings = FAST.model_copy(update={"anonymous_events_endpoint": "v1"})
    run = drive(q, region_ok(ok), settings=settings)
    assert [r.path for r in run.cio.requests[1:]] == ["/api/v1/events", "/api/v2/batch"]
    assert run.cio.requests[1].items == [
        {"anonymous_id": "anon-1", "name": "e", "data": {"seq": 1, "bad": False}}
    ]
    assert [key(i) for i in batch_requests(run)[0].items] == [("alice", 1)]
    assert q.dead == [] and run.metric("anonymous_fallback_total") == 0


def test_207_refusing_anonymous_items_resends_them_through_v1_then_v1_for_good(
    caplog: pytest.LogCaptureFixture,
) -> None:
    q = RecordingQueue()
    ids = [
        q.add("alice", item("alice", 1)),
        q.add("anon-1", anon_item("anon-1", 1), endpoint=Endpoint.ANONYMOUS_ITEM),
        q.add("bob", item("bob", 1)),
        q.add("anon-2", anon_item("anon-2", 1), endpoint=Endpoint.ANONYMOUS_ITEM),
    ]
    run = drive(q, region_ok(_refuse_anonymous_items), settings=ONE_AT_A_TIME)
    assert sorted(q.acked) == ids
    assert q.dead == [] and q.retries == []  # a refused identifier is not bad data
    assert [(r.path, [key(i) for i in r.items]) for r in run.cio.requests[1:]] == [
        ("/api/v2/batch", [("alice", 1), ("anon-1", 1)]),  # 207: anon-1 refused
        ("/api/v1/events", [("anon-1", 1)]),  # re-sent through v1
        ("/api/v1/events", [("anon-2", 1)]),  # later ones: v1 directly
        ("/api/v2/batch", [("bob", 1)]),
    ]
    assert run.metric("anonymous_fallback_total") == 1
    assert run.metric("operations_delivered_total", action="event") == 4
    switched = [r for r in caplog.records if "refused anonymous_id" in r.getMessage()]
    assert len(switched) == 1  # logged once


def test_207_refusal_dead_letters_only_the_real_failures_of_the_same_batch() -> None:
    q = RecordingQueue()
    q.add("alice", item("alice", 1, bad=True))
    anon_id = q.add("anon-1", anon_item("anon-1", 1), endpoint=Endpoint.ANONYMOUS_ITEM)

    def respond(req: Request) -> httpx.Response:
        if req.path == "/api/v2/batch":
            return httpx.Response(
                207,
                json={
                    "errors": [
                        {"batch_index": 0, "reason": "invalid", "field": "name", "message": "x"},
                        {"batch_index": 1, "reason": "invalid", "field": "identifiers"},
                    ]
                },
            )
        return httpx.Response(200, json={})

    run = drive(q, region_ok(respond))
    assert [r.op_id for r in q.dead] == [1]
    assert q.acked == [anon_id]
    assert run.cio.accepted == [("anon-1", 1)]  # through v1


def test_400_refusing_anonymous_items_splits_then_falls_back_without_dead_letters() -> None:
    q = RecordingQueue()
    ids = [
        q.add("anon-1", anon_item("anon-1", 1), endpoint=Endpoint.ANONYMOUS_ITEM),
        q.add("anon-2", anon_item("anon-2", 1), endpoint=Endpoint.ANONYMOUS_ITEM),
        q.add("alice", item("alice", 1)),
    ]

    def respond(req: Request) -> httpx.Response:
        if any("anonymous_id" in i.get("identifiers", {}) for i in req.items):
            error = {"reason": "invalid", "field": "identifiers", "message": "unknown"}
            return httpx.Response(400, json={"errors": [error]})
        return httpx.Response(200, json={})

    run = drive(q, region_ok(respond))
    assert sorted(q.acked) == ids and q.dead == []
    assert [(r.path, [key(i) for i in r.items]) for r in run.cio.requests[1:]] == [
        ("/api/v2/batch", [("anon-1", 1), ("anon-2", 1), ("alice", 1)]),  # 400: split
        ("/api/v2/batch", [("anon-1", 1)]),  # 400 naming identifiers, all anonymous
        ("/api/v1/events", [("anon-1", 1)]),
        ("/api/v1/events", [("anon-2", 1)]),  # the other half: v1 directly
        ("/api/v2/batch", [("alice", 1)]),
    ]
    assert run.metric("anonymous_fallback_total") == 1


def test_stop_releases_what_is_still_in_flight_after_the_grace_period() -> None:
    q = RecordingQueue()
    ids = [q.add(f"p{i}", item(f"p{i}", i)) for i in range(3)]
    never = asyncio.Event()

    async def hang(req: Request) -> httpx.Response:
        await never.wait()
        raise AssertionError("unreachable")

    settings = FAST.model_copy(update={"shutdown_grace_secs": 0.01})
    run = drive(
        q,
        region_ok(hang),
        settings=settings,
        until=lambda r: any(x.path == "/api/v2/batch" for x in r.cio.requests),
    )
    assert sorted(q.released) == ids
    assert sorted(q.store.operations) == ids and q.acked == [] and q.dead == []
    assert run.state.delivered == 0


# ------------------------------------------------------------------ lanes


def _lanes_queue(backfill: int, live: int) -> RecordingQueue:
    q = RecordingQueue()
    for i in range(backfill):
        q.add(f"b{i}", item(f"b{i}", 1), lane=Lane.BACKFILL)
    for i in range(live):
        q.add(f"l{i}", item(f"l{i}", 1), lane=Lane.LIVE)
    return q


@pytest.mark.parametrize(
    ("share", "expected"),
    [
        pytest.param(0.5, "LBLBLBLBBB", id="half_alternates"),
        pytest.param(0.25, "LLLBLBBBBB", id="quarter_one_in_four"),
        pytest.param(0.0, "LLLLBBBBBB", id="zero_live_always_first"),
        pytest.param(1.0, "BBBBBBLLLL", id="one_backfill_always_first"),
    ],
)
def test_live_lane_leads_and_backfill_gets_its_share(share: float, expected: str) -> None:
    # older backfill work is queued first; one op per request, one request at a time
    q = _lanes_queue(backfill=6, live=4)
    settings = FAST.model_copy(
        update={"batch_max_ops": 1, "max_in_flight": 1, "backfill_share": share}
    )
    run = drive(q, region_ok(ok), settings=settings)
    order = "".join(p[0].upper() for p, _ in run.cio.accepted)
    assert order == expected


def test_a_claim_is_filled_from_the_other_lane() -> None:
    q = _lanes_queue(backfill=3, live=2)
    settings = FAST.model_copy(update={"batch_max_ops": 10, "max_in_flight": 1})
    run = drive(q, region_ok(ok), settings=settings)
    [request] = batch_requests(run)
    assert [key(i)[0] for i in request.items] == ["l0", "l1", "b0", "b1", "b2"]


# ------------------------------------------------------------------ full batches (linger)

LINGER = FAST.model_copy(update={"batch_linger_secs": 0.2, "batch_max_ops": 4})


@dataclass
class Linger:
    """The worker's linger wait, driven by the test: records each wait (on a clock that
    stands still, so each is the whole ``batch_linger_secs``) and runs ``meanwhile`` in it,
    what arrives while the batch waits; it never sleeps."""

    meanwhile: Callable[[int], Awaitable[None]] | None = None
    waits: list[float] = field(default_factory=list)

    async def __call__(self, secs: float) -> None:
        self.waits.append(secs)
        if self.meanwhile is not None:
            await self.meanwhile(len(self.waits))
        await asyncio.sleep(0)


def test_a_backlog_goes_out_in_full_batches_at_once_and_only_the_tail_lingers() -> None:
    q = RecordingQueue()
    for i in range(10):
        q.add(f"p{i}", item(f"p{i}", i))
    linger = Linger()
    settings = LINGER.model_copy(update={"max_in_flight": 1})
    now = time.time()
    run = drive(q, region_ok(ok), settings=settings, clock=lambda: now, linger_sleep=linger)
    assert [len(r.items) for r in batch_requests(run)] == [4, 4, 2]
    # the full ones went at once; only the tail waited for company
    assert linger.waits == pytest.approx([0.2])


def test_a_trickle_lingers_and_the_batch_takes_what_arrived_meanwhile() -> None:
    q = RecordingQueue()
    q.add("a", item("a", 1))

    async def arrive(wait: int) -> None:
        if wait == 1:
            for p, seq in (("b", 1), ("a", 2), ("c", 1)):
                await q.add_live(p, item(p, seq))

    linger = Linger(arrive)
    now = time.time()
    run = drive(q, region_ok(ok), settings=LINGER, clock=lambda: now, linger_sleep=linger)
    # a2 arrived while a1 was claimed: the next request, so a's order holds
    assert [[key(i) for i in r.items] for r in batch_requests(run)] == [
        [("a", 1), ("b", 1), ("c", 1)],
        [("a", 2)],
    ]
    assert linger.waits == pytest.approx([0.2, 0.2])


def test_under_a_stream_every_request_that_is_not_full_waited_a_linger_first() -> None:
    # Operations arrive during every request and every wait while slots are free: still one
    # non-full request per linger, never one per free slot.
    q = RecordingQueue()
    q.add("s0", item("s0", 0))
    arrived = itertools.count(1)
    rounds = 6

    async def two_more(_: int) -> None:
        for _ in range(2):
            n = next(arrived)
            if n <= 3 * rounds:
                await q.add_live(f"s{n}", item(f"s{n}", n))

    async def respond(req: Request) -> httpx.Response:
        if req.path == "/api/v2/batch":
            await two_more(0)
        return httpx.Response(200, json={})

    linger = Linger(two_more)
    settings = LINGER.model_copy(update={"batch_max_ops": 1_000, "max_in_flight": 8})
    now = time.time()
    run = drive(q, region_ok(respond), settings=settings, clock=lambda: now, linger_sleep=linger)
    sizes = [len(r.items) for r in batch_requests(run)]
    assert sum(sizes) == 1 + 3 * rounds and len(run.cio.accepted) == sum(sizes)
    assert len(sizes) == len(linger.waits)  # each request came after exactly one linger
    assert linger.waits == pytest.approx([0.2] * len(sizes))
    assert all(size > 1 for size in sizes[:-1])  # what arrived meanwhile rode along


def test_a_lingering_batch_tops_up_only_to_its_limits() -> None:
    q = RecordingQueue()
    q.add("a", item("a", 1))

    async def five_more(wait: int) -> None:
        if wait == 1:
            for p in "bcdef":
                await q.add_live(p, item(p, 1))

    linger = Linger(five_more)
    now = time.time()
    run = drive(q, region_ok(ok), settings=LINGER, clock=lambda: now, linger_sleep=linger)
    assert [[key(i)[0] for i in r.items] for r in batch_requests(run)] == [
        ["a", "b", "c", "d"],  # topped up to batch_max_ops = 4
        ["e", "f"],
    ]
