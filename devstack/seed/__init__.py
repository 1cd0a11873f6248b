"""The demo's directory as seed data: `python -m devstack.seed` writes `directory.json`
from `devstack.sites` and `devstack.demo_users`; `make demo` loads it with the
operator's own import (`python -m dynamo.directory import`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from devstack.demo_users import DEMO_USERS
from devstack.sites import DEMO_TENANTS

SEED = Path(__file__).with_name("directory.json")
TIME_ZONES = {"northwind": "America/Chicago", "lakeside": "America/New_York"}
# LK-WMN receives through Lakeside Medical's interface (LKMED names the site in PV1-3.4).
FACILITIES = {
    "NW-GEN": "NWGEN",
    "NW-ORT": "NWORT",
    "NW-IMG": "NWIMG",
    "LK-MED": "LKMED",
    "LK-WMN": "LKMED",
}


def directory() -> dict[str, Any]:
    return {
        "tenants": [
            {"code": t.code, "name": t.name, "time_zone": TIME_ZONES.get(t.code, "UTC")}
            for t in DEMO_TENANTS
        ],
        "sites": [
            {
                "tenant": t.code,
                "code": s.code,
                "name": s.name,
                "kind": s.kind,
                "hl7_facility": FACILITIES.get(s.code, ""),
            }
            for t in DEMO_TENANTS
            for s in t.sites
        ],
        "people": [
            {
                "tenant": u.tenant,
                "sub": u.sub,
                "name": u.name,
                "title": u.title,
                "roles": [r.value for r in u.roles],
                "sites": list(u.sites),
                "subspecialties": list(u.subspecialties),
            }
            for u in DEMO_USERS
        ],
    }


def render() -> str:
    return json.dumps(directory(), indent=2, ensure_ascii=False) + "\n"
