"""Customer.io's reporting webhooks: the signature check and the body, parsed and validated.

One event per POST (https://docs.customer.io/api/webhooks/): ``event_id`` (a ULID),
``object_type``, ``metric``, ``timestamp`` (Unix seconds) and ``data``. Every request carries
``X-CIO-Timestamp`` and ``X-CIO-Signature``, the hex HMAC-SHA256, keyed by the webhook's
signing key, of ``v0:<timestamp>:<raw body>`` (same page, "Securely verify requests").
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from posthog_customerio.errors import InputError
from posthog_customerio.mapping.ulid import is_ulid

SIGNATURE_HEADER = b"x-cio-signature"
TIMESTAMP_HEADER = b"x-cio-timestamp"


def sign(key: str, timestamp: str, body: bytes) -> str:
    """The ``X-CIO-Signature`` Customer.io sends for ``body`` at ``timestamp``."""
    message = b"v0:" + timestamp.encode("ascii", "replace") + b":" + body
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def signature_problem(
    keys: Iterable[str], timestamp: str | None, signature: str | None, body: bytes
) -> str | None:
    """None when one of ``keys`` signed ``body``; else a short reason (a metric label):
    ``not_configured``, ``missing_signature`` or ``wrong_signature``."""
    keys = tuple(keys)
    if not keys:
        return "not_configured"
    if not signature or timestamp is None:
        return "missing_signature"
    given = signature.strip().lower().encode()
    # Every key is compared (no early exit), so timing says nothing about which one matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(sign(key, timestamp, body).encode(), given)
    return None if matched else "wrong_signature"


@dataclass(frozen=True, slots=True)
class ReportingEvent:
    """One reporting webhook, validated: ``data`` as sent (mapping picks what it needs)."""

    event_id: str
    object_type: str
    metric: str
    timestamp: int
    data: dict[str, Any]

    @property
    def identifiers(self) -> dict[str, Any]:
        value = self.data.get("identifiers")
        return value if isinstance(value, dict) else {}


def parse_reporting_body(body: bytes) -> ReportingEvent:
    """The event in ``body``; ``InputError`` naming the field when it does not validate."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError("", f"malformed JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InputError("", "body must be a JSON object")
    event_id = value.get("event_id")
    if not is_ulid(event_id):
        raise InputError("event_id", "must be a ULID")
    texts: dict[str, str] = {}
    for name in ("object_type", "metric"):
        field = value.get(name)
        if not isinstance(field, str) or not field.strip():
            raise InputError(name, "must be a non-empty string")
        texts[name] = field.strip().lower()
    timestamp = value.get("timestamp")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float) or timestamp < 0:
        raise InputError("timestamp", "must be Unix seconds")
    data = value.get("data", {})
    if not isinstance(data, dict):
        raise InputError("data", "must be an object")
    identifiers = data.get("identifiers", {})
    if not isinstance(identifiers, dict):
        raise InputError("data.identifiers", "must be an object")
    named = any(_text(identifiers.get(k)) for k in ("id", "email", "cio_id"))
    if not named and not _text(data.get("customer_id")):
        raise InputError("data.identifiers", "names nobody (no id, email or cio_id)")
    assert isinstance(event_id, str)
    return ReportingEvent(
        event_id=event_id.upper(),
        object_type=texts["object_type"],
        metric=texts["metric"],
        timestamp=int(timestamp),
        data=data,
    )


def _text(value: object) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def identifier(value: object) -> str | None:
    """An identifier as text (Customer.io ids may be numbers), or None when absent/blank."""
    return _text(value)
