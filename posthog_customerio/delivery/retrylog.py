"""Retry logging that stays readable during a storm.

A 429 storm or an outage fails every request for a while; one log line per request would
bury everything else. The first retry after a quiet spell is logged at once, with its detail;
the retries that follow are counted and logged as one summary line per
``RETRY_LOG_EVERY_SECS`` (requests, operations, reasons, the last status and detail), and
whatever is pending is flushed when a delivery gets through again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

RETRY_LOG_EVERY_SECS = 10.0


class RetryLog:
    """Counts retries and logs them as ``request failed, will retry`` / ``retries continue``."""

    def __init__(
        self,
        logger: logging.Logger,
        clock: Callable[[], float],
        every_secs: float = RETRY_LOG_EVERY_SECS,
    ) -> None:
        self._logger = logger
        self._clock = clock
        self._every = every_secs
        self._logged_at = float("-inf")
        self._requests = 0
        self._ops = 0
        self._reasons: dict[str, int] = {}
        self._last: dict[str, Any] = {}

    @property
    def pending(self) -> int:
        """Retried requests counted but not logged yet."""
        return self._requests

    def retried(
        self,
        *,
        endpoint: str,
        status: int | None,
        reason: str,
        ops: int,
        delay_secs: float,
        detail: str,
    ) -> None:
        now = self._clock()
        if self._requests == 0 and now - self._logged_at >= self._every:
            self._logged_at = now
            self._logger.warning(
                "request failed, will retry",
                extra={
                    "ctx": {
                        "endpoint": endpoint,
                        "status": status,
                        "reason": reason,
                        "ops": ops,
                        "delay_secs": round(delay_secs, 3),
                        "detail": detail,
                    }
                },
            )
            return
        self._requests += 1
        self._ops += ops
        self._reasons[reason] = self._reasons.get(reason, 0) + 1
        self._last = {"last_status": status, "last_detail": detail}
        if now - self._logged_at >= self._every:
            self.flush()

    def flush(self) -> None:
        """Log the retries counted since the last line, if any."""
        if self._requests == 0:
            return
        now = self._clock()
        self._logger.warning(
            "retries continue",
            extra={
                "ctx": {
                    "requests": self._requests,
                    "ops": self._ops,
                    "reasons": dict(sorted(self._reasons.items())),
                    "window_secs": round(max(now - self._logged_at, 0.0), 1),
                    **self._last,
                }
            },
        )
        self._logged_at = now
        self._requests = 0
        self._ops = 0
        self._reasons = {}
        self._last = {}
