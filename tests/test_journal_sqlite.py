"""The SQLite journal: real database files in ``tmp_path``, real writer threads.

Calls run through the in-memory rig (simulator -> bridge -> ``FakeOpenAIRealtime``) on the autojump
clock; the journal's writer is a real thread, which the call never waits for. Each test that
reads what was written first waits for the writer (``journal.flush``, bounded), and reads with
a connection of its own: what another connection sees is what is committed.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from voxbridge.audio import tone
from voxbridge.carriers.base import StreamStarted
from voxbridge.errors import Disconnect, Reason
from voxbridge.journal import FanoutJournal, JournalError, MemoryJournal, SQLiteJournal
from voxbridge.journal.reader import find_calls, read_lines, recent_calls
from voxbridge.journal.sqlite import SCHEMA_VERSION, iso_utc
from voxbridge.journal.writer import INTERRUPT_GRACE
from voxbridge.metrics import Metrics
from voxbridge.providers.events import ToolExchange, Transcript
from voxbridge.providers.openai_realtime import OpenAIProvider
from voxbridge.session import CallRecord, CallRegistry, CallState, run_call
from voxbridge.settings import Settings
from voxbridge.testing import CallResult, CarrierSimulator, FakeOpenAIRealtime
from voxbridge.testing.memory import accept_carrier, memory_connector

WAIT = 5.0  # wall seconds any wait on the writer may take
T0 = 1_780_000_000.0  # a fixed wall clock for the synthetic records: 2026-05-28T20:26:40Z


def errors(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("voxbridge_journal_write_errors_total")
    assert value is not None
    return value


def rows(db: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as connection:
        return connection.execute(sql, args).fetchall()


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def state(call_id: str = "c1", call_sid: str | None = "CA1", **fields: Any) -> CallState:
    return CallState(call_id=call_id, accepted_at=100.0, carrier_call_id=call_sid, **fields)


def record(call_id: str = "c1", lines: tuple[Transcript, ...] = (), **fields: Any) -> CallRecord:
    values: dict[str, Any] = {
        "call_id": call_id,
        "call_sid": "CA1",
        "stream_sid": "MZ1",
        "reason": Reason.CALLER_STOP,
        "detail": "carrier sent stop",
        "close_code": 1000,
        "accepted_at": 100.0,
        "ended_at": 130.0,
        "last_caller_frame_at": 129.0,
        "upstream_opened": True,
        "upstream_closed_at": 129.5,
        "frames_from_caller": 1450,
        "frames_to_caller": 700,
        "transcript": lines,
        "started_at": 100.5,
        "provider": "openai",
    }
    values.update(fields)
    return CallRecord(**values)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


# --- the call, in memory ---------------------------------------------------------------------------


@asynccontextmanager
async def bridged(
    fake: FakeOpenAIRealtime,
    journal: Any,
    metrics: Metrics,
    *,
    on_start: Callable[[StreamStarted], None] | None = None,
    **caller: Any,
) -> AsyncIterator[dict[str, Any]]:
    """One call: simulator -> bridge -> fake, in memory, journaled to ``journal``. Yields a dict
    that holds ``disconnect``, ``caller`` and ``registry`` once the block exits."""
    fake.url = "ws://fake.invalid/v1/realtime"  # reached in memory; the URL only names it
    outcome: dict[str, Any] = {"registry": CallRegistry()}
    with trio.fail_after(10_000):  # virtual seconds
        async with trio.open_nursery() as nursery:
            caller_end, bridge_end = trio.testing.memory_stream_pair()
            simulator = CarrierSimulator(caller_end, close_wait=500, **caller)
            done = [trio.Event(), trio.Event()]

            async def call() -> None:
                outcome["caller"] = await simulator.run()
                done[0].set()

            nursery.start_soon(call)
            carrier = await accept_carrier(nursery, bridge_end)

            async def bridge() -> None:
                outcome["disconnect"] = await run_call(
                    carrier,
                    OpenAIProvider(fake.endpoint(), instructions="be brief"),
                    settings=Settings(),
                    metrics=metrics,
                    registry=outcome["registry"],
                    journal=journal,
                    connect_stream=memory_connector(nursery, fake),  # type: ignore[arg-type]
                    on_start=on_start,
                )
                done[1].set()

            nursery.start_soon(bridge)
            yield outcome
            for event in done:
                await event.wait()
            nursery.cancel_scope.cancel()


async def test_a_call_writes_one_complete_row_and_its_transcript_lines(
    autojump_clock: Any, db: Path, metrics: Metrics
) -> None:
    fake = FakeOpenAIRealtime(
        echo_delay=0.05,
        caller_transcripts=[(0.5, "hello there"), (1.5, "my order number is 42")],
        speak=[(1.0, tone(0.2), "hi, how can I help?")],
        close_at=(2.0, 1011),  # the first session drops: one resume
        only_session=1,
    )
    with SQLiteJournal(db, metrics=metrics) as journal:
        async with bridged(
            fake, journal, metrics, seconds=4.0, custom_parameters={"lang": "en", "tier": "gold"}
        ) as outcome:
            pass
        assert journal.flush(WAIT)
        assert journal.statistics().failed == journal.statistics().refused == 0
    assert outcome["disconnect"].reason is Reason.CALLER_STOP
    caller: CallResult = outcome["caller"]
    (call,) = outcome["registry"].recent
    assert call.resumes == 1 and call.frames_from_caller > 0 and call.frames_to_caller > 0

    (row,) = recent_calls(db)
    assert (row.call_id, row.call_sid, row.stream_sid) == (
        call.call_id,
        caller.call_sid,
        caller.stream_sid,
    )
    assert (row.carrier, row.provider, row.status) == ("twilio", "openai", "ended")
    assert (row.reason, row.detail, row.close_code) == ("caller_stop", call.detail, 1000)
    assert row.duration_s == pytest.approx(call.duration)
    assert row.upstream_opened is True
    assert (row.frames_from_caller, row.frames_to_caller) == (
        call.frames_from_caller,
        call.frames_to_caller,
    )
    assert (row.bytes_from_caller, row.bytes_to_caller) == (
        call.bytes_from_caller,
        call.bytes_to_caller,
    )
    assert (row.resumes, row.barge_ins) == (1, call.barge_ins)
    assert row.custom_parameters == {"lang": "en", "tier": "gold"}
    assert row.crash_marked_at is None
    started = datetime.fromisoformat(row.started_at.replace("Z", "+00:00"))
    assert row.ended_at is not None
    ended = datetime.fromisoformat(row.ended_at.replace("Z", "+00:00"))
    assert started.tzinfo is not None and started <= ended  # wall clock: both taken when told
    assert row.started_at.endswith("Z") and len(row.started_at) == len("2026-05-01T12:00:03.250Z")

    lines = read_lines(db, call.call_id)
    assert [(line.seq, line.role, line.text) for line in lines] == [
        (0, "caller", "hello there"),
        (1, "agent", "hi, how can I help?"),
        (2, "caller", "my order number is 42"),
    ]
    assert [(t.role, t.text) for t in call.transcript] == [(ln.role, ln.text) for ln in lines]
    assert errors(metrics) == 0


async def test_a_call_refused_at_start_still_gets_one_complete_row(
    autojump_clock: Any, db: Path, metrics: Metrics
) -> None:
    def refuse(start: StreamStarted) -> None:
        raise Disconnect(Reason.PROTOCOL_ERROR, "bad per-call token")

    with SQLiteJournal(db, metrics=metrics) as journal:
        async with bridged(
            FakeOpenAIRealtime(), journal, metrics, on_start=refuse, seconds=1.0
        ) as outcome:
            pass
        assert journal.flush(WAIT)
    assert outcome["disconnect"].reason is Reason.PROTOCOL_ERROR
    (row,) = recent_calls(db)
    assert (row.status, row.reason, row.detail, row.close_code) == (
        "ended",
        "protocol_error",
        "bad per-call token",
        Reason.PROTOCOL_ERROR.close_code,
    )
    assert row.call_sid == outcome["caller"].call_sid
    assert row.upstream_opened is False and row.frames_from_caller == 0
    assert row.started_at <= (row.ended_at or "")


def test_an_end_without_a_start_row_derives_the_start_from_the_calls_clock(db: Path) -> None:
    clock = Clock()
    with SQLiteJournal(db, clock=clock) as journal:
        clock.now = T0 + 30  # told at the end; the call started 29.5 s earlier on its own clock
        journal.call_ended(record(started_at=100.5, ended_at=130.0))
        clock.now = T0 + 40
        journal.call_ended(record("c2", started_at=None, ended_at=110.0))  # never started: accept
        assert journal.flush(WAIT)
    got = {row.call_id: row for row in recent_calls(db)}
    assert got["c1"].started_at == iso_utc(T0 + 0.5)
    assert got["c1"].ended_at == iso_utc(T0 + 30)
    assert got["c1"].duration_s == 30.0  # accept to end, on the call's clock
    assert got["c2"].started_at == iso_utc(T0 + 30)
    assert iso_utc(T0 + 0.5) == "2026-05-28T20:26:40.500Z"


def test_the_start_row_keeps_its_own_start_time_when_the_call_ends(db: Path) -> None:
    clock = Clock()
    with SQLiteJournal(db, clock=clock) as journal:
        journal.call_started(state(provider="openai", custom_parameters={"a": "b"}))
        assert journal.flush(WAIT)
        (live,) = recent_calls(db)
        assert (live.status, live.reason, live.started_at) == ("live", None, iso_utc(T0))
        assert live.custom_parameters == {"a": "b"}
        clock.now = T0 + 100
        journal.call_ended(record())
        assert journal.flush(WAIT)
    (ended,) = recent_calls(db)
    assert (ended.status, ended.started_at, ended.ended_at) == (
        "ended",
        iso_utc(T0),
        iso_utc(T0 + 100),
    )


def test_a_line_is_committed_promptly_and_the_writes_are_durable(db: Path) -> None:
    with SQLiteJournal(db) as journal:
        journal.call_started(state())
        began = time.monotonic()
        journal.transcript_line(state(), Transcript("caller", "hello"))
        with closing(sqlite3.connect(db)) as reader:
            while not reader.execute("SELECT count(*) FROM transcript").fetchone()[0]:
                assert time.monotonic() - began < WAIT, "the line never became visible"
                time.sleep(0.001)
        visible_after = time.monotonic() - began
        assert journal.flush(WAIT)
        writer = journal._connection
        assert writer is not None
        assert writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert visible_after < 1.0  # typically a millisecond or two: no lingering before a commit
    assert rows(db, "PRAGMA journal_mode") == [("wal",)]
    assert rows(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


# --- crashes ----------------------------------------------------------------------------------------


def test_opening_marks_the_calls_a_crash_left_live(
    db: Path, caplog: pytest.LogCaptureFixture, metrics: Metrics
) -> None:
    clock = Clock()
    with SQLiteJournal(db, clock=clock) as journal:
        journal.call_started(state("gone", "CA-gone"))
        journal.transcript_line(state("gone"), Transcript("caller", "still here?"))
        journal.call_started(state("done", "CA-done"))
        journal.call_ended(record("done", call_sid="CA-done"))
    # (the process "died" with the call "gone" in progress: close() does not end calls)
    clock.now = T0 + 3600
    with caplog.at_level(logging.WARNING, logger="voxbridge.journal"):
        reopened = SQLiteJournal(db, clock=clock, metrics=metrics).open()
    try:
        assert reopened.statistics().crashed_at_open == 1
    finally:
        reopened.close()
    assert metrics.registry.get_sample_value("voxbridge_journal_crash_marks_total") == 1
    (gone,) = find_calls(db, "CA-gone")
    assert (gone.status, gone.crash_marked_at, gone.ended_at) == (
        "crashed",
        iso_utc(T0 + 3600),
        None,
    )
    assert [line.text for line in read_lines(db, "gone")] == ["still here?"]
    (done,) = find_calls(db, "CA-done")
    assert (done.status, done.crash_marked_at) == ("ended", None)
    assert "1 calls left live by an earlier run marked crashed" in caplog.text


# --- losses: counted, logged, never raised -------------------------------------------------------


def test_the_queue_is_bounded_and_a_full_queue_is_counted_and_logged(
    db: Path, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    journal = SQLiteJournal(db, metrics=metrics, max_pending=10)  # not open: nothing drains
    said = [Transcript("caller", f"secret line {n}") for n in range(12)]
    with caplog.at_level(logging.DEBUG, logger="voxbridge.journal"):
        journal.call_started(state())
        for line in said:
            journal.transcript_line(state(), line)  # never blocks, never raises
        stats = journal.statistics()
        assert (stats.queued, stats.refused) == (9, 4)  # the last tenth is kept for end records
        journal.call_ended(record(lines=tuple(said)))  # ... so the end record still fits
        assert journal.statistics().queued == 10
        journal.call_ended(record("c2"))  # the hard bound
        assert journal.statistics().refused == 5
    assert errors(metrics) == 5
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "journal queue full" in warnings[0].getMessage()
    assert "secret" not in caplog.text  # counts and reasons, never call content

    journal.open()  # what was queued is written, and the end record fills the refused lines
    try:
        assert journal.flush(WAIT)
    finally:
        journal.close()
    assert [line.text for line in read_lines(db, "c1")] == [line.text for line in said]
    assert [row.call_id for row in recent_calls(db)] == ["c1"]


def test_a_locked_database_is_counted_and_the_journal_recovers(
    db: Path, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    with SQLiteJournal(db, metrics=metrics, busy_timeout=0.05) as journal:
        journal.call_started(state())
        assert journal.flush(WAIT)
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            with caplog.at_level(logging.WARNING, logger="voxbridge.journal"):
                journal.transcript_line(state(), Transcript("caller", "private words"))
                assert journal.flush(WAIT)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert journal.statistics().failed == 1
        assert errors(metrics) == 1
        assert "journal write failed: 1 of 1 records not written" in caplog.text
        assert "database is locked" in caplog.text
        assert "private words" not in caplog.text
        journal.transcript_line(state(), Transcript("agent", "and now?"))
        assert journal.flush(WAIT)
        assert [line.text for line in read_lines(db, "c1")] == ["and now?"]  # seq 1: a gap at 0
        lines = (Transcript("caller", "private words"), Transcript("agent", "and now?"))
        journal.call_ended(record(lines=lines))
        assert journal.flush(WAIT)
    assert [(ln.seq, ln.text) for ln in read_lines(db, "c1")] == [
        (0, "private words"),  # filled in from the record at the end
        (1, "and now?"),
    ]
    assert errors(metrics) == 1


def test_a_locked_database_cannot_hold_shutdown_past_close_and_one_busy_wait(
    db: Path, metrics: Metrics
) -> None:
    # Another process holds the write lock while a batch is queued and the server shuts down:
    # close() gives up at its timeout, and the writer stops after at most the write it is in
    # (one busy_timeout for the whole batch, not one per record), counting the rest as lost.
    journal = SQLiteJournal(db, metrics=metrics, busy_timeout=0.3).open()
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        journal.call_started(state())
        for n in range(20):
            journal.transcript_line(state(), Transcript("caller", f"line {n}"))
        started = time.monotonic()
        assert not journal.close(timeout=0.1)  # the writer is in a 0.3 s busy wait
        thread = journal._thread
        assert thread is not None
        thread.join(2.0)  # (one busy wait per record would take 6.3 s)
        assert not thread.is_alive()
        assert time.monotonic() - started < 0.1 + 2 * 0.3 + 0.5
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert errors(metrics) == 21  # every record queued was counted as lost, none written
    assert journal.statistics().failed + journal.statistics().refused == 21


LOCKED = """
import sqlite3, sys, time
from voxbridge.journal import SQLiteJournal
from voxbridge.session import CallState
journal = SQLiteJournal(sys.argv[1], busy_timeout=30.0).open()
other = sqlite3.connect(sys.argv[1], isolation_level=None)
other.execute("BEGIN IMMEDIATE")  # another process holds the write lock, for good
journal.call_started(CallState(call_id="c1", accepted_at=0.0, carrier_call_id="CA1"))
time.sleep(0.2)  # the writer is in its 30 s busy wait
began = time.monotonic()
print("closed", journal.close(timeout=0.5), flush=True)
print(f"took {time.monotonic() - began:.1f}", flush=True)
"""


def test_a_locked_database_cannot_keep_the_process_alive_past_close(db: Path) -> None:
    # close() gives up at its timeout; the writer, still in its busy wait, is a daemon thread,
    # so the process exits at once instead of 30 s later.
    SQLiteJournal(db).open().close()  # the schema
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", LOCKED, str(db)], capture_output=True, text=True, timeout=20
    )
    elapsed = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    closed, took = done.stdout.splitlines()
    assert closed == "closed False"
    assert 0.5 <= float(took.removeprefix("took ")) <= 0.5 + 3 * INTERRUPT_GRACE
    assert elapsed < 10  # the interpreter's start, 0.7 s, the exit: not the 30 s busy wait
    assert rows(db, "SELECT count(*) FROM calls") == [(0,)]


async def test_a_failing_disk_is_counted_and_logged_and_the_call_ends_with_its_own_reason(
    autojump_clock: Any, db: Path, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    journal = SQLiteJournal(db, metrics=metrics).open()
    try:
        connection = journal._connection
        assert connection is not None
        connection.close()  # the database goes away under the writer
        fake = FakeOpenAIRealtime(caller_transcripts=[(0.5, "my card number is 1234")])
        with caplog.at_level(logging.DEBUG):
            async with bridged(fake, journal, metrics, seconds=2.0) as outcome:
                pass
            assert journal.flush(WAIT)
    finally:
        journal.close()
    assert outcome["disconnect"].reason is Reason.CALLER_STOP
    assert outcome["caller"].close_code == 1000
    # start, line and end: each lost, each counted; nothing reached the call
    assert journal.statistics().failed == 3
    assert errors(metrics) == 3
    assert not [r for r in caplog.records if r.name == "voxbridge.call" and "journal" in r.message]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("journal write failed" in r.getMessage() for r in warnings)
    assert not any("1234" in r.getMessage() for r in warnings)
    assert recent_calls(db) == []


def test_records_after_close_are_refused_and_counted(db: Path, metrics: Metrics) -> None:
    journal = SQLiteJournal(db, metrics=metrics).open()
    assert journal.close()
    assert journal.close()  # idempotent
    journal.call_started(state())
    journal.call_ended(record())
    assert journal.statistics().refused == 2
    assert errors(metrics) == 2
    with pytest.raises(JournalError, match="closed"):
        journal.open()


@pytest.mark.parametrize(
    ("make_path", "message"),
    [
        (lambda tmp: tmp / "missing" / "dir" / "x.db", "cannot open the journal"),
        (lambda tmp: "postgresql://db.example/voxbridge", "not a SQLite path .*journal_for"),
        (lambda tmp: "mysql://vb:s3cret@db/x", r"journal 'mysql://\(not shown\)': not a SQLite"),
    ],
)
def test_a_journal_that_cannot_be_opened_says_why(
    tmp_path: Path, make_path: Callable[[Path], Any], message: str
) -> None:
    journal = SQLiteJournal(make_path(tmp_path))
    with pytest.raises(JournalError, match=message) as refused:
        journal.open()
    assert "s3cret" not in str(refused.value)
    assert not journal.is_open
    assert journal.close()


def test_not_a_database_and_a_newer_schema_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(JournalError, match="cannot open the journal"):
        SQLiteJournal(junk).open()
    newer = tmp_path / "newer.db"
    with closing(sqlite3.connect(newer)) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(JournalError, match="written by a newer voxbridge"):
        SQLiteJournal(newer).open()


def test_a_journal_never_closed_writes_its_records_and_lets_the_process_exit(db: Path) -> None:
    script = (
        "import sys\n"
        "from voxbridge.journal import SQLiteJournal\n"
        "from voxbridge.session import CallState\n"
        "from voxbridge.providers.events import Transcript\n"
        "j = SQLiteJournal(sys.argv[1]).open()\n"
        "s = CallState(call_id='c1', accepted_at=0.0, carrier_call_id='CA1')\n"
        "j.call_started(s)\n"
        "for n in range(200):\n"
        "    j.transcript_line(s, Transcript('caller', f'line {n}'))\n"
        "# no close(): the interpreter exits with records still queued\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(db)], capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 0, done.stderr
    assert len(read_lines(db, "c1")) == 200
    assert [row.status for row in recent_calls(db)] == ["live"]


def test_the_writer_is_a_daemon_thread_and_close_still_flushes(db: Path) -> None:
    journal = SQLiteJournal(db).open()
    assert journal._thread is not None and journal._thread.daemon
    journal.call_started(state())
    for n in range(100):
        journal.transcript_line(state(), Transcript("caller", f"line {n}"))
    assert journal.close(timeout=WAIT)
    assert len(read_lines(db, "c1")) == 100


def test_memory_path_keeps_the_journal_in_the_writer(metrics: Metrics) -> None:
    with SQLiteJournal(":memory:", metrics=metrics) as journal:
        journal.call_started(state())
        journal.call_ended(record())
        assert journal.flush(WAIT)
        assert journal.statistics().written == 2
    assert errors(metrics) == 0


def test_the_call_methods_are_safe_from_many_threads(db: Path) -> None:
    with SQLiteJournal(db) as journal:

        def one_call(n: int) -> None:
            s = state(f"call{n}", f"CA{n}")
            journal.call_started(s)
            for k in range(20):
                journal.transcript_line(s, Transcript("caller", f"{n}:{k}"))
            journal.call_ended(record(f"call{n}", call_sid=f"CA{n}"))

        threads = [threading.Thread(target=one_call, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert journal.flush(WAIT)
    assert len(recent_calls(db, limit=100)) == 8
    assert rows(db, "SELECT count(*) FROM transcript") == [(160,)]
    for n in range(8):
        assert [line.text for line in read_lines(db, f"call{n}")] == [f"{n}:{k}" for k in range(20)]


# --- sinks -------------------------------------------------------------------------------------------


class Failing:
    def __init__(self) -> None:
        self.told = 0

    def call_started(self, state: CallState) -> None:
        self.told += 1
        raise OSError("sink down")

    def transcript_line(self, state: CallState, line: Transcript) -> None:
        self.told += 1
        raise OSError("sink down")

    def call_ended(self, record: CallRecord) -> None:
        self.told += 1
        raise OSError("sink down")


def test_fanout_tells_every_journal_even_when_one_fails() -> None:
    first, second, failing = MemoryJournal(), MemoryJournal(), Failing()
    fanout = FanoutJournal(first, failing, second)
    with pytest.raises(OSError, match="sink down"):
        fanout.call_started(state())
    with pytest.raises(OSError):
        fanout.transcript_line(state(), Transcript("caller", "hi"))
    with pytest.raises(OSError):
        fanout.call_ended(record())
    assert failing.told == 3
    for memory in (first, second):
        assert [line.text for line in memory.lines["c1"]] == ["hi"]
        assert list(memory.records) == [record()]
    with pytest.raises(ExceptionGroup) as group:
        FanoutJournal(Failing(), Failing()).call_ended(record())
    assert len(group.value.exceptions) == 2
    FanoutJournal().call_ended(record())  # no sinks: nothing to do


async def test_a_fanout_with_a_failing_sink_still_journals_the_call(
    autojump_clock: Any, db: Path, metrics: Metrics
) -> None:
    memory = MemoryJournal()
    with SQLiteJournal(db, metrics=metrics) as durable:
        fake = FakeOpenAIRealtime(caller_transcripts=[(0.5, "hello")])
        async with bridged(
            fake, FanoutJournal(durable, Failing(), memory), metrics, seconds=2.0
        ) as outcome:
            pass
        assert durable.flush(WAIT)
    assert outcome["disconnect"].reason is Reason.CALLER_STOP
    (call,) = outcome["registry"].recent
    assert [row.status for row in recent_calls(db)] == ["ended"]
    assert [line.text for line in read_lines(db, call.call_id)] == ["hello"]
    assert list(memory.records) == [call]
    assert errors(metrics) == 3  # the failing sink: counted by the call, once per event


def test_custom_parameters_are_stored_as_json(db: Path) -> None:
    with SQLiteJournal(db) as journal:
        journal.call_ended(record(custom_parameters=(("name", "Zoë"), ("n", "1"))))
    ((stored,),) = rows(db, "SELECT custom_parameters FROM calls")
    assert json.loads(stored) == {"name": "Zoë", "n": "1"}


def test_the_per_call_token_is_not_journaled(db: Path) -> None:
    from voxbridge.journal.sqlite import REDACTED_PARAMETERS
    from voxbridge.server.security import TOKEN_PARAMETER

    assert TOKEN_PARAMETER in REDACTED_PARAMETERS
    with SQLiteJournal(db) as journal:
        journal.call_started(state(custom_parameters={TOKEN_PARAMETER: "eyJ.secret.sig", "a": "b"}))
        journal.call_ended(record(custom_parameters=((TOKEN_PARAMETER, "eyJ.secret.sig"),)))
    (row,) = recent_calls(db)
    assert row.custom_parameters == {TOKEN_PARAMETER: "(redacted)"}
    assert "secret" not in str(rows(db, "SELECT * FROM calls"))


# --- agents, usage, tools and key presses (schema version 2) -------------------------------------

LOOKUP = ToolExchange(
    "call_7", "lookup_order", '{"order":"42"}', '{"status":"shipped"}', outcome="ok"
)
SLOW = ToolExchange(
    "call_8", "lookup_order", "{}", '{"error":"the tool did not answer"}', "timeout"
)


def test_the_agent_usage_tool_calls_and_key_presses_are_journaled(db: Path) -> None:
    clock = Clock()
    memory = MemoryJournal()
    conversation = (
        Transcript("caller", "where is my order?"),
        Transcript("dtmf", "42#"),
        LOOKUP,
        Transcript("agent", "it has shipped"),
        SLOW,
    )
    with SQLiteJournal(db, clock=clock) as journal:
        sinks = FanoutJournal(journal, memory)
        live = state(agent="support")
        sinks.call_started(live)
        assert journal.flush(WAIT)
        assert rows(db, "SELECT status, agent, usage, tool_calls, dtmf_digits FROM calls") == [
            ("live", "support", "{}", 0, 0)
        ]
        for item in conversation[:-1]:  # the last exchange reaches the journal only at the end
            clock.now += 1
            sinks.transcript_line(live, item)
        clock.now = T0 + 30
        sinks.call_ended(
            record(
                lines=conversation,
                agent="support",
                usage=(
                    ("input_audio_tokens", 1200.0),
                    ("input_cached_tokens", 300),
                    ("output_audio_tokens", 3400.0),
                    ("output_text_tokens", 12.5),
                ),
                tool_calls=2,
                dtmf_digits=3,
            )
        )
    assert rows(db, "SELECT status, agent, usage, tool_calls, dtmf_digits FROM calls") == [
        (
            "ended",
            "support",
            '{"input_audio_tokens":1200,"input_cached_tokens":300,'
            '"output_audio_tokens":3400,"output_text_tokens":12.5}',
            2,
            3,
        )
    ]
    lookup_json = (
        '{"call_id":"call_7","name":"lookup_order","arguments":"{\\"order\\":\\"42\\"}",'
        '"output":"{\\"status\\":\\"shipped\\"}","outcome":"ok"}'
    )
    assert json.loads(lookup_json) == {
        "call_id": "call_7",
        "name": "lookup_order",
        "arguments": '{"order":"42"}',
        "output": '{"status":"shipped"}',
        "outcome": "ok",
    }
    assert rows(db, "SELECT seq, role, text, at, tool FROM transcript ORDER BY seq") == [
        (0, "caller", "where is my order?", iso_utc(T0 + 1), None),
        (1, "dtmf", "42#", iso_utc(T0 + 2), None),
        (
            2,
            "tool",
            'lookup_order({"order":"42"}) -> {"status":"shipped"}',
            iso_utc(T0 + 3),
            lookup_json,
        ),
        (3, "agent", "it has shipped", iso_utc(T0 + 4), None),
        (4, "tool", SLOW.text, iso_utc(T0 + 30), json.dumps(attrs_of(SLOW), separators=(",", ":"))),
    ]

    (call,) = recent_calls(db)
    assert (call.agent, call.tool_calls, call.dtmf_digits) == ("support", 2, 3)
    assert call.usage == {
        "input_audio_tokens": 1200,
        "input_cached_tokens": 300,
        "output_audio_tokens": 3400,
        "output_text_tokens": 12.5,
    }
    lines = read_lines(db, "c1")
    assert [(line.role, line.text, line.tool) for line in lines] == [
        ("caller", "where is my order?", None),
        ("dtmf", "42#", None),
        ("tool", LOOKUP.text, LOOKUP),
        ("agent", "it has shipped", None),
        ("tool", SLOW.text, SLOW),
    ]
    assert memory.lines["c1"] == list(conversation[:-1])
    (ended,) = memory.records
    assert ended.transcript == conversation


def attrs_of(exchange: ToolExchange) -> dict[str, str]:
    return {
        "call_id": exchange.call_id,
        "name": exchange.name,
        "arguments": exchange.arguments,
        "output": exchange.output,
        "outcome": exchange.outcome,
    }


def test_a_call_without_usage_stores_an_empty_object_and_its_agent(db: Path) -> None:
    with SQLiteJournal(db) as journal:
        journal.call_ended(record(agent="default"))
        journal.call_ended(record("c2", usage=(("billed_seconds", float("inf")),)))
    assert rows(db, "SELECT call_id, agent, usage, tool_calls, dtmf_digits FROM calls") == [
        ("c1", "default", "{}", 0, 0),
        ("c2", "default", "{}", 0, 0),  # JSON has no infinity: a non-finite amount is left out
    ]


# The schema of version 1, as voxbridge wrote it before agents, usage, tools and key presses.
V1_SCHEMA = """
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
    custom_parameters TEXT NOT NULL DEFAULT '{}'
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
    PRIMARY KEY (call_id, seq)
) WITHOUT ROWID;
"""


def v1_journal(path: Path) -> Path:
    """A journal as voxbridge wrote it at schema version 1: an ended call ``old1`` (CallSid
    ``CA-old``) with two lines, and a call ``old2`` left live."""
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.executescript(V1_SCHEMA)
        connection.execute("PRAGMA user_version = 1")
        with connection:
            connection.execute(
                "INSERT INTO calls (call_id, call_sid, stream_sid, carrier, provider, status, "
                "started_at, ended_at, duration_s, reason, detail, close_code, upstream_opened, "
                "frames_from_caller, frames_to_caller, custom_parameters) VALUES "
                "('old1', 'CA-old', 'MZ-old', 'twilio', 'openai', 'ended', ?, ?, 12.5, "
                "'caller_stop', 'carrier sent stop', 1000, 1, 600, 300, '{\"a\":\"b\"}')",
                (iso_utc(T0 - 100), iso_utc(T0 - 87.5)),
            )
            connection.execute(
                "INSERT INTO calls (call_id, call_sid, carrier, provider, status, started_at) "
                "VALUES ('old2', 'CA-old2', 'twilio', 'openai', 'live', ?)",
                (iso_utc(T0 - 50),),
            )
            connection.executemany(
                "INSERT INTO transcript (call_id, seq, role, text, at) VALUES ('old1', ?, ?, ?, ?)",
                [(0, "caller", "hello", iso_utc(T0 - 99)), (1, "agent", "hi", iso_utc(T0 - 98))],
            )
    return path


def schema_of(path: Path) -> dict[str, object]:
    with closing(sqlite3.connect(path)) as connection:
        return {
            "version": connection.execute("PRAGMA user_version").fetchone()[0],
            "calls": connection.execute("PRAGMA table_info(calls)").fetchall(),
            "transcript": connection.execute("PRAGMA table_info(transcript)").fetchall(),
            "indexes": connection.execute(
                "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name"
            ).fetchall(),
        }


def test_a_version_1_journal_is_migrated_when_opened_and_keeps_its_calls(tmp_path: Path) -> None:
    old = v1_journal(tmp_path / "old.db")
    new = tmp_path / "new.db"
    SQLiteJournal(new).open().close()
    assert schema_of(old)["version"] == 1
    clock = Clock()
    with SQLiteJournal(old, clock=clock) as journal:
        assert journal.statistics().crashed_at_open == 1  # old2, left live by the old voxbridge
        journal.call_started(state("c3", "CA3", agent="sales"))
        journal.transcript_line(state("c3", "CA3"), LOOKUP)
        journal.call_ended(record("c3", call_sid="CA3", agent="sales", tool_calls=1, dtmf_digits=2))
    # A migrated journal has exactly the tables and indexes of a new one, and its version.
    assert schema_of(old) == schema_of(new)
    assert schema_of(new)["version"] == SCHEMA_VERSION == 2

    by_id = {call.call_id: call for call in recent_calls(old)}
    assert set(by_id) == {"old1", "old2", "c3"}
    old1 = by_id["old1"]
    assert (old1.status, old1.reason, old1.duration_s, old1.custom_parameters) == (
        "ended",
        "caller_stop",
        12.5,
        {"a": "b"},
    )
    assert (old1.agent, old1.usage, old1.tool_calls, old1.dtmf_digits) == (None, {}, 0, 0)
    assert (by_id["old2"].status, by_id["old2"].crash_marked_at) == ("crashed", iso_utc(T0))
    assert (by_id["c3"].agent, by_id["c3"].tool_calls, by_id["c3"].dtmf_digits) == ("sales", 1, 2)
    assert [(ln.role, ln.text, ln.tool) for ln in read_lines(old, "old1")] == [
        ("caller", "hello", None),
        ("agent", "hi", None),
    ]
    assert [ln.tool for ln in read_lines(old, "c3")] == [LOOKUP]


def test_a_version_1_journal_is_read_as_it_is_and_not_migrated_by_readers(
    tmp_path: Path,
) -> None:
    old = v1_journal(tmp_path / "old.db")
    before = schema_of(old)
    (call,) = find_calls(old, "CA-old")
    assert (call.call_id, call.agent, call.usage, call.tool_calls, call.dtmf_digits) == (
        "old1",
        None,
        {},
        0,
        0,
    )
    assert [(ln.seq, ln.role, ln.text, ln.tool) for ln in read_lines(old, "old1")] == [
        (0, "caller", "hello", None),
        (1, "agent", "hi", None),
    ]
    assert [c.call_id for c in recent_calls(old)] == ["old2", "old1"]
    assert schema_of(old) == before  # still version 1, no column added


def test_a_migration_that_fails_leaves_the_journal_as_it_was(tmp_path: Path) -> None:
    old = v1_journal(tmp_path / "old.db")
    with closing(sqlite3.connect(old)) as connection:  # a column of that name is already there
        connection.execute("ALTER TABLE transcript ADD COLUMN tool TEXT")
    before = schema_of(old)
    with pytest.raises(
        JournalError, match=r"cannot open the journal .*duplicate column name: tool"
    ):
        SQLiteJournal(old).open()
    assert schema_of(old) == before  # the migration is one transaction: no half-migrated file
    assert rows(old, "SELECT status FROM calls WHERE call_id = 'old2'") == [("live",)]
