"""Request handlers: one async function per client frame type, dispatched by `HANDLERS`.

Handlers see a connection only through `Connection` (its principal, its send and error
paths, its claim tokens, its subscriptions) and the process's shared resources through
`Connection.gw` (`gateway.context.Gateway`); never the WebSocket itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from dynamo.models import now_ms
from gateway.handlers import assigning, claiming, reviewing, worklists
from gateway.protocol import (
    BoardRequest,
    BreakLock,
    ClaimRequest,
    ErrorCode,
    NextRequest,
    OfferAccept,
    OfferDecline,
    Ping,
    PresenceRequest,
    Reassign,
    Release,
    ReviewAdd,
    ReviewArbitrate,
    ReviewAssign,
    ReviewClaim,
    ReviewScore,
    ReviewsRequest,
    RowRequest,
    Sign,
    Subscribe,
    Unsubscribe,
)

if TYPE_CHECKING:
    from gateway.auth import Principal
    from gateway.context import Gateway
    from gateway.hub import Client

__all__ = ["HANDLERS", "Connection", "dispatch"]


class Connection(Protocol):
    """What a handler may use of one client's connection."""

    gw: Gateway
    principal: Principal | None
    client: Client  # the hub's view: subscriptions and the bounded queue
    conn_id: str
    claims: dict[str, str]  # exam_id -> this connection's claim token
    claim_rows: dict[str, dict[str, Any]]  # exam_id -> its site and subspecialty
    review_tokens: dict[str, str]  # exam_id -> this connection's review claim token

    def send(self, frame: dict[str, Any]) -> None: ...

    def error(
        self,
        request_id: str | None,
        code: ErrorCode,
        message: str,
        detail: dict[str, Any] | None = None,
    ) -> None: ...


Handler = Callable[[Any, Any], Awaitable[None]]


async def _ping(conn: Connection, frame: Ping) -> None:
    conn.send({"type": "pong", "id": frame.id, "ts": now_ms()})


async def _presence(conn: Connection, frame: PresenceRequest) -> None:
    await conn.gw.presence.send_state(conn, frame.id)


async def _unsubscribe(conn: Connection, frame: Unsubscribe) -> None:
    worklists.unsubscribe(conn, frame)


HANDLERS: dict[type[Any], Handler] = {
    Subscribe: worklists.subscribe,
    Unsubscribe: _unsubscribe,
    RowRequest: worklists.row,
    Ping: _ping,
    ClaimRequest: claiming.claim,
    NextRequest: assigning.next_request,
    OfferAccept: assigning.offer_accept,
    OfferDecline: assigning.offer_decline,
    BoardRequest: assigning.board,
    Reassign: assigning.reassign,
    Release: claiming.release,
    Sign: claiming.sign,
    BreakLock: claiming.break_lock,
    PresenceRequest: _presence,
    ReviewsRequest: reviewing.reviews,
    ReviewAdd: reviewing.add,
    ReviewAssign: reviewing.assign,
    ReviewClaim: reviewing.claim,
    ReviewScore: reviewing.score,
    ReviewArbitrate: reviewing.arbitrate,
}


async def dispatch(conn: Connection, frame: Any) -> None:
    """Run the handler of an authenticated request (every client frame but `auth`)."""
    await HANDLERS[type(frame)](conn, frame)
