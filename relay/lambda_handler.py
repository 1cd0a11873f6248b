"""The relay as an AWS Lambda function (DynamoDB Streams event source mapping).

The worker's very path (`relay.worker.pipeline` and `relay.stream.deliver`): records are
normalized, those that do not normalize are parked as dead records, the rest are applied
to the Redis feed once the tenant's cache is built, and sampled FINAL exams are pooled
for peer review. Configure the mapping with `FunctionResponseTypes:
["ReportBatchItemFailures"]`: when the batch cannot be delivered the handler names its
first record, so Lambda retries it whole and nothing is lost (what was already applied
comes again with the same versions and is dropped). Settings come from the same
environment variables as the worker's (`REDIS_URL`, `DYNAMO_*`, `RELAY_*`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from dynamo.client import dynamodb_client
from dynamo.settings import DynamoSettings
from dynamo.store import ExamStore
from relay.stream import deliver
from relay.worker import RelaySettings, pipeline
from worklist_cache import CacheSettings, WorklistFeed, connect

log = logging.getLogger("relay.lambda")


async def _deliver(
    records: list[dict[str, Any]],
    cache: CacheSettings,
    dynamo: DynamoSettings,
    relay: RelaySettings,
) -> str | None:
    """Deliver the batch; the sequence number of its first record if that failed."""
    if not records:
        return None
    redis = connect(cache.redis_url, cluster=cache.redis_cluster)
    feed = WorklistFeed(redis, maxlen=cache.feed_maxlen, sharded=cache.pubsub == "sharded")
    try:
        async with dynamodb_client(dynamo) as ddb:
            line = pipeline(ExamStore(ddb, dynamo.table), feed, relay)
            try:
                published, parked = await deliver(records, line.sink, line.dead_letters, "lambda")
            except Exception as exc:
                # The type only: a message may quote a record's values.
                log.error("batch of %d records failed (%s)", len(records), type(exc).__name__)
                return str(records[0]["dynamodb"]["SequenceNumber"])
            log.info(
                "delivered %d deltas; parked %d records; pooled %d reviews",
                published,
                parked,
                line.sampler.pooled,
            )
        return None
    finally:
        await redis.aclose()


def handler(event: dict[str, Any], context: object = None) -> dict[str, Any]:
    failed = asyncio.run(
        _deliver(event.get("Records", []), CacheSettings(), DynamoSettings(), RelaySettings())
    )
    return {"batchItemFailures": [] if failed is None else [{"itemIdentifier": failed}]}
