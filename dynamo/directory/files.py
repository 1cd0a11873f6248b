"""Directory files: JSON (`{"tenants": [...], "sites": [...], "people": [...],
"rules": [...]}`) or CSV (one row per entry, the `record` column saying which: tenant,
site or person; lists in a cell separated by `;`). A tenant's orchestration rules (a
nested map of overrides) travel in JSON only: a CSV export leaves them out. A file is
read whole and checked row by row; the first bad row is named and nothing of the file
is used.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dynamo.directory.models import PRIORITIES, Entry, Person, Site, Tenant, TenantRules, kind_of
from dynamo.exceptions import InvalidEntry

__all__ = ["CSV_COLUMNS", "dump", "explain", "parse"]

CSV_COLUMNS = [
    "record",
    "tenant",
    "code",
    "sub",
    "name",
    "title",
    "time_zone",
    "kind",
    "hl7_facility",
    "tat_stat",
    "tat_urgent",
    "tat_routine",
    "roles",
    "sites",
    "subspecialties",
    "modalities",
    "active",
]
_LISTS = ("roles", "sites", "subspecialties", "modalities")
_Model = type[Tenant] | type[Site] | type[Person] | type[TenantRules]
_SECTIONS: dict[str, _Model] = {
    "tenants": Tenant,
    "sites": Site,
    "people": Person,
    "rules": TenantRules,
}
_RECORDS: dict[str, _Model] = {"tenant": Tenant, "site": Site, "person": Person}


def explain(exc: ValidationError) -> str:
    """A model's validation error as one line (at most three problems, each with where)."""
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def _build(model: _Model, data: dict[str, Any], row: int) -> Entry:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidEntry(explain(exc), row=row) from None


def _from_csv_row(raw: dict[str, Any], row: int) -> Entry:
    extra = [k for k in raw if k is None or k not in CSV_COLUMNS]
    if extra:
        raise InvalidEntry(f"unknown column {extra[0]!r}", row=row)
    record = (raw.get("record") or "").strip()
    model = _RECORDS.get(record)
    if model is None:
        raise InvalidEntry(f"record must be tenant, site or person, not {record!r}", row=row)
    cells = {k: (v or "").strip() for k, v in raw.items() if k != "record"}
    data: dict[str, Any] = {}
    if model is Tenant:
        data = {"code": cells.get("code") or cells.get("tenant", ""), "name": cells.get("name")}
        if cells.get("time_zone"):
            data["time_zone"] = cells["time_zone"]
    elif model is Site:
        data = {
            k: cells[k] for k in ("tenant", "code", "name", "kind", "hl7_facility") if cells.get(k)
        }
        tat = {}
        for p in PRIORITIES:
            value = cells.get(f"tat_{p.lower()}")
            if value:
                try:
                    tat[p] = int(value)
                except ValueError:
                    raise InvalidEntry(
                        f"tat_{p.lower()}: not a number of minutes", row=row
                    ) from None
        if tat:
            data["tat_minutes"] = tat
    else:
        data = {k: cells[k] for k in ("tenant", "sub", "name", "title") if cells.get(k)}
        for k in _LISTS:
            data[k] = [v.strip() for v in cells.get(k, "").split(";") if v.strip()]
    if cells.get("active"):
        flag = cells["active"].lower()
        if flag not in ("true", "false", "yes", "no", "1", "0"):
            raise InvalidEntry(f"active must be true or false, not {cells['active']!r}", row=row)
        data["active"] = flag in ("true", "yes", "1")
    return _build(model, data, row)


def parse(text: str, fmt: str) -> tuple[list[Entry], list[int]]:
    """The entries of a file and the row of each (1 = the first data row; in JSON, the
    position across its sections in order)."""
    entries: list[Entry] = []
    rows: list[int] = []
    if fmt == "json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidEntry(f"not JSON (line {exc.lineno}: {exc.msg})") from None
        if not isinstance(doc, dict) or set(doc) - set(_SECTIONS):
            raise InvalidEntry(
                'a directory file is {"tenants": [], "sites": [], "people": [], "rules": []}'
            )
        row = 0
        for section, model in _SECTIONS.items():
            items = doc.get(section, [])
            if not isinstance(items, list):
                raise InvalidEntry(f"{section} must be a list")
            for data in items:
                row += 1
                if not isinstance(data, dict):
                    raise InvalidEntry(f"{section}: not an object", row=row)
                entries.append(_build(model, data, row))
                rows.append(row)
        return entries, rows
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "record" not in reader.fieldnames:
            raise InvalidEntry("a directory CSV needs a header row with a `record` column")
        for row, raw in enumerate(reader, start=1):
            entries.append(_from_csv_row(raw, row))
            rows.append(row)
        return entries, rows
    raise InvalidEntry(f"unknown format {fmt!r} (json or csv)")


def read(path: Path) -> tuple[list[Entry], list[int]]:
    fmt = path.suffix.lower().lstrip(".")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidEntry(f"cannot read {path}: {exc}") from None
    return parse(text, fmt)


def dump(entries: list[Entry], fmt: str) -> str:
    if fmt == "json":
        doc: dict[str, list[dict[str, Any]]] = {"tenants": [], "sites": [], "people": []}
        section = {"tenant": "tenants", "site": "sites", "person": "people", "rules": "rules"}
        for e in entries:
            doc.setdefault(section[kind_of(e)], []).append(e.content())
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for e in entries:
        if isinstance(e, TenantRules):
            continue  # JSON only (see the module's docstring)
        data = e.content()
        cells: dict[str, Any] = {"record": kind_of(e), "active": str(data.pop("active")).lower()}
        if isinstance(e, Tenant):
            cells["tenant"] = data.pop("code")
        tat = data.pop("tat_minutes", None)
        if tat:
            for p in PRIORITIES:
                cells[f"tat_{p.lower()}"] = tat[p]
        for k, v in data.items():
            cells[k] = ";".join(v) if isinstance(v, list) else v
        writer.writerow(cells)
    return out.getvalue()
