"""One WebSocket connection: authenticate, then read requests in the connection's own
task; frames go straight to the transport, or queue behind a writer started for them.

Lifecycle: `welcome` -> the client's `auth` (within `auth_timeout`, checked by the
gateway's housekeeping; nothing else is processed before it) -> requests. An idle
session holds no task of its own besides the server's one for the connection: the
writer task exists only while frames wait in the client's bounded queue, drains them,
batching what backed up (`hub.coalesce`), and ends. Closing goes through
`request_close`, which either lets queued frames out first (an error that explains the
close) or cuts in at once (a client too slow to take anything more); a close decided
outside the reading task interrupts its read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from enum import Enum, auto
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from dynamo.directory.models import Person
from dynamo.models import now_ms
from gateway.auth import Identity, Principal, principal_for
from gateway.exceptions import AuthError, TenantNotBuilt
from gateway.handlers import dispatch, worklists
from gateway.hub import Client, Queued, coalesce
from gateway.protocol import (
    Auth,
    CloseCode,
    ErrorCode,
    client_frame,
)
from gateway.routing import Subscription
from gateway.wire import DirectWriter

if TYPE_CHECKING:
    from gateway.context import Gateway

log = logging.getLogger("gateway.session")

_CLOSE: Queued = ("\x01close", "")
# A session's end without a close frame (the client went away while frames were written).
_GONE: tuple[int, str] = (0, "")
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_MAX_BATCH = 256


def dumps(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()


class ConnectionState(Enum):
    """A connection's life, as starlette's `WebSocketState` guards a socket's."""

    CONNECTING = auto()  # accepted and welcomed; nothing but `auth` is processed
    AUTHENTICATED = auto()  # a valid `auth` came: requests are served
    CLOSING = auto()  # a close was requested; what is queued before it still goes out
    CLOSED = auto()  # the socket is gone


