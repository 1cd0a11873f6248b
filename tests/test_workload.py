"""The coordinator's workload board and reassign, over the real WebSocket."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from dynamo.models import now_ms
from dynamo.states import ExamStatus, Priority
from dynamo.store import ExamStore
from tests.conftest import Stack, token
from tests.support.exams import PATH_TO, exam_bundle, exam_in
from tests.support.wsclient import WsClient
from tests.test_next_case import cached

S = ExamStatus


def reader(board: dict[str, Any], sub: str) -> dict[str, Any]:
    (found,) = [r for r in board["readers"] if r["sub"] == sub]
    return dict(found)


async def test_board_is_live_scoped_and_reassign_tells_the_holder(
    stack: Stack, store: ExamStore, redis: Redis
) -> None:
    routine = await exam_in(store, S.COMPLETED, site="NW-GEN", priority=Priority.ROUTINE)
    urgent = await exam_in(store, S.COMPLETED, site="NW-GEN", priority=Priority.URGENT)
    late, order, profile = exam_bundle(site="NW-GEN")
    late = await store.create_exam(
        late.model_copy(update={"tat_due_at": now_ms() - 60_000}), order, profile
    )
    for step in PATH_TO[S.COMPLETED]:
        late = await store.transition(late.patient_id, late.accession, step)
    await cached(redis, routine, urgent, late)

    ana = await WsClient.open(stack.ws_url, token("t-ana", name="Dr. Ana"))
    ben = await WsClient.open(stack.ws_url, token("t-ben", name="Dr. Ben"))
    coord = await WsClient.open(
        stack.ws_url, token("t-coord", name="Coord", roles=("coordinator",))
    )
    img_only = await WsClient.open(
        stack.ws_url, token("t-coord-img", roles=("coordinator",), sites=("NW-IMG",))
    )

    refused = await ana.request({"type": "board"})
    assert refused["code"] == "forbidden", refused
    board = await coord.request({"type": "board"})
    assert board["type"] == "board", board
    assert [q["exam_id"] for q in board["queue"]][:1] == [urgent.accession]
    assert {q["exam_id"] for q in board["queue"]} == {
        routine.accession,
        urgent.accession,
        late.accession,
    }
    assert [b["exam_id"] for b in board["breaches"]] == [late.accession]
    assert reader(board, "t-ana")["online"] and reader(board, "t-ana")["open_claims"] == 0
    assert "patient_name" not in str(board) and "mrn" not in str(board)
    narrow = await img_only.request({"type": "board"})
    assert narrow["queue"] == [] and narrow["breaches"] == [], narrow

    # Live: Ana takes the next case; the coordinator's board follows by itself.
    got = await ana.request({"type": "next"})
    assert got["exam_id"] == urgent.accession
    live = await coord.until(
        lambda f: f.get("type") == "board" and reader(f, "t-ana")["open_claims"] == 1, 10
    )
    assert urgent.accession not in {q["exam_id"] for q in live["queue"]}
    assert live["decisions"][0]["exam_id"] == urgent.accession

    # Reassign to someone offline or out of scope: refused, naming who could take it.
    bad = await coord.request({"type": "reassign", "exam_id": urgent.accession, "to": "t-nobody"})
    assert bad["code"] == "forbidden" and bad["detail"]["online_readers"] == ["t-ana", "t-ben"]
    done = await coord.request(
        {"type": "reassign", "exam_id": urgent.accession, "to": "t-ben", "reason": "balance"}
    )
    assert done["type"] == "reassigned", done
    assert (done["to"], done["previous_holder"]) == ("t-ben", "Dr. Ana")
    lost = await ana.until(lambda f: f.get("type") == "claim_lost", 5)
    assert (lost["reason"], lost["by"], lost["message"]) == ("reassigned", "Coord", "balance")
    assigned = await ben.until(lambda f: f.get("type") == "assigned", 5)
    assert assigned["exam_id"] == urgent.accession and "token" not in assigned
    # Ben's connection holds the claim: he signs under it; Ana's token is dead.
    stale = await ana.request({"type": "release", "exam_id": urgent.accession})
    assert stale["type"] == "error", stale
    signed = await ben.request({"type": "sign", "exam_id": urgent.accession, "status": "FINAL"})
    assert signed["type"] == "signed", signed
    for c in (ana, ben, coord, img_only):
        await c.close()
