"""Peer review in the page, in a real browser (Debian's chromium driven by Playwright).

A coordinator and a reviewer work one review from pool to arbitration on two screens
that never reload; the reader then sees the outcome. Blinding is checked on what each
page holds, not only on what the server sends: the reviewer's page never contains the
reader's name, the reader's page never the reviewer's. Every page is watched for
uncaught exceptions and console errors (the `pages` fixture of tests/support/pages.py).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from playwright.async_api import Page, WebSocketRoute, expect

from dynamo.models import Exam
from dynamo.states import ExamStatus, Modality
from dynamo.store import ExamStore
from tests.conftest import Stack, token
from tests.support.exams import exam_in
from tests.support.pages import WAIT_MS, Pages, log_in, screenshot
from tests.support.wsclient import WsClient

pytestmark = pytest.mark.slow


COORD = ("nw-penrose", "Sam Penrose", ("coordinator",))
READER = ("nw-rivera", "Dr. Ana Rivera", ("radiologist",))
REVIEWER = ("nw-okafor", "Dr. Ben Okafor", ("radiologist",))


async def open_as(stack: Stack, who: tuple[str, str, tuple[str, ...]]) -> WsClient:
    sub, name, roles = who
    return await WsClient.open(stack.ws_url, token(sub, name=name, roles=roles))


async def read_final(reader: WsClient, store: ExamStore, **kw: Any) -> Exam:
    """An exam the reader claims and signs FINAL (so it may be peer reviewed)."""
    exam = await exam_in(store, ExamStatus.COMPLETED, **kw)
    claimed = await reader.request({"type": "claim", "exam_id": exam.accession})
    assert claimed["type"] == "claimed", claimed
    signed = await reader.request({"type": "sign", "exam_id": exam.accession, "status": "FINAL"})
    assert signed["type"] == "signed", signed
    return exam


async def ok(client: WsClient, frame: dict[str, Any]) -> dict[str, Any]:
    reply = await client.request(frame)
    assert reply["type"] == "review_ok", reply
    return reply


async def assert_never_shows(page: Page, *names: str) -> None:
    """Neither the page's text nor its markup (attributes, hidden parts) holds `names`."""
    text = await page.evaluate("document.documentElement.textContent")
    markup = await page.content()
    for name in names:
        assert name not in text, f"{name!r} is on the page"
        assert name not in markup, f"{name!r} is in the page's markup"


def section(page: Page, name: str) -> Any:
    return page.locator(f"#rv-{name}")


def review_row(page: Page, where: str, accession: str) -> Any:
    return section(page, where).locator(f'[data-exam-id="{accession}"]')


