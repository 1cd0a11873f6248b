"""Peer-review blinding through a real gateway, Redis and DynamoDB Local: the reader
cannot work out who reviewed them, and being an admin or a coordinator does not lift the
blinding of a review one reads or reviews."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from dynamo.keys import review_pk, review_sk
from dynamo.models import Exam
from dynamo.serde import from_attrs, to_attr
from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from tests.conftest import Stack, token
from tests.support.exams import exam_in
from tests.support.wsclient import Frame, WsClient

COORD = ("nw-penrose", "Sam Penrose", ("coordinator",))
READER = ("nw-rivera", "Dr. Ana Rivera", ("radiologist",))
REVIEWER = ("nw-okafor", "Dr. Ben Okafor", ("radiologist",))
ADMIN = ("nw-admin", "Jo Halverson", ("admin", "radiologist"))


async def open_as(stack: Stack, who: tuple[str, str, tuple[str, ...]]) -> WsClient:
    sub, name, roles = who
    return await WsClient.open(stack.ws_url, token(sub, name=name, roles=roles))


async def read_final(reader: WsClient, store: ExamStore) -> Exam:
    exam = await exam_in(store, ExamStatus.COMPLETED)
    assert (await reader.request({"type": "claim", "exam_id": exam.accession}))["type"] == (
        "claimed"
    )
    signed = await reader.request({"type": "sign", "exam_id": exam.accession, "status": "FINAL"})
    assert signed["type"] == "signed", signed
    return exam


async def ok(client: WsClient, frame: Frame) -> Frame:
    reply = await client.request(frame)
    assert reply["type"] == "review_ok", reply
    return reply


def about(client: WsClient, accession: str) -> list[str]:
    """Every review frame (list, live, reply, error) the client got that concerns the
    exam, as text."""
    out = []
    for frame in client.frames:
        if frame["type"] in ("reviews", "review", "review_ok", "error"):
            text = json.dumps(frame)
            if accession in text or frame["type"] == "error":
                out.append(text)
    return out


def unkeyed_hash(sub: str) -> int:
    """How `reviewer_id` used to be made: anyone holding a `sub` could compute it."""
    digest = hashlib.sha256(f"reviewer:{sub}".encode()).digest()[:4]
    return int.from_bytes(digest, "big") % 90000 + 10000


def subs_in(frames: list[Frame]) -> set[str]:
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("sub"), str):
                found.add(value["sub"])
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(frames)
    return found


async def test_the_reader_cannot_derive_the_reviewer_from_the_reviewer_id(
    stack: Stack, store: ExamStore
) -> None:
    reader = await open_as(stack, READER)
    exam = await read_final(reader, store)
    coordinator, reviewer = await open_as(stack, COORD), await open_as(stack, REVIEWER)
    await reader.request({"type": "review_list"})
    await ok(coordinator, {"type": "review_add", "exam_id": exam.accession})
    await ok(
        coordinator,
        {"type": "review_assign", "exam_id": exam.accession, "reviewer": "nw-okafor"},
    )
    live = await reader.until(
        lambda f: f["type"] == "review" and f["review"]["state"] == "ASSIGNED", timeout=10
    )
    number = live["review"]["reviewer_id"]
    listed = (await reader.request({"type": "review_list"}))["reviews"]
    assert [r["reviewer_id"] for r in listed] == [number]

    # The number is the one stored on the review, not computed from anyone.
    resp = await store.call(
        "get_item",
        TableName=store.table,
        Key={"PK": to_attr(review_pk("northwind")), "SK": to_attr(review_sk(exam.accession))},
        ConsistentRead=True,
    )
    assert from_attrs(resp["Item"])["reviewer_id"] == number

    # Every sub the reader can learn (presence names everyone online, the reviewer too).
    presence = await reader.request({"type": "presence"})
    known = subs_in(reader.frames) | subs_in([presence])
    assert "nw-okafor" in known
    assert number not in {unkeyed_hash(sub) for sub in known}
    for text in about(reader, exam.accession):
        assert "nw-okafor" not in text and "Okafor" not in text, text
    await reviewer.close()


async def test_an_admin_who_reviews_never_sees_the_reader(stack: Stack, store: ExamStore) -> None:
    reader = await open_as(stack, READER)
    exam = await read_final(reader, store)
    other = await read_final(reader, store)
    await reader.close()
    coordinator = await open_as(stack, COORD)
    await coordinator.request({"type": "review_list"})
    for e in (exam, other):
        await ok(coordinator, {"type": "review_add", "exam_id": e.accession})
        await ok(
            coordinator, {"type": "review_assign", "exam_id": e.accession, "reviewer": "nw-admin"}
        )
        await coordinator.until(
            lambda f, e=e: (
                f["type"] == "review"
                and f["review"]["exam_id"] == e.accession
                and f["review"]["state"] == "ASSIGNED"
            ),
            timeout=10,
        )
    # The admin opens the board once both are theirs (what they saw of a review before it
    # was assigned to them is not for the gateway to take back; see docs/protocol.md).
    admin = await open_as(stack, ADMIN)
    board = (await admin.request({"type": "review_list"}))["reviews"]
    assert {r["exam_id"] for r in board} == {exam.accession, other.accession}
    assert all(r["reviewer"] == "nw-admin" for r in board)

    # Being an admin does not let them manage a review of their own.
    refused = await admin.request({"type": "review_assign", "exam_id": exam.accession})
    assert refused.get("code") == "forbidden" and "detail" not in refused, refused
    await ok(admin, {"type": "review_claim", "exam_id": exam.accession})
    await ok(
        admin,
        {"type": "review_score", "exam_id": exam.accession, "score": "2b", "comment": "subtle"},
    )
    refused = await admin.request(
        {"type": "review_arbitrate", "exam_id": exam.accession, "decision": "confirm"}
    )
    assert refused.get("code") == "forbidden", refused
    await ok(
        coordinator,
        {"type": "review_arbitrate", "exam_id": exam.accession, "decision": "confirm"},
    )
    await admin.until(
        lambda f: f["type"] == "review" and f["review"].get("state") == "DONE", timeout=10
    )

    # Taken back from them before they started, the other review disappears from their
    # board; it does not turn into a coordinator's row with the reader's name.
    await ok(
        coordinator, {"type": "review_assign", "exam_id": other.accession, "reviewer": "nw-okafor"}
    )
    gone = await admin.until(
        lambda f: f["type"] == "review" and f["review"]["exam_id"] == other.accession, timeout=10
    )
    assert set(gone["review"]) == {"exam_id", "op", "version"}
    assert gone["review"]["op"] == "remove"
    board = (await admin.request({"type": "review_list"}))["reviews"]
    assert [r["exam_id"] for r in board] == [exam.accession]
    assert (await admin.request({"type": "review_assign", "exam_id": other.accession})).get(
        "code"
    ) == "not_found"

    for accession in (exam.accession, other.accession):
        texts = about(admin, accession)
        assert texts
        for text in texts:
            assert "nw-rivera" not in text and "Rivera" not in text, text


async def test_an_admin_who_read_the_exam_never_sees_the_reviewer(
    stack: Stack, store: ExamStore
) -> None:
    admin = await open_as(stack, ADMIN)
    exam = await read_final(admin, store)
    coordinator = await open_as(stack, COORD)
    await admin.request({"type": "review_list"})
    added = await ok(admin, {"type": "review_add", "exam_id": exam.accession})
    assert added["review"]["original_reader"] == "nw-admin"
    refused = await admin.request(
        {"type": "review_assign", "exam_id": exam.accession, "reviewer": "nw-okafor"}
    )
    assert refused.get("code") == "forbidden" and "detail" not in refused, refused
    await ok(
        coordinator, {"type": "review_assign", "exam_id": exam.accession, "reviewer": "nw-okafor"}
    )
    reviewer = await open_as(stack, REVIEWER)
    await ok(reviewer, {"type": "review_claim", "exam_id": exam.accession})
    await ok(
        reviewer,
        {"type": "review_score", "exam_id": exam.accession, "score": "3a", "comment": "missed"},
    )
    flagged = await admin.until(
        lambda f: f["type"] == "review" and f["review"].get("state") == "ARBITRATION", timeout=10
    )
    assert "score" not in flagged["review"]  # not an outcome yet
    refused = await admin.request(
        {"type": "review_arbitrate", "exam_id": exam.accession, "decision": "change", "score": "1"}
    )
    assert refused.get("code") == "forbidden", refused
    await ok(
        coordinator,
        {"type": "review_arbitrate", "exam_id": exam.accession, "decision": "confirm"},
    )
    done = await admin.until(
        lambda f: f["type"] == "review" and f["review"].get("state") == "DONE", timeout=10
    )
    assert done["review"]["final_score"] == "3a" and done["review"]["reviewer_id"]
    board = (await admin.request({"type": "review_list"}))["reviews"]
    assert [r["exam_id"] for r in board] == [exam.accession]
    texts = about(admin, exam.accession)
    assert texts
    for text in texts:
        assert "nw-okafor" not in text and "Okafor" not in text, text


async def test_a_coordinator_cannot_assign_a_review_to_themselves(
    stack: Stack, store: ExamStore
) -> None:
    """They have seen its reader on the board, so they could never review it blind."""
    reader = await open_as(stack, READER)
    exam = await read_final(reader, store)
    admin = await open_as(stack, ADMIN)
    await ok(admin, {"type": "review_add", "exam_id": exam.accession})
    refused = await admin.request(
        {"type": "review_assign", "exam_id": exam.accession, "reviewer": "nw-admin"}
    )
    assert refused.get("code") == "forbidden", refused
    assert "nw-admin" not in refused["detail"]["eligible"]
    assert "nw-okafor" in refused["detail"]["eligible"]
    assigned = await ok(admin, {"type": "review_assign", "exam_id": exam.accession})
    assert assigned["review"]["reviewer"] != "nw-admin"
