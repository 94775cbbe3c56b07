"""End to end: anonymous visitors' events in v2 batches, the fallback to v1, and the merge.

Real ``serve`` and sandbox processes (``harness.py``); assertions are on what the sandbox
received and holds, never on timings.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from posthog_customerio.customerio.spec import SpecValidator
from tests.e2e.harness import Sandbox, Serve, wait_until

pytestmark = pytest.mark.e2e

VISIT = ["$pageview", "$pageview", "clicked_pricing", "$screen"]


def _uuid(visitor: int, step: int) -> str:
    return f"01930000-{visitor:04x}-7{step:03x}-8000-{visitor * 100 + step:012x}"


def visitor_id(visitor: int) -> str:
    return f"0193aaaa-{visitor:04x}-7000-8000-00000000anon"


def anonymous_events(visitor: int) -> list[dict[str, Any]]:
    """A browser's anonymous visit: ``$device_id`` = distinct_id, ``$is_identified`` false."""
    anon = visitor_id(visitor)
    return [
        {
            "event": {
                "uuid": _uuid(visitor, step),
                "event": name,
                "distinct_id": anon,
                "timestamp": f"2024-10-01T12:00:{step:02d}.000Z",
                "properties": {
                    "$device_id": anon,
                    "$is_identified": False,
                    "$current_url": f"https://x.test/{visitor}/{step}",
                    "$screen_name": f"screen-{step}",
                    "step": step,
                },
            }
        }
        for step, name in enumerate(VISIT)
    ]


def sign_up(visitor: int) -> dict[str, Any]:
    """The ``$identify`` that turns the visitor into ``user_<visitor>``."""
    anon = visitor_id(visitor)
    return {
        "event": {
            "uuid": _uuid(visitor, 99),
            "event": "$identify",
            "distinct_id": f"user_{visitor}",
            "timestamp": "2024-10-01T12:01:00.000Z",
            "properties": {
                "$device_id": anon,
                "$anon_distinct_id": anon,
                "$is_identified": True,
                "$set": {"email": f"user{visitor}@example.com", "plan": "free"},
            },
        }
    }


def _has_identify(req: dict[str, Any]) -> bool:
    body = req.get("body")
    batch = body.get("batch", []) if isinstance(body, dict) else []
    return any(item.get("action") == "identify" for item in batch)


def anonymous_items(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        item
        for req in requests
        if req["path"] == "/api/v2/batch"
        for item in req["body"]["batch"]
        if "anonymous_id" in item.get("identifiers", {})
    ]


def v1_requests(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in requests if r["path"] == "/api/v1/events"]


@pytest.fixture
def refusing_sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    """A sandbox that refuses anonymous_id batch items, as the CLI flag sets it."""
    sb = Sandbox(tmp_path, "--reject-anonymous-batch")
    yield sb
    sb.close()


def test_anonymous_events_ride_in_v2_batches_with_anonymous_id(
    serve: Serve, sandbox: Sandbox
) -> None:
    visitors = range(20)
    events = [e for v in visitors for e in anonymous_events(v)]
    assert serve.post({"batch": events}).status_code == 200
    serve.wait_drained()

    requests = sandbox.requests()
    assert v1_requests(requests) == [], "anonymous events went one per v1 request"
    items = anonymous_items(requests)
    assert len(items) == len(events)
    assert {i["identifiers"]["anonymous_id"] for i in items} == {visitor_id(v) for v in visitors}
    assert {i["action"] for i in items} == {"page", "event", "screen"}
    batches = [r for r in requests if r["path"] == "/api/v2/batch"]
    assert all(r["status"] == 200 for r in batches)
    assert len(batches) < len(events) / 4, "anonymous events were not batched"
    validator = SpecValidator()
    for req in batches:
        assert validator.validate_request("batch", req["body"]) == []

    pending = sandbox.http.get("/_sandbox/anonymous_events").json()
    assert {k: len(v) for k, v in pending.items()} == {visitor_id(v): len(VISIT) for v in visitors}
    assert sandbox.people() == [], "an anonymous visitor became a profile"

    assert serve.post(sign_up(3)).status_code == 200
    serve.wait_drained()
    person = wait_until(lambda: sandbox.person("user_3"))
    assert sorted(e["data"]["step"] for e in person["events"]) == list(range(len(VISIT)))
    assert person["anonymous_ids"] == [visitor_id(3)]


