"""The system of record: exams in DynamoDB's single table, and the stream relay."""

from __future__ import annotations

from dynamo.deltas import ExamDelta
from dynamo.exceptions import (
    ExamAlreadyExists,
    ExamNotFound,
    InvalidTransition,
    StoreError,
    VersionConflict,
)
from dynamo.models import Exam, Order, PatientProfile
from dynamo.settings import DynamoSettings
from dynamo.states import ExamStatus, Modality, Priority
from dynamo.store import ExamStore

__all__ = [
    "DynamoSettings",
    "Exam",
    "ExamAlreadyExists",
    "ExamDelta",
    "ExamNotFound",
    "ExamStatus",
    "ExamStore",
    "InvalidTransition",
    "Modality",
    "Order",
    "PatientProfile",
    "Priority",
    "StoreError",
    "VersionConflict",
]
