"""The webhook's answers: 200 only when durable, clear 4xx for bad input, never a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Sandbox, Serve

pytestmark = pytest.mark.e2e

SECRET = "hook-secret-9b2e71"


@pytest.fixture
def guarded(tmp_path: Path, sandbox: Sandbox) -> Iterator[Serve]:
    sv = Serve(
        tmp_path,
        tmp_path / "data",
        sandbox,
        POSTHOG_CUSTOMERIO_WEBHOOK_SECRET=SECRET,
        POSTHOG_CUSTOMERIO_MAX_BODY_BYTES="4096",
    )
    yield sv
    sv.close()


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        pytest.param(b"{not json", 400, "JSON", id="malformed-json"),
        pytest.param(b"\xff\xfe\x00", 400, "UTF-8", id="not-utf8"),
        pytest.param(b"[]", 400, "", id="empty-array"),
        pytest.param(b'{"event": {"event": 5, "distinct_id": "u"}}', 400, "event", id="wrong-type"),
        pytest.param(b'{"event": {"event": "x"}}', 400, "distinct_id", id="no-distinct-id"),
        pytest.param(b"[" * 5000 + b"]" * 5000, 400, "deep", id="too-deep"),
    ],
)
def test_bad_input_is_400_naming_the_problem(
    serve: Serve, body: bytes, status: int, names: str
) -> None:
    r = serve.http.post("/webhook", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()
    assert "error" in err
    assert names.lower() in (err["error"] + err.get("field", "")).lower()
    assert serve.status()["queue"]["depth"] == 0


def test_secret_required_and_size_limited(guarded: Serve, posthog_samples: Path) -> None:
    body = json.loads((posthog_samples / "webhook-custom-event.json").read_text())
    assert guarded.post(body).status_code == 401
    wrong = guarded.post(body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = guarded.post(body, headers={"Authorization": f"Bearer {SECRET}"})
    assert ok.status_code == 200, ok.text
    big = {"event": {**body["event"], "properties": {"blob": "x" * 8000}}}
    r = guarded.post(big, headers={"Authorization": f"Bearer {SECRET}"})
    assert r.status_code == 413
    assert SECRET not in guarded.http.get("/metrics").text


def test_streamed_bodies_are_read_whole_and_limited(guarded: Serve, posthog_samples: Path) -> None:
    """Chunked transfer: no Content-Length to check up front, the limit holds while reading."""
    body = (posthog_samples / "webhook-custom-event.json").read_bytes()
    auth = {"Authorization": f"Bearer {SECRET}", "content-type": "application/json"}

    def chunks(data: bytes, size: int) -> Iterator[bytes]:
        for i in range(0, len(data), size):
            yield data[i : i + size]

    ok = guarded.http.post("/webhook", content=chunks(body, 7), headers=auth)
    assert ok.status_code == 200, ok.text
    assert ok.json()["accepted"] == 1
    big = guarded.http.post("/webhook", content=chunks(b"x" * 9000, 1000), headers=auth)
    assert big.status_code == 413
    assert "4096" in big.json()["error"]


def test_webhook_only_takes_post(serve: Serve) -> None:
    r = serve.http.get("/webhook")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert "POST" in r.json()["error"]


def test_health_ready_and_metrics(serve: Serve, posthog_samples: Path) -> None:
    assert serve.http.get("/healthz").json()["status"] == "ok"
    body = json.loads((posthog_samples / "webhook-custom-event.json").read_text())
    assert serve.post(body).status_code == 200
    serve.wait_drained()
    assert serve.http.get("/readyz").status_code == 200
    text = serve.http.get("/metrics").text
    for name in (
        "posthog_customerio_events_received_total",
        "posthog_customerio_events_dropped_total",
        "posthog_customerio_operations_delivered_total",
        "posthog_customerio_operations_dead_lettered_total",
        "posthog_customerio_requests_total",
        "posthog_customerio_request_duration_seconds",
        "posthog_customerio_queue_depth_operations",
        "posthog_customerio_queue_oldest_age_seconds",
        "posthog_customerio_delivery_latency_seconds",
    ):
        assert name in text, name
    assert 'posthog_customerio_events_received_total{source="webhook"} 1.0' in text


def test_readyz_says_credentials_rejected(tmp_path: Path, sandbox: Sandbox) -> None:
    sandbox.faults(reject_credentials=True)
    sv = Serve(tmp_path, tmp_path / "data", sandbox)
    try:
        body = {"event": {"event": "e", "distinct_id": "u1", "properties": {}}}
        assert sv.post(body).status_code == 200

        def rejected() -> bool:
            r = sv.http.get("/readyz")
            return r.status_code == 503 and "credentials rejected" in r.text

        from tests.e2e.harness import wait_until

        wait_until(rejected, timeout=30)
        assert sv.status()["queue"]["depth"] >= 1  # kept, not dropped
        sandbox.faults(reject_credentials=False)
    finally:
        sv.close()


def test_limits_are_counted_never_silent(serve: Serve, sandbox: Sandbox) -> None:
    body = {
        "event": {
            "uuid": "01924815-6d55-7160-8999-50d836f67fff",
            "event": "profile_updated",
            "distinct_id": "user_limits",
            "timestamp": "2024-10-01T12:36:56.789Z",
            "properties": {
                "$is_identified": True,
                "$set": {"bio": "é" * 700, "x" * 200: 1},
            },
        }
    }
    r = serve.post(body)
    assert r.status_code == 200, r.text
    serve.wait_drained()
    metrics = serve.http.get("/metrics").text
    assert 'posthog_customerio_mapping_truncations_total{kind="attribute_value"} 1.0' in metrics
    assert 'posthog_customerio_mapping_truncations_total{kind="attribute_name"} 1.0' in metrics
    person = sandbox.person("user_limits")
    assert person is not None
    bio = person["attributes"]["bio"]
    assert len(bio.encode()) <= 1000 and set(bio) == {"é"}


def test_drops_are_counted_by_reason(tmp_path: Path, sandbox: Sandbox) -> None:
    sv = Serve(
        tmp_path, tmp_path / "data", sandbox, POSTHOG_CUSTOMERIO_EVENT_ALLOWLIST="order_completed"
    )
    try:
        r = sv.post({"event": {"event": "$pageview", "distinct_id": "u9", "properties": {}}})
        assert r.status_code == 200
        answer = {k: v for k, v in r.json().items() if k != "notes"}  # notes: derived uuid/time
        assert answer == {"accepted": 0, "dropped": 1, "reasons": {"not_in_allowlist": 1}}
        metrics = sv.http.get("/metrics").text
        assert 'posthog_customerio_events_dropped_total{reason="not_in_allowlist"} 1.0' in metrics
    finally:
        sv.close()


# -- one bad element or field never loses the rest (PostHog does not retry a 4xx) -----------

GOOD = {
    "event": "order_completed",
    "distinct_id": "user_ok",
    "properties": {"$is_identified": True},
}


def test_an_unusable_batch_element_is_dropped_the_rest_delivered(
    serve: Serve, sandbox: Sandbox
) -> None:
    body = {"batch": [{**GOOD, "uuid": "a1"}, 5, "x", {**GOOD, "uuid": "a2"}]}
    r = serve.post(body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["accepted"], answer["dropped"]) == (2, 2)
    assert answer["reasons"] == {"invalid_event": 2}
    assert answer["notes"]["batch[1]: must be an event object: event dropped"] == 1
    assert answer["notes"]["batch[2]: must be an event object: event dropped"] == 1
    empty_id = [{**GOOD, "uuid": f"b{i}"} for i in range(4)]
    empty_id.append({"event": {**GOOD, "uuid": "b4", "distinct_id": ""}})
    r = serve.post(empty_id)
    assert r.status_code == 200, r.text
    assert r.json()["reasons"] == {"invalid_event": 1}
    assert "[4].event.distinct_id: must not be empty: event dropped" in r.json()["notes"]
    metrics = serve.http.get("/metrics").text
    assert 'posthog_customerio_events_dropped_total{reason="invalid_event"} 3.0' in metrics
    assert serve.metric("events_received_total") == 9  # received = accepted + dropped
    serve.wait_drained()
    person = sandbox.person("user_ok")
    assert person is not None


def test_nothing_usable_is_still_a_400_naming_the_first_problem(serve: Serve) -> None:
    r = serve.post({"batch": [5, {"event": "", "distinct_id": "u"}]})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "batch[0]"
    assert serve.metric("events_received_total") == 0


@pytest.mark.parametrize(
    ("body", "note", "field"),
    [
        pytest.param(
            {**GOOD, "properties": [1, 2]},
            "properties must be an object, not an array: dropped",
            "properties",
            id="properties-array",
        ),
        pytest.param(
            {**GOOD, "properties": "x"},
            "properties is a string but not valid JSON: dropped",
            "properties",
            id="properties-string",
        ),
        pytest.param(
            {"event": GOOD, "person": "jane"},
            "person must be an object, not a string: ignored",
            "person",
            id="person-string",
        ),
        pytest.param(
            {"event": GOOD, "person": {"properties": [1]}},
            "person.properties must be an object, not an array: dropped",
            "person.properties",
            id="person-properties-array",
        ),
        pytest.param(
            {**GOOD, "timestamp": "soon", "properties": {"$set": 5, "$is_identified": True}},
            "properties.$set must be an object, not a number: dropped",
            "properties.$set",
            id="set-number",
        ),
    ],
)
def test_a_bad_field_is_dropped_noted_and_counted(
    serve: Serve, body: dict[str, object], note: str, field: str
) -> None:
    r = serve.post(body)
    assert r.status_code == 200, r.text
    assert r.json()["notes"][note] == 1
    metrics = serve.http.get("/metrics").text
    assert f'posthog_customerio_event_field_notes_total{{field="{field}"}} 1.0' in metrics
    assert 'posthog_customerio_event_field_notes_total{field="uuid"} 1.0' in metrics


def test_unusable_properties_never_identify_a_person(serve: Serve, sandbox: Sandbox) -> None:
    r = serve.post({"event": "clicked", "distinct_id": "server_user", "properties": [1]})
    assert r.status_code == 200, r.text
    assert "properties unusable" not in json.dumps(r.json())  # a mapping note: explain says it
    serve.wait_drained()
    assert sandbox.person("server_user") is None  # sent as an anonymous event, no profile


def test_a_lone_surrogate_escape_is_replaced_not_refused(serve: Serve, sandbox: Sandbox) -> None:
    body = (
        b'{"event": "order_completed", "distinct_id": "user_s", "uuid": "s1",'
        b' "properties": {"$is_identified": true, "title": "cut \\ud83d",'
        b' "$set": {"n": "\\udc00"}}}'
    )
    r = serve.http.post("/webhook", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["notes"]["text: lone UTF-16 surrogate escape replaced by U+FFFD"] == 1
    serve.wait_drained()
    person = sandbox.person("user_s")
    assert person is not None and person["attributes"]["n"] == "\ufffd"
