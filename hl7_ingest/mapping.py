"""The adaptive HL7 layer: one mapping file per sending facility (MSH-4).

Each file (JSON, in `hl7_ingest/mappings/` or the directory `HL7_MAPPINGS_DIR` names)
says where that site's dialect keeps each value and what its codes mean, so a new site
is configuration, not code:

- `peers`: who may send as this facility, by client certificate or source address
  (`hl7_ingest.peers`); a message whose MSH-4 names a facility its connection is not
  bound to is refused (AR) and nothing of it is stored
- `sender`, `tenant`, `version`, `time_zone` (an IANA zone: times without an offset are
  that site's local time), `timestamps_with_offset` (how the message builder writes them)
- `message_types` the site may send (`"ORM^O01"`, ...) and `order_message`, the one it
  uses for orders
- `fields`: for each logical value a list of paths (`SEG-field[.component]`), the first
  non-empty one wins, so one list serves several message types (`["IPC-1", "OBR-18"]`)
- `site`: where the site code is read (`paths`), its code table and a default
- `codes`: priority, modality, order status (ORC-5) and result status (OBR-25) tables;
  an order status mapped to `null` is acknowledged without a state change (HD, on hold)
- `default_priority`, `turnaround_minutes` per priority, `procedures` (code ->
  body part, subspecialty, text) and `default_subspecialty` for codes it does not list
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from functools import cached_property
from pathlib import Path as FsPath
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dynamo.states import ExamStatus, Modality, Priority
from hl7_ingest.exceptions import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    TABLE_VALUE_NOT_FOUND,
    ApplicationRejected,
    MappingError,
)
from hl7_ingest.message import Message, parse_path
from hl7_ingest.peers import Peer, PeerRule

__all__ = [
    "PACKAGED_MAPPINGS",
    "Mappings",
    "SiteMapping",
    "format_timestamp",
    "load_mappings",
    "parse_timestamp",
]

PACKAGED_MAPPINGS = FsPath(__file__).resolve().parent / "mappings"


def _paths(value: Any) -> Any:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        for item in value:
            parse_path(str(item))  # ValueError -> a validation error naming the field
    return value


class FieldMap(BaseModel):
    """Where each value is read; defaults are the standard (HL7 v2.3.1/v2.5.1) places."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    order_control: list[str] = ["ORC-1"]
    order_status: list[str] = ["ORC-5"]
    placer_order: list[str] = ["ORC-2.1", "OBR-2.1"]
    accession: list[str] = ["OBR-18"]
    procedure_code: list[str] = ["OBR-4.1"]
    procedure_text: list[str] = ["OBR-4.2"]
    modality: list[str] = ["OBR-24"]
    priority: list[str] = ["ORC-7.6", "OBR-27.6"]
    scheduled_at: list[str] = ["OBR-36", "ORC-7.4"]
    ordered_at: list[str] = ["ORC-9"]
    ordering_provider: list[str] = ["ORC-12", "OBR-16"]  # XCN: id^family^given
    result_status: list[str] = ["OBR-25"]
    mrn: list[str] = ["PID-3.1"]
    patient_name: list[str] = ["PID-5"]  # XPN: family^given
    birth_date: list[str] = ["PID-7"]
    sex: list[str] = ["PID-8"]
    prior_mrn: list[str] = ["MRG-1.1"]

    @field_validator("*", mode="before")
    @classmethod
    def _check(cls, value: Any) -> Any:
        return _paths(value)


class SiteRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    paths: list[str] = []
    codes: dict[str, str] = {}
    default: str | None = None

    @field_validator("paths", mode="before")
    @classmethod
    def _check(cls, value: Any) -> Any:
        return _paths(value)


class CodeTables(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    priority: dict[str, Priority]
    modality: dict[str, Modality]
    order_status: dict[str, ExamStatus | None]
    result_status: dict[str, ExamStatus]

    @field_validator("*", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k).upper(): v for k, v in value.items()}
        return value


class ProcedureInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    body_part: str = ""
    subspecialty: str = ""
    text: str = ""


class SiteMapping(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sender: str = Field(min_length=1)
    name: str = ""
    tenant: str = Field(pattern=r"^[a-z0-9-]{1,40}$")
    peers: PeerRule = PeerRule()
    version: str = "2.5.1"
    time_zone: str = "UTC"
    timestamps_with_offset: bool = False
    message_types: list[str]
    order_message: str
    fields: FieldMap = FieldMap()
    site: SiteRule
    codes: CodeTables
    default_priority: Priority = Priority.ROUTINE
    turnaround_minutes: dict[Priority, int] = {
        Priority.STAT: 60,
        Priority.URGENT: 240,
        Priority.ROUTINE: 1440,
    }
    procedures: dict[str, ProcedureInfo] = {}
    default_subspecialty: str = ""

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("message_types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        for t in value:
            if not re.fullmatch(r"[A-Z0-9]{3}\^[A-Z0-9]{3}", t):
                raise ValueError(f"message type {t!r} is not TYPE^TRIGGER")
        return value

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    # ---- reading values ---------------------------------------------------------------

    def path_of(self, name: str, message: Message) -> str:
        """The first configured path of `name` that holds a value (else the first)."""
        paths: list[str] = getattr(self.fields, name)
        for path in paths:
            if message.get(path):
                return path
        return paths[0] if paths else ""

    def value(self, message: Message, name: str, *, required: bool = False) -> tuple[str, str]:
        """(value, path) of a logical field; AE 101 naming the path when required and empty."""
        path = self.path_of(name, message)
        value = message.get(path).strip() if path else ""
        if required and not value:
            raise ApplicationRejected(
                REQUIRED_FIELD_MISSING, path, f"{path} ({name.replace('_', ' ')}) is required"
            )
        return value, path

    def person(self, message: Message, name: str, first: int) -> str:
        """A name as "FAMILY^GIVEN" from an XPN (first=1) or XCN (first=2) field."""
        path = self.path_of(name, message)
        comps = message.components(parse_path(path)) if path else []
        family = comps[first - 1] if len(comps) >= first else ""
        given = comps[first] if len(comps) > first else ""
        return f"{family}^{given}" if given else family

    def code(self, message: Message, name: str, table: str, *, required: bool = True) -> Any:
        """A value looked up in one of the code tables; AE 103 when the table lacks it."""
        value, path = self.value(message, name, required=required)
        if not value:
            return None
        codes: dict[str, Any] = getattr(self.codes, table)
        key = value.upper()
        if key not in codes:
            raise ApplicationRejected(
                TABLE_VALUE_NOT_FOUND,
                path,
                f"{path} holds a {name.replace('_', ' ')} code the {self.sender} mapping"
                " does not know",
            )
        return codes[key]

    def has_code(self, table: str, key: str) -> bool:
        return key.upper() in getattr(self.codes, table)

    def site_of(self, message: Message) -> str:
        rule = self.site
        path = ""
        value = ""
        for candidate in rule.paths:
            value = message.get(candidate).strip()
            if value:
                path = candidate
                break
        if not value:
            if rule.default:
                return rule.default
            first = rule.paths[0] if rule.paths else "MSH-4"
            raise ApplicationRejected(REQUIRED_FIELD_MISSING, first, f"{first} (site) is required")
        if not rule.codes:
            return value
        site = rule.codes.get(value) or rule.codes.get(value.upper())
        if site is None:
            raise ApplicationRejected(
                TABLE_VALUE_NOT_FOUND,
                path,
                f"{path} holds a site code the {self.sender} mapping does not know",
            )
        return site

    def timestamp(self, message: Message, name: str) -> int | None:
        value, path = self.value(message, name)
        if not value:
            return None
        try:
            return parse_timestamp(value, self.zone)
        except ValueError:
            raise ApplicationRejected(
                DATA_TYPE_ERROR, path, f"{path} is not an HL7 date/time"
            ) from None

    # ---- writing values (the message builder) -----------------------------------------

    def reverse(self, table: str, value: str) -> str | None:
        """The first code of a table that means `value` (files list the preferred first)."""
        codes: dict[str, Any] = getattr(self.codes, table)
        for key, meaning in codes.items():
            if meaning is not None and str(meaning) == value:
                return key
        return None

    def site_code(self, site: str) -> str | None:
        for key, meaning in self.site.codes.items():
            if meaning == site:
                return key
        if not self.site.codes:
            return site
        return None


class Mappings:
    """The loaded mapping files, by sending facility."""

    def __init__(self, mappings: list[SiteMapping]) -> None:
        self.by_sender: dict[str, SiteMapping] = {}
        for m in mappings:
            key = m.sender.upper()
            if key in self.by_sender:
                raise MappingError(f"two mapping files for sending facility {m.sender}")
            self.by_sender[key] = m

    def get(self, sender: str) -> SiteMapping | None:
        return self.by_sender.get(sender.upper())

    def admitting(self, peer: Peer) -> list[SiteMapping]:
        """The facilities `peer` may send as (none: it is nobody this listener knows)."""
        return [m for m in self.by_sender.values() if m.peers.admits(peer)]

    def for_site(self, tenant: str, site: str) -> SiteMapping | None:
        """The mapping of a facility that sends orders for `site` (for the builder)."""
        for m in self.by_sender.values():
            if m.tenant == tenant and m.site_code(site) is not None:
                return m
        return None

    def __iter__(self) -> Any:
        return iter(self.by_sender.values())

    def __len__(self) -> int:
        return len(self.by_sender)


def load_mapping(path: FsPath) -> SiteMapping:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return SiteMapping.model_validate(data)
    except (OSError, json.JSONDecodeError) as exc:
        raise MappingError(f"{path.name}: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise MappingError(f"{path.name}: {problems}") from None


def load_mappings(directory: str | FsPath | None = None) -> Mappings:
    """Every `*.json` mapping of a directory (the packaged ones when None or empty)."""
    folder = FsPath(directory) if directory else PACKAGED_MAPPINGS
    files = sorted(folder.glob("*.json"))
    if not files:
        raise MappingError(f"no mapping files (*.json) in {folder}")
    return Mappings([load_mapping(f) for f in files])


# ---- HL7 date/time (DTM/TS): YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZZZ] --------------------

_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?$")


def parse_timestamp(value: str, zone: ZoneInfo) -> int:
    """Epoch ms of an HL7 time; without an offset it is the site's local time."""
    m = _TS.match(value.strip())
    if not m:
        raise ValueError("not an HL7 date/time")
    year, month, day, hour, minute, second, frac, offset = m.groups()
    micro = int((frac or "0").ljust(6, "0")[:6])
    if offset:
        sign = 1 if offset[0] == "+" else -1
        tz: Any = timezone(timedelta(minutes=sign * (int(offset[1:3]) * 60 + int(offset[3:5]))))
    else:
        tz = zone
    when = datetime(
        int(year),
        int(month or 1),
        int(day or 1),
        int(hour or 0),
        int(minute or 0),
        int(second or 0),
        micro,
        tzinfo=tz,
    )
    return int(when.timestamp() * 1000)


def format_timestamp(ms: int, zone: ZoneInfo, *, with_offset: bool) -> str:
    local = datetime.fromtimestamp(ms / 1000, UTC).astimezone(zone)
    text = local.strftime("%Y%m%d%H%M%S")
    if with_offset:
        text += local.strftime("%z")
    return text


def parse_date(value: str) -> str:
    """An HL7 date (YYYYMMDD...) as YYYY-MM-DD; ValueError when it is not one."""
    m = re.match(r"^(\d{4})(\d{2})(\d{2})", value.strip())
    if not m:
        raise ValueError("not an HL7 date")
    year, month, day = (int(g) for g in m.groups())
    datetime(year, month, day)  # validates the calendar date
    return f"{year:04d}-{month:02d}-{day:02d}"
