"""The relay as an AWS Lambda function (DynamoDB Streams event source mapping).

Same normalizer and same feed as the worker: `handler(event, context)` turns the
batch's records into deltas and applies them to the Redis feed. Configure the mapping
with `FunctionResponseTypes: ["ReportBatchItemFailures"]`: on a failure the handler names
the first record it could not publish, so Lambda retries from there and nothing is lost
(what was already published comes again with the same versions and is dropped).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from dynamo.normalize import record_to_delta
from worklist_cache import CacheSettings, WorklistFeed, connect

log = logging.getLogger("dynamo.lambda")


async def _publish(records: list[dict[str, Any]], settings: CacheSettings) -> str | None:
    """Publish in order; return the sequence number of the first record that failed."""
    redis = connect(settings.redis_url)
    feed = WorklistFeed(redis, maxlen=settings.feed_maxlen, sharded=settings.pubsub == "sharded")
    try:
        for record in records:
            try:
                delta = record_to_delta(record)
                if delta is not None:
                    await feed.publish([delta])
            except Exception:
                log.exception("record %s failed", record.get("eventID"))
                return str(record["dynamodb"]["SequenceNumber"])
        return None
    finally:
        await redis.aclose()


def handler(event: dict[str, Any], context: object = None) -> dict[str, Any]:
    failed = asyncio.run(_publish(event.get("Records", []), CacheSettings()))
    return {"batchItemFailures": [] if failed is None else [{"itemIdentifier": failed}]}
