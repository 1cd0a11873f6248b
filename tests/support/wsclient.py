"""A small protocol client for tests: send frames, wait for the one you expect."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close, Opcode
from websockets.frames import Frame as Frame_
from websockets.uri import parse_uri

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
        # (sub, exam_id) -> the row held: patches apply to it, as a real client's would.
        self.rows: dict[tuple[str, str], Frame] = {}
        self.patches = 0
        self._patch_of: dict[int, Frame] = {}  # id(a delta made from a patch) -> the patch

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
                inner = [self._hold(f) for f in frame["frames"]]
                self._unpacked.extend(inner)
                self.frames.extend(inner)
                continue
            frame = self._hold(frame)
            self.frames.append(frame)
            return frame

    def _hold(self, f: Frame) -> Frame:
        """Keep the rows this client holds; a `patch` on the row it holds at `base` is
        returned as the `delta` it makes (`patch_of` gives the patch), one on another
        version as it came, marked "mismatch" (a real client asks for the row)."""
        kind, sub = f.get("type"), f.get("sub", "")
        if kind == "snapshot":
            self.rows = {k: v for k, v in self.rows.items() if k[0] != sub}
            self.rows.update(((sub, r["exam_id"]), r) for r in f["rows"])
        elif kind == "delta":
            if f.get("leave"):
                self.rows.pop((sub, f["delta"]["exam_id"]), None)
            else:
                self.rows[(sub, f["delta"]["exam_id"])] = f["delta"]
        elif kind == "row" and "sub" in f:
            if f["row"] is None:
                self.rows.pop((sub, f["exam_id"]), None)
            else:
                self.rows[(sub, f["exam_id"])] = f["row"]
        elif kind == "patch":
            self.patches += 1
            held = self.rows.get((sub, f["exam_id"]))
            if held is None or held["version"] != f["base"]:
                return {**f, "mismatch": True}
            row = {**held, **f["fields"], "version": f["version"]}
            self.rows[(sub, f["exam_id"])] = row
            out = {k: f[k] for k in ("sub", "epoch", "offset")}
            delta = {"type": "delta", **out, "delta": row}
            self._patch_of[id(delta)] = f
            return delta
        return f

    def patch_of(self, frame: Frame) -> Frame | None:
        """The `patch` a delta frame was made from (None: it came whole)."""
        return self._patch_of.get(id(frame))

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


async def closed_with(client: WsClient, timeout: float = 5.0) -> int:
    """Read until the server closes; its close code."""
    try:
        while True:
            await client.next(timeout)
    except ConnectionClosed as closed:
        assert closed.rcvd is not None, "closed without a close frame"
        return closed.rcvd.code


class StalledClient:
    """A real WebSocket client that authenticates, subscribes, then never reads again:
    a raw socket with a small receive buffer, driven by websockets' sans-I/O protocol."""

    def __init__(self, url: str) -> None:
        self.proto = ClientProtocol(parse_uri(url))
        host, port = url.split("//")[1].split("/")[0].split(":")
        self.addr = (host, int(port))
        self.closed_code: int | None = None

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, self.addr)
        self.reader, self.writer = await asyncio.open_connection(sock=sock)
        self.proto.send_request(self.proto.connect())
        self._flush()
        await self._until("welcome")
        self._send({"type": "auth", "id": "a", "token": token("t-stalled")})
        await self._until("authenticated")
        self._send({"type": "subscribe", "id": "s", "view": {"statuses": []}})
        await self._until("snapshot")
        self.writer.transport.pause_reading()  # type: ignore[attr-defined]

    def _send(self, frame: Frame) -> None:
        self.proto.send_text(orjson.dumps(frame))
        self._flush()

    def _flush(self) -> None:
        self.writer.write(b"".join(self.proto.data_to_send()))

    async def _until(self, kind: str) -> None:
        while True:
            for event in self.proto.events_received():
                if isinstance(event, Frame_) and event.opcode == Opcode.TEXT:
                    if orjson.loads(event.data).get("type") == kind:
                        return
            data = await asyncio.wait_for(self.reader.read(65536), 5 * UNIT)
            assert data, "closed early"
            self.proto.receive_data(data)

    async def close_code(self) -> int | None:
        """Read everything left (resuming reads) until the close frame."""
        self.writer.transport.resume_reading()  # type: ignore[attr-defined]
        try:
            while True:
                for event in self.proto.events_received():
                    if isinstance(event, Frame_) and event.opcode == Opcode.CLOSE:
                        return Close.parse(event.data).code
                data = await asyncio.wait_for(self.reader.read(1 << 20), 10 * UNIT)
                if not data:
                    return None
                self.proto.receive_data(data)
        finally:
            self.writer.close()
