"""Full-jitter backoff bounds, expiry, and the batch body helpers."""

from __future__ import annotations

import random

import pytest

from posthog_customerio.delivery.backoff import full_jitter_backoff, is_expired
from posthog_customerio.delivery.batch import build_batch_body, claim_max_bytes, split_halves
from posthog_customerio.mapping.operation import Endpoint
from posthog_customerio.queue.base import ClaimedOperation


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [
        pytest.param(0, 0.5, id="first-retry"),
        pytest.param(1, 1.0, id="second"),
        pytest.param(3, 4.0, id="fourth"),
        pytest.param(7, 60.0, id="capped"),
        pytest.param(5000, 60.0, id="huge-attempt-no-overflow"),
        pytest.param(-1, 0.5, id="negative-as-zero"),
    ],
)
def test_full_jitter_stays_within_the_ceiling(attempt: int, ceiling: float) -> None:
    rng = random.Random(7)
    draws = [full_jitter_backoff(attempt, 0.5, 60.0, rng) for _ in range(2000)]
    assert all(0.0 <= d <= ceiling for d in draws)
    # full jitter: the draws spread over the whole range, not around the ceiling
    assert min(draws) < ceiling * 0.05
    assert max(draws) > ceiling * 0.95


def test_full_jitter_is_deterministic_for_a_seeded_rng() -> None:
    a = [full_jitter_backoff(i, 0.2, 5.0, random.Random(1)) for i in range(10)]
    b = [full_jitter_backoff(i, 0.2, 5.0, random.Random(1)) for i in range(10)]
    assert a == b


@pytest.mark.parametrize(
    ("age", "expired"),
    [
        pytest.param(0.0, False, id="fresh"),
        pytest.param(100.0, False, id="at-limit"),
        pytest.param(100.001, True, id="over-limit"),
    ],
)
def test_is_expired(age: float, expired: bool) -> None:
    assert is_expired(enqueued_at=1000.0, now=1000.0 + age, max_event_age_secs=100.0) is expired


def op(i: int, body: bytes) -> ClaimedOperation:
    return ClaimedOperation(i, f"p{i}", Endpoint.BATCH, "event", body, 0, 0.0, f"u{i}")


def test_build_batch_body_splices_the_stored_json() -> None:
    body = build_batch_body([op(1, b'{"a":1}'), op(2, b'{"b":2}')])
    assert body == b'{"batch":[{"a":1},{"b":2}]}'
    assert build_batch_body([op(1, b"{}")]) == b'{"batch":[{}]}'


def test_claim_max_bytes_leaves_room_for_the_wrapper() -> None:
    assert claim_max_bytes(450_000) == 450_000 - 64


@pytest.mark.parametrize(
    ("n", "left", "right"),
    [
        pytest.param(2, [0], [1], id="two"),
        pytest.param(5, [0, 1], [2, 3, 4], id="odd"),
        pytest.param(8, [0, 1, 2, 3], [4, 5, 6, 7], id="even"),
        pytest.param(1, [], [0], id="one"),
    ],
)
def test_split_halves_keeps_order(n: int, left: list[int], right: list[int]) -> None:
    assert split_halves(list(range(n))) == (left, right)
