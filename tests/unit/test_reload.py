"""Config reload (SIGHUP) on a connector: what changes live, what waits for a restart."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from posthog_customerio import logs
from posthog_customerio.errors import ConfigError
from posthog_customerio.mapping.rules import AnonymousUsers
from posthog_customerio.runtime import Connector, Target
from posthog_customerio.settings import (
    OPTIONS,
    SECRET_FIELDS,
    DeliverySettings,
    Settings,
    load_settings,
    option_value,
    secret_values,
)
from posthog_customerio.web.app import create_app

OLD_KEY = "old-key-aaaa-1111"
NEW_KEY = "new-key-bbbb-2222"


def connector(tmp_path: Path, **kw: object) -> Connector:
    settings = load_settings(
        cli={"data_dir": tmp_path, "site_id": "site", "api_key": OLD_KEY, **kw}, env={}
    )
    target = Target("http://127.0.0.1:9", "site", OLD_KEY, sandbox=False)
    return Connector(settings, target)


def test_reload_applies_live_options_and_never_logs_secrets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    c = connector(tmp_path)
    new = load_settings(
        cli={
            "data_dir": tmp_path,
            "site_id": "site",
            "api_key": NEW_KEY,
            "anonymous_users": "identified_only",
            "rate_limit_rps": 20,
            "port": 9999,
        },
        env={},
    )
    with caplog.at_level(logging.INFO):
        changes = c.reload(new)
    assert "api_key: changed" in changes
    assert any(m.startswith("anonymous_users:") for m in changes)
    assert any(m.startswith("rate_limit_rps: 100.0 -> 20.0") for m in changes)
    assert "port: changed in the config, takes effect after a restart" in changes
    assert c.settings.port == 8787  # restart-only: kept
    assert c.settings.delivery.rate_limit_rps == 20
    assert c.settings.anonymous_users is AnonymousUsers.IDENTIFIED_ONLY
    assert c.target.api_key == NEW_KEY
    assert c.mapper is not None
    logged = [str(getattr(r, "ctx", "")) for r in caplog.records]
    for text in [*changes, caplog.text, *logged]:
        assert OLD_KEY not in text and NEW_KEY not in text


def test_reload_with_nothing_changed(tmp_path: Path) -> None:
    c = connector(tmp_path)
    assert c.reload(c.settings) == ["nothing changed"]


def test_invalid_new_config_keeps_the_old_one_and_logs_every_problem(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    c = connector(tmp_path)
    before = c.settings

    def broken() -> Settings:
        raise ConfigError(["rate_limit_rps: must be > 0", "region: must be us or eu"])

    c._reload_settings = broken
    with caplog.at_level(logging.INFO):
        assert c.reload_from_sources() == []
    assert c.settings is before
    logged = [getattr(r, "ctx", {}).get("problem") for r in caplog.records]
    assert "rate_limit_rps: must be > 0" in logged
    assert "region: must be us or eu" in logged


def test_credentials_cannot_switch_the_embedded_sandbox_live(tmp_path: Path) -> None:
    settings = load_settings(cli={"data_dir": tmp_path}, env={})
    c = Connector(settings, Target("http://127.0.0.1:9/sandbox", "sandbox", "sandbox", True))
    new = load_settings(cli={"data_dir": tmp_path, "site_id": "s", "api_key": NEW_KEY}, env={})
    changes = c.reload(new)
    assert any("restart" in m for m in changes)
    assert c.target.sandbox and c.settings.api_key is None


# --- one test per class of option: what a reload says is what is then in effect ----------


def reloaded(tmp_path: Path, old: dict[str, object], new: dict[str, object]) -> Settings:
    base = {"data_dir": tmp_path, "site_id": "site", "api_key": OLD_KEY}
    return load_settings(cli={**base, **old, **new}, env={})


def assert_messages_match_effect(c: Connector, old: Settings, messages: list[str]) -> None:
    """Every ``a -> b`` message names the value now in effect; every restart message names an
    option that kept its old value; every ``changed`` names a secret."""
    for message in messages:
        name, _, what = message.partition(": ")
        if what.endswith("takes effect after a restart"):
            assert option_value(c.settings, name) == option_value(old, name), message
        elif what == "changed":
            assert name in SECRET_FIELDS, message
            assert option_value(c.settings, name) != option_value(old, name), message
        elif " -> " in what:
            assert repr(option_value(c.settings, name)) == what.split(" -> ", 1)[1], message
        else:
            assert message in {
                "nothing changed",
                "credentials: switching to or from the sandbox needs a restart",
            }, message


def run_started(tmp_path: Path, check: Callable[[Connector], None], **kw: object) -> None:
    """``check`` on a started connector (queue, client, limiter and worker all running)."""

    async def go() -> None:
        c = connector(tmp_path, **kw)
        await c.start()
        try:
            check(c)
        finally:
            await c.stop()

    asyncio.run(go())


@pytest.mark.parametrize(
    ("option", "new_value"),
    [
        pytest.param("port", 9999, id="port"),
        pytest.param("host", "127.0.0.2", id="host"),
        pytest.param("log_format", "json", id="log-format"),
        pytest.param("max_in_flight", 3, id="max-in-flight"),
        pytest.param("shutdown_grace_secs", 5, id="shutdown-grace"),
        pytest.param("lease_secs", 60, id="lease"),
    ],
)
def test_restart_only_options_keep_their_value_and_say_so(
    tmp_path: Path, option: str, new_value: object
) -> None:
    c = connector(tmp_path)
    old = c.settings
    messages = c.reload(reloaded(tmp_path, {}, {option: new_value}))
    assert messages == [f"{option}: changed in the config, takes effect after a restart"]
    assert option_value(c.settings, option) == option_value(old, option)
    assert_messages_match_effect(c, old, messages)


FOLLOW = {
    "posthog_url": "http://127.0.0.1:9",
    "posthog_project_id": 1,
    "posthog_personal_api_key": "phx-old-9999",
}


@pytest.mark.parametrize(
    "new",
    [
        pytest.param({"follow_posthog": True}, id="follow-posthog-on"),
        pytest.param({"follow_poll_secs": 5}, id="poll"),
        pytest.param({"follow_lag_secs": 10}, id="lag"),
        pytest.param({"posthog_url": "http://127.0.0.1:10"}, id="url"),
        pytest.param({"posthog_project_id": 2}, id="project"),
        pytest.param({"posthog_personal_api_key": "phx-new-7777"}, id="personal-key"),
    ],
)
def test_follow_options_take_effect_after_a_restart(
    tmp_path: Path, new: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    """The follow loop takes its settings and its PostHog client when it starts."""
    c = connector(tmp_path, **FOLLOW)
    old = c.settings
    with caplog.at_level(logging.INFO):
        messages = c.reload(reloaded(tmp_path, FOLLOW, new))
    (option,) = new
    assert messages == [f"{option}: changed in the config, takes effect after a restart"]
    assert option_value(c.settings, option) == option_value(old, option)
    assert "phx-" not in caplog.text + "".join(messages)


def test_status_history_interval_takes_effect_after_a_restart(tmp_path: Path) -> None:
    """The status page's history ring is sampled at the interval it was made with."""
    c = connector(tmp_path)
    app = create_app(c)  # the app makes its history ring now, as serve does
    messages = c.reload(reloaded(tmp_path, {}, {"status_history_interval_secs": 2}))
    assert messages == [
        "status_history_interval_secs: changed in the config, takes effect after a restart"
    ]
    assert c.settings.status_history_interval_secs == 10.0

    async def history() -> object:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return (await client.get("/api/history")).json()["interval_secs"]

    assert asyncio.run(history()) == 10.0


