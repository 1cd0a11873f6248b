"""The phases, in order: idle sessions, the DynamoDB ceiling, end to end, fan-out
(gateway and baseline) and claims over the WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from redis.asyncio import Redis

from devstack import ManagedProcess, free_port, start_dynamodb_local, start_redis, wait_for_port
from dynamo.client import dynamodb_client
from dynamo.directory import DirectoryStore, Person, Tenant
from dynamo.settings import DynamoSettings
from dynamo.store import ExamStore
from dynamo.table import ensure_table
from loadtest.bench.claimers import Claimers, WsClaimers, ws_claims_available
from loadtest.bench.config import (
    CLAIM_FANOUT_RATE,
    CLAIMERS,
    CLIENT_QUEUE,
    E2E_RATE,
    FANOUT_RATES,
    IDLE_PER_TENANT,
    STANDIN_NICE,
    TENANT,
    WHOLE_FEED,
    Scale,
    say,
)
from loadtest.bench.measure import Phase, drain, finite, open_pool, per_key, phase_line
from loadtest.bench.meters import (
    CpuMeter,
    gateway_connections,
    gateway_metric,
    percentiles,
    settle,
    summarize_profile,
)
from loadtest.bench.stack import Stack
from loadtest.bench.workload import STRIDE, ExamWriter, inject, ready_exam, synthetic_exam
from loadtest.loadclients import (
    ClientPool,
)
from worklist_cache import WorklistFeed, keys

__all__ = ["Bench"]

# The fan-out rate with no backlog, where the gateway is measured side by side with the
# baseline (`Bench._side_by_side`).
NO_BACKLOG_RATE = 25

# The gateway's counters (`/metrics`) whose growth over a delivery phase it reports.
PHASE_METRICS = {
    "gc_full": 'gateway_gc_collections_total{generation="2"}',
    "gc_pause_s": 'gateway_gc_pause_seconds_total{generation="2"}',
    "feed_late": "gateway_feed_late_messages_total",
    "stretched": "gateway_flush_windows_stretched_total",
}

# The start of a full-row delta frame of the load clients' subscription ("s1").
FULL_ROW_PREFIX = '{"type":"delta","sub":"s1",'


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
    gateway_port: int = 0  # (the gateway of the delivery phases, for its /metrics)
    standin: ManagedProcess | None = None  # DynamoDB Local

    @property
    def tmp(self) -> Path:
        return self.out / "tmp"

    def spawn_gateway(self, name: str, port: int) -> ManagedProcess:
        env = {**self.env, "GATEWAY_PORT": str(port)}
        return self.stack.spawn(name, [sys.executable, "-m", "gateway"], env)

    async def start_baseline(self, name: str) -> tuple[ManagedProcess, str]:
        """The bare baseline server (`loadtest.baseline`) on the tenant's feed, ready:
        the process and its WebSocket URL."""
        port = free_port()
        argv = [sys.executable, "-m", "loadtest.baseline", "--port", str(port)]
        argv += ["--redis-url", self.env["REDIS_URL"], "--tenant", TENANT]
        baseline = self.stack.spawn(name, argv, self.env)
        await asyncio.to_thread(wait_for_port, port, 30, baseline)
        return baseline, f"ws://127.0.0.1:{port}/"

    async def start(self) -> tuple[DynamoSettings, DynamoSettings]:
        redis_proc, redis_url = start_redis()
        self.stack.adopt(redis_proc)
        ddb_proc, endpoint = start_dynamodb_local()
        self.stack.adopt(ddb_proc)
        self.standin = ddb_proc
        self.pids.update(redis=redis_proc.pid, dynamodb=ddb_proc.pid)
        main = DynamoSettings(endpoint_url=endpoint, table="bench-worklist")
        ceiling = DynamoSettings(endpoint_url=endpoint, table="bench-ceiling")
        async with dynamodb_client(main) as client:
            await ensure_table(client, main.table)
            await ensure_table(client, ceiling.table)
        self.main = main
        await seed_bench_people(main, [TENANT], claimers=CLAIMERS)
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
        say(f"redis {redis_url}, DynamoDB Local {endpoint}, relay pid {relay.pid}")
        return main, ceiling

    # -- 1. idle sessions --

    async def idle(self) -> None:
        scale = self.scale
        count = -(-scale.idle_connections // IDLE_PER_TENANT)
        tenants = [f"idle-{i:03d}" for i in range(count)]
        await seed_bench_people(self.main, tenants)
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
            server_count = gateway_connections(port)
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
        say(f"idle: {held} sessions held, {kb or 0:.1f} KB each ({opened['failed']} failed)")
        await self._idle_baseline()

    async def _idle_baseline(self) -> None:
        """The bare `websockets` server (loadtest/baseline.py) holding as many idle
        connections from the same load clients: its RSS growth per connection, the
        floor the gateway's figure is compared with."""
        scale = self.scale
        baseline, url = await self.start_baseline("baseline-idle")
        pool = await self.stack.pool("idle-baseline", scale.idle_procs)
        try:
            await open_pool(pool, url, 20, tenant=TENANT, view=None, gateway=False)
            await pool.call("close")
            await asyncio.sleep(1.0)
            proc = psutil.Process(baseline.pid)
            before = proc.memory_info().rss
            await open_pool(
                pool, url, scale.idle_connections, tenant=TENANT, view=None, gateway=False
            )
            await asyncio.sleep(2.0)
            held = sum(r["open"] for r in await pool.call("progress", timeout=30))
            after = proc.memory_info().rss
            await pool.call("close", timeout=120)
        finally:
            await self.stack.close_pool(pool)
            await self.stack.stop_one(baseline)
        kb = round((after - before) / 1024 / held, 2) if held else None
        self.phases["idle"].update(baseline_held=held, baseline_kb_per_connection=kb)
        self.results["baseline_kb_per_connection"] = kb
        say(f"idle baseline: {held} connections held, {kb or 0:.1f} KB each")

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
            "write": percentiles(np.asarray(writer.write_ms)),
            "cpu_share": {n: round(v / wall, 3) for n, v in cpu.items()},
            "other_cores": round(meter.others, 2),
        }
        self.results["dynamo_ceiling_writes_per_s"] = round(rate, 1)
        say(
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
        self.gateway_port = port
        url = f"ws://127.0.0.1:{port}/ws"
        opened = await open_pool(pool, url, scale.clients, tenant=TENANT, view=WHOLE_FEED)
        say(f"{opened['opened']} clients subscribed to the whole {TENANT} feed")
        if opened["failed"]:
            self.notes.append(
                f"{opened['failed']} attempts to open a load client failed (retried): "
                f"{'; '.join(opened['errors'])}"
            )
        pids = self._meter_pids("gateway", gateway.pid, pool)
        quiet = [gateway.pid, *pool.pids]
        await self._warm_up(store, pool)
        await self._e2e_runs(store, feed, pool, pids, ceiling_rate, quiet, url)
        for rate, seconds in zip(FANOUT_RATES, scale.fanout_s, strict=True):
            if rate == NO_BACKLOG_RATE:
                await self._side_by_side(feed, pool, pids, gateway.pid, url, seconds)
                continue
            await settle(quiet)
            await open_pool(pool, url, scale.clients, tenant=TENANT, view=WHOLE_FEED)
            await self._fanout(feed, pool, pids, "gateway", gateway.pid, rate, seconds)
        # The cycle collector's full collections over the e2e and fan-out phases: each
        # stops every client's deliveries for as long as it lasts (wall time).
        full = '{generation="2"}'
        runs = await asyncio.to_thread(gateway_metric, port, f"gateway_gc_collections_total{full}")
        longest = await asyncio.to_thread(
            gateway_metric, port, f"gateway_gc_pause_max_seconds{full}"
        )
        self.results["gateway_gc_full_collections"] = None if runs is None else int(runs)
        self.results["gateway_gc_pause_max_ms"] = (
            None if longest is None else round(longest * 1000, 1)
        )
        # How often the gateway read its feed behind (> 100 ms after Redis stamped a
        # message), and how often it stretched a flush window for it, over the same.
        for key, metric in (
            ("gateway_feed_messages", "gateway_deltas_in_total"),
            ("gateway_feed_late_messages", "gateway_feed_late_messages_total"),
            ("gateway_flush_windows_stretched", "gateway_flush_windows_stretched_total"),
        ):
            value = await asyncio.to_thread(gateway_metric, port, metric)
            self.results[key] = None if value is None else int(value)
        if ws_claims_available():
            await settle(quiet)
            await open_pool(pool, url, scale.clients, tenant=TENANT, view=WHOLE_FEED)
            await self._claims_under_fanout(feed, url, store, scale.claim_rounds)
        await pool.call("close", timeout=120)
        if ws_claims_available():
            await settle([gateway.pid])
            await self.claims(WsClaimers(url, store), scale.claim_rounds)
        else:
            self.notes.append("The gateway has no `claim` message yet: claims at the store only.")
        await self.stack.stop_one(gateway)

    async def _side_by_side(
        self,
        feed: WorklistFeed,
        pool: ClientPool,
        pids: dict[str, int],
        gateway_pid: int,
        url: str,
        seconds: float,
    ) -> None:
        """The no-backlog rate, where the gateway and the bare baseline cost and wait
        about the same (p99 within 1-2 ms of each other, either ahead): two rounds
        each, side by side in the order gateway, baseline, baseline, gateway, so that
        neither meets the box in another state (the baseline's phases otherwise run
        minutes later), and the figures pooled over both rounds (`_pool_rounds`)."""
        scale, rate = self.scale, NO_BACKLOG_RATE
        quiet = [gateway_pid, *pool.pids]
        await settle(quiet)
        await open_pool(pool, url, scale.clients, tenant=TENANT, view=WHOLE_FEED)
        first = await self._fanout(feed, pool, pids, "gateway", gateway_pid, rate, seconds)
        await pool.call("close", timeout=120)
        # The baseline forwards every message of the tenant's channel: the relay's
        # stream copies of the e2e writes must be over.
        await settle([self.pids["relay"]], cap=scale.drain_cap_s * 2)
        rounds = await self._baseline_rounds(feed, pool, rate, seconds, 2)
        await settle(quiet)
        await open_pool(pool, url, scale.clients, tenant=TENANT, view=WHOLE_FEED)
        last = await self._fanout(feed, pool, pids, "gateway", gateway_pid, rate, seconds, 2)
        self.results["side_by_side_at_25"] = {
            "order": [first.name, *(r.name for r in rounds), last.name],
            "gateway": _pool_rounds([first, last]),
            "baseline": _pool_rounds(rounds),
        }

    async def _baseline_phases(self, feed: WorklistFeed, pool: ClientPool) -> None:
        scale = self.scale
        # The baseline forwards every message of the tenant's channel, where the relay
        # may still be publishing the stream's copies of the e2e writes (the gateway
        # drops those by version; the baseline cannot): wait until the relay is quiet.
        waited = await settle([self.pids["relay"]], cap=scale.drain_cap_s * 2)
        say(f"baseline: waited {waited:.1f} s for the relay to be quiet")
        await pool.call("close", timeout=120)
        for rate, seconds in zip(FANOUT_RATES, scale.fanout_s, strict=True):
            if rate != NO_BACKLOG_RATE:  # (that one ran side by side: `_side_by_side`)
                await self._baseline_rounds(feed, pool, rate, seconds)

    async def _baseline_rounds(
        self, feed: WorklistFeed, pool: ClientPool, rate: int, seconds: float, rounds: int = 1
    ) -> list[Phase]:
        """The baseline's fan-out at `rate`, `rounds` times, on a fresh server with fresh
        connections: the bare broadcast falls seconds behind at 200/s by design (p99
        12-23 s), and what it still had to write would be the next rate's start (one
        run's baseline was still writing when its 1,000/s phase began, and delivered
        none of that phase)."""
        baseline, url = await self.start_baseline(f"baseline-{rate}")
        done = []
        try:
            pids = self._meter_pids("baseline", baseline.pid, pool)
            for n in range(1, rounds + 1):
                await open_pool(
                    pool, url, self.scale.clients, tenant=TENANT, view=None, gateway=False
                )
                await settle([baseline.pid, *pool.pids])
                done.append(
                    await self._fanout(feed, pool, pids, "baseline", baseline.pid, rate, seconds, n)
                )
            await pool.call("close", timeout=120)
        finally:
            await self.stack.stop_one(baseline)
        return done

    async def _warm_up(self, store: ExamStore, pool: ClientPool) -> None:
        """One write end to end, so the relay has found its shard before timing starts."""
        await pool.call("phase", prefix="W-", stride=STRIDE)
        exam, order, profile = synthetic_exam("W-", 0)
        await store.create_exam(exam, order, profile)
        conns = sum(r["open"] for r in await pool.call("progress"))
        if not await drain(pool, conns, cap=60, stall=60):
            raise RuntimeError("no delta reached the clients within 60 s: is the relay up?")

    @contextlib.contextmanager
    def _standin_yields(self) -> Iterator[None]:
        """DynamoDB Local at `STANDIN_NICE` while the e2e runs run, whose measure starts
        at its acknowledgement: a stand-in for a remote service, it yields the 2 cores
        to the relay, Redis, the gateway and the clients measured after it. Elsewhere
        (claims) its round trip is inside the measure, and it takes turns as an equal."""
        standin = self.standin
        applied = bool(standin and STANDIN_NICE and standin.session_nice(STANDIN_NICE))
        self.results["standin_nice_e2e"] = STANDIN_NICE if applied else 0
        try:
            yield
        finally:
            if standin and applied and not standin.session_nice(0):
                self.notes.append(
                    f"DynamoDB Local stayed at nice {STANDIN_NICE} after the e2e runs "
                    "(raising a session's priority again needs CAP_SYS_NICE)."
                )

    async def _e2e_runs(
        self,
        store: ExamStore,
        feed: WorklistFeed,
        pool: ClientPool,
        pids: dict[str, int],
        ceiling_rate: float,
        quiet: list[int],
        url: str,
    ) -> None:
        """End to end at the target's E2E_RATE with write-through (the figure), then
        without it (the relay alone), then at 90 % of the ceiling (information)."""
        # A little above the target, so the rate sent (writes / the run's seconds, which
        # end when the last write is acknowledged) is not below it: at 1.02x the full run
        # sent 98.1/s, the writes in flight at the end and their tail taking the rest.
        target = E2E_RATE * 1.06
        # Unmeasured writes at that rate first: DynamoDB Local's JIT, the relay's reader
        # and the tables of the gateway and the clients warm up here, not in whichever
        # run comes first (the first of two equal runs was the slower by 100s of ms).
        await settle(quiet)
        runs = (
            ("e2e", "E-", target, True),
            ("e2e_relay_only", "ER-", target, False),
            ("e2e_ceiling", "EC-", 0.9 * ceiling_rate, True),
        )
        with self._standin_yields():
            warm = ExamWriter(store, "EW-", feed=feed)
            await warm.run(min(5.0, self.scale.e2e_s), target, 2 * self.scale.writer_concurrency)
            for name, prefix, rate, through in runs:
                await settle(quiet)
                await open_pool(pool, url, self.scale.clients, tenant=TENANT, view=WHOLE_FEED)
                await self._e2e(store, feed if through else None, pool, pids, rate, name, prefix)
        self.results.update(
            e2e_write_through=True,
            e2e_relay_only_p50_ms_from_ack=self.phases["e2e_relay_only"]["from_ack"]["p50_ms"],
            e2e_relay_only_p99_ms_from_ack=self.phases["e2e_relay_only"]["from_ack"]["p99_ms"],
            e2e_relay_only_updates_per_s=self.phases["e2e_relay_only"]["rate_sent"],
            e2e_ceiling_p50_ms_from_ack=self.phases["e2e_ceiling"]["from_ack"]["p50_ms"],
            e2e_ceiling_p99_ms_from_ack=self.phases["e2e_ceiling"]["from_ack"]["p99_ms"],
            e2e_ceiling_p99_ms=self.phases["e2e_ceiling"]["p99_ms"],
            e2e_ceiling_updates_per_s=self.phases["e2e_ceiling"]["rate_sent"],
            e2e_ceiling_lost=self.phases["e2e_ceiling"]["lost"],
        )

    async def _e2e(
        self,
        store: ExamStore,
        feed: WorklistFeed | None,
        pool: ClientPool,
        pids: dict[str, int],
        rate: float,
        name: str,
        prefix: str,
    ) -> None:
        """Exams written through the store at `rate`, each delivered to every client;
        with `feed`, the writes are published by write-through (else by the relay)."""
        scale = self.scale
        # A Redis subscriber in a process of its own: the writer keeps this one busy.
        probes = await self.stack.pool("probe", 1)
        probe = probes.procs[0]
        channel = keys.channel(TENANT)
        # Enough chains that the pacer, not a chain's wait for its previous write, sets
        # the pace while the box is busy fanning out.
        writer = ExamWriter(store, prefix, feed=feed)

        async def send() -> tuple[list[int], float]:
            elapsed = await writer.run(scale.e2e_s, rate, 2 * scale.writer_concurrency)
            return writer.keys, elapsed

        meter_pids = {**pids, "probe": probe.pid}
        phase = Phase(name, "gateway", pids["gateway"], pool, meter_pids, self.tmp, prefix, STRIDE)
        await probe.call(
            "probe", redis_url=self.env["REDIS_URL"], channel=channel, prefix=prefix, stride=STRIDE
        )
        marks = await self._gateway_marks()
        try:
            result = await phase.run(send, drain_cap=scale.drain_cap_s, rate_offered=round(rate, 1))
        finally:
            report = await probe.call("probe_report")
            seen = {int(k): float(t) for k, t in report["seen"]}
            sizes = {int(k): int(n) for k, n in report.get("sizes", [])}
            await self.stack.close_pool(probes)
        # Split each delivery at the moments its delta was acknowledged by DynamoDB and
        # first published (seen on Redis by the probe: by write-through, or the relay).
        lat, k = phase.latencies, phase.keys
        width = max(max(writer.keys, default=-1), int(k.max(initial=-1))) + 1
        stamp = per_key(writer.stamped, width)  # epoch ms, as the store wrote it
        ack = per_key(writer.acked, width)
        published = per_key(seen, width)
        # What each delivery would have cost as the whole row: the frame the hub splices
        # from the published message (`{"type":"delta","sub":"s1",` + message[1:]).
        full = per_key({key: n + len(FULL_ROW_PREFIX) - 1 for key, n in sizes.items()}, width)
        full_sizes = finite(full[k]) if k.size else np.zeros(0)
        delivered = result["delivered"]
        result.update(
            write_through=feed is not None,
            bytes_per_delivery=round(result["bytes"] / delivered, 1) if delivered else None,
            bytes_per_delivery_full_rows=(
                round(float(full_sizes.mean()), 1) if full_sizes.size else None
            ),
            write=percentiles(np.asarray(writer.write_ms)),
            write_errors=dict(writer.errors),
            from_ack=percentiles(finite(lat - (ack - stamp)[k])),
            stages={
                "stamp_to_ack": percentiles(finite(ack - stamp)),
                "ack_to_publish": percentiles(finite(published - ack)),
                "publish_to_client": percentiles(finite(lat + (stamp - published)[k])),
            },
        )
        result.update(await self._gateway_since(marks))
        self.phases[name] = result
        say(phase_line(result))
        if name != "e2e":
            return
        self.results.update(
            e2e_p50_ms=result["p50_ms"],
            e2e_p99_ms=result["p99_ms"],
            e2e_max_ms=result["max_ms"],
            e2e_p50_ms_from_ack=result["from_ack"]["p50_ms"],
            e2e_p99_ms_from_ack=result["from_ack"]["p99_ms"],
            e2e_updates_per_s=result["rate_sent"],
            e2e_lost=result["lost"],
            bytes_per_delivery=result["bytes_per_delivery"],
            bytes_per_delivery_full_rows=result["bytes_per_delivery_full_rows"],
            e2e_patches=result["patches"],
            e2e_patch_mismatches=result["patch_mismatches"],
            clients=result["clients"],
        )

    async def _fanout(
        self,
        feed: WorklistFeed,
        pool: ClientPool,
        pids: dict[str, int],
        server: str,
        server_pid: int,
        rate: int,
        seconds: float,
        round_: int = 1,
    ) -> Phase:
        """One fan-out phase at `rate`; its result is `phases[name]` (a second round at
        the same rate is `<name>_2`)."""
        name = f"{'fanout' if server == 'gateway' else 'baseline'}_{rate}"
        prefix = f"{'F' if server == 'gateway' else 'B'}{rate}-"
        if round_ > 1:
            name, prefix = f"{name}_{round_}", f"{prefix}{round_}-"

        async def send() -> tuple[list[int], float]:
            total, elapsed = await inject(feed, prefix, rate, seconds)
            return list(range(total)), elapsed

        phase = Phase(name, server, server_pid, pool, pids, self.tmp, prefix)
        marks = await self._gateway_marks() if server == "gateway" else None
        profiler = None
        if self.profile and server == "gateway":
            profiler = await self._start_profiler(server_pid, name)
        try:
            result = await phase.run(send, drain_cap=self.scale.drain_cap_s, rate_offered=rate)
        finally:
            if profiler is not None:
                self.phases[f"profile_{name}"] = await self._stop_profiler(*profiler)
        if server == "gateway":
            result.update(await self._gateway_since(marks))
        self.phases[name] = result
        say(phase_line(result))
        return phase

    async def _gateway_marks(self) -> dict[str, float] | None:
        """The gateway's counters a phase reports the growth of (`PHASE_METRICS`)."""
        port, marks = self.gateway_port, {}
        for key, metric in PHASE_METRICS.items():
            value = await asyncio.to_thread(gateway_metric, port, metric)
            if value is None:
                return None
            marks[key] = value
        return marks

    async def _gateway_since(self, before: dict[str, float] | None) -> dict[str, Any]:
        """A phase's full collections and their pause in all (ms): each stops every
        client's deliveries, so one in a phase of a few hundred deltas is its tail; and
        the feed messages the gateway read more than 100 ms after Redis stamped them
        (it was behind: short of CPU) and the flush windows it stretched for them."""
        after = await self._gateway_marks()
        if before is None or after is None:
            return dict.fromkeys(("gc_full", "gc_pause_ms", "feed_late", "stretched"))
        grew = {key: after[key] - before[key] for key in after}
        return {
            "gc_full": int(grew["gc_full"]),
            "gc_pause_ms": round(grew["gc_pause_s"] * 1000, 1),
            "feed_late": int(grew["feed_late"]),
            "stretched": int(grew["stretched"]),
        }

    async def _claims_under_fanout(
        self, feed: WorklistFeed, url: str, store: ExamStore, rounds: int
    ) -> None:
        """Claim rounds over the WebSocket while every client receives
        CLAIM_FANOUT_RATE updates per second (fresh exams, so none is stale)."""
        stop = asyncio.Event()

        async def fan_out() -> int:
            second = 0
            while not stop.is_set():
                await inject(feed, f"FC{second}-", CLAIM_FANOUT_RATE, 1.0)
                second += 1
            return second

        task = asyncio.create_task(fan_out(), name="claims-fan-out")
        try:
            await self.claims(WsClaimers(url, store), rounds, name="claims_websocket_fanout")
        finally:
            stop.set()
            seconds = await task
        self.phases["claims_websocket_fanout"].update(
            fanout_per_s=CLAIM_FANOUT_RATE, fanout_clients=self.scale.clients, fanout_s=seconds
        )

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

    async def claims(self, claimers: Claimers, rounds: int, name: str = "") -> None:
        """Rounds of CLAIMERS concurrent claims on one exam; the winner releases."""
        name = name or f"claims_{claimers.where}"
        # KW-, KS-, KWF-: each phase claims exams of its own.
        prefix = "K" + "".join(w[0].upper() for w in name.split("_")[1:]) + "-"
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        double = no_winner = 0
        async with claimers:
            exam = await ready_exam(claimers.store, prefix, 0)
            before = await claimers.counters()
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
            after = await claimers.counters()
        stats = percentiles(np.asarray(latencies))
        # Where a claim's time went, mean per claim on the server (gate, DynamoDB, the
        # handler); the round trip's mean minus the handler's is the socket and the
        # event loop (reading the frame, waiting for the loop, writing the reply).
        spent = {k: after[k] - before.get(k, 0.0) for k in after}
        handled = spent.get("requests_claim", 0.0)
        server: dict[str, Any] = {}
        if handled:
            server = {
                "claims": int(handled),
                "gated": int(spent.get("claims_gated", 0)),
                "at_dynamodb": int(handled - spent.get("claims_gated", 0)),
                **{
                    f"{what}_mean_ms": round(spent.get(f"claim_{what}_us", 0) / handled / 1000, 2)
                    for what in ("gate", "store", "handled")
                },
                "outside_handler_mean_ms": round(
                    float(np.mean(latencies)) - spent.get("claim_handled_us", 0) / handled / 1000,
                    2,
                ),
            }
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
            **({"time_split": server} if server else {}),
        }
        say(
            f"{name} ({claimers.where}): {rounds} rounds x {CLAIMERS}, p50 {stats['p50_ms']} ms, "
            f"p99 {stats['p99_ms']} ms, double claims {double}"
            + (f"; server: {server}" if server else "")
        )


