"""The durable call journal: one SQLite file, written by one thread that no call ever waits for.

What is stored (``SCHEMA``; ``PRAGMA user_version`` is :data:`SCHEMA_VERSION`):

* ``calls``: one row per call. It is inserted with status ``live`` when the carrier's ``start``
  arrives (:meth:`SQLiteJournal.call_started`, with the call's ``agent``) and completed with status
  ``ended`` when the call has been torn down (:meth:`SQLiteJournal.call_ended`): reason, detail,
  close code, duration, frames and audio bytes each way, provider session resumes, barge-ins, the
  agent, the provider's ``usage`` (a JSON object, kind to amount: ``{"input_audio_tokens": 1200,
  "output_audio_tokens": 3400}``, ``{"billed_seconds": 42.5}``; ``{}`` when none was reported),
  ``tool_calls`` and ``dtmf_digits`` (keys pressed). A call that ended before its start row was
  written (refused at ``start``, or no ``start`` at all) still gets one complete row.
* ``transcript``: the conversation, one row per item (``call_id``, ``seq`` from 0 in the order
  the call heard them, ``role``, ``text``, ``at``), appended as each item arrives, so a line
  survives a crash later in the call. ``role`` is ``caller`` or ``agent`` for speech, ``dtmf`` for
  keys pressed (``text``: the digits, ``"12#"``), or ``tool`` for a tool call: ``text`` is
  :attr:`~voxbridge.providers.events.ToolExchange.text` (``name(arguments) -> output``) and
  ``tool`` holds the exchange as a JSON object (``call_id``, ``name``, ``arguments``, ``output``,
  ``outcome``), ``NULL`` on the other rows. A gap in ``seq`` is a line that could not be journaled
  when it arrived; the end of the call fills it in from the record's complete transcript (with the
  end time as its ``at``) when it can.
* Opening the journal marks every row still ``live`` -- a call whose end this journal never
  learned: the process died, or the end record itself could not be written (counted) -- as
  ``crashed``, with the time of the mark in ``crash_marked_at``. One voxbridge process per file:
  a second process opening the same file would mark the first one's live calls crashed.

Schema versions: opening a journal written by an older voxbridge migrates it in the same
transaction that creates the tables (:data:`MIGRATIONS`: columns are only added, so an older
voxbridge's rows read with the new columns' defaults -- ``agent`` ``NULL``, ``usage`` ``{}``,
counts 0); a journal written by a newer voxbridge is refused. Readers
(:mod:`voxbridge.journal.reader`) never migrate: they read an older journal as it is.

Timestamps are text, ISO 8601 in UTC with milliseconds (``2026-05-01T12:00:03.250Z``): readable in
any SQLite shell, ordered as text, and understood by SQLite's date functions
(``julianday(ended_at)``). They are wall-clock times taken when the journal is told (the call's own
times are trio's monotonic clock): ``started_at`` when the carrier's ``start`` arrived (for a call
that ended without a start row, the accept or start instant derived from the call's own clock),
``ended_at`` when teardown finished, ``at`` when a line arrived. ``duration_s`` is accept to end of
teardown on the call's monotonic clock (the figure of ``voxbridge_call_duration_seconds``), so it
is exact even if the wall clock jumps.

Durability: WAL mode with ``synchronous=FULL``. A transaction's commit returns only after its WAL
frames have been fsynced, so once a record is visible to another connection (committed:
"acknowledged") it survives the process being killed (SIGKILL, OOM) and an operating-system crash
or power loss, on storage that honours fsync. (``synchronous=NORMAL`` would survive the process
but could lose the last commits to a power loss.) Readers (``voxbridge calls``) never block the
writer and see only committed transactions.

Writes never block a call: :meth:`~SQLiteJournal.call_started`, :meth:`~SQLiteJournal.transcript_line`
and :meth:`~SQLiteJournal.call_ended` take the wall time, build a small immutable item and
``put_nowait`` it on a bounded ``queue.Queue``; they never touch the disk, never wait, never raise.
One writer thread drains the queue: it waits for an item, takes whatever else is already queued
(up to ``batch_size``), writes them in one transaction and commits. There is no lingering: a lone
transcript line is committed as soon as the writer sees it (one fsync, typically a few
milliseconds); under load batches grow on their own while a commit is in progress.

When something fails, the call goes on and the loss is visible:

* the queue is full (the disk is slower than the calls): the record is refused and counted. The
  last tenth of the queue is kept for end records, so a burst of transcript lines cannot cost a
  call its final row;
* a SQLite error (disk full, I/O error, a lock held too long by another process): the batch is
  rolled back and its items are retried one transaction each, so one bad item loses only itself;
  every item still failing is counted.

Each loss increments ``voxbridge_journal_write_errors_total`` and is logged at warning level (at
most once per :data:`WARN_INTERVAL` per kind; the rest at debug). Log lines carry counts and the
SQLite error, never call content (transcript text, custom parameters).

Why a dedicated thread rather than ``trio.to_thread``: the journal is called synchronously from the
call's trio task and must cost next to nothing there; with its own thread a write is one
``put_nowait``, with no trio machinery, so the journal works from any thread, inside or outside
trio (embedders). The one ``sqlite3`` connection stays with the one thread that uses it. The writer
keeps draining while trio tasks are being cancelled (a call's teardown, a server shutdown), and
:meth:`~SQLiteJournal.close` flushes whatever the state of the event loop. With ``trio.to_thread``
a trio task would have to pump the queue, owned by some nursery that must outlive every call's
last record, and every batch would hop to a pool thread.

The thread is not a daemon, so the interpreter never kills it halfway through a commit. It is
started by :meth:`~SQLiteJournal.open` and stopped, after writing everything queued, by
:meth:`~SQLiteJournal.close`; a journal that is never closed writes what is queued and exits
once the main thread has finished, so a forgotten ``close`` cannot hang the interpreter's exit.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs

from ..metrics import Metrics
from ..providers.events import ToolExchange

if TYPE_CHECKING:  # the session imports the journal; the journal only names its types
    from ..providers.events import HistoryItem
    from ..session.state import CallRecord, CallState

__all__ = [
    "MIGRATIONS",
    "REDACTED_PARAMETERS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "JournalError",
    "JournalStatistics",
    "SQLiteJournal",
    "iso_utc",
]

log = logging.getLogger("voxbridge.journal")

SCHEMA_VERSION = 2
#: Records the queue holds at most (a few MB at worst); the last tenth is kept for end records.
MAX_PENDING = 10_000
#: Records written in one transaction at most.
BATCH_SIZE = 500
#: How long the writer waits for a lock held by another connection before a write fails.
BUSY_TIMEOUT = 5.0
#: How long :meth:`SQLiteJournal.close` waits for the writer to finish by default.
CLOSE_TIMEOUT = 10.0
#: At most one warning per kind of loss (queue full, write failed, journal closed) per interval.
WARN_INTERVAL = 10.0
#: Custom parameters journaled as ``"(redacted)"``: the per-call token the webhook hands the stream
#: (``voxbridge.server.security.TOKEN_PARAMETER``), a credential while it is valid.
REDACTED_PARAMETERS = frozenset({"voxbridge_token"})
# How often an idle writer checks whether it should stop (close() also wakes it at once).
_POLL = 0.2

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY,
    call_sid TEXT,
    stream_sid TEXT,
    carrier TEXT NOT NULL,
    provider TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('live', 'ended', 'crashed')),
    started_at TEXT NOT NULL,
    ended_at TEXT,
    crash_marked_at TEXT,
    duration_s REAL,
    reason TEXT,
    detail TEXT,
    close_code INTEGER,
    upstream_opened INTEGER,
    frames_from_caller INTEGER NOT NULL DEFAULT 0,
    frames_to_caller INTEGER NOT NULL DEFAULT 0,
    bytes_from_caller INTEGER NOT NULL DEFAULT 0,
    bytes_to_caller INTEGER NOT NULL DEFAULT 0,
    resumes INTEGER NOT NULL DEFAULT 0,
    barge_ins INTEGER NOT NULL DEFAULT 0,
    custom_parameters TEXT NOT NULL DEFAULT '{}',
    agent TEXT,
    usage TEXT NOT NULL DEFAULT '{}',
    tool_calls INTEGER NOT NULL DEFAULT 0,
    dtmf_digits INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS calls_by_started_at ON calls (started_at);
CREATE INDEX IF NOT EXISTS calls_by_call_sid ON calls (call_sid);
CREATE INDEX IF NOT EXISTS calls_live ON calls (status) WHERE status = 'live';
CREATE TABLE IF NOT EXISTS transcript (
    call_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    at TEXT NOT NULL,
    tool TEXT,
    PRIMARY KEY (call_id, seq)
) WITHOUT ROWID;
"""

