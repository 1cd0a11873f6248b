"""HL7 to the browser: each message type, sent over MLLP, reaches a subscribed WebSocket
client as a delta through the real relay, Redis and gateway. Data synthetic."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from tests.conftest import Stack, token
from tests.support.hl7 import Running, builder, cid, patient, planned, running
from tests.support.wsclient import WsClient

S = ExamStatus
Frame = dict[str, Any]


def delta(accession: str, **want: Any) -> Callable[[Frame], bool]:
    def match(f: Frame) -> bool:
        if f.get("type") != "delta" or f["delta"]["exam_id"] != accession:
            return False
        return all(f["delta"].get(k) == v for k, v in want.items())

    return match


async def send_ok(hl7: Running, text: str | None) -> None:
    assert text is not None
    async with hl7.client() as client:
        ack = await client.send(text)
    assert ack.code == "AA", ack.text


async def test_every_message_type_reaches_the_worklist_live(stack: Stack, store: ExamStore) -> None:
    watcher = await WsClient.open(stack.ws_url, token("t-nw", tenant="northwind"))
    await watcher.subscribe("nw", "northwind")
    b = builder("NWGEN")
    async with running(store) as hl7:
        # ORM^O01 NW: a new row.
        exam = planned("NWGEN", who=patient("northwind", name="LIVE^EPSILON"))
        await send_ok(hl7, b.new_order(exam, control_id=cid()))
        first = await watcher.until(delta(exam.accession, version=1))
        assert first["delta"]["status"] == "SCHEDULED" and first["delta"]["site"] == "NW-GEN"

        # ORC-1 SC with ORC-5 IP: the exam walks ARRIVED -> IN_PROGRESS.
        await send_ok(hl7, b.status_update(exam, S.IN_PROGRESS, control_id=cid()))
        await watcher.until(delta(exam.accession, version=3, status="IN_PROGRESS"))
        await send_ok(hl7, b.status_update(exam, S.COMPLETED, control_id=cid()))
        await watcher.until(delta(exam.accession, version=4, status="COMPLETED"))

        # ORU^R01 with OBR-25 P.
        await send_ok(hl7, b.result(exam, S.PRELIMINARY, control_id=cid()))
        await watcher.until(delta(exam.accession, version=5, status="PRELIMINARY"))

        # ADT^A08: the row shows the new name.
        renamed = exam.patient.model_copy(update={"name": "RENAMED^EPSILON"})
        await send_ok(hl7, b.patient_update(renamed, control_id=cid()))
        await watcher.until(delta(exam.accession, version=6, patient_name="RENAMED^EPSILON"))

        # ADT^A40: the exam follows the surviving patient (PID-3); its row is replaced by
        # version + 2, which outranks the removal of the old key (version + 1).
        survivor = patient("northwind", name="SURVIVOR^EPSILON")
        await send_ok(hl7, b.merge(survivor, exam.patient.mrn, control_id=cid()))
        merged = await watcher.until(delta(exam.accession, version=8))
        assert merged["delta"]["op"] == "upsert"
        assert (merged["delta"]["mrn"], merged["delta"]["patient_name"]) == (
            survivor.mrn,
            "SURVIVOR^EPSILON",
        )

        # OMI^O23 from the other site reaches that tenant's users only.
        lake = await WsClient.open(stack.ws_url, token("t-lk", tenant="lakeside"))
        await lake.subscribe("lk", "lakeside", statuses=[])  # CANCELLED stays in view
        other = planned("LKMED")
        await send_ok(hl7, builder("LKMED").new_order(other, control_id=cid()))
        got = await lake.until(delta(other.accession, version=1))
        assert got["delta"]["tenant"] == "lakeside" and got["delta"]["site"] == "LK-MED"
        await send_ok(hl7, builder("LKMED").status_update(other, S.CANCELLED, control_id=cid()))
        await lake.until(delta(other.accession, status="CANCELLED"))

    # A client connecting now sees the merged exam once, at its last version.
    late = await WsClient.open(stack.ws_url, token("t-nw2", tenant="northwind"))
    snap = await late.subscribe("s", "northwind")
    rows = [r for r in snap["rows"] if r["exam_id"] == exam.accession]
    assert [(r["version"], r["mrn"]) for r in rows] == [(8, survivor.mrn)]
    assert not any(f["delta"].get("tenant") == "lakeside" for f in watcher.frames if "delta" in f)
    for client in (watcher, lake, late):
        await client.close()
