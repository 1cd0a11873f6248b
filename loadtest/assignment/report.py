"""`assignment.json`, `assignment.md` and `assignment.png` from the two modes' figures."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["ROWS", "render_markdown", "render_plot", "write_results"]

# (figure, key): the side-by-side table's rows, in order.
ROWS: tuple[tuple[str, str], ...] = (
    ("STAT turnaround p50 (min, ready -> signed)", "stat_p50_min"),
    ("STAT turnaround p90", "stat_p90_min"),
    ("URGENT turnaround p50", "urgent_p50_min"),
    ("URGENT turnaround p90", "urgent_p90_min"),
    ("ROUTINE turnaround p50", "routine_p50_min"),
    ("ROUTINE turnaround p90", "routine_p90_min"),
    ("ready -> claimed p50 (min, all)", "claim_p50_min"),
    ("ready -> claimed p90", "claim_p90_min"),
    ("STAT ready -> claimed p50", "stat_claim_p50_min"),
    ("STAT ready -> claimed p90", "stat_claim_p90_min"),
    ("turnaround breaches", "breaches"),
    ("RVU per reader-hour, mean", "rvu_per_hour_mean"),
    ("RVU per reader-hour, CV across readers", "rvu_cv"),
    ("related pairs read by one reader", "related_pairs_same_reader"),
    ("STAT offers (lapsed)", "stat_offers"),
    ("preemptions by a STAT", "preemptions"),
    ("coordinator STAT alerts", "coordinator_alerts"),
)


def _cell(mode: Mapping[str, Any], key: str) -> str:
    value = mode.get(key)
    if key == "breaches":
        by = mode["breaches_by_priority"]
        return f"{value} (STAT {by['STAT']}, URGENT {by['URGENT']}, ROUTINE {by['ROUTINE']})"
    if key == "stat_offers":
        return f"{value} ({mode['stat_offers_lapsed']})"
    if key == "related_pairs_same_reader":
        return f"{value} of {mode['related_pairs']}"
    return "-" if value is None else str(value)


def render_markdown(data: Mapping[str, Any]) -> str:
    free, push = data["free"], data["push"]
    p = data["params"]
    lines = [
        "# Assignment simulation: free picking vs push",
        "",
        f"One seeded day (seed {p['seed']}): {p['exams']} exams "
        f"({p['stat']} STAT, {p['urgent']} URGENT, {p['routine']} ROUTINE), "
        f"{p['readers']} readers, {p['cherry_pickers']} of them cherry-picking in free mode. "
        "Same arrivals and the same reading times in both modes. "
        f"Reproduce: `python -m loadtest.assignment --seed {p['seed']}`.",
        "",
        "| figure | free | push |",
        "|---|---|---|",
    ]
    lines += [f"| {label} | {_cell(free, key)} | {_cell(push, key)} |" for label, key in ROWS]
    lines += [
        "",
        "RVU per hour of shift, by reader:",
        "",
        "| reader | free | push |",
        "|---|---|---|",
    ]
    for sub, rate in free["rvu_per_hour_by_reader"].items():
        tag = " (cherry-picks in free mode)" if sub in p["cherry_picker_names"] else ""
        lines.append(f"| {sub}{tag} | {rate} | {push['rvu_per_hour_by_reader'][sub]} |")
    spread = data.get("across_seeds")
    if spread:
        n = len(spread["seeds"])
        lines += [
            "",
            f"Other days: seeds 1-{n}, the same model (`--seeds {n}`), means:",
            "",
            "| figure | free | push | push lower on |",
            "|---|---|---|---|",
        ]
        for key, mean in spread["mean"]["free"].items():
            push_mean, lower = spread["mean"]["push"][key], spread["push_lower_on"][key]
            lines.append(f"| {key} | {mean} | {push_mean} | {lower} of {n} days |")
    return "\n".join(lines) + "\n"


def render_plot(data: Mapping[str, Any], path: Path) -> None:
    """Turnaround p50/p90 by priority and mode (left), RVU per hour by reader (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (tat_ax, rvu_ax) = plt.subplots(1, 2, figsize=(13, 5))
    groups = [
        (f"{prio} {q}", f"{prio.lower()}_{q}_min")
        for prio in ("STAT", "URGENT", "ROUTINE")
        for q in ("p50", "p90")
    ]
    colors = {"free": "tab:gray", "push": "tab:blue"}
    width = 0.4
    for i, mode in enumerate(("free", "push")):
        xs = [g + (i - 0.5) * width for g in range(len(groups))]
        ys = [data[mode][key] or 0 for _, key in groups]
        tat_ax.bar(xs, ys, width, label=mode, color=colors[mode])
    tat_ax.set_xticks(range(len(groups)), [label for label, _ in groups], rotation=30)
    tat_ax.set_yscale("log")
    tat_ax.set_ylabel("minutes, ready -> signed (log)")
    tat_ax.set_title("Turnaround by priority")
    tat_ax.legend()

    readers = list(data["free"]["rvu_per_hour_by_reader"])
    for i, mode in enumerate(("free", "push")):
        xs = [g + (i - 0.5) * width for g in range(len(readers))]
        ys = [data[mode]["rvu_per_hour_by_reader"][r] for r in readers]
        cv = data[mode]["rvu_cv"]
        rvu_ax.bar(xs, ys, width, label=f"{mode} (CV {cv})", color=colors[mode])
    cherry = set(data["params"]["cherry_picker_names"])
    labels = [f"{r}*" if r in cherry else r for r in readers]
    rvu_ax.set_xticks(range(len(readers)), labels, rotation=45)
    rvu_ax.set_ylabel("work RVU per hour of shift")
    rvu_ax.set_title("RVU per reader-hour (* cherry-picks in free mode)")
    rvu_ax.legend()
    fig.suptitle(f"Free picking vs push, seed {data['params']['seed']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_results(data: Mapping[str, Any], out: Path, *, plot: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "assignment.json", out / "assignment.md"]
    written[0].write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    written[1].write_text(render_markdown(data))
    if plot:
        render_plot(data, out / "assignment.png")
        written.append(out / "assignment.png")
    return written
