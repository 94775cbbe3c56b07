"""The command line as an operator uses it: exit codes, messages, and no secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.harness import API_KEY, SITE_ID, Sandbox, Serve, run_cli

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
    sample = Path(__file__).resolve().parents[3] / "shared" / "posthog"
    r = run_cli(
        "explain",
        "--plugin-config",
        str(app_json),
        str(sample / "webhook-autocapture.json"),
        str(sample / "webhook-custom-event.json"),
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


def test_explain_prints_a_decision_for_every_shared_sample(posthog_samples: Path) -> None:
    files = sorted(str(p) for p in posthog_samples.glob("webhook-*.json"))
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
