"""One request budget for the account, shared by every ``serve`` process on one PostgreSQL.

Why: a process's own token bucket (ratelimit.py) lets N processes send N x ``rate_limit_rps``,
and Customer.io's limit is per account.

How: the budget is one row in the store (``BudgetStore.update_rate_budget``), on the
database's clock: ``tat``, the next free send slot (GCRA, as ratelimit.py), and the AIMD state
(``Aimd``: rate, learned ceiling, cooldowns). A process takes a *grant*, the next
``GRANT_SECS`` worth of consecutive slots (``rate / 10``, at least one), in one short
transaction, and spends them locally: a database round trip per grant, never per request.
Grants never overlap, so all processes together send at most ``rate`` requests a second
however many there are, and only those with work take slots (no share is left idle). A
process that dies loses at most its last grants; the others take the freed time from their
next grant on, without waiting for its lease to run out.

Slots are never spent early; one missed by more than ``STALE_SECS`` (demand stopped) is
dropped rather than sent late next to someone else's slot. So no one-second window holds more
than ``rate * (1 + STALE_SECS) + 1`` requests.

AIMD across processes: each process reports its answers with its next grant request, the
successes since the last grant (recovery, as ratelimit.py, per second of the account's time)
and a 429 (at most once per cooldown, and its remaining slots are dropped so the report goes
at once). A 429 lowers the shared rate once per cooldown for the whole account, to 90 % of the
accepted part of it: ``rate x`` the fraction of this process's answers accepted in the last
window (halving when none was). Every process sends at the new rate from its next grant.

The database away: grants are made locally at the shared rate divided by the live workers
last counted, until the store answers again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from posthog_customerio.delivery.ratelimit import (
    ACCEPTED_WINDOW_SECS,
    DECREASE_COOLDOWN_SECS,
    Aimd,
    Limiter,
    RateLimiter,
)

log = logging.getLogger("posthog_customerio.delivery.budget")

GRANT_SECS = 0.1  # a grant is this much of the rate: rate / 10 slots, at least one
STALE_SECS = 0.02  # a slot missed by more than this is dropped, not sent late
GRANT_TIMEOUT_SECS = 2.0  # a store slower than this: grant locally meanwhile

_T = TypeVar("_T")

# (stored state or None, database clock in Unix seconds, live workers) → (new state, result)
BudgetStep = Callable[[dict[str, Any] | None, float, int], tuple[dict[str, Any], _T]]


@runtime_checkable
class BudgetStore(Protocol):
    """A store shared by many processes that keeps the account's budget (PostgreSQL)."""

    async def update_rate_budget(self, step: BudgetStep[_T]) -> _T:
        """Run ``step`` on the stored budget under a lock and store what it returns."""
        ...


@dataclass(frozen=True, slots=True)
class BudgetAsk:
    """A process's grant request, with what it saw since the last one."""

    max_rate: float  # its rate_limit_rps (the account's max; the last one asked wins)
    successes: int  # accepted answers since its last grant
    throttled: bool  # a 429 since its last grant
    accepted_fraction: float  # of its answers in the last window, for the ceiling


@dataclass(frozen=True, slots=True)
class Grant:
    """Consecutive send slots: ``slots`` of them, ``interval`` apart, the first ``start``
    seconds from the moment it was made (on any clock: the offsets are relative)."""

    start: float
    slots: int
    interval: float
    rate: float  # the account's rate it was made at
    live_workers: int


def grant_size(rate: float) -> int:
    """Slots per grant: ``GRANT_SECS`` of the rate, at least one."""
    return max(1, math.floor(rate * GRANT_SECS))


def take_grant(
    ask: BudgetAsk, stored: dict[str, Any] | None, now: float, live_workers: int
) -> tuple[dict[str, Any], Grant]:
    """The budget arithmetic: apply ``ask``'s report to the stored AIMD state, then grant the
    next free slots from ``now`` (the store's clock). Pure; returns the new state."""
    aimd, tat = _decode(stored, ask.max_rate, now)
    if ask.max_rate != aimd.max_rate:
        aimd.set_max_rate(ask.max_rate)
    if ask.throttled:
        aimd.throttled(now, aimd.rate * ask.accepted_fraction)
    elif ask.successes:
        aimd.succeeded(now)
    slots = grant_size(aimd.rate)
    start = max(tat, now)
    tat = start + slots / aimd.rate
    grant = Grant(start - now, slots, 1.0 / aimd.rate, aimd.rate, max(1, live_workers))
    return _encode(aimd, tat), grant


def _decode(stored: dict[str, Any] | None, max_rate: float, now: float) -> tuple[Aimd, float]:
    if not stored:
        return Aimd(max_rate, now), now
    decrease = stored.get("last_decrease")
    aimd = Aimd(
        float(stored["max_rate"]),
        now,
        rate=float(stored["rate"]),
        ceiling=None if stored.get("ceiling") is None else float(stored["ceiling"]),
        last_decrease=float("-inf") if decrease is None else float(decrease),
        last_adjust=float(stored["last_adjust"]),
    )
    return aimd, float(stored["tat"])


