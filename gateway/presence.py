"""Presence: who is online in a tenant and what each is reading, across gateway nodes.

Each connection is an entry in the tenant's Redis hash (connection id -> user, claims,
heartbeat). A node refreshes its own entries' heartbeats and prunes entries whose
heartbeat stopped (a node that died), so the hash converges on the truth. Any change is
announced on the tenant's presence channel; every node then re-reads the hash, folds
connections into users (two tabs are one presence), and sends its sessions the
difference (`presence_diff`), as Phoenix Presence does. Notices to one user (a broken
lock) travel on the same channel.

What each viewer is shown of `reading` passes the viewer's own scope (the rule every
path uses): an exam at a site, subspecialty or modality the viewer may not read never
appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import orjson

from service.supervise import Supervisor
from worklist_cache import keys
from worklist_cache.connection import Client
from worklist_cache.subscriber import Subscriber
from worklist_cache.views import Scope

if TYPE_CHECKING:
    from gateway.handlers import Connection

log = logging.getLogger("gateway.presence")

HEARTBEAT_S = 10.0
STALE_MS = 35_000
_DEBOUNCE_S = 0.05


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Presence:
    def __init__(
        self,
        redis: Client,
        subscriber: Subscriber,
        node: str,
        *,
        sharded: bool = False,
        supervisor: Supervisor | None = None,
    ) -> None:
        self._redis = redis
        self._supervisor = supervisor
        self._publish_command = "SPUBLISH" if sharded else "PUBLISH"
        self._subscriber = subscriber
        self._node = node
        self._local: dict[str, set[Connection]] = defaultdict(set)  # tenant -> sessions
        self._known: dict[str, dict[str, dict[str, Any]]] = {}  # tenant -> sub -> user
        self._dirty: set[str] = set()
        self._flush: asyncio.Task[None] | None = None
        self._beat: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Presence:
        if self._supervisor is not None:
            self._beat = self._supervisor.start("presence-heartbeat", self._heartbeat)
        else:
            self._beat = asyncio.create_task(self._heartbeat(), name="presence-heartbeat")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for task in (self._beat, self._flush):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._beat = self._flush = None

    # ---- our own connections -------------------------------------------------------------

    def _entry(self, session: Connection) -> bytes:
        p = session.principal
        assert p is not None
        # Each exam with what a viewer's scope checks (site, subspecialty, modality).
        reading = [
            {"tenant": p.tenant, "exam_id": exam_id, **session.claim_rows.get(exam_id, {})}
            for exam_id in sorted(session.claims)
        ]
        return orjson.dumps(
            {
                **p.public(),
                "reading": reading,
                # What they may read (never shown to anyone: `users` leaves it out), so
                # the STAT offer desk on any node knows who online may take a case.
                "scope": p.scope.limits(),
                "node": self._node,
                "seen": _now_ms(),
            }
        )

    async def join(self, session: Connection) -> None:
        tenant = session.principal.tenant if session.principal else ""
        self._local[tenant].add(session)

        def deliver(raw: bytes) -> None:
            self._on_message(tenant, raw)

        await self._subscriber.subscribe(keys.presence_channel(tenant), deliver)
        await self._redis.hset(keys.presence(tenant), session.conn_id, self._entry(session))
        await self._announce(tenant)
        await self.send_state(session, None)

    async def update(self, session: Connection) -> None:
        if session.principal is None:
            return
        tenant = session.principal.tenant
        await self._redis.hset(keys.presence(tenant), session.conn_id, self._entry(session))
        await self._announce(tenant)

    async def leave(self, session: Connection) -> None:
        if session.principal is None:
            return
        tenant = session.principal.tenant
        self._local[tenant].discard(session)
        await self._redis.hdel(keys.presence(tenant), session.conn_id)
        await self._announce(tenant)

    async def notify(
        self,
        tenant: str,
        user: str | None,
        frame: dict[str, Any],
        *,
        roles: tuple[str, ...] | None = None,
        row: dict[str, Any] | None = None,
        claim: dict[str, Any] | None = None,
    ) -> None:
        """Deliver `frame` to every connection of `user` (or, with `roles`, of everyone
        holding one of them), on whichever node; with `row`, only to those whose scope
        allows the row (the frame then carries something of it). `claim` (a claim's
        token, site and subspecialty) is kept by the receiving connections, never sent."""
        message = {
            "kind": "notice",
            "to": user,
            "roles": roles,
            "row": row,
            "claim": claim,
            "frame": frame,
        }
        await self._publish(tenant, orjson.dumps(message))

    def local_tenants(self) -> list[str]:
        """Tenants with a session on this node."""
        return [t for t, sessions in self._local.items() if sessions]

    async def readers(self, tenant: str) -> dict[str, Scope]:
        """The radiologists online in a tenant (any node), each with their scope."""
        out: dict[str, Scope] = {}
        for raw in (await self._redis.hgetall(keys.presence(tenant))).values():
            try:
                entry = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if entry.get("seen", 0) < _now_ms() - STALE_MS or "radiologist" not in entry.get(
                "roles", ()
            ):
                continue
            out[entry["sub"]] = Scope.from_limits(tenant, entry.get("scope") or {})
        return out

    async def _announce(self, tenant: str) -> None:
        await self._publish(tenant, b'{"kind":"changed"}')

    async def _publish(self, tenant: str, message: bytes) -> None:
        channel = keys.presence_channel(tenant)
        await self._redis.execute_command(self._publish_command, channel, message)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            for tenant, sessions in list(self._local.items()):
                try:
                    await self._beat_tenant(tenant, sessions)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("presence heartbeat failed (%s)", type(exc).__name__)

    async def _beat_tenant(self, tenant: str, sessions: set[Connection]) -> None:
        key = keys.presence(tenant)
        mine = {s.conn_id: self._entry(s) for s in sessions if s.principal is not None}
        if mine:
            await self._redis.hset(key, mapping=mine)  # type: ignore[arg-type]
        stale = []
        for conn, raw in (await self._redis.hgetall(key)).items():
            with contextlib.suppress(ValueError, TypeError):
                if orjson.loads(raw).get("seen", 0) < _now_ms() - STALE_MS:
                    stale.append(conn)
        if stale:
            await self._redis.hdel(key, *stale)
            await self._announce(tenant)

    # ---- what everyone sees --------------------------------------------------------------

    async def users(self, tenant: str) -> dict[str, dict[str, Any]]:
        users: dict[str, dict[str, Any]] = {}
        for raw in (await self._redis.hgetall(keys.presence(tenant))).values():
            try:
                entry = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if entry.get("seen", 0) < _now_ms() - STALE_MS:
                continue
            user = users.setdefault(
                entry["sub"],
                {
                    "sub": entry["sub"],
                    "name": entry["name"],
                    "roles": entry["roles"],
                    "reading": [],
                    "connections": 0,
                },
            )
            user["connections"] += 1
            reading = {r["exam_id"]: r for r in user["reading"]}
            for row in entry.get("reading", []):
                if isinstance(row, dict) and "exam_id" in row:
                    reading[row["exam_id"]] = row
            user["reading"] = [reading[k] for k in sorted(reading)]
        return users

    async def send_state(self, session: Connection, request_id: str | None) -> None:
        p = session.principal
        users = await self.users(p.tenant if p else "")
        scope = p.scope if p else Scope("")
        session.send(
            {
                "type": "presence_state",
                "id": request_id,
                "users": [
                    _shown(u, scope) for u in sorted(users.values(), key=lambda u: u["name"])
                ],
            }
        )

    def _on_message(self, tenant: str, raw: bytes) -> None:
        message = orjson.loads(raw)
        if message.get("kind") == "notice":
            to, roles, row = message.get("to"), message.get("roles"), message.get("row")
            for session in list(self._local.get(tenant, ())):
                p = session.principal
                if p is None or (to is not None and p.sub != to):
                    continue
                if roles is not None and not any(r in roles for r in p.roles):
                    continue
                if row is not None and not p.scope.allows(row):
                    continue
                frame = message["frame"]
                if frame.get("type") == "claim_lost":
                    session.claims.pop(frame.get("exam_id"), None)
                claim = message.get("claim")
                if claim and frame.get("exam_id"):
                    session.claims[frame["exam_id"]] = claim["token"]
                    session.claim_rows[frame["exam_id"]] = {
                        "site": claim.get("site"),
                        "subspecialty": claim.get("subspecialty"),
                    }
                session.send(frame)
            return
        self._dirty.add(tenant)
        if self._flush is None or self._flush.done():
            self._flush = asyncio.create_task(self._send_diffs(), name="presence-diff")

    async def _send_diffs(self) -> None:
        await asyncio.sleep(_DEBOUNCE_S)  # fold a burst of changes into one diff
        while self._dirty:
            tenant = self._dirty.pop()
            try:
                now = await self.users(tenant)
            except Exception as exc:
                log.warning("presence read failed (%s)", type(exc).__name__)
                continue
            before = self._known.get(tenant, {})
            self._known[tenant] = now
            joins = [u for sub, u in now.items() if before.get(sub) != u]
            leaves = [sub for sub in before if sub not in now]
            if not joins and not leaves:
                continue
            for session in list(self._local.get(tenant, ())):
                if session.principal is None:
                    continue
                scope = session.principal.scope
                shown = [_shown(u, scope) for u in joins]
                session.send({"type": "presence_diff", "joins": shown, "leaves": leaves})


def _shown(user: dict[str, Any], scope: Scope) -> dict[str, Any]:
    """A user as one viewer may see them: only the exams the viewer may read."""
    reading = [r["exam_id"] for r in user["reading"] if scope.allows(r)]
    return {**user, "reading": reading}
