"""Shape-agnostic normalisation: one PostHog event object (webhook, plugin runtime, export row)
into a ``PostHogEvent``.

Every source funnels through ``event_from_mapping`` so that PostHog's many payload shapes are
known in exactly one place. It is lenient about shape (JSON strings for the export's
``properties``/``person_properties``/``set``/``set_once``, legacy top-level ``$set``, numeric
distinct_ids). One bad field never loses an event, since PostHog does not retry a 4xx: an
unusable ``timestamp`` falls back as a missing one does, an unusable ``$set``/``$set_once``/
``$unset`` (or export ``set``/``set_once``), ``properties``, ``person`` or person properties
is dropped, a ``uuid`` that is no string is derived from content, each with a note that starts
with the field's name. Only what the event cannot be read without raises ``InputError`` naming
the field's path: the event name and the distinct_id.
"""

from __future__ import annotations

import json
import math
import re
import uuid as _uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard, TypeVar

import orjson

from posthog_customerio.errors import InputError
from posthog_customerio.sources.event import JSON, PostHogEvent

# uuid5 namespace for events that arrive without a uuid (fixed forever: changing it would
# change the derived event ids and so defeat deduplication).
UUID_NAMESPACE = _uuid.UUID("8b1f4a52-3c0e-5d8e-9a57-6f0c2b1d9e43")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_MAX_ABS_MS = 253_402_300_800_000  # 10000-01-01: beyond it a "timestamp" is garbage
_SECONDS_BELOW = 100_000_000_000  # a number under 1e11 is seconds (1e11 ms is 1973)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_LIFTED = ("$set", "$set_once", "$unset")
_T = TypeVar("_T")


def parse_timestamp_ms(value: object) -> int | None:
    """Unix milliseconds from ISO 8601 (``Z``, offsets, space separator; naive = UTC) or a
    number of seconds or milliseconds (told apart by magnitude); ``None`` if unusable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        # ":" (in every ISO time) rules a number out before the slower regex.
        if ":" not in text and _NUMBER.fullmatch(text):
            return parse_timestamp_ms(
                float(text) if "." in text or "e" in text.lower() else int(text)
            )
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return (dt - _EPOCH) // _MS
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        ms = int(value) if abs(value) >= _SECONDS_BELOW else round(value * 1000)
        return ms if abs(ms) < _MAX_ABS_MS else None
    return None


NUL_ESCAPE = b"\\u0000"  # how U+0000 appears in JSON text: a cheap test on the raw bytes


def replace_nul(value: _T) -> _T:
    """``value`` (parsed JSON, changed in place) with U+0000 replaced by U+FFFD in every
    string and key.

    PostgreSQL's ``text`` cannot hold U+0000: a distinct_id, ``$anon_distinct_id``, alias or
    uuid holding one failed the whole group commit, so that body and every body committed
    with it were answered 503, again each time PostHog retried. Replacing it before any store
    keeps both stores, and Customer.io, seeing the same ids. Iterative: no recursion limit.
    """
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value  # type: ignore[return-value]
    _replace_in_strings(value, _NUL.search, _NUL.sub)
    return value


_NUL = re.compile("\x00")
_SURROGATE = re.compile("[\ud800-\udfff]")


def replace_surrogates(value: object) -> bool:
    """Replace lone UTF-16 surrogates (which only the standard ``json`` parser lets through)
    by U+FFFD in every string and key of ``value``, in place; whether there was one.

    No store, no JSON encoder and no HTTP client can carry a lone surrogate (it is no Unicode
    scalar value), so it is replaced where NUL is, before anything else sees the event.
    """
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    return _replace_in_strings(value, _SURROGATE.search, _SURROGATE.sub)


def _replace_in_strings(
    value: object,
    search: Callable[[str], object],
    sub: Callable[[str, str], str],
) -> bool:
    """Replace what ``search`` finds by U+FFFD in every string and key of a parsed JSON
    container (in place); whether anything was replaced. Iterative: no recursion limit."""
    found = False
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        if type(node) is dict:
            for key in [k for k in node if search(k)]:
                node[sub("\ufffd", key)] = node.pop(key)
                found = True
            items: Any = node.items()
        elif type(node) is list:
            items = enumerate(node)
        else:
            continue
        for key, item in list(items):
            if type(item) is str:
                if search(item):
                    node[key] = sub("\ufffd", item)
                    found = True
            elif type(item) is dict or type(item) is list:
                stack.append(item)
    return found


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _is_mapping(value: object) -> TypeGuard[Mapping[Any, Any]]:
    """``isinstance(value, Mapping)``, without the slow ABC check for a dict or ``None``."""
    return type(value) is dict or (value is not None and isinstance(value, Mapping))


# The helpers below take the parent ``path`` and the field's ``key`` and join them only to name
# the field in an error: building every field's path up front was a visible cost per event.


def _object(value: object, path: str, key: str) -> JSON | None:
    """A JSON object, also from its JSON-string form (export rows); ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        text = value
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise InputError(_join(path, key), "is a string but not valid JSON") from exc
        if value is None:
            return None
        if "\\u0000" in text:  # JSON inside a JSON string (export rows)
            value = replace_nul(value)
    if isinstance(value, dict):
        return value
    if isinstance(value, Mapping):
        return dict(value)
    raise InputError(_join(path, key), f"must be an object, not {_kind(value)}")


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _distinct_id(value: object, path: str, key: str) -> str:
    if isinstance(value, str):
        if value.strip():
            return value
        raise InputError(_join(path, key), "must not be empty")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    what = "is missing" if value is None else f"must be a string or a number, not {_kind(value)}"
    raise InputError(_join(path, key), what)


