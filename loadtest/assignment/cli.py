"""`python -m loadtest.assignment [--seed N] [--exams N] [--out DIR] [--no-plot]`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from devstack.services import ROOT
from loadtest.assignment.day import Params, build_day
from loadtest.assignment.metrics import figures
from loadtest.assignment.report import render_markdown, write_results
from loadtest.assignment.sim import MODES, run

__all__ = ["RESULTS", "main", "simulate"]

RESULTS = ROOT / "loadtest" / "results"


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
    args = parser.parse_args(argv)
    data = simulate(Params(seed=args.seed, exams_per_day=args.exams))
    written = write_results(data, args.out, plot=not args.no_plot)
    print(render_markdown(data))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
