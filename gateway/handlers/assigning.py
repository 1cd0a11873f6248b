"""`next`: hand a reader the best case they may read, already claimed for them.

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
from gateway.handlers.claiming import publish_claim, reads, store_error
from gateway.protocol import ErrorCode, NextRequest
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
    ranked = rank(reader, board.candidates_for(principal.sub), rules, mean_rvu=mean)
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
