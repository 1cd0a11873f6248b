"""Peer review through a real gateway: a coordinator pools and assigns, a reviewer
scores blind, the dashboard updates live, and the reader learns the outcome without the
reviewer's name."""

from __future__ import annotations

import asyncio
import json

from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from tests.conftest import UNIT, Stack, token
from tests.support.exams import exam_in
from tests.support.wsclient import WsClient

COORD = ("nw-penrose", "Sam Penrose", ("coordinator",))
READER = ("nw-rivera", "Dr. Ana Rivera", ("radiologist",))
REVIEWER = ("nw-okafor", "Dr. Ben Okafor", ("radiologist",))


async def open_as(stack: Stack, who: tuple[str, str, tuple[str, ...]]) -> WsClient:
    sub, name, roles = who
    return await WsClient.open(stack.ws_url, token(sub, name=name, roles=roles))


async def reading_settled(client: WsClient, accession: str) -> None:
    """Presence no longer lists `accession` as being read, and the diff that says so has
    gone out: a session opened now cannot be sent the read in progress (which the whole
    worklist saw while it lasted, before any review existed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5 * UNIT
    while True:
        state = await client.request({"type": "presence"})
        if not any(accession in u["reading"] for u in state["users"]):
            break
        assert loop.time() < deadline, state
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2 * UNIT)  # past the presence debounce (50 ms)


async def test_a_blinded_review_from_pool_to_arbitration(stack: Stack, store: ExamStore) -> None:
    coordinator = await open_as(stack, COORD)
    reader = await open_as(stack, READER)
    exam = await exam_in(store, ExamStatus.COMPLETED)
    assert (await reader.request({"type": "claim", "exam_id": exam.accession}))["type"] == (
        "claimed"
    )
    signed = await reader.request({"type": "sign", "exam_id": exam.accession, "status": "FINAL"})
    assert signed["type"] == "signed"
    await reading_settled(reader, exam.accession)
    reviewer = await open_as(stack, REVIEWER)  # reviews come after the read

    board = await coordinator.request({"type": "review_list"})
    assert board["type"] == "reviews"
    for client in (reader, reviewer):
        assert (await client.request({"type": "review_list"}))["reviews"] == []

    # Only coordinators run the board.
    refused = await reviewer.request({"type": "review_add", "exam_id": exam.accession})
    assert refused["code"] == "forbidden"
    added = await coordinator.request({"type": "review_add", "exam_id": exam.accession})
    assert added["type"] == "review_ok" and added["review"]["state"] == "POOLED"
    assert added["review"]["original_reader"] == "nw-rivera"  # the coordinator knows

    own = await coordinator.request(
        {"type": "review_assign", "exam_id": exam.accession, "reviewer": "nw-rivera"}
    )
    assert own["code"] == "forbidden" and "nw-rivera" not in own["detail"]["eligible"]
    assigned = await coordinator.request({"type": "review_assign", "exam_id": exam.accession})
    assert assigned["review"]["reviewer"] in own["detail"]["eligible"]
    assigned = await coordinator.request(
        {"type": "review_assign", "exam_id": exam.accession, "reviewer": "nw-okafor"}
    )
    assert assigned["review"]["reviewer_name"] == "Dr. Ben Okafor"

    # The reviewer's open queue shows it live.
    mine = await reviewer.until(
        lambda f: f["type"] == "review" and f["review"]["state"] == "ASSIGNED", timeout=10
    )
    assert mine["review"]["exam_id"] == exam.accession
    claimed = await reviewer.request({"type": "review_claim", "exam_id": exam.accession})
    assert claimed["type"] == "review_ok" and claimed["token"]
    no_comment = await reviewer.request(
        {"type": "review_score", "exam_id": exam.accession, "score": "2b"}
    )
    assert no_comment["code"] == "bad_request" and "comment" in no_comment["message"]
    scored = await reviewer.request(
        {
            "type": "review_score",
            "exam_id": exam.accession,
            "score": "3b",
            "comment": "missed a small PE",
        }
    )
    assert scored["review"]["state"] == "ARBITRATION"

    live = await coordinator.until(
        lambda f: f["type"] == "review" and f["review"]["state"] == "ARBITRATION", timeout=10
    )
    assert live["review"]["score"] == "3b"
    outcome = await reader.until(
        lambda f: f["type"] == "review" and f["review"]["state"] == "ARBITRATION", timeout=10
    )
    assert outcome["review"]["reviewer_id"] == assigned["review"]["reviewer_id"]

    done = await coordinator.request(
        {"type": "review_arbitrate", "exam_id": exam.accession, "decision": "change", "score": "3a"}
    )
    assert done["review"]["state"] == "DONE" and done["review"]["final_score"] == "3a"
    await reader.until(lambda f: f["type"] == "review" and f["review"]["state"] == "DONE", 10)

    # Blinding, checked on every frame each of them received: nothing that names the
    # reviewed exam names the other side (presence may list them online, unlinked).
    for frame in reviewer.frames:
        text = json.dumps(frame)
        if exam.accession in text:
            assert "nw-rivera" not in text and "Rivera" not in text, frame
    for frame in reader.frames:
        text = json.dumps(frame)
        if exam.accession in text:
            assert "nw-okafor" not in text and "Okafor" not in text, frame


async def test_an_outsider_sees_no_reviews(stack: Stack, store: ExamStore) -> None:
    coordinator = await open_as(stack, COORD)
    reader = await open_as(stack, READER)
    other = await WsClient.open(stack.ws_url, token("nw-lindqvist", name="Dr. Maja"))
    exam = await exam_in(store, ExamStatus.COMPLETED)
    await reader.request({"type": "claim", "exam_id": exam.accession})
    await reader.request({"type": "sign", "exam_id": exam.accession, "status": "FINAL"})
    await other.request({"type": "review_list"})
    await coordinator.request({"type": "review_list"})
    await coordinator.request({"type": "review_add", "exam_id": exam.accession})
    await coordinator.until(lambda f: f["type"] == "review", timeout=10)
    assert (await other.request({"type": "review_list"}))["reviews"] == []
    assert not any(f["type"] == "review" for f in other.frames)
