#!/usr/bin/env python3
"""Per-item cost of validating Track API bodies against the OpenAPI document, old vs new.

    .venv/bin/python bench/spec_validation.py [--old-rev 0bdf055] [--items 20000]

**new**: ``posthog_customerio.customerio.spec`` as it is in the working tree (jsonschema-rs).
**old**: the same module at ``--old-rev`` (default ``0bdf055``, the last commit with the
hand-written schema compiler), loaded from git, so both run in one process on the same items;
its pure-Python ``jsonschema`` validator is measured too (the old module used it to write
messages). Needs the ``jsonschema`` package (``.[dev]``) for the old module.

The items are the mix the sandbox sees from the connector (the proportions of
``bench/events.py``): 70 % ``page``, 20 % ``event`` with nested attributes, 10 % ``identify``,
plus a few merges, object identifies with a relationship and v1 anonymous page views.
Figures are µs per item: each chunk of 250 is timed ``--repeat`` times and its best kept (a
shared machine only ever adds time).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from posthog_customerio.customerio import spec as new_spec  # noqa: E402

ULID_CHARS = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
PAGES = ["/", "/pricing", "/docs", "/blog", "/signup", "/login", "/app", "/app/settings"]


def _ulid(rng: random.Random) -> str:
    return "0" + "".join(rng.choice(ULID_CHARS) for _ in range(25))


def make_items(count: int, seed: int = 7) -> list[tuple[str, Any]]:
    """(operationId, body) pairs: v2 items are checked as ``entity`` bodies."""
    rng = random.Random(seed)
    out: list[tuple[str, Any]] = []
    for i in range(count):
        user = f"user_{rng.randrange(1000)}"
        ts = 1_700_000_000 + i
        common = {"identifiers": {"id": user}, "id": _ulid(rng), "timestamp": ts}
        kind = rng.random()
        if i % 100 == 0:
            out.append(("merge", {"primary": {"id": user}, "secondary": {"id": f"anon_{i}"}}))
        elif i % 100 == 1:
            item = {
                "type": "object",
                "action": "identify",
                "identifiers": {"object_type_id": "1", "object_id": f"company_{i % 50}"},
                "attributes": {"name": f"Company {i % 50}"},
                "cio_relationships": [{"identifiers": {"id": user}}],
            }
            out.append(("entity", item))
        elif i % 100 == 2:
            path = rng.choice(PAGES)
            body = {
                "name": f"https://app.example.com{path}",
                "type": "page",
                "anonymous_id": f"0193{i:08x}-anon",
                "id": _ulid(rng),
                "timestamp": ts,
                "data": {"$pathname": path},
            }
            out.append(("trackAnonymous", body))
        elif kind < 0.7:
            path = rng.choice(PAGES)
            item = {
                "type": "person",
                "action": "page",
                "name": f"https://app.example.com{path}?ref={rng.randrange(50)}",
                **common,
                "attributes": {
                    "$pathname": path,
                    "$browser": rng.choice(["Chrome", "Safari", "Firefox"]),
                    "$referrer": "$direct",
                    "$screen_width": 1440,
                    "$session_id": f"0193{rng.randrange(1 << 28):07x}-sess",
                },
            }
            out.append(("entity", item))
        elif kind < 0.8:
            item = {
                "type": "person",
                "action": "identify",
                "identifiers": {"id": user},
                "attributes": {
                    "email": f"{user}@example.com",
                    "plan": rng.choice(["free", "pro", "enterprise"]),
                    "company": f"Company {rng.randrange(100)}",
                },
            }
            out.append(("entity", item))
        else:
            lines = [
                {"sku": f"sku-{rng.randrange(500)}", "qty": rng.randrange(1, 4), "price": 9.99}
                for _ in range(rng.randrange(1, 4))
            ]
            item = {
                "type": "person",
                "action": "event",
                "name": "order_completed",
                **common,
                "attributes": {
                    "total": 29.97,
                    "currency": "EUR",
                    "items": lines,
                    "shipping": {"city": "Oslo", "country": "NO"},
                },
            }
            out.append(("entity", item))
    return out


def load_old(rev: str) -> types.ModuleType:
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:posthog_customerio/customerio/spec.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    module = types.ModuleType("old_spec")
    module.__dict__["__name__"] = "old_spec"
    sys.modules["old_spec"] = module  # dataclasses look the module up while the class is built
    exec(compile(source, f"{rev}:spec.py", "exec"), module.__dict__)
    return module


def best_us(run: Callable[[list[Any]], object], work: list[Any], repeat: int) -> float:
    """µs per element of ``work``: each chunk of 250 is timed ``repeat`` times and its best
    time kept (other processes only ever add time), then the bests are summed."""
    chunks = [work[i : i + 250] for i in range(0, len(work), 250)]
    best = [float("inf")] * len(chunks)
    for _ in range(repeat):
        for index, chunk in enumerate(chunks):
            started = time.perf_counter()
            run(chunk)
            best[index] = min(best[index], time.perf_counter() - started)
    return sum(best) / len(work) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old-rev", default="0bdf055")
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()

    items = make_items(args.items)
    v2 = [body for op, body in items if op == "entity"]
    broken = [{**body, "attributes": 1} for body in v2[:500]]
    old = load_old(args.old_rev).SpecValidator()
    new = new_spec.SpecValidator()
    for name, validator in (("old", old), ("new", new)):
        for op, body in items:  # compile every schema first, and check both agree: all valid
            assert validator.check_request(op, body) == [], (name, op, body)
        assert all(validator.check_batch_item(b) for b in broken), name

    def each(validator: Any) -> Callable[[list[Any]], object]:
        return lambda chunk: [validator.check_request(op, body) for op, body in chunk]

    def batch(validator: Any) -> Callable[[list[Any]], object]:
        return lambda chunk: validator.check_request("batch", {"batch": chunk})

    def broken_each(validator: Any) -> Callable[[list[Any]], object]:
        return lambda chunk: [validator.check_batch_item(b) for b in chunk]

    rows = [
        (f"mixed bodies, one request each ({len(items):,})", each, items),
        (f"the v2 items as /api/v2/batch bodies ({len(v2):,})", batch, v2),
        (f"invalid items, problems written ({len(broken)})", broken_each, broken),
    ]
    print(f"µs per item, best of {args.repeat} (old = {args.old_rev}, new = working tree)")
    print(f"{'':48} {'old':>9} {'new':>9} {'old/new':>8}")
    for label, make, work in rows:
        o = best_us(make(old), work, args.repeat)
        n = best_us(make(new), work, args.repeat)
        print(f"{label:48} {o:9.2f} {n:9.2f} {o / n:7.1f}x")

    pairs = [(old.schema_validator(old.item_pointer(b)), b) for b in v2[:1000]]
    plain = best_us(lambda chunk: [v.is_valid(b) for v, b in chunk], pairs, 3)
    print(f"{'pure-Python jsonschema, v2 items (for scale)':48} {plain:9.2f}")


if __name__ == "__main__":
    main()
