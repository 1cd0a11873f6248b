"""Pydantic models of the table's items and their mapping to and from DynamoDB items.

Times are integer epoch milliseconds (UTC): they sort, they compare, and the browser
turns them into clocks without parsing.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dynamo import keys
from dynamo.states import PRIORITY_RANK, ExamStatus, Modality, Priority


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class PatientProfile(BaseModel):
    model_config = ConfigDict(frozen=True)

    patient_id: str
    tenant: str
    mrn: str
    name: str  # "FAMILY^GIVEN", as HL7 writes it
    birth_date: str  # YYYY-MM-DD
    sex: str


class Order(BaseModel):
    model_config = ConfigDict(frozen=True)

    order_id: str
    patient_id: str
    tenant: str
    accession: str
    ordering_provider: str
    procedure_code: str
    priority: Priority
    ordered_at: int


class Exam(BaseModel):
    """The STUDY item: what a worklist row is made of."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    site: str
    accession: str
    patient_id: str
    order_id: str
    mrn: str
    patient_name: str
    modality: Modality
    procedure_code: str
    procedure: str
    body_part: str
    subspecialty: str
    priority: Priority
    status: ExamStatus = ExamStatus.SCHEDULED
    scheduled_at: int
    tat_due_at: int
    completed_at: int | None = None
    updated_at: int = Field(default_factory=now_ms)
    version: int = 1
    claimed_by: str | None = None
    claimed_by_name: str | None = None
    claimed_at: int | None = None
    lease_expires_at: int | None = None


# Attributes that are keys or bookkeeping, not fields of the model.
# The claim's fencing token (lock_version, lock_token) never leaves the store.
_KEY_ATTRS = (
    "PK",
    "SK",
    "GSI1PK",
    "GSI1SK",
    "GSI2PK",
    "GSI2SK",
    "entity",
    "lock_version",
    "lock_token",
)


def exam_keys(exam: Exam) -> dict[str, str]:
    return {
        "PK": keys.patient_pk(exam.patient_id),
        "SK": keys.study_sk(exam.accession),
        "GSI1PK": keys.gsi1_pk(exam.tenant, exam.status),
        "GSI1SK": keys.gsi1_sk(PRIORITY_RANK[exam.priority], exam.tat_due_at, exam.accession),
        "GSI2PK": keys.gsi2_pk(exam.tenant, exam.modality),
        "GSI2SK": keys.gsi2_sk(exam.scheduled_at, exam.accession),
    }


def exam_to_item(exam: Exam) -> dict[str, Any]:
    """A plain-Python item (the resource layer's types); None fields are left out."""
    item: dict[str, Any] = {"entity": "STUDY", **exam_keys(exam)}
    item.update(exam.model_dump(mode="json", exclude_none=True))
    return item


def exam_from_item(item: dict[str, Any]) -> Exam:
    data = {k: v for k, v in item.items() if k not in _KEY_ATTRS}
    return Exam.model_validate(data)


def profile_to_item(profile: PatientProfile) -> dict[str, Any]:
    return {
        "PK": keys.patient_pk(profile.patient_id),
        "SK": keys.PROFILE_SK,
        "entity": "PATIENT",
        **profile.model_dump(mode="json"),
    }


def order_to_item(order: Order) -> dict[str, Any]:
    return {
        "PK": keys.patient_pk(order.patient_id),
        "SK": keys.order_sk(order.order_id),
        "entity": "ORDER",
        **order.model_dump(mode="json"),
    }