@pytest.mark.parametrize("option", ["webhook_secret", "admin_token"])
def test_secrets_apply_live_are_named_and_redacted(
    tmp_path: Path, option: str, caplog: pytest.LogCaptureFixture
) -> None:
    c = connector(tmp_path, **{option: "old-secret-1234"})
    old = c.settings
    redact = logs.RedactingFilter([])
    handler = logging.NullHandler()
    handler.addFilter(redact)
    logging.getLogger().addHandler(handler)
    try:
        with caplog.at_level(logging.INFO):
            messages = c.reload(reloaded(tmp_path, {}, {option: "new-secret-5678"}))
    finally:
        logging.getLogger().removeHandler(handler)
    assert messages == [f"{option}: changed"]
    value = option_value(c.settings, option)
    assert isinstance(value, SecretStr) and value.get_secret_value() == "new-secret-5678"
    assert "secret-" not in caplog.text
    record = logging.LogRecord("t", logging.INFO, "", 0, "key new-secret-5678", None, None)
    redact.filter(record)
    assert "new-secret-5678" not in record.getMessage()  # the new value is redacted from now on
    assert_messages_match_effect(c, old, messages)


def test_every_secret_is_declared_and_typed_secret() -> None:
    """One declaration: the secret options are exactly the ``SecretStr`` ones."""
    typed = {
        name
        for name in OPTIONS
        if "SecretStr"
        in str((Settings.model_fields.get(name) or DeliverySettings.model_fields[name]).annotation)
    }
    assert typed == SECRET_FIELDS
    assert {
        "api_key",
        "webhook_secret",
        "admin_token",
        "posthog_personal_api_key",
        "reporting_signing_keys",
        "posthog_project_api_key",
    } == SECRET_FIELDS
    settings = load_settings(
        cli={"site_id": "s", "api_key": "k-1", "posthog_personal_api_key": "phx-1"}, env={}
    )
    assert sorted(secret_values(settings)) == ["k-1", "phx-1"]


