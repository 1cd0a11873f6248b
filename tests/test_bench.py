"""`python -m loadtest.bench` at a tiny scale: it reports every figure with sane values,
and it leaves no process behind, neither when it finishes nor when interrupted.

How fast anything is stays out of the test suite: that is the benchmark's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from devstack.services import ROOT
from loadtest.bench import REQUIRED, SCALES
from tests.conftest import UNIT

pytestmark = pytest.mark.slow

TINY = SCALES["tiny"]


def _marked(marker: str) -> list[psutil.Process]:
    """Every live process that inherited this run's marker, wherever it was reparented."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("RIS_BENCH_TEST") == marker and proc.status() != "zombie":
                found.append(proc)
    return found


async def _start(out: Path, marker: str, *args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "RIS_BENCH_TEST": marker}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtest.bench",
        "--tiny",
        "--out",
        str(out),
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def _no_process_left(marker: str) -> None:
    # ManagedProcess.stop has already waited; allow a moment for reaping only.
    for _ in range(int(50 * UNIT)):
        if not _marked(marker):
            return
        await asyncio.sleep(0.1)
    left = [(p.pid, p.name(), " ".join(p.cmdline()[:4])) for p in _marked(marker)]
    raise AssertionError(f"left running: {left}")


@pytest.mark.timeout(240)
async def test_tiny_benchmark_reports_every_figure(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    proc = await _start(tmp_path, marker)
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), 180 * UNIT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = output.decode()
    assert proc.returncode == 0, text[-4000:]
    await _no_process_left(marker)

    results = json.loads((tmp_path / "bench.json").read_text())
    assert [key for key in REQUIRED if key not in results] == []
    for key in (
        "e2e_p50_ms",
        "e2e_p99_ms",
        "fanout_p99_ms_at_200",
        "fanout_p99_ms_at_1000",
        "claim_p99_ms",
        "e2e_updates_per_s",
        "dynamo_ceiling_writes_per_s",
        "gateway_cpu_us_per_delta",
        "baseline_cpu_us_per_delta",
        "gateway_cpu_us_per_delta_at_25",
        "baseline_cpu_us_per_delta_at_25",
        "fanout_p99_ms_at_25",
        "baseline_p99_ms_at_25",
        "claim_p99_ms_idle",
        "bytes_per_delivery",
        "bytes_per_delivery_full_rows",
    ):
        assert isinstance(results[key], float) and results[key] > 0, (key, results[key])
    assert results["e2e_p50_ms"] <= results["e2e_p99_ms"]
    # Every client received every delta, and no exam was claimed twice.
    assert results["fanout_lost"] == 0
    assert results["phases"]["e2e"]["lost"] == 0
    assert results["double_claims"] == 0
    assert results["clients"] == TINY.clients
    assert results["claim_rounds"] == TINY.claim_rounds
    assert results["max_connections"] == TINY.idle_connections
    assert isinstance(results["kb_per_connection"], float)
    # The gateway process reported its collector's full collections (its /metrics).
    assert isinstance(results["gateway_gc_full_collections"], int)
    # ... and how late it read its feed, and the flush windows it stretched for that.
    assert isinstance(results["gateway_feed_late_messages"], int)
    assert results["gateway_feed_messages"] >= results["gateway_feed_late_messages"]
    assert isinstance(results["gateway_flush_windows_stretched"], int)
    # Each gateway delivery phase says how many full collections stopped it.
    for name in ("e2e", "fanout_25", "fanout_200"):
        phase = results["phases"][name]
        assert isinstance(phase["gc_full"], int) and phase["gc_full"] >= 0, name
        assert isinstance(phase["gc_pause_ms"], float) and phase["gc_pause_ms"] >= 0, name
        assert isinstance(phase["feed_late"], int) and phase["feed_late"] >= 0, name
        assert isinstance(phase["stretched"], int) and phase["stretched"] >= 0, name
    # The reconnect storm: every session of the tenant came back and got its snapshot.
    assert results["storm_sessions"] == TINY.storm_sessions
    assert results["storm_resubscribed"] == TINY.storm_sessions
    assert isinstance(results["storm_resubscribed_s"], float)
    assert results["storm_resubscribed_s"] > 0
    assert results["storm_redis_commands_per_session"] > 0
    assert isinstance(results["baseline_kb_per_connection"], float)
    assert isinstance(results["client_limited"], bool)
    assert results["machine"]["cores"] >= 1 and results["machine"]["python"]
    # HL7 over MLLP: every message acknowledged AA, once.
    assert results["hl7_messages"] == results["hl7_accepted"] > 0
    assert results["hl7_refused"] == 0
    assert 0 < results["hl7_ack_p50_ms"] <= results["hl7_ack_p99_ms"]

    markdown = (tmp_path / "bench.md").read_text()
    assert "| figure | measured | target | verdict |" in markdown
    assert "end-to-end p50 / p99" in markdown and "double claims" in markdown
    assert "reconnect storm" in markdown
    assert markdown in text  # printed as well as written
    assert (tmp_path / "bench.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.timeout(180)
async def test_an_interrupted_benchmark_stops_everything_it_started(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    # (The deliveries alone: the idle and storm phases before them add nothing here.)
    proc = await _start(tmp_path, marker, "--only", "deliveries")
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        # Interrupt in the middle: servers, relay and load clients are all running.
        while "clients subscribed" not in (lines[-1] if lines else ""):
            raw = await asyncio.wait_for(proc.stdout.readline(), 120 * UNIT)
            assert raw, "".join(lines)
            lines.append(raw.decode())
        assert len(_marked(marker)) >= 6, "".join(lines)  # bench, servers, clients
        proc.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(proc.communicate(), 60 * UNIT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130, "".join(lines) + rest.decode()
    await _no_process_left(marker)
    assert not (tmp_path / "bench.json").exists()


def test_nothing_is_judged_against_a_baseline_that_lost_deliveries() -> None:
    """A baseline that lost deliveries (its keepalive once closed connections behind a
    backlog) has its CPU over fewer deliveries and its latency over the survivors: the
    comparisons against it are n/a, and its losses are a MISS of their own."""
    from loadtest.bench.verdicts import verdicts

    results = json.loads((ROOT / "loadtest" / "results" / "bench.json").read_text())
    compared = (
        "fan-out p50 / p99 at 25 updates/s, side by side (gateway; baseline)",
        "gateway / baseline CPU per delivered delta at 25/s (no backlog)",
        "gateway CPU per delivered delta (200/s)",
    )
    lost_row = "baseline lost deliveries (25/s + 200/s + 1,000/s)"
    whole = {row[0]: row[3] for row in verdicts({**results, "baseline_lost": 0})}
    lossy = {row[0]: row[3] for row in verdicts({**results, "baseline_lost": 1_363_000})}
    assert all(whole[figure] in ("PASS", "MISS") for figure in compared)
    assert whole[lost_row] == "PASS"
    assert all(lossy[figure] == "n/a" for figure in compared)
    assert lossy[lost_row] == "MISS"