class TokenBucket:
    """Requests per second with a burst; `take` says how long to wait when empty."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> float:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Session:
    __slots__ = (
        "_bucket",
        "_close_after_flush",
        "_interrupted",
        "_outcome",
        "_reading",
        "_strikes",
        "_task",
        "_tasks",
        "_waiter",
        "_writer",
        "check_at",
        "claim_rows",
        "claims",
        "client",
        "conn_id",
        "gw",
        "identity",
        "principal",
        "review_tokens",
        "state",
        "ws",
    )

    def __init__(self, gw: Gateway, websocket: WebSocket) -> None:
        self.gw = gw
        self.ws = websocket
        self.conn_id = uuid.uuid4().hex
        self.client = Client(
            gw.settings.client_queue,
            self._overflowed,
            self._epoch_changed,
            max_bytes=gw.settings.client_queue_bytes,
            hub=gw.hub,
        )
        self.principal: Principal | None = None
        self.identity: Identity | None = None  # what the token proved (for re-checks)
        self.claims: dict[str, str] = {}  # exam_id -> claim token (this connection's)
        # exam_id -> its site and subspecialty, for scoping what presence shows of it
        self.claim_rows: dict[str, dict[str, Any]] = {}
        self.review_tokens: dict[str, str] = {}  # exam_id -> peer-review claim token
        # How the session ends once decided: (code, reason) of its close frame, or _GONE.
        self._outcome: tuple[int, str] | None = None
        self._task: asyncio.Task[Any] | None = None  # the connection's (server's) task
        self._reading = False  # that task waits for (or handles) the client's frames
        self._interrupted = False  # ... and was cancelled to learn of `_outcome`
        self._waiter: asyncio.Future[None] | None = None  # waits for `_outcome` (closing)
        self._writer: asyncio.Task[None] | None = None  # while frames wait in the queue
        self._tasks: set[asyncio.Task[Any]] | None = None  # spawned requests' work
        self._close_after_flush: tuple[int, str] = (CloseCode.NORMAL, "")
        self._bucket = TokenBucket(gw.settings.rate_limit, gw.settings.rate_burst)
        self._strikes = 0
        # (ms) when `check_expiry` has something to check: the `auth` deadline, then the
        # token's expiry (housekeeping skips every session whose time has not come).
        self.check_at = 0
        self.state = ConnectionState.CONNECTING

    # ---- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        subprotocols = self.ws.scope.get("subprotocols") or []
        await self.ws.accept(subprotocol="ris.v1" if "ris.v1" in subprotocols else None)
        # Nothing reads the handshake's headers after accept (the origin was checked
        # before): an idle connection does not keep them.
        self.ws.scope["headers"] = []
        vars(self.ws).pop("_headers", None)  # starlette's cached `Headers` of them
        # Frames go straight to the transport while nothing waits (gateway.wire).
        self.client.writer = DirectWriter.find(self.ws.scope)
        self.client.queue.on_put = self._wake_writer
        self._task = asyncio.current_task()
        self.check_at = now_ms() + int(self.gw.settings.auth_timeout * 1000)
        self.gw.sessions.add(self)
        self.send(
            {
                "type": "welcome",
                "protocol": "ris.v1",
                "node": self.gw.node,
                "auth_timeout_ms": int(self.gw.settings.auth_timeout * 1000),
            }
        )
        try:
            try:
                await self._read()
            except asyncio.CancelledError:
                if not self._uninterrupt():
                    raise
            except Exception:
                log.error("session task failed", exc_info=True)
                self.request_close(CloseCode.INTERNAL, "internal error", flush=False)
            self._uninterrupt()
            if self._outcome is None and self.state is ConnectionState.CLOSING:
                # The reading stopped (an error frame asked to close, or the client
                # left) while queued frames go out before the close: let the writer
                # send them first, within a bound.
                self._waiter = asyncio.get_running_loop().create_future()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._waiter, 2.0)
            if self._outcome is not None and self._outcome is not _GONE:
                await self._close(*self._outcome)
        finally:
            self.state = ConnectionState.CLOSED
            self.client.writer = None
            self.client.queue.on_put = None
            tasks = [*(self._tasks or ()), *((self._writer,) if self._writer else ())]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.gw.tenants_idle(self.gw.hub.detach(self.client))
            self.gw.reviews_board.forget(self)
            self.gw.sessions.discard(self)
            if self.principal is not None:
                with contextlib.suppress(Exception):
                    await self.gw.presence.leave(self)

    def _uninterrupt(self) -> bool:
        """After `_finish` cancelled the read: take that cancellation back (True), unless
        someone else cancelled the task too."""
        if not self._interrupted:
            return False
        self._interrupted = False
        task = self._task
        assert task is not None
        return task.uncancel() == 0

    def _finish(self, outcome: tuple[int, str]) -> None:
        """The session ends: with this close frame, or without (_GONE)."""
        if self._outcome is not None:
            return
        self._outcome = outcome
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        task = self._task
        if (
            self._reading
            and not self._interrupted
            and task is not None
            and task is not asyncio.current_task()
        ):
            # The connection's task waits for the client (or serves a request): cut in.
            # (From within that task, the read loop sees `_outcome` when it returns.)
            self._interrupted = True
            task.cancel()

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if self._tasks is not None:
            self._tasks.discard(task)
            if not self._tasks:
                self._tasks = None
        if not task.cancelled() and task.exception() is not None:
            log.error("session task %s failed", task.get_name(), exc_info=task.exception())

    def request_close(self, code: int, reason: str, *, flush: bool = True) -> None:
        """Close the connection; with `flush`, after the frames already queued."""
        # From now on frames queue (behind the close, or for nobody): none jumps ahead.
        self.client.writer = None
        if self._outcome is not None or (flush and self.state is ConnectionState.CLOSING):
            return
        self.state = ConnectionState.CLOSING
        if flush:
            try:
                self.client.queue.put_nowait(_CLOSE)
                self._close_after_flush = (code, reason)
                return
            except asyncio.QueueFull:
                pass
        self._finish((code, reason))

    async def _close(self, code: int, reason: str) -> None:
        # A client that stopped reading takes the close frame only when it reads again
        # (behind what its buffers hold): it is let go from the feed at once, and the
        # close frame waits for it, within a bound, so it learns why (4001) rather than
        # seeing the connection drop.
        self.gw.tenants_idle(self.gw.hub.detach(self.client))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code, reason), self.gw.settings.close_timeout)

    def _overflowed(self, _client: Client) -> None:
        self.gw.metrics["evictions"] += 1
        self.request_close(CloseCode.TOO_SLOW, "too slow: reconnect and resume", flush=False)

    def _epoch_changed(self, sub: Subscription) -> None:
        self.resync_one(sub)

    # ---- output --------------------------------------------------------------------------

    def send(self, frame: dict[str, Any]) -> None:
        self.client.send(dumps(frame))

    def error(
        self,
        request_id: str | None,
        code: ErrorCode,
        message: str,
        detail: dict[str, Any] | None = None,
    ) -> None:
        frame: dict[str, Any] = {"type": "error", "id": request_id, "code": code.value}
        frame["message"] = message
        if detail is not None:
            frame["detail"] = detail
        self.gw.metrics[f"errors_{code.value}"] += 1
        self.send(frame)

    def _wake_writer(self) -> None:
        """A frame was queued: start the writer unless it runs."""
        if self._writer is None and self.state is not ConnectionState.CLOSED:
            self._writer = asyncio.create_task(self._write_queued(), name="ws-writer")

    async def _write_queued(self) -> None:
        """Drain what queued (while the transport was paused, or behind other frames),
        then end; the client is `busy` while frames taken off the queue are not written
        yet, so the hub does not write a newer frame ahead of them."""
        try:
            await self._drain()
        except Exception:
            log.error("session task failed", exc_info=True)
            self.request_close(CloseCode.INTERNAL, "internal error", flush=False)
        finally:
            self._writer = None

    async def _drain(self) -> None:
        client = self.client
        queue = client.queue
        send = self.ws.send_text
        while not queue.empty():
            items = [queue.get_nowait()]
            client.busy = True
            while len(items) < _MAX_BATCH and not queue.empty():
                items.append(queue.get_nowait())
            client.taken(items)
            closing = _CLOSE in items
            if closing:
                items = items[: items.index(_CLOSE)]
            for frame in coalesce(items) if len(items) > 1 else [f for _, f in items]:
                direct = client.writer
                try:
                    if direct is not None and direct.ready():
                        direct.write(frame)
                    else:
                        await send(frame)
                except Exception as exc:  # the client went away mid-send: not an error
                    log.debug("send failed (%s): client gone", type(exc).__name__)
                    self._finish(_GONE)
                    return
                self.gw.hub.frames_out += 1
            client.busy = False
            if closing:
                self._finish(self._close_after_flush)
                return

    # ---- input ---------------------------------------------------------------------------

    async def _read(self) -> None:
        """The client's frames, in the connection's own task, until it leaves or the
        session's end is decided (`_finish` cancels a read from outside)."""
        limit = self.gw.settings.max_frame_bytes
        receive = self.ws.receive
        self._reading = True
        try:
            while self._outcome is None:
                try:
                    message = await receive()
                except WebSocketDisconnect:
                    return
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                if len(data) > limit:
                    self.error(None, ErrorCode.TOO_LARGE, f"frame above {limit} bytes")
                    self.request_close(CloseCode.TOO_LARGE, "frame too large")
                    return
                await self._handle(data)
        finally:
            self._reading = False

    async def _handle(self, data: str | bytes) -> None:
        if self.state not in (ConnectionState.CONNECTING, ConnectionState.AUTHENTICATED):
            return  # closing: nothing more is served
        # Every frame counts against the rate limit: auth and invalid frames too.
        if not self._allowed(data):
            return
        try:
            frame = client_frame.validate_json(data)
        except ValidationError as exc:
            request_id = _request_id(data)
            if self.state is ConnectionState.CONNECTING:
                self.error(request_id, ErrorCode.UNAUTHORIZED, "authenticate first")
                self.request_close(CloseCode.UNAUTHORIZED, "authenticate first")
                return
            detail = exc.errors(include_url=False, include_input=False)[:3]
            self.error(request_id, ErrorCode.BAD_REQUEST, _describe(detail))
            return
        if isinstance(frame, Auth):
            await self._auth(frame)
            return
        if self.state is ConnectionState.CONNECTING:
            self.error(frame.id, ErrorCode.UNAUTHORIZED, "authenticate first")
            self.request_close(CloseCode.UNAUTHORIZED, "authenticate first")
            return
        self.gw.metrics[f"requests_{frame.type}"] += 1
        try:
            await dispatch(self, frame)
        except asyncio.CancelledError:
            raise
        except Exception:
            # One request failed (Redis or DynamoDB unreachable, a bug): say so, keep
            # the session. No frame content is logged: it may hold patient data.
            log.exception("request %s failed", frame.type)
            self.error(frame.id, ErrorCode.INTERNAL, "the request failed; retry shortly")

    def _allowed(self, data: str | bytes) -> bool:
        wait = self._bucket.take()
        if wait <= 0:
            self._strikes = 0
            return True
        self._strikes += 1
        self.error(
            _request_id(data),
            ErrorCode.RATE_LIMITED,
            "too many requests",
            {"retry_after_ms": int(wait * 1000) + 1},
        )
        if self._strikes > self.gw.settings.rate_burst * 4:
            self.request_close(CloseCode.POLICY, "request flood")
        return False

    # ---- authentication ------------------------------------------------------------------

    async def _auth(self, frame: Auth) -> None:
        """The first `auth` opens the session; a later one refreshes its token.

        The token proves who (`sub` of `tenant`); the directory says what they may see.
        A refresh must name the same user: another is `forbidden` (4003). When the
        directory changed the person's roles, sites or subspecialties meanwhile, the
        session is not re-scoped in place (its subscriptions, presence and claims were
        granted under the old scope): it closes with 4005, and the client reconnects.
        Any failed auth, first or refresh, ends the session with 4003 after its error:
        `unauthorized` or `token_expired` for a bad token or a person who is not active.
        """
        try:
            identity, principal = await self.gw.authenticator.authenticate(frame.token)
        except AuthError as exc:
            self.gw.metrics["auth_failures"] += 1
            code = ErrorCode(exc.code)
            self.error(frame.id, code, exc.reason)
            self.request_close(CloseCode.UNAUTHORIZED, exc.reason)
            return
        if self.principal is not None:
            if (principal.sub, principal.tenant) != (self.principal.sub, self.principal.tenant):
                self.gw.metrics["auth_rescope_refused"] += 1
                message = "a session cannot change its user: log in again"
                self.error(frame.id, ErrorCode.FORBIDDEN, message)
                self.request_close(CloseCode.UNAUTHORIZED, "user changed: log in again")
                return
            if _scope_of(principal) != _scope_of(self.principal):
                self.privileges_changed()
                return
        first = self.state is ConnectionState.CONNECTING
        self.principal = principal
        self.identity = identity
        self.state = ConnectionState.AUTHENTICATED
        self.check_at = principal.expires_at_ms
        self.client.user = principal.sub
        self.send(
            {
                "type": "authenticated",
                "id": frame.id,
                "user": {
                    **principal.public(),
                    "tenant": principal.tenant,
                    "sites": list(principal.sites),
                    "subspecialties": list(principal.subspecialties),
                    "modalities": list(principal.modalities),
                },
                "expires_at": principal.expires_at_ms,
            }
        )
        if first:
            await self.gw.watch_directory(principal.tenant)
            await self.gw.presence.join(self)

    def rescope(self, person: Person | None) -> None:
        """The directory's person now (after a change notice, or the periodic re-check):
        a session whose person is gone, inactive, or scoped otherwise than it was is
        closed at once (4005), dropping what is queued: nothing more of the old scope
        goes out."""
        if self.state is not ConnectionState.AUTHENTICATED or self.identity is None:
            return
        assert self.principal is not None
        try:
            now = principal_for(self.identity, person)
        except AuthError:
            self.privileges_changed()
            return
        if _scope_of(now) != _scope_of(self.principal):
            self.privileges_changed()

    def privileges_changed(self) -> None:
        self.gw.metrics["privileges_changed"] += 1
        self.request_close(
            CloseCode.PRIVILEGES_CHANGED, "your privileges changed: reconnect", flush=False
        )

    def check_expiry(self, now: int) -> None:
        """Called by the gateway's housekeeping (one timer for every session, rather than
        a task each: idle connections stay small) once `check_at` has come: no `auth`
        within `auth_timeout`, or the token expired."""
        if self.check_at > now:
            return
        if self.state is ConnectionState.CONNECTING:
            self.check_at = now + 2**40  # once
            self.error(None, ErrorCode.UNAUTHORIZED, "no auth frame in time")
            self.request_close(CloseCode.UNAUTHORIZED, "authenticate first")
            return
        if self.state is ConnectionState.AUTHENTICATED and self.principal is not None:
            if self.principal.expires_at_ms <= now:
                self.check_at = now + 2**40  # once
                self.error(None, ErrorCode.TOKEN_EXPIRED, "the token expired; log in again")
                self.request_close(CloseCode.TOKEN_EXPIRED, "token expired")
            else:
                self.check_at = self.principal.expires_at_ms  # (a refresh moved it)
            return
        self.check_at = now + 2**40  # closing: nothing left to check

    # ---- feed problems -------------------------------------------------------------------

    def resync(self) -> None:
        """After a feed gap: tell the client, then send each subscription afresh."""
        for sub in list(self.client.subs.values()):
            self.resync_one(sub)

    def resync_one(self, sub: Subscription) -> None:
        if sub.pending is not None:
            return  # a snapshot is already on its way
        sub.pending = []
        self.send({"type": "resync", "sub": sub.sub_id})
        self.spawn(self._resnapshot(sub), "ws-resync")

    async def _resnapshot(self, sub: Subscription) -> None:
        """A fresh snapshot after a feed problem; Redis may still be coming back, so try
        a few times, then close (1011) so the client reconnects and resumes rather than
        sit on a worklist that no longer moves."""
        delay = 0.2
        for _ in range(8):
            try:
                if not await self.gw.tenant_ready(sub.tenant):
                    raise TenantNotBuilt  # hold the subscription until it is rebuilt
                await worklists.send_snapshot(
                    self, sub, sub.sub_id, self.gw.settings.snapshot_limit, True
                )
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("resync snapshot failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 3.0)
        self.request_close(CloseCode.INTERNAL, "worklist unavailable: reconnect", flush=False)


def _scope_of(p: Principal) -> tuple[Any, ...]:
    """What a token refresh may not change."""
    return (p.sub, p.tenant, frozenset(p.roles), p.scope)


def _request_id(data: str | bytes) -> str | None:
    """The `id` of a frame that failed validation, when it has a usable one."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    rid = value.get("id") if isinstance(value, dict) else None
    if isinstance(rid, str) and _ID.fullmatch(rid):
        return rid
    return None


def _describe(errors: list[Any]) -> str:
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or "invalid frame"
