"""`python -m loadtest.bench`: run every phase, stop everything, write the results."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from dynamo.client import dynamodb_client
from dynamo.store import ExamStore
from loadtest import assignment, snapshot_cost
from loadtest.bench.claimers import StoreClaimers, ws_claims_available
from loadtest.bench.cluster import measure_cluster
from loadtest.bench.config import RESULTS, SCALES, Scale, say
from loadtest.bench.phases import Bench
from loadtest.bench.plot import render_plot
from loadtest.bench.report import finish, render_markdown
from loadtest.bench.stack import Stack
from loadtest.bench.storm import storm_phase
from loadtest.hl7bench import hl7_phase
from loadtest.loadclients import (
    client_kind,
    raise_nofile_limit,
)

__all__ = ["main", "run_bench", "write_results"]


PHASES = (
    "idle",
    "storm",
    "ceiling",
    "deliveries",
    "store_claims",
    "hl7",
    "snapshot",
    "cluster",
)


async def run_bench(
    scale: Scale, stack: Stack, out: Path, profile: bool, only: frozenset[str] | None = None
) -> dict[str, Any]:
    """Every phase in order; `only` names the phases to run (the rest are skipped, and
    the report says nothing of them). The deliveries need the ceiling, so they run it."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    started = time.monotonic()
    bench = Bench(scale, stack, out, profile)
    bench.tmp.mkdir(parents=True, exist_ok=True)
    timeline = bench.results.setdefault("timeline_s", {})

    def wanted(*steps: str) -> bool:
        return only is None or any(step in only for step in steps)

    def lap(step: str, since: float) -> float:
        now = time.monotonic()
        timeline[step] = round(now - since, 1)
        return now

    try:
        t = time.monotonic()
        main, ceiling_table = await bench.start()
        t = lap("start", t)
        if wanted("idle"):
            await bench.idle()
            t = lap("idle", t)
        if wanted("storm"):
            await storm_phase(bench)
            t = lap("storm", t)
        if wanted("ceiling", "deliveries"):
            ceiling = await bench.ceiling(ceiling_table)
            t = lap("ceiling", t)
        if wanted("deliveries"):
            await bench.deliveries(main, ceiling)
            t = lap("deliveries_and_websocket_claims", t)
        if wanted("store_claims"):
            async with dynamodb_client(main) as client:
                store = ExamStore(client, main.table)
                ws = ws_claims_available() and wanted("deliveries")
                rounds = scale.store_claim_rounds if ws else scale.claim_rounds
                await bench.claims(StoreClaimers(store), rounds)
            t = lap("store_claims", t)
        if wanted("hl7"):
            say(f"HL7: {scale.hl7_messages} messages over 10 MLLP connections")
            hl7 = await hl7_phase(bench.env, scale.hl7_messages, 10, bench.stack.logs)
            bench.results.update(hl7)
            t = lap("hl7", t)
        if wanted("snapshot"):
            opened, closed = scale.snapshot_tenant
            say(f"snapshot and resume cost: one tenant, {opened} open and {closed} closed exams")
            cost = await snapshot_cost.measure(opened, closed, days=30.0, runs=50)
            bench.results.update(
                snapshot_large_tenant=cost,
                snapshot_p99_ms_large_tenant=max(v["p99_ms"] for v in cost["views"].values()),
            )
            t = lap("snapshot_cost", t)
        if scale.cluster and wanted("cluster"):
            say("Redis Cluster: CPU per delivery with 1, 2 and 3 gateway nodes")
            bench.results.update(await measure_cluster(scale, out))
            lap("cluster", t)
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
    say("")
    say(markdown)
    say(f"wrote {out / 'bench.json'}, bench.md and bench.png")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(argv: Sequence[str] | None = None) -> int:
    from loadtest import bench  # the package's docstring is the help text

    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=bench.__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="reduced scale, under 2 minutes")
    size.add_argument("--tiny", action="store_true", help="the test suite's scale")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the gateway's fan-out and the storm"
    )
    parser.add_argument(
        "--only",
        type=lambda v: frozenset(p.strip() for p in v.split(",") if p.strip()),
        help=f"comma-separated phases to run, of: {', '.join(PHASES)} (default: all)",
    )
    args = parser.parse_args(argv)
    if args.only is not None and not args.only <= set(PHASES):
        parser.error(f"unknown phase(s): {', '.join(sorted(args.only - set(PHASES)))}")
    try:
        client = client_kind()
    except ValueError as exc:
        parser.error(str(exc))
    scale = SCALES["tiny" if args.tiny else "quick" if args.quick else "full"]
    raise_nofile_limit()  # inherited by every child: the gateway holds thousands of sockets
    out: Path = args.out.resolve()
    stack = Stack(out / "logs")
    say(f"benchmark, {scale.name} mode, {client} load clients; logs in {out / 'logs'}")
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            results = runner.run(run_bench(scale, stack, out, args.profile, args.only))
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("interrupted; stopping everything")
        return 130
    finally:
        stack.stop()
    write_results(results, out)
    if args.only is not None:
        return 0
    # Not a phase: pure Python, no server, a few seconds; the same files as
    # `python -m loadtest.assignment` (the default day, free picking against push).
    say("assignment simulation: free picking against push on the default day")
    assignment.main(["--out", str(out)])
    return 0
