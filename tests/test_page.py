"""The worklist page in a real browser (Debian's chromium driven by Playwright).

Each test runs the real relay and gateway (the `stack` fixture) and asserts what a
radiologist or coordinator would notice on screen. Every page is watched for uncaught
exceptions and console errors; a test fails on any it did not expect.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
import uvicorn
from playwright.async_api import Page, WebSocketRoute, expect

from dynamo.claims import Claims
from dynamo.states import ExamStatus, Modality, Priority
from dynamo.store import ExamStore
from tests.conftest import UNIT, Stack, _serve
from tests.support.exams import exam_bundle, exam_in
from tests.support.pages import (
    WAIT_MS,
    Pages,
    log_in,
    screenshot,
)

pytestmark = pytest.mark.slow

# "Everyone else sees the lock at once": a claim reaches other screens within a second.
LOCK_MS = 1_000 * UNIT


def row(page: Page, accession: str) -> Any:
    return page.locator(f'tr[data-exam-id="{accession}"]')


def action(page: Page, accession: str, label: str) -> Any:
    return row(page, accession).get_by_role("button", name=label)


class SlowLink:
    """Routes a page's WebSocket through the test. While `hold` is on, the server's
    frames wait here (a slow network): the page's own frames still go out, so the page
    acts on a screen that has not heard the news yet."""

    def __init__(self) -> None:
        self.holding = False
        self.held: list[str | bytes] = []
        self.page_side: WebSocketRoute | None = None

    async def install(self, page: Page) -> None:
        await page.route_web_socket(re.compile(r"/ws$"), self._route)

    def _route(self, ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        self.page_side = ws

        def to_page(message: str | bytes) -> None:
            if self.holding:
                self.held.append(message)
            else:
                ws.send(message)

        server.on_message(to_page)
        ws.on_message(server.send)

    def hold(self) -> None:
        self.holding = True

    def flush(self) -> None:
        self.holding = False
        assert self.page_side is not None
        for message in self.held:
            self.page_side.send(message)
        self.held.clear()


# ---- the list ------------------------------------------------------------------------


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
    await expect(line).to_have_attribute("data-claimed-by", "")
    # The patient is masked until hovered; nothing to claim before the exam is complete.
    assert await line.locator(".patient .masked").count() == 1
    await expect(line.get_by_role("button")).to_have_count(0)


async def test_stat_exams_sort_above_routine_and_headers_sort(
    stack: Stack, store: ExamStore, page: Page
) -> None:
    routine, order, profile = exam_bundle("northwind", priority=Priority.ROUTINE)
    await store.create_exam(routine, order, profile)
    await log_in(page, stack.http_url)
    await expect(row(page, routine.accession)).to_have_count(1, timeout=WAIT_MS)
    stat, order, profile = exam_bundle("northwind", priority=Priority.STAT)
    await store.create_exam(stat, order, profile)
    await expect(row(page, stat.accession)).to_have_count(1, timeout=WAIT_MS)
    first = page.locator("#worklist tbody tr").first
    await expect(first).to_have_attribute("data-exam-id", stat.accession)

    # The routine exam was booked first, so its deadline is nearer: "Due in" puts it on
    # top, a second click reverses, and the order is part of the address.
    due = page.locator('th[data-sort="due"]')
    await due.get_by_role("button").click()
    await expect(due).to_have_attribute("aria-sort", "ascending")
    await expect(first).to_have_attribute("data-exam-id", routine.accession)
    assert "sort=due" in page.url
    await due.get_by_role("button").click()
    await expect(due).to_have_attribute("aria-sort", "descending")
    await expect(first).to_have_attribute("data-exam-id", stat.accession)
    await page.locator('th[data-sort="urgency"]').get_by_role("button").click()
    await expect(first).to_have_attribute("data-exam-id", stat.accession)
    assert "sort=" not in page.url


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


async def test_an_old_bookmark_lands_on_a_valid_view(
    stack: Stack, store: ExamStore, page: Page
) -> None:
    ct, order, profile = exam_bundle("northwind", modality=Modality.CT)
    await store.create_exam(ct, order, profile)
    xr, order, profile = exam_bundle("northwind", modality=Modality.XR)
    await store.create_exam(xr, order, profile)
    # An address from before the filters had these names, with values that no longer
    # exist and a site this radiologist may not read.
    old = "/?tenant=northwind&modality=ct,PET&site=NW-ORT,NOWHERE&sort=bogus"
    await log_in(page, stack.http_url, user="nw-rivera", path=old)
    await expect(page.locator('#f-modality input[value="CT"]')).to_be_checked()
    await expect(row(page, ct.accession)).to_have_count(1, timeout=WAIT_MS)
    await expect(row(page, xr.accession)).to_have_count(0)
    assert page.url.endswith("/worklist?modality=CT"), page.url
    await expect(page.locator("#f-site input")).to_have_count(2)  # NW-GEN and NW-IMG only


# ---- claims --------------------------------------------------------------------------


async def test_two_radiologists_one_claim(stack: Stack, store: ExamStore, pages: Pages) -> None:
    """Okafor and Rivera both read NW-GEN neuro exams: one claim, one lock, one winner."""
    exam = await exam_in(store, ExamStatus.COMPLETED, priority=Priority.STAT)
    mine = await exam_in(store, ExamStatus.COMPLETED, modality=Modality.MR)
    await asyncio.gather(
        exam_in(store, ExamStatus.PRELIMINARY, priority=Priority.URGENT, subspecialty="body"),
        exam_in(store, ExamStatus.IN_PROGRESS, modality=Modality.US, subspecialty="body"),
        exam_in(
            store, ExamStatus.ARRIVED, site="NW-IMG", modality=Modality.XR, subspecialty="chest"
        ),
        exam_in(store, ExamStatus.SCHEDULED, site="NW-IMG", priority=Priority.URGENT),
    )
    okafor, rivera = await pages.new(), await pages.new()
    link = SlowLink()
    await link.install(rivera)
    await log_in(okafor, stack.http_url, "nw-okafor")
    await log_in(rivera, stack.http_url, "nw-rivera")
    acc = exam.accession

    # Each sees the other online.
    await expect(okafor.locator('#people li[data-user="nw-rivera"]')).to_contain_text(
        "Dr. Ana Rivera", timeout=WAIT_MS
    )
    await expect(rivera.locator('#people li[data-user="nw-okafor"]')).to_contain_text(
        "Dr. Ben Okafor", timeout=WAIT_MS
    )

    # Okafor claims: he gets the reading actions and sees the patient; Rivera sees the
    # lock and his name within a second, and what he is reading.
    await action(okafor, acc, "Claim").click()
    await expect(action(okafor, acc, "Release")).to_be_visible(timeout=WAIT_MS)
    await expect(action(okafor, acc, "Sign final")).to_be_visible()
    await expect(action(okafor, acc, "Sign prelim")).to_be_visible()
    await expect(row(okafor, acc).locator(".patient .masked")).to_have_count(0)
    line = row(rivera, acc)
    await expect(line).to_have_attribute("data-claimed-by", "nw-okafor", timeout=LOCK_MS)
    await expect(line.locator(".c-reader")).to_have_text("Dr. Ben Okafor")
    await expect(line.locator(".c-reader svg.lock")).to_have_count(1)
    await expect(line.get_by_role("button")).to_have_count(0)
    await expect(line.locator(".patient .masked")).to_have_count(1)
    await expect(rivera.locator('#people li[data-user="nw-okafor"]')).to_contain_text(acc)

    # Release puts it back on everyone's list.
    await action(okafor, acc, "Release").click()
    await expect(line).to_have_attribute("data-claimed-by", "", timeout=LOCK_MS)
    await expect(action(rivera, acc, "Claim")).to_be_visible()

    # Rivera's screen falls behind (her network is slow) while Okafor claims again; she
    # clicks Claim on what she still sees, and is told who got there first.
    link.hold()
    await action(okafor, acc, "Claim").click()
    await expect(action(okafor, acc, "Release")).to_be_visible(timeout=WAIT_MS)
    await action(rivera, acc, "Claim").click()
    await expect(action(rivera, acc, "Claim")).to_be_disabled()  # waiting for an answer
    link.flush()
    await expect(rivera.locator("#notice")).to_contain_text(
        f"Dr. Ben Okafor claimed {acc} first", timeout=WAIT_MS
    )
    await expect(line).to_have_attribute("data-claimed-by", "nw-okafor")
    await expect(line.get_by_role("button")).to_have_count(0)

    # He lets go; she claims and reads it; he sees her lock.
    await action(okafor, acc, "Release").click()
    await action(rivera, acc, "Claim").click()
    await expect(row(okafor, acc)).to_have_attribute(
        "data-claimed-by", "nw-rivera", timeout=WAIT_MS
    )
    await expect(row(okafor, acc).locator(".c-reader")).to_have_text("Dr. Ana Rivera")
    await action(okafor, mine.accession, "Claim").click()
    await expect(action(okafor, mine.accession, "Release")).to_be_visible(timeout=WAIT_MS)
    await screenshot(okafor, "worklist-radiologist.png")

    # A preliminary report keeps her claim; the final one takes the exam off the open list.
    await action(rivera, acc, "Sign prelim").click()
    await expect(line).to_have_attribute("data-status", "PRELIMINARY", timeout=WAIT_MS)
    await expect(row(okafor, acc)).to_have_attribute("data-status", "PRELIMINARY", timeout=WAIT_MS)
    await expect(action(rivera, acc, "Sign prelim")).to_have_count(0)
    await action(rivera, acc, "Sign final").click()
    await expect(line).to_have_count(0, timeout=WAIT_MS)
    await expect(row(okafor, acc)).to_have_count(0, timeout=WAIT_MS)
    await expect(row(okafor, mine.accession)).to_have_count(1)


async def test_an_admin_breaks_a_lock_and_the_holder_is_told(
    stack: Stack, store: ExamStore, pages: Pages
) -> None:
    exam = await exam_in(store, ExamStatus.COMPLETED)
    other = await exam_in(store, ExamStatus.COMPLETED, modality=Modality.MR)
    okafor, admin = await pages.new(), await pages.new()
    await log_in(okafor, stack.http_url, "nw-okafor")
    await log_in(admin, stack.http_url, "nw-admin")
    acc = exam.accession

    await action(okafor, acc, "Claim").click()
    await expect(action(okafor, acc, "Release")).to_be_visible(timeout=WAIT_MS)
    # "My reads" is a server-side view: only what he holds.
    await okafor.get_by_label("My reads").check()
    await expect(row(okafor, other.accession)).to_have_count(0, timeout=WAIT_MS)
    await expect(row(okafor, acc)).to_have_count(1)
    assert "mine=1" in okafor.url
    await expect(action(okafor, acc, "Break lock")).to_have_count(0)

    await expect(row(admin, acc)).to_have_attribute("data-claimed-by", "nw-okafor", timeout=LOCK_MS)
    await action(admin, acc, "Break lock").click()
    dialog = admin.locator("#break-dialog")
    await expect(dialog).to_be_visible()
    await dialog.get_by_label("Reason").fill("Reassigned to neuro on call")
    await dialog.get_by_role("button", name="Break lock").click()
    await expect(dialog).to_be_hidden()

    await expect(okafor.locator("#notice")).to_contain_text(
        f"Jo Halverson broke your claim on {acc}", timeout=WAIT_MS
    )
    await expect(okafor.locator("#notice")).to_contain_text("Reassigned to neuro on call")
    # Nothing of his is left in "my reads"; the admin sees it free again.
    await expect(row(okafor, acc)).to_have_count(0, timeout=WAIT_MS)
    await expect(okafor.locator("#empty")).to_be_visible()
    await expect(action(admin, acc, "Claim")).to_be_visible(timeout=WAIT_MS)


# ---- the connection ------------------------------------------------------------------


def _uvicorn_server(port: int) -> tuple[uvicorn.Server, asyncio.Task[Any]]:
    """The `stack` fixture's uvicorn server and the task serving it (the fixture keeps
    no handle on them for tests)."""
    for task in asyncio.all_tasks():
        frame = getattr(task.get_coro(), "cr_frame", None)
        server = frame.f_locals.get("self") if frame is not None else None
        if isinstance(server, uvicorn.Server) and server.config.port == port:
            return server, task
    raise LookupError(f"no uvicorn server on port {port}")


async def test_a_gateway_restart_is_caught_up_without_a_reload(
    stack: Stack, store: ExamStore, pages: Pages
) -> None:
    port = int(stack.http_url.rsplit(":", 1)[1])
    held = await exam_in(store, ExamStatus.COMPLETED)
    leaving = await exam_in(store, ExamStatus.ARRIVED)
    page = await pages.new()
    await log_in(page, stack.http_url)
    await action(page, held.accession, "Claim").click()
    await expect(action(page, held.accession, "Release")).to_be_visible(timeout=WAIT_MS)
    await expect(row(page, leaving.accession)).to_have_count(1)
    await page.evaluate("window.loadedOnce = 'still here'")

    # The gateway goes away (a deploy); while it is gone, the worklist changes.
    pages.expect_console_error(r"WebSocket connection to .* failed")
    server, serving = _uvicorn_server(port)
    server.should_exit = True
    await asyncio.wait_for(asyncio.shield(serving), 10 * UNIT)
    await expect(page.locator("#conn")).to_have_attribute(
        "data-state", "reconnecting", timeout=WAIT_MS
    )
    arrived, order, profile = exam_bundle("northwind", priority=Priority.STAT)
    await store.create_exam(arrived, order, profile)
    await store.transition(leaving.patient_id, leaving.accession, ExamStatus.CANCELLED)

    restarted, task = await _serve(stack.app, port)
    try:
        # It comes back on its own and resumes from where it was: the new exam is there,
        # the cancelled one gone, and the page was never reloaded.
        await expect(row(page, arrived.accession)).to_have_count(1, timeout=3 * WAIT_MS)
        await expect(row(page, leaving.accession)).to_have_count(0, timeout=WAIT_MS)
        await expect(page.locator("#status-text")).to_contain_text("Resumed")
        await expect(page.locator("#conn")).to_have_attribute(
            "data-state", re.compile("resynced|live")
        )
        assert await page.evaluate("window.loadedOnce") == "still here"
        # The exam it held is still its own (claimed again on the new connection, so the
        # lease is renewed), as everyone's presence panel says, and it can still let go.
        await expect(page.locator('#people li[data-user="nw-okafor"]')).to_contain_text(
            held.accession, timeout=WAIT_MS
        )
        await action(page, held.accession, "Release").click()
        await expect(action(page, held.accession, "Claim")).to_be_visible(timeout=WAIT_MS)
        await expect(page.locator("#notice .toast")).to_have_count(0)
    finally:
        restarted.should_exit = True
        await asyncio.wait_for(task, 10 * UNIT)


# ---- the coordinator -----------------------------------------------------------------


async def test_the_coordinator_sees_the_whole_list_read_only(
    stack: Stack, store: ExamStore, page: Page
) -> None:
    ready = await exam_in(store, ExamStatus.COMPLETED, priority=Priority.STAT)
    taken = await exam_in(store, ExamStatus.PRELIMINARY, site="NW-ORT", subspecialty="msk")
    await asyncio.gather(
        exam_in(store, ExamStatus.IN_PROGRESS, site="NW-IMG", modality=Modality.MR),
        exam_in(store, ExamStatus.SCHEDULED, modality=Modality.XR, priority=Priority.URGENT),
    )
    claims = Claims(store)
    await claims.claim(taken.patient_id, taken.accession, "nw-lindqvist", "Dr. Maja Lindqvist")

    await log_in(page, stack.http_url, "nw-penrose")
    await expect(page.locator("#who")).to_have_text("Sam Penrose")
    await expect(page.locator("#readonly-note")).to_be_visible()
    await expect(page.locator("#readonly-note")).to_contain_text("Peer review")
    await expect(page.locator("#worklist tbody tr")).to_have_count(4, timeout=WAIT_MS)
    await expect(row(page, taken.accession).locator(".c-reader")).to_have_text("Dr. Maja Lindqvist")
    # Read-only: no claim, release or break-lock anywhere, and no "my reads" to toggle.
    await expect(page.locator("#worklist tbody button")).to_have_count(0)
    await expect(row(page, ready.accession)).to_be_visible()
    await expect(page.get_by_label("My reads")).to_be_hidden()
    await screenshot(page, "worklist-coordinator.png")

    await page.get_by_role("button", name="Light theme").click()
    await expect(page.locator("html")).to_have_attribute("data-theme", "light")
    await screenshot(page, "worklist-coordinator-light.png")
