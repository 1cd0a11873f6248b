"""The figures of one run: turnaround and claim waits by priority, breaches, and the
spread of RVUs per reader-hour."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from dynamo.states import Priority
from loadtest.assignment.day import Day
from loadtest.assignment.sim import RunResult
from loadtest.plan import HOUR, MINUTE

__all__ = ["figures", "percentile"]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def figures(day: Day, result: RunResult) -> dict[str, Any]:
    out: dict[str, Any] = {}
    breaches: Counter[str] = Counter()
    tat_all: dict[str, list[float]] = {p.value: [] for p in Priority}
    wait_all: dict[str, list[float]] = {p.value: [] for p in Priority}
    for exam in day.exams:
        signed = result.signed_at[exam.exam_id]
        tat_all[exam.priority].append((signed - exam.ready_at) / MINUTE)
        wait_all[exam.priority].append((result.claimed_at[exam.exam_id] - exam.ready_at) / MINUTE)
        if signed > exam.tat_due_at:
            breaches[exam.priority] += 1
    for p in Priority:
        name = p.value.lower()
        out[f"{name}_p50_min"] = _r(percentile(tat_all[p], 50))
        out[f"{name}_p90_min"] = _r(percentile(tat_all[p], 90))
        out[f"{name}_claim_p50_min"] = _r(percentile(wait_all[p], 50))
        out[f"{name}_claim_p90_min"] = _r(percentile(wait_all[p], 90))
        out[f"{name}_reads"] = len(tat_all[p])
    waits = [w for ws in wait_all.values() for w in ws]
    out["claim_p50_min"] = _r(percentile(waits, 50))
    out["claim_p90_min"] = _r(percentile(waits, 90))
    out["breaches"] = sum(breaches.values())
    out["breaches_by_priority"] = {p.value: breaches[p.value] for p in Priority}
    out["reads"] = len(result.signed_at)

    # RVUs per hour of each reader's shift, counting the cases they claimed on that
    # day's shift (leftovers claimed on the next morning's shift do not count).
    rvu: dict[str, float] = {r.sub: 0.0 for r in day.readers}
    exams = {e.exam_id: e for e in day.exams}
    spans = {r.sub: (r.shift[0] * HOUR, r.shift[1] * HOUR) for r in day.readers}
    next_day = 0
    for exam_id, sub in result.claimed_by.items():
        start, end = spans[sub]
        if start <= result.claimed_at[exam_id] < end:
            rvu[sub] += exams[exam_id].rvu
        else:
            next_day += 1
    per_hour = {r.sub: round(rvu[r.sub] / r.shift_hours, 2) for r in day.readers}
    rates = list(per_hour.values())
    mean = statistics.fmean(rates)
    out["rvu_cv"] = round(statistics.pstdev(rates) / mean, 3) if mean else None
    out["rvu_per_hour_mean"] = round(mean, 2)
    out["rvu_per_hour_by_reader"] = per_hour
    out["reads_after_the_day"] = next_day

    pairs = [e for e in day.exams if e.related_to]
    out["related_pairs"] = len(pairs)
    out["related_pairs_same_reader"] = sum(
        1 for e in pairs if result.claimed_by[e.exam_id] == result.claimed_by[e.related_to or ""]
    )
    events = Counter(entry.event for entry in result.log)
    out["stat_offers"] = events["offer"]
    out["stat_offers_lapsed"] = events["lapse"]
    out["preemptions"] = events["preempt"]
    out["coordinator_alerts"] = events["alert"]
    picks = Counter(entry.rule for entry in result.log if entry.event == "claim")
    out["claims_by_rule"] = dict(sorted(picks.items()))
    return out
