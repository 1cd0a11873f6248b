"""`bench.png`: latency against load, and CPU per delivery."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["render_plot"]


def render_plot(r: Mapping[str, Any], path: Path) -> None:
    """Latency percentiles against load (left) and CPU per delivery (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, (lat_ax, cpu_ax) = plt.subplots(1, 2, figsize=(12, 5), width_ratios=(3, 2))
    phases = r["phases"]
    series: dict[str, list[dict[str, Any]]] = {"gateway": [], "baseline": []}
    for key, ph in phases.items():
        if "server" in ph and ph.get("rate_offered") and key != "e2e":
            series[ph["server"]].append(ph)
    colors = {"gateway": "tab:blue", "baseline": "tab:gray"}
    for server, points in series.items():
        points.sort(key=lambda ph: ph["rate_offered"])
        for stat, style in (("p50_ms", ":"), ("p99_ms", "-"), ("max_ms", "--")):
            xy = [(ph["rate_offered"], ph[stat]) for ph in points if ph.get(stat) is not None]
            if xy:
                xs, ys = zip(*xy, strict=True)
                label = f"{server} fan-out {stat[:-3]}"
                lat_ax.plot(xs, ys, style, marker="o", color=colors[server], label=label)
        xy = [
            (ph["rate_offered"], ph["server_cpu_us_per_delivery"])
            for ph in points
            if ph.get("server_cpu_us_per_delivery") is not None
        ]
        if xy:
            xs, ys = zip(*xy, strict=True)
            cpu_ax.plot(xs, ys, "-", marker="o", color=colors[server], label=server)
    e2e = phases.get("e2e")
    if e2e and e2e.get("rate_sent"):
        marks = (("p50_ms", "v", e2e), ("p99_ms", "^", e2e), ("max_ms", "x", e2e))
        for stat, marker, source in marks:
            if source.get(stat) is not None:
                lat_ax.plot(
                    [e2e["rate_sent"]],
                    [source[stat]],
                    marker,
                    color="tab:red",
                    label=f"end-to-end {stat[:-3]} (from stamp)",
                )
        from_ack = e2e.get("from_ack", {})
        if from_ack.get("p99_ms") is not None:
            lat_ax.plot(
                [e2e["rate_sent"]],
                [from_ack["p99_ms"]],
                "^",
                mfc="none",
                color="tab:red",
                label="end-to-end p99 (from ack)",
            )
    lat_ax.axhline(100, color="tab:green", linewidth=0.8, linestyle="-.", label="fan-out target")
    lat_ax.axhline(150, color="tab:red", linewidth=0.8, linestyle="-.", label="end-to-end target")
    rates = sorted({round(ph["rate_offered"]) for pts in series.values() for ph in pts})
    if e2e and e2e.get("rate_sent"):
        rates = sorted({*rates, round(e2e["rate_sent"])})
    for ax in (lat_ax, cpu_ax):
        ax.set_xscale("log")
        ax.set_xticks(rates)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"updates per second, each to {r['clients']} clients")
        ax.grid(True, which="both", alpha=0.3)
    lat_ax.set_yscale("log")
    lat_ax.set_ylabel("latency (ms)")
    lat_ax.set_title("Latency against load")
    lat_ax.legend(fontsize=7, loc="best")
    cpu_ax.set_ylim(bottom=0)
    cpu_ax.set_ylabel("server CPU per delivered delta (us)")
    cpu_ax.set_title("CPU per delivery")
    cpu_ax.legend(fontsize=8)
    fig.suptitle(f"{r['mode']} mode, {r['machine']['cores']} cores, {r['finished_at']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
