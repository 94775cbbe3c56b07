"""The status page in a real Chromium, against a real ``serve`` and sandbox on loopback.

Events flow while the page is open; the counters and the charts must move, a dead letter must
show with its request and Customer.io's answer, and replay must deliver it. Screenshots at
desktop and phone width go to $PHCIO_SCREENSHOTS (docs/images/ when refreshing the docs:
`PHCIO_SCREENSHOTS=docs/images python3 dev.py test tests/browser`).
"""

from __future__ import annotations

import random
import re
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import IMAGES, page_errors
from tests.e2e.harness import API_KEY, Sandbox, Serve, wait_until
from tests.e2e.traffic import event, identified, mixed_batch, pace

pytestmark = pytest.mark.e2e

POISON = "poison_event"
HOSTILE = '<img src=x onerror="window.__pwned=1">'  # an event name is user data


def kpi(page: Page, name: str) -> str:
    return page.locator(f"#kpi-{name} .value").inner_text()


def number(text: str) -> int:
    return int(re.sub(r"[^0-9]", "", text) or 0)


def post_traffic(serve: Serve, rng: random.Random, seconds: float, per_tick: int = 6) -> None:
    ticks = int(seconds / 0.25)
    for _ in range(ticks):
        assert serve.post(mixed_batch(rng, rng.randint(1, per_tick))).status_code == 200
        pace(0.25)


def chart_paths(page: Page, chart: str) -> int:
    return int(page.locator(f"#{chart} svg path").count())


def test_page_shows_flow_dead_letter_and_replay(
    browser: Browser, serve: Serve, sandbox: Sandbox
) -> None:
    rng = random.Random(7)
    sandbox.faults(reject_event_names=[POISON, HOSTILE])
    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    page = ctx.new_page()
    errors = page_errors(page)
    page.goto(serve.url + "/")
    expect(page.locator("#health")).not_to_have_text("connecting…")
    expect(page.locator("#kpi-creds .value")).to_have_text("accepted")
    before = number(kpi(page, "received"))

    # Events flow: the counters move while the page is open, and the charts draw lines.
    post_traffic(serve, rng, 4)
    expect(page.locator("#kpi-received .value")).not_to_have_text(str(before), timeout=10_000)
    wait_until(lambda: number(kpi(page, "delivered")) > 0, timeout=15)
    wait_until(lambda: chart_paths(page, "ch-flow") >= 2, timeout=15)
    expect(page.locator("#req-body")).to_contain_text("batch")

    # A rejected event becomes a dead letter with its reason, event and person.
    assert serve.post([identified(POISON, 901), identified(HOSTILE, 902)]).status_code == 200
    rows = page.locator("#dl-body tr[data-id]")
    expect(rows).to_have_count(2, timeout=15_000)
    poison_row = rows.filter(has_text=POISON)
    expect(poison_row).to_contain_text("rejected")
    expect(poison_row).to_contain_text("user_901")
    # The hostile name is shown as text, never parsed as HTML.
    expect(rows.filter(has_text="user_902")).to_contain_text(HOSTILE)
    assert page.locator("#dl-body img").count() == 0
    assert page.evaluate("window.__pwned") is None

    post_traffic(serve, rng, 8)
    serve.wait_drained()
    wait_until(lambda: number(kpi(page, "received")) >= 20, timeout=15)
    page.wait_for_timeout(3500)  # one more poll of history and status for the screenshot
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMAGES / "status-page.png"), full_page=True)

    # The details view: the request (no credentials) and Customer.io's answer.
    poison_row.click()
    dialog = page.locator("#dl-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#dlg-facts")).to_contain_text(POISON)
    request_text = page.locator("#dlg-request").inner_text()
    assert "/api/v2/batch" in request_text
    assert API_KEY not in request_text
    assert page.locator("#dlg-response").inner_text().strip() not in ("", "—")

    # Fix the cause, replay from the dialog: the dead letter is delivered.
    sandbox.faults(reject_event_names=[HOSTILE])
    page.locator("#dlg-replay").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#dl-msg")).to_contain_text("Replayed")
    expect(rows).to_have_count(1, timeout=15_000)
    expect(rows.first).to_contain_text("user_902")

    def delivered_to_sandbox() -> bool:
        person = sandbox.person("user_901")
        return person is not None and any(e["name"] == POISON for e in person.get("events", []))

    wait_until(delivered_to_sandbox, timeout=30)

    # The other one is purged with the table's selection.
    page.on("dialog", lambda d: d.accept())  # the confirm() before a purge
    rows.first.locator("input[type=checkbox]").check()
    page.locator("#dl-purge").click()
    expect(page.locator("#dl-body")).to_contain_text("No dead letters", timeout=15_000)
    assert errors == []
    ctx.close()


def test_phone_width_is_readable(browser: Browser, serve: Serve, sandbox: Sandbox) -> None:
    rng = random.Random(11)
    sandbox.faults(reject_event_names=[POISON])
    post_traffic(serve, rng, 3)
    assert serve.post([identified(POISON, 77)]).status_code == 200
    post_traffic(serve, rng, 3)
    ctx = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
    )
    page = ctx.new_page()
    errors = page_errors(page)
    page.goto(serve.url + "/")
    expect(page.locator("#dl-body tr[data-id]")).to_have_count(1, timeout=15_000)
    wait_until(lambda: chart_paths(page, "ch-flow") >= 2, timeout=15)
    page.wait_for_timeout(1500)
    # Nothing wider than the screen: tables scroll inside their own box.
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a phone"
    assert page.locator("#kpi-received").bounding_box()["width"] < 200  # type: ignore[index]
    page.screenshot(path=str(IMAGES / "status-page-phone.png"))  # the first screen
    assert errors == []
    ctx.close()


def test_sandbox_mode_links_to_the_sandbox(browser: Browser, tmp_path: Any) -> None:
    serve = Serve(tmp_path, tmp_path / "data", None, "--sandbox")
    try:
        assert serve.post(event("signed_up", "someone", **{"$set": {"plan": "free"}})).is_success
        page = browser.new_page()
        page.goto(serve.url + "/")
        expect(page.locator("#sandbox-badge")).to_be_visible()
        link = page.locator("#sandbox-link a")
        expect(link).to_be_visible()
        link.click()
        expect(page.locator("body")).to_contain_text("someone", timeout=15_000)
        page.close()
    finally:
        serve.close()
