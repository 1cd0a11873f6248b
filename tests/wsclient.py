"""A small protocol client for tests: send frames, wait for the one you expect."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import UNIT, token

Frame = dict[str, Any]
_ids = itertools.count(1)


class WsClient:
    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.frames: list[Frame] = []  # everything received, in order (batches unpacked)
        self.user: Frame | None = None
        self.batches = 0
        self._unpacked: list[Frame] = []

    @classmethod
    async def open(
        cls, url: str, token_: str | None = "default", *, origin: str | None = None
    ) -> WsClient:
        """Connect and authenticate (with a default radiologist's token unless given;
        None skips authentication)."""
        headers = {"Origin": origin} if origin else None
        client = cls(await connect(url, open_timeout=10 * UNIT, additional_headers=headers))
        welcome = await client.next()
        assert welcome["type"] == "welcome", welcome
        if token_ is not None:
            await client.auth(token() if token_ == "default" else token_)
        return client

    async def auth(self, token_: str) -> Frame:
        rid = f"a{next(_ids)}"
        await self.send({"type": "auth", "id": rid, "token": token_})
        reply = await self.until(lambda f: f.get("id") == rid)
        assert reply["type"] == "authenticated", reply
        self.user = reply["user"]
        return reply

    async def send(self, frame: Frame | str | bytes) -> None:
        if isinstance(frame, dict):
            frame = orjson.dumps(frame).decode()
        await self.conn.send(frame)

    async def next(self, timeout: float = 5.0) -> Frame:
        while True:
            if self._unpacked:
                return self._unpacked.pop(0)
            raw = await asyncio.wait_for(self.conn.recv(), timeout * UNIT)
            frame: Frame = orjson.loads(raw)
            if frame.get("type") == "batch":
                self.batches += 1
                self._unpacked.extend(frame["frames"])
                self.frames.extend(frame["frames"])
                continue
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

    async def request(self, frame: Frame, timeout: float = 5.0) -> Frame:
        """Send a request with a fresh id; its reply (or error)."""
        rid = f"r{next(_ids)}"
        await self.send({**frame, "id": rid})
        return await self.until(lambda f: f.get("id") == rid, timeout)

    async def subscribe(self, sub: str, tenant: str | None = None, **view: Any) -> Frame:
        frame: Frame = {"type": "subscribe", "id": sub, "view": view}
        if tenant is not None:
            frame["tenant"] = tenant
        await self.send(frame)
        return await self.until(lambda f: f.get("id") == sub)

    async def close(self) -> None:
        await self.conn.close()
