"""Every Redis key and channel name, in one place.

A tenant's keys share the hash tag `{tenant}` so they live in one Redis Cluster slot,
which the Lua scripts (several keys, one atomic step) need.
"""

from __future__ import annotations

PREFIX = "ris"


def _t(tenant: str) -> str:
    return f"{PREFIX}:{{{tenant}}}"


def exams(tenant: str) -> str:
    """Hash: exam_id -> the exam's newest delta (JSON)."""
    return f"{_t(tenant)}:exams"


def versions(tenant: str) -> str:
    """Hash: exam_id -> newest applied version (kept after a removal, as a tombstone)."""
    return f"{_t(tenant)}:versions"


def feed(tenant: str) -> str:
    """Stream: every applied delta; entry IDs are the feed's offsets."""
    return f"{_t(tenant)}:feed"


def epoch(tenant: str) -> str:
    """String: changes whenever the feed's history cannot be trusted."""
    return f"{_t(tenant)}:epoch"


def channel(tenant: str) -> str:
    """Pub/sub channel: applied deltas, live."""
    return f"{_t(tenant)}:live"


def relay_checkpoint(stream_arn: str) -> str:
    """Hash: shard_id -> last sequence number published (or SHARD_END)."""
    return f"{PREFIX}:relay:{stream_arn}:checkpoints"


def relay_lease(stream_arn: str, shard_id: str) -> str:
    """String: the relay that reads this shard now (with a TTL the owner renews)."""
    return f"{PREFIX}:relay:{stream_arn}:lease:{shard_id}"
