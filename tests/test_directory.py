"""The directory in the single table, and its operator CLI: versioned, audited writes;
bad input changes nothing and says why; imports are idempotent."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from dynamo.directory import DirectoryStore, Person, Site, Tenant, TenantRules, cli
from dynamo.exceptions import DirectoryConflict, DirectoryExists, InvalidEntry
from dynamo.store import ExamStore
from orchestration import Mode, Rules

HARBOR_CSV = Path(__file__).parent / "fixtures" / "directory_harbor.csv"


@pytest.fixture
def directory(store: ExamStore) -> DirectoryStore:
    return DirectoryStore(store)


async def _cli(d: DirectoryStore, *argv: str) -> str:
    out = io.StringIO()
    await cli.run(["--actor", "ops-kim", *argv], d, out)
    return out.getvalue()


async def test_writes_are_versioned_conditional_and_audited(directory: DirectoryStore) -> None:
    await directory.add(Tenant(code="acme", name="Acme", time_zone="Europe/Oslo"), actor="ops")
    await directory.add(Site(tenant="acme", code="AC-1", name="Acme One"), actor="ops")
    p = await directory.add(
        Person(tenant="acme", sub="u1", name="Dr. One", roles=("radiologist",), sites=("AC-1",)),
        actor="ops",
    )
    assert p.version == 1
    with pytest.raises(DirectoryExists):
        await directory.add(p, actor="ops")
    p2 = await directory.update(p.model_copy(update={"sites": ()}), actor="kim")
    assert p2.version == 2
    with pytest.raises(DirectoryConflict):
        await directory.update(p, actor="kim", expected_version=1)
    same = await directory.update(p2, actor="kim")
    assert same.version == 2  # the same content writes nothing
    gone = await directory.deactivate(p2, actor="kim")
    assert gone.version == 3 and not gone.active
    changes = [
        (c.actor, c.action, c.kind, c.key, c.version) for c in await directory.changes("acme")
    ]
    assert changes == [
        ("ops", "add", "tenant", "acme", 1),
        ("ops", "add", "site", "AC-1", 1),
        ("ops", "add", "person", "u1", 1),
        ("kim", "update", "person", "u1", 2),
        ("kim", "deactivate", "person", "u1", 3),
    ]
    last = (await directory.changes("acme"))[-1]
    assert last.before is not None and last.before["active"] is True
    assert last.after["active"] is False


async def test_bad_input_is_refused_and_changes_nothing(directory: DirectoryStore) -> None:
    await directory.add(Tenant(code="acme", name="Acme"), actor="ops")
    with pytest.raises(InvalidEntry, match="unknown site 'NOPE'"):
        await directory.add(
            Person(tenant="acme", sub="u1", name="X", roles=("radiologist",), sites=("NOPE",)),
            actor="ops",
        )
    with pytest.raises(InvalidEntry, match="unknown tenant 'ghost'"):
        await directory.add(Site(tenant="ghost", code="G", name="G"), actor="ops")
    assert await directory.people("acme") == []
    assert len(await directory.changes("acme")) == 1


async def test_csv_onboarding_is_idempotent(directory: DirectoryStore) -> None:
    first = json.loads(await _cli(directory, "import", str(HARBOR_CSV)))
    assert len(first["added"]) == 7 and first["unchanged"] == 0
    second = json.loads(await _cli(directory, "import", str(HARBOR_CSV)))
    assert second == {"added": [], "updated": [], "unchanged": 7}
    assert len(await directory.changes("harbor")) == 7
    quinn = await directory.person("harbor", "hb-quinn")
    assert quinn is not None and quinn.sites == ("HB-MAIN",) and quinn.modalities == ("CT", "MR")
    site = await directory.site("harbor", "HB-MAIN")
    assert site is not None and site.tat_minutes["STAT"] == 45 and site.hl7_facility == "HBMAIN"
    # Export and import again: still nothing to do (the export is a valid import).
    for fmt in ("json", "csv"):
        exported = await _cli(directory, "export", "--tenant", "harbor", "--format", fmt)
        path = HARBOR_CSV.parent.parent / f".harbor-export.{fmt}"
        try:
            path.write_text(exported)
            again = json.loads(await _cli(directory, "import", str(path)))
        finally:
            path.unlink()
        assert again["unchanged"] == 7 and not again["added"] and not again["updated"]


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        (
            "person,harbor,,hb-quinn,Dup,,,,,,,,radiologist,,,,",
            "row 8: duplicate person sub 'hb-quinn' (also row 4)",
        ),
        ("person,harbor,,hb-new,New,,,,,,,,surgeon,,,,", "row 8: roles.0: Input should be"),
        (
            "person,harbor,,hb-new,New,,,,,,,,radiologist,HB-WEST,,,",
            "row 8: person 'hb-new': unknown site 'HB-WEST'",
        ),
        ("planet,harbor,,,,,,,,,,,,,,,", "row 8: record must be tenant, site or person"),
        (
            "person,harbor,,hb-new,New,,,,,,,,radiologist,,,CT;MRI,",
            "row 8: modalities: Value error, unknown modality 'MRI' (use CT, MR, XR, US, NM, MG)",
        ),
    ],
)
async def test_a_file_with_one_bad_row_changes_nothing(
    directory: DirectoryStore, tmp_path: Path, bad_row: str, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(HARBOR_CSV.read_text() + bad_row + "\n")
    with pytest.raises(InvalidEntry) as err:
        await _cli(directory, "import", str(path))
    assert str(err.value).startswith(message), err.value
    assert await directory.tenants() == []
    assert await directory.changes("harbor") == []


async def test_malformed_json_is_refused(directory: DirectoryStore, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"tenants": [{"code": "x", "name": "X"}], ')
    with pytest.raises(InvalidEntry, match="not JSON"):
        await _cli(directory, "import", str(path))
    path.write_text('{"tenants": [{"code": "Bad Code", "name": "X"}]}')
    with pytest.raises(InvalidEntry, match="row 1: code"):
        await _cli(directory, "import", str(path))
    assert await directory.tenants() == []


async def test_cli_add_update_deactivate(directory: DirectoryStore) -> None:
    await _cli(directory, "add", "tenant", "--code", "acme", "--name", "Acme")
    await _cli(directory, "add", "site", "--tenant", "acme", "--code", "AC-1", "--name", "One")
    await _cli(
        directory,
        "add",
        "person",
        "--tenant",
        "acme",
        "--sub",
        "u1",
        "--name",
        "Dr. U",
        "--roles",
        "radiologist",
        "--sites",
        "AC-1",
    )
    shown = json.loads(
        await _cli(directory, "update", "person", "u1", "--tenant", "acme", "--sites", "")
    )
    assert shown["sites"] == [] and shown["version"] == 2
    await _cli(directory, "deactivate", "person", "u1", "--tenant", "acme")
    people = json.loads(await _cli(directory, "list", "people", "--tenant", "acme"))
    assert [(p["sub"], p["active"]) for p in people] == [("u1", False)]
    changes = json.loads(await _cli(directory, "changes", "--tenant", "acme"))
    assert {c["actor"] for c in changes} == {"ops-kim"}


async def test_orchestration_rules_are_a_versioned_audited_entry(
    directory: DirectoryStore, tmp_path: Path
) -> None:
    await directory.add(Tenant(code="acme", name="Acme"), actor="ops")
    assert await directory.rules("acme") is None
    shown = json.loads(await _cli(directory, "rules", "show", "--tenant", "acme"))
    assert shown["mode"] == "assisted" and shown["version"] == 0  # the defaults
    args = ("rules", "set", "--tenant", "acme", "--set", "mode=push", "--set", "max_open_claims=3")
    out = json.loads(await _cli(directory, *args, "--set", 'rvu_overrides={"70450": 0.9}'))
    assert (out["mode"], out["max_open_claims"], out["version"]) == ("push", 3, 1)
    stored = await directory.rules("acme")
    assert stored is not None
    assert stored.rules().mode is Mode.PUSH and stored.rules().rvu_overrides == {"70450": 0.9}
    with pytest.raises(InvalidEntry, match="max_open_claims"):
        await _cli(directory, "rules", "set", "--tenant", "acme", "--set", "max_open_claims=0")
    with pytest.raises(InvalidEntry):
        await _cli(directory, "rules", "set", "--tenant", "acme", "--set", "mode=chaos")
    same = json.loads(
        await _cli(directory, "rules", "set", "--tenant", "acme", "--set", "mode=push")
    )
    assert same["version"] == 1  # the same content writes nothing
    (last,) = [c for c in await directory.changes("acme") if c.kind == "rules"]
    assert (last.actor, last.action, last.key, last.after["mode"]) == (
        "ops-kim",
        "add",
        "acme",
        "push",
    )

    # Export (JSON) and import again: nothing changes; a CSV export leaves rules out.
    exported = await _cli(directory, "export", "--tenant", "acme")
    assert json.loads(exported)["rules"] == [stored.content()]
    path = tmp_path / "acme.json"
    path.write_text(exported)
    again = json.loads(await _cli(directory, "import", str(path)))
    assert again == {"added": [], "updated": [], "unchanged": 2}
    assert "rules" not in await _cli(directory, "export", "--tenant", "acme", "--format", "csv")
    # Deactivated, the defaults apply.
    off = await directory.deactivate(stored, actor="kim")
    assert off.version == 2 and isinstance(off, TenantRules) and off.rules() == Rules()
