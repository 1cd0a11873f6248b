"""Whole processes: gateways, the relay worker and redis-server as real, separate OS
processes, killed, drained and restarted the way a deploy or a crash does it.

Each test starts what it needs with `ManagedProcess` (logs in the test's tmp_path; their
tails are printed at teardown, so a failure shows them) and stops everything in a
`finally`. Tests on the session's Redis ask for the `redis` fixture so it starts empty.
What is asserted is what a radiologist's screen would show: deltas arriving, close codes,
claims and conflicts, and a worklist that ends equal to DynamoDB's.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from devstack.procs import ManagedProcess, free_port, wait_for_port
from devstack.services import ROOT, start_redis
from dynamo.models import Exam
from dynamo.settings import DynamoSettings
from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from gateway.collector import YOUNG_THRESHOLD
from tests.conftest import SECRET, UNIT, token
from tests.support.exams import exam_in
from tests.support.wsclient import Frame, WsClient

pytestmark = pytest.mark.slow

S = ExamStatus
TENANT = "northwind"
Row = tuple[str, int]  # (status, version)


# ---- processes ---------------------------------------------------------------------------


class Processes:
    """Every process one test started; `stop_all` ends them (safe to call twice)."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: dict[str, ManagedProcess] = {}

    def spawn(self, name: str, module: str, env: dict[str, str]) -> ManagedProcess:
        argv = [sys.executable, "-m", module]
        with open(self.logdir / f"{name}.log", "ab") as log:  # the child keeps its own copy
            proc = ManagedProcess(name, argv, env=env, cwd=ROOT, log=log)
        self.procs[name] = proc
        return proc

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.stop(5)

    def print_logs(self, lines: int = 25) -> None:
        for path in sorted(self.logdir.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            print(f"---- {path.name} (last {len(tail)} lines) ----")
            print("\n".join(tail))


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        processes.stop_all()
        processes.print_logs()  # shown by pytest only when the test failed


def worker_env(dynamo: DynamoSettings, redis_url: str, name: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "DYNAMO_ENDPOINT_URL": dynamo.endpoint_url,
        "DYNAMO_TABLE": dynamo.table,
        "RELAY_POLL_INTERVAL": "0.02",
        "RELAY_DISCOVER_INTERVAL": "0.3",
        "RELAY_LEASE_SECONDS": "1.5",
        "RELAY_REAP_INTERVAL": "0.3",
        "RELAY_NODE_NAME": name,
    }


def start_worker(procs: Processes, dynamo: DynamoSettings, redis_url: str) -> ManagedProcess:
    return procs.spawn("worker", "relay", worker_env(dynamo, redis_url, "relay-p"))


def start_gateway(
    procs: Processes,
    name: str,
    dynamo: DynamoSettings,
    redis_url: str,
    **extra: str,
) -> tuple[ManagedProcess, int]:
    port = free_port()
    env = {
        "REDIS_URL": redis_url,
        "DYNAMO_ENDPOINT_URL": dynamo.endpoint_url,
        "DYNAMO_TABLE": dynamo.table,
        "GATEWAY_PORT": str(port),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_JWT_SECRET": SECRET,
        "GATEWAY_DRAIN_SECONDS": "0.5",
        "GATEWAY_NODE_NAME": name,
        **extra,
    }
    proc = procs.spawn(name, "gateway", env)
    return proc, port


async def await_port(port: int, proc: ManagedProcess) -> None:
    await asyncio.to_thread(wait_for_port, port, 30 * UNIT, proc)


def ws_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/ws"


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait (polling) until `check()` holds; fail naming `what` if it never does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout * UNIT
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# ---- a client that keeps its worklist the way the browser does --------------------------


class Reader:
    """A connected client whose frames are read in the background and applied to its
    worklist: snapshot rows, then deltas by version (an older or repeated version is
    ignored), `leave` and `remove` dropping the row. Only subscription `s` is tracked."""

    def __init__(self, client: WsClient) -> None:
        self.client = client
        self.rows: dict[str, Row] = {}
        self.seen: dict[str, int] = {}  # newest version seen per exam (rows or not)
        self.epoch = ""
        self.offset = ""
        self.closed: ConnectionClosed | None = None
        self.task = asyncio.create_task(self._pump())

    @classmethod
    async def open(cls, url: str, sub: str, name: str | None = None) -> Reader:
        # Minting puts the person in the directory with blocking DynamoDB calls: off the
        # event loop, so that readers opened together do not hold up each other's
        # handshakes (whose timeouts run meanwhile) for the whole batch's registrations.
        token_ = await asyncio.to_thread(token, sub, name=name or f"Dr. {sub}")
        return cls(await WsClient.open(url, token_))

    async def reconnect(self, url: str) -> Reader:
        """A new connection for the same user, keeping this one's worklist and position
        (as the page does across a reconnect)."""
        assert self.client.user is not None
        sub = self.client.user["sub"]
        again = await Reader.open(url, sub, self.client.user["name"])
        again.rows, again.seen = dict(self.rows), dict(self.seen)
        again.epoch, again.offset = self.epoch, self.offset
        return again

    @property
    def frames(self) -> list[Frame]:
        return self.client.frames

    async def _pump(self) -> None:
        seen = len(self.client.frames)
        try:
            while True:
                await self.client.next(timeout=3600)
                # `next` unpacks batches into `frames`: apply everything new, in order.
                for frame in self.client.frames[seen:]:
                    self._apply(frame)
                seen = len(self.client.frames)
        except ConnectionClosed as exc:
            self.closed = exc

    def _apply(self, frame: Frame) -> None:
        kind = frame.get("type")
        if kind == "snapshot" and frame.get("sub") == "s":
            self.rows = {r["exam_id"]: (r["status"], r["version"]) for r in frame["rows"]}
            # A snapshot replaces what the client knew: versions are compared against
            # the rows it holds (after a reset the rebuilt feed repeats old versions).
            self.seen = {exam_id: version for exam_id, (_, version) in self.rows.items()}
            self.epoch, self.offset = frame["epoch"], frame["offset"]
        elif kind == "resumed" and frame.get("sub") == "s":
            self.epoch = frame["epoch"]
        elif kind == "delta" and frame.get("sub") == "s":
            delta = frame["delta"]
            self.epoch, self.offset = frame["epoch"], frame["offset"]
            exam_id, version = delta["exam_id"], delta["version"]
            if version <= self.seen.get(exam_id, 0):
                return
            self.seen[exam_id] = version
            if frame.get("leave") or delta["op"] == "remove":
                self.rows.pop(exam_id, None)
            else:
                self.rows[exam_id] = (delta["status"], version)

    def position(self) -> dict[str, str]:
        return {"epoch": self.epoch, "offset": self.offset}

    async def subscribe(self, since: dict[str, str] | None = None) -> Frame:
        """Subscribe `s` to the default (open exams) view; the reply frame. While the
        tenant's cache is being rebuilt the answer is `unavailable`: subscribe again, as
        the protocol says a client does."""
        frame: Frame = {"type": "subscribe", "id": "s"}
        if since is not None:
            frame["since"] = since
        for _ in range(int(40 * UNIT)):
            start = len(self.frames)
            await self.client.send(frame)
            reply = await self.expect(lambda f: f.get("id") == "s", start=start)
            if reply.get("code") != "unavailable":
                return reply
            await asyncio.sleep(reply["detail"]["retry_after_ms"] / 1000)
        raise AssertionError("the tenant's worklists were never rebuilt")

    async def expect(
        self,
        predicate: Callable[[Frame], bool],
        *,
        start: int = 0,
        timeout: float = 10.0,
        what: str = "an expected frame",
    ) -> Frame:
        """The first frame at or after index `start` that matches."""
        found: list[Frame] = []

        def check() -> bool:
            found[:] = [f for f in self.frames[start:] if predicate(f)][:1]
            return bool(found) or self.task.done()

        await eventually(check, timeout, what)
        assert found, f"the connection closed first ({self.closed!r})"
        return found[0]

    def has_seen(self, exams: list[Exam]) -> bool:
        return all(self.seen.get(e.accession, 0) >= e.version for e in exams)

    async def close(self) -> None:
        await self.client.close()
        await asyncio.gather(self.task, return_exceptions=True)


async def open_exams(store: ExamStore) -> dict[str, Row]:
    """What DynamoDB holds for the tenant's open exams: exam_id -> (status, version)."""
    return {e.accession: (e.status.value, e.version) for e in await store.open_exams(TENANT)}


async def converge(
    readers: list[Reader], store: ExamStore, timeout: float = 20.0, procs: Processes | None = None
) -> None:
    """Every reader's worklist ends equal to DynamoDB's open exams (on failure, says which
    of `procs` died)."""
    truth = await open_exams(store)

    def crashed() -> dict[str, int | None]:
        return {n: p.poll() for n, p in (procs.procs if procs else {}).items() if p.poll()}

    with contextlib.suppress(AssertionError):
        await eventually(
            lambda: all(r.rows == truth for r in readers) or bool(crashed()),
            timeout,
            "convergence",
        )
    for i, reader in enumerate(readers):
        missing = {k: v for k, v in truth.items() if reader.rows.get(k) != v}
        extra = {k: v for k, v in reader.rows.items() if k not in truth}
        dead = crashed()
        assert reader.rows == truth, (
            f"client {i}: wrong or missing {missing}, extra {extra}; exited: {dead or 'none'}"
        )


async def transition(store: ExamStore, exam: Exam, status: ExamStatus) -> Exam:
    return await store.transition(exam.patient_id, exam.accession, status)


# ---- 1. drain on SIGTERM -------------------------------------------------------------------


async def test_sigterm_drains_keeps_serving_then_closes_everyone_with_1012(
    procs: Processes, store: ExamStore, dynamo_settings: DynamoSettings, redis: Any, redis_url: str
) -> None:
    drain = 4 * UNIT  # long enough to check everything below while it lasts
    start_worker(procs, dynamo_settings, redis_url)
    gw, port = start_gateway(
        procs, "gw-drain", dynamo_settings, redis_url, GATEWAY_DRAIN_SECONDS=str(drain)
    )
    await await_port(port, gw)
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5 * UNIT)
    try:
        ready: dict[str, httpx.Response] = {}

        async def is_ready() -> bool:
            ready["r"] = await http.get("/readyz")
            return ready["r"].status_code == 200

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15 * UNIT
        while not await is_ready():  # the relay's heartbeat makes the node ready
            assert loop.time() < deadline, f"never ready: {ready['r'].text}"
            await asyncio.sleep(0.1)
        # (`python -m gateway` only:) what starting made is out of the collector's reach.
        metrics = (await http.get("/metrics")).text
        frozen = re.search(r"^gateway_gc_frozen_objects (\d+)$", metrics, re.M)
        assert frozen is not None and int(frozen.group(1)) > 10_000, metrics
        # ... and its youngest generation is collected every YOUNG_THRESHOLD allocations.
        young = re.search(r"^gateway_gc_young_threshold (\d+)$", metrics, re.M)
        assert young is not None and int(young.group(1)) == YOUNG_THRESHOLD, metrics

        readers = await asyncio.gather(
            *(Reader.open(ws_url(port), f"t-drain-{i:02d}") for i in range(50))
        )
        for reply in await asyncio.gather(*(r.subscribe() for r in readers)):
            assert reply["type"] == "snapshot", reply

        gw._popen.send_signal(signal.SIGTERM)

        # Readiness goes false at once, saying why.
        deadline = loop.time() + 2 * UNIT
        while (resp := await http.get("/readyz")).status_code != 503:
            assert loop.time() < deadline, "readiness stayed true after SIGTERM"
            await asyncio.sleep(0.05)
        assert resp.json()["draining"] is True

        # A new connection is turned away with 503, which a client tells from an
        # Origin refusal (403): try another node.
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url(port), open_timeout=5 * UNIT) as late:
                await asyncio.wait_for(late.recv(), 5 * UNIT)  # would be `welcome`
        assert refused.value.response.status_code == 503

        # The clients already connected are still served: a new exam reaches all of them.
        exam = await exam_in(store, S.SCHEDULED)
        await eventually(
            lambda: all(r.has_seen([exam]) for r in readers), 10, "the delta during drain"
        )
        assert all(r.closed is None for r in readers), "closed before the drain period ended"
        assert gw.poll() is None

        # Then everyone is told to reconnect: a close frame with 1012, nobody just dropped.
        await eventually(lambda: all(r.task.done() for r in readers), drain + 10, "the closes")
        codes = [(r.closed.rcvd.code if r.closed and r.closed.rcvd else None) for r in readers]
        assert codes == [1012] * 50, f"close codes: {codes}"
        assert all(r.rows.get(exam.accession) == ("SCHEDULED", exam.version) for r in readers)
        exit_code = await asyncio.to_thread(gw._popen.wait, 10 * UNIT)
        assert exit_code == 0
    finally:
        await http.aclose()


