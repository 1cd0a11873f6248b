"""Deltas as patches: a client that holds the previous version of a row gets only the
fields that changed, one that does not gets the whole row, nobody gets a patch of a row
outside their scope, and a client whose row is not at a patch's base asks for it."""

from __future__ import annotations

from typing import Any

from dynamo.deltas import ExamDelta
from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from gateway.protocol import PatchFrame, server_frame
from tests.conftest import Stack, token
from tests.support.exams import exam_in
from tests.support.wsclient import Frame, WsClient

S = ExamStatus
ROW_FIELDS = set(ExamDelta.model_fields)


def of(exam_id: str, version: int) -> Any:
    def match(f: Frame) -> bool:
        d = f.get("delta") or {}
        return d.get("exam_id") == exam_id and d.get("version") == version

    return match


async def test_a_client_holding_the_previous_version_gets_a_patch_the_other_the_row(
    stack: Stack, store: ExamStore
) -> None:
    watcher = await WsClient.open(stack.ws_url, token("t-admin", roles=("admin",)))
    await watcher.subscribe("all", statuses=[])
    done = await WsClient.open(stack.ws_url, token("t-ana"))
    await done.subscribe("done", statuses=["COMPLETED"])
    exam = await exam_in(store, S.IN_PROGRESS)
    await watcher.until(of(exam.accession, exam.version), timeout=10)

    moved = await store.transition(exam.patient_id, exam.accession, S.COMPLETED)
    seen = await watcher.until(of(exam.accession, moved.version), timeout=10)
    patch = watcher.patch_of(seen)
    assert patch is not None, "the watcher held the previous version: a patch"
    assert isinstance(server_frame.validate_python(patch), PatchFrame)
    assert patch["base"] == exam.version and patch["version"] == moved.version
    assert patch["fields"]["status"] == "COMPLETED"
    assert "mrn" not in patch["fields"] and "procedure" not in patch["fields"], "unchanged"
    assert seen["delta"]["mrn"] == exam.mrn, "the patched row is the whole row"

    full = await done.until(of(exam.accession, moved.version), timeout=10)
    assert done.patch_of(full) is None, "the other client never held it: the whole row"
    assert full["delta"]["status"] == "COMPLETED" and full["delta"]["mrn"] == exam.mrn
    assert done.patches == 0


async def test_no_patch_of_a_row_outside_the_scope_and_none_with_more_than_a_row(
    stack: Stack, store: ExamStore
) -> None:
    admin = await WsClient.open(stack.ws_url, token("t-admin", roles=("admin",)))
    await admin.subscribe("w", statuses=[])
    ana = await WsClient.open(stack.ws_url, token("t-ana", sites=("NW-GEN",)))
    await ana.subscribe("s", statuses=[])
    mine = await exam_in(store, S.ARRIVED, site="NW-GEN")
    other = await exam_in(store, S.ARRIVED, site="NW-ORT")
    await ana.until(of(mine.accession, mine.version), timeout=10)
    for exam in (mine, other):
        for status in (S.IN_PROGRESS, S.COMPLETED):
            # One change at a time: changes that reach the gateway together may go out
            # as one whole row (the flush window), which is not what this test is about.
            exam = await store.transition(exam.patient_id, exam.accession, status)
            await admin.until(of(exam.accession, exam.version), timeout=10)
    await ana.until(of(mine.accession, mine.version + 2), timeout=10)
    assert ana.patches >= 1, "her own exam's changes came as patches"
    for f in ana.frames:
        raw = ana.patch_of(f) or f
        assert raw.get("exam_id", (f.get("delta") or {}).get("exam_id")) != other.accession
        if raw.get("type") == "patch":
            assert set(raw["fields"]) <= ROW_FIELDS, "a patch holds a row's fields only"
            assert "mismatch" not in f


async def test_a_client_whose_row_is_not_at_the_base_asks_for_the_row(
    stack: Stack, store: ExamStore
) -> None:
    ana = await WsClient.open(stack.ws_url, token("t-ana", sites=("NW-GEN",)))
    await ana.subscribe("s")  # open states only
    exam = await exam_in(store, S.COMPLETED, site="NW-GEN")
    other = await exam_in(store, S.COMPLETED, site="NW-ORT")
    await ana.until(of(exam.accession, exam.version), timeout=10)

    got = await ana.request({"type": "row", "sub": "s", "exam_id": exam.accession})
    assert got["type"] == "row" and got["row"]["version"] == exam.version
    assert got["row"]["mrn"] == exam.mrn
    hidden = await ana.request({"type": "row", "sub": "s", "exam_id": other.accession})
    assert hidden["type"] == "row" and hidden["row"] is None, "outside her scope: nothing"
    gone = await ana.request({"type": "row", "sub": "nope", "exam_id": exam.accession})
    assert gone["code"] == "not_found"
