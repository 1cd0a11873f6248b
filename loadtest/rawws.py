"""A minimal WebSocket client for the load clients: a raw `asyncio.Protocol`.

Why: a `websockets` client costs a task wake-up and its own frame machinery per
received frame, and the benchmark's load clients ran out of CPU before the gateway
did. Here every server frame is parsed in `data_received` and a text frame is handed
to a callback synchronously: no task per connection, no wake-up per message.

What it speaks (RFC 6455, the part a load client needs): the HTTP/1.1 upgrade (offering
the `ris.v1` subprotocol, never permessage-deflate; `Sec-WebSocket-Accept` checked),
masked client frames (text, pong, close), and unmasked server frames (text, binary,
continuation for fragmented messages, ping answered with a pong, close answered with a
close). Before `on_text` is set, text frames queue for `recv()` (the opening: welcome,
authenticated, snapshot); after, they go to the callback, and `recv()` is not used.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import os
import struct
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SUBPROTOCOL = "ris.v1"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

# Close codes as `websockets` reports them: no code in the close frame, no close frame.
NO_STATUS = 1005
ABNORMAL = 1006


class HandshakeError(Exception):
    """The server did not upgrade the connection as RFC 6455 says."""


class ConnectionClosedError(ConnectionError):
    """The connection closed while a frame was awaited."""


def accept_for(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def mask(payload: bytes, key: bytes) -> bytes:
    """XOR `payload` with the 4-byte `key` repeated (RFC 6455 5.3)."""
    n = len(payload)
    if not n:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(
        n, "little"
    )


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame."""
    n = len(payload)
    key = os.urandom(4)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + key + mask(payload, key)


