"""Peer review over the WebSocket: the coordinator's board, the reviewer's queue, the
reader's feedback, each blinded as RADPEER practice asks.

Who sees what of a review (`visible`, the one rule every review path applies: the
`reviews` list, live `review` frames, `review_ok` replies and errors):
- nobody sees a review outside their scope (`Principal.scope`: tenant, sites,
  subspecialties, modalities), whatever their role: it is `not_found` to them;
- the assigned reviewer: the exam and the review's work (an allow-list), never the
  original reader; someone it was assigned to before: nothing;
- the original reader: the exam, the outcome and the reviewer's random number (an
  allow-list), never the reviewer;
- these two rules win over any role: an admin or coordinator who is the reader or a
  reviewer sees only that, and may not assign or arbitrate it (`forbidden`);
- other coordinators and admins: everything, names included;
- anyone else: nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson

from dynamo.directory.models import Person
from dynamo.exceptions import ExamNotFound, StoreError
from dynamo.models import now_ms
from dynamo.review import Review, ReviewState
from gateway.auth import Principal, Role
from gateway.handlers.claiming import store_error
from gateway.protocol import (
    ErrorCode,
    ReviewAdd,
    ReviewArbitrate,
    ReviewAssign,
    ReviewClaim,
    ReviewScore,
    ReviewsRequest,
)
from worklist_cache import keys
from worklist_cache.views import Scope

if TYPE_CHECKING:
    from gateway.context import Gateway
    from gateway.handlers import Connection

log = logging.getLogger("gateway.reviews")

# What the two parties of a review may see of it: allow-lists, so a field added to a
# review later stays with the coordinators until someone decides otherwise.
_EXAM_FIELDS = frozenset(
    {
        "kind",
        "op",
        "exam_id",
        "accession",
        "tenant",
        "site",
        "modality",
        "subspecialty",
        "procedure",
        "state",
        "source",
        "due_at",
        "score",
        "review_comment",
        "final_score",
        "created_at",
        "updated_at",
        "version",
    }
)
_READER_SEES = _EXAM_FIELDS | {"original_reader", "original_reader_name", "reviewer_id"}
_REVIEWER_SEES = _EXAM_FIELDS | {"reviewer", "reviewer_name", "claimed_by", "lease_expires_at"}
OPEN = (ReviewState.ASSIGNED.value, ReviewState.ARBITRATION.value)


def is_coordinator(p: Principal) -> bool:
    return p.has(Role.COORDINATOR) or p.has(Role.ADMIN)


def _is_reviewer(review: dict[str, Any], p: Principal) -> bool:
    """The review is, or was, assigned to this user."""
    return review.get("reviewer") == p.sub or p.sub in (review.get("assignees") or ())


def _is_reader(review: dict[str, Any], p: Principal) -> bool:
    return bool(review.get("original_reader")) and review.get("original_reader") == p.sub


def visible(review: dict[str, Any], p: Principal) -> dict[str, Any] | None:
    """What of `review` this user may see (None: nothing)."""
    if not p.scope.allows(review):
        return None
    # The parties first: blinding wins over any role.
    if _is_reviewer(review, p):
        if review.get("reviewer") != p.sub:
            return None  # reassigned away: no longer theirs to see
        return {k: v for k, v in review.items() if k in _REVIEWER_SEES}
    if _is_reader(review, p):
        shown = {k: v for k, v in review.items() if k in _READER_SEES}
        if review.get("state") != ReviewState.DONE.value:
            # A score is not an outcome until arbitration is over.
            for key in ("score", "review_comment", "final_score"):
                shown.pop(key, None)
        return shown
    if is_coordinator(p):
        return review
    return None


def eligible(
    review: dict[str, Any], people: list[Person], open_counts: dict[str, int]
) -> list[Any]:
    """The tenant's active radiologists (the directory's `people`) who may review it,
    fewest open reviews first: not its reader, credentialed for its site,
    subspecialty and modality (empty credentials mean all)."""
    users = [
        u
        for u in people
        if u.active
        and Role.RADIOLOGIST in u.roles
        and u.sub != review.get("original_reader")
        and Scope.of_person(u).allows(review)
    ]
    return sorted(users, key=lambda u: (open_counts.get(u.sub, 0), u.sub))


class ReviewBoard:
    """Live review deltas to the sessions that asked for them, redacted per viewer."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.watching: set[Connection] = set()
        # What each session was shown, so a review it may no longer see (reassigned)
        # is taken back with `op: remove`.
        self._shown: dict[Connection, set[str]] = {}

    async def watch(self, session: Connection) -> None:
        tenant = session.principal.tenant if session.principal else ""

        def deliver(raw: bytes) -> None:
            self._on_message(tenant, raw)

        await self.gw.subscriber.subscribe(keys.review_channel(tenant), deliver)
        self.watching.add(session)

    def forget(self, session: Connection) -> None:
        self.watching.discard(session)
        self._shown.pop(session, None)

    def shown(self, session: Connection, exam_ids: set[str]) -> None:
        self._shown[session] = set(exam_ids)

    def _on_message(self, tenant: str, raw: bytes) -> None:
        review = orjson.loads(raw)
        for session in list(self.watching):
            p = session.principal
            if p is None or p.tenant != tenant:
                continue
            shown = visible(review, p)
            seen = self._shown.setdefault(session, set())
            if shown is not None:
                seen.add(review["exam_id"])
                session.send({"type": "review", "review": shown})
            elif review["exam_id"] in seen:
                seen.discard(review["exam_id"])
                gone = {"exam_id": review["exam_id"], "op": "remove", "version": review["version"]}
                session.send({"type": "review", "review": gone})


