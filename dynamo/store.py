"""The exam store: every write conditional, every exam write bumps `version`.

One `ExamStore` wraps one aioboto3 DynamoDB client (one per process). Workflow moves
(`transition`) are conditioned on the version and state that were read, so concurrent
writers cannot lose each other's updates. Claims (the lock that prevents two people
reading one exam) live in `dynamo.claims`, on the same items. A writer may opt in to
write-through (`dynamo.writethrough`): each exam it creates or moves is published to the
worklist feed as soon as DynamoDB acknowledges it, ahead of the stream relay.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from dynamo import keys
from dynamo.exceptions import (
    AlreadyClaimed,
    ConditionFailed,
    ExamAlreadyExists,
    ExamNotFound,
    InvalidTransition,
    StoreUnavailable,
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
from dynamo.retry import Retry
from dynamo.serde import from_attrs, to_attr, to_attrs
from dynamo.states import (
    CLAIM_ENDING_STATES,
    OPEN_STATES,
    PRIORITY_RANK,
    READING_STATES,
    ExamStatus,
    Modality,
    can_transition,
)

__all__ = ["CLAIM_FIELDS", "ExamStore"]


# How often a transition without an expected version re-reads after losing a race.
_RACE_RETRIES = 5
# Attributes of a live claim (lock_version stays: the fencing token only grows).
CLAIM_FIELDS = ("claimed_by", "claimed_by_name", "claimed_at", "lease_expires_at", "lock_token")
_LOCATIONS = 50_000  # accession -> patient_id pointers cached per process
_LOCATION_TTL_S = 60.0


class ExamStore:
    def __init__(
        self,
        client: Any,
        table: str,
        *,
        retry: Retry | None = None,
        write_through: Callable[[Exam], Awaitable[None]] | None = None,
    ) -> None:
        self._client = client
        self.table = table
        self.retry = retry or Retry()
        # Called with each exam this store created or moved, once DynamoDB acknowledged
        # the write (`dynamo.writethrough.WriteThrough`: publish it ahead of the relay).
        self.write_through = write_through
        # (tenant, accession) -> (patient_id, when cached): an ADT merge moves an exam
        # to another partition, so a pointer is trusted for a bounded time only.
        self._where: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()

    # ---- low level -------------------------------------------------------------------

    async def call(self, operation: str, **kwargs: Any) -> Any:
        """One DynamoDB call (`operation` in snake_case), with retries."""
        fn = getattr(self._client, operation)
        return await self.retry(operation, fn, **kwargs)

    async def update(self, key: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """A conditional UpdateItem; the item as written (plain values, fencing
        attributes included), or `ConditionFailed` carrying the item as it was (None when
        there was no item)."""
        try:
            resp = await self.call(
                "update_item",
                TableName=self.table,
                Key=key,
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                **kwargs,
            )
        except self.condition_failed as exc:
            old = exc.response.get("Item")  # type: ignore[attr-defined]
            raise ConditionFailed(from_attrs(old) if old else None) from None
        return from_attrs(resp["Attributes"])

    @property
    def transaction_cancelled(self) -> type[Exception]:
        return self._client.exceptions.TransactionCanceledException  # type: ignore[no-any-return]

    @property
    def condition_failed(self) -> type[Exception]:
        return self._client.exceptions.ConditionalCheckFailedException  # type: ignore[no-any-return]

    def key(self, patient_id: str, accession: str) -> dict[str, Any]:
        return {
            "PK": to_attr(keys.patient_pk(patient_id)),
            "SK": to_attr(keys.study_sk(accession)),
        }

    # ---- create and read -------------------------------------------------------------

    async def create_exam(
        self, exam: Exam, order: Order, profile: PatientProfile | None = None
    ) -> Exam:
        """Write order and study (and the patient's profile) in one transaction.

        The study must not exist yet; its version starts at 1.
        """
        exam = exam.model_copy(update={"version": 1, "updated_at": now_ms()})
        items = create_items(self.table, exam, order, profile)
        try:
            await self.call("transact_write_items", TransactItems=items)
        except self.transaction_cancelled as exc:
            reasons = exc.response.get("CancellationReasons", [])  # type: ignore[attr-defined]
            if any(r.get("Code") == "ConditionalCheckFailed" for r in reasons):
                raise ExamAlreadyExists(exam.accession) from None
            raise
        self._remember(exam.tenant, exam.accession, exam.patient_id)
        if self.write_through is not None:
            await self.write_through(exam)
        return exam

    def _remember(self, tenant: str, accession: str, patient_id: str) -> None:
        self._where[(tenant, accession)] = (patient_id, time.monotonic())
        self._where.move_to_end((tenant, accession))
        while len(self._where) > _LOCATIONS:
            self._where.popitem(last=False)

    async def locate(self, tenant: str, accession: str, *, fresh: bool = False) -> str:
        """The patient_id whose partition holds a tenant's accession (cached)."""
        cached = None if fresh else self._where.get((tenant, accession))
        if cached is not None and time.monotonic() - cached[1] < _LOCATION_TTL_S:
            return cached[0]
        resp = await self.call(
            "get_item",
            TableName=self.table,
            Key={
                "PK": to_attr(keys.accession_pk(tenant, accession)),
                "SK": to_attr(keys.ACCESSION_SK),
            },
            ConsistentRead=True,
        )
        if "Item" not in resp:
            raise ExamNotFound(accession)
        patient_id = str(resp["Item"]["patient_id"]["S"])
        self._remember(tenant, accession, patient_id)
        return patient_id

    async def get_exam(self, patient_id: str, accession: str) -> Exam:
        resp = await self.call(
            "get_item",
            TableName=self.table,
            Key=self.key(patient_id, accession),
            ConsistentRead=True,
        )
        if "Item" not in resp:
            raise ExamNotFound(accession)
        return exam_from_item(from_attrs(resp["Item"]))

    async def find_exam(self, tenant: str, accession: str) -> Exam:
        return await self.get_exam(await self.locate(tenant, accession), accession)

    async def _query(self, **kwargs: Any) -> AsyncIterator[Exam]:
        start: dict[str, Any] | None = None
        while True:
            page = dict(kwargs, ExclusiveStartKey=start) if start else kwargs
            resp = await self.call("query", TableName=self.table, **page)
            for item in resp.get("Items", []):
                yield exam_from_item(from_attrs(item))
            start = resp.get("LastEvaluatedKey")
            if not start:
                return

    def exams_in_status(
        self,
        tenant: str,
        status: ExamStatus,
        *,
        filter_expression: str | None = None,
        **values: Any,
    ) -> AsyncIterator[Exam]:
        """A tenant's exams in one state, most urgent first (GSI1, paginated)."""
        attrs = {":pk": to_attr(keys.gsi1_pk(tenant, status))}
        attrs.update({k: to_attr(v) for k, v in values.items()})
        kwargs: dict[str, Any] = {
            "IndexName": keys.GSI1,
            "KeyConditionExpression": "GSI1PK = :pk",
            "ExpressionAttributeValues": attrs,
        }
        if filter_expression:
            kwargs["FilterExpression"] = filter_expression
        return self._query(**kwargs)

    async def open_exams(self, tenant: str) -> list[Exam]:
        """Every exam of a tenant still in an open state: what a worklist is built from.

        One GSI1 query per open state, never a Scan.
        """
        out: list[Exam] = []
        for status in ExamStatus:
            if status in OPEN_STATES:
                out.extend([e async for e in self.exams_in_status(tenant, status)])
        return out

    async def exams_by_modality(
        self, tenant: str, modality: Modality, start_ms: int, end_ms: int
    ) -> list[Exam]:
        """A tenant's exams of one modality scheduled in [start_ms, end_ms) (GSI2)."""
        return [
            e
            async for e in self._query(
                IndexName=keys.GSI2,
                KeyConditionExpression="GSI2PK = :pk AND GSI2SK BETWEEN :lo AND :hi",
                ExpressionAttributeValues={
                    ":pk": to_attr(keys.gsi2_pk(tenant, modality)),
                    ":lo": to_attr(keys.gsi2_sk(start_ms, "")),
                    ":hi": to_attr(keys.gsi2_sk(end_ms - 1, "~")),
                },
            )
        ]

    # ---- workflow ----------------------------------------------------------------------

    async def transition(
        self,
        patient_id: str,
        accession: str,
        target: ExamStatus,
        *,
        expected_version: int | None = None,
    ) -> Exam:
        """Move an exam to `target` if the state machine allows it (a system's move:
        an HL7 feed, the scanner, the simulator).

        With `expected_version`, the write happens only if the exam is still at that
        version (else `VersionConflict`). Without it, the exam is read and the write is
        conditioned on what was read; a lost race re-reads a bounded number of times.
        A report state cannot be entered this way while a reader holds a live claim
        (`AlreadyClaimed`); a final report or a cancellation ends any claim.
        """
        for _ in range(_RACE_RETRIES):
            current = await self.get_exam(patient_id, accession)
            if expected_version is not None and current.version != expected_version:
                raise VersionConflict(accession, expected_version, current.version)
            try:
                return await self.advance(current, target)
            except VersionConflict:
                if expected_version is not None:
                    raise
        raise VersionConflict(accession, -1, None)

    async def advance(self, current: Exam, target: ExamStatus) -> Exam:
        """One move from the exam as the caller holds it (as the previous write returned
        it), with no read: the rules of `transition`, and the write conditioned on that
        version and state (`VersionConflict` when someone else wrote it since). A writer
        walking an exam through several states (the HL7 ingest, the benchmark's writer)
        pays one round trip per move instead of two. A claim taken after `current` was
        read bumps the version, so the condition fails and the caller re-reads."""
        if not can_transition(current.status, target):
            raise InvalidTransition(current.accession, current.status, target)
        now = now_ms()
        live = current.claimed_by is not None and (current.lease_expires_at or 0) >= now
        if target in READING_STATES and live:
            raise AlreadyClaimed(
                current.accession,
                current.claimed_by or "",
                current.claimed_by_name,
                current.lease_expires_at,
            )
        return await self.write_transition(current, target, now=now)

    async def write_transition(
        self,
        current: Exam,
        target: ExamStatus,
        *,
        now: int,
        condition: str = "",
        values: dict[str, Any] | None = None,
        sets: str = "",
    ) -> Exam:
        """The conditional write of one move from the state `current` was read in.

        `condition` and `values` add to the version-and-state condition (claims use
        them to require the claim's token); `sets` adds assignments.
        """
        request = transition_update(
            current, target, now=now, condition=condition, values=values, sets=sets
        )
        try:
            exam = exam_from_item(await self.update(request.pop("Key"), **request))
        except ConditionFailed as failed:
            seen = failed.old["version"] if failed.old else None
            raise VersionConflict(current.accession, current.version, seen) from None
        if self.write_through is not None:
            await self.write_through(exam)
        return exam

    # ---- the tenant registry and what a rebuild reads (dynamo/keys.py) -----------------

    async def register_tenant(self, tenant: str) -> None:
        """Record that a tenant has exams (idempotent; the relay calls it once per tenant
        and process, so the registry follows the data whoever wrote it)."""
        await self.call(
            "put_item",
            TableName=self.table,
            Item=to_attrs(
                {
                    "PK": keys.TENANTS_PK,
                    "SK": keys.tenant_sk(tenant),
                    "entity": "TENANT",
                    "tenant": tenant,
                }
            ),
        )

    async def tenants(self) -> tuple[list[str], bool]:
        """Every registered tenant (one Query), and whether the registry was ever
        backfilled from the exams already in the table (`backfill_tenants`)."""
        out: list[str] = []
        backfilled = False
        start: dict[str, Any] | None = None
        while True:
            kwargs: dict[str, Any] = {
                "TableName": self.table,
                "KeyConditionExpression": "PK = :pk",
                "ExpressionAttributeValues": {":pk": to_attr(keys.TENANTS_PK)},
                "ConsistentRead": True,
            }
            if start:
                kwargs["ExclusiveStartKey"] = start
            resp = await self.call("query", **kwargs)
            for item in resp.get("Items", []):
                sk = item["SK"]["S"]
                if sk == keys.TENANTS_BACKFILLED_SK:
                    backfilled = True
                elif "tenant" in item:
                    out.append(str(item["tenant"]["S"]))
            start = resp.get("LastEvaluatedKey")
            if not start:
                return sorted(out), backfilled

    async def backfill_tenants(self) -> list[str]:
        """Register the tenant of every exam already stored: one Scan of the table, for a
        table older than the registry or after a gap in the stream (never per change)."""
        found: set[str] = set()
        start: dict[str, Any] | None = None
        while True:
            kwargs: dict[str, Any] = {
                "TableName": self.table,
                "FilterExpression": "entity = :e",
                "ProjectionExpression": "tenant",
                "ExpressionAttributeValues": {":e": to_attr("STUDY")},
            }
            if start:
                kwargs["ExclusiveStartKey"] = start
            resp = await self.call("scan", **kwargs)
            found.update(str(i["tenant"]["S"]) for i in resp.get("Items", []) if "tenant" in i)
            start = resp.get("LastEvaluatedKey")
            if not start:
                break
        for tenant in sorted(found):
            await self.register_tenant(tenant)
        await self.call(
            "put_item",
            TableName=self.table,
            Item=to_attrs({"PK": keys.TENANTS_PK, "SK": keys.TENANTS_BACKFILLED_SK}),
        )
        return sorted(found)

    async def study_items(self, **kwargs: Any) -> AsyncIterator[dict[str, Any]]:
        """Raw items of a paginated Query (plain values), for readers that must survive an
        item that does not parse (a rebuild skips it rather than failing)."""
        start: dict[str, Any] | None = None
        while True:
            page = dict(kwargs, ExclusiveStartKey=start) if start else kwargs
            resp = await self.call("query", TableName=self.table, **page)
            for item in resp.get("Items", []):
                yield from_attrs(item)
            start = resp.get("LastEvaluatedKey")
            if not start:
                return

    def open_study_items(self, tenant: str, status: ExamStatus) -> AsyncIterator[dict[str, Any]]:
        """A tenant's study items in one state (GSI1), raw."""
        return self.study_items(
            IndexName=keys.GSI1,
            KeyConditionExpression="GSI1PK = :pk",
            ExpressionAttributeValues={":pk": to_attr(keys.gsi1_pk(tenant, status))},
        )

    def scheduled_study_items(
        self, tenant: str, modality: Modality, since_ms: int, statuses: list[ExamStatus]
    ) -> AsyncIterator[dict[str, Any]]:
        """A tenant's study items of one modality scheduled at or after `since_ms` and in
        one of `statuses` (GSI2: bounded by the time window, not by all history), raw."""
        names = {f":s{i}": to_attr(s.value) for i, s in enumerate(statuses)}
        return self.study_items(
            IndexName=keys.GSI2,
            KeyConditionExpression="GSI2PK = :pk AND GSI2SK >= :lo",
            FilterExpression=f"#s IN ({', '.join(names)})",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={
                ":pk": to_attr(keys.gsi2_pk(tenant, modality)),
                ":lo": to_attr(keys.gsi2_sk(max(since_ms, 0), "")),
                **names,
            },
        )

    async def study_items_consistent(
        self, wanted: list[tuple[str, str]]
    ) -> dict[str, dict[str, Any]]:
        """Strongly consistent reads of study items by (patient_id, accession), raw and
        keyed by accession; an absent item is left out (BatchGetItem, 100 at a time)."""
        out: dict[str, dict[str, Any]] = {}
        pending = [self.key(p, a) for p, a in dict.fromkeys(wanted)]
        for start in range(0, len(pending), 100):
            request: dict[str, Any] = {
                self.table: {"Keys": pending[start : start + 100], "ConsistentRead": True}
            }
            for attempt in range(10):
                if attempt:
                    await asyncio.sleep(0.05 * attempt)  # DynamoDB throttled part of it
                resp = await self.call("batch_get_item", RequestItems=request)
                for item in resp.get("Responses", {}).get(self.table, []):
                    plain = from_attrs(item)
                    if "accession" in plain:
                        out[str(plain["accession"])] = plain
                request = resp.get("UnprocessedKeys") or {}
                if not request:
                    break
            else:
                raise StoreUnavailable("batch_get_item", "UnprocessedKeys")
        return out

    async def study_item_by_accession(self, tenant: str, accession: str) -> dict[str, Any] | None:
        """A tenant's study item by accession (pointer, then item; both strongly
        consistent), raw; None when either is gone."""
        try:
            patient_id = await self.locate(tenant, accession, fresh=True)
        except ExamNotFound:
            return None
        resp = await self.call(
            "get_item",
            TableName=self.table,
            Key=self.key(patient_id, accession),
            ConsistentRead=True,
        )
        return from_attrs(resp["Item"]) if "Item" in resp else None


# ---- request builders, shared by the async store and synchronous writers (load tests) --


def create_items(
    table: str, exam: Exam, order: Order, profile: PatientProfile | None
) -> list[dict[str, Any]]:
    """TransactItems creating an exam: its order, study item and accession pointer (all
    conditional on not existing yet), and the patient's profile (upserted)."""
    absent = "attribute_not_exists(PK)"
    items: list[dict[str, Any]] = []
    if profile is not None:
        items.append({"Put": {"TableName": table, "Item": to_attrs(profile_to_item(profile))}})
    pointer = {
        "PK": keys.accession_pk(exam.tenant, exam.accession),
        "SK": keys.ACCESSION_SK,
        "entity": "ACCESSION",
        "patient_id": exam.patient_id,
    }
    for item in (order_to_item(order), exam_to_item(exam), pointer):
        items.append(
            {"Put": {"TableName": table, "Item": to_attrs(item), "ConditionExpression": absent}}
        )
    return items


def transition_update(
    current: Exam,
    target: ExamStatus,
    *,
    now: int,
    condition: str = "",
    values: dict[str, Any] | None = None,
    sets: str = "",
) -> dict[str, Any]:
    """UpdateItem arguments for one move from the state `current` was read in."""
    names = {"#s": "status", "#v": "version"}
    attrs: dict[str, Any] = {
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
    attrs.update({k: to_attr(v) for k, v in (values or {}).items()})
    assignments = [
        "#s = :to",
        "#v = :next",
        "updated_at = :now",
        "GSI1PK = :g1pk",
        "GSI1SK = :g1sk",
    ]
    if target is ExamStatus.COMPLETED:
        assignments.append("completed_at = :now")
    if sets:
        assignments.append(sets)
    expression = "SET " + ", ".join(assignments)
    if target in CLAIM_ENDING_STATES:
        expression += " REMOVE " + ", ".join(CLAIM_FIELDS)
    cond = "#v = :v AND #s = :from" + (f" AND ({condition})" if condition else "")
    return {
        "Key": {
            "PK": to_attr(keys.patient_pk(current.patient_id)),
            "SK": to_attr(keys.study_sk(current.accession)),
        },
        "UpdateExpression": expression,
        "ConditionExpression": cond,
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": attrs,
    }