def test_credentials_apply_live_with_a_new_client(tmp_path: Path) -> None:
    def check(c: Connector) -> None:
        old, client = c.settings, c._client
        messages = c.reload(
            reloaded(tmp_path, {}, {"api_key": NEW_KEY, "region": "eu", "site_id": "site2"})
        )
        assert messages == [
            "site_id: 'site' -> 'site2'",
            "api_key: changed",
            "region: 'us' -> 'eu'",
        ]
        assert c.target.api_key == NEW_KEY and c.target.site_id == "site2"
        assert c.target.url == "https://track-eu.customer.io"
        assert c._client is not client and c._client is not None
        assert c._client.base_url == "https://track-eu.customer.io"
        assert c._worker is not None and c._worker._client is c._client
        assert_messages_match_effect(c, old, messages)

    run_started(tmp_path, check)


def test_mapping_rules_apply_live_with_a_new_mapper(tmp_path: Path) -> None:
    c = connector(tmp_path)
    old, mapper = c.settings, c.mapper
    messages = c.reload(
        reloaded(
            tmp_path,
            {},
            {
                "event_allowlist": "signed_up",
                "identify_by_email": True,
                "object_types": "company=1",
            },
        )
    )
    assert messages == [
        "event_allowlist: () -> ('signed_up',)",
        "identify_by_email: False -> True",
        "object_types: {} -> {'company': '1'}",
    ]
    assert c.mapper is not mapper
    assert c.mapper.rules == c.settings.mapping_rules()
    assert c.mapper.rules.event_allowlist == frozenset({"signed_up"})
    assert_messages_match_effect(c, old, messages)


def test_delivery_tuning_and_rate_apply_live(tmp_path: Path) -> None:
    def check(c: Connector) -> None:
        old, client = c.settings, c._client
        messages = c.reload(
            reloaded(
                tmp_path,
                {},
                {"rate_limit_rps": 20, "batch_max_ops": 50, "request_timeout_secs": 3},
            )
        )
        assert messages == [
            "batch_max_ops: 1000 -> 50",
            "rate_limit_rps: 100.0 -> 20.0",
            "request_timeout_secs: 30.0 -> 3.0",
        ]
        assert c._limiter is not None and c._limiter.max_rate == 20
        assert c._worker is not None and c._worker._settings.batch_max_ops == 50
        assert c._client is not client and c._client is not None
        assert c._client._http.timeout.read == 3
        assert_messages_match_effect(c, old, messages)

    run_started(tmp_path, check)


def test_sandbox_switch_reports_nothing_it_did_not_apply(tmp_path: Path) -> None:
    settings = load_settings(cli={"data_dir": tmp_path}, env={})
    c = Connector(settings, Target("http://127.0.0.1:9/sandbox", "sandbox", "sandbox", True))
    new = load_settings(
        cli={"data_dir": tmp_path, "site_id": "s", "api_key": NEW_KEY, "batch_max_ops": 9}, env={}
    )
    messages = c.reload(new)
    assert messages == [
        "batch_max_ops: 1000 -> 9",
        "credentials: switching to or from the sandbox needs a restart",
    ]
    assert c.settings.site_id is None and c.settings.delivery.batch_max_ops == 9
    assert_messages_match_effect(c, settings, messages)


def test_reload_refuses_a_public_bind_without_webhook_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    c = connector(tmp_path, host="0.0.0.0", webhook_secret="whs-old-1234")
    before = c.settings
    with caplog.at_level(logging.INFO):
        assert c.reload(reloaded(tmp_path, {"host": "0.0.0.0"}, {"batch_max_ops": 9})) == []
    assert c.settings is before
    problems = [getattr(r, "ctx", {}).get("problem") for r in caplog.records]
    assert problems == ["webhook_secret: required on a non-loopback address"]
