"""`next`: hand a reader the best case they may read, already claimed for them; and the
answers to a STAT offer (`offer_accept`, `offer_decline`; the offers are made by
`gateway.offers`).

The ranking is `orchestration.next_case` (urgency and deadline first, then eligibility by
the reader's scope rule, `Scope.allows`, then balance); the assignment is the ordinary
conditional claim (`dynamo.claims`), so two readers can never be handed one exam. Many
readers pressing at once (on any node) each reserve their case in Redis first, so they
spread over the list instead of all racing for its top; a case taken meanwhile is
skipped for the next best.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

from dynamo.exceptions import AlreadyClaimed, ExamNotFound, NotClaimable, StoreError
from dynamo.models import now_ms
from gateway.auth import Role
from gateway.handlers.claiming import locate, permitted, publish_claim, reads, store_error
from gateway.protocol import (
    BoardRequest,
    ErrorCode,
    NextRequest,
    OfferAccept,
    OfferDecline,
    Reassign,
)
from orchestration import next_case, rank
from orchestration.policy import Allows

if TYPE_CHECKING:
    from gateway.handlers import Connection

log = logging.getLogger("gateway.orchestration")

# Claims tried per press before giving up (each a case someone else took meanwhile).
MAX_CLAIM_TRIES = 8


async def next_request(session: Connection, frame: NextRequest) -> None:
    principal = session.principal
    assert principal is not None
    if not reads(session, frame.id):
        return
    gw = session.gw
    tenant = principal.tenant
    try:
        board = await gw.orchestrator.board(tenant)
    except StoreError as exc:
        store_error(session, frame.id, exc)
        return
    rules = board.rules
    reader = board.load(principal.sub, cast(Allows, principal.scope.allows))
    if reader.open_claims >= rules.max_open_claims:
        session.error(
            frame.id,
            ErrorCode.AT_CAP,
            f"you hold {reader.open_claims} open cases (the maximum is {rules.max_open_claims})",
            {"open_claims": reader.open_claims, "max_open_claims": rules.max_open_claims},
        )
        return
    mean = board.mean_rvu()
    # A STAT offered to someone else is theirs to answer until the offer ends.
    now = now_ms()
    offered = {
        exam_id
        for exam_id, state in (await gw.offers.all(tenant)).items()
        if state.get("reader") not in (None, principal.sub)
        and int(state.get("expires_at", 0)) > now
    }
    waiting = [c for c in board.candidates_for(principal.sub) if c.exam_id not in offered]
    ranked = rank(reader, waiting, rules, mean_rvu=mean)
    tries = 0
    for i, candidate in enumerate(ranked):
        if tries >= MAX_CLAIM_TRIES:
            break
        exam_id = candidate.exam_id
        if not await gw.orchestrator.reserve(tenant, exam_id, gw.node):
            continue  # another press is claiming it now
        tries += 1
        try:
            patient_id = await gw.store.locate(tenant, exam_id)
            result = await gw.claims.claim(patient_id, exam_id, principal.sub, principal.name)
        except (AlreadyClaimed, NotClaimable, ExamNotFound):
            continue  # taken (or moved on) since the cache said otherwise
        except StoreError as exc:
            await gw.orchestrator.unreserve(tenant, exam_id)
            store_error(session, frame.id, exc)
            return
        decision = next_case(reader, ranked[i:], rules, mean_rvu=mean)
        assert decision is not None and decision.exam_id == exam_id
        explained: dict[str, Any] = {**decision.explain(), "skipped": i}
        gw.metrics["next_assigned"] += 1
        row = dict(candidate.row)
        session.claims[exam_id] = result.token
        session.claim_rows[exam_id] = {
            "site": row.get("site"),
            "subspecialty": row.get("subspecialty"),
        }
        session.send(
            {
                "type": "claimed",
                "id": frame.id,
                "exam_id": exam_id,
                "token": result.token,
                "version": result.exam.version,
                "lease_expires_at": result.exam.lease_expires_at,
                "decision": explained,
            }
        )
        await gw.orchestrator.record(tenant, decision, how="next")
        await publish_claim(session, result.exam)
        await gw.presence.update(session)
        return
    gw.metrics["next_nothing"] += 1
    session.error(
        frame.id,
        ErrorCode.NOTHING_ELIGIBLE,
        "no waiting case you may read",
        {"open_claims": reader.open_claims},
    )


async def _live_offer(session: Connection, request_id: str, exam_id: str) -> dict[str, Any] | None:
    """The offer of `exam_id` to this reader, if it is still theirs to answer."""
    principal = session.principal
    assert principal is not None
    state = await session.gw.offers.get(principal.tenant, exam_id)
    if (
        state is None
        or state.get("reader") != principal.sub
        or int(state.get("expires_at", 0)) <= now_ms()
    ):
        session.error(request_id, ErrorCode.OFFER_GONE, f"no live offer of {exam_id} to you")
        return None
    return state


async def offer_accept(session: Connection, frame: OfferAccept) -> None:
    principal = session.principal
    assert principal is not None
    if not reads(session, frame.id):
        return
    gw = session.gw
    tenant = principal.tenant
    state = await _live_offer(session, frame.id, frame.exam_id)
    if state is None:
        return
    try:
        patient_id = await gw.store.locate(tenant, frame.exam_id)
        result = await gw.claims.claim(patient_id, frame.exam_id, principal.sub, principal.name)
    except (AlreadyClaimed, NotClaimable, ExamNotFound):
        await gw.offers.drop(tenant, frame.exam_id)
        session.error(frame.id, ErrorCode.OFFER_GONE, f"{frame.exam_id} was taken meanwhile")
        return
    except StoreError as exc:
        store_error(session, frame.id, exc)
        return
    gw.metrics["offers_accepted"] += 1
    exam = result.exam
    session.claims[frame.exam_id] = result.token
    session.claim_rows[frame.exam_id] = {"site": exam.site, "subspecialty": exam.subspecialty}
    session.send(
        {
            "type": "claimed",
            "id": frame.id,
            "exam_id": frame.exam_id,
            "token": result.token,
            "version": exam.version,
            "lease_expires_at": exam.lease_expires_at,
            "decision": state.get("decision"),
        }
    )
    # The cache shows the claim before the offer goes: the offer desk reads its board
    # from the cache, and a STAT still waiting there with no offer on it would be offered
    # afresh (to the next reader, even one who declined it) though it is taken.
    await publish_claim(session, exam)
    await gw.offers.drop(tenant, frame.exam_id)
    await gw.orchestrator.record(
        tenant, {"exam_id": frame.exam_id, "reader": principal.sub}, how="offer-accepted"
    )
    await gw.presence.update(session)


async def offer_decline(session: Connection, frame: OfferDecline) -> None:
    principal = session.principal
    assert principal is not None
    if not reads(session, frame.id):
        return
    gw = session.gw
    state = await _live_offer(session, frame.id, frame.exam_id)
    if state is None:
        return
    state["declined"] = [*state.get("declined", []), principal.sub]
    state["reader"] = None
    await gw.offers.put(principal.tenant, state)
    gw.metrics["offers_declined"] += 1
    await gw.orchestrator.record(
        principal.tenant,
        {"exam_id": frame.exam_id, "reader": principal.sub},
        how="offer-declined",
    )
    session.send(
        {"type": "offer_ended", "id": frame.id, "exam_id": frame.exam_id, "reason": "declined"}
    )


def _coordinates(session: Connection, request_id: str) -> bool:
    return permitted(
        session, request_id, Role.COORDINATOR, "the workload board is for coordinators"
    )


async def board(session: Connection, frame: BoardRequest) -> None:
    if not _coordinates(session, frame.id):
        return
    session.gw.workload.watch(session)
    await session.gw.workload.send(session, frame.id)


async def reassign(session: Connection, frame: Reassign) -> None:
    """Give an exam to another online reader who may read it: the holder's claim is
    broken (audited, as an admin's break-lock) and they are told; the new reader's
    connections hold the new claim at once."""
    principal = session.principal
    assert principal is not None
    if not _coordinates(session, frame.id):
        return
    gw = session.gw
    tenant = principal.tenant
    where: dict[str, Any] = {}
    patient_id = await locate(session, frame.id, frame.exam_id, where)
    if patient_id is None:
        return
    row = {"tenant": tenant, **where}
    readers = await gw.presence.readers(tenant)
    target = readers.get(frame.to)
    if target is None or not target.allows(row):
        session.error(
            frame.id,
            ErrorCode.FORBIDDEN,
            f"{frame.to} is not an online reader who may read {frame.exam_id}",
            {"online_readers": sorted(s for s, scope in readers.items() if scope.allows(row))},
        )
        return
    users = await gw.presence.users(tenant)
    to_name = str(users.get(frame.to, {}).get("name") or frame.to)
    reason = frame.reason or f"reassigned to {to_name}"
    try:
        before = await gw.store.get_exam(patient_id, frame.exam_id)
        holder: str | None = None
        if before.claimed_by is not None and before.claimed_by != frame.to:
            _, holder = await gw.claims.break_lock(patient_id, frame.exam_id, principal.sub, reason)
        result = await gw.claims.claim(patient_id, frame.exam_id, frame.to, to_name)
    except StoreError as exc:
        store_error(session, frame.id, exc)
        return
    exam = result.exam
    gw.metrics["reassigned"] += 1
    await gw.claim_gate.clear(tenant, frame.exam_id)  # it named the previous holder
    session.send(
        {
            "type": "reassigned",
            "id": frame.id,
            "exam_id": frame.exam_id,
            "to": frame.to,
            "previous_holder": before.claimed_by_name if holder else None,
            "version": exam.version,
        }
    )
    await publish_claim(session, exam)
    await gw.offers.drop(tenant, frame.exam_id)
    await gw.orchestrator.record(
        tenant,
        {
            "exam_id": frame.exam_id,
            "reader": frame.to,
            "rule": "reassigned",
            "from": holder,
            "by": principal.sub,
        },
        how="reassign",
    )
    if holder is not None:
        await gw.presence.notify(
            tenant,
            holder,
            {
                "type": "claim_lost",
                "exam_id": frame.exam_id,
                "reason": "reassigned",
                "by": principal.name,
                "message": reason,
            },
        )
    # The token goes to the new reader's own connections only (presence keeps it out of
    # the frame it sends them); their node then renews the claim as for any claim.
    await gw.presence.notify(
        tenant,
        frame.to,
        {
            "type": "assigned",
            "exam_id": frame.exam_id,
            "version": exam.version,
            "lease_expires_at": exam.lease_expires_at,
            "by": principal.name,
        },
        claim={"token": result.token, "site": exam.site, "subspecialty": exam.subspecialty},
    )
