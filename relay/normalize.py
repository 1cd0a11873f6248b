"""DynamoDB Streams records -> typed deltas. One code path for the worker and Lambda."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from dynamo import keys
from dynamo.deltas import DirectoryChange, ExamDelta, ReviewDelta
from dynamo.models import exam_from_item
from dynamo.serde import from_attrs

Delta = ExamDelta | ReviewDelta | DirectoryChange


def record_to_delta(record: dict[str, Any]) -> Delta | None:
    """Normalize one stream record; None for items a worklist does not show (profile,
    order, audit). Exams become `ExamDelta`s, peer reviews `ReviewDelta`s, the
    directory's tenants, sites and people `DirectoryChange` notices.

    INSERT and MODIFY carry the new image; REMOVE carries the old one, with its
    version bumped so the removal outranks every state it follows.
    """
    event = record.get("eventName")
    data = record.get("dynamodb", {})
    image = data.get("OldImage") if event == "REMOVE" else data.get("NewImage")
    if not image:
        return None
    sk = image.get("SK", {}).get("S", "")
    if image.get("entity", {}).get("S") == "DIRECTORY":
        item = from_attrs(image)
        return DirectoryChange(
            tenant=item["tenant"], kind=item["kind"], key=item["key"], version=item["version"]
        )
    if image.get("entity", {}).get("S") == "REVIEW":
        item = from_attrs(image)
        version = int(item["version"]) + (1 if event == "REMOVE" else 0)
        fields = {k: v for k, v in item.items() if k in ReviewDelta.model_fields}
        fields.update(version=version, exam_id=item["accession"])
        return ReviewDelta.model_validate(
            {**fields, "op": "remove" if event == "REMOVE" else "upsert"}
        )
    # Only study items are exams (ledger, audit and other items share the table).
    if not sk.startswith(keys.STUDY_PREFIX) or image.get("entity", {}).get("S") != "STUDY":
        return None
    exam = exam_from_item(from_attrs(image))
    if event == "REMOVE":
        return ExamDelta.from_exam(exam.model_copy(update={"version": exam.version + 1}), "remove")
    return ExamDelta.from_exam(exam)


def records_to_deltas(records: list[dict[str, Any]]) -> list[Delta]:
    out = []
    for record in records:
        delta = record_to_delta(record)
        if delta is not None:
            out.append(delta)
    return out


@dataclass(frozen=True)
class Unreadable:
    """A record that does not normalize (an enum value this build does not know, a
    hand-edited item). `problem` names only error types and field locations, never a
    value: pydantic's own message carries `input_value`, which can be a patient's name."""

    record: dict[str, Any]
    problem: str


def describe_problem(exc: BaseException) -> str:
    """What went wrong, without any of the record's values."""
    if isinstance(exc, ValidationError):
        parts = [
            f"{e['type']}@{'.'.join(str(p) for p in e['loc']) or '-'}"
            for e in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        return "validation: " + ", ".join(parts[:10])
    # Other messages (int("..."), KeyError) can quote values: the type alone is logged.
    return type(exc).__name__


def normalize(records: list[dict[str, Any]]) -> tuple[list[Delta], list[Unreadable]]:
    """Normalize a batch, setting aside the records that fail instead of failing the
    batch: the worker's shard reader and the Lambda handler both call this."""
    deltas: list[Delta] = []
    unreadable: list[Unreadable] = []
    for record in records:
        try:
            delta = record_to_delta(record)
        except (ValidationError, KeyError, ValueError, TypeError, AttributeError) as exc:
            unreadable.append(Unreadable(record, describe_problem(exc)))
            continue
        if delta is not None:
            deltas.append(delta)
    return deltas, unreadable