# ---- 2. two gateways, one Redis: claims ------------------------------------------------------


async def test_claims_across_two_gateway_processes_have_exactly_one_winner(
    procs: Processes, store: ExamStore, dynamo_settings: DynamoSettings, redis: Any, redis_url: str
) -> None:
    start_worker(procs, dynamo_settings, redis_url)
    # The race sends up to two requests per round per connection, faster than the
    # per-connection rate limit allows: that limit is not what this test is about.
    limits = {"GATEWAY_RATE_LIMIT": "10000", "GATEWAY_RATE_BURST": "10000"}
    gw1, port1 = start_gateway(procs, "gw-1", dynamo_settings, redis_url, **limits)
    gw2, port2 = start_gateway(procs, "gw-2", dynamo_settings, redis_url, **limits)
    await await_port(port1, gw1)
    await await_port(port2, gw2)

    exam = await exam_in(store, S.COMPLETED)
    ana = await WsClient.open(ws_url(port1), token("t-ana", name="Dr. Ana"))
    ben = await Reader.open(ws_url(port2), "t-ben", "Dr. Ben")
    await ben.subscribe()
    await eventually(lambda: ben.has_seen([exam]), 15, "the exam on gateway 2")

    claimed = await ana.request({"type": "claim", "exam_id": exam.accession})
    assert claimed["type"] == "claimed", claimed
    seen = await ben.expect(
        lambda f: f.get("type") == "delta" and f["delta"]["version"] == claimed["version"]
    )
    assert seen["delta"]["exam_id"] == exam.accession
    assert (seen["delta"]["claimed_by"], seen["delta"]["claimed_by_name"]) == ("t-ana", "Dr. Ana")
    ben_claim_frames = len(ben.frames)
    await ben.client.send({"type": "claim", "id": "ben-1", "exam_id": exam.accession})
    conflict = await ben.expect(lambda f: f.get("id") == "ben-1", start=ben_claim_frames)
    assert conflict["type"] == "error" and conflict["code"] == "conflict", conflict
    assert conflict["detail"]["holder"] == {"sub": "t-ana", "name": "Dr. Ana"}
    assert (await ana.request({"type": "release", "exam_id": exam.accession}))["type"] == (
        "released"
    )
    await ana.close()
    await ben.close()

    race = await exam_in(store, S.COMPLETED)
    urls = [ws_url(port1), ws_url(port2)]
    claimers = await asyncio.gather(
        *(WsClient.open(urls[i % 2], token(f"t-race-{i:02d}")) for i in range(20))
    )
    subs = [c.user["sub"] for c in claimers if c.user]
    for rnd in range(100):
        replies = await asyncio.gather(
            *(c.request({"type": "claim", "exam_id": race.accession}, 10) for c in claimers)
        )
        winners = [i for i, r in enumerate(replies) if r["type"] == "claimed"]
        assert len(winners) == 1, f"round {rnd}: {len(winners)} claimed: {replies}"
        (w,) = winners
        for i, reply in enumerate(replies):
            if i == w:
                continue
            assert reply.get("code") == "conflict", f"round {rnd}, claimer {i}: {reply}"
            assert reply["detail"]["holder"]["sub"] == subs[w], f"round {rnd}: {reply}"
        released = await claimers[w].request(
            {"type": "release", "exam_id": replies[w]["exam_id"]}, 10
        )
        assert released["type"] == "released", f"round {rnd}: {released}"
    for c in claimers:
        await c.close()


