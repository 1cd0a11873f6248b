"""A radiology day, played into the exam store: `python -m loadtest.simulator`.

The day is planned first, as pure data from a seed (`plan_day`), so the same seed gives
the same day, and the plan only ever holds legal moves of the state machine. Then it is
played against real time: `speed` simulated seconds pass per real second, and every
timestamp written (scheduled time, turnaround deadline) is scaled the same way, so the
page's clocks tick consistently with the simulated day.

Patients, names and MRNs are synthetic (see `loadtest.catalog`).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

from dynamo.claims import Claims
from dynamo.client import dynamodb_client
from dynamo.exceptions import ExamAlreadyExists, StoreError
from dynamo.models import Exam, Order, PatientProfile
from dynamo.settings import DynamoSettings
from dynamo.sites import DEMO_TENANTS, Site, Tenant
from dynamo.states import READING_STATES, ExamStatus, Modality, Priority
from dynamo.store import ExamStore
from dynamo.table import wait_for_table
from loadtest import catalog

log = logging.getLogger("loadtest.simulator")

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


class SimSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIM_")

    seed: int = 7
    # Simulated seconds per real second: 240 plays a day in 6 minutes.
    speed: float = 240.0
    exams_per_day: int = 400  # per tenant
    # Simulated minutes played at once on start, so the worklist starts full.
    warmup_minutes: int = 120
    days: int = 0  # 0 plays day after day until stopped
    # Exams written at the same time (one exam's own steps always stay in order).
    concurrency: int = 16
    # Simulated radiologists claim exams and sign their reports (else the reports are
    # written as a system would, without a claim).
    readers: bool = True
    # "store": write through the exam store; "hl7": send orders, status changes and
    # results as HL7 v2 over MLLP to `hl7_ingest` (the real path), as a RIS would.
    transport: Literal["store", "hl7"] = "store"
    hl7_host: str = "127.0.0.1"
    hl7_port: int = 2575
    hl7_connections: int = 4
    tenants: str = ""  # comma-separated tenant codes; empty means every demo tenant
    log_level: str = "INFO"


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


class Simulator:
    """Plays planned days into an `ExamStore` against the clock."""

    def __init__(self, store: ExamStore, settings: SimSettings) -> None:
        self.store = store
        self.settings = settings
        codes = {c.strip() for c in settings.tenants.split(",") if c.strip()}
        self.tenants = [t for t in DEMO_TENANTS if not codes or t.code in codes]
        if not self.tenants:
            raise ValueError(f"no demo tenant among {sorted(codes)}")
        self.clock = Clock(settings.speed, settings.warmup_minutes)
        self.writes = 0
        self.skipped = 0
        self._heap: list[Event] = []
        self._days_planned = 0
        self._seq = 0
        self._skip: set[str] = set()  # accessions whose creation failed
        self.claims = Claims(store)
        # accession -> (reader, reader's name, claim token)
        self._tokens: dict[str, tuple[str, str, str]] = {}
        self.hl7: Hl7Sender | None = None
        if settings.transport == "hl7":
            self.hl7 = Hl7Sender(settings, self.clock)

    def _plan_next_day(self) -> bool:
        days = self.settings.days
        if days and self._days_planned >= days:
            return False
        plan = plan_day(
            self.settings.seed, self._days_planned, self.settings.exams_per_day, self.tenants
        )
        for event in events_of(plan, seq_start=self._seq, with_claims=self.settings.readers):
            heapq.heappush(self._heap, event)
            self._seq = event.seq + 1
        self._days_planned += 1
        return True

    def _due(self) -> list[Event]:
        """Pop every event due by now, planning further days as the clock reaches them."""
        now = self.clock.sim_now()
        due: list[Event] = []
        while True:
            horizon = self._days_planned * DAY
            if (not self._heap or self._heap[0].at >= horizon) and self._plan_next_day():
                continue
            if self._heap and self._heap[0].at <= now:
                due.append(heapq.heappop(self._heap))
            else:
                return due

    async def run(self) -> None:
        """Play until every planned day is done (or forever with `days=0`)."""
        limit = asyncio.Semaphore(max(1, self.settings.concurrency))
        last_report = time.monotonic()
        while True:
            due = self._due()
            if due:
                await self._apply(due, limit)
            elif not self._heap:
                log.info("simulation finished: %d writes, %d skipped", self.writes, self.skipped)
                return
            else:
                wait_ms = (self._heap[0].at - self.clock.sim_now()) / self.settings.speed
                await asyncio.sleep(min(max(wait_ms / 1000, 0.005), 0.5))
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                sim_hours = self.clock.sim_now() / HOUR
                log.info(
                    "simulated %.1f h: %d writes, %d skipped", sim_hours, self.writes, self.skipped
                )

    async def _apply(self, events: list[Event], limit: asyncio.Semaphore) -> None:
        by_exam: dict[str, list[Event]] = {}
        for event in events:
            by_exam.setdefault(event.exam.accession, []).append(event)

        async def play(chain: list[Event]) -> None:
            async with limit:
                for event in chain:
                    await self._play(event)

        await asyncio.gather(*(play(chain) for chain in by_exam.values()))

    async def _play(self, event: Event) -> None:
        exam = event.exam
        if exam.accession in self._skip:
            self.skipped += 1
            return
        try:
            if event.claim:
                await self._claim(event)
            elif exam.accession in self._tokens and event.status in READING_STATES:
                reader, name, token = self._tokens[exam.accession]
                patient_id = await self.store.locate(exam.tenant, exam.accession)
                await self.claims.sign(
                    patient_id, exam.accession, reader, token, event.status, user_name=name
                )
                if event.status is not ExamStatus.PRELIMINARY:
                    self._tokens.pop(exam.accession, None)
            elif self.hl7 is not None and await self.hl7.send(event):
                pass
            elif event.status is None:
                await self.store.create_exam(*to_records(exam, self.clock))
            else:
                patient_id = await self.store.locate(exam.tenant, exam.accession)
                await self.store.transition(patient_id, exam.accession, event.status)
            self.writes += 1
        except ExamAlreadyExists:
            # Another run wrote this day into the same table: leave its exams alone.
            self._skip.add(exam.accession)
            self.skipped += 1
        except (StoreError, Hl7Refused) as exc:
            # Someone else (a radiologist, another feed) moved the exam first.
            log.info("skipped %s -> %s: %s", exam.accession, event.status, exc)
            self._tokens.pop(exam.accession, None)
            self.skipped += 1

    async def _claim(self, event: Event) -> None:
        """A simulated radiologist claims the exam for as long as the plan reads it."""
        exam = event.exam
        signs = [at for at, s in exam.steps if s in READING_STATES and at > event.at]
        last = max(signs, default=event.at)
        lease_ms = int((last - event.at) / self.settings.speed) + 60_000
        reader, name = sim_reader(exam)
        patient_id = await self.store.locate(exam.tenant, exam.accession)
        claim = await self.claims.claim(patient_id, exam.accession, reader, name, lease_ms=lease_ms)
        self._tokens[exam.accession] = (reader, name, claim.token)


class Hl7Refused(Exception):
    """The HL7 listener answered AE/AR (the text names the reason, never patient data)."""


class Hl7Sender:
    """The simulator's RIS side: one dialect per site (the mappings of `hl7_ingest`), a
    few MLLP connections, an exam's messages always on the same one (in order)."""

    def __init__(self, settings: SimSettings, clock: Clock) -> None:
        from hl7_ingest.builder import MessageBuilder
        from hl7_ingest.client import MllpClient
        from hl7_ingest.mapping import load_mappings

        self._mappings = load_mappings()
        self._builders: dict[tuple[str, str], Any] = {}
        self._clock = clock
        self._builder_type = MessageBuilder
        self._clients = [
            MllpClient(settings.hl7_host, settings.hl7_port, timeout=30.0)
            for _ in range(max(1, settings.hl7_connections))
        ]
        self.sent = 0

    def _builder(self, tenant: str, site: str) -> Any:
        key = (tenant, site)
        if key not in self._builders:
            mapping = self._mappings.for_site(tenant, site)
            self._builders[key] = (
                None if mapping is None else self._builder_type(mapping, clock=self._clock)
            )
        return self._builders[key]

    async def send(self, event: Event) -> bool:
        """Send the event as HL7; False when no dialect covers it (write it directly)."""
        builder = self._builder(event.exam.tenant, event.exam.site)
        message = None if builder is None else builder.for_event(event)
        if message is None:
            return False
        client = self._clients[sum(map(ord, event.exam.accession)) % len(self._clients)]
        ack = await client.send(message)
        if ack.code != "AA":
            raise Hl7Refused(f"{ack.code} {ack.error_code} {ack.error_text}".strip())
        self.sent += 1
        return True

    async def aclose(self) -> None:
        for client in self._clients:
            await client.close()


async def run_simulator(settings: SimSettings, dynamo: DynamoSettings) -> None:
    async with dynamodb_client(dynamo) as client:
        await wait_for_table(client, dynamo.table)
        sim = Simulator(ExamStore(client, dynamo.table), settings)
        if sim.hl7 is not None:
            await wait_for_listener(settings.hl7_host, settings.hl7_port)
        log.info(
            "playing seed %d at %gx, %d exams/day for %s",
            settings.seed,
            settings.speed,
            settings.exams_per_day,
            ", ".join(t.code for t in sim.tenants),
        )
        try:
            await sim.run()
        finally:
            if sim.hl7 is not None:
                await sim.hl7.aclose()


async def wait_for_listener(host: str, port: int, timeout: float = 60.0) -> None:
    """The HL7 listener may start after the simulator; wait for its port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
            continue
        writer.close()
        await writer.wait_closed()
        return


def main() -> None:
    from service.logs import configure_logging
    from service.runner import run_until_signalled

    settings = SimSettings()
    configure_logging(settings.log_level)
    run_until_signalled(run_simulator(settings, DynamoSettings()))


if __name__ == "__main__":
    main()
