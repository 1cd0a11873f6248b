"""The durable record of accepted messages, for at-most-once effect of a repeated MSH-10.

One item per accepted message: `PK = HL7MSG#{sender}`, `SK = MSG#{control_id}`, with
the time it was accepted, the message's content digest and an `expires_at` (epoch
seconds) that a DynamoDB TTL on that attribute can use to forget old control IDs.

`sender` is the *authenticated* facility: the mapping whose `peers` admitted the
connection, never MSH-4 as written by a peer that is not bound to it. So no other peer
can pre-send a site's coming control IDs and make its real messages answer "duplicate".
Keyed by facility rather than by connection, so that a site's failover interface engine
(another admitted peer) resending the same message is still a duplicate. A repeated
control ID with another digest is not a resend; the processor answers it AE.

Only accepted (AA) messages are recorded: a message that got AE or AR is evaluated
afresh when it is sent again or replayed.

The record is written *after* the exam write, conditionally (first writer wins). A crash
between the two leaves the change applied but not recorded; the sender, which never got
its ACK, resends, and the application is idempotent (a status the exam already has is
not written again, a second NW of the same order finds it), so the resend is answered AA
without a second state change and then recorded. The one move that is not idempotent is
a further amendment (AMENDED -> AMENDED is legal): in that window its resend writes the
exam once more, in the same state (version + 1, nothing a worklist shows differently).
Writing the record first instead would turn that crash into a lost order: the resend
would be taken for a duplicate of a write that never happened.

A process-local cache of recorded IDs answers repeats without a DynamoDB read; it holds
only facts that never become false (an ID once recorded stays recorded).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from dynamo import keys
from dynamo.serde import to_attr, to_attrs
from dynamo.store import ExamStore

__all__ = ["Ledger", "ledger_key"]


def ledger_key(sender: str, control_id: str) -> dict[str, Any]:
    return {
        "PK": to_attr(keys.hl7_ledger_pk(sender)),
        "SK": to_attr(keys.hl7_ledger_sk(control_id)),
    }


class Ledger:
    def __init__(self, store: ExamStore, *, keep_days: float = 30.0, cache: int = 100_000) -> None:
        self.store = store
        self.keep_seconds = int(keep_days * 86400)
        self._cache: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._cache_size = cache

    def _remember(self, sender: str, control_id: str, digest: str) -> None:
        self._cache[(sender, control_id)] = digest
        self._cache.move_to_end((sender, control_id))
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def seen(self, sender: str, control_id: str) -> bool:
        return await self.digest(sender, control_id) is not None

    async def digest(self, sender: str, control_id: str) -> str | None:
        """The content digest recorded for an accepted control ID; None when it was
        never accepted, "" for a record written before digests were kept."""
        cached = self._cache.get((sender, control_id))
        if cached is not None:
            return cached
        resp = await self.store.call(
            "get_item",
            TableName=self.store.table,
            Key=ledger_key(sender, control_id),
            ConsistentRead=True,
            ProjectionExpression="PK, digest",
        )
        if "Item" not in resp:
            return None
        digest = str(resp["Item"].get("digest", {}).get("S", ""))
        self._remember(sender, control_id, digest)
        return digest

    async def record(
        self, sender: str, control_id: str, message_type: str, summary: str, *, digest: str = ""
    ) -> None:
        now = time.time()
        item = {
            **ledger_key(sender, control_id),
            **to_attrs(
                {
                    "entity": "HL7MSG",
                    "sender": sender,
                    "control_id": control_id,
                    "message_type": message_type,
                    "summary": summary,
                    "digest": digest,
                    "accepted_at": int(now * 1000),
                    "expires_at": int(now) + self.keep_seconds,
                }
            ),
        }
        try:
            await self.store.call(
                "put_item",
                TableName=self.store.table,
                Item=item,
                ConditionExpression="attribute_not_exists(PK)",
            )
        except self.store.condition_failed:
            # Recorded by a concurrent delivery meanwhile: remember what it recorded.
            self._cache.pop((sender, control_id), None)
            await self.digest(sender, control_id)
            return
        self._remember(sender, control_id, digest)
