"""Throttling and transient faults, injected over real HTTP in front of DynamoDB Local."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from devstack import free_port
from dynamo.client import dynamodb_client
from dynamo.exceptions import PermanentStoreError, StoreUnavailable
from dynamo.retry import Retry
from dynamo.settings import DynamoSettings
from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from tests.support.exams import exam_bundle

THROTTLED = {
    "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
    "message": "The level of configured provisioned throughput for the table was exceeded.",
}


@dataclass
class FaultyProxy:
    """Forwards to DynamoDB Local, answering the first `faults` calls of `target` itself."""

    upstream: str
    target: str = ""
    faults: int = 0
    status: int = 400
    body: dict[str, str] = field(default_factory=lambda: dict(THROTTLED))
    forwarded: dict[str, int] = field(default_factory=dict)
    refused: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        op = request.headers.get("X-Amz-Target", "").rpartition(".")[2]
        payload = await request.read()
        if op == self.target and self.faults > 0:
            self.faults -= 1
            self.refused += 1
            return web.json_response(
                self.body, status=self.status, content_type="application/x-amz-json-1.0"
            )
        self.forwarded[op] = self.forwarded.get(op, 0) + 1
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(self.upstream, data=payload, headers=headers) as resp,
        ):
            body = await resp.read()
            return web.Response(
                body=body,
                status=resp.status,
                headers={"Content-Type": resp.headers.get("Content-Type", "")},
            )


@pytest.fixture
async def proxy(dynamo_settings: DynamoSettings) -> AsyncIterator[tuple[FaultyProxy, ExamStore]]:
    faulty = FaultyProxy(dynamo_settings.endpoint_url)
    app = web.Application()
    app.router.add_post("/", faulty.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    settings = dynamo_settings.model_copy(update={"endpoint_url": f"http://127.0.0.1:{port}"})
    try:
        async with dynamodb_client(settings) as client:
            yield faulty, ExamStore(client, settings.table, retry=Retry(base=0.005, cap=0.05))
    finally:
        await runner.cleanup()


async def test_throttled_writes_are_retried_and_land_once(
    proxy: tuple[FaultyProxy, ExamStore], store: ExamStore
) -> None:
    faulty, through_proxy = proxy
    exam, order, profile = exam_bundle()
    await store.create_exam(exam, order, profile)

    faulty.target, faulty.faults = "UpdateItem", 3
    moved = await through_proxy.transition(exam.patient_id, exam.accession, ExamStatus.ARRIVED)
    assert faulty.refused == 3 and faulty.forwarded["UpdateItem"] == 1
    assert through_proxy.retry.retries == 3
    assert moved.version == 2
    assert (await store.get_exam(exam.patient_id, exam.accession)).version == 2


async def test_server_errors_are_retried_too(proxy: tuple[FaultyProxy, ExamStore]) -> None:
    faulty, through_proxy = proxy
    exam, order, profile = exam_bundle()
    faulty.target, faulty.faults, faulty.status = "TransactWriteItems", 2, 500
    faulty.body = {"__type": "com.amazonaws.dynamodb.v20120810#InternalServerError"}
    await through_proxy.create_exam(exam, order, profile)
    assert faulty.refused == 2
    assert (await through_proxy.get_exam(exam.patient_id, exam.accession)).version == 1


async def test_throttling_that_never_ends_surfaces_typed(
    proxy: tuple[FaultyProxy, ExamStore],
) -> None:
    faulty, through_proxy = proxy
    faulty.target, faulty.faults = "GetItem", 1000
    with pytest.raises(StoreUnavailable) as err:
        await through_proxy.get_exam("nobody", "NOPE")
    assert err.value.error_code == "ProvisionedThroughputExceededException"
    assert faulty.refused == through_proxy.retry.attempts


async def test_a_permanent_error_surfaces_at_once(proxy: tuple[FaultyProxy, ExamStore]) -> None:
    faulty, through_proxy = proxy
    faulty.target, faulty.faults = "GetItem", 5
    faulty.body = {
        "__type": "com.amazon.coral.validate#ValidationException",
        "message": "One or more parameter values were invalid",
    }
    with pytest.raises(PermanentStoreError) as err:
        await through_proxy.get_exam("nobody", "NOPE")
    assert err.value.error_code == "ValidationException"
    assert faulty.refused == 1, "not retried"


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    top = Retry(base=0.025, cap=1.0, rng=lambda: 1.0)
    assert [top.delay(a) for a in range(8)] == [0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert Retry(rng=lambda: 0.0).delay(5) == 0.0
