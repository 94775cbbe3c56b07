"""Retry timing: AWS "full jitter" backoff, and when an operation is too old to keep trying.

Full jitter (a uniform draw in ``[0, min(max, initial * 2**attempt)]``) spreads the retries of
many partitions that failed together, so they do not hit a recovering Customer.io in one wave.
"""

from __future__ import annotations

import random

MAX_EXPONENT = 62  # 2**62 * any sane initial already exceeds every maximum; avoids overflow


def full_jitter_backoff(attempt: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Seconds to wait before retry number ``attempt + 1`` (``attempt`` = attempts made so far,
    starting at 0)."""
    ceiling = min(maximum, initial * 2.0 ** min(max(attempt, 0), MAX_EXPONENT))
    return rng.uniform(0.0, ceiling)


def is_expired(enqueued_at: float, now: float, max_event_age_secs: float) -> bool:
    """An operation queued longer than ``max_event_age_secs`` is dead-lettered as "expired"
    instead of retried (it stays replayable from the dead letters)."""
    return now - enqueued_at > max_event_age_secs
