"""Where a call's record and transcript go: the journal (sink) interface and the journals shipped.

The call reports three things, synchronously and cheaply: it started (the carrier's ``start``
arrived), a final transcript line (speech or key presses) or a tool exchange arrived, it ended
(with its :class:`~voxbridge.CallRecord`, whose transcript is complete). Any object with those
three methods -- :class:`CallJournal` -- is a sink: an embedder sends records anywhere (a queue, a
message bus, a database of their own) by passing one to ``run_call(..., journal=...)`` or
``VoxbridgeApp(journal=...)``, or several at once with :class:`FanoutJournal`.

* :class:`~voxbridge.journal.sqlite.SQLiteJournal`: durable, the default of ``voxbridge serve``
  (``--db PATH``); a writer thread, so the call never waits for the disk.
* :class:`~voxbridge.journal.postgres.PostgresJournal`: the same on PostgreSQL, shared by replicas
  (``--db postgresql://...``; needs the ``postgres`` extra).
* :class:`MemoryJournal`: the most recent calls in memory (tests, embedding, the demo).
* :class:`FanoutJournal`: every record to several journals.

:func:`journal_for` picks the durable one a ``--db`` value names.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ..metrics import Metrics
from .postgres import PostgresJournal
from .schema import JournalError, is_postgres
from .sqlite import SQLiteJournal
from .writer import JournalStatistics, WriterJournal

if TYPE_CHECKING:  # the session imports the journal; the journal only names its types
    from ..providers.events import HistoryItem
    from ..session.state import CallRecord, CallState

__all__ = [
    "CallJournal",
    "FanoutJournal",
    "JournalError",
    "JournalStatistics",
    "MemoryJournal",
    "PostgresJournal",
    "SQLiteJournal",
    "WriterJournal",
    "journal_for",
]


def journal_for(
    db: str | os.PathLike[str], *, metrics: Metrics | None = None
) -> SQLiteJournal | PostgresJournal:
    """The durable journal ``db`` names, not opened yet (``open`` does the I/O).

    Args:
        db: a ``postgresql://`` or ``postgres://`` DSN, or a libpq key/value string
            (``"host=db dbname=voxbridge"``: it begins with a libpq keyword and ``=``), for
            :class:`PostgresJournal`; anything else is a SQLite path (or ``":memory:"``) for
            :class:`SQLiteJournal`.
        metrics: where the journal counts its losses.

    Returns:
        The journal, with its defaults for everything but ``metrics``.
    """
    if is_postgres(db):
        return PostgresJournal(os.fspath(db), metrics=metrics)
    return SQLiteJournal(db, metrics=metrics)


class CallJournal(Protocol):
    """What the call tells a journal: the sink interface.

    The call invokes each method from its own trio task, synchronously, exactly once per event, in
    order: ``call_started`` (not for a call that never got as far as the carrier's ``start``, or
    was refused at it), ``transcript_line`` for each item of the conversation in the order heard
    -- a :class:`~voxbridge.providers.events.Transcript` (``role`` ``caller``, ``agent`` or
    ``dtmf``) or a :class:`~voxbridge.providers.events.ToolExchange` -- then ``call_ended`` once,
    for every call, after its teardown. The ``state`` passed is the live, mutable
    :class:`~voxbridge.session.CallState`: copy what you keep. ``record.transcript`` holds every
    item given to ``transcript_line``, in the same order.

    A method must return quickly and must not block (no disk or network I/O in the call's task:
    queue it, as :class:`~voxbridge.journal.sqlite.SQLiteJournal` does). It should not raise; if
    it does, the call counts the failure in ``voxbridge_journal_write_errors_total``, logs it and
    carries on: a journal never ends or breaks a call.
    """

    def call_started(self, state: CallState) -> None: ...

    def transcript_line(self, state: CallState, line: HistoryItem) -> None: ...

    def call_ended(self, record: CallRecord) -> None: ...


class FanoutJournal:
    """Tell every journal in ``journals`` everything, in the order given.

    A journal that raises does not stop the others: each is told, then the error is raised again
    (several: one ``ExceptionGroup``), so the call still counts and logs the failure.

    Args:
        journals: the sinks, e.g. ``FanoutJournal(sqlite_journal, my_sink)``.
    """

    def __init__(self, *journals: CallJournal) -> None:
        self.journals = journals

    def call_started(self, state: CallState) -> None:
        self._each(lambda journal: journal.call_started(state))

    def transcript_line(self, state: CallState, line: HistoryItem) -> None:
        self._each(lambda journal: journal.transcript_line(state, line))

    def call_ended(self, record: CallRecord) -> None:
        self._each(lambda journal: journal.call_ended(record))

    def _each(self, tell: Callable[[CallJournal], None]) -> None:
        errors: list[Exception] = []
        for journal in self.journals:
            try:
                tell(journal)
            except Exception as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ExceptionGroup("journal sinks failed", errors)


class MemoryJournal:
    """The last ``history`` calls, in memory: transcripts as they arrive, records when calls end.

    For tests and embedding: ``lines[call_id]`` (transcript lines and tool exchanges, kept for
    the last ``history`` calls started) and ``records`` (the last ``history`` records).
    """

    def __init__(self, history: int = 256) -> None:
        self.lines: dict[str, list[HistoryItem]] = {}
        self.records: deque[CallRecord] = deque(maxlen=history)
        self._history = history

    def call_started(self, state: CallState) -> None:
        self.lines[state.call_id] = []
        while len(self.lines) > self._history:
            self.lines.pop(next(iter(self.lines)))

    def transcript_line(self, state: CallState, line: HistoryItem) -> None:
        self.lines.setdefault(state.call_id, []).append(line)

    def call_ended(self, record: CallRecord) -> None:
        self.records.append(record)
