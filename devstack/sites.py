"""Reference data: the tenants (radiology groups) and the sites they read for.

The demo's fictional customers (seed data, see `devstack.seed`); a deployment keeps its
own in the directory (`python -m dynamo.directory`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Site(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: str
    name: str
    kind: str  # "hospital" | "clinic" | "imaging center"


class Tenant(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: str
    name: str
    sites: tuple[Site, ...]


DEMO_TENANTS: tuple[Tenant, ...] = (
    Tenant(
        code="northwind",
        name="Northwind Radiology Group",
        sites=(
            Site(code="NW-GEN", name="Northwind General Hospital", kind="hospital"),
            Site(code="NW-ORT", name="Harbor Orthopedic Clinic", kind="clinic"),
            Site(code="NW-IMG", name="Eastgate Imaging Center", kind="imaging center"),
        ),
    ),
    Tenant(
        code="lakeside",
        name="Lakeside Imaging Partners",
        sites=(
            Site(code="LK-MED", name="Lakeside Medical Center", kind="hospital"),
            Site(code="LK-WMN", name="Lakeside Women's Health", kind="clinic"),
        ),
    ),
)

SUBSPECIALTIES: tuple[str, ...] = ("neuro", "body", "msk", "chest", "breast", "nuclear")
