"""Customer.io's Track API limits (DESIGN.md §4, from the spec) and the pure functions that
enforce them before anything is sent.

A request over a limit fails in Customer.io (or, worse, is accepted and partly ignored), so
mapping shrinks what it can and drops what it cannot, and counts every change by kind in a
``Counts`` dict that ends up in ``MappingOutcome.truncations`` and the metrics. Nothing here
is silent and nothing here does I/O.

Kinds counted: ``attribute_name`` (attribute dropped: its name is over 150 bytes),
``attribute_value`` (string truncated, or an object/array value dropped), ``attribute_count``
(attributes beyond the 300th dropped), ``event_name`` (truncated), ``event_data`` (keys
dropped to fit 100,000 bytes), ``item_size`` (keys dropped to fit one v2 item),
``id_too_long``.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

import orjson

MAX_ID_BYTES = 150
MAX_ATTRIBUTE_NAME_BYTES = 150
MAX_ATTRIBUTE_VALUE_BYTES = 1000
MAX_ATTRIBUTES_PER_CALL = 300
MAX_EVENT_NAME_BYTES = 100
MAX_EVENT_DATA_BYTES = 100_000
# The spec says "32kb or smaller" per v2 item and "smaller than 500kb" per batch without saying
# whether a kb is 1000 or 1024 bytes; we take the smaller reading.
MAX_ITEM_BYTES = 32_000
MAX_BATCH_BYTES = 500_000

Counts = dict[str, int]


def count(counts: Counts, kind: str, n: int = 1) -> None:
    """Add ``n`` changes of ``kind``."""
    if n:
        counts[kind] = counts.get(kind, 0) + n


def utf8_len(s: str) -> int:
    """Length in bytes as sent (ASCII, the common case, without encoding)."""
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))


def fits_id(s: str) -> bool:
    """Whether ``s`` can be a person id (or an email identifier, or an anonymous id)."""
    return len(s) <= MAX_ID_BYTES // 4 or utf8_len(s) <= MAX_ID_BYTES


def truncate_utf8(s: str, max_bytes: int) -> str:
    """``s`` cut to at most ``max_bytes`` UTF-8 bytes, never inside a character."""
    if len(s) * 4 <= max_bytes:
        return s
    raw = s.encode("utf-8", "surrogatepass")
    if len(raw) <= max_bytes:
        return s
    # A prefix of valid UTF-8 is valid except for a partial last character, which "ignore" drops.
    return raw[:max_bytes].decode("utf-8", "ignore")


def json_size(value: Any) -> int:
    """Serialised size in bytes, as the queue will store and send it."""
    try:
        return len(orjson.dumps(value))
    except TypeError:  # e.g. an int over 64 bits from a non-orjson source
        return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str))


def limit_event_name(name: str, counts: Counts) -> str:
    """Event (and page/screen) names are at most 100 bytes: truncate."""
    cut = truncate_utf8(name, MAX_EVENT_NAME_BYTES)
    if cut is not name:
        count(counts, "event_name")
    return cut


def limit_attributes(attributes: Mapping[str, Any], counts: Counts) -> dict[str, Any]:
    """Person attributes within the per-attribute limits and the 300-per-call limit.

    Over-long names are dropped (a cut name would be a different attribute); string values are
    truncated; object/array values over the limit are dropped (a cut JSON is no value). Past
    300 the first 300 in order are kept, so callers put the reserved keys first.
    """
    out: dict[str, Any] = {}
    for name, value in attributes.items():
        if len(name) * 4 > MAX_ATTRIBUTE_NAME_BYTES and utf8_len(name) > MAX_ATTRIBUTE_NAME_BYTES:
            count(counts, "attribute_name")
            continue
        if isinstance(value, str):
            cut = truncate_utf8(value, MAX_ATTRIBUTE_VALUE_BYTES)
            if cut is not value:
                count(counts, "attribute_value")
            value = cut
        elif isinstance(value, dict | list) and json_size(value) > MAX_ATTRIBUTE_VALUE_BYTES:
            count(counts, "attribute_value")
            continue
        out[name] = value
    if len(out) > MAX_ATTRIBUTES_PER_CALL:
        count(counts, "attribute_count", len(out) - MAX_ATTRIBUTES_PER_CALL)
        out = dict(list(out.items())[:MAX_ATTRIBUTES_PER_CALL])
    return out


def shrink_mapping(
    data: Mapping[str, Any],
    max_bytes: int,
    counts: Counts,
    kind: str,
    *,
    protected: Collection[str] = (),
) -> dict[str, Any] | None:
    """``data`` without its largest keys, so that its JSON is at most ``max_bytes``.

    Returns ``data`` itself when it already fits, ``None`` when even dropping every unprotected
    key is not enough. Largest first (ties by key) keeps the most keys and is deterministic.
    """
    total = json_size(data)
    if total <= max_bytes:
        return data if isinstance(data, dict) else dict(data)
    # Compact JSON of an object: 2 braces + per key `"k":v` + a comma between keys.
    sizes = sorted(
        ((json_size(k) + 1 + json_size(v) + 1, k) for k, v in data.items() if k not in protected),
        key=lambda pair: (-pair[0], pair[1]),
    )
    dropped: set[str] = set()
    for size, key in sizes:
        if total <= max_bytes:
            break
        dropped.add(key)
        total -= size
    if total > max_bytes:
        return None
    count(counts, kind, len(dropped))
    return {k: v for k, v in data.items() if k not in dropped}


def fit_item(
    body: dict[str, Any],
    field: str,
    counts: Counts,
    *,
    max_bytes: int = MAX_ITEM_BYTES,
    protected: Collection[str] = (),
) -> dict[str, Any] | None:
    """``body`` with keys of ``body[field]`` dropped until the whole item fits ``max_bytes``.

    ``None`` when it cannot fit (the caller drops the operation with a reason).
    """
    size = json_size(body)
    if size <= max_bytes:
        return body
    inner = body.get(field)
    if not isinstance(inner, dict):
        return None
    budget = max_bytes - (size - json_size(inner))
    if budget < 2:
        return None
    shrunk = shrink_mapping(inner, budget, counts, "item_size", protected=protected)
    if shrunk is None:
        return None
    return {**body, field: shrunk}
