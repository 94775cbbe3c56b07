"""The reverse path's pure parts: signature, parsing, names, metrics filter, the event."""

from __future__ import annotations

import orjson
import pytest

from posthog_customerio.errors import InputError
from posthog_customerio.mapping.reporting import (
    ReportingOptions,
    capture_event,
    event_name,
    metric_allowed,
    trigger_uuid,
    uuid_from_ulid,
)
from posthog_customerio.mapping.ulid import ulid_from_uuid
from posthog_customerio.sources.reporting import parse_reporting_body, sign, signature_problem

EVENT_ID = "01E4C4CT6YDC7Y5M7FE1GWWPQJ"


@pytest.mark.parametrize(
    ("object_type", "metric", "name"),
    [
        ("email", "delivered", "Email Delivered"),
        ("email", "opened", "Email Opened"),
        ("email", "clicked", "Email Link Clicked"),
        ("email", "bounced", "Email Bounced"),
        ("email", "spammed", "Email Marked as Spam"),
        ("email", "unsubscribed", "Unsubscribed"),
        ("customer", "unsubscribed", "Unsubscribed"),
        ("customer", "subscribed", "Customer Subscribed"),
        ("email", "sent", "Email Sent"),
        ("push", "opened", "Push Opened"),
        ("sms", "delivered", "SMS Delivered"),
        ("in_app", "clicked", "In-App Clicked"),
        ("whatsapp", "read", "WhatsApp Read"),
        ("carrier_pigeon", "landed", "Carrier Pigeon Landed"),
        ("webhook", "undeliverable", "Webhook Undeliverable"),
    ],
)
def test_event_names(object_type: str, metric: str, name: str) -> None:
    assert event_name(object_type, metric, {}) == name


def test_event_names_can_be_renamed() -> None:
    assert event_name("email", "opened", {"email:opened": "Opened Email"}) == "Opened Email"


@pytest.mark.parametrize(
    ("key", "patterns", "allowed"),
    [
        ("email:opened", ("*", "!*:drafted", "!*:attempted"), True),
        ("email:drafted", ("*", "!*:drafted", "!*:attempted"), False),
        ("sms:attempted", ("*", "!*:drafted", "!*:attempted"), False),
        ("email:opened", ("email",), True),
        ("push:opened", ("email",), False),
        ("email:sent", ("email", "!email:sent"), False),
        ("email:opened", (), False),
    ],
)
def test_metric_filter(key: str, patterns: tuple[str, ...], allowed: bool) -> None:
    object_type, metric = key.split(":")
    assert metric_allowed(object_type, metric, patterns) is allowed


def test_signature() -> None:
    body = b'{"event_id":"x"}'
    good = sign("k2", "1700000000", body)
    assert signature_problem(("k1", "k2"), "1700000000", good, body) is None
    assert signature_problem(("k1", "k2"), "1700000000", good.upper(), body) is None
    assert signature_problem(("k1",), "1700000000", good, body) == "wrong_signature"
    assert signature_problem(("k2",), "1700000001", good, body) == "wrong_signature"
    assert signature_problem(("k2",), None, good, body) == "missing_signature"
    assert signature_problem(("k2",), "1700000000", None, body) == "missing_signature"
    assert signature_problem((), "1700000000", good, body) == "not_configured"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", ""),
        (b"[]", ""),
        (
            b'{"event_id": "nope", "object_type": "email", "metric": "sent", "timestamp": 1}',
            "event_id",
        ),
        (orjson.dumps({"event_id": EVENT_ID, "metric": "sent", "timestamp": 1}), "object_type"),
        (
            orjson.dumps({"event_id": EVENT_ID, "object_type": "email", "metric": "x"}),
            "timestamp",
        ),
        (
            orjson.dumps(
                {
                    "event_id": EVENT_ID,
                    "object_type": "email",
                    "metric": "x",
                    "timestamp": 1,
                    "data": {"identifiers": {}},
                }
            ),
            "data.identifiers",
        ),
    ],
)
def test_unparseable_bodies_name_the_field(body: bytes, field: str) -> None:
    with pytest.raises(InputError) as info:
        parse_reporting_body(body)
    assert info.value.field == field


def report(metric: str = "opened", object_type: str = "email", **data: object) -> bytes:
    return orjson.dumps(
        {
            "event_id": EVENT_ID,
            "object_type": object_type,
            "metric": metric,
            "timestamp": 1_700_000_000,
            "data": {
                "identifiers": {"id": "user-1", "email": "ada@example.com"},
                "delivery_id": "d1",
                "campaign_id": 7,
                "recipient": "ada@example.com",
                "content": "<html>",
                "headers": {"X": "y"},
                **data,
            },
        }
    )


def test_capture_event() -> None:
    event = capture_event(
        parse_reporting_body(report()),
        distinct_id="user-1",
        trigger_event_uuid=None,
        options=ReportingOptions(),
    )
    assert event == {
        "uuid": "01711846-68de-6b0f-e2d0-ef7061ce5af2",  # 0x0171184668de ms: March 2020
        "event": "Email Opened",
        "distinct_id": "user-1",
        "timestamp": "2023-11-14T22:13:20Z",
        "properties": {
            "$lib": "posthog-customerio",
            "customerio_delivery_id": "d1",
            "customerio_campaign_id": 7,
            "customerio_event_id": EVENT_ID,
            "customerio_object_type": "email",
            "customerio_metric": "opened",
        },
    }


def test_recipient_only_when_asked() -> None:
    event = capture_event(
        parse_reporting_body(report()),
        distinct_id="user-1",
        trigger_event_uuid=None,
        options=ReportingOptions(include_recipient=True),
    )
    assert event["properties"]["customerio_recipient"] == "ada@example.com"


@pytest.mark.parametrize(
    ("object_type", "metric", "person"),
    [
        ("customer", "unsubscribed", {"customerio_unsubscribed": True}),
        ("customer", "subscribed", {"customerio_unsubscribed": False}),
        ("email", "bounced", {"customerio_email_status": "bounced"}),
        ("email", "spammed", {"customerio_email_status": "spam_complaint"}),
        ("email", "opened", None),
    ],
)
def test_person_properties(object_type: str, metric: str, person: object) -> None:
    event = capture_event(
        parse_reporting_body(report(metric, object_type)),
        distinct_id="user-1",
        trigger_event_uuid=None,
        options=ReportingOptions(),
    )
    assert event["properties"].get("$set") == person


def test_uuid_round_trips_a_ulid() -> None:
    v7 = "01932b8e-7c3a-7d4e-9f00-0123456789ab"
    assert uuid_from_ulid(ulid_from_uuid(v7, 0)) == v7
    assert trigger_uuid(ulid_from_uuid(v7, 0)) == v7
    # a uuid that is not v7 was hashed into its ULID: no way back
    assert trigger_uuid(ulid_from_uuid("5f0c3c1e-1111-4111-8111-111111111111", 5)) is None
    assert trigger_uuid("not a ulid") is None
