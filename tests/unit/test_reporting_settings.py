"""The reverse path's settings: names, parsing, secrets and the cross-check."""

from __future__ import annotations

from pathlib import Path

import pytest

from posthog_customerio.errors import ConfigError
from posthog_customerio.settings import OPTIONS, Reload, load_settings, secret_values

CAPTURE = {
    "POSTHOG_CUSTOMERIO_POSTHOG_CAPTURE_URL": "https://us.i.posthog.com",
    "POSTHOG_CUSTOMERIO_POSTHOG_PROJECT_API_KEY": "phc_project",
}


def test_environment_names_and_defaults() -> None:
    s = load_settings(env={"CUSTOMERIO_REPORTING_SIGNING_KEYS": " old , new ,", **CAPTURE})
    assert s.reporting_keys == ("old", "new")
    assert s.posthog_capture_url == "https://us.i.posthog.com"
    assert s.posthog_project_api_key is not None
    assert s.reporting_metrics == ("*", "!*:drafted", "!*:attempted")
    assert s.reporting_event_names == {}
    assert s.reporting_include_recipient is False
    assert {"old", "new", "phc_project"} <= set(secret_values(s))
    assert "old" not in repr(s) and "phc_project" not in repr(s)


def test_declarations() -> None:
    assert OPTIONS["reporting_signing_keys"].secret
    assert OPTIONS["reporting_signing_keys"].reload is Reload.LIVE  # key rotation by SIGHUP
    assert OPTIONS["posthog_project_api_key"].secret
    assert not OPTIONS["posthog_capture_url"].secret
    for name in ("reporting_event_names", "reporting_metrics", "reporting_include_recipient"):
        assert OPTIONS[name].reload is Reload.LIVE


def test_event_names_and_metrics_from_env_and_toml(tmp_path: Path) -> None:
    s = load_settings(
        env={
            "POSTHOG_CUSTOMERIO_REPORTING_EVENT_NAMES": "email:opened=Opened Email,push:opened=Pu",
            "POSTHOG_CUSTOMERIO_REPORTING_METRICS": "email,!email:sent",
            "POSTHOG_CUSTOMERIO_REPORTING_INCLUDE_RECIPIENT": "true",
        }
    )
    assert s.reporting_event_names == {"email:opened": "Opened Email", "push:opened": "Pu"}
    assert s.reporting_metrics == ("email", "!email:sent")
    assert s.reporting_include_recipient is True
    toml = tmp_path / "c.toml"
    toml.write_text('reporting_event_names = {"sms:delivered" = "Text Delivered"}\n')
    assert load_settings(env={}, config_file=toml).reporting_event_names == {
        "sms:delivered": "Text Delivered"
    }


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"CUSTOMERIO_REPORTING_SIGNING_KEYS": "k"}, "reporting_signing_keys: needs"),
        ({"POSTHOG_CUSTOMERIO_POSTHOG_CAPTURE_URL": "us.i.posthog.com"}, "posthog_capture_url"),
        ({"POSTHOG_CUSTOMERIO_REPORTING_EVENT_NAMES": "opened=Opened"}, "reporting_event_names"),
    ],
)
def test_problems(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems
