"""Wiring: the long-lived parts of ``serve`` and their start/stop order.

``Connector`` owns the queue, the mapper, the Customer.io client and the delivery worker; the
web app only calls it. Start: queue (crash recovery happens here) → delivery. Stop: stop
taking webhooks → drain delivery within the grace period → close the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from posthog_customerio.customerio.client import TrackClient
from posthog_customerio.delivery.ratelimit import RateLimiter
from posthog_customerio.delivery.state import DeliveryState
from posthog_customerio.delivery.worker import DeliveryWorker
from posthog_customerio.errors import ConfigError
from posthog_customerio.mapping.mapper import EventMapper
from posthog_customerio.metrics import Metrics
from posthog_customerio.queue.base import IngestResult, Queue, QueueStats
from posthog_customerio.queue.sqlite import SQLiteQueue
from posthog_customerio.settings import Settings
from posthog_customerio.sources.event import PostHogEvent

log = logging.getLogger("posthog_customerio.runtime")

SANDBOX_PREFIX = "/sandbox"
SANDBOX_CREDENTIALS = ("sandbox", "sandbox")


def sqlite_path(database_url: str) -> Path:
    """``sqlite:///relative/or/absolute.db`` → a path (``sqlite:////abs`` is absolute)."""
    if not database_url.startswith("sqlite:///"):
        raise ConfigError([f"database_url: {database_url.split(':', 1)[0]!r} is not supported"])
    return Path(database_url.removeprefix("sqlite:///"))


def open_queue(settings: Settings, *, owner: bool) -> Queue:
    """The queue named by ``database_url``; creates the data directory on first use."""
    path = sqlite_path(settings.effective_database_url)
    path.parent.mkdir(parents=True, exist_ok=True)
    return SQLiteQueue.open(path, owner=owner)


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


class Connector:
    """The running service: ingest into the queue, deliver from it."""

    def __init__(self, settings: Settings, target: Target, metrics: Metrics | None = None):
        self.settings = settings
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

    @property
    def queue(self) -> Queue:
        if self._queue is None:
            raise RuntimeError("connector not started")
        return self._queue

    async def start(self) -> None:
        self._queue = open_queue(self.settings, owner=True)
        d = self.settings.delivery
        self._client = TrackClient(
            self.target.url,
            self.target.site_id,
            self.target.api_key,
            timeout_secs=d.request_timeout_secs,
        )
        limiter = RateLimiter(d.rate_limit_rps)
        self._worker = DeliveryWorker(
            self._queue, self._client, limiter, d, self.metrics, self.state
        )
        self._task = asyncio.create_task(self._worker.run(self._stop), name="delivery")
        log.info(
            "connector started",
            extra={
                "ctx": {
                    "database": self.settings.effective_database_url,
                    "customerio": self.target.url,
                    "sandbox": self.target.sandbox,
                }
            },
        )

    async def stop(self) -> None:
        """Drain in-flight deliveries within the grace period, then close the queue."""
        self._stop.set()
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
        if self._client is not None:
            await self._client.aclose()
        if self._queue is not None:
            await self._queue.close()
        log.info("connector stopped")

    async def ingest(self, events: list[PostHogEvent], source: str) -> IngestResult:
        """Map and commit; returns once durable. Counts metrics for the caller's source."""
        result = await self.queue.ingest(events, self.mapper)
        m = self.metrics
        m.events_received.labels(source).inc(len(events))
        for reason, n in result.dropped.items():
            m.events_dropped.labels(reason).inc(n)
        for action, n in result.actions.items():
            m.operations_enqueued.labels(action).inc(n)
        for kind, n in result.truncations.items():
            m.mapping_truncations.labels(kind).inc(n)
        return result

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
