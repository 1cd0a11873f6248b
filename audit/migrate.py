"""Versioned SQL files (`audit/migrations/NNNN_name.sql`) and the runner that applies them.

Each file is applied once and recorded in `schema_migration`; the pending files go in one
transaction (each in a savepoint that names it when it fails), so a failure applies
none of them. A transaction-scoped advisory lock makes concurrent starts (two workers, a
worker and a Lambda cold start) apply each file exactly once. A database that records a version
this code does not know is refused: an older build must not write to a newer schema.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from audit.exceptions import MigrationError

__all__ = ["Migration", "migrate", "migrations"]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any constant: the one lock every migrating process takes.
_LOCK_KEY = 0x41554454  # "AUDT"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    out = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(0, f"badly named migration file {path.name}")
        out.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in out]
    if versions != list(range(1, len(out) + 1)):
        raise MigrationError(0, f"migration versions must be 1..n without gaps: {versions}")
    return out


async def migrate(conn: psycopg.AsyncConnection[object]) -> list[int]:
    """Apply every pending migration; returns the versions applied now."""
    applied_now: list[int] = []
    known = migrations()
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migration ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT version FROM schema_migration")
        done = {int(row[0]) for row in await cur.fetchall()}  # type: ignore[index]
        unknown = done - {m.version for m in known}
        if unknown:
            raise MigrationError(max(unknown), "the database is newer than this code")
        for migration in known:
            if migration.version in done:
                continue
            async with conn.transaction():  # a savepoint: one file fails alone, named
                try:
                    await conn.execute(migration.sql.encode())
                except psycopg.Error as exc:
                    raise MigrationError(migration.version, str(exc).strip()) from exc
                await conn.execute(
                    "INSERT INTO schema_migration (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
            applied_now.append(migration.version)
    return applied_now
