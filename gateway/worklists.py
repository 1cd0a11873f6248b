"""Live worklist subscriptions: scoped views, snapshot or resume, then deltas.

A view is narrowed to what the user may read (tenant, sites, subspecialties) before
anything is read, so every snapshot row and every later delta is filtered server-side
by the same matcher.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import orjson

from gateway.hub import Subscription
from gateway.protocol import ErrorCode, Subscribe, Unsubscribe
from worklist_cache import keys
from worklist_cache.feed import offset_key
from worklist_cache.views import OutOfScope, scope_view

if TYPE_CHECKING:
    from gateway.session import Session

log = logging.getLogger("gateway.worklists")


async def subscribe(session: Session, frame: Subscribe) -> None:
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
    sub = Subscription(frame.id, tenant, view, view.matcher(principal.sub))
    subs[frame.id] = sub
    gw.hub.attach(session.client, tenant)
    limit = min(frame.limit, gw.settings.snapshot_limit)
    try:
        await ensure_feed(session, tenant)
        if frame.since is not None:
            await resume(session, sub, frame.id, frame.since.epoch, frame.since.offset, limit)
        else:
            await send_snapshot(session, sub, frame.id, limit)
    except Exception:
        log.exception("subscribe failed")
        subs.pop(frame.id, None)
        gw.hub.refresh(session.client, tenant)
        session.error(frame.id, ErrorCode.INTERNAL, "could not read the worklist; retry")


async def ensure_feed(session: Session, tenant: str) -> None:
    hub = session.gw.hub

    def deliver(raw: bytes) -> None:
        hub.on_message(tenant, raw)

    await session.gw.subscriber.subscribe(keys.channel(tenant), deliver)


async def send_snapshot(
    session: Session, sub: Subscription, request_id: str, limit: int, reset: bool = False
) -> None:
    """Queue a snapshot, then the deltas that arrived while it was read.

    The subscription collects feed messages (`pending`) from before the snapshot is
    read until it is queued; those at or before the snapshot's offset are already in
    it, the rest are replayed after it: nothing falls between the two.
    """
    sub.pending = []
    await ensure_feed(session, sub.tenant)
    me = session.principal.sub if session.principal else ""
    snap = await session.gw.feed.snapshot(sub.tenant, sub.view, me=me, limit=limit)
    rows, total = snap.rows, snap.total
    sub.in_view = {r["exam_id"] for r in rows}
    sub.epoch = snap.epoch
    session.send(
        {
            "type": "snapshot",
            "id": request_id,
            "sub": sub.sub_id,
            "epoch": snap.epoch,
            "offset": snap.offset,
            "total": total,
            "reset": reset,
            "rows": rows,
        }
    )
    _replay_pending(session, sub, snap.offset)


async def resume(
    session: Session, sub: Subscription, request_id: str, epoch: str, offset: str, limit: int
) -> None:
    """Send exactly what the client missed after (`epoch`, `offset`), or a reset snapshot.

    Deltas of exams that left the view meanwhile go out as `leave`; the view's rows are
    then known from the cache, so later deltas are routed as after a snapshot.
    """
    sub.pending = []
    gw = session.gw
    missed = await gw.feed.since(sub.tenant, epoch, offset)
    if missed.reset:
        gw.metrics["resume_resets"] += 1
        await send_snapshot(session, sub, request_id, limit, reset=True)
        return
    gw.metrics["resumes"] += 1
    me = session.principal.sub if session.principal else ""
    snap = await gw.feed.snapshot(sub.tenant, sub.view, me=me, limit=limit)
    sub.in_view = {r["exam_id"] for r in snap.rows}
    sub.epoch = missed.epoch
    frames: list[str] = []
    sent_leave: set[str] = set()
    for entry_offset, raw_delta in missed.entries:
        row = orjson.loads(raw_delta)
        body = (
            '{"epoch":"'
            + missed.epoch
            + '","offset":"'
            + entry_offset
            + '","delta":'
            + raw_delta.decode()
            + "}"
        )
        if row["op"] != "remove" and sub.matcher(row):
            frames.append(sub.prefix + body[1:])
        elif row["exam_id"] not in sent_leave:
            sent_leave.add(row["exam_id"])
            frames.append(sub.leave_prefix + body[1:])
    session.send(
        {
            "type": "resumed",
            "id": request_id,
            "sub": sub.sub_id,
            "epoch": missed.epoch,
            "missed": len(frames),
        }
    )
    for text in frames:
        session.client.send(text)
    last = missed.entries[-1][0] if missed.entries else offset
    _replay_pending(session, sub, last)


def _replay_pending(session: Session, sub: Subscription, after_offset: str) -> None:
    pending, sub.pending = sub.pending or [], None
    after = offset_key(after_offset)
    for offset, row, raw in pending:
        if offset_key(offset) > after:
            session.client.offer(sub, offset, row, raw)


def unsubscribe(session: Session, frame: Unsubscribe) -> None:
    sub = session.client.subs.pop(frame.sub, None)
    if sub is None:
        session.error(frame.id, ErrorCode.NOT_FOUND, f"no subscription {frame.sub}")
        return
    session.gw.hub.refresh(session.client, sub.tenant)
    session.send({"type": "unsubscribed", "id": frame.id, "sub": frame.sub})
