"""The PostgreSQL journal against a real PostgreSQL (``VOXBRIDGE_TEST_POSTGRES``: tests/services.py;
skipped, saying why, without one).

Each test gets a database of its own, created with a unique name and dropped (``WITH (FORCE)``)
afterwards; every wait on the server or the writer is bounded (``connect_timeout``,
``statement_timeout``, ``WAIT``). Calls run through the same in-memory rig as the SQLite tests
(simulator -> bridge -> ``FakeOpenAIRealtime`` on the autojump clock) with a real writer thread.
What the SQLite journal guarantees is checked here too, and where both apply the two back ends are
written the same records and must read back the same rows. Replica crashes are real: a replica is a
subprocess, killed with SIGKILL. Outages and a hung pooler are real too: a TCP proxy on loopback
(:class:`Proxy`, threads) that a test takes down (connections cut, new ones refused) or freezes
(connections open, nothing forwarded, as a stopped PgBouncer).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import trio
from services import postgres_dsn
from test_journal_sqlite import (
    LOOKUP,
    SLOW,
    T0,
    WAIT,
    Clock,
    bridged,
    errors,
    record,
    state,
)

from voxbridge.cli import main
from voxbridge.errors import Reason
from voxbridge.journal import (
    JournalError,
    PostgresJournal,
    SQLiteJournal,
    WriterJournal,
    journal_for,
)
from voxbridge.journal.postgres import (
    HEARTBEAT_TIMEOUT,
    LOCK_KEY,
    SCHEMA_VERSION,
    redact_dsn,
)
from voxbridge.journal.reader import find_calls, read_lines, recent_calls
from voxbridge.journal.sqlite import iso_utc
from voxbridge.journal.writer import INTERRUPT_GRACE
from voxbridge.metrics import Metrics
from voxbridge.providers.events import Transcript
from voxbridge.server import RunningServer, serve
from voxbridge.settings import Settings
from voxbridge.testing import FakeOpenAIRealtime, simulate_call

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[dev]'")
from psycopg import sql  # noqa: E402

# --- the database of each test ----------------------------------------------------------------------


@contextmanager
def admin(dsn: str | None = None) -> Iterator[Any]:
    """An autocommit connection to ``dsn`` (the server's maintenance database by default)."""
    with psycopg.connect(dsn or postgres_dsn(), autocommit=True, connect_timeout=5) as connection:
        connection.execute("SET statement_timeout = '20s'")
        yield connection


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty database, dropped afterwards: yields its ``postgresql://`` DSN."""
    server = postgres_dsn()
    parts = urlsplit(server)
    if parts.scheme not in ("postgresql", "postgres"):
        pytest.fail(f"VOXBRIDGE_TEST_POSTGRES must be a postgresql:// URI, not {server!r}")
    name = f"voxbridge_test_{uuid.uuid4().hex[:12]}"
    with admin() as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        drop(name)


def drop(name: str) -> None:
    with admin() as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def database_of(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


@pytest.fixture
def pg() -> Iterator[str]:
    with fresh_database() as dsn:
        yield dsn


def rows(dsn: str, query: str, *args: object) -> list[tuple[Any, ...]]:
    with admin(dsn) as connection:
        return connection.execute(query, args).fetchall()  # type: ignore[no-any-return]


def wait_until(condition: Any, what: str, timeout: float = WAIT) -> float:
    """Poll ``condition`` until true; returns the seconds it took. Fails after ``timeout``."""
    began = time.monotonic()
    while not condition():
        assert time.monotonic() - began < timeout, f"{what}: not within {timeout}s"
        time.sleep(0.01)
    return time.monotonic() - began


def writer_backends(dsn: str) -> list[tuple[Any, ...]]:
    return rows(
        dsn,
        "SELECT pid FROM pg_stat_activity WHERE datname = %s "
        "AND application_name = 'voxbridge-journal'",
        database_of(dsn),
    )


QUIET = 3600.0  # a heartbeat that never comes during a test that is not about heartbeats


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of the tests' PostgreSQL, run by threads, that a test
    can take down or freeze:

    * ``down()``: an outage. Every connection is cut and new ones are closed at once; ``up()``
      ends it.
    * ``freeze()``: a pooler or server that hangs with its kernel alive (a stopped PgBouncer).
      Connections stay open and new ones are accepted, but nothing is forwarded again: what a
      client sends is acknowledged by the kernel, keepalives are answered, no reply ever comes.
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._state = "up"
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def dsn(self, dsn: str) -> str:
        """``dsn``, connecting through the proxy."""
        parts = urlsplit(dsn)
        user = f"{parts.username}@" if parts.username else ""
        return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{self.port}"))

    def down(self) -> None:
        self._state = "down"
        with self._lock:
            for sock in self._open:
                _shut(sock)

    def up(self) -> None:
        self._state = "up"

    def freeze(self) -> None:
        self._state = "frozen"

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(WAIT)
            assert not thread.is_alive()
        with self._lock:
            for sock in self._open:
                sock.close()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self._listener], [], [], 0.02)
            if not readable:
                continue
            client, _ = self._listener.accept()
            with self._lock:
                self._open.append(client)
            if self._state == "down":
                _shut(client)  # refused: the client reads the end of the stream at once
                continue
            if self._state == "frozen":
                continue  # accepted by the kernel, never answered
            try:
                server = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                _shut(client)
                continue
            with self._lock:
                self._open.append(server)
            pump = threading.Thread(target=self._pump, args=(client, server), daemon=True)
            self._threads.append(pump)
            pump.start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while not self._stop.is_set() and self._state != "down":
                if self._state == "frozen":
                    time.sleep(0.02)
                    continue
                readable, _, _ = select.select([client, server], [], [], 0.02)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (server if sock is client else client).sendall(data)
        except OSError:
            return
        finally:
            _shut(client)
            _shut(server)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected any more


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    running = Proxy(postgres_dsn())
    try:
        yield running
    finally:
        running.close()


# --- the call, end to end ---------------------------------------------------------------------------


