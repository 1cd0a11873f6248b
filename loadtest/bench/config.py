"""The benchmark's scales and constants, and its one way to say what it is doing."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from devstack.services import ROOT

__all__ = [
    "CLAIMERS",
    "CLAIM_FANOUT_RATE",
    "CLIENT_LIMIT",
    "CLIENT_QUEUE",
    "E2E_RATE",
    "FANOUT_RATES",
    "IDLE_PER_TENANT",
    "OTHERS_LIMIT",
    "RESULTS",
    "SCALES",
    "STANDIN_NICE",
    "TENANT",
    "WHOLE_FEED",
    "Scale",
    "say",
]


RESULTS = ROOT / "loadtest" / "results"
TENANT = "northwind"
# Idle sessions belong to groups of this many users, each with an empty feed (so their
# snapshots cost nothing). One radiology group rarely has more users online. (A storm of
# one tenant's sessions has its own phase: `loadtest.bench.storm`.)
IDLE_PER_TENANT = 100
WHOLE_FEED: dict[str, Any] = {"statuses": []}  # every status of the tenant
# 25/s is the product's "no backlog" load (CPU <= the baseline's), 200/s its batching
# load (CPU <= half the baseline's); 1,000/s saturates the box.
FANOUT_RATES = (25, 200, 1000)
# End to end is measured at this write rate (the target's), with write-through; 90 % of
# the DynamoDB Local ceiling is measured too, as information.
E2E_RATE = 100
# Claims are also measured while every client receives this many updates per second.
CLAIM_FANOUT_RATE = 25
CLAIMERS = 20
# A client process above this share of one core during a phase limited what was measured.
CLIENT_LIMIT = 0.85
# Frames the gateway may queue per client before evicting it (4001); raised from the
# default 2,000 so a saturated 2-core box measures delay rather than evictions.
CLIENT_QUEUE = 10_000
# DynamoDB Local stands in for a remote service (AWS's DynamoDB takes none of a
# gateway's CPU): in the e2e runs, whose measure starts at its acknowledgement, its
# session runs at this lower CPU priority (nice), so that on 2 cores it does not take
# turns with the processes measured after it (0: as others).
STANDIN_NICE = int(os.environ.get("BENCH_STANDIN_NICE", "10"))
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
    fanout_s: tuple[float, float, float]  # seconds of injection at 25/s, 200/s and 1,000/s
    claim_rounds: int
    store_claim_rounds: int  # the same rounds at the store, for comparison
    drain_cap_s: float  # the longest a phase waits for its last deliveries
    writer_concurrency: int = 16
    hl7_messages: int = 400  # HL7 orders and status changes sent over MLLP
    # One tenant's cache with (open, closed) exams, closed ones over 30 days: snapshot and
    # resume cost as history grows (`loadtest.snapshot_cost`).
    snapshot_tenant: tuple[int, int] = (5_000, 100_000)
    # CPU per delivery with 1, 2 and 3 gateway nodes on a real Redis Cluster
    # (`loadtest.bench.cluster`); the suite's tiny run leaves it to tests/test_cluster.py.
    cluster: bool = True
    cluster_s: float = 8.0  # seconds of injection at 25/s per cluster round
    # Sessions of one tenant dropped at once and reconnected (`loadtest.bench.storm`);
    # measured at half this and at this.
    storm_sessions: int = 5_000


SCALES = {
    "full": Scale(
        name="full",
        clients=1000,
        client_procs=2,
        idle_connections=10_000,
        idle_procs=4,
        warmup_s=8,
        ceiling_s=10,
        e2e_s=10,
        # 750 updates at 25/s, as the side-by-side run: its p99 (gateway against
        # the baseline) is the worst ~7 deltas' deliveries, not the worst 2 of 200.
        fanout_s=(30, 8, 2),
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
        fanout_s=(5, 5, 2),
        cluster_s=5,
        claim_rounds=100,
        store_claim_rounds=50,
        drain_cap_s=12,
        storm_sessions=1_000,
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
        fanout_s=(1.5, 1.5, 0.5),
        claim_rounds=10,
        store_claim_rounds=5,
        drain_cap_s=10,
        hl7_messages=40,
        snapshot_tenant=(200, 2_000),
        cluster=False,
        storm_sessions=40,
    ),
}


def say(message: str) -> None:
    print(message, flush=True)
