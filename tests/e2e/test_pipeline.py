"""End to end: PostHog webhook → serve → queue → delivery → sandbox, all real processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from posthog_customerio.customerio.spec import SpecValidator
from posthog_customerio.mapping.ulid import is_ulid
from tests.e2e.harness import API_KEY, Sandbox, Serve, wait_until

pytestmark = pytest.mark.e2e

# The story of examples/posthog/README.md, in the order it happened.
STORY = [
    "webhook-pageview-anonymous.json",
    "webhook-identify.json",
    "webhook-pageview-identified.json",
    "webhook-autocapture.json",
    "webhook-custom-event.json",
    "webhook-groupidentify.json",
    "webhook-create-alias.json",
    "webhook-screen.json",
    "webhook-server-side.json",
]


def load(samples: Path, name: str) -> dict[str, Any]:
    return dict(json.loads((samples / name).read_text()))


def post_story(serve: Serve, samples: Path) -> None:
    for name in STORY:
        r = serve.post(load(samples, name))
        assert r.status_code == 200, (name, r.text)
    serve.wait_drained()


def events_of(person: dict[str, Any]) -> list[dict[str, Any]]:
    return list(person.get("events", []))


def test_story_reaches_customerio(serve: Serve, sandbox: Sandbox, posthog_samples: Path) -> None:
    post_story(serve, posthog_samples)
    person = wait_until(lambda: sandbox.person("user_42"))
    attrs = person["attributes"]
    assert attrs["email"] == "jane@example.com"
    assert attrs["plan"] == "pro"

    events = events_of(person)
    order = [e for e in events if e["name"] == "order_completed"]
    assert len(order) == 1
    data = order[0].get("data") or order[0].get("attributes") or {}
    assert data["items"] == [
        {"sku": "TSHIRT-M", "qty": 2, "price": 25.0},
        {"sku": "MUG", "qty": 1, "price": 79.5},
    ]
    assert is_ulid(order[0]["id"])
    assert isinstance(order[0]["timestamp"], int)

    pages = {e["name"] for e in events if e.get("type") == "page"}
    assert "https://app.example.com/dashboard?tab=usage" in pages
    screens = {e["name"] for e in events if e.get("type") == "screen"}
    assert screens == {"Settings"}
    assert "subscription_renewed" in {e["name"] for e in events}


def test_anonymous_pricing_view_ends_up_on_the_person(
    serve: Serve, sandbox: Sandbox, posthog_samples: Path
) -> None:
    post_story(serve, posthog_samples)
    person = wait_until(lambda: sandbox.person("user_42"))
    names = {e["name"] for e in events_of(person)}
    assert "https://app.example.com/pricing" in names


def test_same_webhook_twice_is_sent_once(
    serve: Serve, sandbox: Sandbox, posthog_samples: Path
) -> None:
    body = load(posthog_samples, "webhook-custom-event.json")
    first = serve.post(body)
    assert first.status_code == 200 and first.json()["accepted"] == 1
    second = serve.post(body)
    assert second.status_code == 200
    assert second.json()["accepted"] == 0 and second.json()["dropped"] == 1
    serve.wait_drained()
    person = wait_until(lambda: sandbox.person("user_42"))
    assert [e["name"] for e in events_of(person)].count("order_completed") == 1
    sent_ids = [
        item["id"]
        for req in sandbox.requests()
        if req["path"] == "/api/v2/batch"
        for item in req["body"]["batch"]
        if item.get("name") == "order_completed"
    ]
    assert len(sent_ids) == 1


def test_every_request_sent_validates_against_the_official_spec(
    serve: Serve, sandbox: Sandbox, posthog_samples: Path
) -> None:
    post_story(serve, posthog_samples)
    # a mixed batch too, so several items share one request
    batch = [load(posthog_samples, n) for n in STORY]
    for i, b in enumerate(batch):
        b["event"]["uuid"] = f"0192{i:04d}-0000-7000-8000-000000000000"
        b["event"]["distinct_id"] = f"{b['event']['distinct_id']}-copy"
    assert serve.post({"batch": batch}).status_code == 200
    serve.wait_drained()
    validator = SpecValidator()
    operation_of = {"/api/v2/batch": "batch", "/api/v1/events": "trackAnonymous"}
    requests = [r for r in sandbox.requests() if r["method"] == "POST"]
    assert requests, "the connector sent nothing"
    for req in requests:
        assert req["path"] in operation_of, req["path"]
        assert req["status"] == 200, req
        assert validator.validate_request(operation_of[req["path"]], req["body"]) == []


def test_api_key_never_appears_in_output(
    serve: Serve, sandbox: Sandbox, posthog_samples: Path
) -> None:
    post_story(serve, posthog_samples)
    pages = [serve.http.get(p).text for p in ("/", "/metrics", "/api/status", "/readyz")]
    assert serve.proc is not None
    for text in [*pages, serve.proc.output()]:
        assert API_KEY not in text
