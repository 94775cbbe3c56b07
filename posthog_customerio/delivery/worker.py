"""The delivery loop: claim → send → acknowledge, retry or dead-letter (DESIGN.md §5).

One claim becomes the requests of one task: one ``POST /api/v2/batch`` of its operations,
anonymous visitors' events included (``identifiers: {"anonymous_id"}``). Anonymous events go
one per ``POST /api/v1/events`` instead (in claim order, before the batch) when stored in
that shape, when ``anonymous_events_endpoint = "v1"``, or once Customer.io has refused
``anonymous_id`` batch items: then the refused items are re-sent through v1, nothing is
dead-lettered for it, and every later anonymous event of the process goes v1 directly. Up to
``max_in_flight`` tasks run at once; every request first takes a token from the shared rate
limiter. The queue row is the unit of truth: an operation is acked only after Customer.io
accepted it, and anything not settled is released.

Full batches under a live stream: a claim that is full (a backlog) is sent at once, as many
at a time as there are slots; one that is not (a trickle: it took everything ready) is held
open for ``batch_linger_secs`` and topped up with what became ready meanwhile, and only then
sent. Claims are made one after another, so under a steady stream a request that is not full
goes out at most once per ``batch_linger_secs``, however many slots are free: the request
budget a trickle spends is bounded, and an operation waits at most that long for company.

Order per partition holds because the queue never gives a partition to two claims at once, and
inside a claim a partition's later operations are never sent after an earlier one failed
transiently: once an operation of a partition is retried, the claim's remaining operations of
that partition are released untouched (the retry already blocks the partition).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from posthog_customerio.customerio.client import (
    ANONYMOUS_PATH,
    BATCH_PATH,
    TrackClient,
    TrackResponse,
)
from posthog_customerio.delivery.backoff import full_jitter_backoff, is_expired
from posthog_customerio.delivery.batch import (
    build_batch_body,
    claim_max_bytes,
    is_full,
    split_halves,
)
from posthog_customerio.delivery.outcome import Outcome, OutcomeKind, classify
from posthog_customerio.delivery.ratelimit import Limiter
from posthog_customerio.delivery.retrylog import RetryLog
from posthog_customerio.delivery.state import DeliveryState
from posthog_customerio.errors import QueueUnavailable
from posthog_customerio.mapping.operation import SOLO_ACTIONS, Endpoint, v1_anonymous_body
from posthog_customerio.metrics import Metrics
from posthog_customerio.posthog.capture import CaptureClient
from posthog_customerio.queue.base import ClaimedOperation, DeliveryQueue, Lane, Rejection
from posthog_customerio.settings import DeliverySettings

logger = logging.getLogger("posthog_customerio.delivery")

LIVE_LANE = frozenset({Lane.LIVE})
BACKFILL_LANE = frozenset({Lane.BACKFILL})
WAIT_FOR_WORK_MAX_SECS = 1.0  # even with a wake-up signal, look again for ended backoffs
RESPONSE_KEEP_BYTES = 64_000  # of a response body kept in a dead letter


class DeliveryWorker:
    """Delivers queued operations to Customer.io until ``stop`` is set, then drains."""

    def __init__(
        self,
        queue: DeliveryQueue,
        client: TrackClient,
        limiter: Limiter,
        settings: DeliverySettings,
        metrics: Metrics,
        state: DeliveryState,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        idle_poll_secs: float = 0.2,
        capture: CaptureClient | None = None,
        linger_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._queue = queue
        self._client = client
        self._limiter = limiter
        self._settings = settings
        self._metrics = metrics
        self._state = state
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._idle_poll_secs = idle_poll_secs
        self._linger_sleep = linger_sleep  # the wait of a batch that is not full (tests drive it)
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._claimed: dict[int, ClaimedOperation] = {}  # claimed and not yet settled
        self._paused = False  # credentials rejected: claim nothing
        self._trial = False  # after a pause: one claim at a time until a request gets through
        self._settled = asyncio.Event()  # a claim finished: its partitions may be claimable
        self._retry_log = RetryLog(logger, clock)
        self._recheck_now = asyncio.Event()  # reconfigured while paused: check credentials now
        self._backfill_credit = 0.0  # grows by backfill_share per claim; at 1 backfill leads
        self._anonymous_refused = False  # Customer.io refused anonymous_id batch items
        self._capture = capture  # PostHog's capture API (the reverse path), if configured
        metrics.rate_limit.set(limiter.current_rate)

    # ---------------------------------------------------------------- loop

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; then drain within ``shutdown_grace_secs``."""
        try:
            await self._race_stop(self._check_credentials(initial=True), stop)
            while not stop.is_set():
                if self._paused:
                    recheck = self._settings.credentials_recheck_secs
                    await self._race_stop(asyncio.sleep(recheck), stop, self._recheck_now)
                    self._recheck_now.clear()
                    if not stop.is_set():
                        await self._race_stop(self._check_credentials(initial=False), stop)
                    continue
                await self._dispatch(stop)
                if stop.is_set() or self._paused:
                    continue
                await self._wait_for_work(stop)
        finally:
            await self.drain(self._settings.shutdown_grace_secs)

    def reconfigure(self, settings: DeliverySettings, client: TrackClient | None = None) -> None:
        """Config reload (SIGHUP): new tuning, and a new client when the credentials changed.

        Requests already in flight finish on the old client (the caller closes it later); a
        paused worker re-checks the credentials at once. ``max_in_flight`` needs a restart.
        """
        self._settings = settings
        if client is not None:
            self._client = client
            self._recheck_now.set()

    async def drain(self, grace_secs: float) -> None:
        """Let in-flight requests finish for up to ``grace_secs``, cancel the rest, and give
        back every operation still claimed. Safe to call more than once."""
        tasks = set(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_secs)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
                logger.warning("shutdown grace over", extra=_ctx(cancelled_requests=len(pending)))
        if self._claimed:
            ids = list(self._claimed)
            self._claimed.clear()
            try:
                await self._queue.release(ids)
            except Exception:
                logger.exception("releasing claimed operations failed", extra=_ctx(ops=len(ids)))

    async def _dispatch(self, stop: asyncio.Event) -> None:
        """Claim and start requests while there is work and a free in-flight slot; a claim
        that is not full lingers first (``_linger``)."""
        while not stop.is_set() and not self._paused:
            max_ops = self._settings.batch_max_ops
            max_bytes = claim_max_bytes(self._settings.batch_max_bytes)
            if not await self._race_stop(self._slots.acquire(), stop):
                return
            if stop.is_set() or self._paused:
                self._slots.release()
                return
            self._settled.clear()  # a claim settling from here on must wake the next wait
            opened_at = self._clock()
            try:
                ops = await self._claim_by_lane(max_ops, max_bytes)
            except Exception as exc:
                self._slots.release()
                if isinstance(exc, QueueUnavailable):  # locked, disk full: expected, no trace
                    logger.warning("claim failed: queue unavailable", extra=_ctx(error=str(exc)))
                else:
                    logger.exception("claim failed")
                self._state.record_error(f"queue: {type(exc).__name__}: {exc}", self._clock())
                await self._race_stop(asyncio.sleep(self._idle_poll_secs), stop)
                return
            if not ops:
                self._slots.release()
                return
            self._track(ops)
            linger = self._settings.batch_linger_secs
            if linger > 0 and not is_full(ops, max_ops, max_bytes):
                ops = await self._linger(ops, opened_at + linger, max_ops, max_bytes, stop)
            task = asyncio.create_task(self._run_claim(ops))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            if self._trial:
                await self._race_stop(asyncio.shield(task), stop)
                if self._paused:
                    return
                self._trial = False

    async def _linger(
        self,
        ops: list[ClaimedOperation],
        deadline: float,
        max_ops: int,
        max_bytes: int,
        stop: asyncio.Event,
    ) -> list[ClaimedOperation]:
        """Hold a claim that is not full until ``deadline``, then top it up with what became
        ready meanwhile (partitions not in it: the queue never gives a partition to two
        claims, so each partition's operations stay in order). Stop cuts the wait short."""
        wait = deadline - self._clock()
        if wait > 0:
            await self._race_stop(self._linger_sleep(wait), stop)
        if stop.is_set() or self._paused:
            return ops
        room_ops = max_ops - len(ops)
        room_bytes = max_bytes - sum(len(op.body_json) for op in ops)
        if room_ops <= 0 or room_bytes <= 0:
            return ops
        try:
            more = await self._claim_by_lane(room_ops, room_bytes, top_up=True)
        except Exception:
            logger.exception("claim failed")  # send what the batch holds
            return ops
        self._track(more)
        return ops + more

    def _track(self, ops: Sequence[ClaimedOperation]) -> None:
        for op in ops:
            self._claimed[op.id] = op

    async def _claim_by_lane(
        self, max_ops: int, max_bytes: int, *, top_up: bool = False
    ) -> list[ClaimedOperation]:
        """One claim, led by the live lane, except that the backfill lane leads often enough
        to get at least ``backfill_share`` of the claims (one claim is one request) while both
        have work. What the leading lane leaves of the limits is filled from the other one.
        A ``top_up`` of a lingering batch is part of the same request: live first, no credit."""
        if top_up:
            backfill_leads = False
        else:
            share = self._settings.backfill_share
            self._backfill_credit = min(1.0, self._backfill_credit + share)
            backfill_leads = self._backfill_credit >= 1.0 - 1e-9
        lead, other = (BACKFILL_LANE, LIVE_LANE) if backfill_leads else (LIVE_LANE, BACKFILL_LANE)
        now = self._clock()
        ops = await self._queue.claim(max_ops, max_bytes, now, lanes=lead)
        room_bytes = max_bytes - sum(len(op.body_json) for op in ops)
        if len(ops) < max_ops and room_bytes > 0:
            try:
                more = await self._queue.claim(max_ops - len(ops), room_bytes, now, lanes=other)
            except Exception:
                if not ops:
                    raise
                logger.exception("claim failed")
                more = []
            if not ops:
                backfill_leads = other is BACKFILL_LANE
            ops += more
        if ops and backfill_leads and not top_up:
            self._backfill_credit = max(0.0, self._backfill_credit - 1.0)
        return ops

    async def _wait_for_work(self, stop: asyncio.Event) -> None:
        """Until the queue signals new work, a claim settles, or a poll interval."""
        try:
            await self._race_stop(
                self._queue.wait_for_work(WAIT_FOR_WORK_MAX_SECS), stop, self._settled
            )
        except Exception:
            logger.exception("waiting for work failed")
            await self._race_stop(asyncio.sleep(self._idle_poll_secs), stop)

    @staticmethod
    async def _race_stop(aw: Awaitable[Any], *events: asyncio.Event) -> bool:
        """Await ``aw`` unless one of ``events`` is set first (then cancel it); True if it
        completed. Its exception, if any, propagates."""
        fut = asyncio.ensure_future(aw)
        waiters = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait({fut, *waiters}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if not fut.done():
            fut.cancel()
            try:
                await fut
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        if fut.cancelled():
            return False
        fut.result()
        return True

    # ---------------------------------------------------------------- one claim

    async def _run_claim(self, ops: list[ClaimedOperation]) -> None:
        try:
            await self._deliver_claim(ops)
        except Exception as exc:
            logger.exception("delivery task failed", extra=_ctx(ops=len(ops)))
            self._state.record_error(f"delivery: {type(exc).__name__}: {exc}", self._clock())
            left = [op for op in ops if op.id in self._claimed]
            if left:
                try:
                    await self._release(left)
                except Exception:
                    logger.exception("releasing after a failure failed", extra=_ctx(ops=len(left)))
        finally:
            self._slots.release()
            self._settled.set()

    async def _deliver_claim(self, ops: list[ClaimedOperation]) -> None:
        blocked: set[str] = set()  # partitions retried in this claim: hold their later ops
        posthog = [op for op in ops if op.endpoint.is_posthog]
        if posthog:  # the reverse path: partitions of their own, requests of their own
            ops = [op for op in ops if not op.endpoint.is_posthog]
            await self._deliver_posthog(posthog, blocked)
        if ops:
            await self._deliver(ops, blocked)

    async def _deliver(self, ops: list[ClaimedOperation], blocked: set[str]) -> None:
        v1 = self._anonymous_v1()
        send, deferred = _defer_reordering(ops, v1)
        if deferred:
            await self._release(deferred)
        for op in send:
            if _goes_v1(op, v1):
                await self._send_anonymous(op, blocked)
        batch = [op for op in send if not _goes_v1(op, v1)]
        if batch:
            await self._send_batch(batch, blocked)

    def _anonymous_v1(self) -> bool:
        """Whether anonymous_id batch items go through ``POST /api/v1/events`` now."""
        return self._settings.anonymous_events_endpoint == "v1" or self._anonymous_refused

    def _anonymous_batch_refused(self, ops: int, detail: str) -> None:
        """Customer.io refused ``ops`` anonymous_id items: v1 for the rest of the process."""
        self._metrics.anonymous_fallback.inc(ops)
        if self._anonymous_refused:
            return
        self._anonymous_refused = True
        logger.warning(
            "Customer.io refused anonymous_id in /api/v2/batch; anonymous events go through "
            "POST /api/v1/events from now on, nothing is dropped",
            extra=_ctx(ops=ops, detail=detail),
        )

    async def _send_anonymous(self, op: ClaimedOperation, blocked: set[str]) -> None:
        if self._paused or op.partition in blocked:
            await self._release([op])
            return
        body = _v1_body(op)
        resp = await self._request("anonymous", lambda: self._client.post_anonymous_event(body), 1)
        outcome = self._classify(resp, 1)
        await self._apply(outcome, resp, [op], blocked)

    async def _send_batch(self, ops: list[ClaimedOperation], blocked: set[str]) -> None:
        held = ops if self._paused else [op for op in ops if op.partition in blocked]
        if held:
            await self._release(held)
            held_ids = {op.id for op in held}
            ops = [op for op in ops if op.id not in held_ids]
        if not ops:
            return
        body = build_batch_body(ops)
        if len(ops) > 1 and len(body) > self._settings.batch_max_bytes:
            for half in split_halves(ops):  # the item separators pushed it over
                await self._send_batch(half, blocked)
            return
        self._metrics.batch_operations.observe(len(ops))
        resp = await self._request("batch", lambda: self._client.post_batch(body), len(ops))
        anonymous = [i for i, op in enumerate(ops) if op.endpoint is Endpoint.ANONYMOUS_ITEM]
        outcome = self._classify(resp, len(ops), anonymous)
        if outcome.kind is OutcomeKind.FALLBACK:
            self._after_answer(outcome)
            self._anonymous_batch_refused(len(anonymous), outcome.detail)
            await self._deliver(ops, blocked)  # v1 from now on: the same ops, sent that way
            return
        if outcome.kind is OutcomeKind.SPLIT:
            self._after_answer(outcome)
            logger.info(
                "batch refused, splitting",
                extra=_ctx(ops=len(ops), status=resp.status, detail=outcome.detail),
            )
            for half in split_halves(ops):  # sequentially, so each partition keeps its order
                await self._deliver(half, blocked)  # anonymous items go v1 if refused since
            return
        await self._apply(outcome, resp, ops, blocked)

    async def _request(
        self, endpoint: str, send: Callable[[], Awaitable[TrackResponse]], ops: int
    ) -> TrackResponse:
        await self._limiter.acquire()
        resp = await send()
        label = str(resp.status) if resp.status is not None else _error_label(resp.error)
        self._metrics.requests.labels(endpoint, label).inc()
        self._metrics.request_duration.labels(endpoint).observe(resp.elapsed_secs)
        self._state.record_request(
            at=self._clock(),
            endpoint=endpoint,
            status=resp.status,
            ops=ops,
            elapsed_secs=resp.elapsed_secs,
            body=resp.body,
            error=resp.error,
        )
        return resp

    def _classify(
        self, resp: TrackResponse, item_count: int, anonymous: Sequence[int] = ()
    ) -> Outcome:
        return classify(
            resp,
            item_count=item_count,
            now=self._clock(),
            retry_after_max_secs=self._settings.retry_after_max_secs,
            anonymous=frozenset(anonymous),
        )

    # ---------------------------------------------------------------- PostHog (reverse path)

    async def _deliver_posthog(self, ops: list[ClaimedOperation], blocked: set[str]) -> None:
        """Reporting events to PostHog's ``/batch/``; unreadable reporting bodies straight to
        the dead letters. Neither takes a Customer.io rate token nor pauses Customer.io."""
        unreadable = [op for op in ops if op.endpoint is Endpoint.REPORTING_UNREADABLE]
        if unreadable:
            await self._dead_letter([_unreadable_rejection(op) for op in unreadable])
        capture = [op for op in ops if op.endpoint is Endpoint.POSTHOG_CAPTURE]
        if not capture:
            return
        if self._capture is None:
            detail = "posthog_capture_url / posthog_project_api_key not configured"
            now = self._clock()
            await self._queue.retry(
                [op.id for op in capture], now + self._settings.retry_max_backoff_secs, detail
            )
            self._untrack(capture)
            self._state.record_error(f"capture: {detail}", now)
            return
        await self._send_capture(self._capture, capture, blocked)

    async def _send_capture(
        self, client: CaptureClient, ops: list[ClaimedOperation], blocked: set[str]
    ) -> None:
        held = [op for op in ops if op.partition in blocked]
        if held:
            await self._release(held)
            ops = [op for op in ops if op.partition not in blocked]
        if not ops:
            return
        bodies = [op.body_json for op in ops]
        resp = await client.post_batch(bodies)
        label = str(resp.status) if resp.status is not None else _error_label(resp.error)
        self._metrics.requests.labels("capture", label).inc()
        self._metrics.request_duration.labels("capture").observe(resp.elapsed_secs)
        self._state.record_request(
            at=self._clock(),
            endpoint="capture",
            status=resp.status,
            ops=len(ops),
            elapsed_secs=resp.elapsed_secs,
            body=resp.body,
            error=resp.error,
        )
        outcome = self._classify(resp, len(ops))
        kind = outcome.kind
        if kind is OutcomeKind.DELIVERED or kind is OutcomeKind.PARTIAL:
            await self._ack(ops)  # PostHog's /batch/ answers all or nothing; 207 is not it
        elif kind is OutcomeKind.SPLIT:
            for half in split_halves(ops):
                await self._send_capture(client, half, blocked)
        elif kind is OutcomeKind.RETRY or kind is OutcomeKind.AUTH:
            # A refused project key is PostHog's, not Customer.io's: keep everything, retry.
            await self._retry(ops, outcome, resp, blocked)
        else:
            self._record_error("capture", outcome)
            await self._dead_letter(
                [_capture_rejection(client, op, outcome.detail, resp) for op in ops]
            )

    # ---------------------------------------------------------------- outcomes

    async def _apply(
        self,
        outcome: Outcome,
        resp: TrackResponse,
        ops: list[ClaimedOperation],
        blocked: set[str],
    ) -> None:
        self._after_answer(outcome)
        kind = outcome.kind
        if kind is OutcomeKind.DELIVERED:
            await self._ack(ops)
        elif kind is OutcomeKind.PARTIAL:
            bad = [(ops[i], detail) for i, detail in sorted(outcome.failed.items())]
            await self._dead_letter(
                [self._rejection(op, "rejected", detail, resp) for op, detail in bad]
            )
            resend = [ops[i] for i in sorted(outcome.fallback)]
            set_apart = {op.id for op, _ in bad} | {op.id for op in resend}
            await self._ack([op for op in ops if op.id not in set_apart])
            if resend:
                self._anonymous_batch_refused(len(resend), outcome.detail)
                for op in resend:
                    await self._send_anonymous(op, blocked)
        elif kind is OutcomeKind.AUTH:
            await self._release(ops)
            self._pause(outcome.detail)
        elif kind is OutcomeKind.RETRY:
            await self._retry(ops, outcome, resp, blocked)
        else:  # REJECTED, or SPLIT of something that cannot be split
            self._record_error(resp.endpoint, outcome)
            await self._dead_letter(
                [self._rejection(op, "rejected", outcome.detail, resp) for op in ops]
            )

    def _after_answer(self, outcome: Outcome) -> None:
        """Feed the limiter (AIMD) and the credentials state from any answer."""
        if outcome.throttled:
            self._limiter.on_throttled()
        elif outcome.kind is not OutcomeKind.RETRY and outcome.kind is not OutcomeKind.AUTH:
            self._limiter.on_success()
        self._metrics.rate_limit.set(self._limiter.current_rate)
        if outcome.kind in (
            OutcomeKind.DELIVERED,
            OutcomeKind.PARTIAL,
            OutcomeKind.SPLIT,
            OutcomeKind.FALLBACK,
        ):
            self._credentials_ok()

    async def _retry(
        self,
        ops: list[ClaimedOperation],
        outcome: Outcome,
        resp: TrackResponse,
        blocked: set[str],
    ) -> None:
        now = self._clock()
        max_age = self._settings.max_event_age_secs
        live: list[ClaimedOperation] = []
        expired: list[Rejection] = []
        detail = f"not accepted within max_event_age_secs={max_age:g}; last: {outcome.detail}"
        for op in ops:
            if is_expired(op.enqueued_at, now, max_age):
                expired.append(self._rejection(op, "expired", detail, resp))
            else:
                live.append(op)
        await self._dead_letter(expired)
        self._record_error(resp.endpoint, outcome)
        if not live:
            return
        backoff = full_jitter_backoff(
            max(op.attempts for op in live),
            self._settings.retry_initial_backoff_secs,
            self._settings.retry_max_backoff_secs,
            self._rng,
        )
        delay = max(outcome.retry_after or 0.0, backoff)
        await self._queue.retry([op.id for op in live], now + delay, outcome.detail)
        self._untrack(live)
        blocked.update(op.partition for op in live)
        self._metrics.operations_retried.labels(outcome.reason).inc(len(live))
        self._state.retried += len(live)
        self._retry_log.retried(  # one line, then one summary per interval in a storm
            endpoint=resp.endpoint,
            status=resp.status,
            reason=outcome.reason,
            ops=len(live),
            delay_secs=delay,
            detail=outcome.detail,
        )

    def _pause(self, detail: str) -> None:
        """Credentials refused: stop claiming, keep everything, re-check periodically."""
        was_rejected = self._state.credentials == "rejected"
        self._paused = True
        self._trial = False
        now = self._clock()
        self._state.credentials = "rejected"
        self._state.paused_until = now + self._settings.credentials_recheck_secs
        self._state.record_error(f"credentials rejected: {detail}", now)
        self._metrics.credentials_ok.set(0)
        if not was_rejected:
            logger.error(
                "Customer.io rejected the credentials; delivery paused, nothing is dropped",
                extra=_ctx(
                    detail=detail,
                    recheck_secs=self._settings.credentials_recheck_secs,
                ),
            )

    def _credentials_ok(self) -> None:
        if self._state.credentials == "rejected":
            logger.warning("Customer.io accepts the credentials again; delivery resumed")
        self._state.credentials = "ok"
        self._state.paused_until = None
        self._metrics.credentials_ok.set(1)

    async def _check_credentials(self, *, initial: bool) -> None:
        """``GET /api/v1/accounts/region``. On start-up it only sets the state; while paused,
        anything but a refusal lets one real claim through to decide."""
        resp = await self._request("region", self._client.get_region, 0)
        outcome = self._classify(resp, 1)
        if outcome.kind is OutcomeKind.AUTH:
            self._pause(outcome.detail)
            return
        if outcome.kind is OutcomeKind.DELIVERED:
            self._credentials_ok()
        elif initial:
            logger.warning(
                "could not check the credentials",
                extra=_ctx(status=resp.status, detail=outcome.detail),
            )
        if not initial:
            self._paused = False
            self._trial = True
            self._state.paused_until = None

    def _record_error(self, endpoint: str, outcome: Outcome) -> None:
        self._state.record_error(f"{endpoint}: {outcome.detail}", self._clock())

    # ---------------------------------------------------------------- queue calls

    async def _ack(self, ops: Sequence[ClaimedOperation]) -> None:
        if not ops:
            return
        await self._queue.ack([op.id for op in ops])
        self._untrack(ops)
        now = self._clock()
        m = self._metrics
        for action, n in Counter(op.action for op in ops).items():  # one increment per action
            m.count(m.operations_delivered, action, n)
        observe = m.delivery_latency.observe
        for op in ops:
            observe(max(now - op.enqueued_at, 0.0))
        self._state.delivered += len(ops)
        self._retry_log.flush()  # a storm that ends: its last summary line

    async def _dead_letter(self, rejections: list[Rejection]) -> None:
        if not rejections:
            return
        await self._queue.dead_letter(rejections)
        for rejection in rejections:
            self._claimed.pop(rejection.op_id, None)
            self._metrics.operations_dead_lettered.labels(rejection.reason).inc()
        self._state.dead_lettered += len(rejections)
        reasons: dict[str, int] = {}
        for rejection in rejections:
            reasons[rejection.reason] = reasons.get(rejection.reason, 0) + 1
        first = rejections[0]
        logger.warning(
            "dead-lettered",
            extra=_ctx(
                ops=len(rejections), reasons=reasons, status=first.status, detail=first.detail
            ),
        )

    async def _release(self, ops: Sequence[ClaimedOperation]) -> None:
        if not ops:
            return
        await self._queue.release([op.id for op in ops])
        self._untrack(ops)

    def _untrack(self, ops: Sequence[ClaimedOperation]) -> None:
        """Drop settled operations from ``_claimed`` (what close gives back); not GDPR forget."""
        for op in ops:
            self._claimed.pop(op.id, None)

    def _rejection(
        self, op: ClaimedOperation, reason: str, detail: str, resp: TrackResponse
    ) -> Rejection:
        if op.endpoint is Endpoint.POSTHOG_CAPTURE and self._capture is not None:
            return _capture_rejection(self._capture, op, detail, resp, reason)
        if op.endpoint is Endpoint.ANONYMOUS or resp.endpoint == "anonymous":
            request = self._client.redacted_request("POST", ANONYMOUS_PATH, _v1_body(op))
        else:  # the request that carries this operation alone
            request = self._client.redacted_request("POST", BATCH_PATH, build_batch_body([op]))
        if resp.error is not None:
            response = resp.error
        else:
            response = resp.body[:RESPONSE_KEEP_BYTES].decode("utf-8", errors="replace")
        return Rejection(
            op_id=op.id,
            reason=reason,
            detail=detail,
            request=request,
            response=response,
            status=resp.status,
        )


def _unreadable_rejection(op: ClaimedOperation) -> Rejection:
    """A signed reporting body that did not parse or was too large: its bytes (as text) are
    the request."""
    kept = orjson.loads(op.body_json)
    raw = kept.get("raw_hex") or kept.get("raw") or ""
    return Rejection(
        op_id=op.id,
        reason=str(kept.get("reason") or "unreadable_reporting"),  # or reporting_too_large
        detail=str(kept.get("problem", "")),
        request=f"POST /customerio/reporting\n\n{raw}",
    )


def _capture_rejection(
    client: CaptureClient,
    op: ClaimedOperation,
    detail: str,
    resp: TrackResponse,
    reason: str = "rejected",
) -> Rejection:
    response = (
        resp.error
        if resp.error is not None
        else resp.body[:RESPONSE_KEEP_BYTES].decode("utf-8", errors="replace")
    )
    return Rejection(
        op_id=op.id,
        reason=reason,
        detail=detail,
        request=client.redacted_request([op.body_json]),
        response=response,
        status=resp.status,
    )


def _goes_v1(op: ClaimedOperation, anonymous_v1: bool) -> bool:
    """Whether ``op`` is sent as a v1 anonymous event rather than as a batch item."""
    endpoint = op.endpoint
    return endpoint is Endpoint.ANONYMOUS or (anonymous_v1 and endpoint is Endpoint.ANONYMOUS_ITEM)


def _v1_body(op: ClaimedOperation) -> bytes:
    """The ``POST /api/v1/events`` body of an anonymous operation, in either stored shape."""
    if op.endpoint is Endpoint.ANONYMOUS:
        return op.body_json
    return orjson.dumps(v1_anonymous_body(orjson.loads(op.body_json)))


def _defer_reordering(
    ops: list[ClaimedOperation], anonymous_v1: bool
) -> tuple[list[ClaimedOperation], list[ClaimedOperation]]:
    """Split a claim into what can be sent now and what must wait for the next claim.

    v1 anonymous events go out before the batch, so a partition's v1 operation that comes
    after one of its batch operations would overtake it; that one and the rest of its
    partition are deferred (released, and claimed again once this claim is settled). A merge
    or a link (``SOLO_ACTIONS``) shares its request with no other operation of its partition:
    it is deferred behind earlier ones, and what follows it waits for the next claim.
    """
    send: list[ClaimedOperation] = []
    deferred: list[ClaimedOperation] = []
    with_batch: set[str] = set()
    sent: set[str] = set()
    cut: set[str] = set()
    for op in ops:
        v1 = _goes_v1(op, anonymous_v1)
        solo = op.action in SOLO_ACTIONS
        if (
            op.partition in cut
            or (v1 and op.partition in with_batch)
            or (solo and op.partition in sent)
        ):
            cut.add(op.partition)
            deferred.append(op)
            continue
        if not v1:
            with_batch.add(op.partition)
        if solo:
            cut.add(op.partition)
        sent.add(op.partition)
        send.append(op)
    return send, deferred


def _ctx(**context: Any) -> dict[str, Any]:
    """Log context, rendered as key=value (or JSON fields) by ``posthog_customerio.logs``."""
    return {"ctx": context}


def _error_label(error: str | None) -> str:
    return (error or "error").split(":", 1)[0]
