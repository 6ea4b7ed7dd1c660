"""The shared call journal on PostgreSQL: every replica writes its calls to one database.

Selected by ``--db postgresql://...`` (or ``postgres://``; :func:`voxbridge.journal.journal_for`).
It is the SQLite journal's sink -- the same queue, writer thread, batching and counted losses
(:mod:`voxbridge.journal.writer`) -- with psycopg 3 on the writer thread, and the same
``calls`` and ``transcript`` tables in PostgreSQL's types: ``timestamptz`` for ``started_at``,
``ended_at``, ``crash_marked_at`` and ``at``; ``jsonb`` for ``custom_parameters``, ``usage`` and
``tool``; ``boolean`` for ``upstream_opened``. Each ``calls`` row also names the replica that wrote
it (``replica_id``). The tables are created in the DSN's current schema (``search_path``; ``public``
unless the DSN says otherwise, e.g. ``?options=-csearch_path%3Dvoxbridge``).

Schema versions: the ``voxbridge_schema`` table holds one row per version a journal has reached
(``version``, ``applied_at``); the journal's version is the greatest. :meth:`PostgresJournal.open`
creates or migrates the schema (:data:`SCHEMA`, :data:`MIGRATIONS`) in one transaction that holds
a transaction-level advisory lock (:data:`LOCK_KEY`) from before it reads the version until it
commits: replicas starting together take turns, the first creates or migrates, the others find the
version current (waiting at most :data:`OPEN_TIMEOUT`). PostgreSQL's DDL is transactional, so a
migration that fails leaves the journal as it was. A journal that a newer voxbridge wrote is
refused, as in SQLite.

Crashed calls, across replicas. A ``live`` row is a call some replica is bridging; if that replica
dies (SIGKILL, OOM, a node lost), nobody will end it. So each journal registers a replica row in
``voxbridge_replicas`` (``replica_id``, ``host``, ``pid``, ``started_at``, ``heartbeat_at``) when it
opens, and its writer thread refreshes ``heartbeat_at`` every ``heartbeat`` seconds (the
database's clock, so the replicas' clocks need not agree). At open and after each heartbeat, a
replica runs one statement that deletes the replica rows whose heartbeat is older than
``stale_after`` (3 heartbeats by default) and marks ``crashed`` -- with ``crash_marked_at`` from
its own wall clock -- every ``live`` call of those replicas and every ``live`` call whose replica
has no row (a replica that closed with calls it could not end). The heartbeat's marking runs only
if the advisory lock is free (else another replica is doing it or migrating), so two replicas
never mark at once. A replica that closes cleanly deletes its own row after writing everything
queued. A replica that was only slow -- no heartbeat for longer than ``stale_after``, a long pause
or partition -- finds its row gone at its next heartbeat, registers again and logs a warning; its
calls were marked ``crashed`` meanwhile, and those that end later are completed as ``ended``
(keeping ``crash_marked_at``).

Connections: the writer holds one connection (autocommit; one explicit transaction per batch), with
``lock_timeout`` set to ``busy_timeout`` and ``statement_timeout`` to :data:`STATEMENT_TIMEOUT`,
and libpq's ``connect_timeout`` and TCP keepalive and ``tcp_user_timeout`` defaults (a DSN's own
values win), so a write to a database that stopped answering fails within bounded time. A lost
connection (the server restarted, a failover, ``pg_terminate_backend``) fails the batch in
progress, which is counted, and the next batch or heartbeat connects again. Durability is the
server's: a committed record is as safe as the server's ``fsync`` and replication make it.

The DSN may carry a password; :attr:`PostgresJournal.path`, logs and errors show it as ``***``
(:func:`redact_dsn`). Prefer libpq's ``PGPASSWORD``/``PGPASSFILE`` to a password in ``--db``.
psycopg is imported when a journal first needs it, so this module imports without the
``postgres`` extra; opening a journal without it is a :class:`JournalError` that says what to
install.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Unpack
from urllib.parse import urlsplit

from .schema import JournalError, migration_steps, statements, write_statements
from .writer import JournalOptions, Rows, WriterJournal, iso_utc

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "CONNECT_TIMEOUT",
    "HEARTBEAT",
    "LOCK_KEY",
    "MIGRATIONS",
    "OPEN_TIMEOUT",
    "SCHEMA",
    "SCHEMA_VERSION",
    "STALE_HEARTBEATS",
    "STATEMENT_TIMEOUT",
    "PostgresJournal",
    "connect",
    "error_line",
    "redact_dsn",
    "require_psycopg",
]

log = logging.getLogger("voxbridge.journal")

SCHEMA_VERSION = 1
#: Seconds between a replica's heartbeats (``voxbridge_replicas.heartbeat_at``).
HEARTBEAT = 10.0
#: A replica whose last heartbeat is older than this many heartbeats is taken for dead.
STALE_HEARTBEATS = 3
#: Seconds libpq waits to connect (``connect_timeout``, unless the DSN sets it).
CONNECT_TIMEOUT = 5.0
#: Seconds any one statement of the writer may run (``statement_timeout``).
STATEMENT_TIMEOUT = 30.0
#: Seconds an opening journal may wait for another replica's migration (the advisory lock), and
#: any statement of its own migration may run.
OPEN_TIMEOUT = 60.0
#: The advisory lock key under which schemas are created and migrated and crashed calls marked
#: (``pg_advisory_xact_lock``): "voxbrid" in ASCII.
LOCK_KEY = int.from_bytes(b"voxbrid", "big")
#: What a writer connection adds to the DSN unless it says otherwise: a dead peer is noticed in
#: about 20 s even mid-statement (``tcp_user_timeout``: unacknowledged data; keepalives: silence).
_CONNECTION_DEFAULTS = {
    "fallback_application_name": "voxbridge-journal",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "20000",
}

SCHEMA = """
CREATE TABLE voxbridge_schema (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE voxbridge_replicas (
    replica_id text PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    started_at timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL
);
CREATE TABLE calls (
    call_id text PRIMARY KEY,
    call_sid text,
    stream_sid text,
    carrier text NOT NULL,
    provider text NOT NULL,
    status text NOT NULL CHECK (status IN ('live', 'ended', 'crashed')),
    started_at timestamptz NOT NULL,
    ended_at timestamptz,
    crash_marked_at timestamptz,
    duration_s double precision,
    reason text,
    detail text,
    close_code integer,
    upstream_opened boolean,
    frames_from_caller bigint NOT NULL DEFAULT 0,
    frames_to_caller bigint NOT NULL DEFAULT 0,
    bytes_from_caller bigint NOT NULL DEFAULT 0,
    bytes_to_caller bigint NOT NULL DEFAULT 0,
    resumes integer NOT NULL DEFAULT 0,
    barge_ins integer NOT NULL DEFAULT 0,
    custom_parameters jsonb NOT NULL DEFAULT '{}',
    agent text,
    usage jsonb NOT NULL DEFAULT '{}',
    tool_calls integer NOT NULL DEFAULT 0,
    dtmf_digits integer NOT NULL DEFAULT 0,
    replica_id text
);
CREATE INDEX calls_by_started_at ON calls (started_at);
CREATE INDEX calls_by_call_sid ON calls (call_sid);
CREATE INDEX calls_live ON calls (replica_id) WHERE status = 'live';
CREATE TABLE transcript (
    call_id text NOT NULL,
    seq integer NOT NULL,
    role text NOT NULL,
    text text NOT NULL,
    at timestamptz NOT NULL,
    tool jsonb,
    PRIMARY KEY (call_id, seq)
)
"""

#: ``MIGRATIONS[n]`` brings a journal from schema version ``n`` to ``n + 1``; none yet: version 1
#: is the first PostgreSQL schema.
MIGRATIONS: dict[int, str] = {}

_WRITES = write_statements("%s", ("replica_id",))
_VERSION = "SELECT coalesce(max(version), 0) FROM voxbridge_schema"
_HEARTBEAT = "UPDATE voxbridge_replicas SET heartbeat_at = now() WHERE replica_id = %s"
_REGISTER = """
INSERT INTO voxbridge_replicas (replica_id, host, pid, started_at, heartbeat_at)
VALUES (%s, %s, %s, %s, now())
"""
# One statement: the replicas silent for longer than the bound are removed, and the live calls of
# those and of replicas already gone are marked. (The UPDATE sees the replica rows as they were
# before the DELETE, hence both conditions.)
_MARK_CRASHED = """
WITH dead AS (
    DELETE FROM voxbridge_replicas
    WHERE heartbeat_at < now() - make_interval(secs => %(stale)s)
    RETURNING replica_id
), marked AS (
    UPDATE calls SET status = 'crashed', crash_marked_at = %(now)s
    WHERE status = 'live' AND (
        replica_id IN (SELECT replica_id FROM dead)
        OR NOT EXISTS (SELECT 1 FROM voxbridge_replicas AS r WHERE r.replica_id = calls.replica_id)
    )
    RETURNING call_id
)
SELECT (SELECT count(*) FROM marked), (SELECT count(*) FROM dead)
"""
_DEREGISTER = "DELETE FROM voxbridge_replicas WHERE replica_id = %s"


def redact_dsn(dsn: str) -> str:
    """``dsn`` with its password, if any, as ``***`` (in the URI's user part or its query); a
    URI too malformed to split as ``postgresql://(malformed)``."""
    try:
        parts = urlsplit(dsn)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return f"{dsn.partition('://')[0]}://(malformed)"
    netloc = parts.netloc
    user, at, hosts = netloc.rpartition("@")
    if at and ":" in user:
        netloc = f"{user.partition(':')[0]}:***@{hosts}"
    query = "&".join(
        "password=***" if pair.lower().startswith("password=") else pair
        for pair in parts.query.split("&")
    )
    tail = f"?{query}" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{tail}"  # (urlunsplit drops an empty "//")


def require_psycopg() -> Any:
    """The psycopg module (imported on first use: the ``postgres`` extra is optional).

    Raises:
        JournalError: psycopg is not installed.
    """
    try:
        import psycopg
    except ImportError:
        raise JournalError(
            "a postgresql:// journal needs psycopg: pip install 'voxbridge[postgres]'"
        ) from None
    return psycopg


def error_line(error: BaseException) -> str:
    """``error`` for a log line or a message: the server's primary message on one line (its
    DETAIL -- a failing row's values -- and CONTEXT -- parameters -- may quote call content,
    which logs never show), else the client's message."""
    primary = getattr(getattr(error, "diag", None), "message_primary", None)
    return " ".join(str(primary or error).split())


def connect(
    dsn: str, *, connect_timeout: float = CONNECT_TIMEOUT, **settings: str
) -> psycopg.Connection[tuple[Any, ...]]:
    """A new autocommit connection to ``dsn``, with the journal's connection defaults.

    Args:
        dsn: a ``postgresql://`` URI (libpq's ``PG*`` environment variables fill in the rest).
        connect_timeout: seconds to connect, unless the DSN sets ``connect_timeout``.
        settings: session settings (``lock_timeout="5000"``: the values ``SET`` takes).

    Raises:
        JournalError: psycopg is not installed, or the DSN is malformed.
        psycopg.OperationalError: the server cannot be reached or refused the connection.
    """
    pg = require_psycopg()
    try:
        params = pg.conninfo.conninfo_to_dict(dsn)
    except pg.ProgrammingError:  # libpq's message quotes the DSN, password and all
        raise JournalError(
            f"not a PostgreSQL DSN: {redact_dsn(dsn)!r} (libpq cannot parse it; see its "
            "'Connection URIs')"
        ) from None
    params.setdefault("connect_timeout", str(max(2, math.ceil(connect_timeout))))
    for key, value in _CONNECTION_DEFAULTS.items():
        params.setdefault(key, value)
    connection: psycopg.Connection[tuple[Any, ...]] = pg.connect(**params, autocommit=True)
    try:
        for name, value in settings.items():
            connection.execute("SELECT set_config(%s, %s, false)", (name, value))
    except BaseException:
        connection.close()
        raise
    return connection


class PostgresJournal(WriterJournal):
    """The PostgreSQL call journal, shared by replicas (see the module docstring for the schema
    and the crash rule).

    Use it as :class:`~voxbridge.journal.SQLiteJournal` is used::

        with PostgresJournal("postgresql://voxbridge@db/voxbridge", metrics=metrics) as journal:
            await run_call(carrier, provider, journal=journal)

    Args:
        dsn: a ``postgresql://`` (or ``postgres://``) URI. The database must exist; the tables are
            created in its current schema by the first :meth:`open`.
        heartbeat: seconds between this replica's heartbeats.
        stale_after: seconds without a heartbeat after which a replica is taken for dead and its
            live calls are marked ``crashed`` (default ``STALE_HEARTBEATS * heartbeat``). Give
            every replica the same values.
        connect_timeout: seconds to connect (unless the DSN sets ``connect_timeout``).
        options: ``metrics``, ``max_pending``, ``batch_size``, ``busy_timeout`` (seconds a write
            waits for a lock another connection holds: ``lock_timeout``), ``clock`` (the wall
            clock of the call timestamps and ``crash_marked_at``; heartbeats use the database's
            clock), ``redact``: see :class:`~voxbridge.journal.writer.WriterJournal`.

    Raises:
        ValueError: a bound below 1, ``heartbeat`` not positive, or ``stale_after`` not greater
            than ``heartbeat``.
    """

    crash_notice: ClassVar[str] = (
        "journal: %d calls left live by replicas that are gone marked crashed"
    )
    #: The version this class writes, the script that creates it and the migrations up to it
    #: (class attributes, so a test can describe a later version).
    schema_version: ClassVar[int] = SCHEMA_VERSION
    schema: ClassVar[str] = SCHEMA
    migrations: ClassVar[Mapping[int, str]] = MIGRATIONS

    def __init__(
        self,
        dsn: str,
        *,
        heartbeat: float = HEARTBEAT,
        stale_after: float | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        **options: Unpack[JournalOptions],
    ) -> None:
        super().__init__(redact_dsn(dsn), **options)
        stale = STALE_HEARTBEATS * heartbeat if stale_after is None else stale_after
        if not heartbeat > 0 or not stale > heartbeat:
            raise ValueError("heartbeat must be positive and stale_after greater than heartbeat")
        self.heartbeat = heartbeat
        self.stale_after = stale
        self.connect_timeout = connect_timeout
        #: This journal's row in ``voxbridge_replicas`` (and the ``replica_id`` of its calls).
        self.replica_id = uuid.uuid4().hex[:16]
        self._dsn = dsn
        self._host = socket.gethostname()
        self._started = iso_utc(self._clock())
        self._extra = (self.replica_id,)
        self._connection: psycopg.Connection[tuple[Any, ...]] | None = None
        self._next_beat = 0.0

    # --- open: schema and crash marking under the advisory lock -------------------------------

    def _open_backend(self) -> int:
        psycopg = require_psycopg()
        try:
            connection = self._session()
        except psycopg.Error as exc:
            raise JournalError(
                f"cannot open the journal {self.path!r}: {error_line(exc)}"
            ) from None
        try:
            with connection.transaction(), connection.cursor() as cursor:
                bound = f"{OPEN_TIMEOUT * 1000:.0f}"
                cursor.execute(
                    "SELECT set_config('lock_timeout', %s, true), "
                    "set_config('statement_timeout', %s, true)",
                    (bound, bound),
                )
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                cursor.execute("SELECT to_regclass('voxbridge_schema') IS NOT NULL")
                version = 0
                if _fetch(cursor):  # a journal: its version, else an empty database
                    version = cursor.execute(_VERSION).fetchone()[0]  # type: ignore[index]
                target = self.schema_version
                steps = migration_steps(self.path, version, target, self.schema, self.migrations)
                for script in steps:
                    for statement in statements(script):
                        cursor.execute(statement)
                if steps:
                    cursor.execute("INSERT INTO voxbridge_schema (version) VALUES (%s)", (target,))
                self._register(cursor, again=False)
                marked, _ = self._mark_crashed(cursor)
        except (psycopg.Error, JournalError) as exc:
            connection.close()
            if isinstance(exc, JournalError):
                raise
            raise JournalError(
                f"cannot open the journal {self.path!r}: {error_line(exc)}"
            ) from None
        self._connection = connection
        self._next_beat = time.monotonic() + self.heartbeat
        return marked

    def _session(self) -> psycopg.Connection[tuple[Any, ...]]:
        return connect(
            self._dsn,
            connect_timeout=self.connect_timeout,
            lock_timeout=f"{self.busy_timeout * 1000:.0f}",
            statement_timeout=f"{STATEMENT_TIMEOUT * 1000:.0f}",
        )

    def _register(self, cursor: psycopg.Cursor[tuple[Any, ...]], *, again: bool) -> None:
        """Refresh this replica's heartbeat, or insert its row if it has none."""
        if cursor.execute(_HEARTBEAT, (self.replica_id,)).rowcount:
            return
        cursor.execute(_REGISTER, (self.replica_id, self._host, os.getpid(), self._started))
        if again:
            log.warning(
                "journal: this replica's row was gone (taken for dead after %gs without a "
                "heartbeat): registered again; its calls live at the time were marked crashed",
                self.stale_after,
                extra={"journal": self.path},
            )

    def _mark_crashed(self, cursor: psycopg.Cursor[tuple[Any, ...]]) -> tuple[int, int]:
        """Remove the stale replicas, mark the calls left live: ``(calls, replicas)``."""
        cursor.execute(_MARK_CRASHED, {"stale": self.stale_after, "now": iso_utc(self._clock())})
        calls, replicas = cursor.fetchone() or (0, 0)
        return int(calls), int(replicas)

    # --- the writer thread ----------------------------------------------------------------------

    def _connected(self) -> psycopg.Connection[tuple[Any, ...]]:
        """The writer's connection, connecting again if it was lost (raises OperationalError)."""
        connection = self._connection
        if connection is not None and not connection.closed and not connection.broken:
            return connection
        self._connection = None
        if connection is not None:
            connection.close()
        self._connection = self._session()
        log.info("journal: connected again", extra={"journal": self.path})
        return self._connection

    def _transaction(self, rows: Rows) -> None:
        connection = self._connected()
        with connection.transaction(), connection.cursor() as cursor:
            for name, values in rows:
                cursor.executemany(_WRITES[name], values)

    def _describe(self, error: Exception) -> str:
        return error_line(error)

    def _unavailable(self, error: Exception) -> bool:
        # connection lost or refused, lock_timeout, statement_timeout, server shutting down
        return isinstance(error, require_psycopg().OperationalError)

    def _maintain(self) -> None:
        now = time.monotonic()
        if now < self._next_beat:
            return
        self._next_beat = now + self.heartbeat
        psycopg = require_psycopg()
        try:
            connection = self._connected()
            with connection.transaction(), connection.cursor() as cursor:
                self._register(cursor, again=True)
                cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", (LOCK_KEY,))
                calls, replicas = self._mark_crashed(cursor) if _fetch(cursor) else (0, 0)
        except psycopg.Error as exc:
            self._warn(
                "heartbeat",
                "journal heartbeat failed (%s: %s)",
                type(exc).__name__,
                error_line(exc),
            )
            return
        if calls or replicas:
            with self._progress:
                self._crashed_since_open += calls
            log.warning(
                "journal: %d calls left live by replicas that are gone marked crashed (%d "
                "replicas without a heartbeat for %gs removed)",
                calls,
                replicas,
                self.stale_after,
                extra={"journal": self.path},
            )

    def _shutdown(self, clean: bool) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        psycopg = require_psycopg()
        try:
            if clean and not connection.closed:
                connection.execute(_DEREGISTER, (self.replica_id,))
        except psycopg.Error as exc:
            self._warn(
                "heartbeat", "journal: could not remove this replica's row (%s)", error_line(exc)
            )
        finally:
            connection.close()


def _fetch(cursor: psycopg.Cursor[tuple[Any, ...]]) -> bool:
    row = cursor.fetchone()
    return bool(row and row[0])
