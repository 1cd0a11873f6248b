"""2,000 messages in one burst over 10 pipelined connections.

The burst is sized for DynamoDB Local (about 300 writes/s with a Python writer): 60
exams (30 per site dialect), each with a chain of 5 distinct messages (NW, SC IP, SC
CM, ORU F, ORU C) that takes it to AMENDED in 6 exam writes. Connections come in twins
that send the same chains with the same control IDs at the same time, so every first
delivery races its twin's; each connection also resends its own earlier messages, and
sends a few that must be rejected (a result for an unknown order: AE; an unknown
sending facility: AR, 40 distinct rejected messages). 300 distinct accepted messages;
everything else is a repeat.

Checked: each connection gets exactly one ACK per message, in order, with the right
code; DynamoDB holds exactly the resulting states (AMENDED at version 6: a duplicate
that slipped through as a second write would show as a higher version, AMENDED ->
AMENDED being a legal move); the ledger holds the 300 accepted control IDs.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from hl7_ingest.deadletters import DeadLetters
from hl7_ingest.message import parse
from hl7_ingest.mllp import FrameDecoder, wrap
from tests.conftest import UNIT
from tests.support.hl7 import builder, planned, running, table_items

pytestmark = pytest.mark.slow

S = ExamStatus
CONNECTIONS = 10
PER_CONNECTION = 200
EXAMS_PER_PAIR = 12


def chains(pair: int) -> tuple[list[tuple[str, str]], list[str]]:
    """(message, expected ACK) of one twin pair, in order, and the pair's exam ids."""
    sender = "NWGEN" if pair % 2 == 0 else "LKMED"
    b = builder(sender)
    exams = [planned(sender) for _ in range(EXAMS_PER_PAIR)]
    messages: list[tuple[str, str]] = []
    for step in range(5):  # round-robin over the exams keeps each exam's own order
        for exam in exams:
            tag = f"B{pair}{exam.accession[-4:]}{step}"
            if step == 0:
                text = b.new_order(exam, control_id=tag)
            elif step == 1:
                text = b.status_update(exam, S.IN_PROGRESS, control_id=tag) or ""
            elif step == 2:
                text = b.status_update(exam, S.COMPLETED, control_id=tag) or ""
            elif step == 3:
                text = b.result(exam, S.FINAL, control_id=tag)
            else:
                text = b.result(exam, S.AMENDED, control_id=tag)
            messages.append((text, "AA"))
    return messages, [e.accession for e in exams]


def rejections(pair: int, twin: int) -> list[tuple[str, str]]:
    sender = "NWGEN" if pair % 2 == 0 else "LKMED"
    b = builder(sender)
    out: list[tuple[str, str]] = []
    for i in range(3):
        ghost = planned(sender)
        out.append((b.result(ghost, S.FINAL, control_id=f"G{pair}{twin}{i}"), "AE"))
    stranger = b.new_order(planned(sender), control_id=f"U{pair}{twin}")
    out.append((stranger.replace(f"|{sender}|", "|STRANGER|", 1), "AR"))
    return out


def stream(pair: int, twin: int, base: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The connection's 200 messages: its chains in order, its rejections, and resends
    of its own earlier messages scattered after their first sending."""
    rng = random.Random(f"{pair}:{twin}")
    out = list(base) + rejections(pair, twin)
    while len(out) < PER_CONNECTION:
        at = rng.randrange(1, len(out) + 1)
        earlier = out[rng.randrange(0, at)]
        out.insert(at, earlier)  # a resend never precedes the original on its connection
    return out


async def run_connection(port: int, messages: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Pipeline every message, then read exactly as many ACKs (and check for extras)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(wrap(text) for text, _ in messages))
    await writer.drain()
    decoder = FrameDecoder()
    frames: list[bytes] = []
    while len(frames) < len(messages):
        data = await reader.read(65536)
        assert data, "the listener closed the connection"
        frames += decoder.feed(data)
    try:
        extra = await asyncio.wait_for(reader.read(65536), 0.3 * UNIT)
    except TimeoutError:
        extra = b""
    assert len(frames) == len(messages) and not extra, "a message was answered twice"
    writer.close()
    await writer.wait_closed()
    acks = [parse(f.decode()) for f in frames]
    return [(a.get("MSA-2"), a.get("MSA-1")) for a in acks]


async def test_a_burst_of_2000_messages_over_10_connections(store: ExamStore) -> None:
    plans = [chains(pair) for pair in range(CONNECTIONS // 2)]
    streams = [
        stream(pair, twin, plans[pair][0]) for pair in range(CONNECTIONS // 2) for twin in (0, 1)
    ]
    assert sum(len(s) for s in streams) == 2000
    # Every rejection and its resends come from 127.0.0.1: above the default budget.
    async with running(store, dead_letters_per_minute=1000) as hl7:
        started = time.monotonic()
        answers = await asyncio.wait_for(
            asyncio.gather(*(run_connection(hl7.port, s) for s in streams)), 60 * UNIT
        )
        elapsed = time.monotonic() - started
        counts = dict(hl7.ingest.counts)

    for sent, got in zip(streams, answers, strict=True):
        expected = [(parse(text).get("MSH-10"), code) for text, code in sent]
        assert got == expected

    # Exactly the resulting states: every exam AMENDED after exactly 6 writes.
    for _, accessions in plans:
        for accession in accessions:
            tenant = "northwind" if accession.startswith("HNW") else "lakeside"
            exam = await store.find_exam(tenant, accession)
            assert (exam.status, exam.version) == (S.AMENDED, 6), accession
    items = await table_items(store)
    assert sum(i.get("entity") == "STUDY" for i in items) == 60
    assert sum(i.get("entity") == "HL7MSG" for i in items) == 300
    codes = [code for s in streams for _, code in s]
    assert counts["AA"] == 300  # applied; every other AA was answered as a duplicate
    assert counts["duplicate"] == codes.count("AA") - 300
    assert (counts["AE"], counts["AR"]) == (codes.count("AE"), codes.count("AR"))
    # Each distinct rejected message has one dead letter, however often it came; the
    # STRANGER's ARs (a facility no mapping binds to this peer) leave none.
    assert len(await DeadLetters(store).list()) == 30
    assert counts["not stored"] == codes.count("AR")
    print(f"burst: 2000 messages in {elapsed:.1f}s ({2000 / elapsed:.0f}/s)")
