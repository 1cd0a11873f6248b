"""The coordinator's workload board in a real browser: live loads, the queue, breaches,
and a reassign the holder is told of."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import Page, expect

from dynamo.models import now_ms
from dynamo.states import ExamStatus, Priority
from dynamo.store import ExamStore
from tests.conftest import Stack
from tests.support.exams import PATH_TO, exam_bundle, exam_in
from tests.support.pages import WAIT_MS, Pages, log_in, screenshot

pytestmark = pytest.mark.slow


def row(page: Page, accession: str) -> Any:
    return page.locator(f'tr[data-exam-id="{accession}"]')


def load(page: Page, sub: str, column: str) -> Any:
    return page.locator(f'#wl-readers tr[data-user="{sub}"] .wl-{column}')


async def test_the_board_follows_live_and_a_reassign_moves_the_case(
    stack: Stack, store: ExamStore, pages: Pages
) -> None:
    case = await exam_in(store, ExamStatus.COMPLETED, priority=Priority.URGENT)
    late, order, profile = exam_bundle()
    late = await store.create_exam(
        late.model_copy(update={"tat_due_at": now_ms() - 5 * 60_000}), order, profile
    )
    for step in PATH_TO[ExamStatus.COMPLETED]:
        late = await store.transition(late.patient_id, late.accession, step)
    penrose, okafor, rivera = await pages.new(), await pages.new(), await pages.new()
    await log_in(penrose, stack.http_url, "nw-penrose")
    await log_in(okafor, stack.http_url, "nw-okafor")
    await log_in(rivera, stack.http_url, "nw-rivera")
    await expect(okafor.locator("#workload")).to_be_hidden()

    board = penrose.locator("#workload")
    await expect(board).to_be_visible(timeout=WAIT_MS)
    await expect(load(penrose, "nw-okafor", "open")).to_have_text("0", timeout=WAIT_MS)
    await expect(penrose.locator(f'#wl-queue li[data-exam-id="{case.accession}"]')).to_be_visible()
    await expect(
        penrose.locator(f'#wl-breaches li[data-exam-id="{late.accession}"]')
    ).to_contain_text("overdue")

    await okafor.get_by_role("button", name="Next case").click()
    await expect(row(okafor, case.accession)).to_have_attribute(
        "data-claimed-by", "nw-okafor", timeout=WAIT_MS
    )
    # The board follows without a request.
    await expect(load(penrose, "nw-okafor", "open")).to_have_text("1", timeout=WAIT_MS)
    await expect(penrose.locator(f'#wl-queue li[data-exam-id="{case.accession}"]')).to_have_count(0)
    await screenshot(penrose, "workload-board.png")

    await penrose.locator("#wl-exam").select_option(case.accession)
    await penrose.locator("#wl-to").select_option("nw-rivera")
    await penrose.get_by_role("button", name="Assign").click()
    await expect(okafor.locator("#notice")).to_contain_text(
        f"Sam Penrose reassigned {case.accession}", timeout=WAIT_MS
    )
    await expect(row(okafor, case.accession)).to_have_attribute(
        "data-claimed-by", "nw-rivera", timeout=WAIT_MS
    )
    await expect(rivera.locator("#notice")).to_contain_text(
        f"Sam Penrose assigned {case.accession} to you.", timeout=WAIT_MS
    )
    await expect(load(penrose, "nw-rivera", "open")).to_have_text("1", timeout=WAIT_MS)
    await expect(load(penrose, "nw-okafor", "open")).to_have_text("0")
    # Rivera holds it on this very page: she signs it.
    await row(rivera, case.accession).get_by_role("button", name="Sign final").click()
    await expect(row(rivera, case.accession)).to_have_count(0, timeout=WAIT_MS)
