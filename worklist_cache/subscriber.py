"""The gateway's one pub/sub connection: tenants are subscribed on demand, every
message is handed to one callback, and a lost connection is retried with backoff and
reported as a gap (the caller resyncs its clients, since messages may have been lost).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worklist_cache import keys

log = logging.getLogger("worklist_cache.subscriber")

MessageHandler = Callable[[str, bytes], None]
GapHandler = Callable[[], Awaitable[None]]


class FeedSubscriber:
    def __init__(self, redis: Redis, on_message: MessageHandler, on_gap: GapHandler) -> None:
        self._redis = redis
        self._on_message = on_message
        self._on_gap = on_gap
        self._pubsub = redis.pubsub()
        self._channels: dict[str, str] = {}  # channel -> tenant
        # Set when Redis confirms a SUBSCRIBE: only then is no message missed.
        self._confirmed: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> FeedSubscriber:
        self._task = asyncio.create_task(self._run(), name="feed-subscriber")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def subscribe(self, tenant: str, timeout: float = 5.0) -> None:
        """Subscribe to a tenant's deltas; returns once Redis has confirmed it."""
        channel = keys.channel(tenant)
        confirmed = self._confirmed.get(channel)
        if confirmed is None:
            confirmed = self._confirmed[channel] = asyncio.Event()
            self._channels[channel] = tenant
            await self._pubsub.subscribe(channel)
            self._ready.set()
        await asyncio.wait_for(confirmed.wait(), timeout)

    async def unsubscribe(self, tenant: str) -> None:
        channel = keys.channel(tenant)
        if self._channels.pop(channel, None) is not None:
            self._confirmed.pop(channel, None)
            await self._pubsub.unsubscribe(channel)

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            # PubSub.get_message refuses to run before the first subscribe.
            await self._ready.wait()
            try:
                async for message in self._pubsub.listen():
                    backoff = 0.1
                    channel = message["channel"]
                    if isinstance(channel, bytes):
                        channel = channel.decode()
                    if message["type"] == "subscribe":
                        event = self._confirmed.get(channel)
                        if event is not None:
                            event.set()
                        continue
                    if message["type"] != "message":
                        continue
                    tenant = self._channels.get(channel)
                    if tenant is not None:
                        self._on_message(tenant, message["data"])
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
                    if self._channels:
                        await self._pubsub.subscribe(*self._channels)
                    await self._on_gap()
                except (RedisConnectionError, RedisTimeoutError, OSError):
                    continue
            except Exception:
                log.exception("feed subscriber failed; restarting it")
                await asyncio.sleep(backoff)
