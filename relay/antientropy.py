"""Compare every tenant's worklist cache with DynamoDB: `python -m relay.antientropy`.

    python -m relay.antientropy [--tenant T ...] [--repair] [--grace SECONDS]

Prints, per tenant, the exams the cache is missing, holds at an older version (stale) or
holds although DynamoDB no longer has them in scope (extra), by accession; `--repair`
applies DynamoDB's state to the cache through the relay's idempotent apply (clients get
the updates, leaves and removes as live deltas). The worker runs the same check every
`RELAY_ANTIENTROPY_INTERVAL` seconds. Exit status: 0 when the caches agree (or were
repaired), 1 when a difference was found and left, 2 on a usage error.

Settings as the worker's (`REDIS_URL`, `DYNAMO_*`, `RELAY_CLOSED_RETENTION_HOURS`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from dynamo.client import dynamodb_client
from dynamo.settings import DynamoSettings
from dynamo.store import ExamStore
from relay.worker import RelaySettings, known_tenants, pipeline
from worklist_cache import CacheSettings, WorklistFeed, connect
from worklist_cache.rebuild import Divergence

__all__ = ["main", "run"]


def _report(result: Divergence, repaired: bool) -> str:
    lines = [
        f"{result.tenant}: {result.compared} exams in scope; missing {len(result.missing)}, "
        f"stale {len(result.stale)}, extra {len(result.extra)}"
        + (f"; repaired {result.repaired}" if repaired else "")
        + (f"; {result.unreadable} unreadable index items" if result.unreadable else "")
    ]
    for kind in ("missing", "stale", "extra"):
        ids = getattr(result, kind)
        if ids:
            lines.append(f"  {kind}: {' '.join(ids)}")
    return "\n".join(lines)


async def run(
    tenants: list[str],
    *,
    repair: bool,
    grace: float,
    relay: RelaySettings,
    dynamo: DynamoSettings,
    cache: CacheSettings,
) -> int:
    redis = connect(cache.redis_url, cluster=cache.redis_cluster)
    feed = WorklistFeed(redis, maxlen=cache.feed_maxlen, sharded=cache.pubsub == "sharded")
    found = 0
    try:
        async with dynamodb_client(dynamo) as ddb:
            store = ExamStore(ddb, dynamo.table)
            line = pipeline(store, feed, relay)
            for tenant in tenants or await known_tenants(store, feed):
                result = await line.rebuilder.check(tenant, repair=repair, grace=grace)
                print(_report(result, repair), flush=True)
                found += result.total
    finally:
        await redis.aclose()
    return 1 if found and not repair else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relay.antientropy", description=__doc__)
    parser.add_argument("--tenant", action="append", default=[], help="only this tenant")
    parser.add_argument("--repair", action="store_true", help="apply DynamoDB's state")
    parser.add_argument(
        "--grace",
        type=float,
        default=None,
        help="seconds a difference may be in flight (default RELAY_ANTIENTROPY_GRACE)",
    )
    args = parser.parse_args(argv)
    relay = RelaySettings()
    grace = relay.antientropy_grace if args.grace is None else args.grace
    return asyncio.run(
        run(
            args.tenant,
            repair=args.repair,
            grace=grace,
            relay=relay,
            dynamo=DynamoSettings(),
            cache=CacheSettings(),
        )
    )


if __name__ == "__main__":
    sys.exit(main())
