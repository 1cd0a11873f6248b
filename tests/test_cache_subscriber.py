"""The pub/sub reader shares the event loop: a long fan-out of buffered messages is cut
into slices, and requests (a claim and its reply) run between them."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from devstack import start_redis
from tests.conftest import UNIT
from worklist_cache import FeedSubscriber, keys
from worklist_cache.subscriber import FANOUT_SLICE_S, More


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


async def test_one_message_handled_in_slices_keeps_its_order_and_lets_requests_run(
    redis: Redis, redis_url: str
) -> None:
    """A handler that returns the rest of its work (`More`) is called again after the
    loop has had a turn, until it returns None; only then comes the next message."""
    channel = keys.channel("slices-more")
    events: list[str] = []
    both = asyncio.Event()

    def handler(raw: bytes) -> More | None:
        name = raw.decode()

        def part(n: int) -> More | None:
            events.append(f"{name}.{n}")
            if n == 3:
                if name == "m1":
                    both.set()
                return None
            return lambda: part(n + 1)

        return part(1)

    async def on_gap() -> None:
        pass

    reader = Redis.from_url(redis_url)
    async with FeedSubscriber(reader, on_gap) as subscriber:
        await subscriber.subscribe(channel, handler)

        async def request() -> None:
            while not both.is_set():
                events.append("request")
                await asyncio.sleep(0)

        side = asyncio.create_task(request())
        async with redis.pipeline(transaction=False) as pipe:
            pipe.publish(channel, "m0")
            pipe.publish(channel, "m1")
            await pipe.execute()
        await asyncio.wait_for(both.wait(), 10 * UNIT)
        await side
    await reader.aclose()
    parts = [e for e in events if e != "request"]
    assert parts == ["m0.1", "m0.2", "m0.3", "m1.1", "m1.2", "m1.3"], "in order, each once"
    between = events[events.index("m0.1") : events.index("m0.3")]
    assert "request" in between, "the loop ran between one message's slices"


async def test_a_redis_that_restarts_within_the_clients_retries_is_still_a_gap() -> None:
    """redis-py's own retries (a client's default) reconnect inside a read and replay the
    subscriptions, so no error reaches the reader; the restart lost what was published
    meanwhile all the same, and the subscriber must report it (a gap), and deliver after."""
    proc, url = start_redis()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    channel = keys.channel("restart")
    gaps: list[int] = []
    got: list[bytes] = []

    async def on_gap() -> None:
        gaps.append(len(gaps))

    reader = Redis(port=port)  # as a cluster link: default retries ride out a short restart
    try:
        async with FeedSubscriber(reader, on_gap) as subscriber:
            await subscriber.subscribe(channel, got.append)
            proc.kill()
            await asyncio.sleep(0.2)
            proc, _ = await asyncio.to_thread(start_redis, port)
            for _ in range(int(100 * UNIT)):
                if gaps:
                    break
                await asyncio.sleep(0.05)
            assert gaps, "the restart was reported as a gap"
            assert subscriber.gaps == 1
            writer = Redis.from_url(url)
            await writer.publish(channel, b"after")
            await writer.aclose()
            for _ in range(int(100 * UNIT)):
                if got:
                    break
                await asyncio.sleep(0.02)
            assert got == [b"after"], "and the channel delivers again"
    finally:
        await reader.aclose()
        proc.stop()
