"""Fan-out on a real Redis Cluster: server CPU per delivered delta with 1, 2 and 3
gateway nodes (`cluster_cpu_us_per_delta_by_nodes`, keyed "1", "2", "3").

A local three-master cluster (`devstack.cluster`), DynamoDB Local for the directory, and
N gateway processes with `CACHE_REDIS_CLUSTER=true` and `CACHE_PUBSUB=sharded`. The same
number of load clients subscribe to the whole feed of one tenant, spread evenly over the
N nodes; deltas go through the feed's apply script (as the relay publishes them) at a
fixed rate, each node count twice, interleaved (the figure is the mean): 25/s, the
no-backlog rate, where each delta is one write to each client, so
what a delivery costs does not hang on how a busy node's flush window happens to batch
(at 200/s the 1-node figure swung between 3.3 and 4.9 µs from one run to the next).
The figure is the CPU all gateway processes used during the phase divided by
the deltas delivered to clients: flat from 1 to 3 nodes means a node costs no more per
delivery when others share the tenant's channel (each node SSUBSCRIBEs on the master
that owns the tenant's slot). One tenant, so one master carries the traffic.

`python -m loadtest.bench.cluster [--quick | --tiny]` prints the results as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import orjson
import psutil

from devstack import free_port, start_dynamodb_local, wait_for_port
from devstack.cluster import start_redis_cluster
from dynamo.client import dynamodb_client
from dynamo.settings import DynamoSettings
from dynamo.table import ensure_table
from loadtest.bench.config import RESULTS, SCALES, TENANT, WHOLE_FEED, Scale, say
from loadtest.bench.measure import Phase
from loadtest.bench.meters import settle
from loadtest.bench.phases import seed_bench_people
from loadtest.bench.stack import Stack
from loadtest.bench.workload import inject
from loadtest.loadclients import raise_nofile_limit
from worklist_cache import WorklistFeed, connect

__all__ = ["cluster_cpu_us_per_delta_by_nodes", "measure_cluster"]

NODES = (1, 2, 3)
RATE = 25  # deltas per second into the tenant's feed
# Each node count is measured this many times, interleaved (1, 2, 3, 1, 2, 3): the figure
# is their mean (one 8 s run's figure moved by 15 % from one run to the next).
ROUNDS = 2


def _cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def measure_cluster(scale: Scale, out: Path) -> dict[str, Any]:
    """Run the phase for 1, 2 and 3 nodes; returns the figure and each run's details."""
    stack = Stack(out / "logs")
    tmp = out / "tmp-cluster"
    tmp.mkdir(parents=True, exist_ok=True)
    cluster = await asyncio.to_thread(start_redis_cluster)
    try:
        ddb_proc, endpoint = await asyncio.to_thread(start_dynamodb_local)
        stack.adopt(ddb_proc)
        settings = DynamoSettings(endpoint_url=endpoint, table="bench-cluster")
        async with dynamodb_client(settings) as client:
            await ensure_table(client, settings.table)
        await seed_bench_people(settings, [TENANT])
        secret = secrets.token_hex(32)
        os.environ["GATEWAY_JWT_SECRET"] = secret  # the load clients mint tokens with it
        env = {
            "REDIS_URL": cluster.url,
            "CACHE_REDIS_CLUSTER": "true",
            "CACHE_PUBSUB": "sharded",
            "DYNAMO_ENDPOINT_URL": endpoint,
            "DYNAMO_TABLE": settings.table,
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_JWT_SECRET": secret,
            "GATEWAY_CLIENT_QUEUE": "10000",
            "GATEWAY_LOG_LEVEL": "WARNING",
        }
        redis = connect(cluster.url, cluster=True)
        feed = WorklistFeed(redis, sharded=True)
        pool = await stack.pool("cluster", scale.client_procs)
        by_nodes: dict[str, float | None] = {}
        runs: dict[str, Any] = {}
        try:
            rounds: dict[str, list[dict[str, Any]]] = {str(n): [] for n in NODES}
            for round_no in range(ROUNDS):
                for nodes in NODES:
                    run = await _run(stack, env, pool, feed, tmp, scale, nodes, round_no)
                    rounds[str(nodes)].append(run)
                    say(
                        f"cluster, {nodes} gateway node(s), round {round_no + 1}: "
                        f"{run['cpu_us_per_delivery']} us of gateway CPU per delivery, "
                        f"{run['delivered']} delivered, lost {run['lost']}, "
                        f"p99 {run['p99_ms']} ms"
                    )
            for key, done in rounds.items():
                figures = [r["cpu_us_per_delivery"] for r in done]
                measured = [f for f in figures if f is not None]
                # The rounds' mean: each node count measured in every round, interleaved.
                by_nodes[key] = round(sum(measured) / len(measured), 2) if measured else None
                runs[key] = {**done[-1], "cpu_us_per_delivery_by_round": figures}
        finally:
            await stack.close_pool(pool)
            await redis.aclose()
    finally:
        stack.stop()
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "cluster_cpu_us_per_delta_by_nodes": by_nodes,
        "cluster_runs": runs,
        "cluster_setup": {
            "masters": 3,
            "tenant": TENANT,
            "clients": scale.clients,
            "rate": RATE,
            "rounds": ROUNDS,
            "seconds": scale.cluster_s,
            "pubsub": "sharded",
        },
    }


