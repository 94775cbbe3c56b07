"""SIGKILL ``serve`` mid-stream: every event that got a 200 arrives exactly once, in order."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import Sandbox, Serve, wait_until

pytestmark = pytest.mark.e2e

USERS = 40
EVENTS = 2_000


def make_event(i: int) -> dict[str, Any]:
    user = f"crash_user_{i % USERS}"
    return {
        "event": {
            "uuid": f"01930000-{i // 65536:04x}-7{i % 4096:03x}-8000-{i:012x}",
            "event": "step_done",
            "distinct_id": user,
            "timestamp": f"2024-10-01T12:{(i // 60) % 60:02d}:{i % 60:02d}.000Z",
            "properties": {"$is_identified": True, "seq": i, "$set": {"last_seq": i}},
        },
        "person": {"properties": {"email": f"{user}@example.com"}},
    }


def test_sigkill_mid_stream_loses_nothing_acknowledged(tmp_path: Path, sandbox: Sandbox) -> None:
    serve = Serve(tmp_path, tmp_path / "data", sandbox)
    acked: list[int] = []
    stop = threading.Event()

    def stream() -> None:
        # One sender, so ingest order per user is seq order; retry refused posts like PostHog.
        i = 0
        with httpx.Client(timeout=10) as client:
            while i < EVENTS and not stop.is_set():
                batch = [make_event(j) for j in range(i, min(i + 5, EVENTS))]
                try:
                    r = client.post(f"{serve.url}/webhook", json={"batch": batch})
                except httpx.HTTPError:
                    time.sleep(0.05)
                    continue
                if r.status_code == 200:
                    acked.extend(range(i, i + len(batch)))
                    i += len(batch)

    sender = threading.Thread(target=stream)
    sender.start()
    try:
        wait_until(lambda: len(acked) >= EVENTS // 3, timeout=120)
        assert serve.proc is not None
        serve.proc.kill()  # SIGKILL: no chance to flush or release anything
        killed_at = len(acked)
        time.sleep(0.3)
        serve.start()  # same port, same data dir
        sender.join(timeout=300)
        assert not sender.is_alive()
        assert killed_at < EVENTS
        serve.wait_drained(timeout=120)
    finally:
        stop.set()
        sender.join(timeout=10)
        serve.close()

    assert acked == list(range(EVENTS))
    seqs: dict[str, list[int]] = defaultdict(list)
    for person in sandbox.people():
        full = sandbox.person(person["id"])
        assert full is not None
        for ev in full["events"]:
            if ev["name"] == "step_done":
                data = ev.get("data") or ev.get("attributes") or {}
                seqs[person["id"]].append(int(data["seq"]))
    delivered = sorted(s for user in seqs.values() for s in user)
    assert delivered == list(range(EVENTS)), "missing or duplicated events"
    for user, got in seqs.items():
        assert got == sorted(got), f"order broken for {user}"
