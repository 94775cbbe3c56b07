"""End to end: Customer.io reporting webhooks → serve → queue → the fake PostHog's /batch/."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from posthog_customerio.mapping.reporting import uuid_from_ulid
from posthog_customerio.mapping.ulid import ulid_from_uuid
from tests.e2e.harness import Sandbox, Serve, run_cli, wait_until
from tests.fake_posthog import FakePostHog, running
from tests.reporting_sender import new_ulid, reporting_body, signed_headers

pytestmark = pytest.mark.e2e

KEY = "whsec_reporting_key"
TRIGGER_UUID = "01932b8e-7c3a-7d4e-9f00-0123456789ab"  # a UUIDv7, as PostHog's SDKs make


def serve_for(tmp_path: Path, sandbox: Sandbox, fake: FakePostHog, **env: str) -> Serve:
    return Serve(
        tmp_path,
        tmp_path / "data",
        sandbox,
        CUSTOMERIO_REPORTING_SIGNING_KEYS=f"old_key, {KEY}",
        POSTHOG_CUSTOMERIO_POSTHOG_CAPTURE_URL=fake.url,
        POSTHOG_CUSTOMERIO_POSTHOG_PROJECT_API_KEY=fake.project_api_key,
        **env,
    )


def identify_and_event(serve: Serve, email: str) -> None:
    """A person PostHog knows as ``user-1`` (email ``email``), and the event that triggers
    the campaign."""
    person = {"properties": {"email": email}}
    r = serve.post(
        {
            "event": {
                "uuid": "01932b8e-0000-7000-8000-000000000001",
                "event": "$identify",
                "distinct_id": "user-1",
                "timestamp": "2026-11-01T10:00:00Z",
                "properties": {"$set": {"email": email}},
            },
            "person": person,
        }
    )
    assert r.status_code == 200, r.text
    r = serve.post(
        {
            "event": {
                "uuid": TRIGGER_UUID,
                "event": "signed_up",
                "distinct_id": "user-1",
                "timestamp": "2026-11-01T10:00:01Z",
                "properties": {},
            },
            "person": person,
        }
    )
    assert r.status_code == 200, r.text
    serve.wait_drained()


def send(serve: Serve, body: bytes, *, wrong: bool = False) -> Any:
    return serve.http.post(
        "/customerio/reporting", content=body, headers=signed_headers(KEY, body, wrong=wrong)
    )


@pytest.mark.parametrize("by_email", [False, True])
def test_email_activity_reaches_posthog_on_the_person_once(
    tmp_path: Path, sandbox: Sandbox, by_email: bool
) -> None:
    with running(FakePostHog([])) as fake:
        env = {"POSTHOG_CUSTOMERIO_IDENTIFY_BY_EMAIL": "true"} if by_email else {}
        serve = serve_for(tmp_path, sandbox, fake, **env)
        try:
            identify_and_event(serve, "ada@example.com")
            ids: dict[str, Any] = (
                {"email": "ada@example.com", "cio_id": "a1b2"}
                if by_email
                else {"id": "user-1", "email": "ada@example.com"}
            )
            trigger = ulid_from_uuid(TRIGGER_UUID, 0)
            sent: dict[str, str] = {}
            for metric in ("delivered", "opened", "clicked"):
                event_id = new_ulid()
                extra = {"href": "https://example.com/go"} if metric == "clicked" else {}
                body = reporting_body(
                    metric, ids, event_id=event_id, trigger_event_id=trigger, **extra
                )
                for _ in range(3):  # Customer.io retrying the same webhook
                    r = send(serve, body)
                    assert r.status_code == 200, r.text
                sent[metric] = event_id
            wait_until(lambda: len(fake.captured) == 3)
            serve.wait_drained()
            time.sleep(0.3)
            assert len(fake.capture_posts) == 3  # once each, despite the retries
            by_name = {e["event"]: e for e in fake.captured.values()}
            assert set(by_name) == {"Email Delivered", "Email Opened", "Email Link Clicked"}
            for metric, name in (
                ("delivered", "Email Delivered"),
                ("opened", "Email Opened"),
                ("clicked", "Email Link Clicked"),
            ):
                event = by_name[name]
                assert event["distinct_id"] == "user-1"
                assert event["uuid"] == uuid_from_ulid(sent[metric])
                props = event["properties"]
                assert props["$lib"] == "posthog-customerio"
                assert props["customerio_event_id"] == sent[metric]
                assert props["customerio_metric"] == metric
                assert props["customerio_campaign_id"] == 7
                assert props["customerio_trigger_event_uuid"] == TRIGGER_UUID
                assert "customerio_recipient" not in props
                assert "customerio_identifiers" not in props
            assert by_name["Email Link Clicked"]["properties"]["customerio_href"] == (
                "https://example.com/go"
            )
            assert serve.metric("reporting_received_total") == 9
        finally:
            serve.close()


def test_wrong_signature_is_refused_and_loud(tmp_path: Path, sandbox: Sandbox) -> None:
    with running(FakePostHog([])) as fake:
        serve = serve_for(tmp_path, sandbox, fake)
        try:
            body = reporting_body("opened", {"id": "user-1"})
            r = send(serve, body, wrong=True)
            assert r.status_code == 401
            r = serve.http.post("/customerio/reporting", content=body)
            assert r.status_code == 401
            assert serve.metric("reporting_rejected_total") == 2
            ready = serve.http.get("/readyz").json()
            assert "holding back" in ready["reporting"]["problem"]
            assert serve.status()["reporting"]["held_back"] is True
            assert "Customer.io is holding back your reporting webhooks" in serve.proc.output()  # type: ignore[union-attr]
            time.sleep(1.0)
            assert fake.capture_requests == 0
            assert send(serve, body).status_code == 200  # fixed: the state clears
            assert serve.status()["reporting"]["held_back"] is False
        finally:
            serve.close()


def test_unparseable_signed_body_is_dead_lettered_and_answered_200(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    with running(FakePostHog([])) as fake:
        serve = serve_for(tmp_path, sandbox, fake)
        try:
            body = b'{"event_id": "not a ulid", "metric": '
            r = send(serve, body)
            assert r.status_code == 200, r.text
            wait_until(lambda: serve.status()["queue"]["dead_letters"] >= 1, timeout=30)
            letters = serve.http.get("/admin/dead-letters").json()
            rows = letters["dead_letters"] if isinstance(letters, dict) else letters
            kept = [row for row in rows if row["reason"] == "unreadable_reporting"]
            assert len(kept) == 1, rows
            assert body.decode() in str(kept[0]), kept  # the raw bytes are kept
            assert fake.capture_requests == 0
        finally:
            serve.close()


def test_a_signed_body_over_the_limit_is_kept_never_refused(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A 413 would make Customer.io hold back every later webhook: a signed body over
    ``max_body_bytes`` is verified and kept as a dead letter; only the 16 MiB cap refuses."""
    with running(FakePostHog([])) as fake:
        serve = serve_for(tmp_path, sandbox, fake, POSTHOG_CUSTOMERIO_MAX_BODY_BYTES="4096")
        try:
            email = {"email": "big@example.com", "subject": "x" * 6000}
            body = reporting_body("opened", {"id": "user-1"}, **email)
            assert len(body) > 4096
            r = send(serve, body)
            assert r.status_code == 200, r.text
            assert r.json()["reason"] == "reporting_too_large"
            assert not serve.status()["reporting"]["held_back"]
            assert send(serve, body, wrong=True).status_code == 401  # read, then refused
            unsigned = serve.http.post("/customerio/reporting", content=body)
            assert unsigned.status_code == 401
            wait_until(lambda: serve.status()["queue"]["dead_letters"] >= 1, timeout=30)
            letters = serve.http.get("/admin/dead-letters").json()
            rows = letters["dead_letters"] if isinstance(letters, dict) else letters
            kept = [row for row in rows if row["reason"] == "reporting_too_large"]
            assert len(kept) == 1, rows
            assert "over max_body_bytes (4096)" in str(kept[0])
            assert "x" * 6000 in str(kept[0])  # the body is kept whole
            huge = b"x" * (16 * 1024 * 1024 + 1)
            assert send(serve, huge).status_code == 413  # the hard cap against abuse
            assert fake.capture_requests == 0
        finally:
            serve.close()


