"""The table's definition: keys, two GSIs, streams with both images."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from dynamo import keys

log = logging.getLogger("dynamo.table")


def table_definition(name: str) -> dict[str, Any]:
    def gsi(index: str, pk: str, sk: str) -> dict[str, Any]:
        return {
            "IndexName": index,
            "KeySchema": [
                {"AttributeName": pk, "KeyType": "HASH"},
                {"AttributeName": sk, "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "ALL"},
        }

    attrs = ["PK", "SK", "GSI1PK", "GSI1SK", "GSI2PK", "GSI2SK"]
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [{"AttributeName": a, "AttributeType": "S"} for a in attrs],
        "KeySchema": [
            {"AttributeName": "PK", "KeyType": "HASH"},
            {"AttributeName": "SK", "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [
            gsi(keys.GSI1, "GSI1PK", "GSI1SK"),
            gsi(keys.GSI2, "GSI2PK", "GSI2SK"),
        ],
        "StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    }


async def ensure_table(client: Any, name: str, timeout: float = 30.0) -> str:
    """Create the table unless it exists; wait for ACTIVE; return its stream ARN."""
    try:
        await client.create_table(**table_definition(name))
    except client.exceptions.ResourceInUseException:
        pass
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        desc = (await client.describe_table(TableName=name))["Table"]
        if desc["TableStatus"] == "ACTIVE" and desc.get("LatestStreamArn"):
            return str(desc["LatestStreamArn"])
        if loop.time() > deadline:
            raise TimeoutError(f"table {name} not ACTIVE after {timeout:.0f}s")
        await asyncio.sleep(0.2)


async def stream_arn(client: Any, name: str) -> str:
    desc = (await client.describe_table(TableName=name))["Table"]
    arn = desc.get("LatestStreamArn")
    if not arn:
        raise RuntimeError(f"table {name} has no stream enabled")
    return str(arn)


async def list_shards(streams: Any, arn: str) -> list[dict[str, Any]]:
    """Every shard a stream lists now (DescribeStream, paginated), oldest first."""
    shards: list[dict[str, Any]] = []
    start: str | None = None
    while True:
        kwargs: dict[str, Any] = {"StreamArn": arn}
        if start:
            kwargs["ExclusiveStartShardId"] = start
        desc = (await streams.describe_stream(**kwargs))["StreamDescription"]
        shards.extend(desc.get("Shards", []))
        start = desc.get("LastEvaluatedShardId")
        if not start:
            return shards


async def wait_for_table(client: Any, name: str, timeout: float | None = None) -> str:
    """Wait until the table exists and streams (another process creates it); its stream ARN.

    Retries with capped backoff; `timeout=None` waits for as long as it takes, as a
    worker started before the table should.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    backoff = 0.2
    while True:
        try:
            return await stream_arn(client, name)
        except Exception as exc:  # table not created yet, DynamoDB still starting
            if deadline is not None and loop.time() > deadline:
                raise TimeoutError(f"table {name} not ready after {timeout:.0f}s") from exc
            log.info("waiting for table %s (%s)", name, type(exc).__name__)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
