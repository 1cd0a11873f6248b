"""The entry points as processes: `python -m hl7_ingest` (listener), `loadtest.hl7.send`
(a file of messages) and `hl7_ingest.deadletters` (the operator's CLI). JSON logs carry
control IDs and reasons, never names, MRNs or messages. Data synthetic."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from devstack import ManagedProcess, free_port, wait_for_port
from dynamo.settings import DynamoSettings
from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from tests.conftest import UNIT
from tests.support.hl7 import builder, cid, patient, planned, seed_demo_directory

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


async def run(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60 * UNIT)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_listener_send_and_deadletters_as_processes(
    dynamo_settings: DynamoSettings, store: ExamStore, tmp_path: Path
) -> None:
    await seed_demo_directory(store)  # the directory binds the facilities (make demo)
    port = free_port()
    env = {
        "DYNAMO_ENDPOINT_URL": dynamo_settings.endpoint_url,
        "DYNAMO_TABLE": dynamo_settings.table,
        "HL7_PORT": str(port),
        "HL7_LOG_LEVEL": "INFO",
        # No worklist here: the listener's writes are not published (nor sent to a
        # Redis this test does not own).
        "HL7_WRITE_THROUGH": "false",
    }
    log_path = tmp_path / "hl7.log"
    with log_path.open("wb") as log:
        listener = ManagedProcess(
            "hl7", [sys.executable, "-m", "hl7_ingest"], env=env, cwd=ROOT, log=log
        )
        try:
            await asyncio.to_thread(wait_for_port, port, 30 * UNIT, listener)
            who = patient("northwind", name="SECRETNAME^ZETA")
            exam = planned("NWGEN", who=who)
            ghost = planned("NWGEN", who=who)
            b = builder("NWGEN")
            completed = b.status_update(exam, ExamStatus.COMPLETED, control_id=cid("P"))
            assert completed is not None
            messages = [
                b.new_order(exam, control_id=cid("P")),
                completed,
                b.result(ghost, ExamStatus.FINAL, control_id=cid("P")),  # no such order
            ]
            # As an editor would save it: one segment per line.
            (tmp_path / "day.hl7").write_text("\n".join(m.replace("\r", "\n") for m in messages))
            code, out = await run(
                ["-m", "loadtest.hl7.send", str(tmp_path / "day.hl7"), "--port", str(port)], env
            )
            lines = out.strip().splitlines()
            assert code == 1 and len(lines) == 3, out
            assert [line.split("\t")[1] for line in lines] == ["AA", "AA", "AE"]
            assert "unknown order" in lines[2]
            got = await store.find_exam("northwind", exam.accession)
            assert (got.status, got.version) == (ExamStatus.COMPLETED, 4)

            code, out = await run(["-m", "hl7_ingest.deadletters", "list"], env)
            assert code == 0 and ghost.accession in out and "OBR-18" in out
            dl_id = out.strip().splitlines()[1].split()[0]
            code, out = await run(["-m", "hl7_ingest.deadletters", "replay", dl_id], env)
            assert code == 1 and "stays open" in out
            code, out = await run(["-m", "hl7_ingest.deadletters", "show", "nope"], env)
            assert code == 2
        finally:
            assert listener.stop(timeout=15 * UNIT) == 0  # SIGTERM: a clean exit
    entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    text = log_path.read_text()
    assert any("ack=AA" in e["msg"] for e in entries)
    assert any("ack=AE" in e["msg"] and "unknown order" in e["msg"] for e in entries)
    assert any("MLLP listener closed" in e["msg"] for e in entries)
    # Control IDs and reasons, never patient data.
    assert "SECRETNAME" not in text and who.mrn not in text and "PID|" not in text
