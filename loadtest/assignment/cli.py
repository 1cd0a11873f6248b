"""`python -m loadtest.assignment [--seed N] [--exams N] [--out DIR] [--no-plot]`."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from devstack.services import ROOT
from loadtest.assignment.day import Params, build_day
from loadtest.assignment.metrics import figures
from loadtest.assignment.report import render_markdown, write_results
from loadtest.assignment.sim import MODES, run

__all__ = ["RESULTS", "across_seeds", "main", "simulate"]

RESULTS = ROOT / "loadtest" / "results"
# The figures compared across other days (seeds) of the same model.
SPREAD_KEYS = ("stat_p90_min", "stat_claim_p90_min", "routine_p90_min", "breaches", "rvu_cv")


def simulate(params: Params | None = None) -> dict[str, Any]:
    """Both modes on the same day: {"params": ..., "free": {...}, "push": {...}}."""
    day = build_day(params)
    counts = {p: sum(1 for e in day.exams if e.priority == p) for p in ("STAT", "URGENT")}
    data: dict[str, Any] = {
        "params": {
            **asdict(day.params),
            "exams": len(day.exams),
            "stat": counts["STAT"],
            "urgent": counts["URGENT"],
            "routine": len(day.exams) - sum(counts.values()),
            "readers": len(day.readers),
            "cherry_pickers": len(day.cherry_pickers),
            "cherry_picker_names": sorted(day.cherry_pickers),
            "reader_hours": sum(r.shift_hours for r in day.readers),
            "read_minutes_expected": round(sum(e.expected_min for e in day.exams)),
        }
    }
    for mode in MODES:
        data[mode] = figures(day, run(day, mode))
    return data


def across_seeds(seeds: int, exams_per_day: int) -> dict[str, Any]:
    """The main figures on days 1..`seeds`: one seed is one day, and one day can flatter
    either mode; this says how often push comes out lower."""
    by_seed: dict[str, dict[str, dict[str, Any]]] = {}
    for seed in range(1, seeds + 1):
        data = simulate(Params(seed=seed, exams_per_day=exams_per_day))
        by_seed[str(seed)] = {m: {k: data[m][k] for k in SPREAD_KEYS} for m in MODES}
    days = list(by_seed.values())
    return {
        "seeds": list(range(1, seeds + 1)),
        "mean": {
            m: {k: round(statistics.fmean(d[m][k] for d in days), 3) for k in SPREAD_KEYS}
            for m in MODES
        },
        "push_lower_on": {
            k: sum(1 for d in days if d["push"][k] < d["free"][k]) for k in SPREAD_KEYS
        },
        "by_seed": by_seed,
    }


def main(argv: Sequence[str] | None = None) -> int:
    from loadtest import assignment  # the package's docstring is the help text

    parser = argparse.ArgumentParser(
        prog="python -m loadtest.assignment",
        description=assignment.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = Params()
    parser.add_argument("--seed", type=int, default=defaults.seed, help="the day's seed")
    parser.add_argument("--exams", type=int, default=defaults.exams_per_day, help="exams planned")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--no-plot", action="store_true", help="skip assignment.png")
    parser.add_argument("--seeds", type=int, default=8, help="also summarize days 1..N (0: skip)")
    args = parser.parse_args(argv)
    data = simulate(Params(seed=args.seed, exams_per_day=args.exams))
    if args.seeds > 0:
        data["across_seeds"] = across_seeds(args.seeds, args.exams)
    written = write_results(data, args.out, plot=not args.no_plot)
    print(render_markdown(data))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
