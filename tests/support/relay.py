"""Helpers of the relay tests: the Lambda handler's environment."""

from __future__ import annotations

import os
from typing import Any

from dynamo.settings import DynamoSettings


def _lambda_env(redis_url: str, dynamo_settings: DynamoSettings, **extra: str) -> dict[str, str]:
    """The function's configuration: where Redis and the table are."""
    return {
        "REDIS_URL": redis_url,
        "DYNAMO_ENDPOINT_URL": dynamo_settings.endpoint_url,
        "DYNAMO_TABLE": dynamo_settings.table,
        **extra,
    }


def _with_env(env: dict[str, str], fn: Any, *args: Any) -> Any:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return fn(*args)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
