"""Real parts for the tests: a redis-server and DynamoDB Local on free loopback ports
(or REDIS_URL / DYNAMO_ENDPOINT_URL when given), and the relay and gateway in-process.

REDIS_URL, when given, must name a database the tests may flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
import redis as sync_redis
import uvicorn
from hypothesis import settings as hypothesis_settings
from redis.asyncio import Redis

from devstack import free_port, start_dynamodb_local, start_redis
from devstack.seed import SEED
from dynamo.client import dynamodb_client, streams_client
from dynamo.directory import DirectoryStore, Person, Site, Tenant
from dynamo.directory.files import read as read_directory_file
from dynamo.settings import DynamoSettings
from dynamo.store import ExamStore
from dynamo.table import ensure_table
from gateway.app import bind, create_app
from gateway.auth import mint_token
from gateway.serverproto import ws_protocol
from gateway.settings import GatewaySettings
from relay.checkpoints import RedisCheckpoints
from relay.stream import StreamRelay
from worklist_cache import CacheSettings, WorklistFeed

# Shared fixtures that live beside their helpers: the browser and its pages, the audit's
# stream and PostgreSQL pool.
pytest_plugins = ["tests.support.pages", "tests.support.audit"]

# One unit of patience; a slow machine can stretch every timeout at once.
UNIT = float(os.environ.get("TEST_TIME_UNIT", "1.0"))
# In CI the property tests draw the same examples every run (derandomized), so a red run
# is reproducible; on a developer's machine they keep exploring.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")
# The signing secret of the gateways the tests start.
SECRET = "test-secret-" + "x" * 32


# The directory of the running test's table (set by `dynamo_settings`): `token` puts the
# person it mints for there, so the gateway, which trusts the directory and not the
# token, scopes them as the test says.
_current: dict[str, DynamoSettings] = {}
_pool = ThreadPoolExecutor(1, thread_name_prefix="test-directory")
_clients: dict[str, Any] = {}


class _SyncClient:
    """boto3's client behind the awaitable calls `ExamStore` makes (the helper runs the
    directory's own code in a thread, outside the test's event loop)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.exceptions = client.exceptions

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._client, name)

        async def call(**kwargs: Any) -> Any:
            return fn(**kwargs)

        return call


async def _register(settings: DynamoSettings, person: Person) -> None:
    client = _clients.get(settings.endpoint_url or "")
    if client is None:
        client = boto3.client(
            "dynamodb",
            endpoint_url=settings.endpoint_url,
            region_name=settings.region,
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
        )
        _clients[settings.endpoint_url or ""] = client
    d = DirectoryStore(ExamStore(_SyncClient(client), settings.table))
    if await d.tenant(person.tenant) is None:
        await d.add(Tenant(code=person.tenant, name=person.tenant), actor="tests")
    known = {s.code for s in await d.sites(person.tenant)}
    for code in person.sites:
        if code not in known:
            await d.add(Site(tenant=person.tenant, code=code, name=code), actor="tests")
    current = await d.person(person.tenant, person.sub)
    if current is None:
        await d.add(person, actor="tests")
    elif current.content() != person.content():
        await d.update(person, actor="tests")


def register(
    sub: str,
    *,
    name: str = "Dr. Test Ana",
    tenant: str = "northwind",
    roles: tuple[str, ...] = ("radiologist",),
    sites: tuple[str, ...] = (),
    subspecialties: tuple[str, ...] = (),
    modalities: tuple[str, ...] = (),
    active: bool = True,
) -> None:
    """Put a person in the running test's directory (creating its tenant and sites),
    or change them to this; nothing when no test table is up."""
    settings = _current.get("settings")
    if settings is None:
        return
    person = Person.model_validate(
        {
            "tenant": tenant,
            "sub": sub,
            "name": name,
            "roles": roles,
            "sites": sites,
            "subspecialties": subspecialties,
            "modalities": modalities,
            "active": active,
        }
    )
    _pool.submit(asyncio.run, _register(settings, person)).result()


def token(
    sub: str = "t-ana",
    *,
    name: str = "Dr. Test Ana",
    tenant: str = "northwind",
    roles: tuple[str, ...] = ("radiologist",),
    sites: tuple[str, ...] = (),
    subspecialties: tuple[str, ...] = (),
    modalities: tuple[str, ...] = (),
    ttl_s: int = 600,
) -> str:
    """A token for this person, who is put in the test's directory as given."""
    register(
        sub,
        name=name,
        tenant=tenant,
        roles=roles,
        sites=sites,
        subspecialties=subspecialties,
        modalities=modalities,
    )
    return mint_token(
        SECRET,
        sub=sub,
        name=name,
        tenant=tenant,
        roles=roles,
        sites=sites,
        subspecialties=subspecialties,
        ttl_s=ttl_s,
    )


