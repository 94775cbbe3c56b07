"""The last hour of the connector, in process, for the status page's charts.

Every ``SAMPLE_INTERVAL_SECS`` the sampler reads the Prometheus counters (cumulative totals),
stores the difference with the previous reading plus the gauges of that instant (queue depth,
oldest pending age, rate limit), and keeps the last ``HISTORY_POINTS`` such points in a ring:
an hour at 10 s, a few hundred small dicts. Counters are read through ``collect()``, the
public interface of ``prometheus_client``, so the history can never disagree with ``/metrics``.

Latency quantiles are computed like PromQL's ``histogram_quantile``: from the difference of
the ``delivery_latency_seconds`` bucket counts over a window, interpolating linearly inside the
bucket where the rank falls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from posthog_customerio.metrics import Metrics

log = logging.getLogger("posthog_customerio.web.history")

SAMPLE_INTERVAL_SECS = 10.0
HISTORY_POINTS = 360  # one hour at 10 s
LATENCY_WINDOW_SECS = 300.0  # the quantiles shown on the cards: the last five minutes
QUANTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True, slots=True)
class Totals:
    """Cumulative counter values at one instant (what ``/metrics`` would show)."""

    at: float
    received: Mapping[str, float]  # by source
    dropped: Mapping[str, float]  # by reason
    delivered: Mapping[str, float]  # by action
    dead_lettered: Mapping[str, float]  # by reason
    retried: Mapping[str, float]  # by reason
    requests: Mapping[str, float]  # by status class: 2xx, 429, 4xx, 5xx, error
    latency_bounds: tuple[float, ...]  # bucket upper bounds, +Inf last
    latency_buckets: tuple[float, ...]  # cumulative counts per bound


def status_class(status: str) -> str:
    """``requests_total``'s status label → ``2xx``, ``429``, ``4xx``, ``5xx`` or ``error``."""
    if status == "429":
        return "429"
    if len(status) == 3 and status.isdigit():
        return f"{status[0]}xx"
    return "error"  # a network error label: timeout, ConnectError...


