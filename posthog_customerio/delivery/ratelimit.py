"""One request rate limiter for every request to Customer.io, with AIMD on 429.

The bucket is implemented as GCRA (virtual scheduling): each ``acquire`` reserves the next
free slot, ``1 / rate`` after the previous one, and sleeps until that slot minus the burst
tolerance. Reservations are made synchronously, so concurrent callers are served in order
without a lock and a cancelled waiter costs at most one slot.

Burst: in any one-second window at most ``rate + burst - 1`` requests pass. A burst equal to
the rate would allow ~2R in the first second, so the default is ``rate / 10`` (at least 1):
never more than 10 % over the configured rate, while still absorbing scheduling jitter.

AIMD with a learned ceiling (why and how): the account limit is shared and unknown. On a 429
(acted on at most once per ``DECREASE_COOLDOWN_SECS``, because every request already in flight
reports the same 429) the limiter looks at how many answers were accepted in the last
``ACCEPTED_WINDOW_SECS``: that is what the server lets through, so the rate drops to 90 % of
it (``CEILING_FRACTION``, and at least 10 % down) and that value becomes the *ceiling*. With
no accepted answer to measure, the rate halves (classic AIMD) and no ceiling is learned. The
floor is ``min(1 rps, max)``.

Recovery: each success adds ``max / 20`` per second elapsed since the previous adjustment (at
most one second's worth per call, so sparse traffic recovers slowly) up to the ceiling, or the
configured max when none was learned. A ceiling is held for ``CEILING_HOLD_SECS`` after the
last 429; then the limiter probes above it by 0.5 % of it per second of success
(``PROBE_FRACTION_PER_SEC``), so a raised account limit is found again, and the next 429
learns a new ceiling. Probing that slowly keeps every one-second window within ~10 % of what
the server allows, where plain AIMD would overshoot it on every recovery.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

MIN_RATE_RPS = 1.0
RECOVERY_FRACTION_PER_SEC = 1 / 20
DECREASE_COOLDOWN_SECS = 1.0
DEFAULT_BURST_FRACTION = 0.1
ACCEPTED_WINDOW_SECS = 1.0
CEILING_FRACTION = 0.9
CEILING_HOLD_SECS = 30.0
PROBE_FRACTION_PER_SEC = 0.005


class Limiter(Protocol):
    """What delivery needs of a rate limiter: this process's ``RateLimiter``, or the account's
    ``SharedRateLimiter`` (delivery/budget.py) when processes share a PostgreSQL store."""

    @property
    def current_rate(self) -> float: ...

    @property
    def max_rate(self) -> float: ...

    async def acquire(self) -> None: ...

    def on_throttled(self) -> None: ...

    def on_success(self) -> None: ...

    def set_max_rate(self, rate: float) -> None: ...


class Aimd:
    """The rate AIMD moves between the floor and the max (the rules above), on the caller's
    clock; plain state, so the shared budget can store it and run the same rules."""

    __slots__ = ("ceiling", "last_adjust", "last_decrease", "max_rate", "rate")

    def __init__(
        self,
        max_rate: float,
        now: float,
        *,
        rate: float | None = None,
        ceiling: float | None = None,
        last_decrease: float = float("-inf"),
        last_adjust: float | None = None,
    ) -> None:
        self.max_rate = float(max_rate)
        self.rate = self.max_rate if rate is None else float(rate)
        self.ceiling = ceiling  # learned from the accepted rate at the last 429
        self.last_decrease = last_decrease
        self.last_adjust = now if last_adjust is None else last_adjust

    @property
    def floor_rate(self) -> float:
        return min(MIN_RATE_RPS, self.max_rate)

    def throttled(self, now: float, accepted_rps: float) -> None:
        """A 429: drop to 90 % of ``accepted_rps`` (what the server let through in the last
        window), learning it as the ceiling, or halve without that measure; once per cooldown."""
        if now - self.last_decrease < DECREASE_COOLDOWN_SECS:
            return
        self.last_decrease = now
        self.last_adjust = now
        if accepted_rps > 0:
            learned = max(self.floor_rate, min(self.max_rate, accepted_rps * CEILING_FRACTION))
            self.ceiling = learned
            self.rate = max(self.floor_rate, min(self.rate * CEILING_FRACTION, learned))
        else:
            self.rate = max(self.floor_rate, self.rate / 2)

    def succeeded(self, now: float) -> None:
        """A non-throttled answer: recover additively toward the ceiling (or the max); past the
        hold time, probe slowly above the ceiling."""
        elapsed = min(max(now - self.last_adjust, 0.0), 1.0)
        self.last_adjust = now
        target = self.max_rate if self.ceiling is None else self.ceiling
        if self.rate < target:
            step = self.max_rate * RECOVERY_FRACTION_PER_SEC * elapsed
            self.rate = min(target, self.rate + step)
        elif self.ceiling is not None and now - self.last_decrease >= CEILING_HOLD_SECS:
            probed = self.ceiling * (1 + PROBE_FRACTION_PER_SEC * elapsed)
            self.ceiling = None if probed >= self.max_rate else probed
            self.rate = min(self.max_rate, probed)

    def set_max_rate(self, rate: float) -> None:
        """Config reload: an unthrottled rate moves to the new max, a throttled one stays
        below it and recovers toward it."""
        if rate <= 0:
            raise ValueError("rate must be > 0")
        unthrottled = self.rate >= self.max_rate
        self.max_rate = float(rate)
        self.rate = self.max_rate if unthrottled else min(self.rate, self.max_rate)
        if self.ceiling is not None and self.ceiling >= self.max_rate:
            self.ceiling = None


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
        self._aimd = Aimd(rate, clock())
        self._fixed_burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tat = clock()  # theoretical arrival time of the next request
        self._accepted: deque[float] = deque()  # times of accepted answers, last window only

    @property
    def current_rate(self) -> float:
        return self._aimd.rate

    @property
    def max_rate(self) -> float:
        return self._aimd.max_rate

    @property
    def ceiling(self) -> float | None:
        """The rate the server was seen to accept at the last 429 (x 0.9), or None."""
        return self._aimd.ceiling

    @property
    def burst(self) -> float:
        """Requests that may pass back to back; by default a tenth of the current rate."""
        if self._fixed_burst is not None:
            return self._fixed_burst
        return max(1.0, self._aimd.rate * DEFAULT_BURST_FRACTION)

    @property
    def floor_rate(self) -> float:
        return self._aimd.floor_rate

    async def acquire(self) -> None:
        """Wait until one request may be sent, and count it."""
        delay = self._reserve()
        if delay > 0:
            await self._sleep(delay)

    def _reserve(self) -> float:
        now = self._clock()
        interval = 1.0 / self._aimd.rate
        tolerance = (self.burst - 1.0) * interval
        tat = max(self._tat, now)
        self._tat = tat + interval
        wait = tat - tolerance - now
        return wait if wait > 1e-9 else 0.0  # float sums of intervals must not cost a sleep

    def on_throttled(self) -> None:
        """A 429: AIMD decrease, measured by the answers accepted in the last window."""
        now = self._clock()
        self._aimd.throttled(now, self._accepted_rate(now))

    def on_success(self) -> None:
        """A non-throttled answer: count it, and let AIMD recover."""
        now = self._clock()
        self._accepted_rate(now)  # prune, so the window stays small
        self._accepted.append(now)
        self._aimd.succeeded(now)

    def _accepted_rate(self, now: float) -> float:
        """Accepted answers per second over the last ``ACCEPTED_WINDOW_SECS``."""
        while self._accepted and self._accepted[0] <= now - ACCEPTED_WINDOW_SECS:
            self._accepted.popleft()
        return len(self._accepted) / ACCEPTED_WINDOW_SECS

    def set_max_rate(self, rate: float) -> None:
        """Config reload: see ``Aimd.set_max_rate``."""
        self._aimd.set_max_rate(rate)
