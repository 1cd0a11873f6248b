"""The thinnest whole path: a write in DynamoDB reaches a WebSocket client, live."""

from __future__ import annotations

from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from tests.conftest import Stack, token
from tests.support.exams import exam_bundle
from tests.support.wsclient import WsClient


def is_delta_for(exam_id: str):
    return lambda f: f["type"] == "delta" and f["delta"]["exam_id"] == exam_id


async def test_write_reaches_client_with_each_new_version(stack: Stack, store: ExamStore) -> None:
    client = await WsClient.open(stack.ws_url)
    snap = await client.subscribe("s1", "northwind")
    assert snap["type"] == "snapshot" and snap["rows"] == []

    exam, order, profile = exam_bundle("northwind")
    await store.create_exam(exam, order, profile)
    first = await client.until(is_delta_for(exam.accession))
    assert first["sub"] == "s1"
    assert first["delta"]["version"] == 1
    assert first["delta"]["status"] == "SCHEDULED"

    await store.transition(exam.patient_id, exam.accession, ExamStatus.ARRIVED)
    second = await client.until(is_delta_for(exam.accession))
    assert second["delta"]["version"] == 2
    assert second["delta"]["status"] == "ARRIVED"
    # Offsets grow: a client can resume from the last one it saw.
    assert tuple(map(int, second["offset"].split("-"))) > tuple(
        map(int, first["offset"].split("-"))
    )
    await client.close()


async def test_other_tenants_writes_never_reach_the_client(stack: Stack, store: ExamStore) -> None:
    client = await WsClient.open(stack.ws_url)
    await client.subscribe("s1", "northwind")

    other, order, profile = exam_bundle("lakeside", "LK-MED")
    await store.create_exam(other, order, profile)
    await store.transition(other.patient_id, other.accession, ExamStatus.ARRIVED)
    # A later write of our own tenant arrives; nothing of the other tenant came before it.
    mine, order, profile = exam_bundle("northwind")
    await store.create_exam(mine, order, profile)
    await client.until(is_delta_for(mine.accession))
    seen = {f["delta"]["tenant"] for f in client.frames if f["type"] == "delta"}
    assert seen == {"northwind"}

    # Asking for the other tenant's worklist is refused outright.
    refused = await client.subscribe("s2", "lakeside")
    assert refused["type"] == "error" and refused["code"] == "forbidden"

    # The other tenant's exam did reach the cache: its own users see it.
    lake = await WsClient.open(stack.ws_url, token("t-lk", tenant="lakeside"))
    snap = await lake.subscribe("s1")
    assert [r["exam_id"] for r in snap["rows"]] == [other.accession]
    assert snap["rows"][0]["version"] == 2
    await client.close()
    await lake.close()


async def test_snapshot_holds_exams_written_before_connecting(
    stack: Stack, store: ExamStore
) -> None:
    exam, order, profile = exam_bundle("northwind")
    await store.create_exam(exam, order, profile)
    await store.transition(exam.patient_id, exam.accession, ExamStatus.ARRIVED)
    # Wait until the change went through the relay, seen by a first client.
    watcher = await WsClient.open(stack.ws_url)
    await watcher.subscribe("w", "northwind")
    if not any(
        r["exam_id"] == exam.accession and r["version"] == 2 for r in watcher.frames[-1]["rows"]
    ):
        await watcher.until(lambda f: f["type"] == "delta" and f["delta"]["version"] == 2)

    client = await WsClient.open(stack.ws_url)
    snap = await client.subscribe("s1", "northwind")
    assert snap["total"] == 1
    (row,) = snap["rows"]
    assert (row["exam_id"], row["status"], row["version"]) == (exam.accession, "ARRIVED", 2)
    assert "lock_version" not in row and "patient_id" not in row
    await watcher.close()
    await client.close()


async def test_view_filters_rows_and_reports_exams_leaving_it(
    stack: Stack, store: ExamStore
) -> None:
    client = await WsClient.open(stack.ws_url)
    await client.subscribe("arrived", "northwind", statuses=["ARRIVED"])
    exam, order, profile = exam_bundle("northwind")
    await store.create_exam(exam, order, profile)  # SCHEDULED: not in this view
    await store.transition(exam.patient_id, exam.accession, ExamStatus.ARRIVED)
    entered = await client.until(is_delta_for(exam.accession))
    assert entered["delta"]["version"] == 2 and not entered.get("leave")

    await store.transition(exam.patient_id, exam.accession, ExamStatus.IN_PROGRESS)
    left = await client.until(is_delta_for(exam.accession))
    assert left["leave"] is True and left["delta"] == {"exam_id": exam.accession, "version": 3}
    # The SCHEDULED version 1 never reached this view.
    versions = [f["delta"]["version"] for f in client.frames if f["type"] == "delta"]
    assert versions == [2, 3]
    await client.close()
