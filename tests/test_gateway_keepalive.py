"""Keepalive with the gateway's WebSocket protocol (gateway.serverproto): pings share one
timer per event loop, and a peer that stops answering them is still dropped."""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

import uvicorn

from devstack import free_port
from gateway.serverproto import PingWheel, ws_protocol
from tests.conftest import UNIT

PING, CLOSE = 0x9, 0x8


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Accepts a WebSocket and waits for it to end."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(2)
    size = head[1] & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    return head[0] & 0x0F, await reader.readexactly(size)


async def test_a_peer_that_stops_answering_pings_is_pinged_then_dropped() -> None:
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ws=ws_protocol("websockets-sansio"),
        ws_ping_interval=0.3,
        ws_ping_timeout=0.3,
        log_config=None,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(int(500 * UNIT)):
            if server.started:
                break
            await asyncio.sleep(0.02)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10 * UNIT)
        assert status.startswith(b"HTTP/1.1 101")
        # A ping comes (LeanSansIOProtocol times it with PingWheel); it is never answered...
        opcode, _ = await asyncio.wait_for(read_frame(reader), 10 * UNIT)
        assert opcode == PING
        # ... so the server closes the connection (1011 keepalive ping timeout).
        opcode, payload = await asyncio.wait_for(read_frame(reader), 10 * UNIT)
        assert opcode == CLOSE and int.from_bytes(payload[:2], "big") == 1011
        assert await asyncio.wait_for(reader.read(), 10 * UNIT) == b""
        writer.close()
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10 * UNIT)


class _Due:
    def __init__(self, i: int, pinged: list[int]) -> None:
        self.i, self.ping_at, self._pinged = i, 0.0, pinged

    def send_keepalive_ping(self) -> None:
        self._pinged.append(self.i)


async def test_pings_that_fall_due_together_go_out_in_slices_with_the_loop_between() -> None:
    """Connections opened together fall due together; their pings must not hold the loop
    in one callback, ahead of the deltas waiting behind them."""
    loop = asyncio.get_running_loop()
    wheel = PingWheel(loop)
    pinged: list[int] = []
    for i in range(200):
        due = _Due(i, pinged)
        due.ping_at = loop.time() - 1
        wheel.add(due, due.ping_at)  # type: ignore[arg-type]
    assert wheel.timer is not None
    wheel.timer.cancel()
    wheel._tick()  # the tick comes
    assert len(pinged) == PingWheel.SLICE
    seen: list[int] = []
    loop.call_soon(lambda: seen.append(len(pinged)))  # other work, queued meanwhile
    for _ in range(50):
        await asyncio.sleep(0)
    assert sorted(pinged) == list(range(200)), "every due ping went out, once"
    assert seen and seen[0] < 200, "the loop ran other work between the slices"
    assert wheel.timer is None or not wheel.due
