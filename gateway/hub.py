"""Fan-out: one Redis subscription per process, one bounded queue per client.

A feed message is parsed once; for each subscription of its tenant whose view the exam
matches (or just left), a frame is built by splicing bytes, never re-serialized, and
queued with `put_nowait`. A client whose queue is full is closed with 4001 ("too slow")
and resumes on reconnect: it never delays the others.
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


@dataclass(eq=False)
class Subscription:
    sub_id: str
    tenant: str
    view: View
    matcher: RowMatcher
    in_view: set[str] = field(default_factory=set)
    # Until its snapshot is queued, the feed's messages wait here (offset, row, raw).
    pending: list[tuple[str, dict[str, Any], str]] | None = field(default_factory=list)
    prefix: str = ""
    leave_prefix: str = ""

    def __post_init__(self) -> None:
        # sub_id is validated against ^[A-Za-z0-9_.:-]+$, so it needs no JSON escaping.
        self.prefix = '{"type":"delta","sub":"' + self.sub_id + '",'
        self.leave_prefix = self.prefix + '"leave":true,'


def offset_key(offset: str) -> tuple[int, int]:
    """Redis stream IDs ("ms-seq") in feed order."""
    ms, _, seq = offset.partition("-")
    return int(ms), int(seq or 0)


class Client:
    """What the hub knows of one WebSocket connection."""

    def __init__(self, queue_size: int, on_overflow: Callable[[Client], None]) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue(queue_size)
        self.subs: dict[str, Subscription] = {}
        self._on_overflow = on_overflow
        self.overflowed = False

    def send(self, frame: str) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.overflowed = True
            self._on_overflow(self)

    def offer(self, sub: Subscription, offset: str, row: dict[str, Any], raw: str) -> None:
        """Route one feed message (`raw`, its `row` parsed) through one subscription."""
        if sub.pending is not None:
            sub.pending.append((offset, row, raw))
            return
        exam_id = row["exam_id"]
        if row["op"] != "remove" and sub.matcher(row):
            sub.in_view.add(exam_id)
            self.send(sub.prefix + raw[1:])
        elif exam_id in sub.in_view:
            sub.in_view.discard(exam_id)
            self.send(sub.leave_prefix + raw[1:])


class Hub:
    def __init__(self) -> None:
        self._by_tenant: dict[str, set[Client]] = defaultdict(set)
        self.deltas_in = 0
        self.frames_out = 0

    def tenants(self) -> list[str]:
        return [t for t, clients in self._by_tenant.items() if clients]

    def attach(self, client: Client, tenant: str) -> bool:
        """Returns True when this is the tenant's first client on this node."""
        first = not self._by_tenant[tenant]
        self._by_tenant[tenant].add(client)
        return first

    def detach(self, client: Client) -> None:
        for tenant in {s.tenant for s in client.subs.values()}:
            self._by_tenant[tenant].discard(client)

    def refresh(self, client: Client, tenant: str) -> None:
        if not any(s.tenant == tenant for s in client.subs.values()):
            self._by_tenant[tenant].discard(client)

    def clients(self) -> set[Client]:
        return {c for clients in self._by_tenant.values() for c in clients}

    def on_message(self, tenant: str, raw: bytes) -> None:
        """Called by the feed subscriber for every published delta."""
        self.deltas_in += 1
        try:
            text = raw.decode()
            message = orjson.loads(text)
            row, offset = message["delta"], message["offset"]
        except (UnicodeDecodeError, orjson.JSONDecodeError, KeyError, TypeError):
            log.error("dropped a malformed feed message of tenant %s", tenant)
            return
        for client in self._by_tenant.get(tenant, ()):
            for sub in client.subs.values():
                if sub.tenant == tenant:
                    client.offer(sub, offset, row, text)
