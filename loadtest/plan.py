"""A radiology day as pure data: planned from a seed, legal moves only.

`plan_day` gives the same day for the same seed, and the plan only ever holds legal
moves of the state machine; `events_of` orders its steps; `Clock` maps simulated time to
real time; `to_records` turns a planned exam into the store's records. The player
(`loadtest.simulator`) and the HL7 message builder (`loadtest.hl7.builder`) read these.

Patients, names and MRNs are synthetic (see `loadtest.catalog`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from devstack.sites import DEMO_TENANTS, Site, Tenant
from dynamo.models import Exam, Order, PatientProfile
from dynamo.states import READING_STATES, ExamStatus, Modality, Priority
from loadtest import catalog

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR

# Relative volume per hour of the simulated day, which starts at 07:00.
_HOURLY = {
    "hospital": (6, 8, 9, 9, 9, 8, 8, 8, 8, 7, 7, 6, 5, 5, 4, 3, 3, 2, 2, 2, 2, 2, 3, 4),
    "clinic": (6, 9, 9, 9, 8, 7, 8, 8, 8, 7, 6),
    "imaging center": (5, 8, 9, 9, 8, 7, 8, 8, 8, 7, 6, 5, 3),
}
_PRELIM_SHARE = {Priority.STAT: 0.5, Priority.URGENT: 0.2, Priority.ROUTINE: 0.05}
CANCEL_SHARE = 0.05
AMEND_SHARE = 0.01


@dataclass(frozen=True)
class PlannedExam:
    """One exam of the plan, with its timeline in simulated ms from the day's start."""

    tenant: str
    site: str
    accession: str
    patient: PatientProfile
    modality: Modality
    procedure: catalog.Procedure
    priority: Priority
    provider: str
    ordered_at: int
    scheduled_at: int
    tat_due_at: int
    steps: tuple[tuple[int, ExamStatus], ...]  # (when, status), in order

    @property
    def final_status(self) -> ExamStatus:
        return self.steps[-1][1] if self.steps else ExamStatus.SCHEDULED


@dataclass(order=True)
class Event:
    at: int  # simulated ms since the simulation's start
    seq: int
    exam: PlannedExam = field(compare=False)
    status: ExamStatus | None = field(compare=False)  # None: create the exam
    # A simulated radiologist claims the exam now, to sign its next report later.
    claim: bool = field(default=False, compare=False)


def _weighted(rng: random.Random, weights: dict[Any, int]) -> Any:
    items = list(weights)
    return rng.choices(items, weights=[weights[i] for i in items])[0]


def _accession_prefix(tenant: Tenant) -> str:
    return tenant.sites[0].code.split("-")[0]


def synthetic_patient(tenant: Tenant, index: int, rng: random.Random) -> PatientProfile:
    """A made-up patient of a tenant (same index and rng state, same person)."""
    family = rng.choice(catalog.FAMILY_NAMES)
    given = rng.choice(catalog.GIVEN_NAMES)
    year = rng.randint(1935, 2020)
    return PatientProfile(
        patient_id=f"{tenant.code}-P{index:06d}",
        tenant=tenant.code,
        mrn=f"{_accession_prefix(tenant)}M{index:07d}",
        name=f"{family}^{given}",
        birth_date=f"{year:04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        sex=rng.choice(("F", "M", "O")),
    )


def _scheduled_offset(rng: random.Random, site: Site) -> int:
    hourly = _HOURLY[site.kind]
    hour = rng.choices(range(len(hourly)), weights=hourly)[0]
    return hour * HOUR + rng.randrange(HOUR)


