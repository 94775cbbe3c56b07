"""Property-based: no body, however malformed, makes the webhook parser do anything but
return events or raise ``InputError`` (which the webhook answers 400)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from posthog_customerio.errors import InputError
from posthog_customerio.sources.event import PostHogEvent
from posthog_customerio.sources.webhook import parse_webhook_body

RECEIVED_MS = 1_800_000_000_000
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=30,
)
FIELDS = [
    "uuid",
    "event",
    "distinct_id",
    "timestamp",
    "properties",
    "$set",
    "$set_once",
    "$unset",
    "set",
    "person_properties",
    "sent_at",
    "elements_chain",
]
# Event-shaped objects: the known fields with any JSON value (wrong types), plus unknown ones.
event_like = st.fixed_dictionaries(
    {},
    optional={
        "uuid": json_values | st.uuids().map(str),
        "event": json_values | st.sampled_from(["$pageview", "$identify", "signup"]),
        "distinct_id": json_values | st.text(min_size=1, max_size=20),
        "timestamp": json_values | st.datetimes().map(lambda d: d.isoformat() + "Z"),
        "properties": json_values
        | st.dictionaries(
            st.sampled_from(["$set", "$unset", "$time", "$groups", "x"]), json_values
        ),
        "$set": json_values,
        "$unset": json_values,
        "person_properties": json_values,
        "sent_at": json_values,
    },
).flatmap(
    lambda d: st.dictionaries(st.text(max_size=8), json_values, max_size=3).map(
        lambda extra: {**extra, **d}
    )
)
bodies = (
    event_like
    | st.fixed_dictionaries({"event": event_like}, optional={"person": json_values})
    | st.lists(event_like, max_size=4)
    | st.fixed_dictionaries({"batch": st.lists(event_like, max_size=4) | json_values})
    | json_values
)


def check(raw: bytes) -> list[PostHogEvent] | None:
    dropped: list[InputError] = []
    try:  # the webhook's parse: an unusable element is dropped, the rest kept
        lenient = parse_webhook_body(raw, received_ms=RECEIVED_MS, max_depth=64, dropped=dropped)
    except InputError as exc:
        lenient_error: InputError | None = exc
    else:
        lenient_error = None
    try:
        events = parse_webhook_body(raw, received_ms=RECEIVED_MS, max_depth=64)
    except InputError as exc:
        assert exc.message
        if lenient_error is not None:  # nothing usable: the same first problem either way
            assert (lenient_error.field, lenient_error.message) == (exc.field, exc.message)
        else:  # explain's strict parse names the first element the webhook dropped
            assert dropped and (dropped[0].field, dropped[0].message) == (exc.field, exc.message)
        return None
    assert lenient_error is None and not dropped and lenient == events
    assert events and all(isinstance(e, PostHogEvent) for e in events)
    for e in events:
        assert isinstance(e.uuid, str) and e.uuid
        assert isinstance(e.distinct_id, str) and e.distinct_id
        assert isinstance(e.timestamp_ms, int)
    return events


@FUZZ
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(raw: bytes) -> None:
    check(raw)


@FUZZ
@given(bodies)
def test_event_shaped_json_with_wrong_types_and_unknown_fields(body: Any) -> None:
    raw = orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
    events = check(raw)
    if events is not None:  # deterministic: the same body gives the same events (and uuids)
        assert check(raw) == events


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=65, max_value=3000), st.sampled_from([b"[", b'{"a":']))
def test_deep_nesting_is_an_input_error(depth: int, opener: bytes) -> None:
    closer = b"]" if opener == b"[" else b"}"
    raw = opener * depth + b"1" + closer * depth
    assert check(raw) is None


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=20), st.binary(min_size=1, max_size=20))
def test_non_utf8_inside_strings(text: str, junk: bytes) -> None:
    raw = b'{"event": "' + text.encode() + junk + b'", "distinct_id": "u"}'
    check(raw)


def test_missing_uuid_and_timestamp_are_derived_and_noted() -> None:
    raw = b'{"event": "signup", "distinct_id": "u1", "properties": {"plan": "pro"}}'
    first = parse_webhook_body(raw, received_ms=RECEIVED_MS)[0]
    again = parse_webhook_body(raw, received_ms=RECEIVED_MS + 5_000)[0]
    assert first.uuid == again.uuid  # from content: a resent body dedups
    assert "uuid derived from content" in first.notes
    assert "timestamp missing: time of receipt used" in first.notes