def _reachable(url: str) -> bool:
    try:
        sync_redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    given = os.environ.get("REDIS_URL")
    if given and _reachable(given):
        yield given
        return
    proc, url = start_redis()
    try:
        yield url
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def dynamo_endpoint() -> Iterator[str]:
    given = os.environ.get("DYNAMO_ENDPOINT_URL")
    if given:
        yield given
        return
    proc, url = start_dynamodb_local()
    try:
        yield url
    finally:
        proc.stop()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def dynamo_settings(dynamo_endpoint: str) -> AsyncIterator[DynamoSettings]:
    """A fresh, created table per test (so a fresh stream too), deleted after it.

    DynamoDB Local slows down as its tables add up: with 324 of them (the suite makes
    about 400) creating one took 1.4 s, and the trimmed-stream test 46 s instead of
    5 s; it failed past its waits in two CI runs."""
    settings = DynamoSettings(endpoint_url=dynamo_endpoint, table=f"t-{uuid.uuid4().hex[:12]}")
    async with dynamodb_client(settings) as client:
        await ensure_table(client, settings.table)
    _current["settings"] = settings
    yield settings
    async with dynamodb_client(settings) as client:
        with contextlib.suppress(Exception):  # (a test may have deleted it itself)
            await client.delete_table(TableName=settings.table)


@pytest.fixture
async def ddb(dynamo_settings: DynamoSettings) -> AsyncIterator[Any]:
    async with dynamodb_client(dynamo_settings) as client:
        yield client


@pytest.fixture
def store(ddb: Any, dynamo_settings: DynamoSettings) -> ExamStore:
    return ExamStore(ddb, dynamo_settings.table)


async def seed_demo_directory(client: Any, table: str) -> None:
    """The demo's directory (`devstack/seed/directory.json`), loaded as `make demo`
    does: the operator's import."""
    entries, rows = read_directory_file(SEED)
    await DirectoryStore(ExamStore(client, table)).apply(entries, actor="tests", rows=rows)


@dataclass
class Stack:
    """A running relay and gateway over the test's table and Redis."""

    http_url: str
    ws_url: str
    relay: StreamRelay
    app: Any = None


async def _serve(
    app: Any, port: int, settings: GatewaySettings | None = None
) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ws=ws_protocol("websockets-sansio"),  # as `python -m gateway` serves
        log_config=None,
        lifespan="on",
        access_log=False,
    )
    server = uvicorn.Server(config)
    sock = bind(settings or GatewaySettings(port=port))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(int(200 * UNIT)):
        if server.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    return server, task


@contextlib.asynccontextmanager
async def gateway_node(
    dynamo_settings: DynamoSettings, redis_url: str
) -> AsyncIterator[tuple[str, Any]]:
    """One more gateway node on the test's Redis and DynamoDB (demo settings, no relay of
    its own): its WebSocket URL and its app."""
    port = free_port()
    # A name of its own: the default (host:pid) is the test's other node's too, and two
    # nodes of one name share the offer desk's lease (both drive a tenant's offers at
    # once), take each other's presence changes for their own, and share a probe channel.
    settings = GatewaySettings(
        port=port,
        jwt_secret=SECRET,
        demo=True,
        drain_seconds=0.2,
        node_name=f"test-node-{port}",
    )
    app = create_app(settings, CacheSettings(redis_url=redis_url), dynamo_settings)
    server, task = await _serve(app, port, settings)
    try:
        yield f"ws://127.0.0.1:{port}/ws", app
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10 * UNIT)


@pytest.fixture
def gateway_overrides() -> dict[str, Any]:
    """GatewaySettings fields a test module wants changed (override this fixture)."""
    return {}


@pytest.fixture
async def stack(
    dynamo_settings: DynamoSettings,
    redis: Redis,
    redis_url: str,
    gateway_overrides: dict[str, Any],
) -> AsyncIterator[Stack]:
    async with streams_client(dynamo_settings) as streams, dynamodb_client(dynamo_settings) as c:
        arn = (await c.describe_table(TableName=dynamo_settings.table))["Table"]["LatestStreamArn"]
        relay = StreamRelay(streams, arn, WorklistFeed(redis), RedisCheckpoints(redis, arn))
        relay_task = asyncio.create_task(relay.run())
        port = free_port()
        settings = GatewaySettings(
            **{
                "port": port,
                "jwt_secret": SECRET,
                "demo": True,
                "drain_seconds": 0.2,
                **gateway_overrides,
            }
        )
        if settings.demo:
            await seed_demo_directory(c, dynamo_settings.table)
        app = create_app(settings, CacheSettings(redis_url=redis_url), dynamo_settings)
        server, server_task = await _serve(app, port, settings)
        try:
            yield Stack(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws", relay, app)
        finally:
            server.should_exit = True
            await asyncio.wait_for(server_task, 10 * UNIT)
            relay_task.cancel()
            await asyncio.gather(relay_task, return_exceptions=True)


# ---- PostgreSQL, for the audit trail (tests/test_audit*.py) ------------------------------


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """DATABASE_URL when given (a server whose databases the tests may create and drop),
    else a private cluster (initdb + pg_ctl) on a free loopback port."""
    from devstack.postgres import start_postgres

    given = os.environ.get("DATABASE_URL")
    if given:
        yield given
        return
    cluster = start_postgres()
    try:
        yield cluster.url
    finally:
        cluster.destroy()


@pytest.fixture
def audit_database_url(postgres_url: str) -> Iterator[str]:
    """A fresh, empty database per test (the code under test migrates it)."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    name = f"audit_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(postgres_url, dbname=name)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(autouse=True)
def _forget_directory() -> Iterator[None]:
    """`token` registers people only in the running test's table."""
    yield
    _current.clear()
