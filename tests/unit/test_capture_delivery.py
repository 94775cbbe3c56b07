"""The worker's reverse path: PostHog capture operations and unreadable reporting bodies.

The same in-memory queue and scripted Customer.io as test_delivery_worker.py, plus a scripted
PostHog ``/batch/``: capture operations go there in requests of their own (with the project
key in the body, not Customer.io's rate tokens), Customer.io's operations of the same claim
still go to Customer.io, and the answers are read by the same classification.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from posthog_customerio.customerio.client import TrackClient
from posthog_customerio.delivery.ratelimit import RateLimiter
from posthog_customerio.delivery.state import DeliveryState
from posthog_customerio.delivery.worker import DeliveryWorker
from posthog_customerio.mapping.operation import Endpoint
from posthog_customerio.metrics import Metrics
from posthog_customerio.posthog.capture import CaptureClient
from tests.unit.test_delivery_worker import (
    API_KEY,
    BASE,
    FAST,
    POLL_SECS,
    SITE_ID,
    FakeCustomerIO,
    RecordingQueue,
    item,
    ok,
    region_ok,
)

PROJECT_KEY = "phc_do_not_leak"


def capture_op(q: RecordingQueue, n: int) -> int:
    body = {"uuid": f"u-{n}", "event": "Email Opened", "distinct_id": "alice", "properties": {}}
    return q.add(f"posthog:alice-{n}", body, endpoint=Endpoint.POSTHOG_CAPTURE, action="capture")


def drive_capture(
    q: RecordingQueue, answers: list[httpx.Response], until: Callable[[], bool]
) -> tuple[list[list[dict[str, Any]]], FakeCustomerIO, Metrics]:
    """Run a worker with a PostHog answering ``answers`` in turn (then 200) until ``until``."""
    posted: list[list[dict[str, Any]]] = []

    def posthog(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/batch/"
        body = orjson.loads(request.content)
        assert body["api_key"] == PROJECT_KEY
        posted.append(body["batch"])
        return answers.pop(0) if answers else httpx.Response(200, json={"status": "Ok"})

    cio = FakeCustomerIO(region_ok(ok))
    metrics = Metrics()

    async def go() -> None:
        client = TrackClient(
            BASE, SITE_ID, API_KEY, timeout_secs=5, transport=httpx.MockTransport(cio)
        )
        capture = CaptureClient(
            "https://posthog.test",
            PROJECT_KEY,
            timeout_secs=5,
            transport=httpx.MockTransport(posthog),
        )
        worker = DeliveryWorker(
            q,
            client,
            RateLimiter(10_000),
            FAST,
            metrics,
            DeliveryState(),
            rng=random.Random(3),
            idle_poll_secs=POLL_SECS,
            capture=capture,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            async with asyncio.timeout(20):
                while not until():
                    if task.done():
                        task.result()
                        raise AssertionError("worker stopped on its own")
                    await asyncio.sleep(0.002)
        finally:
            stop.set()
            await task
            await client.aclose()
            await capture.aclose()

    asyncio.run(go())
    return posted, cio, metrics


def test_capture_ops_go_to_posthog_and_customerio_ops_to_customerio() -> None:
    q = RecordingQueue()
    ids = [capture_op(q, 1), q.add("bob", item("bob", 1)), capture_op(q, 2)]
    posted, cio, metrics = drive_capture(q, [], lambda: q.empty)
    assert sorted(q.acked) == sorted(ids)
    assert [[e["uuid"] for e in batch] for batch in posted] == [["u-1", "u-2"]]
    batches = [r for r in cio.requests if r.path == "/api/v2/batch"]
    assert [len(r.items) for r in batches] == [1]
    sample = metrics.registry.get_sample_value(
        "posthog_customerio_requests_total", {"endpoint": "capture", "status": "200"}
    )
    assert sample == 1


def test_capture_retries_503_and_refused_key_then_delivers() -> None:
    q = RecordingQueue()
    ids = [capture_op(q, 1)]
    answers = [
        httpx.Response(503, headers={"Retry-After": "0"}),
        httpx.Response(401, json={"type": "authentication_error"}),  # PostHog's, not a pause
    ]
    posted, _, _ = drive_capture(q, answers, lambda: q.empty)
    assert q.acked == ids and q.dead == []
    assert len(posted) == 3 and len(q.retries) == 2


def test_capture_400_splits_then_dead_letters_the_bad_one_without_the_key() -> None:
    q = RecordingQueue()
    ids = [capture_op(q, 1), capture_op(q, 2)]
    answers = [httpx.Response(400, json={"detail": "bad"}), httpx.Response(400, json={})]
    drive_capture(q, answers, lambda: q.empty)
    assert [d.op_id for d in q.dead] == [ids[0]]
    assert q.acked == [ids[1]]
    assert PROJECT_KEY not in q.dead[0].request and "[redacted]" in q.dead[0].request


def test_unreadable_reporting_body_is_dead_lettered_with_its_bytes() -> None:
    q = RecordingQueue()
    body = {"raw": '{"event_id": ', "raw_hex": None, "problem": "malformed JSON"}
    op_id = q.add(
        "posthog:unreadable",
        body,
        endpoint=Endpoint.REPORTING_UNREADABLE,
        action="reporting_unreadable",
    )
    posted, _, _ = drive_capture(q, [], lambda: q.empty)
    assert posted == []
    assert [(d.op_id, d.reason, d.detail) for d in q.dead] == [
        (op_id, "unreadable_reporting", "malformed JSON")
    ]
    assert '{"event_id": ' in q.dead[0].request
