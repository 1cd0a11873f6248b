"""The MLLP listener over real TCP (and TLS): framing faults, many connections, order per
connection, no ACK when the store is down, drain on close. Data synthetic."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from devstack import free_port
from dynamo.client import dynamodb_client
from dynamo.exceptions import ExamNotFound
from dynamo.retry import Retry
from dynamo.settings import DynamoSettings
from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from hl7_ingest.ack import Ack, build_ack, read_ack
from hl7_ingest.deadletters import DeadLetters
from hl7_ingest.exceptions import AckTimeout, MllpError
from hl7_ingest.listener import MllpListener
from hl7_ingest.message import parse
from hl7_ingest.mllp import FrameDecoder, wrap
from loadtest.hl7.client import MllpClient
from tests.conftest import UNIT
from tests.support.hl7 import MAPPINGS, Running, builder, cid, planned, running

S = ExamStatus


@pytest.fixture
async def hl7(store: ExamStore) -> AsyncIterator[Running]:
    async with running(store) as r:
        yield r


class Raw:
    """A bare TCP connection to the listener: bytes out, ACK frames in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.frames: list[bytes] = []

    @classmethod
    async def open(cls, port: int) -> Raw:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def acks(self, count: int, timeout: float = 10.0) -> list[Ack]:
        async def collect() -> None:
            while len(self.frames) < count:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("closed")
                self.frames += self.decoder.feed(data)

        await asyncio.wait_for(collect(), timeout * UNIT)
        out, self.frames = self.frames[:count], self.frames[count:]
        return [read_ack(f.decode()) for f in out]

    async def nothing_more(self, wait: float = 0.3) -> bool:
        try:
            data = await asyncio.wait_for(self.reader.read(65536), wait * UNIT)
        except TimeoutError:
            return True
        return not data and not self.frames

    async def closed_by_peer(self, timeout: float = 5.0) -> bool:
        try:
            while True:
                data = await asyncio.wait_for(self.reader.read(65536), timeout * UNIT)
                if not data:
                    return True
        except (TimeoutError, ConnectionError):
            return False

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


def new_order(sender: str = "NWGEN") -> tuple[str, str]:
    exam = planned(sender)
    return builder(sender).new_order(exam, control_id=cid()), exam.accession


async def exists(store: ExamStore, tenant: str, accession: str) -> bool:
    try:
        await store.find_exam(tenant, accession)
    except ExamNotFound:
        return False
    return True


async def test_a_frame_split_across_many_reads(hl7: Running, store: ExamStore) -> None:
    text, accession = new_order()
    conn = await Raw.open(hl7.port)
    data = wrap(text)
    for i in range(0, len(data), 7):
        await conn.write(data[i : i + 7])
        await asyncio.sleep(0.002)
    (ack,) = await conn.acks(1)
    assert ack.code == "AA" and ack.control_id == parse(text).get("MSH-10")
    assert await exists(store, "northwind", accession)
    await conn.close()


async def test_several_messages_in_one_read_are_answered_in_order(
    hl7: Running, store: ExamStore
) -> None:
    exam = planned("LKMED")
    b = builder("LKMED")
    chain = [
        b.new_order(exam, control_id=cid()),
        b.status_update(exam, S.IN_PROGRESS, control_id=cid()),
        b.status_update(exam, S.COMPLETED, control_id=cid()),
        b.result(exam, S.FINAL, control_id=cid()),
    ]
    conn = await Raw.open(hl7.port)
    await conn.write(b"".join(wrap(m) for m in chain if m))
    acks = await conn.acks(4)
    # In order, each applied after the one before (else IP would find no exam).
    assert [a.control_id for a in acks] == [parse(m).get("MSH-10") for m in chain if m]
    assert [a.code for a in acks] == ["AA"] * 4
    assert await conn.nothing_more()
    got = await store.find_exam("lakeside", exam.accession)
    assert (got.status, got.version) == (S.FINAL, 5)
    await conn.close()


async def test_a_message_without_start_block_is_not_guessed_at(
    hl7: Running, store: ExamStore
) -> None:
    lost, lost_accession = new_order()
    kept, kept_accession = new_order()
    conn = await Raw.open(hl7.port)
    await conn.write(lost.encode() + b"\x1c\r" + wrap(kept))
    (ack,) = await conn.acks(1)
    assert ack.control_id == parse(kept).get("MSH-10") and ack.code == "AA"
    assert await conn.nothing_more()  # the unframed one gets no ACK: the sender resends
    assert await exists(store, "northwind", kept_accession)
    assert not await exists(store, "northwind", lost_accession)
    (letter,) = await DeadLetters(store).list()
    assert (
        letter.control_id == parse(lost).get("MSH-10") and "outside an MLLP frame" in letter.reason
    )
    await conn.close()


async def test_garbage_between_frames_is_skipped(hl7: Running, store: ExamStore) -> None:
    first, a = new_order()
    second, b = new_order()
    conn = await Raw.open(hl7.port)
    await conn.write(
        b"\x00\xffnoise" + wrap(first) + b"\r\n\r\n--junk--" + wrap(second) + b"\x1c\r"
    )
    acks = await conn.acks(2)
    assert [x.code for x in acks] == ["AA", "AA"]
    assert await exists(store, "northwind", a) and await exists(store, "northwind", b)
    assert await conn.nothing_more()
    assert await DeadLetters(store).list() == []  # noise without a message is only logged
    await conn.close()