async def test_a_review_from_pool_to_arbitration_on_two_live_screens(
    stack: Stack, store: ExamStore, pages: Pages
) -> None:
    # Four exams Dr. Rivera read; three of them are already somewhere in peer review.
    reader = await open_as(stack, READER)
    exam = await read_final(reader, store)  # CT, NW-GEN: the one this test follows
    pooled = await read_final(
        reader, store, modality=Modality.MR, site="NW-IMG", subspecialty="body"
    )
    late = await read_final(reader, store, modality=Modality.US, subspecialty="body")
    scored = await read_final(
        reader, store, modality=Modality.XR, site="NW-IMG", subspecialty="chest"
    )
    await reader.close()  # offline: nobody's presence panel names her
    coord_ws, reviewer_ws = await open_as(stack, COORD), await open_as(stack, REVIEWER)
    for e in (pooled, late, scored):
        await ok(coord_ws, {"type": "review_add", "exam_id": e.accession})
    # Due in about a second: overdue by the time anyone looks.
    await ok(
        coord_ws,
        {
            "type": "review_assign",
            "exam_id": late.accession,
            "reviewer": "nw-admin",
            "due_in_hours": 0.0003,
        },
    )
    await ok(
        coord_ws, {"type": "review_assign", "exam_id": scored.accession, "reviewer": "nw-okafor"}
    )
    await ok(reviewer_ws, {"type": "review_claim", "exam_id": scored.accession})
    await ok(reviewer_ws, {"type": "review_score", "exam_id": scored.accession, "score": "1"})
    await coord_ws.close()
    await reviewer_ws.close()

    coordinator, reviewer = await pages.new(), await pages.new()
    await log_in(coordinator, stack.http_url, "nw-penrose")
    await log_in(reviewer, stack.http_url, "nw-okafor")
    acc = exam.accession

    # The coordinator keeps the worklist and has a Peer review tab with its own address.
    await expect(coordinator.locator("#readonly-note")).to_be_visible()
    await coordinator.get_by_role("tab", name="Peer review").click()
    await expect(coordinator.locator("#board-view")).to_be_visible()
    await expect(coordinator.locator("#worklist-view")).to_be_hidden()
    assert coordinator.url.endswith("/peer-review"), coordinator.url
    await expect(review_row(coordinator, "pool", pooled.accession)).to_contain_text(
        "Dr. Ana Rivera"
    )
    overdue = review_row(coordinator, "assigned", late.accession)
    await expect(overdue).to_contain_text("Jo Halverson")
    await expect(overdue.locator(".due")).to_have_attribute("data-overdue", "true", timeout=WAIT_MS)
    await expect(overdue.locator(".due")).to_contain_text("overdue")
    await expect(
        review_row(coordinator, "done", scored.accession).locator(".rv-final")
    ).to_have_text("1")
    await expect(coordinator.locator("#rv-rate")).to_have_text("0%")

    # The reviewer already has a finished review, so "My reviews" is there; nothing to do.
    await expect(reviewer.get_by_role("tab", name="My reviews")).to_be_visible()
    await expect(reviewer.locator("#mine-badge")).to_be_hidden()
    await assert_never_shows(reviewer, "Rivera", "nw-rivera")

    # The coordinator pools the exam by its accession number (after a typo)...
    accession = coordinator.get_by_label("Add exam to the pool")
    await accession.fill("TNO9999999")
    await coordinator.get_by_role("button", name="Add", exact=True).click()
    await expect(coordinator.locator("#rv-add-msg")).to_have_text(
        "No exam TNO9999999 in this group.", timeout=WAIT_MS
    )
    await expect(accession).to_have_attribute("aria-invalid", "true")
    await accession.fill(acc)
    await coordinator.get_by_role("button", name="Add", exact=True).click()
    line = review_row(coordinator, "pool", acc)
    await expect(line).to_contain_text("Dr. Ana Rivera", timeout=WAIT_MS)
    await expect(coordinator.locator("#rv-add-msg")).to_contain_text(f"{acc} is in the pool")
    await expect(section(coordinator, "pool").locator(".rv-count")).to_have_text("2")
    # ...where its own reader is no choice, and assigns it to Dr. Okafor.
    choice = line.get_by_label(f"Reviewer for {acc}", exact=True)
    await expect(choice.locator('option[value="nw-rivera"]')).to_have_count(0)
    await expect(line.get_by_role("button", name="Assign")).to_be_disabled()
    await choice.select_option("nw-okafor")
    await line.get_by_role("button", name="Assign").click()
    assigned = review_row(coordinator, "assigned", acc)
    await expect(assigned).to_contain_text("Dr. Ben Okafor", timeout=WAIT_MS)
    await expect(assigned).to_contain_text("Not started")
    await expect(assigned.locator(".due")).to_have_attribute("data-overdue", "false")
    await expect(assigned.locator(".due")).to_contain_text(re.compile(r"in 2d 23h|in 3d"))
    await expect(review_row(coordinator, "pool", acc)).to_have_count(0)

    # The reviewer's page learns of it without a reload: a badge, a message, the card.
    await expect(reviewer.locator("#mine-badge")).to_have_text("1", timeout=WAIT_MS)
    await expect(reviewer.locator("#notice")).to_contain_text("New peer review for you")
    await reviewer.get_by_role("tab", name="My reviews").click()
    assert reviewer.url.endswith("/my-reviews"), reviewer.url
    card = review_row(reviewer, "todo", acc)
    await expect(card).to_contain_text("CT head without contrast")
    await expect(review_row(reviewer, "sent", scored.accession)).to_contain_text("Done")
    await assert_never_shows(reviewer, "Rivera", "nw-rivera")

    await card.get_by_role("button", name="Claim").click()
    score = card.get_by_label("RADPEER score")
    await expect(score).to_be_focused(timeout=WAIT_MS)
    await expect(assigned).to_contain_text("Started", timeout=WAIT_MS)  # the coordinator sees it
    # 3b needs a comment: the page says so before asking the server.
    await score.select_option("3b")
    await card.get_by_role("button", name="Submit score").click()
    await expect(card.get_by_role("alert")).to_have_text(re.compile("RADPEER 3b needs a comment"))
    await expect(card.get_by_label("Comment")).to_be_focused()
    await card.get_by_label("Comment").fill("Missed a 6 mm subdural along the left convexity.")
    await screenshot(reviewer, "review-reviewer.png")
    await card.get_by_role("button", name="Submit score").click()
    await expect(card).to_have_count(0, timeout=WAIT_MS)
    sent = review_row(reviewer, "sent", acc)
    await expect(sent).to_contain_text("Awaiting the coordinator")
    await expect(sent.locator(".score")).to_have_text("3b")
    await expect(reviewer.locator("#mine-badge")).to_be_hidden()
    await assert_never_shows(reviewer, "Rivera", "nw-rivera")

    # The coordinator's arbitration queue has it, live, with the score and the comment.
    queued = review_row(coordinator, "arbitration", acc)
    await expect(queued).to_contain_text("Missed a 6 mm subdural", timeout=WAIT_MS)
    await expect(queued.locator(".score")).to_have_text("3b")
    await expect(queued).to_contain_text("Dr. Ana Rivera")
    await expect(coordinator.locator("#board-badge")).to_have_text("1")
    await screenshot(coordinator, "review-dashboard.png")
    await queued.get_by_role("button", name="Confirm").click()
    finished = review_row(coordinator, "done", acc)
    await expect(finished.locator(".rv-final")).to_have_text("3b", timeout=WAIT_MS)
    await expect(review_row(coordinator, "arbitration", acc)).to_have_count(0)
    await expect(coordinator.locator("#board-badge")).to_be_hidden()

    # The statistics follow: 1 of 2 done reviews is a discrepancy.
    await expect(coordinator.locator("#rv-rate")).to_have_text("50%")
    await expect(coordinator.locator("#rv-rate-detail")).to_contain_text("1 of 2")
    by_site = coordinator.locator("#rv-by-site")
    await expect(by_site.locator('tr[data-key="NW-GEN"] td[data-score="3b"]')).to_have_text("1")
    await expect(by_site.locator('tr[data-key="NW-GEN"] td[data-rate]')).to_have_text("100%")
    await expect(by_site.locator('tr[data-key="NW-IMG"] td[data-rate]')).to_have_text("0%")
    by_modality = coordinator.locator("#rv-by-modality")
    await expect(by_modality.locator('tr[data-key="CT"] td[data-score="3b"]')).to_have_text("1")
    await expect(by_modality.locator('tr[data-key="XR"] td[data-score="1"]')).to_have_text("1")
    await expect(coordinator.locator('#rv-counts [data-count="assigned"]')).to_contain_text(
        "1 overdue"
    )
    await screenshot(coordinator, "review-dashboard-stats.png")

    # The reviewer sees the outcome too; still no reader anywhere on the page.
    await expect(sent).to_contain_text("Done", timeout=WAIT_MS)
    await assert_never_shows(reviewer, "Rivera", "nw-rivera")
    await reviewer.context.close()

    # The reader's feedback: outcomes on her exams, reviewers by number only.
    rivera = await pages.new()
    await log_in(rivera, stack.http_url, "nw-rivera")
    await rivera.get_by_role("tab", name="My reviews").click()
    feedback = review_row(rivera, "feedback", acc)
    await expect(feedback).to_contain_text("Done")
    await expect(feedback.locator(".score")).to_have_text("3b")
    await expect(feedback).to_contain_text(re.compile(r"Reviewer #\d{5}"))
    await expect(review_row(rivera, "feedback", late.accession)).to_contain_text("Under review")
    await expect(review_row(rivera, "feedback", pooled.accession)).to_contain_text("Sampled")
    await expect(section(rivera, "todo")).to_be_hidden()  # nothing for her to review
    await expect(rivera.locator('#people li[data-user="nw-okafor"]')).to_have_count(0)
    await assert_never_shows(rivera, "Okafor", "nw-okafor", "Halverson", "nw-admin")
    await screenshot(rivera, "review-feedback.png")


