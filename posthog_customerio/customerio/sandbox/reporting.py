"""The sandbox's reporting webhooks: what Customer.io would POST about its people's messages.

``POST /_sandbox/reporting`` sends, for one person of the workspace, one signed webhook per
metric to a URL (the connector's ``/customerio/reporting``), the way Customer.io does
(https://docs.customer.io/api/webhooks/): a new ULID ``event_id`` each, ``identifiers`` with
``id``/``email``/``cio_id``, the campaign fields, and ``trigger_event_id`` = the id of the
person's last event (the id the connector gave it), and ``X-CIO-Signature`` over
``v0:<timestamp>:<body>`` keyed by ``signing_key``; ``wrong_signature`` signs with a wrong
key, ``repeat`` sends each body that many times (Customer.io retrying).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import httpx
import orjson

from posthog_customerio.customerio.sandbox.workspace import Person
from posthog_customerio.mapping.ulid import CROCKFORD
from posthog_customerio.sources.reporting import sign


def new_event_id() -> str:
    """A ULID as Customer.io makes them: milliseconds, then 80 random bits."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    return "".join(CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def reporting_payload(person: Person, object_type: str, metric: str, **data: Any) -> bytes:
    identifiers: dict[str, Any] = {"cio_id": person.cio_id}
    if person.id is not None:
        identifiers["id"] = person.id
    if person.email is not None:
        identifiers["email"] = person.email
    body: dict[str, Any] = {
        "identifiers": identifiers,
        "delivery_id": f"sandbox-{secrets.token_hex(8)}",
        "campaign_id": 1,
        "action_id": 1,
        "subject": "A message from the sandbox",
        "recipient": person.email or person.id or person.cio_id,
    }
    if person.events and person.events[-1].id is not None:
        body["trigger_event_id"] = person.events[-1].id
    body.update(data)
    return orjson.dumps(
        {
            "event_id": new_event_id(),
            "object_type": object_type,
            "metric": metric,
            "timestamp": int(time.time()),
            "data": body,
        }
    )


async def send_reporting(
    person: Person,
    url: str,
    signing_key: str,
    *,
    metrics: list[str],
    object_type: str = "email",
    wrong_signature: bool = False,
    repeat: int = 1,
) -> list[dict[str, Any]]:
    """POST one webhook per metric (each ``repeat`` times); their ids and answers."""
    sent: list[dict[str, Any]] = []
    key = signing_key + ("-wrong" if wrong_signature else "")
    async with httpx.AsyncClient(timeout=10) as client:
        for metric in metrics:
            extra = {"href": "https://example.com/", "link_id": 1} if metric == "clicked" else {}
            body = reporting_payload(person, object_type, metric, **extra)
            statuses: list[int | str] = []
            for _ in range(max(1, repeat)):
                timestamp = str(int(time.time()))
                headers = {
                    "Content-Type": "application/json",
                    "X-CIO-Timestamp": timestamp,
                    "X-CIO-Signature": sign(key, timestamp, body),
                }
                try:
                    r = await client.post(url, content=body, headers=headers)
                    statuses.append(r.status_code)
                except httpx.HTTPError as exc:
                    statuses.append(f"error: {type(exc).__name__}")
            sent.append(
                {"event_id": orjson.loads(body)["event_id"], "metric": metric, "statuses": statuses}
            )
    return sent
