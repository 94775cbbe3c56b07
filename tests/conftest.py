"""Shared test helpers: paths to the shared PostHog samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pg import pg_server, pg_url

__all__ = ["pg_server", "pg_url"]  # fixtures: PostgreSQL per test (tests/pg.py)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
POSTHOG_SAMPLES = SHARED / "posthog"


@pytest.fixture(scope="session")
def posthog_samples() -> Path:
    if not POSTHOG_SAMPLES.is_dir():
        pytest.fail(f"shared PostHog samples not found at {POSTHOG_SAMPLES}")
    return POSTHOG_SAMPLES
