"""Where the queue lives, as an operator meets it: every command opens the same store.

`backfill` into PostgreSQL (a database it migrates itself), then `serve` on that database,
delivers every event. A command that reads the queue and finds none says where it looked and
how to point elsewhere, and leaves nothing behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.e2e.harness import (
    Sandbox,
    Serve,
    assert_delivered_once_in_order,
    free_port,
    run_cli,
    wait_until,
)
from tests.e2e.test_backfill import expected_events, sent_event_ids
from tests.pg import PgServer, dsn_for

pytestmark = pytest.mark.e2e


def write_export(path: Path, total: int, users: int = 30) -> None:
    """A PostHog export (JSON Lines, as PostHog writes it) of ``total`` identified
    ``step_done`` events, ``properties.seq`` = 0..total-1."""
    with path.open("w") as fh:
        for i in range(total):
            user = f"pg_user_{i % users}"
            row = {
                "uuid": f"01930000-{i // 65536:04x}-7{i % 4096:03x}-8000-{i:012x}",
                "event": "step_done",
                "distinct_id": user,
                "timestamp": f"2024-10-01 12:{(i // 60) % 60:02d}:{i % 60:02d}.000+00:00",
                "properties": json.dumps({"$is_identified": True, "seq": i}),
                "person_properties": json.dumps({"email": f"{user}@example.com"}),
            }
            fh.write(json.dumps(row) + "\n")


def test_backfill_into_postgresql_then_serve_delivers_every_event(
    tmp_path: Path, sandbox: Sandbox, pg_server: PgServer
) -> None:
    total = 600
    export = tmp_path / "history.jsonl"
    write_export(export, total)
    assert expected_events(export) == total
    url = dsn_for(pg_server.empty_database())  # no schema yet: backfill creates it
    r = run_cli("backfill", "--database-url", url, str(export), timeout=180)
    assert r.returncode == 0, r.stderr
    assert f"{total} rows read" in r.stdout
    assert "start `serve` to deliver them" in r.stdout  # nobody serves this database yet
    assert not (tmp_path / "data").exists()

    serve = Serve(tmp_path, tmp_path / "data", sandbox, "--database-url", url)
    try:
        serve.wait_drained(timeout=120)
        wait_until(lambda: sandbox.stats()["events_stored"] == total, timeout=60)
        assert_delivered_once_in_order(sandbox, list(range(total)))
        ids = sent_event_ids(sandbox)
        assert len(ids) == len(set(ids)) == total
        assert serve.status()["queue"]["dead_letters"] == 0
    finally:
        serve.close()
    assert not (tmp_path / "data").exists()  # PostgreSQL: no SQLite file on the side


@pytest.mark.parametrize(
    "command",
    [["status"], ["status", "--json"], ["dead-letters", "list"], ["forget", "someone"]],
    ids=["status", "status-json", "dead-letters", "forget"],
)
def test_a_command_in_an_empty_folder_names_the_store_and_creates_nothing(
    tmp_path: Path, command: list[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    extra = ["--port", str(free_port())] if command[0] == "status" else []  # no serve there
    r = run_cli(*command, *extra, cwd=empty)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stdout == ""
    message = r.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert str(empty / "data" / "connector.db") in message
    for way in ("--data-dir", "--database-url", "POSTHOG_CUSTOMERIO_DATABASE_URL"):
        assert way in message, (way, message)
    assert "Traceback" not in r.stderr and "unable to open" not in r.stderr
    assert list(empty.iterdir()) == []


def test_a_missing_postgresql_database_is_named_without_its_password(
    tmp_path: Path, pg_server: PgServer
) -> None:
    parts = urlsplit(dsn_for(f"{pg_server.prefix}_never_created"))
    host = parts.netloc.rpartition("@")[2]
    url = urlunsplit(parts._replace(netloc=f"{parts.username}:hunter2-secret@{host}"))
    r = run_cli("dead-letters", "list", "--database-url", url, cwd=tmp_path)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"{parts.username}:***@" in r.stderr and f"{pg_server.prefix}_never_created" in r.stderr
    assert "hunter2-secret" not in r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_migrate_then_status_on_a_new_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "fresh"
    r = run_cli("migrate", "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    assert "applied migration(s) 1," in r.stdout
    assert run_cli("migrate", "--data-dir", str(data)).stdout.strip() == "the schema is up to date"
    status = run_cli("status", "--data-dir", str(data), "--port", str(free_port()))
    assert status.returncode == 0, status.stderr
    assert "server:          not running" in status.stdout
