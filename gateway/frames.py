"""The texts of the frames the hub builds besides a delta (which is spliced from the feed
message, `gateway.routing.route`): a `leave` placeholder, a `patch`'s fields, and the `batch`
of what waited in a queue or a flush window."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["Patch", "Queued", "coalesce", "leave_frame", "patch_text"]

# A queued frame: (coalescing key or None for frames that are never merged, text).
Queued = tuple[str | None, str]

# A patch's part after the subscription prefix, and the version it applies to.
Patch = tuple[int, str]

_MISSING = object()


def leave_frame(prefix: str, epoch: str, offset: str, exam_id: str, version: int) -> str:
    """An offset-only placeholder: enough to drop the row, nothing of the row itself."""
    delta = orjson.dumps({"exam_id": exam_id, "version": version}).decode()
    return prefix + '"epoch":"' + epoch + '","offset":"' + offset + '","delta":' + delta + "}"


def patch_text(
    prev: dict[str, Any], prev_version: int, row: dict[str, Any], epoch: str, offset: str
) -> str:
    """A patch's part after its subscription prefix: the fields of `row` that differ
    from `prev` (absent ones as null), from version `prev_version` to `row`'s."""
    fields = {
        k: v
        for k, v in row.items()
        if k not in ("exam_id", "version") and prev.get(k, _MISSING) != v
    }
    for k in prev:
        if k not in row:
            fields[k] = None
    return (
        '"epoch":"'
        + epoch
        + '","offset":"'
        + offset
        + '","exam_id":'
        + orjson.dumps(row["exam_id"]).decode()
        + ',"base":'
        + str(prev_version)
        + ',"version":'
        + str(row["version"])
        + ',"fields":'
        + orjson.dumps(fields).decode()
        + "}"
    )


def coalesce(items: list[Queued]) -> list[str]:
    """Frames to send for what waited in a queue: runs of delta frames become one batch
    frame holding only the newest frame per (subscription, exam); other frames keep
    their place."""
    out: list[str] = []
    run: dict[str, str] = {}

    def flush() -> None:
        if len(run) == 1:
            out.append(next(iter(run.values())))
        elif run:
            out.append('{"type":"batch","frames":[' + ",".join(run.values()) + "]}")
        run.clear()

    for key, frame in items:
        if key is None:
            flush()
            out.append(frame)
        else:
            run.pop(key, None)  # the newer frame replaces the older, at the end
            run[key] = frame
    flush()
    return out