#: ``MIGRATIONS[n]`` brings a journal from schema version ``n`` to ``n + 1`` (a new journal is
#: created at :data:`SCHEMA_VERSION` by :data:`SCHEMA`). The columns they add are the ones at the
#: end of each table in ``SCHEMA``, in the same order, so a migrated journal and a new one have the
#: same tables (tests/test_journal_sqlite.py compares them).
MIGRATIONS: dict[int, str] = {
    1: """
ALTER TABLE calls ADD COLUMN agent TEXT;
ALTER TABLE calls ADD COLUMN usage TEXT NOT NULL DEFAULT '{}';
ALTER TABLE calls ADD COLUMN tool_calls INTEGER NOT NULL DEFAULT 0;
ALTER TABLE calls ADD COLUMN dtmf_digits INTEGER NOT NULL DEFAULT 0;
ALTER TABLE transcript ADD COLUMN tool TEXT;
""",
}

_INSERT_STARTED = """
INSERT INTO calls (call_id, call_sid, stream_sid, carrier, provider, status, started_at,
                   custom_parameters, agent)
VALUES (?, ?, ?, ?, ?, 'live', ?, ?, ?)
ON CONFLICT (call_id) DO NOTHING
"""
_INSERT_LINE = (
    "INSERT INTO transcript (call_id, seq, role, text, at, tool) VALUES (?, ?, ?, ?, ?, ?)"
)
_FILL_LINE = (
    "INSERT OR IGNORE INTO transcript (call_id, seq, role, text, at, tool) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_UPSERT_ENDED = """
INSERT INTO calls (call_id, call_sid, stream_sid, carrier, provider, status, started_at, ended_at,
                   duration_s, reason, detail, close_code, upstream_opened, frames_from_caller,
                   frames_to_caller, bytes_from_caller, bytes_to_caller, resumes, barge_ins,
                   custom_parameters, agent, usage, tool_calls, dtmf_digits)
VALUES (?, ?, ?, ?, ?, 'ended', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (call_id) DO UPDATE SET
    call_sid = excluded.call_sid,
    stream_sid = excluded.stream_sid,
    carrier = excluded.carrier,
    provider = excluded.provider,
    status = 'ended',
    started_at = calls.started_at,
    ended_at = excluded.ended_at,
    duration_s = excluded.duration_s,
    reason = excluded.reason,
    detail = excluded.detail,
    close_code = excluded.close_code,
    upstream_opened = excluded.upstream_opened,
    frames_from_caller = excluded.frames_from_caller,
    frames_to_caller = excluded.frames_to_caller,
    bytes_from_caller = excluded.bytes_from_caller,
    bytes_to_caller = excluded.bytes_to_caller,
    resumes = excluded.resumes,
    barge_ins = excluded.barge_ins,
    custom_parameters = excluded.custom_parameters,
    agent = excluded.agent,
    usage = excluded.usage,
    tool_calls = excluded.tool_calls,
    dtmf_digits = excluded.dtmf_digits
"""
_MARK_CRASHED = "UPDATE calls SET status = 'crashed', crash_marked_at = ? WHERE status = 'live'"


class JournalError(Exception):
    """The journal cannot be opened or read: the message names the path and says why."""


@attrs.frozen
class JournalStatistics:
    """A snapshot of what a :class:`SQLiteJournal` did (see :meth:`SQLiteJournal.statistics`).

    Attributes:
        queued: records waiting for the writer.
        written: records committed.
        refused: records never queued: the queue was full, or the journal was closed.
        failed: records queued but not written: SQLite errors, or still queued when the writer
            stopped.
        crashed_at_open: calls left ``live`` by an earlier run, marked ``crashed`` by ``open``.
    """

    queued: int
    written: int
    refused: int
    failed: int
    crashed_at_open: int


def iso_utc(wall: float) -> str:
    """``wall`` (seconds since the epoch) as the journal writes it: ISO 8601, UTC, milliseconds."""
    return (
        datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def _compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _usage_json(usage: tuple[tuple[str, float], ...]) -> str:
    """``{"kind": amount}``; a whole amount as an integer (tokens are counted, not measured).
    A non-finite amount (no provider sends one) is left out: JSON has no infinity."""
    return _compact(
        {kind: int(n) if float(n).is_integer() else n for kind, n in usage if math.isfinite(n)}
    )


def _line_row(
    call_id: str, seq: int, line: HistoryItem, wall: float
) -> tuple[str, int, str, str, str, str | None]:
    """A ``transcript`` row: a tool exchange as role ``tool``, its one-line text and its JSON."""
    if isinstance(line, ToolExchange):
        tool = _compact(attrs.asdict(line))
        return (call_id, seq, "tool", line.text, iso_utc(wall), tool)
    return (call_id, seq, line.role, line.text, iso_utc(wall), None)


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


_Item = _Started | _Line | _Ended  # and None: queued by close() to wake the writer


class SQLiteJournal:
    """The SQLite call journal (see the module docstring for the schema and the guarantees).

    Use it as a context manager, or call :meth:`open` and :meth:`close`::

        with SQLiteJournal("voxbridge.db", metrics=metrics) as journal:
            await run_call(carrier, provider, journal=journal)

    :meth:`call_started`, :meth:`transcript_line` and :meth:`call_ended` (the
    :class:`~voxbridge.journal.CallJournal` protocol) only queue; they may be called before
    :meth:`open` (the records wait for the writer) and from any thread. After :meth:`close` they
    refuse (counted).

    Args:
        path: the database file (created if missing, with its directory's permissions), or
            ``":memory:"`` for a journal that lives only in the writer (nothing durable; for trials).
        metrics: where losses are counted (``voxbridge_journal_write_errors_total``); a private
            registry if omitted.
        max_pending: the queue's bound, in records.
        batch_size: records per transaction at most.
        busy_timeout: seconds the writer waits for a lock another connection holds.
        clock: the wall clock (seconds since the epoch); tests inject their own.
        redact: custom parameters whose values are not stored (the key is, with ``"(redacted)"``).
    """

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
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=max_pending + 1)
        self._seq: dict[str, int] = {}  # next transcript seq per live call
        self._lock = threading.Lock()  # open/close
        self._progress = threading.Condition()  # counters below; never held during I/O
        self._queued_total = 0
        self._done_total = 0  # written or failed
        self._written = 0
        self._refused = 0
        self._failed = 0
        self._crashed_at_open = 0
        self._warned_at: dict[str, float] = {}
        self._connection: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._abandon = threading.Event()  # close() gave up waiting: write nothing more
        self._closed = False

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether the writer is running (between :meth:`open` and :meth:`close`)."""
        return self._thread is not None and not self._closed

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def open(self) -> SQLiteJournal:
        """Open (or create) the database, mark calls left ``live`` as ``crashed``, start the writer.

        Blocking disk I/O: from trio, ``await trio.to_thread.run_sync(journal.open)``.
        Idempotent while open.

        Returns:
            The journal itself.

        Raises:
            JournalError: the file cannot be opened or created, is not a SQLite database, or was
                written by a newer voxbridge; or the journal was closed.
        """
        with self._lock:
            if self._closed:
                raise JournalError(f"journal {self.path!r} is closed")
            if self._thread is not None:
                return self
            if "://" in self.path:
                raise JournalError(
                    f"journal {self.path!r}: only SQLite paths are supported (postgresql:// "
                    "journals are not built yet)"
                )
            connection = self._connect()
            self._connection = connection
            self._thread = threading.Thread(
                target=self._run, name="voxbridge-journal", daemon=False
            )
            self._thread.start()
        if self._crashed_at_open:
            log.warning(
                "journal: %d calls left live by an earlier run marked crashed",
                self._crashed_at_open,
                extra={"journal": self.path},
            )
        return self

    def _connect(self) -> sqlite3.Connection:
        try:
            connection = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout
            )
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open the journal {self.path!r}: {exc}") from None
        try:
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode not in ("wal", "memory"):  # e.g. a network filesystem without shared memory
                log.warning(
                    "journal: WAL mode unavailable (journal_mode=%s): writes stay durable, but "
                    "readers and the writer wait for each other",
                    mode,
                    extra={"journal": self.path},
                )
            connection.execute("PRAGMA synchronous = FULL")
            # The version is read inside the write transaction, so two processes opening an old
            # journal at once migrate it once.
            connection.execute("BEGIN IMMEDIATE")
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise JournalError(
                    f"journal {self.path!r} has schema version {version}, written by a newer "
                    f"voxbridge (this one knows {SCHEMA_VERSION})"
                )
            steps = (
                [SCHEMA]
                if version == 0
                else [MIGRATIONS[v] for v in range(version, SCHEMA_VERSION)]
            )
            for script in steps:
                for statement in script.split(";"):
                    if statement.strip():
                        connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            marked = connection.execute(_MARK_CRASHED, (iso_utc(self._clock()),)).rowcount
            connection.execute("COMMIT")
        except (sqlite3.Error, JournalError) as exc:
            connection.close()
            if isinstance(exc, JournalError):
                raise
            raise JournalError(f"cannot open the journal {self.path!r}: {exc}") from None
        self._crashed_at_open = max(marked, 0)
        return connection

    def close(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Write everything queued, stop the writer and close the database. Idempotent.

        Blocking: from trio, ``await trio.to_thread.run_sync(journal.close)``. Records the call
        methods receive after this are refused (counted).

        Args:
            timeout: seconds to wait for the writer to finish.

        Returns:
            Whether the writer finished within ``timeout`` (``False``: the disk hangs; the
            records still queued are written if it recovers before the process exits).
        """
        with self._lock:
            self._closed = True
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
        if thread.is_alive():
            # The disk hangs or another process holds the lock: the writer finishes the write it
            # is in (at most ``busy_timeout`` on a lock) and then counts what is left as lost and
            # exits, so it cannot hold the process's exit for longer than that.
            self._abandon.set()
            log.warning(
                "journal: the writer did not finish within %gs; %d records still queued are"
                " given up",
                timeout,
                self._queue.qsize(),
                extra={"journal": self.path},
            )
            return False
        self._refuse_leftovers()
        return True

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

    def __enter__(self) -> SQLiteJournal:
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
            )

    # --- the CallJournal protocol: queue only ---------------------------------------------------

    def call_started(self, state: CallState) -> None:
        """Queue the call's ``live`` row. Never blocks, never raises."""
        self._seq.setdefault(state.call_id, 0)
        self._put(
            _Started(
                self._clock(),
                state.call_id,
                state.call_sid,
                state.stream_sid,
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

    def _put(self, item: _Item, *, end: bool = False) -> None:
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
                "journal queue full (%d records): a record was dropped; the disk is slower "
                "than the calls",
                self.max_pending,
            )

    # --- the writer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        connection = self._connection
        assert connection is not None
        main = threading.main_thread()
        try:
            while True:
                if self._abandon.is_set():
                    self._refuse_leftovers()
                    return
                try:
                    first = self._queue.get(timeout=_POLL)
                except queue.Empty:
                    if self._stopping.is_set() or not main.is_alive():
                        return
                    continue
                batch: list[_Item] = []
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
                    self._write(connection, batch)
                elif self._stopping.is_set():
                    return
        finally:
            try:
                connection.close()
            except sqlite3.Error:  # pragma: no cover - closing a connection hardly fails
                pass

    def _write(self, connection: sqlite3.Connection, batch: list[_Item]) -> None:
        """One transaction for the batch; if a bad item fails it, one per item, so that item
        loses only itself."""
        try:
            self._transaction(connection, batch)
        except Exception as exc:
            first_error: BaseException = exc
        else:
            self._done(len(batch), 0)
            return
        error: BaseException = first_error
        # A locked, busy or failing database fails every item alike: retrying them one by one
        # would wait ``busy_timeout`` per item (minutes for a batch). Only other errors (a bad
        # item) are worth isolating.
        retry = batch if not isinstance(first_error, sqlite3.OperationalError) else []
        failed = len(batch) - len(retry)
        for item in retry:
            try:
                self._transaction(connection, [item])
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
                error,
            )
            log.debug("journal write failure", exc_info=error)
        self._done(len(batch) - failed, failed)

    def _transaction(self, connection: sqlite3.Connection, items: list[_Item]) -> None:
        connection.execute("BEGIN IMMEDIATE")
        try:
            for item in items:
                self._apply(connection, item)
            connection.execute("COMMIT")
        except BaseException:
            try:
                connection.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # no transaction left to roll back (SQLite rolled it back itself)
            raise

    def _json(self, pairs: tuple[tuple[str, str], ...]) -> str:
        parameters = {k: "(redacted)" if k in self._redact else v for k, v in pairs}
        return json.dumps(parameters, ensure_ascii=False, separators=(",", ":"))

    def _apply(self, connection: sqlite3.Connection, item: _Item) -> None:
        if type(item) is _Line:
            connection.execute(
                _INSERT_LINE, _line_row(item.call_id, item.seq, item.line, item.wall)
            )
        elif type(item) is _Started:
            connection.execute(
                _INSERT_STARTED,
                (
                    item.call_id,
                    item.call_sid,
                    item.stream_sid,
                    item.carrier,
                    item.provider,
                    iso_utc(item.wall),
                    self._json(item.custom_parameters),
                    item.agent,
                ),
            )
        else:
            assert type(item) is _Ended
            record, ended = item.record, iso_utc(item.wall)
            connection.execute(
                _UPSERT_ENDED,
                (
                    record.call_id,
                    record.call_sid,
                    record.stream_sid,
                    record.carrier,
                    record.provider,
                    iso_utc(item.started_wall),
                    ended,
                    record.duration if math.isfinite(record.duration) else None,
                    record.reason.value,
                    record.detail,
                    record.close_code,
                    int(record.upstream_opened),
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
                ),
            )
            # The record's transcript is complete: lines that could not be journaled when they
            # arrived (refused, failed) are filled in now; the others are already there.
            connection.executemany(
                _FILL_LINE,
                [
                    _line_row(record.call_id, seq, line, item.wall)
                    for seq, line in enumerate(record.transcript)
                ],
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
        """Warn at most once per ``WARN_INTERVAL`` per kind of loss; debug otherwise."""
        now = time.monotonic()
        last = self._warned_at.get(kind)
        level = logging.DEBUG
        if last is None or now - last >= WARN_INTERVAL:
            self._warned_at[kind] = now
            level = logging.WARNING
        log.log(level, message, *args, extra={"journal": self.path})
