"""The audit consumer as an AWS Lambda function (DynamoDB Streams event source mapping).

The same code path as the worker: `audit.writer.write_batch` writes the event's records
in one transaction, idempotently by eventID. Lambda's mapping keeps the checkpoint, so
none is written here. Configure the mapping with `FunctionResponseTypes:
["ReportBatchItemFailures"]`: a batch that fails names its first record, Lambda retries
the whole batch from there, and the rows already written are not written twice.
Use a mapping of its own (not the relay's): see docs/architecture.md, "Audit trail".
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from audit.db import connect
from audit.settings import AuditSettings
from audit.writer import write_batch

__all__ = ["handler", "process"]

log = logging.getLogger("audit.lambda")


async def process(records: list[dict[str, Any]], settings: AuditSettings) -> str | None:
    """Write the records; the sequence number of the first record on a failure."""
    if not records:
        return None
    try:
        conn = await connect(settings.database_url)
        try:
            await write_batch(conn, records)
        finally:
            await conn.close()
    except Exception as exc:
        log.error("audit batch of %d records failed (%s)", len(records), type(exc).__name__)
        return str(records[0]["dynamodb"]["SequenceNumber"])
    return None


def handler(event: dict[str, Any], context: object = None) -> dict[str, Any]:
    failed = asyncio.run(process(event.get("Records", []), AuditSettings()))
    return {"batchItemFailures": [] if failed is None else [{"itemIdentifier": failed}]}
