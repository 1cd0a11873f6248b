"""Phase `storm`: a reconnect storm of one tenant's sessions.

N sessions of one tenant (spread over `STORM_USERS` people, so each has tabs) are open,
authenticated and subscribed to the tenant's (empty) feed on a fresh gateway; then all
are dropped at once and reconnect. `storm_resubscribed_s` is the time from the drop until
every one of them has its snapshot again. Over the storm (the drop, the reconnects and
the presence work that follows), Redis's CPU (`INFO` `used_cpu_*`), its commands and the
bytes it sent, and the gateway's CPU are counted, at N/2 and at N: per session they
should stay flat (presence is O(N) per storm, not O(N^2)).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psutil
from redis.asyncio import Redis

from devstack import free_port, wait_for_port
from dynamo.client import dynamodb_client
from dynamo.directory import DirectoryStore, Person, Tenant
from dynamo.settings import DynamoSettings
from dynamo.store import ExamStore
from loadtest.bench.config import WHOLE_FEED, say
from loadtest.bench.measure import open_pool
from loadtest.bench.meters import settle
from loadtest.bench.phases import Bench
from loadtest.loadclients import ClientPool

__all__ = ["STORM_TENANT", "STORM_USERS", "storm_phase"]

STORM_TENANT = "storm"
# People of the storm's tenant: N sessions are N / STORM_USERS tabs each. What every
# session is shown of presence grows with the people online, which a storm does not change.
STORM_USERS = 100


async def seed_storm_people(settings: DynamoSettings) -> None:
    entries: list[Any] = [Tenant(code=STORM_TENANT, name="Bench storm")]
    entries += [
        Person(
            tenant=STORM_TENANT, sub=f"bench-reader-{i}", name=f"Storm Reader {i}", roles=("admin",)
        )
        for i in range(STORM_USERS)
    ]
    async with dynamodb_client(settings) as client:
        await DirectoryStore(ExamStore(client, settings.table)).apply(entries, actor="bench")


async def _commands(redis: Redis) -> dict[str, int]:
    """Calls so far per Redis command (`INFO commandstats`)."""
    stats = await redis.info("commandstats")
    return {
        k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items() if isinstance(v, dict)
    }


async def _counters(redis: Redis, gateway: psutil.Process) -> dict[str, float]:
    cpu = await redis.info("cpu")
    stats = await redis.info("stats")
    commands = await redis.info("commandstats")
    times = gateway.cpu_times()
    return {
        "redis_cpu_s": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
        "redis_commands": float(
            sum(int(v["calls"]) for v in commands.values() if isinstance(v, dict))
        ),
        "redis_bytes_out": float(stats["total_net_output_bytes"]),
        "gateway_cpu_s": times.user + times.system,
    }


async def _one_storm(
    pool: ClientPool, url: str, size: int, redis: Redis, gateway: psutil.Process
) -> dict[str, Any]:
    def open_all() -> Any:
        return open_pool(
            pool, url, size, tenant=STORM_TENANT, view=WHOLE_FEED, users=STORM_USERS, attempts=5
        )

    first = await open_all()
    await settle([gateway.pid])
    before = await _counters(redis, gateway)
    calls_before = await _commands(redis)
    received = await pool.call("progress", timeout=60)
    started = time.monotonic()
    await pool.call("close", timeout=600)
    again = await open_all()
    resubscribed_s = time.monotonic() - started
    held = sum(r["open"] for r in await pool.call("progress", timeout=60))
    # What the storm left to do (presence diffs, writes) is part of its cost.
    await settle([gateway.pid])
    now = await pool.call("progress", timeout=60)
    frames = sum(r["frames"] for r in now) - sum(r["frames"] for r in received)
    sent = sum(r["bytes"] for r in now) - sum(r["bytes"] for r in received)
    after = await _counters(redis, gateway)
    calls = await _commands(redis)
    calls = {k: n - calls_before.get(k, 0) for k, n in calls.items()}
    top = sorted(((n, k) for k, n in calls.items() if n > 0), reverse=True)[:10]
    cost = {k: after[k] - before[k] for k in before}
    per = max(held, 1)
    return {
        "sessions": size,
        "opened_first": first["opened"],
        "resubscribed": held,
        "failed": first["failed"] + again["failed"],
        "errors": (first["errors"] + again["errors"])[:5],
        "resubscribed_s": round(resubscribed_s, 2),
        "redis_cpu_ms": round(cost["redis_cpu_s"] * 1000, 1),
        "redis_commands": int(cost["redis_commands"]),
        "redis_bytes_out": int(cost["redis_bytes_out"]),
        "gateway_cpu_ms": round(cost["gateway_cpu_s"] * 1000, 1),
        "redis_cpu_us_per_session": round(cost["redis_cpu_s"] * 1e6 / per, 1),
        "redis_commands_per_session": round(cost["redis_commands"] / per, 2),
        "redis_bytes_per_session": round(cost["redis_bytes_out"] / per, 1),
        "gateway_cpu_us_per_session": round(cost["gateway_cpu_s"] * 1e6 / per, 1),
        "redis_calls_by_command": {k: n for n, k in top},
        # What the gateway sent each session (welcome, auth, presence, snapshot).
        "frames_per_session": round(frames / per, 1),
        "bytes_per_session": round(sent / per, 1),
    }


async def storm_phase(bench: Bench) -> None:
    scale = bench.scale
    n = scale.storm_sessions
    await seed_storm_people(bench.main)
    port = free_port()
    gateway = bench.spawn_gateway("gateway-storm", port)
    await asyncio.to_thread(wait_for_port, port, 30, gateway)
    url = f"ws://127.0.0.1:{port}/ws"
    pool = await bench.stack.pool("storm", scale.idle_procs)
    redis = Redis.from_url(bench.env["REDIS_URL"])
    proc = psutil.Process(gateway.pid)
    runs: dict[str, dict[str, Any]] = {}
    try:
        # Warm up: the first sessions import code and size pools no session owns.
        await open_pool(pool, url, 20, tenant=STORM_TENANT, view=WHOLE_FEED, users=STORM_USERS)
        await pool.call("close", timeout=60)
        for size in (n // 2, n):
            say(f"storm: {size} sessions of one tenant drop at once and reconnect")
            profiler = None
            if bench.profile and size == n:
                profiler = await bench._start_profiler(gateway.pid, "storm")
            try:
                runs[str(size)] = run = await _one_storm(pool, url, size, redis, proc)
            finally:
                if profiler is not None:
                    bench.phases["profile_storm"] = await bench._stop_profiler(*profiler)
            await pool.call("close", timeout=600)
            say(
                f"storm of {size}: {run['resubscribed']} resubscribed in "
                f"{run['resubscribed_s']} s; per session gateway "
                f"{run['gateway_cpu_us_per_session']} us CPU, Redis "
                f"{run['redis_cpu_us_per_session']} us CPU, "
                f"{run['redis_commands_per_session']} commands, "
                f"{run['redis_bytes_per_session']} bytes; to each session "
                f"{run['frames_per_session']} frames, {run['bytes_per_session']} bytes"
            )
    finally:
        await redis.aclose()
        await bench.stack.close_pool(pool)
        await bench.stack.stop_one(gateway)
    half, full = runs[str(n // 2)], runs[str(n)]

    def growth(key: str) -> float | None:
        return round(full[key] / half[key], 2) if half[key] else None

    bench.phases["storm"] = {"users": STORM_USERS, "runs": runs}
    bench.results.update(
        storm_sessions=n,
        storm_resubscribed=full["resubscribed"],
        storm_resubscribed_s=full["resubscribed_s"],
        storm_resubscribed_s_at_half=half["resubscribed_s"],
        storm_gateway_cpu_us_per_session=full["gateway_cpu_us_per_session"],
        storm_gateway_cpu_us_per_session_at_half=half["gateway_cpu_us_per_session"],
        storm_redis_cpu_us_per_session=full["redis_cpu_us_per_session"],
        storm_redis_cpu_us_per_session_at_half=half["redis_cpu_us_per_session"],
        storm_redis_commands_per_session=full["redis_commands_per_session"],
        storm_redis_commands_per_session_at_half=half["redis_commands_per_session"],
        storm_redis_bytes_per_session=full["redis_bytes_per_session"],
        storm_redis_bytes_per_session_at_half=half["redis_bytes_per_session"],
        # Cost per session at N over that at N/2: 1.0 is linear, 2.0 quadratic.
        storm_gateway_cpu_growth=growth("gateway_cpu_us_per_session"),
        storm_redis_cpu_growth=growth("redis_cpu_us_per_session"),
    )
    if full["failed"] or half["failed"]:
        bench.notes.append(
            f"Storm: {full['failed'] + half['failed']} attempts to reconnect failed (retried): "
            f"{'; '.join(full['errors'] + half['errors'])}"
        )
