"""The demo's users: fictional radiologists, a coordinator and an admin per group.

Seed data: `devstack/seed/directory.json` is generated from these and `devstack.sites`
(`python -m devstack.seed`), and `make demo` imports it with the operator's CLI. Only a
gateway in demo mode (`GATEWAY_DEMO=true`) lets anyone log in as them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from dynamo.directory.models import Role


class DemoUser(BaseModel):
    model_config = ConfigDict(frozen=True)

    sub: str
    name: str
    roles: tuple[Role, ...]
    tenant: str
    sites: tuple[str, ...] = ()
    subspecialties: tuple[str, ...] = ()
    title: str  # what the login screen says about them


_R, _C, _A = Role.RADIOLOGIST, Role.COORDINATOR, Role.ADMIN

DEMO_USERS: tuple[DemoUser, ...] = (
    DemoUser(
        sub="nw-rivera",
        name="Dr. Ana Rivera",
        roles=(_R,),
        tenant="northwind",
        sites=("NW-GEN", "NW-IMG"),
        subspecialties=("neuro", "body", "chest"),
        title="Neuro and body, Northwind General and Eastgate",
    ),
    DemoUser(
        sub="nw-okafor",
        name="Dr. Ben Okafor",
        roles=(_R,),
        tenant="northwind",
        title="General radiology, every Northwind site",
    ),
    DemoUser(
        sub="nw-lindqvist",
        name="Dr. Maja Lindqvist",
        roles=(_R,),
        tenant="northwind",
        sites=("NW-ORT", "NW-GEN"),
        subspecialties=("msk",),
        title="Musculoskeletal, Harbor Orthopedic and Northwind General",
    ),
    DemoUser(
        sub="nw-penrose",
        name="Sam Penrose",
        roles=(_C,),
        tenant="northwind",
        title="Peer-review coordinator, Northwind",
    ),
    DemoUser(
        sub="nw-admin",
        name="Jo Halverson",
        roles=(_A, _R),
        tenant="northwind",
        title="Administrator, Northwind (can break locks)",
    ),
    DemoUser(
        sub="lk-marlowe",
        name="Dr. Theo Marlowe",
        roles=(_R,),
        tenant="lakeside",
        title="General radiology, every Lakeside site",
    ),
    DemoUser(
        sub="lk-iversen",
        name="Dr. Isolde Iversen",
        roles=(_R,),
        tenant="lakeside",
        sites=("LK-WMN",),
        subspecialties=("breast", "body"),
        title="Breast imaging, Lakeside Women's Health",
    ),
)

BY_SUB = {u.sub: u for u in DEMO_USERS}
