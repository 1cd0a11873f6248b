"""The exam store: every write conditional, every exam write bumps `version`.

One `ExamStore` wraps one aioboto3 DynamoDB client (one per process).
"""

from __future__ import annotations

from typing import Any

from dynamo import keys
from dynamo.exceptions import (
    ExamAlreadyExists,
    ExamNotFound,
    InvalidTransition,
    VersionConflict,
)
from dynamo.models import (
    Exam,
    Order,
    PatientProfile,
    exam_from_item,
    exam_to_item,
    now_ms,
    order_to_item,
    profile_to_item,
)
from dynamo.serde import from_attrs, to_attr, to_attrs
from dynamo.states import PRIORITY_RANK, ExamStatus, can_transition

__all__ = ["ExamStore"]

# How often a transition without an expected version re-reads after losing a race.
_RACE_RETRIES = 5


class ExamStore:
    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self.table = table

    async def create_exam(
        self, exam: Exam, order: Order, profile: PatientProfile | None = None
    ) -> Exam:
        """Write order and study (and the patient's profile) in one transaction.

        The study must not exist yet; its version starts at 1.
        """
        exam = exam.model_copy(update={"version": 1, "updated_at": now_ms()})
        items: list[dict[str, Any]] = []
        if profile is not None:
            # The profile is upserted: one patient has many orders.
            items.append(
                {"Put": {"TableName": self.table, "Item": to_attrs(profile_to_item(profile))}}
            )
        items.append(
            {
                "Put": {
                    "TableName": self.table,
                    "Item": to_attrs(order_to_item(order)),
                    "ConditionExpression": "attribute_not_exists(PK)",
                }
            }
        )
        items.append(
            {
                "Put": {
                    "TableName": self.table,
                    "Item": to_attrs(exam_to_item(exam)),
                    "ConditionExpression": "attribute_not_exists(PK)",
                }
            }
        )
        items.append(
            {
                "Put": {
                    "TableName": self.table,
                    "Item": to_attrs(
                        {
                            "PK": keys.accession_pk(exam.tenant, exam.accession),
                            "SK": keys.ACCESSION_SK,
                            "entity": "ACCESSION",
                            "patient_id": exam.patient_id,
                        }
                    ),
                    "ConditionExpression": "attribute_not_exists(PK)",
                }
            }
        )
        try:
            await self._client.transact_write_items(TransactItems=items)
        except self._client.exceptions.TransactionCanceledException as exc:
            reasons = exc.response.get("CancellationReasons", [])
            if any(r.get("Code") == "ConditionalCheckFailed" for r in reasons):
                raise ExamAlreadyExists(exam.accession) from None
            raise
        return exam

    async def locate(self, tenant: str, accession: str) -> str:
        """The patient_id whose partition holds a tenant's accession."""
        resp = await self._client.get_item(
            TableName=self.table,
            Key={
                "PK": to_attr(keys.accession_pk(tenant, accession)),
                "SK": to_attr(keys.ACCESSION_SK),
            },
            ConsistentRead=True,
        )
        if "Item" not in resp:
            raise ExamNotFound(accession)
        return str(resp["Item"]["patient_id"]["S"])

    async def get_exam(self, patient_id: str, accession: str) -> Exam:
        resp = await self._client.get_item(
            TableName=self.table,
            Key=self._key(patient_id, accession),
            ConsistentRead=True,
        )
        if "Item" not in resp:
            raise ExamNotFound(accession)
        return exam_from_item(from_attrs(resp["Item"]))

    async def transition(
        self,
        patient_id: str,
        accession: str,
        target: ExamStatus,
        *,
        expected_version: int | None = None,
    ) -> Exam:
        """Move an exam to `target` if the state machine allows it.

        With `expected_version`, the write happens only if the exam is still at that
        version (else `VersionConflict`). Without it, the exam is read and the write is
        conditioned on what was read; a lost race re-reads a bounded number of times.
        """
        for _ in range(_RACE_RETRIES):
            current = await self.get_exam(patient_id, accession)
            if expected_version is not None and current.version != expected_version:
                raise VersionConflict(accession, expected_version, current.version)
            if not can_transition(current.status, target):
                raise InvalidTransition(accession, current.status, target)
            try:
                return await self._write_transition(current, target)
            except VersionConflict:
                if expected_version is not None:
                    raise
        raise VersionConflict(accession, -1, None)

    async def _write_transition(self, current: Exam, target: ExamStatus) -> Exam:
        now = now_ms()
        names = {"#s": "status", "#v": "version"}
        values: dict[str, Any] = {
            ":from": to_attr(current.status.value),
            ":to": to_attr(target.value),
            ":v": to_attr(current.version),
            ":next": to_attr(current.version + 1),
            ":now": to_attr(now),
            ":g1pk": to_attr(keys.gsi1_pk(current.tenant, target)),
            ":g1sk": to_attr(
                keys.gsi1_sk(PRIORITY_RANK[current.priority], current.tat_due_at, current.accession)
            ),
        }
        sets = ["#s = :to", "#v = :next", "updated_at = :now", "GSI1PK = :g1pk", "GSI1SK = :g1sk"]
        if target is ExamStatus.COMPLETED:
            sets.append("completed_at = :now")
        try:
            resp = await self._client.update_item(
                TableName=self.table,
                Key=self._key(current.patient_id, current.accession),
                UpdateExpression="SET " + ", ".join(sets),
                ConditionExpression="#v = :v AND #s = :from",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self._client.exceptions.ConditionalCheckFailedException as exc:
            old = exc.response.get("Item")
            seen = from_attrs(old)["version"] if old else None
            raise VersionConflict(current.accession, current.version, seen) from None
        return exam_from_item(from_attrs(resp["Attributes"]))

    def _key(self, patient_id: str, accession: str) -> dict[str, Any]:
        return {
            "PK": to_attr(keys.patient_pk(patient_id)),
            "SK": to_attr(keys.study_sk(accession)),
        }
