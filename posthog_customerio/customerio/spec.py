"""Validation against Customer.io's official Track API OpenAPI document.

The document (OpenAPI 3.1, i.e. JSON Schema 2020-12) ships unmodified in ``data/``. The
sandbox checks every request with it, and tests use it to prove that every request the
connector sends would be accepted, so nothing here is hand-written schema: every check is a
``$ref`` into the document, resolved through a ``referencing`` registry.

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
  ``required`` (person identifiers) are unaffected: ``{"id", "email"}`` still fails.
- **Formats.** ``ulid`` (event ids) and ``email`` are asserted; other formats are notes.

Speed: jsonschema costs ~200 µs per envelope item, too slow for a sandbox that takes tens of
thousands of events per second. So each schema is also compiled into plain Python predicates
(for the handful of keywords the Track schemas use, refusing any other keyword); the
predicate decides valid or not, and only an invalid body is run through jsonschema, which
writes the messages. Tests check both give the same verdict.

Importing this module starts nothing; the document is read on first use.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = ["SpecProblem", "SpecValidator", "default_validator", "load_spec"]

SPEC_URI = "urn:customerio:journeys-track"
_MAX_MESSAGE_CHARS = 300

# ULIDs are Crockford base32; the first character is at most 7 (128 bits).
_ULID_RE = re.compile(r"\A[0-7][0-9A-HJKMNP-TV-Z]{25}\Z", re.IGNORECASE)

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


def _is_ulid(value: object) -> bool:
    return not isinstance(value, str) or _ULID_RE.match(value) is not None


def _is_email(value: object) -> bool:
    return not isinstance(value, str) or "@" in value


_FORMATS: dict[str, Callable[[object], bool]] = {
    "ulid": _is_ulid,
    "ULID": _is_ulid,
    "email": _is_email,
}


def _format_checker() -> FormatChecker:
    checker = FormatChecker(formats=())
    for name, check in _FORMATS.items():
        checker.checks(name)(check)
    return checker


def _declares_present_key(alternative: object, instance: Mapping[str, Any]) -> bool:
    if not isinstance(alternative, dict):
        return False
    properties = alternative.get("properties")
    return isinstance(properties, dict) and any(key in instance for key in properties)


def _one_of(
    validator: Any, one_of: list[Any], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    """``oneOf`` that resolves several matches by the keys present (see module doc)."""
    errors: list[ValidationError] = []
    matched: list[Any] = []
    for index, alternative in enumerate(one_of):
        found = list(validator.descend(instance, alternative, schema_path=index))
        if found:
            errors.extend(found)
        else:
            matched.append(alternative)
    if not matched:
        yield ValidationError(
            f"{_short(instance)} is not valid under any of the given schemas", context=errors
        )
    elif len(matched) > 1:
        if (
            isinstance(instance, dict)
            and sum(_declares_present_key(a, instance) for a in matched) == 1
        ):
            return
        titles = ", ".join(
            str(a.get("title", "?")) if isinstance(a, dict) else "?" for a in matched
        )
        yield ValidationError(f"{_short(instance)} matches more than one of: {titles}")


_TrackValidator = validators.extend(Draft202012Validator, {"oneOf": _one_of})


def _short(instance: object) -> str:
    text = repr(instance)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------------------
# Compiled predicates: the same verdict as _TrackValidator, ~50x faster.

Check = Callable[[Any], bool]

_ANNOTATIONS = frozenset(
    {
        "$schema", "$id", "$comment", "title", "description", "example", "examples",
        "default", "deprecated", "readOnly", "writeOnly", "discriminator", "externalDocs",
        "xml", "contentMediaType", "contentEncoding",
    }
)  # fmt: skip
_TYPES: dict[str, Check] = {
    "object": lambda v: type(v) is dict,
    "array": lambda v: type(v) is list,
    "string": lambda v: type(v) is str,
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
    "number": lambda v: type(v) is int or type(v) is float,
    "integer": lambda v: type(v) is int or (type(v) is float and v.is_integer()),
}


class _Unsupported(Exception):
    """A keyword the compiler does not know: that schema is checked by jsonschema alone."""


def _always(_: Any) -> bool:
    return True


def _json_equal(one: Any, two: Any) -> bool:
    if isinstance(one, bool) or isinstance(two, bool):
        return isinstance(one, bool) and isinstance(two, bool) and one == two
    if isinstance(one, list) and isinstance(two, list):
        return len(one) == len(two) and all(map(_json_equal, one, two))
    if isinstance(one, dict) and isinstance(two, dict):
        return one.keys() == two.keys() and all(_json_equal(one[k], two[k]) for k in one)
    return bool(one == two)


class _Compiler:
    """Turns the document's schemas into predicates, memoised by ``$ref`` target."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self._spec = spec
        self._refs: dict[str, Check] = {}

    def pointer(self, pointer: str) -> Check:
        """Compile the schema at a JSON pointer of the document (raises _Unsupported)."""
        cached = self._refs.get(pointer)
        if cached is not None:
            return cached
        # Forward reference, so recursive schemas compile to a loop, not a recursion.
        slot: list[Check] = []
        self._refs[pointer] = lambda v: slot[0](v)
        try:
            check = self.schema(self._resolve(pointer))
        except _Unsupported:
            del self._refs[pointer]
            raise
        slot.append(check)
        self._refs[pointer] = check
        return check

    def _resolve(self, pointer: str) -> Any:
        node: Any = self._spec
        for token in pointer.lstrip("/").split("/"):
            token = token.replace("~1", "/").replace("~0", "~")
            node = node[int(token)] if isinstance(node, list) else node[token]
        return node

    def schema(self, schema: Any) -> Check:
        if schema is True:
            return _always
        if schema is False:
            return _never
        if not isinstance(schema, dict):
            raise _Unsupported(repr(schema))
        checks: list[Check] = []
        object_checks: list[Check] = []
        for key, value in schema.items():
            if key in _ANNOTATIONS or key.startswith("x-"):
                continue
            if key == "$ref":
                if not isinstance(value, str) or not value.startswith("#"):
                    raise _Unsupported(f"$ref {value!r}")
                checks.append(self.pointer(value[1:]))
            elif key == "type":
                names = [value] if isinstance(value, str) else list(value)
                checks.append(_any([_TYPES[n] for n in names]))
            elif key == "enum":
                checks.append(_enum(list(value)))
            elif key == "const":
                checks.append(_enum([value]))
            elif key == "format":
                test = _FORMATS.get(value)
                if test is not None:
                    checks.append(test)
            elif key == "allOf":
                checks.append(_all([self.schema(s) for s in value]))
            elif key == "anyOf":
                checks.append(_any([self.schema(s) for s in value]))
            elif key == "oneOf":
                checks.append(_one_of_check([(self.schema(a), a) for a in value]))
            elif key == "required":
                object_checks.append(_required(list(value)))
            elif key == "maxProperties":
                object_checks.append(_count(0, int(value)))
            elif key == "minProperties":
                object_checks.append(_count(int(value), None))
            elif key in ("properties", "additionalProperties"):
                pass  # compiled together below
            elif key == "items":
                item = self.schema(value)
                if item is not _always:
                    checks.append(_items(item))
            else:
                raise _Unsupported(key)
        declared = schema.get("properties", {})
        compiled = {n: self.schema(s) for n, s in declared.items()}
        compiled = {n: c for n, c in compiled.items() if c is not _always}
        additional = self.schema(schema.get("additionalProperties", True))
        if compiled:
            object_checks.append(_properties(tuple(compiled.items())))
        if additional is not _always:
            object_checks.append(_additional(frozenset(declared), additional))
        if object_checks:
            checks.append(_if_object(_all(object_checks)))
        return _all(checks)


