"""Delivery you can trust, proven with real faults: the real ``serve`` against the sandbox,
which injects outages, 429s, poison items and refused credentials; real signals.

Each test prints its figures (``RELIABILITY name {...}`` with ``pytest -s``; with
``RELIABILITY_SUMMARY=FILE`` they are also merged into that JSON file) for
docs/reliability.md.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    API_KEY,
    SITE_ID,
    EventStream,
    Sandbox,
    Serve,
    accepted_event_ids,
    assert_delivered_once_in_order,
    make_event,
    person_seqs,
    record_figures,
    run_cli,
    wait_until,
)

pytestmark = pytest.mark.e2e


def assert_no_event_accepted_twice(sandbox: Sandbox) -> Counter[str]:
    accepted = accepted_event_ids(sandbox.requests())
    twice = {k: n for k, n in accepted.items() if n > 1}
    assert not twice, f"events accepted more than once: {list(twice)[:5]}"
    assert sandbox.stats()["duplicate_events_ignored"] == 0
    return accepted


# --- outage ---------------------------------------------------------------------------------

OUTAGE_EVENTS = 600


def test_outage_then_recovery_delivers_every_event_exactly_once(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    serve = Serve(tmp_path, tmp_path / "data", sandbox)
    stream = EventStream(serve, OUTAGE_EVENTS, pause_secs=0.01)
    try:
        sandbox.faults(fail_rate=1.0, fail_status=503)
        outage_start = time.monotonic()
        stream.start()
        wait_until(lambda: len(stream.acked) >= OUTAGE_EVENTS // 2, timeout=60)
        time.sleep(1.0)  # events keep arriving; Customer.io keeps answering 503
        during = sandbox.stats()
        assert during["events_stored"] == 0
        assert during["requests_by_status"].get("503", 0) > 0
        acked_during_outage = len(stream.acked)
        sandbox.faults(fail_rate=0.0)
        outage_secs = time.monotonic() - outage_start
        stream.finish()
        serve.wait_drained(timeout=60)
        status = serve.status()
    finally:
        stream.stop()
        serve.close()

    assert stream.acked == list(range(OUTAGE_EVENTS))
    assert_delivered_once_in_order(sandbox, stream.acked)
    assert_no_event_accepted_twice(sandbox)
    assert status["queue"]["dead_letters"] == 0
    stats = sandbox.stats()
    record_figures(
        "outage",
        {
            "events": OUTAGE_EVENTS,
            "outage_secs": round(outage_secs, 1),
            "events_acked_during_outage": acked_during_outage,
            "requests_by_status": stats["requests_by_status"],
            "events_stored": stats["events_stored"],
            "accepted_twice": 0,
            "dead_letters": status["queue"]["dead_letters"],
        },
    )


# --- 429 storm ------------------------------------------------------------------------------

STORM_EVENTS = 400
STORM_SERVER_RPS = 20
STORM_CONNECTOR_RPS = 50
STORM_WARMUP_SECS = 5.0


def max_per_sliding_second(times: list[float]) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def test_429_storm_adapts_to_the_server_limit(tmp_path: Path, sandbox: Sandbox) -> None:
    """Customer.io counts every request against the limit, the 429'd ones too, so the rate
    checked is of all requests the sandbox answered (accepted + 429)."""
    sandbox.faults(rate_limit_rps=STORM_SERVER_RPS, retry_after_secs=1)
    serve = Serve(
        tmp_path,
        tmp_path / "data",
        sandbox,
        POSTHOG_CUSTOMERIO_RATE_LIMIT_RPS=str(STORM_CONNECTOR_RPS),
        POSTHOG_CUSTOMERIO_BATCH_MAX_OPS="1",  # one operation per request: a request storm
    )
    stream = EventStream(serve, STORM_EVENTS, batch=50, users=100, make=_plain_event)
    try:
        stream.start()
        stream.finish()
        serve.wait_drained(timeout=120)
        status = serve.status()
    finally:
        stream.stop()
        serve.close()

    assert_delivered_once_in_order(sandbox, list(range(STORM_EVENTS)))
    assert_no_event_accepted_twice(sandbox)
    assert status["queue"]["dead_letters"] == 0
    requests = sandbox.requests()
    times = [r["time"] for r in requests]
    start = min(times)
    steady = [t for t in times if t >= start + STORM_WARMUP_SECS]
    peak = max_per_sliding_second(steady)
    by_status = Counter(r["status"] for r in requests)
    assert by_status[429] > 0, "the storm never happened"
    assert peak <= STORM_SERVER_RPS * 1.1, f"{peak} requests in one second"
    record_figures(
        "rate_limit_storm",
        {
            "events": STORM_EVENTS,
            "sandbox_limit_rps": STORM_SERVER_RPS,
            "connector_rate_limit_rps": STORM_CONNECTOR_RPS,
            "requests_by_status": {str(k): v for k, v in sorted(by_status.items())},
            "peak_requests_in_any_1s_window_after_warmup": peak,
            "warmup_secs": STORM_WARMUP_SECS,
            "seconds": round(max(times) - start, 1),
            "dead_letters": 0,
        },
    )


def _plain_event(i: int, users: int) -> dict[str, Any]:
    """An event without ``$set``: one operation each, so one request each."""
    body = make_event(i, users)
    del body["event"]["properties"]["$set"]
    return body


# --- poison item ----------------------------------------------------------------------------

POISON_EVENTS = 200
POISONED = (57, 143)


def _maybe_poison(i: int, users: int) -> dict[str, Any]:
    return make_event(i, users, name="poison_event" if i in POISONED else "step_done")


def test_poison_item_is_the_only_dead_letter_and_replays_once(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.faults(reject_event_names=["poison_event"])
    serve = Serve(tmp_path, tmp_path / "data", sandbox)
    stream = EventStream(serve, POISON_EVENTS, batch=POISON_EVENTS, make=_maybe_poison)
    try:
        stream.start()
        stream.finish()
        serve.wait_drained(timeout=60)
        listed = serve.http.get("/admin/dead-letters").json()
        assert listed["count"] == 2, listed
        letters = sorted(listed["dead_letters"], key=lambda d: d["operation"]["attributes"]["seq"])
        for letter in letters:
            assert letter["reason"] == "rejected"
            assert (
                "poison_event" in letter["detail"]
                and "rejected by this sandbox" in letter["detail"]
            )
            assert letter["status"] == 207
            assert "Basic [redacted]" in letter["request"] and API_KEY not in letter["request"]
        good = [i for i in range(POISON_EVENTS) if i not in POISONED]
        assert_delivered_once_in_order(sandbox, good)
        batches = [r for r in sandbox.requests() if r["path"].endswith("/api/v2/batch")]
        poisoned_batch = next(r for r in batches if r["status"] == 207)
        batch_size = len(poisoned_batch["body"]["batch"])

        # "Fix" it, then replay one with the CLI and the other over HTTP.
        sandbox.faults(reject_event_names=[])
        by_cli, by_http = letters[0]["id"], letters[1]["id"]
        r = run_cli("dead-letters", "replay", str(by_cli), "--data-dir", str(serve.data_dir))
        assert r.returncode == 0, r.stderr
        assert "replayed 1" in r.stdout
        no_header = serve.http.post("/admin/dead-letters/replay", json={"ids": [by_http]})
        assert no_header.status_code == 403
        cross_site = serve.admin(
            "/admin/dead-letters/replay", {"ids": [by_http]}, Origin="http://evil.example"
        )
        assert cross_site.status_code == 403
        assert serve.admin("/admin/dead-letters/replay", {"ids": "all"}).status_code == 400
        replayed = serve.admin("/admin/dead-letters/replay", {"ids": [by_http]})
        assert replayed.status_code == 200 and replayed.json() == {"replayed": 1}
        serve.wait_drained(timeout=60)
        wait_until(lambda: len(sandbox.people()) > 0 and _poison_count(sandbox) == 2)
        assert serve.http.get(f"/admin/dead-letters/{by_http}").status_code == 404
        assert serve.http.get("/admin/dead-letters").json()["count"] == 0
    finally:
        stream.stop()
        serve.close()

    seen = Counter(s for seqs in person_seqs(sandbox, "poison_event").values() for s in seqs)
    assert seen == Counter(POISONED)
    assert_no_event_accepted_twice(sandbox)
    record_figures(
        "poison",
        {
            "events": POISON_EVENTS,
            "poisoned": len(POISONED),
            "largest_batch_with_poison": batch_size,
            "dead_lettered": 2,
            "dead_letter_reason": letters[0]["detail"],
            "replayed_cli": 1,
            "replayed_http": 1,
            "accepted_twice": 0,
        },
    )


def _poison_count(sandbox: Sandbox) -> int:
    return sum(len(v) for v in person_seqs(sandbox, "poison_event").values())


# --- SIGTERM --------------------------------------------------------------------------------

DRAIN_EVENTS = 300


def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path: Path, sandbox: Sandbox) -> None:
    sandbox.faults(latency_ms=400)
    serve = Serve(
        tmp_path,
        tmp_path / "data",
        sandbox,
        POSTHOG_CUSTOMERIO_BATCH_MAX_OPS="20",
        POSTHOG_CUSTOMERIO_SHUTDOWN_GRACE_SECS="5",
    )
    stream = EventStream(serve, DRAIN_EVENTS, batch=100)
    try:
        stream.start()
        stream.finish()
        wait_until(lambda: sandbox.stats()["requests_total"] >= 3)  # delivery is under way
        assert serve.proc is not None
        sent_at = time.monotonic()
        code = serve.proc.terminate(timeout=20)
        exit_secs = time.monotonic() - sent_at
        assert code == 0, serve.proc.output()
        assert "connector stopped" in serve.proc.output()
        delivered_at_exit = sandbox.stats()["events_stored"]
        offline = run_cli("status", "--json", "--data-dir", str(serve.data_dir))
        assert offline.returncode == 0, offline.stderr
        pending_ops = json.loads(offline.stdout)["queue"]["depth"]
        assert delivered_at_exit < DRAIN_EVENTS and pending_ops > 0
        sandbox.faults(latency_ms=0)
        serve.start()
        serve.wait_drained(timeout=60)
    finally:
        stream.stop()
        serve.close()

    assert_delivered_once_in_order(sandbox, list(range(DRAIN_EVENTS)))
    # In-flight requests were finished and acknowledged before exit: nothing was sent twice.
    assert_no_event_accepted_twice(sandbox)
    record_figures(
        "sigterm",
        {
            "events": DRAIN_EVENTS,
            "sandbox_latency_ms": 400,
            "exit_code": code,
            "exit_secs_after_sigterm": round(exit_secs, 2),
            "events_delivered_at_exit": delivered_at_exit,
            "operations_still_queued_at_exit": pending_ops,
            "accepted_twice": 0,
        },
    )


# --- credentials ----------------------------------------------------------------------------

AUTH_EVENTS = 100


def _rejected(serve: Serve) -> bool:
    r = serve.http.get("/readyz")
    return r.status_code == 503 and r.json()["reason"] == "credentials rejected"


def test_credentials_rejected_pause_then_resume(tmp_path: Path, sandbox: Sandbox) -> None:
    sandbox.faults(reject_credentials=True)
    serve = Serve(
        tmp_path, tmp_path / "data", sandbox, POSTHOG_CUSTOMERIO_CREDENTIALS_RECHECK_SECS="1"
    )
    stream = EventStream(serve, AUTH_EVENTS, batch=20)
    try:
        stream.start()
        stream.finish()
        wait_until(lambda: _rejected(serve))
        time.sleep(1.5)  # at least one re-check while still refused
        st = run_cli("status", "--port", str(serve.port))
        assert st.returncode == 0, st.stderr
        assert "credentials rejected" in st.stdout, st.stdout
        status = serve.status()
        assert status["queue"]["dead_letters"] == 0
        assert status["queue"]["depth"] == 2 * AUTH_EVENTS  # identify + event each: all kept
        assert sandbox.stats()["events_stored"] == 0
        sandbox.faults(reject_credentials=False)
        serve.wait_drained(timeout=30)
        assert serve.http.get("/readyz").status_code == 200
        assert serve.status()["queue"]["dead_letters"] == 0
        refused = sandbox.stats()["requests_by_status"].get("401", 0)
    finally:
        stream.stop()
        serve.close()
    assert_delivered_once_in_order(sandbox, list(range(AUTH_EVENTS)))
    record_figures(
        "credentials_toggle",
        {"events": AUTH_EVENTS, "requests_answered_401": refused, "dead_letters": 0},
    )


def _config(path: Path, sandbox: Sandbox, api_key: str, extra: str = "") -> None:
    path.write_text(
        f'site_id = "{SITE_ID}"\napi_key = "{api_key}"\ntrack_url = "{sandbox.url}"\n'
        f"{extra}[delivery]\ncredentials_recheck_secs = 600\n"
    )
    path.chmod(0o600)


def test_sighup_with_corrected_credentials_resumes_delivery(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Started with a wrong key in its config file (re-checked only every 600 s): fixing the
    file and sending SIGHUP resumes delivery at once; a broken file on SIGHUP changes nothing."""
    wrong_key = "wrong-key-3c1d9e77"
    cfg = tmp_path / "connector.toml"
    _config(cfg, sandbox, wrong_key)
    serve = Serve(tmp_path, tmp_path / "data", sandbox, "--config", str(cfg), env_credentials=False)
    stream = EventStream(serve, AUTH_EVENTS, batch=20)
    try:
        stream.start()
        stream.finish()
        wait_until(lambda: _rejected(serve))
        assert serve.proc is not None

        cfg.write_text("site_id = [broken\n")  # invalid: the running config must stay
        serve.signal(signal.SIGHUP)
        wait_until(lambda: "config reload failed" in serve.proc.output())  # type: ignore[union-attr]
        assert serve.http.get("/healthz").status_code == 200
        assert _rejected(serve)

        _config(cfg, sandbox, API_KEY, extra="rate_limit_rps = 40\n")
        fixed_at = time.monotonic()
        serve.signal(signal.SIGHUP)
        serve.wait_drained(timeout=30)
        resumed_secs = time.monotonic() - fixed_at
        assert serve.http.get("/readyz").status_code == 200
        assert serve.status()["queue"]["dead_letters"] == 0
        log = serve.proc.output()
    finally:
        stream.stop()
        serve.close()
    assert "api_key: changed" in log and "rate_limit_rps: 100.0 -> 40.0" in log
    assert "not valid TOML" in log
    assert wrong_key not in log and API_KEY not in log
    assert_delivered_once_in_order(sandbox, list(range(AUTH_EVENTS)))
    record_figures(
        "sighup_credentials",
        {
            "events": AUTH_EVENTS,
            "credentials_recheck_secs": 600,
            "secs_from_sighup_to_drained": round(resumed_secs, 1),
            "dead_letters": 0,
        },
    )


