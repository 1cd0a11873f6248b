"""STAT offers in a real browser: the offer appears with a countdown on one reader's
page; accepted, the case is theirs; declined, it moves to the next reader; nobody left,
the coordinator is alerted."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.async_api import Page, expect

from dynamo.states import ExamStatus, Priority
from dynamo.store import ExamStore
from tests.conftest import Stack
from tests.support.exams import exam_in
from tests.support.pages import WAIT_MS, Pages, log_in, screenshot

pytestmark = pytest.mark.slow

OFFER_MS = 10_000 * (WAIT_MS / 5_000)


def row(page: Page, accession: str) -> Any:
    return page.locator(f'tr[data-exam-id="{accession}"]')


async def test_a_stat_offer_counts_down_and_is_accepted(
    stack: Stack, store: ExamStore, page: Page
) -> None:
    await log_in(page, stack.http_url, "nw-okafor")
    stat = await exam_in(store, ExamStatus.COMPLETED, priority=Priority.STAT)
    offer = page.locator("#offer")
    await expect(offer).to_be_visible(timeout=OFFER_MS)
    await expect(page.locator("#offer-what")).to_contain_text(stat.accession)
    clock = page.locator("#offer-clock")
    await expect(clock).to_have_text(re.compile(r"^\d+s$"))
    first = int((await clock.text_content() or "0s")[:-1])
    assert 50 <= first <= 60  # the tenant's default: 60 seconds
    await expect(clock).not_to_have_text(f"{first}s", timeout=3_000)
    await screenshot(page, "stat-offer.png")

    await page.get_by_role("button", name="Accept").click()
    await expect(row(page, stat.accession)).to_have_attribute(
        "data-claimed-by", "nw-okafor", timeout=WAIT_MS
    )
    await expect(offer).to_be_hidden()
    await expect(page.locator("#status-text")).to_have_text(f"You accepted STAT {stat.accession}.")


async def test_a_declined_offer_moves_on_then_alerts_the_coordinator(
    stack: Stack, store: ExamStore, pages: Pages
) -> None:
    okafor, rivera, penrose = await pages.new(), await pages.new(), await pages.new()
    await log_in(okafor, stack.http_url, "nw-okafor")
    await log_in(rivera, stack.http_url, "nw-rivera")
    await log_in(penrose, stack.http_url, "nw-penrose")
    stat = await exam_in(store, ExamStatus.COMPLETED, priority=Priority.STAT)

    # Both may read it and neither holds anything: the tie goes to Okafor (by sub).
    await expect(okafor.locator("#offer")).to_be_visible(timeout=OFFER_MS)
    await expect(rivera.locator("#offer")).to_be_hidden()
    await okafor.get_by_role("button", name="Decline").click()
    await expect(okafor.locator("#offer")).to_be_hidden(timeout=WAIT_MS)
    await expect(rivera.locator("#offer")).to_be_visible(timeout=OFFER_MS)
    await expect(rivera.locator("#offer-what")).to_contain_text(stat.accession)
    await rivera.get_by_role("button", name="Decline").click()
    await expect(rivera.locator("#offer")).to_be_hidden(timeout=WAIT_MS)
    # Nobody left who may read it: the coordinator is told at once.
    await expect(penrose.locator("#notice")).to_contain_text(
        f"STAT with no reader online: {stat.accession}", timeout=OFFER_MS
    )
    await expect(okafor.locator("#offer")).to_be_hidden()
    assert (await store.get_exam(stat.patient_id, stat.accession)).claimed_by is None
