"""Garbage-collector pauses, measured inside a server process (every peer uses this).

CPython's cyclic collector stops the whole process while it runs; with a thousand calls' objects
alive a full (generation 2) collection can take tens to hundreds of milliseconds, and every
deadline that falls due meanwhile waits for it. The peers print these figures in their
``stats {...}`` lines so a scenario can put the longest pause next to a latency tail.
"""

from __future__ import annotations

import gc
import time
from typing import Any

__all__ = ["GcStats"]


class GcStats:
    """Install a ``gc.callbacks`` hook; :meth:`snapshot` reports and resets the window's max."""

    def __init__(self) -> None:
        self._started = 0.0
        self.total = 0.0
        self.window_max = 0.0
        self.counts = [0, 0, 0]
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        self.total += pause
        self.window_max = max(self.window_max, pause)
        generation = info.get("generation", 0)
        if 0 <= generation < 3:
            self.counts[generation] += 1

    def snapshot(self) -> dict[str, Any]:
        """Totals so far and the longest pause since the previous snapshot (milliseconds)."""
        out = {
            "gc_total_ms": round(self.total * 1000, 3),
            "gc_max_ms": round(self.window_max * 1000, 3),
            "gc_collections": list(self.counts),
        }
        self.window_max = 0.0
        return out