def _never(_: Any) -> bool:
    return False


# The combinators below use plain loops, not all()/any() over generators: this is the
# sandbox's hot path and a generator costs about twice as much.


def _all(checks: list[Check]) -> Check:
    checks = [c for c in checks if c is not _always]
    if not checks:
        return _always
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda v: first(v) and second(v)

    def check(v: Any) -> bool:
        for c in checks:  # noqa: SIM110
            if not c(v):
                return False
        return True

    return check


def _any(checks: list[Check]) -> Check:
    if len(checks) == 1:
        return checks[0]

    def check(v: Any) -> bool:
        for c in checks:  # noqa: SIM110
            if c(v):
                return True
        return False

    return check


def _enum(options: list[Any]) -> Check:
    if all(isinstance(o, str) for o in options):
        strings = frozenset(options)
        return lambda v: isinstance(v, str) and v in strings
    return lambda v: any(_json_equal(v, o) for o in options)


def _count(low: int, high: int | None) -> Check:
    return lambda d: len(d) >= low and (high is None or len(d) <= high)


def _required(names: list[str]) -> Check:
    def check(d: dict[str, Any]) -> bool:
        for n in names:  # noqa: SIM110
            if n not in d:
                return False
        return True

    return check


def _properties(compiled: tuple[tuple[str, Check], ...]) -> Check:
    def check(d: dict[str, Any]) -> bool:
        for name, c in compiled:  # noqa: SIM110
            if name in d and not c(d[name]):
                return False
        return True

    return check