# ---- 3. a gateway killed: resume on another ----------------------------------------------


async def test_clients_of_a_killed_gateway_resume_on_another_without_loss(
    procs: Processes, store: ExamStore, dynamo_settings: DynamoSettings, redis: Any, redis_url: str
) -> None:
    start_worker(procs, dynamo_settings, redis_url)
    gw_a, port_a = start_gateway(procs, "gw-a", dynamo_settings, redis_url)
    gw_b, port_b = start_gateway(procs, "gw-b", dynamo_settings, redis_url)
    await await_port(port_a, gw_a)
    await await_port(port_b, gw_b)

    statuses = [S.SCHEDULED, S.ARRIVED, S.IN_PROGRESS, S.COMPLETED, S.COMPLETED, S.SCHEDULED]
    before = [await exam_in(store, s) for s in statuses]
    on_a = [await Reader.open(ws_url(port_a), f"t-a{i}") for i in range(8)]
    on_b = [await Reader.open(ws_url(port_b), f"t-b{i}") for i in range(2)]
    for reader in on_a + on_b:
        assert (await reader.subscribe())["type"] == "snapshot"
    await converge(on_a + on_b, store)
    # One more change everyone sees live, so positions are delta offsets too.
    before[0] = await transition(store, before[0], S.ARRIVED)
    await converge(on_a + on_b, store)

    gw_a.kill()  # a crash: no close frame, no drain
    await eventually(lambda: all(r.task.done() for r in on_a), 10, "the drops")

    # While they are away: exams move on, one arrives, one is reported, one is cancelled.
    away = [
        await transition(store, before[1], S.IN_PROGRESS),
        await transition(store, before[2], S.COMPLETED),
        await transition(store, before[3], S.FINAL),  # leaves the open view
        await transition(store, before[5], S.CANCELLED),  # leaves it too
        await exam_in(store, S.ARRIVED),
    ]
    await eventually(lambda: all(r.has_seen(away) for r in on_b), 15, "the writes on B")

    back = [await r.reconnect(ws_url(port_b)) for r in on_a]
    for i, reader in enumerate(back):
        reply = await reader.subscribe(reader.position())
        assert reply["type"] == "resumed", f"client {i}: {reply}"
        assert reply["missed"] >= len(away), f"client {i}: {reply}"
    # Nothing is written now: what arrives is what the resume delivered.
    await eventually(lambda: all(r.has_seen(away) for r in back), 10, "the missed deltas")
    for reader in back:
        first = next(i for i, f in enumerate(reader.frames) if f.get("type") == "resumed")
        got = {
            (f["delta"]["exam_id"], f["delta"]["version"])
            for f in reader.frames[first:]
            if f.get("type") == "delta"
        }
        assert {(e.accession, e.version) for e in away} <= got
        assert not any(f.get("type") == "snapshot" for f in reader.frames[first:])
    await converge(back + on_b, store)

    # Live again on B, for everyone.
    live = [await transition(store, away[1], S.PRELIMINARY), await exam_in(store, S.SCHEDULED)]
    await eventually(lambda: all(r.has_seen(live) for r in back + on_b), 15, "live deltas")
    await converge(back + on_b, store)


