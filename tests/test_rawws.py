"""The load clients' raw WebSocket client (`loadtest.rawws`) against a real server."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Frame, Opcode
from websockets.typing import Subprotocol

from loadtest import rawws
from loadtest.loadclients import LoadProcess, Receiver

SIZES = [5, 125, 126, 300, 65535, 65536, 70000]  # 7-bit, 16-bit and 64-bit lengths


class Server:
    def __init__(self) -> None:
        self.received: list[str | bytes] = []
        self.pongs = 0
        self.subprotocol: str | None = None
        self.extensions: list[Any] = []
        self.conn: ServerConnection | None = None
        self.ready = asyncio.Event()

    async def handler(self, conn: ServerConnection) -> None:
        self.conn = conn
        self.subprotocol = conn.subprotocol
        self.extensions = list(conn.protocol.extensions)
        self.ready.set()
        async for message in conn:
            self.received.append(message)
            await conn.send(f"echo:{message!s}")


@pytest.fixture
async def server() -> AsyncIterator[tuple[Server, str]]:
    s = Server()
    async with serve(s.handler, "127.0.0.1", 0, subprotocols=[Subprotocol("ris.v1")]) as ws:
        port = ws.sockets[0].getsockname()[1]
        yield s, f"ws://127.0.0.1:{port}/ws"


async def test_upgrade_offers_the_subprotocol_and_no_compression(
    server: tuple[Server, str],
) -> None:
    s, url = server
    conn = await rawws.connect(url)
    await s.ready.wait()
    assert conn.subprotocol == "ris.v1" and s.subprotocol == "ris.v1"
    assert s.extensions == []  # permessage-deflate was not offered
    await conn.close()
    assert conn.close_code == 1000


async def test_messages_of_every_length_arrive_whole_and_in_order(
    server: tuple[Server, str],
) -> None:
    s, url = server
    conn = await rawws.connect(url)
    await s.ready.wait()
    assert s.conn is not None
    texts = [("x" * (n - 1)) + str(i % 10) for i, n in enumerate(SIZES)]
    for text in texts:
        await s.conn.send(text)
    for text in texts:
        assert (await asyncio.wait_for(conn.recv(), 5)).decode() == text
    # A fragmented message (text, then continuations) arrives as one.
    await s.conn.send(["fr", "ag", "mented"])
    assert await asyncio.wait_for(conn.recv(), 5) == b"fragmented"
    await conn.close()


async def test_what_the_client_sends_is_masked_and_readable(server: tuple[Server, str]) -> None:
    s, url = server
    conn = await rawws.connect(url)
    for n in (3, 200, 70000):
        await conn.send("é" + "y" * n)
        assert (await asyncio.wait_for(conn.recv(), 5)).decode() == f"echo:é{'y' * n}"
    assert s.received == ["é" + "y" * n for n in (3, 200, 70000)]  # the server unmasked them
    await conn.close()


async def test_pings_are_answered_in_the_hot_mode(server: tuple[Server, str]) -> None:
    s, url = server
    conn = await rawws.connect(url)
    got: list[bytes] = []
    closed: list[int] = []
    two, ended = asyncio.Event(), asyncio.Event()

    def on_text(payload: bytes) -> None:
        got.append(payload)
        if len(got) == 2:
            two.set()

    def on_close(code: int) -> None:
        closed.append(code)
        ended.set()

    conn.listen(on_text, on_close)
    await s.ready.wait()
    assert s.conn is not None
    for _ in range(3):
        pong = await s.conn.ping()
        latency = await asyncio.wait_for(pong, 5)  # resolves when the pong arrives
        assert latency >= 0
    await s.conn.send("hot")
    await s.conn.send("frames")
    await asyncio.wait_for(two.wait(), 5)
    assert got == [b"hot", b"frames"]
    await s.conn.close(4001, "bye")
    await asyncio.wait_for(ended.wait(), 5)
    assert closed == [4001] and conn.close_code == 4001


async def test_a_closed_connection_raises_on_recv(server: tuple[Server, str]) -> None:
    s, url = server
    conn = await rawws.connect(url)
    await s.ready.wait()
    assert s.conn is not None
    await s.conn.close(1001)
    with pytest.raises(rawws.ConnectionClosedError):
        await asyncio.wait_for(conn.recv(), 5)
    assert conn.close_code == 1001


async def test_a_server_that_does_not_upgrade_is_refused() -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(http, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    async with srv:
        with pytest.raises(rawws.HandshakeError, match="403"):
            await rawws.connect(f"ws://127.0.0.1:{port}/ws", timeout=5)


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return False


def _server_frame(opcode: Opcode, payload: bytes, *, fin: bool = True) -> bytes:
    return Frame(opcode, payload, fin=fin).serialize(mask=False, extensions=[])


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1000])
async def test_frames_split_across_reads_byte_by_byte(chunk: int) -> None:
    """Frames as `websockets` serializes them, fed in every split a socket could make."""
    conn = rawws.RawConnection(b"")
    transport = _Transport()
    conn.connection_made(transport)
    got: list[bytes] = []
    conn.listen(got.append, lambda code: None)
    texts = [b"a" * n for n in SIZES]
    stream = b"".join(_server_frame(Opcode.TEXT, t) for t in texts)
    stream += _server_frame(Opcode.PING, b"p1")
    stream += _server_frame(Opcode.TEXT, b"one", fin=False)
    stream += _server_frame(Opcode.CONT, b"two", fin=False)
    stream += _server_frame(Opcode.CONT, b"three", fin=True)
    stream += _server_frame(Opcode.CLOSE, struct.pack("!H", 1000))
    for i in range(0, len(stream), chunk):
        conn.data_received(stream[i : i + chunk])
    assert got == [*texts, b"onetwothree"]
    assert conn.close_code == 1000
    pong, close = transport.written
    # Client frames are masked (bit 0x80 of the second byte) and carry the payload back.
    assert pong[0] == 0x80 | 0xA and pong[1] == 0x80 | 2
    assert rawws.mask(pong[6:], pong[2:6]) == b"p1"
    assert close[0] == 0x80 | 0x8 and rawws.mask(close[6:], close[2:6]) == struct.pack("!H", 1000)


def test_the_load_client_counts_the_same_for_both_clients() -> None:
    """The raw client hands `on_message` bytes, `websockets` hands str: same counters."""
    frame = '{"type":"delta","sub":"s1","delta":{"exam_id":"p-3","version":2,'
    frame += '"updated_at":1000.0,"description":"Röntgen Thorax"}}'
    counters = []
    for message in (frame, frame.encode()):
        process = LoadProcess("t")
        process.start_phase("p-", 4)
        process.on_message(Receiver(rawws.RawConnection(b"")), message)
        phase = process.phase
        counters.append((phase.frames, phase.bytes, phase.delivered, list(phase.keys)))
    assert counters[0] == counters[1] == (1, len(frame), 1, [3 * 4 + 2 - 1])


def test_a_frame_parsed_once_is_still_counted_per_connection() -> None:
    """The load client parses each distinct frame once (its memo), but what a user of
    the benchmark reads stays per connection: every connection's delivery, a repeat on
    one connection as a duplicate, a patch on a base the connection lacks as a row
    request, and a new phase (another prefix) parses afresh."""
    delta = b'{"type":"delta","sub":"s1","delta":{"exam_id":"p-3","version":1,'
    delta += b'"updated_at":1000.0}}'
    patch = b'{"type":"patch","sub":"s1","exam_id":"p-3","version":2,"base":1,'
    patch += b'"fields":{"updated_at":1001.0}}'
    process = LoadProcess("t")
    process.start_phase("p-", 4)
    first, second = (Receiver(rawws.RawConnection(b"")) for _ in range(2))
    for receiver in (first, second):
        process.on_message(receiver, delta)
    process.on_message(first, delta)  # again on the same connection
    process.on_message(first, patch)
    process.on_message(second, bytes(patch))  # a copy: found in the memo by value
    third = Receiver(rawws.RawConnection(b""))
    process.on_message(third, patch)  # holds no version 1: asks for the row
    phase = process.phase
    assert len(phase.parsed) == 2
    assert (phase.frames, phase.delivered, phase.duplicates) == (6, 4, 1)
    assert (phase.patches, phase.patch_mismatches) == (3, 1)
    assert sorted(phase.keys) == [3 * 4, 3 * 4, 3 * 4 + 1, 3 * 4 + 1]
    assert bytes(first.newest[3:4]) == bytes(second.newest[3:4]) == b"\x02"

    process.start_phase("q-", 4)  # another phase: the same bytes are now foreign
    process.on_message(first, delta)
    assert (process.phase.foreign, process.phase.delivered) == (1, 0)
