"""The normalized change a worklist consumes: one exam, one version, minimum fields.

A delta never carries the claim's fencing token, nor patient data beyond what a
worklist row shows (name and MRN, which the page masks by default).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from dynamo.models import Exam
from dynamo.review import Review
from dynamo.states import ExamStatus, Modality, Priority


class ExamDelta(BaseModel):
    model_config = ConfigDict(frozen=True)

    op: Literal["upsert", "remove"]
    tenant: str
    site: str
    exam_id: str  # the accession number
    version: int
    status: ExamStatus
    priority: Priority
    modality: Modality
    procedure: str
    # The CPT code, for RVU balancing (`orchestration.rvu_of`); not PHI. Empty in rows
    # cached before the field existed.
    procedure_code: str = ""
    body_part: str
    subspecialty: str
    mrn: str
    patient_name: str
    scheduled_at: int
    tat_due_at: int
    completed_at: int | None = None
    updated_at: int
    claimed_by: str | None = None
    claimed_by_name: str | None = None
    claimed_at: int | None = None
    lease_expires_at: int | None = None

    @classmethod
    def from_exam(cls, exam: Exam, op: Literal["upsert", "remove"] = "upsert") -> ExamDelta:
        return cls(
            op=op,
            tenant=exam.tenant,
            site=exam.site,
            exam_id=exam.accession,
            version=exam.version,
            status=exam.status,
            priority=exam.priority,
            modality=exam.modality,
            procedure=exam.procedure,
            procedure_code=exam.procedure_code,
            body_part=exam.body_part,
            subspecialty=exam.subspecialty,
            mrn=exam.mrn,
            patient_name=exam.patient_name,
            scheduled_at=exam.scheduled_at,
            tat_due_at=exam.tat_due_at,
            completed_at=exam.completed_at,
            updated_at=exam.updated_at,
            claimed_by=exam.claimed_by,
            claimed_by_name=exam.claimed_by_name,
            claimed_at=exam.claimed_at,
            lease_expires_at=exam.lease_expires_at,
        )


class ReviewDelta(Review):
    """A peer review changed: the review as stored, named by `exam_id` like an exam's
    delta. Carries everything a coordinator sees; the gateway strips what a reviewer or a
    reader must not see (blinding) before it leaves."""

    kind: Literal["review"] = "review"
    op: Literal["upsert", "remove"] = "upsert"
    exam_id: str


class DirectoryChange(BaseModel):
    """A tenant, site or person of the directory changed (a notice, not a row: it
    carries no privileges, only what to read again)."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    kind: str  # "tenant" | "site" | "person"
    key: str  # the tenant's code, the site's code, the person's sub
    version: int
