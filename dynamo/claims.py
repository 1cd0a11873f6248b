"""Claims: the lock that keeps two radiologists from reading the same exam.

A claim is one conditional UpdateItem on the exam's item. It succeeds only when the exam
is ready to read (COMPLETED or PRELIMINARY) and nobody else holds a live lease; it sets
the holder, the lease's end, and a fresh fencing token, and returns that token to the
claimant alone. The token is `"{lock_version}.{secret}"`: `lock_version` only grows
(fencing: an older token can never match again) and the random secret keeps it
unguessable, as DICOM UPS keeps its Transaction UID secret. Neither part ever leaves the
store in a delta.

`renew`, `release` and report changes (`sign`) require the current token; a wrong or
stale one is refused with `StaleToken` (UPS C301). A claim on someone else's exam is
refused with `AlreadyClaimed`, naming the holder (UPS C302). A holder who claims again
(a reloaded browser) gets a new token and the old one stops working. `break_lock` is an
admin's release of any claim, recorded as an audit item beside the exam. `reap` releases
expired leases with a write conditioned on the lease it saw, so several reapers on
several nodes never release a claim that was renewed or re-taken meanwhile.

Claims bump `version` with an atomic `ADD`-style increment: they touch only claim
attributes, so they need no condition on the version read, and concurrent moves
(conditioned on version) simply re-read.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from dynamo import keys
from dynamo.exceptions import (
    AlreadyClaimed,
    ClaimRefused,
    ConditionFailed,
    ExamNotFound,
    InvalidTransition,
    NotClaimable,
    StaleToken,
    VersionConflict,
)
from dynamo.models import Exam, exam_from_item, now_ms
from dynamo.serde import to_attr, to_attrs
from dynamo.states import CLAIMABLE_STATES, READING_STATES, ExamStatus, can_transition
from dynamo.store import CLAIM_FIELDS, ExamStore

__all__ = ["Claim", "Claims", "parse_token"]

_HELD_BY = "claimed_by = :u AND lock_version = :lv AND lock_token = :secret"
_RACE_RETRIES = 5


@dataclass(frozen=True)
class Claim:
    exam: Exam
    token: str  # give to the claimant only


def parse_token(accession: str, token: str) -> tuple[int, str]:
    version, _, secret = token.partition(".")
    if not version.isdigit() or len(secret) != 32:
        raise StaleToken(accession)
    return int(version), secret


def _expired_or_free(exam: Exam, now: int) -> bool:
    return exam.claimed_by is None or (exam.lease_expires_at or 0) < now


class Claims:
    """Leased claims over the exams of an `ExamStore` (same client, same table)."""

    def __init__(self, store: ExamStore, *, lease_seconds: float = 90.0) -> None:
        self.store = store
        self.lease_ms = int(lease_seconds * 1000)

    async def _update(self, patient_id: str, accession: str, **kwargs: Any) -> Exam:
        """A conditional update; on a failed condition, raise with the item as it was."""
        return exam_from_item(await self._update_raw(patient_id, accession, **kwargs))

    async def _update_raw(self, patient_id: str, accession: str, **kwargs: Any) -> dict[str, Any]:
        try:
            return await self.store.update(self.store.key(patient_id, accession), **kwargs)
        except ConditionFailed as failed:
            if failed.old is None:
                raise ExamNotFound(accession) from None
            raise ClaimRefused(exam_from_item(failed.old)) from None

    async def claim(
        self,
        patient_id: str,
        accession: str,
        user: str,
        user_name: str,
        *,
        lease_ms: int | None = None,
    ) -> Claim:
        now = now_ms()
        secret = secrets.token_hex(16)
        try:
            item = await self._update_raw(
                patient_id,
                accession,
                UpdateExpression=(
                    "SET claimed_by = :u, claimed_by_name = :n, claimed_at = :now,"
                    " lease_expires_at = :exp, lock_token = :secret,"
                    " lock_version = if_not_exists(lock_version, :zero) + :one,"
                    " #v = #v + :one, updated_at = :now"
                ),
                ConditionExpression=(
                    "attribute_exists(PK) AND #s IN (:c, :p) AND (attribute_not_exists(claimed_by)"
                    " OR claimed_by = :u OR lease_expires_at < :now)"
                ),
                ExpressionAttributeNames={"#v": "version", "#s": "status"},
                ExpressionAttributeValues=to_attrs(
                    {
                        ":u": user,
                        ":n": user_name,
                        ":now": now,
                        ":exp": now + (lease_ms or self.lease_ms),
                        ":secret": secret,
                        ":zero": 0,
                        ":one": 1,
                        ":c": ExamStatus.COMPLETED.value,
                        ":p": ExamStatus.PRELIMINARY.value,
                    }
                ),
            )
        except ClaimRefused as refused:
            seen = refused.exam
            if seen.status not in CLAIMABLE_STATES:
                raise NotClaimable(accession, seen.status) from None
            raise AlreadyClaimed(
                accession, seen.claimed_by or "", seen.claimed_by_name, seen.lease_expires_at
            ) from None
        # The fencing attributes are in the raw item only: exam_from_item drops them.
        return Claim(exam_from_item(item), f"{item['lock_version']}.{secret}")

    def _held(self, accession: str, user: str, token: str) -> dict[str, Any]:
        lock_version, secret = parse_token(accession, token)
        return {":u": user, ":lv": lock_version, ":secret": secret}

    async def renew(
        self, patient_id: str, accession: str, user: str, token: str, *, lease_ms: int | None = None
    ) -> Exam:
        """Extend the holder's lease. Refused (`StaleToken`) once the claim is gone."""
        now = now_ms()
        values = self._held(accession, user, token)
        values.update({":exp": now + (lease_ms or self.lease_ms), ":now": now, ":one": 1})
        try:
            return await self._update(
                patient_id,
                accession,
                UpdateExpression="SET lease_expires_at = :exp, #v = #v + :one, updated_at = :now",
                ConditionExpression=_HELD_BY,
                ExpressionAttributeNames={"#v": "version"},
                ExpressionAttributeValues=to_attrs(values),
            )
        except ClaimRefused:
            raise StaleToken(accession) from None

    async def release(self, patient_id: str, accession: str, user: str, token: str) -> Exam:
        """The holder gives the exam back to the list."""
        values = self._held(accession, user, token)
        values.update({":now": now_ms(), ":one": 1})
        try:
            return await self._update(
                patient_id,
                accession,
                UpdateExpression="SET #v = #v + :one, updated_at = :now REMOVE "
                + ", ".join(CLAIM_FIELDS),
                ConditionExpression=_HELD_BY,
                ExpressionAttributeNames={"#v": "version"},
                ExpressionAttributeValues=to_attrs(values),
            )
        except ClaimRefused:
            raise StaleToken(accession) from None

    async def sign(
        self,
        patient_id: str,
        accession: str,
        user: str,
        token: str,
        target: ExamStatus,
        *,
        user_name: str | None = None,
    ) -> Exam:
        """The holder moves the exam to a report state (PRELIMINARY, FINAL, AMENDED).

        FINAL ends the claim; PRELIMINARY keeps it (the reader usually finalizes). The
        signer is recorded on the item (`reported_by`, for peer review) and never leaves
        the store in a delta.
        """
        if target not in READING_STATES:
            raise InvalidTransition(accession, "claimed", target)
        values: dict[str, Any] = self._held(accession, user, token)
        values[":rname"] = user_name or user
        for _ in range(_RACE_RETRIES):
            current = await self.store.get_exam(patient_id, accession)
            if not can_transition(current.status, target):
                raise InvalidTransition(accession, current.status, target)
            try:
                return await self.store.write_transition(
                    current,
                    target,
                    now=now_ms(),
                    condition=_HELD_BY,
                    values=values,
                    sets="reported_by = :u, reported_by_name = :rname",
                )
            except VersionConflict:
                continue  # the holder renewed meanwhile, or the claim is gone: re-read
        raise StaleToken(accession)

    async def break_lock(
        self, patient_id: str, accession: str, admin: str, reason: str
    ) -> tuple[Exam, str | None]:
        """An admin releases whoever holds the exam; recorded. Returns the exam and the
        previous holder (None when nobody held it)."""
        for _ in range(_RACE_RETRIES):
            current = await self.store.get_exam(patient_id, accession)
            if current.claimed_by is None:
                return current, None
            now = now_ms()
            audit = {
                "PK": keys.patient_pk(patient_id),
                "SK": keys.break_lock_audit_sk(accession, now),
                "entity": "AUDIT",
                "tenant": current.tenant,
                "accession": accession,
                "action": "break_lock",
                "by": admin,
                "holder": current.claimed_by,
                "reason": reason,
                "at": now,
            }
            update = {
                "TableName": self.store.table,
                "Key": self.store.key(patient_id, accession),
                "UpdateExpression": "SET #v = :next, updated_at = :now,"
                " lock_version = if_not_exists(lock_version, :zero) + :one REMOVE "
                + ", ".join(CLAIM_FIELDS),
                "ConditionExpression": "#v = :v AND claimed_by = :holder",
                "ExpressionAttributeNames": {"#v": "version"},
                "ExpressionAttributeValues": to_attrs(
                    {
                        ":v": current.version,
                        ":next": current.version + 1,
                        ":now": now,
                        ":zero": 0,
                        ":one": 1,
                        ":holder": current.claimed_by,
                    }
                ),
            }
            items = [
                {"Update": update},
                {"Put": {"TableName": self.store.table, "Item": to_attrs(audit)}},
            ]
            try:
                await self.store.call("transact_write_items", TransactItems=items)
            except self.store.transaction_cancelled:
                continue  # the exam changed under us: read again
            return await self.store.get_exam(patient_id, accession), current.claimed_by
        raise VersionConflict(accession, -1, None)

    async def reap(self, tenant: str) -> list[Exam]:
        """Release every claim of a tenant whose lease has expired; returns those exams.

        Safe on several nodes at once: each release is conditioned on the very lease it
        saw, so a renewed or re-taken claim is left alone and only one reaper wins.
        """
        now = now_ms()
        released: list[Exam] = []
        for status in sorted(CLAIMABLE_STATES):
            expired = [
                e
                async for e in self.store.exams_in_status(
                    tenant,
                    status,
                    filter_expression="attribute_exists(claimed_by) AND lease_expires_at < :now",
                    **{":now": now},
                )
            ]
            for exam in expired:
                try:
                    released.append(
                        await self._update(
                            exam.patient_id,
                            exam.accession,
                            UpdateExpression="SET #v = #v + :one, updated_at = :now REMOVE "
                            + ", ".join(CLAIM_FIELDS),
                            ConditionExpression="claimed_by = :u AND lease_expires_at = :exp",
                            ExpressionAttributeNames={"#v": "version"},
                            ExpressionAttributeValues={
                                ":u": to_attr(exam.claimed_by),
                                ":exp": to_attr(exam.lease_expires_at),
                                ":now": to_attr(now_ms()),
                                ":one": to_attr(1),
                            },
                        )
                    )
                except (ClaimRefused, ExamNotFound):
                    continue  # renewed, re-taken or reaped elsewhere meanwhile
        return released
