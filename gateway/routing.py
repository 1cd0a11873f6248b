"""The one routing rule for live delivery, the replay after a snapshot, and resume:
what a feed message becomes for one subscription (`route`), and the subscription state
it reads and keeps (`Subscription`: its view's matcher, the exams it holds, the frame
prefixes). `gateway.hub` applies it per group of subscriptions that route alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.frames import leave_frame
from worklist_cache.views import RowMatcher, Scope, View

__all__ = ["MAYBE", "Pending", "Subscription", "route", "shows", "visible"]

# A feed message held back while a subscription's snapshot or resume is read:
# (offset, row, raw message text, epoch).
Pending = tuple[str, dict[str, Any], str, str]

# `Subscription.held`'s version of an exam the client may hold, at a version it was not
# sent (never a row's version, so no patch applies to it).
MAYBE = -1


@dataclass(eq=False, slots=True)
class Subscription:
    sub_id: str
    tenant: str
    view: View
    matcher: RowMatcher
    scope: Scope
    epoch: str = ""
    # The exams the client may hold in this view (only these get a `leave`): exam_id ->
    # the version the client was sent (snapshot, delta, patch or row; a patch goes out
    # only against it), or `MAYBE` when it may hold one of unknown version (a resume).
    # One dict of str -> int: CPython's cycle collector does not track it, so a view of
    # many exams on every connection adds nothing to the gateway's collection pauses.
    held: dict[str, int] = field(default_factory=dict)
    # Until its snapshot (or resume) is queued, the feed's messages wait here.
    pending: list[Pending] | None = field(default_factory=list)
    # The position announced to the client: messages at or before it are not sent again
    # (pub/sub may deliver one after the snapshot that already holds it).
    floor: tuple[int, int] | None = None
    prefix: str = ""
    patch_prefix: str = ""
    leave_prefix: str = ""
    key_prefix: str = ""  # coalescing keys: one per (subscription, exam)

    def __post_init__(self) -> None:
        # sub_id is validated against ^[A-Za-z0-9_.:-]+$, so it needs no JSON escaping.
        self.prefix = '{"type":"delta","sub":"' + self.sub_id + '",'
        self.leave_prefix = self.prefix + '"leave":true,'
        self.patch_prefix = '{"type":"patch","sub":"' + self.sub_id + '",'
        self.key_prefix = self.sub_id + "\x00"


def visible(sub: Subscription, row: dict[str, Any]) -> bool:
    """Whether a subscription's client may hold this row: the (scoped) view matches it.
    The rule `route` applies, and row requests too."""
    return shows(sub.matcher, row)


def shows(matcher: RowMatcher, row: dict[str, Any]) -> bool:
    """`visible` for every subscription with this matcher (the hub decides it once per
    group of them)."""
    return row["op"] != "remove" and matcher(row)


def route(
    sub: Subscription,
    offset: str,
    row: dict[str, Any],
    raw: str,
    epoch: str,
    memo: dict[str, str] | None = None,
) -> str | None:
    """The frame one feed message makes for one subscription, or None.

    `raw` is the feed message's text, `{"epoch":..,"offset":..,"delta":{..}}`. The one
    rule for live delivery, the replay after a snapshot and resume: a row that matches
    the (scoped) view goes out whole; an exam that was in the view and no longer matches
    gets a `leave` placeholder; anything else gets nothing. `memo` (one per message)
    keeps the frame built for each subscription prefix, so subscriptions that share one
    share the frame's text.
    """
    exam_id = row["exam_id"]
    if visible(sub, row):
        sub.held[exam_id] = row["version"]
        if memo is None:
            return sub.prefix + raw[1:]
        frame = memo.get(sub.prefix)
        if frame is None:
            frame = memo[sub.prefix] = sub.prefix + raw[1:]
        return frame
    if sub.held.pop(exam_id, None) is not None:
        return leave_frame(sub.leave_prefix, epoch, offset, exam_id, row["version"])
    return None
