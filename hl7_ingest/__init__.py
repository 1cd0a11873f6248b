"""HL7 v2 over MLLP: orders and results from a hospital's RIS drive the live worklist.

    message      parse and write HL7 v2 (encoding characters honoured, escapes)
    mllp         framing (0x0B ... 0x1C 0x0D) of a byte stream
    listener     the asyncio MLLP server: many connections, each in order
    mapping      the adaptive layer: one JSON file per sending facility (mappings/)
    interpret    message + mapping -> a command (new order, move, patient update, merge)
    apply        command -> store writes, through the exam state machine
    ledger       accepted control IDs (a repeat is answered AA without a second write)
    deadletters  rejected messages, and the operator's CLI to list, show and replay
    processor    the pipeline from bytes to ACK (`Ingest`)
    ack          ACK messages (MSA, ERR)
    client       an MLLP client; `send` a CLI that sends a file of messages
    builder      simulator events -> messages in a site's dialect

Run the listener with `python -m hl7_ingest`.
"""

from __future__ import annotations

import importlib
from typing import Any

# Loaded on first use, so that `python -m hl7_ingest.deadletters` (or `.send`) does not
# import its own module twice through the package.
_EXPORTS = {
    "Ack": "hl7_ingest.ack",
    "build_ack": "hl7_ingest.ack",
    "MllpClient": "hl7_ingest.client",
    "send_message": "hl7_ingest.client",
    "MllpListener": "hl7_ingest.listener",
    "Mappings": "hl7_ingest.mapping",
    "SiteMapping": "hl7_ingest.mapping",
    "load_mappings": "hl7_ingest.mapping",
    "Message": "hl7_ingest.message",
    "parse": "hl7_ingest.message",
    "Ingest": "hl7_ingest.processor",
    "Outcome": "hl7_ingest.processor",
    "Hl7Settings": "hl7_ingest.settings",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hl7_ingest' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
