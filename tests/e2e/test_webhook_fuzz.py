"""Fuzzing the real ``POST /webhook`` over HTTP: never a 5xx, never a crash, and a refused
request enqueues nothing.

Bodies come from hypothesis: arbitrary bytes, and bodies generated from a JSON schema of the
accepted payloads (``WEBHOOK_SCHEMA``, by ``from_schema`` below: hypothesis-jsonschema 0.23
does not work with current hypothesis releases, and this subset of JSON Schema is small), then
mutated with unknown fields (still accepted), one field the event cannot be read without of a
wrong type (400 naming it when nothing else in the body is usable, else that event dropped with
a note naming it and the others accepted), or one other field of a wrong type (accepted without
it, with a note naming it: PostHog does not retry a 4xx). The sandbox refuses
the credentials, so nothing leaves the queue and its depth must equal what was enqueued.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.harness import Sandbox, Serve, record_figures

pytestmark = pytest.mark.e2e

EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["event", "distinct_id"],
    "properties": {
        "event": {"type": "string", "minLength": 1, "maxLength": 40},
        "distinct_id": {
            "anyOf": [
                {"type": "string", "pattern": "^[A-Za-z0-9_@.-]{1,40}$"},
                {"type": "integer", "minimum": 0, "maximum": 10**12},
            ]
        },
        "uuid": {"type": "string", "format": "uuid"},
        "timestamp": {"type": "string", "format": "date-time"},
        "properties": {
            "type": "object",
            "properties": {
                "$set": {"type": "object", "maxProperties": 3},
                "$set_once": {"type": "object", "maxProperties": 3},
                "$unset": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
                "$is_identified": {"type": "boolean"},
                "$current_url": {"type": "string", "maxLength": 60},
            },
            "patternProperties": {"^[a-z_]{1,12}$": {}},
            "additionalProperties": False,
            "maxProperties": 6,
        },
    },
    "additionalProperties": False,
}
WEBHOOK_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {
            "type": "object",
            "required": ["event"],
            "properties": {
                "event": EVENT_SCHEMA,
                "person": {
                    "type": "object",
                    "properties": {"properties": {"type": "object", "maxProperties": 4}},
                    "additionalProperties": False,
                },
            },
            "additionalProperties": False,
        },
        EVENT_SCHEMA,
        {"type": "array", "items": EVENT_SCHEMA, "minItems": 1, "maxItems": 4},
        {
            "type": "object",
            "required": ["batch"],
            "properties": {
                "batch": {"type": "array", "items": EVENT_SCHEMA, "minItems": 1, "maxItems": 4}
            },
            "additionalProperties": False,
        },
    ]
}


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid against ``schema``, for the JSON Schema subset used here: ``anyOf``,
    ``type`` object (properties, required, patternProperties, ``additionalProperties: false``,
    maxProperties), array (items, minItems, maxItems), string (minLength, maxLength, pattern,
    format uuid/date-time), integer (minimum, maximum), boolean, and ``{}`` (any JSON)."""
    if "anyOf" in schema:
        return st.one_of([from_schema(s) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind is None:
        return ANY_JSON
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "string":
        if schema.get("format") == "uuid":
            return st.uuids().map(str)
        if schema.get("format") == "date-time":
            return st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True)
        return st.text(min_size=schema.get("minLength", 0), max_size=schema.get("maxLength", 20))
    if kind == "array":
        return st.lists(
            from_schema(schema.get("items", {})),
            min_size=schema.get("minItems", 0),
            max_size=schema.get("maxItems", 5),
        )
    assert kind == "object", schema
    props: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    known = st.fixed_dictionaries(
        {k: from_schema(v) for k, v in props.items() if k in required},
        optional={k: from_schema(v) for k, v in props.items() if k not in required},
    )
    extra_keys: st.SearchStrategy[str] | None = None
    for pattern in schema.get("patternProperties", {}):
        extra_keys = st.from_regex(pattern, fullmatch=True)
    if schema.get("additionalProperties", True) is not False:
        extra_keys = st.text(max_size=10)
    if extra_keys is None:
        out = known
    else:
        extra = st.dictionaries(extra_keys.filter(lambda k: k not in props), ANY_JSON, max_size=3)
        out = st.builds(lambda a, b: {**b, **a}, known, extra)
    limit = schema.get("maxProperties")
    return out if limit is None else out.filter(lambda d: len(d) <= limit)


ANY_JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)

