"""The worklist page in a real browser (Debian's chromium driven by Playwright)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from dynamo.states import ExamStatus, Modality, Priority
from dynamo.store import ExamStore
from tests.conftest import UNIT, Stack
from tests.factories import exam_bundle

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
WAIT_MS = 5_000 * UNIT


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[Any] = []
    page.on("pageerror", lambda exc: errors.append(exc))
    try:
        yield page
    finally:
        await context.close()
    assert errors == [], f"the page threw: {errors}"


def row(page: Page, accession: str) -> Any:
    return page.locator(f'tr[data-exam-id="{accession}"]')


async def log_in(page: Page, base: str, user: str = "nw-okafor", path: str = "/") -> None:
    """Open `path`, pick a demo user on the login screen, land back on `path`."""
    await page.goto(base + path)
    await page.locator(f'#users button[data-user="{user}"]').click()
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)


async def test_rows_appear_and_change_status_without_a_reload(
    stack: Stack, store: ExamStore, page: Page
) -> None:
    await log_in(page, stack.http_url)
    await expect(page.locator("#who")).to_have_text("Dr. Ben Okafor")

    exam, order, profile = exam_bundle("northwind", priority=Priority.STAT)
    await store.create_exam(exam, order, profile)
    line = row(page, exam.accession)
    await expect(line).to_have_attribute("data-status", "SCHEDULED", timeout=WAIT_MS)
    await expect(line).to_contain_text("STAT")
    await expect(line).to_contain_text("CT head without contrast")

    await store.transition(exam.patient_id, exam.accession, ExamStatus.ARRIVED)
    await expect(line).to_have_attribute("data-status", "ARRIVED", timeout=WAIT_MS)
    await expect(line).to_have_attribute("data-version", "2")
    # The patient is masked until hovered.
    assert await line.locator(".patient .masked").count() == 1


async def test_stat_exams_sort_above_routine(stack: Stack, store: ExamStore, page: Page) -> None:
    routine, order, profile = exam_bundle("northwind", priority=Priority.ROUTINE)
    await store.create_exam(routine, order, profile)
    await log_in(page, stack.http_url)
    await expect(row(page, routine.accession)).to_have_count(1, timeout=WAIT_MS)
    stat, order, profile = exam_bundle("northwind", priority=Priority.STAT)
    await store.create_exam(stat, order, profile)
    await expect(row(page, stat.accession)).to_have_count(1, timeout=WAIT_MS)
    first = page.locator("#worklist tbody tr").first
    await expect(first).to_have_attribute("data-exam-id", stat.accession)


async def test_a_deep_link_lands_on_its_filtered_view(
    stack: Stack, store: ExamStore, page: Page
) -> None:
    ct, order, profile = exam_bundle("northwind", modality=Modality.CT)
    await store.create_exam(ct, order, profile)
    mr, order, profile = exam_bundle("northwind", modality=Modality.MR)
    await store.create_exam(mr, order, profile)

    response = await page.goto(stack.http_url + "/worklist?modality=CT")
    assert response is not None and response.status == 200
    await log_in(page, stack.http_url, path="/worklist?modality=CT")
    await expect(page.locator('#f-modality input[value="CT"]')).to_be_checked()
    await expect(row(page, ct.accession)).to_have_count(1, timeout=WAIT_MS)
    await expect(row(page, mr.accession)).to_have_count(0)

    # Widening the filter asks the server for the new view.
    await page.locator('#f-modality input[value="MR"]').check()
    await expect(row(page, mr.accession)).to_have_count(1, timeout=WAIT_MS)
    assert "modality=CT%2CMR" in page.url or "modality=CT,MR" in page.url
