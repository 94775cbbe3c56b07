"""The ingest plan: what a group of ingest calls writes, decided without I/O.

Both stores and the backfill dry run ingest the same way; only the reads and writes around it
differ. A store asks ``reads`` which uuids and identity states to load, loads them, asks
``more_reads`` for the ids those states were merged into and loads those too (at most
``MERGE_READS`` more rounds; none at all unless a loaded state was merged), and writes what
``plan`` returns (new seen uuids, operation rows, changed states, checkpoints) in one
transaction; each call gets its ``IngestResult``. Calls are planned in order, each seeing the
uuids and states of the ones before it, as if they had run one after another.

One rule isolates a failing call: when a call's mapping raises (``distinct_ids``, ``map``, or
a body orjson cannot encode), that call alone fails with the exception. Its uuids, states and
rows are taken back out of the plan, and the calls after it are planned as if it had never
come; nothing is re-read or re-run. A write that fails fails the whole group (the store's
transaction), so no caller is ever told that something not durable was stored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from posthog_customerio.mapping.identity import IdentityState, with_merge_chains
from posthog_customerio.mapping.mapper import Mapper, MappingOutcome
from posthog_customerio.mapping.operation import Operation
from posthog_customerio.queue.base import Checkpoint, IngestResult, Lane
from posthog_customerio.sources.event import PostHogEvent

_BLANK = IdentityState()
# Rounds of ``more_reads`` a store runs at most. The mapper points an id at the end of its
# merge chain when it maps it, so a chain longer than this is only ever followed in parts.
MERGE_READS = 8

# One operation to insert: (partition, endpoint, action, body, size, event_uuid, lane).
OperationRow = tuple[str, str, str, bytes, int, str, str]
Observer = Callable[[PostHogEvent, MappingOutcome], None]


@dataclass(slots=True)
class IngestCall:
    """The arguments of one ``Queue.ingest`` call."""

    events: Sequence[PostHogEvent]
    mapper: Mapper
    lane: Lane
    checkpoint: Checkpoint | None


@dataclass(slots=True)
class IngestTally:
    """The counts of one ingest call, added up event by event."""

    accepted: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    truncations: Counter[str] = field(default_factory=Counter)

    def add(self, outcome: MappingOutcome) -> None:
        """Count one mapped event: its operations, or why it produced none."""
        for op in outcome.operations:
            self.actions[op.action] += 1
        if outcome.operations:
            self.accepted += 1
        if outcome.dropped is not None:
            self.dropped[outcome.dropped] += 1
        elif not outcome.operations:
            self.dropped["nothing_to_send"] += 1
        if outcome.truncations:
            self.truncations.update(outcome.truncations)

    def result(self) -> IngestResult:
        return IngestResult(
            accepted=self.accepted,
            dropped=dict(self.dropped),
            actions=dict(self.actions),
            truncations=dict(self.truncations),
        )


@dataclass(slots=True)
class Reads:
    """What a store loads before planning: which of ``uuids`` were seen, and the stored states
    of ``distinct_ids``. ``per_call`` keeps, per call, each event's distinct_ids (asked of
    the mapper once) or the exception that fails the call."""

    uuids: list[str]
    distinct_ids: set[str]
    per_call: list[list[Sequence[str]] | Exception]


@dataclass(slots=True)
class IngestPlan:
    """What to write for a group of calls, and each call's answer (or its exception)."""

    results: list[IngestResult | Exception]
    new_uuids: list[str]  # to record as seen, in ingest order
    rows: list[OperationRow]  # in ingest order: the order of their ids
    states: dict[str, IdentityState]  # changed identity states only
    checkpoints: dict[str, str]  # source -> position; a later call's wins


def operation_row(op: Operation, lane: str, event_uuid: str = "") -> OperationRow:
    """``op`` as stored; its own ``event_uuid`` wins over the one given."""
    body = orjson.dumps(op.body)
    return (
        op.partition,
        op.endpoint.value,
        op.action,
        body,
        len(body),
        op.event_uuid or event_uuid,
        lane,
    )


def reads(calls: Sequence[IngestCall]) -> Reads:
    """The uuids and distinct_ids the calls' events need, each listed once."""
    uuids: dict[str, None] = {}
    distinct_ids: set[str] = set()
    per_call: list[list[Sequence[str]] | Exception] = []
    for call in calls:
        ids_of = call.mapper.distinct_ids
        try:
            per_event = [ids_of(event) for event in call.events]
        except Exception as exc:  # a mapper bug: this call fails, the others go on
            per_call.append(exc)
            continue
        per_call.append(per_event)
        for ids in per_event:
            distinct_ids.update(ids)
        for event in call.events:
            uuids[event.uuid] = None
    return Reads(list(uuids), distinct_ids, per_call)


