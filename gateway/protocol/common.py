"""What both directions share: the protocol's name, field types, error and close codes,
and the strict base of every frame."""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

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
