"""Measure the SQLite queue: claim and stats at a deep backlog, and group commit.

    .venv/bin/python bench/queue_sqlite.py [--pending 1000000] [--persons 100000]

Fills a fresh queue through ``ingest`` (1,000-event calls), then times ``claim(1000)``,
``stats`` and a claim with every partition blocked; finally runs 64 concurrent callers doing
1-event ingests (the webhook shape) and reports events/s and COMMITs/s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from posthog_customerio.mapping.identity import IdentityState
from posthog_customerio.mapping.mapper import MappingOutcome
from posthog_customerio.mapping.operation import Endpoint, Operation
from posthog_customerio.queue.sqlite import SQLiteQueue
from posthog_customerio.sources.event import PostHogEvent


class OneOp:
    """One ~200-byte event op per event, state marked seen: the common webhook shape."""

    def distinct_ids(self, event: PostHogEvent) -> Sequence[str]:
        return [event.distinct_id]

    def map(self, event: PostHogEvent, states: Mapping[str, IdentityState]) -> MappingOutcome:
        state = states[event.distinct_id]
        body = {
            "type": "person",
            "identifiers": {"id": event.distinct_id},
            "action": "event",
            "name": event.event,
            "id": event.uuid,
            "timestamp": event.timestamp_ms // 1000,
            "attributes": event.properties,
        }
        op = Operation(event.distinct_id, Endpoint.BATCH, "event", body, event.uuid)
        return MappingOutcome(
            states={event.distinct_id: IdentityState(seen=True, email=state.email)}, operations=[op]
        )


def event(i: int, persons: int) -> PostHogEvent:
    return PostHogEvent(
        uuid=f"0190a000-0000-7000-8000-{i:012d}",
        event="clicked",
        distinct_id=f"person-{i % persons}",
        timestamp_ms=1_700_000_000_000 + i,
        properties={"$current_url": "https://example.com/pricing", "n": i},
    )


def timed(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    return f"median {statistics.median(ms):.2f} ms, max {ms[-1]:.2f} ms (n={len(ms)})"


async def deep_backlog(path: Path, pending: int, persons: int) -> None:
    queue = SQLiteQueue.open(path)
    mapper = OneOp()
    try:
        started = time.perf_counter()
        for start in range(0, pending, 1000):
            await queue.ingest([event(i, persons) for i in range(start, start + 1000)], mapper)
        took = time.perf_counter() - started
        print(f"fill: {pending:,} events in {took:.1f} s ({pending / took:,.0f} events/s, bulk)")

        now = time.time()
        stats_t = []
        for _ in range(5):
            t = time.perf_counter()
            stats = await queue.stats(now)
            stats_t.append(time.perf_counter() - t)
        print(f"stats at depth {stats.depth:,}: {timed(stats_t)}")

        claims: list[float] = []
        all_ids: list[list[int]] = []
        for _ in range(20):  # each claim skips the partitions the previous ones hold
            t = time.perf_counter()
            batch = await queue.claim(1000, 450_000, now)
            claims.append(time.perf_counter() - t)
            all_ids.append([op.id for op in batch])
        print(f"claim(1000 ops) with {pending:,} pending: {timed(claims)}")

        cycle: list[float] = []
        for ids in all_ids:
            t = time.perf_counter()
            await queue.ack(ids)
            cycle.append(time.perf_counter() - t)
        print(f"ack(1000 ops): {timed(cycle)}")

        # an outage: every partition in backoff; claims must stay cheap, not scan the backlog
        batch = await queue.claim(1000, 450_000, now)
        blocked_parts = set()
        while batch:
            await queue.retry([op.id for op in batch], now + 3600, "503")
            blocked_parts.update(op.partition for op in batch)
            batch = await queue.claim(1000, 450_000, now)
        t = time.perf_counter()
        empty = await queue.claim(1000, 450_000, now)
        print(
            f"claim with all {len(blocked_parts):,} partitions blocked: "
            f"{(time.perf_counter() - t) * 1000:.2f} ms -> {len(empty)} ops"
        )
    finally:
        await queue.close()


async def group_commit(path: Path, callers: int, seconds: float) -> None:
    queue = SQLiteQueue.open(path)
    mapper = OneOp()
    counter = iter(range(10**12))
    done = 0

    async def caller() -> None:
        nonlocal done
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            await queue.ingest([event(next(counter), 10_000)], mapper)
            done += 1

    try:
        before = queue.commit_count
        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        took = time.perf_counter() - started
        commits = queue.commit_count - before
        print(
            f"group commit, {callers} concurrent 1-event ingests: {done / took:,.0f} events/s, "
            f"{commits / took:,.0f} commits/s, {done / max(commits, 1):.1f} events per commit"
        )
    finally:
        await queue.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pending", type=int, default=1_000_000)
    parser.add_argument("--persons", type=int, default=100_000)
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--dir", type=Path, default=None, help="where to put the db files")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        asyncio.run(group_commit(Path(tmp) / "gc.db", args.callers, args.seconds))
        asyncio.run(group_commit(Path(tmp) / "gc1.db", 1, args.seconds))
        asyncio.run(deep_backlog(Path(tmp) / "deep.db", args.pending, args.persons))


if __name__ == "__main__":
    main()
