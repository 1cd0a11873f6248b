"""Retries of DynamoDB calls: capped exponential backoff with full jitter.

Throttling (ProvisionedThroughputExceeded, ThrottlingException, RequestLimitExceeded),
5xx and connection failures are retried; after the last attempt they surface as
`StoreUnavailable`. A condition that failed is an answer, not a fault: it surfaces at
once for the caller to interpret. Anything else is `PermanentStoreError`.

botocore's own retries are switched off for the exam store's client (see `client.py`)
so that claims, which users wait on, back off from 25 ms rather than from a second.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from dynamo.exceptions import PermanentStoreError, StoreUnavailable

log = logging.getLogger("dynamo.retry")

T = TypeVar("T")

RETRYABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionInProgressException",
    }
)
# Reasons a transaction was cancelled that a retry can cure.
_RETRYABLE_REASONS = frozenset(
    {"ThrottlingError", "TransactionConflict", "ProvisionedThroughputExceeded"}
)
# Answers the caller interprets (a condition was false), never retried here.
ANSWERS = frozenset({"ConditionalCheckFailedException", "TransactionCanceledException"})


def _retryable(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    code = error.get("Code", "")
    if code in RETRYABLE_CODES:
        return True
    if code == "TransactionCanceledException":
        reasons = exc.response.get("CancellationReasons", [])
        return any(r.get("Code") in _RETRYABLE_REASONS for r in reasons) and not any(
            r.get("Code") == "ConditionalCheckFailed" for r in reasons
        )
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return bool(status >= 500)


class Retry:
    def __init__(
        self,
        attempts: int = 8,
        base: float = 0.025,
        cap: float = 1.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.attempts = attempts
        self.base = base
        self.cap = cap
        self._rng = rng
        self.retries = 0  # for metrics and tests

    def delay(self, attempt: int) -> float:
        return float(self._rng() * min(self.cap, self.base * 2**attempt))

    async def __call__(self, operation: str, fn: Callable[..., Awaitable[T]], **kwargs: Any) -> T:
        last = "unknown"
        for attempt in range(self.attempts):
            try:
                return await fn(**kwargs)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "unknown")
                if not _retryable(exc):
                    if code in ANSWERS:
                        raise
                    raise PermanentStoreError(operation, code) from exc
                last = code
            except (HTTPClientError, BotoConnectionError) as exc:
                last = type(exc).__name__
            if attempt + 1 < self.attempts:
                self.retries += 1
                pause = self.delay(attempt)
                log.info("%s: %s, retry %d in %.3fs", operation, last, attempt + 1, pause)
                await asyncio.sleep(pause)
        raise StoreUnavailable(operation, last)
