"""Errors of the exam store and the stream relay.

    StoreError                    root of every error this package raises
    ├── ExamNotFound              no exam with that key
    ├── ExamAlreadyExists         create of an accession that is already stored
    ├── InvalidTransition         the state machine forbids the move (names the current state)
    ├── VersionConflict           another writer changed the exam since it was read
    └── PermanentStoreError       DynamoDB refused for a reason retrying will not fix

Every error carries a stable `code` (the wire error code the gateway sends) and never
any patient data: only accession numbers, states and versions.
"""

from __future__ import annotations


class StoreError(Exception):
    code = "store_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.reason = message


class ExamNotFound(StoreError):
    code = "not_found"

    def __init__(self, accession: str) -> None:
        super().__init__(f"no exam with accession {accession}")
        self.accession = accession


class ExamAlreadyExists(StoreError):
    code = "conflict"

    def __init__(self, accession: str) -> None:
        super().__init__(f"exam {accession} already exists")
        self.accession = accession


class InvalidTransition(StoreError):
    code = "invalid_transition"

    def __init__(self, accession: str, current: str, target: str) -> None:
        super().__init__(f"exam {accession} is {current}; it cannot become {target}")
        self.accession = accession
        self.current = current
        self.target = target


class VersionConflict(StoreError):
    code = "conflict"

    def __init__(self, accession: str, expected: int, current: int | None) -> None:
        super().__init__(f"exam {accession} is at version {current}, not the expected {expected}")
        self.accession = accession
        self.expected = expected
        self.current = current


class PermanentStoreError(StoreError):
    code = "store_error"
