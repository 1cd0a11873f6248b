"""Peer review in the store (DynamoDB Local): sampling, blinding, assignment, RADPEER
scoring under a claim, arbitration."""

from __future__ import annotations

import pytest

from dynamo.claims import Claims
from dynamo.exceptions import ExamNotFound, InvalidTransition, StaleToken
from dynamo.models import Exam
from dynamo.review import (
    CommentRequired,
    ReviewState,
    ReviewStore,
    SelfReview,
    sampled,
)
from dynamo.serde import from_attrs
from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from tests.support.exams import exam_in

S = ExamStatus


def test_sampling_hits_the_rate_and_is_reproducible() -> None:
    accessions = [f"NW{n:08d}" for n in range(4000)]
    picked = [a for a in accessions if sampled(7, "northwind", a, 0.05)]
    # Binomial(4000, 0.05): mean 200, sd 13.8; five sd either side.
    assert 131 <= len(picked) <= 269
    assert picked == [a for a in accessions if sampled(7, "northwind", a, 0.05)]
    assert picked != [a for a in accessions if sampled(8, "northwind", a, 0.05)]
    assert not any(sampled(7, "northwind", a, 0.0) for a in accessions)
    assert all(sampled(7, "northwind", a, 1.0) for a in accessions)


async def read_by(store: ExamStore, user: str, name: str) -> Exam:
    """An exam a radiologist claimed and finalized."""
    exam = await exam_in(store, S.COMPLETED)
    claims = Claims(store)
    claim = await claims.claim(exam.patient_id, exam.accession, user, name)
    return await claims.sign(
        exam.patient_id, exam.accession, user, claim.token, S.FINAL, user_name=name
    )


async def test_the_reader_is_recorded_but_never_in_a_delta(store: ExamStore) -> None:
    exam = await read_by(store, "u-ana", "Dr. Ana")
    resp = await store.call(
        "get_item", TableName=store.table, Key=store.key(exam.patient_id, exam.accession)
    )
    item = from_attrs(resp["Item"])
    assert (item["reported_by"], item["reported_by_name"]) == ("u-ana", "Dr. Ana")
    from dynamo.deltas import ExamDelta

    assert "u-ana" not in ExamDelta.from_exam(exam).model_dump_json()


async def test_pool_takes_final_exams_once(store: ExamStore) -> None:
    reviews = ReviewStore(store)
    exam = await read_by(store, "u-ana", "Dr. Ana")
    pooled = await reviews.pool("northwind", exam.accession)
    assert pooled is not None and pooled.state is ReviewState.POOLED
    assert pooled.original_reader == "u-ana"
    assert await reviews.pool("northwind", exam.accession, source="manual") is None
    open_exam = await exam_in(store, S.COMPLETED)
    with pytest.raises(InvalidTransition):
        await reviews.pool("northwind", open_exam.accession)
    assert [r.accession for r in await reviews.all("northwind")] == [exam.accession]


async def test_a_reader_can_never_review_their_own_exam(store: ExamStore) -> None:
    reviews = ReviewStore(store)
    exam = await read_by(store, "u-ana", "Dr. Ana")
    await reviews.pool("northwind", exam.accession)
    with pytest.raises(SelfReview):
        await reviews.assign("northwind", exam.accession, "u-ana", "Dr. Ana", 0)
    assigned = await reviews.assign("northwind", exam.accession, "u-ben", "Dr. Ben", 123)
    assert (assigned.state, assigned.reviewer, assigned.due_at) == (
        ReviewState.ASSIGNED,
        "u-ben",
        123,
    )
    assert assigned.assignees == ("u-ben",)
    with pytest.raises(SelfReview):  # not even by re-assignment
        await reviews.assign("northwind", exam.accession, "u-ana", "Dr. Ana", 0)


async def test_scores_need_the_claim_and_discrepancies_a_comment(store: ExamStore) -> None:
    reviews = ReviewStore(store)
    concur = await read_by(store, "u-ana", "Dr. Ana")
    miss = await read_by(store, "u-ana", "Dr. Ana")
    for exam in (concur, miss):
        await reviews.pool("northwind", exam.accession)
        await reviews.assign("northwind", exam.accession, "u-ben", "Dr. Ben", 0)

    with pytest.raises(InvalidTransition):  # only the assigned reviewer claims
        await reviews.claim("northwind", concur.accession, "u-cy")
    _, token = await reviews.claim("northwind", concur.accession, "u-ben")
    with pytest.raises(StaleToken):
        await reviews.score("northwind", concur.accession, "u-ben", "1." + "0" * 32, "1", "")
    done = await reviews.score("northwind", concur.accession, "u-ben", token, "1", "")
    assert (done.state, done.final_score, done.claimed_by) == (ReviewState.DONE, "1", None)

    _, token = await reviews.claim("northwind", miss.accession, "u-ben")
    with pytest.raises(CommentRequired) as err:
        await reviews.score("northwind", miss.accession, "u-ben", token, "2b", "  ")
    assert "2b" in str(err.value)
    flagged = await reviews.score(
        "northwind", miss.accession, "u-ben", token, "3b", "missed PE in RLL"
    )
    assert flagged.state is ReviewState.ARBITRATION
    assert flagged.review_comment == "missed PE in RLL"


