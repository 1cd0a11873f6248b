"""Claim, release, sign and break-lock over the WebSocket, on `dynamo.claims`.

The claimant alone receives the claim's token; the session keeps it too and renews the
lease while the connection lives. A dropped connection does not release anything: the
lease runs out unless the same user comes back and claims again (which hands them a
new token). Every successful change is published to the feed at once, ahead of the
stream relay; the relay's copy carries the same version and is dropped as a repeat.
Concurrent claims of one exam pass a short Redis reservation first (`gateway.claimgate`):
the first goes on to DynamoDB, the others wait for its outcome and are answered
`conflict` without queueing writes on the same item.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from dynamo.deltas import ExamDelta
from dynamo.exceptions import (
    AlreadyClaimed,
    ExamNotFound,
    InvalidTransition,
    NotClaimable,
    StaleToken,
    StoreError,
    StoreUnavailable,
)
from dynamo.models import Exam
from dynamo.states import ExamStatus
from gateway.auth import Role
from gateway.claimgate import Holder
from gateway.protocol import BreakLock, ClaimRequest, ErrorCode, Release, Sign
from orchestration import Mode

if TYPE_CHECKING:
    from gateway.handlers import Connection

log = logging.getLogger("gateway.claims")


async def locate(
    session: Connection, request_id: str, exam_id: str, into: dict[str, Any] | None = None
) -> str | None:
    """The exam's patient partition, if the user may see the exam at all.

    Eligibility is read from the row the node's feed delivered last (`Hub.seen_row`,
    no round trip), else from the cache (a worklist row); an exam the cache does not
    hold yet is read from DynamoDB. An exam the user may not see is `not_found`, so its
    existence does not leak.
    """
    gw = session.gw
    tenant = session.principal.tenant if session.principal else ""
    row = gw.hub.seen_row(tenant, exam_id) or await gw.feed.row(tenant, exam_id)
    try:
        if row is None:
            exam = await gw.store.find_exam(tenant, exam_id)
            row = {
                "tenant": exam.tenant,
                "site": exam.site,
                "subspecialty": exam.subspecialty,
                "modality": exam.modality.value,
            }
            patient_id = exam.patient_id
        else:
            patient_id = await gw.store.locate(tenant, exam_id)
    except ExamNotFound:
        patient_id = None
    assert session.principal is not None
    if patient_id is None or row is None or not session.principal.scope.allows(row):
        session.error(request_id, ErrorCode.NOT_FOUND, f"no exam {exam_id} on your worklist")
        return None
    if into is not None:
        into.update(
            site=row.get("site"), subspecialty=row.get("subspecialty"), modality=row.get("modality")
        )
    return patient_id


def store_error(session: Connection, request_id: str, exc: StoreError) -> None:
    detail: dict[str, Any] | None = None
    if isinstance(exc, AlreadyClaimed):
        detail = {
            "holder": {"sub": exc.holder, "name": exc.holder_name},
            "lease_expires_at": exc.lease_expires_at,
        }
        session.gw.metrics["claims_conflict"] += 1
    elif isinstance(exc, InvalidTransition | NotClaimable):
        detail = {"current": str(exc.current)}
    try:
        code = ErrorCode(exc.code)
    except ValueError:
        code = ErrorCode.UNAVAILABLE if isinstance(exc, StoreUnavailable) else ErrorCode.INTERNAL
    session.error(request_id, code, exc.reason, detail)


async def publish_claim(session: Connection, exam: Exam) -> None:
    try:
        await session.gw.feed.publish([ExamDelta.from_exam(exam)])
    except Exception:  # the relay will bring the same change anyway
        log.warning("early publish of a claim change failed; the relay will carry it")


def permitted(session: Connection, request_id: str, role: Role, refusal: str) -> bool:
    """Whether the session's principal has `role` (an admin has every one); otherwise
    the request is answered `forbidden` with `refusal`."""
    p = session.principal
    assert p is not None
    if p.has(role) or p.has(Role.ADMIN):
        return True
    session.error(request_id, ErrorCode.FORBIDDEN, refusal)
    return False


def reads(session: Connection, request_id: str) -> bool:
    """Claims and reports are for radiologists (and admins); coordinators only watch."""
    return permitted(
        session, request_id, Role.RADIOLOGIST, "only radiologists claim and sign exams"
    )


def _spent(session: Connection, what: str, since: float) -> None:
    """Add the microseconds since `since` to the metric `claim_{what}_us` (where a
    claim's time goes: the gate, DynamoDB, the whole handler; /metrics)."""
    session.gw.metrics[f"claim_{what}_us"] += int((time.perf_counter() - since) * 1e6)


async def claim(session: Connection, frame: ClaimRequest) -> None:
    principal = session.principal
    assert principal is not None
    if not reads(session, frame.id):
        return
    began = time.perf_counter()
    gw = session.gw
    try:
        rules = await gw.orchestrator.rules(principal.tenant)
    except StoreError as exc:
        store_error(session, frame.id, exc)
        return
    if rules.mode is Mode.PUSH and not principal.has(Role.ADMIN):
        session.error(
            frame.id,
            ErrorCode.ASSIGNMENT_ONLY,
            "cases are handed out here: press Next case (or accept an offer)",
        )
        return
    where: dict[str, Any] = {}
    patient_id = await locate(session, frame.id, frame.exam_id, where)
    if patient_id is None:
        return
    # Concurrent claims of one exam: the first reserves it, the others hear `conflict`
    # once it won, rather than queue writes on DynamoDB's item (`gateway.claimgate`).
    at = time.perf_counter()
    gate = await gw.claim_gate.enter(principal.tenant, frame.exam_id, principal.sub, principal.name)
    _spent(session, "gate", at)
    if isinstance(gate, Holder):
        gw.metrics["claims_gated"] += 1
        refusal = AlreadyClaimed(frame.exam_id, gate.sub, gate.name, gate.lease_expires_at)
        store_error(session, frame.id, refusal)
        _spent(session, "handled", began)
        return
    at = time.perf_counter()
    try:
        result = await gw.claims.claim(patient_id, frame.exam_id, principal.sub, principal.name)
    except StoreError as exc:
        _spent(session, "store", at)
        store_error(session, frame.id, exc)
        _spent(session, "handled", began)
        if gate is not None:
            await gw.claim_gate.lost(gate)
        return
    except BaseException:
        if gate is not None:
            gw.claim_gate.abandon(gate)  # claims waiting here on this one try again
        raise
    _spent(session, "store", at)
    gw.metrics["claims_won"] += 1
    session.claims[frame.exam_id] = result.token
    session.claim_rows[frame.exam_id] = where
    session.send(
        {
            "type": "claimed",
            "id": frame.id,
            "exam_id": frame.exam_id,
            "token": result.token,
            "version": result.exam.version,
            "lease_expires_at": result.exam.lease_expires_at,
        }
    )
    _spent(session, "handled", began)
    if gate is not None:
        lease = result.exam.lease_expires_at
        await gw.claim_gate.won(gate, principal.sub, principal.name, lease)
    await publish_claim(session, result.exam)
    await gw.presence.update(session)


async def _held(session: Connection, frame: Release | Sign) -> tuple[str, str, str] | None:
    """(user, token, patient_id) for a request on a claim this connection holds (or
    whose token it names); None after answering the request with an error."""
    principal = session.principal
    assert principal is not None
    if not reads(session, frame.id):
        return None
    token = frame.token or session.claims.get(frame.exam_id)
    if token is None:
        session.error(frame.id, ErrorCode.STALE_TOKEN, "this connection holds no claim on it")
        return None
    patient_id = await locate(session, frame.id, frame.exam_id)
    return None if patient_id is None else (principal.sub, token, patient_id)


async def _changed(session: Connection, exam: Exam, reply: dict[str, Any]) -> None:
    """Answer the request, publish the change ahead of the stream, refresh presence."""
    if exam.claimed_by is None:
        session.claims.pop(exam.accession, None)
        # Before the reply: a claim sent the moment the reply arrives finds it clear.
        await session.gw.claim_gate.clear(exam.tenant, exam.accession)
    session.send({**reply, "exam_id": exam.accession, "version": exam.version})
    await publish_claim(session, exam)
    await session.gw.presence.update(session)


async def release(session: Connection, frame: Release) -> None:
    held = await _held(session, frame)
    if held is None:
        return
    user, token, patient_id = held
    try:
        exam = await session.gw.claims.release(patient_id, frame.exam_id, user, token)
    except StoreError as exc:
        if isinstance(exc, StaleToken):
            session.claims.pop(frame.exam_id, None)
        store_error(session, frame.id, exc)
        return
    await _changed(session, exam, {"type": "released", "id": frame.id})


async def sign(session: Connection, frame: Sign) -> None:
    held = await _held(session, frame)
    if held is None:
        return
    user, token, patient_id = held
    try:
        name = session.principal.name if session.principal else None
        exam = await session.gw.claims.sign(
            patient_id, frame.exam_id, user, token, frame.status, user_name=name
        )
    except StoreError as exc:
        store_error(session, frame.id, exc)
        return
    if exam.status is ExamStatus.FINAL:
        await _credit(session, exam)
    await _changed(session, exam, {"type": "signed", "id": frame.id, "status": exam.status.value})


async def _credit(session: Connection, exam: Exam) -> None:
    """The reader's RVUs this shift grow by the case they finished (for balancing)."""
    gw = session.gw
    assert session.principal is not None
    try:
        rules = await gw.orchestrator.rules(exam.tenant)
        await gw.orchestrator.credit(exam.tenant, session.principal.sub, exam.procedure_code, rules)
    except Exception:
        log.warning("crediting RVUs for a signed case failed")


async def break_lock(session: Connection, frame: BreakLock) -> None:
    principal = session.principal
    assert principal is not None
    if not principal.has(Role.ADMIN):
        session.error(frame.id, ErrorCode.FORBIDDEN, "only an admin can break a lock")
        return
    patient_id = await locate(session, frame.id, frame.exam_id)
    if patient_id is None:
        return
    gw = session.gw
    try:
        before = await gw.store.get_exam(patient_id, frame.exam_id)
        exam, holder = await gw.claims.break_lock(
            patient_id, frame.exam_id, principal.sub, frame.reason
        )
    except StoreError as exc:
        store_error(session, frame.id, exc)
        return
    gw.metrics["locks_broken"] += int(holder is not None)
    await gw.claim_gate.clear(principal.tenant, frame.exam_id)  # before the reply
    session.send(
        {
            "type": "lock_broken",
            "id": frame.id,
            "exam_id": frame.exam_id,
            "previous_holder": before.claimed_by_name if holder else None,
            "version": exam.version,
        }
    )
    await publish_claim(session, exam)
    if holder is not None:
        await gw.presence.notify(
            principal.tenant,
            holder,
            {
                "type": "claim_lost",
                "exam_id": frame.exam_id,
                "reason": "broken",
                "by": principal.name,
                "message": frame.reason,
            },
        )


async def renew_session(session: Connection) -> None:
    """Renew this connection's claims (the gateway's housekeeping calls this every
    `claim_renew_seconds`); tell the client of any it lost."""
    gw = session.gw
    principal = session.principal
    if principal is None:
        return
    for exam_id, token in list(session.claims.items()):
        try:
            patient_id = await gw.store.locate(principal.tenant, exam_id)
            await gw.claims.renew(patient_id, exam_id, principal.sub, token)
        except StaleToken:
            if session.claims.get(exam_id) != token:
                continue  # claimed again on this connection meanwhile: that token stands
            session.claims.pop(exam_id, None)
            holder = None
            with contextlib.suppress(StoreError):
                holder = (await gw.store.find_exam(principal.tenant, exam_id)).claimed_by
            # Still ours: the user claimed it again elsewhere (another tab).
            reason = "superseded" if holder == principal.sub else "expired"
            session.send({"type": "claim_lost", "exam_id": exam_id, "reason": reason})
            await gw.presence.update(session)
        except StoreError as exc:
            log.warning("renewing a claim failed (%s); retrying next round", exc.code)
