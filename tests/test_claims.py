"""Claims against DynamoDB Local: one reader per exam, leases, fencing, break-lock."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dynamo.claims import Claims
from dynamo.exceptions import AlreadyClaimed, InvalidTransition, NotClaimable, StaleToken
from dynamo.models import Exam
from dynamo.serde import from_attrs
from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from tests.conftest import UNIT
from tests.support.exams import exam_in, raw_item

S = ExamStatus


@pytest.fixture
def claims(store: ExamStore) -> Claims:
    return Claims(store, lease_seconds=90)


async def ready(store: ExamStore) -> Exam:
    return await exam_in(store, S.COMPLETED)


async def test_a_claim_names_its_holder_and_hides_its_token(
    store: ExamStore, claims: Claims
) -> None:
    exam = await ready(store)
    claim = await claims.claim(exam.patient_id, exam.accession, "u-ana", "Dr. Ana Rivera")
    assert claim.exam.claimed_by == "u-ana" and claim.exam.claimed_by_name == "Dr. Ana Rivera"
    assert claim.exam.version == exam.version + 1
    assert claim.exam.lease_expires_at and claim.exam.claimed_at
    dumped = claim.exam.model_dump_json()
    assert claim.token not in dumped and claim.token.split(".")[1] not in dumped

    with pytest.raises(AlreadyClaimed) as err:
        await claims.claim(exam.patient_id, exam.accession, "u-ben", "Dr. Ben Okafor")
    assert err.value.holder == "u-ana" and err.value.holder_name == "Dr. Ana Rivera"
    assert err.value.code == "conflict"
    assert "Dr. Ana Rivera" in str(err.value)


async def test_only_an_exam_ready_to_read_can_be_claimed(store: ExamStore, claims: Claims) -> None:
    for status in (S.SCHEDULED, S.IN_PROGRESS, S.FINAL, S.CANCELLED):
        exam = await exam_in(store, status)
        with pytest.raises(NotClaimable) as err:
            await claims.claim(exam.patient_id, exam.accession, "u-ana", "Dr. Ana Rivera")
        assert err.value.current == status
    prelim = await exam_in(store, S.PRELIMINARY)
    await claims.claim(prelim.patient_id, prelim.accession, "u-ana", "Dr. Ana Rivera")


async def test_the_holder_claiming_again_fences_out_the_old_token(
    store: ExamStore, claims: Claims
) -> None:
    exam = await ready(store)
    first = await claims.claim(exam.patient_id, exam.accession, "u-ana", "Ana")
    second = await claims.claim(exam.patient_id, exam.accession, "u-ana", "Ana")  # a reload
    assert first.token != second.token
    assert int(second.token.split(".")[0]) > int(first.token.split(".")[0])
    with pytest.raises(StaleToken):
        await claims.renew(exam.patient_id, exam.accession, "u-ana", first.token)
    await claims.renew(exam.patient_id, exam.accession, "u-ana", second.token)


async def test_renew_and_release_need_the_holder_and_its_token(
    store: ExamStore, claims: Claims
) -> None:
    exam = await ready(store)
    claim = await claims.claim(exam.patient_id, exam.accession, "u-ana", "Ana", lease_ms=10_000)
    renewed = await claims.renew(exam.patient_id, exam.accession, "u-ana", claim.token)
    assert renewed.lease_expires_at and renewed.lease_expires_at > (
        claim.exam.lease_expires_at or 0
    )
    for user, token in (("u-ben", claim.token), ("u-ana", "1." + "0" * 32), ("u-ana", "junk")):
        with pytest.raises(StaleToken) as err:
            await claims.release(exam.patient_id, exam.accession, user, token)
        assert err.value.code == "stale_token"
    released = await claims.release(exam.patient_id, exam.accession, "u-ana", claim.token)
    assert released.claimed_by is None and released.lease_expires_at is None
    with pytest.raises(StaleToken):
        await claims.release(exam.patient_id, exam.accession, "u-ana", claim.token)
    # Back on the list: someone else may take it.
    await claims.claim(exam.patient_id, exam.accession, "u-ben", "Ben")


async def test_reports_need_the_claim(store: ExamStore, claims: Claims) -> None:
    exam = await ready(store)
    claim = await claims.claim(exam.patient_id, exam.accession, "u-ana", "Ana")
    # Nobody else moves a claimed exam into a report state, not even a system writer.
    with pytest.raises(AlreadyClaimed):
        await store.transition(exam.patient_id, exam.accession, S.FINAL)
    with pytest.raises(StaleToken):
        await claims.sign(exam.patient_id, exam.accession, "u-ben", claim.token, S.FINAL)
    with pytest.raises(InvalidTransition):
        await claims.sign(exam.patient_id, exam.accession, "u-ana", claim.token, S.CANCELLED)
    assert (await store.get_exam(exam.patient_id, exam.accession)).status == S.COMPLETED

    prelim = await claims.sign(exam.patient_id, exam.accession, "u-ana", claim.token, S.PRELIMINARY)
    assert prelim.status == S.PRELIMINARY and prelim.claimed_by == "u-ana"
    final = await claims.sign(exam.patient_id, exam.accession, "u-ana", claim.token, S.FINAL)
    assert final.status == S.FINAL and final.claimed_by is None  # a final report ends the claim
    with pytest.raises(StaleToken):
        await claims.renew(exam.patient_id, exam.accession, "u-ana", claim.token)


async def test_a_cancelled_order_ends_the_claim(store: ExamStore, claims: Claims) -> None:
    exam = await ready(store)
    claim = await claims.claim(exam.patient_id, exam.accession, "u-ana", "Ana")
    cancelled = await store.transition(exam.patient_id, exam.accession, S.CANCELLED)
    assert cancelled.claimed_by is None
    with pytest.raises(StaleToken):
        await claims.renew(exam.patient_id, exam.accession, "u-ana", claim.token)


async def test_an_expired_lease_is_reaped_and_its_token_stays_dead(
    store: ExamStore, claims: Claims
) -> None:
    exam = await ready(store)
    kept = await ready(store)
    short = await claims.claim(exam.patient_id, exam.accession, "u-ana", "Ana", lease_ms=200)
    await claims.claim(kept.patient_id, kept.accession, "u-ben", "Ben", lease_ms=60_000)
    await asyncio.sleep(0.4 * UNIT)
    # Two reapers on two nodes: each expired claim is released exactly once.
    results = await asyncio.gather(claims.reap("northwind"), claims.reap("northwind"))
    released = [e.accession for r in results for e in r]
    assert released == [exam.accession]
    after = await store.get_exam(exam.patient_id, exam.accession)
    assert after.claimed_by is None and after.status == S.COMPLETED
    assert (await store.get_exam(kept.patient_id, kept.accession)).claimed_by == "u-ben"

    taken = await claims.claim(exam.patient_id, exam.accession, "u-cy", "Cy")
    with pytest.raises(StaleToken):
        await claims.release(exam.patient_id, exam.accession, "u-ana", short.token)
    assert (await store.get_exam(exam.patient_id, exam.accession)).claimed_by == "u-cy"
    assert taken.exam.claimed_by == "u-cy"


async def test_an_expired_lease_can_be_taken_before_the_reaper_runs(
    store: ExamStore, claims: Claims
) -> None:
    exam = await ready(store)
    old = await claims.claim(exam.patient_id, exam.accession, "u-ana", "Ana", lease_ms=100)
    await asyncio.sleep(0.3 * UNIT)
    await claims.claim(exam.patient_id, exam.accession, "u-ben", "Ben")
    with pytest.raises(StaleToken):
        await claims.sign(exam.patient_id, exam.accession, "u-ana", old.token, S.FINAL)


async def test_admin_break_lock_releases_and_is_recorded(
    store: ExamStore, claims: Claims, ddb: Any
) -> None:
    exam = await ready(store)
    claim = await claims.claim(exam.patient_id, exam.accession, "u-ana", "Ana")
    broken, holder = await claims.break_lock(
        exam.patient_id, exam.accession, "u-admin", "reader went home"
    )
    assert holder == "u-ana" and broken.claimed_by is None
    with pytest.raises(StaleToken):
        await claims.renew(exam.patient_id, exam.accession, "u-ana", claim.token)
    resp = await ddb.query(
        TableName=store.table,
        KeyConditionExpression="PK = :pk AND begins_with(SK, :audit)",
        ExpressionAttributeValues={
            ":pk": {"S": f"PATIENT#{exam.patient_id}"},
            ":audit": {"S": f"AUDIT#{exam.accession}#"},
        },
    )
    (audit,) = [from_attrs(i) for i in resp["Items"]]
    assert (audit["by"], audit["holder"], audit["action"]) == ("u-admin", "u-ana", "break_lock")
    # Nothing to break: a no-op that says so.
    again, nobody = await claims.break_lock(exam.patient_id, exam.accession, "u-admin", "again")
    assert nobody is None and again.version == broken.version
    # The fencing counter moved on: a later claim's token outranks every earlier one.
    later = await claims.claim(exam.patient_id, exam.accession, "u-ben", "Ben")
    assert int(later.token.split(".")[0]) > int(claim.token.split(".")[0]) + 1
    assert "lock_version" in await raw_item(store, exam)


async def test_twenty_concurrent_claimers_one_winner_every_round(
    store: ExamStore, claims: Claims
) -> None:
    exam = await ready(store)
    users = [f"u-{i:02d}" for i in range(20)]
    for round_no in range(200):
        outcomes = await asyncio.gather(
            *(claims.claim(exam.patient_id, exam.accession, u, u.upper()) for u in users),
            return_exceptions=True,
        )
        winners = [o for o in outcomes if not isinstance(o, BaseException)]
        losers = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(winners) == 1, f"round {round_no}: {len(winners)} winners"
        holder = winners[0].exam.claimed_by
        assert all(isinstance(e, AlreadyClaimed) and e.holder == holder for e in losers), losers
        await claims.release(exam.patient_id, exam.accession, holder or "", winners[0].token)
