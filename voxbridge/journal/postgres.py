"""The shared call journal on PostgreSQL: every replica writes its calls to one database.

Selected by ``--db postgresql://...`` (or ``postgres://``, or a libpq key/value string such as
``host=db dbname=voxbridge``; :func:`voxbridge.journal.journal_for`). It is the SQLite journal's
sink -- the same queue, writer thread, batching and counted losses (:mod:`voxbridge.journal.writer`)
-- with psycopg 3 on the writer thread, and the same ``calls`` and ``transcript`` tables in
PostgreSQL's types: ``timestamptz`` for ``started_at``, ``ended_at``, ``crash_marked_at`` and
``at``; ``jsonb`` for ``custom_parameters``, ``usage`` and ``tool``; ``boolean`` for
``upstream_opened``. Each ``calls`` row also names the replica that wrote it (``replica_id``). The
tables are created in the DSN's current schema (``search_path``; ``public`` unless the DSN says
otherwise, e.g. ``?options=-csearch_path%3Dvoxbridge``).

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
opens, and a heartbeat thread refreshes ``heartbeat_at`` every ``heartbeat`` seconds (the
database's clock, so the replicas' clocks need not agree). The heartbeat has a connection of its
own, with ``statement_timeout``, ``lock_timeout`` and ``connect_timeout`` of ``heartbeat_timeout``:
a slow write (a batch waiting on a lock, up to :data:`STATEMENT_TIMEOUT`) never delays it, so a
busy replica is never taken for dead.

A replica that has not heartbeated for ``stale_after`` seconds is taken for dead -- but only by a
replica that has itself been connected and heartbeating without a break for at least
``stale_after``. An outage of the database silences every replica alike: the first one to
reconnect, or one that starts just then, would otherwise take every other replica for dead. Its
run of healthy heartbeats starts at its first heartbeat on a new connection and starts again after
a heartbeat that fails, or that comes more than ``stale_after - heartbeat - heartbeat_timeout``
seconds after the one before (the process was paused); so the others have had the same window to
beat again. After each heartbeat past that, in a transaction of its own that holds the advisory
lock (tried without waiting: two replicas never mark at once, nor while one migrates), one
statement deletes the replica rows whose heartbeat is older than ``stale_after`` and marks
``crashed`` -- with ``crash_marked_at`` from this replica's wall clock -- every ``live`` call of those
replicas and every ``live`` call whose replica has no row. :meth:`~PostgresJournal.open` marks only
the latter: the calls of replicas that closed (or were removed) leaving calls they could not end,
which no outage can explain. A replica that closes cleanly deletes its own row after writing
everything queued. A replica that was only slow -- no heartbeat for longer than ``stale_after``, a
long pause or partition -- finds its row gone at its next heartbeat, registers again and logs a
warning; its calls were marked ``crashed`` meanwhile, and those that end later are completed as
``ended`` (keeping ``crash_marked_at``). Each call marked counts in
``voxbridge_journal_crash_marks_total``.

The marking runs on the heartbeat thread rather than the writer's: its condition is the heartbeat
thread's own record, and it runs right after a heartbeat has shown that connection healthy; on
the writer it would wait behind batches and delay them. Its statements have the heartbeat's
timeouts, so a slow one (it fails, and is tried again after the next heartbeat) delays the next
heartbeat by at most twice ``heartbeat_timeout``; ``stale_after`` must be at least ``2 *
heartbeat + 3 * heartbeat_timeout``, so a replica that misses one heartbeat is not taken for dead.

Connections: the writer holds one connection (autocommit; one explicit transaction per batch), with
``lock_timeout`` set to ``busy_timeout`` and ``statement_timeout`` to :data:`STATEMENT_TIMEOUT`,
and libpq's ``connect_timeout`` and TCP keepalive and ``tcp_user_timeout`` defaults (a DSN's own
values win), so a write to a database that stopped answering fails within bounded time. A lost
connection (the server restarted, a failover, ``pg_terminate_backend``) fails the batch in
progress, which is counted, and the next batch connects again. A server or pooler that hangs with
its kernel alive (a frozen PgBouncer, a stopped container) answers TCP keepalives and
acknowledges what is sent, so neither timeout fires and psycopg has no client-side read timeout:
:meth:`~PostgresJournal.close`, once it has waited out its ``timeout``, sends a cancel request and
then shuts down the sockets of both connections (duplicates of their descriptors, kept from when
each was opened), so the threads blocked on them end. Durability is the server's: a committed
record is as safe as the server's ``fsync`` and replication make it.

The DSN may carry a password; :attr:`PostgresJournal.path`, logs and errors show the DSN as libpq
reads it, without it (:func:`redact_dsn`). Prefer libpq's ``PGPASSWORD``/``PGPASSFILE`` to a
password in ``--db``. psycopg is imported when a journal first needs it, so this module imports
without the ``postgres`` extra; opening a journal without it is a :class:`JournalError` that says
what to install.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Unpack
from urllib.parse import quote

from .schema import JournalError, migration_steps, statements, write_statements
from .writer import JournalOptions, Rows, WriterJournal, iso_utc

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "CONNECT_TIMEOUT",
    "HEARTBEAT",
    "HEARTBEAT_TIMEOUT",
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
#: Seconds a heartbeat's statements may run, wait for a lock or (libpq: whole seconds, at least 2)
#: take to connect, at most: the default is the smaller of this and a fifth of the heartbeat.
HEARTBEAT_TIMEOUT = 2.0
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
#: What a connection adds to the DSN unless it says otherwise: a dead peer is noticed in about
#: 20 s even mid-statement (``tcp_user_timeout``: unacknowledged data; keepalives: silence).
_CONNECTION_DEFAULTS = {
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
# At open: only the live calls of replicas that have no row (they closed, or were removed).
_MARK_ORPHANS = """
UPDATE calls SET status = 'crashed', crash_marked_at = %(now)s
WHERE status = 'live'
AND NOT EXISTS (SELECT 1 FROM voxbridge_replicas AS r WHERE r.replica_id = calls.replica_id)
"""
_DEREGISTER = "DELETE FROM voxbridge_replicas WHERE replica_id = %s"


def redact_dsn(dsn: str) -> str:
    """``dsn`` as logs, errors and ``voxbridge calls`` show it: what libpq reads in it, without
    the password.

    The DSN is parsed by libpq itself (``psycopg.conninfo.conninfo_to_dict``), so what is hidden is
    exactly what libpq takes for the password -- in a URI's user part, where ``?`` and ``#`` need
    not be escaped, or its query, or a ``password=`` of a key/value string -- and is rebuilt as
    ``postgresql://user:***@host:port/dbname`` from the user, host(s), port(s) and database alone
    (``:***`` only when there is a password; the other parameters, such as ``sslpassword``, are
    never shown). Never raises.

    Returns:
        The shown form; ``postgresql://(malformed)`` for what libpq cannot parse,
        ``postgresql://(not shown: ...)`` when a host or database name holds an ``@`` (an
        unescaped ``@`` or ``/`` in a password makes libpq read part of it as the host or
        database), ``postgresql://(not shown: psycopg is not installed)`` without psycopg.
    """
    try:
        from psycopg import Error as PsycopgError
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return "postgresql://(not shown: psycopg is not installed)"
    try:
        params = conninfo_to_dict(dsn)
    except (PsycopgError, TypeError, ValueError):  # libpq's message quotes the DSN
        return "postgresql://(malformed)"
    host = str(params.get("host") or params.get("hostaddr") or "")
    port = str(params.get("port") or "")
    dbname = str(params.get("dbname") or "")
    if "@" in host + port + dbname:
        return "postgresql://(not shown: escape @ and / in a password as %40 and %2F)"
    user = quote(str(params.get("user") or ""), safe="")
    secret = ":***" if params.get("password") is not None else ""
    hosts, ports = host.split(","), port.split(",")
    if len(ports) == 1:
        ports *= len(hosts)
    netloc = ",".join(
        _uri_host(name) + (f":{number}" if number else "")
        for name, number in zip(hosts, ports + [""] * (len(hosts) - len(ports)), strict=False)
    )
    credentials = f"{user}{secret}@" if user or secret else ""
    path = f"/{quote(dbname, safe='')}" if dbname else ""
    return f"postgresql://{credentials}{netloc}{path}"


def _uri_host(host: str) -> str:
    if ":" in host:  # IPv6
        return f"[{host}]"
    return quote(host, safe="")  # a socket directory: %2Fvar%2Frun%2Fpostgresql


def require_psycopg() -> Any:
    """The psycopg module (imported on first use: the ``postgres`` extra is optional).

    Raises:
        JournalError: psycopg is not installed.
    """
    try:
        import psycopg
    except ImportError:
        raise JournalError(
            "a PostgreSQL journal needs psycopg: pip install 'voxbridge[postgres]'"
        ) from None
    return psycopg


def error_line(error: BaseException) -> str:
    """``error`` for a log line or a message: the server's primary message on one line (its
    DETAIL -- a failing row's values -- and CONTEXT -- parameters -- may quote call content,
    which logs never show), else the client's message."""
    primary = getattr(getattr(error, "diag", None), "message_primary", None)
    return " ".join(str(primary or error).split())


