"""uvicorn's websockets-sansio protocol, lighter per idle connection.

Each connection of uvicorn's `WebSocketsSansIOProtocol` holds an `asyncio.Queue` for
what the client sent (four deques of about 700 bytes each, idle or not), an
`asyncio.Event` for "the transport takes more" (one more), and, after the handshake,
the parsed request and the response with their headers, which nothing reads once the
connection is accepted (the app's scope has its own copy of the request's headers).
`LeanSansIOProtocol` is the same protocol with a receive queue and a writable flag that
hold nothing while idle, and it lets go of the handshake's request and response after
accept; its keepalive pings share one timer per event loop (`PingWheel`) rather than
hold a timer handle each. `python -m gateway` serves with it when `GATEWAY_WS_IMPL` is
`websockets-sansio` (the default); `ws_protocol` picks it.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

__all__ = ["Inbox", "LeanSansIOProtocol", "PingWheel", "WritableFlag", "ws_protocol"]


class Inbox:
    """The protocol's receive queue (`put_nowait`, `get`, `empty`: what uvicorn uses)
    for its one consumer, the connection's ASGI task; no buffer while empty."""

    __slots__ = ("_getter", "_items")

    def __init__(self) -> None:
        self._items: deque[Any] | None = None
        self._getter: asyncio.Future[None] | None = None

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            getter = self._getter = asyncio.get_running_loop().create_future()
            try:
                await getter
            finally:
                self._getter = None
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item


class WritableFlag:
    """The protocol's `writable` event (`set`, `clear`, `is_set`, `wait`): cleared
    while the transport is paused; no waiter list unless someone waits."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def clear(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


class PingWheel:
    """One timer per event loop for every connection's next keepalive ping, instead of
    a timer handle per connection: due pings go out at the next tick (`TICK` s), at
    most `SLICE` at a time with the loop's other work between slices (connections
    opened together fall due together: 1,000 pings in one callback held the loop
    longer than fanning a delta out to all of them)."""

    TICK = 0.5
    SLICE = 64
    _wheels: dict[int, PingWheel] = {}  # by id(loop), while pings are due on it

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # (when, tie-breaker, protocol): a heap, soonest first.
        self.due: list[tuple[float, int, LeanSansIOProtocol]] = []
        self.timer: asyncio.Handle | None = None
        self._added = 0

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> PingWheel:
        wheel = cls._wheels.get(id(loop))
        if wheel is None:
            wheel = cls._wheels[id(loop)] = cls(loop)
        return wheel

    def add(self, proto: LeanSansIOProtocol, at: float) -> None:
        self._added += 1
        heapq.heappush(self.due, (at, self._added, proto))
        if self.timer is None:
            self.timer = self.loop.call_later(self.TICK, self._tick)

    def _tick(self) -> None:
        self.timer = None
        now = self.loop.time()
        due = self.due
        budget = self.SLICE
        try:
            while due and due[0][0] <= now and budget:
                at, _, proto = heapq.heappop(due)
                if proto.ping_at == at:  # not stopped or rescheduled since
                    proto.ping_at = None
                    proto.send_keepalive_ping()
                    budget -= 1
        finally:
            if due and due[0][0] <= now:  # more are due: the next slice after a turn
                self.timer = self.loop.call_soon(self._tick)
            elif due:
                self.timer = self.loop.call_later(self.TICK, self._tick)
            else:
                self._wheels.pop(id(self.loop), None)


class LeanSansIOProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol with `Inbox`, `WritableFlag`, no handshake
    request or response kept after accept, and keepalive pings timed by `PingWheel`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = WritableFlag()  # type: ignore[assignment]
        self.ping_at: float | None = None  # (loop time) the next ping, when one is due
        # Accepted, open, no close sent and the transport not paused: what
        # `gateway.wire.DirectWriter.ready` asks per frame, kept up to date by every
        # callback that can change it (a closing transport is asked of the transport).
        self.live = False

    def _relive(self) -> None:
        self.live = (
            self.writable.is_set()
            and not self.close_sent
            and self.conn.state is State.OPEN
            and not self.transport.is_closing()
        )

    def data_received(self, data: bytes) -> None:
        try:
            super().data_received(data)
        finally:
            self._relive()  # (a close frame, a protocol error)

    def connection_lost(self, exc: Exception | None) -> None:
        self.live = False
        super().connection_lost(exc)

    def shutdown(self) -> None:
        self.live = False
        super().shutdown()

    def pause_writing(self) -> None:
        super().pause_writing()
        self.live = False

    def resume_writing(self) -> None:
        super().resume_writing()
        self._relive()

    def schedule_ping(self) -> None:
        assert self.ping_interval is not None
        self.ping_at = self.loop.time() + max(0.0, self.ping_interval - self.last_ping_rtt)
        PingWheel.of(self.loop).add(self, self.ping_at)

    def stop_keepalive(self) -> None:
        self.ping_at = None
        super().stop_keepalive()

    async def send(self, message: Any) -> None:
        try:
            await super().send(message)
        finally:
            self._relive()  # (accepted, or a close sent)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # Read in `handle_connect` and when accepting only. websockets' parser keeps
            # the request object for the connection's life: its headers are emptied.
            self.request.headers.clear()
            self.request = None  # type: ignore[assignment]
            self.response = None  # type: ignore[assignment]


def ws_protocol(name: str) -> Any:
    """What uvicorn's `ws` setting gets for `GATEWAY_WS_IMPL` `name`."""
    return LeanSansIOProtocol if name == "websockets-sansio" else name
