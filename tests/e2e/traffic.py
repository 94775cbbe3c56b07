"""Synthetic PostHog traffic for tests that watch the connector work (status page, metrics)."""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any

NAMES = ("$pageview", "signed_up", "order_completed", "invoice_paid", "$screen", "feature_used")


def event(name: str, distinct_id: str, **props: Any) -> dict[str, Any]:
    """A bare PostHog event, as PostHog's webhook destination can send it."""
    return {
        "uuid": str(uuid.uuid4()),
        "event": name,
        "distinct_id": distinct_id,
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "properties": {"$lib": "web", **props},
    }


def identified(name: str, person: int, **props: Any) -> dict[str, Any]:
    """An event of ``user_<person>`` carrying ``$set`` (an identify, then the event)."""
    email = f"user{person}@example.com"
    return event(name, f"user_{person}", **{"$set": {"email": email, "plan": "pro"}}, **props)


def mixed_batch(rng: random.Random, size: int) -> list[dict[str, Any]]:
    """Identified events, anonymous page views and an occasional repeated uuid (a drop)."""
    out: list[dict[str, Any]] = []
    for _ in range(size):
        if rng.random() < 0.25:
            out.append(event("$pageview", str(uuid.uuid4()), **{"$current_url": "/pricing"}))
        else:
            out.append(identified(rng.choice(NAMES), rng.randrange(40), revenue=rng.random()))
    if out and rng.random() < 0.5:
        out.append(dict(out[0]))  # PostHog retried a delivery: counted as a duplicate
    return out


def pace(seconds: float) -> None:
    time.sleep(seconds)
