"""The sandbox over real HTTP: uvicorn on a loopback port, httpx as the client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from posthog_customerio.customerio.sandbox import SandboxConfig, SandboxServer

SITE, KEY = "site-123", "key-secret-456"
ULID = "01HZX3J5Q8W9E2R4T6Y8V0J1P2"
DEFAULT_FAULTS = {
    "fail_rate": 0.0,
    "fail_status": 503,
    "rate_limit_rps": None,
    "retry_after_secs": 1,
    "latency_ms": 0,
    "reject_credentials": False,
    "reject_event_names": ["poison"],
    "reject_anonymous_batch": False,
}


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    config = SandboxConfig(site_id=SITE, api_key=KEY, reject_event_names=frozenset({"poison"}))
    with SandboxServer(config) as running:
        yield running


@pytest.fixture
def client(server: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, auth=(SITE, KEY), timeout=10) as c:
        assert c.post("/_sandbox/faults", json=DEFAULT_FAULTS).status_code == 200
        assert c.post("/_sandbox/reset").status_code == 200
        yield c


def identify(ident: str, **attributes: Any) -> dict[str, Any]:
    return {
        "type": "person",
        "action": "identify",
        "identifiers": {"id": ident},
        "attributes": attributes,
    }


def event(ident: str, name: str, event_id: str | None = ULID) -> dict[str, Any]:
    item: dict[str, Any] = {
        "type": "person",
        "action": "event",
        "identifiers": {"id": ident},
        "name": name,
        "timestamp": 1_700_000_000,
        "attributes": {"nested": {"a": [1, 2]}},
    }
    if event_id is not None:
        item["id"] = event_id
    return item


@pytest.mark.parametrize(
    "auth",
    [
        pytest.param(None, id="missing"),
        pytest.param((SITE, "wrong"), id="wrong-key"),
        pytest.param(("wrong", KEY), id="wrong-site"),
    ],
)
def test_bad_credentials_are_401(client: httpx.Client, auth: tuple[str, str] | None) -> None:
    headers = {} if auth else {"Authorization": ""}
    r = client.post(
        "/api/v2/batch", json={"batch": [identify("u1")]}, auth=auth or ("", ""), headers=headers
    )
    assert r.status_code == 401
    assert r.json() == {"meta": {"errors": ["Unauthorized request"]}}
    assert client.get("/_sandbox/people").json() == []


def test_region_answers_like_customerio(client: httpx.Client) -> None:
    r = client.get("/api/v1/accounts/region")
    assert r.status_code == 200
    assert r.json() == {"url": "https://track.customer.io", "region": "us", "environment_id": 1}


def test_valid_batch_is_200_and_people_show_the_result(client: httpx.Client) -> None:
    batch = [identify("u1", email="jane@example.com", plan="pro"), event("u1", "signed_up")]
    r = client.post("/api/v2/batch", json={"batch": batch})
    assert (r.status_code, r.json()) == (200, {})
    people = client.get("/_sandbox/people").json()
    assert [(p["id"], p["email"], p["events"]) for p in people] == [("u1", "jane@example.com", 1)]
    jane = client.get("/_sandbox/people/jane@example.com").json()
    assert jane["attributes"] == {"email": "jane@example.com", "plan": "pro"}
    assert [(e["name"], e["id"], e["timestamp"]) for e in jane["events"]] == [
        ("signed_up", ULID, 1_700_000_000)
    ]
    assert client.get("/_sandbox/people/nobody").status_code == 404


def test_invalid_and_poison_items_are_207_with_exact_indexes(client: httpx.Client) -> None:
    bad = event("u2", "x")
    bad["identifiers"] = {"id": "u2", "email": "u2@example.com"}
    batch = [
        identify("u1"),
        event("u1", "poison", event_id=None),
        event("u1", "fine", event_id=None),
        bad,
        {**event("u3", "y", event_id=None), "timestamp": "yesterday"},
    ]
    r = client.post("/api/v2/batch", json={"batch": batch})
    assert r.status_code == 207
    errors = r.json()["errors"]
    assert [(e["batch_index"], e["field"]) for e in errors] == [
        (1, "name"),
        (3, "identifiers"),
        (4, "timestamp"),
    ]
    assert all(e["reason"] and e["message"] for e in errors)
    people = {p["id"]: p["events"] for p in client.get("/_sandbox/people").json()}
    assert people == {"u1": 1}  # the valid items were applied, the others not


def test_merge_with_unknown_primary_does_nothing(client: httpx.Client) -> None:
    """Customer.io: "If the primary profile doesn't exist, your request won't do anything"."""
    merge = {"type": "person", "action": "merge", "primary": {"id": "a"}, "secondary": {"id": "b"}}
    r = client.post("/api/v2/batch", json={"batch": [identify("b"), merge]})
    assert r.status_code == 200
    assert [p["id"] for p in client.get("/_sandbox/people").json()] == ["b"]
    stats = client.get("/_sandbox/stats").json()
    assert (stats["merges"], stats["merges_ignored"]) == (0, 1)


def test_identifier_change_is_an_attribute_update_failure(client: httpx.Client) -> None:
    """200, as Customer.io answers; the failure is in the activity log (``/_sandbox/failures``)."""
    first = {**identify("u1"), "attributes": {"email": "a@x.io"}}
    change = {**identify("u1"), "attributes": {"email": "b@x.io", "plan": "pro"}}
    assert client.post("/api/v2/batch", json={"batch": [first, change]}).status_code == 200
    person = client.get("/_sandbox/people/u1").json()
    assert (person["email"], person["attributes"]["plan"]) == ("a@x.io", "pro")
    failures = client.get("/_sandbox/failures").json()
    assert [f["reason"] for f in failures] == ["attribute_update_failure"]


@pytest.mark.parametrize(
    ("content", "field"),
    [
        pytest.param(b"{not json", "", id="not-json"),
        pytest.param(b"", "", id="empty"),
        pytest.param(b"[]", "batch", id="array"),
        pytest.param(b'{"batch": {}}', "batch", id="batch-not-array"),
    ],
)
def test_malformed_batch_is_400(client: httpx.Client, content: bytes, field: str) -> None:
    r = client.post("/api/v2/batch", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400
    [error] = r.json()["errors"]
    assert error["reason"] == "invalid"
    assert error["field"] == field


def test_huge_body_is_413_and_big_item_is_207(client: httpx.Client) -> None:
    big = identify("u1", blob="x" * 40_000)
    huge = {"batch": [identify(f"u{i}", blob="x" * 20_000) for i in range(26)]}
    r = client.post("/api/v2/batch", content=orjson.dumps(huge))
    assert r.status_code == 413
    r = client.post("/api/v2/batch", json={"batch": [identify("u0"), big]})
    assert r.status_code == 207
    assert r.json()["errors"][0]["batch_index"] == 1
    assert r.json()["errors"][0]["reason"] == "too_large"
    assert client.post("/api/v2/entity", json=big).status_code == 413
    assert [p["id"] for p in client.get("/_sandbox/people").json()] == ["u0"]


def test_entity_endpoint(client: httpx.Client) -> None:
    assert client.post("/api/v2/entity", json=identify("u1", plan="pro")).status_code == 200
    r = client.post("/api/v2/entity", json={**event("u1", "x"), "name": 5})
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "name"


def test_rate_limit_answers_429_with_retry_after(client: httpx.Client) -> None:
    client.post("/_sandbox/faults", json={"rate_limit_rps": 1, "retry_after_secs": 7})
    statuses = [client.get("/api/v1/accounts/region") for _ in range(10)]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited, [r.status_code for r in statuses]
    assert limited[0].headers["retry-after"] == "7"
    assert any(r.status_code == 200 for r in statuses)


def test_fail_rate_one_is_503_and_applies_nothing(client: httpx.Client) -> None:
    client.post("/_sandbox/faults", json={"fail_rate": 1.0})
    r = client.post("/api/v2/batch", json={"batch": [identify("u1"), event("u1", "x")]})
    assert r.status_code == 503
    assert client.put("/api/v1/customers/u2", json={"a": "b"}).status_code == 503
    assert client.get("/_sandbox/people").json() == []
    stats = client.get("/_sandbox/stats").json()
    assert stats["requests_by_status"] == {"503": 2}
    assert stats["events_stored"] == 0


def test_faults_change_at_run_time(client: httpx.Client) -> None:
    current = client.post("/_sandbox/faults", json={"fail_rate": 1.0, "fail_status": 500}).json()
    assert current["fail_rate"] == 1.0
    assert current["fail_status"] == 500
    assert client.get("/api/v1/accounts/region").status_code == 500
    client.post("/_sandbox/faults", json={"fail_rate": 0, "reject_credentials": True})
    assert client.get("/api/v1/accounts/region").status_code == 401
    client.post("/_sandbox/faults", json={"reject_credentials": False, "latency_ms": 5})
    assert client.get("/api/v1/accounts/region").status_code == 200
    assert client.post("/_sandbox/faults", json={"bogus": 1}).status_code == 400
    assert client.post("/_sandbox/faults", json={"fail_rate": 2}).status_code == 400
    assert client.get("/_sandbox/faults").json()["latency_ms"] == 5


def anonymous_event(anonymous_id: str, name: str) -> dict[str, Any]:
    item = event("x", name, event_id=None)
    item["identifiers"] = {"anonymous_id": anonymous_id}
    return item


def test_anonymous_id_items_are_kept_then_merged_like_v1_anonymous_events(
    client: httpx.Client,
) -> None:
    batch = [anonymous_event("anon-1", "viewed"), anonymous_event("anon-1", "clicked")]
    assert client.post("/api/v2/batch", json={"batch": batch}).status_code == 200
    pending = client.get("/_sandbox/anonymous_events").json()
    assert [e["name"] for e in pending["anon-1"]] == ["viewed", "clicked"]
    assert client.get("/_sandbox/people").json() == []  # no profile for a visitor
    merge = identify("u1", anonymous_id="anon-1")
    assert client.post("/api/v2/batch", json={"batch": [merge]}).status_code == 200
    person = client.get("/_sandbox/people/u1").json()
    assert [e["name"] for e in person["events"]] == ["viewed", "clicked"]
    assert client.get("/_sandbox/anonymous_events").json() == {}


def test_reject_anonymous_batch_refuses_exactly_the_anonymous_id_items(
    client: httpx.Client,
) -> None:
    faults = client.post("/_sandbox/faults", json={"reject_anonymous_batch": True}).json()
    assert faults["reject_anonymous_batch"] is True
    batch = [identify("u1"), anonymous_event("anon-1", "viewed"), event("u1", "fine", None)]
    r = client.post("/api/v2/batch", json={"batch": batch})
    assert r.status_code == 207
    (error,) = r.json()["errors"]
    assert (error["batch_index"], error["field"]) == (1, "identifiers")
    assert client.get("/_sandbox/anonymous_events").json() == {}
    # v1 still takes them, as Customer.io does
    v1 = {"anonymous_id": "anon-1", "name": "viewed"}
    assert client.post("/api/v1/events", json=v1).status_code == 200
    assert list(client.get("/_sandbox/anonymous_events").json()) == ["anon-1"]


def test_request_log_pages_by_seq_and_never_shows_the_key(client: httpx.Client) -> None:
    for i in range(5):
        client.post("/api/v2/batch", json={"batch": [identify(f"u{i}")]})
    first = client.get("/_sandbox/requests", params={"since": 0, "limit": 2}).json()
    assert [r["seq"] for r in first] == [1, 2]
    rest = client.get("/_sandbox/requests", params={"since": 2}).json()
    assert [r["seq"] for r in rest] == [3, 4, 5]
    assert rest[0]["body"] == {"batch": [identify("u2")]}
    assert (rest[0]["method"], rest[0]["path"], rest[0]["status"]) == ("POST", "/api/v2/batch", 200)
    assert rest[0]["response"] == {}
    assert client.get("/_sandbox/requests", params={"since": 5}).json() == []
    everything = b"".join(
        client.get(p).content for p in ("/_sandbox/requests", "/_sandbox/stats", "/_sandbox/faults")
    )
    assert KEY.encode() not in everything
    assert client.get("/_sandbox/stats").json()["requests_total"] == 5


def test_v1_calls(client: httpx.Client) -> None:
    anon = {"name": "viewed", "anonymous_id": "dev-1", "id": ULID, "type": "page"}
    assert client.post("/api/v1/events", json=anon).status_code == 200
    assert client.post("/api/v1/events", json=anon).status_code == 200  # duplicate id
    no_anon = client.post("/api/v1/events", json={"name": "invite-me"})
    assert no_anon.status_code == 400
    assert "anonymous_id" in no_anon.json()["meta"]["errors"][0]
    assert set(client.get("/_sandbox/anonymous_events").json()) == {"dev-1"}

    r = client.put("/api/v1/customers/a%2Fb", json={"email": "ab@x.io", "anonymous_id": "dev-1"})
    assert r.status_code == 200
    assert client.post("/api/v1/customers/a%2Fb/events", json={"name": "bought"}).status_code == 200
    ab = client.get("/_sandbox/people/ab@x.io").json()
    assert ab["id"] == "a/b"
    assert [e["name"] for e in ab["events"]] == ["viewed", "bought"]
    assert client.get("/_sandbox/stats").json()["duplicate_events_ignored"] == 1

    assert client.put("/api/v1/customers/u2", json={"score": 1.5}).status_code == 400
    assert client.put("/api/v1/customers/u2", json={"plan": "pro"}).status_code == 200
    merge = {"primary": {"email": "ab@x.io"}, "secondary": {"id": "u2"}}
    assert client.post("/api/v1/merge_customers", json=merge).status_code == 200
    assert client.get("/_sandbox/people/ab@x.io").json()["attributes"]["plan"] == "pro"
    missing = client.post("/api/v1/merge_customers", json={**merge, "primary": {"id": "zz"}})
    assert missing.status_code == 200  # a merge into nobody does nothing
    assert client.get("/_sandbox/people/zz").status_code == 404

    assert client.post("/api/v1/customers/a%2Fb/suppress").status_code == 200
    assert client.get("/_sandbox/people").json() == []
    assert client.post("/api/v1/customers/a%2Fb/unsuppress").status_code == 200
    assert client.put("/api/v1/customers/u3", json={}).status_code == 200
    assert client.delete("/api/v1/customers/u3").status_code == 200
    assert client.delete("/api/v1/customers/never-existed").status_code == 200
    assert client.get("/_sandbox/people").json() == []


def test_objects_are_inspectable(client: httpx.Client) -> None:
    item = {
        "type": "object",
        "action": "identify",
        "identifiers": {"object_type_id": "1", "object_id": "acme"},
        "attributes": {"name": "Acme"},
        "cio_relationships": [{"identifiers": {"id": "u1"}}],
    }
    assert client.post("/api/v2/batch", json={"batch": [item]}).status_code == 200
    [acme] = client.get("/_sandbox/objects").json()
    assert (acme["object_id"], acme["attributes"]) == ("acme", {"name": "Acme"})
    assert [r["id"] for r in acme["relationships"]] == ["u1"]


def test_reset_clears_workspace_and_log(client: httpx.Client) -> None:
    client.post("/api/v2/batch", json={"batch": [identify("u1")]})
    client.post("/_sandbox/reset")
    assert client.get("/_sandbox/people").json() == []
    assert client.get("/_sandbox/requests").json() == []
    assert client.get("/_sandbox/stats").json()["requests_total"] == 0