def connect(
    dsn: str,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    application_name: str = "voxbridge-journal",
    **settings: str,
) -> psycopg.Connection[tuple[Any, ...]]:
    """A new autocommit connection to ``dsn``, with the journal's connection defaults.

    Args:
        dsn: a ``postgresql://`` URI or a libpq key/value string (libpq's ``PG*`` environment
            variables fill in the rest).
        connect_timeout: seconds to connect, unless the DSN sets ``connect_timeout`` (libpq
            counts whole seconds, at least 2).
        application_name: ``pg_stat_activity.application_name``, unless the DSN sets one.
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
            "'Connection Strings')"
        ) from None
    params.setdefault("connect_timeout", str(max(2, math.ceil(connect_timeout))))
    params.setdefault("fallback_application_name", application_name)
    for key, value in _CONNECTION_DEFAULTS.items():
        params.setdefault(key, value)
    connection: psycopg.Connection[tuple[Any, ...]] = pg.connect(**params, autocommit=True)
    try:
        _configure(connection, settings)
    except BaseException:
        connection.close()
        raise
    return connection


def _configure(
    connection: psycopg.Connection[tuple[Any, ...]], settings: Mapping[str, str]
) -> None:
    for name, value in settings.items():
        connection.execute("SELECT set_config(%s, %s, false)", (name, value))


class _Link:
    """A connection, and a duplicate of its socket's descriptor, so that another thread can cut
    it safely: libpq may close its own descriptor at any time (a lost connection), and the number
    could then name another file; the duplicate cannot."""

    def __init__(self, connection: psycopg.Connection[tuple[Any, ...]]) -> None:
        self.connection = connection
        self._socket: socket.socket | None = None
        try:
            fd = os.dup(connection.fileno())
        except (OSError, require_psycopg().Error):  # no socket left to cut
            return
        try:
            self._socket = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)

    @property
    def usable(self) -> bool:
        return not self.connection.closed and not self.connection.broken

    def sever(self) -> None:
        """Shut the socket down both ways: a thread blocked reading it wakes up with an error."""
        if self._socket is not None:
            try:
                self._socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the peer

    def close(self) -> None:
        self.connection.close()
        if self._socket is not None:
            self._socket.close()  # the last descriptor: the kernel closes the connection


class PostgresJournal(WriterJournal):
    """The PostgreSQL call journal, shared by replicas (see the module docstring for the schema
    and the crash rule).

    Use it as :class:`~voxbridge.journal.SQLiteJournal` is used::

        with PostgresJournal("postgresql://voxbridge@db/voxbridge", metrics=metrics) as journal:
            await run_call(carrier, provider, journal=journal)

    Args:
        dsn: a ``postgresql://`` (or ``postgres://``) URI, or a libpq key/value string
            (``"host=db dbname=voxbridge user=voxbridge"``). The database must exist; the tables
            are created in its current schema by the first :meth:`open`.
        heartbeat: seconds between this replica's heartbeats.
        heartbeat_timeout: seconds each heartbeat statement may run or wait for a lock, and
            (whole seconds, at least 2) the heartbeat may take to connect again (default: the
            smaller of :data:`HEARTBEAT_TIMEOUT` and ``heartbeat / 5``).
        stale_after: seconds without a heartbeat after which a replica is taken for dead and its
            live calls are marked ``crashed`` (default ``STALE_HEARTBEATS * heartbeat``); also
            how long this replica heartbeats without a break before it judges others. Give every
            replica the same values.
        connect_timeout: seconds the writer may take to connect (unless the DSN sets
            ``connect_timeout``).
        options: ``metrics``, ``max_pending``, ``batch_size``, ``busy_timeout`` (seconds a write
            waits for a lock another connection holds: ``lock_timeout``), ``clock`` (the wall
            clock of the call timestamps and ``crash_marked_at``; heartbeats use the database's
            clock), ``redact``: see :class:`~voxbridge.journal.writer.WriterJournal`.

    Raises:
        ValueError: a bound below 1; ``heartbeat`` or ``heartbeat_timeout`` not positive;
            ``stale_after`` below ``2 * heartbeat + 3 * heartbeat_timeout`` (a replica that misses
            one heartbeat would be taken for dead).
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
        heartbeat_timeout: float | None = None,
        stale_after: float | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        **options: Unpack[JournalOptions],
    ) -> None:
        super().__init__(redact_dsn(dsn), **options)
        timeout = (
            min(HEARTBEAT_TIMEOUT, heartbeat / 5)
            if heartbeat_timeout is None
            else heartbeat_timeout
        )
        stale = STALE_HEARTBEATS * heartbeat if stale_after is None else stale_after
        if not heartbeat > 0 or not timeout > 0:
            raise ValueError("heartbeat and heartbeat_timeout must be positive")
        if not stale >= 2 * heartbeat + 3 * timeout:
            raise ValueError(
                f"stale_after ({stale:g}s) must be at least 2 * heartbeat + 3 * heartbeat_timeout "
                f"({2 * heartbeat + 3 * timeout:g}s): a replica that misses one heartbeat would be "
                "taken for dead"
            )
        self.heartbeat = heartbeat
        self.heartbeat_timeout = timeout
        self.stale_after = stale
        self.connect_timeout = connect_timeout
        #: This journal's row in ``voxbridge_replicas`` (and the ``replica_id`` of its calls).
        self.replica_id = uuid.uuid4().hex[:16]
        self._dsn = dsn
        self._host = socket.gethostname()
        self._started_at = iso_utc(self._clock())
        self._extra = (self.replica_id,)
        # Connections are replaced and closed under this lock, so close() can cut them safely.
        self._links = threading.Lock()
        self._writer: _Link | None = None
        self._beater: _Link | None = None
        self._beat_thread: threading.Thread | None = None
        self._beat_stop = threading.Event()
        # The heartbeat thread's own record (only it touches these): when its current run of
        # healthy heartbeats began, and when the last one succeeded (monotonic seconds).
        self._healthy_since: float | None = None
        self._last_beat: float | None = None
        # A longer gap between two heartbeats breaks the run: the process was paused, and the
        # database may have been down meanwhile without this replica noticing.
        self._max_gap = stale - heartbeat - timeout

    # --- open: schema and the calls of replicas gone, under the advisory lock -----------------

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
                # Silent replicas are judged later, by the heartbeat thread, once this replica
                # has heartbeated for stale_after itself: now, the database may just be back.
                cursor.execute(_MARK_ORPHANS, {"now": iso_utc(self._clock())})
                marked = max(cursor.rowcount, 0)
        except (psycopg.Error, JournalError) as exc:
            connection.close()
            if isinstance(exc, JournalError):
                raise
            raise JournalError(
                f"cannot open the journal {self.path!r}: {error_line(exc)}"
            ) from None
        with self._links:
            self._writer = _Link(connection)
        return marked

    def _started(self) -> None:
        self._beat_thread = threading.Thread(
            target=self._heartbeats, name="voxbridge-journal-heartbeat", daemon=True
        )
        self._beat_thread.start()

    def _session(self) -> psycopg.Connection[tuple[Any, ...]]:
        return connect(self._dsn, connect_timeout=self.connect_timeout, **self._writer_settings())

    def _writer_settings(self) -> dict[str, str]:
        return {
            "lock_timeout": f"{self.busy_timeout * 1000:.0f}",
            "statement_timeout": f"{STATEMENT_TIMEOUT * 1000:.0f}",
        }

    def _register(self, cursor: psycopg.Cursor[tuple[Any, ...]], *, again: bool) -> None:
        """Refresh this replica's heartbeat, or insert its row if it has none."""
        if cursor.execute(_HEARTBEAT, (self.replica_id,)).rowcount:
            return
        cursor.execute(_REGISTER, (self.replica_id, self._host, os.getpid(), self._started_at))
        if again:
            log.warning(
                "journal: this replica's row was gone (taken for dead after %gs without a "
                "heartbeat): registered again; its calls live at the time were marked crashed",
                self.stale_after,
                extra={"journal": self.path},
            )

    # --- the writer thread ----------------------------------------------------------------------

    def _connected(self) -> psycopg.Connection[tuple[Any, ...]]:
        """The writer's connection, connecting again if it was lost (raises OperationalError)."""
        link = self._writer
        if link is not None and link.usable:
            return link.connection
        psycopg = require_psycopg()
        with self._links:
            self._writer = None
            if link is not None:
                link.close()
        if self._abandon.is_set():  # close() gave up: connect to nothing that could hang
            raise psycopg.OperationalError("the journal is closing")
        link = _Link(connect(self._dsn, connect_timeout=self.connect_timeout))
        with self._links:
            self._writer = link  # from here on, close() can cut it
        try:
            _configure(link.connection, self._writer_settings())
        except BaseException:
            with self._links:
                self._writer = None
                link.close()
            raise
        log.info("journal: connected again", extra={"journal": self.path})
        return link.connection

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

    def _shutdown(self, clean: bool) -> None:
        # The heartbeat stops first, so it cannot register this replica again after its row is
        # deleted. A heartbeat statement lasts at most heartbeat_timeout; one blocked on a frozen
        # server is cut by close().
        self._beat_stop.set()
        beat = self._beat_thread
        if beat is not None:
            beat.join(math.ceil(max(2.0, self.heartbeat_timeout)) + 3 * self.heartbeat_timeout + 1)
        link = self._writer
        beating = beat is not None and beat.is_alive()
        psycopg = require_psycopg()
        try:
            if clean and not beating and not self._abandon.is_set() and link and link.usable:
                link.connection.execute(_DEREGISTER, (self.replica_id,))
        except psycopg.Error as exc:
            self._warn(
                "heartbeat", "journal: could not remove this replica's row (%s)", error_line(exc)
            )
        finally:
            with self._links:
                self._writer = None
                if link is not None:
                    link.close()

    # --- close() gave up: interrupt the writer ------------------------------------------------

    def _interrupt(self, grace: float) -> bool:
        self._beat_stop.set()  # the heartbeat connects nowhere again (a connect cannot be cut)
        link = self._writer
        if link is None:
            return False
        psycopg = require_psycopg()

        def cancel() -> None:
            try:
                link.connection.cancel_safe(timeout=grace)
            except psycopg.Error:
                pass  # nothing to cancel, or the server does not answer: _sever() follows

        # From a thread of its own: with a libpq older than 17, cancel_safe() falls back to a
        # cancel that may block for as long as the server takes to answer.
        canceller = threading.Thread(target=cancel, name="voxbridge-journal-cancel", daemon=True)
        canceller.start()
        canceller.join(grace)
        return True

    def _sever(self) -> bool:
        with self._links:
            links = [link for link in (self._writer, self._beater) if link is not None]
            for link in links:
                link.sever()
        return bool(links)

    # --- the heartbeat thread -------------------------------------------------------------------

    def _heartbeats(self) -> None:
        try:
            due = time.monotonic()
            while not self._beat_stop.wait(max(0.0, due - time.monotonic())):
                due = time.monotonic() + self.heartbeat
                self._beat()
        finally:
            with self._links:
                link, self._beater = self._beater, None
                if link is not None:
                    link.close()

    def _beat(self) -> None:
        """One heartbeat; then, if this replica has been healthy for ``stale_after``, the
        marking of the replicas that have not been."""
        psycopg = require_psycopg()
        try:
            link, fresh = self._beat_link()
            with link.connection.transaction(), link.connection.cursor() as cursor:
                self._register(cursor, again=True)
        except psycopg.Error as exc:
            self._healthy_since = None
            self._warn(
                "heartbeat",
                "journal heartbeat failed (%s: %s)",
                type(exc).__name__,
                error_line(exc),
            )
            return
        now = time.monotonic()
        last, self._last_beat = self._last_beat, now
        if fresh or self._healthy_since is None or last is None or now - last > self._max_gap:
            self._healthy_since = now  # a new run of healthy heartbeats starts here
        if now - self._healthy_since < self.stale_after:
            return
        try:
            with link.connection.transaction(), link.connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", (LOCK_KEY,))
                calls, replicas = self._mark_crashed(cursor) if _fetch(cursor) else (0, 0)
        except psycopg.Error as exc:
            self._warn(
                "marking",
                "journal: marking crashed calls failed (%s: %s); tried again after the next "
                "heartbeat",
                type(exc).__name__,
                error_line(exc),
            )
            return
        if calls or replicas:
            with self._progress:
                self._crashed_since_open += calls
            self.metrics.journal_crash_marks.inc(calls)
            log.warning(
                "journal: %d calls left live by replicas that are gone marked crashed (%d "
                "replicas without a heartbeat for %gs removed)",
                calls,
                replicas,
                self.stale_after,
                extra={"journal": self.path},
            )

    def _beat_link(self) -> tuple[_Link, bool]:
        """The heartbeat's connection, and whether it is new (raises OperationalError)."""
        link = self._beater
        if link is not None and link.usable:
            return link, False
        psycopg = require_psycopg()
        with self._links:
            self._beater = None
            if link is not None:
                link.close()
        if self._beat_stop.is_set():
            raise psycopg.OperationalError("the journal is closing")
        connection = connect(
            self._dsn,
            connect_timeout=self.heartbeat_timeout,
            application_name="voxbridge-journal-heartbeat",
        )
        link = _Link(connection)
        with self._links:
            self._beater = link  # from here on, close() can cut it
        timeout = f"{self.heartbeat_timeout * 1000:.0f}"
        try:
            _configure(connection, {"lock_timeout": timeout, "statement_timeout": timeout})
        except BaseException:
            with self._links:
                self._beater = None
                link.close()
            raise
        return link, True

    def _mark_crashed(self, cursor: psycopg.Cursor[tuple[Any, ...]]) -> tuple[int, int]:
        """Remove the stale replicas, mark the calls left live: ``(calls, replicas)``."""
        cursor.execute(_MARK_CRASHED, {"stale": self.stale_after, "now": iso_utc(self._clock())})
        calls, replicas = cursor.fetchone() or (0, 0)
        return int(calls), int(replicas)


def _fetch(cursor: psycopg.Cursor[tuple[Any, ...]]) -> bool:
    row = cursor.fetchone()
    return bool(row and row[0])
