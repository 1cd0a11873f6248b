"""Rejected HL7 messages: the store (`store`) and the operator's CLI (`cli`,
`python -m hl7_ingest.deadletters list|show ID|replay ID`)."""

from __future__ import annotations

from hl7_ingest.deadletters.store import (
    DeadLetter,
    DeadLetters,
    PeerBudget,
    dead_letter_id,
    dead_letter_table,
    ensure_dead_letter_table,
)

__all__ = [
    "DeadLetter",
    "DeadLetters",
    "PeerBudget",
    "dead_letter_id",
    "dead_letter_table",
    "ensure_dead_letter_table",
]
