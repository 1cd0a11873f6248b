"""`python -m hl7_ingest.deadletters`: the ingest operator's view of rejected messages.

list [--all] [--limit N]   the open dead letters, newest first (--all: replayed too)
show ID                    one dead letter: why, when, from whom, and the message
replay ID                  run the message through the ingest again (same mapping
                           files, same store); on AA the dead letter is closed
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from dynamo.client import dynamodb_client
from dynamo.settings import DynamoSettings
from dynamo.store import ExamStore
from hl7_ingest.deadletters.store import DeadLetter, DeadLetters, dead_letter_table
from hl7_ingest.directory import SiteDirectory
from hl7_ingest.mapping import load_mappings
from hl7_ingest.message import parse
from hl7_ingest.processor import Ingest
from hl7_ingest.settings import Hl7Settings


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _print_list(letters: list[DeadLetter]) -> None:
    if not letters:
        print("no dead letters")
        return
    print("id                    last seen             n  status    sender  control id"
          "            type     ack  field    reason")  # fmt: skip
    for d in letters:
        print(
            f"{d.id:<21} {_when(d.last_seen):<21} {d.attempts:<2} {d.status:<9} "
            f"{d.sender[:7]:<7} {d.control_id[:21]:<21} {d.message_type[:8]:<8} "
            f"{d.ack_code:<4} {d.field[:8]:<8} {d.reason}"
        )


def _print_one(d: DeadLetter) -> None:
    print(f"id:          {d.id}")
    print(f"status:      {d.status}" + (f" at {_when(d.replayed_at)}" if d.replayed_at else ""))
    print(f"first seen:  {_when(d.first_seen)}")
    print(f"last seen:   {_when(d.last_seen)} ({d.attempts} times) from {d.peer}")
    if d.expires_at:
        print(f"expires:     {_when(d.expires_at * 1000)}")
    print(f"sender:      {d.sender}")
    print(f"control id:  {d.control_id}")
    print(f"type:        {d.message_type}")
    print(f"answer:      {d.ack_code} {d.error_code} {d.field}")
    print(f"reason:      {d.reason}")
    text = d.raw.decode("utf-8", errors="replace")
    if d.field:
        try:
            value = parse(text).get(d.field)
        except Exception:
            value = None
        if value is not None:
            print(f"value at {d.field}: {value!r}")
    if d.raw_truncated:
        print("(the message was too large and is stored cut short; it cannot be replayed)")
    print("message:")
    for line in text.replace("\r\n", "\r").replace("\n", "\r").split("\r"):
        if line:
            print(f"  {line}")


async def _run(args: argparse.Namespace) -> int:
    dynamo = DynamoSettings()
    async with dynamodb_client(dynamo) as client:
        store = ExamStore(client, dynamo.table)
        return await run_command(args, store, Hl7Settings())


async def run_command(args: argparse.Namespace, store: ExamStore, settings: Any) -> int:
    """The CLI's work on a given store (tests call this in-process)."""
    letters = DeadLetters(
        store, dead_letter_table(store.table, getattr(settings, "dead_letter_table", ""))
    )
    if args.command == "list":
        _print_list(await letters.list(include_replayed=args.all, limit=args.limit))
        return 0
    letter = await letters.get(args.id)
    if letter is None:
        print(f"no dead letter {args.id}", file=sys.stderr)
        return 2
    if args.command == "show":
        _print_one(letter)
        return 0
    # replay
    if letter.raw_truncated:
        print("this message was stored cut short and cannot be replayed", file=sys.stderr)
        return 2
    ingest = Ingest(
        store,
        load_mappings(settings.mappings_dir or None),
        settings,
        directory=SiteDirectory(store, 0),
    )
    # As the peer that sent it: a mapping that no longer admits it, or a directory that
    # no longer binds its facility, refuses the replay.
    outcome = await ingest.handle(letter.raw, letter.sent_by)
    if outcome.code == "AA":
        await letters.resolve(letter.id)
        print(f"AA: {outcome.control_id} accepted; dead letter {letter.id} closed")
        return 0
    print(f"{outcome.code}: {outcome.reason}; dead letter {letter.id} stays open")
    return 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hl7_ingest.deadletters", description="Inspect and replay rejected HL7."
    )
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="the open dead letters, newest first")
    ls.add_argument("--all", action="store_true", help="replayed ones too")
    ls.add_argument("--limit", type=int, default=100)
    show = sub.add_parser("show", help="one dead letter and its message")
    show.add_argument("id")
    replay = sub.add_parser("replay", help="process the message again; AA closes it")
    replay.add_argument("id")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return asyncio.run(_run(args))