# Wrong types per field (``None`` counts as missing for the optional ones, so not used there).
WRONG: dict[str, st.SearchStrategy[Any]] = {
    "event": st.one_of(
        st.integers(), st.booleans(), st.none(), st.lists(st.integers()), st.just("")
    ),
    "distinct_id": st.one_of(st.booleans(), st.none(), st.lists(st.integers()), st.just({})),
}
# Fields an event is sent without (or with a fallback) when they are of a wrong type.
DROPPABLE: dict[str, st.SearchStrategy[Any]] = {
    "uuid": st.one_of(st.integers(), st.booleans(), st.lists(st.integers()), st.just({})),
    "timestamp": st.one_of(st.booleans(), st.lists(st.integers()), st.just({}), st.just("soon")),
    "$set": st.one_of(st.integers(), st.booleans(), st.lists(st.integers()), st.just("{x")),
    "properties": st.one_of(st.integers(), st.booleans(), st.lists(st.integers()), st.just("[1")),
}

FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
FIGURES: dict[str, int] = {}


@pytest.fixture(scope="module")
def fuzz_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    tmp = tmp_path_factory.mktemp("fuzz")
    sandbox = Sandbox(tmp)
    sandbox.faults(reject_credentials=True)  # nothing leaves the queue
    serve = Serve(tmp, tmp / "data", sandbox, POSTHOG_CUSTOMERIO_MAX_BODY_BYTES="65536")
    yield serve
    enqueued = serve.metric("operations_enqueued_total")
    time.sleep(1.1)  # past the status cache
    depth = serve.status()["queue"]["depth"]
    serve.close()
    sandbox.close()
    assert depth == enqueued, (depth, enqueued)
    record_figures("webhook_fuzz", {**FIGURES, "operations_enqueued": int(enqueued)})


def _dumps(value: Any) -> bytes:
    """Standard JSON (any integer size; orjson refuses integers beyond 64 bits to encode)."""
    return json.dumps(value).encode()


def post(serve: Serve, body: bytes) -> tuple[httpx.Response, float, float]:
    """Post ``body``; return the response and the change of (events received, ops enqueued)."""
    before = (serve.metric("events_received_total"), serve.metric("operations_enqueued_total"))
    r = serve.http.post("/webhook", content=body, headers={"content-type": "application/json"})
    after = (serve.metric("events_received_total"), serve.metric("operations_enqueued_total"))
    assert r.status_code < 500, r.text
    assert "Traceback" not in r.text
    FIGURES[str(r.status_code)] = FIGURES.get(str(r.status_code), 0) + 1
    return r, after[0] - before[0], after[1] - before[1]


def assert_refused_cleanly(r: httpx.Response, received: float, enqueued: float) -> None:
    assert r.status_code in (400, 413), r.text
    assert "error" in r.json()
    assert received == 0 and enqueued == 0, "a refused request changed the queue"


@FUZZ
@given(st.binary(max_size=3000))
def test_arbitrary_bytes(fuzz_serve: Serve, raw: bytes) -> None:
    r, received, enqueued = post(fuzz_serve, raw)
    if r.status_code != 200:
        assert_refused_cleanly(r, received, enqueued)


@FUZZ
@given(from_schema(WEBHOOK_SCHEMA))
def test_schema_valid_bodies_are_accepted(fuzz_serve: Serve, body: Any) -> None:
    r, received, _ = post(fuzz_serve, _dumps(body))
    assert r.status_code == 200, (r.text, body)
    answer = r.json()
    assert answer["accepted"] + answer["dropped"] == received


