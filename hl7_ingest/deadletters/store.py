"""Rejected messages, kept for an operator (the CLI is `python -m hl7_ingest.deadletters`,
`hl7_ingest/deadletters/__main__.py`).

Every message an authenticated peer sent that got AE or AR is stored here, and so is
anything such a peer sent that looked like a message but arrived outside an MLLP frame
(never acknowledged). A peer that no site mapping admits, or a message whose MSH-4
names a facility its connection is not bound to, leaves nothing here: unauthenticated
bytes are never stored (only a log line without content).

Where: a table of their own, `HL7_DEAD_LETTER_TABLE` (default `{DYNAMO_TABLE}-hl7-dead-
letters`), created by the listener when missing, without a stream. The messages hold
PHI; in the exam table they would flow through its stream to the relay, the audit
consumer and every other reader of it. On their own table an IAM policy gives read
access to the ingest's operators (this CLI) and write access to the listener only.
Items: `PK = HL7DEAD`, `SK = DL#{id}`, where the id is a hash of the message bytes, so a
sender that resends a rejected message updates one dead letter (`attempts`) instead of
piling up copies. The message is stored zlib-compressed, cut at
`HL7_DEAD_LETTER_MAX_BYTES` (then it cannot be replayed), and every item carries
`expires_at` (`HL7_DEAD_LETTER_DAYS` from its last sighting) for DynamoDB's TTL. At most
`HL7_DEAD_LETTERS_PER_MINUTE` are written per peer address; beyond that a rejected
message is not acknowledged at all (the sender keeps it and resends later).

The dead letter is written *before* the negative ACK goes out: a sender drops a message
it got AE/AR for, so the dead letter is then the only copy. If it cannot be written, no
ACK is sent and the sender resends.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import zlib
from dataclasses import dataclass
from typing import Any

from dynamo import keys
from dynamo.exceptions import PermanentStoreError
from dynamo.serde import from_attrs, to_attr, to_attrs
from dynamo.store import ExamStore
from hl7_ingest.peers import Peer

__all__ = [
    "DeadLetter",
    "DeadLetters",
    "PeerBudget",
    "dead_letter_table",
    "ensure_dead_letter_table",
]

_PK = keys.HL7_DEAD_PK
_TTL_ATTRIBUTE = "expires_at"


def dead_letter_table(exam_table: str, configured: str = "") -> str:
    return configured or f"{exam_table}-hl7-dead-letters"


async def ensure_dead_letter_table(store: ExamStore, table: str, timeout: float = 30.0) -> None:
    """Create the dead-letter table (no stream, TTL on `expires_at`) unless it exists."""
    try:
        await store.call("describe_table", TableName=table)
        return
    except PermanentStoreError as exc:
        if exc.error_code != "ResourceNotFoundException":
            raise
    try:
        await store.call(
            "create_table",
            TableName=table,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": "PK", "AttributeType": "S"},
                {"AttributeName": "SK", "AttributeType": "S"},
            ],
            KeySchema=[
                {"AttributeName": "PK", "KeyType": "HASH"},
                {"AttributeName": "SK", "KeyType": "RANGE"},
            ],
        )
    except PermanentStoreError as exc:
        if exc.error_code != "ResourceInUseException":  # created meanwhile
            raise
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (await store.call("describe_table", TableName=table))["Table"]["TableStatus"] != (
        "ACTIVE"
    ):
        if loop.time() > deadline:
            raise TimeoutError(f"table {table} not ACTIVE after {timeout:.0f}s")
        await asyncio.sleep(0.2)
    try:
        await store.call(
            "update_time_to_live",
            TableName=table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": _TTL_ATTRIBUTE},
        )
    except PermanentStoreError:
        pass  # already enabled; or managed by the deployment's own definition


class PeerBudget:
    """A token bucket per peer address: `per_minute` dead letters, refilled steadily."""

    def __init__(self, per_minute: float, *, clock: Any = time.monotonic) -> None:
        self.capacity = max(1.0, per_minute)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> bool:
        now = self._clock()
        tokens, then = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - then) * self.rate)
        if len(self._buckets) > 10_000:  # forget full buckets, bounded memory
            self._buckets = {k: v for k, v in self._buckets.items() if v[0] < self.capacity}
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True


@dataclass(frozen=True)
class DeadLetter:
    id: str
    status: str  # "open" | "replayed"
    first_seen: int
    last_seen: int
    attempts: int
    sender: str
    control_id: str
    message_type: str
    ack_code: str
    error_code: str
    field: str
    reason: str
    peer: str
    raw: bytes
    raw_truncated: bool
    replayed_at: int | None = None
    # Who sent it, as the listener authenticated it (a replay is checked as that peer).
    peer_address: str = ""
    peer_names: tuple[str, ...] = ()
    expires_at: int | None = None

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> DeadLetter:
        packed = item.get("raw", b"")
        raw = bytes(packed.value if hasattr(packed, "value") else packed)
        return cls(
            id=str(item["id"]),
            status=str(item.get("status", "open")),
            first_seen=int(item.get("first_seen", 0)),
            last_seen=int(item.get("last_seen", 0)),
            attempts=int(item.get("attempts", 1)),
            sender=str(item.get("sender", "")),
            control_id=str(item.get("control_id", "")),
            message_type=str(item.get("message_type", "")),
            ack_code=str(item.get("ack_code", "")),
            error_code=str(item.get("error_code", "")),
            field=str(item.get("field", "")),
            reason=str(item.get("reason", "")),
            peer=str(item.get("peer", "")),
            raw=_unpack(raw),
            raw_truncated=bool(item.get("raw_truncated", False)),
            replayed_at=int(item["replayed_at"]) if "replayed_at" in item else None,
            peer_address=str(item.get("peer_address", "")),
            peer_names=tuple(sorted(str(n) for n in item.get("peer_names", []) or [])),
            expires_at=int(item["expires_at"]) if "expires_at" in item else None,
        )

    @property
    def sent_by(self) -> Peer:
        return Peer(self.peer_address, 0, frozenset(self.peer_names))


def _unpack(data: bytes) -> bytes:
    if not data:
        return b""
    decoder = zlib.decompressobj()
    return decoder.decompress(data)  # a truncated stream yields what it holds


def dead_letter_id(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:20]


class DeadLetters:
    def __init__(
        self,
        store: ExamStore,
        table: str | None = None,
        *,
        keep_days: float = 30.0,
        max_bytes: int = 65_536,
    ) -> None:
        """`store` is used for its client and retries; the items go to `table` (the
        dead-letter table of `store.table` when None)."""
        self.store = store
        self.table = table or dead_letter_table(store.table)
        self.keep_seconds = int(keep_days * 86400)
        self.max_bytes = max_bytes

    def _key(self, dl_id: str) -> dict[str, Any]:
        return {"PK": to_attr(_PK), "SK": to_attr(keys.hl7_dead_sk(dl_id))}

    async def put(
        self,
        raw: bytes,
        *,
        sender: str,
        control_id: str,
        message_type: str,
        ack_code: str,
        error_code: str,
        field: str,
        reason: str,
        peer: Peer,
    ) -> str:
        """Store (or update) the dead letter of `raw`; returns its id."""
        dl_id = dead_letter_id(raw)
        packed = zlib.compress(raw, 6)
        truncated = len(packed) > self.max_bytes
        now = int(time.time() * 1000)
        values = {
            ":id": dl_id,
            ":open": "open",
            ":now": now,
            ":zero": 0,
            ":one": 1,
            ":sender": sender,
            ":cid": control_id,
            ":type": message_type,
            ":ack": ack_code,
            ":code": error_code,
            ":field": field,
            ":reason": reason,
            ":peer": peer.label,
            ":paddr": peer.address,
            ":pnames": sorted(peer.names),
            ":raw": packed[: self.max_bytes],
            ":trunc": truncated,
            ":entity": "HL7_DEADLETTER",
            ":exp": now // 1000 + self.keep_seconds,
        }
        await self.store.call(
            "update_item",
            TableName=self.table,
            Key=self._key(dl_id),
            UpdateExpression=(
                "SET entity = :entity, id = :id, #st = :open,"
                " first_seen = if_not_exists(first_seen, :now), last_seen = :now,"
                " attempts = if_not_exists(attempts, :zero) + :one, sender = :sender,"
                " control_id = :cid, message_type = :type, ack_code = :ack,"
                " error_code = :code, #f = :field, reason = :reason, peer = :peer,"
                " #raw = :raw, raw_truncated = :trunc, peer_address = :paddr,"
                " peer_names = :pnames, expires_at = :exp REMOVE replayed_at"
            ),
            ExpressionAttributeNames={"#st": "status", "#f": "field", "#raw": "raw"},
            ExpressionAttributeValues=to_attrs(values),
        )
        return dl_id

    async def get(self, dl_id: str) -> DeadLetter | None:
        resp = await self.store.call(
            "get_item", TableName=self.table, Key=self._key(dl_id), ConsistentRead=True
        )
        return DeadLetter.from_item(from_attrs(resp["Item"])) if "Item" in resp else None

    async def list(self, *, include_replayed: bool = False, limit: int = 100) -> list[DeadLetter]:
        """Newest first. Dead letters are few; they are read whole and sorted here."""
        out: list[DeadLetter] = []
        start: dict[str, Any] | None = None
        while True:
            kwargs: dict[str, Any] = {
                "TableName": self.table,
                "KeyConditionExpression": "PK = :pk",
                "ExpressionAttributeValues": {":pk": to_attr(_PK)},
                "ConsistentRead": True,
            }
            if start:
                kwargs["ExclusiveStartKey"] = start
            resp = await self.store.call("query", **kwargs)
            out.extend(DeadLetter.from_item(from_attrs(i)) for i in resp.get("Items", []))
            start = resp.get("LastEvaluatedKey")
            if not start:
                break
        if not include_replayed:
            out = [d for d in out if d.status == "open"]
        out.sort(key=lambda d: d.last_seen, reverse=True)
        return out[:limit]

    async def resolve(self, dl_id: str) -> None:
        """The message was replayed and accepted."""
        await self.store.call(
            "update_item",
            TableName=self.table,
            Key=self._key(dl_id),
            UpdateExpression="SET #st = :done, replayed_at = :now",
            ConditionExpression="attribute_exists(PK)",
            ExpressionAttributeNames={"#st": "status"},
            ExpressionAttributeValues=to_attrs(
                {":done": "replayed", ":now": int(time.time() * 1000)}
            ),
        )
