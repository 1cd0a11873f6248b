"""Closed exams are cached for the retention window only, and a snapshot's work is
bounded however long the tenant's history grows (real redis-server)."""

from __future__ import annotations

import itertools
import random
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from dynamo.deltas import ExamDelta
from dynamo.models import now_ms
from dynamo.states import ExamStatus, Modality, Priority
from dynamo.store import ExamStore
from tests.support.exams import exam_bundle
from worklist_cache import WorklistFeed, keys
from worklist_cache.feed import urgency_score
from worklist_cache.rebuild import Rebuilder
from worklist_cache.views import View

S = ExamStatus
HOUR = 3_600_000
RETENTION = 48 * HOUR
EVERY_STATE = View(statuses=list(ExamStatus))
_n = itertools.count(1)


def exam(
    tenant: str,
    status: ExamStatus,
    *,
    scheduled_hours_ago: float = 0,
    version: int = 1,
    exam_id: str | None = None,
    **update: Any,
) -> ExamDelta:
    base, _, _ = exam_bundle(tenant)
    at = now_ms() - int(scheduled_hours_ago * HOUR)
    return ExamDelta.from_exam(base).model_copy(
        update={
            "exam_id": exam_id or f"R{next(_n)}",
            "status": status,
            "version": version,
            "scheduled_at": at,
            "tat_due_at": at + HOUR,
            **update,
        }
    )


async def shown(feed: WorklistFeed, tenant: str, view: View = EVERY_STATE) -> set[str]:
    snap = await feed.snapshot(tenant, view, limit=10_000)
    assert snap.total == len(snap.rows)
    return {r["exam_id"] for r in snap.rows}


async def test_closed_exams_past_the_retention_leave_the_cache_and_every_state_views(
    redis: Redis,
) -> None:
    feed = WorklistFeed(redis, closed_retention_ms=RETENTION)
    old_open = exam("t1", S.COMPLETED, scheduled_hours_ago=24 * 7)  # open: kept, however old
    recent = [exam("t1", s, scheduled_hours_ago=47) for s in (S.FINAL, S.AMENDED, S.CANCELLED)]
    expired = [exam("t1", s, scheduled_hours_ago=49) for s in (S.FINAL, S.AMENDED, S.CANCELLED)]
    await feed.publish([old_open, *recent, *expired])

    later = exam("t1", S.SCHEDULED)
    await feed.publish([later])  # each apply prunes a few expired ones
    kept = {old_open.exam_id, later.exam_id, *(e.exam_id for e in recent)}
    assert await shown(feed, "t1") == kept
    assert await shown(feed, "t1", View(statuses=[S.FINAL, S.AMENDED, S.CANCELLED])) == {
        e.exam_id for e in recent
    }
    for e in expired:
        assert await feed.row("t1", e.exam_id) is None


async def test_a_replayed_old_delta_of_a_pruned_exam_does_not_bring_it_back(
    redis: Redis,
) -> None:
    feed = WorklistFeed(redis, closed_retention_ms=RETENTION)
    history = [
        exam("t2", status, scheduled_hours_ago=72, version=v, exam_id="OLD")
        for v, status in enumerate([S.SCHEDULED, S.COMPLETED, S.FINAL], start=1)
    ]
    assert None not in await feed.publish(history)
    await feed.publish([exam("t2", S.SCHEDULED)])  # this apply prunes OLD
    assert await feed.row("t2", "OLD") is None
    before = await redis.xlen(keys.feed("t2"))

    assert await feed.publish(history) == [None, None, None]  # a relay replaying its shard
    assert await feed.row("t2", "OLD") is None
    assert "OLD" not in await shown(feed, "t2")
    assert await redis.xlen(keys.feed("t2")) == before  # nothing recorded, nothing sent


async def test_the_maintenance_prunes_quiet_tenants_and_rows_cached_before_the_index(
    store: ExamStore, redis: Redis
) -> None:
    tenant = "northwind"
    keeper, order, profile = exam_bundle(tenant)
    await store.create_exam(keeper, order, profile)
    feed = WorklistFeed(redis, closed_retention_ms=RETENTION)
    rebuilder = Rebuilder(store, feed, closed_retention_ms=RETENTION)
    await rebuilder.rebuild(tenant)

    # A quiet tenant: expired closed exams and no delta after them.
    quiet = [exam(tenant, S.FINAL, scheduled_hours_ago=60) for _ in range(3)]
    await feed.publish(quiet)
    assert await shown(feed, tenant) != {keeper.accession}  # the last is still there
    assert await feed.prune_closed(tenant) >= 1
    assert await shown(feed, tenant) == {keeper.accession}

    # Rows a cache written before the closed index holds: the comparison prunes them.
    legacy = [exam(tenant, S.CANCELLED, scheduled_hours_ago=100) for _ in range(3)]
    await WorklistFeed(redis, closed_retention_ms=10**13).publish(legacy)
    await redis.delete(keys.closed(tenant))
    assert await shown(feed, tenant) == {keeper.accession, *(e.exam_id for e in legacy)}
    result = await rebuilder.check(tenant, repair=True, grace=0)
    assert result.total == 0  # retention is not a divergence
    assert await shown(feed, tenant) == {keeper.accession}


