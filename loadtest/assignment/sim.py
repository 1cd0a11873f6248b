"""The event loop: one day (`day.Day`) replayed under one mode, "free" or "push".

Time is simulated ms since 07:00; nothing here reads a clock or the global random
generator. Every claim, sign, offer, lapse, preemption and release goes to the run's
event log, from which the tests check eligibility, caps and "read exactly once".
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dynamo.states import Priority
from loadtest.assignment.day import Day, ReaderSpec, SimExam
from loadtest.plan import HOUR, MINUTE
from orchestration import Mode, ReaderLoad, Rules, choose_reader, next_case

__all__ = ["MODES", "LogEntry", "RunResult", "rules_for", "run"]

MODES = ("free", "push")
SECOND = 1000
# Shift windows repeat on the next days until every exam of the day is read.
DAYS_OF_COVER = 3
_PRIO: dict[str, int] = {Priority.STAT: 0, Priority.URGENT: 1, Priority.ROUTINE: 2}


def rules_for(mode: str) -> Rules:
    """The tenant's rules in each mode: the product's defaults (caps 4 open, 2 STAT;
    60-second STAT offers; a 10-minute STAT alert; same patient within 120 minutes)."""
    return Rules(mode=Mode.PUSH if mode == "push" else Mode.FREE)


@dataclass(frozen=True, slots=True)
class LogEntry:
    at: int
    event: str  # claim | start | sign | offer | lapse | preempt | release | alert
    exam: str
    reader: str = ""
    rule: str = ""  # why: the policy's rule (push) or the picker's habit (free)
    open_claims: int = 0  # the reader's, after a claim
    stat_claims: int = 0


@dataclass
class RunResult:
    mode: str
    claimed_at: dict[str, int] = field(default_factory=dict)
    claimed_by: dict[str, str] = field(default_factory=dict)
    signed_at: dict[str, int] = field(default_factory=dict)
    log: list[LogEntry] = field(default_factory=list)


@dataclass
class _Reader:
    spec: ReaderSpec
    allows: Callable[[Any], bool]
    online: bool = False
    shift_start: int = 0
    shift_rvu: float = 0.0  # signed during the current shift window
    current: str | None = None
    current_end: int = 0
    token: int = 0  # bumps at every start, so a paused read's "done" is ignored
    queue: list[tuple[str, int, bool]] = field(default_factory=list)  # id, ms left, paused
    recent: list[tuple[int, str]] = field(default_factory=list)  # (signed at, patient)
    last_patient: str | None = None  # of the case just signed (free pickers' habit)
    idle_since: int = 0

    def held(self) -> list[str]:
        return ([self.current] if self.current else []) + [q[0] for q in self.queue]

    @property
    def idle(self) -> bool:
        return self.current is None and not self.queue


class _Run:
    def __init__(self, day: Day, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.day, self.mode, self.params = day, mode, day.params
        self.rules = rules_for(mode)
        self.rng = random.Random(f"assignment:{day.params.seed}:{mode}")
        self.exams = {e.exam_id: e for e in day.exams}
        self.readers = {s.sub: _Reader(s, s.allows()) for s in day.readers}
        self.waiting: dict[str, SimExam] = {}  # ready, unclaimed, not under offer
        self.declined: dict[str, set[str]] = {}  # STAT -> readers whose offer lapsed
        self.alerted: set[str] = set()
        self.result = RunResult(mode)
        self.now = 0
        self._heap: list[tuple[int, int, str, str, str, int]] = []
        self._seq = 0

    # -- the loop -------------------------------------------------------------------

    def _at(self, at: int, kind: str, key: str = "", sub: str = "", token: int = 0) -> None:
        heapq.heappush(self._heap, (at, self._seq, kind, key, sub, token))
        self._seq += 1

    def go(self) -> RunResult:
        for spec in self.day.readers:
            for k in range(DAYS_OF_COVER):
                self._at((spec.shift[0] + 24 * k) * HOUR, "shift_start", sub=spec.sub)
                self._at((spec.shift[1] + 24 * k) * HOUR, "shift_end", sub=spec.sub)
        for exam in self.day.exams:
            self._at(exam.ready_at, "ready", exam.exam_id)
        handlers: dict[str, Callable[[str, str, int], None]] = {
            "shift_start": self._on_shift_start,
            "shift_end": self._on_shift_end,
            "ready": self._on_ready,
            "done": self._on_done,
            "alert": self._on_alert,
            "accept": self._on_accept,
            "lapse": self._on_lapse,
        }
        total = len(self.exams)
        while self._heap and len(self.result.signed_at) < total:
            self.now, _, kind, key, sub, token = heapq.heappop(self._heap)
            handlers[kind](key, sub, token)
        unread = total - len(self.result.signed_at)
        if unread:
            raise RuntimeError(f"{unread} exams left unread after {DAYS_OF_COVER} days")
        return self.result

    def _log(self, event: str, exam: str, r: _Reader | None = None, rule: str = "") -> None:
        held = r.held() if r else []
        stats = sum(1 for h in held if self.exams[h].priority == Priority.STAT)
        self.result.log.append(
            LogEntry(self.now, event, exam, r.spec.sub if r else "", rule, len(held), stats)
        )

    # -- what every mode shares -----------------------------------------------------

    def _claim(self, r: _Reader, exam: SimExam, rule: str, start: bool = True) -> None:
        """Claim for `r`: read it now when `start`, else hold it in their queue."""
        self.waiting.pop(exam.exam_id, None)
        if exam.exam_id in self.result.claimed_by:
            raise AssertionError(f"{exam.exam_id} claimed twice")
        self.result.claimed_at[exam.exam_id] = self.now
        self.result.claimed_by[exam.exam_id] = r.spec.sub
        ms = self.day.read_ms[r.spec.sub, exam.exam_id]
        if start and r.current is None:
            self._start(r, exam.exam_id, ms)
        else:
            r.queue.append((exam.exam_id, ms, False))
        self._log("claim", exam.exam_id, r, rule)
        if self.mode == "push":
            self._group(exam)

    def _group(self, exam: SimExam) -> None:
        """The same patient's other waiting studies follow a claimed one (OnePACS's "one
        patient's studies together"): `choose_reader` names the reader now holding it."""
        for other in [e for e in self.waiting.values() if e.patient == exam.patient]:
            if other.exam_id not in self.waiting:
                continue  # claimed meanwhile, grouped with one claimed just before
            loads = [self._load(r) for r in self._online()]
            decision = choose_reader(other.candidate, loads, self.rules)
            if decision is not None and decision.rule == "same-patient":
                self._claim(self.readers[decision.reader], other, decision.rule, start=False)

    def _start(self, r: _Reader, exam_id: str, ms: int) -> None:
        r.current, r.current_end = exam_id, self.now + ms
        r.token += 1
        self._at(r.current_end, "done", exam_id, r.spec.sub, r.token)
        self._log("start", exam_id, r)

    def _on_done(self, key: str, sub: str, token: int) -> None:
        r = self.readers[sub]
        if token != r.token or r.current != key:
            return  # paused meanwhile; its remaining time is in the queue
        exam = self.exams[key]
        self.result.signed_at[key] = self.now
        r.shift_rvu += exam.rvu
        r.recent.append((self.now, exam.patient))
        r.last_patient = exam.patient
        r.current = None
        self._log("sign", key, r)
        self._next(r)

    def _next(self, r: _Reader) -> None:
        """`r` is free: their own queue first, else a new case (while on shift)."""
        if r.queue:
            r.queue.sort(key=lambda q: (_PRIO[self.exams[q[0]].priority], not q[2], q[0]))
            exam_id, ms, _ = r.queue.pop(0)
            self._start(r, exam_id, ms)
            return
        if r.online:
            picked = self._free_pick(r) if self.mode == "free" else self._push_next(r)
            r.last_patient = None
            if picked is not None:
                self._claim(r, *picked)
                return
        r.idle_since = self.now

    def _wake_idle(self) -> None:
        idle = [r for r in self.readers.values() if r.online and r.idle]
        if self.mode == "push":
            # Orchestration: the reader furthest behind on RVUs per hour goes first.
            idle.sort(key=lambda r: (self._load(r).rvu_rate, r.spec.sub))
        else:
            idle.sort(key=lambda r: (r.idle_since, r.spec.sub))
        for r in idle:
            if self.waiting:
                self._next(r)

    def _on_shift_start(self, _key: str, sub: str, _token: int) -> None:
        r = self.readers[sub]
        r.online, r.shift_start, r.shift_rvu = True, self.now, 0.0
        if r.idle:
            self._next(r)

    def _on_shift_end(self, _key: str, sub: str, _token: int) -> None:
        r = self.readers[sub]
        r.online = False
        # They finish what they are reading and what they paused; cases reserved for
        # them but not started go back to the list.
        released = [q for q in r.queue if not q[2]]
        r.queue = [q for q in r.queue if q[2]]
        for exam_id, _, _ in released:
            del self.result.claimed_at[exam_id], self.result.claimed_by[exam_id]
            self._log("release", exam_id, r)
        for exam_id, _, _ in released:
            self._became_waiting(self.exams[exam_id])

    def _on_ready(self, key: str, _sub: str, _token: int) -> None:
        self._became_waiting(self.exams[key])

    def _became_waiting(self, exam: SimExam) -> None:
        self.waiting[exam.exam_id] = exam
        if self.mode == "free":
            if exam.priority == Priority.STAT:
                self._at(self.now + self.rules.stat_alert_minutes * MINUTE, "alert", exam.exam_id)
            self._wake_idle()
        elif exam.priority == Priority.STAT:
            self._offer(exam)
        else:
            self._dispatch(exam)

    # -- free picking ---------------------------------------------------------------

    def _free_pick(self, r: _Reader) -> tuple[SimExam, str] | None:
        eligible = [e for e in self.waiting.values() if r.allows(e.candidate.row)]
        if not eligible:
            return None
        called = [e for e in eligible if e.exam_id in self.alerted]
        if called:
            # The coordinator phoned about a STAT waiting past the alert: whoever is
            # free next takes it.
            return min(called, key=lambda e: (e.ready_at, e.exam_id)), "coordinator-call"
        same = [e for e in eligible if e.patient == r.last_patient]
        if same and self.rng.random() < self.params.free_group_share:
            return same[0], "same-patient"
        if r.spec.sub in self.day.cherry_pickers:
            best = min(eligible, key=lambda e: (-e.rvu / e.expected_min, e.ready_at, e.exam_id))
            return best, "cherry-pick"
        ordered = sorted(eligible, key=lambda e: (*e.candidate.urgency(), e.ready_at, e.exam_id))
        if len(ordered) > 1 and self.rng.random() < self.params.pick_noise:
            return self.rng.choice(ordered[: self.params.pick_handful]), "skimmed"
        return ordered[0], "top-of-list"

    def _on_alert(self, key: str, _sub: str, _token: int) -> None:
        if key in self.waiting:
            self.alerted.add(key)
            self._log("alert", key)
            self._wake_idle()

    # -- push: the product's orchestration ------------------------------------------

    def _load(self, r: _Reader) -> ReaderLoad:
        held = [self.exams[h] for h in r.held()]
        window = self.rules.group_patient_minutes * MINUTE
        # The patients of the cases they hold, and of those they signed within the
        # grouping window: a related study ready a little later still follows them.
        patients = {e.patient for e in held}
        patients.update(p for at, p in r.recent if self.now - at <= window)
        return ReaderLoad(
            r.spec.sub,
            open_claims=len(held),
            stat_claims=sum(1 for e in held if e.priority == Priority.STAT),
            rvu_shift=r.shift_rvu + sum(e.rvu for e in held),
            shift_hours=max(self.now - r.shift_start, MINUTE) / HOUR if r.online else 0.0,
            patients=frozenset(patients),
            allows=r.allows,
        )

    def _online(self) -> list[_Reader]:
        return [r for r in self.readers.values() if r.online]

    def _push_next(self, r: _Reader) -> tuple[SimExam, str] | None:
        # Balance against the group's RVUs per hour on shift, scaled to this reader's
        # hours so far: a reader who just started is not "behind" the others.
        loads = {o.spec.sub: self._load(o) for o in self._online()}
        rate = sum(x.rvu_shift for x in loads.values()) / sum(x.shift_hours for x in loads.values())
        decision = next_case(
            loads[r.spec.sub],
            [e.candidate for e in self.waiting.values()],
            self.rules,
            mean_rvu=rate,
        )
        return None if decision is None else (self.exams[decision.exam_id], decision.rule)

    def _dispatch(self, exam: SimExam) -> None:
        """A new non-STAT case: to the reader holding the same patient, else to an idle
        reader (the fewest RVUs); otherwise it waits for the next reader who is free."""
        online = self._online()
        loads = [self._load(r) for r in online]
        decision = choose_reader(exam.candidate, loads, self.rules)
        if decision is not None and decision.rule == "same-patient":
            self._claim(self.readers[decision.reader], exam, decision.rule)
            return
        idle = [load for r, load in zip(online, loads, strict=True) if r.idle]
        decision = choose_reader(exam.candidate, idle, self.rules)
        if decision is not None:
            self._claim(self.readers[decision.reader], exam, decision.rule)

    def _offer(self, exam: SimExam) -> None:
        """Offer a STAT to the eligible online reader with the lowest STAT load; one who
        lets it lapse is excluded and the next one is offered it."""
        declined = self.declined.setdefault(exam.exam_id, set())
        loads = [self._load(r) for r in self._online()]
        decision = choose_reader(exam.candidate, loads, self.rules, exclude=declined)
        if decision is None:
            # Nobody able (caps, scope, all declined): it stays on the list, first in
            # everyone's `next_case`.
            self._wake_idle()
            return
        del self.waiting[exam.exam_id]
        r = self.readers[decision.reader]
        self._log("offer", exam.exam_id, r, decision.rule)
        if self.rng.random() < self.params.decline_share:
            lapse = self.now + self.rules.stat_offer_seconds * SECOND
            self._at(lapse, "lapse", exam.exam_id, r.spec.sub)
        else:
            self._at(
                self.now + self.rng.randint(5, 30) * SECOND, "accept", exam.exam_id, r.spec.sub
            )

    def _on_lapse(self, key: str, sub: str, _token: int) -> None:
        self.declined[key].add(sub)
        self._log("lapse", key, self.readers[sub])
        self.waiting[key] = self.exams[key]
        self._offer(self.exams[key])

    def _on_accept(self, key: str, sub: str, _token: int) -> None:
        r, exam = self.readers[sub], self.exams[key]
        load = self._load(r)
        if (
            not r.online
            or load.open_claims >= self.rules.max_open_claims
            or load.stat_claims >= self.rules.max_stat_claims
        ):
            self._on_lapse(key, sub, 0)  # they went off shift or filled up meanwhile
            return
        current = self.exams[r.current] if r.current else None
        if current is not None and current.priority != Priority.STAT:
            # Preempt: the routine read is paused (still claimed) and resumed after,
            # with a penalty for picking it up again.
            left = r.current_end - self.now + round(self.params.resume_penalty_min * MINUTE)
            r.queue.append((current.exam_id, left, True))
            r.current = None
            self._log("preempt", current.exam_id, r)
        self._claim(r, exam, "stat-offer")


def run(day: Day, mode: str) -> RunResult:
    """Replay the day under one mode ("free" or "push")."""
    return _Run(day, mode).go()
