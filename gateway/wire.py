"""Writing frames straight to a connection's transport, as `websockets.broadcast` does.

The ASGI path (`await websocket.send_text`) costs a task wake-up per client per
frame, and a frame serialization per client. When uvicorn serves the connection with
its websockets-sansio protocol, the hub can instead hand the bytes of a frame to the
connection's transport at once, from the pub/sub callback, as long as nothing waits in
front of it (the client's queue is empty and its writer holds nothing) and the
transport is not paused; otherwise the frame is queued as before (backpressure,
coalescing, eviction). A frame's bytes are built once and written to every connection
that takes the same text (`encode_text`), unless the connection negotiated
compression, which is per connection.

The app's WebSocket middleware (`gateway.app`) keeps the server's own ASGI `send` in
the scope (Starlette wraps it) under `SEND_KEY`, so `DirectWriter.find` can reach the
protocol behind it (uvicorn's websockets-sansio, or `gateway.serverproto`'s subclass
of it); any other WebSocket implementation gets no direct writer and every frame goes
through the ASGI path.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from starlette.types import Scope
from websockets.protocol import State

__all__ = ["SEND_KEY", "DirectWriter", "FrameQueue", "encode_text"]

SEND_KEY = "gateway.asgi_send"

T = TypeVar("T")


class FrameQueue(Generic[T]):
    """A client's bounded queue of frames, for an idle connection's sake lighter than
    `asyncio.Queue`: nobody awaits it (`on_put` tells the session a frame waits, and
    the session starts a writer that ends when the queue is empty), and it holds no
    buffer while empty. `maxsize` <= 0: no bound."""

    __slots__ = ("items", "maxsize", "on_put")

    def __init__(self, maxsize: int = 0) -> None:
        # What waits, oldest first (None while nothing does: `empty` is `not items`).
        self.items: deque[T] | None = None
        self.maxsize = maxsize
        self.on_put: Callable[[], None] | None = None

    def empty(self) -> bool:
        return not self.items

    def qsize(self) -> int:
        return len(self.items) if self.items else 0

    def full(self) -> bool:
        return 0 < self.maxsize <= self.qsize()

    def put_nowait(self, item: T) -> None:
        """Raises `asyncio.QueueFull` when `maxsize` frames wait already."""
        items = self.items
        if items is None:
            items = self.items = deque()
        elif 0 < self.maxsize <= len(items):
            raise asyncio.QueueFull
        items.append(item)
        if self.on_put is not None:
            self.on_put()

    def get_nowait(self) -> T:
        """Raises `asyncio.QueueEmpty` when nothing waits."""
        items = self.items
        if not items:
            raise asyncio.QueueEmpty
        item = items.popleft()
        if not items:
            self.items = None  # an empty deque still holds a block
        return item


def encode_text(text: str) -> bytes:
    """A server's (unmasked, uncompressed, final) text frame carrying `text`."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


class DirectWriter:
    """The transport of one uvicorn websockets-sansio connection."""

    __slots__ = ("_conn", "_writable", "kept", "plain", "proto", "transport")

    def __init__(self, proto: Any) -> None:
        self.proto = proto
        self.transport = proto.transport
        self._conn = proto.conn  # websockets' ServerProtocol (the frame state)
        self._writable = proto.writable  # cleared while the transport is paused
        # Without extensions (compression), a frame's bytes are the same for everyone.
        self.plain = not self._conn.extensions
        # `gateway.serverproto`'s protocol keeps what `ready` asks in one flag, `live`
        # (then `ready` is `proto.live and not transport.is_closing()`, which the hub's
        # fan-out asks inline).
        self.kept = isinstance(getattr(proto, "live", None), bool)

    @classmethod
    def find(cls, scope: Scope) -> DirectWriter | None:
        """The connection's writer, when its server is uvicorn's websockets-sansio."""
        send = scope.get(SEND_KEY)
        proto = getattr(send, "__self__", None)
        names = {c.__name__ for c in type(proto).__mro__} if proto is not None else set()
        if "WebSocketsSansIOProtocol" not in names:  # (or a subclass, gateway.serverproto)
            return None
        if not all(hasattr(proto, a) for a in ("transport", "conn", "writable", "close_sent")):
            return None
        return cls(proto)

    def ready(self) -> bool:
        """Open, not closing, and the transport takes more without pausing."""
        if self.kept:
            return bool(self.proto.live) and not self.transport.is_closing()
        return (
            self._writable.is_set()
            and not self.proto.close_sent
            and self._conn.state is State.OPEN
            and not self.transport.is_closing()
        )

    def write(self, text: str, wire: bytes | None = None) -> None:
        """Write one text frame (`wire`: its bytes from `encode_text`, when known)."""
        if self.plain:
            self.transport.write(wire if wire is not None else encode_text(text))
        else:
            self._conn.send_text(text.encode())
            self.transport.write(b"".join(self._conn.data_to_send()))
