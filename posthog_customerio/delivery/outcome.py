"""What one Track API answer means for the operations it carried (DESIGN.md §5).

``classify`` is the one place that looks at status codes; the worker only acts on the
``Outcome`` kind. Kinds follow Vector's sink outcomes: delivered, partial (a 207 listing failed
items), rejected (permanent), retriable, plus two that only a batch API needs: split (the whole
batch was refused, find the bad items) and auth (stop and keep everything). Items that name
an anonymous visitor by ``anonymous_id`` (not in the published spec) get one more answer:
when Customer.io refuses them for their identifiers, they are not bad data but the wrong
endpoint, so they are set apart (``fallback``, or kind ``fallback`` for a whole-request 400)
to be re-sent through ``POST /api/v1/events``.
"""

from __future__ import annotations

import email.utils
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from posthog_customerio.customerio.client import TrackResponse

SNIPPET_CHARS = 500
SPLITTABLE_STATUSES = frozenset({400, 413, 422})
RETRIABLE_4XX = frozenset({408, 425, 429})


class OutcomeKind(StrEnum):
    DELIVERED = "delivered"  # every item accepted
    PARTIAL = "partial"  # 207: the items in ``failed`` were rejected, the others accepted
    SPLIT = "split"  # a batch of >1 refused as a whole: halve it to isolate the bad items
    REJECTED = "rejected"  # permanent for every item carried: dead-letter
    AUTH = "auth"  # credentials refused: pause, keep everything
    RETRY = "retry"  # transient: try again later
    FALLBACK = "fallback"  # 400 on identifiers, all items anonymous_id: send them through v1


@dataclass(frozen=True, slots=True)
class Outcome:
    """``reason`` is a short stable metric label; ``detail`` is for people (logs, dead letters).

    ``failed`` maps batch index → Customer.io's reason/field/message (PARTIAL only);
    ``fallback`` the same for anonymous_id items refused for their identifiers, which are
    not failures (PARTIAL only).
    ``retry_after`` is the server's ``Retry-After`` in seconds, already capped (RETRY only).
    """

    kind: OutcomeKind
    reason: str
    detail: str = ""
    failed: Mapping[int, str] = field(default_factory=dict)
    fallback: Mapping[int, str] = field(default_factory=dict)
    retry_after: float | None = None
    throttled: bool = False


