"""`make loadtest` at a tiny scale: the locust scenarios run against a real stack and
report every frame type, with no failed request and nothing left running."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import os
import sys
import uuid

import psutil
import pytest

from devstack.services import ROOT
from tests.conftest import UNIT

pytestmark = pytest.mark.slow


@pytest.mark.timeout(240)
async def test_a_tiny_spike_runs_and_reports_each_frame_type() -> None:
    run_id = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DYNAMO_ENDPOINT_URL")}
    env.update(
        LOADTEST_NORMAL_S="3",
        LOADTEST_SPIKE_S="4",
        LOADTEST_SPIKE_FACTOR="5",
        LOADTEST_RADIOLOGISTS="3",
        LOADTEST_COORDINATORS="1",
        LOADTEST_RECONNECTORS="2",
        GATEWAY_PORT="0",
        SIM_SPEED="600",
        LOADTEST_RUN_ID=run_id,  # every process the run starts inherits it
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtest.spike", "--quick", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), 200 * UNIT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        for p in run_processes(run_id):  # none outlives the test to disturb the next ones
            with contextlib.suppress(psutil.Error):
                p.kill()
        raise
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    with (ROOT / "loadtest" / "results" / "loadtest_stats.csv").open() as f:
        stats = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
    for key in [
        ("WS", "auth"),
        ("WS", "subscribe"),
        ("DELTA", "e2e"),
        ("DYNAMO", "create"),
        ("HL7", "ORM NW"),
    ]:
        assert key in stats, f"{key} missing from {sorted(stats)}"
        assert int(stats[key]["Request Count"]) > 0
        assert int(stats[key]["Failure Count"]) == 0
    assert (ROOT / "loadtest" / "results" / "loadtest.html").stat().st_size > 0
    assert run_processes(run_id) == [], "processes of the load test outlived it"


def run_processes(run_id: str) -> list[psutil.Process]:
    """The processes a run started (each inherits its LOADTEST_RUN_ID)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("LOADTEST_RUN_ID") == run_id:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found
