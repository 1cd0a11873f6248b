"""What the directory holds: tenants (radiology groups), their sites, and their people.

Empty `sites`, `subspecialties` or `modalities` on a person means "all of the tenant's"
(modalities are the worklist's codes: CT, MR, XR, US, NM, MG); the gateway
turns a person into its scope (`worklist_cache.views.Scope`) and nothing else decides
what a person may read.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any
from zoneinfo import available_timezones

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dynamo.states import Modality
from orchestration.rules import Rules

__all__ = ["PRIORITIES", "Person", "Role", "Site", "Tenant", "TenantRules"]

TENANT_CODE = r"^[a-z0-9-]{1,40}$"
SITE_CODE = r"^[A-Za-z0-9_-]{1,40}$"
PRIORITIES = ("STAT", "URGENT", "ROUTINE")
_DEFAULT_TAT = {"STAT": 60, "URGENT": 240, "ROUTINE": 1440}


class Role(StrEnum):
    RADIOLOGIST = "radiologist"
    COORDINATOR = "coordinator"
    ADMIN = "admin"


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # The store's bookkeeping (never compared: an import of the same content is a no-op).
    version: int = Field(default=0, exclude=True)

    def content(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Tenant(_Entry):
    code: str = Field(pattern=TENANT_CODE)
    name: str = Field(min_length=1, max_length=200)
    time_zone: str = "UTC"
    active: bool = True

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if value not in available_timezones():
            raise ValueError(f"unknown time zone {value!r} (an IANA name, e.g. Europe/Oslo)")
        return value

    @property
    def key(self) -> str:
        return self.code


class Site(_Entry):
    tenant: str = Field(pattern=TENANT_CODE)
    code: str = Field(pattern=SITE_CODE)
    name: str = Field(min_length=1, max_length=200)
    kind: str = Field(default="hospital", pattern=r"^(hospital|clinic|imaging center)$")
    # The HL7 sending facility (MSH-4) bound to this site, when it sends HL7.
    hl7_facility: str = Field(default="", pattern=r"^[A-Za-z0-9_.-]{0,40}$")
    # Turnaround defaults in minutes per priority.
    tat_minutes: dict[str, int] = Field(default_factory=lambda: dict(_DEFAULT_TAT))
    active: bool = True

    @field_validator("tat_minutes")
    @classmethod
    def _tat(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = set(value) - set(PRIORITIES)
        if unknown:
            raise ValueError(f"unknown priorities {sorted(unknown)} (use {list(PRIORITIES)})")
        if any(v <= 0 for v in value.values()):
            raise ValueError("turnaround minutes must be positive")
        return {**_DEFAULT_TAT, **value}

    @property
    def key(self) -> str:
        return self.code


class Person(_Entry):
    tenant: str = Field(pattern=TENANT_CODE)
    sub: str = Field(min_length=1, max_length=128)  # as the identity provider issues it
    name: str = Field(min_length=1, max_length=128)
    roles: tuple[Role, ...] = Field(min_length=1)
    sites: tuple[str, ...] = ()  # site privileges (credentialing); empty: every site
    subspecialties: tuple[str, ...] = ()  # empty: every subspecialty
    modalities: tuple[str, ...] = ()  # what they read; empty: every modality
    title: str = Field(default="", max_length=200)
    active: bool = True

    @field_validator("roles", "sites", "subspecialties", "modalities", mode="after")
    @classmethod
    def _unique(cls, value: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(dict.fromkeys(value))

    @field_validator("modalities", mode="after")
    @classmethod
    def _modalities(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        known = [m.value for m in Modality]
        unknown = [m for m in value if m not in known]
        if unknown:
            raise ValueError(f"unknown modality {unknown[0]!r} (use {', '.join(known)})")
        return value

    @property
    def key(self) -> str:
        return self.sub


class TenantRules(_Entry, Rules):
    """A tenant's orchestration rules (`orchestration.Rules`: mode, thresholds, caps,
    RVU overrides): one entry per tenant, written and audited like every entry. Inactive,
    or absent, the defaults of `Rules` apply."""

    tenant: str = Field(pattern=TENANT_CODE)
    active: bool = True

    @property
    def key(self) -> str:
        return self.tenant

    def rules(self) -> Rules:
        """The rules in force: these, or the defaults when deactivated."""
        if not self.active:
            return Rules()
        return Rules.model_validate(self.model_dump(exclude={"tenant", "active", "version"}))


Entry = Tenant | Site | Person | TenantRules


def kind_of(entry: Entry) -> str:
    return {Tenant: "tenant", Site: "site", Person: "person", TenantRules: "rules"}[type(entry)]
