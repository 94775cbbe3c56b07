"""Shared test helpers: the PostHog samples (tests/samples.py) and PostgreSQL per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pg import pg_server, pg_url
from tests.samples import POSTHOG_SAMPLES

__all__ = ["pg_server", "pg_url"]  # fixtures: PostgreSQL per test (tests/pg.py)


@pytest.fixture(scope="session")
def posthog_samples() -> Path:
    if not any(POSTHOG_SAMPLES.glob("webhook-*.json")):
        pytest.fail(f"PostHog samples not found at {POSTHOG_SAMPLES}")
    return POSTHOG_SAMPLES
