"""Config reload (SIGHUP) on a connector: what changes live, what waits for a restart."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from posthog_customerio.errors import ConfigError
from posthog_customerio.mapping.rules import AnonymousUsers
from posthog_customerio.runtime import Connector, Target
from posthog_customerio.settings import Settings, load_settings

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
