"""A reader credentialed for CT only, against the live gateway: an MR exam never reaches
them on any path (snapshot, live delta, resume, presence), asking for MR is `forbidden`,
and claiming an MR exam is `not_found`, worded as for an exam that does not exist."""

from __future__ import annotations

from typing import Any

import orjson

from dynamo.models import Exam
from dynamo.states import ExamStatus, Modality
from dynamo.store import ExamStore
from tests.conftest import Stack, token
from tests.support.exams import exam_in
from tests.support.wsclient import Frame, WsClient

S = ExamStatus


def mentions(client: WsClient, exam: Exam) -> bool:
    """Whether any frame names the exam (but the answer to the client's own claim of
    it, which names what was asked and is checked on its own)."""
    frames = [f for f in client.frames if f.get("type") != "error"]
    return exam.accession.encode() in orjson.dumps(frames)


def delta_of(exam: Exam, status: ExamStatus) -> Any:
    def match(f: Frame) -> bool:
        d = f.get("delta") or {}
        return (
            f.get("type") == "delta"
            and d.get("exam_id") == exam.accession
            and (d.get("status") == status.value)
        )

    return match


async def test_a_ct_reader_never_sees_an_mr_exam_on_any_path(
    stack: Stack, store: ExamStore
) -> None:
    ct_only = token("t-ct", modalities=("CT",))
    reader = await WsClient.open(stack.ws_url, ct_only)
    assert reader.user is not None and reader.user["modalities"] == ["CT"]
    witness = await WsClient.open(stack.ws_url, token("t-every"))

    # Snapshot.
    await witness.subscribe("w", statuses=[])
    mr_a = await exam_in(store, S.COMPLETED, modality=Modality.MR)
    ct_a = await exam_in(store, S.COMPLETED, modality=Modality.CT)
    await witness.until(delta_of(ct_a, S.COMPLETED))
    snap = await reader.subscribe("s", statuses=[])
    assert snap["type"] == "snapshot", snap
    assert ct_a.accession in {r["exam_id"] for r in snap["rows"]}
    assert {r["modality"] for r in snap["rows"]} == {"CT"}

    # Asking for MR is refused, not answered with an empty list.
    refused = await reader.subscribe("mr", modalities=["MR"])
    assert refused["type"] == "error" and refused["code"] == "forbidden", refused

    # Live: an MR exam arrives and changes; a CT change after it is the fence.
    mr_b = await exam_in(store, S.COMPLETED, modality=Modality.MR)
    mr_b = await store.transition(mr_b.patient_id, mr_b.accession, S.FINAL)
    ct_b = await exam_in(store, S.COMPLETED, modality=Modality.CT)
    await witness.until(delta_of(ct_b, S.COMPLETED))
    assert any(delta_of(mr_b, S.FINAL)(f) for f in witness.frames)
    last = await reader.until(delta_of(ct_b, S.COMPLETED))

    # Claims: an MR exam is not on this reader's worklist.
    answer = await reader.request({"type": "claim", "exam_id": mr_a.accession})
    assert answer["type"] == "error" and answer["code"] == "not_found", answer
    nothing = await reader.request({"type": "claim", "exam_id": "NOSUCHEXAM1"})
    assert answer["message"].replace(mr_a.accession, "X") == nothing["message"].replace(
        "NOSUCHEXAM1", "X"
    )
    assert (await store.find_exam("northwind", mr_a.accession)).claimed_by is None

    # Resume: while the reader is away the witness claims an MR and a CT exam; a CT
    # exam arrives last (the fence).
    await reader.close()
    for exam in (mr_a, ct_a):
        claimed = await witness.request({"type": "claim", "exam_id": exam.accession})
        assert claimed["type"] == "claimed", claimed
    ct_c = await exam_in(store, S.COMPLETED, modality=Modality.CT)
    await witness.until(delta_of(ct_c, S.COMPLETED))
    back = await WsClient.open(stack.ws_url, ct_only)
    await back.send(
        {
            "type": "subscribe",
            "id": "s",
            "view": {"statuses": []},
            "since": {"epoch": last["epoch"], "offset": last["offset"]},
        }
    )
    resumed = await back.until(lambda f: f.get("id") == "s")
    assert resumed["type"] == "resumed", resumed
    await back.until(delta_of(ct_c, S.COMPLETED))

    # Presence: the witness reads ct_a and mr_a; the reader is shown ct_a only.
    def reading_of_witness(f: Frame) -> list[str] | None:
        users = f.get("users") if f.get("type") == "presence_state" else f.get("joins")
        for u in users or []:
            if u.get("sub") == "t-every":
                return list(u.get("reading", []))
        return None

    def shows_ct_a(f: Frame) -> bool:
        return ct_a.accession in (reading_of_witness(f) or [])

    if not any(shows_ct_a(f) for f in back.frames):
        await back.until(shows_ct_a)
    fresh = await back.request({"type": "presence"})
    assert fresh["type"] == "presence_state" and shows_ct_a(fresh), fresh
    states = [reading_of_witness(f) for f in back.frames if reading_of_witness(f) is not None]
    assert states and all(mr_a.accession not in r for r in states if r is not None)

    for client in (reader, back):
        assert not mentions(client, mr_a) and not mentions(client, mr_b), "an MR exam leaked"
    assert mentions(witness, mr_a) and mentions(witness, mr_b)  # it was there to be seen
