"""Configuration: layers, the app's plugin.json, and every problem reported at once."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from posthog_customerio.errors import ConfigError
from posthog_customerio.mapping.rules import AnonymousUsers
from posthog_customerio.settings import load_settings, parse_allowlist


def test_defaults_need_nothing() -> None:
    s = load_settings(env={})
    assert s.region == "us" and s.effective_track_url == "https://track.customer.io"
    assert s.anonymous_users is AnonymousUsers.SEND_ALL
    assert s.event_allowlist == () and s.identify_by_email is False
    assert s.effective_database_url == "sqlite:///data/connector.db"
    assert s.delivery.batch_max_bytes == 450_000 and s.delivery.rate_limit_rps == 100
    assert not s.has_credentials


def test_exact_environment_names() -> None:
    s = load_settings(
        env={
            "CUSTOMERIO_SITE_ID": "site",
            "CUSTOMERIO_API_KEY": "k-8812-secret",
            "CUSTOMERIO_REGION": "eu",
            "POSTHOG_CUSTOMERIO_ANONYMOUS_USERS": "with_email_only",
            "POSTHOG_CUSTOMERIO_EVENT_ALLOWLIST": " $pageview , order_completed,,",
            "POSTHOG_CUSTOMERIO_IDENTIFY_BY_EMAIL": "true",
            "POSTHOG_CUSTOMERIO_DATA_DIR": "/var/lib/phcio",
            "POSTHOG_CUSTOMERIO_WEBHOOK_SECRET": "whs-4471",
            "POSTHOG_CUSTOMERIO_ADMIN_TOKEN": "adm",
            "POSTHOG_CUSTOMERIO_BATCH_MAX_OPS": "250",
        }
    )
    assert s.site_id == "site" and s.api_key is not None
    assert s.effective_track_url == "https://track-eu.customer.io"
    assert s.anonymous_users is AnonymousUsers.WITH_EMAIL_ONLY
    assert s.event_allowlist == ("$pageview", "order_completed")
    assert s.identify_by_email
    assert s.effective_database_url == "sqlite:////var/lib/phcio/connector.db"
    assert s.delivery.batch_max_ops == 250
    assert "k-8812-secret" not in repr(s) and "whs-4471" not in repr(s)


def test_precedence_cli_over_env_over_file_over_plugin(tmp_path: Path) -> None:
    plugin = tmp_path / "app.json"
    plugin.write_text(json.dumps({"eventsToSend": "a", "identifyByEmail": "Yes"}))
    toml = tmp_path / "c.toml"
    toml.write_text('event_allowlist = "b"\nport = 9000\n[delivery]\nbatch_max_ops = 10\n')
    s = load_settings(
        cli={"port": 9100, "host": None},
        env={"POSTHOG_CUSTOMERIO_EVENT_ALLOWLIST": "c"},
        config_file=toml,
        plugin_config=plugin,
    )
    assert s.port == 9100
    assert s.event_allowlist == ("c",)
    assert s.identify_by_email is True
    assert s.delivery.batch_max_ops == 10


@pytest.mark.parametrize(
    ("choice", "mode"),
    [
        pytest.param("Send all events", AnonymousUsers.SEND_ALL, id="send-all"),
        pytest.param(
            "Only send events from users that have been identified",
            AnonymousUsers.IDENTIFIED_ONLY,
            id="identified-only",
        ),
        pytest.param(
            "Only send events from users with emails",
            AnonymousUsers.WITH_EMAIL_ONLY,
            id="with-email-only",
        ),
    ],
)
def test_plugin_config_keys(tmp_path: Path, choice: str, mode: AnonymousUsers) -> None:
    plugin = tmp_path / "app.json"
    plugin.write_text(
        json.dumps(
            {
                "config": {
                    "customerioSiteId": "s1",
                    "customerioToken": "t1",
                    "host": "track-eu.customer.io",
                    "identifyByEmail": "No",
                    "sendEventsFromAnonymousUsers": choice,
                    "eventsToSend": "signed_up,$pageview",
                }
            }
        )
    )
    s = load_settings(env={}, plugin_config=plugin)
    assert s.site_id == "s1" and s.api_key is not None and s.api_key.get_secret_value() == "t1"
    assert s.region == "eu" and s.anonymous_users is mode
    assert s.event_allowlist == ("signed_up", "$pageview") and s.identify_by_email is False


def test_every_problem_at_once(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('region = "mars"\nunknown_thing = 1\nport = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(
            env={"CUSTOMERIO_API_KEY": "only-key", "POSTHOG_CUSTOMERIO_RATE_LIMIT_RPS": "0"},
            config_file=toml,
        )
    text = "\n".join(info.value.problems)
    for option in ("region", "unknown_thing", "port", "rate_limit_rps", "site_id and api_key"):
        assert option in text
    assert "only-key" not in text


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("region = \n")
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, config_file=bad, plugin_config=tmp_path / "missing.json")
    text = "\n".join(info.value.problems)
    assert "not valid TOML" in text and "missing.json" in text


def test_world_readable_config_with_secret_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('webhook_secret = "abcdef"\n')
    os.chmod(toml, 0o644)
    with caplog.at_level(logging.WARNING):
        load_settings(env={}, config_file=toml)
    assert "readable by other users" in caplog.text and "abcdef" not in caplog.text
    caplog.clear()
    os.chmod(toml, 0o600)
    with caplog.at_level(logging.WARNING):
        load_settings(env={}, config_file=toml)
    assert "readable by other users" not in caplog.text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("", (), id="empty-means-all"),
        pytest.param(" a , b ", ("a", "b"), id="trimmed"),
        pytest.param("A,a", ("A", "a"), id="case-sensitive"),
        pytest.param("a,a,b", ("a", "b"), id="deduplicated"),
        pytest.param(["x ", " y"], ("x", "y"), id="toml-list"),
    ],
)
def test_allowlist_parsing(raw: str | list[str], expected: tuple[str, ...]) -> None:
    assert parse_allowlist(raw) == expected


@pytest.mark.parametrize(
    ("env", "toml", "expected"),
    [
        pytest.param("company=1, team = 2", None, {"company": "1", "team": "2"}, id="env-pairs"),
        pytest.param('{"company": "1"}', None, {"company": "1"}, id="env-json"),
        pytest.param(None, 'object_types = {"company" = "1"}', {"company": "1"}, id="toml-inline"),
        pytest.param(None, "[object_types]\ncompany = 3", {"company": "3"}, id="toml-table-int"),
        pytest.param("", None, {}, id="empty-env-is-unset"),
    ],
)
def test_object_types_parsing(
    tmp_path: Path, env: str | None, toml: str | None, expected: dict[str, str]
) -> None:
    config = None
    if toml is not None:
        config = tmp_path / "c.toml"
        config.write_text(toml + "\n")
    environ = {} if env is None else {"POSTHOG_CUSTOMERIO_OBJECT_TYPES": env}
    settings = load_settings(env=environ, config_file=config)
    assert settings.object_types == expected
    assert dict(settings.mapping_rules().object_types) == expected


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("company", id="no-equals"),
        pytest.param("company=acme", id="type-id-not-a-number"),
        pytest.param("company=0", id="type-id-zero"),
        pytest.param("=1", id="empty-group-type"),
        pytest.param('{"company": ', id="bad-json"),
        pytest.param("[1]", id="not-a-table"),
    ],
)
def test_object_types_problems_name_the_option(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"POSTHOG_CUSTOMERIO_OBJECT_TYPES": raw})
    assert any(p.startswith("object_types:") for p in info.value.problems), info.value.problems


def test_empty_text_options_are_unset_from_every_source(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('site_id = ""\napi_key = ""\nwebhook_secret = ""\nposthog_url = ""\n')
    os.chmod(toml, 0o600)
    s = load_settings(env={}, config_file=toml, cli={"database_url": ""})
    assert s.site_id is None and s.api_key is None and s.webhook_secret is None
    assert s.posthog_url is None and s.database_url is None
    assert not s.has_credentials
