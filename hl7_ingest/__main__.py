"""`python -m hl7_ingest`: the MLLP listener as its own process.

Reads settings from HL7_* (listener), DYNAMO_* (the table) and REDIS_URL (the worklist
feed its writes are published to, `HL7_WRITE_THROUGH`), logs JSON lines without
patient data, and on SIGTERM stops accepting, lets the messages in progress finish
(`HL7_DRAIN_SECONDS`), then exits.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from dynamo.client import dynamodb_client
from dynamo.settings import DynamoSettings
from dynamo.store import ExamStore
from dynamo.table import wait_for_table
from hl7_ingest.deadletters import ensure_dead_letter_table
from hl7_ingest.directory import SiteDirectory, load_dialect
from hl7_ingest.exceptions import MappingError
from hl7_ingest.listener import listener_for
from hl7_ingest.mapping import Mappings, load_mappings
from hl7_ingest.processor import Ingest
from hl7_ingest.settings import Hl7Settings
from service.logs import configure_logging
from service.runner import run_until_signalled
from worklist_cache.writethrough import write_through

log = logging.getLogger("hl7_ingest")


async def run_listener(settings: Hl7Settings, dynamo: DynamoSettings, mappings: Mappings) -> None:
    async with dynamodb_client(dynamo) as client, write_through(settings.write_through) as through:
        await wait_for_table(client, dynamo.table)
        store = ExamStore(client, dynamo.table, write_through=through)
        directory = SiteDirectory(store, settings.directory_cache_seconds)
        ingest = Ingest(store, mappings, settings, directory=directory)
        await ensure_dead_letter_table(store, ingest.dead_letters.table)
        listener = listener_for(ingest, settings)
        senders = ", ".join(f"{m.sender} ({m.tenant})" for m in mappings)
        unbound = [m.sender for m in mappings if not (m.peers.addresses or m.peers.certificates)]
        if unbound:
            log.warning("mappings that admit no peer (add `peers`): %s", ", ".join(unbound))
        async with listener:
            log.info("HL7 ingest ready for %s into table %s", senders, dynamo.table)
            await asyncio.Event().wait()  # until SIGTERM/SIGINT cancels this task


def main() -> int:
    settings = Hl7Settings()
    configure_logging(settings.log_level)
    try:
        mappings = load_mappings(settings.mappings_dir or None)
        load_dialect(settings.default_dialect, settings.dialects_dir or None)  # fail early
    except MappingError as exc:
        log.error("HL7 ingest not started: %s", exc.reason)
        print(f"HL7 ingest not started: {exc.reason}", file=sys.stderr)
        return 2
    run_until_signalled(run_listener(settings, DynamoSettings(), mappings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
