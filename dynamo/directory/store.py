"""The directory in the single table: conditional, versioned writes, each in one
transaction with its change record (who, when, what), like every write of the store.

Every entry carries a `version` that grows with each write; an add is conditional on
the key being free, an update on the version read. Writing what is already stored
changes nothing (no new version, no change record, no stream record), so an import is
idempotent. Nothing is ever deleted: a tenant, site or person is deactivated.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from dynamo import keys
from dynamo.directory.models import Entry, Person, Site, Tenant, TenantRules, kind_of
from dynamo.exceptions import (
    DirectoryConflict,
    DirectoryExists,
    DirectoryNotFound,
    InvalidEntry,
)
from dynamo.models import now_ms
from dynamo.serde import from_attrs, to_attr, to_attrs
from dynamo.store import ExamStore

__all__ = ["Change", "DirectoryStore", "ImportResult"]

ENTITY = "DIRECTORY"
AUDIT_ENTITY = "DIRECTORY_AUDIT"
_MODELS: dict[str, type[Tenant] | type[Site] | type[Person] | type[TenantRules]] = {
    "tenant": Tenant,
    "site": Site,
    "person": Person,
    "rules": TenantRules,
}
# The order an import writes in: a privilege names a site, everything names a tenant.
_ORDER = ("tenant", "site", "person", "rules")


def item_key(entry: Entry) -> tuple[str, str]:
    if isinstance(entry, Tenant):
        return keys.DIRECTORY_PK, keys.directory_tenant_sk(entry.code)
    if isinstance(entry, Site):
        return keys.directory_pk(entry.tenant), keys.directory_site_sk(entry.code)
    if isinstance(entry, TenantRules):
        return keys.directory_pk(entry.tenant), keys.DIRECTORY_RULES_SK
    return keys.directory_pk(entry.tenant), keys.directory_person_sk(entry.sub)


def tenant_of(entry: Entry) -> str:
    return entry.code if isinstance(entry, Tenant) else entry.tenant


def _storable(value: Any) -> Any:
    """An entry's content as DynamoDB takes it: numbers with a fraction as Decimal (the
    serializer refuses floats), and no empty maps (DynamoDB Local's stream images carry
    an empty map without its type, which no reader can parse; the model's default
    restores it)."""
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {k: _storable(v) for k, v in value.items() if not (isinstance(v, dict) and not v)}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


def entry_from_item(item: dict[str, Any]) -> Entry:
    model = _MODELS[item["kind"]]
    return model.model_validate({**item["data"], "version": int(item["version"])})


@dataclass(frozen=True)
class Change:
    """One change record: who changed what, when, from what to what."""

    at: int
    actor: str
    action: str  # "add" | "update" | "deactivate"
    kind: str
    tenant: str
    key: str
    version: int
    before: dict[str, Any] | None
    after: dict[str, Any]


@dataclass
class ImportResult:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0

    @property
    def changed(self) -> int:
        return len(self.added) + len(self.updated)


class DirectoryStore:
    def __init__(self, store: ExamStore) -> None:
        self.store = store

    # ---- reads -----------------------------------------------------------------------

    async def _get(self, pk: str, sk: str) -> Entry | None:
        resp = await self.store.call(
            "get_item",
            TableName=self.store.table,
            Key={"PK": to_attr(pk), "SK": to_attr(sk)},
            ConsistentRead=True,
        )
        item = resp.get("Item")
        return entry_from_item(from_attrs(item)) if item else None

    async def _query(self, pk: str, prefix: str) -> list[Entry]:
        out: list[Entry] = []
        kwargs: dict[str, Any] = {
            "TableName": self.store.table,
            "KeyConditionExpression": "PK = :pk AND begins_with(SK, :p)",
            "ExpressionAttributeValues": {":pk": to_attr(pk), ":p": to_attr(prefix)},
            "ConsistentRead": True,
        }
        while True:
            resp = await self.store.call("query", **kwargs)
            out.extend(entry_from_item(from_attrs(i)) for i in resp.get("Items", []))
            if "LastEvaluatedKey" not in resp:
                return out
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    async def tenant(self, code: str) -> Tenant | None:
        found = await self._get(keys.DIRECTORY_PK, keys.directory_tenant_sk(code))
        return found if isinstance(found, Tenant) else None

    async def site(self, tenant: str, code: str) -> Site | None:
        found = await self._get(keys.directory_pk(tenant), keys.directory_site_sk(code))
        return found if isinstance(found, Site) else None

    async def person(self, tenant: str, sub: str) -> Person | None:
        found = await self._get(keys.directory_pk(tenant), keys.directory_person_sk(sub))
        return found if isinstance(found, Person) else None

    async def rules(self, tenant: str) -> TenantRules | None:
        """The tenant's orchestration rules entry (None: the defaults apply)."""
        found = await self._get(keys.directory_pk(tenant), keys.DIRECTORY_RULES_SK)
        return found if isinstance(found, TenantRules) else None

    async def tenants(self) -> list[Tenant]:
        found = await self._query(keys.DIRECTORY_PK, keys.TENANT_PREFIX)
        return [t for t in found if isinstance(t, Tenant)]

    async def sites(self, tenant: str) -> list[Site]:
        found = await self._query(keys.directory_pk(tenant), keys.SITE_PREFIX)
        return [s for s in found if isinstance(s, Site)]

    async def people(self, tenant: str) -> list[Person]:
        found = await self._query(keys.directory_pk(tenant), keys.PERSON_PREFIX)
        return [p for p in found if isinstance(p, Person)]

    async def current(self, entry: Entry) -> Entry | None:
        return await self._get(*item_key(entry))

    async def changes(self, tenant: str) -> list[Change]:
        """The tenant's change records, oldest first."""
        out: list[Change] = []
        kwargs: dict[str, Any] = {
            "TableName": self.store.table,
            "KeyConditionExpression": "PK = :pk",
            "ExpressionAttributeValues": {":pk": to_attr(keys.directory_audit_pk(tenant))},
        }
        while True:
            resp = await self.store.call("query", **kwargs)
            for raw in resp.get("Items", []):
                i = from_attrs(raw)
                out.append(
                    Change(
                        at=int(i["at"]),
                        actor=i["actor"],
                        action=i["action"],
                        kind=i["kind"],
                        tenant=i["tenant"],
                        key=i["key"],
                        version=int(i["version"]),
                        before=json.loads(i["before"]) if i.get("before") else None,
                        after=json.loads(i["after"]),
                    )
                )
            if "LastEvaluatedKey" not in resp:
                return out
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    # ---- validation ------------------------------------------------------------------

    async def validate(self, entries: Sequence[Entry], rows: Sequence[int | None] = ()) -> None:
        """Refuse a set of entries (one write, or a whole file) before anything is
        written: a site or person of an unknown tenant, a privilege on an unknown site,
        the same key twice. `rows` names each entry's row in its file."""
        rows = list(rows) or [None] * len(entries)
        seen: dict[tuple[str, str, str], int | None] = {}
        tenants = {t.code for t in entries if isinstance(t, Tenant)}
        sites: dict[str, set[str]] = {}
        for e in entries:
            if isinstance(e, Site):
                sites.setdefault(e.tenant, set()).add(e.code)
        stored_tenants: dict[str, bool] = {}
        stored_sites: dict[str, set[str]] = {}
        for entry, row in zip(entries, rows, strict=True):
            kind = kind_of(entry)
            ident = (kind, tenant_of(entry), entry.key)
            if ident in seen:
                what = "sub" if kind == "person" else "code"
                earlier = seen[ident]
                where = f" (also row {earlier})" if earlier is not None else ""
                raise InvalidEntry(f"duplicate {kind} {what} {entry.key!r}{where}", row=row)
            seen[ident] = row
            if isinstance(entry, Tenant):
                continue
            tenant = entry.tenant
            if tenant not in tenants:
                if tenant not in stored_tenants:
                    stored_tenants[tenant] = await self.tenant(tenant) is not None
                if not stored_tenants[tenant]:
                    raise InvalidEntry(f"unknown tenant {tenant!r}", row=row)
            if isinstance(entry, Person):
                if tenant not in stored_sites:
                    stored_sites[tenant] = {s.code for s in await self.sites(tenant)}
                known = stored_sites[tenant] | sites.get(tenant, set())
                unknown = [s for s in entry.sites if s not in known]
                if unknown:
                    raise InvalidEntry(
                        f"person {entry.sub!r}: unknown site {unknown[0]!r} in the privileges"
                        f" (sites of {tenant}: {', '.join(sorted(known)) or 'none'})",
                        row=row,
                    )

    # ---- writes ----------------------------------------------------------------------

    async def _write(self, entry: Entry, before: Entry | None, actor: str, action: str) -> Entry:
        kind = kind_of(entry)
        pk, sk = item_key(entry)
        version = (before.version if before else 0) + 1
        at = now_ms()
        tenant = tenant_of(entry)
        after = entry.content()
        item = {
            "PK": pk,
            "SK": sk,
            "entity": ENTITY,
            "kind": kind,
            "tenant": tenant,
            "key": entry.key,
            "data": _storable(after),
            "version": version,
            "updated_at": at,
            "updated_by": actor,
        }
        if before is None:
            condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(PK)"}
        else:
            condition = {
                "ConditionExpression": "version = :v",
                "ExpressionAttributeValues": {":v": to_attr(before.version)},
            }
        audit = {
            "PK": keys.directory_audit_pk(tenant),
            "SK": keys.directory_audit_sk(at, kind, entry.key, version),
            "entity": AUDIT_ENTITY,
            "at": at,
            "actor": actor,
            "action": action,
            "kind": kind,
            "tenant": tenant,
            "key": entry.key,
            "version": version,
            "before": json.dumps(before.content()) if before else "",
            "after": json.dumps(after),
        }
        try:
            await self.store.call(
                "transact_write_items",
                TransactItems=[
                    {"Put": {"TableName": self.store.table, "Item": to_attrs(item), **condition}},
                    {"Put": {"TableName": self.store.table, "Item": to_attrs(audit)}},
                ],
            )
        except self.store.transaction_cancelled:
            if before is None:
                raise DirectoryExists(kind, entry.key) from None
            raise DirectoryConflict(kind, entry.key, before.version) from None
        return entry.model_copy(update={"version": version})

    async def add(self, entry: Entry, *, actor: str) -> Entry:
        await self.validate([entry])
        if await self.current(entry) is not None:
            raise DirectoryExists(kind_of(entry), entry.key)
        return await self._write(entry, None, actor, "add")

    async def update(
        self, entry: Entry, *, actor: str, expected_version: int | None = None
    ) -> Entry:
        """Replace an entry; conditional on `expected_version` when given (else on the
        version just read). The same content again writes nothing."""
        await self.validate([entry])
        before = await self.current(entry)
        if before is None:
            raise DirectoryNotFound(kind_of(entry), entry.key)
        if expected_version is not None and before.version != expected_version:
            raise DirectoryConflict(kind_of(entry), entry.key, expected_version)
        if before.content() == entry.content():
            return before
        action = "deactivate" if before.active and not entry.active else "update"
        return await self._write(entry, before, actor, action)

    async def deactivate(self, entry: Entry, *, actor: str) -> Entry:
        return await self.update(entry.model_copy(update={"active": False}), actor=actor)

    async def apply(
        self, entries: Sequence[Entry], *, actor: str, rows: Iterable[int | None] = ()
    ) -> ImportResult:
        """Bring the directory to `entries` (an import): every entry is checked before
        anything is written; each is then added, updated, or left alone when equal."""
        row_list = list(rows) or [None] * len(entries)
        await self.validate(entries, row_list)
        result = ImportResult()
        # Tenants first, then sites, then people (a privilege names a site), then rules.
        order = sorted(range(len(entries)), key=lambda i: _ORDER.index(kind_of(entries[i])))
        plan: list[tuple[Entry, Entry | None]] = []
        for i in order:
            before = await self.current(entries[i])
            if before is not None and before.content() == entries[i].content():
                result.unchanged += 1
                continue
            plan.append((entries[i], before))
        for entry, before in plan:
            await self._write(entry, before, actor, "add" if before is None else "update")
            label = f"{kind_of(entry)} {tenant_of(entry)}/{entry.key}"
            (result.added if before is None else result.updated).append(label)
        return result
