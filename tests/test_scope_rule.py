"""One rule for "may this principal see this row": the live path's matcher, the snapshot's
Lua script and `Scope.allows` agree on random rows, views and scopes (tenant, sites,
subspecialties, modalities)."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from dynamo.deltas import ExamDelta
from dynamo.states import ExamStatus, Modality, Priority
from tests.support.exams import exam_bundle
from worklist_cache import WorklistFeed
from worklist_cache.exceptions import OutOfScope
from worklist_cache.views import Scope, View, scope_view

SITES = ["NW-GEN", "NW-ORT", "NW-IMG"]
SUBSPECIALTIES = ["neuro", "msk", "body"]
ME = "t-me"
_tenants = itertools.count(1)

rows = st.lists(
    st.fixed_dictionaries(
        {
            "site": st.sampled_from(SITES),
            "subspecialty": st.sampled_from(SUBSPECIALTIES),
            "modality": st.sampled_from(list(Modality)),
            "priority": st.sampled_from(list(Priority)),
            "status": st.sampled_from(list(ExamStatus)),
            "claimed_by": st.sampled_from([None, ME, "t-other"]),
        }
    ),
    min_size=1,
    max_size=25,
)
subsets = st.lists(st.sampled_from(SITES), unique=True, max_size=3)
views = st.builds(
    lambda sites, subs, mods, prios, statuses, mine: View(
        sites=sites,
        subspecialties=subs,
        modalities=mods,
        priorities=prios,
        statuses=statuses,
        claimed_by_me=mine,
    ),
    subsets,
    st.lists(st.sampled_from(SUBSPECIALTIES), unique=True, max_size=3),
    st.lists(st.sampled_from(list(Modality)), unique=True, max_size=3),
    st.lists(st.sampled_from(list(Priority)), unique=True, max_size=2),
    st.lists(st.sampled_from(list(ExamStatus)), unique=True, max_size=4),
    st.booleans(),
)
scopes = st.tuples(
    subsets,
    st.lists(st.sampled_from(SUBSPECIALTIES), unique=True, max_size=3),
    st.lists(st.sampled_from([m.value for m in Modality]), unique=True, max_size=3),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(rows=rows, view=views, scope=scopes)
async def test_live_matcher_snapshot_script_and_scope_agree(
    redis: Redis,
    rows: list[dict[str, Any]],
    view: View,
    scope: tuple[list[str], list[str], list[str]],
) -> None:
    tenant = f"scope-{next(_tenants)}"
    principal = Scope(tenant, *(frozenset(part) for part in scope))
    try:
        scoped = scope_view(view, principal)
    except OutOfScope:
        return  # refused, never narrowed in silence: nothing is read at all
    exam, _, _ = exam_bundle(tenant=tenant)
    base = ExamDelta.from_exam(exam)
    deltas = [
        base.model_copy(update={"exam_id": f"X{i:03d}", **row, "tenant": tenant})
        for i, row in enumerate(rows)
    ]
    await WorklistFeed(redis).publish(deltas)
    snap = await WorklistFeed(redis).snapshot(tenant, scoped, me=ME, limit=1000)
    in_snapshot = {r["exam_id"] for r in snap.rows}
    matcher = scoped.matcher(ME)
    live = {d.exam_id for d in deltas if matcher(d.model_dump(mode="json"))}
    assert in_snapshot == live, "the snapshot script and the live matcher disagree"
    asked = view.matcher(ME)
    for d in deltas:
        row = d.model_dump(mode="json")
        if matcher(row):
            assert principal.allows(row), "a scoped view admitted a row outside the scope"
        # Exactly the view within the scope: nothing more, and nothing in scope lost.
        assert matcher(row) == (asked(row) and principal.allows(row))