def delta(tenant: str, n: int, rng: random.Random) -> ExamDelta:
    return exam(
        tenant,
        rng.choice([S.SCHEDULED, S.COMPLETED, S.FINAL]),
        exam_id=f"E{n:04d}",
        site=rng.choice(["A", "B"]),
        modality=rng.choice([Modality.CT, Modality.MR]),
        priority=rng.choice(list(Priority)),
        tat_due_at=1_800_000_000_000 + rng.randrange(50),  # many ties: order by exam id
        claimed_by=rng.choice([None, "u-ana"]),
    )


async def test_a_snapshot_of_a_huge_tenant_reads_a_bounded_prefix_and_says_so(
    redis: Redis,
) -> None:
    # In urgency order: 280 CT exams with 5 MR ones among the first ten, then 20 MR
    # ones; a cap of 100 entries walked.
    tenant = "t4"
    ct = [exam(tenant, S.FINAL, modality=Modality.CT, tat_due_at=1_000 + 2 * i) for i in range(280)]
    urgent_mr = [
        exam(tenant, S.COMPLETED, modality=Modality.MR, tat_due_at=1_001 + 2 * i) for i in range(5)
    ]
    mr = [exam(tenant, S.FINAL, modality=Modality.MR, tat_due_at=9_000 + i) for i in range(20)]
    await WorklistFeed(redis).publish([*ct, *mr, *urgent_mr])
    capped = WorklistFeed(redis, scan_limit=100)

    # A view filtered by state only: exact total, the limit's rows, nothing capped.
    snap = await capped.snapshot(tenant, EVERY_STATE, limit=20)
    assert (snap.total, len(snap.rows), snap.total_capped) == (305, 20, False)

    # Filtered by modality: only what the first 100 entries hold, and it says so.
    only_mr = View(statuses=list(ExamStatus), modalities=[Modality.MR])
    snap = await capped.snapshot(tenant, only_mr, limit=20)
    assert snap.total_capped
    assert [r["exam_id"] for r in snap.rows] == [e.exam_id for e in urgent_mr]
    assert snap.total == 5

    # With room to walk everything: every MR exam, the exact total.
    snap = await WorklistFeed(redis, scan_limit=10_000).snapshot(tenant, only_mr, limit=20)
    assert not snap.total_capped
    assert snap.total == 25
    assert [r["exam_id"] for r in snap.rows] == [e.exam_id for e in urgent_mr + mr[:15]]

    # A resume's membership of the state-only view is whole, whatever the cap.
    got = await capped.recover(tenant, EVERY_STATE, snap.epoch, snap.offset, members=1_000)
    assert len(got.members) == 305


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 10**6),
    scan_limit=st.integers(1, 700),
    limit=st.integers(1, 300),
    mr_only=st.booleans(),
    mine=st.booleans(),
)
async def test_a_capped_snapshot_is_the_view_over_the_most_urgent_entries(
    redis: Redis, seed: int, scan_limit: int, limit: int, mr_only: bool, mine: bool
) -> None:
    """Equal to filtering in Python the first max(limit, scan_limit) index entries in
    urgency order (across chunk boundaries of the indexes it merges)."""
    rng = random.Random(seed)
    tenant = f"p{seed}-{scan_limit}-{limit}-{mr_only}-{mine}"
    await WorklistFeed(redis).publish([delta(tenant, n, rng) for n in range(600)])
    feed = WorklistFeed(redis, scan_limit=scan_limit)
    view = View(
        statuses=[S.SCHEDULED, S.FINAL],
        modalities=[Modality.MR] if mr_only else [],
        claimed_by_me=mine,
    )
    snap = await feed.snapshot(tenant, view, me="u-ana", limit=limit)

    rows = [orjson.loads(v) for v in (await redis.hgetall(keys.exams(tenant))).values()]
    candidates = sorted(
        (r for r in rows if r["status"] in ("SCHEDULED", "FINAL")),
        key=lambda r: (urgency_score(r["priority"], r["tat_due_at"]), r["exam_id"]),
    )
    match = view.matcher("u-ana")
    filtered = mr_only or mine
    walked = candidates[: max(limit, scan_limit)] if filtered else candidates
    chosen = [r for r in walked if match(r)]
    assert [r["exam_id"] for r in snap.rows] == [r["exam_id"] for r in chosen[:limit]]
    assert snap.total == len(chosen)
    assert snap.total_capped == (filtered and len(candidates) > max(limit, scan_limit))
