"""``posthog-customerio explain``: what would be sent for each event, and why, without sending.

It runs the real mapper over the events in order with an in-memory state dict, exactly as the
queue would with its stored state, so what it prints is what ingest would enqueue.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from posthog_customerio.mapping.identity import IdentityState, with_merge_chains
from posthog_customerio.mapping.mapper import EventMapper, MappingOutcome
from posthog_customerio.mapping.operation import Endpoint, Operation
from posthog_customerio.mapping.rules import MappingRules
from posthog_customerio.sources.event import PostHogEvent

ENDPOINT_LABELS = {
    Endpoint.BATCH: "POST /api/v2/batch (item)",
    Endpoint.ANONYMOUS_ITEM: "POST /api/v2/batch (item, anonymous_id)",
    Endpoint.ANONYMOUS: "POST /api/v1/events (anonymous)",
}


@dataclass(frozen=True, slots=True)
class Explanation:
    """The decision for one event: ``decision`` is ``"send"`` or ``"drop"``."""

    uuid: str
    event: str
    distinct_id: str
    decision: str
    reason: str | None
    operations: Sequence[Operation]
    truncations: Mapping[str, int] = field(default_factory=dict)
    notes: Sequence[str] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``explain --json`` and tests)."""
        return {
            "uuid": self.uuid,
            "event": self.event,
            "distinct_id": self.distinct_id,
            "decision": self.decision,
            "reason": self.reason,
            "operations": [
                {"endpoint": op.endpoint.value, "action": op.action, "body": op.body}
                for op in self.operations
            ],
            "truncations": dict(self.truncations),
            "notes": list(self.notes),
        }


def explain(
    events: Iterable[PostHogEvent],
    rules: MappingRules,
    states: dict[str, IdentityState] | None = None,
) -> list[Explanation]:
    """Map ``events`` in order; ``states`` (updated in place) lets a caller seed or inspect them."""
    mapper = EventMapper(rules)
    known: dict[str, IdentityState] = {} if states is None else states
    out: list[Explanation] = []
    for event in events:
        states = {i: known[i] for i in mapper.distinct_ids(event) if i in known}
        states = with_merge_chains(states, known)
        outcome = mapper.map(event, states)
        known.update(outcome.states)
        out.append(explanation(event, outcome))
    return out


def explanation(event: PostHogEvent, outcome: MappingOutcome) -> Explanation:
    """The decision the mapper made for ``event``, as shown to a user."""
    return Explanation(
        uuid=event.uuid,
        event=event.event,
        distinct_id=event.distinct_id,
        decision="drop" if outcome.dropped is not None else "send",
        reason=outcome.dropped,
        operations=tuple(outcome.operations),
        truncations=dict(outcome.truncations),
        notes=(*event.notes, *outcome.notes),
    )


def format_explanation(expl: Explanation) -> str:
    """Readable multi-line text: the decision, then each operation's JSON body, pretty."""
    head = f"{expl.event}  distinct_id={expl.distinct_id}  uuid={expl.uuid}"
    if expl.decision == "drop":
        lines = [head, f"  DROP  reason: {expl.reason}"]
    else:
        n = len(expl.operations)
        lines = [head, f"  SEND  {n} operation{'s' if n != 1 else ''}"]
    for i, op in enumerate(expl.operations, 1):
        lines.append(f"  [{i}] {op.action} -> {ENDPOINT_LABELS.get(op.endpoint, op.endpoint)}")
        body = orjson.dumps(op.body, option=orjson.OPT_INDENT_2).decode()
        lines.extend("      " + line for line in body.splitlines())
    if expl.truncations:
        changes = ", ".join(f"{kind}={n}" for kind, n in sorted(expl.truncations.items()))
        # Counts of values shortened (limits) and of values left out (an illegal id, an
        # identifier in $set, an invalid email...): one label for both, said as such.
        lines.append(f"  changed or dropped for Customer.io: {changes}")
    lines.extend(f"  note: {note}" for note in expl.notes)
    return "\n".join(lines)
