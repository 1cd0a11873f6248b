"""20 readers pressing "Next case" at once on two gateway processes sharing Redis and
DynamoDB, round after round: every case handed out exactly once, nobody handed a case
their scope forbids. `python -m loadtest.nextcase_rounds --rounds 1000` plays the same
rounds at the issue's scale; the suite plays `TEST_NEXT_ROUNDS` (default 15)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from dynamo.settings import DynamoSettings
from dynamo.store import ExamStore
from loadtest.nextcase_rounds import Round, make_ready, readers_for
from tests.conftest import token
from tests.support.wsclient import WsClient
from tests.test_next_case import cached
from tests.test_processes import (
    Processes,
    await_port,
    procs,  # noqa: F401 - the fixture
    start_gateway,
    start_worker,
    ws_url,
)

pytestmark = pytest.mark.slow

ROUNDS = int(os.environ.get("TEST_NEXT_ROUNDS", "15"))


async def test_twenty_readers_pressing_next_on_two_gateways(
    procs: Processes,  # noqa: F811
    store: ExamStore,
    dynamo_settings: DynamoSettings,
    redis: Any,
    redis_url: str,
) -> None:
    start_worker(procs, dynamo_settings, redis_url)
    limits = {"GATEWAY_RATE_LIMIT": "10000", "GATEWAY_RATE_BURST": "10000"}
    gw1, port1 = start_gateway(procs, "gw-1", dynamo_settings, redis_url, **limits)
    gw2, port2 = start_gateway(procs, "gw-2", dynamo_settings, redis_url, **limits)
    await await_port(port1, gw1)
    await await_port(port2, gw2)
    people = readers_for(20)
    urls = [ws_url(port1), ws_url(port2)]
    clients = await asyncio.gather(
        *(WsClient.open(urls[i % 2], token(p.sub, **p.token_args())) for i, p in enumerate(people))
    )
    handed = 0
    for n in range(ROUNDS):
        exams = await make_ready(store, Round.layout(10, n), f"r{n}")
        await cached(redis, *exams)
        rnd = Round(exams, people)
        await rnd.play([c.request for c in clients])
        assert rnd.violations() == [], f"round {n}"
        handed += len(rnd.outcome.handed)
    assert handed == 10 * ROUNDS
    for c in clients:
        await c.close()


@pytest.mark.timeout(180)
async def test_the_rounds_tool_runs_at_a_tiny_scale() -> None:
    """`python -m loadtest.nextcase_rounds` starts its own stack and reports in JSON."""
    import json
    import sys

    from devstack.services import ROOT

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtest.nextcase_rounds", "--rounds", "2", "--readers", "4",
        "--exams", "3", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 150)
    assert proc.returncode == 0, out
    summary = json.loads(out)
    assert (summary["rounds"], summary["handed_out"], summary["failed_rounds"]) == (2, 6, 0)
