"""The exam store against DynamoDB Local: the state machine, versions, cold-start reads."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dynamo.exceptions import ExamAlreadyExists, ExamNotFound, InvalidTransition, VersionConflict
from dynamo.states import OPEN_STATES, TRANSITIONS, ExamStatus, Modality, Priority
from dynamo.store import ExamStore
from tests.support.exams import exam_bundle, exam_in, raw_item

S = ExamStatus


async def test_every_legal_transition_lands_and_bumps_the_version(store: ExamStore) -> None:
    for source, targets in TRANSITIONS.items():
        for target in targets:
            exam = await exam_in(store, source)
            moved = await store.transition(exam.patient_id, exam.accession, target)
            assert (moved.status, moved.version) == (target, exam.version + 1)
            item = await raw_item(store, moved)
            # The status board index follows the state.
            assert item["GSI1PK"] == f"TENANT#northwind#STATUS#{target}"


async def test_every_illegal_transition_is_refused_and_changes_nothing(store: ExamStore) -> None:
    for source in ExamStatus:
        exam = await exam_in(store, source)
        before = await raw_item(store, exam)
        for target in ExamStatus:
            if target in TRANSITIONS[source]:
                continue
            with pytest.raises(InvalidTransition) as err:
                await store.transition(exam.patient_id, exam.accession, target)
            assert err.value.current == source and err.value.code == "invalid_transition"
            assert source.value in str(err.value)
        assert await raw_item(store, exam) == before


async def test_a_write_conditioned_on_an_old_version_is_refused(store: ExamStore) -> None:
    exam = await exam_in(store, S.SCHEDULED)
    await store.transition(exam.patient_id, exam.accession, S.ARRIVED, expected_version=1)
    with pytest.raises(VersionConflict) as err:
        await store.transition(exam.patient_id, exam.accession, S.CANCELLED, expected_version=1)
    assert err.value.current == 2
    assert (await store.get_exam(exam.patient_id, exam.accession)).status == S.ARRIVED


async def test_a_walk_from_the_held_exam_writes_once_per_move_and_a_stale_hold_is_refused(
    store: ExamStore,
) -> None:
    """`advance` (the HL7 ingest's walk, the benchmark's writer) moves from the exam the
    previous write returned, with no read; one it holds that someone else moved since is
    refused with the version it saw, and the exam keeps the other writer's move."""
    exam = await exam_in(store, S.SCHEDULED)
    calls: list[str] = []
    call = store.call

    async def counted(operation: str, **kwargs: Any) -> Any:
        calls.append(operation)
        return await call(operation, **kwargs)

    store.call = counted  # type: ignore[method-assign]
    for step in (S.ARRIVED, S.IN_PROGRESS):
        exam = await store.advance(exam, step)
    assert (exam.status, exam.version) == (S.IN_PROGRESS, 3)
    assert calls == ["update_item", "update_item"], "one write per move, no read"
    store.call = call  # type: ignore[method-assign]

    held = exam
    await store.transition(exam.patient_id, exam.accession, S.CANCELLED)
    with pytest.raises(VersionConflict) as err:
        await store.advance(held, S.COMPLETED)
    assert (err.value.expected, err.value.current) == (3, 4)
    now = await store.get_exam(exam.patient_id, exam.accession)
    assert (now.status, now.version) == (S.CANCELLED, 4)
    with pytest.raises(InvalidTransition):
        await store.advance(now, S.COMPLETED)


async def test_concurrent_writers_never_lose_an_update(store: ExamStore) -> None:
    """Ten writers race to move one exam along; every landed write has its own version."""
    exam = await exam_in(store, S.SCHEDULED)
    steps = [S.ARRIVED, S.IN_PROGRESS, S.COMPLETED, S.FINAL]

    async def writer() -> list[int]:
        landed = []
        for step in steps:
            try:
                landed.append(
                    (await store.transition(exam.patient_id, exam.accession, step)).version
                )
            except (InvalidTransition, VersionConflict):
                pass
        return landed

    results = await asyncio.gather(*(writer() for _ in range(10)))
    versions = sorted(v for r in results for v in r)
    assert versions == [2, 3, 4, 5], "each move landed exactly once"
    final = await store.get_exam(exam.patient_id, exam.accession)
    assert (final.status, final.version) == (S.FINAL, 5)


async def test_an_accession_is_created_once(store: ExamStore) -> None:
    exam, order, profile = exam_bundle()
    await store.create_exam(exam, order, profile)
    with pytest.raises(ExamAlreadyExists):
        await store.create_exam(exam, order, profile)
    assert await store.locate("northwind", exam.accession) == exam.patient_id
    with pytest.raises(ExamNotFound):
        await store.locate("northwind", "NOPE0000")
    with pytest.raises(ExamNotFound):
        await store.locate("lakeside", exam.accession)  # accessions are per tenant


async def test_open_exams_come_from_the_indexes_across_pages(store: ExamStore) -> None:
    open_ones = []
    for i in range(30):
        status = [S.SCHEDULED, S.COMPLETED, S.PRELIMINARY][i % 3]
        open_ones.append((await exam_in(store, status)).accession)
    done = await exam_in(store, S.FINAL)
    other = await exam_in(store, S.COMPLETED, tenant="lakeside", site="LK-MED")

    calls = 0
    original = store.call

    async def counting(operation: str, **kwargs: Any) -> Any:
        nonlocal calls
        assert operation != "scan", "cold start must never scan"
        if operation == "query":
            calls += 1
            kwargs["Limit"] = 4  # force pagination
        return await original(operation, **kwargs)

    store.call = counting  # type: ignore[method-assign]
    found = await store.open_exams("northwind")
    assert sorted(e.accession for e in found) == sorted(open_ones)
    assert done.accession not in {e.accession for e in found}
    assert other.accession not in {e.accession for e in found}
    assert calls > len(OPEN_STATES), "pages were followed"


async def test_status_index_lists_the_most_urgent_first(store: ExamStore) -> None:
    routine = await exam_in(store, S.COMPLETED, priority=Priority.ROUTINE)
    stat = await exam_in(store, S.COMPLETED, priority=Priority.STAT)
    got = [e.accession async for e in store.exams_in_status("northwind", S.COMPLETED)]
    assert got == [stat.accession, routine.accession]


async def test_modality_index_finds_a_scheduled_window(store: ExamStore) -> None:
    ct = await exam_in(store, S.SCHEDULED, modality=Modality.CT)
    mr = await exam_in(store, S.SCHEDULED, modality=Modality.MR)
    got = await store.exams_by_modality(
        "northwind", Modality.CT, ct.scheduled_at - 1000, ct.scheduled_at + 1000
    )
    assert [e.accession for e in got] == [ct.accession]
    assert mr.accession not in {e.accession for e in got}
    empty = await store.exams_by_modality(
        "northwind", Modality.CT, ct.scheduled_at + 1000, ct.scheduled_at + 2000
    )
    assert empty == []
