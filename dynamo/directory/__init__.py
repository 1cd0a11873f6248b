"""The directory: tenants, their sites, their people (with their privileges) and their
orchestration rules, in the single table, managed by an operator
(`python -m dynamo.directory`) and read by the gateway (who may read what, how cases are
handed out), the relay's worker (every tenant) and peer review."""

from __future__ import annotations

from dynamo.directory.models import Person, Role, Site, Tenant, TenantRules
from dynamo.directory.store import Change, DirectoryStore, ImportResult

__all__ = [
    "Change",
    "DirectoryStore",
    "ImportResult",
    "Person",
    "Role",
    "Site",
    "Tenant",
    "TenantRules",
]
