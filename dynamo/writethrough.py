"""Write-through: an exam write's delta published as soon as DynamoDB acknowledges it.

A writer that opts in (`ExamStore(..., write_through=WriteThrough(feed))`: HL7 ingest,
the simulator, the benchmark's writer) publishes each exam it creates or moves to the
worklist feed itself, right after the write is acknowledged, instead of waiting for the
stream relay to poll DynamoDB Streams. The relay still reads every record and publishes
it too; its copy carries the same version and the feed drops it as a repeat (as for the
gateway's own claim changes, `gateway.handlers.claiming.publish_claim`).

The early delta is `ExamDelta.from_exam` of the item as written (`ALL_NEW` for a move,
the created item for a create): what the relay's normalization (`relay.normalize`)
makes of the same write's stream record, field for field. Whatever the relay does
beside publishing stays with the relay: peer-review sampling of exams that became
FINAL (`relay.sampler`), patient changes, removals, directory notices.

A failed early publish is only logged: the relay carries the change anyway. A publish is
given at most `timeout_s` (1 s), and after a failure the next `pause_s` (1 s) of writes
skip it, so a Redis outage barely slows a writer (an HL7 acknowledgement waits on its
writes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from dynamo.deltas import ExamDelta
from dynamo.models import Exam

__all__ = ["DeltaPublisher", "WriteThrough"]

log = logging.getLogger("dynamo.writethrough")


class DeltaPublisher(Protocol):
    """Where deltas go (`worklist_cache.WorklistFeed`)."""

    async def publish(self, deltas: Sequence[ExamDelta]) -> object: ...


class WriteThrough:
    """Publishes the delta of each acknowledged exam write; never fails the write."""

    def __init__(
        self, feed: DeltaPublisher, *, timeout_s: float = 1.0, pause_s: float = 1.0
    ) -> None:
        self.feed = feed
        self.timeout_s = timeout_s
        self.pause_s = pause_s
        self.published = 0
        self.failed = 0
        self.skipped = 0
        self._paused_until = 0.0

    async def __call__(self, exam: Exam) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() < self._paused_until:
            self.skipped += 1
            return
        try:
            await asyncio.wait_for(self.feed.publish([ExamDelta.from_exam(exam)]), self.timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failed += 1
            self._paused_until = loop.time() + self.pause_s
            log.warning(
                "early publish of an exam write failed (%s); the relay carries it, and the "
                "next %g s of writes",
                type(exc).__name__,
                self.pause_s,
            )
            return
        self.published += 1
