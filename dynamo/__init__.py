"""The system of record: exams in DynamoDB's single table, and the stream relay."""

from __future__ import annotations

from dynamo.claims import Claim, Claims
from dynamo.deltas import ExamDelta
from dynamo.exceptions import (
    AlreadyClaimed,
    ExamAlreadyExists,
    ExamNotFound,
    InvalidTransition,
    NotClaimable,
    StaleToken,
    StoreError,
    StoreUnavailable,
    VersionConflict,
)
from dynamo.models import Exam, Order, PatientProfile
from dynamo.settings import DynamoSettings
from dynamo.states import ExamStatus, Modality, Priority
from dynamo.store import ExamStore

__all__ = [
    "AlreadyClaimed",
    "Claim",
    "Claims",
    "DynamoSettings",
    "Exam",
    "ExamAlreadyExists",
    "ExamDelta",
    "ExamNotFound",
    "ExamStatus",
    "ExamStore",
    "InvalidTransition",
    "Modality",
    "NotClaimable",
    "Order",
    "PatientProfile",
    "Priority",
    "StaleToken",
    "StoreError",
    "StoreUnavailable",
    "VersionConflict",
]
