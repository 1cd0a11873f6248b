"""One aioboto3 session per process and the clients made from it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aioboto3
from botocore.config import Config

from dynamo.settings import DynamoSettings

# Per call, botocore checks every parameter against the service's model and builds its
# User-Agent from a dozen sanitized parts, each anew: together about an eighth of a
# write's CPU in the process that writes (the benchmark's writer at 100 writes/s: 2.6
# ms -> 2.3 ms per write). Our requests are built by code, DynamoDB checks them again
# (ValidationException), and the User-Agent is then one fixed string.
_LEAN: dict[str, Any] = {"parameter_validation": False, "user_agent": "ris-worklist"}

# The exam store retries on its own (dynamo/retry.py: from 25 ms, with jitter), so its
# client makes one attempt per call. The streams client keeps botocore's "standard"
# mode: capped exponential backoff with full jitter for throttling, 5xx and resets.
_STORE_CONFIG = Config(
    retries={"total_max_attempts": 1, "mode": "standard"},
    **_LEAN,
    connect_timeout=5,
    read_timeout=20,
    max_pool_connections=64,
)
_STREAMS_CONFIG = Config(
    retries={"max_attempts": 8, "mode": "standard"},
    **_LEAN,
    connect_timeout=5,
    read_timeout=20,
    max_pool_connections=16,
)

_session: aioboto3.Session | None = None


def session() -> aioboto3.Session:
    global _session
    if _session is None:
        _session = aioboto3.Session()
    return _session


def _client_kwargs(settings: DynamoSettings, config: Config) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"region_name": settings.region, "config": config}
    if settings.is_local:
        kwargs["endpoint_url"] = settings.endpoint_url
        kwargs["aws_access_key_id"] = settings.access_key_id or "local"
        kwargs["aws_secret_access_key"] = settings.secret_access_key or "local"
    return kwargs


@asynccontextmanager
async def dynamodb_client(settings: DynamoSettings) -> AsyncIterator[Any]:
    async with session().client("dynamodb", **_client_kwargs(settings, _STORE_CONFIG)) as client:
        yield client


@asynccontextmanager
async def streams_client(settings: DynamoSettings) -> AsyncIterator[Any]:
    async with session().client(
        "dynamodbstreams", **_client_kwargs(settings, _STREAMS_CONFIG)
    ) as client:
        yield client
