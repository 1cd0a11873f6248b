"""Server -> client frames, and the adapter that checks them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, model_validator

from dynamo.deltas import ExamDelta
from dynamo.states import ExamStatus
from gateway.protocol.common import ErrorCode, RequestId, _Frame


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
