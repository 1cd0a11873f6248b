"""One seeded radiology day for the assignment simulation: its exams, its readers, and
every (reader, exam) reading time, all drawn before either mode runs.

The exams come from the simulator's own plan (`loadtest.plan.plan_day`, one tenant),
cancelled ones left out; some chest CTs of the hospital get a related CT of the abdomen
and pelvis of the same patient in the same encounter. Everything is synthetic.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from devstack.sites import DEMO_TENANTS, SUBSPECIALTIES
from dynamo.states import ExamStatus, Modality, Priority
from loadtest.plan import MINUTE, plan_day
from orchestration import Candidate, rvu_of
from worklist_cache.views import Scope

__all__ = [
    "READ_BASE",
    "Day",
    "Params",
    "ReaderSpec",
    "SimExam",
    "build_day",
    "expected_minutes",
]

TENANT = DEMO_TENANTS[0]
GEN, ORT, IMG = (site.code for site in TENANT.sites)
ALL_SITES = frozenset({GEN, ORT, IMG})
ALL_SUBS = frozenset(SUBSPECIALTIES)

# Minutes a typical radiologist takes on a typical study of each modality, and the work
# RVU of that typical study. Reading time grows more slowly than RVUs within a modality
# (`RVU_EXPONENT` < 1), so the heavier study of a modality pays a little more per minute,
# and plain films and screening mammograms pay the most per minute: the cases a
# cherry-picker goes for.
READ_BASE: Mapping[str, tuple[float, float]] = {
    Modality.CT: (10.0, 1.2),
    Modality.MR: (16.0, 1.8),
    Modality.XR: (2.0, 0.2),
    Modality.US: (6.0, 0.7),
    Modality.NM: (12.0, 1.2),
    Modality.MG: (5.0, 0.9),
}
RVU_EXPONENT = 0.6
# The related study a chest CT may bring along (CT abdomen and pelvis with contrast).
COMPANION_CODE = "74177"
CHEST_CT_CODES = frozenset({"71260", "71275"})


@dataclass(frozen=True)
class Params:
    """The day's shape and the readers' behaviour; defaults are the committed results'."""

    seed: int = 7
    exams_per_day: int = 480
    related_share: float = 0.5  # of the hospital's chest CTs, with a CT abdomen/pelvis
    cherry_share: float = 0.4  # of free pickers who take the best RVU per minute
    pick_noise: float = 0.3  # how often an urgency picker skips the top of the list
    pick_handful: int = 5  # ... and takes one of this many from the top instead
    free_group_share: float = 0.6  # a free picker reads the same patient's next study
    decline_share: float = 0.1  # STAT offers declined or missed (push)
    resume_penalty_min: float = 1.0  # minutes lost picking a paused case up again (push)
    read_sigma: float = 0.35  # lognormal spread of a study's complexity
    reader_sigma: float = 0.15  # lognormal spread of one reader on one study
    # Reading deadlines: minutes from COMPLETED (ready) to the signed report. The
    # catalog's targets count from the scheduled time; acquisition is the same in both
    # modes, so the simulation judges only the part readers control.
    tat_stat_min: int = 30
    tat_urgent_min: int = 2 * 60
    tat_routine_min: int = 12 * 60

    def tat_minutes(self, priority: str) -> int:
        return {
            Priority.STAT: self.tat_stat_min,
            Priority.URGENT: self.tat_urgent_min,
        }.get(Priority(priority), self.tat_routine_min)


@dataclass(frozen=True)
class SimExam:
    exam_id: str
    site: str
    modality: str
    subspecialty: str
    code: str
    priority: str
    patient: str
    ready_at: int  # ms since 07:00 of the day: COMPLETED, ready to read
    tat_due_at: int
    rvu: float
    expected_min: float  # what a reader expects it to take (what a cherry-picker weighs)
    related_to: str | None  # the primary study of a same-encounter pair
    candidate: Candidate


@dataclass(frozen=True)
class ReaderSpec:
    sub: str
    subspecialties: frozenset[str]
    sites: frozenset[str]
    shift: tuple[int, int]  # hours since 07:00 (repeats every 24 h for leftovers)
    speed: float  # multiplies every reading time (< 1: faster)

    @property
    def scope(self) -> Scope:
        return Scope(TENANT.code, self.sites, self.subspecialties)

    def allows(self) -> Callable[[Mapping[str, Any]], bool]:
        scope = self.scope
        return lambda row: scope.allows(dict(row))

    @property
    def shift_hours(self) -> int:
        return self.shift[1] - self.shift[0]


