"""Every Redis key and channel name, in one place.

A tenant's keys and channels share the hash tag `{tenant}` so they live in one Redis
Cluster slot, which the Lua scripts (several keys, one atomic step) need, and the
tenant's sharded pub/sub messages stay on the master holding its keys. Keys that are not
a tenant's are each used alone, except a relay's shard leases, which carry their
stream's checkpoint key as their tag (the fenced checkpoint write reads both).
"""

from __future__ import annotations

PREFIX = "ris"


def _t(tenant: str) -> str:
    return f"{PREFIX}:{{{tenant}}}"


def tenant_prefix(tenant: str) -> str:
    """The prefix of a tenant's keys; the scripts derive the index keys from it:
    `{prefix}:idx:{status}:{site}`, a sorted set of exam ids scored by urgency."""
    return _t(tenant)


def index(tenant: str, status: str, site: str) -> str:
    return f"{_t(tenant)}:idx:{status}:{site}"


def sites(tenant: str) -> str:
    """Set: every site the tenant's exams came from (for views over all sites)."""
    return f"{_t(tenant)}:sites"


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


def built(tenant: str) -> str:
    """String: set once the tenant's worklists were rebuilt from DynamoDB in this Redis."""
    return f"{_t(tenant)}:built"


def presence(tenant: str) -> str:
    """Hash: connection id -> who is connected and what they hold (JSON, with a heartbeat)."""
    return f"{_t(tenant)}:presence"


def scope_marks(tenant: str) -> str:
    """Hash: person (sub) -> the scope their worklists were last served under and the
    feed position (epoch, offset) from which it held (JSON): a resume from an earlier
    position, or under another scope, is answered with a reset snapshot."""
    return f"{_t(tenant)}:scopes"


def presence_channel(tenant: str) -> str:
    """Pub/sub channel: "presence of this tenant changed"."""
    return f"{_t(tenant)}:presence:live"


def channel(tenant: str) -> str:
    """Pub/sub channel: applied deltas, live."""
    return f"{_t(tenant)}:live"


def directory_channel(tenant: str) -> str:
    """Pub/sub channel: "this tenant's directory changed" ({"tenant", "kind", "key"}):
    every gateway node re-reads the people concerned and closes sessions whose
    privileges changed."""
    return f"{_t(tenant)}:directory:live"


def reviews(tenant: str) -> str:
    """Hash: exam_id -> the newest peer-review delta (JSON)."""
    return f"{_t(tenant)}:reviews"


def review_versions(tenant: str) -> str:
    """Hash: exam_id -> newest applied peer-review version."""
    return f"{_t(tenant)}:reviews:versions"


def review_channel(tenant: str) -> str:
    """Pub/sub channel: peer-review deltas, live (the gateway redacts per viewer)."""
    return f"{_t(tenant)}:reviews:live"


def probe_channel(node: str, tag: str = "") -> str:
    """Pub/sub channel: one gateway node's liveness probe of its own subscription. On a
    Redis Cluster each master's subscription has its own probe, whose hash tag `tag` is
    chosen to land on a slot of that master."""
    return f"{PREFIX}:probe:{node}" + (f":{{{tag}}}" if tag else "")


def relay_checkpoint(stream_arn: str) -> str:
    """Hash: shard_id -> last sequence number published (or SHARD_END)."""
    return f"{PREFIX}:relay:{stream_arn}:checkpoints"


def relay_lease(stream_arn: str, shard_id: str) -> str:
    """String: the relay that reads this shard now (with a TTL the owner renews). Its
    hash tag is the stream's checkpoint key, so both are in one cluster slot."""
    return f"{{{relay_checkpoint(stream_arn)}}}:lease:{shard_id}"


def relay_alive() -> str:
    """String with a TTL: some relay read its stream recently."""
    return f"{PREFIX}:relay:alive"


def rebuilding(tenant: str) -> str:
    """String: the token of the newest rebuild of the tenant's worklists under way; the
    rebuild sets `built` only if its token is still here (so a Redis that restarted
    meanwhile, or a newer rebuild, is never marked built by it)."""
    return f"{_t(tenant)}:rebuilding"


def build_requests() -> str:
    """Set: tenants someone asked the worker to build (e.g. one with no exams yet)."""
    return f"{PREFIX}:build:requests"


def closed(tenant: str) -> str:
    """Sorted set: the cached closed exams (FINAL, AMENDED, CANCELLED), scored by
    `scheduled_at`; those scheduled before the retention window are pruned from it."""
    return f"{_t(tenant)}:closed"


# ---- orchestration: who reads what next ----------------------------------------------


def next_reservation(tenant: str, exam_id: str) -> str:
    """String with a short TTL (SET NX PX): a gateway is claiming this exam for a "next
    case" now, so concurrent presses try the following case instead of racing for the
    same one. Only a courtesy: the claim in DynamoDB is what guarantees one reader."""
    return f"{_t(tenant)}:orch:reserve:{exam_id}"


def rvu_ledger(tenant: str, shift: str) -> str:
    """Hash: reader sub -> work RVUs signed FINAL in this shift (a UTC day, "YYYY-MM-DD");
    expires a day after the shift."""
    return f"{_t(tenant)}:orch:rvu:{shift}"


def decisions(tenant: str) -> str:
    """Stream: every assignment's decision (who, which case, the rule and the figures
    weighed), newest last, capped."""
    return f"{_t(tenant)}:orch:decisions"


def claim_gate(tenant: str, exam_id: str) -> str:
    """String with a short TTL (SET NX PX): a claim of this exam is under way, or was
    just won (`gateway.claimgate`); concurrent claims are answered `conflict` without
    queueing on DynamoDB. Only a courtesy: the claim in DynamoDB is the guarantee."""
    return f"{_t(tenant)}:claim:gate:{exam_id}"


def offer_lease(tenant: str) -> str:
    """String with a TTL (SET NX PX, renewed by its holder): the gateway node that drives
    the tenant's STAT offers now; any other node takes over when it lapses."""
    return f"{_t(tenant)}:orch:offer-lease"


def offers(tenant: str) -> str:
    """Hash: exam_id -> the STAT offer's state (JSON: reader offered to, until when, who
    declined, alerts raised), read and written by every node."""
    return f"{_t(tenant)}:orch:offers"
