"""Group commit: concurrent ingest calls wait together and share one transaction.

Every COMMIT is an fsync (SQLite) or a round trip and a WAL flush (PostgreSQL), so a store's
writer takes every ingest call already waiting, plans them together (``queue.plan``), writes
them in one transaction and answers each caller after the COMMIT. The stores differ only in
who the writer is (SQLite's thread, PostgreSQL's tasks); the front (``GroupCommittedIngest``),
the collecting of waiting calls (``take_waiting``) and the answering (``settle``) are here.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from posthog_customerio.mapping.mapper import Mapper
from posthog_customerio.queue.base import Checkpoint, IngestResult, Lane
from posthog_customerio.queue.plan import IngestCall
from posthog_customerio.queue.wakeup import WorkSignal
from posthog_customerio.sources.event import PostHogEvent

T = TypeVar("T")


@dataclass(slots=True)
class PendingIngest(IngestCall):
    """One ingest call waiting to be written, with the future its caller awaits."""

    future: asyncio.Future[IngestResult]


def take_waiting(first: T, get_nowait: Callable[[], T | None], limit: int) -> tuple[list[T], bool]:
    """``first`` and what already waits behind it, up to ``limit`` items; and whether the stop
    sentinel (``None``) was among them (the writer stops after this group)."""
    group = [first]
    while len(group) < limit:
        try:
            item = get_nowait()
        except (queue.Empty, asyncio.QueueEmpty):
            break
        if item is None:
            return group, True
        group.append(item)
    return group, False


def settle(
    calls: Sequence[PendingIngest], outcomes: Sequence[IngestResult | BaseException]
) -> None:
    """Answer each caller (in its loop's thread) with its result or exception."""
    for call, outcome in zip(calls, outcomes, strict=True):
        if call.future.done():  # the caller gave up; what committed stays committed
            continue
        if isinstance(outcome, BaseException):
            call.future.set_exception(outcome)
        else:
            call.future.set_result(outcome)


class GroupCommittedIngest:
    """``Queue.ingest`` for a store with a group-committing writer.

    The store hands the call to its writer in ``_enqueue_ingest``; a commit that enqueued
    operations wakes the store's delivery through ``_work``.
    """

    _work: WorkSignal

    async def ingest(
        self,
        events: Sequence[PostHogEvent],
        mapper: Mapper,
        *,
        lane: Lane = Lane.LIVE,
        checkpoint: Checkpoint | None = None,
    ) -> IngestResult:
        if not events and checkpoint is None:
            return IngestResult()
        future: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        await self._enqueue_ingest(PendingIngest(list(events), mapper, lane, checkpoint, future))
        result = await future
        if result.actions:
            self._work.set()
        return result

    async def _enqueue_ingest(self, call: PendingIngest) -> None:
        raise NotImplementedError
