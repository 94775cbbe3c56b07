"""The dry run: a backfill that maps and counts, and writes nothing."""

from __future__ import annotations

from collections.abc import Sequence

from posthog_customerio.mapping.explain import Explanation, explanation
from posthog_customerio.mapping.identity import IdentityState
from posthog_customerio.mapping.mapper import EventMapper, MappingOutcome
from posthog_customerio.mapping.rules import MappingRules
from posthog_customerio.queue import plan as ingest_plan
from posthog_customerio.queue.base import Checkpoint, IngestResult, Lane
from posthog_customerio.queue.plan import IngestCall
from posthog_customerio.sources.event import PostHogEvent


class DryRun:
    """An ``IngestFn`` that plans each chunk as the queue would (``queue.plan``) over in-memory
    seen uuids and identity states, and writes nothing; keeps a few samples of what would be
    sent and dropped."""

    def __init__(self, rules: MappingRules, samples: int = 3) -> None:
        self._mapper = EventMapper(rules)
        self._states: dict[str, IdentityState] = {}
        self._seen: set[str] = set()
        self._samples = samples
        self.sends: list[Explanation] = []
        self.drops: list[Explanation] = []

    async def __call__(
        self, events: Sequence[PostHogEvent], *, lane: Lane, checkpoint: Checkpoint | None
    ) -> IngestResult:
        calls = [IngestCall(events, self._mapper, lane, checkpoint)]
        read = ingest_plan.reads(calls)
        known = self._states
        stored = ingest_plan.load_states(read, lambda ids: {i: known[i] for i in ids if i in known})
        planned = ingest_plan.plan(calls, read, self._seen, stored, observe=self._sample)
        [result] = planned.results
        if isinstance(result, Exception):
            raise result
        self._seen.update(planned.new_uuids)
        self._states.update(planned.states)
        return result

    def _sample(self, event: PostHogEvent, outcome: MappingOutcome) -> None:
        kept = self.sends if outcome.operations else self.drops
        if len(kept) < self._samples:
            kept.append(explanation(event, outcome))
