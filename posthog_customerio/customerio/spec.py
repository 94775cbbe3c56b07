"""Validation against Customer.io's official Track API OpenAPI document.

The document (OpenAPI 3.1, i.e. JSON Schema 2020-12) ships unmodified in ``data/``. The
sandbox checks every request with it, and tests use it to prove that every request the
connector sends would be accepted. Validation is ``jsonschema-rs`` (the schemas compiled to
native code, ~1 µs per batch item); every check is a ``$ref`` into the document.

How the document is read, where reading it literally would reject what Customer.io accepts:

- **Dispatch.** A v2 envelope item is checked against the component schema its
  ``(type, action)`` names, as the spec's own ``discriminator`` says; unknown shapes fall back
  to the batch item ``anyOf`` so their errors still come from the spec. A v1 event body is
  checked against the ``oneOf`` alternative its ``type`` names: the spec's "standard"
  anonymous event also allows ``page``/``screen``, so a valid anonymous page view would
  match two alternatives.
- **oneOf by present keys.** Several ``oneOf`` unions of identifiers (v1 merge, object
  relationships) declare ``properties`` but no ``required``, so ``{"id": "42"}`` matches all
  of them. When more than one alternative matches an object, the union still passes if
  exactly one of the matching alternatives declares a key the object has. Unions with
  ``required`` (person identifiers) are unaffected: ``{"id", "email"}`` still fails. This is
  plain JSON Schema once the union is rewritten (``_lenient``), so the validator needs no
  custom keyword.
- **Anonymous identifiers.** A person ``event``/``page``/``screen`` whose ``identifiers`` are
  exactly ``{"anonymous_id": ...}`` is checked as if that identifier were ``{"id": ...}`` with
  the same value, so everything else in the item (and the value's type) still meets the
  document. The document lists only ``id``/``email``/``phone``/``cio_id``, but Customer.io's
  own Segment destination sends this shape in v2 batches (segmentio/action-destinations,
  ``packages/destination-actions/src/destinations/customerio/utils.ts``,
  ``resolveIdentifiers``); problems name ``identifiers.anonymous_id``.
- **Formats.** ``ulid`` (event ids) and ``email`` are asserted, as the ``pattern`` each
  implies (a pattern runs inside the validator; a Python format callback adds 1–2 µs per
  item); other formats are notes.

Importing this module starts nothing; the document is read on first use.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import quote

import jsonschema_rs
import orjson
from jsonschema_rs import ValidationError, ValidationErrorKind

__all__ = ["SpecProblem", "SpecValidator", "default_validator", "load_spec"]

SPEC_URI = "urn:customerio:journeys-track"
_MAX_MESSAGE_CHARS = 300

# Asserted formats -> (the pattern a valid value matches, the name errors use). ULIDs are
# Crockford base32 and the first character is at most 7 (128 bits); an email has an "@".
_FORMAT_PATTERNS: dict[str, tuple[str, str]] = {
    "ulid": ("^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$", "ULID"),
    "ULID": ("^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$", "ULID"),
    "email": ("@", "email"),
}
_PATTERN_NAMES = dict(_FORMAT_PATTERNS.values())

# v2 envelope (type, action) -> the component schema the spec's discriminator selects.
_ITEM_SCHEMAS: dict[tuple[str, str], str] = {
    ("person", "identify"): "identify_person",
    ("person", "delete"): "person_delete",
    ("person", "event"): "person_event",
    ("person", "screen"): "person_screen",
    ("person", "page"): "person_page",
    ("person", "add_relationships"): "person_add_relationships",
    ("person", "delete_relationships"): "person_delete_relationships",
    ("person", "add_device"): "person_add_device",
    ("person", "delete_device"): "person_delete_device",
    ("person", "merge"): "person_merge",
    ("person", "suppress"): "person_suppress",
    ("person", "unsuppress"): "person_unsuppress",
    ("object", "identify"): "object_identify",
    ("object", "identify_anonymous"): "object_identify_anonymous",
    ("object", "delete"): "object_delete",
    ("object", "add_relationships"): "object_add_relationships",
    ("object", "delete_relationships"): "object_delete_relationships",
    ("delivery", "event"): "delivery_operations",
}

# v1 event bodies: operationId -> schema of the body, and its oneOf alternative per ``type``.
_V1_EVENT_SCHEMAS: dict[str, str] = {
    "track": "eventsRequest",
    "trackAnonymous": "anonymousEventsRequest",
}
_V1_EVENT_ALTERNATIVE = {"event": 0, "page": 1, "screen": 2}

# Person actions that may name an anonymous visitor by ``{"anonymous_id"}`` (see above).
_ANONYMOUS_ACTIONS = frozenset({("person", "event"), ("person", "page"), ("person", "screen")})

BATCH_ITEMS_POINTER = (
    "/paths/~1api~1v2~1batch/post/requestBody/content/application~1json/schema"
    "/properties/batch/items"
)


@functools.cache
def load_spec() -> dict[str, Any]:
    """The official Track API document, parsed once per process."""
    data = resources.files("posthog_customerio.customerio").joinpath(
        "data/journeys-track.openapi.json"
    )
    spec = orjson.loads(data.read_bytes())
    if not isinstance(spec, dict):  # pragma: no cover - the shipped file is an object
        raise TypeError("journeys-track.openapi.json is not a JSON object")
    return spec


# ---------------------------------------------------------------------------------------
# The document as the validator reads it: the readings above, as plain JSON Schema.


def _declared(alternative: object) -> list[str]:
    """The property names an alternative declares itself (not through ``$ref``)."""
    if not isinstance(alternative, dict):
        return []
    properties = alternative.get("properties")
    return list(properties) if isinstance(properties, dict) else []


def _keyed(alternative: object) -> bool:
    """Whether matching the alternative implies having one of its declared keys."""
    return (
        isinstance(alternative, dict)
        and alternative.get("type") == "object"
        and bool(set(alternative.get("required", ())) & set(_declared(alternative)))
    )


def _lenient_one_of(alternatives: list[Any]) -> dict[str, Any] | None:
    """``oneOf`` resolved by present keys, or None where it reads the same as ``oneOf``.

    Valid iff exactly one alternative matches, or exactly one matches *and* declares a key
    the object has (if that holds, at least one matches, so it covers "several match and one
    of them declares a present key").
    """
    if all(_keyed(a) for a in alternatives) or not any(_declared(a) for a in alternatives):
        return None  # matching already implies a declared key, or no alternative declares one
    with_key = [
        {
            "allOf": [a],
            "type": "object",
            "anyOf": [{"required": [name]} for name in _declared(a)],
        }
        for a in alternatives
        if _declared(a)
    ]
    return {"anyOf": [{"oneOf": alternatives}, {"oneOf": with_key}]}


def _lenient(node: Any) -> Any:
    """A copy of ``node`` with ambiguous unions and asserted formats rewritten (see above)."""
    if isinstance(node, list):
        return [_lenient(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _lenient(v) for k, v in node.items()}
    fmt = out.get("format")
    if isinstance(fmt, str) and fmt in _FORMAT_PATTERNS and "pattern" not in out:
        out["pattern"] = _FORMAT_PATTERNS[fmt][0]
    alternatives = out.get("oneOf")
    if isinstance(alternatives, list):
        union = _lenient_one_of(alternatives)
        if union is not None:
            del out["oneOf"]
            out.setdefault("allOf", []).append(union)
    return out


# ---------------------------------------------------------------------------------------
# Messages.


def _json_path(parts: Iterable[str | int]) -> str:
    path = "$"
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _failed_union(error: ValidationError) -> bool:
    return isinstance(error.kind, ValidationErrorKind.AnyOf | ValidationErrorKind.OneOfNotValid)


def _nearest(error: ValidationError) -> ValidationError:
    """For a failed anyOf/oneOf, the error of the alternative that came closest: the one
    whose errors reach deepest into the body, then the one with fewest errors."""
    if not _failed_union(error):
        return error
    context: list[list[ValidationError]] = getattr(error.kind, "context", [])
    best: tuple[int, int, list[ValidationError]] | None = None
    for errors in context:
        leaves = [_nearest(e) for e in errors]
        if leaves:
            score = (max(len(e.instance_path) for e in leaves), -len(leaves), leaves)
            if best is None or score[:2] > best[:2]:
                best = score
    if best is None:
        return error
    depth, _, leaves = best
    return next(e for e in leaves if len(e.instance_path) == depth)


def _message(error: ValidationError) -> str:
    kind = error.kind
    if isinstance(kind, ValidationErrorKind.Pattern) and kind.pattern in _PATTERN_NAMES:
        return f'{orjson.dumps(error.instance).decode()} is not a "{_PATTERN_NAMES[kind.pattern]}"'
    return error.message


@dataclass(frozen=True, slots=True)
class SpecProblem:
    """One reason a body does not validate.

    ``field`` is a dotted path inside the body (``""`` for the body itself), as Customer.io
    names fields in its errors; ``path`` is the same place as a JSON path (``$.name``).
    """

    field: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _problem(error: ValidationError) -> SpecProblem:
    """The problem at the error's own place; for a failed union, what came closest to
    passing (a bare "not valid under any of the schemas" says nothing)."""
    nearest = _nearest(error)
    if nearest.instance_path == error.instance_path:
        message = _message(nearest)
    else:
        where = _json_path(nearest.instance_path)
        message = f"matches no alternative; nearest: {where}: {_message(nearest)}"
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[: _MAX_MESSAGE_CHARS - 3] + "..."
    field = ".".join(str(p) for p in error.instance_path)
    return SpecProblem(field=field, path=_json_path(error.instance_path), message=message)


def _sort_key(error: ValidationError) -> tuple[str, ...]:
    return tuple(str(p) for p in error.instance_path)


def _item_kind(item: object) -> tuple[str, str] | None:
    """The envelope item's ``(type, action)`` if the spec's discriminator names it."""
    if isinstance(item, dict):
        kind, action = item.get("type"), item.get("action")
        if isinstance(kind, str) and isinstance(action, str) and (kind, action) in _ITEM_SCHEMAS:
            return kind, action
    return None


def _problems(validator: jsonschema_rs.Validator, body: object) -> list[SpecProblem]:
    return [_problem(e) for e in sorted(validator.iter_errors(body), key=_sort_key)]


def _anonymous_as_id(item: dict[str, Any]) -> dict[str, Any] | None:
    """The item with ``{"anonymous_id": v}`` read as ``{"id": v}``, if it names one."""
    identifiers = item.get("identifiers")
    if isinstance(identifiers, dict) and len(identifiers) == 1 and "anonymous_id" in identifiers:
        return {**item, "identifiers": {"id": identifiers["anonymous_id"]}}
    return None


def _renamed(problem: SpecProblem) -> SpecProblem:
    """A problem of the ``id`` stand-in, named after the ``anonymous_id`` it stands for."""
    if not problem.field.startswith("identifiers"):
        return problem
    return SpecProblem(
        problem.field.replace("identifiers.id", "identifiers.anonymous_id", 1),
        problem.path.replace("$.identifiers.id", "$.identifiers.anonymous_id", 1),
        problem.message.replace("$.identifiers.id", "$.identifiers.anonymous_id"),
    )


class SpecValidator:
    """Validators for request bodies and batch items, built once from the document.

    ``check_*`` return structured problems (the sandbox uses ``field``); ``validate_*``
    return messages naming the JSON path of each problem. An empty list means valid.
    """

    def __init__(self, spec: dict[str, Any] | None = None) -> None:
        self._spec = spec if spec is not None else load_spec()
        self._registry = jsonschema_rs.Registry(
            [(SPEC_URI, _lenient(self._spec))], draft=jsonschema_rs.Draft202012
        )
        self._validators: dict[str, jsonschema_rs.Validator] = {}
        self._item_validators: dict[tuple[str, str] | None, jsonschema_rs.Validator] = {}
        self._operations = self._index_operations()

    def _index_operations(self) -> dict[str, str]:
        """operationId -> JSON pointer of its JSON request body schema ("" = no body)."""
        found: dict[str, str] = {}
        for path, item in self._spec["paths"].items():
            for method, operation in item.items():
                if not isinstance(operation, dict) or "operationId" not in operation:
                    continue
                content = operation.get("requestBody", {}).get("content", {})
                pointer = ""
                if "application/json" in content:
                    escaped = path.replace("~", "~0").replace("/", "~1")
                    pointer = (
                        f"/paths/{escaped}/{method}/requestBody/content/application~1json/schema"
                    )
                found[operation["operationId"]] = pointer
        return found

    @property
    def operation_ids(self) -> frozenset[str]:
        """Every operationId of the document."""
        return frozenset(self._operations)

    def schema_validator(self, pointer: str) -> jsonschema_rs.Validator:
        """The compiled validator for the schema at ``pointer`` (cached)."""
        validator = self._validators.get(pointer)
        if validator is None:
            validator = jsonschema_rs.Draft202012Validator(
                {"$ref": f"{SPEC_URI}#{quote(pointer, safe='/~')}"}, registry=self._registry
            )
            self._validators[pointer] = validator
        return validator

    def _check(self, pointer: str, body: object) -> list[SpecProblem]:
        validator = self.schema_validator(pointer)
        if validator.is_valid(body):
            return []
        return _problems(validator, body)

    def item_pointer(self, item: object) -> str:
        """The schema an envelope item is checked against: its own, or the full union."""
        key = _item_kind(item)
        return BATCH_ITEMS_POINTER if key is None else f"/components/schemas/{_ITEM_SCHEMAS[key]}"

    def check_batch_item(self, item: object) -> list[SpecProblem]:
        """Problems of one ``/api/v2/batch`` item (or ``/api/v2/entity`` body)."""
        key = _item_kind(item)  # the sandbox's hot path: one lookup, then the validator
        validator = self._item_validators.get(key)
        if validator is None:
            validator = self._item_validators[key] = self.schema_validator(self.item_pointer(item))
        if key in _ANONYMOUS_ACTIONS:
            assert isinstance(item, dict)  # _item_kind found its type and action
            stand_in = _anonymous_as_id(item)
            if stand_in is not None:
                if validator.is_valid(stand_in):
                    return []
                return [_renamed(p) for p in _problems(validator, stand_in)]
        if validator.is_valid(item):
            return []
        return _problems(validator, item)

    def validate_batch_item(self, item: object) -> list[str]:
        """Messages naming the JSON path of each problem; ``[]`` means valid."""
        return [str(p) for p in self.check_batch_item(item)]

    def check_request(self, operation_id: str, body: object) -> list[SpecProblem]:
        """Problems of a request body for ``operation_id`` (KeyError if the spec lacks it)."""
        pointer = self._operations[operation_id]
        if operation_id == "batch" and isinstance(body, dict):
            items = body.get("batch")
            if isinstance(items, list):
                problems: list[SpecProblem] = []
                for index, item in enumerate(items):
                    for p in self.check_batch_item(item):
                        field = f"batch[{index}]" + (f".{p.field}" if p.field else "")
                        problems.append(
                            SpecProblem(field, f"$.batch[{index}]{p.path[1:]}", p.message)
                        )
                return problems
        if operation_id == "entity" and _item_kind(body) is not None:
            return self.check_batch_item(body)
        if operation_id in _V1_EVENT_SCHEMAS and isinstance(body, dict):
            kind = body.get("type", "event")
            alternative = _V1_EVENT_ALTERNATIVE.get(kind) if isinstance(kind, str) else None
            if alternative is not None:
                schema = _V1_EVENT_SCHEMAS[operation_id]
                return self._check(f"/components/schemas/{schema}/oneOf/{alternative}", body)
        if not pointer:
            return []
        return self._check(pointer, body)

    def validate_request(self, operation_id: str, body: object) -> list[str]:
        """Messages naming the JSON path of each problem; ``[]`` means valid."""
        return [str(p) for p in self.check_request(operation_id, body)]


@functools.cache
def default_validator() -> SpecValidator:
    """One shared validator per process: its schemas are compiled once."""
    return SpecValidator()
