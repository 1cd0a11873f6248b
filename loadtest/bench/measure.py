"""Measuring one phase: open the load clients' sessions, send, wait for the deliveries,
and collect latencies, losses and CPU."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.bench.config import CLIENT_LIMIT
from loadtest.bench.meters import CpuMeter, percentiles
from loadtest.loadclients import (
    ClientPool,
    auth_available,
)

__all__ = ["Phase", "drain", "finite", "open_pool", "per_key", "phase_line"]


async def open_pool(
    pool: ClientPool,
    url: str,
    want: int,
    *,
    tenant: str | Sequence[str],
    view: Mapping[str, Any] | None,
    gateway: bool = True,
    attempts: int = 3,
    users: int = 0,
) -> dict[str, Any]:
    """Top the pool up to `want` open sessions (clients evicted earlier reconnect).

    Sessions with the gateway authenticate once it supports it; `view` None: no subscribe;
    `users`: how many people the sessions are spread over (0: all one person).
    Sessions that fail to open are retried after a pause, as a real client would, up to
    `attempts` times; every failure is counted.
    """
    secret = os.environ["GATEWAY_JWT_SECRET"] if gateway and auth_available() else None
    opened = failed = 0
    errors: list[str] = []

    async def open_more(count: int) -> None:
        nonlocal opened, failed
        reply = await pool.open(url, count, tenant=tenant, view=view, secret=secret, users=users)
        opened += reply["opened"]
        failed += reply["failed"]
        errors.extend(reply["errors"])

    async def held() -> int:
        return sum(r["open"] for r in await pool.call("progress", timeout=30))

    if want > 1 and await held() == 0:
        # A pilot session alone first: what the server sets up lazily for its first
        # session (its pub/sub connection) is then in place before the crowd arrives.
        await open_more(1)
    for attempt in range(attempts):
        have = await held()
        if have >= want:
            break
        if attempt:
            await asyncio.sleep(attempt)
        await open_more(want - have)
    return {"opened": opened, "failed": failed, "errors": errors[:5]}


async def drain(pool: ClientPool, expected: int, cap: float, stall: float = 5.0) -> bool:
    """Wait until every expected delivery arrived or was made moot by a newer version of
    its exam (True), deliveries stopped for `stall` seconds, or `cap` seconds passed."""
    start = last_change = time.monotonic()
    last = -1
    while True:
        delivered = await pool.covered()
        now = time.monotonic()
        if delivered >= expected:
            return True
        if delivered != last:
            last, last_change = delivered, now
        elif now - last_change > stall:
            return False
        if now - start > cap:
            return False
        await asyncio.sleep(0.1)


@dataclass
class Phase:
    """One measured phase: what was sent, to whom, and what came back."""

    name: str
    server: str  # "gateway" or "baseline"
    server_pid: int
    pool: ClientPool
    meter_pids: dict[str, int]
    tmp: Path
    prefix: str
    stride: int = 1
    result: dict[str, Any] = field(default_factory=dict)
    # Every (delta, client) latency in ms and the key of its delta, once collected.
    latencies: np.ndarray[Any, Any] = field(default_factory=lambda: np.zeros(0))
    keys: np.ndarray[Any, Any] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    async def run(
        self,
        send: Callable[[], Awaitable[tuple[list[int], float]]],
        *,
        drain_cap: float,
        rate_offered: float | None,
    ) -> dict[str, Any]:
        """`send` sends the phase's deltas and returns their keys and its seconds."""
        replies = await self.pool.call("phase", prefix=self.prefix, stride=self.stride)
        conns = sum(r["conns"] for r in replies)
        meter = CpuMeter(self.meter_pids)
        meter.start()
        keys, send_s = await send()
        complete = await drain(self.pool, len(keys) * conns, drain_cap)
        wall, cpu = await meter.stop()
        result = await self._collect(keys, conns)
        server_cpu = cpu.get(self.server, 0.0)
        clients = {n: v for n, v in meter.peak.items() if n.startswith("client")}
        delivered = result["delivered"]
        result.update(
            name=self.name,
            server=self.server,
            clients=conns,
            rate_offered=rate_offered,
            rate_sent=round(len(keys) / send_s, 1) if send_s else None,
            deltas=len(keys),
            expected=len(keys) * conns,
            complete=complete,
            wall_s=round(wall, 2),
            send_s=round(send_s, 2),
            server_cpu_s=round(server_cpu, 3),
            server_cpu_us_per_delivery=(
                round(server_cpu / delivered * 1e6, 2) if delivered else None
            ),
            cpu_share={n: round(v / wall, 3) for n, v in cpu.items()},
            cpu_peak={n: round(v, 3) for n, v in meter.peak.items()},
            client_cpu_peak=round(max(clients.values(), default=0.0), 3),
            client_limited=max(clients.values(), default=0.0) >= CLIENT_LIMIT,
            other_cores=round(meter.others, 2),
            interrupt_cores=round(meter.interrupts, 2),
        )
        self.result = result
        return result

    async def _collect(self, keys: Sequence[int], conns: int) -> dict[str, Any]:
        paths = [self.tmp / f"{self.name}-{i}.npz" for i in range(len(self.pool.procs))]
        replies = await asyncio.gather(
            *(
                p.call("report", path=str(path))
                for p, path in zip(self.pool.procs, paths, strict=True)
            )
        )
        latencies: list[np.ndarray[Any, Any]] = []
        lat_keys: list[np.ndarray[Any, Any]] = []
        width = max(keys, default=-1) + 1
        received = np.zeros(width, dtype=np.int64)
        covered = np.zeros(width, dtype=np.int64)
        for path in paths:
            with np.load(path) as data:
                latencies.append(data["latencies"].astype(np.float64))
                lat_keys.append(data["keys"].astype(np.int64))
                for total, part in ((received, data["received"]), (covered, data["covered"])):
                    n = min(width, part.size)
                    total[:n] += part[:n]
            path.unlink()
        wanted = np.asarray(keys, dtype=np.int64)
        got, reached = int(received[wanted].sum()), int(covered[wanted].sum())
        closed: Counter[str] = Counter()
        for reply in replies:
            closed.update(reply["closed"])
        other: Counter[str] = Counter()
        for reply in replies:
            other.update(reply["other"])
        if latencies:
            self.latencies, self.keys = np.concatenate(latencies), np.concatenate(lat_keys)
        return {
            "delivered": got,
            "lost": len(keys) * conns - reached,
            "coalesced": reached - got,
            "duplicates": sum(r["duplicates"] for r in replies),
            "foreign": sum(r["foreign"] for r in replies),
            "frames": sum(r["frames"] for r in replies),
            "batches": sum(r["batches"] for r in replies),
            "bytes": sum(r.get("bytes", 0) for r in replies),
            "patches": sum(r.get("patches", 0) for r in replies),
            "patch_mismatches": sum(r.get("patch_mismatches", 0) for r in replies),
            "other_frames": dict(other),
            "closed_codes": dict(closed),
            **percentiles(self.latencies),
        }


def per_key(values: Mapping[int, float], width: int) -> np.ndarray[Any, Any]:
    out = np.full(width, np.nan)
    for key, value in values.items():
        if key < width:
            out[key] = value
    return out


def finite(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    kept: np.ndarray[Any, Any] = values[np.isfinite(values)]
    return kept


def phase_line(r: Mapping[str, Any]) -> str:
    return (
        f"{r['name']}: {r['clients']} clients, {r['rate_sent']}/s sent, "
        f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, max {r['max_ms']} ms, lost {r['lost']}, "
        f"{r['server']} {r['server_cpu_us_per_delivery']} us/delivery, "
        f"client peak {r['client_cpu_peak']:.0%}"
    )
