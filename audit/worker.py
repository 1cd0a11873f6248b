"""The audit consumer as a long-lived worker process: `python -m audit`.

Reads the table's stream with its own shard leases and checkpoints (in PostgreSQL) and
writes every change to the audit. A separate process from the cache relay
(`python -m relay`): PostgreSQL being away never touches the live worklist.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from audit.consumer import AuditConsumer
from audit.db import open_pool
from audit.metrics import serve_metrics
from audit.settings import AuditSettings
from dynamo.client import dynamodb_client, streams_client
from dynamo.settings import DynamoSettings
from dynamo.table import wait_for_table
from service.logs import configure_logging
from service.runner import run_until_signalled

__all__ = ["main", "run_consumer"]

log = logging.getLogger("audit.worker")


async def run_consumer(settings: AuditSettings, dynamo: DynamoSettings) -> None:
    owner = settings.node_name or f"{socket.gethostname()}:{os.getpid()}"
    backoff = 0.5
    while True:  # the database may not be up yet when the worker starts
        try:
            async with contextlib.AsyncExitStack() as stack:
                pool = await stack.enter_async_context(
                    open_pool(settings.database_url, size=settings.pool_size)
                )
                ddb = await stack.enter_async_context(dynamodb_client(dynamo))
                streams = await stack.enter_async_context(streams_client(dynamo))
                arn = await wait_for_table(ddb, dynamo.table)
                consumer = AuditConsumer(
                    streams,
                    arn,
                    pool,
                    consumer=settings.consumer,
                    owner=owner,
                    poll_interval=settings.poll_interval,
                    discover_interval=settings.discover_interval,
                    lease_seconds=settings.lease_seconds,
                    batch_limit=settings.batch_limit,
                    retry_max_seconds=settings.retry_max_seconds,
                )
                if settings.metrics_port:
                    await stack.enter_async_context(
                        serve_metrics(
                            consumer.metrics, settings.metrics_host, settings.metrics_port
                        )
                    )
                log.info("auditing stream of table %s as %s", dynamo.table, owner)
                await consumer.run()
                return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("audit worker could not start (%s); retrying", type(exc).__name__)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, settings.retry_max_seconds)


def main() -> None:
    settings = AuditSettings()
    configure_logging(settings.log_level)
    run_until_signalled(run_consumer(settings, DynamoSettings()))
