"""The benchmark: `python -m loadtest.bench [--quick | --tiny] [--out DIR] [--profile]`.

Starts everything on loopback with the project's own helpers (a private redis-server and
DynamoDB Local, the relay `python -m relay`, the gateway `python -m gateway`, the
bare baseline `python -m loadtest.baseline`, and load-client processes
`python -m loadtest.loadclients`), runs bounded phases, stops every process it started
(also on Ctrl-C, SIGTERM or an error), and writes `bench.json`, `bench.md` and
`bench.png` to `loadtest/results/` (git-ignored).

Phases, in order:
1. idle: as many idle sessions as allowed (5,000) on a fresh gateway; its RSS before/after.
2. ceiling: a Python writer (ExamStore) writing as fast as it can to DynamoDB Local.
3. e2e: the same writer a little under that rate, while every client (1,000) watches the
   whole tenant feed; latency = receive time - the delta's `updated_at`, split into
   stages (write acknowledged, published by the relay, received).
4. fan-out: deltas published where the relay publishes them (`WorklistFeed.publish`) at
   200/s, then 1,000/s, to the same clients; latency, losses, gateway CPU per delivery.
5. claims: rounds of 20 concurrent claimers on one exam over the WebSocket (when the
   gateway has `claim`), and at the store (`dynamo.claims`) for comparison: round trip
   p50/p99 and double claims.
6. baseline: the fan-out of phase 4 through `loadtest.baseline`, for its CPU per delivery.

All data is synthetic. Quick mode (`--quick`) runs a reduced scale in under two minutes;
`--tiny` is for the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import itertools
import os
import platform
import secrets
import shutil
import signal
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil  # type: ignore[import-untyped]
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from devstack import ManagedProcess, free_port, start_dynamodb_local, start_redis, wait_for_port
from devstack.services import ROOT
from dynamo.claims import Claims
from dynamo.client import dynamodb_client
from dynamo.deltas import ExamDelta
from dynamo.exceptions import ClaimError, StoreError
from dynamo.models import Exam, Order, PatientProfile, now_ms
from dynamo.settings import DynamoSettings
from dynamo.sites import DEMO_TENANTS
from dynamo.states import ExamStatus, Modality, Priority
from dynamo.store import ExamStore
from dynamo.table import ensure_table
from loadtest.hl7bench import hl7_phase
from loadtest.loadclients import (
    ClientPool,
    LoadClientProcess,
    auth_available,
    mint_bench_token,
    open_session,
    raise_nofile_limit,
)
from loadtest.plan import exam_now, to_records
from worklist_cache import WorklistFeed, keys

RESULTS = ROOT / "loadtest" / "results"
TENANT = "northwind"
# Idle sessions belong to groups of this many users, each with an empty feed (so their
# snapshots cost nothing). One radiology group rarely has more users online, and a
# tenant's presence work grows with the square of its users (see the report's notes).
IDLE_PER_TENANT = 100
WHOLE_FEED: dict[str, Any] = {"statuses": []}  # every status of the tenant
FANOUT_RATES = (200, 1000)
CLAIMERS = 20
# A client process above this share of one core during a phase limited what was measured.
CLIENT_LIMIT = 0.85
# Frames the gateway may queue per client before evicting it (4001); raised from the
# default 2,000 so a saturated 2-core box measures delay rather than evictions.
CLIENT_QUEUE = 10_000
# Cores used by processes outside the benchmark above which a phase counts as disturbed.
OTHERS_LIMIT = 0.3


@dataclass(frozen=True)
class Scale:
    name: str
    clients: int
    client_procs: int
    idle_connections: int
    idle_procs: int
    warmup_s: float  # DynamoDB Local's JIT needs several seconds of writes to warm up
    ceiling_s: float
    e2e_s: float
    fanout_s: tuple[float, float]  # seconds of injection at 200/s and at 1,000/s
    claim_rounds: int
    store_claim_rounds: int  # the same rounds at the store, for comparison
    drain_cap_s: float  # the longest a phase waits for its last deliveries
    writer_concurrency: int = 16
    hl7_messages: int = 400  # HL7 orders and status changes sent over MLLP


SCALES = {
    "full": Scale(
        name="full",
        clients=1000,
        client_procs=2,
        idle_connections=5000,
        idle_procs=4,
        warmup_s=8,
        ceiling_s=10,
        e2e_s=10,
        fanout_s=(8, 2),
        claim_rounds=1000,
        store_claim_rounds=100,
        drain_cap_s=40,
        hl7_messages=2000,
    ),
    "quick": Scale(
        name="quick",
        clients=200,
        client_procs=2,
        idle_connections=1000,
        idle_procs=2,
        warmup_s=5,
        ceiling_s=4,
        e2e_s=5,
        fanout_s=(5, 2),
        claim_rounds=100,
        store_claim_rounds=50,
        drain_cap_s=12,
    ),
    "tiny": Scale(
        name="tiny",
        clients=20,
        client_procs=2,
        idle_connections=60,
        idle_procs=2,
        warmup_s=1,
        ceiling_s=1.5,
        e2e_s=1.5,
        fanout_s=(1.5, 0.5),
        claim_rounds=10,
        store_claim_rounds=5,
        drain_cap_s=10,
        hl7_messages=40,
    ),
}


def _say(message: str) -> None:
    print(message, flush=True)


# ---- processes ------------------------------------------------------------------------


class Stack:
    """Every process the benchmark started. `stop()` ends them all; safe to call twice."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[ManagedProcess] = []
        self.pools: list[ClientPool] = []
        self.extra_pids: set[int] = set()  # py-spy
        logs.mkdir(parents=True, exist_ok=True)

    def adopt(self, proc: ManagedProcess) -> ManagedProcess:
        self.procs.append(proc)
        return proc

    def spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> ManagedProcess:
        with (self.logs / f"{name}.log").open("wb") as log:  # this run only
            return self.adopt(ManagedProcess(name, argv, env=env, cwd=ROOT, log=log))

    async def stop_one(self, proc: ManagedProcess) -> None:
        await asyncio.to_thread(proc.stop, 10)
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)

    async def pool(self, name: str, size: int) -> ClientPool:
        procs = []
        for i in range(size):
            procs.append(
                await LoadClientProcess.start(
                    f"{name}{i}", cwd=ROOT, log_path=self.logs / f"clients-{name}{i}.log"
                )
            )
        pool = ClientPool(procs)
        self.pools.append(pool)
        return pool

    async def close_pool(self, pool: ClientPool) -> None:
        await pool.stop()
        with contextlib.suppress(ValueError):
            self.pools.remove(pool)

    def stop(self) -> None:
        for pool in self.pools:
            pool.kill()
        self.pools.clear()
        for pid in self.extra_pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        # Reverse order: servers first, the stores they use last.
        for proc in reversed(self.procs):
            proc.stop(timeout=10)
        self.procs.clear()


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _machine_busy() -> tuple[float, float]:
    """CPU seconds every core spent in processes, whoever ran them, and in interrupts
    (where the kernel moves loopback packets: the benchmark's own traffic, mostly)."""
    t = psutil.cpu_times()
    irq = float(getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))
    return float(t.user + t.nice + t.system), irq