async def test_a_call_writes_one_complete_row_and_its_transcript_lines(
    autojump_clock: Any, pg: str, metrics: Metrics
) -> None:
    fake = FakeOpenAIRealtime(
        echo_delay=0.05,
        caller_transcripts=[(0.5, "hello there"), (1.5, "my order number is 42")],
        speak=[(1.0, b"\xff" * 1600, "hi, how can I help?")],
        close_at=(2.0, 1011),  # the first session drops: one resume
        only_session=1,
    )
    with PostgresJournal(pg, metrics=metrics) as journal:
        async with bridged(
            fake, journal, metrics, seconds=4.0, custom_parameters={"lang": "en"}
        ) as outcome:
            pass
        assert journal.flush(WAIT)
        stats = journal.statistics()
        assert (stats.written, stats.failed, stats.refused) == (5, 0, 0)
    assert outcome["disconnect"].reason is Reason.CALLER_STOP
    (call,) = outcome["registry"].recent
    (row,) = recent_calls(pg)
    assert (row.call_id, row.call_sid, row.stream_sid, row.status) == (
        call.call_id,
        outcome["caller"].call_sid,
        outcome["caller"].stream_sid,
        "ended",
    )
    assert (row.reason, row.close_code, row.upstream_opened, row.resumes) == (
        "caller_stop",
        1000,
        True,
        1,
    )
    assert row.duration_s == pytest.approx(call.duration)
    assert (row.frames_from_caller, row.frames_to_caller) == (
        call.frames_from_caller,
        call.frames_to_caller,
    )
    assert (row.bytes_from_caller, row.bytes_to_caller) == (
        call.bytes_from_caller,
        call.bytes_to_caller,
    )
    assert row.custom_parameters == {"lang": "en"}
    assert row.started_at.endswith("Z") and row.started_at <= (row.ended_at or "")
    assert [(ln.seq, ln.role, ln.text) for ln in read_lines(pg, call.call_id)] == [
        (0, "caller", "hello there"),
        (1, "agent", "hi, how can I help?"),
        (2, "caller", "my order number is 42"),
    ]
    assert errors(metrics) == 0


def write_the_same_calls(journal: WriterJournal, clock: Clock) -> None:
    """A call with speech, key presses, tool calls, usage and an agent; a call that ended
    without a start row; a call still live; custom parameters with the per-call token and a NUL."""
    conversation = (
        Transcript("caller", "where is my order?"),
        Transcript("dtmf", "42#"),
        LOOKUP,
        Transcript("agent", "it has\x00 shipped"),
        SLOW,
    )
    live = state(agent="support", custom_parameters={"voxbridge_token": "eyJ.s.sig", "n": "\x001"})
    journal.call_started(live)
    for item in conversation[:-1]:  # the last exchange reaches the journal only at the end
        clock.now += 1
        journal.transcript_line(live, item)
    clock.now = T0 + 30
    journal.call_ended(
        record(
            lines=conversation,
            agent="support",
            usage=(("input_audio_tokens", 1200.0), ("output_text_tokens", 12.5)),
            tool_calls=2,
            dtmf_digits=3,
            custom_parameters=(("voxbridge_token", "eyJ.s.sig"), ("n", "\x001")),
        )
    )
    clock.now = T0 + 40
    journal.call_ended(
        record("c2", call_sid="CA2", started_at=None, ended_at=110.0, reason=Reason.START_TIMEOUT)
    )
    clock.now = T0 + 50
    journal.call_started(state("c3", "CA3"))
    assert journal.flush(WAIT)


def test_both_back_ends_read_back_the_same_rows(pg: str, tmp_path: Path) -> None:
    lite = tmp_path / "same.db"
    for make in (
        lambda clock: SQLiteJournal(lite, clock=clock),
        lambda clock: PostgresJournal(pg, clock=clock, heartbeat=QUIET),
    ):
        clock = Clock()
        with make(clock) as journal:
            write_the_same_calls(journal, clock)
    calls = recent_calls(pg)
    assert calls == recent_calls(lite)
    assert [call.call_id for call in calls] == ["c3", "c2", "c1"]
    for call_id in ("c1", "c2", "c3"):
        assert read_lines(pg, call_id) == read_lines(lite, call_id)
    assert find_calls(pg, "CA2") == find_calls(lite, "CA2")

    c3, c2, c1 = calls
    assert (c1.status, c1.agent, c1.tool_calls, c1.dtmf_digits) == ("ended", "support", 2, 3)
    assert (c1.started_at, c1.ended_at) == (iso_utc(T0), iso_utc(T0 + 30))
    assert c1.usage == {"input_audio_tokens": 1200, "output_text_tokens": 12.5}
    assert c1.custom_parameters == {
        "voxbridge_token": "(redacted)",
        "n": "\N{REPLACEMENT CHARACTER}1",
    }
    assert c2.started_at == iso_utc(T0 + 40 - 10)  # no start row: derived from the call's clock
    assert (c3.status, c3.started_at, c3.ended_at) == ("live", iso_utc(T0 + 50), None)
    assert [(ln.seq, ln.role, ln.text, ln.tool, ln.at) for ln in read_lines(pg, "c1")] == [
        (0, "caller", "where is my order?", None, iso_utc(T0 + 1)),
        (1, "dtmf", "42#", None, iso_utc(T0 + 2)),
        (2, "tool", LOOKUP.text, LOOKUP, iso_utc(T0 + 3)),
        (3, "agent", "it has\N{REPLACEMENT CHARACTER} shipped", None, iso_utc(T0 + 4)),
        (4, "tool", SLOW.text, SLOW, iso_utc(T0 + 30)),  # filled in by the end record
    ]
    # In PostgreSQL's own types, for psql.
    ((started, usage, opened, params, replica),) = rows(
        pg,
        "SELECT started_at, usage, upstream_opened, custom_parameters, replica_id "
        "FROM calls WHERE call_id = 'c1'",
    )
    assert started == datetime.fromtimestamp(T0, UTC)
    assert usage == {"input_audio_tokens": 1200, "output_text_tokens": 12.5}
    assert (opened, params["voxbridge_token"]) == (True, "(redacted)")
    assert replica is not None and len(replica) == 16
    assert rows(pg, "SELECT tool->>'outcome' FROM transcript WHERE role = 'tool' ORDER BY seq") == [
        ("ok",),
        ("timeout",),
    ]
    assert "eyJ" not in str(rows(pg, "SELECT * FROM calls"))