def classify(
    resp: TrackResponse,
    *,
    item_count: int,
    now: float,
    retry_after_max_secs: float,
    anonymous: Collection[int] = (),
) -> Outcome:
    """Decide what ``resp`` means for the ``item_count`` operations it carried.

    ``now`` (Unix seconds) anchors an HTTP-date ``Retry-After``. ``anonymous`` holds the
    indices of the items that name their person by ``anonymous_id``.
    """
    status = resp.status
    if status is None:
        error = resp.error or "network"
        return Outcome(OutcomeKind.RETRY, reason=error.split(":", 1)[0], detail=error)

    if status == 207:
        failed = _parse_207(resp.body, item_count)
        if failed is None:
            # Not knowing which items failed, delivering all could hide rejections and
            # dead-lettering all could drop good data; a retry is safe (event ids dedup).
            return Outcome(
                OutcomeKind.RETRY,
                reason="unparsable_207",
                detail=f"HTTP 207 with an unreadable body: {_snippet(resp.body)}",
            )
        fallback = {
            i: detail
            for i, detail in failed.items()
            if i in anonymous and names_identifiers(detail)
        }
        for i in fallback:
            del failed[i]
        if not failed and not fallback:
            return Outcome(OutcomeKind.DELIVERED, reason="ok")
        detail = f"HTTP 207: {len(failed)} of {item_count} items rejected"
        if fallback:
            detail += f", {len(fallback)} anonymous_id items refused"
        return Outcome(
            OutcomeKind.PARTIAL,
            reason="rejected",
            detail=detail,
            failed=failed,
            fallback=fallback,
        )
    if 200 <= status < 300:
        return Outcome(OutcomeKind.DELIVERED, reason="ok")

    detail = f"HTTP {status}: {error_text(resp.body)}"
    if status in (401, 403):
        return Outcome(OutcomeKind.AUTH, reason="credentials", detail=detail)
    if status in RETRIABLE_4XX or 500 <= status < 600:
        retry_after = parse_retry_after(resp.retry_after_header, now, retry_after_max_secs)
        reason = {429: "throttled", 408: "request_timeout", 425: "too_early"}.get(
            status, "server_error"
        )
        return Outcome(
            OutcomeKind.RETRY,
            reason=reason,
            detail=detail,
            retry_after=retry_after,
            throttled=status == 429,
        )
    if status == 400 and len(anonymous) == item_count and names_identifiers(detail):
        # Only when every item is anonymous: a mixed batch is split until this holds, so
        # another item's bad identifiers never switch anonymous events to v1.
        return Outcome(OutcomeKind.FALLBACK, reason="anonymous_id_refused", detail=detail)
    if 400 <= status < 500:
        if status in SPLITTABLE_STATUSES and item_count > 1:
            return Outcome(OutcomeKind.SPLIT, reason="split", detail=detail)
        return Outcome(OutcomeKind.REJECTED, reason="rejected", detail=detail)
    # 1xx/3xx (a redirect means a wrong region or track_url) or nonsense: nothing was
    # accepted and nothing says the data is bad; retry until fixed or expired.
    return Outcome(OutcomeKind.RETRY, reason="unexpected_status", detail=detail)


def parse_retry_after(header: str | None, now: float, cap: float) -> float | None:
    """``Retry-After`` as seconds from ``now``: delta-seconds or an HTTP-date, capped at ``cap``.

    A date in the past means 0; an unreadable value means None (use our own backoff).
    """
    if header is None or not header.strip():
        return None
    value = header.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; the parser leaves "-0000" naive
            return None
        seconds = when.timestamp() - now
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), cap)


def names_identifiers(detail: str) -> bool:
    """Whether Customer.io's error text is about the item's identifiers (or anonymous_id)."""
    lowered = detail.lower()
    return "identifiers" in lowered or "anonymous_id" in lowered


def error_text(body: bytes) -> str:
    """Customer.io's error message from a v1 or v2 error body, else a snippet of the body."""
    data = _loads(body)
    if isinstance(data, dict):
        errors = data.get("errors")
        if isinstance(errors, list) and errors:
            return "; ".join(_error_detail(e) for e in errors)
        meta = data.get("meta")
        if isinstance(meta, dict):
            meta_errors = meta.get("errors")
            if isinstance(meta_errors, list) and meta_errors:
                return "; ".join(str(e) for e in meta_errors)
            if isinstance(meta.get("error"), str):
                return str(meta["error"])
    return _snippet(body)


def _parse_207(body: bytes, item_count: int) -> dict[int, str] | None:
    data = _loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("errors"), list):
        return None
    failed: dict[int, str] = {}
    for err in data["errors"]:
        if not isinstance(err, dict):
            continue
        index = err.get("batch_index")
        if isinstance(index, bool) or not isinstance(index, int):
            continue
        if not 0 <= index < item_count:
            continue
        detail = _error_detail(err)
        failed[index] = f"{failed[index]}; {detail}" if index in failed else detail
    return failed


def _error_detail(err: Any) -> str:
    """``reason field: message`` from a v2 error object, skipping the parts that are absent."""
    if not isinstance(err, dict):
        return str(err)
    head = " ".join(str(err[k]) for k in ("reason", "field") if err.get(k))
    message = str(err["message"]) if err.get("message") else ""
    if head and message:
        return f"{head}: {message}"
    return head or message or _snippet(orjson.dumps(err))


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


def _snippet(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    if not text:
        return "(empty body)"
    return text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS] + "…"
