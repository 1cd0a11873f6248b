"""A radiology day, played into the exam store: `python -m loadtest.simulator`.

The day is planned first, as pure data from a seed (`loadtest.plan.plan_day`), so the
same seed gives the same day, and the plan only ever holds legal moves of the state
machine. Then it is played against real time: `speed` simulated seconds pass per real
second, and every timestamp written (scheduled time, turnaround deadline) is scaled the
same way, so the page's clocks tick consistently with the simulated day.

Patients, names and MRNs are synthetic (see `loadtest.catalog`).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from typing import Any, Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

from devstack.sites import DEMO_TENANTS
from dynamo.claims import Claims
from dynamo.client import dynamodb_client
from dynamo.exceptions import ExamAlreadyExists, StoreError
from dynamo.settings import DynamoSettings
from dynamo.states import READING_STATES, ExamStatus
from dynamo.store import ExamStore
from dynamo.table import wait_for_table
from loadtest.hl7.builder import MessageBuilder
from loadtest.hl7.client import MllpClient
from loadtest.plan import DAY, HOUR, Clock, Event, events_of, plan_day, sim_reader, to_records
from worklist_cache.writethrough import write_through

log = logging.getLogger("loadtest.simulator")


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
    # With the "store" transport: publish each exam write to the worklist feed (Redis:
    # REDIS_URL) as soon as DynamoDB acknowledges it, ahead of the stream relay.
    write_through: bool = True
    log_level: str = "INFO"


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
    through_on = settings.write_through and settings.transport == "store"
    async with dynamodb_client(dynamo) as client, write_through(through_on) as through:
        await wait_for_table(client, dynamo.table)
        sim = Simulator(ExamStore(client, dynamo.table, write_through=through), settings)
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
