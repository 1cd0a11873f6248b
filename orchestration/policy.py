"""Which case for a reader, which reader for a case, and why.

The order of the worklist's urgency (priority, then turnaround deadline) comes first,
eligibility (the caller's scope rule, `worklist_cache.views.Scope.allows`) second, and
balance third:
- `next_case`: a reader asks; they get a related study of a patient they already hold,
  else the most urgent case they may read; among equally urgent cases (same priority
  and the same deadline bucket), the one that brings them closest to the group's mean
  RVU load.
- `choose_reader`: a case needs a reader (a STAT offer, a push assignment); the reader
  holding the same patient's related study wins, then, for a STAT, the lowest current
  STAT load, for the rest the fewest RVUs this shift; per-reader caps exclude.
Every answer is a `Decision` naming the rule and the figures it weighed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestration.rules import Rules
from orchestration.rvu import rvu_of

__all__ = ["Candidate", "Decision", "ReaderLoad", "choose_reader", "next_case", "rank"]

_PRIORITY_RANK = {"STAT": 0, "URGENT": 1, "ROUTINE": 2}
# Deadlines within this many ms count as equally urgent, so balance may break the tie.
DEADLINE_BUCKET_MS = 15 * 60_000

Allows = Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A case waiting for a reader: a worklist row's fields that the rules weigh."""

    exam_id: str
    priority: str
    tat_due_at: int
    ready_at: int  # when it became ready to read (COMPLETED)
    procedure_code: str
    patient: str  # a patient key within the tenant (never shown; grouping only)
    row: Mapping[str, Any]  # what the scope rule is asked about

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Candidate:
        return cls(
            exam_id=str(row["exam_id"]),
            priority=str(row["priority"]),
            tat_due_at=int(row["tat_due_at"]),
            ready_at=int(row.get("completed_at") or row.get("updated_at") or 0),
            procedure_code=str(row.get("procedure_code") or ""),
            patient=str(row.get("mrn") or ""),
            row=row,
        )

    def urgency(self) -> tuple[int, int]:
        return (_PRIORITY_RANK.get(self.priority, 9), self.tat_due_at // DEADLINE_BUCKET_MS)


@dataclass(slots=True)
class ReaderLoad:
    """One reader's load now: what the balance and the caps weigh."""

    sub: str
    open_claims: int = 0
    stat_claims: int = 0
    rvu_shift: float = 0.0  # RVUs read (signed) or held this shift
    patients: frozenset[str] = frozenset()  # patients of the cases they hold
    allows: Allows | None = None  # their scope rule (None: everything in the tenant)
    # Hours on shift so far: balance weighs RVUs per hour when known (a reader who has
    # just started is not "behind" the others), else cumulative RVUs.
    shift_hours: float = 0.0

    def may_read(self, candidate: Candidate) -> bool:
        return self.allows is None or self.allows(candidate.row)

    @property
    def rvu_rate(self) -> float:
        """RVUs per hour on shift, or the cumulative RVUs when the shift is unknown."""
        return self.rvu_shift / self.shift_hours if self.shift_hours > 0 else self.rvu_shift


@dataclass(frozen=True, slots=True)
class Decision:
    exam_id: str
    reader: str
    rule: str  # "same-patient" | "most-urgent" | "lowest-stat-load" | "lowest-rvu"
    figures: dict[str, Any] = field(default_factory=dict)

    def explain(self) -> dict[str, Any]:
        return {"exam_id": self.exam_id, "reader": self.reader, "rule": self.rule, **self.figures}


def _at_cap(reader: ReaderLoad, candidate: Candidate, rules: Rules) -> bool:
    if reader.open_claims >= rules.max_open_claims:
        return True
    return candidate.priority == "STAT" and reader.stat_claims >= rules.max_stat_claims


def rank(
    reader: ReaderLoad,
    candidates: Iterable[Candidate],
    rules: Rules,
    *,
    mean_rvu: float | None = None,
) -> list[Candidate]:
    """The cases this reader may take, best first (eligibility and caps applied)."""
    eligible = [c for c in candidates if reader.may_read(c) and not _at_cap(reader, c, rules)]
    # `mean_rvu` is the group's figure in the unit of `ReaderLoad.rvu_rate`.
    behind = mean_rvu is None or reader.rvu_rate <= mean_rvu

    def key(c: Candidate) -> tuple[int, int, int, float, int, str]:
        grouped = 0 if reader.patients and c.patient in reader.patients else 1
        prio, bucket = c.urgency()
        # Below the mean: the heavier case first; above it: the lighter one.
        rvu = rvu_of(c.procedure_code, rules.rvu_overrides)
        balance = -rvu if behind else rvu
        return (grouped, prio, bucket, balance, c.ready_at, c.exam_id)

    return sorted(eligible, key=key)


def next_case(
    reader: ReaderLoad,
    candidates: Iterable[Candidate],
    rules: Rules,
    *,
    mean_rvu: float | None = None,
) -> Decision | None:
    """The case to hand this reader, or None when nothing is eligible or they are at cap."""
    ranked = rank(reader, candidates, rules, mean_rvu=mean_rvu)
    if not ranked:
        return None
    best = ranked[0]
    rule = "same-patient" if best.patient and best.patient in reader.patients else "most-urgent"
    return Decision(
        best.exam_id,
        reader.sub,
        rule,
        {
            "priority": best.priority,
            "tat_due_at": best.tat_due_at,
            "rvu": rvu_of(best.procedure_code, rules.rvu_overrides),
            "reader_rvu_shift": round(reader.rvu_shift, 2),
            "reader_open_claims": reader.open_claims,
            "eligible_cases": len(ranked),
        },
    )


def choose_reader(
    candidate: Candidate,
    readers: Sequence[ReaderLoad],
    rules: Rules,
    *,
    exclude: Iterable[str] = (),
) -> Decision | None:
    """The reader a case goes to, or None when no eligible reader has room."""
    skip = set(exclude)
    able = [
        r
        for r in readers
        if r.sub not in skip and r.may_read(candidate) and not _at_cap(r, candidate, rules)
    ]
    if not able:
        return None
    grouped = [r for r in able if candidate.patient and candidate.patient in r.patients]
    if grouped:
        best = min(grouped, key=lambda r: (r.open_claims, r.sub))
        rule = "same-patient"
    elif candidate.priority == "STAT":
        best = min(able, key=lambda r: (r.stat_claims, r.open_claims, r.rvu_rate, r.sub))
        rule = "lowest-stat-load"
    else:
        best = min(able, key=lambda r: (r.rvu_rate, r.open_claims, r.sub))
        rule = "lowest-rvu"
    return Decision(
        candidate.exam_id,
        best.sub,
        rule,
        {
            "priority": candidate.priority,
            "rvu": rvu_of(candidate.procedure_code, rules.rvu_overrides),
            "reader_stat_claims": best.stat_claims,
            "reader_open_claims": best.open_claims,
            "reader_rvu_shift": round(best.rvu_shift, 2),
            "reader_rvu_per_hour": round(best.rvu_rate, 2),
            "readers_considered": len(able),
        },
    )
