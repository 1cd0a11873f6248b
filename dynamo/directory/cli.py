"""`python -m dynamo.directory`: the operator's tool for tenants, sites and people.

    list tenants | list sites|people --tenant T
    show tenant T | show site|person KEY --tenant T
    add tenant|site|person --tenant T --field value ...   (lists: --roles a,b)
    update tenant|site|person KEY --tenant T --field value ...
    deactivate tenant|site|person KEY --tenant T
    import FILE.json|FILE.csv       (idempotent; one bad row and nothing changes)
    export [--tenant T] [--format json|csv]
    changes --tenant T              (the change records: who, when, what)
    rules show --tenant T           (the orchestration rules in force)
    rules set --tenant T --set field=value ...   (e.g. --set mode=push
                                    --set max_open_claims=3
                                    --set 'rvu_overrides={"70450": 0.9}'; validated, audited)

Every change is recorded with `--actor` (default: $USER). Exit status 0 on success,
2 on bad input (the message names the row or field), 1 when DynamoDB fails.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dynamo.client import dynamodb_client
from dynamo.directory import files
from dynamo.directory.models import Entry, Person, Site, Tenant, TenantRules
from dynamo.directory.store import DirectoryStore
from dynamo.exceptions import DirectoryError, DirectoryNotFound, InvalidEntry, StoreError
from dynamo.settings import DynamoSettings
from dynamo.store import ExamStore
from dynamo.table import ensure_table

__all__ = ["main", "run"]

_MODELS: dict[str, type[Tenant] | type[Site] | type[Person]] = {
    "tenant": Tenant,
    "site": Site,
    "person": Person,
}
_LIST_FIELDS = ("roles", "sites", "subspecialties", "modalities")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m dynamo.directory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--actor", default=None, help="who makes the change (default: $USER)")
    sub = ap.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list")
    ls.add_argument("kind", choices=["tenants", "sites", "people"])
    ls.add_argument("--tenant")
    show = sub.add_parser("show")
    show.add_argument("kind", choices=list(_MODELS))
    show.add_argument("key")
    show.add_argument("--tenant")
    for name in ("add", "update"):
        p = sub.add_parser(name)
        p.add_argument("kind", choices=list(_MODELS))
        if name == "update":
            p.add_argument("key")
        p.add_argument("--tenant")
        for f in ("code", "sub", "name", "title", "time-zone", "kind-of-site", "hl7-facility"):
            p.add_argument(f"--{f}")
        for f in _LIST_FIELDS:
            p.add_argument(f"--{f}", help="comma-separated")
        p.add_argument("--tat", help="turnaround minutes, e.g. STAT=60,URGENT=240")
        p.add_argument("--active", choices=["true", "false"])
    de = sub.add_parser("deactivate")
    de.add_argument("kind", choices=list(_MODELS))
    de.add_argument("key")
    de.add_argument("--tenant")
    imp = sub.add_parser("import")
    imp.add_argument("file", type=Path)
    exp = sub.add_parser("export")
    exp.add_argument("--tenant")
    exp.add_argument("--format", choices=["json", "csv"], default="json")
    ch = sub.add_parser("changes")
    ch.add_argument("--tenant", required=True)
    ru = sub.add_parser("rules")
    ru.add_argument("action", choices=["show", "set"])
    ru.add_argument("--tenant", required=True)
    ru.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        help="field=value (a JSON value, or a bare word)",
    )
    return ap


def _assignments(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise InvalidEntry(f"rules set: write field=value, not {pair!r}")
        try:
            out[name] = json.loads(raw)
        except json.JSONDecodeError:
            out[name] = raw  # a bare word, e.g. mode=push
    return out


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    names = {"time_zone": "time_zone", "kind_of_site": "kind", "hl7_facility": "hl7_facility"}
    for f in ("code", "sub", "name", "title", "time_zone", "kind_of_site", "hl7_facility"):
        value = getattr(args, f, None)
        if value is not None:
            out[names.get(f, f)] = value
    for f in _LIST_FIELDS:
        value = getattr(args, f, None)
        if value is not None:
            out[f] = [v.strip() for v in value.split(",") if v.strip()]
    if getattr(args, "tat", None):
        try:
            out["tat_minutes"] = {
                k.strip().upper(): int(v) for k, v in (p.split("=") for p in args.tat.split(","))
            }
        except ValueError:
            raise InvalidEntry("--tat: write PRIORITY=MINUTES,...") from None
    if getattr(args, "active", None) is not None:
        out["active"] = args.active == "true"
    return out


def _need_tenant(args: argparse.Namespace) -> str:
    if not args.tenant:
        raise InvalidEntry(f"{args.kind}: give --tenant")
    return str(args.tenant)


async def _find(d: DirectoryStore, kind: str, key: str, tenant: str | None) -> Entry:
    found: Entry | None
    if kind == "tenant":
        found = await d.tenant(key)
    elif kind == "site":
        found = await d.site(tenant or "", key)
    else:
        found = await d.person(tenant or "", key)
    if found is None:
        raise DirectoryNotFound(kind, key)
    return found


def _build(kind: str, data: dict[str, Any]) -> Entry:
    model = TenantRules if kind == "rules" else _MODELS[kind]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidEntry(files.explain(exc)) from None


async def run(argv: list[str], d: DirectoryStore, out: Any = sys.stdout) -> None:
    args = _parser().parse_args(argv)
    actor = args.actor or getpass.getuser()

    def emit(value: Any) -> None:
        out.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")

    if args.command == "list":
        if args.kind == "tenants":
            entries: list[Entry] = list(await d.tenants())
        else:
            args.kind = args.kind.rstrip("s") if args.kind == "sites" else "person"
            tenant = _need_tenant(args)
            entries = list(await (d.sites(tenant) if args.kind == "site" else d.people(tenant)))
        emit([{**e.content(), "version": e.version} for e in entries])
    elif args.command == "show":
        if args.kind != "tenant":
            _need_tenant(args)
        e = await _find(d, args.kind, args.key, args.tenant)
        emit({**e.content(), "version": e.version})
    elif args.command == "add":
        data = _fields(args)
        if args.kind != "tenant":
            data["tenant"] = _need_tenant(args)
        e = await d.add(_build(args.kind, data), actor=actor)
        emit({**e.content(), "version": e.version})
    elif args.command == "update":
        if args.kind != "tenant":
            _need_tenant(args)
        current = await _find(d, args.kind, args.key, args.tenant)
        data = {**current.content(), **_fields(args)}
        e = await d.update(_build(args.kind, data), actor=actor, expected_version=current.version)
        emit({**e.content(), "version": e.version})
    elif args.command == "deactivate":
        if args.kind != "tenant":
            _need_tenant(args)
        current = await _find(d, args.kind, args.key, args.tenant)
        e = await d.deactivate(current, actor=actor)
        emit({**e.content(), "version": e.version})
    elif args.command == "import":
        entries, rows = files.read(args.file)
        result = await d.apply(entries, actor=actor, rows=rows)
        emit({"added": result.added, "updated": result.updated, "unchanged": result.unchanged})
    elif args.command == "export":
        tenants = [t for t in await d.tenants() if not args.tenant or t.code == args.tenant]
        entries = list(tenants)
        for t in tenants:
            entries.extend(await d.sites(t.code))
        for t in tenants:
            entries.extend(await d.people(t.code))
        for t in tenants:
            found = await d.rules(t.code)
            if found is not None:
                entries.append(found)
        out.write(files.dump(entries, args.format))
    elif args.command == "changes":
        emit([c.__dict__ for c in await d.changes(args.tenant)])
    elif args.command == "rules":
        stored = await d.rules(args.tenant)
        if args.action == "show":
            shown = stored or TenantRules(tenant=args.tenant)
            emit({**shown.content(), "version": shown.version})
            return
        base = stored.content() if stored else {"tenant": args.tenant}
        entry = _build("rules", {**base, **_assignments(args.assignments)})
        if stored is None:
            e = await d.add(entry, actor=actor)
        else:
            e = await d.update(entry, actor=actor, expected_version=stored.version)
        emit({**e.content(), "version": e.version})


async def _main(argv: list[str]) -> int:
    settings = DynamoSettings()
    async with dynamodb_client(settings) as ddb:
        if settings.endpoint_url:
            await ensure_table(ddb, settings.table)  # local: the table may be new
        d = DirectoryStore(ExamStore(ddb, settings.table))
        try:
            await run(argv, d)
        except DirectoryError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except StoreError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(_main(sys.argv[1:] if argv is None else argv))
