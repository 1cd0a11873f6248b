"""A parsed message, read through its site's mapping, becomes one command.

    ORM^O01 / OMI^O23  ORC-1 NW -> NewOrder; XO -> ChangeOrder; SC -> MoveExam (ORC-5);
                       CA, DC -> MoveExam(CANCELLED)
    ORU^R01            OBR-25 -> MoveExam (P PRELIMINARY, F FINAL, C AMENDED, X CANCELLED)
    ADT^A08            UpdatePatient (name, birth date, sex)
    ADT^A40            MergePatient: PID-3 is the patient who SURVIVES, MRG-1 the prior
                       identifier whose exams move to it

Validation problems are `ApplicationRejected` (AE) naming the field; nothing here
touches the store.
"""

from __future__ import annotations

from dataclasses import dataclass

from dynamo import keys
from dynamo.models import Exam, Order, PatientProfile, now_ms
from dynamo.states import ExamStatus, Modality, Priority
from hl7_ingest.exceptions import (
    DATA_TYPE_ERROR,
    DUPLICATE_KEY,
    TABLE_VALUE_NOT_FOUND,
    UNSUPPORTED_EVENT_CODE,
    ApplicationRejected,
    MessageRejected,
)
from hl7_ingest.mapping import SiteMapping, parse_date, parse_timestamp
from hl7_ingest.message import Message

__all__ = [
    "ChangeOrder",
    "Command",
    "MergePatient",
    "MoveExam",
    "NewOrder",
    "UpdatePatient",
    "interpret",
    "patient_id_of",
]


def patient_id_of(tenant: str, mrn: str) -> str:
    """The patient's id in the store: one rule, `dynamo.keys.patient_id`."""
    return keys.patient_id(tenant, mrn)


@dataclass(frozen=True)
class NewOrder:
    exam: Exam
    order: Order
    profile: PatientProfile
    # ORC-5 of the NW (an order placed for a patient already in the scanner), if beyond
    # SCHEDULED; `status_field` names where it was read.
    status: ExamStatus | None
    status_field: str
    accession_field: str


@dataclass(frozen=True)
class ChangeOrder:
    tenant: str
    accession: str
    accession_field: str
    priority: Priority | None
    scheduled_at: int | None
    procedure_code: str | None
    procedure: str | None
    body_part: str | None
    subspecialty: str | None
    modality: Modality | None
    turnaround_minutes: dict[Priority, int]


@dataclass(frozen=True)
class MoveExam:
    tenant: str
    accession: str
    accession_field: str
    target: ExamStatus | None  # None: acknowledged without a change (HD, on hold)
    status_field: str


@dataclass(frozen=True)
class UpdatePatient:
    tenant: str
    patient_id: str
    mrn: str
    name: str | None
    birth_date: str | None
    sex: str | None


@dataclass(frozen=True)
class MergePatient:
    tenant: str
    survivor: PatientProfile
    prior_patient_id: str
    prior_field: str


Command = NewOrder | ChangeOrder | MoveExam | UpdatePatient | MergePatient


def interpret(message: Message, mapping: SiteMapping) -> Command:
    kind = f"{message.msh.get(9, 1)}^{message.msh.get(9, 2)}"
    if kind in ("ORM^O01", "OMI^O23"):
        return _order(message, mapping)
    if kind == "ORU^R01":
        return _result(message, mapping)
    if kind == "ADT^A08":
        return _patient_update(message, mapping)
    if kind == "ADT^A40":
        return _merge(message, mapping)
    raise MessageRejected(UNSUPPORTED_EVENT_CODE, "MSH-9", f"message type {kind} is not supported")


def _accession(message: Message, mapping: SiteMapping) -> tuple[str, str]:
    return mapping.value(message, "accession", required=True)


def _order(message: Message, mapping: SiteMapping) -> Command:
    control, control_path = mapping.value(message, "order_control", required=True)
    control = control.upper()
    accession, accession_field = _accession(message, mapping)
    if control == "NW":
        return _new_order(message, mapping, accession, accession_field)
    if control == "XO":
        return _change_order(message, mapping, accession, accession_field)
    if control == "SC":
        status = mapping.code(message, "order_status", "order_status")
        _, status_field = mapping.value(message, "order_status")
        return MoveExam(mapping.tenant, accession, accession_field, status, status_field)
    if control in ("CA", "DC"):
        return MoveExam(
            mapping.tenant, accession, accession_field, ExamStatus.CANCELLED, control_path
        )
    raise ApplicationRejected(
        TABLE_VALUE_NOT_FOUND,
        control_path,
        f"{control_path} order control is not one of NW, XO, SC, CA, DC",
    )


def _priority(message: Message, mapping: SiteMapping) -> Priority:
    code: Priority | None = mapping.code(message, "priority", "priority", required=False)
    return code or mapping.default_priority


def _modality(message: Message, mapping: SiteMapping) -> Modality:
    modality: Modality = mapping.code(message, "modality", "modality")
    return modality


