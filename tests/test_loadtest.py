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


# A locust process (gevent): a server that completes the WebSocket handshake and then
# never answers a close frame; a user's session closed in a greenlet, then the greenlet
# stopped as locust stops a user.
_STOP_DURING_CLOSE = r"""
import base64, hashlib, time
import gevent, gevent.server, websocket
from loadtest.locustfile import WsSession
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

def serve(sock, _):
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    lines = head.split(b"\r\n")
    line = next(x for x in lines if x.lower().startswith(b"sec-websocket-key"))
    key = line.split(b":", 1)[1].strip()
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    while sock.recv(4096):
        pass  # reads the close frame, answers nothing

server = gevent.server.StreamServer(("127.0.0.1", 0), serve)
server.start()
session = WsSession.__new__(WsSession)
session._reader = None
session._ws = websocket.create_connection(f"ws://127.0.0.1:{server.server_port}/ws", timeout=10)
carried_on = []

def task():
    session.close()
    carried_on.append(time.monotonic())
    gevent.sleep(30)  # the rest of the user's task, where the stop lands
    carried_on.append("after the stop")

started = time.monotonic()
user = gevent.spawn(task)
gevent.sleep(0.2)
user.kill(timeout=5)
print("closed_in", carried_on[0] - started if carried_on else None)
print("dead", user.dead, "carried_on", len(carried_on))
"""


def test_a_user_stopped_around_its_close_stops() -> None:
    """websocket-client's `close()` waits up to 3 s for the server's close frame inside a
    bare `except:`, which swallowed the stop locust sends a user (a Reconnector then went
    on reconnecting, and the run hung until interrupted). The session's close sends its
    close frame and drops the socket at once, so a stop lands in the user's code."""
    import subprocess

    env = {**os.environ, "LOADTEST_GATEWAY": "ws://127.0.0.1:9/ws"}
    out = subprocess.run(
        [sys.executable, "-c", _STOP_DURING_CLOSE],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert float(lines["closed_in"]) < 0.2 * UNIT, out.stdout  # no wait for the server
    assert lines["dead"] == "True carried_on 1", out.stdout
