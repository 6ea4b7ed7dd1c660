"""The durable call journal in one SQLite file, written by one thread that no call ever waits for.

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
  end time as its ``at``) when it can. A NUL character in any text is stored as U+FFFD.
* Opening the journal marks every row still ``live`` -- a call whose end this journal never
  learned: the process died, or the end record itself could not be written (counted) -- as
  ``crashed``, with the time of the mark in ``crash_marked_at``. One voxbridge process per file:
  a second process opening the same file would mark the first one's live calls crashed (replicas
  share a PostgreSQL journal instead: :mod:`voxbridge.journal.postgres`).

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

The queue, the writer thread, batching and what happens when a write fails are shared with the
PostgreSQL journal: :mod:`voxbridge.journal.writer`. Here a locked database (another process
holding the write lock for more than ``busy_timeout``), a full disk or an I/O error
(``sqlite3.OperationalError``) loses the batch at once.
"""

from __future__ import annotations

import logging
import sqlite3

from .schema import (
    JournalError,
    is_postgres,
    migration_steps,
    shown,
    statements,
    write_statements,
)
from .writer import (
    REDACTED_PARAMETERS,
    JournalStatistics,
    Rows,
    WriterJournal,
    iso_utc,
)

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

_WRITES = write_statements("?")
_MARK_CRASHED = "UPDATE calls SET status = 'crashed', crash_marked_at = ? WHERE status = 'live'"


class SQLiteJournal(WriterJournal):
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
        options: ``metrics``, ``max_pending``, ``batch_size``, ``busy_timeout`` (seconds the
            writer waits for a lock another connection holds), ``clock``, ``redact``: see
            :class:`~voxbridge.journal.writer.WriterJournal`.

    Raises:
        ValueError: ``max_pending`` or ``batch_size`` below 1.
    """

    _connection: sqlite3.Connection | None = None

    def _open_backend(self) -> int:
        if "://" in self.path or is_postgres(self.path):  # shown without what it may hold
            raise JournalError(
                f"journal {shown(self.path)!r}: not a SQLite path (a PostgreSQL DSN opens a "
                "PostgresJournal: voxbridge.journal.journal_for)"
            )
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
            for script in migration_steps(self.path, version, SCHEMA_VERSION, SCHEMA, MIGRATIONS):
                for statement in statements(script):
                    connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            marked: int = connection.execute(_MARK_CRASHED, (iso_utc(self._clock()),)).rowcount
            connection.execute("COMMIT")
        except (sqlite3.Error, JournalError) as exc:
            connection.close()
            if isinstance(exc, JournalError):
                raise
            raise JournalError(f"cannot open the journal {self.path!r}: {exc}") from None
        self._connection = connection
        return max(marked, 0)

    def _transaction(self, rows: Rows) -> None:
        connection = self._connection
        assert connection is not None
        connection.execute("BEGIN IMMEDIATE")
        try:
            for name, values in rows:
                connection.executemany(_WRITES[name], values)
            connection.execute("COMMIT")
        except BaseException:
            try:
                connection.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # no transaction left to roll back (SQLite rolled it back itself)
            raise

    def _unavailable(self, error: Exception) -> bool:
        return isinstance(error, sqlite3.OperationalError)

    def _interrupt(self, grace: float) -> bool:
        # Stops a statement in progress; not a busy wait (sqlite3_interrupt is not checked
        # there): that ends within busy_timeout, in a daemon thread that cannot hold the exit.
        connection = self._connection
        if connection is None:
            return False
        try:
            connection.interrupt()
        except sqlite3.Error:
            return False  # closed meanwhile by the writer
        return True

    def _shutdown(self, clean: bool) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except sqlite3.Error:  # pragma: no cover - closing a connection hardly fails
                pass
