"""Presence: who is online in a tenant and what each is reading, across gateway nodes.

Each connection is an entry in the tenant's Redis hash (connection id -> user, claims,
scope, node, heartbeat): the source of truth. A node refreshes its own entries'
heartbeats and prunes entries whose heartbeat stopped (a node that died).

A change is announced on the tenant's presence channel *with the change itself* (the
entries set and the connection ids deleted); the changes a node makes within one
debounce window go out as one write and one announcement. Every node keeps a mirror of
the hash in memory (`Mirror`), read once when its first session of the tenant joins,
and applies announcements to it incrementally, folding connections into users as it
goes (two tabs are one presence). Nothing re-reads the whole hash per change: a storm of
N joins costs O(N) in Redis and CPU, not O(N^2). The hash is read again whole when a node
starts on a tenant, after a pub/sub gap (announcements may have been lost) and at each
heartbeat (which also prunes dead nodes' entries), so a mirror that drifted converges.

Each debounce window, a node sends its sessions one `presence_diff` of the users touched
(computed and serialized once per distinct viewer scope, not per session). Under a storm
the window stretches so that diffs take at most `_DIFF_SHARE` of the node's time. Notices
to one user (a broken lock) travel on the same channel.

What each viewer is shown of `reading` passes the viewer's own scope (the rule every
path uses): an exam at a site, subspecialty or modality the viewer may not read never
appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import orjson

from gateway.presencemirror import Mirror
from service.supervise import Supervisor
from worklist_cache import keys
from worklist_cache.connection import Client
from worklist_cache.subscriber import Subscriber
from worklist_cache.views import Scope

if TYPE_CHECKING:
    from gateway.handlers import Connection

log = logging.getLogger("gateway.presence")

HEARTBEAT_S = 10.0
# Whole-hash work (the heartbeat, a re-read) lets the loop run other work every this many
# entries: a tenant's thousands of sessions never hold it for long.
_CHUNK = 500
STALE_MS = 35_000
_DEBOUNCE_S = 0.05
# In a storm, the pause between two rounds of diffs grows so that sending them takes at
# most this share of the node's time (each round costs one frame per session).
_DIFF_SHARE = 0.1


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@functools.lru_cache(maxsize=4096)
def _limits(scope: Scope) -> dict[str, list[str]]:
    """`Scope.limits`, once per distinct scope (shared: entries are never changed)."""
    return scope.limits()


def _parse(raw: bytes | str) -> dict[str, Any] | None:
    try:
        entry = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return entry if isinstance(entry, dict) and "sub" in entry else None


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
        # This instance, unique even when two gateways in one process share a node
        # name: its entries and announcements carry it, so it knows its own.
        self._node = f"{node}/{uuid.uuid4().hex[:8]}"
        self._local: dict[str, set[Connection]] = defaultdict(set)  # tenant -> sessions
        self._mirrors: dict[str, Mirror] = {}
        # tenant -> connection -> its entry to write (None: delete), in the next batch.
        self._outbox: dict[str, dict[str, dict[str, Any] | None]] = {}
        self._dirty: set[str] = set()  # tenants with users touched since the last diff
        self._flush: asyncio.Task[None] | None = None
        self._write: asyncio.Task[None] | None = None
        self._rereads: set[asyncio.Task[None]] = set()
        self._beat: asyncio.Task[None] | None = None
        self._diff_cost = 0.0  # seconds the last round of diffs took
        self._changes = 0  # our own connections' changes so far (`_change`)
        self.rereads = 0  # whole-hash reads (start, gap, heartbeat): for tests and metrics

    async def __aenter__(self) -> Presence:
        if self._supervisor is not None:
            self._beat = self._supervisor.start("presence-heartbeat", self._heartbeat)
        else:
            self._beat = asyncio.create_task(self._heartbeat(), name="presence-heartbeat")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._write is not None and not self._write.done():
            # Sessions that left on the way out: their entries go, not left to be pruned.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._write), 2.0)
        for task in (self._beat, self._flush, self._write, *self._rereads):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._beat = self._flush = self._write = None

    # ---- our own connections -------------------------------------------------------------

    def _entry(self, session: Connection) -> dict[str, Any]:
        p = session.principal
        assert p is not None
        # Each exam with what a viewer's scope checks (site, subspecialty, modality).
        reading = [
            {"tenant": p.tenant, "exam_id": exam_id, **session.claim_rows.get(exam_id, {})}
            for exam_id in sorted(session.claims)
        ]
        return {
            **p.public(),
            "reading": reading,
            # What they may read (never shown to anyone: `users` leaves it out), so
            # the STAT offer desk on any node knows who online may take a case.
            "scope": _limits(p.scope),
            "node": self._node,
        }

    async def join(self, session: Connection) -> None:
        tenant = session.principal.tenant if session.principal else ""
        self._local[tenant].add(session)
        mirror = await self._mirror(tenant)
        if session.principal is not None and session in self._local[tenant]:
            self._change(tenant, mirror, session.conn_id, self._entry(session))
        await self.send_state(session, None)

    async def update(self, session: Connection) -> None:
        if session.principal is None:
            return
        tenant = session.principal.tenant
        mirror = self._mirrors.get(tenant) or await self._mirror(tenant)
        if session in self._local[tenant]:
            self._change(tenant, mirror, session.conn_id, self._entry(session))

    async def leave(self, session: Connection) -> None:
        if session.principal is None:
            return
        tenant = session.principal.tenant
        self._local[tenant].discard(session)
        mirror = self._mirrors.get(tenant)
        if mirror is not None:
            self._change(tenant, mirror, session.conn_id, None)
        else:  # never joined fully: only the hash may hold it
            await self._redis.hdel(keys.presence(tenant), session.conn_id)

    def _change(self, tenant: str, mirror: Mirror, conn: str, entry: dict[str, Any] | None) -> None:
        """Our own connection changed: into the mirror now, into Redis and onto the
        channel with the rest of the window's changes."""
        self._changes += 1
        if entry is None:
            mirror.drop(conn)
        else:
            mirror.put(conn, entry)
        self._outbox.setdefault(tenant, {})[conn] = entry
        if self._write is None or self._write.done():
            self._write = asyncio.create_task(self._write_changes(), name="presence-write")
        self._touched(tenant, mirror)

    async def _write_changes(self) -> None:
        await asyncio.sleep(_DEBOUNCE_S)  # fold a burst of changes into one write
        while self._outbox:
            tenant, changes = self._outbox.popitem()
            seen = _now_ms()
            sets = {c: e for c, e in changes.items() if e is not None}
            dels = [c for c, e in changes.items() if e is None]
            try:
                if sets:
                    mapping = {c: orjson.dumps({**e, "seen": seen}) for c, e in sets.items()}
                    await self._redis.hset(keys.presence(tenant), mapping=mapping)  # type: ignore[arg-type]
                if dels:
                    await self._redis.hdel(keys.presence(tenant), *dels)
                await self._announce(tenant, sets, dels)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The heartbeat writes our entries again and other nodes re-read then;
                # an entry left behind goes stale and is pruned.
                log.warning("presence write failed (%s)", type(exc).__name__)

    async def _announce(
        self, tenant: str, sets: dict[str, dict[str, Any]], dels: list[str]
    ) -> None:
        message = {"kind": "changes", "node": self._node, "set": sets, "del": dels}
        await self._publish(tenant, orjson.dumps(message))

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

    async def _entries(self, tenant: str) -> dict[str, dict[str, Any]]:
        """The tenant's live entries: the mirror's when this node keeps one, else read
        from the hash (heartbeats that stopped are left out)."""
        mirror = self._mirrors.get(tenant)
        if mirror is not None and mirror.backlog is None:
            return mirror.entries
        return await self._read(tenant)

    async def _read(
        self, tenant: str, *, prune: bool = False, ours: Collection[str] = ()
    ) -> dict[str, dict[str, Any]]:
        """The whole hash: its live entries; with `prune`, entries whose heartbeat
        stopped (a node that died) are deleted and their deletion announced. The entries
        of `ours` (connections of this node, which the caller builds itself) are left
        out unread."""
        key = keys.presence(tenant)
        out: dict[str, dict[str, Any]] = {}
        stale: list[str] = []
        oldest = _now_ms() - STALE_MS
        marker = b'"node":' + orjson.dumps(self._node)
        i = 0
        # HSCAN, a page at a time (one huge HGETALL reply is parsed in one go); a change
        # made meanwhile is announced, and the announcement applied after the read.
        async for raw_conn, raw in self._redis.hscan_iter(key, count=_CHUNK):
            i += 1
            if not i % _CHUNK:
                await asyncio.sleep(0)
            conn = raw_conn.decode() if isinstance(raw_conn, bytes) else str(raw_conn)
            if conn in ours and isinstance(raw, bytes) and marker in raw:
                continue
            entry = _parse(raw)
            if entry is None:
                continue
            if not isinstance(entry.get("seen"), int) or entry.pop("seen") < oldest:
                stale.append(conn)
            else:
                out[conn] = entry
        if prune and stale:
            await self._redis.hdel(key, *stale)
            await self._announce(tenant, {}, stale)
        return out

    async def readers(self, tenant: str) -> dict[str, Scope]:
        """The radiologists online in a tenant (any node), each with their scope."""
        out: dict[str, Scope] = {}
        for entry in (await self._entries(tenant)).values():
            if "radiologist" in entry.get("roles", ()):
                out[entry["sub"]] = Scope.from_limits(tenant, entry.get("scope") or {})
        return out

    async def _publish(self, tenant: str, message: bytes) -> None:
        channel = keys.presence_channel(tenant)
        await self._redis.execute_command(self._publish_command, channel, message)

    # ---- the mirror ----------------------------------------------------------------------

    async def _mirror(self, tenant: str) -> Mirror:
        """The tenant's mirror, subscribed and read once (concurrent joins share it)."""
        mirror = self._mirrors.get(tenant)
        if mirror is None:
            mirror = self._mirrors[tenant] = Mirror()
            mirror.loaded = asyncio.ensure_future(self._load(tenant, mirror))
        assert mirror.loaded is not None
        try:
            await asyncio.shield(mirror.loaded)
        except Exception:
            if self._mirrors.get(tenant) is mirror:
                del self._mirrors[tenant]  # the next join tries again
            raise
        return mirror

    async def _load(self, tenant: str, mirror: Mirror) -> None:
        def deliver(raw: bytes) -> None:
            self._on_message(tenant, raw)

        # Subscribed first: no announcement after the read is missed.
        await self._subscriber.subscribe(keys.presence_channel(tenant), deliver)
        await self._reread(tenant, mirror)

    async def _reread(
        self,
        tenant: str,
        mirror: Mirror,
        *,
        prune: bool = False,
        own: tuple[int, dict[str, dict[str, Any]]] | None = None,
    ) -> None:
        """Read the whole hash into the mirror; our own entries come from our sessions
        (`own`: the count of our changes, and the entries the caller built then: used
        when none of our connections changed since). Announcements arriving meanwhile
        wait and are applied after, in order."""
        async with mirror.reading:
            if mirror.backlog is None:
                mirror.backlog = []
            ours = {s.conn_id for s in self._local.get(tenant, ()) if s.principal is not None}
            try:
                entries = await self._read(tenant, prune=prune, ours=ours)
            except BaseException:
                backlog, mirror.backlog = mirror.backlog or [], None
                for message in backlog:
                    mirror.apply(message)
                raise
            self.rereads += 1
            built = own[1] if own is not None and own[0] == self._changes else {}
            entries = {c: e for c, e in entries.items() if e.get("node") != self._node}
            for session in self._local.get(tenant, ()):
                if session.principal is not None:
                    entries[session.conn_id] = built.get(session.conn_id) or self._entry(session)
            for conn in [c for c in mirror.entries if c not in entries]:
                mirror.drop(conn)
            for i, (conn, entry) in enumerate(entries.items()):
                if i and not i % _CHUNK:
                    await asyncio.sleep(0)  # (announcements meanwhile wait in the backlog)
                mirror.put(conn, entry)
            backlog, mirror.backlog = mirror.backlog or [], None
            for message in backlog:
                mirror.apply(message)
        self._touched(tenant, mirror)

    def resync(self) -> None:
        """Announcements may have been lost (a pub/sub gap): read every mirror again."""
        for tenant, mirror in list(self._mirrors.items()):
            if mirror.loaded is None or not mirror.loaded.done():
                continue  # still loading: its read comes after the gap anyway
            task = asyncio.create_task(self._reread_logged(tenant, mirror), name="presence-read")
            self._rereads.add(task)
            task.add_done_callback(self._rereads.discard)

    async def _reread_logged(self, tenant: str, mirror: Mirror) -> None:
        try:
            await self._reread(tenant, mirror)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("presence read failed (%s); the heartbeat reads again", type(exc).__name__)

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
        if not sessions:
            return
        seen = _now_ms()
        changes = self._changes
        own: dict[str, dict[str, Any]] = {}
        mine: dict[str, bytes] = {}
        for i, session in enumerate(list(sessions)):
            if i and not i % _CHUNK:
                await asyncio.sleep(0)  # thousands of sessions: others run meanwhile
            if session.principal is not None:
                entry = own[session.conn_id] = self._entry(session)
                mine[session.conn_id] = orjson.dumps({**entry, "seen": seen})
        here = {s.conn_id for s in sessions}  # (those that left meanwhile are not written)
        mine = {conn: raw for conn, raw in mine.items() if conn in here}
        conns = list(mine)
        for at in range(0, len(conns), _CHUNK):  # (packing one huge command holds the loop)
            part = {conn: mine[conn] for conn in conns[at : at + _CHUNK]}
            await self._redis.hset(keys.presence(tenant), mapping=part)  # type: ignore[arg-type]
        mirror = self._mirrors.get(tenant)
        if mirror is None or mirror.loaded is None or not mirror.loaded.done():
            await self._read(tenant, prune=True)
        else:
            # The same read puts the mirror against the hash: a lost announcement's
            # change converges here at the latest.
            await self._reread(tenant, mirror, prune=True, own=(changes, own))

    # ---- what everyone sees --------------------------------------------------------------

    async def users(self, tenant: str) -> dict[str, dict[str, Any]]:
        mirror = self._mirrors.get(tenant)
        if mirror is not None and mirror.backlog is None:
            return {sub: user.record() for sub, user in mirror.users.items()}
        folded = Mirror()
        folded.replace(await self._read(tenant))
        return {sub: user.record() for sub, user in folded.users.items()}

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
            self._notice(tenant, message)
            return
        if message.get("kind") != "changes" or message.get("node") == self._node:
            return  # our own changes are in the mirror already
        mirror = self._mirrors.get(tenant)
        if mirror is None:
            return
        if mirror.backlog is not None:
            mirror.backlog.append(message)
            return
        try:
            mirror.apply(message)
        except (AttributeError, TypeError, ValueError):
            log.warning("unreadable presence announcement ignored")
        self._touched(tenant, mirror)

    def _notice(self, tenant: str, message: dict[str, Any]) -> None:
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

    def _touched(self, tenant: str, mirror: Mirror) -> None:
        if not mirror.touched:
            return
        self._dirty.add(tenant)
        if self._flush is None or self._flush.done():
            self._flush = asyncio.create_task(self._send_diffs(), name="presence-diff")

    async def _send_diffs(self) -> None:
        clock = time.perf_counter
        while self._dirty:
            # Fold a burst of changes into one diff; in a storm, wait longer so that
            # diffs take at most _DIFF_SHARE of the time.
            await asyncio.sleep(max(_DEBOUNCE_S, self._diff_cost * (1 / _DIFF_SHARE - 1)))
            started = clock()
            dirty, self._dirty = self._dirty, set()
            for tenant in dirty:
                mirror = self._mirrors.get(tenant)
                if mirror is not None:
                    self._diff(tenant, mirror)
            self._diff_cost = clock() - started

    def _diff(self, tenant: str, mirror: Mirror) -> None:
        """Send every local session of the tenant the users touched since the last diff
        (a user touched but unchanged is sent too: a session whose state was read in
        between may hold an intermediate version), built once per viewer scope."""
        touched, mirror.touched = mirror.touched, set()
        joins = [mirror.users[s].record() for s in sorted(touched) if s in mirror.users]
        leaves = sorted(s for s in touched if s not in mirror.users)
        if not joins and not leaves:
            return
        frames: dict[Scope, str] = {}
        for session in list(self._local.get(tenant, ())):
            if session.principal is None:
                continue
            scope = session.principal.scope
            text = frames.get(scope)
            if text is None:
                shown = [_shown(u, scope) for u in joins]
                diff = {"type": "presence_diff", "joins": shown, "leaves": leaves}
                text = frames[scope] = orjson.dumps(diff).decode()
            session.client.send(text)


def _shown(user: dict[str, Any], scope: Scope) -> dict[str, Any]:
    """A user as one viewer may see them: only the exams the viewer may read."""
    reading = [r["exam_id"] for r in user["reading"] if scope.allows(r)]
    return {**user, "reading": reading}
