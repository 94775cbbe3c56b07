"""The ``POST /webhook`` body: every shape PostHog (or a hand-written sender) posts.

Accepted: the Webhook destination's default body ``{"event": {...}, "person": {...}}`` (person
absent for personless events), a bare event object (the plugin runtime's shape), a JSON array
of either, and ``{"batch": [...]}`` of either. Anything else raises ``InputError`` whose
``field`` is a path such as ``batch[2].event.distinct_id``, so the webhook answers 400 naming
the culprit and never 500.
"""

from __future__ import annotations

from typing import Any

import orjson

from posthog_customerio.errors import InputError
from posthog_customerio.sources.event import PostHogEvent
from posthog_customerio.sources.normalize import NUL_ESCAPE, event_from_mapping, replace_nul


def parse_webhook_body(body: bytes, *, received_ms: int, max_depth: int = 64) -> list[PostHogEvent]:
    """Parse and normalise one webhook body into events, in body order."""
    value = _loads(body, max_depth)
    if isinstance(value, list):
        if not value:
            raise InputError("", "empty array: no events")
        return [_item(item, f"[{i}]", received_ms) for i, item in enumerate(value)]
    if not isinstance(value, dict):
        raise InputError("", "body must be a JSON object or array")
    if "batch" in value and "event" not in value:
        batch = value["batch"]
        if not isinstance(batch, list):
            raise InputError("batch", "must be an array of events")
        if not batch:
            raise InputError("batch", "empty batch: no events")
        return [_item(item, f"batch[{i}]", received_ms) for i, item in enumerate(batch)]
    return [_item(value, "", received_ms)]


def _loads(body: bytes, max_depth: int) -> Any:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("", "body is not valid UTF-8") from exc
        if "depth" in str(exc) or "recursion" in str(exc):
            raise InputError("", f"JSON nested deeper than {max_depth} levels") from exc
        raise InputError("", f"malformed JSON: {exc}") from exc
    # Nesting can only be as deep as the number of brackets: count them in C first, and walk
    # the parsed value only for the rare body with many.
    if body.count(b"{") + body.count(b"[") > max_depth and _depth_exceeds(value, max_depth):
        raise InputError("", f"JSON nested deeper than {max_depth} levels")
    return replace_nul(value) if NUL_ESCAPE in body else value


def _depth_exceeds(value: Any, max_depth: int) -> bool:
    """Iterative (no recursion limit to hit) check of container nesting depth.

    Level by level, keeping only the containers of the next level; ``type(...) is`` suffices
    (and is much cheaper than ``isinstance``) because orjson makes only plain dicts and lists.
    """
    level = [value] if type(value) is dict or type(value) is list else []
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            return True
        level = [
            child
            for node in level
            for child in (node.values() if type(node) is dict else node)
            if type(child) is dict or type(child) is list
        ]
    return False


def _item(item: Any, path: str, received_ms: int) -> PostHogEvent:
    """One element: a webhook-destination body (``event`` is an object) or a bare event."""
    if not isinstance(item, dict):
        raise InputError(path, "must be an event object")
    inner = item.get("event")
    if isinstance(inner, dict):  # orjson makes no other Mapping; the ABC check is slow
        event_path = f"{path}.event" if path else "event"
        person = item.get("person")
        return event_from_mapping(
            inner,
            person=person,
            received_ms=received_ms,
            path=event_path,
            person_path=f"{path}.person" if path else "person",
        )
    return event_from_mapping(item, person=None, received_ms=received_ms, path=path)
