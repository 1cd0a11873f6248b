"""Worklist orchestration: which case goes to whom, and why.

Pure rules, no I/O: the gateway (the live "next case", STAT offers, the coordinator's
board) and the assignment simulation (`loadtest.assignment`) call the very same
functions, so what the simulation measures is what the product does.

- `rvu`: work RVUs per procedure code (CMS's table, overridable per tenant).
- `rules`: a tenant's orchestration settings (mode, thresholds, caps).
- `policy`: ranking cases for a reader (`next_case`) and readers for a case
  (`choose_reader`), each answer a `Decision` that says why.
"""

from __future__ import annotations

from orchestration.policy import Candidate, Decision, ReaderLoad, choose_reader, next_case, rank
from orchestration.rules import Mode, Rules
from orchestration.rvu import WORK_RVU, rvu_of

__all__ = [
    "WORK_RVU",
    "Candidate",
    "Decision",
    "Mode",
    "ReaderLoad",
    "Rules",
    "choose_reader",
    "next_case",
    "rank",
    "rvu_of",
]
