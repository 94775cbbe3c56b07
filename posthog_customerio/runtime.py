"""Wiring: the long-lived parts of ``serve`` and their start/stop order.

``Connector`` owns the queue, the mapper, the Customer.io client and the delivery worker; the
web app only calls it. Start: queue (crash recovery happens here) → delivery. Stop: stop
taking webhooks → drain delivery within the grace period → close the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from posthog_customerio import logs
from posthog_customerio.customerio.client import TrackClient
from posthog_customerio.delivery.budget import limiter_for
from posthog_customerio.delivery.ratelimit import Limiter
from posthog_customerio.delivery.state import DeliveryState
from posthog_customerio.delivery.worker import DeliveryWorker
from posthog_customerio.errors import ConfigError
from posthog_customerio.mapping.mapper import EventMapper
from posthog_customerio.metrics import Metrics
from posthog_customerio.pipeline.reporting import ReportingState
from posthog_customerio.posthog.capture import CaptureClient
from posthog_customerio.queue.base import Checkpoint, IngestResult, Lane, Queue, QueueStats
from posthog_customerio.queue.location import StoreLocation, redact_url
from posthog_customerio.settings import (
    OPTIONS,
    Reload,
    Settings,
    missing_webhook_secret,
    plan_reload,
    secret_values,
)
from posthog_customerio.sources.event import PostHogEvent, note_field

if TYPE_CHECKING:
    from posthog_customerio.pipeline.follow import FollowState

log = logging.getLogger("posthog_customerio.runtime")

SANDBOX_PREFIX = "/sandbox"
PRUNE_FIRST_SECS = 60.0
PRUNE_EVERY_SECS = 3600.0
SANDBOX_CREDENTIALS = ("sandbox", "sandbox")


def store_location(settings: Settings) -> StoreLocation:
    """Where the queue of ``settings`` lives; every command opens it through this."""
    d = settings.delivery
    return StoreLocation(
        settings.effective_database_url, lease_secs=d.lease_secs, heartbeat_secs=d.heartbeat_secs
    )


@dataclass(frozen=True, slots=True)
class Target:
    """Where delivery sends, and whether that is the embedded sandbox."""

    url: str
    site_id: str
    api_key: str
    sandbox: bool


def delivery_target(settings: Settings, own_url: str) -> Target:
    """Real Customer.io with credentials; the embedded sandbox with ``--sandbox`` or none."""
    if settings.sandbox or not settings.has_credentials:
        site, key = SANDBOX_CREDENTIALS
        return Target(own_url + SANDBOX_PREFIX, site, key, sandbox=True)
    assert settings.site_id is not None and settings.api_key is not None
    return Target(
        settings.effective_track_url,
        settings.site_id,
        settings.api_key.get_secret_value(),
        sandbox=False,
    )


def capture_client(settings: Settings) -> CaptureClient | None:
    """PostHog's capture API for the reverse path, when configured."""
    if settings.posthog_capture_url is None or settings.posthog_project_api_key is None:
        return None
    return CaptureClient(
        settings.posthog_capture_url,
        settings.posthog_project_api_key.get_secret_value(),
        timeout_secs=settings.delivery.request_timeout_secs,
    )


