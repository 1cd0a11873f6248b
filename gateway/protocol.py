"""The WebSocket protocol (`ris.v1`): every frame is a JSON object with a `type`.

These models are the protocol's single definition: the gateway parses client frames
with them, `schema()` generates the JSON Schema served at `/protocol/schema.json`, and
docs/protocol.md shows examples of each. The fan-out path builds `delta` frames from
bytes for speed; tests check those bytes validate against `DeltaFrame`.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from dynamo.deltas import ExamDelta
from dynamo.review import RADPEER
from dynamo.states import ExamStatus
from worklist_cache.views import View

PROTOCOL = "ris.v1"

RequestId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
Tenant = Annotated[str, Field(pattern=r"^[a-z0-9-]{1,40}$")]
ExamId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
ClaimToken = Annotated[str, Field(max_length=128)]


class ErrorCode(StrEnum):
    """Stable error codes; a client acts on these, never on the message text."""

    BAD_REQUEST = "bad_request"  # not JSON, unknown `type`, or a field out of range
    UNAUTHORIZED = "unauthorized"  # no valid token: the connection closes (4003)
    TOKEN_EXPIRED = "token_expired"  # refresh in-band with a new `auth`, or be closed (4004)
    FORBIDDEN = "forbidden"  # authenticated, but this tenant/site/action is not yours
    NOT_FOUND = "not_found"  # no such subscription / exam (or not one you may see)
    CONFLICT = "conflict"  # someone else holds the claim; `detail.holder` says who
    STALE_TOKEN = "stale_token"  # your claim token is not the current one (expired, broken)
    INVALID_TRANSITION = "invalid_transition"  # the exam's state forbids it; `detail.current`
    RATE_LIMITED = "rate_limited"  # too many requests; `detail.retry_after_ms`
    TOO_LARGE = "too_large"  # frame above the size limit (the connection closes, 1009)
    TOO_MANY = "too_many_subscriptions"
    UNAVAILABLE = "unavailable"  # the store is throttled or down: retry with backoff
    NOTHING_ELIGIBLE = "nothing_eligible"  # `next`: no waiting case you may read
    AT_CAP = "at_cap"  # `next`: you hold your tenant's maximum of open claims already
    ASSIGNMENT_ONLY = "assignment_only"  # a hand-picked `claim` in a push-mode tenant
    OFFER_GONE = "offer_gone"  # `offer_accept`/`offer_decline`: no live offer of it to you
    INTERNAL = "internal"  # the server failed; retrying may help


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY = 1008  # origin not allowed, or abuse
    TOO_LARGE = 1009  # frame above the size limit
    INTERNAL = 1011
    RESTARTING = 1012  # the node is draining: reconnect (to another node) and resume
    TRY_AGAIN = 1013  # the node is not ready: reconnect with backoff
    TOO_SLOW = 4001  # the client fell too far behind; reconnect and resume
    UNAUTHORIZED = 4003  # no valid `auth` in time, or a bad token: log in again
    TOKEN_EXPIRED = 4004  # the token expired and was not refreshed in-band
    PRIVILEGES_CHANGED = 4005  # the directory changed what this person may see: reconnect


class _Frame(BaseModel):
    # Strict: a wire value of the wrong JSON type is refused, never coerced ("500" is
    # not an integer, 0 is not a boolean), so the served schema is the whole truth.
    model_config = ConfigDict(extra="forbid", strict=True)


# ---- client -> server -------------------------------------------------------------


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


# ---- server -> client -------------------------------------------------------------


class Welcome(_Frame):
    type: Literal["welcome"] = "welcome"
    protocol: Literal["ris.v1"] = "ris.v1"
    node: str
    auth_timeout_ms: int


class UserInfo(_Frame):
    sub: str
    name: str
    roles: list[str]
    tenant: str
    sites: list[str]  # empty: every site of the tenant
    subspecialties: list[str]  # empty: every subspecialty
    modalities: list[str] = []  # empty: every modality


class Authenticated(_Frame):
    type: Literal["authenticated"] = "authenticated"
    id: RequestId
    user: UserInfo
    expires_at: int  # epoch ms: send a fresh `auth` before then


class SnapshotFrame(_Frame):
    """The view's rows (most urgent first), consistent with feed position
    (`epoch`, `offset`): every later change arrives as a `delta`. `reset` is true when
    the client asked to resume and could not be (history gone or another epoch):
    replace every row."""

    type: Literal["snapshot"] = "snapshot"
    id: RequestId
    sub: RequestId
    epoch: str
    offset: str
    total: int
    total_capped: bool = False  # `total` is a lower bound: the read stopped at its cap
    reset: bool = False
    rows: list[ExamDelta]


class Resumed(_Frame):
    """The resume worked: the `missed` deltas after the client's position follow."""

    type: Literal["resumed"] = "resumed"
    id: RequestId
    sub: RequestId
    epoch: str
    offset: str  # the feed position the missed frames bring the client to
    missed: int


