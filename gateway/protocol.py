"""The WebSocket protocol (`ris.v1`): every frame is a JSON object with a `type`.

These models are the protocol's single definition: the gateway parses client frames
with them, `schema()` generates the JSON Schema served at `/protocol/schema.json`, and
docs/protocol.md shows examples of each. The fan-out path builds `delta` frames from
bytes for speed; tests check those bytes validate against `DeltaFrame`.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from dynamo.deltas import ExamDelta
from worklist_cache.views import View

PROTOCOL = "ris.v1"

RequestId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
Tenant = Annotated[str, Field(pattern=r"^[a-z0-9-]{1,40}$")]


class ErrorCode(StrEnum):
    """Stable error codes; a client acts on these, never on the message text."""

    BAD_REQUEST = "bad_request"  # the frame is not valid JSON or not a known message
    NOT_FOUND = "not_found"  # no such subscription / exam
    TOO_MANY = "too_many_subscriptions"
    INTERNAL = "internal"  # the server failed; retrying may help


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY = 1008  # origin not allowed
    TOO_LARGE = 1009  # frame above the size limit
    INTERNAL = 1011
    RESTARTING = 1012  # the node is draining: reconnect (to another node) and resume
    TRY_AGAIN = 1013
    TOO_SLOW = 4001  # the client fell too far behind; reconnect and resume


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- client -> server -------------------------------------------------------------


class Subscribe(_Frame):
    """Start a live view. The reply is a `snapshot` with the same `id`, then `delta`s
    carrying `sub` = that id."""

    type: Literal["subscribe"]
    id: RequestId
    tenant: Tenant
    view: View = Field(default_factory=View)
    limit: int = Field(default=500, ge=1, le=5000)


class Unsubscribe(_Frame):
    type: Literal["unsubscribe"]
    id: RequestId
    sub: RequestId


class Ping(_Frame):
    type: Literal["ping"]
    id: RequestId


ClientFrame = Annotated[Subscribe | Unsubscribe | Ping, Field(discriminator="type")]
client_frame: TypeAdapter[Subscribe | Unsubscribe | Ping] = TypeAdapter(ClientFrame)


# ---- server -> client -------------------------------------------------------------


class Welcome(_Frame):
    type: Literal["welcome"] = "welcome"
    protocol: Literal["ris.v1"] = "ris.v1"
    node: str


class SnapshotFrame(_Frame):
    """The view's rows (most urgent first), consistent with feed position
    (`epoch`, `offset`): every later change arrives as a `delta`."""

    type: Literal["snapshot"] = "snapshot"
    id: RequestId
    sub: RequestId
    epoch: str
    offset: str
    total: int
    rows: list[ExamDelta]


class DeltaFrame(_Frame):
    """One exam changed. Apply it only if `delta.version` is newer than the row's.
    `leave` is true when the exam no longer matches the view: drop the row."""

    type: Literal["delta"] = "delta"
    sub: RequestId
    leave: bool = False
    epoch: str
    offset: str
    delta: ExamDelta


class Unsubscribed(_Frame):
    type: Literal["unsubscribed"] = "unsubscribed"
    id: RequestId
    sub: RequestId


class Pong(_Frame):
    type: Literal["pong"] = "pong"
    id: RequestId
    ts: int


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


ServerFrame = Annotated[
    Welcome | SnapshotFrame | DeltaFrame | Unsubscribed | Pong | Resync | ErrorFrame,
    Field(discriminator="type"),
]
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
