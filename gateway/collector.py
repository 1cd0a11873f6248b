"""CPython's cycle collector in a long-lived gateway: what it costs, and keeping it small.

A collection stops the event loop, and every client waits for it. A full one (the
oldest generation) walks every tracked object and every entry of every tracked
container, so its pause grows with what the process holds. Two things keep it short:

- `settle()`, once the gateway is ready: the objects made while starting (modules,
  classes, functions, settings, about 130,000 of them) move to the permanent
  generation (`gc.freeze`), so no collection walks them again.
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


def settle() -> int:
    """Collect once, then exempt every object alive now from later collections.
    Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
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
        return out
