"""What a snapshot and a resume cost a tenant with a long history.

    python -m loadtest.snapshot_cost [--open N] [--closed N] [--days D] [--runs N]

Starts a throwaway redis-server (`devstack.start_redis`), fills one tenant through the
feed's own apply (`WorklistFeed.publish`, as the relay does) with `--open` open exams
and `--closed` closed ones (FINAL, AMENDED, CANCELLED) scheduled over the last `--days`
days, in random order, and then times, `--runs` times each, from the client:

    all states        every state, every site, no other filter (limit 500)
    all states, CT    every state, one modality and one subspecialty (limit 500)
    open, neuro       the default open states, one subspecialty (limit 500)
    resume members    the membership a resume reads (`recover`, up to 5,000 ids)

It prints p50/p99 ms per view, what the first snapshot answered (rows, total and, where
the code has it, `total_capped`), how many exams the cache holds and Redis's
`used_memory`, then a JSON summary (`--json` for only the JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from devstack import start_redis
from dynamo.deltas import ExamDelta
from dynamo.models import now_ms
from dynamo.states import OPEN_STATES, ExamStatus, Modality, Priority
from worklist_cache import WorklistFeed, keys
from worklist_cache.views import View

__all__ = ["main", "measure"]

TENANT = "history"
SITES = ["H-GEN", "H-ORT", "H-IMG"]
SUBSPECIALTIES = ["neuro", "body", "msk", "chest"]
HOUR_MS = 3_600_000
_OPEN = [s for s in ExamStatus if s in OPEN_STATES]
_CLOSED = [s for s in ExamStatus if s not in OPEN_STATES]

VIEWS: dict[str, View] = {
    "all states": View(statuses=list(ExamStatus)),
    "all states, CT": View(
        statuses=list(ExamStatus), modalities=[Modality.CT], subspecialties=["neuro"]
    ),
    "open, neuro": View(subspecialties=["neuro"]),
}


def delta(n: int, status: ExamStatus, scheduled_at: int, rng: random.Random) -> ExamDelta:
    return ExamDelta(
        op="upsert",
        tenant=TENANT,
        site=rng.choice(SITES),
        exam_id=f"H{n:08d}",
        version=1,
        status=status,
        priority=rng.choice(list(Priority)),
        modality=rng.choice(list(Modality)),
        procedure="CT head without contrast",
        body_part="HEAD",
        subspecialty=rng.choice(SUBSPECIALTIES),
        mrn=f"TST{n:07d}",
        patient_name="TESTPATIENT^ALPHA",
        scheduled_at=scheduled_at,
        tat_due_at=scheduled_at + rng.choice([1, 4, 24]) * HOUR_MS,
        updated_at=scheduled_at,
    )


async def fill(feed: WorklistFeed, opened: int, closed: int, days: float, seed: int) -> None:
    rng = random.Random(seed)
    now = now_ms()
    span = int(days * 24 * HOUR_MS)
    deltas = [delta(n, rng.choice(_OPEN), now - rng.randrange(HOUR_MS), rng) for n in range(opened)]
    deltas += [
        delta(opened + n, rng.choice(_CLOSED), now - rng.randrange(span), rng)
        for n in range(closed)
    ]
    rng.shuffle(deltas)
    for start in range(0, len(deltas), 1000):
        await feed.publish(deltas[start : start + 1000])


async def timed(call: Callable[[], Awaitable[Any]], runs: int) -> tuple[float, float, Any]:
    first = await call()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await call()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return statistics.median(times), p99, first


async def measure(
    opened: int, closed: int, days: float, runs: int, seed: int = 1
) -> dict[str, Any]:
    proc, url = start_redis()
    redis = Redis.from_url(url)
    try:
        feed = WorklistFeed(redis)
        t0 = time.perf_counter()
        await fill(feed, opened, closed, days, seed)
        filled_s = time.perf_counter() - t0
        info = await redis.info("memory")
        out: dict[str, Any] = {
            "open": opened,
            "closed": closed,
            "closed_over_days": days,
            "fill_s": round(filled_s, 1),
            "cached_exams": await redis.hlen(keys.exams(TENANT)),
            "used_memory_mb": round(int(info["used_memory"]) / 2**20, 1),
            "views": {},
        }
        for name, view in VIEWS.items():

            def snap(view: View = view) -> Awaitable[Any]:
                return feed.snapshot(TENANT, view, limit=500)

            p50, p99, first = await timed(snap, runs)
            out["views"][name] = {
                "p50_ms": round(p50, 2),
                "p99_ms": round(p99, 2),
                "rows": len(first.rows),
                "total": first.total,
                "total_capped": getattr(first, "total_capped", None),
            }
        epoch = (await feed.snapshot(TENANT, limit=1)).epoch

        def recover() -> Awaitable[Any]:
            return feed.recover(TENANT, VIEWS["all states"], epoch, "0-0", limit=1)

        p50, p99, got = await timed(recover, runs)
        out["views"]["resume members"] = {
            "p50_ms": round(p50, 2),
            "p99_ms": round(p99, 2),
            "rows": len(got.members),
        }
        return out
    finally:
        await redis.aclose()
        proc.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.snapshot_cost", description=__doc__)
    parser.add_argument("--open", type=int, default=5_000, help="open exams")
    parser.add_argument("--closed", type=int, default=100_000, help="closed exams")
    parser.add_argument("--days", type=float, default=30.0, help="closed ones over this span")
    parser.add_argument("--runs", type=int, default=50, help="timings per view")
    parser.add_argument("--json", action="store_true", help="print only the JSON summary")
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.open, args.closed, args.days, args.runs))
    if not args.json:
        print(
            f"{result['open']} open, {result['closed']} closed over {result['closed_over_days']}"
            f" days: {result['cached_exams']} exams cached, used_memory"
            f" {result['used_memory_mb']} MB (filled in {result['fill_s']} s)"
        )
        for name, v in result["views"].items():
            extra = "".join(
                f" {k}={v[k]}" for k in ("rows", "total", "total_capped") if v.get(k) is not None
            )
            print(f"  {name:16} p50 {v['p50_ms']:8.2f} ms  p99 {v['p99_ms']:8.2f} ms {extra}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
