"""``posthog-customerio sandbox``: the flags it refuses, and what its log redacts.

The command runs in-process through typer's runner; uvicorn is replaced by a server that logs
one line and returns, so the sandbox's own startup line and the redaction filter are real.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from posthog_customerio.cli.main import app
from posthog_customerio.customerio.sandbox import app as sandbox_app

USER_KEY = "user-chosen-key-4711"


class _Server:
    """Stands in for ``uvicorn.Server``: logs a line carrying the key it was configured
    with, then returns instead of serving."""

    def __init__(self, config: Any) -> None:
        self.key = config

    def run(self) -> None:
        logging.getLogger("posthog_customerio.customerio.sandbox.app").warning(
            "request with key %s", self.key
        )


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The configs the sandbox was started with; the root logger is restored afterwards."""
    started: list[Any] = []

    def config(app: Any, **kwargs: Any) -> str:
        cfg = app.state.sandbox.config
        started.append(cfg)
        return str(cfg.api_key)

    monkeypatch.setattr(sandbox_app, "uvicorn", SimpleNamespace(Config=config, Server=_Server))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield started
    root.handlers[:] = handlers
    root.setLevel(level)


def test_the_default_credentials_are_shown_not_redacted(served: list[Any]) -> None:
    result = CliRunner().invoke(app, ["sandbox", "--port", "8799"])
    assert result.exit_code == 0, result.output
    assert "Customer.io sandbox on http://127.0.0.1:8799 (site_id=sandbox)" in result.stderr
    assert "request with key sandbox" in result.stderr
    assert "[redacted]" not in result.stderr
    assert len(served) == 1


def test_a_key_the_user_chose_is_redacted_everywhere(served: list[Any]) -> None:
    result = CliRunner().invoke(app, ["sandbox", "--api-key", USER_KEY, "--site-id", "site-9"])
    assert result.exit_code == 0, result.output
    assert served[0].api_key == USER_KEY
    assert "(site_id=site-9)" in result.stderr
    assert "request with key [redacted]" in result.stderr
    assert USER_KEY not in result.output + result.stderr


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        pytest.param(["--fail-rate", "2"], "--fail-rate", id="fail-rate-above-1"),
        pytest.param(["--fail-rate", "-0.1"], "--fail-rate", id="fail-rate-negative"),
        pytest.param(["--fail-rate", "nan"], "--fail-rate", id="fail-rate-nan"),
        pytest.param(["--latency-ms", "-1"], "--latency-ms", id="latency-negative"),
        pytest.param(["--rate-limit-rps", "0"], "--rate-limit-rps", id="rate-limit-zero"),
        pytest.param(["--rate-limit-rps", "-5"], "--rate-limit-rps", id="rate-limit-negative"),
        pytest.param(["--retry-after-secs", "-1"], "--retry-after-secs", id="retry-after"),
        pytest.param(["--fail-status", "42"], "--fail-status", id="fail-status"),
        pytest.param(["--port", "70000"], "--port", id="port"),
    ],
)
def test_out_of_range_flags_exit_2_naming_the_flag(
    served: list[Any], args: list[str], flag: str
) -> None:
    result = CliRunner().invoke(app, ["sandbox", *args])
    assert result.exit_code == 2, result.output
    assert f"{flag} " in result.stderr and "must be" in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert served == []  # nothing was started


def test_every_bad_flag_is_named_at_once(served: list[Any]) -> None:
    result = CliRunner().invoke(app, ["sandbox", "--fail-rate", "2", "--latency-ms", "-5"])
    assert result.exit_code == 2
    assert "--fail-rate 2.0" in result.stderr and "--latency-ms -5" in result.stderr
    assert served == []


def test_edge_values_are_accepted(served: list[Any]) -> None:
    for args in (
        ["--fail-rate", "0"],
        ["--fail-rate", "1", "--fail-status", "599"],
        ["--latency-ms", "0", "--retry-after-secs", "0", "--rate-limit-rps", "0.5"],
    ):
        result = CliRunner().invoke(app, ["sandbox", *args])
        assert result.exit_code == 0, (args, result.output)
    assert [c.fail_rate for c in served] == [0.0, 1.0, 0.0]
    assert served[2].rate_limit_rps == 0.5
