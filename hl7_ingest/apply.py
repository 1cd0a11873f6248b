"""Commands -> store writes, with the exam state machine's rules.

A status the RIS reports is reached by legal moves only: when it skips states (SCHEDULED
then CM), the exam walks forward through them (ARRIVED, IN_PROGRESS, COMPLETED), one
conditional write each, so every worklist sees each step. A status the exam already has
is acknowledged without a write, which makes a message applied twice (after a crash
between the write and the dedupe record) harmless. A move the state machine forbids is
an AE naming the exam's current state.

Store errors become HL7 answers here: unknown accession -> AE 204, illegal move -> AE
207, claimed by a radiologist -> AE 206. A store that stays unavailable is not an
answer at all (`NotAcknowledged`): the sender keeps the message and resends.
"""

from __future__ import annotations

from collections import deque

from dynamo.exceptions import (
    AlreadyClaimed,
    ExamAlreadyExists,
    ExamNotFound,
    ForeignPatient,
    InvalidTransition,
    PermanentStoreError,
    StoreUnavailable,
    VersionConflict,
)
from dynamo.models import Exam
from dynamo.patients import merge_patients, revise_exam, update_patient
from dynamo.states import TRANSITIONS, ExamStatus
from dynamo.store import ExamStore
from hl7_ingest.exceptions import (
    DUPLICATE_KEY,
    INTERNAL_ERROR,
    RECORD_LOCKED,
    UNKNOWN_KEY,
    ApplicationRejected,
    NotAcknowledged,
)
from hl7_ingest.interpret import (
    ChangeOrder,
    Command,
    MergePatient,
    MoveExam,
    NewOrder,
    UpdatePatient,
)

__all__ = ["apply", "path_to"]

_RETRIES = 5


def path_to(current: ExamStatus, target: ExamStatus) -> list[ExamStatus] | None:
    """The shortest legal walk from `current` to `target` ([] when already there; None
    when the state machine has no way). CANCELLED is only ever a direct move, never a
    step on the way; AMENDED -> AMENDED is a new amendment, not "already there"."""
    if current == target and target != ExamStatus.AMENDED:
        return []
    if target == ExamStatus.CANCELLED:
        return [target] if target in TRANSITIONS[current] else None
    seen = {current}
    queue: deque[tuple[ExamStatus, list[ExamStatus]]] = deque([(current, [])])
    while queue:
        state, walked = queue.popleft()
        for nxt in sorted(TRANSITIONS[state]):
            if nxt == ExamStatus.CANCELLED:
                continue
            if nxt == target:
                return [*walked, nxt]
            if nxt not in seen:
                seen.add(nxt)
                queue.append((nxt, [*walked, nxt]))
    return None


async def apply(store: ExamStore, command: Command) -> str:
    """Apply one command; returns a short summary for the log (no patient data)."""
    try:
        if isinstance(command, NewOrder):
            return await _new_order(store, command)
        if isinstance(command, MoveExam):
            return await _move(store, command)
        if isinstance(command, ChangeOrder):
            return await _change(store, command)
        if isinstance(command, UpdatePatient):
            _, written = await update_patient(
                store,
                command.tenant,
                command.patient_id,
                command.mrn,
                name=command.name,
                birth_date=command.birth_date,
                sex=command.sex,
            )
            return f"patient profile updated, {len(written)} open exams renamed"
        if isinstance(command, MergePatient):
            moved = await merge_patients(
                store, command.tenant, command.survivor, command.prior_patient_id
            )
            return f"patients merged, {len(moved)} exams moved to the survivor"
    except ForeignPatient as exc:
        raise ApplicationRejected(UNKNOWN_KEY, "PID-3", exc.reason) from None
    except StoreUnavailable as exc:
        raise NotAcknowledged(exc.reason) from None
    except VersionConflict as exc:
        # Kept losing races with other writers: let the sender try again later.
        raise NotAcknowledged(exc.reason) from None
    except PermanentStoreError as exc:
        raise ApplicationRejected(INTERNAL_ERROR, "", exc.reason) from None
    raise TypeError(f"not a command: {type(command).__name__}")


