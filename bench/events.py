"""The event stream every benchmark drives, and the small helpers they share.

``make_event(i, users, rng)`` is event number ``i`` of a realistic PostHog stream, in the
Webhook destination's default body shape ``{"event": {...}, "person": {...}}``: 70 %
``$pageview`` (URL, path, browser, referrer, session), 10 % ``$identify`` carrying ``$set``,
20 % ``order_completed`` with nested properties (a list of line items, an address object).
Every event carries ``bench_seq = i`` so a benchmark can find it again in what the sandbox
received, and a uuid derived from ``i`` (distinct events never collide in dedup).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Sequence
from typing import Any

import httpx

PAGES = ["/", "/pricing", "/docs", "/blog", "/signup", "/login", "/app", "/app/settings"]
BROWSERS = [("Chrome", "Mac OS X"), ("Safari", "iOS"), ("Firefox", "Windows"), ("Edge", "Windows")]


def event_uuid(i: int) -> str:
    return f"0193{i // 65536 % 65536:04x}-{i % 65536:04x}-7000-8000-{i:012x}"


def make_event(i: int, users: int, rng: random.Random) -> dict[str, Any]:
    user = f"user_{rng.randrange(users)}"
    kind = rng.random()
    browser, os_name = rng.choice(BROWSERS)
    props: dict[str, Any] = {
        "$is_identified": True,
        "$lib": "web",
        "$browser": browser,
        "$os": os_name,
        "$session_id": f"0193{rng.randrange(1 << 28):07x}-sess",
        "bench_seq": i,
    }
    if kind < 0.7:
        name = "$pageview"
        path = rng.choice(PAGES)
        props.update(
            {
                "$current_url": f"https://app.example.com{path}?ref={rng.randrange(50)}",
                "$pathname": path,
                "$referrer": rng.choice(["$direct", "https://www.google.com/", "https://t.co/"]),
                "$screen_width": rng.choice([1280, 1440, 1920, 390]),
            }
        )
    elif kind < 0.8:
        name = "$identify"
        props["$set"] = {
            "email": f"{user}@example.com",
            "plan": rng.choice(["free", "pro", "enterprise"]),
            "company": f"Company {rng.randrange(100)}",
        }
    else:
        name = "order_completed"
        props.update(
            order_id=f"ord_{i}",
            revenue=round(rng.uniform(5, 500), 2),
            currency="USD",
            items=[
                {"sku": f"SKU{j}", "qty": j + 1, "price": round(rng.uniform(1, 99), 2)}
                for j in range(rng.randrange(1, 4))
            ],
            shipping={"country": rng.choice(["US", "DE", "FR"]), "express": rng.random() < 0.2},
        )
    return {
        "event": {
            "uuid": event_uuid(i),
            "event": name,
            "distinct_id": user,
            "timestamp": "2024-10-01T12:00:00.000Z",
            "properties": props,
        },
        "person": {"properties": {"email": f"{user}@example.com"}},
    }


def make_events(count: int, users: int, seed: int = 7, start: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [make_event(i, users, rng) for i in range(start, start + count)]


def bodies_of(events: Sequence[dict[str, Any]], batch_size: int) -> list[Any]:
    """Webhook bodies: each event alone, or ``{"batch": [...]}`` of ``batch_size`` events."""
    if batch_size == 1:
        return list(events)
    return [{"batch": list(events[i : i + batch_size])} for i in range(0, len(events), batch_size)]


async def post_all(urls: Sequence[str], bodies: Sequence[Any], concurrency: int) -> int:
    """POST every body to ``{url}/webhook`` (round-robin over ``urls``) with ``concurrency``
    parallel senders; returns how many were not answered 200."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    failures = 0
    targets = itertools.cycle(urls)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        it = iter(bodies)

        async def worker() -> None:
            nonlocal failures
            for body in it:
                r = await client.post(f"{next(targets)}/webhook", json=body)
                if r.status_code != 200:
                    failures += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failures