def test_a_line_is_committed_promptly(pg: str) -> None:
    with PostgresJournal(pg) as journal:
        journal.call_started(state())
        journal.transcript_line(state(), Transcript("caller", "hello"))
        took = wait_until(
            lambda: rows(pg, "SELECT count(*) FROM transcript") == [(1,)], "the line visible"
        )
    assert took < 1.0  # no lingering before a commit


def test_journal_for_picks_the_back_end_by_scheme(tmp_path: Path) -> None:
    assert isinstance(journal_for(str(tmp_path / "x.db")), SQLiteJournal)
    assert isinstance(journal_for(tmp_path / "x.db"), SQLiteJournal)
    assert isinstance(journal_for("./host=x.db"), SQLiteJournal)  # a file of that name
    for dsn in (
        "postgresql://vb@db.internal/voxbridge",
        "postgres://vb@db.internal/voxbridge",
        "host=db.internal user=vb dbname=voxbridge",  # libpq's key/value form
        "  dbname = voxbridge host=db.internal user=vb",
    ):
        journal = journal_for(dsn, metrics=Metrics())
        assert isinstance(journal, PostgresJournal)
        assert journal.path == "postgresql://vb@db.internal/voxbridge"
        assert not journal.is_open  # nothing connects before open()


# --- schema and migrations ----------------------------------------------------------------------


def schema_of(dsn: str) -> dict[str, object]:
    return {
        "versions": rows(dsn, "SELECT version FROM voxbridge_schema ORDER BY version"),
        "columns": rows(
            dsn,
            "SELECT table_name, column_name, data_type, column_default, is_nullable "
            "FROM information_schema.columns WHERE table_schema = 'public' "
            "ORDER BY table_name, ordinal_position",
        ),
        "indexes": rows(
            dsn, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
        ),
    }


def open_together(journals: list[PostgresJournal]) -> list[BaseException | None]:
    """Open every journal at once, each from its own thread; what each raised, or None."""
    start = threading.Barrier(len(journals))
    outcome: list[BaseException | None] = [None] * len(journals)

    def one(n: int) -> None:
        start.wait(WAIT)
        try:
            journals[n].open()
        except BaseException as exc:
            outcome[n] = exc

    threads = [threading.Thread(target=one, args=(n,)) for n in range(len(journals))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)
        assert not thread.is_alive()
    return outcome


def test_replicas_starting_together_create_the_schema_once(pg: str) -> None:
    journals = [PostgresJournal(pg, heartbeat=QUIET) for _ in range(4)]
    try:
        assert open_together(journals) == [None] * 4
        assert rows(pg, "SELECT version FROM voxbridge_schema") == [(SCHEMA_VERSION,)]
        registered = rows(pg, "SELECT replica_id, host, pid FROM voxbridge_replicas ORDER BY 1")
        assert registered == sorted(
            (journal.replica_id, socket.gethostname(), os.getpid()) for journal in journals
        )
    finally:
        for journal in journals:
            journal.close()
    assert rows(pg, "SELECT count(*) FROM voxbridge_replicas") == [(0,)]  # clean closes


class Later(PostgresJournal):
    """A voxbridge one schema version ahead: a column and an index added (not idempotent: run
    twice, the migration fails)."""

    schema_version = SCHEMA_VERSION + 1
    migrations = {
        SCHEMA_VERSION: "ALTER TABLE calls ADD COLUMN note text; "
        "CREATE INDEX calls_by_note ON calls (note)"
    }


def test_replicas_starting_together_migrate_an_older_journal_once(pg: str) -> None:
    with PostgresJournal(pg) as old:
        old.call_ended(record("before"))
    journals = [Later(pg, heartbeat=QUIET) for _ in range(4)]
    try:
        assert open_together(journals) == [None] * 4
    finally:
        for journal in journals:
            journal.close()
    assert rows(pg, "SELECT version FROM voxbridge_schema ORDER BY 1") == [
        (SCHEMA_VERSION,),
        (SCHEMA_VERSION + 1,),
    ]
    assert rows(pg, "SELECT call_id, status, note FROM calls") == [("before", "ended", None)]
    # Opened again, an up-to-date journal is left alone; the older voxbridge refuses it.
    Later(pg).open().close()
    with pytest.raises(JournalError, match="schema version 2, written by a newer voxbridge"):
        PostgresJournal(pg).open()


def test_a_migration_that_fails_leaves_the_journal_as_it_was(pg: str) -> None:
    journal = PostgresJournal(pg, heartbeat=QUIET).open()
    journal.call_started(state("left", "CA-left"))
    assert journal.flush(WAIT)
    journal._abandon.set()  # the replica stops without a clean close: its row stays
    journal.close()
    before = schema_of(pg)

    class Broken(PostgresJournal):
        schema_version = SCHEMA_VERSION + 1
        migrations = {SCHEMA_VERSION: "ALTER TABLE calls ADD COLUMN note text; SELECT 1/0"}

    with pytest.raises(JournalError, match=r"cannot open the journal .*division by zero"):
        Broken(pg).open()
    assert schema_of(pg) == before  # DDL is transactional: no half-migrated journal
    assert rows(pg, "SELECT status FROM calls") == [("live",)]
    assert rows(pg, "SELECT count(*) FROM voxbridge_replicas") == [(1,)]  # the failed one's: none


