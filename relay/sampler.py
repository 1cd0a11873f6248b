"""Peer-review sampling: relay work between the stream and the feed."""

from __future__ import annotations

from typing import Any

from dynamo.exceptions import StoreError
from dynamo.review import ReviewStore, sampled


class Sampler:
    """Between the relay and the feed: publishes every delta, then puts a sampled share
    of the exams that just became FINAL into the review pool (idempotent, so a replayed
    stream pools nothing twice)."""

    def __init__(self, feed: Any, reviews: ReviewStore, *, rate: float, seed: int | str) -> None:
        self._feed = feed
        self._reviews = reviews
        self.rate = rate
        self.seed = seed
        self.pooled = 0

    async def publish(self, deltas: Any) -> object:
        result = await self._feed.publish(deltas)
        for d in deltas:
            if getattr(d, "kind", None) == "review" or d.status != "FINAL":
                continue
            if sampled(self.seed, d.tenant, d.exam_id, self.rate):
                try:
                    if await self._reviews.pool(d.tenant, d.exam_id) is not None:
                        self.pooled += 1
                except StoreError:
                    continue  # amended or gone meanwhile: not reviewable now
        return result

    async def heartbeat(self) -> None:
        await self._feed.heartbeat()

    async def announce(self, notices: Any) -> None:
        await self._feed.announce(notices)