async def test_a_connection_dropped_mid_message_disturbs_no_one(
    hl7: Running, store: ExamStore
) -> None:
    other = await Raw.open(hl7.port)
    half, half_accession = new_order()
    dropped = await Raw.open(hl7.port)
    await dropped.write(wrap(half)[: len(half) // 2])
    dropped.writer.transport.abort()  # a reset, as a crashed sender would leave
    text, _ = new_order()
    await other.write(wrap(text))
    (ack,) = await other.acks(1)
    assert ack.code == "AA"
    # A fresh connection is served too, and the half message never became an exam.
    async with hl7.client() as client:
        again, again_accession = new_order()
        assert (await client.send(again)).code == "AA"
    assert await exists(store, "northwind", again_accession)
    assert not await exists(store, "northwind", half_accession)
    await other.close()


async def test_an_oversized_frame_closes_only_its_connection(store: ExamStore) -> None:
    async with running(store, max_message_bytes=4096) as hl7:
        good = await Raw.open(hl7.port)
        big = await Raw.open(hl7.port)
        await big.write(b"\x0bMSH|" + b"x" * 10_000)
        assert await big.closed_by_peer()
        text, _ = new_order()
        await good.write(wrap(text))
        assert (await good.acks(1))[0].code == "AA"
        await good.close()
        await big.close()


async def test_many_connections_at_once_each_in_order(hl7: Running, store: ExamStore) -> None:
    async def one(sender: str) -> tuple[str, str]:
        exam = planned(sender)
        b = builder(sender)
        async with hl7.client() as client:
            for m in (
                b.new_order(exam, control_id=cid()),
                b.status_update(exam, S.COMPLETED, control_id=cid()),
                b.result(exam, S.PRELIMINARY, control_id=cid()),
            ):
                assert m is not None
                assert (await client.send(m)).code == "AA"
        return exam.tenant, exam.accession

    done = await asyncio.gather(*(one("NWGEN" if i % 2 else "LKMED") for i in range(12)))
    for tenant, accession in done:
        got = await store.find_exam(tenant, accession)
        assert (got.status, got.version) == (S.PRELIMINARY, 5)
    assert hl7.listener.served >= 12


async def test_no_ack_when_the_store_is_unavailable(dynamo_settings: DynamoSettings) -> None:
    """Nothing durable, nothing acknowledged: the connection closes and the sender keeps
    the message to resend."""
    nowhere = dynamo_settings.model_copy(update={"endpoint_url": f"http://127.0.0.1:{free_port()}"})
    async with dynamodb_client(nowhere) as client:
        store = ExamStore(client, nowhere.table, retry=Retry(attempts=2, base=0.001))
        async with running(store) as hl7:
            text, _ = new_order()
            with pytest.raises(MllpError, match="without an ACK"):
                async with hl7.client() as mllp:
                    await mllp.send(text)
            assert hl7.ingest.counts["unacknowledged"] == 1


async def test_close_lets_the_message_in_progress_get_its_ack() -> None:
    started = asyncio.Event()

    class Answer:
        def __init__(self, ack: str) -> None:
            self.ack = ack

    async def slow(raw: bytes, peer: Any) -> Any:
        started.set()
        await asyncio.sleep(0.3)
        msg = parse(raw.decode())
        return Answer(build_ack("AA", message=msg, control_id=msg.msh.get(10)))

    listener = MllpListener(slow, port=0, drain_seconds=5.0)
    await listener.start()
    client = MllpClient("127.0.0.1", listener.port, timeout=5 * UNIT)
    text, _ = new_order()
    pending = asyncio.create_task(client.send(text))
    await asyncio.wait_for(started.wait(), 5 * UNIT)
    await listener.close()
    assert (await pending).code == "AA"
    await listener.close()  # twice is fine
    with pytest.raises(MllpError):
        await MllpClient("127.0.0.1", listener.port, timeout=1).connect()
    await client.close()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_mllp_over_tls(store: ExamStore, tmp_path: Path) -> None:
    cert, key = await asyncio.to_thread(_self_signed, tmp_path)
    async with running(store, tls_cert=str(cert), tls_key=str(key)) as hl7:
        context = ssl.create_default_context(cafile=str(cert))
        text, accession = new_order()
        async with MllpClient("127.0.0.1", hl7.port, ssl_context=context, timeout=10 * UNIT) as c:
            assert (await c.send(text)).code == "AA"
        assert await exists(store, "northwind", accession)
        # Plain MLLP to the TLS port gets nowhere, and the listener keeps serving.
        plain = await Raw.open(hl7.port)
        await plain.write(wrap(new_order()[0]))
        assert await plain.closed_by_peer()
        await plain.close()
        async with MllpClient("127.0.0.1", hl7.port, ssl_context=context, timeout=10 * UNIT) as c:
            assert (await c.send(new_order()[0])).code == "AA"


def test_the_mappings_used_here_are_the_shipped_ones() -> None:
    assert sorted(m.sender for m in MAPPINGS) == ["LKMED", "NWGEN", "NWIMG", "NWORT"]


async def test_the_client_times_out_and_reconnects_for_the_next_message() -> None:
    received: list[bytes] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(65536))  # reads, never answers
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = MllpClient("127.0.0.1", port, timeout=0.3 * UNIT)
    text, _ = new_order()
    with pytest.raises(AckTimeout):
        await client.send(text)
    with pytest.raises(AckTimeout):
        await client.send(text)  # a fresh connection: a late ACK cannot be mistaken
    assert len(received) == 2 and all(r.startswith(b"\x0bMSH|") for r in received)
    await client.close()
    server.close()
    await server.wait_closed()
