"""Helpers of the HL7 tests (no tests here): a listener on a free port over the test's
table, synthetic planned exams, and message builders for both site dialects.

Every name and MRN is synthetic.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from devstack import free_port
from devstack.seed import SEED
from dynamo import keys
from dynamo.directory import DirectoryStore
from dynamo.directory.files import read as read_directory
from dynamo.exceptions import StoreUnavailable
from dynamo.models import PatientProfile, now_ms
from dynamo.serde import from_attrs
from dynamo.states import ExamStatus, Modality, Priority
from dynamo.store import ExamStore
from hl7_ingest.deadletters import ensure_dead_letter_table
from hl7_ingest.directory import SiteDirectory, load_dialect
from hl7_ingest.listener import MllpListener, listener_for
from hl7_ingest.mapping import Mappings, SiteMapping, load_mappings
from hl7_ingest.processor import Ingest
from hl7_ingest.settings import Hl7Settings
from loadtest import catalog
from loadtest.hl7.builder import MessageBuilder
from loadtest.hl7.client import MllpClient
from loadtest.plan import PlannedExam
from tests.conftest import UNIT

MAPPINGS: Mappings = load_mappings()


def _shipped(sender: str) -> SiteMapping:
    mapping = MAPPINGS.get(sender)
    assert mapping is not None, f"the shipped mapping of {sender}"
    return mapping


NW = _shipped("NWGEN")
LK = _shipped("LKMED")
assert NW is not None and LK is not None
SITES = {"NWGEN": ("northwind", "NW-GEN"), "LKMED": ("lakeside", "LK-MED")}

_n = itertools.count(1)
MINUTE = 60_000


def builder(sender: str) -> MessageBuilder:
    mapping = MAPPINGS.get(sender)
    assert mapping is not None
    return MessageBuilder(mapping)  # no clock: plan times are epoch ms


def patient(tenant: str, n: int | None = None, name: str = "TESTPATIENT^ALPHA") -> PatientProfile:
    n = next(_n) if n is None else n
    mrn = f"HM{n:07d}"
    return PatientProfile(
        patient_id=keys.patient_id(tenant, mrn),
        tenant=tenant,
        mrn=mrn,
        name=name,
        birth_date="1970-01-01",
        sex="O",
    )


def planned(
    sender: str = "NWGEN",
    *,
    modality: Modality = Modality.CT,
    priority: Priority = Priority.ROUTINE,
    who: PatientProfile | None = None,
    accession: str | None = None,
) -> PlannedExam:
    tenant, site = SITES[sender]
    n = next(_n)
    now = now_ms() // 1000 * 1000  # HL7 times carry whole seconds
    procedure = catalog.PROCEDURES[modality][0]
    return PlannedExam(
        tenant=tenant,
        site=site,
        accession=accession or f"H{sender[:2]}{n:07d}",
        patient=who or patient(tenant),
        modality=modality,
        procedure=procedure,
        priority=priority,
        provider="TESTDOC^ORDERING",
        ordered_at=now - 5 * MINUTE,
        scheduled_at=now + 30 * MINUTE,
        tat_due_at=now + 30 * MINUTE + catalog.TAT_MINUTES[priority] * MINUTE,
        steps=(),
    )


def with_patient(exam: PlannedExam, who: PatientProfile) -> PlannedExam:
    return replace(exam, patient=who)


def cid(prefix: str = "C") -> str:
    """A fresh control ID."""
    return f"{prefix}{next(_n):09d}"


@dataclass
class Running:
    listener: MllpListener
    ingest: Ingest

    @property
    def port(self) -> int:
        return self.listener.port

    def client(self, timeout: float = 10.0) -> MllpClient:
        return MllpClient("127.0.0.1", self.port, timeout=timeout * UNIT)


def site_copy(base: SiteMapping, sender: str, tenant: str, **changes: Any) -> SiteMapping:
    """`base`'s dialect for another sending facility and tenant (its MSH-4 is its site)."""
    data = base.model_dump(mode="json")
    data["site"]["codes"] = {sender: base.site.default or ""}
    return SiteMapping.model_validate({**data, "sender": sender, "tenant": tenant, **changes})


@asynccontextmanager
async def running(
    store: ExamStore, mappings: Mappings | None = None, **overrides: Any
) -> AsyncIterator[Running]:
    """An HL7 listener on a free loopback port, writing into the test's table; with
    `directory`, the directory binds facilities as in the listener process (read afresh
    for every message unless `directory_cache_seconds` is given)."""
    directory = bool(overrides.pop("directory", False))
    settings = Hl7Settings(
        **{"port": free_port(), "drain_seconds": 1.0, "directory_cache_seconds": 0, **overrides}
    )
    sites = SiteDirectory(store, settings.directory_cache_seconds) if directory else None
    ingest = Ingest(store, mappings or MAPPINGS, settings, directory=sites)
    with contextlib.suppress(StoreUnavailable):  # the tests of a store that is away
        await ensure_dead_letter_table(store, ingest.dead_letters.table)
    listener = listener_for(ingest, settings)
    async with listener:
        yield Running(listener, ingest)


async def table_items(store: ExamStore) -> list[dict[str, Any]]:
    """Every item of the test's table (a Scan: fine for a test's few items)."""
    items: list[dict[str, Any]] = []
    start: dict[str, Any] | None = None
    while True:
        kwargs: dict[str, Any] = {"TableName": store.table, "ConsistentRead": True}
        if start:
            kwargs["ExclusiveStartKey"] = start
        resp = await store.call("scan", **kwargs)
        items.extend(from_attrs(i) for i in resp.get("Items", []))
        start = resp.get("LastEvaluatedKey")
        if not start:
            return items


def without_bookkeeping(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The items a message may change (exams, orders, profiles, pointers), sorted."""
    kept = [i for i in items if not str(i["PK"]).startswith("HL7MSG#")]
    return sorted(kept, key=lambda i: (i["PK"], i["SK"]))


S = ExamStatus


async def seed_demo_directory(store: ExamStore) -> None:
    """The demo's directory (its sites bind the shipped mappings' facilities), loaded
    with the operator's import as `make demo` does."""
    entries, rows = read_directory(SEED)
    await DirectoryStore(store).apply(entries, actor="tests", rows=rows)


def directory_sender(facility: str, tenant: str, site: str, time_zone: str = "UTC") -> SiteMapping:
    """The sending side of a facility only the directory knows: a RIS speaking the
    listener's default dialect, its MSH-4 naming the facility."""
    data = load_dialect(Hl7Settings().default_dialect).model_dump(mode="json")
    data["site"] = {"paths": ["MSH-4"], "codes": {facility: site}, "default": site}
    data.update(sender=facility, tenant=tenant, time_zone=time_zone)
    return SiteMapping.model_validate(data)


def planned_at(tenant: str, site: str, prefix: str, **kw: Any) -> PlannedExam:
    """`planned`'s synthetic exam for any tenant and site."""
    exam = planned("NWGEN", **kw)
    return replace(
        exam,
        tenant=tenant,
        site=site,
        accession=f"{prefix}{exam.accession[3:]}",
        patient=kw.get("who") or patient(tenant),
    )
