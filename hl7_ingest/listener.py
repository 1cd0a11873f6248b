"""The asyncio MLLP listener: many sending connections, each one's messages in order.

Per connection one task reads, decodes frames and hands each message to the handler,
then writes its ACK before the next message of that connection is looked at: order on a
connection is the sender's order, and a sender that pipelines simply waits in TCP's
buffers. Connections are independent: a connection that sends garbage, oversizes a
frame or drops mid-message is closed or ends alone.

When the handler cannot answer (`NotAcknowledged`: the store is unavailable), the
connection is closed without an ACK; the sender reconnects and resends from that
message, so nothing after it is applied out of order.

Each connection is known by its `Peer` (source address, and the names of a verified
client certificate), which the handler checks against the site mappings. Connections
are bounded: at most `max_connections` in all and `max_connections_per_peer` from one
address (more are closed at once); a connection that starts no frame for
`idle_timeout` seconds, or does not finish a started frame within `frame_timeout`
(a slowloris sender), is closed. Bytes outside frames do not count as activity.

`close()` stops accepting, gives connections `drain_seconds` to finish the message they
are processing (an ACK is never cut in half by shutdown unless the bound runs out), then
cancels the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Protocol

from hl7_ingest.exceptions import NotAcknowledged
from hl7_ingest.mllp import FrameDecoder, FrameTooLarge, wrap
from hl7_ingest.peers import Peer, peer_of
from hl7_ingest.settings import Hl7Settings

__all__ = ["Handler", "MllpListener", "listener_for"]

log = logging.getLogger("hl7_ingest.listener")

_READ = 65536


class Answer(Protocol):
    @property
    def ack(self) -> str: ...


Handler = Callable[[bytes, Peer], Awaitable[Answer]]
DiscardHandler = Callable[[bytes, Peer], Awaitable[object]]


class MllpListener:
    def __init__(
        self,
        handle: Handler,
        *,
        host: str = "127.0.0.1",
        port: int = 2575,
        ssl_context: ssl.SSLContext | None = None,
        max_message_bytes: int = 1 << 20,
        drain_seconds: float = 5.0,
        on_discarded: DiscardHandler | None = None,
        max_connections: int = 200,
        max_connections_per_peer: int = 16,
        idle_timeout: float = 600.0,
        frame_timeout: float = 30.0,
    ) -> None:
        self._handle = handle
        self._on_discarded = on_discarded
        self.host = host
        self.port = port
        self._ssl = ssl_context
        self._max = max_message_bytes
        self._drain = drain_seconds
        self._max_connections = max_connections
        self._max_per_peer = max_connections_per_peer
        self._idle = idle_timeout
        self._frame = frame_timeout
        self._per_peer: dict[str, int] = {}
        self.refused = 0  # connections closed at once by a cap
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._busy: set[asyncio.Task[None]] = set()  # processing a message right now
        self._closing = False
        self.served = 0  # connections accepted, for tests and metrics

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept,
            self.host,
            self.port,
            ssl=self._ssl,
            limit=_READ,
            # A TLS handshake is a frame too: it must not hold a socket for a minute.
            ssl_handshake_timeout=self._frame if self._ssl else None,
        )
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        log.info("MLLP listening on %s:%d%s", self.host, self.port, " (TLS)" if self._ssl else "")

    async def __aenter__(self) -> MllpListener:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop accepting; let messages in progress finish (bounded); end every connection.
        Safe to call twice."""
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        idle = [t for t in self._connections if t not in self._busy]
        for task in idle:
            task.cancel()
        if self._busy:
            _, late = await asyncio.wait(set(self._busy), timeout=self._drain)
            for task in late:
                task.cancel()
        for task in list(self._connections):
            if not task.cancelling():
                task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
        log.info("MLLP listener closed")

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:
            writer.close()
            return
        peer = peer_of(writer.get_extra_info)
        if len(self._connections) >= self._max_connections:
            self._refuse(writer, peer, f"{self._max_connections} connections open in all")
            return
        if self._per_peer.get(peer.address, 0) >= self._max_per_peer:
            self._refuse(writer, peer, f"{self._max_per_peer} connections open from its address")
            return
        self._per_peer[peer.address] = self._per_peer.get(peer.address, 0) + 1
        # A plain callback (not a coroutine) so the connection's task is ours to track.
        conn = asyncio.create_task(self._serve(reader, writer, peer), name="mllp-connection")
        self._connections.add(conn)
        conn.add_done_callback(self._connections.discard)
        conn.add_done_callback(lambda _: self._left(peer))
        self.served += 1

    def _refuse(self, writer: asyncio.StreamWriter, peer: Peer, why: str) -> None:
        self.refused += 1
        log.warning("refusing a connection from %s: %s", peer.label, why)
        writer.transport.abort()  # nothing was read, so nothing is owed an ACK

    def _left(self, peer: Peer) -> None:
        left = self._per_peer.get(peer.address, 1) - 1
        if left > 0:
            self._per_peer[peer.address] = left
        else:
            self._per_peer.pop(peer.address, None)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer
    ) -> None:
        decoder = FrameDecoder(self._max)
        me = asyncio.current_task()
        assert me is not None
        loop = asyncio.get_running_loop()
        # Until a frame starts, the idle deadline; once one has, the frame's own.
        deadline = loop.time() + self._idle
        framing = False
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        data = await reader.read(_READ)
                except TimeoutError:
                    what = "finish its message" if framing else "start a message"
                    wait = self._frame if framing else self._idle
                    log.warning("closing %s: it did not %s within %gs", peer.label, what, wait)
                    break
                if not data:
                    break
                frames = decoder.feed(data)
                await self._discard(decoder, peer)
                for frame in frames:
                    self._busy.add(me)
                    try:
                        answer = await self._handle(frame, peer)
                        writer.write(wrap(answer.ack))
                        # A sender that reads no ACKs must not hold this task forever
                        # (asyncio.timeout: wait_for may swallow a cancel on 3.11).
                        async with asyncio.timeout(self._idle):
                            await writer.drain()
                    finally:
                        self._busy.discard(me)
                    if self._closing:
                        return
                if frames:
                    framing = False
                    deadline = loop.time() + self._idle
                if decoder.in_frame and not framing:
                    framing = True
                    deadline = loop.time() + self._frame
        except NotAcknowledged as exc:
            log.warning(
                "closing %s without an ACK so that the sender resends (%s)", peer.label, exc.reason
            )
        except FrameTooLarge as exc:
            log.warning("closing %s: %s", peer.label, exc.reason)
        except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
            log.info("connection %s failed: %s", peer.label, type(exc).__name__)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("connection %s: unexpected error", peer.label)
        finally:
            # First, and synchronously: a cancellation below must not leak the socket.
            writer.close()
            if decoder.pending:
                log.warning(
                    "connection %s ended in the middle of a message (%d bytes dropped,"
                    " never acknowledged)",
                    peer.label,
                    decoder.pending,
                )
            decoder.close()
            with contextlib.suppress(Exception):
                await self._discard(decoder, peer)
                await asyncio.wait_for(writer.wait_closed(), timeout=1.0)

    async def _discard(self, decoder: FrameDecoder, peer: Peer) -> None:
        for chunk in decoder.take_discarded():
            if self._on_discarded is not None:
                try:
                    await self._on_discarded(chunk, peer)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning(
                        "discarded bytes from %s not kept: %s", peer.label, type(exc).__name__
                    )
            else:
                log.warning("discarded %d bytes from %s outside any frame", len(chunk), peer.label)


class _Ingest(Protocol):
    async def handle(self, raw: bytes, peer: Peer) -> Answer: ...

    async def discarded(self, raw: bytes, peer: Peer) -> object: ...


def listener_for(ingest: _Ingest, settings: Hl7Settings) -> MllpListener:
    """The listener of `python -m hl7_ingest`, configured from its settings."""
    return MllpListener(
        ingest.handle,
        host=settings.host,
        port=settings.port,
        ssl_context=settings.ssl_context(),
        max_message_bytes=settings.max_message_bytes,
        drain_seconds=settings.drain_seconds,
        on_discarded=ingest.discarded,
        max_connections=settings.max_connections,
        max_connections_per_peer=settings.max_connections_per_peer,
        idle_timeout=settings.idle_timeout_seconds,
        frame_timeout=settings.frame_timeout_seconds,
    )