def _encode(aimd: Aimd, tat: float) -> dict[str, Any]:
    """JSON-safe (no infinities), readable with ``SELECT state FROM rate_budget``."""
    return {
        "rate": aimd.rate,
        "max_rate": aimd.max_rate,
        "ceiling": aimd.ceiling,
        "last_decrease": None if math.isinf(aimd.last_decrease) else aimd.last_decrease,
        "last_adjust": aimd.last_adjust,
        "tat": tat,
    }


class SharedRateLimiter:
    """The ``Limiter`` of a process that shares the account's budget with others."""

    def __init__(
        self,
        store: BudgetStore,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self._store = store
        self._max_rate = float(rate)
        self._rate = float(rate)  # the account's rate at the last grant
        self._clock = clock
        self._sleep = sleep
        self._slots: deque[float] = deque()  # granted send times, this process's clock
        self._granting = asyncio.Lock()  # one grant request at a time
        self._successes = 0
        self._throttled = False
        self._last_report = float("-inf")
        self._answers: deque[tuple[float, bool]] = deque()  # (time, accepted), last window
        self._live_workers = 1
        self._local_tat = float("-inf")  # slots granted locally while the store is away
        self._store_away = False
        self.grants = 0  # grant requests the store answered (tests, status)

    @property
    def current_rate(self) -> float:
        return self._rate

    @property
    def max_rate(self) -> float:
        return self._max_rate

    def set_max_rate(self, rate: float) -> None:
        """Config reload: sent with the next grant request, where ``Aimd.set_max_rate`` applies."""
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self._max_rate = float(rate)

    async def acquire(self) -> None:
        """Wait for this process's next granted slot, asking the store for more when none."""
        while True:
            now = self._clock()
            while self._slots and self._slots[0] < now - STALE_SECS:
                self._slots.popleft()
            if self._slots:
                delay = self._slots.popleft() - now
                if delay > 1e-9:
                    await self._sleep(delay)
                return
            async with self._granting:
                if not self._slots:
                    await self._grant()

    def on_throttled(self) -> None:
        """A 429: report it with the next grant request, which goes at once."""
        now = self._clock()
        self._answered(now, accepted=False)
        if now - self._last_report >= DECREASE_COOLDOWN_SECS:
            self._last_report = now
            self._throttled = True
            self._slots.clear()  # granted at the old rate: ask again with the report

    def on_success(self) -> None:
        self._answered(self._clock(), accepted=True)
        self._successes += 1

    def _answered(self, now: float, *, accepted: bool) -> None:
        while self._answers and self._answers[0][0] <= now - ACCEPTED_WINDOW_SECS:
            self._answers.popleft()
        self._answers.append((now, accepted))

    def _accepted_fraction(self) -> float:
        if not self._answers:
            return 0.0
        return sum(1 for _, ok in self._answers if ok) / len(self._answers)

    async def _grant(self) -> None:
        ask = BudgetAsk(
            max_rate=self._max_rate,
            successes=self._successes,
            throttled=self._throttled,
            accepted_fraction=self._accepted_fraction(),
        )
        try:
            async with asyncio.timeout(GRANT_TIMEOUT_SECS):
                grant = await self._store.update_rate_budget(functools.partial(take_grant, ask))
        except Exception as exc:
            grant = self._local_grant(exc)
        else:
            self.grants += 1
            self._successes -= ask.successes
            if ask.throttled:
                self._throttled = False
            self._live_workers = grant.live_workers
            if self._store_away:
                self._store_away = False
                log.warning("the shared rate budget is back; grants come from the store again")
        self._rate = grant.rate
        at = self._clock() + grant.start
        self._slots.extend(at + i * grant.interval for i in range(grant.slots))

    def _local_grant(self, exc: BaseException) -> Grant:
        """The store did not answer: this process's part of the rate (the shared rate over the
        live workers last counted), paced locally."""
        if not self._store_away:
            self._store_away = True
            log.warning(
                "the shared rate budget is unavailable; pacing this process alone meanwhile",
                extra={
                    "ctx": {
                        "error": f"{type(exc).__name__}: {exc}",
                        "rate_rps": round(self._rate / self._live_workers, 3),
                    }
                },
            )
        rate = self._rate / self._live_workers
        slots = grant_size(rate)
        now = self._clock()
        start = max(self._local_tat, now)
        self._local_tat = start + slots / rate
        return Grant(start - now, slots, 1.0 / rate, self._rate, self._live_workers)


def limiter_for(store: object, rate: float) -> Limiter:
    """The account's shared budget when the store keeps one (PostgreSQL: many processes), else
    this process's own token bucket (SQLite: one process)."""
    if isinstance(store, BudgetStore):
        return SharedRateLimiter(store, rate)
    return RateLimiter(rate)