def test_what_is_not_a_journal_is_refused_and_says_why(pg: str) -> None:
    with admin(pg) as connection:  # someone else's table of that name
        connection.execute("CREATE TABLE calls (id serial PRIMARY KEY)")
    with pytest.raises(JournalError, match='relation "calls" already exists'):
        PostgresJournal(pg).open()
    assert rows(pg, "SELECT to_regclass('voxbridge_schema') IS NULL") == [(True,)]
    server = urlsplit(postgres_dsn())
    secret = urlunsplit(server._replace(netloc="vb:s3cret@127.0.0.1:1", path="/voxbridge"))
    began = time.monotonic()
    with pytest.raises(JournalError, match=r"cannot open the journal .*vb:\*\*\*@") as refused:
        PostgresJournal(secret, connect_timeout=2).open()
    assert time.monotonic() - began < 5
    assert "s3cret" not in str(refused.value)
    assert PostgresJournal(secret).path == "postgresql://vb:***@127.0.0.1:1/voxbridge"
    with pytest.raises(JournalError, match=r"not a PostgreSQL DSN: 'postgresql://\(malformed\)'"):
        PostgresJournal("postgresql://vb:s3cret@[::1/nowhere").open()


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://vb@db/voxbridge", "postgresql://vb@db/voxbridge"),
        ("postgresql://vb:pw@db:5432/voxbridge", "postgresql://vb:***@db:5432/voxbridge"),
        ("postgres://vb:p%40w@h1,h2/x?sslmode=require", "postgresql://vb:***@h1,h2/x"),
        ("postgresql://vb:pw@h1:5432,h2:5433/x", "postgresql://vb:***@h1:5432,h2:5433/x"),
        ("postgresql:///x?user=vb&password=pw&sslmode=require", "postgresql://vb:***@/x"),
        # libpq takes ? and # unescaped in a URI's password; urllib stops there
        ("postgresql://vb:pa?ss@db/x", "postgresql://vb:***@db/x"),
        ("postgresql://vb:pa#ss@db:5432/x?sslmode=require", "postgresql://vb:***@db:5432/x"),
        (
            "postgresql://vb:pa?ss#w@rd@db/x",
            "postgresql://(not shown: escape @ and / in a password as %40 and %2F)",
        ),
        # an unescaped @ or / puts part of the password in libpq's host or database name
        (
            "postgresql://vb:p@ss@db/x",
            "postgresql://(not shown: escape @ and / in a password as %40 and %2F)",
        ),
        (
            "postgresql://vb:p/ss@db/x",
            "postgresql://(not shown: escape @ and / in a password as %40 and %2F)",
        ),
        ("postgresql://vb%40tenant:pw@db/x", "postgresql://vb%40tenant:***@db/x"),
        # libpq's key/value form, quoted values and all
        ("host=db user=vb password=s3cret dbname=x", "postgresql://vb:***@db/x"),
        ("host=db port=5433 password='s3 cr?t#' sslpassword=k3y", "postgresql://:***@db:5433"),
        ("host=/var/run/postgresql dbname=x", "postgresql://%2Fvar%2Frun%2Fpostgresql/x"),
        ("postgresql://[::1]:5432/x", "postgresql://[::1]:5432/x"),
        ("postgresql://vb:s3cret@[::1/nowhere", "postgresql://(malformed)"),
        ("host=db password=s3cret nonsense=1", "postgresql://(malformed)"),
    ],
)
def test_a_dsn_is_shown_without_its_password(dsn: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown
    for secret in ("pw", "pa?ss", "pa#ss", "ss@db", "s3cret", "s3 cr", "k3y", "p/ss"):
        assert secret not in redact_dsn(dsn)


# --- crashed calls, across replicas -----------------------------------------------------------------

REPLICA = """
import sys, time
from voxbridge.journal import PostgresJournal
from voxbridge.providers.events import Transcript
from voxbridge.session import CallState
journal = PostgresJournal(
    sys.argv[1], heartbeat=float(sys.argv[2]), stale_after=float(sys.argv[3])
).open()
for n in range(2):
    call = CallState(call_id=f"dead{n}", accepted_at=0.0, carrier_call_id=f"CA-dead{n}")
    journal.call_started(call)
    journal.transcript_line(call, Transcript("caller", f"said before dying {n}"))
assert journal.flush(10)
time.sleep(60)  # bridging its calls, until killed
"""


@contextmanager
def replica(dsn: str, heartbeat: float, bound: float) -> Iterator[subprocess.Popen[bytes]]:
    """Another voxbridge process on the same journal, with two live calls."""
    process = subprocess.Popen([sys.executable, "-c", REPLICA, dsn, str(heartbeat), str(bound)])
    try:
        yield process
    finally:
        process.kill()
        process.wait(WAIT)


@pytest.mark.hang_limit(60)
def test_the_calls_of_a_replica_that_dies_are_marked_crashed_by_another_after_the_bound(
    pg: str, caplog: pytest.LogCaptureFixture, metrics: Metrics
) -> None:
    heartbeat, bound = 0.1, 1.0
    clock = Clock()
    with (
        PostgresJournal(
            pg, clock=clock, heartbeat=heartbeat, stale_after=bound, metrics=metrics
        ) as survivor,
        replica(pg, heartbeat, bound) as other,
        caplog.at_level(logging.WARNING, logger="voxbridge.journal"),
    ):
        survivor.call_started(state("mine", "CA-mine"))
        wait_until(
            lambda: rows(pg, "SELECT count(*) FROM transcript") == [(2,)],
            "the other replica's calls",
            timeout=20,
        )
        ((dead_id, pid),) = rows(
            pg,
            "SELECT replica_id, pid FROM voxbridge_replicas WHERE replica_id <> %s",
            survivor.replica_id,
        )
        assert pid == other.pid
        # Alive, the other replica keeps its calls, however many heartbeats go by.
        time.sleep(bound * 1.5)
        assert rows(pg, "SELECT call_id, status FROM calls ORDER BY 1") == [
            ("dead0", "live"),
            ("dead1", "live"),
            ("mine", "live"),
        ]
        clock.now = T0 + 500
        other.send_signal(signal.SIGKILL)  # no close, no cleanup: its row stays behind
        killed = time.monotonic()
        other.wait(WAIT)
        wait_until(
            lambda: rows(pg, "SELECT count(*) FROM calls WHERE status = 'crashed'") == [(2,)],
            "the dead replica's calls marked",
        )
        marked_after = time.monotonic() - killed
        # its last heartbeat was at most one heartbeat (0.1 s) before the kill
        assert bound - 0.2 <= marked_after < bound + 3.0
        assert survivor.statistics().crashed_since_open == 2
        assert crash_marks(metrics) == 2
    assert rows(
        pg, "SELECT call_id, status, crash_marked_at, replica_id FROM calls ORDER BY 1"
    ) == [
        ("dead0", "crashed", datetime.fromtimestamp(T0 + 500, UTC), dead_id),
        ("dead1", "crashed", datetime.fromtimestamp(T0 + 500, UTC), dead_id),
        ("mine", "live", None, survivor.replica_id),  # left live by its clean close (below)
    ]
    assert [ln.text for ln in read_lines(pg, "dead1")] == ["said before dying 1"]
    assert rows(pg, "SELECT count(*) FROM voxbridge_replicas") == [(0,)]  # dead one removed
    assert (
        "2 calls left live by replicas that are gone marked crashed "
        "(1 replicas without a heartbeat for 1s removed)"
    ) in caplog.text


def crash_marks(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("voxbridge_journal_crash_marks_total")
    assert value is not None
    return value


def test_a_clean_close_leaves_no_replica_and_its_unfinished_calls_are_marked_by_the_next(
    pg: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    first = PostgresJournal(pg, clock=clock).open()
    first.call_started(state("gone", "CA-gone"))
    first.transcript_line(state("gone"), Transcript("caller", "still here?"))
    first.call_started(state("done", "CA-done"))
    first.call_ended(record("done", call_sid="CA-done"))
    with PostgresJournal(pg, clock=clock) as second:  # first is alive: its calls are its own
        assert second.statistics().crashed_at_open == 0
    assert first.close()  # its call "gone" is live: its end was never written
    assert rows(pg, "SELECT count(*) FROM voxbridge_replicas") == [(0,)]
    clock.now = T0 + 3600
    metrics = Metrics()
    with caplog.at_level(logging.WARNING, logger="voxbridge.journal"):
        third = PostgresJournal(pg, clock=clock, metrics=metrics).open()
    try:  # a replica with no row is gone whatever the database did: marked at open
        assert third.statistics().crashed_at_open == 1
        assert crash_marks(metrics) == 1
    finally:
        third.close()
    (gone,) = find_calls(pg, "CA-gone")
    assert (gone.status, gone.crash_marked_at, gone.ended_at) == (
        "crashed",
        iso_utc(T0 + 3600),
        None,
    )
    assert [line.text for line in read_lines(pg, "gone")] == ["still here?"]
    assert [(c.status, c.crash_marked_at) for c in find_calls(pg, "CA-done")] == [("ended", None)]
    assert "1 calls left live by replicas that are gone marked crashed" in caplog.text


def test_a_replica_taken_for_dead_registers_again_and_its_calls_still_end(
    pg: str, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="voxbridge.journal"),
        PostgresJournal(pg, heartbeat=0.05, stale_after=0.5) as slow,
    ):
        slow.call_started(state())
        assert slow.flush(WAIT)
        with admin(pg) as connection:  # as another replica would after 0.5 s without a beat
            connection.execute("DELETE FROM voxbridge_replicas")
            connection.execute("UPDATE calls SET status = 'crashed', crash_marked_at = now()")
        wait_until(
            lambda: rows(pg, "SELECT replica_id FROM voxbridge_replicas") == [(slow.replica_id,)],
            "registered again",
        )
        slow.call_ended(record())
    assert "this replica's row was gone" in caplog.text
    ((status, marked),) = rows(pg, "SELECT status, crash_marked_at FROM calls")
    assert status == "ended" and marked is not None  # ended after all; the mark stays as a trace


def test_the_heartbeat_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match=r"stale_after \(1s\) must be at least 2 \* heartbeat"):
        PostgresJournal("postgresql:///x", heartbeat=1.0, stale_after=1.0)
    # one missed heartbeat, and the heartbeat's own timeouts, must fit in the bound
    with pytest.raises(ValueError, match=r"\(6.5s\): a replica that misses one heartbeat"):
        PostgresJournal("postgresql:///x", heartbeat=1.0, heartbeat_timeout=1.5, stale_after=6)
    PostgresJournal("postgresql:///x", heartbeat=1.0, heartbeat_timeout=1.0, stale_after=5)
    for bad in ({"heartbeat": 0}, {"heartbeat_timeout": 0.0}):
        with pytest.raises(ValueError, match="must be positive"):
            PostgresJournal("postgresql:///x", **bad)  # type: ignore[arg-type]
    journal = PostgresJournal("postgresql:///x", heartbeat=2.0)
    assert (journal.stale_after, journal.heartbeat_timeout) == (6.0, 0.4)
    journal = PostgresJournal("postgresql:///x")  # the defaults: 10 s, 2 s, 30 s
    assert (journal.heartbeat, journal.heartbeat_timeout, journal.stale_after) == (
        10.0,
        HEARTBEAT_TIMEOUT,
        30.0,
    )


def live_calls(dsn: str) -> list[tuple[Any, ...]]:
    return rows(dsn, "SELECT call_id, status FROM calls ORDER BY 1")


@pytest.mark.hang_limit(60)
def test_an_outage_longer_than_the_bound_marks_no_replica_crashed(
    pg: str, proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    """The database goes away for twice the bound: nobody could heartbeat. The first replica
    back must not take the others for dead; each waits one bound of its own health first, and by
    then the others have heartbeated again."""
    heartbeat, bound = 0.1, 1.0
    metrics = [Metrics(), Metrics()]
    journals = [
        PostgresJournal(proxy.dsn(pg), heartbeat=heartbeat, stale_after=bound, metrics=m)
        for m in metrics
    ]
    with (
        caplog.at_level(logging.WARNING, logger="voxbridge.journal"),
        journals[0] as first,
        journals[1] as second,
    ):
        first.call_started(state("a", "CA-a"))
        second.call_started(state("b", "CA-b"))
        assert first.flush(WAIT) and second.flush(WAIT)
        time.sleep(bound * 1.5)  # both healthy for longer than the bound
        proxy.down()
        time.sleep(bound * 2)
        proxy.up()
        began = time.monotonic()
        while time.monotonic() - began < bound * 2.5:  # past the point either could judge
            assert live_calls(pg) == [("a", "live"), ("b", "live")]
            time.sleep(0.05)
        assert rows(pg, "SELECT count(*) FROM voxbridge_replicas") == [(2,)]
        assert rows(pg, "SELECT max(now() - heartbeat_at) < '1 s' FROM voxbridge_replicas") == [
            (True,)
        ]
    assert [j.statistics().crashed_since_open for j in journals] == [0, 0]
    assert [crash_marks(m) for m in metrics] == [0, 0]
    assert "journal heartbeat failed" in caplog.text  # the outage, as each replica saw it
    assert "marked crashed" not in caplog.text
    assert "row was gone" not in caplog.text


@pytest.mark.hang_limit(60)
def test_a_replica_opening_during_an_outage_of_another_waits_one_bound_before_judging(
    pg: str, proxy: Proxy
) -> None:
    """One replica cannot reach the database for longer than the bound; another starts just
    then. The starting one must not take it for dead at once: the outage ends, and the first
    one heartbeats again before the newcomer has been healthy for a bound."""
    heartbeat, bound = 0.1, 1.0
    with PostgresJournal(proxy.dsn(pg), heartbeat=heartbeat, stale_after=bound) as cut_off:
        cut_off.call_started(state("a", "CA-a"))
        assert cut_off.flush(WAIT)
        proxy.down()
        time.sleep(bound * 1.3)  # silent for longer than the bound
        metrics = Metrics()
        with PostgresJournal(
            pg, heartbeat=heartbeat, stale_after=bound, metrics=metrics
        ) as newcomer:
            proxy.up()
            assert newcomer.statistics().crashed_at_open == 0
            began = time.monotonic()
            while time.monotonic() - began < bound * 2.5:
                assert live_calls(pg) == [("a", "live")]
                time.sleep(0.05)
            assert newcomer.statistics().crashed_since_open == 0
        assert crash_marks(metrics) == 0


def test_at_start_a_silent_replica_is_judged_after_one_bound_of_health(pg: str) -> None:
    """A replica that died while nothing else ran: the next one to start marks its calls, but
    only once it has itself heartbeated for the bound (at start, the database may just be
    back)."""
    with PostgresJournal(pg, heartbeat=QUIET):
        pass  # the schema
    with admin(pg) as connection:
        connection.execute(
            "INSERT INTO voxbridge_replicas VALUES ('dead', 'h', 1, now(), now() - '1 h'::interval)"
        )
        connection.execute(
            "INSERT INTO calls (call_id, carrier, provider, status, started_at, replica_id) "
            "VALUES ('gone', 'twilio', 'openai', 'live', now(), 'dead')"
        )
    bound = 1.0
    with PostgresJournal(pg, heartbeat=0.1, stale_after=bound) as starting:
        assert starting.statistics().crashed_at_open == 0
        assert live_calls(pg) == [("gone", "live")]
        took = wait_until(
            lambda: live_calls(pg) == [("gone", "crashed")], "the call marked", timeout=bound + 4
        )
        assert bound - 0.1 <= took < bound + 3  # (from just after open)
        assert starting.statistics().crashed_since_open == 1
    assert rows(pg, "SELECT count(*) FROM voxbridge_replicas") == [(0,)]


@pytest.mark.hang_limit(60)
def test_a_slow_write_does_not_starve_the_heartbeat(
    pg: str, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    """The writer of one replica waits on a lock for longer than the bound (up to busy_timeout):
    its heartbeat has a thread and a connection of its own, so another replica does not take it
    for dead, and the write goes through once the lock is released."""
    heartbeat, bound = 0.1, 1.0
    with (
        caplog.at_level(logging.WARNING, logger="voxbridge.journal"),
        PostgresJournal(pg, heartbeat=heartbeat, stale_after=bound, busy_timeout=3.0) as busy,
        PostgresJournal(pg, heartbeat=heartbeat, stale_after=bound, metrics=metrics) as judge,
    ):
        busy.call_started(state())
        assert busy.flush(WAIT)
        time.sleep(bound * 1.2)  # the judge has been healthy for the bound
        with admin(pg) as other, other.transaction():
            other.execute("LOCK TABLE transcript IN ACCESS EXCLUSIVE MODE")
            busy.transcript_line(state(), Transcript("caller", "hello"))
            began = time.monotonic()
            while time.monotonic() - began < bound * 2.2:  # the write waits all along
                ((silent,),) = rows(
                    pg,
                    "SELECT extract(epoch FROM now() - heartbeat_at) FROM voxbridge_replicas "
                    "WHERE replica_id = %s",
                    busy.replica_id,
                )
                assert silent < bound / 2
                assert live_calls(pg) == [("c1", "live")]
                time.sleep(0.05)
            assert busy.statistics().written == 1  # still waiting
        assert busy.flush(WAIT)
        assert busy.statistics().written == 2
        assert judge.statistics().crashed_since_open == 0
    assert [line.text for line in read_lines(pg, "c1")] == ["hello"]
    assert crash_marks(metrics) == 0
    assert "marked crashed" not in caplog.text


# --- losses: the database goes away, is locked ------------------------------------------------------


def test_a_lost_connection_costs_one_batch_and_the_journal_connects_again(
    pg: str, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    with PostgresJournal(pg, metrics=metrics, heartbeat=QUIET) as journal:
        journal.call_started(state())
        assert journal.flush(WAIT)
        ((backend,),) = writer_backends(pg)
        with admin() as connection:  # a failover, a restart, an administrator
            connection.execute("SELECT pg_terminate_backend(%s)", (backend,))
        wait_until(lambda: (backend,) not in writer_backends(pg), "the backend gone")
        with caplog.at_level(logging.INFO, logger="voxbridge.journal"):
            journal.transcript_line(state(), Transcript("caller", "private words"))
            assert journal.flush(WAIT)
            assert journal.statistics().failed == 1
            journal.transcript_line(state(), Transcript("agent", "and now?"))
            assert journal.flush(WAIT)
        assert errors(metrics) == 1
        assert "journal write failed: 1 of 1 records not written (" in caplog.text
        assert "journal: connected again" in caplog.text
        assert "private words" not in caplog.text
        assert [line.text for line in read_lines(pg, "c1")] == ["and now?"]  # seq 1: a gap at 0
        lines = (Transcript("caller", "private words"), Transcript("agent", "and now?"))
        journal.call_ended(record(lines=lines))
    assert [(ln.seq, ln.text) for ln in read_lines(pg, "c1")] == [
        (0, "private words"),
        (1, "and now?"),
    ]
    assert errors(metrics) == 1


async def test_a_database_that_goes_away_costs_records_never_the_call_and_close_is_bounded(
    autojump_clock: Any, pg: str, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    journal = PostgresJournal(pg, metrics=metrics, heartbeat=QUIET).open()
    drop(database_of(pg))  # gone, with the writer's connection: every reconnect fails
    fake = FakeOpenAIRealtime(caller_transcripts=[(0.5, "my card number is 1234")])
    with caplog.at_level(logging.DEBUG):
        async with bridged(fake, journal, metrics, seconds=2.0) as outcome:
            pass
        assert journal.flush(WAIT)
        for n in range(50):
            journal.transcript_line(state(), Transcript("caller", f"line {n}"))
        began = time.monotonic()
        assert journal.close(timeout=WAIT)
        closing = time.monotonic() - began
    assert closing < 2.0
    assert outcome["disconnect"].reason is Reason.CALLER_STOP
    assert outcome["caller"].close_code == 1000
    stats = journal.statistics()
    assert (stats.written, stats.failed + stats.refused) == (0, 53)
    assert errors(metrics) == 53
    assert not [r for r in caplog.records if r.name == "voxbridge.call" and "journal" in r.message]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("journal write failed" in m for m in warnings)
    said = "\n".join(r.getMessage() for r in caplog.records if r.name == "voxbridge.journal")
    assert f'database "{database_of(pg)}" does not exist' in said  # the reconnects, at debug
    assert "1234" not in said


def test_a_locked_table_cannot_hold_shutdown_past_close_and_one_lock_wait(
    pg: str, metrics: Metrics
) -> None:
    # Another session holds the tables while records are queued and the server shuts down:
    # close() gives up at its timeout and cancels the write it is in (at worst it would end at
    # its lock_timeout), and the writer counts the rest as lost.
    journal = PostgresJournal(pg, metrics=metrics, busy_timeout=0.3, heartbeat=QUIET).open()
    with admin(pg) as other:
        with other.transaction():
            other.execute("LOCK TABLE calls, transcript IN ACCESS EXCLUSIVE MODE")
            journal.call_started(state())
            for n in range(20):
                journal.transcript_line(state(), Transcript("caller", f"line {n}"))
            began = time.monotonic()
            assert not journal.close(timeout=0.1)  # the writer is in a 0.3 s lock wait
            thread = journal._thread
            assert thread is not None
            thread.join(2.0)  # (one lock wait per record would take 6.3 s)
            assert not thread.is_alive()
            assert time.monotonic() - began < 0.1 + 2 * 0.3 + 0.5
    assert errors(metrics) == 21
    stats = journal.statistics()
    assert (stats.written, stats.failed + stats.refused) == (0, 21)
    assert rows(pg, "SELECT count(*) FROM calls") == [(0,)]


def test_close_cancels_a_write_waiting_on_a_lock(pg: str, metrics: Metrics) -> None:
    # A lock held for longer than close() waits, with a long lock_timeout: close() cancels the
    # write in progress, so the writer (and the heartbeat) end at once rather than after 30 s.
    journal = PostgresJournal(pg, metrics=metrics, busy_timeout=30.0, heartbeat=QUIET).open()
    threads = [journal._thread, journal._beat_thread]
    with admin(pg) as other:
        with other.transaction():
            other.execute("LOCK TABLE calls IN ACCESS EXCLUSIVE MODE")
            journal.call_started(state())
            time.sleep(0.1)  # the writer is in its lock wait
            began = time.monotonic()
            assert not journal.close(timeout=0.2)
            closing = time.monotonic() - began
            for thread in threads:
                assert thread is not None
                thread.join(2.0)
                assert not thread.is_alive()
            assert time.monotonic() - began < 1.5
        assert 0.2 <= closing < 0.2 + 3 * INTERRUPT_GRACE + 0.1
    assert errors(metrics) == 1
    assert rows(pg, "SELECT count(*) FROM calls") == [(0,)]


@pytest.mark.hang_limit(30)
def test_a_frozen_database_cannot_hold_close_or_the_writer(
    pg: str, proxy: Proxy, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    # A pooler that hangs with its kernel alive: no statement_timeout fires (the server never
    # sees the query), the TCP timeouts neither (everything is acknowledged). close() gives up
    # at its timeout and cuts the connections, so both threads end.
    journal = PostgresJournal(proxy.dsn(pg), metrics=metrics, heartbeat=0.2).open()
    journal.call_started(state())
    assert journal.flush(WAIT)
    wait_until(lambda: journal._last_beat is not None, "the heartbeat connected")
    threads = [journal._thread, journal._beat_thread]
    assert all(thread is not None and thread.daemon for thread in threads)
    proxy.freeze()
    for n in range(10):
        journal.transcript_line(state(), Transcript("caller", f"line {n}"))
    time.sleep(0.5)  # the writer and the heartbeat are blocked on the frozen proxy
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="voxbridge.journal"):
        assert not journal.close(timeout=0.5)
    closing = time.monotonic() - began
    assert 0.5 <= closing < 0.5 + 3 * INTERRUPT_GRACE + 0.1
    for thread in threads:
        assert thread is not None
        thread.join(2.0)
        assert not thread.is_alive()
    assert "the writer did not finish within 0.5s" in caplog.text
    stats = journal.statistics()
    assert (stats.written, stats.failed + stats.refused) == (1, 10)
    assert errors(metrics) == 10


FROZEN = """
import sys, time
from voxbridge.journal import PostgresJournal
from voxbridge.providers.events import Transcript
from voxbridge.session import CallState
journal = PostgresJournal(sys.argv[1], heartbeat=3600).open()
call = CallState(call_id="c1", accepted_at=0.0, carrier_call_id="CA1")
journal.call_started(call)
assert journal.flush(10)
print("open", flush=True)
sys.stdin.readline()  # the proxy is frozen now
journal.transcript_line(call, Transcript("caller", "into the void"))
time.sleep(0.3)  # the writer sends it, and waits for an answer that never comes
print("closing", flush=True)
print("closed", journal.close(timeout=1.0), flush=True)
"""


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The next line the process prints, within ``timeout`` seconds."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"no line within {timeout}s"
    return process.stdout.readline().strip()


@pytest.mark.hang_limit(40)
def test_a_frozen_database_cannot_keep_the_process_alive_past_close(pg: str, proxy: Proxy) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", FROZEN, proxy.dsn(pg)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert read_line(process, 20) == "open"
        proxy.freeze()
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
        assert read_line(process, 5) == "closing"
        began = time.monotonic()
        assert read_line(process, 5) == "closed False"
        process.wait(5)  # (before: the writer thread held the interpreter's exit for ever)
        assert process.returncode == 0
        assert time.monotonic() - began < 1.0 + 3 * INTERRUPT_GRACE + 2
    finally:
        process.kill()
        process.wait(WAIT)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()


# --- reading it: voxbridge calls, voxbridge transcript, a real server ----------------------------


def test_the_cli_says_when_there_is_no_journal_and_never_creates_one(
    pg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["calls", "--db", pg]) == 1
    assert f"voxbridge calls: no journal at '{pg}'\n" in capsys.readouterr().out
    assert rows(pg, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    unreachable = "postgresql://vb:s3cret@127.0.0.1:1/voxbridge"
    assert main(["transcript", "CA1", "--db", unreachable]) == 1
    out = capsys.readouterr().out
    assert out.startswith("voxbridge transcript: cannot open the journal 'postgresql://vb:***@")
    assert out.count("\n") == 1 and "s3cret" not in out


def test_the_cli_shows_the_dsn_without_its_password(
    pg: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with PostgresJournal(pg) as journal:
        journal.call_ended(record())
    parts = urlsplit(pg)
    user, password = parts.username or "postgres", parts.password or "s3cret"
    # (a server that trusts loopback, as CI's does, ignores the password; it must not be shown)
    secret = urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))
    monkeypatch.setenv("VOXBRIDGE_DB", secret)
    assert main(["calls"]) == 0
    out = capsys.readouterr().out
    assert f"1 most recent calls in {redact_dsn(secret)}" in out and password not in out
    assert main(["transcript", "nobody"]) == 1
    out = capsys.readouterr().out
    assert "no call 'nobody' in postgresql://" in out and password not in out


async def test_a_server_journals_its_calls_to_postgres_and_the_cli_reads_them(pg: str) -> None:
    """``--db postgresql://...``: the server opens its own PostgreSQL journal, and closes it when
    it stops (the replica's row goes with it)."""
    settings = Settings(port=0, db=pg, idle_timeout=30, provider="echo")
    stop = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server: RunningServer = await nursery.start(
                lambda task_status: serve(
                    settings, shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            assert isinstance(server.app.own_journal, PostgresJournal)
            result = await simulate_call(server.media_url, seconds=0.3)
            while server.app.registry.find(result.call_sid) is None:
                await server.app.registry.wait_changed()
            stop.set()
    assert rows(pg, "SELECT count(*) FROM voxbridge_replicas") == [(0,)]
    (call,) = await trio.to_thread.run_sync(recent_calls, pg)
    assert (call.call_sid, call.status, call.reason) == (result.call_sid, "ended", "caller_stop")
    assert call.frames_from_caller > 0

    def cli() -> int:
        return main(["calls", "--db", pg])

    assert await trio.to_thread.run_sync(cli) == 0


def test_the_cli_reads_a_key_value_dsn_and_never_shows_a_password(
    pg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with PostgresJournal(pg) as journal:
        journal.call_ended(record())
    parts = urlsplit(pg)
    user, name = parts.username or "postgres", database_of(pg)
    conninfo = f"host={parts.hostname} port={parts.port} dbname={name} user={user} password='zq xv'"
    assert main(["calls", "--db", conninfo]) == 0
    out = capsys.readouterr().out
    assert (
        f"1 most recent calls in postgresql://{user}:***@{parts.hostname}:{parts.port}/{name} "
        in out
    )
    assert "zq" not in out and "CA1" in out
    unreachable = "host=127.0.0.1 port=1 user=vb password=zq connect_timeout=2"
    assert main(["transcript", "CA1", "--db", unreachable]) == 1
    out = capsys.readouterr().out
    assert out.startswith(
        "voxbridge transcript: cannot open the journal 'postgresql://vb:***@127.0.0.1:1': "
    )
    assert out.count("\n") == 1 and "zq" not in out
    assert main(["calls", "--db", "mysql://vb:zq@db/x"]) == 1  # not a journal, nor shown
    assert capsys.readouterr().out == "voxbridge calls: no journal at 'mysql://(not shown)'\n"


async def test_serve_logs_the_journal_without_its_password(
    pg: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``voxbridge serve --db ...`` logs ``journal <dsn>`` at info level: a password with ``?``
    and ``#`` (libpq takes them unescaped; urllib would have cut the URI there) is not in it."""
    parts = urlsplit(pg)
    user, where = parts.username or "postgres", f"{parts.hostname}:{parts.port}"
    dsn = f"postgresql://{user}:zq?xv#w@{where}/{database_of(pg)}"  # (loopback trusts: ignored)
    settings = Settings(port=0, db=dsn, idle_timeout=30, provider="echo")
    stop = trio.Event()
    with caplog.at_level(logging.INFO), trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve(
                    settings, shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            stop.set()
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("journal ")]
    assert said == [f"journal postgresql://{user}:***@{where}/{database_of(pg)}"]
    assert "zq" not in caplog.text and "xv" not in caplog.text


def test_the_advisory_lock_key_fits_a_bigint() -> None:
    assert 0 < LOCK_KEY < 2**63


def test_without_psycopg_a_postgres_journal_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if the extra were not installed
    journal = journal_for("postgresql://vb@127.0.0.1:1/voxbridge")
    with pytest.raises(JournalError, match=r"needs psycopg: pip install 'voxbridge\[postgres\]'"):
        journal.open()
    assert journal.close()
    assert main(["calls", "--db", "postgresql://vb@127.0.0.1:1/voxbridge"]) == 1
    assert "needs psycopg" in capsys.readouterr().out
