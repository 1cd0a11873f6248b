"""Live worklist subscriptions: scoped views, snapshot or resume, then deltas.

A view is narrowed to what the user may read (tenant, sites, subspecialties, modalities)
before anything is read, so every snapshot row and every later delta is filtered server-side
by the same matcher.

A resume is not taken on the client's word: every snapshot records the scope the person
is served under and, when it changed, the position from which (`WorklistFeed.mark_scope`);
a resume from a position earned under another scope (a site revoked or granted since,
in this session or while the client was away), or with no record of the person, is
answered with a reset snapshot, never with the old membership.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import RedisError

from dynamo.exceptions import StoreError
from gateway.protocol import ErrorCode, RowRequest, Subscribe, Unsubscribe
from gateway.routing import MAYBE, Subscription, route, visible
from worklist_cache import keys
from worklist_cache.exceptions import OutOfScope
from worklist_cache.feed import ScopeMark, feed_message, offset_key
from worklist_cache.subscriber import More
from worklist_cache.views import HidingHeld, RowMatcher, View, scope_view

if TYPE_CHECKING:
    from gateway.handlers import Connection

log = logging.getLogger("gateway.handlers.worklists")


async def subscribe(session: Connection, frame: Subscribe) -> None:
    principal = session.principal
    assert principal is not None
    gw = session.gw
    tenant = frame.tenant or principal.tenant
    if tenant != principal.tenant:
        session.error(frame.id, ErrorCode.FORBIDDEN, "that tenant is not yours")
        return
    try:
        view = scope_view(frame.view, principal.scope)
    except OutOfScope as exc:
        session.error(frame.id, ErrorCode.FORBIDDEN, str(exc))
        return
    subs = session.client.subs
    if frame.id not in subs and len(subs) >= gw.settings.max_subscriptions:
        session.error(
            frame.id, ErrorCode.TOO_MANY, f"at most {gw.settings.max_subscriptions} subscriptions"
        )
        return
    try:
        hide = (await gw.orchestrator.rules(tenant)).hide_locked
    except StoreError:
        hide = False  # the directory is unreachable: show the list as it is
    sub = Subscription(
        frame.id, tenant, view, matcher_for(view, principal.sub, hide), principal.scope
    )
    subs[frame.id] = sub
    gw.hub.attach(session.client, tenant)
    gw.tenant_active(tenant)
    limit = min(frame.limit, gw.settings.snapshot_limit)
    try:
        if not await gw.tenant_ready(tenant):
            subs.pop(frame.id, None)
            if gw.hub.refresh(session.client, tenant):
                gw.tenants_idle([tenant])
            gw.metrics["subscribes_unbuilt"] += 1
            session.error(
                frame.id,
                ErrorCode.UNAVAILABLE,
                "the worklist is being rebuilt; subscribe again shortly",
                {"retry_after_ms": 1000},
            )
            return
        await ensure_feed(session, tenant)
        if frame.since is not None:
            await resume(session, sub, frame.id, frame.since.epoch, frame.since.offset, limit)
        else:
            await send_snapshot(session, sub, frame.id, limit)
    except Exception:
        log.exception("subscribe failed")
        subs.pop(frame.id, None)
        if gw.hub.refresh(session.client, tenant):
            gw.tenants_idle([tenant])
        session.error(frame.id, ErrorCode.INTERNAL, "could not read the worklist; retry")


def matcher_for(view: View, me: str, hide_locked: bool) -> RowMatcher:
    """The view's matcher; under the tenant's `hide_locked`, one that leaves out what
    others hold (`HidingHeld`), on every path: snapshot, live, resume."""
    return HidingHeld(view, me) if hide_locked else view.matcher(me)


async def ensure_feed(session: Connection, tenant: str) -> None:
    hub = session.gw.hub

    def deliver(raw: bytes) -> More | None:
        return hub.on_message(tenant, raw)  # (the rest of a long fan-out, if any)

    await session.gw.subscriber.subscribe(keys.channel(tenant), deliver)


async def send_snapshot(
    session: Connection, sub: Subscription, request_id: str, limit: int, reset: bool = False
) -> None:
    """Queue a snapshot, then the deltas that arrived while it was read.

    The subscription collects feed messages (`pending`) from before the snapshot is
    read until it is queued; those at or before the snapshot's offset are already in
    it, the rest are routed after it: nothing falls between the two, nothing repeats.
    """
    sub.pending = []
    await ensure_feed(session, sub.tenant)
    me = session.principal.sub if session.principal else ""
    snap = await session.gw.feed.snapshot(sub.tenant, sub.view, me=me, limit=limit)
    rows, total = snap.rows, snap.total
    if isinstance(sub.matcher, HidingHeld):
        shown = [r for r in rows if sub.matcher(r)]
        total, rows = max(0, total - (len(rows) - len(shown))), shown
    sub.held = {r["exam_id"]: r["version"] for r in rows}  # what later patches apply to
    sub.epoch = snap.epoch
    session.send(
        {
            "type": "snapshot",
            "id": request_id,
            "sub": sub.sub_id,
            "epoch": snap.epoch,
            "offset": snap.offset,
            "total": total,
            "total_capped": snap.total_capped,
            "reset": reset,
            "rows": rows,
        }
    )
    _replay_pending(session, sub, snap.offset)
    try:
        mark = ScopeMark(sub.scope.fingerprint, snap.epoch, snap.offset)
        await session.gw.feed.mark_scope(sub.tenant, me, mark)
    except RedisError as exc:  # without the mark, the person's next resume is a reset
        log.warning("scope mark not recorded (%s)", type(exc).__name__)


async def resume(
    session: Connection, sub: Subscription, request_id: str, epoch: str, offset: str, limit: int
) -> None:
    """Send what the client missed after (`epoch`, `offset`), or a reset snapshot.

    The history and the view's membership at its end are read in one atomic step, and
    every missed message goes through `route`, the live path's rule. Only the last frame
    per exam is sent (it leaves the client where the live path would have). An exam
    the client may hold from before the drop (any of its missed rows is in the user's
    scope) gets a `leave` placeholder if it no longer matches; nothing outside the
    user's scope is ever sent. When more frames are due than the client's queue can
    take at once, the answer is a reset snapshot instead: a resume never evicts.
    """
    sub.pending = []
    gw = session.gw
    me = session.principal.sub if session.principal else ""
    mark = await gw.feed.scope_mark(sub.tenant, me)
    if mark is None or not mark.covers(sub.scope.fingerprint, epoch, offset):
        # The client's rows may be of another scope: replace them all.
        gw.metrics["resume_scope_resets"] += 1
        await send_snapshot(session, sub, request_id, limit, reset=True)
        return
    got = await gw.feed.recover(sub.tenant, sub.view, epoch, offset, me=me)
    missed = got.missed
    if missed.reset:
        gw.metrics["resume_resets"] += 1
        await send_snapshot(session, sub, request_id, limit, reset=True)
        return
    # exam_id -> its last missed (row, offset, message text), in order of last change
    last: dict[str, tuple[dict[str, Any], str, str]] = {}
    maybe_held: set[str] = set()
    for entry_offset, raw_delta in missed.entries:
        row = orjson.loads(raw_delta)
        exam_id = row["exam_id"]
        if sub.scope.allows(row):
            maybe_held.add(exam_id)
        last.pop(exam_id, None)
        last[exam_id] = (row, entry_offset, feed_message(missed.epoch, entry_offset, raw_delta))
    # Untouched exams are held iff they match now; a touched one may be held if the
    # user could ever see it, and `route` decides from its last row.
    sub.held = dict.fromkeys(got.members | maybe_held, MAYBE)
    sub.epoch = missed.epoch
    frames: list[tuple[str, str]] = []
    for exam_id, (row, entry_offset, text) in last.items():
        frame = route(sub, entry_offset, row, text, missed.epoch)
        if frame is not None:
            frames.append((exam_id, frame))
    if len(frames) > gw.settings.client_queue // 2:
        gw.metrics["resume_resets"] += 1
        await send_snapshot(session, sub, request_id, limit, reset=True)
        return
    gw.metrics["resumes"] += 1
    session.send(
        {
            "type": "resumed",
            "id": request_id,
            "sub": sub.sub_id,
            "epoch": missed.epoch,
            "offset": got.offset,
            "missed": len(frames),
        }
    )
    for exam_id, text in frames:
        session.client.send(text, sub.key_prefix + exam_id)
    _replay_pending(session, sub, got.offset)


def _replay_pending(session: Connection, sub: Subscription, after_offset: str) -> None:
    """Route what arrived while the snapshot or resume was read, after its position;
    later live messages at or before that position are dropped too (`floor`)."""
    pending, sub.pending = sub.pending or [], None
    sub.floor = offset_key(after_offset)
    for offset, row, raw, epoch in pending:
        session.client.offer(sub, offset, row, raw, epoch)


async def row(session: Connection, frame: RowRequest) -> None:
    """One exam's row in a subscription (a client whose row is not at a patch's base
    asks for it), through the subscription's rule: its row if the view holds it, else
    null, and from then on patches apply to what was sent."""
    sub = session.client.subs.get(frame.sub)
    if sub is None:
        session.error(frame.id, ErrorCode.NOT_FOUND, f"no subscription {frame.sub}")
        return
    found = await session.gw.feed.row(sub.tenant, frame.exam_id)
    reply: dict[str, Any] = {"type": "row", "id": frame.id, "sub": sub.sub_id}
    reply["exam_id"] = frame.exam_id
    if found is None or not visible(sub, found):
        session.send({**reply, "row": None})
        return
    if sub.held.get(frame.exam_id, MAYBE) < found["version"]:
        sub.held[frame.exam_id] = found["version"]
    session.send({**reply, "row": found})


def unsubscribe(session: Connection, frame: Unsubscribe) -> None:
    sub = session.client.subs.pop(frame.sub, None)
    if sub is None:
        session.error(frame.id, ErrorCode.NOT_FOUND, f"no subscription {frame.sub}")
        return
    if session.gw.hub.refresh(session.client, sub.tenant):
        session.gw.tenants_idle([sub.tenant])
    session.send({"type": "unsubscribed", "id": frame.id, "sub": frame.sub})
