"""The official Track API document as a validator: examples, broken items, connector items."""

from __future__ import annotations

import copy
import functools
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from posthog_customerio.customerio.spec import (
    BATCH_ITEMS_POINTER,
    SpecValidator,
    default_validator,
    load_spec,
)

ULID = "01HZX3J5Q8W9E2R4T6Y8V0J1P2"
ULID_RE = re.compile(r"\A[0-7][0-9A-HJKMNP-TV-Z]{25}\Z", re.IGNORECASE)


@pytest.fixture(scope="module")
def validator() -> SpecValidator:
    return default_validator()


def _component_examples() -> list[Any]:
    spec = load_spec()
    params = []
    for name in (
        "identify_person", "person_delete", "person_event", "person_screen", "person_page",
        "person_add_relationships", "person_delete_relationships", "person_add_device",
        "person_delete_device", "person_suppress", "person_unsuppress", "object_identify",
        "object_identify_anonymous", "object_delete", "object_add_relationships",
        "object_delete_relationships", "delivery_operations",
    ):  # fmt: skip
        params.append(pytest.param(spec["components"]["schemas"][name]["example"], id=name))
    return params


def _request_examples() -> list[Any]:
    """(operationId, example) for every request body example in the document."""
    spec = load_spec()
    schemas = spec["components"]["schemas"]
    found = []
    for item in spec["paths"].values():
        for operation in item.values():
            if not isinstance(operation, dict) or "requestBody" not in operation:
                continue
            op_id = operation["operationId"]
            schema = operation["requestBody"]["content"].get("application/json", {}).get("schema")
            if not schema:
                continue
            examples = [schema["example"]] if "example" in schema else []
            if "$ref" in schema:
                target = schemas[schema["$ref"].rsplit("/", 1)[1]]
                examples += [a["example"] for a in target.get("oneOf", []) if "example" in a]
                examples += [target["example"]] if "example" in target else []
            found += [(op_id, i, e) for i, e in enumerate(examples)]
    return [pytest.param(op, e, id=f"{op}-{i}") for op, i, e in found]


def test_load_spec_is_the_official_openapi_31_document() -> None:
    spec = load_spec()
    assert spec["openapi"].startswith("3.1")
    assert load_spec() is spec  # parsed once


@pytest.mark.parametrize("item", _component_examples())
def test_the_specs_own_item_examples_validate(validator: SpecValidator, item: Any) -> None:
    assert validator.validate_batch_item(item) == []
    assert validator.validate_request("entity", item) == []


# Examples in the document that contradict its own schemas; the schema wins, as it does for
# every body we validate.
_INCONSISTENT_EXAMPLES = {
    # The "Mobile screen view" alternative of eventsRequest requires anonymous_id.
    ("track", "homepage"): '"anonymous_id" is a required property',
}


@pytest.mark.parametrize(("operation_id", "body"), _request_examples())
def test_the_specs_own_request_examples_validate(
    validator: SpecValidator, operation_id: str, body: Any
) -> None:
    problems = validator.validate_request(operation_id, body)
    known = _INCONSISTENT_EXAMPLES.get((operation_id, body.get("name")))
    if known is not None:
        assert any(known in p for p in problems)
    else:
        assert problems == []


def test_person_merge_example_lacks_the_fields_its_schema_requires(
    validator: SpecValidator,
) -> None:
    example = load_spec()["components"]["schemas"]["person_merge"]["example"]
    assert validator.validate_batch_item(example) == ['$: "type" is a required property']
    assert validator.validate_batch_item({"type": "person", "action": "merge", **example}) == []


def _event(**overrides: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "type": "person",
        "action": "event",
        "identifiers": {"id": "user-1"},
        "name": "purchase",
        "id": ULID,
        "timestamp": 1_700_000_000,
        "attributes": {"price": 9.99},
    }
    item.update(overrides)
    return item


def _without(key: str) -> dict[str, Any]:
    item = _event()
    del item[key]
    return item