def _additional(declared: frozenset[str], additional: Check) -> Check:
    def check(d: dict[str, Any]) -> bool:
        for k, v in d.items():  # noqa: SIM110
            if k not in declared and not additional(v):
                return False
        return True

    return check


def _if_object(inner: Check) -> Check:
    return lambda v: type(v) is not dict or inner(v)


def _items(item: Check) -> Check:
    def check(v: Any) -> bool:
        if isinstance(v, list):
            for x in v:
                if not item(x):
                    return False
        return True

    return check


def _one_of_check(subs: list[tuple[Check, Any]]) -> Check:
    def check(v: Any) -> bool:
        matched = [a for c, a in subs if c(v)]
        if len(matched) == 1:
            return True
        if len(matched) > 1 and isinstance(v, dict):
            return sum(_declares_present_key(a, v) for a in matched) == 1
        return False

    return check


# ---------------------------------------------------------------------------------------


def _json_path(error: ValidationError) -> str:
    path = "$"
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


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
    # For a failed anyOf/oneOf, the most relevant sub-error says far more than
    # "is not valid under any of the given schemas".
    if error.context:
        deepest = best_match(error.context)
        if deepest is not None and len(deepest.absolute_path) >= len(error.absolute_path):
            error = deepest
    message = error.message
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[: _MAX_MESSAGE_CHARS - 3] + "..."
    field = ".".join(str(p) for p in error.absolute_path)
    return SpecProblem(field=field, path=_json_path(error), message=message)


def _sort_key(error: ValidationError) -> tuple[str, ...]:
    return tuple(str(p) for p in error.absolute_path)


class SpecValidator:
    """Validators for request bodies and batch items, built once from the document.

    ``check_*`` return structured problems (the sandbox uses ``field``); ``validate_*``
    return messages naming the JSON path of each problem. An empty list means valid.
    """

    def __init__(self, spec: dict[str, Any] | None = None) -> None:
        self._spec = spec if spec is not None else load_spec()
        resource = Resource.from_contents(self._spec, default_specification=DRAFT202012)
        self._registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)
        self._formats = _format_checker()
        self._compiler = _Compiler(self._spec)
        self._validators: dict[str, Any] = {}
        self._predicates: dict[str, Check | None] = {}
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

    def schema_validator(self, pointer: str) -> Any:
        """The jsonschema validator for the schema at ``pointer`` (cached)."""
        validator = self._validators.get(pointer)
        if validator is None:
            validator = _TrackValidator(
                {"$ref": f"{SPEC_URI}#{pointer}"},
                registry=self._registry,
                format_checker=self._formats,
            )
            self._validators[pointer] = validator
        return validator

    def predicate(self, pointer: str) -> Check | None:
        """The compiled verdict for the schema at ``pointer``; None if it cannot compile."""
        if pointer not in self._predicates:
            try:
                self._predicates[pointer] = self._compiler.pointer(pointer)
            except (_Unsupported, KeyError, TypeError, ValueError):
                self._predicates[pointer] = None
        return self._predicates[pointer]

    def _check(self, pointer: str, body: object) -> list[SpecProblem]:
        predicate = self.predicate(pointer)
        validator = self.schema_validator(pointer)
        if predicate(body) if predicate is not None else validator.is_valid(body):
            return []
        problems = [_problem(e) for e in sorted(validator.iter_errors(body), key=_sort_key)]
        # Unreachable while the tests keep both verdicts equal; never report "invalid, []".
        return problems or [SpecProblem("", "$", "rejected by the compiled schema check")]

    def item_pointer(self, item: object) -> str:
        """The schema an envelope item is checked against: its own, or the full union."""
        if isinstance(item, dict):
            kind, action = item.get("type"), item.get("action")
            if isinstance(kind, str) and isinstance(action, str):
                name = _ITEM_SCHEMAS.get((kind, action))
                if name is not None:
                    return f"/components/schemas/{name}"
        return BATCH_ITEMS_POINTER

    def check_batch_item(self, item: object) -> list[SpecProblem]:
        """Problems of one ``/api/v2/batch`` item (or ``/api/v2/entity`` body)."""
        return self._check(self.item_pointer(item), item)

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
        if operation_id == "entity" and self.item_pointer(body) != BATCH_ITEMS_POINTER:
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
    """One shared validator per process: its compiled checks are built once."""
    return SpecValidator()
