"""A Customer.io reporting event as one PostHog event (the reverse path, DESIGN.md §7.1).

Pure: the distinct_id and the triggering event's uuid are looked up by the caller (the queue's
identity state and seen uuids) and passed in. The PostHog event carries a uuid made of the
``event_id`` ULID's 128 bits, so PostHog keeps one event however often it is sent.

Event names follow Segment's email spec where it has one (``Email Delivered``, ``Email
Opened``, ``Email Link Clicked``, ``Email Bounced``, ``Email Marked as Spam``,
``Unsubscribed``), else ``<Channel> <Metric>`` in title case; ``reporting_event_names`` renames.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import uuid as _uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from posthog_customerio.mapping.identity import IdentityState
from posthog_customerio.mapping.mapper import OWN_LIB, MappingOutcome
from posthog_customerio.mapping.operation import Endpoint, Operation
from posthog_customerio.mapping.ulid import CROCKFORD, is_ulid
from posthog_customerio.sources.event import PostHogEvent
from posthog_customerio.sources.reporting import ReportingEvent, identifier

LIB = OWN_LIB  # $lib of every event this connector captures (the loop guard)
PARTITION_PREFIX = "posthog:"  # reverse-path partitions, apart from Customer.io's
# The PostHogEvent.event that carries a ready capture body through Queue.ingest.
CAPTURE_CARRIER = "$customerio_reporting"
UNREADABLE_CARRIER = "$customerio_reporting_unreadable"

SEGMENT_NAMES = {
    ("email", "delivered"): "Email Delivered",
    ("email", "opened"): "Email Opened",
    ("email", "clicked"): "Email Link Clicked",
    ("email", "bounced"): "Email Bounced",
    ("email", "spammed"): "Email Marked as Spam",
    ("email", "unsubscribed"): "Unsubscribed",
    ("customer", "unsubscribed"): "Unsubscribed",
}
CHANNELS = {
    "email": "Email",
    "push": "Push",
    "sms": "SMS",
    "in_app": "In-App",
    "slack": "Slack",
    "webhook": "Webhook",
    "whatsapp": "WhatsApp",
    "customer": "Customer",
}
OMITTED_DATA = frozenset({"identifiers", "recipient", "content", "headers"})
DEFAULT_METRICS = ("*", "!*:drafted", "!*:attempted")
_DECODE = {c: i for i, c in enumerate(CROCKFORD)}


@dataclass(frozen=True, slots=True)
class ReportingOptions:
    """The reporting settings mapping reads (``Settings.reporting_*``)."""

    event_names: Mapping[str, str] = field(default_factory=dict)
    metrics: Sequence[str] = DEFAULT_METRICS
    include_recipient: bool = False


def uuid_from_ulid(ulid: str) -> str:
    """The ULID's 128 bits written as a UUID (``str(uuid.UUID(int=...))``)."""
    value = 0
    for char in ulid.upper():
        value = (value << 5) | _DECODE[char]
    return str(_uuid.UUID(int=value))


def trigger_uuid(trigger_event_id: object) -> str | None:
    """The PostHog uuid this connector's ULID ``trigger_event_id`` was derived from, when it
    can be: a UUIDv7 is re-encoded bit for bit (``mapping/ulid.py``), any other uuid was hashed.
    The caller still checks that the connector saw that uuid (1 in 64 random ULIDs decode to
    something shaped like a UUIDv7)."""
    if not is_ulid(trigger_event_id):
        return None
    assert isinstance(trigger_event_id, str)
    parsed = _uuid.UUID(uuid_from_ulid(trigger_event_id))
    if parsed.version == 7 and parsed.variant == _uuid.RFC_4122:
        return str(parsed)
    return None


def metric_allowed(object_type: str, metric: str, patterns: Sequence[str]) -> bool:
    """Whether ``object_type:metric`` matches an allow pattern and no ``!`` deny pattern."""
    key = f"{object_type}:{metric}"
    allowed = False
    for pattern in patterns:
        if pattern.startswith("!"):
            if _matches(key, pattern[1:]):
                return False
        elif _matches(key, pattern):
            allowed = True
    return allowed


