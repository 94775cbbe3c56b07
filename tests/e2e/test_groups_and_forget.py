"""Groups → Customer.io objects and relationships, and GDPR `forget`, through real processes:
PostHog samples → serve → queue → delivery → sandbox; the SQLite file read directly after."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from posthog_customerio.customerio.spec import SpecValidator
from tests.e2e.harness import Sandbox, Serve, run_cli, wait_until

pytestmark = pytest.mark.e2e

OBJECT_TYPES = "company=1"
ONE_PERSON = [
    "webhook-identify.json",
    "webhook-custom-event.json",  # $groups: {"company": "acme-inc"}
    "webhook-groupidentify.json",
]


def load(samples: Path, name: str) -> dict[str, Any]:
    return dict(json.loads((samples / name).read_text()))


def objects(sandbox: Sandbox) -> list[dict[str, Any]]:
    return list(sandbox.http.get("/_sandbox/objects").json())


def post_all(serve: Serve, samples: Path, names: list[str]) -> None:
    for name in names:
        r = serve.post(load(samples, name))
        assert r.status_code == 200, (name, r.text)


def traces(db: Path, *names: str) -> dict[str, list[Any]]:
    """Every row of the person-bearing tables that mentions one of ``names``."""
    found: dict[str, list[Any]] = {}
    with closing(sqlite3.connect(db)) as conn:
        for table, columns in (
            ("identity", "distinct_id || ' ' || CAST(state AS TEXT)"),
            ("operations", "partition_key || ' ' || CAST(body AS TEXT)"),
            ("dead_letters", "partition_key || ' ' || CAST(body AS TEXT) || request || response"),
        ):
            rows = conn.execute(f"SELECT {columns} FROM {table}").fetchall()
            found[table] = [r[0] for r in rows if any(n in r[0] for n in names)]
    return found


def forgotten_rows(db: Path) -> list[tuple[str, float]]:
    with closing(sqlite3.connect(db)) as conn:
        return list(conn.execute("SELECT distinct_id, forgotten_at FROM forgotten ORDER BY id"))


@pytest.fixture
def groups_serve(tmp_path: Path, sandbox: Sandbox) -> Any:
    sv = Serve(tmp_path, tmp_path / "data", sandbox, POSTHOG_CUSTOMERIO_OBJECT_TYPES=OBJECT_TYPES)
    yield sv
    sv.close()


def test_group_becomes_an_object_and_the_person_is_related_once(
    groups_serve: Serve, sandbox: Sandbox, posthog_samples: Path
) -> None:
    post_all(groups_serve, posthog_samples, ONE_PERSON)
    again = load(posthog_samples, "webhook-custom-event.json")
    again["event"]["uuid"] = "01924815-6d55-7160-8999-50d836f67600"  # the same, later
    assert groups_serve.post(again).status_code == 200
    groups_serve.wait_drained()

    [acme] = wait_until(lambda: objects(sandbox))
    assert (acme["object_type_id"], acme["object_id"]) == ("1", "acme-inc")
    assert acme["attributes"] == {"name": "Acme Inc", "plan": "enterprise", "seats": 250}
    assert [r["id"] for r in acme["relationships"]] == ["user_42"]
    person = sandbox.person("user_42")
    assert person is not None
    assert person["relationships"] == [
        {"object_type_id": "1", "object_id": "acme-inc", "relationship_attributes": {}}
    ]

    items = [
        item
        for req in sandbox.requests()
        if req["path"] == "/api/v2/batch"
        for item in req["body"]["batch"]
    ]
    assert [i["action"] for i in items].count("add_relationships") == 1  # not with every event
    validator = SpecValidator()
    for item in items:
        assert validator.validate_batch_item(item) == [], item


def test_forget_from_the_cli_beside_a_running_serve(
    groups_serve: Serve, sandbox: Sandbox, posthog_samples: Path, tmp_path: Path
) -> None:
    post_all(groups_serve, posthog_samples, ONE_PERSON)
    groups_serve.wait_drained()
    assert sandbox.person("user_42") is not None
    # a dead letter of user_42, and pending work while Customer.io is down
    sandbox.faults(reject_event_names=["subscription_renewed"])
    post_all(groups_serve, posthog_samples, ["webhook-server-side.json"])
    wait_until(lambda: groups_serve.status()["queue"]["dead_letters"] == 1)
    sandbox.faults(reject_event_names=[], fail_rate=1.0)
    post_all(groups_serve, posthog_samples, ["webhook-screen.json"])
    db = tmp_path / "data" / "connector.db"
    assert all(traces(db, "user_42").values()), traces(db, "user_42")

    r = run_cli("forget", "user_42", "--data-dir", str(tmp_path / "data"))
    assert r.returncode == 0, r.stderr
    assert "forgot 1 distinct_id(s): user_42" in r.stdout
    assert "1 identity state(s)" in r.stdout and "1 dead letter(s)" in r.stdout

    sandbox.faults(fail_rate=0.0)
    groups_serve.wait_drained()
    wait_until(lambda: sandbox.person("user_42") is None)
    assert sandbox.stats()["deleted_people"] == 1
    assert [r["id"] for o in objects(sandbox) for r in o["relationships"]] == []
    assert traces(db, "user_42", "jane@example.com") == {
        "identity": [],
        "operations": [],
        "dead_letters": [],
    }
    [(distinct_id, when)] = forgotten_rows(db)
    assert distinct_id == "user_42" and when > 0


def test_forget_over_http_deletes_the_email_profile_and_suppresses(
    tmp_path: Path, sandbox: Sandbox, posthog_samples: Path
) -> None:
    serve = Serve(
        tmp_path,
        tmp_path / "data",
        sandbox,
        POSTHOG_CUSTOMERIO_IDENTIFY_BY_EMAIL="true",
        POSTHOG_CUSTOMERIO_OBJECT_TYPES=OBJECT_TYPES,
    )
    try:
        post_all(serve, posthog_samples, ONE_PERSON)
        serve.wait_drained()
        assert sandbox.person("jane@example.com") is not None

        refused = serve.http.post("/admin/forget", json={"distinct_ids": ["user_42"]})
        assert refused.status_code == 403  # admin_denied(): no X-Requested-With
        bad = serve.admin("/admin/forget", {"distinct_ids": [], "suppress": False})
        assert bad.status_code == 400 and bad.json()["field"] == "distinct_ids"

        r = serve.admin("/admin/forget", {"distinct_ids": ["user_42"], "suppress": True})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["distinct_ids"] == ["user_42"] and body["suppress"] is True
        assert (body["identities"], body["enqueued"]) == (1, 2)  # by email and by id

        serve.wait_drained()
        wait_until(lambda: sandbox.person("jane@example.com") is None)
        assert sandbox.stats()["suppressed_identifiers"] >= 1
        db = tmp_path / "data" / "connector.db"
        assert traces(db, "user_42", "jane@example.com") == {
            "identity": [],
            "operations": [],
            "dead_letters": [],
        }
        assert [d for d, _ in forgotten_rows(serve.data_dir / "connector.db")] == ["user_42"]
        # suppressed: the person's next event does not bring them back
        post_all(serve, posthog_samples, ["webhook-screen.json"])
        serve.wait_drained()
        assert sandbox.person("jane@example.com") is None
    finally:
        serve.close()


def test_explain_shows_object_operations_from_the_toml_config(
    tmp_path: Path, posthog_samples: Path
) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[object_types]\ncompany = "1"\n')
    r = run_cli(
        "explain",
        "--config",
        str(cfg),
        str(posthog_samples / "webhook-custom-event.json"),
        str(posthog_samples / "webhook-groupidentify.json"),
    )
    assert r.returncode == 0, r.stderr
    assert "add_relationships -> POST /api/v2/batch (item)" in r.stdout
    assert "object.identify -> POST /api/v2/batch (item)" in r.stdout
    assert '"object_id": "acme-inc"' in r.stdout
    plain = run_cli("explain", str(posthog_samples / "webhook-groupidentify.json"))
    assert "DROP  reason: groups_not_mapped" in plain.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[object_types]\ncompany = "acme"\n')
    refused = run_cli("explain", "--config", str(bad), "-", stdin=b"{}")
    assert refused.returncode == 2 and "object_types" in refused.stderr
