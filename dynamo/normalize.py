"""DynamoDB Streams records -> typed deltas. One code path for the worker and Lambda."""

from __future__ import annotations

from typing import Any

from dynamo import keys
from dynamo.deltas import ExamDelta, ReviewDelta
from dynamo.models import exam_from_item
from dynamo.serde import from_attrs

Delta = ExamDelta | ReviewDelta


def record_to_delta(record: dict[str, Any]) -> Delta | None:
    """Normalize one stream record; None for items a worklist does not show (profile,
    order, audit). Exams become `ExamDelta`s, peer reviews `ReviewDelta`s.

    INSERT and MODIFY carry the new image; REMOVE carries the old one, with its
    version bumped so the removal outranks every state it follows.
    """
    event = record.get("eventName")
    data = record.get("dynamodb", {})
    image = data.get("OldImage") if event == "REMOVE" else data.get("NewImage")
    if not image:
        return None
    sk = image.get("SK", {}).get("S", "")
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
