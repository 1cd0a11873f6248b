"""The asyncio MLLP listener: many sending connections, each one's messages in order.

Per connection one task reads, decodes frames and hands each message to the handler,
then writes its ACK before the next message of that connection is looked at: order on a
connection is the sender's order, and a sender that pipelines simply waits in TCP's
buffers. Connections are independent: a connection that sends garbage, oversizes a
frame or drops mid-message is closed or ends alone.

When the handler cannot answer (`NotAcknowledged`: the store is unavailable), the
connection is closed without an ACK; the sender reconnects and resends from that
message, so nothing after it is applied out of order.

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

__all__ = ["Handler", "MllpListener"]

log = logging.getLogger("hl7_ingest.listener")

_READ = 65536


class Answer(Protocol):
    @property
    def ack(self) -> str: ...


Handler = Callable[[bytes, str], Awaitable[Answer]]
DiscardHandler = Callable[[bytes, str], Awaitable[object]]


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
    ) -> None:
        self._handle = handle
        self._on_discarded = on_discarded
        self.host = host
        self.port = port
        self._ssl = ssl_context
        self._max = max_message_bytes
        self._drain = drain_seconds
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._busy: set[asyncio.Task[None]] = set()  # processing a message right now
        self._closing = False
        self.served = 0  # connections accepted, for tests and metrics

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, ssl=self._ssl, limit=_READ
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
        # A plain callback (not a coroutine) so the connection's task is ours to track.
        conn = asyncio.create_task(self._serve(reader, writer), name="mllp-connection")
        self._connections.add(conn)
        conn.add_done_callback(self._connections.discard)
        self.served += 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        decoder = FrameDecoder(self._max)
        me = asyncio.current_task()
        assert me is not None
        try:
            while True:
                data = await reader.read(_READ)
                if not data:
                    break
                frames = decoder.feed(data)
                await self._discard(decoder, peer)
                for frame in frames:
                    self._busy.add(me)
                    try:
                        answer = await self._handle(frame, peer)
                        writer.write(wrap(answer.ack))
                        await writer.drain()
                    finally:
                        self._busy.discard(me)
                    if self._closing:
                        return
        except NotAcknowledged:
            log.warning("closing %s without an ACK so that the sender resends", peer)
        except FrameTooLarge as exc:
            log.warning("closing %s: %s", peer, exc.reason)
        except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
            log.info("connection %s failed: %s", peer, type(exc).__name__)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("connection %s: unexpected error", peer)
        finally:
            # First, and synchronously: a cancellation below must not leak the socket.
            writer.close()
            if decoder.pending:
                log.warning(
                    "connection %s ended in the middle of a message (%d bytes dropped,"
                    " never acknowledged)",
                    peer,
                    decoder.pending,
                )
            decoder.close()
            with contextlib.suppress(Exception):
                await self._discard(decoder, peer)
                await asyncio.wait_for(writer.wait_closed(), timeout=1.0)

    async def _discard(self, decoder: FrameDecoder, peer: str) -> None:
        for chunk in decoder.take_discarded():
            if self._on_discarded is not None:
                try:
                    await self._on_discarded(chunk, peer)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("discarded bytes from %s not kept: %s", peer, type(exc).__name__)
            else:
                log.warning("discarded %d bytes from %s outside any frame", len(chunk), peer)
