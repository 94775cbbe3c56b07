"""The dry run: a backfill that maps and counts, and writes nothing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from posthog_customerio.mapping.explain import Explanation, explain
from posthog_customerio.mapping.identity import IdentityState
from posthog_customerio.mapping.rules import MappingRules
from posthog_customerio.queue.base import Checkpoint, IngestResult, Lane
from posthog_customerio.sources.event import PostHogEvent


class DryRun:
    """An ``IngestFn`` that maps with ``explain`` (in-memory identity state) and writes
    nothing; keeps a few samples of what would be sent and dropped."""

    def __init__(self, rules: MappingRules, samples: int = 3) -> None:
        self._rules = rules
        self._states: dict[str, IdentityState] = {}
        self._seen: set[str] = set()
        self._samples = samples
        self.sends: list[Explanation] = []
        self.drops: list[Explanation] = []

    async def __call__(
        self, events: Sequence[PostHogEvent], *, lane: Lane, checkpoint: Checkpoint | None
    ) -> IngestResult:
        dropped: Counter[str] = Counter()
        fresh = []
        for event in events:
            if event.uuid in self._seen:
                dropped["duplicate"] += 1
            else:
                self._seen.add(event.uuid)
                fresh.append(event)
        actions: Counter[str] = Counter()
        accepted = 0
        for expl in explain(fresh, self._rules, self._states):
            actions.update(op.action for op in expl.operations)
            if expl.operations:
                accepted += 1
                if len(self.sends) < self._samples:
                    self.sends.append(expl)
            else:
                dropped[expl.reason or "nothing_to_send"] += 1
                if len(self.drops) < self._samples:
                    self.drops.append(expl)
        return IngestResult(accepted=accepted, dropped=dict(dropped), actions=dict(actions))
