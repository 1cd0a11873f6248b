"""The processes the tests and the benchmark start: a deprioritized stand-in yields."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from devstack import ManagedProcess

_AUTOGROUPS = Path("/proc/sys/kernel/sched_autogroup_enabled")
_SPIN = [sys.executable, "-c", "while True: pass"]


@pytest.mark.skipif(
    not _AUTOGROUPS.exists() or _AUTOGROUPS.read_text().strip() != "1",
    reason="the kernel shares CPU by session only with autogroups on",
)
def test_a_deprioritized_process_yields_the_cpu_to_other_sessions() -> None:
    """Each managed process leads its own session, so `nice` alone would weigh only
    against its own threads: two spinners on one core would split it evenly. After
    `session_nice(10)`, the other one gets most of the core."""
    spinners = [ManagedProcess(f"spin{i}", _SPIN) for i in range(2)]
    try:
        for proc in spinners:
            os.sched_setaffinity(proc.pid, {min(os.sched_getaffinity(0))})
        low, high = spinners
        assert low.session_nice(10)
        assert Path(f"/proc/{low.pid}/autogroup").read_text().strip().endswith("nice 10")
        assert Path(f"/proc/{high.pid}/autogroup").read_text().strip().endswith("nice 0")
        cpu = [psutil.Process(p.pid) for p in spinners]
        start = [sum(c.cpu_times()[:2]) for c in cpu]
        time.sleep(2.0)
        used = [sum(c.cpu_times()[:2]) - s for c, s in zip(cpu, start, strict=True)]
        # Weights 110 against 1,024: about 10 % and 90 % of the core.
        assert used[0] < used[1] / 3, used
    finally:
        for proc in spinners:
            proc.stop()
