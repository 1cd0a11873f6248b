"""Fan-out: one Redis subscription per process, one bounded queue per client.

A feed message is parsed once; for each subscription of its tenant, `route`
(`gateway.routing`) decides what that subscription's client gets: the delta (the exam
matches the view; built by splicing bytes, never re-serialized), a `leave` placeholder
(the exam was in the view and no longer matches: only its id, version and offset, never
its row), or nothing.
`route` is the one rule for live delivery, the replay after a snapshot and resume.

The hub applies `route` once per group of subscriptions that route alike (the same sub
id, so the same frame prefixes, and matchers with the same key, so the same answer for
every row): for a member that is live at the message's epoch and, unless the flush
window holds the message, writable now with nothing in front (`Hub._fan`), what is left
is its holds (`held`) and one write of bytes shared by the group; any other
member takes `Client.offer`, the same rule one subscription at a time.

A frame goes straight to the client's transport (`gateway.wire.DirectWriter`) when
nothing waits in front of it: the client's queue is empty, its writer holds nothing and
the transport is not paused. One message's frame is built once per distinct
subscription prefix (`route`'s memo) and its bytes once per distinct frame, whatever
the number of clients taking it. Otherwise (backpressure, or a server without a direct
writer) the frame is queued with `put_nowait`; when a client's queue backs up, its
writer sends what waits as one `batch` frame, keeping only the newest frame per exam
and subscription. A client whose queue is full (in frames or in bytes) is closed with
4001 ("too slow") and resumes on reconnect: it never delays the others.

One message is fanned out to at most `slice_members` subscriptions per turn of the
event loop (`GATEWAY_FANOUT_SLICE`); `on_message` returns the rest (`More`), which the
feed's reader calls after the loop has had a turn, before it reads the next message.
A claim or a reply waits behind a slice, not a fan-out to every client, and every
client still gets every message once and in order.

A row that changed goes out as a `patch` (only the fields that changed, naming the
version they apply to) instead of the whole row when the subscription's client holds
the version the hub saw last for that exam (`Subscription.held`) and nothing waits in
front of the frame (a queued frame may be coalesced away, and with it a patch's base);
otherwise as the whole row. A client whose row is not at the patch's base asks for the
row (`row` request).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from functools import partial
from typing import Any

import orjson

from gateway.client import Client as Client  # (re-exported)
from gateway.frames import Patch, leave_frame, patch_text
from gateway.frames import Queued as Queued  # (re-exported: the session's writer uses them)
from gateway.frames import coalesce as coalesce
from gateway.routing import Subscription, shows
from gateway.wire import encode_text
from worklist_cache.subscriber import More

log = logging.getLogger("gateway.hub")


# The newest row the hub saw per exam, per tenant, at most this many (the oldest go):
# what a patch is computed against.
ROWS_KEPT = 5_000

# A flush window is stretched, one `flush_s` at a time and up to this many in all, while
# the messages coming in are more than `BEHIND` windows late (`Hub._late`): behind a
# backlog, one write per client for all it can take instead of one per 10 ms.
STRETCH = 10
BEHIND = 2
# The floor under a message's delay (`Hub._late`) rises this much per second, so a
# clock step between Redis's host and this one is forgotten.
DRIFT = 0.001
# A message read this late (seconds, `Hub._late`) counts in `late_messages`.
LATE_S = 0.1


class _Group:
    """The subscriptions of one tenant that route every message alike: the same sub id
    (so the same frame prefixes and coalescing keys) and matchers with the same key
    (one matcher object, shared). A message is routed once per group."""

    __slots__ = ("first", "key_prefix", "matcher", "members")

    def __init__(self, sub: Subscription) -> None:
        self.first = sub  # the frame prefixes of every member
        self.matcher = sub.matcher
        self.key_prefix = sub.key_prefix
        self.members: list[tuple[Client, Subscription]] = []


class _Job:
    """One feed message being fanned out, and how far it has got (`Hub._resume`)."""

    __slots__ = (
        "checked",
        "entries",
        "epoch",
        "group",
        "member",
        "memo",
        "offset",
        "patch",
        "plan",
        "row",
        "tenant",
        "text",
        "windowed",
    )

    def __init__(
        self,
        tenant: str,
        plan: list[_Group],
        offset: str,
        row: dict[str, Any],
        text: str,
        epoch: str,
        memo: dict[str, str],
        windowed: bool,
        patch: Patch | None,
    ) -> None:
        self.tenant = tenant
        self.plan = plan
        self.offset = offset
        self.row = row
        self.text = text
        self.epoch = epoch
        self.memo = memo  # the message's frames by prefix
        self.windowed = windowed
        self.patch = patch
        self.entries: dict[Queued, Queued] = {}  # window entries, one object per text
        self.group = 0  # the next group of `plan`, and member of it, to take the message
        self.member = 0
        self.checked = False  # the plan changed under a slice: members are checked


class Hub:
    """The node's clients by tenant, and the fan-out of feed messages to them.

    With `flush_s` > 0, a message that comes within `flush_s` of the end of the
    previous one's fan-out (or window) waits, with those after it, until the window
    ends, and each client gets what its window holds in one write (one `batch` frame)
    instead of one write per delta: less CPU per delivery when deltas come densely, at
    most `flush_s` more latency for those. A message after a quiet `flush_s` goes out
    at once, so a sparse feed pays nothing. Behind a backlog (the messages read are
    late, `_late`), the window stretches a `flush_s` at a time, up to `STRETCH`."""

    def __init__(self, flush_s: float = 0.0, slice_members: int = 0) -> None:
        self.flush_s = flush_s
        # Subscriptions a message is fanned out to per turn of the event loop (0: all).
        self.slice_members = slice_members
        self._dirty: list[Client] = []  # clients whose window holds frames
        self._timer: asyncio.TimerHandle | None = None
        self._quiet_at = 0.0  # (loop time) from then on, a message goes out at once
        self._opened = 0.0  # (loop time) the open window's start
        self._arrived = 0.0  # (loop time) the latest message came
        self._floors: dict[str, tuple[float, float]] = {}  # tenant -> (least delay, when)
        self.stretched = 0  # windows stretched by a `flush_s`
        # How late the latest message was read (seconds, `_late`), and how many were
        # read more than `LATE_S` late: the node's backlog, for `/metrics`.
        self.lateness = 0.0
        self.late_messages = 0
        # The keys (subscription, exam) of the frames windows took since the last flush,
        # each with the message (`_Job`) that first put it there (None: one routed alone):
        # a key not here is in no window, and `Client.holds` need not look.
        self.window_keys: dict[str, _Job | None] = {}
        self._by_tenant: dict[str, set[Client]] = defaultdict(set)
        # tenant -> its subscriptions grouped by how they route (rebuilt when a client
        # or subscription comes or goes).
        self._plans: dict[str, list[_Group]] = {}
        # tenant -> exam_id -> (version, row): the newest rows seen, for patches.
        self._rows: dict[str, dict[str, tuple[int, dict[str, Any]]]] = defaultdict(dict)
        self.deltas_in = 0
        self.frames_out = 0  # frames written straight to a transport (and by writers)
        # The bytes of the frames of the message being fanned out, built once each.
        self._wires: dict[str, bytes] = {}

    def defer(self, client: Client) -> None:
        """`client`'s window holds its first frame: flush it with the others."""
        self._dirty.append(client)
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._opened = loop.time()
            self._timer = loop.call_later(self.flush_s, self._window_ends)

    def _window_ends(self) -> None:
        """The window's time is up: flush, unless the messages coming in are late (a
        backlog, as on a box short of CPU) and the window may still grow. A window
        that ends every `flush_s` behind a backlog holds a few messages each time and
        spends the loop writing; one stretched until the backlog is read (at most
        `STRETCH` windows) writes once per client for all of it, and catches up."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if (
            self.lateness > BEHIND * self.flush_s  # (the latest message was late)
            and now - self._arrived < self.flush_s  # (messages still coming)
            and now + self.flush_s <= self._opened + STRETCH * self.flush_s
        ):
            self.stretched += 1
            self._timer = loop.call_later(self.flush_s, self._window_ends)
            return
        self.flush()

    def _late(self, tenant: str, offset: str) -> float:
        """Seconds by which this message is late: since Redis stamped its offset (a
        stream id, "ms-seq"), less the least such delay seen lately for the tenant
        (what the clocks of Redis's host and this one differ by, with no backlog),
        that floor rising `DRIFT` a second."""
        try:
            stamped = int(offset.partition("-")[0]) / 1000
        except ValueError:
            return 0.0
        now = time.time()
        delay = now - stamped
        floor = self._floors.get(tenant)
        if floor is not None:
            least = floor[0] + (now - floor[1]) * DRIFT
            if delay > least:
                return delay - least
        self._floors[tenant] = (delay, now)
        return 0.0

    def flush(self) -> None:
        """The window ended: every client writes what it holds."""
        if self._timer is not None:
            self._timer.cancel()  # (when called before it ends)
        self._timer = None
        dirty, self._dirty = self._dirty, []
        self.window_keys.clear()
        memo: dict[tuple[int, ...], tuple[list[Queued], str]] = {}
        try:
            for client in dirty:
                client.flush(memo)
        finally:
            self._wires.clear()
            self._wrote()

    def _wrote(self) -> None:
        """A window's writes, or a fan-out written at once, just ended. Quiet is counted
        from here, not from a message's arrival: when fanning one out takes longer than
        the window (a slow or busy box), the next would otherwise always find the window
        over and go out alone, one write per client per delta, just when batching counts."""
        self._quiet_at = asyncio.get_running_loop().time() + self.flush_s

    def wire(self, frame: str) -> bytes:
        """`frame`'s bytes on the wire, built once per message fanned out."""
        wire = self._wires.get(frame)
        if wire is None:
            wire = self._wires[frame] = encode_text(frame)
        return wire

    def seen_row(self, tenant: str, exam_id: str) -> dict[str, Any] | None:
        """The newest row of the exam this node's feed delivered, while it is kept (a
        tenant with clients here, one of its latest `ROWS_KEPT` exams): as fresh as the
        cache's copy, give or take pub/sub's delivery, and read without a round trip."""
        seen = self._rows.get(tenant, {}).get(exam_id)
        return None if seen is None else seen[1]

    def attach(self, client: Client, tenant: str) -> bool:
        """Returns True when this is the tenant's first client on this node."""
        first = not self._by_tenant[tenant]
        self._by_tenant[tenant].add(client)
        self._plans.pop(tenant, None)  # (also after a new subscription of a client)
        return first

    def has_clients(self, tenant: str) -> bool:
        return bool(self._by_tenant.get(tenant))

    def detach(self, client: Client) -> list[str]:
        """Forget a client; returns the tenants that have no client left here."""
        emptied = []
        for tenant, clients in list(self._by_tenant.items()):
            if client in clients:
                clients.discard(client)
                self._plans.pop(tenant, None)
                if not clients:
                    del self._by_tenant[tenant]
                    self._rows.pop(tenant, None)
                    self._floors.pop(tenant, None)
                    emptied.append(tenant)
        return emptied

    def refresh(self, client: Client, tenant: str) -> bool:
        """After an unsubscribe; True when the tenant has no client left here."""
        self._plans.pop(tenant, None)
        if not any(s.tenant == tenant for s in client.subs.values()):
            clients = self._by_tenant.get(tenant, set())
            clients.discard(client)
            if not clients:
                self._by_tenant.pop(tenant, None)
                self._rows.pop(tenant, None)
                self._floors.pop(tenant, None)
                return True
        return False

    def on_message(self, tenant: str, raw: bytes) -> More | None:
        """Called by the feed subscriber for every published delta; returns the rest of
        its fan-out when that takes more than one slice (`slice_members`)."""
        self.deltas_in += 1
        try:
            text = raw.decode()
            message = orjson.loads(text)
            row, offset, epoch = message["delta"], message["offset"], message["epoch"]
        except (UnicodeDecodeError, orjson.JSONDecodeError, KeyError, TypeError):
            log.error("dropped a malformed feed message of tenant %s", tenant)
            return None
        if row.get("tenant") != tenant:
            log.error("dropped a feed message of another tenant on %s's channel", tenant)
            return None
        memo: dict[str, str] = {}
        rows = self._rows[tenant]
        exam_id = row.get("exam_id")
        before = rows.pop(exam_id, None)
        patch: Patch | None = None
        if before is not None and row.get("op") != "remove":
            try:
                patch = (before[0], patch_text(before[1], before[0], row, epoch, offset))
            except (KeyError, TypeError, orjson.JSONEncodeError):
                patch = None
        if row.get("op") != "remove" and isinstance(row.get("version"), int):
            rows[exam_id] = (row["version"], row)
            if len(rows) > ROWS_KEPT:
                del rows[next(iter(rows))]
        self.lateness = self._late(tenant, offset)
        if self.lateness > LATE_S:
            self.late_messages += 1
        windowed = False
        if self.flush_s:
            now = asyncio.get_running_loop().time()
            windowed = self._timer is not None or now < self._quiet_at
            self._arrived = now
        plan = self._plans.get(tenant) or self._plan(tenant)
        job = _Job(tenant, plan, offset, row, text, epoch, memo, windowed, patch)
        return self._resume(job)

    def _resume(self, job: _Job) -> More | None:
        """Fan `job`'s message out to at most `slice_members` more subscriptions; the
        rest (returned) after the loop has had a turn. A claim, a reply or a ping then
        waits behind one slice of a fan-out, not all of it (thousands of clients)."""
        budget = self.slice_members or 1 << 62
        plan = job.plan
        try:
            while job.group < len(plan):
                group = plan[job.group]
                members = group.members
                stop = min(len(members), job.member + budget)
                if job.member or stop < len(members):
                    members = members[job.member : stop]
                if job.checked or self._plans.get(job.tenant) is not plan:
                    # Subscriptions came or went since the message arrived (between two
                    # slices): skip those no longer there.
                    job.checked = True
                    members = self._current(job.tenant, members)
                budget -= stop - job.member
                self._fan(group, members, job)
                if stop < len(group.members):
                    job.member = stop
                    return partial(self._resume, job)
                job.group += 1
                job.member = 0
                if budget <= 0 and job.group < len(plan):
                    return partial(self._resume, job)
        except BaseException:
            self._fanned(job)
            raise
        self._fanned(job)
        return None

    def _fanned(self, job: _Job) -> None:
        """The message's fan-out ended (or failed)."""
        self._wires.clear()
        if self.flush_s and not job.windowed:
            self._wrote()

    def _current(
        self, tenant: str, members: list[tuple[Client, Subscription]]
    ) -> list[tuple[Client, Subscription]]:
        clients = self._by_tenant.get(tenant, ())
        return [
            (client, sub)
            for client, sub in members
            if client in clients and client.subs.get(sub.sub_id) is sub
        ]

    def replan(self, tenant: str) -> None:
        """Subscriptions of the tenant changed how they route (a new matcher)."""
        self._plans.pop(tenant, None)

    def _plan(self, tenant: str) -> list[_Group]:
        groups: dict[tuple[Any, ...], _Group] = {}
        for client in self._by_tenant.get(tenant, ()):
            for sub in client.subs.values():
                if sub.tenant != tenant:
                    continue
                # (A matcher without a key, none of ours, routes alone.)
                key = (sub.sub_id, getattr(sub.matcher, "key", None) or id(sub.matcher))
                group = groups.get(key)
                if group is None:
                    group = groups[key] = _Group(sub)
                else:
                    sub.matcher = group.matcher  # equal keys: the same answers
                group.members.append((client, sub))
        plan = self._plans[tenant] = list(groups.values())
        return plan

    def _fan(self, group: _Group, members: list[tuple[Client, Subscription]], job: _Job) -> None:
        """One message through (some of) one group's `members`: `route`'s rule decided
        once, on the group's matcher; a steady member (live at this epoch; unless
        windowed, writable now with nothing in front) then costs its holds and one
        write of shared bytes. Any other member takes `Client.offer`, the same rule
        member by member."""
        offset, row, text, epoch = job.offset, job.row, job.text, job.epoch
        memo, windowed, patch = job.memo, job.windowed, job.patch
        matcher = group.matcher
        exam_id = row["exam_id"]
        version = row["version"]
        shown = shows(matcher, row)
        key = group.key_prefix + exam_id
        first = group.first
        frame = leave = patched = last = None
        wire = b""
        # One window entry object per text for the whole message: `flush` memoizes
        # batches by the entries' ids.
        entries = job.entries
        entry: Queued = (None, "")
        written = 0
        # Whether a window may hold a frame of this key from an earlier message (else a
        # patch's base is safe without looking at each member's window).
        earlier = windowed and self.window_keys.setdefault(key, job) is not job
        for client, sub in members:
            writer = client.writer
            if (
                sub.pending is not None
                or sub.floor is not None
                or sub.epoch != epoch
                or sub.matcher is not matcher
                or client.overflowed
                or writer is None
                or not (
                    (windowed and client.hub is self)
                    or (
                        not client.window
                        and not client.busy
                        and not client.queue.items
                        and (
                            writer.proto.live and not writer.transport.is_closing()
                            if writer.kept
                            else writer.ready()
                        )
                    )
                )
            ):
                client.offer(sub, offset, row, text, epoch, memo, windowed, patch)
                continue
            if shown:
                held = sub.held
                base = held.get(exam_id) if patch is not None else None
                held[exam_id] = version
                if (
                    patch is not None
                    and base == patch[0]
                    and not (
                        windowed
                        and (
                            client.busy
                            or not client.queue.empty()
                            or (earlier and client.holds(key))
                        )
                    )
                ):
                    if patched is None:
                        patched = Client._patch(first, patch, memo)
                    out = patched
                else:
                    if frame is None:
                        frame = memo.get(first.prefix)
                        if frame is None:
                            frame = memo[first.prefix] = first.prefix + text[1:]
                    out = frame
            else:
                if sub.held.pop(exam_id, None) is None:
                    continue  # the client holds no row of it: nothing to take back
                if leave is None:
                    leave = leave_frame(first.leave_prefix, epoch, offset, exam_id, version)
                out = leave
            if windowed:
                if out is not last:
                    last = out
                    entry = (key, out)
                    entry = entries.setdefault(entry, entry)
                if not client.window:
                    self.defer(client)
                client.window.append(entry)
            elif writer.plain:
                if out is not last:  # members mostly take the same text: its bytes
                    last, wire = out, self.wire(out)
                writer.transport.write(wire)  # (`DirectWriter.write` of shared bytes)
                written += 1
            else:
                writer.write(out)
                written += 1
        self.frames_out += written
