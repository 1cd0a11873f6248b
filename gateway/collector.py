"""CPython's cycle collector in a long-lived gateway: what it costs, and keeping it small.

A collection stops the event loop, and every client waits for it. A full one (the
oldest generation) walks every tracked object and every entry of every tracked
container, so its pause grows with what the process holds. Two things keep it short:

- `settle()`, once the gateway is ready: the objects made while starting (modules,
  classes, functions, settings, about 130,000 of them) move to the permanent
  generation (`gc.freeze`), so no collection walks them again; and the youngest
  generation is collected less often (`YOUNG_THRESHOLD`), so fewer objects of a
  delta in flight are promoted and full collections are rarer.
- What grows with connections is kept out of the collector's reach where the code
  allows: a subscription's holds are one `dict[str, int]`, which CPython does not track
  (`gateway.routing.Subscription.held`).

`Pauses` measures it: collections and their pause time per generation, and the longest
pause, for `/metrics`. Nothing here names a patient or a row.
"""

from __future__ import annotations

import gc
import time
from typing import Any

__all__ = ["Pauses", "settle"]


# The youngest generation is collected after this many more allocations than
# deallocations of tracked objects (CPython's default: 700). A collection promotes what
# is alive at that instant: under fan-out, the frames and windows of a delta in flight,
# which die a few milliseconds later but count toward the next full collection (one
# whenever a quarter of the oldest generation is new). Rarer young collections promote
# fewer of them: fewer full collections, each stopping every client's deliveries.
YOUNG_THRESHOLD = 20_000


def settle() -> int:
    """Collect once, then exempt every object alive now from later collections, and
    collect the youngest generation every `YOUNG_THRESHOLD` allocations. Returns how
    many objects were frozen."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    return gc.get_freeze_count()


class Pauses:
    """Per generation: collections, seconds spent in them, the longest one."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self._started = 0.0
        self._installed = False

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._on_collection)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._on_collection)
            self._installed = False

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        generation = info.get("generation", 2)
        if not 0 <= generation <= 2:
            return
        self.collections[generation] += 1
        self.seconds[generation] += took
        if took > self.longest[generation]:
            self.longest[generation] = took

    def lines(self) -> list[str]:
        """The Prometheus text of these figures."""
        out = [
            "# TYPE gateway_gc_collections_total counter",
            "# TYPE gateway_gc_pause_seconds_total counter",
            "# TYPE gateway_gc_pause_max_seconds gauge",
        ]
        for g in range(3):
            label = f'{{generation="{g}"}}'
            out.append(f"gateway_gc_collections_total{label} {self.collections[g]}")
            out.append(f"gateway_gc_pause_seconds_total{label} {self.seconds[g]:.6f}")
            out.append(f"gateway_gc_pause_max_seconds{label} {self.longest[g]:.6f}")
        out.append(f"gateway_gc_frozen_objects {gc.get_freeze_count()}")
        out.append(f"gateway_gc_young_threshold {gc.get_threshold()[0]}")
        return out
