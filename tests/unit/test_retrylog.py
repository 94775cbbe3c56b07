"""Retry storms are summarized: one line at first, then one line per interval."""

from __future__ import annotations

import logging

import pytest

from posthog_customerio.delivery.retrylog import RetryLog


def retry(log: RetryLog, status: int = 429) -> None:
    log.retried(
        endpoint="batch",
        status=status,
        reason="throttled",
        ops=10,
        delay_secs=1.5,
        detail="429 Too Many Requests",
    )


def test_a_storm_is_a_few_lines(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = RetryLog(logging.getLogger("test.retry"), lambda: now[0], every_secs=10)
    with caplog.at_level(logging.WARNING, logger="test.retry"):
        for _ in range(1000):  # 100 failed requests per second for 10 s
            retry(log)
            now[0] += 0.01
        retry(log)  # 10 s after the first line: the summary
        log.flush()
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["request failed, will retry", "retries continue"]
    summary = caplog.records[1].ctx  # type: ignore[attr-defined]
    assert summary["requests"] == 1000 and summary["ops"] == 10_000
    assert summary["reasons"] == {"throttled": 1000}
    assert summary["last_status"] == 429


def test_quiet_then_one_failure_logs_at_once(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = RetryLog(logging.getLogger("test.retry"), lambda: now[0], every_secs=10)
    with caplog.at_level(logging.WARNING, logger="test.retry"):
        retry(log, 503)
        now[0] += 60
        retry(log, 503)
        log.flush()  # nothing pending
    assert [r.getMessage() for r in caplog.records] == ["request failed, will retry"] * 2
