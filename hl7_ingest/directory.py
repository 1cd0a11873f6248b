"""The directory's word on HL7 senders: which tenant and sites a sending facility serves.

A directory site's `hl7_facility` binds an MSH-4 facility to (tenant, site); the
directory, not the mapping file, is authoritative. A message is refused (AR, nothing
stored but its dead letter) when its facility is bound to no site, or to sites of
several tenants; when its mapping file names another tenant; when the tenant is
inactive; and, for a new order, when the site it resolves to is not an active site
bound to that facility. A status or patient message names no site of its own: the
facility checks apply to it.

A facility the directory binds but no mapping file describes speaks the default
dialect (`HL7_DEFAULT_DIALECT`, a file of `HL7_DIALECTS_DIR`, shipped: HL7 v2.3.1
ORM^O01): the dialect's fields, codes, message types and peers, with the directory's
tenant, its time zone, and the facility's site (MSH-4 names it when one site is bound;
with several, the dialect's site path must hold a site code).

The listener reads every tenant's sites at most once per `HL7_DIRECTORY_CACHE_SECONDS`:
a change in the directory takes effect on HL7 within that bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dynamo.directory import DirectoryStore, Site, Tenant
from dynamo.exceptions import StoreError, StoreUnavailable
from dynamo.store import ExamStore
from hl7_ingest.exceptions import UNKNOWN_KEY, MappingError, MessageRejected, NotAcknowledged
from hl7_ingest.mapping import SiteMapping, load_mapping

__all__ = ["PACKAGED_DIALECTS", "FacilityBinding", "SiteDirectory", "load_dialect"]

PACKAGED_DIALECTS = Path(__file__).resolve().parent / "dialects"


def load_dialect(name: str, directory: str | Path | None = None) -> SiteMapping:
    """The dialect file `{name}.json` (of `directory`, else the packaged ones)."""
    folder = Path(directory) if directory else PACKAGED_DIALECTS
    path = folder / f"{name}.json"
    if not path.is_file():
        raise MappingError(f"no dialect {name!r} ({path} is missing)")
    return load_mapping(path)


@dataclass(frozen=True)
class FacilityBinding:
    """Every directory site naming one facility (active or not) and their tenants."""

    facility: str
    sites: tuple[Site, ...] = ()
    tenants: dict[str, Tenant] = field(default_factory=dict)

    @property
    def tenant(self) -> Tenant | None:
        """The one tenant the facility serves (None: unbound, or several)."""
        codes = {s.tenant for s in self.sites}
        if len(codes) != 1:
            return None
        return self.tenants.get(next(iter(codes)))

    def active_sites(self) -> set[str]:
        return {s.code for s in self.sites if s.active}

    def check(self, mapping: SiteMapping | None) -> Tenant:
        """The facility's tenant, if the directory lets it send at all (AR otherwise).
        Reasons name tenant and site codes only, and fit ERR-8 (80 characters)."""
        if not self.sites:
            if mapping is None:
                raise MessageRejected(UNKNOWN_KEY, "MSH-4", "no mapping for this sending facility")
            raise MessageRejected(
                UNKNOWN_KEY, "MSH-4", "this sending facility is bound to no site in the directory"
            )
        tenant = self.tenant
        if tenant is None:
            codes = ", ".join(sorted({s.tenant for s in self.sites}))
            raise MessageRejected(
                UNKNOWN_KEY,
                "MSH-4",
                f"the directory binds this sending facility to sites of several tenants ({codes})",
            )
        if mapping is not None and mapping.tenant != tenant.code:
            raise MessageRejected(
                UNKNOWN_KEY,
                "MSH-4",
                f"directory binds this facility to tenant {tenant.code}, its mapping to"
                f" {mapping.tenant}",
            )
        if not tenant.active:
            raise MessageRejected(
                UNKNOWN_KEY, "MSH-4", f"tenant {tenant.code} is inactive in the directory"
            )
        if not self.active_sites():
            raise MessageRejected(
                UNKNOWN_KEY,
                "MSH-4",
                "every directory site bound to this sending facility is inactive",
            )
        return tenant

    def check_site(self, site: str, path: str) -> None:
        """A new order's site must be an active site bound to this facility."""
        if site not in self.active_sites():
            known = {s.code for s in self.sites}
            state = "inactive in the directory" if site in known else "not bound to this facility"
            raise MessageRejected(UNKNOWN_KEY, path, f"site {site} is {state}")

    def dialect(self, template: SiteMapping) -> SiteMapping:
        """`template`'s dialect for this facility, its tenant and its sites."""
        tenant = self.tenant
        assert tenant is not None, "check() first"
        data = template.model_dump(mode="json")
        codes = sorted(self.active_sites())
        if len(codes) == 1:
            data["site"] = {"paths": ["MSH-4"], "codes": {self.facility: codes[0]}, "default": None}
        else:
            data["site"] = {**data["site"], "codes": {c: c for c in codes}, "default": None}
        data.update(
            sender=self.facility,
            name=f"{self.facility} ({template.name or template.sender}, from the directory)",
            tenant=tenant.code,
            time_zone=tenant.time_zone,
        )
        return SiteMapping.model_validate(data)


class SiteDirectory:
    """Facility bindings read from the directory, cached for `ttl_seconds` (0: read for
    every message)."""

    def __init__(
        self,
        store: ExamStore,
        ttl_seconds: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._directory = DirectoryStore(store)
        self._ttl = ttl_seconds
        self._clock = clock
        self._loaded_at: float | None = None
        self._by_facility: dict[str, tuple[Site, ...]] = {}
        self._tenants: dict[str, Tenant] = {}
        self._lock = asyncio.Lock()
        self._dialects: dict[tuple[object, ...], SiteMapping] = {}

    async def binding(self, facility: str) -> FacilityBinding:
        """The facility's binding; `NotAcknowledged` when the directory cannot be read
        (the sender resends)."""
        await self._refresh()
        sites = self._by_facility.get(facility.upper(), ())
        tenants = {s.tenant: self._tenants[s.tenant] for s in sites if s.tenant in self._tenants}
        return FacilityBinding(facility, sites, tenants)

    def dialect(self, binding: FacilityBinding, template: SiteMapping) -> SiteMapping:
        """`binding.dialect(template)`, kept while the binding is unchanged."""
        tenant = binding.tenant
        key = (
            binding.facility.upper(),
            template.sender,
            tenant.code if tenant else "",
            tenant.time_zone if tenant else "",
            tuple(sorted(binding.active_sites())),
        )
        found = self._dialects.get(key)
        if found is None:
            found = self._dialects[key] = binding.dialect(template)
        return found

    async def _refresh(self) -> None:
        if self._fresh():
            return
        async with self._lock:
            if self._fresh():
                return
            try:
                tenants = await self._directory.tenants()
                by_facility: dict[str, list[Site]] = {}
                for t in tenants:
                    for s in await self._directory.sites(t.code):
                        if s.hl7_facility:
                            by_facility.setdefault(s.hl7_facility.upper(), []).append(s)
            except (StoreUnavailable, StoreError) as exc:
                raise NotAcknowledged(
                    f"the directory could not be read ({type(exc).__name__})"
                ) from None
            self._tenants = {t.code: t for t in tenants}
            self._by_facility = {k: tuple(v) for k, v in by_facility.items()}
            self._dialects.clear()
            self._loaded_at = self._clock()

    def _fresh(self) -> bool:
        return (
            self._loaded_at is not None
            and self._ttl > 0
            and self._clock() - self._loaded_at < self._ttl
        )