def test_refused_anonymous_id_falls_back_to_v1_and_nothing_is_dead_lettered(
    tmp_path: Path, refusing_sandbox: Sandbox
) -> None:
    serve = Serve(tmp_path, tmp_path / "data", refusing_sandbox)
    try:
        first = [e for v in range(5) for e in anonymous_events(v)]
        assert serve.post({"batch": first}).status_code == 200
        serve.wait_drained()
        assert serve.status()["queue"]["dead_letters"] == 0
        refused = serve.metric("anonymous_fallback_total")
        assert refused >= 1
        assert serve.metric("operations_dead_lettered_total") == 0

        requests = refusing_sandbox.requests()
        refused_items = sum(
            len(r["response"]["errors"])
            for r in requests
            if r["path"] == "/api/v2/batch" and r["status"] == 207
        )
        assert refused_items == refused  # every refused item was counted, and re-sent
        assert len(v1_requests(requests)) == len(first)
        assert all(r["status"] == 200 for r in v1_requests(requests))
        pending = refusing_sandbox.http.get("/_sandbox/anonymous_events").json()
        assert sum(len(v) for v in pending.values()) == len(first)

        # After the switch, later anonymous events go v1 directly: no more refusals.
        seen = len(requests)
        later = [e for v in range(5, 8) for e in anonymous_events(v)]
        assert serve.post({"batch": later}).status_code == 200
        serve.wait_drained()
        new = refusing_sandbox.requests()[seen:]
        assert anonymous_items(new) == []
        assert len(v1_requests(new)) == len(later)
        assert serve.metric("anonymous_fallback_total") == refused
        assert serve.status()["queue"]["dead_letters"] == 0
        assert serve.proc is not None
        assert serve.proc.output().count("refused anonymous_id") == 1  # logged once
    finally:
        serve.close()


def test_anonymous_history_is_merged_into_the_person_after_an_outage_backlog(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Every visitor's anonymous events reach Customer.io no later than the identify that
    merges them, even after an outage in which the visitors' partitions, failing longer, back
    off longer than the people's: the merge waits in the visitor's partition."""
    serve = Serve(
        tmp_path,
        tmp_path / "data",
        sandbox,
        POSTHOG_CUSTOMERIO_RETRY_INITIAL_BACKOFF_SECS="0.2",
        POSTHOG_CUSTOMERIO_RETRY_MAX_BACKOFF_SECS="4",
        # One visit per request: each visitor's partitions back off on their own.
        POSTHOG_CUSTOMERIO_BATCH_MAX_OPS=str(len(VISIT)),
    )
    try:
        _outage_then_recovery(serve, sandbox)
    finally:
        serve.close()


def _outage_then_recovery(serve: Serve, sandbox: Sandbox) -> None:
    visitors = range(25)
    sandbox.faults(fail_rate=1.0, fail_status=503)
    for v in visitors:
        assert serve.post({"batch": anonymous_events(v)}).status_code == 200
    wait_until(lambda: sandbox.stats()["requests_by_status"].get("503", 0) >= 3 * len(visitors))
    for v in visitors:  # the sign-ups come later: their partitions have failed less
        assert serve.post(sign_up(v)).status_code == 200
    wait_until(lambda: any(r["status"] == 503 and _has_identify(r) for r in sandbox.requests()))
    sandbox.faults(fail_rate=0.0)
    serve.wait_drained(timeout=120)
    assert serve.status()["queue"]["dead_letters"] == 0

    for v in visitors:
        person = wait_until(lambda v=v: sandbox.person(f"user_{v}"))
        steps = sorted(e["data"]["step"] for e in person["events"] if e.get("anonymous_id"))
        assert steps == list(range(len(VISIT))), f"visitor {v}: {steps}"
        assert person["attributes"]["plan"] == "free"
    assert sandbox.http.get("/_sandbox/anonymous_events").json() == {}

    # The order Customer.io saw: (request seq, index in the batch) of each accepted item.
    accepted_at: dict[str, list[tuple[int, int]]] = {}
    merged_at: dict[str, tuple[int, int]] = {}
    for req in sandbox.requests():
        if req["path"] != "/api/v2/batch" or req["status"] not in (200, 207):
            continue
        failed = {e["batch_index"] for e in (req["response"] or {}).get("errors", [])}
        for index, item in enumerate(req["body"]["batch"]):
            if index in failed:
                continue
            anon = item.get("identifiers", {}).get("anonymous_id")
            if anon is not None:
                accepted_at.setdefault(anon, []).append((req["seq"], index))
            merged = item.get("attributes", {}).get("anonymous_id")
            if item["action"] == "identify" and merged is not None:
                merged_at.setdefault(merged, (req["seq"], index))
    for v in visitors:
        anon = visitor_id(v)
        assert len(accepted_at[anon]) == len(VISIT)
        assert max(accepted_at[anon]) < merged_at[anon], f"visitor {v} merged before its events"