def _unset(value: object, path: str, key: str) -> list[str]:
    """``$unset`` is a list of keys (posthog-js); an object's keys are accepted too."""
    if value is None:
        return []
    if isinstance(value, str):
        parsed = _object_or_list(value, _join(path, key))
        return _unset(parsed, path, key)
    if isinstance(value, Mapping):
        return [str(k) for k in value]
    if isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                what = f"must hold only strings ([{i}] is {_kind(item)})"
                raise InputError(_join(path, key), what)
        return value
    raise InputError(_join(path, key), f"must be an array of keys, not {_kind(value)}")


def _object_or_list(value: str, path: str) -> object:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InputError(path, "is a string but not valid JSON") from exc


def _update(
    parse: Callable[[object, str, str], _T], value: object, key: str, notes: list[str]
) -> _T | None:
    """A field the event can do without (``properties``, a person update, the person's
    properties) parsed, or dropped with a note saying why (``None``): the rest of the event
    is still worth sending."""
    if value is None:  # the usual absent field
        return None
    try:
        return parse(value, "", key)
    except InputError as exc:
        notes.append(f"{exc.field} {exc.message}: dropped")
        return None


def _derived_uuid(obj: Mapping[str, Any]) -> str:
    """uuid5 over the canonical JSON of the event: the same content always gets the same uuid."""
    try:
        canonical = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return str(_uuid.uuid5(UUID_NAMESPACE, canonical.decode("utf-8", "replace")))


def _merged(legacy: JSON | None, export: JSON | None, props: JSON | None) -> JSON:
    """The non-empty parts merged, later ones winning; a single part is returned as it is."""
    if not legacy and not export:  # the usual case: only ``properties.$set``, or nothing
        return props or {}
    present = [p for p in (legacy, export, props) if p]
    if len(present) == 1:
        return present[0]
    merged: JSON = {}
    for part in present:
        merged.update(part)
    return merged


def _groups(value: object) -> dict[str, str]:
    if not _is_mapping(value):
        return {}
    return {
        str(k): str(v)
        for k, v in value.items()
        if isinstance(v, str | int | float) and not isinstance(v, bool) and v != ""
    }


