"""Peer review (after ACR RADPEER): a random, blinded second read of finished exams.

Item (same single table, its own partition per tenant, so a tenant's reviews are one
Query):
    PK = REVIEW#{tenant}   SK = EXAM#{accession}   entity = REVIEW

Life of a review:
    POOLED --assign--> ASSIGNED --claim, score 1/2a--> DONE
                          |  ^        score 2b/3a/3b (comment required)
                          |  '--return-- ARBITRATION --confirm / change--> DONE

Every write is conditional and bumps `version`, like an exam's. The original reader is
stored (`original_reader`) but never leaves the gateway towards a reviewer; a reviewer
is shown to the reader only by `reviewer_id`, a random number drawn when the review is
assigned and stored on the item, so nothing about the reviewer (their `sub`, which
presence shows) yields it. `assignees` keeps everyone the review was ever assigned to,
so a reviewer stays blinded after a reassignment, whatever their role. A reviewer claims
a review like a read: a lease and a secret fencing token (`dynamo.claims` semantics),
required to score.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from dynamo import keys
from dynamo.claims import parse_token
from dynamo.exceptions import (
    AlreadyClaimed,
    ConditionFailed,
    ExamNotFound,
    InvalidTransition,
    ReviewRefused,
    StaleToken,
    StoreError,
)
from dynamo.models import now_ms
from dynamo.serde import from_attrs, to_attr, to_attrs
from dynamo.store import ExamStore

__all__ = [
    "DISCREPANT",
    "RADPEER",
    "RADPEER_LABELS",
    "Review",
    "ReviewState",
    "ReviewStore",
    "SelfReview",
    "new_reviewer_id",
    "radpeer_table",
    "sampled",
]

# The RADPEER scores (ACR), defined here only: the protocol's schema is checked against
# them at import, and the page reads them from `GET /api/radpeer`.
RADPEER_LABELS: dict[str, str] = {
    "1": "Concur with interpretation",
    "2a": "Discrepancy, understandable miss; unlikely clinically significant",
    "2b": "Discrepancy, understandable miss; likely clinically significant",
    "3a": "Discrepancy, should be made most of the time; unlikely clinically significant",
    "3b": "Discrepancy, should be made most of the time; likely clinically significant",
}
RADPEER = tuple(RADPEER_LABELS)
# Scores that need a comment and go to arbitration.
DISCREPANT = frozenset({"2b", "3a", "3b"})


def radpeer_table() -> list[dict[str, object]]:
    """Every score with its label and whether it is discrepant (for clients)."""
    return [
        {"score": s, "label": label, "discrepant": s in DISCREPANT}
        for s, label in RADPEER_LABELS.items()
    ]


class ReviewState(StrEnum):
    POOLED = "POOLED"
    ASSIGNED = "ASSIGNED"
    ARBITRATION = "ARBITRATION"
    DONE = "DONE"


class SelfReview(StoreError):
    """A reader cannot review their own exam."""

    code = "forbidden"

    def __init__(self, accession: str) -> None:
        super().__init__(f"the reader of {accession} cannot review it")
        self.accession = accession


class CommentRequired(StoreError):
    code = "bad_request"

    def __init__(self, score: str) -> None:
        super().__init__(f"a RADPEER {score} needs a comment")
        self.score = score


class Review(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    tenant: str
    accession: str
    site: str
    modality: str
    subspecialty: str
    procedure: str
    original_reader: str
    original_reader_name: str | None = None
    state: ReviewState = ReviewState.POOLED
    source: str = "random"  # random | manual
    reviewer: str | None = None
    reviewer_name: str | None = None
    reviewer_id: int | None = None
    # Everyone ever assigned this review (the current reviewer included), in order.
    assignees: tuple[str, ...] = ()
    due_at: int | None = None
    score: str | None = None
    review_comment: str | None = None
    final_score: str | None = None
    arbiter: str | None = None
    claimed_by: str | None = None
    lease_expires_at: int | None = None
    created_at: int
    updated_at: int
    version: int = 1


def sampled(seed: int | str, tenant: str, accession: str, rate: float) -> bool:
    """Whether a FINAL exam goes to the pool: a uniform draw from a hash of the seed and
    the exam, so the same seed always picks the same exams."""
    digest = hashlib.sha256(f"{seed}:{tenant}:{accession}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def new_reviewer_id() -> int:
    """The number a reader sees instead of a reviewer's name: drawn at random for each
    assignment, so it is no function of who the reviewer is (an unkeyed hash of the
    `sub` was: every `sub` is in presence, so a reader could hash them all)."""
    return 10000 + secrets.randbelow(90000)


def review_from_item(item: dict[str, Any]) -> Review:
    return Review.model_validate(item)


_CLAIM_FIELDS = "claimed_by, lease_expires_at, lock_token"


class ReviewStore:
    def __init__(self, store: ExamStore, *, lease_seconds: float = 90.0) -> None:
        self.store = store
        self.lease_ms = int(lease_seconds * 1000)

    def _key(self, tenant: str, accession: str) -> dict[str, Any]:
        return {"PK": to_attr(keys.review_pk(tenant)), "SK": to_attr(keys.review_sk(accession))}

    async def pool(
        self,
        tenant: str,
        accession: str,
        *,
        source: str = "random",
        allowed: Callable[[dict[str, Any]], bool] | None = None,
    ) -> Review | None:
        """Put a FINAL exam in the review pool; None when it is already there.

        The exam's reader comes from the study item (`reported_by`, set when the final
        report was signed under a claim). An exam `allowed` refuses (the caller may not
        see it) is `ExamNotFound`, exactly like one that does not exist, and is checked
        before anything else about it is told.
        """
        patient_id = await self.store.locate(tenant, accession)
        resp = await self.store.call(
            "get_item",
            TableName=self.store.table,
            Key=self.store.key(patient_id, accession),
            ConsistentRead=True,
        )
        if "Item" not in resp:
            raise ExamNotFound(accession)
        exam = from_attrs(resp["Item"])
        if allowed is not None and not allowed(exam):
            raise ExamNotFound(accession)
        if exam.get("status") not in ("FINAL", "AMENDED"):
            raise InvalidTransition(accession, str(exam.get("status")), "review")
        now = now_ms()
        review = Review(
            tenant=tenant,
            accession=accession,
            site=exam["site"],
            modality=exam["modality"],
            subspecialty=exam["subspecialty"],
            procedure=exam["procedure"],
            original_reader=exam.get("reported_by") or "",
            original_reader_name=exam.get("reported_by_name"),
            source=source,
            created_at=now,
            updated_at=now,
        )
        item = {
            "PK": keys.review_pk(tenant),
            "SK": keys.review_sk(accession),
            "entity": "REVIEW",
            **review.model_dump(mode="json", exclude_none=True),
        }
        try:
            await self.store.call(
                "put_item",
                TableName=self.store.table,
                Item=to_attrs(item),
                ConditionExpression="attribute_not_exists(PK)",
            )
        except self.store.condition_failed:
            return None
        return review

    async def get(self, tenant: str, accession: str) -> Review:
        resp = await self.store.call(
            "get_item",
            TableName=self.store.table,
            Key=self._key(tenant, accession),
            ConsistentRead=True,
        )
        if "Item" not in resp:
            raise ExamNotFound(accession)
        return review_from_item(from_attrs(resp["Item"]))

    async def all(self, tenant: str) -> list[Review]:
        out: list[Review] = []
        start: dict[str, Any] | None = None
        while True:
            kwargs: dict[str, Any] = {
                "TableName": self.store.table,
                "KeyConditionExpression": "PK = :pk",
                "ExpressionAttributeValues": {":pk": to_attr(keys.review_pk(tenant))},
            }
            if start:
                kwargs["ExclusiveStartKey"] = start
            resp = await self.store.call("query", **kwargs)
            out.extend(review_from_item(from_attrs(i)) for i in resp.get("Items", []))
            start = resp.get("LastEvaluatedKey")
            if not start:
                return out

    async def _update(
        self,
        tenant: str,
        accession: str,
        sets: str,
        condition: str,
        values: dict[str, Any],
        removes: str = "",
        names: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """A conditional update that bumps the version; the item as written (fencing
        attributes included), or `ReviewRefused` with the review as it was."""
        expression = f"SET {sets}, #v = #v + :one, updated_at = :now"
        if removes:
            expression += f" REMOVE {removes}"
        try:
            return await self.store.update(
                self._key(tenant, accession),
                UpdateExpression=expression,
                ConditionExpression="attribute_exists(PK) AND " + condition,
                ExpressionAttributeNames={"#v": "version", "#s": "state", **(names or {})},
                ExpressionAttributeValues=to_attrs({**values, ":one": 1, ":now": now_ms()}),
            )
        except ConditionFailed as failed:
            if failed.old is None:
                raise ExamNotFound(accession) from None
            raise ReviewRefused(review_from_item(failed.old)) from None

    async def assign(
        self, tenant: str, accession: str, reviewer: str, reviewer_name: str, due_at: int
    ) -> Review:
        """Give a pooled (or re-give an assigned, unclaimed) review to a reviewer who is
        not the exam's reader, under a fresh random `reviewer_id`."""
        try:
            return review_from_item(
                await self._update(
                    tenant,
                    accession,
                    "#s = :assigned, reviewer = :r, reviewer_name = :n, reviewer_id = :rid,"
                    " due_at = :due, #a = list_append(if_not_exists(#a, :none), :me)",
                    "original_reader <> :r AND #s IN (:pooled, :assigned)"
                    " AND (attribute_not_exists(claimed_by) OR lease_expires_at < :t)",
                    {
                        ":assigned": ReviewState.ASSIGNED.value,
                        ":pooled": ReviewState.POOLED.value,
                        ":r": reviewer,
                        ":n": reviewer_name,
                        ":rid": new_reviewer_id(),
                        ":due": due_at,
                        ":t": now_ms(),
                        ":none": [],
                        ":me": [reviewer],
                    },
                    removes=_CLAIM_FIELDS,  # a lapsed claim of the previous reviewer ends
                    names={"#a": "assignees"},
                )
            )
        except ReviewRefused as refused:
            seen = refused.review
            if seen.original_reader == reviewer:
                raise SelfReview(accession) from None
            if seen.claimed_by:
                raise AlreadyClaimed(accession, seen.claimed_by, seen.reviewer_name, None) from None
            raise InvalidTransition(accession, seen.state, "ASSIGNED") from None

    async def claim(self, tenant: str, accession: str, reviewer: str) -> tuple[Review, str]:
        """The assigned reviewer takes the review to read it; returns the token."""
        now = now_ms()
        secret = secrets.token_hex(16)
        try:
            item = await self._update(
                tenant,
                accession,
                "claimed_by = :r, lease_expires_at = :exp, lock_token = :secret,"
                " lock_version = if_not_exists(lock_version, :zero) + :one",
                "#s = :assigned AND reviewer = :r AND (attribute_not_exists(claimed_by)"
                " OR claimed_by = :r OR lease_expires_at < :t)",
                {
                    ":assigned": ReviewState.ASSIGNED.value,
                    ":r": reviewer,
                    ":exp": now + self.lease_ms,
                    ":secret": secret,
                    ":zero": 0,
                    ":t": now,
                },
            )
        except ReviewRefused as refused:
            seen = refused.review
            if seen.reviewer != reviewer:
                raise InvalidTransition(accession, "assigned to someone else", "claimed") from None
            raise InvalidTransition(accession, seen.state, "claimed") from None
        return review_from_item(item), f"{item['lock_version']}.{secret}"

    async def score(
        self, tenant: str, accession: str, reviewer: str, token: str, score: str, comment: str
    ) -> Review:
        """Score under the claim. 2b/3a/3b need a comment and go to arbitration."""
        if score not in RADPEER:
            raise InvalidTransition(accession, "scoring", score)
        comment = comment.strip()
        if score in DISCREPANT and not comment:
            raise CommentRequired(score)
        lock_version, secret = parse_token(accession, token)
        target = ReviewState.ARBITRATION if score in DISCREPANT else ReviewState.DONE
        try:
            return review_from_item(
                await self._update(
                    tenant,
                    accession,
                    "#s = :to, score = :score, review_comment = :comment, final_score = :final",
                    "#s = :assigned AND claimed_by = :r"
                    " AND lock_version = :lv AND lock_token = :secret",
                    {
                        ":to": target.value,
                        ":score": score,
                        ":comment": comment,
                        ":final": score if target is ReviewState.DONE else "",
                        ":assigned": ReviewState.ASSIGNED.value,
                        ":r": reviewer,
                        ":lv": lock_version,
                        ":secret": secret,
                    },
                    removes=_CLAIM_FIELDS,  # a score ends the reviewer's claim
                )
            )
        except ReviewRefused:
            raise StaleToken(accession) from None

    async def arbitrate(
        self, tenant: str, accession: str, coordinator: str, decision: str, score: str | None
    ) -> Review:
        """confirm (the reviewer's score stands), change (to `score`), or return (the
        reviewer scores again)."""
        values: dict[str, Any] = {":arb": ReviewState.ARBITRATION.value, ":c": coordinator}
        if decision == "return":
            sets = "#s = :assigned, arbiter = :c, score = :empty"
            values.update({":assigned": ReviewState.ASSIGNED.value, ":empty": ""})
        elif decision in ("confirm", "change"):
            final = score if decision == "change" else None
            if decision == "change" and final not in RADPEER:
                raise InvalidTransition(accession, "arbitration", str(score))
            sets = "#s = :done, arbiter = :c, final_score = " + (":final" if final else "score")
            values[":done"] = ReviewState.DONE.value
            if final:
                values[":final"] = final
        else:
            raise InvalidTransition(accession, "arbitration", decision)
        try:
            return review_from_item(
                await self._update(tenant, accession, sets, "#s = :arb", values)
            )
        except ReviewRefused as refused:
            raise InvalidTransition(accession, refused.review.state, decision) from None
