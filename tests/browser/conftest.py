"""A real headless Chromium (Debian's package) driven by Playwright for Python.

Never ``playwright install``: the browser is the system's ``/usr/bin/chromium``. Without it
(or without the ``playwright`` package) these tests skip locally with the reason, and fail
under ``CI=true``, where ``.ci/run`` installs chromium first.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.harness import Sandbox, Serve

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
# Screenshots go to a scratch folder unless asked for (PHCIO_SCREENSHOTS=docs/images), so a
# test run never dirties the work tree; docs/operations.md shows the committed ones.
IMAGES = Path(
    os.environ.get("PHCIO_SCREENSHOTS") or Path(tempfile.gettempdir()) / "phcio-screenshots"
).resolve()
IMAGES.mkdir(parents=True, exist_ok=True)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; under CI=true the browser tests must run (.ci/run installs it)")
    pytest.skip(reason)


@pytest.fixture(scope="module")  # not session: a live sync Playwright keeps an event loop
def browser() -> Iterator[Browser]:  # running on this thread, and later asyncio.run() fails
    if not CHROMIUM.exists():
        _unavailable(f"chromium not found at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is missing (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path)
    yield sb
    sb.close()


@pytest.fixture
def serve(tmp_path: Path, sandbox: Sandbox) -> Iterator[Serve]:
    # A one-second history so the charts move within a test.
    sv = Serve(
        tmp_path, tmp_path / "data", sandbox, POSTHOG_CUSTOMERIO_STATUS_HISTORY_INTERVAL_SECS="1"
    )
    yield sv
    sv.close()


def page_errors(page: Any) -> list[str]:
    """Collect uncaught script errors and console errors of ``page``."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on(
        "console",
        lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None,
    )
    return errors
