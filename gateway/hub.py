"""Fan-out: one Redis subscription per process, one bounded queue per client.

A feed message is parsed once; for each subscription of its tenant whose view the exam
matches (or just left), a frame is built by splicing bytes, never re-serialized, and
queued with `put_nowait`. When a client's queue backs up, its writer sends what waits as
one `batch` frame, keeping only the newest frame per exam and subscription. A client
whose queue is full is closed with 4001 ("too slow") and resumes on reconnect: it never
delays the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from worklist_cache.views import RowMatcher, View

log = logging.getLogger("gateway.hub")

# A queued frame: (coalescing key or None for frames that are never merged, text).
Queued = tuple[str | None, str]


@dataclass(eq=False)
class Subscription:
    sub_id: str
    tenant: str
    view: View
    matcher: RowMatcher
    epoch: str = ""
    in_view: set[str] = field(default_factory=set)
    # Until its snapshot is queued, the feed's messages wait here (offset, row, raw).
    pending: list[tuple[str, dict[str, Any], str]] | None = field(default_factory=list)
    prefix: str = ""
    leave_prefix: str = ""
    key_prefix: str = ""  # coalescing keys: one per (subscription, exam)

    def __post_init__(self) -> None:
        # sub_id is validated against ^[A-Za-z0-9_.:-]+$, so it needs no JSON escaping.
        self.prefix = '{"type":"delta","sub":"' + self.sub_id + '",'
        self.leave_prefix = self.prefix + '"leave":true,'
        self.key_prefix = self.sub_id + "\x00"


class Client:
    """What the hub knows of one WebSocket connection."""

    def __init__(
        self,
        queue_size: int,
        on_overflow: Callable[[Client], None],
        on_epoch_change: Callable[[Subscription], None] | None = None,
    ) -> None:
        self.queue: asyncio.Queue[Queued] = asyncio.Queue(queue_size)
        self.subs: dict[str, Subscription] = {}
        self.user: str | None = None  # the principal's sub, once authenticated
        self._on_overflow = on_overflow
        self._on_epoch_change = on_epoch_change
        self.overflowed = False

    def send(self, frame: str, key: str | None = None) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait((key, frame))
        except asyncio.QueueFull:
            self.overflowed = True
            self._on_overflow(self)

    def offer(
        self, sub: Subscription, offset: str, row: dict[str, Any], raw: str, epoch: str = ""
    ) -> None:
        """Route one feed message (`raw`, its `row` parsed) through one subscription."""
        if sub.pending is not None:
            sub.pending.append((offset, row, raw))
            return
        if epoch and sub.epoch and epoch != sub.epoch:
            # The feed was reset under this subscription (Redis restarted empty).
            if self._on_epoch_change is not None:
                self._on_epoch_change(sub)
            return
        exam_id = row["exam_id"]
        if row["op"] != "remove" and sub.matcher(row):
            sub.in_view.add(exam_id)
            self.send(sub.prefix + raw[1:], sub.key_prefix + exam_id)
        elif exam_id in sub.in_view:
            sub.in_view.discard(exam_id)
            self.send(sub.leave_prefix + raw[1:], sub.key_prefix + exam_id)


def coalesce(items: list[Queued]) -> list[str]:
    """Frames to send for what waited in a queue: runs of delta frames become one batch
    frame holding only the newest frame per (subscription, exam); other frames keep
    their place."""
    out: list[str] = []
    run: dict[str, str] = {}

    def flush() -> None:
        if len(run) == 1:
            out.append(next(iter(run.values())))
        elif run:
            out.append('{"type":"batch","frames":[' + ",".join(run.values()) + "]}")
        run.clear()

    for key, frame in items:
        if key is None:
            flush()
            out.append(frame)
        else:
            run.pop(key, None)  # the newer frame replaces the older, at the end
            run[key] = frame
    flush()
    return out


class Hub:
    def __init__(self) -> None:
        self._by_tenant: dict[str, set[Client]] = defaultdict(set)
        self.deltas_in = 0
        self.frames_out = 0

    def attach(self, client: Client, tenant: str) -> bool:
        """Returns True when this is the tenant's first client on this node."""
        first = not self._by_tenant[tenant]
        self._by_tenant[tenant].add(client)
        return first

    def detach(self, client: Client) -> None:
        for clients in self._by_tenant.values():
            clients.discard(client)

    def refresh(self, client: Client, tenant: str) -> None:
        if not any(s.tenant == tenant for s in client.subs.values()):
            self._by_tenant[tenant].discard(client)

    def on_message(self, tenant: str, raw: bytes) -> None:
        """Called by the feed subscriber for every published delta."""
        self.deltas_in += 1
        try:
            text = raw.decode()
            message = orjson.loads(text)
            row, offset, epoch = message["delta"], message["offset"], message["epoch"]
        except (UnicodeDecodeError, orjson.JSONDecodeError, KeyError, TypeError):
            log.error("dropped a malformed feed message of tenant %s", tenant)
            return
        if row.get("tenant") != tenant:
            log.error("dropped a feed message of another tenant on %s's channel", tenant)
            return
        for client in list(self._by_tenant.get(tenant, ())):
            for sub in list(client.subs.values()):
                if sub.tenant == tenant:
                    client.offer(sub, offset, row, text, epoch)
