"""The relay as a long-lived worker process: `python -m dynamo.worker`.

Reads the table's stream and hands each batch of deltas to the worklist cache, and
reaps expired claims. Several workers may run at once: shard leases make one of them
the reader of each shard, and the reaper's writes are safe to race.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.exceptions import RedisError

from dynamo.claims import Claims
from dynamo.client import dynamodb_client, streams_client
from dynamo.deltas import ExamDelta
from dynamo.exceptions import StoreError
from dynamo.relay import StreamRelay
from dynamo.review import ReviewStore, Sampler
from dynamo.settings import DynamoSettings
from dynamo.sites import DEMO_TENANTS
from dynamo.store import ExamStore
from dynamo.table import wait_for_table
from service.logs import configure_logging
from service.runner import run_until_signalled
from worklist_cache import CacheSettings, RedisCheckpoints, WorklistFeed, connect

log = logging.getLogger("dynamo.worker")


class RelaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RELAY_")

    # Pause after an empty GetRecords; the most latency it adds to a change.
    poll_interval: float = 0.05
    # How often the shard list is re-read to find new (child) shards.
    discover_interval: float = 5.0
    # A shard lease's life; the holder renews it every third of that.
    lease_seconds: float = 15.0
    # How often expired claims are released and a lost cache is rebuilt (0: never).
    reap_interval: float = 5.0
    # Share of FINAL exams sampled into peer review, per tenant, and the sampling seed.
    review_rate: float = 0.05
    review_seed: int = 7
    # This worker's name in shard leases; host:pid when empty.
    node_name: str = ""
    log_level: str = "INFO"


async def rebuild(store: ExamStore, feed: WorklistFeed, tenant: str) -> int:
    """Refill a tenant's worklists from DynamoDB (GSI queries, never a Scan).

    Runs beside the live relay: both go through the feed's idempotent apply, so a
    change that races the rebuild lands by version whichever comes first, and no change
    can fall between the two.
    """
    exams = await store.open_exams(tenant)
    for start in range(0, len(exams), 200):
        await feed.publish([ExamDelta.from_exam(e) for e in exams[start : start + 200]])
    await feed.mark_built(tenant)
    return len(exams)


async def maintain_forever(
    claims: Claims, feed: WorklistFeed, tenants: list[str], interval: float
) -> None:
    """Rebuild the cache of a tenant whenever Redis lost it; release expired claims."""
    me = asyncio.current_task()
    while True:
        for tenant in tenants:
            # aiobotocore's retries can swallow a cancel (see dynamo/relay.py).
            if me is not None and me.cancelling():
                raise asyncio.CancelledError()
            try:
                if not await feed.is_built(tenant):
                    count = await rebuild(claims.store, feed, tenant)
                    log.info("rebuilt the worklists of %s from DynamoDB: %d exams", tenant, count)
                released = await claims.reap(tenant)
            except StoreError as exc:
                log.warning("maintenance of %s: %s", tenant, exc.code)
                continue
            except (RedisError, OSError) as exc:
                log.warning("maintenance of %s: redis %s", tenant, type(exc).__name__)
                continue
            if released:
                log.info("reaper released %d expired claims of %s", len(released), tenant)
        await asyncio.sleep(interval)


async def run_relay(
    relay_settings: RelaySettings, dynamo: DynamoSettings, cache: CacheSettings
) -> None:
    redis = connect(cache.redis_url)
    owner = relay_settings.node_name or f"{socket.gethostname()}:{os.getpid()}"
    try:
        async with dynamodb_client(dynamo) as ddb, streams_client(dynamo) as streams:
            arn = await wait_for_table(ddb, dynamo.table)
            lease_ms = int(relay_settings.lease_seconds * 1000)
            feed = WorklistFeed(redis, maxlen=cache.feed_maxlen, sharded=cache.pubsub == "sharded")
            store = ExamStore(ddb, dynamo.table)
            sampler = Sampler(
                feed,
                ReviewStore(store),
                rate=relay_settings.review_rate,
                seed=relay_settings.review_seed,
            )
            relay = StreamRelay(
                streams,
                arn,
                sampler,
                RedisCheckpoints(redis, arn, owner=owner, lease_ms=lease_ms),
                poll_interval=relay_settings.poll_interval,
                discover_interval=relay_settings.discover_interval,
                lease_interval=relay_settings.lease_seconds / 3,
            )
            log.info("relaying stream of table %s as %s", dynamo.table, owner)
            async with asyncio.TaskGroup() as group:
                group.create_task(relay.run(), name="relay")
                if relay_settings.reap_interval > 0:
                    claims = Claims(store)
                    tenants = [t.code for t in DEMO_TENANTS]
                    group.create_task(
                        maintain_forever(claims, feed, tenants, relay_settings.reap_interval),
                        name="maintenance",
                    )
    finally:
        await redis.aclose()


def main() -> None:
    settings = RelaySettings()
    configure_logging(settings.log_level)
    run_until_signalled(run_relay(settings, DynamoSettings(), CacheSettings()))


if __name__ == "__main__":
    main()
