"""What the hub knows of one WebSocket connection (`Client`): its subscriptions, its
bounded queue, its flush window, and the one rule for a live message through one
subscription (`Client.offer`). The fan-out to many (`gateway.hub.Hub`) writes to a
steady client's transport itself and sends every other one through here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.frames import Patch, Queued, coalesce
from gateway.routing import Subscription, route
from gateway.wire import DirectWriter, FrameQueue
from worklist_cache.feed import offset_key

if TYPE_CHECKING:
    from gateway.hub import Hub

__all__ = ["Client"]


class Client:
    """What the hub knows of one WebSocket connection."""

    __slots__ = (
        "_on_epoch_change",
        "_on_overflow",
        "busy",
        "hub",
        "max_bytes",
        "overflowed",
        "queue",
        "queued_bytes",
        "subs",
        "user",
        "window",
        "writer",
    )

    def __init__(
        self,
        queue_size: int,
        on_overflow: Callable[[Client], None],
        on_epoch_change: Callable[[Subscription], None] | None = None,
        *,
        max_bytes: int = 0,
        hub: Hub | None = None,
    ) -> None:
        # Frames waiting for the session's writer (started when one is put; see
        # `gateway.session`); no buffer while empty.
        self.queue: FrameQueue[Queued] = FrameQueue(queue_size)
        # Characters queued and not yet taken by the writer (0 = no bound).
        self.queued_bytes = 0
        self.max_bytes = max_bytes
        self.subs: dict[str, Subscription] = {}
        self.user: str | None = None  # the principal's sub, once authenticated
        self._on_overflow = on_overflow
        self._on_epoch_change = on_epoch_change
        self.overflowed = False
        self.hub = hub
        # The connection's transport, while frames may go straight to it (None: always
        # queue; the session clears it as soon as a close is requested).
        self.writer: DirectWriter | None = None
        # The session's writer holds frames it took off the queue and has not written.
        self.busy = False
        # Frames held for the hub's flush window (`Hub.flush_s`), written at its end.
        self.window: list[Queued] = []

    def _direct(self, frame: str, shared: bool) -> bool:
        """Write `frame` now if nothing waits in front of it; False: queue it.
        `shared`: the same text goes to other clients (its bytes are built once)."""
        writer = self.writer
        if (
            writer is None
            or self.busy
            or self.queue.items
            or not (
                writer.proto.live and not writer.transport.is_closing()
                if writer.kept
                else writer.ready()
            )
        ):
            return False
        hub = self.hub
        if hub is None:
            writer.write(frame)
            return True
        if shared and writer.plain:
            writer.transport.write(hub.wire(frame))  # (`DirectWriter.write`, shared bytes)
        else:
            writer.write(frame)
        hub.frames_out += 1
        return True

    def send(self, frame: str, key: str | None = None) -> None:
        if self.overflowed:
            return
        if self.window:
            self.flush()  # what the window holds was routed before this frame
        if not self._direct(frame, False):
            self._enqueue(frame, key)

    def flush(self, memo: dict[tuple[int, ...], tuple[list[Queued], str]] | None = None) -> None:
        """Write what the flush window holds: one frame, or one `batch` of the newest
        frame per exam; queued instead when something waits in front of it. `memo`
        (one per flush) lets clients holding the same frames share one batch."""
        items, self.window = self.window, []
        if not items or self.overflowed:
            return
        if len(items) == 1:
            text, shared = items[0][1], memo is not None
        elif memo is None:
            (text,) = coalesce(items)
            shared = False
        else:
            # The same (key, frame) objects in the same order make the same batch (memo
            # holds `items`, so no id is reused while the flush runs).
            ids = tuple(map(id, items))
            hit = memo.get(ids)
            if hit is None:
                (text,) = coalesce(items)
                memo[ids] = (items, text)
            else:
                text = hit[1]
            shared = True
        if self._direct(text, shared):
            return
        for key, frame in items:
            self._enqueue(frame, key)

    def holds(self, key: str) -> bool:
        """The flush window holds a frame of this (subscription, exam): a patch now
        would lose its base when the window is coalesced (asked only for patches).
        A key no window took since the hub's last flush is answered without a scan."""
        hub = self.hub
        if hub is not None and key not in hub.window_keys:
            return False
        return any(k == key for k, _ in self.window)

    def _enqueue(self, frame: str, key: str | None) -> None:
        size = len(frame)
        if self.max_bytes and self.queued_bytes + size > self.max_bytes and self.queued_bytes:
            self._overflow()
            return
        try:
            self.queue.put_nowait((key, frame))
        except asyncio.QueueFull:
            self._overflow()
            return
        self.queued_bytes += size

    def taken(self, items: list[Queued]) -> None:
        """The writer took these frames off the queue."""
        self.queued_bytes = max(0, self.queued_bytes - sum(len(f) for _, f in items))

    def _overflow(self) -> None:
        self.overflowed = True
        self.writer = None
        self._on_overflow(self)

    def offer(
        self,
        sub: Subscription,
        offset: str,
        row: dict[str, Any],
        raw: str,
        epoch: str,
        memo: dict[str, str] | None = None,
        windowed: bool = False,
        patch: Patch | None = None,
    ) -> None:
        """Route one live feed message (`raw`, its `row` parsed) through one subscription
        (`memo`: the message's frames by prefix, shared by every subscription;
        `windowed`: hold the frame for the hub's flush window; `patch`: the message
        as a patch against the version the hub saw before, when it saw one)."""
        if sub.pending is not None:
            sub.pending.append((offset, row, raw, epoch))
            return
        if epoch != sub.epoch:
            # The feed was reset under this subscription (Redis restarted empty).
            if self._on_epoch_change is not None:
                self._on_epoch_change(sub)
            return
        if sub.floor is not None:
            if offset_key(offset) <= sub.floor:
                return  # already in the snapshot or resume the client was sent
            sub.floor = None  # pub/sub is ordered: every later message is newer
        exam_id = row["exam_id"]
        base = sub.held.get(exam_id) if patch is not None else None
        frame = route(sub, offset, row, raw, epoch, memo)
        if frame is None or self.overflowed:
            return
        # A patch only when the client holds its base and nothing waits in front of it.
        patchable = (
            patch is not None
            and base == patch[0]
            and exam_id in sub.held
            and not self.busy
            and self.queue.empty()
        )
        key = sub.key_prefix + exam_id
        if windowed and self.writer is not None and self.hub is not None:
            if patchable and not self.holds(key):
                frame = self._patch(sub, patch, memo)  # type: ignore[arg-type]
            if not self.window:
                self.hub.defer(self)
            self.window.append((key, frame))
            self.hub.window_keys.setdefault(key, None)
            return
        if self.window:
            self.flush()  # (a replay after a snapshot) what the window holds goes first
        if patchable and self.writer is not None and self.writer.ready():
            frame = self._patch(sub, patch, memo)  # type: ignore[arg-type]
        if not self._direct(frame, memo is not None):
            self._enqueue(frame, key)

    @staticmethod
    def _patch(sub: Subscription, patch: Patch, memo: dict[str, str] | None) -> str:
        if memo is None:
            return sub.patch_prefix + patch[1]
        frame = memo.get(sub.patch_prefix)
        if frame is None:
            frame = memo[sub.patch_prefix] = sub.patch_prefix + patch[1]
        return frame
