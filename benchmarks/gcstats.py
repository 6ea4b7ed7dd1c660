"""Garbage-collector pauses and the cyclic garbage census, measured inside a server process (every
peer uses this).

CPython's cyclic collector stops the whole process while it runs; with a thousand calls' objects
alive a full (generation 2) collection can take tens to hundreds of milliseconds, and every
deadline that falls due meanwhile waits for it. The peers print these figures in their
``stats {...}`` lines so a scenario can put the longest pause next to a latency tail.

The census: ``gc_collected`` is how many objects the cyclic collector has freed so far, that is,
objects that reference counting could not free because they were in (or hung from) a reference
cycle. A bridge that frees each finished call by reference counting leaves none. The collector
frees garbage only when a collection of its generation happens, so a count taken at an arbitrary
moment misses what is still waiting: ``SIGUSR1`` asks for a full collection before the next
``stats`` line, which then says ``"gc_census": true`` and counts everything left until then
(that collection's pause is not counted as a pause). The soak scenario asks for one before and one
after its load: (after - before) / calls finished = objects of cyclic garbage per finished call.
"""

from __future__ import annotations

import gc
import signal
import time
from types import FrameType
from typing import Any

__all__ = ["CENSUS_SIGNAL", "GcStats"]

#: The signal that asks a peer for a full collection before its next ``stats`` line.
CENSUS_SIGNAL = signal.SIGUSR1


class GcStats:
    """Install a ``gc.callbacks`` hook and the ``CENSUS_SIGNAL`` handler (construct it in the main
    thread); :meth:`snapshot` reports and resets the window's max."""

    def __init__(self) -> None:
        self._started = 0.0
        self._forced = False  # the census's own collection: freed objects count, its pause not
        self._census_asked = False
        self.total = 0.0
        self.window_max = 0.0
        self.counts = [0, 0, 0]
        self.collected = 0
        gc.callbacks.append(self._callback)
        signal.signal(CENSUS_SIGNAL, self._ask_census)

    def _ask_census(self, signum: int, frame: FrameType | None) -> None:
        self._census_asked = True  # the collection itself runs in snapshot(), not in a handler

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.collected += info.get("collected", 0)
        if self._forced:
            return
        pause = time.perf_counter() - self._started
        self.total += pause
        self.window_max = max(self.window_max, pause)
        generation = info.get("generation", 0)
        if 0 <= generation < 3:
            self.counts[generation] += 1

    def snapshot(self) -> dict[str, Any]:
        """Totals so far and the longest pause since the previous snapshot (milliseconds), and
        the objects the collector freed so far (after a full collection if one was asked)."""
        out: dict[str, Any] = {
            "gc_total_ms": round(self.total * 1000, 3),
            "gc_max_ms": round(self.window_max * 1000, 3),
            "gc_collections": list(self.counts),
        }
        if self._census_asked:
            self._census_asked = False
            self._forced = True
            try:
                gc.collect()
            finally:
                self._forced = False
            out["gc_census"] = True
        out["gc_collected"] = self.collected
        self.window_max = 0.0
        return out
