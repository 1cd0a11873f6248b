"""The gateway's pub/sub on a Redis Cluster: one `FeedSubscriber` per master.

A sharded channel (SSUBSCRIBE) is served only by the master that owns its slot, and a
tenant's channels carry its hash tag, so they live where its keys live. This subscriber
routes each channel to the master that owns its slot now, through one plain pub/sub
connection per master (a *link*), each with its own liveness probe on a channel whose
slot that master owns. Classic channels are routed the same way (a cluster forwards a
PUBLISH to every node, so any node would do; the owner is as good as any).

What can go wrong, and what it costs a client:

- a master restarts (or its connection breaks): its link reconnects, re-subscribes and
  reports a gap, like the standalone subscriber;
- a slot moves (resharding, a replica promoted after a failure): Redis drops the
  subscriptions of that slot (SUNSUBSCRIBE) or the old master is gone; every
  `check_interval` seconds, and at once when Redis drops a subscription, the slot map is
  read again and every channel whose master changed is subscribed on its new master.
  What was published in between is lost, so once the new subscriptions are confirmed
  it is reported as a gap: the caller resyncs its clients (a reset or a resume).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from service.supervise import Supervisor
from worklist_cache import keys
from worklist_cache.exceptions import REDIS_FAULTS
from worklist_cache.subscriber import FeedSubscriber, GapHandler, MessageHandler

__all__ = ["ClusterSubscriber"]

# Reading the slot map or placing a channel: Redis away, or the map in flux.
_MAP_FAULTS: tuple[type[Exception], ...] = (*REDIS_FAULTS, TimeoutError, LookupError)

log = logging.getLogger("worklist_cache.shards")


class ClusterSubscriber:
    """The same surface as `FeedSubscriber` (subscribe, unsubscribe, channels, stalled,
    gaps, probe_failures), over every master of a cluster."""

    def __init__(
        self,
        cluster: RedisCluster,
        on_gap: GapHandler,
        *,
        node: str,
        sharded: bool = True,
        supervisor: Supervisor | None = None,
        probe_interval: float = 5.0,
        check_interval: float | None = None,
    ) -> None:
        self._cluster = cluster
        self._on_gap = on_gap
        self._node = node
        self._sharded = sharded
        self._supervisor = supervisor
        self._probe_interval = probe_interval
        self._check_interval = check_interval or probe_interval
        self._links: dict[str, FeedSubscriber] = {}  # master name -> its link
        self._clients: dict[str, Redis] = {}
        self._probes: dict[str, str] = {}  # master name -> its probe channel
        self._where: dict[str, str] = {}  # channel -> the master it is subscribed on
        self._handlers: dict[str, MessageHandler] = {}
        self._lock = asyncio.Lock()
        self._moved = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.moves = 0  # gaps reported because slots moved
        self._gap_due = False  # channels moved; not all confirmed where they are now
        # Counts of links closed since (the totals only grow, as counters should).
        self._closed_gaps = 0
        self._closed_probe_failures = 0

    async def __aenter__(self) -> ClusterSubscriber:
        await self._cluster.initialize()
        if self._supervisor is not None:
            self._task = self._supervisor.start("cluster-follow", self._follow)
        else:
            self._task = asyncio.create_task(self._follow(), name="cluster-follow")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for name in list(self._links):
            await self._close_link(name)

    # ---- the FeedSubscriber surface -------------------------------------------------------

    async def subscribe(self, channel: str, handler: MessageHandler, timeout: float = 5.0) -> None:
        self._handlers[channel] = handler
        name = self._where.get(channel)
        if name is None or name not in self._links:
            name = await self._link_for(channel)
            self._where[channel] = name
        try:
            await self._links[name].subscribe(channel, handler, timeout)
        except BaseException:
            self._handlers.pop(channel, None)
            self._where.pop(channel, None)
            raise

    async def unsubscribe(self, channel: str) -> None:
        self._handlers.pop(channel, None)
        name = self._where.pop(channel, None)
        link = self._links.get(name) if name else None
        if link is not None:
            with contextlib.suppress(*REDIS_FAULTS):
                await link.unsubscribe(channel)

    @property
    def channels(self) -> list[str]:
        return list(self._handlers)

    @property
    def stalled(self) -> bool:
        return any(link.stalled or not link.running for link in self._links.values())

    @property
    def gaps(self) -> int:
        return self.moves + self._closed_gaps + sum(link.gaps for link in self._links.values())

    @property
    def probe_failures(self) -> int:
        live = sum(link.probe_failures for link in self._links.values())
        return self._closed_probe_failures + live

    # ---- links: one pub/sub connection per master ---------------------------------------

    def _owner(self, channel: str) -> ClusterNode:
        node = self._cluster.get_node_from_key(channel)
        if node is None:
            raise LookupError(f"no master serves the slot of {channel}")
        return node

    async def _link_for(self, channel: str) -> str:
        node = self._owner(channel)
        async with self._lock:
            if node.name not in self._links:
                await self._open_link(node)
        return node.name

    async def _open_link(self, node: ClusterNode) -> None:
        # redis-py's default retries (they may reconnect the pub/sub connection inside a
        # read, raising nothing): the link sees every reconnect all the same (a gap).
        client = Redis(host=node.host, port=int(node.port))
        probe = keys.probe_channel(self._node, self._tag_on(node))
        link = FeedSubscriber(
            client,
            self._on_gap,
            sharded=self._sharded,
            probe_channel=probe,
            probe_interval=self._probe_interval,
            on_dropped=self._dropped,
        )
        # Not under the supervisor (its task names are unique per process, and a link
        # ends when its master leaves): a link's loops handle every error themselves,
        # and `stalled` reports a link whose task ended or whose probe failed.
        try:
            await link.__aenter__()
        except BaseException:
            await link.aclose()
            await client.aclose()
            raise
        self._links[node.name] = link
        self._clients[node.name] = client
        self._probes[node.name] = probe

    def _tag_on(self, node: ClusterNode) -> str:
        """A hash tag whose slot this master owns (one in a few tries: slots are spread)."""
        for i in range(100_000):
            if self._owner(keys.probe_channel(self._node, str(i))).name == node.name:
                return str(i)
        raise LookupError(f"no slot of {node.name} found")

    async def _close_link(self, name: str) -> None:
        link = self._links.pop(name, None)
        client = self._clients.pop(name, None)
        self._probes.pop(name, None)
        if link is not None:
            self._closed_gaps += link.gaps
            self._closed_probe_failures += link.probe_failures
            with contextlib.suppress(*REDIS_FAULTS):
                await link.aclose()
        if client is not None:
            with contextlib.suppress(*REDIS_FAULTS):
                await client.aclose()

    # ---- following slot moves -----------------------------------------------------------

    def _dropped(self, channel: str) -> None:
        log.info("redis dropped a subscription (its slot moved): re-routing")
        self._moved.set()

    async def _follow(self) -> None:
        while True:
            # asyncio.timeout, not wait_for, which on 3.11 can swallow a cancel that
            # comes as `_moved` is set: the loop would then outlive aclose.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._check_interval):
                    await self._moved.wait()
            self._moved.clear()
            try:
                await self.rebalance()
            except asyncio.CancelledError:
                raise
            except _MAP_FAULTS as exc:
                log.warning("cluster slot map unreadable (%s); next round retries", exc)

    async def rebalance(self) -> int:
        """Read the slot map; subscribe every channel whose slot moved on its new master
        (and replace a link whose probe slot moved). Returns how many channels moved.

        What was published between the move and the new subscription is lost: a gap,
        reported once every moved channel is confirmed on its new master. A channel
        that cannot be placed yet (its master busy, the map in flux) stays wanted and
        is tried again next round; the gap waits for it."""
        await self._cluster.nodes_manager.initialize()
        stale_links = {
            name for name, probe in self._probes.items() if self._owner(probe).name != name
        }
        moved = [
            c
            for c, name in self._where.items()
            if name in stale_links or self._owner(c).name != name
        ]
        if moved or stale_links:
            log.warning("%d channels moved to another master: re-subscribing (a gap)", len(moved))
            self._gap_due = True
        for channel in moved:
            old = self._links.get(self._where.pop(channel))
            if old is not None:
                old.forget(channel)
        for name in stale_links:
            await self._close_link(name)
        # Links left with only their probe belong to masters that serve none of ours.
        for name, link in list(self._links.items()):
            if not any(where == name for where in self._where.values()) and link.channels == [
                self._probes[name]
            ]:
                await self._close_link(name)
        unplaced = [c for c in self._handlers if c not in self._where]
        for channel in unplaced:
            handler = self._handlers[channel]
            try:
                name = await self._link_for(channel)
                await self._links[name].subscribe(channel, handler)
            except _MAP_FAULTS as exc:
                log.warning("re-subscribing a moved channel failed (%r); next round", exc)
                continue
            if channel in self._handlers:  # not unsubscribed meanwhile
                self._where[channel] = name
        if self._gap_due and all(c in self._where for c in self._handlers):
            self._gap_due = False
            self.moves += 1
            await self._on_gap()
        return len(moved)
