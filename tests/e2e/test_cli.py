"""The command line as an operator uses it: exit codes, messages, and no secrets."""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from tests.e2e.harness import (
    API_KEY,
    SITE_ID,
    Sandbox,
    Serve,
    free_port,
    make_event,
    run_cli,
    wait_until,
)
from tests.samples import POSTHOG_SAMPLES

pytestmark = pytest.mark.e2e


def test_invalid_config_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('region = "mars"\nbatch_max_ops = -1\nsurprise = 1\n')
    r = run_cli(
        "serve",
        "--config",
        str(cfg),
        env={"POSTHOG_CUSTOMERIO_ANONYMOUS_USERS": "everyone", "CUSTOMERIO_SITE_ID": "only-id"},
    )
    assert r.returncode == 2, r.stderr
    for option in ("region", "batch_max_ops", "surprise", "anonymous_users", "site_id and api_key"):
        assert option in r.stderr, (option, r.stderr)
    assert "Traceback" not in r.stderr


def test_public_bind_without_secret_is_refused(tmp_path: Path) -> None:
    r = run_cli("serve", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(tmp_path))
    assert r.returncode == 2
    assert "webhook_secret" in r.stderr and "--insecure-no-auth" in r.stderr


def test_plugin_config_is_imported_unchanged(tmp_path: Path, sandbox: Sandbox) -> None:
    app_json = tmp_path / "app.json"
    app_json.write_text(
        json.dumps(
            {
                "customerioSiteId": SITE_ID,
                "customerioToken": API_KEY,
                "host": "track-eu.customer.io",
                "identifyByEmail": "Yes",
                "sendEventsFromAnonymousUsers": "Only send events from users with emails",
                "eventsToSend": "$pageview, order_completed",
            }
        )
    )
    r = run_cli(
        "explain",
        "--plugin-config",
        str(app_json),
        str(POSTHOG_SAMPLES / "webhook-autocapture.json"),
        str(POSTHOG_SAMPLES / "webhook-custom-event.json"),
    )
    assert r.returncode == 0, r.stderr
    assert "not_in_allowlist" in r.stdout  # $autocapture is not in eventsToSend
    assert '"email": "jane@example.com"' in r.stdout  # identify by email
    # the region came from `host`: check talks to the EU URL unless overridden
    r = run_cli(
        "check", "--plugin-config", str(app_json), env={"CUSTOMERIO_TRACK_URL": sandbox.url}
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert API_KEY not in r.stdout + r.stderr


def test_check_reports_accepted_and_rejected_credentials(sandbox: Sandbox) -> None:
    ok = run_cli(
        "check",
        env={
            "CUSTOMERIO_SITE_ID": SITE_ID,
            "CUSTOMERIO_API_KEY": API_KEY,
            "CUSTOMERIO_TRACK_URL": sandbox.url,
        },
    )
    assert ok.returncode == 0, ok.stderr
    assert "region: us" in ok.stdout
    bad = run_cli(
        "check",
        env={
            "CUSTOMERIO_SITE_ID": SITE_ID,
            "CUSTOMERIO_API_KEY": "wrong-key-123",
            "CUSTOMERIO_TRACK_URL": sandbox.url,
        },
    )
    assert bad.returncode == 1
    assert "rejected" in bad.stderr
    assert "wrong-key-123" not in bad.stdout + bad.stderr


def _check(track_url: str) -> tuple[int, str]:
    r = run_cli(
        "check",
        env={
            "CUSTOMERIO_SITE_ID": SITE_ID,
            "CUSTOMERIO_API_KEY": API_KEY,
            "CUSTOMERIO_TRACK_URL": track_url,
        },
    )
    assert "Traceback" not in r.stderr and API_KEY not in r.stdout + r.stderr
    return r.returncode, " ".join((r.stdout + r.stderr).split())


def test_check_reads_each_answer_with_the_outcome_classifier(sandbox: Sandbox) -> None:
    """200 accepted (exit 0), 401 rejected, a 5xx or a refused connection "could not check"
    (exit 1): the same reading of Customer.io's answers as delivery's."""
    code, text = _check(sandbox.url)
    assert code == 0 and f"credentials accepted by {sandbox.url}; account region: us" in text

    sandbox.faults(reject_credentials=True)
    code, text = _check(sandbox.url)
    assert code == 1 and f"Customer.io rejected the credentials (401) at {sandbox.url}" in text

    sandbox.faults(reject_credentials=False, fail_rate=1.0)
    code, text = _check(sandbox.url)
    assert code == 1 and f"could not check the credentials at {sandbox.url}: HTTP 503" in text

    nobody = f"http://127.0.0.1:{free_port()}"
    code, text = _check(nobody)
    assert code == 1 and f"could not check the credentials at {nobody}: cannot connect" in text


def test_explain_prints_a_decision_for_every_sample(posthog_samples: Path) -> None:
    files = sorted(str(p) for p in posthog_samples.glob("webhook-*.json"))
    assert files
    r = run_cli("explain", "--json", *files)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    assert len(results) == len(files)
    for item in results:
        assert item["decision"] in {"send", "drop"}
        assert item["operations"] or item["reason"]


def test_explain_reads_export_json_lines(posthog_samples: Path) -> None:
    lines = (posthog_samples / "export-sample.jsonl").read_bytes().splitlines()[:20]
    r = run_cli("explain", "--json", "-", stdin=b"\n".join(lines))
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)) == 20


