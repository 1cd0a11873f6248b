"""A new group onboarded without a code change, end to end on real parts (DynamoDB Local,
redis-server, MLLP, an HTTP JWKS issuer, WebSockets): the operator imports its
spreadsheet (two sites, four people); its RIS sends HL7 for both sites, which the
directory binds (no mapping file); its radiologists log in with the group's identity
provider's RS256 tokens and each sees only their sites' rows, in the snapshot and live;
an abandoned claim is released by the relay worker's maintenance when its lease runs
out; and after Redis loses everything (FLUSHALL) the worklist is rebuilt and a
radiologist's open view converges to DynamoDB. All data synthetic."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from dynamo.claims import Claims
from dynamo.directory import DirectoryStore, cli
from dynamo.settings import DynamoSettings
from dynamo.states import OPEN_STATES, ExamStatus
from dynamo.store import ExamStore
from loadtest.hl7.builder import MessageBuilder
from loadtest.plan import PlannedExam
from relay.worker import RelaySettings, maintain_forever, pipeline
from tests.conftest import UNIT, Stack
from tests.support.hl7 import Running, cid, directory_sender, planned_at, running
from tests.support.jwks import AUDIENCE, ISSUER, JwksServer, SigningKey
from tests.support.wsclient import Frame, WsClient
from worklist_cache import WorklistFeed

TIDEWATER_CSV = Path(__file__).parent / "fixtures" / "directory_tidewater.csv"
TENANT = "tidewater"
ZONE = "America/Halifax"
LEASE_S = 1.0  # DYNAMO_CLAIM_LEASE_SECONDS for this test's gateway
MAINTENANCE_S = 0.2  # RELAY_REAP_INTERVAL for this test's relay worker


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def idp_key() -> SigningKey:
    return SigningKey("rsa")


@pytest.fixture
def gateway_overrides(jwks: JwksServer, idp_key: SigningKey) -> dict[str, Any]:
    """The group's identity provider, and no demo directory: only what the import adds."""
    jwks.publish(idp_key)
    return {"jwks_url": jwks.url, "jwt_issuer": ISSUER, "jwt_audience": AUDIENCE, "demo": False}


@pytest.fixture
def dynamo_settings(dynamo_settings: DynamoSettings) -> DynamoSettings:
    return dynamo_settings.model_copy(
        update={"claim_lease_seconds": LEASE_S, "claim_renew_seconds": LEASE_S / 3}
    )


@pytest.fixture
async def maintenance(store: ExamStore, redis: Redis) -> AsyncIterator[None]:
    """The relay worker's maintenance (cache builds, the claim reaper) beside the stack's
    stream relay, as `python -m relay` runs them."""
    feed = WorklistFeed(redis)
    line = pipeline(store, feed, RelaySettings())
    task = asyncio.create_task(maintain_forever(Claims(store), line, feed, MAINTENANCE_S))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class Worklist:
    """What a page would show for one subscription, from the frames it received."""

    def __init__(self, client: WsClient, sub: str = "s") -> None:
        self.client = client
        self.sub = sub
        self.rows: dict[str, Frame] = {}
        self._seen = 0

    def _apply(self) -> None:
        frames = self.client.frames
        for frame in frames[self._seen :]:
            if frame.get("sub") != self.sub:
                continue
            if frame["type"] == "snapshot":
                self.rows = {r["exam_id"]: r for r in frame["rows"]}
            elif frame["type"] == "delta":
                delta = frame["delta"]
                held = self.rows.get(delta["exam_id"])
                if held is not None and delta["version"] <= held["version"]:
                    continue
                if frame.get("leave") or delta.get("op") == "remove":
                    self.rows.pop(delta["exam_id"], None)
                else:
                    self.rows[delta["exam_id"]] = delta
        self._seen = len(frames)

    def state(self) -> dict[str, tuple[str, int]]:
        return {k: (r["status"], r["version"]) for k, r in self.rows.items()}

    async def until(self, check: Callable[[Worklist], bool], what: str, timeout: float) -> float:
        """Read frames until `check` holds; the seconds it took."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout * UNIT
        while True:
            self._apply()
            if check(self):
                return loop.time() - started
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}; holds {self.state()}")
            try:
                await self.client.next(0.1)
            except TimeoutError:
                pass

    def mentions(self, accession: str) -> bool:
        return accession.encode() in orjson.dumps(self.client.frames)


async def log_in(stack: Stack, key: SigningKey, sub: str) -> WsClient:
    """A radiologist's page: the provider's token proves who; the directory says what."""
    token = key.token(sub=sub, tenant=TENANT, name=None, roles=None)
    return await WsClient.open(stack.ws_url, token)


async def subscribed(client: WsClient) -> Frame:
    """The open worklist, once the relay worker has built the new tenant's cache."""
    for _ in range(int(100 * UNIT)):
        snap = await client.subscribe("s")
        if snap["type"] == "snapshot":
            return snap
        assert snap.get("code") == "unavailable", snap
        await asyncio.sleep(0.1)
    raise AssertionError("the tenant's worklist never became available")


async def send_all(hl7: Running, messages: list[str]) -> None:
    async with hl7.client() as client:
        for text in messages:
            ack = await client.send(text)
            assert ack.code == "AA", (ack.code, ack.error_text)


def order_then_completed(sender: MessageBuilder, exam: PlannedExam) -> list[str]:
    completed = sender.status_update(exam, ExamStatus.COMPLETED, control_id=cid("O"))
    assert completed is not None
    return [sender.new_order(exam, control_id=cid("O")), completed]


