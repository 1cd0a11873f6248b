"""A small protocol client for tests: send frames, wait for the one you expect."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import UNIT

Frame = dict[str, Any]


class WsClient:
    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.frames: list[Frame] = []  # everything received, in order

    @classmethod
    async def open(cls, url: str) -> WsClient:
        client = cls(await connect(url, open_timeout=10 * UNIT))
        welcome = await client.next()
        assert welcome["type"] == "welcome", welcome
        return client

    async def send(self, frame: Frame | str | bytes) -> None:
        if isinstance(frame, dict):
            frame = orjson.dumps(frame).decode()
        await self.conn.send(frame)

    async def next(self, timeout: float = 5.0) -> Frame:
        raw = await asyncio.wait_for(self.conn.recv(), timeout * UNIT)
        frame: Frame = orjson.loads(raw)
        self.frames.append(frame)
        return frame

    async def until(self, predicate: Callable[[Frame], bool], timeout: float = 5.0) -> Frame:
        """The first frame matching `predicate`; the frames before it stay in `frames`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout * UNIT
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("expected frame did not arrive")
            frame = await self.next(remaining / UNIT)
            if predicate(frame):
                return frame

    async def subscribe(self, sub: str, tenant: str, **view: Any) -> Frame:
        await self.send({"type": "subscribe", "id": sub, "tenant": tenant, "view": view})
        return await self.until(lambda f: f.get("id") == sub)

    async def close(self) -> None:
        await self.conn.close()
