"""Where a call's record and transcript go: the journal interface, and an in-memory journal.

A call reports three things, synchronously and cheaply (a journal that writes to disk buffers and
flushes on its own task): it started, a final transcript line arrived, it ended (with its record,
whose transcript is complete -- the flush). The durable SQLite journal is its own piece of work; until
it lands, :class:`MemoryJournal` keeps the most recent calls in memory and the transcript lines are
also logged at debug level by the call.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the session imports the journal; the journal only names its types
    from ..providers.events import Transcript
    from ..session.state import CallRecord, CallState

__all__ = ["CallJournal", "MemoryJournal"]


class CallJournal(Protocol):
    """What the call tells the journal. Methods must not block or raise."""

    def call_started(self, state: CallState) -> None: ...

    def transcript_line(self, state: CallState, line: Transcript) -> None: ...

    def call_ended(self, record: CallRecord) -> None: ...


class MemoryJournal:
    """The last ``history`` calls, in memory: transcripts as they arrive, records when calls end."""

    def __init__(self, history: int = 256) -> None:
        self.lines: dict[str, list[Transcript]] = {}
        self.records: deque[CallRecord] = deque(maxlen=history)
        self._history = history

    def call_started(self, state: CallState) -> None:
        self.lines[state.call_id] = []
        while len(self.lines) > self._history:
            self.lines.pop(next(iter(self.lines)))

    def transcript_line(self, state: CallState, line: Transcript) -> None:
        self.lines.setdefault(state.call_id, []).append(line)

    def call_ended(self, record: CallRecord) -> None:
        self.records.append(record)
