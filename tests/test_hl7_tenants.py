"""Patient keys cannot collide across tenants, and every patient operation stays inside
its tenant: over real MLLP into DynamoDB Local. All data synthetic."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pydantic import ValidationError

from dynamo import keys
from dynamo.exceptions import ForeignPatient
from dynamo.models import Exam, PatientProfile
from dynamo.patients import get_profile, patient_studies, update_patient
from dynamo.store import ExamStore
from hl7_ingest.mapping import Mappings
from loadtest.hl7.builder import MessageBuilder
from tests.support.exams import exam_bundle
from tests.support.hl7 import NW, Running, cid, planned, running, site_copy

# "north" + "wind-1" and "north-wind" + "1": one id under `f"{tenant}-{mrn}"`.
NORTH = site_copy(NW, "NORTH", "north")
NORTHWIND = site_copy(NW, "NWIND", "north-wind")
MAPPINGS = Mappings([NORTH, NORTHWIND])


def who(tenant: str, mrn: str, name: str) -> PatientProfile:
    return PatientProfile(
        patient_id=keys.patient_id(tenant, mrn),
        tenant=tenant,
        mrn=mrn,
        name=name,
        birth_date="1970-01-01",
        sex="O",
    )


async def send(hl7: Running, text: str) -> str:
    async with hl7.client() as client:
        ack = await client.send(text)
    assert ack.code == "AA", ack
    return ack.code


def test_patient_ids_of_different_tenants_never_collide() -> None:
    assert keys.patient_id("north", "wind-1") != keys.patient_id("north-wind", "1")
    with pytest.raises(ValueError):
        keys.patient_id("north#wind", "1")
    with pytest.raises(ValidationError, match="tenant"):
        site_copy(NW, "BAD", "Bad#Tenant")


async def test_a08_of_one_tenant_leaves_the_other_tenants_look_alike_alone(
    store: ExamStore,
) -> None:
    a = who("north", "wind-1", "NORTH^ALPHA")
    b = who("north-wind", "1", "WIND^BRAVO")
    exam_a = replace(planned("NWGEN", who=a), tenant="north")
    exam_b = replace(planned("NWGEN", who=b), tenant="north-wind")
    async with running(store, MAPPINGS) as hl7:
        await send(hl7, MessageBuilder(NORTH).new_order(exam_a, control_id=cid()))
        await send(hl7, MessageBuilder(NORTHWIND).new_order(exam_b, control_id=cid()))
        renamed = b.model_copy(update={"name": "WIND^RENAMED"})
        await send(hl7, MessageBuilder(NORTHWIND).patient_update(renamed, control_id=cid()))
        # A40 in north-wind: patient "1" survives, "9" retires. North is untouched.
        await send(hl7, MessageBuilder(NORTHWIND).merge(renamed, "9", control_id=cid()))
    got_a = await store.find_exam("north", exam_a.accession)
    got_b = await store.find_exam("north-wind", exam_b.accession)
    assert got_a.patient_id != got_b.patient_id
    assert (got_a.patient_name, got_a.version) == ("NORTH^ALPHA", 1)
    assert got_b.patient_name == "WIND^RENAMED"
    profile_a = await get_profile(store, "north", got_a.patient_id)
    assert profile_a is not None and profile_a.name == "NORTH^ALPHA"
    assert await get_profile(store, "north-wind", got_a.patient_id) is None


async def _legacy_exam(store: ExamStore, tenant: str, patient_id: str, name: str) -> Exam:
    """An exam stored under a former `{tenant}-{mrn}` id that another tenant's id equals."""
    exam, order, profile = exam_bundle(tenant)
    profile = profile.model_copy(update={"patient_id": patient_id, "name": name})
    order = order.model_copy(update={"patient_id": patient_id})
    exam = exam.model_copy(update={"patient_id": patient_id, "patient_name": name})
    return await store.create_exam(exam, order, profile)


async def test_patient_operations_filter_by_tenant_even_on_a_shared_partition(
    store: ExamStore,
) -> None:
    legacy = "north-wind-1"  # what both tenants' patients were called before
    theirs = await _legacy_exam(store, "north-wind", legacy, "WIND^BRAVO")
    assert await patient_studies(store, "north", legacy) == []
    assert await get_profile(store, "north", legacy) is None
    with pytest.raises(ForeignPatient):
        await update_patient(store, "north", legacy, "wind-1", name="NORTH^HIJACK")
    got = await store.get_exam(legacy, theirs.accession)
    assert (got.patient_name, got.version) == ("WIND^BRAVO", theirs.version)
    profile = await get_profile(store, "north-wind", legacy)
    assert profile is not None and profile.name == "WIND^BRAVO"
