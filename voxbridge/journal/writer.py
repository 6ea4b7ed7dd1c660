"""The machinery both durable journals share: a bounded queue, one writer thread, counted losses.

:class:`WriterJournal` is the sink half of :class:`~voxbridge.journal.sqlite.SQLiteJournal` and
:class:`~voxbridge.journal.postgres.PostgresJournal`; they differ only in how they connect, the
SQL dialect of their schema and migrations, and how they find crashed calls.

Writes never block a call: :meth:`~WriterJournal.call_started`,
:meth:`~WriterJournal.transcript_line` and :meth:`~WriterJournal.call_ended` take the wall time,
build a small immutable item and ``put_nowait`` it on a bounded ``queue.Queue``; they never touch
the database, never wait, never raise. One writer thread drains the queue: it waits for an item,
takes whatever else is already queued (up to ``batch_size``), writes them in one transaction and
commits. There is no lingering: a lone transcript line is committed as soon as the writer sees it
(one round trip, one fsync); under load batches grow on their own while a commit is in progress.

When something fails, the call goes on and the loss is visible:

* the queue is full (the database is slower than the calls): the record is refused and counted.
  The last tenth of the queue is kept for end records, so a burst of transcript lines cannot cost
  a call its final row;
* a database error: the batch is rolled back. An error that fails every item alike -- the
  database is unreachable, locked for longer than ``busy_timeout``, out of disk (the driver's
  ``OperationalError``) -- loses the batch at once; any other error (a bad item) has the items
  retried one transaction each, so the bad one loses only itself. Every item not written is
  counted.

Each loss increments ``voxbridge_journal_write_errors_total`` and is logged at warning level (at
most once per :data:`WARN_INTERVAL` per kind; the rest at debug). Log lines carry counts and the
database's error, never call content (transcript text, custom parameters).

Why a dedicated thread rather than ``trio.to_thread``: the journal is called synchronously from the
call's trio task and must cost next to nothing there; with its own thread a write is one
``put_nowait``, with no trio machinery, so the journal works from any thread, inside or outside
trio (embedders). The one database connection stays with the one thread that uses it. The writer
keeps draining while trio tasks are being cancelled (a call's teardown, a server shutdown), and
:meth:`~WriterJournal.close` flushes whatever the state of the event loop. With ``trio.to_thread``
a trio task would have to pump the queue, owned by some nursery that must outlive every call's
last record, and every batch would hop to a pool thread. Periodic work a back end needs (the
PostgreSQL journal's heartbeat) runs on a thread and a connection of its own, so a slow write can
never delay it.

Stopping is bounded. :meth:`~WriterJournal.close` waits up to its ``timeout`` for the writer to
write everything queued; if the database hangs, it gives up the records still queued (counted),
asks the back end to interrupt the write in progress (PostgreSQL: a cancel request, then the
connection's socket is shut down; SQLite: ``interrupt``) and returns, at most
:data:`INTERRUPT_GRACE` times three after ``timeout``. The journal's threads are daemon threads,
so a database call that never returns (a frozen server or pooler, a hung disk) can never keep the
process alive after ``close``. A journal that is never closed is closed at interpreter exit
(``atexit``, with :data:`CLOSE_TIMEOUT`): what is queued is written, within that bound.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import math
import os
import queue
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypedDict

import attrs

from ..metrics import Metrics
from ..providers.events import ToolExchange
from .schema import JournalError

if TYPE_CHECKING:  # the session imports the journal; the journal only names its types
    from ..providers.events import HistoryItem
    from ..session.state import CallRecord, CallState

__all__ = [
    "BATCH_SIZE",
    "BUSY_TIMEOUT",
    "CLOSE_TIMEOUT",
    "INTERRUPT_GRACE",
    "MAX_PENDING",
    "REDACTED_PARAMETERS",
    "WARN_INTERVAL",
    "JournalOptions",
    "JournalStatistics",
    "WriterJournal",
    "iso_utc",
]

log = logging.getLogger("voxbridge.journal")

#: Records the queue holds at most (a few MB at worst); the last tenth is kept for end records.
MAX_PENDING = 10_000
#: Records written in one transaction at most.
BATCH_SIZE = 500
#: How long the writer waits for a lock held by another connection before a write fails.
BUSY_TIMEOUT = 5.0
#: How long :meth:`WriterJournal.close` waits for the writer to finish by default.
CLOSE_TIMEOUT = 10.0
#: Seconds each step of giving up may take once :meth:`WriterJournal.close` has waited out its
#: ``timeout``: the back end's interrupt (a cancel request), then the wait for the writer, then,
#: if it is still stuck, the wait after its connections are cut. ``close`` returns at most three
#: times this after its ``timeout``.
INTERRUPT_GRACE = 0.3
#: At most one warning per kind of loss (queue full, write failed, journal closed) per interval.
WARN_INTERVAL = 10.0
#: Custom parameters journaled as ``"(redacted)"``: the per-call token the webhook hands the stream
#: (``voxbridge.server.security.TOKEN_PARAMETER``), a credential while it is valid.
REDACTED_PARAMETERS = frozenset({"voxbridge_token"})
# How often an idle writer checks whether it should stop (close() also wakes it at once).
_POLL = 0.2
# NUL cannot be stored in PostgreSQL's text or jsonb: every back end stores U+FFFD instead, so a
# journal reads the same whichever back end wrote it (NUL is no text anyone said or typed).
_NUL = "\x00"


@attrs.frozen
class JournalStatistics:
    """A snapshot of what a journal did (see :meth:`WriterJournal.statistics`).

    Attributes:
        queued: records waiting for the writer.
        written: records committed.
        refused: records never queued: the queue was full, or the journal was closed.
        failed: records queued but not written: database errors, or still queued when the writer
            stopped.
        crashed_at_open: calls marked ``crashed`` by ``open``: left ``live`` by an earlier run
            (SQLite), or by replicas that are gone without a row in ``voxbridge_replicas``
            (PostgreSQL: they closed, or were removed, leaving calls they could not end).
        crashed_since_open: calls of replicas that stopped heartbeating, marked ``crashed`` by
            this journal's heartbeat thread after ``open`` (PostgreSQL; always 0 for SQLite).
    """

    queued: int
    written: int
    refused: int
    failed: int
    crashed_at_open: int
    crashed_since_open: int = 0


def iso_utc(wall: float) -> str:
    """``wall`` (seconds since the epoch) as the journal writes it: ISO 8601, UTC, milliseconds."""
    return (
        datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def _text(value: str) -> str:
    return value.replace(_NUL, "\N{REPLACEMENT CHARACTER}") if _NUL in value else value


def _compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _usage_json(usage: tuple[tuple[str, float], ...]) -> str:
    """``{"kind": amount}``; a whole amount as an integer (tokens are counted, not measured).
    A non-finite amount (no provider sends one) is left out: JSON has no infinity."""
    return _compact(
        {
            _text(kind): int(n) if float(n).is_integer() else n
            for kind, n in usage
            if math.isfinite(n)
        }
    )


def _line_row(call_id: str, seq: int, line: HistoryItem, wall: float) -> tuple[object, ...]:
    """A ``transcript`` row: a tool exchange as role ``tool``, its one-line text and its JSON."""
    if isinstance(line, ToolExchange):
        tool = _compact({key: _text(value) for key, value in attrs.asdict(line).items()})
        return (call_id, seq, "tool", _text(line.text), iso_utc(wall), tool)
    return (call_id, seq, _text(line.role), _text(line.text), iso_utc(wall), None)


def _cleaned(row: tuple[object, ...]) -> tuple[object, ...]:
    return tuple(_text(value) if isinstance(value, str) else value for value in row)


# --- queued items: immutable snapshots taken in the caller's thread -----------------------------


@attrs.frozen(slots=True)
class _Started:
    wall: float
    call_id: str
    call_sid: str | None
    stream_sid: str | None
    carrier: str
    provider: str
    custom_parameters: tuple[tuple[str, str], ...]
    agent: str


@attrs.frozen(slots=True)
class _Line:
    wall: float
    call_id: str
    seq: int
    line: HistoryItem


@attrs.frozen(slots=True)
class _Ended:
    wall: float
    started_wall: float  # used only if the call has no start row
    record: CallRecord


Item = _Started | _Line | _Ended  # and None: queued by close() to wake the writer
#: A batch as the back end writes it: ``(statement, rows)`` pairs, run in order with
#: ``executemany`` (statement names are those of :func:`voxbridge.journal.schema.write_statements`).
Rows = list[tuple[str, list[tuple[object, ...]]]]


class JournalOptions(TypedDict, total=False):
    """The keyword arguments every durable journal takes (see :class:`WriterJournal`)."""

    metrics: Metrics | None
    max_pending: int
    batch_size: int
    busy_timeout: float
    clock: Callable[[], float]
    redact: Collection[str]


class WriterJournal(ABC):
    """A journal whose call methods queue and whose one writer thread writes (see the module
    docstring for the guarantees). Subclasses provide the database: :meth:`_open_backend`,
    :meth:`_transaction`, :meth:`_unavailable`, :meth:`_shutdown` and, optionally, threads of their
    own (:meth:`_started`) and a way to interrupt a hung write (:meth:`_interrupt`, :meth:`_sever`).

    :meth:`call_started`, :meth:`transcript_line` and :meth:`call_ended` (the
    :class:`~voxbridge.journal.CallJournal` protocol) only queue; they may be called before
    :meth:`open` (the records wait for the writer) and from any thread. After :meth:`close` they
    refuse (counted).

    Args:
        path: the journal as logs and messages name it (never a password): a SQLite path, a
            PostgreSQL DSN without its password.
        metrics: where losses are counted (``voxbridge_journal_write_errors_total``) and calls
            marked ``crashed`` (``voxbridge_journal_crash_marks_total``); a private registry if
            omitted.
        max_pending: the queue's bound, in records.
        batch_size: records per transaction at most.
        busy_timeout: seconds the writer waits for a lock another connection holds.
        clock: the wall clock (seconds since the epoch); tests inject their own.
        redact: custom parameters whose values are not stored (the key is, with ``"(redacted)"``).

    Raises:
        ValueError: ``max_pending`` or ``batch_size`` below 1.
    """

    #: The warning ``open`` logs when it marked calls ``crashed`` (``%d``: how many).
    crash_notice: ClassVar[str] = "journal: %d calls left live by an earlier run marked crashed"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        metrics: Metrics | None = None,
        max_pending: int = MAX_PENDING,
        batch_size: int = BATCH_SIZE,
        busy_timeout: float = BUSY_TIMEOUT,
        clock: Callable[[], float] = time.time,
        redact: Collection[str] = REDACTED_PARAMETERS,
    ) -> None:
        if max_pending < 1 or batch_size < 1:
            raise ValueError("max_pending and batch_size must be at least 1")
        self.path = os.fspath(path)
        self.metrics = metrics if metrics is not None else Metrics()
        self.max_pending = max_pending
        self.batch_size = batch_size
        self.busy_timeout = busy_timeout
        self._clock = clock
        self._redact = frozenset(redact)
        # Start and transcript records are refused beyond this; end records up to max_pending.
        self._soft_limit = max_pending - max_pending // 10
        self._queue: queue.Queue[Item | None] = queue.Queue(maxsize=max_pending + 1)
        self._seq: dict[str, int] = {}  # next transcript seq per live call
        self._lock = threading.Lock()  # open/close
        self._progress = threading.Condition()  # counters below; never held during I/O
        self._queued_total = 0
        self._done_total = 0  # written or failed
        self._written = 0
        self._refused = 0
        self._failed = 0
        self._crashed_at_open = 0
        self._crashed_since_open = 0
        self._warned_at: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        # close() at interpreter exit, for a journal never closed (the threads are daemons); a
        # weak reference, so the hook keeps no journal alive.
        self._exit_hook = functools.partial(_close_at_exit, weakref.ref(self))
        self._stopping = threading.Event()
        self._abandon = threading.Event()  # close() gave up waiting: write nothing more
        self._closed = False
        self._extra: tuple[object, ...] = ()  # appended to every calls row (schema: extra)

    # --- what a back end provides ---------------------------------------------------------------

    @abstractmethod
    def _open_backend(self) -> int:
        """Connect, create or migrate the schema, mark crashed calls: blocking, in the caller's
        thread, before the writer starts. Returns how many calls were marked ``crashed``.
        Raises :class:`JournalError`."""
        raise NotImplementedError

    @abstractmethod
    def _transaction(self, rows: Rows) -> None:
        """Write ``rows`` in one transaction, all or nothing; raise on failure (writer thread)."""
        raise NotImplementedError

    @abstractmethod
    def _unavailable(self, error: Exception) -> bool:
        """Whether ``error`` fails every item alike (not worth retrying item by item)."""
        raise NotImplementedError

    @abstractmethod
    def _shutdown(self, clean: bool) -> None:
        """Release the database when the writer stops (writer thread). ``clean``: it stopped
        after writing everything, rather than being abandoned by :meth:`close`."""
        raise NotImplementedError

    def _describe(self, error: Exception) -> str:
        """``error`` for a log line: one line, and nothing of the records (no call content)."""
        return " ".join(str(error).split())

    def _started(self) -> None:
        """Start what else the back end runs once the writer runs (caller's thread, under the
        open lock); nothing by default."""
        return

    def _interrupt(self, grace: float) -> bool:
        """Ask the database to stop the write in progress: called by :meth:`close` once it has
        given up waiting, from its thread, while the writer may be blocked in the driver. Must
        return within ``grace`` seconds; returns whether it asked (nothing by default)."""
        return False

    def _sever(self) -> bool:
        """Cut the back end's connections, so a thread blocked reading one wakes up with an
        error: called by :meth:`close` if the writer is still running after :meth:`_interrupt`.
        Must not block; returns whether it cut anything (nothing by default)."""
        return False

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether the writer is running (between :meth:`open` and :meth:`close`)."""
        return self._thread is not None and not self._closed

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def open(self) -> Self:
        """Open (or create) the database, mark crashed calls, start the writer.

        Blocking I/O: from trio, ``await trio.to_thread.run_sync(journal.open)``.
        Idempotent while open.

        Returns:
            The journal itself.

        Raises:
            JournalError: the database cannot be opened or created, is not a voxbridge journal,
                or was written by a newer voxbridge; or the journal was closed.
        """
        with self._lock:
            if self._closed:
                raise JournalError(f"journal {self.path!r} is closed")
            if self._thread is not None:
                return self
            self._crashed_at_open = self._open_backend()
            self._thread = threading.Thread(target=self._run, name="voxbridge-journal", daemon=True)
            self._thread.start()
            self._started()
            atexit.register(self._exit_hook)
        self.metrics.journal_crash_marks.inc(self._crashed_at_open)
        if self._crashed_at_open:
            log.warning(self.crash_notice, self._crashed_at_open, extra={"journal": self.path})
        return self

    def close(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Write everything queued, stop the writer and close the database. Idempotent.

        Blocking: from trio, ``await trio.to_thread.run_sync(journal.close)``. Records the call
        methods receive after this are refused (counted).

        Args:
            timeout: seconds to wait for the writer to finish.

        Returns:
            Whether the writer finished within ``timeout``. ``False``: the database hangs or
            another connection holds a lock; the records still queued are given up (counted), the
            write in progress is interrupted (:meth:`_interrupt`, then :meth:`_sever`), and this
            returns at most ``3 * INTERRUPT_GRACE`` seconds after ``timeout``. A writer still
            blocked in the driver after that (SQLite in a busy wait, at most ``busy_timeout``)
            stops as soon as the call returns, and cannot hold the process's exit: it is a daemon
            thread.
        """
        with self._lock:
            self._closed = True
            atexit.unregister(self._exit_hook)
            thread = self._thread
            if thread is None:
                self._refuse_leftovers()
                return True
            self._stopping.set()
            try:
                self._queue.put_nowait(None)  # wakes the writer; the queue keeps one place for it
            except queue.Full:
                pass  # the writer is busy; it sees _stopping when the queue is empty
        thread.join(timeout)
        if not thread.is_alive():
            self._refuse_leftovers()
            return True
        # The database hangs or another connection holds a lock. The writer writes nothing more
        # (it counts what is left as lost); the write it is in is cancelled, and if it is still
        # blocked -- a frozen server or pooler answers nothing, not even a cancel -- its
        # connections are cut under it.
        self._abandon.set()
        log.warning(
            "journal: the writer did not finish within %gs; %d records still queued are given up",
            timeout,
            self._queue.qsize(),
            extra={"journal": self.path},
        )
        if self._interrupt(INTERRUPT_GRACE):
            thread.join(INTERRUPT_GRACE)
        if thread.is_alive() and self._sever():
            thread.join(INTERRUPT_GRACE)
        return False

    def _refuse_leftovers(self) -> None:
        # Records queued by a call that raced close() after the writer's last look at the queue.
        leftovers = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                leftovers += 1
        if leftovers:
            self._lost("closed", leftovers, "journal closed: %d records not written", leftovers)
            self._done(0, leftovers)

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record queued before this call has been written (or has failed).

        Blocking: for tests and shutdown paths (from trio, use ``trio.to_thread.run_sync``).
        Before :meth:`open` nothing is written, so this waits out ``timeout``.

        Returns:
            ``True`` once done, ``False`` if ``timeout`` seconds passed first.
        """
        with self._progress:
            target = self._queued_total
            return self._progress.wait_for(lambda: self._done_total >= target, timeout)

    def statistics(self) -> JournalStatistics:
        """What the journal has done so far."""
        with self._progress:
            return JournalStatistics(
                queued=self._queue.qsize(),
                written=self._written,
                refused=self._refused,
                failed=self._failed,
                crashed_at_open=self._crashed_at_open,
                crashed_since_open=self._crashed_since_open,
            )

    # --- the CallJournal protocol: queue only ---------------------------------------------------

    def call_started(self, state: CallState) -> None:
        """Queue the call's ``live`` row. Never blocks, never raises."""
        self._seq.setdefault(state.call_id, 0)
        self._put(
            _Started(
                self._clock(),
                state.call_id,
                state.carrier_call_id,  # the journal's call_sid column: the carrier's call id
                state.stream_id,
                state.carrier,
                state.provider,
                tuple(state.custom_parameters.items()),
                state.agent,
            )
        )

    def transcript_line(self, state: CallState, line: HistoryItem) -> None:
        """Queue one final transcript line or tool exchange. Never blocks, never raises."""
        call_id = state.call_id
        seq = self._seq.get(call_id, 0)
        self._seq[call_id] = seq + 1
        self._put(_Line(self._clock(), call_id, seq, line))

    def call_ended(self, record: CallRecord) -> None:
        """Queue the call's complete row (and any transcript line missing so far). Never blocks,
        never raises."""
        self._seq.pop(record.call_id, None)
        wall = self._clock()
        began = record.started_at if record.started_at is not None else record.accepted_at
        elapsed = record.ended_at - began
        started_wall = wall - elapsed if math.isfinite(elapsed) and elapsed >= 0 else wall
        self._put(_Ended(wall, started_wall, record), end=True)

    def _put(self, item: Item, *, end: bool = False) -> None:
        with self._progress:
            if self._closed:
                refused = "closed"
            elif self._queue.qsize() >= (self.max_pending if end else self._soft_limit):
                refused = "full"
            else:
                self._queue.put_nowait(item)  # never Full: only this path adds, under the lock
                self._queued_total += 1
                return
            self._refused += 1
            self._queued_total += 1
            self._done_total += 1
        self.metrics.journal_write_errors.inc()
        if refused == "closed":
            self._warn("closed", "journal closed: a record was not written")
        else:
            self._warn(
                "full",
                "journal queue full (%d records): a record was dropped; the database is slower "
                "than the calls",
                self.max_pending,
            )

    # --- the writer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        clean = False
        try:
            while True:
                if self._abandon.is_set():
                    self._refuse_leftovers()
                    return
                try:
                    first = self._queue.get(timeout=_POLL)
                except queue.Empty:
                    if self._stopping.is_set():
                        clean = True
                        return
                    continue
                batch: list[Item] = []
                if first is not None:
                    batch.append(first)
                while len(batch) < self.batch_size:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        batch.append(item)
                if batch:
                    self._write(batch)
                if self._stopping.is_set() and self._queue.empty():  # close()'s wake-up taken
                    clean = True
                    return
        finally:
            self._shutdown(clean and not self._abandon.is_set())

    def _write(self, batch: list[Item]) -> None:
        """One transaction for the batch; if a bad item fails it, one per item, so that item
        loses only itself."""
        try:
            self._transaction(self._rows(batch))
        except Exception as exc:
            first_error: Exception = exc
        else:
            self._done(len(batch), 0)
            return
        error: Exception = first_error
        # An unreachable, locked or failing database fails every item alike: retrying them one by
        # one would wait ``busy_timeout`` per item (minutes for a batch). Only other errors (a bad
        # item) are worth isolating.
        retry = [] if self._unavailable(first_error) else batch
        failed = len(batch) - len(retry)
        for item in retry:
            try:
                self._transaction(self._rows([item]))
            except Exception as exc:
                failed += 1
                error = exc
        if failed:
            self._lost(
                "write",
                failed,
                "journal write failed: %d of %d records not written (%s: %s)",
                failed,
                len(batch),
                type(error).__name__,
                self._describe(error),
            )
        self._done(len(batch) - failed, failed)

    def _rows(self, items: list[Item]) -> Rows:
        """The batch's rows by statement, in an order that keeps each call's own order: start
        rows, then lines, then end rows, then the lines an end fills in."""
        started: list[tuple[object, ...]] = []
        lines: list[tuple[object, ...]] = []
        ended: list[tuple[object, ...]] = []
        fills: list[tuple[object, ...]] = []
        for item in items:
            if type(item) is _Line:
                lines.append(_line_row(item.call_id, item.seq, item.line, item.wall))
            elif type(item) is _Started:
                started.append(
                    _cleaned(
                        (
                            item.call_id,
                            item.call_sid,
                            item.stream_sid,
                            item.carrier,
                            item.provider,
                            iso_utc(item.wall),
                            self._json(item.custom_parameters),
                            item.agent,
                            *self._extra,
                        )
                    )
                )
            else:
                assert type(item) is _Ended
                record = item.record
                ended.append(
                    _cleaned(
                        (
                            record.call_id,
                            record.call_sid,
                            record.stream_sid,
                            record.carrier,
                            record.provider,
                            iso_utc(item.started_wall),
                            iso_utc(item.wall),
                            record.duration if math.isfinite(record.duration) else None,
                            record.reason.value,
                            record.detail,
                            record.close_code,
                            bool(record.upstream_opened),
                            record.frames_from_caller,
                            record.frames_to_caller,
                            record.bytes_from_caller,
                            record.bytes_to_caller,
                            record.resumes,
                            record.barge_ins,
                            self._json(record.custom_parameters),
                            record.agent,
                            _usage_json(record.usage),
                            record.tool_calls,
                            record.dtmf_digits,
                            *self._extra,
                        )
                    )
                )
                # The record's transcript is complete: lines that could not be journaled when
                # they arrived (refused, failed) are filled in now; the others are already there.
                fills.extend(
                    _line_row(record.call_id, seq, line, item.wall)
                    for seq, line in enumerate(record.transcript)
                )
        named = (("started", started), ("line", lines), ("ended", ended), ("fill", fills))
        return [(name, rows) for name, rows in named if rows]

    def _json(self, pairs: tuple[tuple[str, str], ...]) -> str:
        return _compact(
            {_text(k): "(redacted)" if k in self._redact else _text(v) for k, v in pairs}
        )

    # --- accounting ---------------------------------------------------------------------------

    def _done(self, written: int, failed: int) -> None:
        with self._progress:
            self._written += written
            self._failed += failed
            self._done_total += written + failed
            self._progress.notify_all()

    def _lost(self, kind: str, count: int, message: str, *args: Any) -> None:
        self.metrics.journal_write_errors.inc(count)
        self._warn(kind, message, *args)

    def _warn(self, kind: str, message: str, *args: Any) -> None:
        """Warn at most once per ``WARN_INTERVAL`` per kind; debug otherwise."""
        now = time.monotonic()
        last = self._warned_at.get(kind)
        level = logging.DEBUG
        if last is None or now - last >= WARN_INTERVAL:
            self._warned_at[kind] = now
            level = logging.WARNING
        log.log(level, message, *args, extra={"journal": self.path})


def _close_at_exit(journal: weakref.ref[WriterJournal]) -> None:
    """Close a journal its owner never closed, at interpreter exit (``atexit``)."""
    alive = journal()
    if alive is not None:
        alive.close()
