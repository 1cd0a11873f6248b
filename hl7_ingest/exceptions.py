"""Errors of the HL7 ingest.

    Hl7Error                    root of every error this package raises
    ├── MappingError            a site mapping file is invalid (a configuration error)
    ├── Rejection               a message gets a negative ACK; carries `ack_code`,
    │   │                       `error_code` (HL7 table 0357), `field`, `reason`
    │   ├── MessageRejected     AR: cannot be accepted at all (unparseable, unsupported
    │   │   │                   type, wrong processing ID, unknown sending facility)
    │   │   └── ParseError      AR: not HL7 v2 (no MSH, bad encoding characters)
    │   └── ApplicationRejected AE: understood, but the application refuses it
    │                           (unknown order, illegal state change, claimed exam,
    │                           a required field missing, a code the mapping lacks)
    ├── NotAcknowledged         no ACK may be sent (the store is unavailable): the
    │                           connection is closed so that the sender resends
    └── MllpError               client side: the connection failed or the ACK was wrong
        └── AckTimeout          no ACK within the timeout

`reason` never carries patient data: field names, codes of this system, accession
numbers, states and control IDs only. Values read from a message are never quoted
(a shifted field could put a name where a code belongs); an operator reads them with
`python -m hl7_ingest.deadletters show`.
"""

from __future__ import annotations

from typing import Literal

AckCode = Literal["AA", "AE", "AR"]

# HL7 table 0357 (message error condition codes) used here.
REQUIRED_FIELD_MISSING = "101"
DATA_TYPE_ERROR = "102"
TABLE_VALUE_NOT_FOUND = "103"
UNSUPPORTED_MESSAGE_TYPE = "200"
UNSUPPORTED_EVENT_CODE = "201"
UNSUPPORTED_PROCESSING_ID = "202"
UNKNOWN_KEY = "204"
DUPLICATE_KEY = "205"
RECORD_LOCKED = "206"
INTERNAL_ERROR = "207"
SEGMENT_SEQUENCE_ERROR = "100"

ERROR_TEXT: dict[str, str] = {
    SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    REQUIRED_FIELD_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    TABLE_VALUE_NOT_FOUND: "Table value not found",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    UNKNOWN_KEY: "Unknown key identifier",
    DUPLICATE_KEY: "Duplicate key identifier",
    RECORD_LOCKED: "Application record locked",
    INTERNAL_ERROR: "Application internal error",
}


class Hl7Error(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MappingError(Hl7Error):
    """A mapping file cannot be used; raised at startup, never per message."""


class Rejection(Hl7Error):
    ack_code: AckCode = "AE"

    def __init__(self, error_code: str, field: str, reason: str) -> None:
        super().__init__(reason)
        self.error_code = error_code
        self.field = field  # a path like "ORC-5" or "PID-3.1"; "" when none applies


class MessageRejected(Rejection):
    ack_code: AckCode = "AR"


class ParseError(MessageRejected):
    def __init__(self, reason: str, field: str = "MSH") -> None:
        super().__init__(SEGMENT_SEQUENCE_ERROR, field, reason)


class ApplicationRejected(Rejection):
    ack_code: AckCode = "AE"


class NotAcknowledged(Hl7Error):
    """The message could not be made durable and nothing was acknowledged."""


class MllpError(Hl7Error):
    pass


class AckTimeout(MllpError):
    def __init__(self, timeout: float) -> None:
        super().__init__(f"no ACK within {timeout:g}s")
        self.timeout = timeout
