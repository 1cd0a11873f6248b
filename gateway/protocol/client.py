"""Client -> server frames, and the adapter that parses them."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import ConfigDict, Field, TypeAdapter, model_validator

from dynamo.review import RADPEER
from dynamo.states import ExamStatus
from gateway.protocol.common import ClaimToken, ExamId, RequestId, Tenant, _Frame
from worklist_cache.views import View


class Auth(_Frame):
    """The first frame: nothing else is processed before it. Sent again later with a
    fresh token, it extends the session (same user only)."""

    type: Literal["auth"]
    id: RequestId
    token: str = Field(min_length=1, max_length=8192)


class Position(_Frame):
    epoch: str = Field(max_length=64)
    offset: str = Field(pattern=r"^\d{1,20}-\d{1,20}$")


class Subscribe(_Frame):
    """Start a live view. The reply is a `snapshot` (or, with `since`, a `resumed`)
    with the same `id`, then `delta`s carrying `sub` = that id."""

    type: Literal["subscribe"]
    id: RequestId
    tenant: Tenant | None = None  # defaults to the token's tenant; another one is forbidden
    view: View = Field(default_factory=View)
    limit: int = Field(default=500, ge=1, le=5000)
    since: Position | None = None  # resume after this feed position


class Unsubscribe(_Frame):
    type: Literal["unsubscribe"]
    id: RequestId
    sub: RequestId


class Ping(_Frame):
    type: Literal["ping"]
    id: RequestId


class ClaimRequest(_Frame):
    """Claim an exam to read it. The reply `claimed` carries the claim's secret token."""

    type: Literal["claim"]
    id: RequestId
    exam_id: ExamId


class NextRequest(_Frame):
    """Hand me the best case I may read, already claimed for me: the reply is `claimed`
    (with its secret token and `decision`, why this case), or `nothing_eligible` /
    `at_cap`."""

    type: Literal["next"]
    id: RequestId


class OfferAccept(_Frame):
    """Take the STAT offered to you: the reply is `claimed`, as for `next`."""

    type: Literal["offer_accept"]
    id: RequestId
    exam_id: ExamId


class OfferDecline(_Frame):
    """Pass the STAT offered to you to the next reader; the reply is `offer_ended`."""

    type: Literal["offer_decline"]
    id: RequestId
    exam_id: ExamId


class BoardRequest(_Frame):
    """Coordinators and admins: the live workload board (a `board` frame now, then a
    fresh one whenever it changes)."""

    type: Literal["board"]
    id: RequestId


class Reassign(_Frame):
    """Coordinators and admins: give an exam to another online reader who may read it;
    the holder (if any) loses it and is told, the new reader holds it at once."""

    type: Literal["reassign"]
    id: RequestId
    exam_id: ExamId
    to: str = Field(min_length=1, max_length=128)
    reason: str = Field(default="", max_length=200)


class Release(_Frame):
    """Give a claimed exam back. `token` defaults to the one this connection holds."""

    type: Literal["release"]
    id: RequestId
    exam_id: ExamId
    token: ClaimToken | None = None


class Sign(_Frame):
    """The claim holder files a report: PRELIMINARY keeps the claim, FINAL ends it."""

    type: Literal["sign"]
    id: RequestId
    exam_id: ExamId
    status: Literal[ExamStatus.PRELIMINARY, ExamStatus.FINAL, ExamStatus.AMENDED]
    token: ClaimToken | None = None


class BreakLock(_Frame):
    """Admin only: release whoever holds the exam; they are told why."""

    type: Literal["break_lock"]
    id: RequestId
    exam_id: ExamId
    reason: str = Field(min_length=1, max_length=200)


class RowRequest(_Frame):
    """Ask for one exam's row in a subscription: after a `patch` whose `base` is not the
    version you hold (the reply is a `row`)."""

    type: Literal["row"]
    id: RequestId
    sub: RequestId
    exam_id: ExamId


class PresenceRequest(_Frame):
    type: Literal["presence"]
    id: RequestId


RadpeerScore = Literal["1", "2a", "2b", "3a", "3b"]
# A Literal must be spelled out for the schema and the type checker; it may not drift
# from the store's one definition.
if get_args(RadpeerScore) != RADPEER:  # pragma: no cover (fails at import)
    raise RuntimeError("gateway.protocol.RadpeerScore differs from dynamo.review.RADPEER")


class ReviewsRequest(_Frame):
    """The peer reviews you may see (coordinators: all; reviewers: theirs, blinded;
    readers: the outcome on their exams), then every change as a `review` frame."""

    type: Literal["review_list"]
    id: RequestId


class ReviewAdd(_Frame):
    """Coordinator: put a FINAL exam in the review pool by hand."""

    type: Literal["review_add"]
    id: RequestId
    exam_id: ExamId


class ReviewAssign(_Frame):
    """Coordinator: give a pooled review to `reviewer` (a radiologist who is not its
    reader, credentialed for its site and subspecialty); without `reviewer`, to the
    eligible one with the fewest open reviews."""

    type: Literal["review_assign"]
    id: RequestId
    exam_id: ExamId
    reviewer: str | None = Field(default=None, max_length=128)
    due_in_hours: float = Field(default=72.0, gt=0, le=720)


class ReviewClaim(_Frame):
    """The assigned reviewer takes the review (lease and token, like a read)."""

    type: Literal["review_claim"]
    id: RequestId
    exam_id: ExamId


class ReviewScore(_Frame):
    """RADPEER score under the claim; 2b, 3a and 3b need a comment (and go to
    arbitration)."""

    type: Literal["review_score"]
    id: RequestId
    exam_id: ExamId
    score: RadpeerScore
    comment: str = Field(default="", max_length=2000)
    token: ClaimToken | None = None


class ReviewArbitrate(_Frame):
    """Coordinator: confirm the reviewer's score, change it, or return it."""

    # The schema says it too (JSON Schema if/then), so a client reads the rule there.
    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"decision": {"const": "change"}}, "required": ["decision"]},
            "then": {"required": ["score"], "properties": {"score": {"not": {"type": "null"}}}},
        }
    )

    type: Literal["review_arbitrate"]
    id: RequestId
    exam_id: ExamId
    decision: Literal["confirm", "change", "return"]
    score: RadpeerScore | None = None  # required with "change"

    @model_validator(mode="after")
    def _change_names_a_score(self) -> ReviewArbitrate:
        if self.decision == "change" and self.score is None:
            raise ValueError("decision 'change' needs a score")
        return self


ClientFrameType = (
    Auth
    | Subscribe
    | Unsubscribe
    | Ping
    | ClaimRequest
    | NextRequest
    | OfferAccept
    | OfferDecline
    | BoardRequest
    | Reassign
    | Release
    | Sign
    | BreakLock
    | PresenceRequest
    | RowRequest
    | ReviewsRequest
    | ReviewAdd
    | ReviewAssign
    | ReviewClaim
    | ReviewScore
    | ReviewArbitrate
)
ClientFrame = Annotated[ClientFrameType, Field(discriminator="type")]
client_frame: TypeAdapter[ClientFrameType] = TypeAdapter(ClientFrame)
