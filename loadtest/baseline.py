"""The bare baseline the gateway is measured against: `python -m loadtest.baseline`.

One Redis pub/sub subscription (redis.asyncio) and `websockets.asyncio.server.broadcast`
of every message, as it arrived, to every connected client, on uvloop. No sessions, no
views, no queues, no batching: the least work a Python server can do to fan a feed out,
so the gateway's CPU per delivered delta has something honest to be compared with.

It says `{"type": "welcome"}` on connect (so load clients open both servers the same
way), ignores whatever a client sends, and forwards the feed's message unchanged
(`{"epoch":..,"offset":..,"delta":{..}}`).

It sends no keepalive pings (`ping_interval=None`): at 200/s and more it falls seconds
behind by design, a ping then waits behind that backlog, and `websockets` closed the
connections whose pong came later than its 20 s timeout (one run lost 1,363,000 of
1,600,000 deliveries at 200/s that way), which measured the keepalive, not the fan-out.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import uvloop
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from websockets.asyncio.server import ServerConnection, broadcast, serve

from loadtest.loadclients import raise_nofile_limit
from worklist_cache import keys

WELCOME = '{"type":"welcome","protocol":"baseline"}'


async def run(host: str, port: int, redis_url: str, channel: str) -> None:
    clients: set[ServerConnection] = set()

    async def handler(conn: ServerConnection) -> None:
        clients.add(conn)
        try:
            await conn.send(WELCOME)
            async for _ in conn:
                pass
        finally:
            clients.discard(conn)

    async def forward(pubsub: PubSub) -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                broadcast(clients, message["data"], text=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    redis = Redis.from_url(redis_url)
    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(channel)
        async with serve(
            handler, host, port, compression=None, max_size=64 * 1024, ping_interval=None
        ):
            forwarder = asyncio.create_task(forward(pubsub), name="forward")
            stopped = asyncio.create_task(stop.wait(), name="stop")
            await asyncio.wait({forwarder, stopped}, return_when=asyncio.FIRST_COMPLETED)
            for task in (forwarder, stopped):
                task.cancel()
            await asyncio.gather(forwarder, stopped, return_exceptions=True)
            if not forwarder.cancelled() and forwarder.exception() is not None:
                raise RuntimeError("the pub/sub forwarder failed") from forwarder.exception()
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--tenant", default="northwind")
    args = parser.parse_args()
    raise_nofile_limit()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run(args.host, args.port, args.redis_url, keys.channel(args.tenant)))


if __name__ == "__main__":
    main()