def _new_order(
    message: Message, mapping: SiteMapping, accession: str, accession_field: str
) -> NewOrder:
    tenant = mapping.tenant
    mrn, _ = mapping.value(message, "mrn", required=True)
    patient_id = patient_id_of(tenant, mrn)
    code, _ = mapping.value(message, "procedure_code", required=True)
    text, _ = mapping.value(message, "procedure_text")
    info = mapping.procedures.get(code)
    modality = _modality(message, mapping)
    priority = _priority(message, mapping)
    received = mapping.timestamp(message, "ordered_at") or _message_time(message, mapping)
    scheduled = mapping.timestamp(message, "scheduled_at") or received
    placer, _ = mapping.value(message, "placer_order")
    profile = _profile(message, mapping, patient_id, mrn)
    order = Order(
        order_id=placer or accession,
        patient_id=patient_id,
        tenant=tenant,
        accession=accession,
        ordering_provider=mapping.person(message, "ordering_provider", first=2),
        procedure_code=code,
        priority=priority,
        ordered_at=received,
    )
    exam = Exam(
        tenant=tenant,
        site=mapping.site_of(message),
        accession=accession,
        patient_id=patient_id,
        order_id=order.order_id,
        mrn=mrn,
        patient_name=profile.name,
        modality=modality,
        procedure_code=code,
        procedure=text or (info.text if info else code),
        body_part=info.body_part if info else "",
        subspecialty=info.subspecialty if info else mapping.default_subspecialty,
        priority=priority,
        scheduled_at=scheduled,
        tat_due_at=scheduled + mapping.turnaround_minutes.get(priority, 1440) * 60_000,
    )
    status: ExamStatus | None = None
    status_field = ""
    if mapping.value(message, "order_status")[0]:
        status = mapping.code(message, "order_status", "order_status")
        _, status_field = mapping.value(message, "order_status")
    return NewOrder(exam, order, profile, status, status_field, accession_field)


def _message_time(message: Message, mapping: SiteMapping) -> int:
    value = message.msh.get(7)
    if value:
        try:
            return parse_timestamp(value, mapping.zone)
        except ValueError:
            raise ApplicationRejected(
                DATA_TYPE_ERROR, "MSH-7", "MSH-7 is not an HL7 date/time"
            ) from None
    return now_ms()


def _change_order(
    message: Message, mapping: SiteMapping, accession: str, accession_field: str
) -> ChangeOrder:
    code, _ = mapping.value(message, "procedure_code")
    text, _ = mapping.value(message, "procedure_text")
    info = mapping.procedures.get(code) if code else None
    modality = _modality(message, mapping) if mapping.value(message, "modality")[0] else None
    priority = _priority(message, mapping) if mapping.value(message, "priority")[0] else None
    return ChangeOrder(
        tenant=mapping.tenant,
        accession=accession,
        accession_field=accession_field,
        priority=priority,
        scheduled_at=mapping.timestamp(message, "scheduled_at"),
        procedure_code=code or None,
        procedure=(text or (info.text if info else code)) if code else None,
        body_part=(info.body_part if info else "") if code else None,
        subspecialty=(info.subspecialty if info else mapping.default_subspecialty)
        if code
        else None,
        modality=modality,
        turnaround_minutes=dict(mapping.turnaround_minutes),
    )


def _result(message: Message, mapping: SiteMapping) -> MoveExam:
    accession, accession_field = _accession(message, mapping)
    status: ExamStatus = mapping.code(message, "result_status", "result_status")
    _, status_field = mapping.value(message, "result_status")
    return MoveExam(mapping.tenant, accession, accession_field, status, status_field)


def _birth_date(message: Message, mapping: SiteMapping) -> str | None:
    value, path = mapping.value(message, "birth_date")
    if not value:
        return None
    try:
        return parse_date(value)
    except ValueError:
        raise ApplicationRejected(DATA_TYPE_ERROR, path, f"{path} is not an HL7 date") from None


def _profile(message: Message, mapping: SiteMapping, patient_id: str, mrn: str) -> PatientProfile:
    sex, _ = mapping.value(message, "sex")
    return PatientProfile(
        patient_id=patient_id,
        tenant=mapping.tenant,
        mrn=mrn,
        name=mapping.person(message, "patient_name", first=1),
        birth_date=_birth_date(message, mapping) or "",
        sex=sex.upper() or "U",
    )


def _patient_update(message: Message, mapping: SiteMapping) -> UpdatePatient:
    mrn, _ = mapping.value(message, "mrn", required=True)
    name = mapping.person(message, "patient_name", first=1)
    sex, _ = mapping.value(message, "sex")
    return UpdatePatient(
        tenant=mapping.tenant,
        patient_id=patient_id_of(mapping.tenant, mrn),
        mrn=mrn,
        name=name or None,
        birth_date=_birth_date(message, mapping),
        sex=sex.upper() or None,
    )


def _merge(message: Message, mapping: SiteMapping) -> MergePatient:
    # PID-3 names the patient who remains; MRG-1 the identifier being retired.
    survivor_mrn, _ = mapping.value(message, "mrn", required=True)
    prior_mrn, prior_field = mapping.value(message, "prior_mrn", required=True)
    if prior_mrn == survivor_mrn:
        raise ApplicationRejected(
            DUPLICATE_KEY,
            prior_field,
            f"{prior_field} (prior identifier) is the surviving patient's own identifier",
        )
    survivor = _profile(message, mapping, patient_id_of(mapping.tenant, survivor_mrn), survivor_mrn)
    return MergePatient(
        mapping.tenant, survivor, patient_id_of(mapping.tenant, prior_mrn), prior_field
    )