@pytest.mark.parametrize(
    ("item", "path"),
    [
        pytest.param(_event(name=5), "$.name", id="name-not-string"),
        pytest.param(_without("name"), "$", id="name-missing"),
        pytest.param(_event(id="not-a-ulid"), "$.id", id="id-not-ulid"),
        pytest.param(_event(id="01HZX3J5Q8W9E2R4T6Y8V0J1P"), "$.id", id="id-25-chars"),
        pytest.param(_event(timestamp="2024-01-01"), "$.timestamp", id="timestamp-string"),
        pytest.param(_event(timestamp=1.5), "$.timestamp", id="timestamp-fraction"),
        pytest.param(_event(attributes=[1, 2]), "$.attributes", id="attributes-not-object"),
        pytest.param(
            _event(identifiers={"id": "u", "email": "u@example.com"}),
            "$.identifiers",
            id="two-identifiers",
        ),
        pytest.param(_event(identifiers={"id": 42}), "$.identifiers", id="id-not-string"),
        pytest.param(_without("identifiers"), "$", id="identifiers-missing"),
        pytest.param(_event(type="people"), "$", id="unknown-type"),
        pytest.param(
            {"type": "person", "action": "merge", "primary": {"id": "a"}},
            "$",
            id="merge-without-secondary",
        ),
        pytest.param(
            {"type": "person", "action": "identify", "identifiers": {"id": "u"}, "attributes": 1},
            "$.attributes",
            id="identify-attributes-not-object",
        ),
        pytest.param(
            _event(attributes={"recipient": "not-an-email"}),
            "$.attributes.recipient",
            id="recipient-not-email",
        ),
        pytest.param([_event()], "$", id="not-an-object"),
    ],
)
def test_broken_items_fail_naming_the_field(validator: SpecValidator, item: Any, path: str) -> None:
    problems = validator.validate_batch_item(item)
    assert problems, "expected the item to be rejected"
    assert any(p.startswith(f"{path}:") for p in problems), problems


@pytest.mark.parametrize("action", ["event", "page", "screen"])
def test_anonymous_id_identifier_of_an_event_is_read_as_an_id(
    validator: SpecValidator, action: str
) -> None:
    """Customer.io's Segment destination sends ``{"anonymous_id"}`` in v2 batches
    (segmentio/action-destinations, .../customerio/utils.ts); the rest of the item still
    meets the document."""
    item = _event(action=action, identifiers={"anonymous_id": "0192480a-70d5"})
    assert validator.validate_batch_item(item) == []
    assert validator.validate_request("batch", {"batch": [item]}) == []


@pytest.mark.parametrize(
    ("item", "path", "text"),
    [
        pytest.param(
            _event(identifiers={"anonymous_id": "a"}, name=5), "$.name", "", id="rest-checked"
        ),
        pytest.param(
            _event(identifiers={"anonymous_id": "a"}, id="nope"), "$.id", "", id="ulid-checked"
        ),
        pytest.param(
            _event(identifiers={"anonymous_id": 42}),
            "$.identifiers",
            "anonymous_id",
            id="value-not-string",
        ),
        pytest.param(
            {"type": "person", "action": "identify", "identifiers": {"anonymous_id": "a"}},
            "$.identifiers",
            "",
            id="identify-by-anonymous-id",
        ),
    ],
)
def test_anonymous_id_items_still_fail_on_everything_else(
    validator: SpecValidator, item: Any, path: str, text: str
) -> None:
    problems = validator.validate_batch_item(item)
    assert any(p.startswith(f"{path}:") and text in p for p in problems), problems


def test_batch_problems_name_the_item_index(validator: SpecValidator) -> None:
    body = {"batch": [_event(), _event(name=5), _event(), _event(id="nope")]}
    problems = validator.check_request("batch", body)
    assert [(p.field, p.path) for p in problems] == [
        ("batch[1].name", "$.batch[1].name"),
        ("batch[3].id", "$.batch[3].id"),
    ]


