"""An MLLP client: send a message, wait for its ACK (with a timeout).

One message at a time per connection, as original-mode HL7 expects. After a timeout
the connection is closed (a late ACK would otherwise be read as the answer to the next
message) and the next `send` reconnects; resending the same message is safe, the
listener deduplicates by MSH-10.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from hl7_ingest.ack import Ack, read_ack
from hl7_ingest.exceptions import AckTimeout, MllpError, ParseError
from hl7_ingest.message import parse
from hl7_ingest.mllp import FrameDecoder, wrap

__all__ = ["MllpClient", "send_message"]


class MllpClient:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
        server_hostname: str | None = None,
        local_address: str | None = None,
    ) -> None:
        """`local_address`: the source IP to connect from (a host with several)."""
        self.host = host
        self._local = (local_address, 0) if local_address else None
        self.port = port
        self.timeout = timeout
        self._ssl = ssl_context
        self._server_hostname = server_hostname
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._decoder = FrameDecoder()
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        if self._writer is not None:
            return
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self._server_hostname if self._ssl else None,
                    local_addr=self._local,
                ),
                self.timeout,
            )
        except TimeoutError:
            raise AckTimeout(self.timeout) from None
        except OSError as exc:
            raise MllpError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        self._decoder = FrameDecoder()

    async def __aenter__(self) -> MllpClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def send(self, message: str | bytes, *, timeout: float | None = None) -> Ack:
        """Send one message and return its ACK. Raises `AckTimeout` when none came in
        time and `MllpError` when the connection failed or the answer was not its ACK."""
        data = message.encode() if isinstance(message, str) else message
        # MSH alone names the control ID: parsing the whole of a big message costs more.
        header = data[: min(len(data), 4096)].replace(b"\n", b"\r").split(b"\r", 1)[0]
        try:
            control_id = parse(header.decode("utf-8", errors="replace")).msh.get(10)
        except ParseError:
            control_id = None  # garbage on purpose (tests); any answer will do
        limit = self.timeout if timeout is None else timeout
        async with self._lock:
            await self.connect()
            assert self._writer is not None and self._reader is not None
            try:
                self._writer.write(wrap(data))
                await self._writer.drain()
                frame = await asyncio.wait_for(self._next_frame(), limit)
            except TimeoutError:
                await self.close()
                raise AckTimeout(limit) from None
            except (OSError, MllpError) as exc:
                await self.close()
                raise MllpError(f"connection to {self.host}:{self.port} failed: {exc}") from None
        ack = read_ack(frame.decode("utf-8", errors="replace"))
        if control_id is not None and ack.control_id != control_id:
            await self.close()
            raise MllpError(f"ACK for {ack.control_id!r} while waiting for {control_id!r}")
        return ack

    async def _next_frame(self) -> bytes:
        assert self._reader is not None
        while True:
            data = await self._reader.read(65536)
            if not data:
                raise MllpError("the listener closed the connection without an ACK")
            frames = self._decoder.feed(data)
            if frames:
                # One message in flight at a time: a second frame would be a stray.
                return frames[0]


async def send_message(
    host: str,
    port: int,
    message: str | bytes,
    *,
    timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
) -> Ack:
    """Connect, send one message, return its ACK, disconnect."""
    async with MllpClient(host, port, timeout=timeout, ssl_context=ssl_context) as client:
        return await client.send(message)