def event_from_mapping(
    obj: Mapping[str, Any],
    *,
    person: object,
    received_ms: int,
    path: str,
) -> PostHogEvent:
    """Normalise one event object; ``path`` prefixes every field named in an ``InputError``.

    ``person`` is the webhook's ``person`` object (its ``properties`` become
    ``person_properties``; one that is no object is ignored with a note); without it
    (``None``), the event's own ``person_properties`` are used.
    Precedence for person updates: legacy top-level ``$set`` < export ``set`` <
    ``properties.$set`` (likewise ``$set_once``).
    """
    if not _is_mapping(obj):
        raise InputError(path, f"must be an event object, not {_kind(obj)}")
    notes: list[str] = []

    name = obj.get("event")
    if not isinstance(name, str) or not name:
        what = "is missing" if name is None else f"must be a non-empty string, not {_kind(name)}"
        if name == "":
            what = "must not be empty"
        raise InputError(_join(path, "event"), what)
    distinct_id = _distinct_id(obj.get("distinct_id"), path, "distinct_id")

    properties = _update(_object, obj.get("properties"), "properties", notes) or {}
    # Its note is the only one so far. Unusable (not merely absent): the mapper then treats
    # the sender as of unknown identity (docs/mapping.md).
    properties_dropped = bool(notes)

    set_ = _merged(
        _update(_object, obj.get("$set"), "$set", notes),
        _update(_object, obj.get("set"), "set", notes),
        _update(_object, properties.get("$set"), "properties.$set", notes),
    )
    set_once = _merged(
        _update(_object, obj.get("$set_once"), "$set_once", notes),
        _update(_object, obj.get("set_once"), "set_once", notes),
        _update(_object, properties.get("$set_once"), "properties.$set_once", notes),
    )
    unset = (_update(_unset, obj.get("$unset"), "$unset", notes) or []) + (
        _update(_unset, properties.get("$unset"), "properties.$unset", notes) or []
    )
    if not properties.keys().isdisjoint(_LIFTED):
        properties = {k: v for k, v in properties.items() if k not in _LIFTED}

    if person is None:
        person_properties = _update(
            _object, obj.get("person_properties"), "person_properties", notes
        )
    elif _is_mapping(person):
        person_properties = _update(_object, person.get("properties"), "person.properties", notes)
    else:
        notes.append(f"person must be an object, not {_kind(person)}: ignored")
        person_properties = None

    raw_uuid = obj.get("uuid")
    if isinstance(raw_uuid, str) and raw_uuid:
        uuid = raw_uuid
    else:
        uuid = _derived_uuid(obj)
        missing = raw_uuid is None or raw_uuid == ""
        notes.append(
            "uuid derived from content" if missing else "uuid is not a string: derived from content"
        )

    raw_ts = obj.get("timestamp")
    if raw_ts is None or raw_ts == "":
        timestamp_ms = _fallback_timestamp(obj, properties, received_ms, notes, "missing")
    else:
        parsed = parse_timestamp_ms(raw_ts)
        if parsed is None:
            timestamp_ms = _fallback_timestamp(obj, properties, received_ms, notes, "unparseable")
        else:
            timestamp_ms = parsed

    return PostHogEvent(
        uuid=uuid,
        event=name,
        distinct_id=distinct_id,
        timestamp_ms=timestamp_ms,
        properties=properties,
        set=set_,
        set_once=set_once,
        unset=tuple(unset),
        person_properties=person_properties or {},
        groups=_groups(properties.get("$groups")),
        notes=tuple(notes),
        properties_dropped=properties_dropped,
    )


def _fallback_timestamp(
    obj: Mapping[str, Any], properties: JSON, received_ms: int, notes: list[str], why: str
) -> int:
    """No usable ``timestamp`` (``why``: missing, unparseable): ``properties.$time``
    (seconds), then ``sent_at``, then arrival time."""
    was = "" if why == "missing" else f"{why}: "
    t = properties.get("$time")
    if isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t):
        ms = round(t * 1000)
        if abs(ms) < _MAX_ABS_MS:
            notes.append(f"timestamp {was}taken from properties.$time")
            return ms
    sent_at = parse_timestamp_ms(obj.get("sent_at"))
    if sent_at is not None:
        notes.append(f"timestamp {was}taken from sent_at")
        return sent_at
    notes.append(f"timestamp {why}: time of receipt used")
    return received_ms
