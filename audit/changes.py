"""Stream records -> audit rows: what changed, who did it, when. Pure functions.

One rule for the worker and the Lambda path. A record is read with both images
(NEW_AND_OLD_IMAGES); what a change *was* is read off the difference:

    exam action   how it shows in the images
    created       INSERT of a STUDY item
    status        status changed by a system (HL7, the scanner, the simulator)
    sign          status moved into a report state, `reported_by` = the claim's holder
    claim         claimed_by set (holder: whoever held an expired lease before)
    reclaim       the holder claimed again (a reloaded browser: new token)
    renew         the holder's lease extended
    release       the holder gave the exam back
    expire        the claim ended after its lease ran out (the reaper)
    break_lock    the claim ended and the fencing counter moved: an admin's break-lock
                  (who and why come from the AUDIT item written in the same transaction)
    priority      priority changed
    update        anything else (a procedure revised, a patient renamed)
    removed       REMOVE (an ADT merge moves the exam to the survivor's partition)

Patient data (name, MRN, patient_id, birth date) is never read out of an image, and the
claim's fencing token (`lock_token`) never leaves this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from dynamo import keys
from dynamo.review import DISCREPANT
from dynamo.serde import from_attrs
from dynamo.states import READING_STATES

__all__ = [
    "ExamChange",
    "Hl7Message",
    "LockBreak",
    "ReviewChange",
    "Row",
    "StaffSeen",
    "StreamRecord",
    "parse_record",
    "rows_of",
]


def ms_to_dt(ms: Any) -> datetime | None:
    if ms is None or ms == "":
        return None
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC)


@dataclass(frozen=True)
class StreamRecord:
    """The parts of a stream record the audit uses, from either shape (boto3's
    GetRecords, with datetimes; or a Lambda event's JSON, with epoch seconds)."""

    event_id: str
    event_name: str
    sequence_number: str
    stream_at: datetime | None
    old: dict[str, Any] | None
    new: dict[str, Any] | None

    @property
    def image(self) -> dict[str, Any]:
        """The item as it is after the change (as it was, for a REMOVE)."""
        image = self.old if self.event_name == "REMOVE" else self.new
        return image or {}


def parse_record(raw: dict[str, Any]) -> StreamRecord:
    data = raw.get("dynamodb", {})
    at = data.get("ApproximateCreationDateTime")
    if isinstance(at, int | float):
        at = datetime.fromtimestamp(at, tz=UTC)
    elif isinstance(at, datetime) and at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    old, new = data.get("OldImage"), data.get("NewImage")
    return StreamRecord(
        event_id=str(raw["eventID"]),
        event_name=str(raw.get("eventName", "")),
        sequence_number=str(data.get("SequenceNumber", "0")),
        stream_at=at if isinstance(at, datetime) else None,
        old=from_attrs(old) if old else None,
        new=from_attrs(new) if new else None,
    )


class Row:
    """A row for one table; the writer inserts `values()` into `table`."""

    table: ClassVar[str]

    def values(self) -> dict[str, Any]:
        """The columns: every field but `current` (kept for the projections only)."""
        out = dict(self.__dict__)
        out.pop("current", None)
        return out


@dataclass(frozen=True)
class ExamChange(Row):
    table: ClassVar[str] = "exam_event"

    event_id: str
    shard_id: str | None
    sequence_number: str
    event_name: str
    tenant: str
    accession: str
    site: str
    modality: str
    subspecialty: str | None
    version: int
    action: str
    old_status: str | None
    new_status: str | None
    old_priority: str | None
    new_priority: str | None
    actor: str | None
    holder: str | None
    changed_at: datetime
    stream_at: datetime | None
    hl7_sender: str | None
    hl7_control_id: str | None
    # For the projections only (not columns of exam_event).
    current: dict[str, Any] | None = None


@dataclass(frozen=True)
class ReviewChange(Row):
    table: ClassVar[str] = "review_event"

    event_id: str
    shard_id: str | None
    sequence_number: str
    event_name: str
    tenant: str
    accession: str
    site: str
    modality: str
    version: int
    action: str
    old_state: str | None
    new_state: str | None
    actor: str | None
    reviewer: str | None
    score: str | None
    final_score: str | None
    has_comment: bool
    changed_at: datetime
    current: dict[str, Any] | None = None


@dataclass(frozen=True)
class LockBreak(Row):
    table: ClassVar[str] = "lock_break"

    event_id: str
    tenant: str
    accession: str
    broken_by: str
    holder: str | None
    reason: str | None
    broken_at: datetime


@dataclass(frozen=True)
class Hl7Message(Row):
    table: ClassVar[str] = "hl7_message"

    event_id: str
    sender: str
    control_id: str
    message_type: str | None
    summary: str | None
    accepted_at: datetime | None


@dataclass(frozen=True)
class StaffSeen(Row):
    """A staff member's sub and display name (not a patient's)."""

    table: ClassVar[str] = "staff"

    sub: str
    name: str | None
    seen_at: datetime


def _exam_action(
    event: str, old: dict[str, Any], new: dict[str, Any]
) -> tuple[str, str | None, str | None]:
    """(action, actor, holder) of one change of a STUDY item."""
    if event == "INSERT":
        return "created", None, None
    if event == "REMOVE":
        return "removed", None, old.get("claimed_by")
    before, after = old.get("claimed_by"), new.get("claimed_by")
    if old.get("status") != new.get("status"):
        signer = new.get("reported_by")
        if new.get("status") in READING_STATES and signer and signer == before:
            return "sign", str(signer), None
        return "status", None, before if before and not after else None
    if after and after != before:
        return "claim", str(after), before
    if after and after == before:
        if old.get("claimed_at") != new.get("claimed_at"):
            return "reclaim", str(after), None
        if old.get("lease_expires_at") != new.get("lease_expires_at"):
            return "renew", str(after), None
    if before and not after:
        if int(new.get("lock_version", 0)) > int(old.get("lock_version", 0)):
            return "break_lock", None, str(before)
        if int(old.get("lease_expires_at") or 0) < int(new.get("updated_at") or 0):
            return "expire", None, str(before)
        return "release", str(before), None
    if old.get("priority") != new.get("priority"):
        return "priority", None, None
    return "update", None, None


def _review_action(event: str, old: dict[str, Any], new: dict[str, Any]) -> tuple[str, str | None]:
    if event == "INSERT":
        return "pooled", None
    if event == "REMOVE":
        return "removed", None
    was, now = old.get("state"), new.get("state")
    if was == "POOLED" and now == "ASSIGNED":
        return "assigned", None
    if was == "ASSIGNED" and now == "ASSIGNED" and old.get("reviewer") != new.get("reviewer"):
        return "reassigned", None
    if was == "ASSIGNED" and now in ("DONE", "ARBITRATION"):
        return "scored", old.get("claimed_by") or new.get("reviewer")
    if was == "ARBITRATION" and now == "DONE":
        return "arbitrated", new.get("arbiter")
    if was == "ARBITRATION" and now == "ASSIGNED":
        return "returned", new.get("arbiter")
    if new.get("claimed_by") and new.get("claimed_by") != old.get("claimed_by"):
        return "claimed", new.get("claimed_by")
    return "update", None


def _staff(image: dict[str, Any], at: datetime) -> list[Row]:
    out: list[Row] = []
    for sub_key, name_key in (
        ("claimed_by", "claimed_by_name"),
        ("reported_by", "reported_by_name"),
        ("reviewer", "reviewer_name"),
        ("original_reader", "original_reader_name"),
    ):
        sub = image.get(sub_key)
        if sub:
            out.append(StaffSeen(str(sub), image.get(name_key), at))
    return out


def rows_of(record: StreamRecord, shard_id: str | None = None) -> list[Row]:
    """The rows one stream record becomes ([] for items the audit does not keep)."""
    image = record.image
    entity = image.get("entity")
    old, new = record.old or {}, record.new or {}
    if entity == "STUDY" and str(image.get("SK", "")).startswith(keys.STUDY_PREFIX):
        action, actor, holder = _exam_action(record.event_name, old, new)
        version = int(image["version"]) + (1 if record.event_name == "REMOVE" else 0)
        changed = ms_to_dt(image.get("updated_at")) or record.stream_at or datetime.now(UTC)
        change = ExamChange(
            event_id=record.event_id,
            shard_id=shard_id,
            sequence_number=record.sequence_number,
            event_name=record.event_name,
            tenant=str(image["tenant"]),
            accession=str(image["accession"]),
            site=str(image["site"]),
            modality=str(image["modality"]),
            subspecialty=image.get("subspecialty"),
            version=version,
            action=action,
            old_status=old.get("status"),
            new_status=new.get("status"),
            old_priority=old.get("priority"),
            new_priority=new.get("priority"),
            actor=actor,
            holder=holder,
            changed_at=changed,
            stream_at=record.stream_at,
            # Carried by exam items written from an HL7 message, where they are.
            hl7_sender=image.get("hl7_sender"),
            hl7_control_id=image.get("hl7_control_id"),
            current=_exam_projection(image, version, record.event_name == "REMOVE"),
        )
        return [change, *_staff(new, changed)]
    if entity == "REVIEW":
        action, actor = _review_action(record.event_name, old, new)
        version = int(image["version"]) + (1 if record.event_name == "REMOVE" else 0)
        changed = ms_to_dt(image.get("updated_at")) or record.stream_at or datetime.now(UTC)
        review = ReviewChange(
            event_id=record.event_id,
            shard_id=shard_id,
            sequence_number=record.sequence_number,
            event_name=record.event_name,
            tenant=str(image["tenant"]),
            accession=str(image["accession"]),
            site=str(image["site"]),
            modality=str(image["modality"]),
            version=version,
            action=action,
            old_state=old.get("state"),
            new_state=new.get("state"),
            actor=actor,
            reviewer=image.get("reviewer"),
            score=image.get("score") or None,
            final_score=image.get("final_score") or None,
            has_comment=bool(image.get("review_comment")),
            changed_at=changed,
            current=_review_projection(image, version, record.event_name == "REMOVE"),
        )
        return [review, *_staff(new, changed)]
    if record.event_name != "INSERT":
        return []  # audit and ledger items are written once; their TTL removal is no change
    if entity == "AUDIT" and image.get("action") == "break_lock":
        at = ms_to_dt(image.get("at")) or record.stream_at or datetime.now(UTC)
        return [
            LockBreak(
                event_id=record.event_id,
                tenant=str(image["tenant"]),
                accession=str(image["accession"]),
                broken_by=str(image["by"]),
                holder=image.get("holder"),
                reason=image.get("reason"),
                broken_at=at,
            )
        ]
    if entity == "HL7MSG":
        return [
            Hl7Message(
                event_id=record.event_id,
                sender=str(image["sender"]),
                control_id=str(image["control_id"]),
                message_type=image.get("message_type"),
                summary=image.get("summary"),
                accepted_at=ms_to_dt(image.get("accepted_at")),
            )
        ]
    return []


def _exam_projection(image: dict[str, Any], version: int, removed: bool) -> dict[str, Any]:
    status = image.get("status")
    at = ms_to_dt(image.get("updated_at"))
    return {
        "tenant": image["tenant"],
        "accession": image["accession"],
        "site": image["site"],
        "modality": image["modality"],
        "subspecialty": image.get("subspecialty"),
        "procedure_code": image.get("procedure_code"),
        "priority": image["priority"],
        "status": status,
        "version": version,
        "removed": removed,
        "claimed_by": None if removed else image.get("claimed_by"),
        "reported_by": image.get("reported_by"),
        "scheduled_at": ms_to_dt(image.get("scheduled_at")),
        "completed_at": ms_to_dt(image.get("completed_at")),
        "tat_due_at": ms_to_dt(image.get("tat_due_at")),
        "preliminary_at": at if status == "PRELIMINARY" and not removed else None,
        "final_at": at if status == "FINAL" and not removed else None,
        "updated_at": at,
    }


def _review_projection(image: dict[str, Any], version: int, removed: bool) -> dict[str, Any]:
    state = image.get("state")
    at = ms_to_dt(image.get("updated_at"))
    scored = state in ("ARBITRATION", "DONE") and bool(image.get("score"))
    return {
        "tenant": image["tenant"],
        "accession": image["accession"],
        "site": image["site"],
        "modality": image["modality"],
        "subspecialty": image.get("subspecialty"),
        "source": image.get("source"),
        "original_reader": image.get("original_reader") or None,
        "state": state,
        "reviewer": image.get("reviewer"),
        "score": image.get("score") or None,
        "final_score": image.get("final_score") or None,
        "arbiter": image.get("arbiter"),
        "version": version,
        "removed": removed,
        "pooled_at": ms_to_dt(image.get("created_at")),
        "scored_at": at if scored and not removed else None,
        "done_at": at if state == "DONE" and not removed else None,
        "updated_at": at,
    }


def discrepant(score: str | None) -> bool:
    return score in DISCREPANT