async def test_arbitration_confirms_changes_or_returns(store: ExamStore) -> None:
    reviews = ReviewStore(store)

    async def flagged() -> str:
        exam = await read_by(store, "u-ana", "Dr. Ana")
        await reviews.pool("northwind", exam.accession)
        await reviews.assign("northwind", exam.accession, "u-ben", "Dr. Ben", 0)
        _, token = await reviews.claim("northwind", exam.accession, "u-ben")
        await reviews.score("northwind", exam.accession, "u-ben", token, "2b", "subtle")
        return exam.accession

    a, b, c = await flagged(), await flagged(), await flagged()
    confirmed = await reviews.arbitrate("northwind", a, "u-coord", "confirm", None)
    assert (confirmed.state, confirmed.final_score) == (ReviewState.DONE, "2b")
    changed = await reviews.arbitrate("northwind", b, "u-coord", "change", "2a")
    assert (changed.state, changed.final_score, changed.score) == (ReviewState.DONE, "2a", "2b")
    returned = await reviews.arbitrate("northwind", c, "u-coord", "return", None)
    assert returned.state is ReviewState.ASSIGNED and returned.reviewer == "u-ben"
    _, token = await reviews.claim("northwind", c, "u-ben")  # scores again
    again = await reviews.score("northwind", c, "u-ben", token, "1", "")
    assert again.state is ReviewState.DONE
    with pytest.raises(InvalidTransition):
        await reviews.arbitrate("northwind", a, "u-coord", "confirm", None)


async def test_reviewer_ids_are_random_and_stored_on_the_review(store: ExamStore) -> None:
    """The number a reader sees is drawn per assignment and kept on the item: the same
    reviewer on five exams gets numbers that are no function of their `sub`."""
    reviews = ReviewStore(store)
    ids = []
    for _ in range(5):
        exam = await read_by(store, "u-ana", "Dr. Ana")
        await reviews.pool("northwind", exam.accession)
        assigned = await reviews.assign("northwind", exam.accession, "u-ben", "Dr. Ben", 0)
        assert assigned.reviewer_id is not None and 10000 <= assigned.reviewer_id < 100000
        assert (await reviews.get("northwind", exam.accession)).reviewer_id == assigned.reviewer_id
        ids.append(assigned.reviewer_id)
    # Five draws from 90,000 all equal by chance: about 1.5e-20.
    assert len(set(ids)) > 1


async def test_a_reassignment_draws_a_new_number_and_remembers_every_assignee(
    store: ExamStore,
) -> None:
    reviews = ReviewStore(store)
    exam = await read_by(store, "u-ana", "Dr. Ana")
    await reviews.pool("northwind", exam.accession)
    first = await reviews.assign("northwind", exam.accession, "u-ben", "Dr. Ben", 0)
    second = await reviews.assign("northwind", exam.accession, "u-cy", "Dr. Cy", 0)
    assert second.assignees == ("u-ben", "u-cy") and second.reviewer == "u-cy"
    assert second.reviewer_id is not None and first.reviewer_id is not None


async def test_pool_refuses_an_exam_the_caller_may_not_see_as_not_found(
    store: ExamStore,
) -> None:
    reviews = ReviewStore(store)
    exam = await read_by(store, "u-ana", "Dr. Ana")
    with pytest.raises(ExamNotFound) as hidden:
        await reviews.pool("northwind", exam.accession, allowed=lambda row: False)
    with pytest.raises(ExamNotFound) as missing:
        await reviews.pool("northwind", "TNO9999999", allowed=lambda row: False)
    assert hidden.value.code == missing.value.code
    assert await reviews.all("northwind") == []
    site = {"NW-GEN"}
    pooled = await reviews.pool("northwind", exam.accession, allowed=lambda r: r["site"] in site)
    assert pooled is not None and pooled.site == "NW-GEN"
