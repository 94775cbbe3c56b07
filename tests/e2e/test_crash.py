"""SIGKILL ``serve`` mid-stream: every event that got a 200 arrives exactly once, in order."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.e2e.harness import (
    EventStream,
    Sandbox,
    Serve,
    assert_delivered_once_in_order,
    record_figures,
    wait_until,
)

pytestmark = pytest.mark.e2e

EVENTS = 2_000


def test_sigkill_mid_stream_loses_nothing_acknowledged(tmp_path: Path, sandbox: Sandbox) -> None:
    serve = Serve(tmp_path, tmp_path / "data", sandbox)
    # One sender, so ingest order per user is seq order; refused posts are retried.
    stream = EventStream(serve, EVENTS)
    stream.start()
    try:
        wait_until(lambda: len(stream.acked) >= EVENTS // 3, timeout=120)
        assert serve.proc is not None
        serve.proc.kill()  # SIGKILL: no chance to flush or release anything
        killed_at = len(stream.acked)
        time.sleep(0.3)
        serve.start()  # same port, same data dir
        stream.finish()
        assert killed_at < EVENTS
        serve.wait_drained(timeout=120)
    finally:
        stream.stop()
        serve.close()

    assert stream.acked == list(range(EVENTS))
    assert_delivered_once_in_order(sandbox, list(range(EVENTS)))


CRASH_LOOP_EVENTS = 3_000
CRASH_LOOP_KILLS = 6
CRASH_LOOP_SEED = 20241001


def test_crash_loop_with_a_flaky_customerio(tmp_path: Path, sandbox: Sandbox) -> None:
    """Six SIGKILLs at seeded random moments while thousands of events stream in and the
    sandbox fails a fifth of the requests with added latency: at the end every acknowledged
    event is in Customer.io exactly once, in order per person."""
    rng = random.Random(CRASH_LOOP_SEED)
    sandbox.faults(fail_rate=0.2, latency_ms=15, seed=CRASH_LOOP_SEED)
    serve = Serve(tmp_path, tmp_path / "data", sandbox, POSTHOG_CUSTOMERIO_BATCH_MAX_OPS="50")
    stream = EventStream(serve, CRASH_LOOP_EVENTS, users=60)
    stream.start()
    kills: list[dict[str, float]] = []
    started = time.monotonic()
    try:
        for n in range(CRASH_LOOP_KILLS):
            # Kill somewhere in the next slice of the stream, after a random extra delay.
            goal = CRASH_LOOP_EVENTS * (n + rng.uniform(0.2, 0.9)) / (CRASH_LOOP_KILLS + 1)
            wait_until(lambda g=goal: len(stream.acked) >= g, timeout=120)
            time.sleep(rng.uniform(0.0, 0.4))
            assert serve.proc is not None
            acked_before = len(stream.acked)
            serve.proc.kill()
            delivered = sandbox.stats()["events_stored"]
            kills.append({"acked": acked_before, "delivered_at_kill": delivered})
            time.sleep(rng.uniform(0.05, 0.5))
            serve.start()
        stream.finish()
        sandbox.faults(fail_rate=0.0, latency_ms=0)
        serve.wait_drained(timeout=120)
    finally:
        stream.stop()
        serve.close()

    assert len(kills) == CRASH_LOOP_KILLS
    assert stream.acked == list(range(CRASH_LOOP_EVENTS))
    assert_delivered_once_in_order(sandbox, list(range(CRASH_LOOP_EVENTS)))
    stats = sandbox.stats()
    record_figures(
        "crash_loop",
        {
            "events": CRASH_LOOP_EVENTS,
            "sigkills": len(kills),
            "seed": CRASH_LOOP_SEED,
            "kills_at_acked": [k["acked"] for k in kills],
            "sandbox_fail_rate": 0.2,
            "sandbox_latency_ms": 15,
            "requests_by_status": stats["requests_by_status"],
            "events_stored_once": stats["events_stored"],
            "resent_after_crash_ignored_by_event_id": stats["duplicate_events_ignored"],
            "refused_posts_retried_by_sender": dict(stream.refused),
            "seconds": round(time.monotonic() - started, 1),
        },
    )