async def seed_bench_people(
    settings: DynamoSettings, tenants: list[str], *, claimers: int = 0
) -> None:
    """The directory's people the load clients log in as (the gateway trusts the
    directory): one admin reader per tenant (every session of a pool is that person),
    and one person per claimer."""
    entries: list[Any] = []
    for tenant in tenants:
        entries.append(Tenant(code=tenant, name=f"Bench {tenant}"))
        entries.append(
            Person(tenant=tenant, sub="bench-reader", name="Bench Reader", roles=("admin",))
        )
        entries.extend(
            Person(tenant=tenant, sub=f"bench-claimer-{i}", name=f"Claimer {i}", roles=("admin",))
            for i in range(claimers)
        )
    async with dynamodb_client(settings) as client:
        await DirectoryStore(ExamStore(client, settings.table)).apply(entries, actor="bench")


def _pool_rounds(rounds: list[Phase]) -> dict[str, Any]:
    """Rounds of one server at one rate as one: latency percentiles over every
    (delta, client) of all of them, CPU per delivery over all their deliveries."""
    latencies = np.concatenate([r.latencies for r in rounds])
    delivered = sum(r.result["delivered"] for r in rounds)
    cpu_s = sum(r.result["server_cpu_s"] for r in rounds)
    return {
        **percentiles(latencies),
        "rounds": len(rounds),
        "deltas": sum(r.result["deltas"] for r in rounds),
        "delivered": delivered,
        "lost": sum(r.result["lost"] for r in rounds),
        "server_cpu_s": round(cpu_s, 2),
        "server_cpu_us_per_delivery": round(cpu_s / delivered * 1e6, 2) if delivered else None,
    }