async def _find(store: ExamStore, tenant: str, accession: str, field: str) -> Exam:
    try:
        return await store.find_exam(tenant, accession)
    except ExamNotFound:
        pass
    try:
        # The cached location may predate a merge that moved the exam.
        patient_id = await store.locate(tenant, accession, fresh=True)
        return await store.get_exam(patient_id, accession)
    except ExamNotFound:
        raise ApplicationRejected(
            UNKNOWN_KEY, field, f"unknown order: no exam with accession {accession}"
        ) from None


async def _new_order(store: ExamStore, command: NewOrder) -> str:
    exam = command.exam
    try:
        created = await store.create_exam(exam, command.order, command.profile)
        summary = f"exam {exam.accession} created"
    except ExamAlreadyExists:
        created = await _find(store, exam.tenant, exam.accession, command.accession_field)
        if created.patient_id != exam.patient_id:
            raise ApplicationRejected(
                DUPLICATE_KEY,
                command.accession_field,
                f"accession {exam.accession} already belongs to another patient's order",
            ) from None
        summary = f"exam {exam.accession} already existed"
    if command.status is not None and command.status != ExamStatus.SCHEDULED:
        moved = await _walk(store, created, command.status, command.status_field)
        summary += f", now {moved.status}"
    return summary


async def _move(store: ExamStore, command: MoveExam) -> str:
    exam = await _find(store, command.tenant, command.accession, command.accession_field)
    if command.target is None:
        return f"exam {exam.accession} {exam.status}: status without a worklist state, no change"
    before = exam.status
    moved = await _walk(store, exam, command.target, command.status_field)
    if moved.version == exam.version:
        return f"exam {exam.accession} already {moved.status}"
    return f"exam {exam.accession} {before} -> {moved.status}"


async def _walk(store: ExamStore, exam: Exam, target: ExamStatus, field: str) -> Exam:
    for _ in range(_RETRIES):
        steps = path_to(exam.status, target)
        if steps is None:
            raise ApplicationRejected(
                INTERNAL_ERROR,
                field,
                f"exam {exam.accession} is {exam.status}; it cannot become {target}",
            )
        try:
            for step in steps:
                exam = await store.advance(exam, step)
            return exam
        except VersionConflict:
            # Someone else wrote the exam meanwhile: plan again from what it is now.
            exam = await store.get_exam(exam.patient_id, exam.accession)
        except AlreadyClaimed as exc:
            raise ApplicationRejected(RECORD_LOCKED, field, exc.reason) from None
    raise VersionConflict(exam.accession, exam.version, None)


async def _change(store: ExamStore, command: ChangeOrder) -> str:
    for _ in range(_RETRIES):
        exam = await _find(store, command.tenant, command.accession, command.accession_field)
        changes: dict[str, object] = {}
        if command.priority is not None and command.priority != exam.priority:
            changes["priority"] = command.priority
        if command.scheduled_at is not None and command.scheduled_at != exam.scheduled_at:
            changes["scheduled_at"] = command.scheduled_at
        if command.procedure_code is not None and command.procedure_code != exam.procedure_code:
            changes["procedure_code"] = command.procedure_code
            changes["procedure"] = command.procedure
            changes["body_part"] = command.body_part
            changes["subspecialty"] = command.subspecialty
        if command.modality is not None and command.modality != exam.modality:
            changes["modality"] = command.modality
        if not changes:
            return f"exam {exam.accession} order unchanged"
        if "priority" in changes or "scheduled_at" in changes:
            priority = command.priority or exam.priority
            scheduled = command.scheduled_at or exam.scheduled_at
            changes["tat_due_at"] = (
                scheduled + command.turnaround_minutes.get(priority, 1440) * 60_000
            )
        try:
            revised = await revise_exam(store, exam, **changes)
        except VersionConflict:
            continue
        except InvalidTransition:
            raise ApplicationRejected(
                INTERNAL_ERROR,
                "ORC-1",
                f"exam {exam.accession} is {exam.status}; procedure, schedule and modality"
                " change only while it is SCHEDULED or ARRIVED, priority while it is open",
            ) from None
        fields = ", ".join(sorted(k for k in changes if k != "tat_due_at"))
        return f"exam {revised.accession} order changed ({fields})"
    raise VersionConflict(command.accession, -1, None)