def test_explain_names_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"event": {"event": 42, "distinct_id": "u"}}')
    r = run_cli("explain", str(bad))
    assert r.returncode == 2
    assert "event" in r.stderr and "Traceback" not in r.stderr


def test_explain_names_the_invalid_event_of_a_multi_line_array(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    events = [{"event": {"event": f"e{i}", "distinct_id": "u"}} for i in range(3)]
    events.append({"event": {"distinct_id": "u"}})
    bad.write_text(json.dumps(events, indent=2))
    r = run_cli("explain", str(bad))
    assert r.returncode == 2
    assert f"{bad}: [3].event.event: is missing" in r.stderr, r.stderr
    assert "JSON" not in r.stderr


def test_status_json_while_serving_and_offline(tmp_path: Path, serve: Serve) -> None:
    args = ["status", "--json", "--port", str(serve.port), "--data-dir", str(serve.data_dir)]
    live = run_cli(*args)
    assert live.returncode == 0, live.stderr
    snap = json.loads(live.stdout)
    assert snap["server"] == "running" and snap["queue"]["depth"] == 0
    serve.close()
    offline = run_cli(*args)
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout)["server"] == "not running"


def test_status_text_shows_the_delivery_totals_of_the_running_serve(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    sandbox.faults(reject_event_names=["poison_event"])
    serve = Serve(tmp_path, tmp_path / "data", sandbox)
    try:
        events = [make_event(i, users=3) for i in range(5)]
        events.append(make_event(5, users=3, name="poison_event"))
        assert serve.post({"batch": events}).status_code == 200
        serve.wait_drained()
        totals = wait_until(
            lambda: (t := serve.status()["delivery"]["totals"])["dead_lettered"] == 1 and t
        )
        assert totals["delivered"] > 0
        r = run_cli("status", "--port", str(serve.port), "--data-dir", str(serve.data_dir))
    finally:
        serve.close()
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "server:          running" in lines
    assert "dead letters:    1" in lines
    assert f"delivered:       {totals['delivered']} operations" in lines, r.stdout
    assert "dead-lettered:   1 (since start)" in lines, r.stdout
    assert any(re.fullmatch(r"last error: +\S.*", ln) for ln in lines), r.stdout


def test_dead_letters_with_a_corrupt_body_are_listed_and_shown(tmp_path: Path) -> None:
    """A dead letter whose stored body is neither JSON nor UTF-8 is shown as text (undecodable
    bytes replaced), as the admin API shows it, instead of failing the command."""
    data = tmp_path / "data"
    assert run_cli("migrate", "--data-dir", str(data)).returncode == 0
    with closing(sqlite3.connect(data / "connector.db")) as conn, conn:
        conn.execute(
            "INSERT INTO dead_letters (op_id, partition_key, endpoint, action, body, event_uuid,"
            " enqueued_at, attempts, reason, detail, request, response, status, created_at)"
            " VALUES (1, 'user_1', 'batch', 'event', ?, 'uuid-1', 1.0, 1, 'rejected',"
            " 'HTTP 400: bad', 'POST /api/v2/batch', '{}', 400, 2.0)",
            (b'\xff{"type": "person", broken',),
        )
    text = '\ufffd{"type": "person", broken'
    shown = run_cli("dead-letters", "show", "1", "--data-dir", str(data))
    assert shown.returncode == 0, shown.stderr
    letter = json.loads(shown.stdout)
    assert letter["operation"] == text and letter["reason"] == "rejected"
    assert letter["endpoint"] == "batch" and letter["status"] == 400
    listed = run_cli("dead-letters", "list", "--json", "--data-dir", str(data))
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [letter]
    table = run_cli("dead-letters", "list", "--data-dir", str(data))
    assert table.returncode == 0, table.stderr
    assert "1 dead letter(s)" in table.stdout and "HTTP 400: bad" in table.stdout