def more_reads(read: Reads, stored: Mapping[str, IdentityState]) -> set[str]:
    """The ids the loaded states were merged into (``merged_into``) that are not loaded yet,
    added to ``read.distinct_ids``; the store loads their states into ``stored`` and asks
    again, until none are left (a merge cycle ends: each id is loaded once) or for at most
    ``MERGE_READS`` rounds. A merged id's events go to the end of its chain, whose state the
    mapper needs: A merged into B, later B into C, then an event of A reaches C."""
    more = {
        target
        for state in stored.values()
        if (target := state.merged_into) is not None and target not in read.distinct_ids
    }
    read.distinct_ids.update(more)
    return more


def load_states(
    read: Reads, load: Callable[[Collection[str]], Mapping[str, IdentityState]]
) -> dict[str, IdentityState]:
    """The stored states of ``read.distinct_ids`` and of their merge chains, by ``load`` (the
    stored states among the ids given): one call, one more per ``more_reads`` round."""
    stored = dict(load(read.distinct_ids))
    for _ in range(MERGE_READS):
        more = more_reads(read, stored)
        if not more:
            break
        stored.update(load(more))
    return stored


def plan(
    calls: Sequence[IngestCall],
    read: Reads,
    seen: Collection[str],
    stored: Mapping[str, IdentityState],
    observe: Observer | None = None,
) -> IngestPlan:
    """Dedup, map and count the calls in order over what was read.

    ``seen`` holds the uuids already recorded (at least those of ``read.uuids``), ``stored``
    the stored states of ``read.distinct_ids`` (absent = never seen), ``more_reads`` included.
    ``observe`` is shown every mapped event with its outcome (the dry run keeps samples).
    """
    taken: set[str] = set()  # uuids this plan records
    current = dict(stored)
    new_uuids: list[str] = []
    rows: list[OperationRow] = []
    checkpoints: dict[str, str] = {}
    results: list[IngestResult | Exception] = []
    for call, per_event in zip(calls, read.per_call, strict=True):
        if isinstance(per_event, Exception):
            results.append(per_event)
            continue
        mark_uuids, mark_rows = len(new_uuids), len(rows)
        undo: dict[str, IdentityState | None] = {}  # state before this call, None = absent
        tally = IngestTally()
        mapper, lane, get = call.mapper, call.lane.value, current.get
        try:
            for event, ids in zip(call.events, per_event, strict=True):
                uuid = event.uuid
                if uuid in seen or uuid in taken:
                    tally.dropped["duplicate"] += 1
                    continue
                taken.add(uuid)
                new_uuids.append(uuid)
                states = {i: get(i, _BLANK) for i in ids}
                for state in states.values():
                    if state.merged_into is not None:  # rare: add the merge chains
                        states = with_merge_chains(states, current)
                        break
                outcome = mapper.map(event, states)
                for distinct_id, state in outcome.states.items():
                    if distinct_id not in undo:
                        undo[distinct_id] = get(distinct_id)
                    current[distinct_id] = state
                for op in outcome.operations:
                    rows.append(operation_row(op, lane, uuid))
                tally.add(outcome)
                if observe is not None:
                    observe(event, outcome)
        except Exception as exc:  # a mapper bug: this call fails, the others go on
            taken.difference_update(new_uuids[mark_uuids:])
            del new_uuids[mark_uuids:]
            del rows[mark_rows:]
            for distinct_id, before in undo.items():
                if before is None:
                    del current[distinct_id]
                else:
                    current[distinct_id] = before
            results.append(exc)
            continue
        if call.checkpoint is not None:
            checkpoints[call.checkpoint.source] = call.checkpoint.position
        results.append(tally.result())
    changed = {
        distinct_id: state
        for distinct_id, state in current.items()
        if (before := stored.get(distinct_id)) is not state and (before or _BLANK) != state
    }
    return IngestPlan(results, new_uuids, rows, changed, checkpoints)


def partition_heads(inserted: Iterable[tuple[int, str]]) -> dict[str, int]:
    """Each partition's first (smallest) operation id among ``(id, partition)`` inserted."""
    heads: dict[str, int] = {}
    for op_id, partition in inserted:
        head = heads.get(partition)
        if head is None or op_id < head:
            heads[partition] = op_id
    return heads