# The group's roster for the day: subspecialists by day, generalists covering the
# evening, and one night reader for the hospital (07:00 is hour 0).
ROSTER: tuple[tuple[str, frozenset[str], frozenset[str], tuple[int, int]], ...] = (
    ("neuro-1", frozenset({"neuro", "msk"}), ALL_SITES, (0, 8)),
    ("neuro-2", frozenset({"neuro", "chest"}), frozenset({GEN, IMG}), (4, 12)),
    ("body-1", frozenset({"body", "chest"}), ALL_SITES, (0, 8)),
    ("body-2", frozenset({"body", "chest", "nuclear"}), ALL_SITES, (2, 10)),
    ("msk-1", frozenset({"msk", "chest"}), ALL_SITES, (0, 8)),
    ("breast-1", frozenset({"breast", "body"}), ALL_SITES, (1, 9)),
    ("ed-1", ALL_SUBS, frozenset({GEN}), (0, 8)),
    ("gen-1", ALL_SUBS, ALL_SITES, (6, 14)),
    ("gen-2", ALL_SUBS, ALL_SITES, (8, 16)),
    ("night-1", ALL_SUBS, frozenset({GEN}), (16, 24)),
)


@dataclass(frozen=True)
class Day:
    params: Params
    exams: tuple[SimExam, ...]
    readers: tuple[ReaderSpec, ...]
    read_ms: Mapping[tuple[str, str], int]  # (reader, exam) -> how long that read takes
    cherry_pickers: frozenset[str]  # who cherry-picks in free mode


def expected_minutes(modality: str, rvu: float) -> float:
    base, ref = READ_BASE[modality]
    return base * float((rvu / ref) ** RVU_EXPONENT)


def _exam(
    exam_id: str,
    *,
    site: str,
    modality: str,
    subspecialty: str,
    code: str,
    priority: str,
    patient: str,
    ready_at: int,
    tat_due_at: int,
    related_to: str | None = None,
) -> SimExam:
    rvu = rvu_of(code)
    row = {
        "exam_id": exam_id,
        "tenant": TENANT.code,
        "site": site,
        "modality": modality,
        "subspecialty": subspecialty,
        "priority": priority,
        "procedure_code": code,
        "tat_due_at": tat_due_at,
        "completed_at": ready_at,
        "mrn": patient,
    }
    return SimExam(
        exam_id=exam_id,
        site=site,
        modality=modality,
        subspecialty=subspecialty,
        code=code,
        priority=priority,
        patient=patient,
        ready_at=ready_at,
        tat_due_at=tat_due_at,
        rvu=rvu,
        expected_min=expected_minutes(modality, rvu),
        related_to=related_to,
        candidate=Candidate.from_row(row),
    )


def _exams(params: Params, rng: random.Random) -> list[SimExam]:
    exams: list[SimExam] = []
    for planned in plan_day(params.seed, 0, params.exams_per_day, (TENANT,)):
        ready = next((at for at, s in planned.steps if s is ExamStatus.COMPLETED), None)
        if ready is None or planned.final_status is ExamStatus.CANCELLED:
            continue
        due = ready + params.tat_minutes(planned.priority) * MINUTE
        exam = _exam(
            planned.accession,
            site=planned.site,
            modality=planned.modality,
            subspecialty=planned.procedure.subspecialty,
            code=planned.procedure.code,
            priority=planned.priority,
            patient=planned.patient.mrn,
            ready_at=ready,
            tat_due_at=due,
        )
        exams.append(exam)
        if exam.site == GEN and exam.code in CHEST_CT_CODES and rng.random() < params.related_share:
            # Same encounter: scanned right after the chest, same priority and deadline.
            exams.append(
                _exam(
                    f"{exam.exam_id}B",
                    site=exam.site,
                    modality=Modality.CT,
                    subspecialty="body",
                    code=COMPANION_CODE,
                    priority=exam.priority,
                    patient=exam.patient,
                    ready_at=exam.ready_at + rng.randint(3, 10) * MINUTE,
                    tat_due_at=exam.tat_due_at,
                    related_to=exam.exam_id,
                )
            )
    return sorted(exams, key=lambda e: (e.ready_at, e.exam_id))


def build_day(params: Params | None = None) -> Day:
    """The day for a seed: pure, and the same for both modes."""
    params = params or Params()
    # One generator per concern, so that more exams change neither the readers nor who
    # cherry-picks.
    exams = _exams(params, random.Random(f"assignment:{params.seed}:exams"))
    rng = random.Random(f"assignment:{params.seed}:readers")
    readers = tuple(
        ReaderSpec(sub, subs, sites, shift, round(math.exp(rng.gauss(0.0, 0.12)), 3))
        for sub, subs, sites, shift in ROSTER
    )
    n_cherry = round(params.cherry_share * len(readers))
    cherry = frozenset(rng.sample([r.sub for r in readers], n_cherry))
    rng = random.Random(f"assignment:{params.seed}:reading")
    read_ms: dict[tuple[str, str], int] = {}
    for exam in exams:
        complexity = math.exp(rng.gauss(0.0, params.read_sigma))
        for reader in readers:
            noise = math.exp(rng.gauss(0.0, params.reader_sigma))
            minutes = exam.expected_min * complexity * reader.speed * noise
            read_ms[reader.sub, exam.exam_id] = max(MINUTE // 2, round(minutes * MINUTE))
    return Day(params, tuple(exams), readers, read_ms, cherry)
