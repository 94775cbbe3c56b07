"""The account's shared rate budget (delivery/budget.py) on a virtual clock.

``take_grant`` is tested as the arithmetic it is; ``SharedRateLimiter`` runs as several
"processes" (limiters with saturated senders) over one in-memory store that applies the same
step under one lock, as the PostgreSQL row does. No real time passes.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from posthog_customerio.delivery.budget import (
    BudgetAsk,
    SharedRateLimiter,
    grant_size,
    limiter_for,
    take_grant,
)
from posthog_customerio.delivery.ratelimit import RateLimiter
from posthog_customerio.errors import QueueUnavailable
from posthog_customerio.queue.memory import MemoryQueue
from posthog_customerio.queue.postgres import PostgresQueue
from posthog_customerio.queue.sqlite import SQLiteQueue

T = TypeVar("T")
START = 1_000.0


def ask(
    max_rate: float = 50.0, successes: int = 0, throttled: bool = False, fraction: float = 1.0
) -> BudgetAsk:
    return BudgetAsk(
        max_rate=max_rate, successes=successes, throttled=throttled, accepted_fraction=fraction
    )


# --- the arithmetic --------------------------------------------------------------------------


def test_grants_are_consecutive_slots_a_tenth_of_a_second_each() -> None:
    state, first = take_grant(ask(), None, START, 3)
    assert (first.start, first.slots, first.interval, first.rate) == (0.0, 5, 0.02, 50.0)
    assert first.live_workers == 3
    state, second = take_grant(ask(), state, START + 0.01, 3)
    assert second.start == pytest.approx(0.1 - 0.01)  # right after the first grant's slots
    state, third = take_grant(ask(), state, START + 0.02, 3)
    assert third.start == pytest.approx(0.2 - 0.02)


def test_idle_time_is_not_banked() -> None:
    state, _ = take_grant(ask(), None, START, 1)
    _, later = take_grant(ask(), state, START + 60, 1)
    assert later.start == 0.0 and later.slots == 5  # no burst after a quiet minute


@pytest.mark.parametrize(("rate", "slots"), [(0.5, 1), (1, 1), (10, 1), (50, 5), (1000, 100)])
def test_grant_size_is_a_tenth_of_the_rate_at_least_one(rate: float, slots: int) -> None:
    assert grant_size(rate) == slots


def test_a_429_lowers_the_shared_rate_to_90_percent_of_what_was_accepted() -> None:
    state, _ = take_grant(ask(max_rate=100), None, START, 3)
    state, grant = take_grant(ask(max_rate=100, throttled=True, fraction=0.5), state, START + 1, 3)
    assert grant.rate == pytest.approx(45.0)  # 100 rps x 0.5 accepted x 0.9
    assert state["ceiling"] == pytest.approx(45.0)
    assert grant.interval == pytest.approx(1 / 45)
    # another process's 429 within the cooldown changes nothing: one decrease per account
    state, again = take_grant(
        ask(max_rate=100, throttled=True, fraction=0.1), state, START + 1.5, 3
    )
    assert again.rate == pytest.approx(45.0)
    # past it, one with nothing accepted halves (no measure, no ceiling learned)
    state, halved = take_grant(ask(max_rate=100, throttled=True, fraction=0.0), state, START + 3, 3)
    assert halved.rate == pytest.approx(22.5)


def test_successes_recover_the_shared_rate_per_second_of_account_time() -> None:
    state, _ = take_grant(ask(max_rate=100), None, START, 2)
    state, low = take_grant(ask(max_rate=100, throttled=True, fraction=0.0), state, START + 1, 2)
    assert low.rate == 50.0
    # successes reported 0.5 s later: half a second of recovery (max / 20 per second)
    state, grant = take_grant(ask(max_rate=100, successes=7), state, START + 1.5, 2)
    assert grant.rate == pytest.approx(52.5)
    # a grant with nothing to report moves nothing
    state, same = take_grant(ask(max_rate=100), state, START + 10, 2)
    assert same.rate == pytest.approx(52.5)


def test_the_last_asked_max_rate_is_the_accounts() -> None:
    state, _ = take_grant(ask(max_rate=100), None, START, 1)
    state, grant = take_grant(ask(max_rate=40), state, START + 1, 1)
    assert grant.rate == 40.0 and state["max_rate"] == 40.0


def test_the_state_is_plain_json() -> None:
    state, _ = take_grant(ask(), None, START, 1)
    state, _ = take_grant(ask(throttled=True, fraction=0.0), state, START + 1, 1)
    assert set(state) == {"rate", "max_rate", "ceiling", "last_decrease", "last_adjust", "tat"}
    assert all(v is None or isinstance(v, float) for v in state.values())


# --- processes sharing one budget on a virtual clock ----------------------------------------


class VirtualTime:
    """Time moves to the next timer once every task is blocked."""

    def __init__(self) -> None:
        self.now = START
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, secs: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + max(secs, 0.0), next(self._seq), fut))
        await fut

    async def run_until(self, end: float) -> None:
        while True:
            for _ in range(50):
                await asyncio.sleep(0)
            if not self._timers or self._timers[0][0] > end:
                self.now = end
                return
            at, _, fut = heapq.heappop(self._timers)
            self.now = max(self.now, at)
            if not fut.done():
                fut.set_result(None)


class FakeBudgetStore:
    """The budget row in memory, on the virtual clock; ``down`` makes it refuse."""

    def __init__(self, t: VirtualTime) -> None:
        self.t = t
        self.state: dict[str, Any] | None = None
        self.live_workers = 3
        self.down = False
        self.calls = 0

    async def update_rate_budget(
        self, step: Callable[[dict[str, Any] | None, float, int], tuple[dict[str, Any], T]]
    ) -> T:
        self.calls += 1
        if self.down:
            raise QueueUnavailable("postgresql: connection refused")
        self.state, result = step(self.state, self.t.now, self.live_workers)
        return result


class Process:
    """One ``serve``: a shared limiter and ``senders`` saturated senders; each request is
    answered at once, accepted unless ``throttle`` says otherwise."""

    def __init__(self, name: str, store: FakeBudgetStore, t: VirtualTime, rate: float) -> None:
        self.name = name
        self.t = t
        self.limiter = SharedRateLimiter(store, rate, clock=t.clock, sleep=t.sleep)
        self.tasks: list[asyncio.Task[None]] = []
        self.throttle: Callable[[float], bool] = lambda now: False

    def start(self, sent: list[tuple[float, str]], senders: int = 4) -> None:
        async def send() -> None:
            while True:
                await self.limiter.acquire()
                sent.append((self.t.now, self.name))
                if self.throttle(self.t.now):
                    self.limiter.on_throttled()
                else:
                    self.limiter.on_success()
                await asyncio.sleep(0)

        self.tasks = [asyncio.create_task(send()) for _ in range(senders)]

    def kill(self) -> None:
        for task in self.tasks:
            task.cancel()


def max_in_any_window(times: list[float], window: float = 1.0) -> int:
    best = 0
    recent: deque[float] = deque()
    for ts in sorted(times):
        recent.append(ts)
        while recent and recent[0] <= ts - window:
            recent.popleft()
        best = max(best, len(recent))
    return best


def count_between(sent: list[tuple[float, str]], start: float, end: float) -> int:
    return sum(1 for at, _ in sent if start <= at < end)


def simulate(
    rate: float,
    secs: float,
    events: Callable[[VirtualTime, list[Process], FakeBudgetStore], Any] | None = None,
    n: int = 3,
) -> tuple[list[tuple[float, str]], list[Process], FakeBudgetStore]:
    async def go() -> tuple[list[tuple[float, str]], list[Process], FakeBudgetStore]:
        t = VirtualTime()
        store = FakeBudgetStore(t)
        store.live_workers = n
        procs = [Process(f"p{i}", store, t, rate) for i in range(n)]
        sent: list[tuple[float, str]] = []
        for p in procs:
            p.start(sent)
        if events is not None:
            await events(t, procs, store)
        await t.run_until(START + secs)
        for p in procs:
            p.kill()
        await asyncio.gather(*(task for p in procs for task in p.tasks), return_exceptions=True)
        return sent, procs, store

    return asyncio.run(go())


@pytest.mark.parametrize("rate", [5.0, 50.0, 100.0, 1000.0])
def test_three_processes_together_stay_within_the_rate(rate: float) -> None:
    sent, procs, store = simulate(rate, secs=10)
    times = [at for at, _ in sent]
    assert max_in_any_window(times) <= rate * 1.1
    assert len(times) >= 10 * rate * 0.97  # and the budget is used, not wasted
    per_process = {p.name: sum(1 for _, name in sent if name == p.name) for p in procs}
    assert min(per_process.values()) >= len(times) / 3 * 0.5, per_process  # all get a part
    # a round trip per grant, not per request (plus the slots the 12 senders wait for at the end)
    assert store.calls <= len(times) / grant_size(rate) + 12


def test_a_killed_process_leaves_its_part_to_the_others_at_once() -> None:
    async def kill_one(t: VirtualTime, procs: list[Process], store: FakeBudgetStore) -> None:
        await t.run_until(START + 5)
        procs[1].kill()
        store.live_workers = 2

    sent, _, _ = simulate(50, secs=10, events=kill_one)
    after = [(at, name) for at, name in sent if at >= START + 5]
    assert {name for _, name in after} == {"p0", "p2"}
    # from half a second after the kill, the two survivors send the whole rate
    assert count_between(sent, START + 5.5, START + 10) >= 4.5 * 50 * 0.97
    assert max_in_any_window([at for at, _ in sent]) <= 55


def test_429s_bring_the_account_as_a_whole_down_to_what_the_server_takes() -> None:
    async def server_limit(t: VirtualTime, procs: list[Process], store: FakeBudgetStore) -> None:
        await t.run_until(START + 2)
        window: deque[float] = deque()

        def over_30_rps(now: float) -> bool:  # one server for all: 30 requests a second
            while window and window[0] <= now - 1:
                window.popleft()
            if len(window) >= 30:
                return True
            window.append(now)
            return False

        for p in procs:
            p.throttle = over_30_rps

    sent, procs, store = simulate(100, secs=20, events=server_limit)
    late = count_between(sent, START + 12, START + 20) / 8
    assert 30 * 0.8 <= late <= 30 * 1.1
    assert store.state is not None and store.state["ceiling"] is not None
    assert all(p.limiter.current_rate <= 33 for p in procs)


def test_a_429_heard_by_one_process_slows_the_others_too() -> None:
    async def one_429(t: VirtualTime, procs: list[Process], store: FakeBudgetStore) -> None:
        await t.run_until(START + 2)
        answered: list[float] = []

        def first_only(now: float) -> bool:
            answered.append(now)
            return len(answered) == 1

        procs[0].throttle = first_only

    sent, procs, store = simulate(100, secs=4, events=one_429)
    assert store.state is not None
    lowered = store.state["rate"]  # 90 % of the accepted part: nearly all was accepted
    assert 80 <= lowered <= 90
    # p1 and p2 never saw a 429, yet send at the lowered rate from their next grant on
    assert {p.limiter.current_rate for p in procs} == {lowered}
    assert count_between(sent, START + 2.5, START + 3.5) <= lowered * 1.1


def test_store_away_paces_each_process_at_its_part_until_it_is_back() -> None:
    async def outage(t: VirtualTime, procs: list[Process], store: FakeBudgetStore) -> None:
        await t.run_until(START + 3)
        store.down = True
        await t.run_until(START + 8)
        store.down = False

    sent, _, store = simulate(60, secs=12, events=outage)
    during = count_between(sent, START + 4, START + 8) / 4
    assert 60 * 0.9 <= during <= 60 * 1.1  # 3 x 20 rps, each paced alone
    after = count_between(sent, START + 9, START + 12) / 3
    assert 60 * 0.9 <= after <= 60 * 1.1
    assert store.calls > 0


def test_one_process_stores_keep_their_own_bucket_postgres_shares_one(tmp_path: Path) -> None:
    assert isinstance(limiter_for(SQLiteQueue(tmp_path / "q.db", owner=True), 50), RateLimiter)
    assert isinstance(limiter_for(MemoryQueue(), 50), RateLimiter)
    shared = limiter_for(PostgresQueue.open("postgresql://127.0.0.1/none"), 50)
    assert isinstance(shared, SharedRateLimiter)
    assert shared.current_rate == shared.max_rate == 50.0