class CpuMeter:
    """CPU seconds of named processes over a phase, and each one's busiest half-second."""

    def __init__(self, pids: Mapping[str, int], window: float = 0.5) -> None:
        self._procs = {}
        for name, pid in pids.items():
            with contextlib.suppress(psutil.Error):
                self._procs[name] = psutil.Process(pid)
        self._window = window
        self._start: dict[str, float] = {}
        self._t0 = 0.0
        self.peak: dict[str, float] = dict.fromkeys(self._procs, 0.0)
        self._task: asyncio.Task[None] | None = None
        self._busy0 = (0.0, 0.0)
        self.others = 0.0  # cores used by processes not measured here, over the phase
        self.interrupts = 0.0  # cores spent in interrupts over the phase

    def read(self) -> dict[str, float]:
        out = {}
        for name, proc in self._procs.items():
            with contextlib.suppress(psutil.Error):
                out[name] = _cpu_seconds(proc)
        return out

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._start = self.read()
        self._busy0 = _machine_busy()
        self._task = asyncio.create_task(self._sample(), name="cpu-sampler")

    async def _sample(self) -> None:
        last, t_last = self._start, time.monotonic()
        while True:
            await asyncio.sleep(self._window)
            now, t_now = self.read(), time.monotonic()
            for name, seconds in now.items():
                if name in last:
                    share = (seconds - last[name]) / (t_now - t_last)
                    self.peak[name] = max(self.peak.get(name, 0.0), share)
            last, t_last = now, t_now

    async def stop(self) -> tuple[float, dict[str, float]]:
        """Wall seconds since start, and CPU seconds each process used meanwhile."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        end = self.read()
        wall = time.monotonic() - self._t0
        used = {n: end[n] - self._start[n] for n in end if n in self._start}
        busy, irq = _machine_busy()
        self.others = max(0.0, (busy - self._busy0[0] - sum(used.values())) / wall)
        self.interrupts = (irq - self._busy0[1]) / wall
        return wall, used


async def settle(pids: Sequence[int], *, busy: float = 0.15, cap: float = 20.0) -> float:
    """Wait until these processes together use less than `busy` of a core (the previous
    phase's backlog is gone); returns the seconds waited."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))

    def used() -> float:
        total = 0.0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                total += _cpu_seconds(proc)
        return total

    start = time.monotonic()
    while time.monotonic() - start < cap:
        before = used()
        await asyncio.sleep(0.5)
        if (used() - before) / 0.5 < busy:
            break
    return time.monotonic() - start


# ---- synthetic writes -----------------------------------------------------------------

# Each exam is written in these steps: created (version 1), then moved along.
STEPS: tuple[ExamStatus | None, ...] = (
    None,
    ExamStatus.ARRIVED,
    ExamStatus.IN_PROGRESS,
    ExamStatus.COMPLETED,
    ExamStatus.FINAL,
)
STRIDE = 8  # keys per exam in a phase's delivery map: key = n * STRIDE + version - 1


def synthetic_exam(prefix: str, n: int) -> tuple[Exam, Order, PatientProfile]:
    """A made-up exam of the benchmark's tenant, ordered now; no real patient, ever."""
    tenant = next(t for t in DEMO_TENANTS if t.code == TENANT)
    return to_records(exam_now(tenant, "NW-GEN", f"{prefix}{n:07d}", n))


def synthetic_delta(prefix: str, n: int, now: int, tenant: str = TENANT) -> ExamDelta:
    """What the relay would publish for a freshly written exam."""
    return ExamDelta(
        op="upsert",
        tenant=tenant,
        site="NW-GEN",
        exam_id=f"{prefix}{n:07d}",
        version=1,
        status=ExamStatus.SCHEDULED,
        priority=Priority.ROUTINE,
        modality=Modality.CT,
        procedure="CT head without contrast",
        body_part="HEAD",
        subspecialty="neuro",
        mrn=f"BM{n:08d}",
        patient_name="BENCHMARK^PATIENT",
        scheduled_at=now,
        tat_due_at=now + 3_600_000,
        updated_at=now,
    )


class Pacer:
    """Spaces events `1/rate` apart across every caller; never bursts to catch up."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


@dataclass
class ExamWriter:
    """Writes synthetic exams through the store (create, then transitions), paced."""

    store: ExamStore
    prefix: str
    keys: list[int] = field(default_factory=list)  # n * STRIDE + version - 1, written
    write_ms: list[float] = field(default_factory=list)
    # key -> the store's `updated_at` stamp, and when DynamoDB acknowledged (epoch ms)
    stamped: dict[int, int] = field(default_factory=dict)
    acked: dict[int, float] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)

    async def run(self, seconds: float, rate: float | None, concurrency: int) -> float:
        """Write for `seconds` (at most `rate` writes/s); returns the elapsed seconds."""
        pacer = Pacer(rate)
        numbers = itertools.count()
        start = time.monotonic()
        end = start + seconds

        async def worker() -> None:
            while time.monotonic() < end:
                n = next(numbers)
                exam, order, profile = synthetic_exam(self.prefix, n)
                for step in STEPS:
                    await pacer.wait()
                    if time.monotonic() >= end:
                        return
                    t0 = time.perf_counter()
                    try:
                        if step is None:
                            written = await self.store.create_exam(exam, order, profile)
                        else:
                            written = await self.store.transition(
                                exam.patient_id, exam.accession, step
                            )
                    except StoreError as exc:
                        self.errors[type(exc).__name__] += 1
                        break
                    self.write_ms.append((time.perf_counter() - t0) * 1000)
                    key = n * STRIDE + written.version - 1
                    self.keys.append(key)
                    self.acked[key] = time.time() * 1000
                    self.stamped[key] = written.updated_at

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.monotonic() - start


async def inject(feed: WorklistFeed, prefix: str, rate: float, seconds: float) -> tuple[int, float]:
    """Publish `rate * seconds` fresh deltas as the relay would, paced in 5 ms ticks;
    returns how many and the seconds it took."""
    total = round(rate * seconds)
    sent = 0
    start = time.monotonic()
    while sent < total:
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        if due > sent:
            now = now_ms()
            await feed.publish([synthetic_delta(prefix, n, now) for n in range(sent, due)])
            sent = due
        await asyncio.sleep(0.005)
    return total, time.monotonic() - start


# ---- measuring a phase ----------------------------------------------------------------


def _stats(latencies: np.ndarray[Any, Any]) -> dict[str, float | None]:
    names = ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms")
    if latencies.size == 0:
        return dict.fromkeys(names)
    p50, p90, p99, p999 = np.percentile(latencies, [50, 90, 99, 99.9])
    values = (p50, p90, p99, p999, latencies.max(), latencies.mean())
    return {n: round(float(v), 2) for n, v in zip(names, values, strict=True)}


async def open_pool(
    pool: ClientPool,
    url: str,
    want: int,
    *,
    tenant: str | Sequence[str],
    view: Mapping[str, Any] | None,
    gateway: bool = True,
    attempts: int = 3,
) -> dict[str, Any]:
    """Top the pool up to `want` open sessions (clients evicted earlier reconnect).

    Sessions with the gateway authenticate once it supports it; `view` None: no subscribe.
    Sessions that fail to open are retried after a pause, as a real client would, up to
    `attempts` times; every failure is counted.
    """
    secret = os.environ["GATEWAY_JWT_SECRET"] if gateway and auth_available() else None
    opened = failed = 0
    errors: list[str] = []

    async def open_more(count: int) -> None:
        nonlocal opened, failed
        reply = await pool.open(url, count, tenant=tenant, view=view, secret=secret)
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
            "other_frames": dict(other),
            "closed_codes": dict(closed),
            **_stats(self.latencies),
        }


# ---- the phases -----------------------------------------------------------------------


def _per_key(values: Mapping[int, float], width: int) -> np.ndarray[Any, Any]:
    out = np.full(width, np.nan)
    for key, value in values.items():
        if key < width:
            out[key] = value
    return out


def _finite(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    kept: np.ndarray[Any, Any] = values[np.isfinite(values)]
    return kept


@dataclass
class Bench:
    scale: Scale
    stack: Stack
    out: Path
    profile: bool
    env: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def tmp(self) -> Path:
        return self.out / "tmp"

    def spawn_gateway(self, name: str, port: int) -> ManagedProcess:
        env = {**self.env, "GATEWAY_PORT": str(port)}
        return self.stack.spawn(name, [sys.executable, "-m", "gateway"], env)

    async def start(self) -> tuple[DynamoSettings, DynamoSettings]:
        redis_proc, redis_url = start_redis()
        self.stack.adopt(redis_proc)
        ddb_proc, endpoint = start_dynamodb_local()
        self.stack.adopt(ddb_proc)
        self.pids.update(redis=redis_proc.pid, dynamodb=ddb_proc.pid)
        main = DynamoSettings(endpoint_url=endpoint, table="bench-worklist")
        ceiling = DynamoSettings(endpoint_url=endpoint, table="bench-ceiling")
        async with dynamodb_client(main) as client:
            await ensure_table(client, main.table)
            await ensure_table(client, ceiling.table)
        secret = secrets.token_hex(32)
        os.environ["GATEWAY_JWT_SECRET"] = secret  # load clients mint their tokens with it
        self.env = {
            "REDIS_URL": redis_url,
            "DYNAMO_ENDPOINT_URL": endpoint,
            "DYNAMO_TABLE": main.table,
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_CLIENT_QUEUE": str(CLIENT_QUEUE),
            "GATEWAY_JWT_SECRET": secret,
            # Claimers send a claim per round, the winner a release too: far above the
            # per-connection request rate a person produces.
            "GATEWAY_RATE_LIMIT": "1000",
            "GATEWAY_RATE_BURST": "2000",
            "GATEWAY_LOG_LEVEL": "WARNING",
            "RELAY_REAP_INTERVAL": "0",
            "RELAY_LOG_LEVEL": "WARNING",
        }
        relay = self.stack.spawn("relay", [sys.executable, "-m", "relay"], self.env)
        self.pids["relay"] = relay.pid
        _say(f"redis {redis_url}, DynamoDB Local {endpoint}, relay pid {relay.pid}")
        return main, ceiling

    # -- 1. idle sessions --

    async def idle(self) -> None:
        scale = self.scale
        count = -(-scale.idle_connections // IDLE_PER_TENANT)
        tenants = [f"idle-{i:03d}" for i in range(count)]
        port = free_port()
        gateway = self.spawn_gateway("gateway-idle", port)
        await asyncio.to_thread(wait_for_port, port, 30, gateway)
        url = f"ws://127.0.0.1:{port}/ws"
        pool = await self.stack.pool("idle", scale.idle_procs)
        try:
            # Warm up: the first sessions import code and size pools no session owns.
            await open_pool(pool, url, 20, tenant=tenants, view=WHOLE_FEED)
            await pool.call("close")
            await asyncio.sleep(1.0)
            proc = psutil.Process(gateway.pid)
            before = proc.memory_info().rss
            t0 = time.monotonic()
            opened = await open_pool(
                pool, url, scale.idle_connections, tenant=tenants, view=WHOLE_FEED, attempts=5
            )
            open_s = time.monotonic() - t0
            await asyncio.sleep(2.0)
            held = sum(r["open"] for r in await pool.call("progress", timeout=30))
            after = proc.memory_info().rss
            server_count = _gateway_connections(port)
            await pool.call("close", timeout=120)
        finally:
            await self.stack.close_pool(pool)
            await self.stack.stop_one(gateway)
        kb = round((after - before) / 1024 / held, 2) if held else None
        self.phases["idle"] = {
            "attempted": scale.idle_connections,
            "opened": opened["opened"],
            "failed": opened["failed"],
            "errors": opened["errors"],
            "held": held,
            "gateway_reports": server_count,
            "open_s": round(open_s, 2),
            "rss_before_mb": round(before / 2**20, 1),
            "rss_after_mb": round(after / 2**20, 1),
            "kb_per_connection": kb,
            "tenants": len(tenants),
        }
        if opened["failed"]:
            self.notes.append(
                f"Idle phase: {opened['failed']} attempts to open a session failed (retried "
                f"after a pause): {'; '.join(opened['errors'])}"
            )
        self.results.update(max_connections=held, kb_per_connection=kb)
        _say(f"idle: {held} sessions held, {kb or 0:.1f} KB each ({opened['failed']} failed)")

    # -- 2. the DynamoDB ceiling --

    async def ceiling(self, settings: DynamoSettings) -> float:
        async with dynamodb_client(settings) as client:
            store = ExamStore(client, settings.table)
            await ExamWriter(store, "CW-").run(self.scale.warmup_s, None, 16)
            writer = ExamWriter(store, "C-")
            meter = CpuMeter({"bench": os.getpid(), "dynamodb": self.pids["dynamodb"]})
            meter.start()
            elapsed = await writer.run(self.scale.ceiling_s, None, self.scale.writer_concurrency)
            wall, cpu = await meter.stop()
        rate = len(writer.keys) / elapsed
        self.phases["ceiling"] = {
            "writes": len(writer.keys),
            "seconds": round(elapsed, 2),
            "writes_per_s": round(rate, 1),
            "errors": dict(writer.errors),
            "concurrency": self.scale.writer_concurrency,
            "write": _stats(np.asarray(writer.write_ms)),
            "cpu_share": {n: round(v / wall, 3) for n, v in cpu.items()},
            "other_cores": round(meter.others, 2),
        }
        self.results["dynamo_ceiling_writes_per_s"] = round(rate, 1)
        _say(
            f"ceiling: {rate:.0f} writes/s (writer {cpu.get('bench', 0) / wall:.0%} of a core, "
            f"DynamoDB Local {cpu.get('dynamodb', 0) / wall:.0%})"
        )
        return rate

    # -- 3 to 5. deliveries, and claims over the socket --

    def _meter_pids(self, server: str, server_pid: int, pool: ClientPool) -> dict[str, int]:
        pids = {server: server_pid, "bench": os.getpid(), **self.pids}
        pids.update({f"client{i}": pid for i, pid in enumerate(pool.pids)})
        return pids

    async def deliveries(self, main: DynamoSettings, ceiling_rate: float) -> None:
        scale = self.scale
        pool = await self.stack.pool("load", scale.client_procs)
        redis = Redis.from_url(self.env["REDIS_URL"])
        feed = WorklistFeed(redis)
        try:
            async with dynamodb_client(main) as client:
                store = ExamStore(client, main.table)
                await self._gateway_phases(store, feed, pool, ceiling_rate)
            await self._baseline_phases(feed, pool)
        finally:
            await self.stack.close_pool(pool)
            await redis.aclose()

    async def _gateway_phases(
        self, store: ExamStore, feed: WorklistFeed, pool: ClientPool, ceiling_rate: float
    ) -> None:
        scale = self.scale
        port = free_port()
        gateway = self.spawn_gateway("gateway", port)
        await asyncio.to_thread(wait_for_port, port, 30, gateway)
        self.pids["gateway"] = gateway.pid
        url = f"ws://127.0.0.1:{port}/ws"
        opened = await open_pool(pool, url, scale.clients, tenant=TENANT, view=WHOLE_FEED)
        _say(f"{opened['opened']} clients subscribed to the whole {TENANT} feed")
        if opened["failed"]:
            self.notes.append(
                f"{opened['failed']} attempts to open a load client failed (retried): "
                f"{'; '.join(opened['errors'])}"
            )
        pids = self._meter_pids("gateway", gateway.pid, pool)
        quiet = [gateway.pid, *pool.pids]
        await self._warm_up(store, pool)
        await settle(quiet)
        await self._e2e(store, pool, pids, ceiling_rate)
        for rate, seconds in zip(FANOUT_RATES, scale.fanout_s, strict=True):
            await settle(quiet)
            await open_pool(pool, url, scale.clients, tenant=TENANT, view=WHOLE_FEED)
            await self._fanout(feed, pool, pids, "gateway", gateway.pid, rate, seconds)
        await pool.call("close", timeout=120)
        if ws_claims_available():
            await settle([gateway.pid])
            await self.claims(WsClaimers(url, store), scale.claim_rounds)
        else:
            self.notes.append("The gateway has no `claim` message yet: claims at the store only.")
        await self.stack.stop_one(gateway)

    async def _baseline_phases(self, feed: WorklistFeed, pool: ClientPool) -> None:
        scale = self.scale
        port = free_port()
        argv = [sys.executable, "-m", "loadtest.baseline", "--port", str(port)]
        argv += ["--redis-url", self.env["REDIS_URL"], "--tenant", TENANT]
        baseline = self.stack.spawn("baseline", argv, self.env)
        await asyncio.to_thread(wait_for_port, port, 30, baseline)
        url = f"ws://127.0.0.1:{port}/"
        pids = self._meter_pids("baseline", baseline.pid, pool)
        for rate, seconds in zip(FANOUT_RATES, scale.fanout_s, strict=True):
            await open_pool(pool, url, scale.clients, tenant=TENANT, view=None, gateway=False)
            await settle([baseline.pid, *pool.pids])
            await self._fanout(feed, pool, pids, "baseline", baseline.pid, rate, seconds)
        await pool.call("close", timeout=120)
        await self.stack.stop_one(baseline)

    async def _warm_up(self, store: ExamStore, pool: ClientPool) -> None:
        """One write end to end, so the relay has found its shard before timing starts."""
        await pool.call("phase", prefix="W-", stride=STRIDE)
        exam, order, profile = synthetic_exam("W-", 0)
        await store.create_exam(exam, order, profile)
        conns = sum(r["open"] for r in await pool.call("progress"))
        if not await drain(pool, conns, cap=60, stall=60):
            raise RuntimeError("no delta reached the clients within 60 s: is the relay up?")

    async def _e2e(
        self, store: ExamStore, pool: ClientPool, pids: dict[str, int], ceiling_rate: float
    ) -> None:
        scale = self.scale
        # A Redis subscriber in a process of its own: the writer keeps this one busy.
        probes = await self.stack.pool("probe", 1)
        probe = probes.procs[0]
        channel = keys.channel(TENANT)
        rate = 0.9 * ceiling_rate
        # Enough chains that the pacer, not a chain's wait for its previous write, sets
        # the pace while the box is busy fanning out.
        writer = ExamWriter(store, "E-")

        async def send() -> tuple[list[int], float]:
            elapsed = await writer.run(scale.e2e_s, rate, 2 * scale.writer_concurrency)
            return writer.keys, elapsed

        meter_pids = {**pids, "probe": probe.pid}
        phase = Phase("e2e", "gateway", pids["gateway"], pool, meter_pids, self.tmp, "E-", STRIDE)
        await probe.call(
            "probe", redis_url=self.env["REDIS_URL"], channel=channel, prefix="E-", stride=STRIDE
        )
        try:
            result = await phase.run(send, drain_cap=scale.drain_cap_s, rate_offered=round(rate, 1))
        finally:
            seen = {int(k): float(t) for k, t in (await probe.call("probe_report"))["seen"]}
            await self.stack.close_pool(probes)
        # Split each delivery at the moments its delta was acknowledged by DynamoDB and
        # left the relay (seen on Redis by the probe).
        lat, k = phase.latencies, phase.keys
        width = max(max(writer.keys, default=-1), int(k.max(initial=-1))) + 1
        stamp = _per_key(writer.stamped, width)  # epoch ms, as the store wrote it
        ack = _per_key(writer.acked, width)
        published = _per_key(seen, width)
        result.update(
            write=_stats(np.asarray(writer.write_ms)),
            write_errors=dict(writer.errors),
            from_ack=_stats(_finite(lat - (ack - stamp)[k])),
            stages={
                "stamp_to_ack": _stats(_finite(ack - stamp)),
                "ack_to_relay_publish": _stats(_finite(published - ack)),
                "publish_to_client": _stats(_finite(lat + (stamp - published)[k])),
            },
        )
        self.phases["e2e"] = result
        self.results.update(
            e2e_p50_ms=result["p50_ms"],
            e2e_p99_ms=result["p99_ms"],
            e2e_max_ms=result["max_ms"],
            e2e_p50_ms_from_ack=result["from_ack"]["p50_ms"],
            e2e_p99_ms_from_ack=result["from_ack"]["p99_ms"],
            e2e_updates_per_s=result["rate_sent"],
            e2e_lost=result["lost"],
            clients=result["clients"],
        )
        _say(_line(result))

    async def _fanout(
        self,
        feed: WorklistFeed,
        pool: ClientPool,
        pids: dict[str, int],
        server: str,
        server_pid: int,
        rate: int,
        seconds: float,
    ) -> None:
        name = f"{'fanout' if server == 'gateway' else 'baseline'}_{rate}"
        prefix = f"{'F' if server == 'gateway' else 'B'}{rate}-"

        async def send() -> tuple[list[int], float]:
            total, elapsed = await inject(feed, prefix, rate, seconds)
            return list(range(total)), elapsed

        phase = Phase(name, server, server_pid, pool, pids, self.tmp, prefix)
        profiler = None
        if self.profile and server == "gateway":
            profiler = await self._start_profiler(server_pid, name)
        try:
            result = await phase.run(send, drain_cap=self.scale.drain_cap_s, rate_offered=rate)
        finally:
            if profiler is not None:
                self.phases[f"profile_{name}"] = await self._stop_profiler(*profiler)
        self.phases[name] = result
        _say(_line(result))

    # -- profiling --

    async def _start_profiler(
        self, pid: int, name: str
    ) -> tuple[asyncio.subprocess.Process, Path] | None:
        exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which(
            "py-spy"
        )
        if exe is None:
            self.notes.append("py-spy not found: no profile taken")
            return None
        path = self.out / f"gateway-{name}.pyspy.txt"
        argv = [exe, "record", "--pid", str(pid), "--rate", "250", "--format", "raw"]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            "--nonblocking",
            "--output",
            str(path),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self.stack.extra_pids.add(proc.pid)
        await asyncio.sleep(0.5)
        return proc, path

    async def _stop_profiler(self, proc: asyncio.subprocess.Process, path: Path) -> dict[str, Any]:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
        self.stack.extra_pids.discard(proc.pid)
        return summarize_profile(path)

    # -- 6. claims --

    async def claims(self, claimers: Claimers, rounds: int) -> None:
        """Rounds of CLAIMERS concurrent claims on one exam; the winner releases."""
        name = f"claims_{claimers.where}"
        prefix = f"K{claimers.where[0].upper()}-"
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        double = no_winner = 0
        async with claimers:
            exam = await ready_exam(claimers.store, prefix, 0)
            start = time.monotonic()
            for i in range(rounds):
                times, winners = await claimers.round(exam, errors)
                latencies.extend(times)
                if winners > 1:
                    double += winners - 1
                elif winners == 0:
                    no_winner += 1
                    exam = await ready_exam(claimers.store, prefix, i + 1)
            elapsed = time.monotonic() - start
        stats = _stats(np.asarray(latencies))
        self.phases[name] = {
            "measured_at": claimers.where,
            "rounds": rounds,
            "claimers": CLAIMERS,
            "claims": len(latencies),
            "double_claims": double,
            "rounds_without_winner": no_winner,
            "errors": dict(errors),
            "seconds": round(elapsed, 2),
            **stats,
        }
        _say(
            f"{name} ({claimers.where}): {rounds} rounds x {CLAIMERS}, p50 {stats['p50_ms']} ms, "
            f"p99 {stats['p99_ms']} ms, double claims {double}"
        )


async def ready_exam(store: ExamStore, prefix: str, n: int) -> Exam:
    """A fresh exam moved to COMPLETED: ready to be claimed."""
    exam, order, profile = synthetic_exam(prefix, n)
    await store.create_exam(exam, order, profile)
    for step in (ExamStatus.ARRIVED, ExamStatus.IN_PROGRESS, ExamStatus.COMPLETED):
        exam = await store.transition(exam.patient_id, exam.accession, step)
    return exam


def ws_claims_available() -> bool:
    """True once the gateway takes `claim` frames (and sessions authenticate)."""
    if not auth_available():
        return False
    protocol = importlib.import_module("gateway.protocol")
    return hasattr(protocol, "ClaimRequest")


class Claimers:
    """Several readers claiming one exam at once. `round` is the one place a claim is
    made; `StoreClaimers` claims at the store, `WsClaimers` over the gateway."""

    where = ""

    def __init__(self, store: ExamStore) -> None:
        self.store = store

    async def __aenter__(self) -> Claimers:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def round(self, exam: Exam, errors: Counter[str]) -> tuple[list[float], int]:
        """Every claimer claims `exam` at once; the winner (if any) releases it.

        Returns each claim's round trip (ms) and how many claimers won.
        """
        raise NotImplementedError


class StoreClaimers(Claimers):
    """Claims through `dynamo.claims.Claims` on the benchmark's own DynamoDB client."""

    where = "store"

    def __init__(self, store: ExamStore) -> None:
        super().__init__(store)
        self.claims = Claims(store)

    async def round(self, exam: Exam, errors: Counter[str]) -> tuple[list[float], int]:
        async def attempt(i: int) -> tuple[float, tuple[str, str] | None]:
            user = f"bench-reader-{i}"
            t0 = time.perf_counter()
            try:
                claim = await self.claims.claim(
                    exam.patient_id, exam.accession, user, f"Bench Reader {i}"
                )
            except ClaimError as exc:
                if exc.code != "conflict":
                    errors[exc.code] += 1
                return (time.perf_counter() - t0) * 1000, None
            return (time.perf_counter() - t0) * 1000, (user, claim.token)

        outcomes = await asyncio.gather(*(attempt(i) for i in range(CLAIMERS)))
        winners = [won for _, won in outcomes if won is not None]
        for user, token in winners:
            try:
                await self.claims.release(exam.patient_id, exam.accession, user, token)
            except ClaimError as exc:
                errors[f"release_{exc.code}"] += 1
        return [ms for ms, _ in outcomes], len(winners)


class WsClaimers(Claimers):
    """CLAIMERS authenticated sessions, one user each, claiming through the gateway."""

    where = "websocket"

    def __init__(self, url: str, store: ExamStore) -> None:
        super().__init__(store)
        self.url = url
        self.conns: list[ClientConnection] = []
        self._ids = itertools.count()

    async def __aenter__(self) -> WsClaimers:
        secret = os.environ["GATEWAY_JWT_SECRET"]
        for i in range(CLAIMERS):
            token = mint_bench_token(secret, sub=f"bench-claimer-{i}", tenant=TENANT)
            self.conns.append(await open_session(self.url, token))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
        self.conns.clear()

    async def _request(self, conn: ClientConnection, frame: dict[str, Any]) -> dict[str, Any]:
        await conn.send(orjson.dumps(frame).decode())
        while True:
            reply: dict[str, Any] = orjson.loads(await asyncio.wait_for(conn.recv(), 30))
            if reply.get("id") == frame["id"]:
                return reply

    async def round(self, exam: Exam, errors: Counter[str]) -> tuple[list[float], int]:
        async def attempt(conn: ClientConnection) -> tuple[float, ClientConnection | None]:
            request = {"type": "claim", "id": f"c{next(self._ids)}", "exam_id": exam.accession}
            t0 = time.perf_counter()
            reply = await self._request(conn, request)
            ms = (time.perf_counter() - t0) * 1000
            if reply.get("type") == "claimed":
                return ms, conn
            if reply.get("code") != "conflict":
                errors[str(reply.get("code"))] += 1
            return ms, None

        outcomes = await asyncio.gather(*(attempt(c) for c in self.conns))
        winners = [conn for _, conn in outcomes if conn is not None]
        for conn in winners:
            request = {"type": "release", "id": f"r{next(self._ids)}", "exam_id": exam.accession}
            reply = await self._request(conn, request)
            if reply.get("type") != "released":
                errors[f"release_{reply.get('code')}"] += 1
        return [ms for ms, _ in outcomes], len(winners)


def _gateway_connections(port: int) -> int | None:
    """What the gateway says it holds (its /metrics), when it says so."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("gateway_connections "):
            return int(float(line.split()[1]))
    return None


def _line(r: Mapping[str, Any]) -> str:
    return (
        f"{r['name']}: {r['clients']} clients, {r['rate_sent']}/s sent, "
        f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, max {r['max_ms']} ms, lost {r['lost']}, "
        f"{r['server']} {r['server_cpu_us_per_delivery']} us/delivery, "
        f"client peak {r['client_cpu_peak']:.0%}"
    )


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks -> the functions that held the most samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    if not path.exists():
        return {"samples": 0, "self": [], "inclusive": []}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[f, round(100 * n / total, 1)] for f, n in counter.most_common(top)]

    return {"samples": total, "file": path.name, "self": share(own), "inclusive": share(inclusive)}


# ---- report ---------------------------------------------------------------------------

REQUIRED = (
    "e2e_p50_ms",
    "e2e_p99_ms",
    "e2e_updates_per_s",
    "dynamo_ceiling_writes_per_s",
    "fanout_p99_ms_at_200",
    "fanout_p99_ms_at_1000",
    "fanout_lost",
    "clients",
    "gateway_cpu_us_per_delta",
    "baseline_cpu_us_per_delta",
    "max_connections",
    "kb_per_connection",
    "claim_p99_ms",
    "claim_rounds",
    "double_claims",
    "client_limited",
    "machine",
)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def finish(bench: Bench, started: float) -> dict[str, Any]:
    """The top-level figures from the phases."""
    r = bench.results
    p = bench.phases
    fan = {rate: p.get(f"fanout_{rate}", {}) for rate in FANOUT_RATES}
    base = {rate: p.get(f"baseline_{rate}", {}) for rate in FANOUT_RATES}
    data_phases = [v for k, v in p.items() if k == "e2e" or k.startswith(("fanout_", "baseline_"))]
    store_claims = p.get("claims_store", {})
    claims = p.get("claims_websocket") or store_claims
    r.update(
        claim_p50_ms=claims.get("p50_ms"),
        claim_p99_ms=claims.get("p99_ms"),
        claim_max_ms=claims.get("max_ms"),
        claim_rounds=claims.get("rounds"),
        claim_measured_at=claims.get("measured_at"),
        double_claims=sum(c.get("double_claims", 0) for c in (claims, store_claims) if c)
        if claims
        else None,
        claim_p50_ms_store=store_claims.get("p50_ms"),
        claim_p99_ms_store=store_claims.get("p99_ms"),
        claim_rounds_store=store_claims.get("rounds"),
        fanout_p50_ms_at_200=fan[200].get("p50_ms"),
        fanout_p99_ms_at_200=fan[200].get("p99_ms"),
        fanout_p50_ms_at_1000=fan[1000].get("p50_ms"),
        fanout_p99_ms_at_1000=fan[1000].get("p99_ms"),
        fanout_lost=sum(fan[rate].get("lost", 0) for rate in FANOUT_RATES),
        fanout_lost_at_200=fan[200].get("lost"),
        fanout_lost_at_1000=fan[1000].get("lost"),
        gateway_cpu_us_per_delta=fan[200].get("server_cpu_us_per_delivery"),
        gateway_cpu_us_per_delta_at_1000=fan[1000].get("server_cpu_us_per_delivery"),
        baseline_cpu_us_per_delta=base[200].get("server_cpu_us_per_delivery"),
        baseline_cpu_us_per_delta_at_1000=base[1000].get("server_cpu_us_per_delivery"),
        baseline_p50_ms_at_200=base[200].get("p50_ms"),
        baseline_p99_ms_at_200=base[200].get("p99_ms"),
        baseline_p99_ms_at_1000=base[1000].get("p99_ms"),
        baseline_lost=sum(base[rate].get("lost", 0) for rate in FANOUT_RATES),
        client_limited=any(ph.get("client_limited") for ph in data_phases),
        client_cpu_peak=max((ph.get("client_cpu_peak", 0.0) for ph in data_phases), default=0.0),
        other_cores_max=max(
            (ph.get("other_cores", 0.0) for ph in [*data_phases, p.get("ceiling", {})]),
            default=0.0,
        ),
        auth=auth_available(),
        mode=bench.scale.name,
        scale=asdict(bench.scale),
        gateway_client_queue=CLIENT_QUEUE,
        machine=machine(),
        duration_s=round(time.monotonic() - started, 1),
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        notes=bench.notes,
        phases=p,
    )
    for key in REQUIRED:
        r.setdefault(key, None)
    return r


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        text = f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    else:
        text = f"{value:,}" if isinstance(value, int) else str(value)
    return f"{text} {unit}".strip()


def _pair(stats: Mapping[str, Any] | None) -> str:
    if not stats:
        return "n/a"
    return f"{_fmt(stats.get('p50_ms'))} / {_fmt(stats.get('p99_ms'))}"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def _lt(value: float | None, limit: float) -> bool | None:
    return None if value is None else value < limit


def verdicts(r: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, measured, target, verdict) rows of the summary table."""
    return [
        *_verdicts(r),
        (
            f"HL7 over MLLP: messages/s, ACK p50 / p99 ({r.get('hl7_messages')} messages, "
            f"{r.get('hl7_connections')} connections)",
            f"{_fmt(r.get('hl7_messages_per_s'), '/s')}, "
            f"{_fmt(r.get('hl7_ack_p50_ms'))} / {_fmt(r.get('hl7_ack_p99_ms'), 'ms')}",
            "every message acknowledged AA once",
            "PASS"
            if r.get("hl7_refused") == 0 and r.get("hl7_accepted") == r.get("hl7_messages")
            else "MISS",
        ),
    ]


def _verdicts(r: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    scale = r["scale"]
    e2e_ok = _lt(r["e2e_p99_ms"], 150)
    if e2e_ok is not None:
        e2e_ok = e2e_ok and r.get("e2e_lost") == 0
    fan_ok = _lt(r["fanout_p99_ms_at_200"], 100)
    if fan_ok is not None:
        fan_ok = fan_ok and r.get("fanout_lost_at_200") == 0
    gw, base = r["gateway_cpu_us_per_delta"], r["baseline_cpu_us_per_delta"]
    ceiling = r["dynamo_ceiling_writes_per_s"]
    rate = r["e2e_updates_per_s"]
    rows = [
        (
            "DynamoDB Local write ceiling (Python writer)",
            _fmt(ceiling, "writes/s"),
            "~300 writes/s (reference)",
            "info",
        ),
        (
            "end-to-end write rate",
            _fmt(rate, "updates/s"),
            "the ceiling (>= 80 % of it)",
            _verdict(None if rate is None or not ceiling else rate >= 0.8 * ceiling),
        ),
        (
            f"end-to-end p50 / p99 / max, {r['clients']} clients",
            f"{_fmt(r['e2e_p50_ms'])} / {_fmt(r['e2e_p99_ms'])} / {_fmt(r.get('e2e_max_ms'))} ms",
            "p99 < 150 ms, nothing lost",
            _verdict(e2e_ok),
        ),
        (
            "end-to-end p50 / p99 from the write's acknowledgement",
            f"{_fmt(r.get('e2e_p50_ms_from_ack'))} / {_fmt(r.get('e2e_p99_ms_from_ack'))} ms",
            "p99 < 150 ms (the product's own definition)",
            _verdict(_lt(r.get("e2e_p99_ms_from_ack"), 150)),
        ),
        ("end-to-end lost deliveries", _fmt(r.get("e2e_lost")), "0", _verdict(None)),
        (
            "fan-out p50 / p99 at 200 updates/s",
            f"{_fmt(r['fanout_p50_ms_at_200'])} / {_fmt(r['fanout_p99_ms_at_200'])} ms",
            "p99 < 100 ms, nothing lost",
            _verdict(fan_ok),
        ),
        (
            "fan-out p50 / p99 at 1,000 updates/s",
            f"{_fmt(r['fanout_p50_ms_at_1000'])} / {_fmt(r['fanout_p99_ms_at_1000'])} ms",
            "(no target)",
            "info",
        ),
        (
            "fan-out lost deliveries (200/s + 1,000/s)",
            _fmt(r["fanout_lost"]),
            "0",
            _verdict(r["fanout_lost"] == 0),
        ),
        (
            "gateway CPU per delivered delta (200/s)",
            _fmt(gw, "us"),
            f"<= baseline ({_fmt(base, 'us')})",
            _verdict(None if gw is None or base is None else gw <= base),
        ),
        (
            "baseline CPU per delivered delta (200/s)",
            _fmt(base, "us"),
            "~14 us (reference)",
            "info",
        ),
        (
            "gateway / baseline CPU per delta at 1,000/s",
            f"{_fmt(r.get('gateway_cpu_us_per_delta_at_1000'))} / "
            f"{_fmt(r.get('baseline_cpu_us_per_delta_at_1000'))} us",
            "(no target)",
            "info",
        ),
        (
            "idle sessions held by one gateway",
            _fmt(r["max_connections"]),
            f">= {scale['idle_connections']:,}",
            _verdict(
                None
                if r["max_connections"] is None
                else r["max_connections"] >= scale["idle_connections"]
            ),
        ),
        (
            "memory per idle session",
            _fmt(r["kb_per_connection"], "KB"),
            "< 40 KB",
            _verdict(_lt(r["kb_per_connection"], 40)),
        ),
        (
            f"claim round trip p50 / p99 ({r.get('claim_measured_at')})",
            f"{_fmt(r.get('claim_p50_ms'))} / {_fmt(r['claim_p99_ms'])} ms",
            "p99 < 30 ms",
            _verdict(_lt(r["claim_p99_ms"], 30)),
        ),
        (
            "claim round trip p50 / p99 at the store (for comparison)",
            f"{_fmt(r.get('claim_p50_ms_store'))} / {_fmt(r.get('claim_p99_ms_store'))} ms",
            "(no target)",
            "info",
        ),
        (
            f"double claims in {_fmt(r['claim_rounds'])} rounds of {CLAIMERS}"
            + (
                f" (+ {r['claim_rounds_store']} at the store)"
                if r.get("claim_rounds_store")
                else ""
            ),
            _fmt(r["double_claims"]),
            "0",
            _verdict(None if r["double_claims"] is None else r["double_claims"] == 0),
        ),
        (
            "client-limited (a load client near 100 % of a core)",
            _fmt(r["client_limited"]),
            "no",
            _verdict(None if r["client_limited"] is None else not r["client_limited"]),
        ),
    ]
    return rows


def render_markdown(r: Mapping[str, Any]) -> str:
    m = r["machine"]
    s = r["scale"]
    out = [
        f"# Benchmark: {r['mode']} mode",
        "",
        f"{r['finished_at']} on {m['cores']} cores ({m['cpu_model'] or 'unknown CPU'}), "
        f"{m['memory_gb']} GB, Python {m['python']}; gateway, relay, Redis, DynamoDB Local "
        f"and load clients all on this machine. Took {r['duration_s']} s.",
        "",
    ]
    if r["mode"] != "full":
        out += [
            f"> **Reduced scale** ({r['mode']}): {s['clients']:,} clients (target: 1,000), "
            f"{s['idle_connections']:,} idle sessions (target: 5,000), {s['claim_rounds']:,} "
            "claim rounds (target: 1,000). Verdicts compare this scale with the product's "
            "targets; run `make bench` for the real thing.",
            "",
        ]
    out += ["| figure | measured | target | verdict |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in verdicts(r)]
    out += [
        "",
        "## Phases",
        "",
        "| phase | server | clients | offered /s | sent /s | deltas | delivered | lost "
        "| p50 ms | p99 ms | max ms | server CPU (cores) | server us/delivery "
        "| client peak (core) | others (cores) | frames | batches | closed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, ph in r["phases"].items():
        if "server" not in ph:
            continue
        share = ph["cpu_share"].get(ph["server"])
        out.append(
            f"| {key} | {ph['server']} | {ph['clients']:,} | {_fmt(ph['rate_offered'])} "
            f"| {_fmt(ph['rate_sent'])} | {ph['deltas']:,} | {ph['delivered']:,} "
            f"| {ph['lost']:,} | {_fmt(ph['p50_ms'])} | {_fmt(ph['p99_ms'])} "
            f"| {_fmt(ph['max_ms'])} | {_fmt(share)} | {_fmt(ph['server_cpu_us_per_delivery'])} "
            f"| {ph['client_cpu_peak']:.0%} | {_fmt(ph.get('other_cores'))} "
            f"| {ph['frames']:,} | {ph['batches']:,} "
            f"| {ph['closed_codes'] or '-'} |"
        )
    idle = r["phases"].get("idle", {})
    claims = r["phases"].get("claims_websocket", {})
    store_claims = r["phases"].get("claims_store", {})
    e2e = r["phases"].get("e2e", {})
    stages = e2e.get("stages", {})
    ceiling = r["phases"].get("ceiling", {})
    out += [
        "",
        "## How these were measured",
        "",
        f"- **Ceiling**: {ceiling.get('concurrency')} concurrent exam chains through "
        "`ExamStore` (create, then ARRIVED, IN_PROGRESS, COMPLETED, FINAL; each transition "
        f"reads then writes) for {s['ceiling_s']} s after {s['warmup_s']} s of unmeasured "
        "writes (DynamoDB Local's JIT warms up), on a table no relay reads. "
        f"Writer CPU share: {ceiling.get('cpu_share', {}).get('bench', 'n/a')} of a core.",
        "- **End to end**: the same writer paced at 90 % of the ceiling; latency = the "
        "client's receive time - `delta.updated_at`. The store stamps `updated_at` *before* "
        "DynamoDB acknowledges the write, so this overestimates the product's definition "
        "(write acknowledged -> received), which is shown on its own line: the writer notes "
        "when each write returned. Stages, p50 / p99 ms: stamp -> acknowledged "
        f"{_pair(stages.get('stamp_to_ack'))}; acknowledged -> published by the relay (a "
        f"Redis subscriber in the benchmark) {_pair(stages.get('ack_to_relay_publish'))}; "
        f"published -> received {_pair(stages.get('publish_to_client'))}.",
        "- **Fan-out**: deltas published with `WorklistFeed.publish` (the relay's own call) "
        "in 5 ms ticks, `updated_at` = publish time; unique exam ids, so every client must "
        "receive every delta. `lost` counts (delta, client) pairs missing after the drain "
        f"(at most {s['drain_cap_s']} s, or 5 s without progress).",
        "- **CPU per delivery**: the server process's user+system CPU over the phase "
        "(injection and drain) divided by the deliveries clients received. The baseline "
        "(`loadtest/baseline.py`: redis.asyncio pub/sub -> `websockets` `broadcast`, uvloop) "
        "got the same messages at the same rates and client count.",
        f"- **Idle sessions**: a fresh gateway process; each session opened, "
        f"{'authenticated, ' if r.get('auth') else ''}subscribed to its tenant's (empty) "
        f"feed and left idle, {IDLE_PER_TENANT} users per tenant over {idle.get('tenants')} "
        f"tenants; RSS growth / sessions held. RSS {idle.get('rss_before_mb')} -> "
        f"{idle.get('rss_after_mb')} MB for {idle.get('held')} sessions, opened in "
        f"{idle.get('open_s')} s.",
        f"- **Claims**: {CLAIMERS} users claim one exam at once, the winner releases it; "
        + (
            f"over the WebSocket ({CLAIMERS} authenticated sessions, `claim` -> `claimed` or "
            f"`conflict`): {claims.get('rounds')} rounds, "
            f"{claims.get('rounds_without_winner')} without a winner, errors "
            f"{claims.get('errors') or 'none'}. "
            if claims
            else "the gateway has no `claim` message yet. "
        )
        + f"At the store (`dynamo.claims.Claims`, one aioboto3 client, DynamoDB Local): "
        f"{store_claims.get('rounds')} rounds, {store_claims.get('rounds_without_winner')} "
        "without a winner.",
        "- Load clients: `websockets` asyncio clients, "
        f"{s['client_procs']} processes, compression off (so is the baseline's); "
        f"gateway `GATEWAY_CLIENT_QUEUE={r['gateway_client_queue']}`; "
        f"auth {'on' if r.get('auth') else 'off (gateway/auth.py not present yet)'}.",
    ]
    if r.get("other_cores_max", 0) > OTHERS_LIMIT:
        out.append(
            f"- **Disturbed**: processes the benchmark did not start used up to "
            f"{r['other_cores_max']:.2f} cores during a phase (`other_cores` per phase in "
            "bench.json); on a 2-core box every figure above is then pessimistic."
        )
    if r["client_limited"]:
        out.append(
            f"- **Client-limited**: a load-client process used up to "
            f"{r['client_cpu_peak']:.0%} of a core during a phase, so part of the latency "
            "is the clients' own queueing, and the server shared 2 cores with them."
        )
    out += [f"- {note}" for note in r["notes"]]
    for key, prof in r["phases"].items():
        if not key.startswith("profile_") or not prof.get("samples"):
            continue
        out += [
            "",
            f"## Gateway profile: {key[8:]} (py-spy, {prof['samples']} samples)",
            "",
            "| self % | function | | inclusive % | function |",
            "|---|---|---|---|---|",
            *(
                f"| {a[1]} | `{a[0]}` | | {b[1]} | `{b[0]}` |"
                for a, b in zip(prof["self"], prof["inclusive"], strict=False)
            ),
        ]
    return "\n".join(out) + "\n"


def render_plot(r: Mapping[str, Any], path: Path) -> None:
    """Latency percentiles against load (left) and CPU per delivery (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, (lat_ax, cpu_ax) = plt.subplots(1, 2, figsize=(12, 5), width_ratios=(3, 2))
    phases = r["phases"]
    series: dict[str, list[dict[str, Any]]] = {"gateway": [], "baseline": []}
    for key, ph in phases.items():
        if "server" in ph and ph.get("rate_offered") and key != "e2e":
            series[ph["server"]].append(ph)
    colors = {"gateway": "tab:blue", "baseline": "tab:gray"}
    for server, points in series.items():
        points.sort(key=lambda ph: ph["rate_offered"])
        for stat, style in (("p50_ms", ":"), ("p99_ms", "-"), ("max_ms", "--")):
            xy = [(ph["rate_offered"], ph[stat]) for ph in points if ph.get(stat) is not None]
            if xy:
                xs, ys = zip(*xy, strict=True)
                label = f"{server} fan-out {stat[:-3]}"
                lat_ax.plot(xs, ys, style, marker="o", color=colors[server], label=label)
        xy = [
            (ph["rate_offered"], ph["server_cpu_us_per_delivery"])
            for ph in points
            if ph.get("server_cpu_us_per_delivery") is not None
        ]
        if xy:
            xs, ys = zip(*xy, strict=True)
            cpu_ax.plot(xs, ys, "-", marker="o", color=colors[server], label=server)
    e2e = phases.get("e2e")
    if e2e and e2e.get("rate_sent"):
        marks = (("p50_ms", "v", e2e), ("p99_ms", "^", e2e), ("max_ms", "x", e2e))
        for stat, marker, source in marks:
            if source.get(stat) is not None:
                lat_ax.plot(
                    [e2e["rate_sent"]],
                    [source[stat]],
                    marker,
                    color="tab:red",
                    label=f"end-to-end {stat[:-3]} (from stamp)",
                )
        from_ack = e2e.get("from_ack", {})
        if from_ack.get("p99_ms") is not None:
            lat_ax.plot(
                [e2e["rate_sent"]],
                [from_ack["p99_ms"]],
                "^",
                mfc="none",
                color="tab:red",
                label="end-to-end p99 (from ack)",
            )
    lat_ax.axhline(100, color="tab:green", linewidth=0.8, linestyle="-.", label="fan-out target")
    lat_ax.axhline(150, color="tab:red", linewidth=0.8, linestyle="-.", label="end-to-end target")
    rates = sorted({round(ph["rate_offered"]) for pts in series.values() for ph in pts})
    if e2e and e2e.get("rate_sent"):
        rates = sorted({*rates, round(e2e["rate_sent"])})
    for ax in (lat_ax, cpu_ax):
        ax.set_xscale("log")
        ax.set_xticks(rates)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"updates per second, each to {r['clients']} clients")
        ax.grid(True, which="both", alpha=0.3)
    lat_ax.set_yscale("log")
    lat_ax.set_ylabel("latency (ms)")
    lat_ax.set_title("Latency against load")
    lat_ax.legend(fontsize=7, loc="best")
    cpu_ax.set_ylim(bottom=0)
    cpu_ax.set_ylabel("server CPU per delivered delta (us)")
    cpu_ax.set_title("CPU per delivery")
    cpu_ax.legend(fontsize=8)
    fig.suptitle(f"{r['mode']} mode, {r['machine']['cores']} cores, {r['finished_at']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- entry point ----------------------------------------------------------------------


async def run_bench(scale: Scale, stack: Stack, out: Path, profile: bool) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    started = time.monotonic()
    bench = Bench(scale, stack, out, profile)
    bench.tmp.mkdir(parents=True, exist_ok=True)
    timeline = bench.results.setdefault("timeline_s", {})

    def lap(step: str, since: float) -> float:
        now = time.monotonic()
        timeline[step] = round(now - since, 1)
        return now

    try:
        t = time.monotonic()
        main, ceiling_table = await bench.start()
        t = lap("start", t)
        await bench.idle()
        t = lap("idle", t)
        ceiling = await bench.ceiling(ceiling_table)
        t = lap("ceiling", t)
        await bench.deliveries(main, ceiling)
        t = lap("deliveries_and_websocket_claims", t)
        async with dynamodb_client(main) as client:
            store = ExamStore(client, main.table)
            rounds = scale.store_claim_rounds if ws_claims_available() else scale.claim_rounds
            await bench.claims(StoreClaimers(store), rounds)
        t = lap("store_claims", t)
        _say(f"HL7: {scale.hl7_messages} messages over 10 MLLP connections")
        bench.results.update(await hl7_phase(bench.env, scale.hl7_messages, 10, bench.stack.logs))
        lap("hl7", t)
    finally:
        shutil.rmtree(bench.tmp, ignore_errors=True)
    return finish(bench, started)


def write_results(results: Mapping[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_bytes(
        orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n"
    )
    markdown = render_markdown(results)
    (out / "bench.md").write_text(markdown)
    render_plot(results, out / "bench.png")
    _say("")
    _say(markdown)
    _say(f"wrote {out / 'bench.json'}, bench.md and bench.png")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="reduced scale, under 2 minutes")
    size.add_argument("--tiny", action="store_true", help="the test suite's scale")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway's fan-out")
    args = parser.parse_args(argv)
    scale = SCALES["tiny" if args.tiny else "quick" if args.quick else "full"]
    raise_nofile_limit()  # inherited by every child: the gateway holds thousands of sockets
    out: Path = args.out.resolve()
    stack = Stack(out / "logs")
    _say(f"benchmark, {scale.name} mode; logs in {out / 'logs'}")
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            results = runner.run(run_bench(scale, stack, out, args.profile))
    except (KeyboardInterrupt, asyncio.CancelledError):
        _say("interrupted; stopping everything")
        return 130
    finally:
        stack.stop()
    write_results(results, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
