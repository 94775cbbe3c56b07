"""End to end: `backfill` beside a real `serve` and sandbox, as an operator runs it.

History files and PostHog's query API (a fake one on loopback) go through the same mapping and
queue as live traffic; resuming after SIGINT or SIGKILL and running twice never send anything
twice; live webhooks overtake a backfill's backlog; `serve --follow-posthog` picks up new events.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from posthog_customerio.mapping.explain import explain
from posthog_customerio.mapping.rules import MappingRules
from posthog_customerio.sources.export_files import read_file
from tests.e2e.harness import API_KEY, Proc, Sandbox, Serve, base_env, run_cli, wait_until
from tests.fake_posthog import FakePostHog, running

pytestmark = pytest.mark.e2e

EVENT_ACTIONS = {"event", "page", "screen"}
PH_KEY = "phx_e2e_personal_key_31c7"


def expected_events(path: Path) -> int:
    """How many events the sandbox should end up storing for the rows of ``path``."""
    events = [r.item for r in read_file(path, received_ms=0)]
    results = explain(events, MappingRules())  # type: ignore[arg-type]
    return sum(1 for r in results for op in r.operations if op.action in EVENT_ACTIONS)


def backfill(data_dir: Path, *args: str, timeout: float = 120) -> Any:
    r = run_cli("backfill", "--data-dir", str(data_dir), *args, timeout=timeout)
    assert API_KEY not in r.stdout + r.stderr and PH_KEY not in r.stdout + r.stderr
    return r


def checkpoint_line(db: Path) -> int:
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT position FROM checkpoints").fetchone()
    except sqlite3.OperationalError:  # not migrated yet
        return 0
    finally:
        conn.close()
    return int(json.loads(row[0])["line"]) if row else 0


def big_export(samples: Path, path: Path, copies: int) -> int:
    """``copies`` times the export sample, each copy with its own uuids; returns the rows."""
    rows = [json.loads(line) for line in (samples / "export-sample.jsonl").read_text().splitlines()]
    seen: set[str] = set()
    with path.open("w") as fh:
        for k in range(copies):
            for row in rows:
                uuid = row["uuid"][:24] + f"{k:04x}" + row["uuid"][28:]
                seen.add(uuid)
                fh.write(json.dumps({**row, "uuid": uuid}) + "\n")
    assert len(seen) == copies * len(rows)
    return len(seen)


def sent_event_ids(sandbox: Sandbox) -> list[str]:
    return [
        item["id"]
        for req in sandbox.requests()
        if req["path"] == "/api/v2/batch" and req["status"] == 200
        for item in req["body"]["batch"]
        if item.get("action") in EVENT_ACTIONS
    ]


def test_backfill_export_sample_into_serve_and_the_sandbox(
    serve: Serve, sandbox: Sandbox, posthog_samples: Path
) -> None:
    sample = posthog_samples / "export-sample.jsonl"
    r = backfill(serve.data_dir, str(sample))
    assert r.returncode == 0, r.stderr
    assert "2,000 rows read" in r.stdout
    assert "the running serve delivers them" in r.stdout
    serve.wait_drained()
    stats = wait_until(lambda: (s := sandbox.stats())["events_stored"] and s)
    assert stats["events_stored"] == expected_events(sample)
    assert stats["duplicate_events_ignored"] == 0
    person = sandbox.person("user_31")
    assert person is not None and person["attributes"]["email"] == "user31@example.com"


def test_running_the_same_backfill_twice_sends_nothing_twice(
    serve: Serve, sandbox: Sandbox, posthog_samples: Path
) -> None:
    sample = posthog_samples / "export-sample.jsonl"
    assert backfill(serve.data_dir, str(sample)).returncode == 0
    again = backfill(serve.data_dir, str(sample))
    assert again.returncode == 0 and "1 file(s) already complete" in again.stdout
    restarted = backfill(serve.data_dir, str(sample), "--restart")
    assert restarted.returncode == 0
    assert "duplicate 2,000" in restarted.stdout and "0 operations queued" in restarted.stdout
    serve.wait_drained()
    ids = sent_event_ids(sandbox)
    assert len(ids) == len(set(ids)) == expected_events(sample)
    assert sandbox.stats()["duplicate_events_ignored"] == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_a_killed_backfill_resumes_and_sends_every_event_exactly_once(
    serve: Serve, sandbox: Sandbox, posthog_samples: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    export = tmp_path / "history.jsonl"
    total = big_export(posthog_samples, export, copies=12)
    db = serve.data_dir / "connector.db"
    argv = [sys.executable, "-m", "posthog_customerio", "backfill", "--data-dir"]
    argv += [str(serve.data_dir), "--chunk-events", "200", str(export)]
    first = Proc("backfill-1", argv, base_env(), tmp_path)
    try:
        wait_until(lambda: checkpoint_line(db) > 0 or first.popen.poll() is not None)
        first.popen.send_signal(sig)
        code = first.popen.wait(60)
    finally:
        first.close()
    output = first.output()
    done = checkpoint_line(db)
    assert 0 < done < total, "the backfill finished before it could be interrupted"
    if sig == signal.SIGINT:
        assert code == 130 and "interrupted" in output and "run the same command" in output
        assert f"{done:,} rows read" in output  # it stopped right after a committed chunk
    else:
        assert code == -signal.SIGKILL

    second = backfill(serve.data_dir, "--chunk-events", "200", str(export))
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{total - done:,} rows read" in second.stdout  # exactly the rest
    assert "duplicate" not in second.stdout.split("dropped:")[1].splitlines()[0]
    assert checkpoint_line(db) == total

    serve.wait_drained(timeout=180)
    ids = sent_event_ids(sandbox)
    assert len(ids) == len(set(ids)) == expected_events(export)
    assert sandbox.stats()["duplicate_events_ignored"] == 0


def test_live_webhooks_overtake_a_running_backfill(
    sandbox: Sandbox, posthog_samples: Path, tmp_path: Path
) -> None:
    serve = Serve(
        tmp_path,
        tmp_path / "data",
        sandbox,
        POSTHOG_CUSTOMERIO_RATE_LIMIT_RPS="8",
        POSTHOG_CUSTOMERIO_BATCH_MAX_OPS="25",
        POSTHOG_CUSTOMERIO_MAX_IN_FLIGHT="1",
    )
    try:
        sample = posthog_samples / "export-sample.jsonl"
        assert backfill(serve.data_dir, str(sample)).returncode == 0
        wait_until(lambda: sandbox.stats()["events_stored"] > 0)  # the backlog is draining
        live = {
            "uuid": "01930000-0000-7000-8000-00000000beef",
            "event": "live_ping",
            "distinct_id": "live_user",
            "timestamp": "2024-11-01T10:00:00Z",
            "properties": {"$is_identified": True},
        }
        assert serve.post(live).status_code == 200
        assert serve.status()["queue"]["depth"] > 100  # the backfill is far from done
        serve.wait_drained(timeout=120)
    finally:
        serve.close()
    batches = [r for r in sandbox.requests() if r["path"] == "/api/v2/batch"]
    live_at = [
        i
        for i, r in enumerate(batches)
        if any(it.get("name") == "live_ping" for it in r["body"]["batch"])
    ]
    assert len(live_at) == 1
    history_after = [
        r
        for r in batches[live_at[0] + 1 :]
        if any(it.get("name") != "live_ping" for it in r["body"]["batch"])
    ]
    assert len(history_after) > 10  # delivered long before the backfill finished


def test_api_backfill_then_follow_new_events(
    sandbox: Sandbox, posthog_samples: Path, tmp_path: Path
) -> None:
    sample = (posthog_samples / "export-sample.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in sample]
    fake = FakePostHog(rows, key=PH_KEY)
    fake.throttle_every = 4
    with running(fake):
        serve = Serve(
            tmp_path,
            tmp_path / "data",
            sandbox,
            "--follow-posthog",
            POSTHOG_CUSTOMERIO_POSTHOG_URL=fake.url,
            POSTHOG_CUSTOMERIO_POSTHOG_PROJECT_ID="2",
            POSTHOG_CUSTOMERIO_POSTHOG_PERSONAL_API_KEY=PH_KEY,
            POSTHOG_CUSTOMERIO_FOLLOW_POLL_SECS="0.2",
            POSTHOG_CUSTOMERIO_FOLLOW_LAG_SECS="60",
        )
        try:
            r = run_cli(
                "backfill",
                "--data-dir",
                str(serve.data_dir),
                "--posthog-url",
                fake.url,
                "--project-id",
                "2",
                "--since",
                "2024-09-01T00:00:00Z",
                "--page-size",
                "300",
                env={"POSTHOG_CUSTOMERIO_POSTHOG_PERSONAL_API_KEY": PH_KEY},
            )
            assert r.returncode == 0, r.stdout + r.stderr
            assert "2,000 rows read" in r.stdout
            assert fake.throttled >= 1
            serve.wait_drained()
            expected = expected_events(posthog_samples / "export-sample.jsonl")
            assert sandbox.stats()["events_stored"] == expected

            now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
            fresh = [
                {
                    "uuid": f"01930000-0000-7000-8000-0000000000{i:02d}",
                    "event": "followed_event",
                    "distinct_id": f"follow_user_{i}",
                    "timestamp": now,
                    "properties": json.dumps({"$is_identified": True, "n": i}),
                    "person_properties": "{}",
                }
                for i in range(3)
            ]
            fake.add(fresh)
            for i in range(3):
                person = wait_until(lambda i=i: sandbox.person(f"follow_user_{i}"))
                assert [e["name"] for e in person.get("events", [])] == ["followed_event"]
            metrics = serve.http.get("/metrics").text
            assert 'posthog_customerio_events_received_total{source="posthog_api"} 3.0' in metrics
            follow = serve.status()["posthog_follow"]
            assert follow["caught_up"] is True and follow["last_error"] is None
            assert sandbox.stats()["duplicate_events_ignored"] == 0
        finally:
            serve.close()
        assert serve.proc is not None and PH_KEY not in serve.proc.output()


def test_bad_rows_are_reported_and_max_bad_rows_stops(tmp_path: Path) -> None:
    data = Path(__file__).resolve().parents[1] / "data" / "posthog-events-export.csv"
    r = backfill(tmp_path / "data", str(data), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert f"{data}:6: distinct_id: is missing" in r.stdout + r.stderr
    assert "would enqueue:  4 events" in r.stdout and "nothing was written" in r.stdout
    assert not (tmp_path / "data").exists()  # a dry run writes nothing
    stopped = backfill(tmp_path / "data", str(data), "--max-bad-rows", "0")
    assert stopped.returncode == 1
    assert "more than --max-bad-rows=0 bad rows" in stopped.stderr
    assert "start `serve` to deliver them" in stopped.stdout
    again = backfill(tmp_path / "data", str(data))  # the rest of the file is still there
    assert again.returncode == 0 and "5 rows read" in again.stdout


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert backfill(tmp_path, "--since", "1d", str(tmp_path)).returncode == 2
    assert backfill(tmp_path).returncode == 2
    assert backfill(tmp_path, str(tmp_path / "missing.jsonl")).returncode == 2
    r = backfill(tmp_path, "--posthog-url", "http://127.0.0.1:9", "--project-id", "2")
    assert r.returncode == 2 and "--personal-api-key" in r.stderr
