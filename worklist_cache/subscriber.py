"""The gateway's one pub/sub connection: channels are subscribed on demand, each with
its own callback, and a lost connection is retried with backoff and reported as a gap
(the caller resyncs its clients, since messages may have been lost) once Redis has
confirmed every re-subscription, so the resync cannot miss what comes in between. Every
reconnect is a gap, also one redis-py's retries make inside a read without raising.

A liveness probe (`probe`) publishes to a channel of its own every few seconds and
expects it back: a connection that stays open but stops delivering (centrifugo#1189)
is cut, which makes it a gap like any other, and `stalled` reports it meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import Connection
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.supervise import Supervisor

log = logging.getLogger("worklist_cache.subscriber")

# Seconds of handler work (fan-out) after which the reader yields to the event loop.
# Buffered messages come without a real await; without a yield, requests (a claim and
# its reply) would wait behind every message Redis had buffered.
FANOUT_SLICE_S = 0.002


class More(Protocol):
    """The rest of a message's handling, for the next turn of the event loop: a handler
    that has much to do for one message (a fan-out to thousands of clients) does a slice
    and returns this; the reader lets the loop run, then calls it, and reads the next
    message only once the last slice returned None (messages stay in order)."""

    def __call__(self) -> More | None: ...


MessageHandler = Callable[[bytes], More | None]
GapHandler = Callable[[], Awaitable[None]]


def by_slot(channels: tuple[str, ...]) -> list[list[str]]:
    """Channels grouped by hash slot: on a cluster node one SSUBSCRIBE may only name
    channels of one slot (CROSSSLOT otherwise)."""
    groups: dict[int, list[str]] = {}
    for channel in channels:
        groups.setdefault(key_slot(channel.encode()), []).append(channel)
    return list(groups.values())


class _GapAwarePubSub(PubSub):
    """redis-py's PubSub, telling its owner of every reconnect, and re-subscribing sharded
    channels one slot at a time when its connection comes back (its own replay names
    them all in one SSUBSCRIBE).

    A reconnect is a gap even when no error reaches the reader: redis-py's retries
    (every client has them by default) reconnect inside a read and replay the
    subscriptions themselves, so a Redis that restarted within the retries' backoff would
    otherwise pass unnoticed, and what was published meanwhile would be lost silently.
    `on_connect` runs on every reconnect and never on the first connect (the pool
    connects before the callback is registered)."""

    def __init__(self, redis: Redis, on_reconnect: Callable[[], None], *, slotwise: bool) -> None:
        super().__init__(redis.connection_pool)
        self._on_reconnect = on_reconnect
        self._slotwise = slotwise

    async def on_connect(self, connection: Connection) -> None:
        self._on_reconnect()
        await super().on_connect(connection)

    async def _resubscribe_shard_channels(self) -> None:
        if not self._slotwise:
            await super()._resubscribe_shard_channels()
            return
        names = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in self.shard_channels)
        for group in by_slot(names):
            await self.ssubscribe(*group)


class Subscriber(Protocol):
    """What the gateway uses of its pub/sub: `FeedSubscriber` on one Redis,
    `shards.ClusterSubscriber` on a Redis Cluster."""

    async def __aenter__(self) -> Subscriber: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def subscribe(
        self, channel: str, handler: MessageHandler, timeout: float = 5.0
    ) -> None: ...

    async def unsubscribe(self, channel: str) -> None: ...

    async def aclose(self) -> None: ...

    @property
    def channels(self) -> list[str]: ...

    @property
    def stalled(self) -> bool: ...

    @property
    def gaps(self) -> int: ...

    @property
    def probe_failures(self) -> int: ...


class FeedSubscriber:
    def __init__(
        self,
        redis: Redis,
        on_gap: GapHandler,
        *,
        sharded: bool = False,
        supervisor: Supervisor | None = None,
        probe_channel: str = "",
        probe_interval: float = 5.0,
        on_dropped: Callable[[str], None] | None = None,
    ) -> None:
        self._redis = redis
        self._supervisor = supervisor
        self._probe_channel = probe_channel
        self._probe_interval = probe_interval
        self._probe_seen = asyncio.Event()
        self._probe_task: asyncio.Task[None] | None = None
        self._gap_due = False
        self._gap_since = 0.0
        self._reconnects = 0  # of the pub/sub connection, each a gap
        self.stalled = False  # the last probe did not come back
        self.probe_failures = 0
        self.gaps = 0
        self._on_gap = on_gap
        # Redis dropped a subscription we still want (on a cluster, its slot moved away:
        # Redis 7 then sends SUNSUBSCRIBE); the caller re-routes it.
        self._on_dropped = on_dropped
        # Sharded pub/sub (SSUBSCRIBE, Redis 7): what the feed uses with SPUBLISH.
        self._sharded = sharded
        self._pubsub: PubSub = _GapAwarePubSub(redis, self._reconnected, slotwise=sharded)
        self._channels: dict[str, MessageHandler] = {}
        # Set when Redis confirms a SUBSCRIBE: only then is no message missed.
        self._confirmed: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._ready = asyncio.Event()

    async def __aenter__(self) -> FeedSubscriber:
        if self._supervisor is not None:
            self._task = self._supervisor.start("feed-subscriber", self._run)
        else:
            self._task = asyncio.create_task(self._run(), name="feed-subscriber")
        if self._probe_channel:
            await self.subscribe(self._probe_channel, self._probe_arrived)
            if self._supervisor is not None:
                self._probe_task = self._supervisor.start("pubsub-probe", self.probe)
            else:
                self._probe_task = asyncio.create_task(self.probe(), name="pubsub-probe")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for task in (self._probe_task, self._task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._probe_task = None
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def subscribe(self, channel: str, handler: MessageHandler, timeout: float = 5.0) -> None:
        """Deliver a channel's messages to `handler`; returns once Redis has confirmed the
        subscription (from then on no message is missed). Subscribing again is cheap."""
        confirmed = self._confirmed.get(channel)
        if confirmed is None:
            confirmed = self._confirmed[channel] = asyncio.Event()
            self._channels[channel] = handler
            # redis-py's PubSub connects lazily and not safely under concurrency: two
            # first SUBSCRIBEs at once can go out on two connections, one never read.
            async with self._lock:
                await self._subscribe(channel)
            self._ready.set()
        try:
            async with asyncio.timeout(timeout):  # (wait_for may swallow a cancel on 3.11)
                await confirmed.wait()
        except TimeoutError:
            # Forget it, so the next caller subscribes afresh instead of waiting forever.
            if self._confirmed.get(channel) is confirmed and not confirmed.is_set():
                self._confirmed.pop(channel, None)
                self._channels.pop(channel, None)
            raise

    async def unsubscribe(self, channel: str) -> None:
        if self._channels.pop(channel, None) is not None:
            self._confirmed.pop(channel, None)
            if self._sharded:
                await self._pubsub.sunsubscribe(channel)
            else:
                await self._pubsub.unsubscribe(channel)

    def forget(self, channel: str) -> None:
        """Stop delivering a channel without telling Redis (its slot left this node,
        which dropped the subscription already)."""
        self._channels.pop(channel, None)
        self._confirmed.pop(channel, None)

    @property
    def running(self) -> bool:
        """The listening task runs (it handles every error itself and never ends)."""
        return self._task is not None and not self._task.done()

    async def _subscribe(self, *channels: str) -> None:
        if self._sharded:
            for group in by_slot(channels):
                await self._pubsub.ssubscribe(*group)
        else:
            await self._pubsub.subscribe(*channels)

    @property
    def channels(self) -> list[str]:
        return list(self._channels)

    def _reconnected(self) -> None:
        """The pub/sub connection came back (whoever reconnected it): what was published
        meanwhile is lost, so a gap is due once Redis confirms every channel again."""
        self._reconnects += 1
        if self._channels:
            log.warning("redis pub/sub reconnected: a gap, once every channel is confirmed")
            self._gap_pending()

    def _gap_pending(self) -> None:
        """What was published meanwhile is lost: a gap is due once Redis confirms every
        channel again (their confirmations start over)."""
        for event in self._confirmed.values():
            event.clear()
        self._gap_due = True
        self._gap_since = asyncio.get_running_loop().time()

    def _probe_arrived(self, _raw: bytes) -> None:
        self._probe_seen.set()

    async def probe(self) -> None:
        """Every `probe_interval`, publish to the probe channel and wait (as long again)
        for it to come back; when it does not, cut the connection (a gap)."""
        while True:
            await asyncio.sleep(self._probe_interval)
            self._probe_seen.clear()
            reconnects = self._reconnects
            try:
                await self._redis.execute_command(  # type: ignore[no-untyped-call]
                    "SPUBLISH" if self._sharded else "PUBLISH", self._probe_channel, b"probe"
                )
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the
                # result when the probe comes back just as the task is cancelled,
                # swallowing the cancel, and this loop would then never end (aclose hung).
                async with asyncio.timeout(self._probe_interval):
                    await self._probe_seen.wait()
            except (TimeoutError, RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self.probe_failures += 1
                self.stalled = True
                loop = asyncio.get_running_loop()
                if self._gap_due and loop.time() - self._gap_since < 3 * self._probe_interval:
                    continue  # a reconnect is under way: give it time to be confirmed
                if self._reconnects != reconnects:
                    continue  # the connection came back meanwhile (a gap already): probe it anew
                log.warning("pub/sub probe failed (%s): reconnecting", type(exc).__name__)
                connection = self._pubsub.connection
                if connection is not None:
                    await connection.disconnect()
                continue
            self.stalled = False

    async def _run(self) -> None:
        backoff = 0.1
        clock = asyncio.get_running_loop().time
        while True:
            # PubSub.get_message refuses to run before the first subscribe.
            await self._ready.wait()
            spent = 0.0
            try:
                async for message in self._pubsub.listen():
                    backoff = 0.1
                    channel = message["channel"]
                    if isinstance(channel, bytes):
                        channel = channel.decode()
                    if message["type"] in ("subscribe", "ssubscribe"):
                        event = self._confirmed.get(channel)
                        if event is not None:
                            event.set()
                        if self._gap_due and all(e.is_set() for e in self._confirmed.values()):
                            # Every channel is live again: only now can a resync read
                            # a state that no later message will miss.
                            self._gap_due = False
                            self.gaps += 1
                            await self._on_gap()
                        continue
                    if message["type"] == "sunsubscribe" and channel in self._channels:
                        if self._on_dropped is not None:
                            self._on_dropped(channel)
                        continue
                    if message["type"] not in ("message", "smessage"):
                        continue
                    handler = self._channels.get(channel)
                    if handler is not None:
                        started = clock()
                        try:
                            more = handler(message["data"])
                            while more is not None:
                                # One message's handling in slices, the loop between.
                                await asyncio.sleep(0)
                                more = more()
                        except Exception:
                            log.exception("handler of a pub/sub message failed")
                        spent += clock() - started
                    if spent >= FANOUT_SLICE_S:
                        # Let requests, replies and writers run between slices of fan-out.
                        spent = 0.0
                        await asyncio.sleep(0)
            except asyncio.CancelledError:
                raise
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning(
                    "redis pub/sub lost (%s); retrying in %.1fs", type(exc).__name__, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                try:
                    # Re-subscribing reconnects; what was published meanwhile is lost.
                    # The gap is reported once Redis confirms every channel again.
                    if self._channels:
                        self._gap_pending()
                        async with self._lock:
                            await self._subscribe(*self._channels)
                    else:
                        await self._on_gap()
                except (RedisConnectionError, RedisTimeoutError, OSError):
                    continue
            except Exception:
                log.exception("feed subscriber failed; restarting it")
                await asyncio.sleep(backoff)
