"""The ``POST /webhook`` body: every shape PostHog (or a hand-written sender) posts.

Accepted: the Webhook destination's default body ``{"event": {...}, "person": {...}}`` (person
absent for personless events), a bare event object (the plugin runtime's shape), a JSON array
of either, and ``{"batch": [...]}`` of either. PostHog does not retry a 4xx, so a 400 loses
data: an element of an array or batch that is no usable event is dropped (given a ``dropped``
list, it collects the ``InputError`` naming the element), and ``InputError`` is raised only when
nothing in the body is usable, naming the (first) culprit by a path such as
``batch[2].event.distinct_id``; never a 500.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import orjson

from posthog_customerio.errors import InputError
from posthog_customerio.sources.event import PostHogEvent
from posthog_customerio.sources.normalize import (
    NUL_ESCAPE,
    event_from_mapping,
    replace_nul,
    replace_surrogates,
)

SURROGATE_NOTE = "text: lone UTF-16 surrogate escape replaced by U+FFFD"


def parse_webhook_body(
    body: bytes,
    *,
    received_ms: int,
    max_depth: int = 64,
    dropped: list[InputError] | None = None,
) -> list[PostHogEvent]:
    """Parse and normalise one webhook body into events, in body order.

    With ``dropped``, an unusable element of an array or batch is appended there and the rest
    are returned; without it (``explain``), the first one raises. Either way a body with no
    usable element raises the first element's ``InputError``.
    """
    value, surrogates = _loads(body, max_depth)
    if isinstance(value, list):
        if not value:
            raise InputError("", "empty array: no events")
        items = [(item, f"[{i}]") for i, item in enumerate(value)]
    elif not isinstance(value, dict):
        raise InputError("", "body must be a JSON object or array")
    elif "batch" in value and "event" not in value:
        batch = value["batch"]
        if not isinstance(batch, list):
            raise InputError("batch", "must be an array of events")
        if not batch:
            raise InputError("batch", "empty batch: no events")
        items = [(item, f"batch[{i}]") for i, item in enumerate(batch)]
    else:
        items = [(value, "")]
    events: list[PostHogEvent] = []
    problems: list[InputError] = []
    for item, path in items:
        fixed = surrogates and replace_surrogates(item)
        try:
            event = _item(item, path, received_ms)
        except InputError as exc:
            if dropped is None:
                raise
            problems.append(exc)
            continue
        if fixed:
            event = dataclasses.replace(event, notes=(*event.notes, SURROGATE_NOTE))
        events.append(event)
    if not events:
        raise problems[0]
    if dropped is not None:
        dropped.extend(problems)
    return events


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _loads(body: bytes, max_depth: int) -> tuple[Any, bool]:
    """The parsed body, and whether it may hold lone surrogates (then not yet replaced)."""
    surrogates = False
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("", "body is not valid UTF-8") from exc
        if "depth" in str(exc) or "recursion" in str(exc):
            raise InputError("", f"JSON nested deeper than {max_depth} levels") from exc
        if "surrogate" not in str(exc):
            raise InputError("", f"malformed JSON: {exc}") from exc
        # A lone surrogate escape ("\ud800"), which JavaScript senders can produce: orjson
        # refuses it, the standard parser keeps it, and each one becomes U+FFFD below.
        try:
            value = json.loads(text, parse_constant=_reject_constant)
        except RecursionError:
            raise InputError("", f"JSON nested deeper than {max_depth} levels") from exc
        except ValueError as exc2:
            raise InputError("", f"malformed JSON: {exc2}") from exc2
        surrogates = True
    # Nesting can only be as deep as the number of brackets: count them in C first, and walk
    # the parsed value only for the rare body with many.
    if body.count(b"{") + body.count(b"[") > max_depth and _depth_exceeds(value, max_depth):
        raise InputError("", f"JSON nested deeper than {max_depth} levels")
    return (replace_nul(value) if NUL_ESCAPE in body else value), surrogates


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
        return event_from_mapping(
            inner, person=item.get("person"), received_ms=received_ms, path=event_path
        )
    return event_from_mapping(item, person=None, received_ms=received_ms, path=path)
