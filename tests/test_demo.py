"""`make demo` as a user runs it: it prints a URL, the worklist there is live, and
stopping it leaves no process and no port behind."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from typing import Any

import httpx
import psutil
import pytest

from devstack.procs import free_port, port_open
from devstack.services import ROOT
from tests.conftest import UNIT
from tests.support.wsclient import WsClient

pytestmark = pytest.mark.slow


async def _read_until_url(proc: asyncio.subprocess.Process, lines: list[str]) -> str:
    assert proc.stdout is not None
    while True:
        raw = await proc.stdout.readline()
        if not raw:
            raise AssertionError("demo exited before printing its URL:\n" + "".join(lines))
        line = raw.decode()
        lines.append(line)
        match = re.search(r"Live worklist: (http://\S+)", line)
        if match:
            return match.group(1)


@pytest.mark.timeout(240)
async def test_demo_serves_a_live_worklist_and_stops_cleanly() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DYNAMO_ENDPOINT_URL")}
    port = free_port()
    env.update(GATEWAY_PORT=str(port), SIM_SPEED="600", SIM_EXAMS_PER_DAY="200")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devstack.demo",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    lines: list[str] = []
    try:
        url = await asyncio.wait_for(_read_until_url(proc, lines), 120 * UNIT)
        assert url == f"http://127.0.0.1:{port}/"
        ports = [port] + [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", "".join(lines))]
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 5, children  # redis, dynamodb, relay, gateway, simulator

        async with httpx.AsyncClient() as http:
            login = await http.post(url + "api/login", json={"user": "nw-okafor"})
        assert login.status_code == 200, login.text
        client = await WsClient.open(url.replace("http", "ws") + "ws", login.json()["token"])
        await client.subscribe("s1", statuses=[])
        deltas: list[Any] = []
        while len(deltas) < 5:
            frame = await client.until(lambda f: f["type"] == "delta", timeout=30)
            deltas.append(frame["delta"])
        assert all(d["tenant"] == "northwind" for d in deltas)
        await client.close()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 60 * UNIT)

    assert code == 0, "".join(lines)
    _, alive = psutil.wait_procs(children, timeout=5)
    assert alive == [], f"left running: {alive}"
    assert not any(port_open(p) for p in ports), "a port is still open"


async def test_children_die_with_a_killed_supervisor() -> None:
    """SIGKILL (or a closed terminal) gives the supervisor no chance to stop anything:
    its children must still go, or they keep their ports."""
    script = (
        "import sys, time\n"
        "from devstack.procs import ManagedProcess\n"
        "sleep = [sys.executable, '-c', 'import time; time.sleep(120)']\n"
        "child = ManagedProcess('sleeper', sleep)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    assert parent.stdout is not None
    child = int((await asyncio.wait_for(parent.stdout.readline(), 20 * UNIT)).decode())
    assert psutil.pid_exists(child)
    parent.kill()
    await parent.wait()
    for _ in range(int(100 * UNIT)):
        if not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie":
            return
        await asyncio.sleep(0.05)
    psutil.Process(child).kill()
    raise AssertionError("the child outlived its killed supervisor")