class Tamper:
    """Routes a page's WebSocket through the test. It records what the page sends; while
    `strip_comments` is on, review scores reach the server without their comment (a page
    whose own check was bypassed); while `holding`, the server's frames are lost; `drop`
    ends the connection (the page reconnects by itself, through here again)."""

    def __init__(self) -> None:
        self.strip_comments = False
        self.holding = False
        self.sent: list[dict[str, Any]] = []
        self.page_side: WebSocketRoute | None = None

    async def install(self, page: Page) -> None:
        await page.route_web_socket(re.compile(r"/ws$"), self._route)

    def _route(self, ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        self.page_side = ws

        def to_server(message: str | bytes) -> None:
            frame = json.loads(message)
            self.sent.append(frame)
            if frame.get("type") == "review_score" and self.strip_comments:
                frame["comment"] = ""
                message = json.dumps(frame)
            server.send(message)

        def to_page(message: str | bytes) -> None:
            if not self.holding:
                ws.send(message)

        ws.on_message(to_server)
        server.on_message(to_page)

    async def drop(self) -> None:
        assert self.page_side is not None
        self.holding = False
        await self.page_side.close(code=4000, reason="test drop")

    def scores(self) -> list[dict[str, Any]]:
        return [f for f in self.sent if f.get("type") == "review_score"]


async def test_a_2b_without_a_comment_is_refused_with_a_visible_message(
    stack: Stack, store: ExamStore, pages: Pages
) -> None:
    reader = await open_as(stack, READER)
    exam = await read_final(reader, store)
    missed = await read_final(reader, store, modality=Modality.MR)
    await reader.close()
    coord_ws = await open_as(stack, COORD)
    for e in (exam, missed):
        await ok(coord_ws, {"type": "review_add", "exam_id": e.accession})
    await ok(
        coord_ws, {"type": "review_assign", "exam_id": exam.accession, "reviewer": "nw-okafor"}
    )

    reviewer = await pages.new()
    link = Tamper()
    await link.install(reviewer)
    # A deep link to the reviews lands there once they are loaded.
    await log_in(reviewer, stack.http_url, "nw-okafor", path="/my-reviews")
    await expect(reviewer.get_by_role("tab", name="My reviews")).to_have_attribute(
        "aria-selected", "true", timeout=WAIT_MS
    )
    assert reviewer.url.endswith("/my-reviews"), reviewer.url

    # A review assigned while the page's connection is failing (its live frame lost) is
    # there once the page is back: the list is loaded again on every new connection.
    link.holding = True
    await ok(
        coord_ws, {"type": "review_assign", "exam_id": missed.accession, "reviewer": "nw-okafor"}
    )
    await link.drop()
    await expect(review_row(reviewer, "todo", missed.accession)).to_be_visible(timeout=WAIT_MS)
    assert sum(f.get("type") == "review_list" for f in link.sent) == 2

    card = review_row(reviewer, "todo", exam.accession)
    await card.get_by_role("button", name="Claim").click()
    await card.get_by_label("RADPEER score").select_option("2b")
    submit = card.get_by_role("button", name="Submit score")
    alert = card.locator('[role="alert"]')  # an empty one is not drawn

    # The page refuses first, and sends nothing.
    await submit.click()
    await expect(alert).to_have_text(re.compile("RADPEER 2b needs a comment"))
    await expect(card.get_by_label("Comment")).to_have_attribute("aria-invalid", "true")
    assert link.scores() == []

    # Past the page's check (the comment lost on the way), the server refuses: its
    # message is shown, and the review stays claimed for another try.
    link.strip_comments = True
    await card.get_by_label("Comment").fill("Subtle fracture of the left zygomatic arch.")
    await expect(alert).to_have_text("")
    await submit.click()
    await expect(alert).to_have_text("Not saved: a RADPEER 2b needs a comment.", timeout=WAIT_MS)
    assert len(link.scores()) == 1
    await expect(card.get_by_label("Comment")).to_have_value(
        "Subtle fracture of the left zygomatic arch."
    )

    link.strip_comments = False
    await submit.click()
    await expect(card).to_have_count(0, timeout=WAIT_MS)
    sent = review_row(reviewer, "sent", exam.accession)
    await expect(sent.locator(".score")).to_have_text("2b")
    await expect(sent).to_contain_text("Awaiting the coordinator")

    # The coordinator returns it: it comes back to the reviewer live, comment and all;
    # scored again, the coordinator changes the score, and the reviewer sees the outcome.
    coordinator = await pages.new()
    await log_in(coordinator, stack.http_url, "nw-penrose", path="/peer-review")
    await expect(coordinator.locator("#board-view")).to_be_visible()
    queued = review_row(coordinator, "arbitration", exam.accession)
    await queued.get_by_role("button", name="Return").click()
    await expect(review_row(coordinator, "assigned", exam.accession)).to_contain_text(
        "(returned)", timeout=WAIT_MS
    )
    await expect(card).to_contain_text("Returned by the coordinator", timeout=WAIT_MS)
    await expect(reviewer.locator("#notice")).to_contain_text("came back to you")
    await card.get_by_role("button", name="Claim").click()
    await expect(card.get_by_label("Comment")).to_have_value(
        "Subtle fracture of the left zygomatic arch."
    )
    await card.get_by_label("RADPEER score").select_option("3a")
    await submit.click()
    await expect(card).to_have_count(0, timeout=WAIT_MS)
    change = queued.get_by_role("button", name="Change")
    await expect(change).to_be_disabled(timeout=WAIT_MS)
    await queued.get_by_label(f"New score for {exam.accession}").select_option("2a")
    await change.click()
    done = review_row(coordinator, "done", exam.accession)
    await expect(done.locator(".rv-final")).to_contain_text("2a changed", timeout=WAIT_MS)
    await expect(sent).to_contain_text("Done, final score 2a", timeout=WAIT_MS)
    await coord_ws.close()
