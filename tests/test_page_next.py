"""The "Next case" button in a real browser: the server hands the reader the best case
they may read, claimed for them; the page shows it as theirs and says why."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import Page, expect

from dynamo.states import ExamStatus, Priority
from dynamo.store import ExamStore
from tests.conftest import Stack
from tests.support.exams import exam_in
from tests.support.pages import WAIT_MS, Pages, log_in, screenshot

pytestmark = pytest.mark.slow


def row(page: Page, accession: str) -> Any:
    return page.locator(f'tr[data-exam-id="{accession}"]')


async def test_next_case_claims_the_best_case_the_reader_may_read(
    stack: Stack, store: ExamStore, pages: Pages
) -> None:
    # Rivera reads NW-GEN and NW-IMG: the STAT at NW-ORT is more urgent, but not hers.
    theirs = await exam_in(store, ExamStatus.COMPLETED, site="NW-ORT", priority=Priority.STAT)
    later = await exam_in(store, ExamStatus.COMPLETED, site="NW-GEN", priority=Priority.ROUTINE)
    urgent = await exam_in(store, ExamStatus.COMPLETED, site="NW-GEN", priority=Priority.URGENT)
    rivera, penrose = await pages.new(), await pages.new()
    await log_in(rivera, stack.http_url, "nw-rivera")
    await log_in(penrose, stack.http_url, "nw-penrose")
    await expect(row(rivera, later.accession)).to_have_count(1, timeout=WAIT_MS)
    # Coordinators watch; they are handed nothing.
    await expect(penrose.locator("#next-case")).to_be_hidden()

    button = rivera.get_by_role("button", name="Next case")
    await button.click()
    line = row(rivera, urgent.accession)
    await expect(line).to_have_attribute("data-claimed-by", "nw-rivera", timeout=WAIT_MS)
    await expect(line.get_by_role("button", name="Sign final")).to_be_visible()
    await expect(rivera.locator("#status-text")).to_have_text(
        f"Next case: {urgent.accession} (the most urgent case you may read)."
    )
    await expect(button).to_be_enabled()
    await screenshot(rivera, "next-case.png")
    # Everyone else sees the lock, as for a hand-picked claim.
    await expect(row(penrose, urgent.accession)).to_have_attribute(
        "data-claimed-by", "nw-rivera", timeout=WAIT_MS
    )

    await button.click()
    await expect(row(rivera, later.accession)).to_have_attribute(
        "data-claimed-by", "nw-rivera", timeout=WAIT_MS
    )
    await button.click()
    await expect(rivera.locator("#notice")).to_contain_text(
        "Nothing is waiting that you may read", timeout=WAIT_MS
    )
    assert (await store.get_exam(theirs.patient_id, theirs.accession)).claimed_by is None
