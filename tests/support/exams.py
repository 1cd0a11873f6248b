"""Synthetic exams for tests (no real patient data, ever), and exams put in a given state
through the real store."""

from __future__ import annotations

import itertools
from typing import Any

from dynamo.models import Exam, Order, PatientProfile, now_ms
from dynamo.serde import from_attrs
from dynamo.states import ExamStatus, Modality, Priority
from dynamo.store import ExamStore

_n = itertools.count(1)


def exam_bundle(
    tenant: str = "northwind",
    site: str = "NW-GEN",
    *,
    modality: Modality = Modality.CT,
    priority: Priority = Priority.ROUTINE,
    subspecialty: str = "neuro",
) -> tuple[Exam, Order, PatientProfile]:
    n = next(_n)
    now = now_ms()
    patient_id = f"p-{tenant}-{n}"
    accession = f"T{tenant[:2].upper()}{n:07d}"
    profile = PatientProfile(
        patient_id=patient_id,
        tenant=tenant,
        mrn=f"TST{n:07d}",
        name="TESTPATIENT^ALPHA",
        birth_date="1970-01-01",
        sex="O",
    )
    order = Order(
        order_id=f"o-{n}",
        patient_id=patient_id,
        tenant=tenant,
        accession=accession,
        ordering_provider="TESTDOC^ORDERING",
        procedure_code="70450",
        priority=priority,
        ordered_at=now,
    )
    exam = Exam(
        tenant=tenant,
        site=site,
        accession=accession,
        patient_id=patient_id,
        order_id=order.order_id,
        mrn=profile.mrn,
        patient_name=profile.name,
        modality=modality,
        procedure_code="70450",
        procedure="CT head without contrast",
        body_part="HEAD",
        subspecialty=subspecialty,
        priority=priority,
        scheduled_at=now,
        tat_due_at=now + 3_600_000,
    )
    return exam, order, profile


S = ExamStatus
# A shortest legal path from SCHEDULED to each state.
PATH_TO: dict[ExamStatus, list[ExamStatus]] = {
    S.SCHEDULED: [],
    S.ARRIVED: [S.ARRIVED],
    S.IN_PROGRESS: [S.ARRIVED, S.IN_PROGRESS],
    S.COMPLETED: [S.ARRIVED, S.IN_PROGRESS, S.COMPLETED],
    S.PRELIMINARY: [S.ARRIVED, S.IN_PROGRESS, S.COMPLETED, S.PRELIMINARY],
    S.FINAL: [S.ARRIVED, S.IN_PROGRESS, S.COMPLETED, S.FINAL],
    S.AMENDED: [S.ARRIVED, S.IN_PROGRESS, S.COMPLETED, S.FINAL, S.AMENDED],
    S.CANCELLED: [S.CANCELLED],
}


async def exam_in(store: ExamStore, status: ExamStatus, **kw: Any) -> Exam:
    exam, order, profile = exam_bundle(**kw)
    await store.create_exam(exam, order, profile)
    for step in PATH_TO[status]:
        exam = await store.transition(exam.patient_id, exam.accession, step)
    return exam


async def raw_item(store: ExamStore, exam: Exam) -> dict[str, Any]:
    resp = await store.call(
        "get_item", TableName=store.table, Key=store.key(exam.patient_id, exam.accession)
    )
    return from_attrs(resp["Item"])
