"""The assignment simulation: free picking against push orchestration on one seeded day.

    python -m loadtest.assignment [--seed N] [--exams N] [--out DIR] [--seeds N] [--no-plot]

Writes `assignment.json` (one object per mode, "free" and "push", plus "params" and
"across_seeds"), `assignment.md` (side by side) and `assignment.png` to
`loadtest/results/`. A discrete-event simulation in pure Python: no servers, no clock,
no global random state; the same seed gives the same files.

The day (`day`): one tenant's exams from the simulator's own plan
(`loadtest.plan.plan_day`: sites, modality and priority mixes, scan times; cancelled
exams left out), ready to read at COMPLETED. Some of the hospital's chest CTs bring a CT
of the abdomen and pelvis of the same patient, ready minutes later (same encounter).
Reading deadlines count from COMPLETED (STAT 30 min, URGENT 2 h, ROUTINE 12 h: the part
of the turnaround the readers control; acquisition is identical in both modes). Ten
readers with 8-hour shifts (subspecialists by day, generalists into the evening, one
night reader for the hospital), each with site and subspecialty privileges checked by
the product's scope rule (`worklist_cache.views.Scope.allows`, through
`ReaderLoad.allows`). A read takes a per-modality base time scaled by the study's work
RVU (to the power 0.6, so RVUs per minute vary by study: plain films and screening
mammograms pay most per minute) times the study's complexity, the reader's speed and
a per-read noise (lognormal). Every exam, every reader and every (reader, exam) reading
time is drawn from the seed before either mode runs: both modes replay the same day.

Free picking (`sim`, mode "free"): readers claim one case at a time from the shared
list (in their scope) when they finish one; nobody is interrupted, so a STAT waits for
someone to finish. 40 % of readers cherry-pick: the highest RVU per expected minute,
whatever its priority. The others take the top of the urgency-sorted list, but 30 % of
the time one of the top five instead. After signing, a reader takes the same patient's
other study 60 % of the time. A STAT left unclaimed for `stat_alert_minutes` (10) makes
the coordinator phone: the next reader to become free takes it.

Push (mode "push"): the product's rules, the very functions the gateway calls
(`orchestration.policy`), with the product's default `Rules`: caps of 4 open claims
and 2 STATs per reader; a reader who becomes free gets `next_case` (balanced against the
group's RVUs per hour on shift); a new STAT is offered at once by `choose_reader`
(lowest STAT load) to an online reader, who accepts within 5-30 s, or, 10 % of the time,
lets the 60-second offer lapse, and the next reader is offered it (`exclude`). An
accepted STAT preempts a non-STAT read (modelling choice: the paused read stays claimed
and resumes after it, one minute slower); it queues behind a STAT being read. A new
non-STAT goes to the reader holding (or who signed within `group_patient_minutes`)
the same patient's study, else to the idle reader with the fewest RVUs per hour on
shift, else waits for the next `next_case` (idle readers are woken furthest behind
first); a claimed study pulls the same patient's waiting studies to the
same reader (`choose_reader`'s same-patient rule, caps permitting). At the end of a
shift, reserved cases not started go back.

Figures (`metrics`): turnaround (ready to signed) and ready-to-claimed p50/p90 by
priority, breaches of the reading deadlines, and RVUs per hour of shift per reader
(cases claimed on that day's shift) with their coefficient of variation (`rvu_cv`).
What the model leaves out: dictation and addenda, phone calls and consults (other than
the STAT alert), readers who log off early, prelim/final splits, and any learning.

Modules: `day` (the seeded day), `sim` (the event loop, both modes), `metrics`
(figures), `report` (json, markdown, plot), `cli`.
"""

from __future__ import annotations

from loadtest.assignment.cli import main, simulate
from loadtest.assignment.day import Params, build_day
from loadtest.assignment.sim import MODES, run

__all__ = ["MODES", "Params", "build_day", "main", "run", "simulate"]
