"""Connections are bounded (per peer and in total), idle ones and slowloris senders are
closed, and dead letters are bounded (rate per peer, size, TTL) and kept apart from the
exam table. Over real MLLP into DynamoDB Local. Data synthetic."""

from __future__ import annotations

import asyncio
import time

from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from hl7_ingest.deadletters import DeadLetters
from hl7_ingest.mapping import Mappings
from hl7_ingest.mllp import wrap
from loadtest.hl7.client import MllpClient
from tests.conftest import UNIT
from tests.support.hl7 import NW, builder, cid, planned, running, table_items
from tests.support.hl7_senders import bound


async def open_from(
    port: int, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """The listener closed the connection (EOF or reset) within `seconds`."""
    try:
        while True:
            if not await asyncio.wait_for(reader.read(65536), seconds):
                return True
    except ConnectionError:
        return True
    except TimeoutError:
        return False


def order() -> bytes:
    return wrap(builder("NWGEN").new_order(planned("NWGEN"), control_id=cid()))


async def test_connections_are_capped_per_peer_and_in_total(store: ExamStore) -> None:
    async with running(store, max_connections=3, max_connections_per_peer=2) as hl7:
        first = [await open_from(hl7.port) for _ in range(2)]
        third = await open_from(hl7.port)
        assert await closed_within(third[0], 2 * UNIT)  # a third from the same address
        other = await open_from(hl7.port, "127.0.0.2")  # another address still gets in
        assert not await closed_within(other[0], 0.2 * UNIT)
        over = await open_from(hl7.port, "127.0.0.3")  # but not a fourth in all
        assert await closed_within(over[0], 2 * UNIT)
        assert hl7.listener.refused == 2
        # The ones let in are served; a slot freed is a slot again.
        reader, writer = first[0]
        writer.write(order())
        assert b"MSA|AA" in await asyncio.wait_for(reader.read(65536), 10 * UNIT)
        first[1][1].close()
        await asyncio.sleep(0.2 * UNIT)
        again = await open_from(hl7.port)
        assert not await closed_within(again[0], 0.2 * UNIT)
        for _, w in [*first, third, other, over, again]:
            w.close()


async def test_an_idle_connection_is_closed_and_noise_is_not_activity(store: ExamStore) -> None:
    idle = 0.5 * UNIT
    async with running(store, idle_timeout_seconds=idle) as hl7:
        reader, writer = await open_from(hl7.port)
        writer.write(order())
        assert b"MSA|AA" in await asyncio.wait_for(reader.read(65536), 10 * UNIT)
        started = time.monotonic()
        for _ in range(4):  # noise outside frames keeps nothing open
            await asyncio.sleep(idle / 4)
            writer.write(b"\r\n")
        assert await closed_within(reader, 4 * idle)
        assert time.monotonic() - started < 3 * idle
        writer.close()


async def test_a_slowloris_frame_is_cut_at_the_frame_timeout(store: ExamStore) -> None:
    frame_timeout = 0.5 * UNIT
    async with running(store, frame_timeout_seconds=frame_timeout, idle_timeout_seconds=60) as hl7:
        reader, writer = await open_from(hl7.port)
        data = order()
        started = time.monotonic()
        closed = False
        for i in range(len(data) - 1):  # never the end block
            try:
                writer.write(data[i : i + 1])
                await writer.drain()
            except ConnectionError:
                closed = True
                break
            if reader.at_eof():
                closed = True
                break
            await asyncio.sleep(frame_timeout / 20)
            if time.monotonic() - started > 4 * frame_timeout:
                break
        assert closed or await closed_within(reader, frame_timeout)
        assert time.monotonic() - started < 3 * frame_timeout
        writer.close()
        assert hl7.ingest.counts["AA"] == 0  # the half message was never acknowledged
        # Others are served meanwhile and after.
        async with hl7.client() as c:
            assert (
                await c.send(builder("NWGEN").new_order(planned("NWGEN"), control_id=cid()))
            ).code == "AA"


async def test_dead_letters_are_rate_limited_per_peer(store: ExamStore) -> None:
    mappings = Mappings([bound(NW, ["127.0.0.0/29"])])
    async with running(store, mappings, dead_letters_per_minute=3) as hl7:
        reader, writer = await open_from(hl7.port)
        ghosts = [
            builder("NWGEN").result(planned("NWGEN"), ExamStatus.FINAL, control_id=cid())
            for _ in range(4)
        ]
        for ghost in ghosts[:3]:
            assert ghost is not None
            writer.write(wrap(ghost))
            assert b"MSA|AE" in await asyncio.wait_for(reader.read(65536), 10 * UNIT)
        assert ghosts[3] is not None
        writer.write(wrap(ghosts[3]))
        # The fourth is not acknowledged: the sender keeps it and resends later.
        assert await closed_within(reader, 10 * UNIT)
        writer.close()
        # Another peer (bound to NWGEN too) has a budget of its own.
        other = builder("NWGEN").result(planned("NWGEN"), "FINAL", control_id=cid())  # type: ignore[arg-type]
        assert other is not None
        async with MllpClient(
            "127.0.0.1", hl7.port, timeout=10 * UNIT, local_address="127.0.0.2"
        ) as c:
            assert (await c.send(other)).code == "AE"
    assert len(await DeadLetters(store).list()) == 4


async def test_dead_letters_expire_are_bounded_and_live_outside_the_exam_table(
    store: ExamStore,
) -> None:
    async with running(store, dead_letter_max_bytes=200, dead_letter_days=2) as hl7:
        async with hl7.client() as c:
            ghost = builder("NWGEN").result(planned("NWGEN"), "FINAL", control_id=cid())  # type: ignore[arg-type]
            assert ghost is not None
            assert (await c.send(ghost)).code == "AE"
        table = hl7.ingest.dead_letters.table
    (letter,) = await DeadLetters(store).list()
    assert letter.expires_at is not None
    assert abs(letter.expires_at - (time.time() + 2 * 86400)) < 120
    assert letter.raw_truncated and len(letter.raw) < len(ghost)
    # Not in the exam table, whose stream every consumer reads; their own has none.
    assert not [i for i in await table_items(store) if str(i["PK"]).startswith("HL7DEAD")]
    desc = (await store.call("describe_table", TableName=table))["Table"]
    assert not desc.get("StreamSpecification", {}).get("StreamEnabled")
    assert table != store.table