class RawConnection(asyncio.Protocol):
    """One client connection. `connect()` returns it once upgraded."""

    __slots__ = (
        "_buf",
        "_close_sent",
        "_closed",
        "_frag",
        "_frag_op",
        "_handshake",
        "_key",
        "_queue",
        "_waiter",
        "close_code",
        "on_close",
        "on_text",
        "subprotocol",
        "transport",
    )

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._handshake: asyncio.Future[None] | None = None
        self._buf = b""
        self._frag: list[bytes] | None = None
        self._frag_op = OP_TEXT
        self._queue: collections.deque[bytes] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._close_sent = False
        self.transport: asyncio.Transport | None = None
        self.close_code: int | None = None
        self.subprotocol: str | None = None
        # The hot mode: called with each text (or binary) message's payload.
        self.on_text: Callable[[bytes], None] | None = None
        self.on_close: Callable[[int], None] | None = None

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not `asyncio.Transport` subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._handshake is not None:
            self._buf += data
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            response, self._buf = self._buf[:end], self._buf[end + 4 :]
            done = self._handshake
            self._check_handshake(response)
            if self._handshake is None:
                return  # refused
            self._handshake = None
            if not done.done():
                done.set_result(None)
            data, self._buf = self._buf, b""
            if not data:
                return
        buf = self._buf + data if self._buf else data
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if b1 & 0x80:  # a masked server frame: a protocol error
                self._fail(1002)
                return
            end = pos + head + n
            if end > size:
                break
            payload = buf[pos + head : end]
            pos = end
            opcode = b0 & 0x0F
            if opcode == OP_TEXT or opcode == OP_BINARY:
                if b0 & 0x80:
                    self._message(payload)
                else:
                    self._frag, self._frag_op = [payload], opcode
            elif opcode == OP_CONT:
                if self._frag is None:
                    self._fail(1002)
                    return
                self._frag.append(payload)
                if b0 & 0x80:
                    whole, self._frag = b"".join(self._frag), None
                    self._message(whole)
            elif opcode == OP_PING:
                self._write(client_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else NO_STATUS
                self._closing(code)
                return
            # OP_PONG: nothing to do
        self._buf = buf[pos:] if pos < size else b""

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(HandshakeError("connection lost during the upgrade"))
        if self.close_code is None:
            self.close_code = ABNORMAL
        self.transport = None
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        self._wake()
        if self.on_close is not None:
            self.on_close(self.close_code)

    # -- receiving --

    def _message(self, payload: bytes) -> None:
        handler = self.on_text
        if handler is not None:
            handler(payload)
            return
        if self._queue is None:
            self._queue = collections.deque()
        self._queue.append(payload)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def recv(self) -> bytes:
        """The next message (before `on_text` is set); raises once the connection closed."""
        while not self._queue:
            if self.close_code is not None or self.transport is None:
                raise ConnectionClosedError(f"connection closed ({self.close_code})")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    def listen(self, on_text: Callable[[bytes], None], on_close: Callable[[int], None]) -> None:
        """Switch to the hot mode: messages already queued go to `on_text` now."""
        self.on_text, self.on_close = on_text, on_close
        queued, self._queue = self._queue, None
        for payload in queued or ():
            on_text(payload)
        if self.close_code is not None and self.transport is None:
            on_close(self.close_code)  # it closed before listening began

    # -- sending --

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send_text(self, text: str | bytes) -> None:
        payload = text.encode() if isinstance(text, str) else text
        self._write(client_frame(OP_TEXT, payload))

    async def send(self, text: str | bytes) -> None:
        """As `websockets`' `send` (writes now; the kernel buffers a load client's little)."""
        if self.close_code is not None:
            raise ConnectionClosedError(f"connection closed ({self.close_code})")
        self.send_text(text)

    # -- closing --

    def _closing(self, code: int) -> None:
        """The server sent a close frame: answer it and let the server end the TCP."""
        if self.close_code is None:
            self.close_code = code
        if not self._close_sent:
            self._close_sent = True
            echo = struct.pack("!H", code) if code != NO_STATUS else b""
            self._write(client_frame(OP_CLOSE, echo))
        self._buf = b""
        if self.transport is not None:
            loop = asyncio.get_running_loop()
            transport = self.transport
            loop.call_later(2.0, transport.close)  # the server should close first

    def _fail(self, code: int) -> None:
        if self.close_code is None:
            self.close_code = code
        if self.transport is not None:
            self.transport.abort()

    async def close(self, code: int = 1000, timeout: float = 2.0) -> None:
        """Send a close frame, wait for the server to close (at most `timeout`)."""
        if self.transport is None or self.transport.is_closing():
            return
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
        if not self._close_sent:
            self._close_sent = True
            self._write(client_frame(OP_CLOSE, struct.pack("!H", code)))
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), timeout)
        except TimeoutError:
            self.transport.abort()

    # -- the upgrade --

    def _check_handshake(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        problem = None
        if len(status) < 2 or status[1] != "101":
            problem = f"the server answered {lines[0]!r}, not 101"
        elif headers.get("sec-websocket-accept", "").encode() != accept_for(self._key):
            problem = "wrong Sec-WebSocket-Accept"
        elif "sec-websocket-extensions" in headers:
            problem = "the server chose an extension that was not offered"
        if problem is not None:
            done, self._handshake = self._handshake, None
            if done is not None and not done.done():
                done.set_exception(HandshakeError(problem))
            if self.transport is not None:
                self.transport.close()
            return
        self.subprotocol = headers.get("sec-websocket-protocol")


async def connect(url: str, *, timeout: float = 30.0) -> RawConnection:
    """Open a WebSocket connection to a `ws://` URL; upgraded when this returns."""
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname:
        raise ValueError("only ws:// URLs are supported")
    port = parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    key = base64.b64encode(os.urandom(16))
    loop = asyncio.get_running_loop()
    conn = RawConnection(key)
    conn._handshake = loop.create_future()
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{port}"
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
    ).encode()

    async def upgrade() -> None:
        await loop.create_connection(lambda: conn, parts.hostname or "", port)
        assert conn.transport is not None and conn._handshake is not None
        conn.transport.write(request)
        await conn._handshake

    try:
        await asyncio.wait_for(upgrade(), timeout)
    except BaseException:
        if conn.transport is not None:
            with contextlib.suppress(Exception):
                conn.transport.abort()
        raise
    return conn