# What the connector sends (DESIGN.md §4).
CONNECTOR_ITEMS = [
    pytest.param(
        {
            "type": "person",
            "action": "identify",
            "identifiers": {"id": "distinct-1"},
            "attributes": {
                "email": "jane@example.com",
                "plan": "pro",
                "seats": 3,
                "beta": True,
                "tags": ["a", "b"],
                "address": {"city": "Oslo"},
                "removed": "",
                "anonymous_id": "0190d3a2-anon",
            },
        },
        id="identify-with-attributes",
    ),
    pytest.param(
        {
            "type": "person",
            "action": "identify",
            "identifiers": {"email": "jane@example.com"},
            "attributes": {"created_at": 1_700_000_000},
        },
        id="identify-by-email",
    ),
    pytest.param(
        _event(
            name="signed_up",
            attributes={
                "$browser": "Firefox",
                "nested": {"list": [1, {"deep": None}], "n": 1.5},
                "plan": "pro",
            },
        ),
        id="event-ulid-int-timestamp-nested",
    ),
    pytest.param(
        _event(action="page", name="https://example.com/pricing", attributes={"path": "/pricing"}),
        id="page",
    ),
    pytest.param(_event(action="screen", name="Dashboard", attributes={}), id="screen"),
    pytest.param(
        {
            "type": "person",
            "action": "merge",
            "primary": {"id": "distinct-1"},
            "secondary": {"id": "alias-1"},
        },
        id="merge",
    ),
    pytest.param(
        {"type": "person", "action": "delete", "identifiers": {"id": "distinct-1"}},
        id="delete",
    ),
    pytest.param(
        {
            "type": "object",
            "action": "identify",
            "identifiers": {"object_type_id": "1", "object_id": "acme"},
            "attributes": {"name": "Acme"},
            "cio_relationships": [{"identifiers": {"id": "distinct-1"}}],
        },
        id="object-identify-with-relationship",
    ),
]


@pytest.mark.parametrize("item", CONNECTOR_ITEMS)
def test_connector_items_validate(validator: SpecValidator, item: dict[str, Any]) -> None:
    assert validator.validate_batch_item(item) == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            {
                "name": "clicked",
                "anonymous_id": "device-1",
                "id": ULID,
                "timestamp": 1_700_000_000,
                "data": {"button": "buy"},
            },
            id="event",
        ),
        pytest.param(
            {"name": "https://example.com/", "type": "page", "anonymous_id": "device-1"},
            id="page",
        ),
        pytest.param({"name": "Home", "type": "screen", "anonymous_id": "device-1"}, id="screen"),
    ],
)
def test_v1_anonymous_events_validate(validator: SpecValidator, body: dict[str, Any]) -> None:
    assert validator.validate_request("trackAnonymous", body) == []


def test_v1_bodies_are_checked_against_their_operation(validator: SpecValidator) -> None:
    assert (
        validator.validate_request("merge", {"primary": {"id": "a"}, "secondary": {"id": "b"}})
        == []
    )
    assert validator.validate_request(
        "merge", {"primary": {"id": "a", "email": "a@x.io"}, "secondary": {"id": "b"}}
    )
    assert validator.validate_request("identify", {"email": "a@x.io", "plan": "pro"}) == []
    # v1 identify attributes are strings, integers or booleans only.
    assert validator.validate_request("identify", {"score": 1.5}) == [
        '$.score: 1.5 is not of type "string"'
    ]
    assert validator.validate_request("trackAnonymous", {"name": "x", "type": "invite"})
    assert validator.validate_request("delete", None) == []
    with pytest.raises(KeyError):
        validator.validate_request("no_such_operation", {})


def _corpus() -> list[Any]:
    items: list[Any] = [p.values[0] for p in CONNECTOR_ITEMS]
    items += [p.values[0] for p in _component_examples()]
    broken = []
    for item in items:
        if isinstance(item, dict):
            for key in item:
                for value in (None, 5, "", [], {}):
                    mutated = copy.deepcopy(item)
                    mutated[key] = value
                    broken.append(mutated)
    return items + broken + [None, 1, "x", [], {}]


def _declares_present_key(alternative: object, instance: dict[str, Any]) -> bool:
    properties = alternative.get("properties") if isinstance(alternative, dict) else None
    return isinstance(properties, dict) and any(key in instance for key in properties)


