"""Synthetic exams and deltas: written through the store (paced) or published as the
relay would. All data is made up; no real patient, ever."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field

from devstack.sites import DEMO_TENANTS
from dynamo.deltas import ExamDelta
from dynamo.exceptions import StoreError
from dynamo.models import Exam, Order, PatientProfile, now_ms
from dynamo.states import ExamStatus, Modality, Priority
from dynamo.store import ExamStore
from dynamo.writethrough import WriteThrough
from loadtest.bench.config import TENANT
from loadtest.plan import exam_now, to_records
from worklist_cache import WorklistFeed

__all__ = [
    "STEPS",
    "STRIDE",
    "ExamWriter",
    "Pacer",
    "inject",
    "ready_exam",
    "synthetic_delta",
    "synthetic_exam",
]


# Each exam is written in these steps: created (version 1), then moved along.
STEPS: tuple[ExamStatus | None, ...] = (
    None,
    ExamStatus.ARRIVED,
    ExamStatus.IN_PROGRESS,
    ExamStatus.COMPLETED,
    ExamStatus.FINAL,
)
STRIDE = 8  # keys per exam in a phase's delivery map: key = n * STRIDE + version - 1


def synthetic_exam(prefix: str, n: int) -> tuple[Exam, Order, PatientProfile]:
    """A made-up exam of the benchmark's tenant, ordered now; no real patient, ever."""
    tenant = next(t for t in DEMO_TENANTS if t.code == TENANT)
    return to_records(exam_now(tenant, "NW-GEN", f"{prefix}{n:07d}", n))


def synthetic_delta(prefix: str, n: int, now: int, tenant: str = TENANT) -> ExamDelta:
    """What the relay would publish for a freshly written exam."""
    return ExamDelta(
        op="upsert",
        tenant=tenant,
        site="NW-GEN",
        exam_id=f"{prefix}{n:07d}",
        version=1,
        status=ExamStatus.SCHEDULED,
        priority=Priority.ROUTINE,
        modality=Modality.CT,
        procedure="CT head without contrast",
        body_part="HEAD",
        subspecialty="neuro",
        mrn=f"BM{n:08d}",
        patient_name="BENCHMARK^PATIENT",
        scheduled_at=now,
        tat_due_at=now + 3_600_000,
        updated_at=now,
    )


class Pacer:
    """Spaces events `1/rate` apart across every caller; never bursts to catch up."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


@dataclass
class ExamWriter:
    """Writes synthetic exams through the store (create, then transitions), paced; with
    `feed`, the store writes through to it (`dynamo.writethrough`) while `run` runs."""

    store: ExamStore
    prefix: str
    feed: WorklistFeed | None = None
    keys: list[int] = field(default_factory=list)  # n * STRIDE + version - 1, written
    write_ms: list[float] = field(default_factory=list)
    # key -> the store's `updated_at` stamp, and when DynamoDB acknowledged (epoch ms)
    stamped: dict[int, int] = field(default_factory=dict)
    acked: dict[int, float] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)

    def _key(self, exam: Exam) -> int:
        return int(exam.accession[len(self.prefix) :]) * STRIDE + exam.version - 1

    async def run(self, seconds: float, rate: float | None, concurrency: int) -> float:
        """Write for `seconds` (at most `rate` writes/s); returns the elapsed seconds."""
        if self.feed is None:
            return await self._run(seconds, rate, concurrency)
        through = WriteThrough(self.feed)

        async def acknowledged(exam: Exam) -> None:
            # Acknowledged now: what follows is the early publish.
            self.acked[self._key(exam)] = time.time() * 1000
            await through(exam)

        self.store.write_through = acknowledged
        try:
            return await self._run(seconds, rate, concurrency)
        finally:
            self.store.write_through = None
            if through.failed:
                self.errors["write_through_failed"] += through.failed
            if through.skipped:
                self.errors["write_through_skipped"] += through.skipped

    async def _run(self, seconds: float, rate: float | None, concurrency: int) -> float:
        pacer = Pacer(rate)
        numbers = itertools.count()
        start = time.monotonic()
        end = start + seconds

        async def worker() -> None:
            while time.monotonic() < end:
                n = next(numbers)
                exam, order, profile = synthetic_exam(self.prefix, n)
                # Each move from the exam the previous write returned, as the HL7
                # ingest walks one: one round trip per move.
                for step in STEPS:
                    await pacer.wait()
                    if time.monotonic() >= end:
                        return
                    t0 = time.perf_counter()
                    try:
                        if step is None:
                            written = await self.store.create_exam(exam, order, profile)
                        else:
                            written = await self.store.advance(exam, step)
                    except StoreError as exc:
                        self.errors[type(exc).__name__] += 1
                        break
                    self.write_ms.append((time.perf_counter() - t0) * 1000)
                    exam = written
                    key = n * STRIDE + written.version - 1
                    self.keys.append(key)
                    self.acked.setdefault(key, time.time() * 1000)
                    self.stamped[key] = written.updated_at

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.monotonic() - start


async def inject(feed: WorklistFeed, prefix: str, rate: float, seconds: float) -> tuple[int, float]:
    """Publish `rate * seconds` fresh deltas as the relay would, paced in 5 ms ticks;
    returns how many and the seconds it took."""
    total = round(rate * seconds)
    sent = 0
    start = time.monotonic()
    while sent < total:
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        if due > sent:
            now = now_ms()
            await feed.publish([synthetic_delta(prefix, n, now) for n in range(sent, due)])
            sent = due
        await asyncio.sleep(0.005)
    return total, time.monotonic() - start


async def ready_exam(store: ExamStore, prefix: str, n: int) -> Exam:
    """A fresh exam moved to COMPLETED: ready to be claimed."""
    exam, order, profile = synthetic_exam(prefix, n)
    await store.create_exam(exam, order, profile)
    for step in (ExamStatus.ARRIVED, ExamStatus.IN_PROGRESS, ExamStatus.COMPLETED):
        exam = await store.advance(exam, step)
    return exam
