"""The event stream every benchmark drives, and the small helpers they share.

``make_event(i, users, rng)`` is event number ``i`` of a realistic PostHog stream, in the
Webhook destination's default body shape ``{"event": {...}, "person": {...}}``: 70 %
``$pageview`` (URL, path, browser, referrer, session), 10 % ``$identify`` carrying ``$set``,
20 % ``order_completed`` with nested properties (a list of line items, an address object).
Every event carries ``bench_seq = i`` so a benchmark can find it again in what the sandbox
received, and a uuid derived from ``i`` (distinct events never collide in dedup).

``make_events`` is identified users only. ``make_web_events`` is a website's traffic: a share
of the events (``anonymous_share``, default 0.7) are page views of anonymous visitors (browser
ids, ``$is_identified: false``, no person profile), and about one visitor in twenty signs up
after their visit: a ``$identify`` of a new user with ``$anon_distinct_id`` = the visitor's id,
which merges the visitor's page views into the person. The rest are ``make_event`` events of
identified users.
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


ACTIVE_VISITORS = 300  # anonymous visitors browsing at any moment
VISIT_PAGES = (1, 8)  # page views per visit, uniform
SIGNUP_SHARE = 0.05  # visitors who sign up at the end of their visit


def make_web_events(
    count: int,
    users: int,
    seed: int = 7,
    start: int = 0,
    *,
    anonymous_share: float = 0.7,
    signup_share: float = SIGNUP_SHARE,
) -> list[dict[str, Any]]:
    """A website's stream: ``anonymous_share`` of the events from anonymous visitors (see the
    module docstring), the rest from ``users`` identified users."""
    rng = random.Random(seed)
    visitors: list[list[Any]] = []  # [visitor id, page views left, signs up]
    made = 0

    def new_visitor() -> list[Any]:
        nonlocal made
        made += 1
        head = f"0193{rng.randrange(1 << 16):04x}-{made % 65536:04x}"
        vid = f"{head}-7{seed % 4096:03x}-8000-{made:012x}"
        return [vid, rng.randint(*VISIT_PAGES), rng.random() < signup_share]

    visitors = [new_visitor() for _ in range(ACTIVE_VISITORS)]
    signed_up = 0
    out = []
    for i in range(start, start + count):
        if rng.random() >= anonymous_share:
            out.append(make_event(i, users, rng))
            continue
        slot = rng.randrange(len(visitors))
        vid, left, signs_up = visitors[slot]
        if left > 0:
            visitors[slot][1] -= 1
            out.append(_anonymous_pageview(i, vid, rng))
            continue
        visitors[slot] = new_visitor()
        if not signs_up:
            out.append(_anonymous_pageview(i, visitors[slot][0], rng))
            visitors[slot][1] -= 1
            continue
        signed_up += 1
        user = f"signup_{seed}_{signed_up}"
        out.append(
            _event(
                i,
                "$identify",
                user,
                {
                    "$is_identified": True,
                    "$lib": "web",
                    "$anon_distinct_id": vid,
                    "$device_id": vid,
                    "$set": {"email": f"{user}@example.com", "plan": "free"},
                    "bench_seq": i,
                },
                person={"email": f"{user}@example.com"},
            )
        )
    return out


def _anonymous_pageview(i: int, visitor: str, rng: random.Random) -> dict[str, Any]:
    browser, os_name = rng.choice(BROWSERS)
    path = rng.choice(PAGES)
    props = {
        "$lib": "web",
        "$browser": browser,
        "$os": os_name,
        "$device_id": visitor,
        "$session_id": f"{visitor[:8]}-sess",
        "$is_identified": False,
        "$process_person_profile": False,
        "$current_url": f"https://www.example.com{path}?utm_source={rng.randrange(20)}",
        "$pathname": path,
        "$referrer": rng.choice(["$direct", "https://www.google.com/", "https://t.co/"]),
        "bench_seq": i,
    }
    return _event(i, "$pageview", visitor, props, person=None)


def _event(
    i: int, name: str, distinct_id: str, props: dict[str, Any], *, person: dict[str, Any] | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event": {
            "uuid": event_uuid(i),
            "event": name,
            "distinct_id": distinct_id,
            "timestamp": "2024-10-01T12:00:00.000Z",
            "properties": props,
        }
    }
    if person is not None:
        body["person"] = {"properties": person}
    return body


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