def _one_of_by_present_keys(
    validator: Any, one_of: list[Any], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    """The module's reading of ``oneOf``, word for word: several matches pass if exactly one
    of the matching alternatives declares a key the object has."""
    matched = [a for a in one_of if validator.evolve(schema=a).is_valid(instance)]
    if len(matched) == 1:
        return
    if (
        len(matched) > 1
        and isinstance(instance, dict)
        and sum(_declares_present_key(a, instance) for a in matched) == 1
    ):
        return
    yield ValidationError("oneOf")


@functools.cache
def _reference_validator(pointer: str) -> Any:
    """Python jsonschema on the unmodified document, with that reading of ``oneOf``."""
    resource = Resource.from_contents(load_spec(), default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:spec", resource)
    checker = FormatChecker(formats=())
    checker.checks("ulid")(lambda v: not isinstance(v, str) or ULID_RE.match(v) is not None)
    checker.checks("ULID")(lambda v: not isinstance(v, str) or ULID_RE.match(v) is not None)
    checker.checks("email")(lambda v: not isinstance(v, str) or "@" in v)
    cls = validators.extend(Draft202012Validator, {"oneOf": _one_of_by_present_keys})
    return cls({"$ref": f"urn:spec#{pointer}"}, registry=registry, format_checker=checker)


_V1_CORPUS = [
    ("merge", {"primary": {"id": "a"}, "secondary": {"email": "b@x.io"}}),
    ("merge", {"primary": {"id": "a", "email": "a@x.io"}, "secondary": {"id": "b"}}),
    ("merge", {"primary": {"id": 1}, "secondary": {"cio_id": "c"}}),
    ("merge", {"primary": {}, "secondary": {"id": "b"}}),
    ("merge", {"primary": {"other": "x"}, "secondary": {"id": "b"}}),
    ("identify", {"email": "a@x.io", "score": 1.0, "ok": True}),
    ("identify", {"score": 1.5}),
    ("trackAnonymous", {"name": "x", "type": "page", "anonymous_id": "d"}),
    ("trackAnonymous", {"name": "x", "type": "invite"}),
    ("track", {"name": "x", "type": "screen", "anonymous_id": "d", "timestamp": 1.0}),
]


def test_the_validator_agrees_with_the_documented_reading(validator: SpecValidator) -> None:
    """jsonschema-rs on the rewritten document decides as python jsonschema does on the
    unmodified one with the module's ``oneOf`` reading, on every body of the corpus."""
    cases: list[tuple[str, Any]] = []
    for item in _corpus():
        cases += [(p, item) for p in {validator.item_pointer(item), BATCH_ITEMS_POINTER}]
    related = _event(action="add_relationships", cio_relationships=[{"identifiers": {"id": "o"}}])
    for item in (related, {**related, "cio_relationships": [{"identifiers": {"email": 5}}]}):
        cases.append(("/components/schemas/object_add_relationships", item))
    operations = {
        op["operationId"]: (path.replace("~", "~0").replace("/", "~1"), method)
        for path, ops in load_spec()["paths"].items()
        for method, op in ops.items()
        if isinstance(op, dict) and "operationId" in op
    }
    for operation_id, body in _V1_CORPUS:
        escaped, method = operations[operation_id]
        cases.append(
            (f"/paths/{escaped}/{method}/requestBody/content/application~1json/schema", body)
        )
    checked = 0
    for pointer, body in cases:
        expected = _reference_validator(pointer).is_valid(body)
        assert validator.schema_validator(pointer).is_valid(body) == expected, (pointer, body)
        checked += 1
    assert checked > 500


def test_a_1000_item_batch_validates_quickly(validator: SpecValidator) -> None:
    kinds = [p.values[0] for p in CONNECTOR_ITEMS[:5]]
    body = {"batch": [kinds[i % len(kinds)] for i in range(1000)]}
    assert validator.validate_request("batch", body) == []
    started = time.perf_counter()
    assert validator.validate_request("batch", body) == []
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"1000 items took {elapsed * 1000:.0f} ms"  # aim: < 100 ms