# --- the store cannot take writes -----------------------------------------------------------


def test_locked_database_answers_503_and_writes_nothing(tmp_path: Path, sandbox: Sandbox) -> None:
    serve = Serve(tmp_path, tmp_path / "data", sandbox)
    try:
        assert serve.post({"batch": [make_event(0)]}).status_code == 200
        serve.wait_drained()
        blocker = sqlite3.connect(serve.data_dir / "connector.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock past busy_timeout
        try:
            refused = serve.post({"batch": [make_event(1), make_event(2)]})
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "5"
        assert "queue unavailable" in refused.json()["error"]
        retried = serve.post({"batch": [make_event(1), make_event(2)]})  # as PostHog retries
        assert retried.status_code == 200 and retried.json()["dropped"] == 0, retried.text
        serve.wait_drained()
    finally:
        serve.close()
    assert_delivered_once_in_order(sandbox, [0, 1, 2])
    assert "Traceback" not in serve.proc.output()  # type: ignore[union-attr]


def _can_mount_tmpfs(where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if r.returncode != 0:
        return False
    subprocess.run(["umount", str(where)], check=True)
    return True


def test_disk_full_answers_503_and_recovers(tmp_path: Path, sandbox: Sandbox) -> None:
    """The data dir on a 2 MiB tmpfs, nearly filled: webhooks get 503 (nothing half-written),
    and 200 again once space is freed; every acknowledged event arrives once."""
    mnt = tmp_path / "small"
    if not _can_mount_tmpfs(mnt):
        pytest.skip("cannot mount a tmpfs here (needs root); the locked-database test covers 503")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    serve: Serve | None = None
    try:
        filler = mnt / "filler"
        sandbox.faults(reject_credentials=True)  # keep everything queued while the disk fills
        serve = Serve(
            tmp_path,
            mnt / "data",
            sandbox,
            POSTHOG_CUSTOMERIO_CREDENTIALS_RECHECK_SECS="0.5",
        )
        wait_until(lambda: _rejected(serve))
        filler.write_bytes(b"\0" * (1024 * 1024))
        acked: list[int] = []
        statuses: Counter[int] = Counter()
        i = 0
        while statuses[503] < 3 and i < 20_000:
            batch = [_blob(j) for j in range(i, i + 10)]
            r = serve.post({"batch": batch})
            statuses[r.status_code] += 1
            if r.status_code == 200:
                assert r.json()["dropped"] == 0
                acked.extend(range(i, i + 10))
                i += 10
        assert statuses[503] >= 3, statuses
        assert set(statuses) <= {200, 503}, statuses
        filler.unlink()  # space again: the same (refused) batch now goes in, whole
        wait_until(
            lambda: serve.post({"batch": [_blob(j) for j in range(i, i + 10)]}).status_code == 200
        )
        acked.extend(range(i, i + 10))
        sandbox.faults(reject_credentials=False)
        serve.wait_drained(timeout=60)
        output = serve.proc.output()  # type: ignore[union-attr]
    finally:
        if serve is not None:
            serve.close()
        subprocess.run(["umount", "-l", str(mnt)], check=False)
    assert_delivered_once_in_order(sandbox, acked)
    assert "webhook failed unexpectedly" not in output
    record_figures(
        "disk_full",
        {
            "tmpfs_bytes": 2 * 1024 * 1024,
            "events_acked": len(acked),
            "webhook_answers": {str(k): v for k, v in sorted(statuses.items())},
            "delivered_once": len(acked),
        },
    )


def _blob(j: int) -> dict[str, Any]:
    ev = make_event(j)
    ev["event"]["properties"]["blob"] = "x" * 900
    return ev
