"""Webhook bodies and export rows → PostHogEvent; bad input → InputError naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posthog_customerio.errors import InputError
from posthog_customerio.sources.normalize import event_from_mapping, parse_timestamp_ms
from posthog_customerio.sources.webhook import _depth_exceeds, parse_webhook_body
from tests.samples import POSTHOG_SAMPLES as SAMPLES

RECEIVED_MS = 1_800_000_000_000
T_MS = 1_727_786_216_789  # 2024-10-01T12:36:56.789Z


def parse(body: Any, **kwargs: Any) -> list[Any]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return parse_webhook_body(raw, received_ms=RECEIVED_MS, **kwargs)


def bare(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "uuid": "01924815-6d55-7160-8999-50d836f675cc",
        "event": "order_completed",
        "distinct_id": "user_42",
        "timestamp": "2024-10-01T12:36:56.789Z",
        "properties": {"revenue": 1},
    }
    event.update(overrides)
    return {k: v for k, v in event.items() if v is not None}


# -- every sample in examples/posthog -------------------------------------------------------

SAMPLE_BODIES = sorted(SAMPLES.glob("*.json"))


def test_the_samples_are_there() -> None:
    """The test below must never pass by collecting nothing."""
    assert len(SAMPLE_BODIES) >= 11, f"PostHog samples missing from {SAMPLES}"


@pytest.mark.parametrize("path", SAMPLE_BODIES, ids=lambda p: p.stem)
def test_every_sample_parses(path: Path) -> None:
    (event,) = parse_webhook_body(path.read_bytes(), received_ms=RECEIVED_MS)
    raw = json.loads(path.read_text())
    inner = raw.get("event", raw) if isinstance(raw.get("event"), dict) else raw
    assert event.uuid == inner["uuid"]
    assert event.event == inner["event"]
    assert event.distinct_id == inner["distinct_id"]
    assert event.notes == ()
    assert not {"$set", "$set_once", "$unset"} & event.properties.keys()
    assert event.set == inner["properties"].get("$set", {})
    assert event.set_once == inner["properties"].get("$set_once", {})
    person = raw.get("person")
    assert event.person_properties == (person["properties"] if person else {})


def test_webhook_identify_sample_fields() -> None:
    (event,) = parse_webhook_body(
        (SAMPLES / "webhook-identify.json").read_bytes(), received_ms=RECEIVED_MS
    )
    assert event.timestamp_ms == 1_727_786_096_789
    assert event.set["email"] == "jane@example.com"
    assert event.set_once == {"$initial_referrer": "$direct", "signup_source": "pricing-page"}
    assert event.properties["$anon_distinct_id"] == "0192480a-70d5-726b-b2a7-4de452e6b438"
    assert event.person_properties["email"] == "jane@example.com"


def test_custom_event_sample_groups() -> None:
    (event,) = parse_webhook_body(
        (SAMPLES / "webhook-custom-event.json").read_bytes(), received_ms=RECEIVED_MS
    )
    assert event.groups == {"company": "acme-inc"}
    assert event.properties["$groups"] == {"company": "acme-inc"}  # still event data


def test_bare_event_legacy_top_level_set() -> None:
    (event,) = parse_webhook_body((SAMPLES / "event-bare.json").read_bytes(), received_ms=0)
    assert event.set == {"lifetime_orders": 3}


def test_export_sample_rows_all_normalise() -> None:
    lines = (SAMPLES / "export-sample.jsonl").read_bytes().splitlines()
    events = [
        event_from_mapping(orjson.loads(line), person=None, received_ms=0, path=f"line {i + 1}")
        for i, line in enumerate(lines)
        if line.strip()
    ]
    assert len(events) == 2000
    assert all(e.notes == () for e in events)
    identify = next(e for e in events if e.event == "$identify" and e.set)
    assert "email" in identify.set
    assert "$set" not in identify.properties
    assert any(e.person_properties.get("email") for e in events)


def test_export_row_json_string_fields_and_space_timestamp() -> None:
    row = {
        "uuid": "0192240a-44e3-7223-9bc4-96cb8e81973e",
        "event": "signed_up",
        "distinct_id": 13,
        "timestamp": "2024-09-24 12:38:25.763+00:00",
        "properties": '{"$current_url": "https://x", "$set": {"plan": "pro"}}',
        "person_properties": '{"email": "u13@example.com"}',
        "set": '{"name": "U"}',
        "set_once": '{"first": 1}',
    }
    event = event_from_mapping(row, person=None, received_ms=0, path="")
    assert event.distinct_id == "13"
    assert event.timestamp_ms == 1_727_181_505_763
    assert event.properties == {"$current_url": "https://x"}
    assert event.set == {"name": "U", "plan": "pro"}
    assert event.set_once == {"first": 1}
    assert event.person_properties == {"email": "u13@example.com"}


# -- body shapes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "count"),
    [
        pytest.param(bare(), 1, id="bare_event"),
        pytest.param({"event": bare(), "person": {"properties": {"a": 1}}}, 1, id="webhook"),
        pytest.param({"event": bare()}, 1, id="webhook_without_person"),
        pytest.param({"event": bare(), "person": None}, 1, id="webhook_null_person"),
        pytest.param([bare(), {"event": bare()}], 2, id="array_of_both"),
        pytest.param({"batch": [bare(), bare(), {"event": bare()}]}, 3, id="batch"),
    ],
)
def test_accepted_shapes(body: Any, count: int) -> None:
    events = parse(body)
    assert len(events) == count
    assert all(e.distinct_id == "user_42" and e.timestamp_ms == T_MS for e in events)


def test_webhook_person_properties_used() -> None:
    (event,) = parse({"event": bare(), "person": {"properties": {"email": "a@b.co"}}})
    assert event.person_properties == {"email": "a@b.co"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("2024-10-01T12:36:56.789Z", T_MS, id="iso_z"),
        pytest.param("2024-10-01T14:36:56.789+02:00", T_MS, id="iso_offset"),
        pytest.param("2024-10-01 12:36:56.789+00:00", T_MS, id="space_separator"),
        pytest.param("2024-10-01T12:36:56.789", T_MS, id="naive_is_utc"),
        pytest.param(T_MS, T_MS, id="milliseconds"),
        pytest.param(T_MS / 1000, T_MS, id="float_seconds"),
        pytest.param(1_727_786_216, 1_727_786_216_000, id="int_seconds"),
        pytest.param(str(T_MS), T_MS, id="numeric_string"),
        pytest.param("yesterday", None, id="garbage"),
        pytest.param(True, None, id="boolean"),
        pytest.param(float("inf"), None, id="infinite"),
        pytest.param(10**20, None, id="absurdly_far"),
    ],
)
def test_parse_timestamp_ms(value: object, expected: int | None) -> None:
    assert parse_timestamp_ms(value) == expected


def test_numeric_distinct_id_is_stringified() -> None:
    assert parse(bare(distinct_id=42))[0].distinct_id == "42"
    assert parse(bare(distinct_id=42.0))[0].distinct_id == "42"


def test_missing_uuid_is_derived_from_content_deterministically() -> None:
    one = parse(bare(uuid=None))[0]
    two = parse(bare(uuid=None))[0]
    other = parse(bare(uuid=None, distinct_id="user_43"))[0]
    assert one.uuid == two.uuid != other.uuid
    assert "uuid derived from content" in one.notes


@pytest.mark.parametrize(
    ("overrides", "expected_ms", "note"),
    [
        pytest.param(
            {"properties": {"$time": T_MS / 1000}}, T_MS, "properties.$time", id="from_time"
        ),
        pytest.param({"sent_at": "2024-10-01T12:36:56.789Z"}, T_MS, "sent_at", id="from_sent_at"),
        pytest.param({}, RECEIVED_MS, "receipt", id="from_receipt"),
    ],
)
def test_missing_timestamp_falls_back(
    overrides: dict[str, Any], expected_ms: int, note: str
) -> None:
    (event,) = parse(bare(timestamp=None, **overrides))
    assert event.timestamp_ms == expected_ms
    assert any(note in n for n in event.notes)


def test_unset_and_set_once_lifted_out_of_properties() -> None:
    props = {"$set_once": {"a": 1}, "$unset": ["old"], "keep": 1}
    (event,) = parse(bare(properties=props))
    assert event.set_once == {"a": 1}
    assert event.unset == ("old",)
    assert event.properties == {"keep": 1}


def test_input_mapping_is_not_mutated() -> None:
    obj = bare(properties={"$set": {"a": 1}, "b": 2})
    event_from_mapping(obj, person=None, received_ms=0, path="")
    assert obj["properties"] == {"$set": {"a": 1}, "b": 2}


# -- bad input -------------------------------------------------------------------------------

NESTED = b'{"event": "e", "distinct_id": "d", "properties": {"a": ' + b"[" * 70 + b"]" * 70 + b"}}"


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        pytest.param(b"\xff\xfe{}", "", "UTF-8", id="not_utf8"),
        pytest.param(b'{"event": ', "", "malformed JSON", id="malformed_json"),
        pytest.param(NESTED, "", "deeper than 64", id="too_deep"),
        pytest.param(b"[" * 2000 + b"]" * 2000, "", "deeper than 64", id="deeper_than_orjson"),
        pytest.param(b'"just a string"', "", "object or array", id="scalar_body"),
        pytest.param(b"[]", "", "empty", id="empty_array"),
        pytest.param(b'{"batch": []}', "batch", "empty", id="empty_batch"),
        pytest.param(b'{"batch": {}}', "batch", "array", id="batch_not_array"),
        pytest.param(
            orjson.dumps({"batch": [bare(), bare(), {"event": bare(distinct_id="")}]}),
            "batch[2].event.distinct_id",
            "empty",
            id="empty_distinct_id_in_batch",
        ),
        pytest.param(
            orjson.dumps({"event": bare(distinct_id=None)}),
            "event.distinct_id",
            "missing",
            id="missing_distinct_id",
        ),
        pytest.param(
            orjson.dumps(bare(distinct_id=["x"])),
            "distinct_id",
            "string or a number",
            id="distinct_id_wrong_type",
        ),
        pytest.param(
            orjson.dumps(bare(distinct_id=True)), "distinct_id", "boolean", id="distinct_id_bool"
        ),
        pytest.param(orjson.dumps(bare(event=None)), "event", "missing", id="missing_event_name"),
        pytest.param(orjson.dumps(bare(event=5)), "event", "string", id="event_name_not_string"),
        pytest.param(orjson.dumps([bare(), 3]), "[1]", "event object", id="array_item_not_object"),
        pytest.param(
            orjson.dumps({"batch": [5, {"event": bare(event="")}]}),
            "batch[0]",
            "event object",
            id="no_element_usable_names_the_first",
        ),
    ],
)
def test_bad_input_names_the_field(body: bytes, field: str, message: str) -> None:
    with pytest.raises(InputError) as info:
        parse_webhook_body(body, received_ms=RECEIVED_MS)
    assert info.value.field == field
    assert message in info.value.message
    # The webhook's lenient parse: the same problem, raised when nothing else is usable,
    # else collected while the good elements go through.
    dropped: list[InputError] = []
    try:
        events = parse_webhook_body(body, received_ms=RECEIVED_MS, dropped=dropped)
    except InputError as lenient:
        assert (lenient.field, lenient.message) == (field, info.value.message)
    else:
        assert events and [p.field for p in dropped] == [field]


# -- one unusable element never loses the others (PostHog does not retry a 4xx) ------------


@pytest.mark.parametrize(
    ("body", "kept", "problems"),
    [
        pytest.param(
            {"batch": [bare(), 5, "x", bare(uuid="u2")]},
            ["01924815-6d55-7160-8999-50d836f675cc", "u2"],
            [("batch[1]", "must be an event object"), ("batch[2]", "must be an event object")],
            id="batch_with_non_objects",
        ),
        pytest.param(
            [
                bare(),
                bare(uuid="u2"),
                bare(uuid="u3"),
                bare(uuid="u4"),
                {"event": bare(distinct_id="")},
            ],
            ["01924815-6d55-7160-8999-50d836f675cc", "u2", "u3", "u4"],
            [("[4].event.distinct_id", "must not be empty")],
            id="array_with_an_empty_distinct_id",
        ),
        pytest.param(
            {"batch": [{"event": bare(event=None)}, bare(uuid="u2")]},
            ["u2"],
            [("batch[0].event.event", "is missing")],
            id="batch_without_event_name_first",
        ),
    ],
)
def test_an_unusable_element_is_dropped_the_rest_kept(
    body: Any, kept: list[str], problems: list[tuple[str, str]]
) -> None:
    dropped: list[InputError] = []
    events = parse(body, dropped=dropped)
    assert [e.uuid for e in events] == kept
    assert [(p.field, p.message) for p in dropped] == problems
    with pytest.raises(InputError) as strict:  # explain: the first problem, as before
        parse(body)
    assert strict.value.field == problems[0][0]


# -- one bad field never loses an event (PostHog does not retry a 4xx) ----------------------


@pytest.mark.parametrize(
    ("overrides", "expected", "note"),
    [
        pytest.param(
            {"timestamp": "soon"},
            {"timestamp_ms": RECEIVED_MS},
            "timestamp unparseable: time of receipt used",
            id="unparseable_timestamp_is_time_of_receipt",
        ),
        pytest.param(
            {"timestamp": [2024], "sent_at": "2024-10-01T12:36:56.789Z"},
            {"timestamp_ms": T_MS},
            "timestamp unparseable: taken from sent_at",
            id="unparseable_timestamp_falls_back_like_a_missing_one",
        ),
        pytest.param(
            {"properties": {"$set": "x", "revenue": 1}},
            {"set": {}, "properties": {"revenue": 1}},
            "properties.$set is a string but not valid JSON: dropped",
            id="set_not_json_dropped",
        ),
        pytest.param(
            {"properties": {"$set": [1], "$set_once": {"a": 1}}},
            {"set": {}, "set_once": {"a": 1}},
            "properties.$set must be an object, not an array: dropped",
            id="set_not_object_dropped",
        ),
        pytest.param(
            {"properties": {"$set": {"plan": "pro"}, "$set_once": 5}},
            {"set": {"plan": "pro"}, "set_once": {}},
            "properties.$set_once must be an object, not a number: dropped",
            id="set_once_not_object_dropped",
        ),
        pytest.param(
            {"properties": {"$unset": ["ok", 1]}},
            {"unset": ()},
            "properties.$unset must hold only strings ([1] is a number): dropped",
            id="unset_key_not_string_drops_the_unset",
        ),
        pytest.param(
            {"$set": True, "properties": {"$set": {"plan": "pro"}}},
            {"set": {"plan": "pro"}},
            "$set must be an object, not a boolean: dropped",
            id="legacy_top_level_set_dropped",
        ),
        pytest.param(
            {"set": "{broken"},
            {"set": {}},
            "set is a string but not valid JSON: dropped",
            id="export_set_dropped",
        ),
        pytest.param(
            {"uuid": 7},
            {"distinct_id": "user_42"},
            "uuid is not a string: derived from content",
            id="uuid_not_string_derived",
        ),
        pytest.param(
            {"properties": [1, 2]},
            {"properties": {}, "properties_dropped": True},
            "properties must be an object, not an array: dropped",
            id="properties_array_dropped",
        ),
        pytest.param(
            {"properties": "x"},
            {"properties": {}, "properties_dropped": True},
            "properties is a string but not valid JSON: dropped",
            id="properties_string_dropped",
        ),
        pytest.param(
            {"person_properties": 3},
            {"person_properties": {}, "properties_dropped": False},
            "person_properties must be an object, not a number: dropped",
            id="export_person_properties_dropped",
        ),
    ],
)
def test_one_bad_field_is_dropped_with_a_note(
    overrides: dict[str, Any], expected: dict[str, Any], note: str
) -> None:
    (event,) = parse({"batch": [bare(), bare(**overrides)]})[1:]
    assert event.event == "order_completed" and event.distinct_id == "user_42"
    for name, value in expected.items():
        assert getattr(event, name) == value, name
    assert event.notes == (note,)


@pytest.mark.parametrize(
    ("person", "note"),
    [
        pytest.param("jane", "person must be an object, not a string: ignored", id="string"),
        pytest.param([1], "person must be an object, not an array: ignored", id="array"),
        pytest.param(
            {"properties": [1]},
            "person.properties must be an object, not an array: dropped",
            id="properties_array",
        ),
        pytest.param(
            {"properties": 3},
            "person.properties must be an object, not a number: dropped",
            id="properties_number",
        ),
    ],
)
def test_a_bad_person_is_ignored_with_a_note(person: Any, note: str) -> None:
    (event,) = parse({"event": bare(), "person": person})
    assert event.distinct_id == "user_42" and event.properties == {"revenue": 1}
    assert event.person_properties == {}
    assert not event.properties_dropped
    assert event.notes == (note,)


def test_empty_or_absent_properties_are_not_dropped() -> None:
    for props in ({}, None, ""):
        (event,) = parse(bare(properties=props) if props is not None else bare(properties=None))
        assert event.properties == {} and not event.properties_dropped and event.notes == ()


def test_uuid_not_a_string_is_derived_deterministically() -> None:
    one, two = parse([bare(uuid=7), bare(uuid=7)])
    assert one.uuid == two.uuid != bare()["uuid"]


def test_depth_limit_is_configurable() -> None:
    assert parse(NESTED, max_depth=100)[0].event == "e"


def test_many_brackets_but_shallow_is_fine() -> None:
    body = {"batch": [bare(properties={f"k{i}": [{}] for i in range(50)})]}
    assert len(parse(body)) == 1


def _nested(depth: int) -> Any:
    """A value ``depth`` containers deep, alternating arrays and objects."""
    value: Any = 1
    for level in range(depth):
        value = [value, "x"] if level % 2 else {"k": value, "n": 0}
    return value


@pytest.mark.parametrize("max_depth", [4, 5, 10, 64])
@pytest.mark.parametrize("batched", [False, True], ids=["bare", "batch"])
def test_depth_limit_boundary_with_brackets_inside_strings(max_depth: int, batched: bool) -> None:
    # Event object + properties are 2 levels ("batch" adds 2); the strings are full of brackets,
    # which must neither count as nesting nor hide any (and make the bracket count exceed the
    # limit, so the body is walked).
    outer = 4 if batched else 2
    noise = {"open": "[{" * 100, "close": "]}" * 100, "quoted": '\\"[[[\\"'}

    def body(depth: int) -> bytes:
        event = bare(properties={**noise, "deep": _nested(depth - outer)})
        return orjson.dumps({"batch": [event, bare()]} if batched else event)

    assert parse(body(max_depth), max_depth=max_depth)[0].properties["open"] == "[{" * 100
    with pytest.raises(InputError) as info:
        parse(body(max_depth + 1), max_depth=max_depth)
    assert info.value.message == f"JSON nested deeper than {max_depth} levels"


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


_json = st.recursive(
    st.none() | st.integers(-5, 5) | st.text(alphabet='[]{}\\"x', max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_depth_check_agrees_with_a_recursive_count(value: Any) -> None:
    parsed = orjson.loads(orjson.dumps(value))
    depth = _depth(parsed)
    for limit in range(max(depth - 2, 0), depth + 3):
        assert _depth_exceeds(parsed, limit) == (depth > limit)


# -- U+0000, which PostgreSQL's text cannot hold ------------------------------------------


def test_nul_in_ids_keys_and_values_becomes_the_replacement_character() -> None:
    body = (
        b'{"event": {"uuid": "019a3c10-0000-7a01-8b01-0000000000\\u00001", "event": "ok\\u0000",'
        b' "distinct_id": "user_\\u0000x", "properties": {"$anon_distinct_id": "anon\\u0000",'
        b' "alias": "al\\u0000", "k\\u0000": ["v\\u0000", {"deep": "d\\u0000"}],'
        b' "$set": {"email": "a\\u0000b@example.com"}}}}'
    )
    [event] = parse(body)
    assert event.uuid == "019a3c10-0000-7a01-8b01-0000000000\ufffd1"
    assert event.event == "ok\ufffd" and event.distinct_id == "user_\ufffdx"
    assert event.properties == {
        "$anon_distinct_id": "anon\ufffd",
        "alias": "al\ufffd",
        "k\ufffd": ["v\ufffd", {"deep": "d\ufffd"}],
    }
    assert event.set == {"email": "a\ufffdb@example.com"}


def test_an_escaped_backslash_before_u0000_is_text_not_nul() -> None:
    [event] = parse(orjson.dumps(bare(distinct_id="user_\\u0000", properties={"x": "\x00"})))
    assert event.distinct_id == "user_\\u0000"  # a backslash, then the text u0000
    assert event.properties == {"x": "\ufffd"}


# -- lone surrogate escapes, which JavaScript senders can produce -----------------------------


def test_lone_surrogates_become_the_replacement_character_with_a_note() -> None:
    body = (
        b'{"batch": [{"event": "e", "distinct_id": "u\\ud800", "uuid": "a",'
        b' "properties": {"k\\udc00": ["v\\ud83d", {"ok": "\\ud83d\\ude00"}]}},'
        b' {"event": "e", "distinct_id": "u2", "uuid": "b"}]}'
    )
    with pytest.raises(orjson.JSONDecodeError, match="surrogate"):
        orjson.loads(body)
    first, second = parse(body)
    assert first.distinct_id == "u\ufffd"
    assert first.properties == {"k\ufffd": ["v\ufffd", {"ok": "\U0001f600"}]}
    assert "text: lone UTF-16 surrogate escape replaced by U+FFFD" in first.notes
    assert second.notes == ("timestamp missing: time of receipt used",)
    orjson.dumps(first.properties)  # storable and sendable


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b'{"event": "e", "distinct_id": "\\ud800", "x": NaN}', "malformed JSON"),
        pytest.param(b'{"a": "\\ud800"', "malformed JSON"),
        pytest.param(b'{"a": "\\ud800", "b": ' + b"[" * 5000 + b"]" * 5000 + b"}", "deeper"),
    ],
)
def test_the_surrogate_fallback_keeps_the_other_refusals(body: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse(body)


def test_nul_inside_a_json_string_field_of_an_export_row() -> None:
    props = json.dumps({"$anon_distinct_id": "anon\x00", "$set": {"plan": "p\x00"}})
    event = event_from_mapping(
        bare(properties=props, distinct_id="u\x00"), person=None, received_ms=0, path=""
    )
    assert event.properties == {"$anon_distinct_id": "anon\ufffd"}
    assert event.set == {"plan": "p\ufffd"}
