"""The directory binds HL7 sending facilities to tenants and sites: over real MLLP into
DynamoDB Local. A mapping that disagrees with the directory, or a site the directory
does not bind or marks inactive, is refused (AR) and nothing is written; a facility only
the directory knows speaks the default dialect. All data synthetic."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dynamo.directory import DirectoryStore, Site, Tenant
from dynamo.states import ExamStatus
from dynamo.store import ExamStore
from loadtest.hl7.builder import MessageBuilder
from tests.conftest import UNIT
from tests.support.hl7 import (
    builder,
    cid,
    directory_sender,
    patient,
    planned,
    planned_at,
    running,
    seed_demo_directory,
    table_items,
)


async def _directory(store: ExamStore, *entries: Any) -> DirectoryStore:
    d = DirectoryStore(store)
    await d.apply(list(entries), actor="tests")
    return d


async def test_a_facility_the_directory_binds_is_accepted_through_its_mapping(
    store: ExamStore,
) -> None:
    await seed_demo_directory(store)
    exam = planned("NWGEN")
    async with running(store, directory=True) as hl7, hl7.client() as client:
        ack = await client.send(builder("NWGEN").new_order(exam, control_id=cid()))
    assert ack.code == "AA", ack.error_text
    got = await store.find_exam("northwind", exam.accession)
    assert (got.tenant, got.site) == ("northwind", "NW-GEN")


NORTHWIND = Tenant(code="northwind", name="Northwind")
SITUATIONS = {
    "bound to no site": [NORTHWIND, Site(tenant="northwind", code="NW-GEN", name="G")],
    "bound to another tenant": [
        NORTHWIND,
        Tenant(code="lakeside", name="Lakeside"),
        Site(tenant="lakeside", code="LK-NEW", name="L", hl7_facility="NWGEN"),
    ],
    "bound to another site": [
        NORTHWIND,
        Site(tenant="northwind", code="NW-GEN", name="G"),
        Site(tenant="northwind", code="NW-ORT", name="O", hl7_facility="NWGEN"),
    ],
    "site inactive": [
        NORTHWIND,
        Site(tenant="northwind", code="NW-GEN", name="G", hl7_facility="NWGEN", active=False),
    ],
    "tenant inactive": [
        NORTHWIND.model_copy(update={"active": False}),
        Site(tenant="northwind", code="NW-GEN", name="G", hl7_facility="NWGEN"),
    ],
}
REASONS = {
    "bound to no site": "bound to no site in the directory",
    "bound to another tenant": "binds this facility to tenant lakeside, its mapping to northwind",
    "bound to another site": "site NW-GEN is not bound to this facility",
    "site inactive": "every directory site bound to this sending facility is inactive",
    "tenant inactive": "tenant northwind is inactive in the directory",
}


@pytest.mark.parametrize("situation", sorted(SITUATIONS))
async def test_a_message_the_directory_does_not_back_is_refused_and_nothing_is_written(
    store: ExamStore, situation: str
) -> None:
    await _directory(store, *SITUATIONS[situation])
    who = patient("northwind", name="SECRETNAME^ZETA")
    exam = planned("NWGEN", who=who)
    before = await table_items(store)
    async with running(store, directory=True) as hl7, hl7.client() as client:
        ack = await client.send(builder("NWGEN").new_order(exam, control_id=cid()))
    assert ack.code == "AR"
    assert REASONS[situation] in ack.error_text, ack.error_text
    raw = ack.message.encode()
    assert "SECRETNAME" not in raw and who.mrn not in raw
    after = await table_items(store)
    assert after == before  # no exam, order, patient or ledger entry
    assert who.mrn not in repr(after)


async def test_a_facility_only_the_directory_knows_speaks_the_default_dialect(
    store: ExamStore,
) -> None:
    await _directory(
        store,
        Tenant(code="tidewater", name="Tidewater Imaging", time_zone="America/Halifax"),
        Site(tenant="tidewater", code="TW-BAY", name="Bay", hl7_facility="TWBAY"),
    )
    sender = MessageBuilder(directory_sender("TWBAY", "tidewater", "TW-BAY", "America/Halifax"))
    exam = planned_at("tidewater", "TW-BAY", "HTW")
    completed = sender.status_update(exam, ExamStatus.COMPLETED, control_id=cid())
    assert completed is not None
    async with running(store, directory=True) as hl7, hl7.client() as client:
        acks = [
            await client.send(sender.new_order(exam, control_id=cid())),
            await client.send(completed),
        ]
    assert [a.code for a in acks] == ["AA", "AA"], [a.error_text for a in acks]
    got = await store.find_exam("tidewater", exam.accession)
    assert (got.tenant, got.site, got.status) == ("tidewater", "TW-BAY", ExamStatus.COMPLETED)
    # Times without an offset are the tenant's local time (the directory's time zone).
    assert got.scheduled_at == exam.scheduled_at


async def test_a_deactivated_site_stops_its_hl7_within_the_cache_bound(
    store: ExamStore,
) -> None:
    d = await _directory(
        store,
        Tenant(code="tidewater", name="Tidewater Imaging"),
        Site(tenant="tidewater", code="TW-BAY", name="Bay", hl7_facility="TWBAY"),
    )
    sender = MessageBuilder(directory_sender("TWBAY", "tidewater", "TW-BAY"))
    bound = 1.0
    async with (
        running(store, directory=True, directory_cache_seconds=bound) as hl7,
        hl7.client() as client,
    ):
        first = await client.send(sender.new_order(planned_at("tidewater", "TW-BAY", "HTW")))
        assert first.code == "AA", first.error_text
        site = await d.site("tidewater", "TW-BAY")
        assert site is not None
        await d.deactivate(site, actor="tests")
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            ack = await client.send(sender.new_order(planned_at("tidewater", "TW-BAY", "HTW")))
            if ack.code == "AR":
                break
            assert ack.code == "AA"
            assert loop.time() - started < bound + 2 * UNIT, "still accepted past the bound"
            await asyncio.sleep(0.05)
        took = loop.time() - started
    print(f"deactivation reached HL7 in {took:.2f}s (bound {bound}s)")
    assert took < bound + 2 * UNIT
