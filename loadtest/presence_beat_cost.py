"""What one presence heartbeat costs a node with many sessions of one tenant.

    python -m loadtest.presence_beat_cost [--sessions N] [--beats K]

Starts a throwaway redis-server (`devstack.start_redis`), gives one `gateway.presence`
instance N authenticated sessions of one tenant (stand-ins holding what presence reads
of a session: its principal, claims and client), and runs K heartbeats of that tenant
(`Presence._beat_tenant`: every entry written with its heartbeat, the hash read back
into the mirror). It prints, as JSON, the CPU one beat took (ms, the mean) and the
longest the event loop was held without a turn for anything else during the beats
(ms): the delay a delta or a claim waiting on the same loop would have seen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from redis.asyncio import Redis

from devstack import start_redis
from dynamo.directory.models import Role
from gateway.auth import Principal
from gateway.presence import Presence

__all__ = ["QuietFeed", "StandInSession", "measure"]

TENANT = "northwind"


class QuietFeed:
    """No pub/sub: the beat's announcements are not what is measured."""

    async def subscribe(self, channel: str, handler: Any, timeout: float = 5.0) -> None:
        return None


class QuietClient:
    def send(self, frame: Any, key: str | None = None) -> None:
        return None


class StandInSession:
    """What presence reads of a session."""

    def __init__(self, i: int) -> None:
        self.conn_id = f"c{i:06d}"
        self.principal = Principal(
            sub=f"reader-{i % 300}",
            name=f"Reader {i % 300}",
            roles=(Role.RADIOLOGIST,),
            tenant=TENANT,
            sites=("site-a", "site-b"),
            exp=2**31,
        )
        self.claims: dict[str, str] = {}
        self.claim_rows: dict[str, dict[str, Any]] = {}
        self.client = QuietClient()


async def measure(sessions: int, beats: int) -> dict[str, Any]:
    proc, url = start_redis()
    redis = Redis.from_url(url)
    try:
        presence = Presence(redis, QuietFeed(), "bench")  # type: ignore[arg-type]
        local = [StandInSession(i) for i in range(sessions)]
        presence._local[TENANT] = set(local)  # type: ignore[arg-type]
        mirror = await presence._mirror(TENANT)
        for session in local:
            presence._change(TENANT, mirror, session.conn_id, presence._entry(session))  # type: ignore[arg-type]
        await asyncio.sleep(0.2)  # the joins' batched write
        held: list[float] = []

        async def watch() -> None:
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0)
                now = time.perf_counter()
                held.append(now - last)
                last = now

        watcher = asyncio.create_task(watch())
        cpu = 0.0
        for _ in range(beats):
            started = time.process_time()
            await presence._beat_tenant(TENANT, presence._local[TENANT])
            cpu += time.process_time() - started
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await presence.aclose()
        return {
            "sessions": sessions,
            "beats": beats,
            "cpu_ms_per_beat": round(cpu / beats * 1000, 1),
            "longest_hold_ms": round(max(held) * 1000, 1),
        }
    finally:
        await redis.aclose()
        proc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--beats", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.sessions, args.beats))))


if __name__ == "__main__":
    main()