def _require_coordinator(session: Connection, request_id: str) -> Principal | None:
    p = session.principal
    assert p is not None
    if not is_coordinator(p):
        session.error(request_id, ErrorCode.FORBIDDEN, "coordinators only")
        return None
    return p


def _row(review: Review) -> dict[str, Any]:
    row = review.model_dump(mode="json")
    return {**row, "exam_id": row["accession"]}


def _not_found(session: Connection, request_id: str, exam_id: str) -> None:
    session.error(request_id, ErrorCode.NOT_FOUND, f"no review of exam {exam_id} for you")


async def _review_for(session: Connection, request_id: str, exam_id: str) -> Review | None:
    """The review, if this user may see it at all; else `not_found`, worded the same
    whether it does not exist or is not theirs, so its existence does not leak."""
    p = session.principal
    assert p is not None
    try:
        review = await session.gw.reviews.get(p.tenant, exam_id)
    except ExamNotFound:
        review = None
    except StoreError as exc:
        store_error(session, request_id, exc)
        return None
    if review is None or visible(_row(review), p) is None:
        _not_found(session, request_id, exam_id)
        return None
    return review


async def _managed(
    session: Connection, request_id: str, exam_id: str
) -> tuple[Principal, Review] | None:
    """A coordinator may manage this review: in their scope, and not one they read or
    review (a party managing it would learn the other side)."""
    p = _require_coordinator(session, request_id)
    if p is None:
        return None
    review = await _review_for(session, request_id, exam_id)
    if review is None:
        return None
    row = _row(review)
    if _is_reader(row, p) or _is_reviewer(row, p):
        session.error(
            request_id,
            ErrorCode.FORBIDDEN,
            "you read or review this exam: another coordinator manages its review",
        )
        return None
    return p, review


def _reply(session: Connection, request_id: str, action: str, review: Review, **extra: Any) -> None:
    p = session.principal
    assert p is not None
    session.send(
        {
            "type": "review_ok",
            "id": request_id,
            "action": action,
            "review": visible(_row(review), p),
            **extra,
        }
    )


async def reviews(session: Connection, frame: ReviewsRequest) -> None:
    p = session.principal
    assert p is not None
    await session.gw.reviews_board.watch(session)
    rows = await session.gw.feed.reviews(p.tenant)
    shown = [r for r in (visible(row, p) for row in rows) if r is not None]
    shown.sort(key=lambda r: (r.get("state", ""), r.get("due_at") or 0, r["exam_id"]))
    session.gw.reviews_board.shown(session, {r["exam_id"] for r in shown})
    session.send({"type": "reviews", "id": frame.id, "reviews": shown})