def _by_label(counter: Counter, label: str, fold: Callable[[str], str] = str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = fold(sample.labels.get(label, ""))
                out[key] = out.get(key, 0.0) + sample.value
    return out


def _buckets(histogram: Histogram) -> tuple[tuple[float, ...], tuple[float, ...]]:
    bounds: list[float] = []
    counts: list[float] = []
    for family in histogram.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bounds.append(float(sample.labels["le"]))
                counts.append(sample.value)
    return tuple(bounds), tuple(counts)


def gauge_value(gauge: Gauge) -> float:
    for family in gauge.collect():
        for sample in family.samples:
            return float(sample.value)
    return 0.0


def read_totals(metrics: Metrics, at: float) -> Totals:
    bounds, buckets = _buckets(metrics.delivery_latency)
    return Totals(
        at=at,
        received=_by_label(metrics.events_received, "source"),
        dropped=_by_label(metrics.events_dropped, "reason"),
        delivered=_by_label(metrics.operations_delivered, "action"),
        dead_lettered=_by_label(metrics.operations_dead_lettered, "reason"),
        retried=_by_label(metrics.operations_retried, "reason"),
        requests=_by_label(metrics.requests, "status", status_class),
        latency_bounds=bounds,
        latency_buckets=buckets,
    )


def histogram_quantile(
    q: float, bounds: Sequence[float], cumulative: Sequence[float]
) -> float | None:
    """PromQL's ``histogram_quantile`` over cumulative bucket counts; None without data."""
    if not bounds or not cumulative or cumulative[-1] <= 0:
        return None
    total = cumulative[-1]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, cumulative, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower  # in the +Inf bucket: the largest finite bound, as Prometheus does
            in_bucket = count - below
            if in_bucket <= 0:
                return bound
            return lower + (bound - lower) * (rank - below) / in_bucket
        lower, below = bound, count
    return lower


def _diff(new: Mapping[str, float], old: Mapping[str, float]) -> dict[str, int]:
    """Per-label increase; a counter that went down (a restart) counts from zero."""
    out: dict[str, int] = {}
    for key, value in new.items():
        delta = value - old.get(key, 0.0)
        if delta < 0:
            delta = value
        if delta > 0:
            out[key] = round(delta)
    return out


def quantiles(new: Totals, old: Totals | None) -> dict[str, float | None]:
    """p50/p95/p99 of delivery latency between two readings (since start without ``old``)."""
    buckets = new.latency_buckets
    if old is not None and old.latency_bounds == new.latency_bounds:
        buckets = tuple(max(0.0, n - o) for n, o in zip(buckets, old.latency_buckets, strict=True))
    out: dict[str, float | None] = {}
    for q in QUANTILES:
        value = histogram_quantile(q, new.latency_bounds, buckets)
        out[f"p{round(q * 100)}"] = None if value is None else round(value, 4)
    return out


def point(new: Totals, old: Totals, gauges: Mapping[str, float]) -> dict[str, Any]:
    """One chart point: what happened between ``old`` and ``new``, and the gauges at ``new``."""
    requests = _diff(new.requests, old.requests)
    return {
        "t": round(new.at, 3),
        "secs": round(max(new.at - old.at, 1e-3), 3),
        "received": sum(_diff(new.received, old.received).values()),
        "delivered": sum(_diff(new.delivered, old.delivered).values()),
        "dropped": _diff(new.dropped, old.dropped),
        "dead_lettered": _diff(new.dead_lettered, old.dead_lettered),
        "retried": sum(_diff(new.retried, old.retried).values()),
        "requests": requests,
        "throttled": requests.get("429", 0),
        "latency": quantiles(new, old),
        **{k: round(v, 3) for k, v in gauges.items()},
    }


class History:
    """A ring of chart points; ``sample()`` every interval, ``to_json()`` for the page."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        interval_secs: float = SAMPLE_INTERVAL_SECS,
        points: int = HISTORY_POINTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self.interval_secs = interval_secs
        self._clock = clock
        self._points: deque[dict[str, Any]] = deque(maxlen=points)
        self._readings: deque[Totals] = deque(maxlen=points + 1)
        self._readings.append(read_totals(metrics, clock()))

    @property
    def points(self) -> list[dict[str, Any]]:
        return list(self._points)

    def gauges(self) -> dict[str, float]:
        m = self.metrics
        return {
            "depth": gauge_value(m.queue_depth),
            "oldest_age_secs": gauge_value(m.queue_oldest_age),
            "rate_limit_rps": gauge_value(m.rate_limit),
        }

    def sample(self) -> dict[str, Any]:
        """Record the point since the previous sample; returns it."""
        new = read_totals(self.metrics, self._clock())
        p = point(new, self._readings[-1], self.gauges())
        self._readings.append(new)
        self._points.append(p)
        return p

    def live(self) -> dict[str, Any]:
        """The point in progress (since the last sample), marked ``partial``."""
        p = point(read_totals(self.metrics, self._clock()), self._readings[-1], self.gauges())
        p["partial"] = True
        return p

    def totals(self) -> Totals:
        return read_totals(self.metrics, self._clock())

    def latency(self, window_secs: float = LATENCY_WINDOW_SECS) -> dict[str, Any]:
        """Delivery latency quantiles over the last ``window_secs`` and since start."""
        now = read_totals(self.metrics, self._clock())
        since = now.at - window_secs
        base = next((r for r in self._readings if r.at >= since), None)
        return {
            "window_secs": window_secs,
            "recent": quantiles(now, base),
            "since_start": quantiles(now, None),
        }

    def overview(self, max_rate_rps: float) -> dict[str, Any]:
        """Totals since start, latency quantiles and the rate-limit state, for ``/api/status``."""
        t = self.totals()

        def ints(values: Mapping[str, float]) -> dict[str, int]:
            return {k: round(v) for k, v in sorted(values.items())}

        return {
            "totals": {
                "received": ints(t.received),
                "dropped": ints(t.dropped),
                "delivered": ints(t.delivered),
                "dead_lettered": ints(t.dead_lettered),
                "retried": ints(t.retried),
                "requests": ints(t.requests),
            },
            "latency": self.latency(),
            "rate_limit": {
                "current_rps": round(gauge_value(self.metrics.rate_limit), 2),
                "max_rps": max_rate_rps,
                "throttled_total": round(t.requests.get("429", 0.0)),
            },
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "interval_secs": self.interval_secs,
            "capacity": self._points.maxlen,
            "points": [*self._points, self.live()],
        }

    async def run(self, stop: asyncio.Event, refresh: Callable[[], Awaitable[Any]]) -> None:
        """Sample every interval until ``stop``; ``refresh`` updates the queue gauges first."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval_secs)
            if stop.is_set():
                return
            try:
                await refresh()
            except Exception as exc:  # the gauges keep their last value; the page says why
                log.debug("history: queue stats unavailable", extra={"ctx": {"error": str(exc)}})
            self.sample()
