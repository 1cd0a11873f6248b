"""What a phase costs: CPU per process and of the whole machine, percentiles, the
gateway's own count of connections, and py-spy profiles summarized."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil

__all__ = ["CpuMeter", "gateway_connections", "percentiles", "settle", "summarize_profile"]


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _machine_busy() -> tuple[float, float]:
    """CPU seconds every core spent in processes, whoever ran them, and in interrupts
    (where the kernel moves loopback packets: the benchmark's own traffic, mostly)."""
    t = psutil.cpu_times()
    irq = float(getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))
    return float(t.user + t.nice + t.system), irq


class CpuMeter:
    """CPU seconds of named processes over a phase, and each one's busiest half-second."""

    def __init__(self, pids: Mapping[str, int], window: float = 0.5) -> None:
        self._procs = {}
        for name, pid in pids.items():
            with contextlib.suppress(psutil.Error):
                self._procs[name] = psutil.Process(pid)
        self._window = window
        self._start: dict[str, float] = {}
        self._t0 = 0.0
        self.peak: dict[str, float] = dict.fromkeys(self._procs, 0.0)
        self._task: asyncio.Task[None] | None = None
        self._busy0 = (0.0, 0.0)
        self.others = 0.0  # cores used by processes not measured here, over the phase
        self.interrupts = 0.0  # cores spent in interrupts over the phase

    def read(self) -> dict[str, float]:
        out = {}
        for name, proc in self._procs.items():
            with contextlib.suppress(psutil.Error):
                out[name] = _cpu_seconds(proc)
        return out

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._start = self.read()
        self._busy0 = _machine_busy()
        self._task = asyncio.create_task(self._sample(), name="cpu-sampler")

    async def _sample(self) -> None:
        last, t_last = self._start, time.monotonic()
        while True:
            await asyncio.sleep(self._window)
            now, t_now = self.read(), time.monotonic()
            for name, seconds in now.items():
                if name in last:
                    share = (seconds - last[name]) / (t_now - t_last)
                    self.peak[name] = max(self.peak.get(name, 0.0), share)
            last, t_last = now, t_now

    async def stop(self) -> tuple[float, dict[str, float]]:
        """Wall seconds since start, and CPU seconds each process used meanwhile."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        end = self.read()
        wall = time.monotonic() - self._t0
        used = {n: end[n] - self._start[n] for n in end if n in self._start}
        busy, irq = _machine_busy()
        self.others = max(0.0, (busy - self._busy0[0] - sum(used.values())) / wall)
        self.interrupts = (irq - self._busy0[1]) / wall
        return wall, used


async def settle(pids: Sequence[int], *, busy: float = 0.15, cap: float = 20.0) -> float:
    """Wait until these processes together use less than `busy` of a core (the previous
    phase's backlog is gone); returns the seconds waited."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))

    def used() -> float:
        total = 0.0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                total += _cpu_seconds(proc)
        return total

    start = time.monotonic()
    while time.monotonic() - start < cap:
        before = used()
        await asyncio.sleep(0.5)
        if (used() - before) / 0.5 < busy:
            break
    return time.monotonic() - start


def percentiles(latencies: np.ndarray[Any, Any]) -> dict[str, float | None]:
    names = ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms")
    if latencies.size == 0:
        return dict.fromkeys(names)
    p50, p90, p99, p999 = np.percentile(latencies, [50, 90, 99, 99.9])
    values = (p50, p90, p99, p999, latencies.max(), latencies.mean())
    return {n: round(float(v), 2) for n, v in zip(names, values, strict=True)}


def gateway_metric(port: int, name: str) -> float | None:
    """One line of the gateway's /metrics (`name` with its labels), when it says so."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def gateway_connections(port: int) -> int | None:
    """What the gateway says it holds (its /metrics), when it says so."""
    held = gateway_metric(port, "gateway_connections")
    return None if held is None else int(held)


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks -> the functions that held the most samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    if not path.exists():
        return {"samples": 0, "self": [], "inclusive": []}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[f, round(100 * n / total, 1)] for f, n in counter.most_common(top)]

    return {"samples": total, "file": path.name, "self": share(own), "inclusive": share(inclusive)}
