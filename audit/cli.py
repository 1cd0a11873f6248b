"""Audit questions from the command line.

    python -m audit.cli exam NW00000042 --tenant northwind
        who claimed, released, signed, broke the lock, in order
    python -m audit.cli report turnaround --tenant northwind --from 2026-03-01 --to 2026-03-07
        a report as CSV (turnaround, reads, peer_review, lock_breaks)
    python -m audit.cli migrate
        apply the schema's pending migrations

The database is AUDIT_DATABASE_URL (or DATABASE_URL). Output names staff, never patients.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import date
from typing import Any

from audit.db import connect
from audit.migrate import migrate
from audit.reports import REPORTS, exam_history, run_report, to_csv
from audit.settings import AuditSettings

__all__ = ["main"]

# Actions that answer "who had it and who did what"; the lease renewals are noise here.
_QUIET = {"renew"}


def _who(row: dict[str, Any]) -> str:
    if not row["actor"]:
        return "system" if row["action"] in ("created", "status", "priority", "update") else "-"
    return f"{row['actor_name']} ({row['actor']})" if row["actor_name"] else str(row["actor"])


def format_history(rows: list[dict[str, Any]], *, verbose: bool = False) -> str:
    lines = []
    for row in rows:
        if row["action"] in _QUIET and not verbose:
            continue
        detail = []
        if row["old_status"] != row["new_status"] and row["new_status"]:
            detail.append(f"{row['old_status'] or '-'} -> {row['new_status']}")
        if row["old_priority"] and row["old_priority"] != row["new_priority"]:
            detail.append(f"priority {row['old_priority']} -> {row['new_priority']}")
        if row["holder"]:
            detail.append(f"holder {row['holder']}")
        if row["reason"]:
            detail.append(f"reason: {row['reason']}")
        if row["hl7_sender"]:
            detail.append(f"HL7 {row['hl7_sender']}/{row['hl7_control_id']}")
        when = row["changed_at"].isoformat(timespec="milliseconds")
        lines.append(
            f"{when}  v{row['version']:<3} {row['action']:<10} {_who(row):<28} " + "; ".join(detail)
        )
    return "\n".join(lines)


async def _run(args: argparse.Namespace, settings: AuditSettings) -> int:
    conn = await connect(settings.database_url, migrated=args.command == "migrate")
    try:
        if args.command == "migrate":
            applied = await migrate(conn)
            print(f"applied {applied}" if applied else "up to date")
            return 0
        if args.command == "exam":
            rows = await exam_history(conn, args.tenant, args.accession)
            if not rows:
                print(f"no audit of {args.accession} in {args.tenant}", file=sys.stderr)
                return 1
            print(format_history(rows, verbose=args.verbose))
            return 0
        tz = args.tz or settings.timezone_of(args.tenant)
        report = await run_report(
            conn,
            args.name,
            args.tenant,
            date.fromisoformat(args.start),
            date.fromisoformat(args.end),
            tz,
        )
        sys.stdout.write(to_csv(report))
        return 0
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m audit.cli", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    exam = sub.add_parser("exam", help="one exam's claims, releases, signs and break-locks")
    exam.add_argument("accession")
    exam.add_argument("--tenant", required=True)
    exam.add_argument("--verbose", action="store_true", help="include lease renewals")
    report = sub.add_parser("report", help="a report as CSV")
    report.add_argument("name", choices=REPORTS)
    report.add_argument("--tenant", required=True)
    report.add_argument("--from", dest="start", required=True, help="first local day")
    report.add_argument("--to", dest="end", required=True, help="last local day")
    report.add_argument("--tz", help="time zone (default: the tenant's, from settings)")
    sub.add_parser("migrate", help="apply pending schema migrations")
    args = parser.parse_args(argv)
    return asyncio.run(_run(args, AuditSettings()))


if __name__ == "__main__":
    sys.exit(main())
