"""The simulator: a realistic day, the same for a seed, and only legal moves."""

from __future__ import annotations

import asyncio
from collections import Counter

from dynamo.states import ExamStatus, Modality, Priority, can_transition
from dynamo.store import ExamStore
from loadtest.plan import DAY, Clock, events_of, plan_day
from loadtest.simulator import SimSettings, Simulator
from tests.conftest import UNIT


def test_same_seed_same_day_and_another_seed_another_day() -> None:
    assert plan_day(7, 0, 300) == plan_day(7, 0, 300)
    assert plan_day(7, 1, 300) == plan_day(7, 1, 300)
    assert plan_day(7, 0, 300) != plan_day(8, 0, 300)
    assert plan_day(7, 0, 300) != plan_day(7, 1, 300)


def test_every_planned_path_is_legal_and_in_time_order() -> None:
    for day in range(3):
        for exam in plan_day(11, day, 400):
            status = ExamStatus.SCHEDULED
            last = exam.ordered_at
            for at, target in exam.steps:
                assert can_transition(status, target), (exam.accession, status, target)
                assert at >= last, exam.accession
                status, last = target, at
            assert exam.ordered_at >= day * DAY
            assert exam.tat_due_at > exam.scheduled_at


def test_a_day_looks_like_a_radiology_day() -> None:
    plan = plan_day(7, 0, 400)
    assert len({e.tenant for e in plan}) >= 2
    assert len({e.site for e in plan}) >= 4
    assert {e.modality for e in plan} == set(Modality)
    priorities = Counter(e.priority for e in plan)
    assert priorities[Priority.ROUTINE] > priorities[Priority.URGENT] > 0
    assert priorities[Priority.STAT] > 0
    final = Counter(e.final_status for e in plan)
    assert final[ExamStatus.FINAL] > len(plan) * 0.8
    assert 0 < final[ExamStatus.CANCELLED] < len(plan) * 0.12
    visited = {s for e in plan for _, s in e.steps}
    assert {ExamStatus.ARRIVED, ExamStatus.IN_PROGRESS, ExamStatus.COMPLETED} <= visited
    assert ExamStatus.PRELIMINARY in visited
    # Accessions are unique; some patients come back for a second exam.
    assert len({e.accession for e in plan}) == len(plan)
    patients = Counter(e.patient.patient_id for e in plan)
    assert max(patients.values()) > 1
    # A patient is the same person on every exam of theirs.
    by_id = {e.patient.patient_id: e.patient for e in plan}
    assert all(by_id[e.patient.patient_id] == e.patient for e in plan)


def test_synthetic_identities_look_like_hl7_names_and_mrns() -> None:
    for exam in plan_day(7, 0, 50):
        family, _, given = exam.patient.name.partition("^")
        assert family.isalpha() and given.isalpha()
        assert exam.patient.mrn.startswith(exam.accession[:2])


def test_events_keep_each_exam_in_order() -> None:
    events = sorted(events_of(plan_day(3, 0, 100)))
    seen: dict[str, list[ExamStatus | None]] = {}
    for event in events:
        seen.setdefault(event.exam.accession, []).append(event.status)
    for steps in seen.values():
        assert steps[0] is None  # created before anything else happens


def test_clock_scales_simulated_time_onto_real_time() -> None:
    clock = Clock(speed=60.0, warmup_minutes=30, now_ms=1_000_000_000)
    # Thirty simulated minutes at 60x are thirty real seconds, already past.
    assert clock.real(30 * 60_000) == 1_000_000_000
    assert clock.real(90 * 60_000) == 1_000_000_000 + 60_000


async def test_a_played_day_leaves_the_store_in_the_planned_states(store: ExamStore) -> None:
    """Played at high speed against DynamoDB Local, every exam ends where the plan says."""
    settings = SimSettings(
        seed=5, speed=200_000.0, exams_per_day=15, days=1, warmup_minutes=0, tenants="lakeside"
    )
    sim = Simulator(store, settings)
    await asyncio.wait_for(sim.run(), 120 * UNIT)
    plan = plan_day(5, 0, 15, sim.tenants)
    claims = {e.exam.accession for e in events_of(plan, with_claims=True) if e.claim}
    assert claims, "simulated radiologists claimed exams to read them"
    assert sim.skipped == 0
    assert sim.writes == sum(1 + len(e.steps) for e in plan) + len(claims)
    for exam in plan:
        stored = await store.get_exam(exam.patient.patient_id, exam.accession)
        assert stored.status == exam.final_status
        assert stored.version == 1 + len(exam.steps) + (exam.accession in claims)
        assert stored.tenant == "lakeside"
        if stored.status is ExamStatus.FINAL:
            assert stored.claimed_by is None, "a final report ends the claim"


async def test_a_person_holding_an_exam_keeps_it_from_the_simulated_reader(
    store: ExamStore,
) -> None:
    from dynamo.claims import Claims

    settings = SimSettings(seed=9, speed=1000.0, exams_per_day=12, tenants="lakeside")
    sim = Simulator(store, settings)
    plan = plan_day(9, 0, 12, sim.tenants)
    target = next(e for e in plan if e.final_status is ExamStatus.FINAL)
    events = sorted(events_of([target], with_claims=True))
    cut = next(i for i, e in enumerate(events) if e.status is ExamStatus.COMPLETED) + 1
    for event in events[:cut]:
        await sim._play(event)
    patient = target.patient.patient_id
    await Claims(store).claim(patient, target.accession, "u-person", "A Person")
    for event in events[cut:]:
        await sim._play(event)
    final = await store.get_exam(patient, target.accession)
    assert (final.status, final.claimed_by) == (ExamStatus.COMPLETED, "u-person")
    assert sim.skipped == len(events) - cut  # the claim lost, the reports left to her


async def test_replaying_a_day_into_the_same_table_changes_nothing(store: ExamStore) -> None:
    settings = SimSettings(
        seed=6, speed=500_000.0, exams_per_day=5, days=1, warmup_minutes=0, tenants="lakeside"
    )
    await Simulator(store, settings).run()
    again = Simulator(store, settings)
    await again.run()
    assert again.writes == 0 and again.skipped > 0


async def test_a_day_sent_as_hl7_over_mllp_lands_like_one_written_directly(
    store: ExamStore,
) -> None:
    """The demo's path: the simulator is a RIS speaking HL7 to the listener."""
    from tests.support.hl7 import running

    async with running(store) as listener:
        settings = SimSettings(
            seed=12,
            speed=300_000.0,
            exams_per_day=10,
            days=1,
            warmup_minutes=0,
            tenants="lakeside",
            transport="hl7",
            hl7_port=listener.port,
        )
        sim = Simulator(store, settings)
        await asyncio.wait_for(sim.run(), 120 * UNIT)
        assert sim.hl7 is not None
        await sim.hl7.aclose()
    plan = plan_day(12, 0, 10, sim.tenants)
    assert sim.skipped == 0
    assert sim.hl7.sent >= len(plan), "orders and status changes went over MLLP"
    for exam in plan:
        stored = await store.find_exam("lakeside", exam.accession)
        assert stored.status == exam.final_status, exam.accession
        assert stored.mrn == exam.patient.mrn