class Left(_Frame):
    """What a `leave` carries: enough to drop the row, nothing of the row itself."""

    exam_id: str
    version: int


class DeltaFrame(_Frame):
    """One exam changed. Apply it only if `delta.version` is newer than the row's.
    `leave` is true when the exam no longer matches the view: drop the row; its
    `delta` is then only `exam_id` and `version` (an exam you do not hold: ignore it)."""

    type: Literal["delta"] = "delta"
    sub: RequestId
    leave: bool = False
    epoch: str
    offset: str
    delta: ExamDelta | Left

    @model_validator(mode="after")
    def _a_leave_carries_no_row(self) -> DeltaFrame:
        if self.leave != isinstance(self.delta, Left):
            raise ValueError("a leave carries only exam_id and version; a delta the whole row")
        return self


class PatchFrame(_Frame):
    """One exam changed, sent as only the fields that changed (a row's fields, as in a
    `delta`; a field that went away is null). Apply it only to the row you hold at
    version `base`: then the row is at `version`. Holding another version (or none),
    ask for the row (`row` request); a row newer than `version` ignores it."""

    type: Literal["patch"] = "patch"
    sub: RequestId
    epoch: str
    offset: str
    exam_id: str
    base: int
    version: int
    fields: dict[str, Any]


class RowFrame(_Frame):
    """The answer to a `row` request: the exam's row as the subscription sees it, or
    null when it is not in the subscription's view (drop it)."""

    type: Literal["row"] = "row"
    id: RequestId
    sub: RequestId
    exam_id: str
    row: ExamDelta | None


class Batch(_Frame):
    """Several `delta` and `patch` frames at once (sent when a client's queue backs up,
    and for deltas that follow one another within the flush window)."""

    type: Literal["batch"] = "batch"
    frames: list[Annotated[DeltaFrame | PatchFrame, Field(discriminator="type")]]


class Unsubscribed(_Frame):
    type: Literal["unsubscribed"] = "unsubscribed"
    id: RequestId
    sub: RequestId


class Pong(_Frame):
    type: Literal["pong"] = "pong"
    id: RequestId
    ts: int


class Claimed(_Frame):
    """The claim is yours. Keep `token` secret: nobody else ever sees it. The lease is
    renewed by the server while this connection lives."""

    type: Literal["claimed"] = "claimed"
    id: RequestId
    exam_id: str
    token: str
    version: int
    lease_expires_at: int
    # Only in answer to `next`: why this case went to you (`orchestration.Decision`:
    # `rule` and the figures weighed).
    decision: dict[str, Any] | None = None


class Offer(_Frame):
    """A STAT ready to read is offered to you alone until `expires_at` (epoch ms): accept
    it (`offer_accept`) or decline it (`offer_decline`); silence passes it on too."""

    type: Literal["offer"] = "offer"
    exam_id: str
    row: ExamDelta  # the worklist row, as your worklist shows it
    expires_at: int
    decision: dict[str, Any]  # why you (`orchestration.Decision`)


class OfferEnded(_Frame):
    """An offer to you ended without your accepting it: you declined it (the reply to
    `offer_decline`, with its `id`), it lapsed, or the case was taken or left the list."""

    type: Literal["offer_ended"] = "offer_ended"
    id: RequestId | None = None
    exam_id: str
    reason: Literal["declined", "lapsed", "taken"]


class Alert(_Frame):
    """To coordinators and admins whose scope allows the row: a STAT needs a person.
    `no_reader`: no eligible reader online (or all passed); `waiting`: it has waited
    longer than the tenant's `stat_alert_minutes`."""

    type: Literal["alert"] = "alert"
    kind: Literal["no_reader", "waiting"]
    exam_id: str
    row: ExamDelta
    waiting_ms: int
    message: str


class Board(_Frame):
    """The workload board, as the viewer's scope allows: per reader (`readers`: sub,
    name, online, open_claims, stat_claims, rvu_shift, offers, holding: the exams they
    hold that the viewer may see), the unassigned queue by
    priority and age (`queue`), turnaround breaches (`breaches`: cases past
    `tat_due_at`, waiting or held), and the latest assignment decisions (`decisions`).
    The answer to `board` carries its `id`; later ones (on change) none."""

    type: Literal["board"] = "board"
    id: RequestId | None = None
    at: int
    readers: list[dict[str, Any]]
    queue: list[dict[str, Any]]
    breaches: list[dict[str, Any]]
    decisions: list[dict[str, Any]]


