"""Redis-materialized worklists: apply deltas idempotently, keep history, fan out."""

from __future__ import annotations

from worklist_cache.connection import connect
from worklist_cache.feed import Snapshot, WorklistFeed
from worklist_cache.settings import CacheSettings
from worklist_cache.subscriber import FeedSubscriber

__all__ = [
    "CacheSettings",
    "FeedSubscriber",
    "Snapshot",
    "WorklistFeed",
    "connect",
]