# ---- 4. Redis restarted under the gateway and the worker ------------------------------------


def private_redis(procs: Processes) -> tuple[str, int]:
    """A redis-server of this test alone: the session's one must not be restarted under
    other tests. Returns its URL and port."""
    proc, url = start_redis()
    procs.procs["redis-1"] = proc
    return url, int(url.rsplit(":", 1)[1].split("/")[0])


async def restart_redis(procs: Processes, port: int) -> None:
    """Stop the test's redis-server and start an empty one on the same port, after an
    outage of about a second (what a failover takes; every client notices it)."""
    procs.procs["redis-1"].stop()
    await asyncio.sleep(1 * UNIT)
    procs.procs["redis-2"], _ = await asyncio.to_thread(start_redis, port)


async def test_a_redis_restart_resyncs_connected_clients_to_what_dynamodb_holds(
    procs: Processes, store: ExamStore, dynamo_settings: DynamoSettings
) -> None:
    url, redis_port = private_redis(procs)
    start_worker(procs, dynamo_settings, url)
    gw, port = start_gateway(procs, "gw-r", dynamo_settings, url)
    await await_port(port, gw)

    before = [await exam_in(store, s) for s in (S.SCHEDULED, S.ARRIVED, S.COMPLETED, S.FINAL)]
    live = [await Reader.open(ws_url(port), f"t-r{i}") for i in range(5)]
    for reader in live:
        assert (await reader.subscribe())["type"] == "snapshot"
    await converge(live, store)
    old_epoch = live[0].epoch
    marks = [len(r.frames) for r in live]

    await restart_redis(procs, redis_port)

    for i, (reader, mark) in enumerate(zip(live, marks, strict=True)):
        resync = await reader.expect(
            lambda f: f.get("type") == "resync" and f.get("sub") == "s",
            start=mark,
            timeout=20,
            what=f"client {i} to be told to resync",
        )
        after = reader.frames.index(resync, mark)
        snap = await reader.expect(
            lambda f: f.get("type") == "snapshot",
            start=after,
            what=f"client {i}'s fresh snapshot after `resync` (none came: its worklist is stuck)",
        )
        assert snap["reset"] is True, f"client {i}: {snap}"
        assert snap["epoch"] != old_epoch, f"client {i}: the feed kept its epoch"
    # The exams written before the restart are back (rebuilt from DynamoDB).
    await converge(live, store, procs=procs)

    # New writes arrive live, as deltas, on the new epoch.
    marks = [len(r.frames) for r in live]
    new = [
        await transition(store, before[0], S.ARRIVED),
        await transition(store, before[2], S.FINAL),
        await exam_in(store, S.COMPLETED),
    ]
    await eventually(lambda: all(r.has_seen(new) for r in live), 15, "live deltas")
    for reader, mark in zip(live, marks, strict=True):
        deltas = {
            (f["delta"]["exam_id"], f["delta"]["version"])
            for f in reader.frames[mark:]
            if f.get("type") == "delta"
        }
        assert {(e.accession, e.version) for e in new} <= deltas
        assert reader.epoch != old_epoch
    await converge(live, store, procs=procs)