def _timeline(
    rng: random.Random,
    priority: Priority,
    procedure: catalog.Procedure,
    day_start: int,
    scheduled: int,
) -> tuple[int, tuple[tuple[int, ExamStatus], ...]]:
    """When the order is placed (never before its day starts), and the exam's moves."""
    S = ExamStatus
    lead = {Priority.STAT: (0, 10), Priority.URGENT: (10, 60), Priority.ROUTINE: (60, 180)}
    ordered = max(day_start, scheduled - rng.randint(*lead[priority]) * MINUTE)
    arrived = max(ordered + MINUTE, scheduled + rng.randint(-10, 10) * MINUTE)
    scanning = arrived + rng.randint(3, 20) * MINUTE
    completed = scanning + int(procedure.scan_minutes * rng.uniform(0.8, 1.3) * MINUTE)
    happy = [(arrived, S.ARRIVED), (scanning, S.IN_PROGRESS), (completed, S.COMPLETED)]

    if rng.random() < CANCEL_SHARE:
        # Most cancellations happen before the patient arrives.
        stage = rng.choices((0, 1, 2), weights=(60, 25, 15))[0]
        before = happy[:stage]
        last = before[-1][0] if before else ordered
        return ordered, (*before, (last + rng.randint(5, 60) * MINUTE, S.CANCELLED))

    lo, hi = catalog.READ_MINUTES[priority]
    signed = completed + rng.randint(lo, hi) * MINUTE
    steps = list(happy)
    if rng.random() < _PRELIM_SHARE[priority]:
        steps.append((completed + (signed - completed) // 2, S.PRELIMINARY))
        signed += rng.randint(5, 60) * MINUTE
    steps.append((signed, S.FINAL))
    if rng.random() < AMEND_SHARE:
        steps.append((signed + rng.randint(30, 240) * MINUTE, S.AMENDED))
    return ordered, tuple(steps)


def plan_day(
    seed: int, day: int, exams_per_day: int, tenants: Sequence[Tenant] = DEMO_TENANTS
) -> list[PlannedExam]:
    """Every exam of one simulated day, for every tenant; pure and deterministic."""
    plan: list[PlannedExam] = []
    for tenant in tenants:
        rng = random.Random(f"{seed}:{day}:{tenant.code}")
        # Some patients come back for a second exam the same day.
        pool = max(1, int(exams_per_day * 0.85))
        base = day * pool
        for i in range(exams_per_day):
            site = rng.choice(tenant.sites)
            modality: Modality = _weighted(rng, catalog.MODALITY_MIX[site.kind])
            procedure = rng.choice(catalog.PROCEDURES[modality])
            priority: Priority = _weighted(rng, catalog.PRIORITY_MIX[site.kind])
            patient_index = base + rng.randrange(pool)
            patient = synthetic_patient(
                tenant, patient_index, random.Random(f"{seed}:{patient_index}")
            )
            start = day * DAY
            scheduled = start + _scheduled_offset(rng, site)
            ordered, steps = _timeline(rng, priority, procedure, start, scheduled)
            plan.append(
                PlannedExam(
                    tenant=tenant.code,
                    site=site.code,
                    accession=f"{_accession_prefix(tenant)}{day:03d}{i:05d}",
                    patient=patient,
                    modality=modality,
                    procedure=procedure,
                    priority=priority,
                    provider=rng.choice(catalog.PROVIDERS),
                    ordered_at=ordered,
                    scheduled_at=scheduled,
                    tat_due_at=scheduled + catalog.TAT_MINUTES[priority] * MINUTE,
                    steps=steps,
                )
            )
    return plan


def events_of(
    plan: Iterable[PlannedExam], seq_start: int = 0, *, with_claims: bool = False
) -> list[Event]:
    """The plan as events; `seq` (from `seq_start`) keeps equal times in plan order.

    `with_claims` adds, before an exam's first report, the moment a simulated
    radiologist claims it (two thirds of the way from COMPLETED to the report).
    """
    events: list[Event] = []
    seq = seq_start
    for exam in plan:
        events.append(Event(exam.ordered_at, seq, exam, None))
        seq += 1
        completed_at = None
        for at, status in exam.steps:
            if status is ExamStatus.COMPLETED:
                completed_at = at
            elif completed_at is not None and with_claims and status in READING_STATES:
                read_from = completed_at + (at - completed_at) * 2 // 3
                events.append(Event(read_from, seq, exam, status, claim=True))
                seq += 1
                completed_at = None
            events.append(Event(at, seq, exam, status))
            seq += 1
    return events


def sim_reader(exam: PlannedExam) -> tuple[str, str]:
    """The simulated radiologist who reads an exam (sub, display name)."""
    names = catalog.SIM_READERS
    index = sum(map(ord, exam.accession)) % len(names)
    return f"sim-{exam.tenant}-{index}", names[index]


def exam_now(
    tenant: Tenant,
    site: str,
    accession: str,
    patient_index: int,
    *,
    modality: Modality = Modality.CT,
    procedure: catalog.Procedure | None = None,
    priority: Priority = Priority.ROUTINE,
    provider: str = catalog.PROVIDERS[0],
    rng: random.Random | None = None,
) -> PlannedExam:
    """A synthetic exam ordered and scheduled now, with no planned steps (the load
    tests' writers and HL7 senders); times are real epoch ms (see `REAL_TIME`)."""
    now = time.time_ns() // 1_000_000
    return PlannedExam(
        tenant=tenant.code,
        site=site,
        accession=accession,
        patient=synthetic_patient(tenant, patient_index, rng or random.Random(accession)),
        modality=modality,
        procedure=procedure or catalog.PROCEDURES[modality][0],
        priority=priority,
        provider=provider,
        ordered_at=now,
        scheduled_at=now,
        tat_due_at=now + catalog.TAT_MINUTES[priority] * MINUTE,
        steps=(),
    )


class Clock:
    """Maps simulated ms (since the simulation's start) to real epoch ms and back."""

    def __init__(self, speed: float, warmup_minutes: int, now_ms: int | None = None) -> None:
        self.speed = speed
        now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
        self.origin = now - int(warmup_minutes * MINUTE / speed)

    def real(self, sim_ms: int) -> int:
        return self.origin + int(sim_ms / self.speed)

    def sim_now(self) -> int:
        return int((time.time_ns() // 1_000_000 - self.origin) * self.speed)


# A clock at speed 1 from epoch 0: planned times that are real epoch ms stay as they are.
REAL_TIME = Clock(1.0, 0, now_ms=0)


def to_records(exam: PlannedExam, clock: Clock = REAL_TIME) -> tuple[Exam, Order, PatientProfile]:
    """The store's items for a planned exam, its times on the real clock."""
    order = Order(
        order_id=f"{exam.accession}-O",
        patient_id=exam.patient.patient_id,
        tenant=exam.tenant,
        accession=exam.accession,
        ordering_provider=exam.provider,
        procedure_code=exam.procedure.code,
        priority=exam.priority,
        ordered_at=clock.real(exam.ordered_at),
    )
    record = Exam(
        tenant=exam.tenant,
        site=exam.site,
        accession=exam.accession,
        patient_id=exam.patient.patient_id,
        order_id=order.order_id,
        mrn=exam.patient.mrn,
        patient_name=exam.patient.name,
        modality=exam.modality,
        procedure_code=exam.procedure.code,
        procedure=exam.procedure.text,
        body_part=exam.procedure.body_part,
        subspecialty=exam.procedure.subspecialty,
        priority=exam.priority,
        scheduled_at=clock.real(exam.scheduled_at),
        tat_due_at=clock.real(exam.tat_due_at),
    )
    return record, order, exam.patient
