"""The pub/sub reader shares the event loop: a long fan-out of buffered messages is cut
into slices, and requests (a claim and its reply) run between them."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from tests.conftest import UNIT
from worklist_cache import FeedSubscriber, keys
from worklist_cache.subscriber import FANOUT_SLICE_S


async def test_other_tasks_run_between_slices_of_a_long_fan_out(
    redis: Redis, redis_url: str
) -> None:
    channel = keys.channel("slices")
    events: list[str] = []
    all_handled = asyncio.Event()
    count = 20

    def handler(raw: bytes) -> None:
        # A fan-out longer than a slice, without a single await (as the hub's is).
        until = time.perf_counter() + 1.5 * FANOUT_SLICE_S
        while time.perf_counter() < until:
            pass
        events.append("message")
        if events.count("message") == count:
            all_handled.set()

    async def on_gap() -> None:
        pass

    reader = Redis.from_url(redis_url)
    async with FeedSubscriber(reader, on_gap) as subscriber:
        await subscriber.subscribe(channel, handler)
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(count):
                pipe.publish(channel, f"m{i}")
            await pipe.execute()  # all buffered before the reader gets to them

        async def request() -> None:
            while not all_handled.is_set():
                events.append("request")
                await asyncio.sleep(0)

        side = asyncio.create_task(request())
        await asyncio.wait_for(all_handled.wait(), 10 * UNIT)
        await side
    await reader.aclose()
    first, last = events.index("message"), len(events) - 1 - events[::-1].index("message")
    assert "request" in events[first:last], "a request ran while the fan-out went on"
