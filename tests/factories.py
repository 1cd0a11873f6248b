"""Synthetic exams for tests (no real patient data, ever)."""

from __future__ import annotations

import itertools

from dynamo.models import Exam, Order, PatientProfile, now_ms
from dynamo.states import Modality, Priority

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
