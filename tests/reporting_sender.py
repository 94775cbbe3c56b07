"""Customer.io's reporting webhooks, as Customer.io sends them: signed, one event per POST.

``reporting_body`` builds the JSON for a message sent to a person; ``signed_headers`` signs it
the way Customer.io does (``X-CIO-Signature`` over ``v0:<timestamp>:<body>``), or wrongly.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson

from posthog_customerio.mapping.ulid import CROCKFORD
from posthog_customerio.sources.reporting import sign


def new_ulid(ms: int | None = None) -> str:
    """A ULID like Customer.io's event_id: time, then random bits."""
    ms = int(time.time() * 1000) if ms is None else ms
    value = (ms << 80) | secrets.randbits(80)
    return "".join(CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def reporting_body(
    metric: str,
    identifiers: dict[str, Any],
    *,
    object_type: str = "email",
    event_id: str | None = None,
    trigger_event_id: str | None = None,
    **data: Any,
) -> bytes:
    payload_data: dict[str, Any] = {
        "identifiers": identifiers,
        "delivery_id": "RAECAAFwnUSneIa0ZXkmq8EdkAM==",
        "campaign_id": 7,
        "action_id": 42,
        "subject": "Welcome aboard",
        "recipient": identifiers.get("email", "someone@example.com"),
        **data,
    }
    if trigger_event_id is not None:
        payload_data["trigger_event_id"] = trigger_event_id
    return orjson.dumps(
        {
            "event_id": event_id or new_ulid(),
            "object_type": object_type,
            "metric": metric,
            "timestamp": int(time.time()),
            "data": payload_data,
        }
    )


def signed_headers(key: str, body: bytes, *, wrong: bool = False) -> dict[str, str]:
    timestamp = str(int(time.time()))
    signature = sign(key + ("x" if wrong else ""), timestamp, body)
    return {
        "X-CIO-Timestamp": timestamp,
        "X-CIO-Signature": signature,
        "Content-Type": "application/json",
    }