async def _run(
    stack: Stack,
    env: dict[str, str],
    pool: Any,
    feed: WorklistFeed,
    tmp: Path,
    scale: Scale,
    nodes: int,
    round_no: int = 0,
) -> dict[str, Any]:
    gateways = []
    for i in range(nodes):
        port = free_port()
        proc = stack.spawn(
            f"cluster-gateway{nodes}-{i}-r{round_no}",
            [sys.executable, "-m", "gateway"],
            {
                **env,
                "GATEWAY_PORT": str(port),
                "GATEWAY_NODE_NAME": f"bench-{nodes}-{i}-r{round_no}",
            },
        )
        await asyncio.to_thread(wait_for_port, port, 30, proc)
        gateways.append((proc, f"ws://127.0.0.1:{port}/ws"))
    try:
        secret = env["GATEWAY_JWT_SECRET"]
        opened = 0
        for i, (_, url) in enumerate(gateways):
            share = scale.clients // nodes + (1 if i < scale.clients % nodes else 0)
            reply = await pool.open(url, share, tenant=TENANT, view=WHOLE_FEED, secret=secret)
            opened += reply["opened"]
        pids = [proc.pid for proc, _ in gateways]
        await settle([*pids, *pool.pids])
        meter_pids = {f"gateway{i}": pid for i, pid in enumerate(pids)}
        meter_pids.update({f"client{i}": pid for i, pid in enumerate(pool.pids)})
        prefix = f"C{nodes}R{round_no}-"  # (a later round's exams are new ones)
        phase = Phase(f"cluster_{nodes}", "gateway0", pids[0], pool, meter_pids, tmp, prefix)

        async def send() -> tuple[list[int], float]:
            total, elapsed = await inject(feed, prefix, RATE, scale.cluster_s)
            return list(range(total)), elapsed

        before = {pid: _cpu_seconds(pid) for pid in pids}
        result = await phase.run(send, drain_cap=scale.drain_cap_s, rate_offered=RATE)
        used = {pid: _cpu_seconds(pid) - before[pid] for pid in pids}
        await pool.call("close", timeout=120)
    finally:
        for proc, _ in gateways:
            await stack.stop_one(proc)
    delivered = result["delivered"]
    total_cpu = sum(used.values())
    return {
        "nodes": nodes,
        "clients": opened,
        "delivered": delivered,
        "lost": result["lost"],
        "complete": result["complete"],
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "gateway_cpu_s": round(total_cpu, 3),
        "gateway_cpu_s_by_node": [round(used[pid], 3) for pid in pids],
        "cpu_us_per_delivery": round(total_cpu / delivered * 1e6, 2) if delivered else None,
        "client_cpu_peak": result["client_cpu_peak"],
        "client_limited": result["client_limited"],
        "other_cores": result["other_cores"],
    }


async def cluster_cpu_us_per_delta_by_nodes(scale: Scale, out: Path) -> dict[str, float | None]:
    """The figure alone: {"1": us, "2": us, "3": us} (None where nothing was delivered)."""
    figure: dict[str, float | None] = (await measure_cluster(scale, out))[
        "cluster_cpu_us_per_delta_by_nodes"
    ]
    return figure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench.cluster")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="reduced scale")
    size.add_argument("--tiny", action="store_true", help="the test suite's scale")
    parser.add_argument("--out", type=Path, default=RESULTS, help="logs folder")
    args = parser.parse_args(argv)
    scale = SCALES["tiny" if args.tiny else "quick" if args.quick else "full"]
    raise_nofile_limit()
    result = asyncio.run(measure_cluster(scale, args.out.resolve()))
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