@FUZZ
@given(
    from_schema(EVENT_SCHEMA),
    st.dictionaries(
        st.text(min_size=1, max_size=10).filter(lambda k: k not in EVENT_SCHEMA["properties"]),
        st.one_of(st.none(), st.integers(), st.text(max_size=20), st.lists(st.booleans())),
        min_size=1,
        max_size=4,
    ),
)
def test_unknown_fields_are_ignored(fuzz_serve: Serve, event: Any, unknown: Any) -> None:
    r, _, _ = post(fuzz_serve, _dumps({"event": {**unknown, **event}}))
    assert r.status_code == 200, r.text


@FUZZ
@given(from_schema(EVENT_SCHEMA), st.sampled_from(sorted(WRONG)), st.data())
def test_a_wrong_type_is_a_400_naming_the_field(
    fuzz_serve: Serve, event: Any, field: str, data: st.DataObject
) -> None:
    wrong = data.draw(WRONG[field])
    r, received, enqueued = post(fuzz_serve, _dumps({"batch": [{**event, field: wrong}]}))
    assert_refused_cleanly(r, received, enqueued)
    assert field in r.json().get("field", ""), r.text


@FUZZ
@given(
    st.lists(from_schema(EVENT_SCHEMA), min_size=1, max_size=3),
    from_schema(EVENT_SCHEMA),
    st.sampled_from(sorted(WRONG)),
    st.data(),
)
def test_an_unusable_event_among_good_ones_loses_only_itself(
    fuzz_serve: Serve, good: list[Any], event: Any, field: str, data: st.DataObject
) -> None:
    at = data.draw(st.integers(0, len(good)))
    batch = [*good[:at], {**event, field: data.draw(WRONG[field])}, *good[at:]]
    r, received, _ = post(fuzz_serve, _dumps({"batch": batch}))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert received == len(batch) and answer["accepted"] + answer["dropped"] == len(batch)
    assert answer["reasons"]["invalid_event"] == 1, answer
    assert any(note.startswith(f"batch[{at}].{field}: ") for note in answer["notes"]), answer


@FUZZ
@given(from_schema(EVENT_SCHEMA), st.sampled_from(sorted(DROPPABLE)), st.data())
def test_a_droppable_field_of_a_wrong_type_loses_nothing_else(
    fuzz_serve: Serve, event: Any, field: str, data: st.DataObject
) -> None:
    wrong = data.draw(DROPPABLE[field])
    r, received, _ = post(fuzz_serve, _dumps({"batch": [{**event, field: wrong}]}))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert received == 1 and answer["accepted"] + answer["dropped"] == 1
    assert any(note.startswith(field) for note in answer["notes"]), answer


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=65, max_value=20_000))
def test_deep_nesting_and_huge_strings(fuzz_serve: Serve, n: int) -> None:
    r, received, enqueued = post(fuzz_serve, b"[" * n + b"]" * n)
    assert_refused_cleanly(r, received, enqueued)
    huge = {"event": "big", "distinct_id": "u", "properties": {"s": "x" * (n * 4)}}
    r, _, _ = post(fuzz_serve, _dumps(huge))
    assert r.status_code in (200, 413), r.text


def test_missing_uuid_and_timestamp_are_derived_and_the_answer_says_so(
    fuzz_serve: Serve,
) -> None:
    body = _dumps({"event": "signup", "distinct_id": "derived_user"})
    r, _, _ = post(fuzz_serve, body)
    assert r.status_code == 200
    notes = r.json()["notes"]
    assert notes == {"uuid derived from content": 1, "timestamp missing: time of receipt used": 1}
    again, _, enqueued = post(fuzz_serve, body)  # a resend is recognised by the derived uuid
    assert again.json()["reasons"] == {"duplicate": 1} and enqueued == 0
