"""The relay as a long-lived worker process: `python -m dynamo.worker`.

Reads the table's stream and hands each batch of deltas to the worklist cache.
"""

from __future__ import annotations

import logging

from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.asyncio import Redis

from dynamo.client import dynamodb_client, streams_client
from dynamo.relay import StreamRelay
from dynamo.settings import DynamoSettings
from dynamo.table import wait_for_table
from service.logs import configure_logging
from service.runner import run_until_signalled
from worklist_cache import CacheSettings, RedisCheckpoints, WorklistFeed

log = logging.getLogger("dynamo.worker")


class RelaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RELAY_")

    # Pause after an empty GetRecords; the most latency it adds to a change.
    poll_interval: float = 0.05
    # How often the shard list is re-read to find new (child) shards.
    discover_interval: float = 5.0
    log_level: str = "INFO"


async def run_relay(
    relay_settings: RelaySettings, dynamo: DynamoSettings, cache: CacheSettings
) -> None:
    redis = Redis.from_url(cache.redis_url)
    try:
        async with dynamodb_client(dynamo) as ddb, streams_client(dynamo) as streams:
            arn = await wait_for_table(ddb, dynamo.table)
            relay = StreamRelay(
                streams,
                arn,
                WorklistFeed(redis, maxlen=cache.feed_maxlen),
                RedisCheckpoints(redis, arn),
                poll_interval=relay_settings.poll_interval,
                discover_interval=relay_settings.discover_interval,
            )
            log.info("relaying stream of table %s", dynamo.table)
            await relay.run()
    finally:
        await redis.aclose()


def main() -> None:
    settings = RelaySettings()
    configure_logging(settings.log_level)
    run_until_signalled(run_relay(settings, DynamoSettings(), CacheSettings()))


if __name__ == "__main__":
    main()
