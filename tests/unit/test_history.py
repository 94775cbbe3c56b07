"""The status page's in-process history: counter deltas, gauges, quantiles, the ring."""

from __future__ import annotations

import asyncio
import math

import pytest

from posthog_customerio.metrics import Metrics
from posthog_customerio.web.history import History, histogram_quantile, status_class

BOUNDS = (0.1, 0.5, 1.0, math.inf)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("q", "cumulative", "expected"),
    [
        pytest.param(0.5, (0, 0, 0, 0), None, id="no-data"),
        pytest.param(0.5, (10, 10, 10, 10), 0.05, id="all-in-first-bucket"),
        pytest.param(0.5, (0, 10, 10, 10), 0.3, id="interpolated-inside-bucket"),
        pytest.param(0.99, (0, 0, 0, 10), 1.0, id="inf-bucket-gives-largest-bound"),
        pytest.param(0.95, (50, 90, 100, 100), 0.75, id="tail"),
    ],
)
def test_histogram_quantile_like_promql(
    q: float, cumulative: tuple[int, ...], expected: float | None
) -> None:
    got = histogram_quantile(q, BOUNDS, [float(c) for c in cumulative])
    assert got == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        ("200", "2xx"),
        ("207", "2xx"),
        ("429", "429"),
        ("400", "4xx"),
        ("503", "5xx"),
        ("timeout", "error"),
        ("ConnectError", "error"),
    ],
)
def test_status_class(status: str, cls: str) -> None:
    assert status_class(status) == cls


def test_points_hold_deltas_and_gauges() -> None:
    m, clock = Metrics(), Clock()
    history = History(m, interval_secs=10, points=3, clock=clock)
    m.events_received.labels("webhook").inc(5)
    m.events_dropped.labels("duplicate").inc(2)
    m.operations_delivered.labels("event").inc(4)
    m.operations_delivered.labels("identify").inc(1)
    m.operations_dead_lettered.labels("rejected").inc()
    m.requests.labels("batch", "200").inc(3)
    m.requests.labels("batch", "429").inc()
    m.delivery_latency.observe(0.02)
    m.queue_depth.set(7)
    clock.now += 10
    p = history.sample()
    assert p["secs"] == 10
    assert (p["received"], p["delivered"]) == (5, 5)
    assert p["dropped"] == {"duplicate": 2}
    assert p["dead_lettered"] == {"rejected": 1}
    assert p["requests"] == {"2xx": 3, "429": 1} and p["throttled"] == 1
    assert p["depth"] == 7
    assert p["latency"]["p50"] is not None and p["latency"]["p50"] <= 0.05

    clock.now += 10
    quiet = history.sample()  # nothing happened: zero deltas, same gauges
    assert (quiet["received"], quiet["delivered"], quiet["dropped"]) == (0, 0, {})
    assert quiet["latency"] == {"p50": None, "p95": None, "p99": None}
    assert quiet["depth"] == 7


def test_ring_keeps_the_last_points_and_a_live_one() -> None:
    m, clock = Metrics(), Clock()
    history = History(m, interval_secs=10, points=3, clock=clock)
    for i in range(5):
        m.events_received.labels("webhook").inc(i)
        clock.now += 10
        history.sample()
    assert [p["received"] for p in history.points] == [2, 3, 4]
    m.events_received.labels("webhook").inc(9)
    clock.now += 4
    body = history.to_json()
    assert body["capacity"] == 3 and body["interval_secs"] == 10
    live = body["points"][-1]
    assert live["partial"] is True and live["received"] == 9 and live["secs"] == 4


def test_overview_totals_latency_and_rate_limit() -> None:
    m, clock = Metrics(), Clock()
    history = History(m, clock=clock)
    m.events_received.labels("webhook").inc(3)
    m.requests.labels("batch", "429").inc(2)
    m.rate_limit.set(42)
    for _ in range(10):
        m.delivery_latency.observe(0.3)
    out = history.overview(max_rate_rps=100)
    assert out["totals"]["received"] == {"webhook": 3}
    assert out["rate_limit"] == {"current_rps": 42, "max_rps": 100, "throttled_total": 2}
    assert 0.25 <= out["latency"]["recent"]["p50"] <= 0.5
    assert out["latency"]["since_start"] == out["latency"]["recent"]


def test_run_samples_until_stopped() -> None:
    async def main() -> int:
        m = Metrics()
        history = History(m, interval_secs=0.01)
        refreshed = 0

        async def refresh() -> None:
            nonlocal refreshed
            refreshed += 1

        stop = asyncio.Event()
        task = asyncio.create_task(history.run(stop, refresh))
        await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(task, 1)
        assert refreshed >= 2
        return len(history.points)

    assert asyncio.run(main()) >= 2