class Reassigned(_Frame):
    type: Literal["reassigned"] = "reassigned"
    id: RequestId
    exam_id: str
    to: str
    previous_holder: str | None  # the holder's display name
    version: int


class Assigned(_Frame):
    """A coordinator gave you this exam: you hold it now (this connection keeps its
    token, as after `claimed`)."""

    type: Literal["assigned"] = "assigned"
    exam_id: str
    version: int
    lease_expires_at: int
    by: str  # the coordinator's display name


class Released(_Frame):
    type: Literal["released"] = "released"
    id: RequestId
    exam_id: str
    version: int


class Signed(_Frame):
    type: Literal["signed"] = "signed"
    id: RequestId
    exam_id: str
    status: ExamStatus
    version: int


class LockBroken(_Frame):
    type: Literal["lock_broken"] = "lock_broken"
    id: RequestId
    exam_id: str
    previous_holder: str | None  # the holder's display name
    version: int


class ClaimLost(_Frame):
    """Pushed to a holder whose claim ended without their asking."""

    type: Literal["claim_lost"] = "claim_lost"
    exam_id: str
    # broken: an admin broke it; expired: the lease ran out and it is gone;
    # superseded: you claimed it again from another connection, which holds it now;
    # reassigned: a coordinator gave it to another reader (`by`, `message`).
    reason: Literal["broken", "expired", "superseded", "reassigned"]
    by: str | None = None  # who broke it (display name)
    message: str = ""


class PresenceUser(_Frame):
    sub: str
    name: str
    roles: list[str]
    reading: list[str]  # exam ids this user holds claims on
    connections: int


class PresenceState(_Frame):
    """Everyone online in your tenant. Sent after `authenticated` and on request."""

    type: Literal["presence_state"] = "presence_state"
    id: RequestId | None = None
    users: list[PresenceUser]


class PresenceDiff(_Frame):
    """Changes since the last presence frame: `joins` are new or changed users,
    `leaves` the subs of users who went offline."""

    type: Literal["presence_diff"] = "presence_diff"
    joins: list[PresenceUser]
    leaves: list[str]


class Reviews(_Frame):
    type: Literal["reviews"] = "reviews"
    id: RequestId
    reviews: list[dict[str, Any]]


class ReviewChanged(_Frame):
    """A review you may see changed (already redacted for you)."""

    type: Literal["review"] = "review"
    review: dict[str, Any]


class ReviewOk(_Frame):
    """A review request worked; `token` answers `review_claim` (keep it secret)."""

    type: Literal["review_ok"] = "review_ok"
    id: RequestId
    action: Literal["add", "assign", "claim", "score", "arbitrate"]
    review: dict[str, Any] | None
    token: str | None = None


class Resync(_Frame):
    """The server lost part of the feed (e.g. its Redis connection dropped): the
    subscription `sub` must be replaced; a fresh `snapshot` with `id` = sub follows."""

    type: Literal["resync"] = "resync"
    sub: RequestId


class ErrorFrame(_Frame):
    type: Literal["error"] = "error"
    id: RequestId | None = None
    code: ErrorCode
    message: str
    detail: dict[str, Any] | None = None


ServerFrameType = (
    Welcome
    | Authenticated
    | SnapshotFrame
    | Resumed
    | DeltaFrame
    | PatchFrame
    | RowFrame
    | Batch
    | Unsubscribed
    | Pong
    | Claimed
    | Offer
    | OfferEnded
    | Alert
    | Board
    | Reassigned
    | Assigned
    | Released
    | Signed
    | LockBroken
    | ClaimLost
    | PresenceState
    | PresenceDiff
    | Reviews
    | ReviewChanged
    | ReviewOk
    | Resync
    | ErrorFrame
)
ServerFrame = Annotated[ServerFrameType, Field(discriminator="type")]
server_frame: TypeAdapter[Any] = TypeAdapter(ServerFrame)


def schema() -> dict[str, Any]:
    """JSON Schema of both directions, generated from the models above."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"RIS live worklist WebSocket protocol {PROTOCOL}",
        "client_to_server": client_frame.json_schema(),
        "server_to_client": server_frame.json_schema(),
        "close_codes": {c.name.lower(): int(c) for c in CloseCode},
        "error_codes": [c.value for c in ErrorCode],
    }
