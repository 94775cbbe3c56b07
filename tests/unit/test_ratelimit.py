"""RateLimiter on a simulated clock: no real time passes in these tests."""

from __future__ import annotations

import asyncio
from collections import deque

import pytest

from posthog_customerio.delivery.ratelimit import RateLimiter


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, secs: float) -> None:
        self.now += secs


def limiter(rate: float, t: FakeTime, burst: float | None = None) -> RateLimiter:
    return RateLimiter(rate, burst=burst, clock=t.clock, sleep=t.sleep)


def send_times(lim: RateLimiter, t: FakeTime, until: float) -> list[float]:
    """Acquire back to back (a saturated sender) and record when each request may go."""

    async def go() -> list[float]:
        times: list[float] = []
        while t.now < until:
            await lim.acquire()
            times.append(t.now)
        return times

    return asyncio.run(go())


def max_in_any_window(times: list[float], window: float = 1.0) -> int:
    best = 0
    recent: deque[float] = deque()
    for ts in times:
        recent.append(ts)
        while recent and recent[0] <= ts - window:
            recent.popleft()
        best = max(best, len(recent))
    return best


@pytest.mark.parametrize("rate", [1.0, 5.0, 100.0, 1000.0])
def test_sustained_rate_never_exceeds_rate_plus_10_percent_in_any_second(rate: float) -> None:
    t = FakeTime()
    lim = limiter(rate, t)
    times = send_times(lim, t, until=t.now + 60)
    assert max_in_any_window(times) <= rate * 1.1
    # and it does not starve: a minute carries about 60 * rate requests
    assert len(times) >= 60 * rate * 0.99


def test_first_second_is_not_a_double_burst() -> None:
    t = FakeTime()
    lim = limiter(100, t)
    times = send_times(lim, t, until=t.now + 1)
    assert len([x for x in times if x < 1001.0]) <= 110


def test_default_burst_is_a_tenth_of_the_rate() -> None:
    t = FakeTime()
    assert limiter(100, t).burst == 10
    assert limiter(5, t).burst == 1  # never below one request
    assert limiter(100, t, burst=3).burst == 3


def test_idle_time_does_not_bank_more_than_the_burst() -> None:
    t = FakeTime()
    lim = limiter(100, t)
    t.now += 3600
    start = t.now
    times = send_times(lim, t, until=start + 1)
    assert len([x for x in times if x < start + 1]) <= 110
    assert sum(1 for x in times if x == start) == 10


def test_concurrent_acquirers_share_one_bucket() -> None:
    t = FakeTime()
    lim = limiter(50, t)
    times: list[float] = []

    async def worker() -> None:
        for _ in range(100):
            await lim.acquire()
            times.append(t.now)

    async def main() -> None:
        await asyncio.gather(*(worker() for _ in range(8)))

    asyncio.run(main())
    # 800 requests at 50 rps with a burst of 5: about 16 s, never 8x faster
    assert max(times) - min(times) >= (800 - 5) / 50 * 0.99


def test_throttle_halves_and_success_recovers_additively() -> None:
    t = FakeTime()
    lim = limiter(100, t)
    lim.on_throttled()
    assert lim.current_rate == 50
    lim.on_throttled()  # same burst of 429s (within the cooldown): ignored
    assert lim.current_rate == 50
    t.now += 1.5
    lim.on_throttled()
    assert lim.current_rate == 25
    # +max/20 = 5 rps per second of success
    for _ in range(4):
        t.now += 1
        lim.on_success()
    assert lim.current_rate == pytest.approx(45)
    # many successes in the same instant add nothing
    for _ in range(100):
        lim.on_success()
    assert lim.current_rate == pytest.approx(45)
    # a long quiet gap counts as one second at most
    t.now += 600
    lim.on_success()
    assert lim.current_rate == pytest.approx(50)
    for _ in range(20):
        t.now += 1
        lim.on_success()
    assert lim.current_rate == 100  # capped at the configured max


def test_throttle_never_goes_below_the_floor() -> None:
    t = FakeTime()
    lim = limiter(100, t)
    for _ in range(20):
        t.now += 2
        lim.on_throttled()
    assert lim.current_rate == 1.0
    small = limiter(0.5, t)
    small.on_throttled()
    assert small.current_rate == 0.5  # the floor never exceeds the configured max


def test_throttled_rate_is_what_acquire_enforces() -> None:
    t = FakeTime()
    lim = limiter(100, t)
    lim.on_throttled()
    start = t.now
    times = send_times(lim, t, until=start + 10)
    assert max_in_any_window(times) <= 50 * 1.1


def test_set_max_rate() -> None:
    t = FakeTime()
    lim = limiter(100, t)
    lim.set_max_rate(200)
    assert (lim.current_rate, lim.max_rate) == (200, 200)
    t.now += 2
    lim.on_throttled()
    lim.set_max_rate(400)  # throttled: stays low and recovers toward the new max
    assert lim.current_rate == 100
    lim.set_max_rate(20)
    assert lim.current_rate == 20


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"rate": 0}, id="zero-rate"),
        pytest.param({"rate": 1, "burst": 0.5}, id="burst"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RateLimiter(**kwargs)  # type: ignore[arg-type]


def test_throttle_learns_the_accepted_rate_as_a_ceiling() -> None:
    t = FakeTime()
    lim = limiter(50, t)
    for _ in range(20):  # the server accepted 20 answers in the last second
        t.now += 0.05
        lim.on_success()
    lim.on_throttled()
    assert lim.ceiling == pytest.approx(18)
    assert lim.current_rate == pytest.approx(18)
    for _ in range(25):  # successes within the hold time never pass the ceiling
        t.now += 1
        lim.on_success()
    assert lim.current_rate == pytest.approx(18)


def test_ceiling_is_probed_slowly_after_the_hold_time() -> None:
    t = FakeTime()
    lim = limiter(50, t)
    for _ in range(20):
        t.now += 0.05
        lim.on_success()
    lim.on_throttled()
    t.now += 30
    for _ in range(10):  # 10 s of probing: +0.5 % of the ceiling per second
        t.now += 1
        lim.on_success()
    assert 18 < lim.current_rate <= 18 * 1.06
    assert lim.ceiling == pytest.approx(lim.current_rate)


def test_throttle_with_a_faster_accepted_rate_still_slows_down() -> None:
    t = FakeTime()
    lim = limiter(10, t)
    for _ in range(30):  # a burst accepted before the 429 (more than the current rate)
        t.now += 0.01
        lim.on_success()
    lim.on_throttled()
    assert lim.current_rate == pytest.approx(9)  # at least 10 % down


def test_learned_ceiling_keeps_a_saturated_sender_within_10_percent_of_the_server() -> None:
    """A sender configured at 50 rps against a server that accepts 20 rps (token bucket with
    a one-second burst, like the sandbox): after the first seconds, no one-second window of
    requests (accepted or throttled) exceeds 22."""
    t = FakeTime()
    lim = limiter(50, t)
    server_tokens, server_rate, last = 20.0, 20.0, t.now
    sent: list[float] = []

    async def go() -> None:
        nonlocal server_tokens, last
        while t.now < 1200:
            await lim.acquire()
            sent.append(t.now)
            server_tokens = min(server_rate, server_tokens + (t.now - last) * server_rate)
            last = t.now
            if server_tokens >= 1:
                server_tokens -= 1
                lim.on_success()
            else:
                lim.on_throttled()

    asyncio.run(go())
    after_warmup = [s for s in sent if s >= 1005]
    assert max_in_any_window(after_warmup) <= 22
    assert len(after_warmup) >= 195 * 18  # and it does not starve
