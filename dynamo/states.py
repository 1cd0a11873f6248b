"""The exam workflow, written once: states, priorities and the legal transitions.

SCHEDULED -> ARRIVED -> IN_PROGRESS (scanning) -> COMPLETED (ready to read)
-> PRELIMINARY -> FINAL -> AMENDED, and CANCELLED from any state before a report.
"""

from __future__ import annotations

from enum import StrEnum


class ExamStatus(StrEnum):
    SCHEDULED = "SCHEDULED"
    ARRIVED = "ARRIVED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    PRELIMINARY = "PRELIMINARY"
    FINAL = "FINAL"
    AMENDED = "AMENDED"
    CANCELLED = "CANCELLED"


class Priority(StrEnum):
    STAT = "STAT"
    URGENT = "URGENT"
    ROUTINE = "ROUTINE"


class Modality(StrEnum):
    CT = "CT"
    MR = "MR"
    XR = "XR"
    US = "US"
    NM = "NM"
    MG = "MG"


PRIORITY_RANK: dict[Priority, int] = {Priority.STAT: 0, Priority.URGENT: 1, Priority.ROUTINE: 2}

_S = ExamStatus
TRANSITIONS: dict[ExamStatus, frozenset[ExamStatus]] = {
    _S.SCHEDULED: frozenset({_S.ARRIVED, _S.CANCELLED}),
    _S.ARRIVED: frozenset({_S.IN_PROGRESS, _S.CANCELLED}),
    _S.IN_PROGRESS: frozenset({_S.COMPLETED, _S.CANCELLED}),
    _S.COMPLETED: frozenset({_S.PRELIMINARY, _S.FINAL, _S.CANCELLED}),
    _S.PRELIMINARY: frozenset({_S.FINAL}),
    _S.FINAL: frozenset({_S.AMENDED}),
    _S.AMENDED: frozenset({_S.AMENDED}),
    _S.CANCELLED: frozenset(),
}

# States in which an exam is still somebody's work; the rest are history.
OPEN_STATES: frozenset[ExamStatus] = frozenset(
    {_S.SCHEDULED, _S.ARRIVED, _S.IN_PROGRESS, _S.COMPLETED, _S.PRELIMINARY}
)


def can_transition(current: ExamStatus, target: ExamStatus) -> bool:
    return target in TRANSITIONS[current]


# An exam can be claimed (for reading) in these states.
CLAIMABLE_STATES: frozenset[ExamStatus] = frozenset({_S.COMPLETED, _S.PRELIMINARY})
# Reports: only the claim holder moves an exam into these while a claim is live.
READING_STATES: frozenset[ExamStatus] = frozenset({_S.PRELIMINARY, _S.FINAL, _S.AMENDED})
# Moving into these ends any claim.
CLAIM_ENDING_STATES: frozenset[ExamStatus] = frozenset({_S.FINAL, _S.AMENDED, _S.CANCELLED})