def test_posthog_down_for_a_while_loses_nothing(tmp_path: Path, sandbox: Sandbox) -> None:
    with running(FakePostHog([])) as fake:
        fake.capture_down = True
        serve = serve_for(tmp_path, sandbox, fake)
        try:
            ids = [new_ulid() for _ in range(20)]
            for event_id in ids:
                body = reporting_body("delivered", {"id": "user-1"}, event_id=event_id)
                assert send(serve, body).status_code == 200
            wait_until(lambda: fake.capture_requests >= 3)
            fake.capture_down = False
            wait_until(lambda: len(fake.captured) == 20)
            assert {uuid_from_ulid(i) for i in ids} == set(fake.captured)
        finally:
            serve.close()


def test_loop_guard_drops_own_events(tmp_path: Path, sandbox: Sandbox) -> None:
    with running(FakePostHog([])) as fake:
        serve = serve_for(tmp_path, sandbox, fake)
        try:
            r = serve.post(
                {
                    "uuid": "01932b8e-0000-7000-8000-0000000000ff",
                    "event": "Email Opened",
                    "distinct_id": "user-1",
                    "timestamp": "2026-11-01T10:00:00Z",
                    "properties": {"$lib": "posthog-customerio"},
                }
            )
            assert r.status_code == 200
            assert r.json()["reasons"] == {"own_event": 1}
        finally:
            serve.close()