def _matches(key: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(key, pattern if ":" in pattern or pattern == "*" else pattern + ":*")


def event_name(object_type: str, metric: str, renames: Mapping[str, str]) -> str:
    """``reporting_event_names`` first, then Segment's email spec, then ``<Channel> <Metric>``."""
    renamed = renames.get(f"{object_type}:{metric}")
    if renamed:
        return renamed
    standard = SEGMENT_NAMES.get((object_type, metric))
    if standard is not None:
        return standard
    channel = CHANNELS.get(object_type) or _title(object_type) or "Message"
    return f"{channel} {_title(metric) or 'Activity'}"


def _title(text: str) -> str:
    return " ".join(part.capitalize() for part in text.replace("-", "_").split("_") if part)


def candidate_ids(report: ReportingEvent) -> tuple[str | None, str | None]:
    """``(id, email)`` the event names its person by (``customer_id``/``email_address`` in
    older ``customer`` payloads)."""
    ids = report.identifiers
    person_id = identifier(ids.get("id")) or identifier(report.data.get("customer_id"))
    email = identifier(ids.get("email")) or identifier(report.data.get("email_address"))
    return person_id, email


def fallback_distinct_id(report: ReportingEvent) -> str:
    """``identifiers.id``, else the email, else ``cio_id``: never empty."""
    person_id, email = candidate_ids(report)
    cio_id = identifier(report.identifiers.get("cio_id"))
    return person_id or email or (f"cio_{cio_id}" if cio_id else f"cio_event_{report.event_id}")


def person_properties(report: ReportingEvent) -> dict[str, Any]:
    """``$set`` for a subscription change or an email that cannot be delivered."""
    kind, metric = report.object_type, report.metric
    if kind == "customer" and metric in ("subscribed", "unsubscribed"):
        return {"customerio_unsubscribed": metric == "unsubscribed"}
    if kind == "email" and metric == "unsubscribed":
        return {"customerio_unsubscribed": True}
    if kind == "email" and metric == "bounced":
        return {"customerio_email_status": "bounced"}
    if kind == "email" and metric == "spammed":
        return {"customerio_email_status": "spam_complaint"}
    return {}


def capture_event(
    report: ReportingEvent,
    *,
    distinct_id: str,
    trigger_event_uuid: str | None,
    options: ReportingOptions,
) -> dict[str, Any]:
    """The PostHog event (an item of ``/batch/``'s ``batch``) for ``report``."""
    props: dict[str, Any] = {"$lib": LIB}
    for key, value in report.data.items():
        if key not in OMITTED_DATA:
            props[f"customerio_{key}"] = value
    if options.include_recipient and "recipient" in report.data:
        props["customerio_recipient"] = report.data["recipient"]
    props["customerio_event_id"] = report.event_id
    props["customerio_object_type"] = report.object_type
    props["customerio_metric"] = report.metric
    if trigger_event_uuid is not None:
        props["customerio_trigger_event_uuid"] = trigger_event_uuid
    person = person_properties(report)
    if person:
        props["$set"] = person
    when = _dt.datetime.fromtimestamp(report.timestamp, _dt.UTC)
    return {
        "uuid": uuid_from_ulid(report.event_id),
        "event": event_name(report.object_type, report.metric, options.event_names),
        "distinct_id": distinct_id,
        "timestamp": when.isoformat().replace("+00:00", "Z"),
        "properties": props,
    }


# --- through the queue ----------------------------------------------------------------------


def capture_carrier(capture: dict[str, Any], *, received_ms: int) -> PostHogEvent:
    """A ready PostHog event wrapped for ``Queue.ingest``: dedup by its uuid (the event_id's),
    then ``CaptureMapper`` turns it into one ``POSTHOG_CAPTURE`` operation."""
    return PostHogEvent(
        uuid=capture["uuid"],
        event=CAPTURE_CARRIER,
        distinct_id=capture["distinct_id"],
        timestamp_ms=received_ms,
        properties={"capture": capture},
    )


def unreadable_carrier(
    body: bytes,
    problem: str,
    *,
    received_ms: int,
    key: str,
    reason: str = "unreadable_reporting",
) -> PostHogEvent:
    """A signed body that did not parse (or is over ``max_body_bytes``: ``reason``
    ``reporting_too_large``), kept (as text) to be dead-lettered with its reason.

    ``key`` (a uuid of the body's bytes) makes a re-sent copy one dead letter, not many."""
    return PostHogEvent(
        uuid=key,
        event=UNREADABLE_CARRIER,
        distinct_id=PARTITION_PREFIX + "unreadable",
        timestamp_ms=received_ms,
        properties={
            "raw": body.decode("utf-8", errors="replace"),
            "raw_hex": body.hex() if _not_utf8(body) else None,
            "problem": problem,
            "reason": reason,
        },
    )


def _not_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


class CaptureMapper:
    """The ``Mapper`` the reverse path ingests with: reads no identity state, maps a carrier
    to its one operation. Anything else is dropped (it never reaches this mapper)."""

    def distinct_ids(self, event: PostHogEvent) -> Sequence[str]:
        return ()

    def map(self, event: PostHogEvent, states: Mapping[str, IdentityState]) -> MappingOutcome:
        if event.event == CAPTURE_CARRIER:
            capture = event.properties["capture"]
            op = Operation(
                partition=PARTITION_PREFIX + event.distinct_id,
                endpoint=Endpoint.POSTHOG_CAPTURE,
                action="capture",
                body=capture,
                event_uuid=event.uuid,
            )
            return MappingOutcome(states={}, operations=[op])
        if event.event == UNREADABLE_CARRIER:
            op = Operation(
                partition=event.distinct_id,
                endpoint=Endpoint.REPORTING_UNREADABLE,
                action="reporting_unreadable",
                body=dict(event.properties),
                event_uuid=event.uuid,
            )
            return MappingOutcome(states={}, operations=[op])
        return MappingOutcome(states={}, operations=[], dropped="not_reporting")


# --- explain ----------------------------------------------------------------------------------


def looks_like_reporting(value: object) -> bool:
    """Whether a parsed JSON value is a Customer.io reporting webhook rather than PostHog's."""
    return isinstance(value, dict) and {"event_id", "object_type", "metric"} <= value.keys()


def explain_reporting(report: ReportingEvent, options: ReportingOptions) -> dict[str, Any]:
    """What ``explain`` prints for a reporting payload: the PostHog event, or why none.

    Offline, so the distinct_id is ``identifiers.id`` (``serve`` looks up who the connector
    sent that person as) and attribution is shown when ``trigger_event_id`` decodes to a uuid
    (``serve`` also checks that the connector ingested that event)."""
    if not metric_allowed(report.object_type, report.metric, options.metrics):
        return {
            "event_id": report.event_id,
            "decision": "drop",
            "reason": "not_in_reporting_metrics",
        }
    event = capture_event(
        report,
        distinct_id=fallback_distinct_id(report),
        trigger_event_uuid=trigger_uuid(report.data.get("trigger_event_id")),
        options=options,
    )
    return {
        "event_id": report.event_id,
        "decision": "capture",
        "endpoint": "POST {posthog_capture_url}/batch/",
        "posthog_event": event,
        "notes": [
            "distinct_id: serve uses the distinct_id this connector sent the person under",
        ],
    }
