"""HL7 v2 over MLLP: orders and results from a hospital's RIS drive the live worklist.

    message      parse and write HL7 v2 (encoding characters honoured, escapes, limits)
    mllp         framing (0x0B ... 0x1C 0x0D) of a byte stream
    listener     the asyncio MLLP server: many connections, each in order, capped
    peers        who a connection proves it is (certificate or source address)
    mapping      the adaptive layer: one JSON file per sending facility (mappings/)
    directory    the directory binds facilities to tenants and sites; the default
                 dialect (dialects/) of facilities that have no mapping file
    interpret    message + mapping -> a command (new order, move, patient update, merge)
    apply        command -> store writes, through the exam state machine
    ledger       accepted control IDs per sender (a repeat is answered AA, once)
    deadletters  rejected messages: the store, and the operator's CLI (`cli`)
    processor    the pipeline from bytes to ACK (`Ingest`)
    ack          ACK messages (MSA, ERR)

Run the listener with `python -m hl7_ingest`. The sending side (message builder, MLLP
client, `send`) is tooling and lives in `loadtest.hl7`. Import from the module that
owns a thing; this package exports nothing itself.
"""

from __future__ import annotations

__all__: list[str] = []
