"""One WebSocket connection: a reader and a writer task; when one ends, both end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from dynamo.models import now_ms
from gateway.hub import Client, Subscription, offset_key
from gateway.protocol import (
    CloseCode,
    ErrorCode,
    Ping,
    Subscribe,
    Unsubscribe,
    client_frame,
)
from worklist_cache.views import select_rows

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("gateway.session")


def _dumps(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()


class Session:
    def __init__(self, gw: Gateway, websocket: WebSocket) -> None:
        self.gw = gw
        self.ws = websocket
        self.client = Client(gw.settings.client_queue, self._overflowed)
        self._evicted = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def run(self) -> None:
        await self.ws.accept()
        self.gw.sessions.add(self)
        self.client.send(_dumps({"type": "welcome", "protocol": "ris.v1", "node": self.gw.node}))
        reader = asyncio.create_task(self._reader(), name="ws-reader")
        writer = asyncio.create_task(self._writer(), name="ws-writer")
        evicted = asyncio.create_task(self._evicted.wait(), name="ws-evict")
        try:
            done, _ = await asyncio.wait(
                {reader, writer, evicted}, return_when=asyncio.FIRST_COMPLETED
            )
            if evicted in done:
                self.gw.metrics["evictions"] += 1
                await self.close(CloseCode.TOO_SLOW, "too slow: reconnect and resume")
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("session task failed", exc_info=task.exception())
                    await self.close(CloseCode.INTERNAL, "internal error")
        finally:
            for task in (reader, writer, evicted, *self._tasks):
                task.cancel()
            await asyncio.gather(reader, writer, evicted, *self._tasks, return_exceptions=True)
            self.gw.hub.detach(self.client)
            self.gw.sessions.discard(self)

    async def close(self, code: int, reason: str = "") -> None:
        # A client that stopped reading may never take the close frame: bound the wait.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code, reason), 2.0)

    def _overflowed(self, _client: Client) -> None:
        self._evicted.set()

    async def _writer(self) -> None:
        queue = self.client.queue
        send = self.ws.send_text
        while True:
            frame = await queue.get()
            await send(frame)
            self.gw.hub.frames_out += 1

    async def _reader(self) -> None:
        limit = self.gw.settings.max_frame_bytes
        while True:
            try:
                message = await self.ws.receive()
            except WebSocketDisconnect:
                return
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            if len(data) > limit:
                await self.close(CloseCode.TOO_LARGE, f"frame above {limit} bytes")
                return
            await self._handle(data)

    async def _handle(self, data: str | bytes) -> None:
        try:
            frame = client_frame.validate_json(data)
        except ValidationError as exc:
            request_id = _request_id(data)
            detail = exc.errors(include_url=False, include_input=False)[:3]
            self._error(request_id, ErrorCode.BAD_REQUEST, _describe(detail))
            return
        if isinstance(frame, Subscribe):
            await self._subscribe(frame)
        elif isinstance(frame, Unsubscribe):
            self._unsubscribe(frame)
        elif isinstance(frame, Ping):
            self.client.send(_dumps({"type": "pong", "id": frame.id, "ts": now_ms()}))

    def _error(self, request_id: str | None, code: ErrorCode, message: str) -> None:
        self.client.send(
            _dumps({"type": "error", "id": request_id, "code": code.value, "message": message})
        )

    async def _subscribe(self, frame: Subscribe) -> None:
        subs = self.client.subs
        if frame.id not in subs and len(subs) >= self.gw.settings.max_subscriptions:
            self._error(
                frame.id,
                ErrorCode.TOO_MANY,
                f"at most {self.gw.settings.max_subscriptions} subscriptions",
            )
            return
        sub = Subscription(frame.id, frame.tenant, frame.view, frame.view.matcher())
        replaced = subs.get(frame.id)
        subs[frame.id] = sub
        if replaced is not None and replaced.tenant != frame.tenant:
            self.gw.hub.refresh(self.client, replaced.tenant)
        self.gw.hub.attach(self.client, frame.tenant)
        try:
            await self.send_snapshot(
                sub, frame.id, min(frame.limit, self.gw.settings.snapshot_limit)
            )
        except Exception:
            log.exception("snapshot failed")
            subs.pop(frame.id, None)
            self.gw.hub.refresh(self.client, frame.tenant)
            self._error(frame.id, ErrorCode.INTERNAL, "could not read the worklist; retry")

    async def send_snapshot(self, sub: Subscription, request_id: str, limit: int) -> None:
        """Queue a snapshot, then the deltas that arrived while it was read.

        The subscription collects feed messages (`pending`) from before the snapshot is
        read until it is queued; those at or before the snapshot's offset are already in
        it, the rest are replayed after it: nothing falls between the two.
        """
        sub.pending = []
        await self.gw.subscriber.subscribe(sub.tenant)
        snap = await self.gw.feed.snapshot(sub.tenant)
        rows, total = select_rows(snap.rows, sub.view, limit)
        sub.in_view = {r["exam_id"] for r in rows}
        self.client.send(
            _dumps(
                {
                    "type": "snapshot",
                    "id": request_id,
                    "sub": sub.sub_id,
                    "epoch": snap.epoch,
                    "offset": snap.offset,
                    "total": total,
                    "rows": rows,
                }
            )
        )
        pending, sub.pending = sub.pending, None
        after = offset_key(snap.offset)
        for offset, row, raw in pending:
            if offset_key(offset) > after:
                self.client.offer(sub, offset, row, raw)

    def _unsubscribe(self, frame: Unsubscribe) -> None:
        sub = self.client.subs.pop(frame.sub, None)
        if sub is None:
            self._error(frame.id, ErrorCode.NOT_FOUND, f"no subscription {frame.sub}")
            return
        self.gw.hub.refresh(self.client, sub.tenant)
        self.client.send(_dumps({"type": "unsubscribed", "id": frame.id, "sub": frame.sub}))

    def resync(self) -> None:
        """After a feed gap: tell the client, then send each subscription afresh."""
        for sub in list(self.client.subs.values()):
            self.client.send(_dumps({"type": "resync", "sub": sub.sub_id}))
            task = asyncio.create_task(
                self.send_snapshot(sub, sub.sub_id, self.gw.settings.snapshot_limit)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


def _request_id(data: str | bytes) -> str | None:
    """The `id` of a frame that failed validation, when it has a usable one."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    rid = value.get("id") if isinstance(value, dict) else None
    if isinstance(rid, str) and 0 < len(rid) <= 64:
        return rid
    return None


def _describe(errors: list[Any]) -> str:
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or "invalid frame"
