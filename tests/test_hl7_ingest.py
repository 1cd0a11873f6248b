"""HL7 ingest against DynamoDB Local over real MLLP connections: every message type and
order-control/status pair of both site dialects lands as the right exam state; AE/AR
with dead letters; duplicates; patient update and merge. All data synthetic."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from dynamo import keys
from dynamo.claims import Claims
from dynamo.models import Exam
from dynamo.patients import get_profile
from dynamo.states import ExamStatus, Modality, Priority
from dynamo.store import ExamStore
from hl7_ingest.apply import apply
from hl7_ingest.deadletters import DeadLetters
from hl7_ingest.deadletters.cli import run_command
from hl7_ingest.interpret import interpret
from hl7_ingest.ledger import Ledger
from hl7_ingest.message import parse
from hl7_ingest.settings import Hl7Settings
from loadtest.plan import PlannedExam
from tests.support.hl7 import (
    MAPPINGS,
    Running,
    builder,
    cid,
    patient,
    planned,
    running,
    seed_demo_directory,
    table_items,
    without_bookkeeping,
)

S = ExamStatus


@pytest.fixture
async def hl7(store: ExamStore) -> AsyncIterator[Running]:
    async with running(store) as r:
        yield r


async def send(hl7: Running, text: str) -> tuple[str, str, str]:
    """(ACK code, error field, text) of one message over a fresh connection."""
    async with hl7.client() as client:
        ack = await client.send(text)
    return ack.code, ack.error_field, ack.text


async def exam_of(store: ExamStore, exam: PlannedExam) -> Exam:
    return await store.find_exam(exam.tenant, exam.accession)


async def ordered(hl7: Running, sender: str = "NWGEN", **kw: object) -> PlannedExam:
    exam = planned(sender, **kw)  # type: ignore[arg-type]
    code, _, text = await send(hl7, builder(sender).new_order(exam, control_id=cid()))
    assert code == "AA", text
    return exam


async def moved_to(hl7: Running, exam: PlannedExam, sender: str, status: ExamStatus) -> None:
    b = builder(sender)
    text = (
        b.result(exam, status, control_id=cid())
        if status in (S.PRELIMINARY, S.FINAL, S.AMENDED)
        else b.status_update(exam, status, control_id=cid())
    )
    assert text is not None
    code, _, reason = await send(hl7, text)
    assert code == "AA", reason


def order_status(exam: PlannedExam, sender: str, orc5: str, control: str = "SC") -> str:
    """An order message of `exam` with ORC-1 `control` and ORC-5 `orc5`, as the site
    writes it (a code the builder would not pick by itself, e.g. HD or DC)."""
    msg = parse(builder(sender).new_order(exam, control_id=cid()))
    msg.set("ORC-1", control)
    msg.set("ORC-5", orc5)
    return msg.encode()


# ---- orders ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sender", ["NWGEN", "LKMED"])
async def test_new_order_creates_the_exam_the_dialect_describes(
    hl7: Running, store: ExamStore, sender: str
) -> None:
    exam = planned(sender, modality=Modality.MR, priority=Priority.STAT)
    code, _, _ = await send(hl7, builder(sender).new_order(exam, control_id=cid()))
    assert code == "AA"
    got = await exam_of(store, exam)
    tenant, site = ("northwind", "NW-GEN") if sender == "NWGEN" else ("lakeside", "LK-MED")
    assert (got.tenant, got.site, got.status, got.version) == (tenant, site, S.SCHEDULED, 1)
    assert (got.priority, got.modality) == (Priority.STAT, Modality.MR)
    assert got.patient_id == keys.patient_id(tenant, exam.patient.mrn)
    assert got.mrn == exam.patient.mrn
    assert got.patient_name == exam.patient.name
    assert got.procedure_code == exam.procedure.code and got.subspecialty == "neuro"
    # Local times of the site's zone land as the right instant.
    assert got.scheduled_at == exam.scheduled_at
    assert got.tat_due_at == exam.scheduled_at + 60 * 60_000  # STAT: an hour
    profile = await get_profile(store, tenant, got.patient_id)
    assert profile is not None and profile.birth_date == "1970-01-01"


@pytest.mark.parametrize("sender", ["NWGEN", "LKMED"])
async def test_every_order_control_and_order_status_lands_as_its_state(
    hl7: Running, store: ExamStore, sender: str
) -> None:
    arrived = "AR" if sender == "NWGEN" else "ZA"  # each site's own code for "arrived"
    # (ORC-1, ORC-5) -> (state, version): skipped states are walked, one write each.
    cases = [
        ("SC", "SC", S.SCHEDULED, 1),  # already there: acknowledged, nothing written
        ("SC", arrived, S.ARRIVED, 2),
        ("SC", "IP", S.IN_PROGRESS, 3),  # via ARRIVED
        ("SC", "CM", S.COMPLETED, 4),  # via ARRIVED, IN_PROGRESS
        ("SC", "HD", S.SCHEDULED, 1),  # on hold: no worklist state, AA without a write
        ("SC", "CA", S.CANCELLED, 2),
        ("CA", "CA", S.CANCELLED, 2),
        ("DC", "", S.CANCELLED, 2),
    ]
    for control, orc5, state, version in cases:
        exam = await ordered(hl7, sender)
        code, _, reason = await send(hl7, order_status(exam, sender, orc5, control))
        got = await exam_of(store, exam)
        assert (code, got.status, got.version) == ("AA", state, version), (control, orc5, reason)
    # An order status the site's table lacks is an AE naming ORC-5.
    exam = await ordered(hl7, sender)
    code, field, _ = await send(hl7, order_status(exam, sender, "ZZ"))
    assert (code, field) == ("AE", "ORC-5")


async def test_an_illegal_move_is_ae_naming_the_current_state(
    hl7: Running, store: ExamStore
) -> None:
    exam = await ordered(hl7, "NWGEN")
    await moved_to(hl7, exam, "NWGEN", S.COMPLETED)
    before = without_bookkeeping(await table_items(store))
    code, field, reason = await send(hl7, order_status(exam, "NWGEN", "SC"))
    assert (code, field) == ("AE", "ORC-5")
    assert "COMPLETED" in reason
    assert without_bookkeeping(await table_items(store)) == before
    # A cancellation after the report is refused the same way.
    await moved_to(hl7, exam, "NWGEN", S.FINAL)
    code, _, reason = await send(hl7, order_status(exam, "NWGEN", "CA", "CA"))
    assert code == "AE" and "FINAL" in reason


@pytest.mark.parametrize("sender", ["NWGEN", "LKMED"])
async def test_order_change_xo(hl7: Running, store: ExamStore, sender: str) -> None:
    exam = await ordered(hl7, sender, priority=Priority.ROUTINE)
    b = builder(sender)
    later = exam.scheduled_at + 60 * 60_000
    code, _, reason = await send(
        hl7, b.change_order(exam, control_id=cid(), priority=Priority.STAT, scheduled_at=later)
    )
    assert code == "AA", reason
    got = await exam_of(store, exam)
    assert (got.priority, got.scheduled_at, got.version) == (Priority.STAT, later, 2)
    assert got.tat_due_at == later + 60 * 60_000
    # A new procedure once scanning started is refused (AE), priority still changes.
    await moved_to(hl7, exam, sender, S.IN_PROGRESS)
    other = replace(exam, procedure=exam.procedure._replace(code="70553"))
    code, _, reason = await send(hl7, b.change_order(other, control_id=cid()))
    assert code == "AE" and "IN_PROGRESS" in reason
    # XO carries the whole order as it is now: the same schedule, a new priority.
    code, _, _ = await send(
        hl7,
        b.change_order(exam, control_id=cid(), priority=Priority.URGENT, scheduled_at=later),
    )
    assert code == "AA"
    got = await exam_of(store, exam)
    assert (got.priority, got.status, got.version) == (Priority.URGENT, S.IN_PROGRESS, 5)


# ---- results -------------------------------------------------------------------------------------


@pytest.mark.parametrize("sender", ["NWGEN", "LKMED"])
async def test_results_move_the_report_state(hl7: Running, store: ExamStore, sender: str) -> None:
    exam = await ordered(hl7, sender)
    await moved_to(hl7, exam, sender, S.COMPLETED)
    for status, version in ((S.PRELIMINARY, 5), (S.FINAL, 6), (S.AMENDED, 7), (S.AMENDED, 8)):
        await moved_to(hl7, exam, sender, status)
        got = await exam_of(store, exam)
        assert (got.status, got.version) == (status, version)
    # F for an exam still being scanned walks through COMPLETED (the RIS skipped CM).
    scanning = await ordered(hl7, sender)
    await moved_to(hl7, scanning, sender, S.IN_PROGRESS)
    await moved_to(hl7, scanning, sender, S.FINAL)
    got = await exam_of(store, scanning)
    assert (got.status, got.version, got.completed_at is not None) == (S.FINAL, 5, True)
    # X cancels an exam that was not reported.
    dropped = await ordered(hl7, sender)
    msg = parse(builder(sender).result(dropped, S.FINAL, control_id=cid()))
    msg.set("OBR-25", "X")
    code, _, _ = await send(hl7, msg.encode())
    assert code == "AA" and (await exam_of(store, dropped)).status == S.CANCELLED


async def test_a_result_for_a_claimed_exam_is_ae_with_the_reason(
    hl7: Running, store: ExamStore
) -> None:
    exam = await ordered(hl7, "LKMED")
    await moved_to(hl7, exam, "LKMED", S.COMPLETED)
    got = await exam_of(store, exam)
    await Claims(store).claim(got.patient_id, got.accession, "t-rad", "Dr. Test Reader")
    code, field, reason = await send(
        hl7, builder("LKMED").result(exam, S.PRELIMINARY, control_id=cid())
    )
    assert (code, field) == ("AE", "OBR-25")
    assert "being read by Dr. Test Reader" in reason
    after = await exam_of(store, exam)
    assert (after.status, after.claimed_by) == (S.COMPLETED, "t-rad")


async def test_a_result_for_an_unknown_order_is_ae(hl7: Running, store: ExamStore) -> None:
    ghost = planned("NWGEN")
    code, field, reason = await send(hl7, builder("NWGEN").result(ghost, S.FINAL, control_id=cid()))
    assert (code, field) == ("AE", "OBR-18")
    assert "unknown order" in reason and ghost.accession in reason


# ---- rejections ----------------------------------------------------------------------------------


async def test_rejected_messages_are_dead_lettered_and_change_nothing(
    hl7: Running, store: ExamStore, capsys: pytest.CaptureFixture[str]
) -> None:
    exam = await ordered(hl7, "NWGEN")
    before = without_bookkeeping(await table_items(store))
    good = builder("NWGEN").new_order(planned("NWGEN"), control_id=cid())
    wrong_type = parse(builder("NWGEN").patient_update(patient("northwind"), control_id=cid()))
    wrong_type.set("MSH-9.2", "A01")
    no_accession = parse(builder("LKMED").new_order(planned("LKMED"), control_id=cid()))
    no_accession.set("IPC-1", "")
    odd_priority = parse(builder("NWGEN").new_order(planned("NWGEN"), control_id=cid()))
    odd_priority.set("ORC-7.6", "Q")
    # (message, ACK code, field in the ERR segment, field in the dead letter); a v2.3.1
    # ERR-1 locates a field but not its component. A facility no mapping binds to this
    # peer leaves no dead letter (None): nothing of an unauthenticated sender is stored.
    cases = [
        ("this is not HL7", "AR", "MSH", "MSH"),
        (good.replace("|NWGEN|", "|NOSUCHSITE|", 1), "AR", "MSH-4", None),  # unknown site
        (good.replace("|P|2.3.1", "|T|2.3.1"), "AR", "MSH-11", "MSH-11"),  # training message
        (wrong_type.encode(), "AR", "MSH-9", "MSH-9"),  # ADT^A01: not one this site sends
        (good.replace("ORM^O01", "ORM^O02"), "AR", "MSH-9", "MSH-9"),
        (no_accession.encode(), "AE", "IPC-1", "IPC-1"),  # required field missing
        (odd_priority.encode(), "AE", "ORC-7", "ORC-7.6"),  # a code the mapping lacks
    ]
    for text, expected, field, _ in cases:
        code, got_field, reason = await send(hl7, text)
        assert (code, got_field) == (expected, field), reason
    assert without_bookkeeping(await table_items(store)) == before
    letters = await DeadLetters(store).list()
    stored = [f for *_, f in cases if f is not None]
    assert len(letters) == len(stored)
    assert {d.field for d in letters} == set(stored)
    assert all(d.reason and d.raw for d in letters)
    # The exam that was there is untouched.
    assert (await exam_of(store, exam)).version == 1

    # The operator's view: list, then show one (with the value at the field).
    args = argparse.Namespace(command="list", all=False, limit=100)
    assert await run_command(args, store, Hl7Settings()) == 0
    listing = capsys.readouterr().out
    assert listing.count("\n") == len(stored) + 1 and "MSH-11" in listing
    target = next(d for d in letters if d.field == "ORC-7.6")
    assert await run_command(argparse.Namespace(command="show", id=target.id), store, None) == 0
    shown = capsys.readouterr().out
    assert "value at ORC-7.6: 'Q'" in shown and "ORC|NW|" in shown


async def test_replay_of_a_dead_letter_after_the_cause_is_fixed(
    hl7: Running, store: ExamStore, capsys: pytest.CaptureFixture[str]
) -> None:
    await seed_demo_directory(store)  # the replay checks the directory, as the listener does
    exam = planned("NWGEN")
    result = builder("NWGEN").result(exam, S.FINAL, control_id=cid())
    # The result arrives before its order: AE, kept.
    assert (await send(hl7, result))[0] == "AE"
    assert (await send(hl7, result))[0] == "AE"  # resent: still one dead letter
    (letter,) = await DeadLetters(store).list()
    assert letter.attempts == 2
    replay = argparse.Namespace(command="replay", id=letter.id)
    assert await run_command(replay, store, Hl7Settings()) == 1
    assert "stays open" in capsys.readouterr().out
    # The order arrives; the replay now applies the result and closes the dead letter.
    code, _, _ = await send(hl7, builder("NWGEN").new_order(exam, control_id=cid()))
    assert code == "AA"
    await moved_to(hl7, exam, "NWGEN", S.COMPLETED)
    assert await run_command(replay, store, Hl7Settings()) == 0
    assert (await exam_of(store, exam)).status == S.FINAL
    assert await DeadLetters(store).list() == []
    (closed,) = await DeadLetters(store).list(include_replayed=True)
    assert closed.status == "replayed" and closed.replayed_at is not None


# ---- duplicates -------------------------------------------------------------------------------


async def test_a_repeated_control_id_is_aa_without_a_second_write(
    hl7: Running, store: ExamStore
) -> None:
    exam = await ordered(hl7, "NWGEN")
    await moved_to(hl7, exam, "NWGEN", S.FINAL)
    amend = builder("NWGEN").result(exam, S.AMENDED, control_id=cid())
    for _ in range(3):
        code, _, _ = await send(hl7, amend)
        assert code == "AA"
    # AMENDED -> AMENDED is a legal write: only the ledger kept it to one.
    got = await exam_of(store, exam)
    assert (got.status, got.version) == (S.AMENDED, 6)
    assert hl7.ingest.counts["duplicate"] == 2
    # Another listener process (an empty cache) answers from the durable ledger.
    async with running(store) as other:
        async with other.client() as client:
            assert (await client.send(amend)).code == "AA"
        assert other.ingest.counts["duplicate"] == 1
    assert (await exam_of(store, exam)).version == 6


async def test_a_crash_between_the_write_and_the_ledger_does_not_write_twice(
    hl7: Running, store: ExamStore
) -> None:
    exam = await ordered(hl7, "NWGEN")
    text = builder("NWGEN").status_update(exam, S.COMPLETED, control_id=cid())
    assert text is not None
    mapping = MAPPINGS.get("NWGEN")
    assert mapping is not None
    # The write lands, the process dies before recording the control ID ...
    await apply(store, interpret(parse(text), mapping))
    written = await exam_of(store, exam)
    assert (written.status, written.version) == (S.COMPLETED, 4)
    assert not await Ledger(store).seen("NWGEN", parse(text).get("MSH-10"))
    # ... and the sender, never acknowledged, resends: AA, no further write.
    assert (await send(hl7, text))[0] == "AA"
    assert (await exam_of(store, exam)).version == 4
    assert await Ledger(store).seen("NWGEN", parse(text).get("MSH-10"))
    # The same for a new order sent again under a new control ID after a lost ACK.
    code, _, _ = await send(hl7, builder("NWGEN").new_order(exam, control_id=cid()))
    assert code == "AA" and (await exam_of(store, exam)).version == 4


# ---- patients ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sender", ["NWGEN", "LKMED"])
async def test_patient_update_renames_the_profile_and_the_open_exams(
    hl7: Running, store: ExamStore, sender: str
) -> None:
    tenant = "northwind" if sender == "NWGEN" else "lakeside"
    who = patient(tenant, name="BEFORE^GAMMA")
    open_exam = await ordered(hl7, sender, who=who)
    done = await ordered(hl7, sender, who=who)
    await moved_to(hl7, done, sender, S.COMPLETED)
    await moved_to(hl7, done, sender, S.FINAL)
    renamed = who.model_copy(update={"name": "AFTER^GAMMA", "birth_date": "1971-02-03"})
    code, _, _ = await send(hl7, builder(sender).patient_update(renamed, control_id=cid()))
    assert code == "AA"
    profile = await get_profile(store, tenant, who.patient_id)
    assert profile is not None
    assert (profile.name, profile.birth_date, profile.mrn) == ("AFTER^GAMMA", "1971-02-03", who.mrn)
    got = await exam_of(store, open_exam)
    assert (got.patient_name, got.version) == ("AFTER^GAMMA", 2)
    # A finished exam keeps the name it was reported under.
    assert (await exam_of(store, done)).patient_name == "BEFORE^GAMMA"


TENANT = {"NWGEN": "northwind", "LKMED": "lakeside"}


async def _two_patients(
    hl7: Running, store: ExamStore, sender: str = "NWGEN"
) -> tuple[Exam, Exam, Exam]:
    """Patient 1 with one exam, patient 2 with two (one of them claimed)."""
    one = patient(TENANT[sender], name="KEEPER^DELTA")
    two = patient(TENANT[sender], name="DUPLICATE^DELTA")
    a = await ordered(hl7, sender, who=one)
    b = await ordered(hl7, sender, who=two)
    c = await ordered(hl7, sender, who=two)
    await moved_to(hl7, c, sender, S.COMPLETED)
    got_c = await exam_of(store, c)
    await Claims(store).claim(got_c.patient_id, got_c.accession, "t-rad", "Dr. Test Reader")
    return await exam_of(store, a), await exam_of(store, b), await exam_of(store, c)


@pytest.mark.parametrize("sender", ["NWGEN", "LKMED"])
async def test_merge_moves_the_prior_patients_exams_to_the_survivor_in_pid3(
    hl7: Running, store: ExamStore, sender: str
) -> None:
    tenant = TENANT[sender]
    a, b, c = await _two_patients(hl7, store, sender)
    survivor = patient(tenant, name="KEEPER^DELTA").model_copy(
        update={"mrn": a.mrn, "patient_id": a.patient_id}
    )
    # PID-3 = the survivor (patient 1), MRG-1 = the retired identifier (patient 2).
    merge = builder(sender).merge(survivor, b.mrn, control_id=cid())
    assert parse(merge).get("PID-3.1") == a.mrn and parse(merge).get("MRG-1") == b.mrn
    code, _, reason = await send(hl7, merge)
    assert code == "AA", reason
    for before in (a, b, c):
        got = await store.find_exam(tenant, before.accession)
        assert (got.patient_id, got.mrn, got.patient_name) == (
            a.patient_id,
            a.mrn,
            "KEEPER^DELTA",
        )
    moved_b = await store.find_exam(tenant, b.accession)
    assert moved_b.version == b.version + 2  # outranks the stream's REMOVE (version + 1)
    moved_c = await store.find_exam(tenant, c.accession)
    # The claim came along: holder, lease and its token still work.
    assert moved_c.claimed_by == "t-rad" and moved_c.lease_expires_at == c.lease_expires_at
    # Nothing is left under the prior patient but its profile, marked as merged.
    items = await table_items(store)
    prior = [i for i in items if i["PK"] == f"PATIENT#{b.patient_id}"]
    assert [i["SK"] for i in prior] == ["PATIENT#PROFILE"]
    assert prior[0]["merged_into"] == a.patient_id
    survivor_items = [i for i in items if i["PK"] == f"PATIENT#{a.patient_id}"]
    assert sum(str(i["SK"]).startswith("ORDER#") for i in survivor_items) == 3
    # Sent again: AA, nothing moves twice.
    assert (await send(hl7, merge))[0] == "AA"
    assert (await store.find_exam(tenant, b.accession)).version == moved_b.version


async def test_merge_with_the_identifiers_swapped_moves_the_exams_the_other_way(
    hl7: Running, store: ExamStore
) -> None:
    """The classic failure, made visible: the listener follows the fields, so an A40
    that names patient 2 in PID-3 makes patient 2 the survivor."""
    a, b, c = await _two_patients(hl7, store)
    swapped = patient("northwind", name="DUPLICATE^DELTA").model_copy(
        update={"mrn": b.mrn, "patient_id": b.patient_id}
    )
    code, _, _ = await send(hl7, builder("NWGEN").merge(swapped, a.mrn, control_id=cid()))
    assert code == "AA"
    owners = {
        e.accession: (await store.find_exam("northwind", e.accession)).patient_id for e in (a, b, c)
    }
    assert owners == {
        a.accession: b.patient_id,
        b.accession: b.patient_id,
        c.accession: b.patient_id,
    }
    assert a.patient_id not in owners.values()


async def test_a_merge_naming_the_same_patient_twice_is_ae(hl7: Running, store: ExamStore) -> None:
    who = patient("northwind")
    code, field, _ = await send(hl7, builder("NWGEN").merge(who, who.mrn, control_id=cid()))
    assert (code, field) == ("AE", "MRG-1")
    (letter,) = await DeadLetters(store).list()
    assert letter.field == "MRG-1.1" and "surviving patient" in letter.reason