def test_explain_prints_the_posthog_event_of_a_reporting_payload() -> None:
    sample = Path(__file__).resolve().parents[2] / "examples/customerio/reporting-email-opened.json"
    r = run_cli("explain", "--json", str(sample))
    assert r.returncode == 0, r.stderr
    [result] = json.loads(r.stdout)
    event = result["posthog_event"]
    assert event["event"] == "Email Opened" and event["distinct_id"] == "user-1"
    assert event["uuid"] == uuid_from_ulid("01E4C4CT6YDC7Y5M7FE1GWWPQJ")
    assert event["properties"]["customerio_trigger_event_uuid"] == (
        "01932b8e-7c3a-7d4e-9f00-1223456799ab"
    )
    assert "customerio_recipient" not in event["properties"]


@pytest.mark.parametrize("by_email", [False, True])
def test_the_sandbox_sends_signed_webhooks_for_its_people(
    tmp_path: Path, sandbox: Sandbox, by_email: bool
) -> None:
    """Customer.io's side played by the sandbox: about the person the connector created there,
    with the id the connector gave the triggering event, retried, and once wrongly signed."""
    with running(FakePostHog([])) as fake:
        env = {"POSTHOG_CUSTOMERIO_IDENTIFY_BY_EMAIL": "true"} if by_email else {}
        serve = serve_for(tmp_path, sandbox, fake, **env)
        try:
            identify_and_event(serve, "ada@example.com")
            person = sandbox.person("ada@example.com")
            assert person is not None
            spec = {
                "person": "ada@example.com",
                "url": f"{serve.url}/customerio/reporting",
                "signing_key": KEY,
            }
            refused = sandbox.http.post(
                "/_sandbox/reporting", json={**spec, "wrong_signature": True}
            )
            assert [s["statuses"] for s in refused.json()["sent"]] == [[401]] * 3
            r = sandbox.http.post("/_sandbox/reporting", json={**spec, "repeat": 2})
            assert [s["statuses"] for s in r.json()["sent"]] == [[200, 200]] * 3
            wait_until(lambda: len(fake.captured) == 3)
            serve.wait_drained()
            assert len(fake.capture_posts) == 3
            for event in fake.captured.values():
                assert event["distinct_id"] == "user-1"
                assert event["properties"]["customerio_trigger_event_uuid"] == TRIGGER_UUID
            assert {e["event"] for e in fake.captured.values()} == {
                "Email Delivered",
                "Email Opened",
                "Email Link Clicked",
            }
        finally:
            serve.close()