class Connector:
    """The running service: ingest into the queue, deliver from it."""

    def __init__(
        self,
        settings: Settings,
        target: Target,
        metrics: Metrics | None = None,
        *,
        reload_settings: Callable[[], Settings] | None = None,
    ):
        self.settings = settings
        self._reload_settings = reload_settings  # re-reads the config sources (SIGHUP)
        self._limiter: Limiter | None = None
        self._retired_clients: list[TrackClient] = []
        self.target = target
        self.metrics = metrics or Metrics()
        self.state = DeliveryState()
        self.mapper = EventMapper(settings.mapping_rules())
        self.started_at = time.time()
        self._queue: Queue | None = None
        self._client: TrackClient | None = None
        self._worker: DeliveryWorker | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stats_cache: tuple[float, QueueStats] | None = None
        self._follow: asyncio.Task[None] | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self.follow_state: FollowState | None = None  # serve --follow-posthog, for status
        self.reporting = ReportingState()  # Customer.io's reporting webhooks, for status
        self._capture: CaptureClient | None = None  # PostHog's capture API (reverse path)

    @property
    def queue(self) -> Queue:
        if self._queue is None:
            raise RuntimeError("connector not started")
        return self._queue

    async def start(self) -> None:
        self._queue = store_location(self.settings).open(owner=True)
        await self._queue.start()  # fail at start-up rather than on the first webhook
        d = self.settings.delivery
        self._client = TrackClient(
            self.target.url,
            self.target.site_id,
            self.target.api_key,
            timeout_secs=d.request_timeout_secs,
        )
        # PostgreSQL: one budget for all processes; SQLite: this process's own bucket.
        limiter = self._limiter = limiter_for(self._queue, d.rate_limit_rps)
        self._capture = capture_client(self.settings)
        self._worker = DeliveryWorker(
            self._queue, self._client, limiter, d, self.metrics, self.state, capture=self._capture
        )
        self._task = asyncio.create_task(self._worker.run(self._stop), name="delivery")
        if self.settings.follow_posthog:
            self._follow = asyncio.create_task(self._follow_posthog(), name="posthog-follow")
        self._maintenance = asyncio.create_task(self._prune_seen_loop(), name="maintenance")
        if self._reload_settings is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
        log.info(
            "connector started",
            extra={
                "ctx": {
                    "database": redact_url(self.settings.effective_database_url),
                    "customerio": self.target.url,
                    "sandbox": self.target.sandbox,
                }
            },
        )

    async def stop(self) -> None:
        """Drain in-flight deliveries within the grace period, then close the queue."""
        self._stop.set()
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(BaseException):
                await self._maintenance
        if self._follow is not None:  # it stops after its current chunk (committed or not)
            try:
                await asyncio.wait_for(self._follow, self.settings.delivery.shutdown_grace_secs)
            except BaseException:
                self._follow.cancel()
        if self._reload_settings is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self._worker is not None:
            with contextlib.suppress(Exception):
                await self._worker.drain(self.settings.delivery.shutdown_grace_secs)
        if self._task is not None:
            grace = self.settings.delivery.shutdown_grace_secs + 1
            try:
                await asyncio.wait_for(self._task, timeout=grace)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
        for client in [self._client, *self._retired_clients]:
            if client is not None:
                await client.aclose()
        if self._capture is not None:
            await self._capture.aclose()
        if self._queue is not None:
            await self._queue.close()
        log.info("connector stopped")

    async def _prune_seen_loop(self) -> None:
        """Keep the dedup table to ``dedup_window_secs``: a minute after start, then hourly."""
        delay = PRUNE_FIRST_SECS
        while True:
            await asyncio.sleep(delay)
            delay = PRUNE_EVERY_SECS
            cutoff = time.time() - self.settings.dedup_window_secs
            try:
                pruned = await self.queue.prune_seen(cutoff)
            except Exception as exc:  # retried next round; the webhook path is unaffected
                log.warning("pruning dedup uuids failed", extra={"ctx": {"error": str(exc)}})
                continue
            if pruned:
                log.info("pruned dedup uuids", extra={"ctx": {"uuids": pruned}})

    # ---------------------------------------------------------------- reload (SIGHUP)

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading the configuration")
        self.reload_from_sources()

    def reload_from_sources(self) -> list[str]:
        """Re-read the config sources ``serve`` started with and apply what changed.

        An invalid new config changes nothing: every problem is logged and the running config
        stays. Returns the changes applied (or kept for a restart), as logged.
        """
        if self._reload_settings is None:
            return []
        try:
            new = self._reload_settings()
        except ConfigError as exc:
            log.error(
                "config reload failed; the running config is kept",
                extra={"ctx": {"problems": len(exc.problems)}},
            )
            for problem in exc.problems:
                log.error("config reload problem", extra={"ctx": {"problem": problem}})
            return []
        return self.reload(new)

    def reload(self, new: Settings) -> list[str]:
        """Apply ``new`` to the running connector as the options' declarations say
        (``settings.plan_reload``): each message names an option whose new value is now in
        effect, or says it waits for a restart. Never logs a secret's value."""
        plan = plan_reload(self.settings, new, sandbox=self.target.sandbox)
        effective = plan.effective
        if missing_webhook_secret(effective):
            log.error(
                "config reload refused; the running config is kept",
                extra={"ctx": {"problem": "webhook_secret: required on a non-loopback address"}},
            )
            return []
        logs.add_secrets(secret_values(new))
        self.settings = effective
        applied = {OPTIONS[name].reload for name in plan.applied}
        if Reload.MAPPING in applied:
            self.mapper = EventMapper(effective.mapping_rules())
        if Reload.CREDENTIALS in applied:
            assert effective.site_id is not None and effective.api_key is not None
            self.target = Target(
                effective.effective_track_url,
                effective.site_id,
                effective.api_key.get_secret_value(),
                sandbox=False,
            )
        client: TrackClient | None = None
        if applied & {Reload.CREDENTIALS, Reload.CLIENT} and self._client is not None:
            self._retired_clients.append(self._client)  # in-flight requests finish on it
            client = self._client = TrackClient(
                self.target.url,
                self.target.site_id,
                self.target.api_key,
                timeout_secs=effective.delivery.request_timeout_secs,
            )
        if self._worker is not None:
            self._worker.reconfigure(effective.delivery, client)
        if Reload.RATE_LIMIT in applied and self._limiter is not None:
            self._limiter.set_max_rate(effective.delivery.rate_limit_rps)
        messages = list(plan.messages) or ["nothing changed"]
        for message in messages:
            log.info("config reloaded", extra={"ctx": {"change": message}})
        return messages

    async def ingest(
        self,
        events: Sequence[PostHogEvent],
        source: str,
        *,
        lane: Lane = Lane.LIVE,
        checkpoint: Checkpoint | None = None,
    ) -> IngestResult:
        """Map and commit; returns once durable. Counts metrics for the caller's source."""
        result = await self.queue.ingest(events, self.mapper, lane=lane, checkpoint=checkpoint)
        m = self.metrics
        m.count(m.events_received, source, len(events))
        for reason, n in result.dropped.items():
            m.count(m.events_dropped, reason, n)
        for action, n in result.actions.items():
            m.count(m.operations_enqueued, action, n)
        for kind, n in result.truncations.items():
            m.count(m.mapping_truncations, kind, n)
        for event in events:
            for note in event.notes:  # usually none: the loop is the whole cost
                m.count(m.event_field_notes, note_field(note))
        return result

    async def _follow_posthog(self) -> None:
        """``serve --follow-posthog``: the PostHog API source in-process (DESIGN.md §7)."""
        from posthog_customerio.pipeline.follow import PostHogFollow

        follower = PostHogFollow.new_events(self.settings)
        self.follow_state = follower.state

        async def ingest(
            events: Sequence[PostHogEvent], *, lane: Lane, checkpoint: Checkpoint | None
        ) -> IngestResult:
            return await self.ingest(events, "posthog_api", lane=lane, checkpoint=checkpoint)

        await follower.keep_following(ingest, self.queue.get_checkpoint, self._stop)

    async def stats(self, max_age_secs: float = 1.0) -> QueueStats:
        """Queue stats, cached briefly so scrapes and page polls stay cheap."""
        now = time.time()
        if self._stats_cache is not None and now - self._stats_cache[0] < max_age_secs:
            return self._stats_cache[1]
        stats = await self.queue.stats(now)
        self._stats_cache = (now, stats)
        m = self.metrics
        m.queue_depth.set(stats.depth)
        m.queue_oldest_age.set(stats.oldest_age_secs)
        m.dead_letters.set(stats.dead_letters)
        return stats
