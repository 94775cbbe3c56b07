"""The pure ingest plan (queue/plan.py): dedup, state flow, counting and the isolation rule,
without a store; and the backfill dry run that plans with it."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence

import orjson

from posthog_customerio.mapping.identity import IdentityState
from posthog_customerio.mapping.mapper import MappingOutcome
from posthog_customerio.mapping.operation import Endpoint, Operation
from posthog_customerio.mapping.rules import MappingRules
from posthog_customerio.pipeline.dryrun import DryRun
from posthog_customerio.queue import plan
from posthog_customerio.queue.base import Checkpoint, IngestResult, Lane
from posthog_customerio.queue.plan import IngestCall
from posthog_customerio.sources.event import PostHogEvent


class Counting:
    """One op per event carrying how many events the person had before; fails on "boom"."""

    def distinct_ids(self, event: PostHogEvent) -> Sequence[str]:
        if event.event == "bad-ids":
            raise ValueError("distinct_ids bug")
        return [event.distinct_id]

    def map(self, event: PostHogEvent, states: Mapping[str, IdentityState]) -> MappingOutcome:
        before = states[event.distinct_id]
        after = IdentityState(
            seen=True, sent_attribute_keys=before.sent_attribute_keys | {event.event}
        )
        if event.event == "boom":
            raise RuntimeError("mapper bug")
        body = {"name": event.event, "before": sorted(before.sent_attribute_keys)}
        op = Operation(event.distinct_id, Endpoint.BATCH, "event", body, event.uuid)
        return MappingOutcome({event.distinct_id: after}, [op], truncations={"value": 1})


def ev(uuid: str, name: str, distinct_id: str = "u1") -> PostHogEvent:
    return PostHogEvent(uuid=uuid, event=name, distinct_id=distinct_id, timestamp_ms=1)


def call(*events: PostHogEvent, checkpoint: Checkpoint | None = None) -> IngestCall:
    return IngestCall(list(events), Counting(), Lane.LIVE, checkpoint)


def run_plan(
    calls: list[IngestCall],
    seen: frozenset[str] = frozenset(),
    stored: Mapping[str, IdentityState] | None = None,
) -> plan.IngestPlan:
    return plan.plan(calls, plan.reads(calls), seen, stored or {})


def test_a_failing_call_fails_alone_and_leaves_no_trace() -> None:
    calls = [
        call(ev("1", "a")),
        call(ev("2", "b"), ev("3", "boom"), checkpoint=Checkpoint("s", "bad")),
        call(ev("2", "c")),  # the failed call's uuid: not taken, so accepted here
        call(ev("4", "bad-ids")),
        call(ev("5", "d"), checkpoint=Checkpoint("s", "good")),
    ]
    planned = run_plan(calls)
    results = planned.results
    assert isinstance(results[1], RuntimeError)
    assert isinstance(results[3], ValueError)
    assert [r.accepted for r in results if isinstance(r, IngestResult)] == [1, 1, 1]
    assert planned.new_uuids == ["1", "2", "5"]
    bodies = [orjson.loads(row[3]) for row in planned.rows]
    # "b" of the failed call never reached the state the later calls saw
    assert bodies == [
        {"name": "a", "before": []},
        {"name": "c", "before": ["a"]},
        {"name": "d", "before": ["a", "c"]},
    ]
    assert planned.states == {"u1": IdentityState(seen=True, sent_attribute_keys=frozenset("acd"))}
    assert planned.checkpoints == {"s": "good"}


def test_dedup_against_seen_and_within_the_group_and_only_changed_states() -> None:
    unchanged = IdentityState(seen=True, sent_attribute_keys=frozenset({"x"}))
    calls = [call(ev("old", "x", "u2"), ev("n1", "x", "u2")), call(ev("n1", "y"))]
    planned = run_plan(calls, seen=frozenset({"old"}), stored={"u2": unchanged})
    assert planned.results == [
        IngestResult(1, {"duplicate": 1}, {"event": 1}, {"value": 1}),
        IngestResult(0, {"duplicate": 1}, {}, {}),
    ]
    assert planned.states == {}  # u2 mapped to the state it had: nothing to write
    assert [row[0] for row in planned.rows] == ["u2"]


def test_partition_heads_are_the_smallest_id_per_partition() -> None:
    assert plan.partition_heads([(7, "a"), (3, "b"), (5, "a"), (4, "b")]) == {"a": 5, "b": 3}


def test_dry_run_counts_like_the_queue_truncations_included() -> None:
    dry = DryRun(MappingRules())
    identify = PostHogEvent(
        uuid="e1",
        event="$identify",
        distinct_id="user_1",
        timestamp_ms=1_700_000_000_000,
        set={"big": "x" * 2000},
    )

    async def body() -> tuple[IngestResult, IngestResult]:
        first = await dry([identify, identify], lane=Lane.BACKFILL, checkpoint=None)
        again = await dry([identify], lane=Lane.BACKFILL, checkpoint=None)
        return first, again

    first, again = asyncio.run(body())
    assert first.accepted == 1
    assert first.dropped == {"duplicate": 1}
    assert first.truncations  # the dry run used to drop these counts
    assert again.dropped == {"duplicate": 1}
    assert len(dry.sends) == 1
    assert dry.sends[0].uuid == "e1"


class Recording(Counting):
    """``Counting``, remembering which states each event was mapped with."""

    def __init__(self) -> None:
        self.given: list[set[str]] = []

    def map(self, event: PostHogEvent, states: Mapping[str, IdentityState]) -> MappingOutcome:
        self.given.append(set(states))
        return super().map(event, states)


def merged(into: str) -> IdentityState:
    return IdentityState(identified=True, seen=True, merged_into=into)


def test_merge_chains_are_read_round_by_round_and_given_to_the_mapper() -> None:
    """A → B → C: the store reads A, then B, then C (``more_reads``), and the mapper gets all
    three; an unmerged person costs no extra round."""
    store = {"a": merged("b"), "b": merged("c"), "c": IdentityState(seen=True), "u": merged("v")}
    mapper = Recording()
    calls = [IngestCall([ev("1", "x", "a"), ev("2", "y", "z")], mapper, Lane.LIVE, None)]
    read = plan.reads(calls)
    loads: list[set[str]] = []

    def load(ids: Collection[str]) -> dict[str, IdentityState]:
        loads.append(set(ids))
        return {i: store[i] for i in ids if i in store}

    stored = plan.load_states(read, load)
    assert loads == [{"a", "z"}, {"b"}, {"c"}]
    assert read.distinct_ids == {"a", "b", "c", "z"}
    plan.plan(calls, read, set(), stored)
    assert mapper.given == [{"a", "b", "c"}, {"z"}]
    assert plan.load_states(plan.reads([call(ev("3", "x", "c"))]), load) == {"c": store["c"]}
    assert loads[-1] == {"c"}  # one round: c is not merged


def test_a_merge_cycle_is_read_once_and_a_long_chain_for_a_bounded_number_of_rounds() -> None:
    cycle = {"a": merged("b"), "b": merged("a")}
    read = plan.reads([call(ev("1", "x", "a"))])
    rounds: list[Collection[str]] = []
    stored = plan.load_states(read, lambda ids: rounds.append(ids) or {i: cycle[i] for i in ids})
    assert stored == cycle and len(rounds) == 2
    assert plan.more_reads(read, stored) == set()
    chain = {f"p{i}": merged(f"p{i + 1}") for i in range(100)}
    read = plan.reads([call(ev("2", "x", "p0"))])
    rounds.clear()
    plan.load_states(read, lambda ids: rounds.append(ids) or {i: chain[i] for i in ids})
    assert len(rounds) == 1 + plan.MERGE_READS


def test_dry_run_follows_merge_chains_like_the_queue() -> None:
    dry = DryRun(MappingRules())

    def event(uuid: str, name: str, did: str, **props: str) -> PostHogEvent:
        props = {"$is_identified": "true", **props}
        return PostHogEvent(uuid, name, did, 1_700_000_000_000, properties=dict(props))

    async def body() -> None:
        for i, did in enumerate("abc"):
            await dry([event(f"s{i}", "signed_up", did)], lane=Lane.BACKFILL, checkpoint=None)
        for i, (primary, alias) in enumerate([("b", "a"), ("c", "b")]):
            await dry(
                [event(f"m{i}", "$create_alias", primary, alias=alias)],
                lane=Lane.BACKFILL,
                checkpoint=None,
            )

    asyncio.run(body())
    dry.sends.clear()
    asyncio.run(dry([event("late", "late", "a")], lane=Lane.BACKFILL, checkpoint=None))
    [late] = dry.sends
    assert [op["body"]["identifiers"] for op in late.as_dict()["operations"]] == [{"id": "c"}]
