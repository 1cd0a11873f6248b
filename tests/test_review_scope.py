"""The peer-review board is scoped like the worklist (real gateway, Redis, DynamoDB
Local): a coordinator limited to some sites or subspecialties neither sees nor manages
another site's reviews, and cannot tell that they exist; nor can a radiologist probe
for reviews that are not theirs."""

from __future__ import annotations

import json

from dynamo.models import Exam
from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from tests.conftest import Stack, token
from tests.support.exams import exam_in
from tests.support.wsclient import Frame, WsClient

MISSING = "TNO9999999"  # no such exam


async def read_final(reader: WsClient, store: ExamStore, **kw: str) -> Exam:
    exam = await exam_in(store, ExamStatus.COMPLETED, **kw)
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


async def as_if_missing(client: WsClient, frame: Frame, exam_id: str) -> None:
    """`frame` about `exam_id` is answered exactly as the same frame about no exam."""
    hidden = await client.request(frame)
    missing = await client.request({**frame, "exam_id": MISSING})
    assert hidden.get("code") == "not_found", hidden
    assert (hidden["code"], hidden["message"].replace(exam_id, MISSING)) == (
        missing["code"],
        missing["message"],
    )
    assert "detail" not in hidden


async def test_a_site_limited_coordinator_sees_and_manages_only_their_sites(
    stack: Stack, store: ExamStore
) -> None:
    reader = await WsClient.open(stack.ws_url, token("nw-rivera", name="Dr. Ana Rivera"))
    mine = await read_final(reader, store)  # NW-GEN, neuro
    elsewhere = await read_final(reader, store, site="NW-IMG", subspecialty="body")
    unpooled = await read_final(reader, store, site="NW-IMG", subspecialty="body")
    await reader.close()
    everywhere = await WsClient.open(
        stack.ws_url, token("nw-penrose", name="Sam Penrose", roles=("coordinator",))
    )
    by_site = await WsClient.open(
        stack.ws_url,
        token("c-gen", name="Gen Coordinator", roles=("coordinator",), sites=("NW-GEN",)),
    )
    by_sub = await WsClient.open(
        stack.ws_url,
        token(
            "c-neuro", name="Neuro Coordinator", roles=("coordinator",), subspecialties=("neuro",)
        ),
    )
    scoped = (by_site, by_sub)
    for coordinator in scoped:
        await coordinator.request({"type": "review_list"})  # the board, live

    for e in (mine, elsewhere):
        await ok(everywhere, {"type": "review_add", "exam_id": e.accession})
    # Jo Halverson is busier than Dr. Okafor, but only at a site they may not see.
    await ok(
        everywhere,
        {"type": "review_assign", "exam_id": elsewhere.accession, "reviewer": "nw-admin"},
    )
    reviewer = await WsClient.open(stack.ws_url, token("nw-admin", roles=("admin", "radiologist")))
    await ok(reviewer, {"type": "review_claim", "exam_id": elsewhere.accession})
    await ok(
        reviewer,
        {"type": "review_score", "exam_id": elsewhere.accession, "score": "3b", "comment": "x"},
    )

    for coordinator in scoped:
        # Another site's exam and review: as if there were none.
        await as_if_missing(
            coordinator, {"type": "review_add", "exam_id": unpooled.accession}, unpooled.accession
        )
        await as_if_missing(
            coordinator, {"type": "review_add", "exam_id": elsewhere.accession}, elsewhere.accession
        )
        await as_if_missing(
            coordinator,
            {"type": "review_assign", "exam_id": elsewhere.accession, "reviewer": "nw-okafor"},
            elsewhere.accession,
        )
        await as_if_missing(
            coordinator,
            {"type": "review_arbitrate", "exam_id": elsewhere.accession, "decision": "confirm"},
            elsewhere.accession,
        )
        # Their own site's review they run as before; the eligible list in a refusal
        # does not reveal the load other sites put on each reviewer.
        refused = await coordinator.request(
            {"type": "review_assign", "exam_id": mine.accession, "reviewer": "nw-lindqvist"}
        )
        assert refused.get("code") == "forbidden", refused
        assert refused["detail"]["eligible"] == ["nw-admin", "nw-okafor"]

    # Nothing of the other site reached them: not pooled by them, not arbitrated, and
    # neither listed nor sent live. A last change at their site marks the end of the feed.
    rows = (await everywhere.request({"type": "review_list"}))["reviews"]
    assert unpooled.accession not in {r["exam_id"] for r in rows}
    await ok(
        everywhere, {"type": "review_assign", "exam_id": mine.accession, "reviewer": "nw-okafor"}
    )
    for coordinator in scoped:
        await coordinator.until(
            lambda f: (
                f["type"] == "review"
                and f["review"]["exam_id"] == mine.accession
                and f["review"]["state"] == "ASSIGNED"
            ),
            timeout=10,
        )
        board = (await coordinator.request({"type": "review_list"}))["reviews"]
        assert [r["exam_id"] for r in board] == [mine.accession]
        for frame in coordinator.frames:
            if frame["type"] == "error":
                continue  # the not_found answers above echo the accession they asked about
            text = json.dumps(frame)
            assert elsewhere.accession not in text and unpooled.accession not in text, frame
    flagged = await everywhere.request({"type": "review_list"})
    assert {r["exam_id"]: r["state"] for r in flagged["reviews"]}[elsewhere.accession] == (
        "ARBITRATION"
    )


async def test_nobody_can_probe_for_a_review_that_is_not_theirs(
    stack: Stack, store: ExamStore
) -> None:
    reader = await WsClient.open(stack.ws_url, token("nw-rivera", name="Dr. Ana Rivera"))
    exam = await read_final(reader, store)
    coordinator = await WsClient.open(
        stack.ws_url, token("nw-penrose", name="Sam Penrose", roles=("coordinator",))
    )
    await ok(coordinator, {"type": "review_add", "exam_id": exam.accession})
    await ok(
        coordinator, {"type": "review_assign", "exam_id": exam.accession, "reviewer": "nw-okafor"}
    )
    outsider = await WsClient.open(stack.ws_url, token("nw-lindqvist", name="Dr. Maja"))
    await as_if_missing(
        outsider, {"type": "review_claim", "exam_id": exam.accession}, exam.accession
    )
    await as_if_missing(
        outsider,
        {"type": "review_score", "exam_id": exam.accession, "score": "1", "token": "1." + "0" * 32},
        exam.accession,
    )
    # The assigned reviewer, limited to other sites now, loses it the same way.
    moved = await WsClient.open(
        stack.ws_url, token("nw-okafor", name="Dr. Ben Okafor", sites=("NW-ORT",))
    )
    await as_if_missing(moved, {"type": "review_claim", "exam_id": exam.accession}, exam.accession)
    assert (await moved.request({"type": "review_list"}))["reviews"] == []