async def truth(store: ExamStore, exams: list[PlannedExam]) -> dict[str, tuple[str, int]]:
    """What DynamoDB holds of these exams, as an open-states worklist shows it."""
    out: dict[str, tuple[str, int]] = {}
    for e in exams:
        got = await store.find_exam(TENANT, e.accession)
        if got.status in OPEN_STATES:
            out[e.accession] = (got.status.value, got.version)
    return out


async def test_a_group_onboarded_from_a_spreadsheet_runs_end_to_end(
    stack: Stack, store: ExamStore, redis: Redis, idp_key: SigningKey, maintenance: None
) -> None:
    # The operator's import: one tenant, two sites bound to HL7 facilities, four people.
    out = io.StringIO()
    await cli.run(["--actor", "ops", "import", str(TIDEWATER_CSV)], DirectoryStore(store), out)
    assert len(json.loads(out.getvalue())["added"]) == 7

    # (b) Its radiologists log in with the group's provider's tokens.
    varga = await log_in(stack, idp_key, "tw-varga")  # TW-BAY
    haddad = await log_in(stack, idp_key, "tw-haddad")  # TW-KNL
    lind = await log_in(stack, idp_key, "tw-lind")  # every site
    assert varga.user is not None and varga.user["sites"] == ["TW-BAY"]
    assert varga.user["name"] == "Dr. Ines Varga"  # the directory's, not the token's
    assert haddad.user is not None and haddad.user["sites"] == ["TW-KNL"]
    lists = {}
    for who, client in (("varga", varga), ("haddad", haddad), ("lind", lind)):
        snap = await subscribed(client)
        assert snap["total"] == 0
        lists[who] = Worklist(client)

    # (a) Its RIS sends orders, then COMPLETED, over MLLP for both sites; the directory
    # binds the facilities, the default dialect reads them.
    knl = MessageBuilder(directory_sender("TWKNL", TENANT, "TW-KNL", ZONE))
    bay = MessageBuilder(directory_sender("TWBAY", TENANT, "TW-BAY", ZONE))
    knl1 = planned_at(TENANT, "TW-KNL", "HTK")
    bay1 = planned_at(TENANT, "TW-BAY", "HTB")
    bay2 = planned_at(TENANT, "TW-BAY", "HTB")
    async with running(store, directory=True) as hl7:
        # Knoll's first: by the time Bay's last change reaches a Bay reader, Knoll's
        # changes went out before it on the tenant's feed.
        await send_all(hl7, order_then_completed(knl, knl1))
        await send_all(hl7, order_then_completed(bay, bay1) + order_then_completed(bay, bay2))
        exams = [knl1, bay1, bay2]
        for e in exams:
            got = await store.find_exam(TENANT, e.accession)
            assert (got.site, got.status) == (e.site, ExamStatus.COMPLETED)
        expected = await truth(store, exams)

        # (c) Live, each sees only their sites' rows.
        def has(accessions: set[str]) -> Callable[[Worklist], bool]:
            return lambda w: {k: expected[k] for k in accessions} == w.state()

        everyone = {e.accession for e in exams}
        await lists["lind"].until(has(everyone), "every row at Lind's", 10)
        await lists["varga"].until(has({bay1.accession, bay2.accession}), "Bay at Varga's", 10)
        await lists["haddad"].until(has({knl1.accession}), "Knoll at Haddad's", 10)
        assert not lists["varga"].mentions(knl1.accession)
        assert not lists["haddad"].mentions(bay1.accession)
        assert not lists["haddad"].mentions(bay2.accession)
        # ... and in a fresh snapshot.
        for client, sites in ((varga, {"TW-BAY"}), (haddad, {"TW-KNL"})):
            snap = await client.subscribe("fresh")
            assert snap["type"] == "snapshot" and snap["total"] >= 1
            assert {r["site"] for r in snap["rows"]} == sites
        # Naming the other site is refused, not answered with an empty list.
        refused = await varga.subscribe("other", sites=["TW-KNL"])
        assert refused["type"] == "error" and refused["code"] == "forbidden", refused

        # (d) Varga claims a Bay exam and leaves; the lease runs out and the relay
        # worker's reaper returns the exam to everyone's list.
        claimed = await varga.request({"type": "claim", "exam_id": bay1.accession})
        assert claimed["type"] == "claimed", claimed
        loop = asyncio.get_running_loop()
        claimed_at = loop.time()
        await lists["lind"].until(
            lambda w: w.rows[bay1.accession]["claimed_by"] == "tw-varga", "the claim", 5
        )
        await varga.close()
        await lists["lind"].until(
            lambda w: w.rows[bay1.accession]["claimed_by"] is None,
            "the reaper's release",
            LEASE_S + 10 * MAINTENANCE_S + 5,
        )
        released_after = loop.time() - claimed_at
        print(f"claim released by the reaper {released_after:.2f}s after it was taken")
        assert released_after >= LEASE_S * 0.9  # not at the disconnect: when the lease ended
        assert (await store.find_exam(TENANT, bay1.accession)).claimed_by is None

        # (e) Redis loses everything; the relay worker rebuilds the tenant's cache and
        # Lind's open worklist converges to DynamoDB, a change after the loss included.
        await redis.flushall()
        knl2 = planned_at(TENANT, "TW-KNL", "HTK")
        await send_all(hl7, [knl.new_order(knl2, control_id=cid("O"))])
        exams.append(knl2)
        expected = await truth(store, exams)
        assert knl2.accession in expected
        took = await lists["lind"].until(
            lambda w: w.state() == expected, "Lind's worklist after FLUSHALL", 30
        )
        print(f"after FLUSHALL, Lind's worklist converged in {took:.2f}s")
        await lists["haddad"].until(
            lambda w: w.state() == {k: expected[k] for k in (knl1.accession, knl2.accession)},
            "Haddad's worklist after FLUSHALL",
            30,
        )
        assert not lists["haddad"].mentions(bay1.accession)
