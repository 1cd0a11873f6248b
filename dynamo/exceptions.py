"""Errors of the exam store.

    StoreError                    root of every error this package raises
    ├── ExamNotFound              no exam with that key
    ├── ExamAlreadyExists         create of an accession that is already stored
    ├── InvalidTransition         the state machine forbids the move (names the current state)
    ├── VersionConflict           another writer changed the exam since it was read
    ├── ClaimError                root of the claim (lock) errors
    │   ├── AlreadyClaimed        someone else holds a live claim (names the holder; UPS C302)
    │   ├── NotClaimable          the exam is not in a state that can be read
    │   └── StaleToken            the token is not the current claim's (UPS C301)
    ├── ForeignPatient            the patient id names another tenant's profile
    ├── DirectoryError            root of the directory's errors (tenants, sites, people)
    │   ├── DirectoryNotFound     no tenant, site or person with that key
    │   ├── DirectoryExists       an add of a tenant, site or person already stored
    │   ├── DirectoryConflict     another operator changed the entry since it was read
    │   └── InvalidEntry          bad input: an unknown site or role, a duplicate `sub`,
    │                             a malformed file (names the row and the field)
    ├── StoreUnavailable          DynamoDB kept throttling or failing after every retry
    └── PermanentStoreError       DynamoDB refused for a reason retrying will not fix

    ConditionFailed               a conditional write's condition was false; internal to
    ├── ClaimRefused              the package (never a StoreError: it turns each into one
    └── ReviewRefused             of the errors above), carrying the item as it was

Every error carries a stable `code` (the wire error code the gateway sends) and never
any patient data: only accession numbers, states and versions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dynamo.models import Exam
    from dynamo.review import Review


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


class ClaimError(StoreError):
    code = "conflict"


class AlreadyClaimed(ClaimError):
    """Another reader holds the exam. Carries who, so a client can say "X got it first"."""

    code = "conflict"

    def __init__(
        self, accession: str, holder: str, holder_name: str | None, lease_expires_at: int | None
    ) -> None:
        super().__init__(f"exam {accession} is being read by {holder_name or holder}")
        self.accession = accession
        self.holder = holder
        self.holder_name = holder_name
        self.lease_expires_at = lease_expires_at


class NotClaimable(ClaimError):
    code = "invalid_transition"

    def __init__(self, accession: str, current: str) -> None:
        super().__init__(
            f"exam {accession} is {current}; only an exam ready to read can be claimed"
        )
        self.accession = accession
        self.current = current


class StaleToken(ClaimError):
    """The claim token is wrong, or belongs to a claim that was released, expired and
    re-claimed, or broken by an admin."""

    code = "stale_token"

    def __init__(self, accession: str) -> None:
        super().__init__(f"the claim token for exam {accession} is not the current one")
        self.accession = accession


class StoreUnavailable(StoreError):
    code = "unavailable"

    def __init__(self, operation: str, error_code: str) -> None:
        super().__init__(f"DynamoDB {operation} still failing after retries ({error_code})")
        self.operation = operation
        self.error_code = error_code


class PermanentStoreError(StoreError):
    code = "store_error"

    def __init__(self, operation: str, error_code: str) -> None:
        super().__init__(f"DynamoDB refused {operation} ({error_code})")
        self.operation = operation
        self.error_code = error_code


class ForeignPatient(StoreError):
    """The patient id names another tenant's profile (never written, never read)."""

    code = "forbidden"

    def __init__(self) -> None:
        super().__init__("the patient profile belongs to another tenant")


class DirectoryError(StoreError):
    code = "directory_error"


class DirectoryNotFound(DirectoryError):
    code = "not_found"

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"no {kind} {key}")
        self.kind = kind
        self.key = key


class DirectoryExists(DirectoryError):
    code = "conflict"

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind} {key} already exists (update it instead)")
        self.kind = kind
        self.key = key


class DirectoryConflict(DirectoryError):
    code = "conflict"

    def __init__(self, kind: str, key: str, expected: int) -> None:
        super().__init__(f"{kind} {key} changed since version {expected} was read: read it again")
        self.kind = kind
        self.key = key
        self.expected = expected


class InvalidEntry(DirectoryError):
    """Bad input; nothing was changed. `row` is the file's row (1 = the first data
    row) when the input came from a file."""

    code = "bad_request"

    def __init__(self, message: str, *, row: int | None = None) -> None:
        super().__init__(f"row {row}: {message}" if row is not None else message)
        self.row = row


class ConditionFailed(Exception):
    """An update's condition was false; `old` is the item as it was (None: no item)."""

    def __init__(self, old: dict[str, Any] | None) -> None:
        super().__init__("condition failed")
        self.old = old


class ClaimRefused(ConditionFailed):
    """A claim write's condition was false; `exam` is the exam as it was."""

    def __init__(self, exam: Exam) -> None:
        super().__init__(None)
        self.exam = exam


class ReviewRefused(ConditionFailed):
    """A review write's condition was false; `review` is the review as it was."""

    def __init__(self, review: Review) -> None:
        super().__init__(None)
        self.review = review