async def add(session: Connection, frame: ReviewAdd) -> None:
    p = _require_coordinator(session, frame.id)
    if p is None:
        return
    try:
        review = await session.gw.reviews.pool(
            p.tenant, frame.exam_id, source="manual", allowed=p.scope.allows
        )
    except StoreError as exc:
        store_error(session, frame.id, exc)
        return
    if review is None:
        session.error(frame.id, ErrorCode.CONFLICT, f"exam {frame.exam_id} is already pooled")
        return
    _reply(session, frame.id, "add", review)


async def assign(session: Connection, frame: ReviewAssign) -> None:
    managed = await _managed(session, frame.id, frame.exam_id)
    if managed is None:
        return
    p, current = managed
    gw = session.gw
    # Open reviews per reviewer, from the cache: a count that may lag a moment behind.
    rows = await gw.feed.reviews(p.tenant)
    open_counts: dict[str, int] = {}
    for row in rows:
        if row.get("state") in OPEN and row.get("reviewer"):
            open_counts[row["reviewer"]] = open_counts.get(row["reviewer"], 0) + 1
    # Not the coordinator assigning it: they have seen who read it.
    people = await gw.directory.people(p.tenant)
    candidates = [u for u in eligible(_row(current), people, open_counts) if u.sub != p.sub]
    chosen = (
        next((u for u in candidates if u.sub == frame.reviewer), None)
        if frame.reviewer
        else (candidates[0] if candidates else None)
    )
    if chosen is None:
        session.error(
            frame.id,
            ErrorCode.FORBIDDEN,
            "not an eligible reviewer (the reader, yourself, or not credentialed for this"
            " site and subspecialty)",
            # Sorted by sub: the load order counts reviews the coordinator may not see.
            {"eligible": sorted(u.sub for u in candidates)},
        )
        return
    due = now_ms() + int(frame.due_in_hours * 3_600_000)
    try:
        review = await gw.reviews.assign(p.tenant, frame.exam_id, chosen.sub, chosen.name, due)
    except StoreError as exc:
        store_error(session, frame.id, exc)
        return
    _reply(session, frame.id, "assign", review)


async def claim(session: Connection, frame: ReviewClaim) -> None:
    p = session.principal
    assert p is not None
    if await _review_for(session, frame.id, frame.exam_id) is None:
        return
    try:
        review, token = await session.gw.reviews.claim(p.tenant, frame.exam_id, p.sub)
    except StoreError as exc:
        store_error(session, frame.id, exc)
        return
    session.review_tokens[frame.exam_id] = token
    _reply(session, frame.id, "claim", review, token=token)


async def score(session: Connection, frame: ReviewScore) -> None:
    p = session.principal
    assert p is not None
    if await _review_for(session, frame.id, frame.exam_id) is None:
        return
    token = frame.token or session.review_tokens.get(frame.exam_id)
    if token is None:
        session.error(frame.id, ErrorCode.STALE_TOKEN, "claim the review first")
        return
    try:
        review = await session.gw.reviews.score(
            p.tenant, frame.exam_id, p.sub, token, frame.score, frame.comment
        )
    except StoreError as exc:
        store_error(session, frame.id, exc)
        return
    session.review_tokens.pop(frame.exam_id, None)
    _reply(session, frame.id, "score", review)


async def arbitrate(session: Connection, frame: ReviewArbitrate) -> None:
    managed = await _managed(session, frame.id, frame.exam_id)
    if managed is None:
        return
    p, _ = managed
    try:
        review = await session.gw.reviews.arbitrate(
            p.tenant, frame.exam_id, p.sub, frame.decision, frame.score
        )
    except StoreError as exc:
        store_error(session, frame.id, exc)
        return
    _reply(session, frame.id, "arbitrate", review)
