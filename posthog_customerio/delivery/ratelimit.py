"""One request rate limiter for every request to Customer.io, with AIMD on 429.

The bucket is implemented as GCRA (virtual scheduling): each ``acquire`` reserves the next
free slot, ``1 / rate`` after the previous one, and sleeps until that slot minus the burst
tolerance. Reservations are made synchronously, so concurrent callers are served in order
without a lock and a cancelled waiter costs at most one slot.

Burst: in any one-second window at most ``rate + burst - 1`` requests pass. A burst equal to
the rate would allow ~2R in the first second, so the default is ``rate / 10`` (at least 1):
never more than 10 % over the configured rate, while still absorbing scheduling jitter.

AIMD (why and how): the account limit is shared and unknown, so on a 429 the rate halves (at
most once per ``DECREASE_COOLDOWN_SECS``, because every request already in flight reports the
same 429) down to a floor of ``min(1 rps, max)``; each success then adds
``max / 20`` per second elapsed since the previous adjustment (at most one second's worth per
call), so a full recovery takes about 20 s of successful traffic and sparse traffic recovers
slowly rather than jumping back after an idle pause.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

MIN_RATE_RPS = 1.0
RECOVERY_FRACTION_PER_SEC = 1 / 20
DECREASE_COOLDOWN_SECS = 1.0
DEFAULT_BURST_FRACTION = 0.1


class RateLimiter:
    """Token bucket shared by all requests; ``current_rate`` moves between a floor and the max."""

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        if burst is not None and burst < 1:
            raise ValueError("burst must be >= 1")
        self._max_rate = float(rate)
        self._rate = float(rate)
        self._fixed_burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tat = clock()  # theoretical arrival time of the next request
        self._last_adjust = clock()
        self._last_decrease = float("-inf")

    @property
    def current_rate(self) -> float:
        return self._rate

    @property
    def max_rate(self) -> float:
        return self._max_rate

    @property
    def burst(self) -> float:
        """Requests that may pass back to back; by default a tenth of the current rate."""
        if self._fixed_burst is not None:
            return self._fixed_burst
        return max(1.0, self._rate * DEFAULT_BURST_FRACTION)

    @property
    def floor_rate(self) -> float:
        return min(MIN_RATE_RPS, self._max_rate)

    async def acquire(self) -> None:
        """Wait until one request may be sent, and count it."""
        delay = self._reserve()
        if delay > 0:
            await self._sleep(delay)

    def _reserve(self) -> float:
        now = self._clock()
        interval = 1.0 / self._rate
        tolerance = (self.burst - 1.0) * interval
        tat = max(self._tat, now)
        self._tat = tat + interval
        wait = tat - tolerance - now
        return wait if wait > 1e-9 else 0.0  # float sums of intervals must not cost a sleep

    def on_throttled(self) -> None:
        """A 429: halve the rate, once per cooldown however many in-flight requests report it."""
        now = self._clock()
        if now - self._last_decrease < DECREASE_COOLDOWN_SECS:
            return
        self._last_decrease = now
        self._last_adjust = now
        self._rate = max(self.floor_rate, self._rate / 2)

    def on_success(self) -> None:
        """A non-throttled answer: recover additively toward the max."""
        now = self._clock()
        elapsed = min(max(now - self._last_adjust, 0.0), 1.0)
        self._last_adjust = now
        if self._rate < self._max_rate:
            step = self._max_rate * RECOVERY_FRACTION_PER_SEC * elapsed
            self._rate = min(self._max_rate, self._rate + step)

    def set_max_rate(self, rate: float) -> None:
        """Config reload: an unthrottled limiter moves to the new max, a throttled one stays
        below it and recovers toward it."""
        if rate <= 0:
            raise ValueError("rate must be > 0")
        unthrottled = self._rate >= self._max_rate
        self._max_rate = float(rate)
        self._rate = self._max_rate if unthrottled else min(self._rate, self._max_rate)