async def test_after_a_redis_restart_the_worker_rebuilds_and_a_returning_client_is_reset(
    procs: Processes, store: ExamStore, dynamo_settings: DynamoSettings
) -> None:
    """The worker lives through the outage; the gateways are replaced around it (a
    deploy), so only the worker's and the resume's handling of a new Redis is tested."""
    url, redis_port = private_redis(procs)
    worker = start_worker(procs, dynamo_settings, url)
    gw, port = start_gateway(procs, "gw-old", dynamo_settings, url)
    await await_port(port, gw)

    before = [await exam_in(store, s) for s in (S.SCHEDULED, S.ARRIVED, S.COMPLETED, S.FINAL)]
    client = await Reader.open(ws_url(port), "t-away")
    await client.subscribe()
    await converge([client], store)
    old_epoch = client.epoch
    await client.close()
    await asyncio.to_thread(gw.stop)  # a deploy replaces the gateway meanwhile

    await restart_redis(procs, redis_port)
    gw, port = start_gateway(procs, "gw-new", dynamo_settings, url)
    await await_port(port, gw)

    back = await client.reconnect(ws_url(port))
    reply = await back.subscribe(client.position())
    assert reply["type"] == "snapshot" and reply["reset"] is True, reply
    assert reply["epoch"] != old_epoch
    # The worker refills the new Redis from DynamoDB (the stream is not what brings the
    # exams back: their checkpoints were lost with the old Redis, either way is fine).
    await converge([back], store, procs=procs)
    assert {e.accession for e in before if e.status != S.FINAL} <= set(back.rows)
    assert worker.poll() is None, "the relay worker exited with the Redis restart"

    # And it relays what happens next.
    mark = len(back.frames)
    new = [await transition(store, before[1], S.IN_PROGRESS), await exam_in(store, S.SCHEDULED)]
    await eventually(lambda: back.has_seen(new), 15, "live deltas after the restart")
    deltas = {
        (f["delta"]["exam_id"], f["delta"]["version"])
        for f in back.frames[mark:]
        if f.get("type") == "delta"
    }
    assert {(e.accession, e.version) for e in new} <= deltas
    await converge([back], store, procs=procs)
