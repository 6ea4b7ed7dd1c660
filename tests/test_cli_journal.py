"""``voxbridge calls`` and ``voxbridge transcript CALL_SID`` over a journal written by
``SQLiteJournal`` or ``PostgresJournal`` (a fixed wall clock, so the table's times are known).

The tests over a written journal run against both back ends (``where``); PostgreSQL's are skipped,
saying why, without ``VOXBRIDGE_TEST_POSTGRES`` (tests/services.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from test_journal_sqlite import v1_journal

from voxbridge.cli import main
from voxbridge.errors import Reason
from voxbridge.journal import PostgresJournal, SQLiteJournal, WriterJournal
from voxbridge.journal.schema import is_postgres
from voxbridge.providers.events import ToolExchange, Transcript
from voxbridge.session import CallRecord, CallState

T0 = 1_780_000_000.0  # 2026-05-28T20:26:40Z
SID = "CA" + "a" * 32


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _record(call_id: str, call_sid: str | None, **fields: Any) -> CallRecord:
    values: dict[str, Any] = {
        "call_id": call_id,
        "call_sid": call_sid,
        "stream_sid": "MZ1",
        "reason": Reason.CALLER_STOP,
        "detail": "carrier sent stop",
        "close_code": 1000,
        "accepted_at": 0.0,
        "ended_at": 75.25,
        "last_caller_frame_at": 75.0,
        "upstream_opened": True,
        "upstream_closed_at": 75.1,
        "frames_from_caller": 3760,
        "frames_to_caller": 1200,
        "started_at": 0.25,
        "resumes": 2,
        "barge_ins": 3,
    }
    values.update(fields)
    return CallRecord(**values)


@pytest.fixture(params=["sqlite", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where a journal goes: a SQLite file, or a new PostgreSQL database (dropped afterwards)."""
    if request.param == "sqlite":
        yield str(tmp_path / "calls.db")
        return
    from test_journal_postgres import fresh_database  # skips without psycopg or PostgreSQL

    with fresh_database() as dsn:
        yield dsn


def journal_at(where: str, clock: Clock) -> WriterJournal:
    if is_postgres(where):
        return PostgresJournal(where, clock=clock)
    return SQLiteJournal(where, clock=clock)


@pytest.fixture
def db(where: str) -> str:
    """A journal with a finished call (and its transcript), a crashed one, a live one and one
    that never started."""
    path = where
    clock = Clock()
    with journal_at(path, clock) as journal:  # closes leaving "crashed1" live, as if killed
        crashed = CallState(call_id="crashed1", accepted_at=0.0, carrier_call_id="CA-crashed")
        journal.call_started(crashed)
    clock.now = T0 + 60
    with journal_at(path, clock) as journal:  # marks "crashed1" crashed
        state = CallState(call_id="done1", accepted_at=0.0, carrier_call_id=SID)
        journal.call_started(state)
        lines = (
            Transcript("caller", "hello, I need help with my order"),
            Transcript("agent", "[bold red]sure[/] \x1b[2Jwhat is the number?"),
        )
        for line in lines:
            journal.transcript_line(state, line)
        clock.now = T0 + 135.25
        journal.call_ended(_record("done1", SID, transcript=lines))
        clock.now = T0 + 200
        journal.call_ended(
            _record(
                "nostart1",
                None,
                reason=Reason.START_TIMEOUT,
                close_code=Reason.START_TIMEOUT.close_code,
                started_at=None,
                ended_at=10.0,
                frames_from_caller=0,
                frames_to_caller=0,
                resumes=0,
                barge_ins=0,
            )
        )
        clock.now = T0 + 300
        journal.call_started(CallState(call_id="live1", accepted_at=0.0, carrier_call_id="CA-live"))
        assert journal.flush(5)
        # closing leaves "live1" live, as a server killed mid-call would
    return path


def test_calls_lists_recent_calls_newest_first(
    db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["calls", "--db", db]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    order = [next(i for i, ln in enumerate(lines) if key in ln) for key in ("CA-live", SID)]
    assert order == sorted(order)  # newest first
    row = next(ln for ln in lines if SID in ln)
    assert "2026-05-28 20:27:40" in row  # started (UTC): the start row's own time
    assert "caller_stop" in row
    assert "1:15" in row  # 75.25 s
    assert "3760/1200" in row
    assert " 2 " in row and " 3 " in row  # resumes, barge-ins
    assert "crashed" in next(ln for ln in lines if "CA-crashed" in ln)
    assert "live" in next(ln for ln in lines if "CA-live" in ln)
    never = next(ln for ln in lines if "nostart1" in ln)  # no CallSid: the voxbridge id
    assert "start_timeout" in never and "10.0 s" in never


def test_calls_limit_and_the_db_from_the_environment(
    db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOXBRIDGE_DB", db)
    assert main(["calls", "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "CA-live" in out and SID not in out


@pytest.mark.parametrize("command", [["calls"], ["transcript", SID]])
def test_a_missing_journal_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    missing = tmp_path / "nowhere.db"
    assert main([*command, "--db", str(missing)]) == 1
    out = capsys.readouterr().out
    assert f"no journal at '{missing}'\n" in out
    assert "Traceback" not in out
    assert not missing.exists()  # reading never creates a journal


def test_a_file_that_is_not_a_journal_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.db"
    junk.write_text("not a database\n" * 200)
    assert main(["calls", "--db", str(junk)]) == 1
    assert "not a readable voxbridge journal: file is not a database\n" in capsys.readouterr().out


def test_transcript_prints_the_lines_in_order_as_plain_text(
    db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["transcript", SID, "--db", db]) == 0
    out = capsys.readouterr().out
    assert SID in out and "done1" in out and "caller_stop" in out
    caller = out.index("caller: hello, I need help with my order")
    agent = out.index("agent: [bold red]sure[/] \N{REPLACEMENT CHARACTER}[2Jwhat is the number?")
    assert caller < agent
    assert "\x1b[2J" not in out  # a transcript cannot drive the terminal


def test_transcript_by_voxbridge_id_and_of_a_call_with_no_lines(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["transcript", "crashed1", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "crashed" in out and "(no transcript lines)" in out


def test_transcript_of_an_unknown_call_is_one_line_and_exit_1(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["transcript", "CA-unknown", "--db", db]) == 1
    out = capsys.readouterr().out
    assert "no call 'CA-unknown' in" in out
    assert "Traceback" not in out


def test_an_empty_journal_says_so(where: str, capsys: pytest.CaptureFixture[str]) -> None:
    journal_at(where, Clock()).open().close()
    assert main(["calls", "--db", where]) == 0
    assert "no calls in" in capsys.readouterr().out


# --- agents, usage, tools and key presses ----------------------------------------------------------

LOOKUP = ToolExchange("call_1", "lookup_order", '{"order":"42"}', '{"status":"shipped"}')
SLOW = ToolExchange("call_2", "refund", "{}", '{"error":"the tool did not answer within 10 s"}')


@pytest.fixture
def agents_db(where: str) -> str:
    """An OpenAI call of the ``support`` agent with key presses and two tool calls (one timed
    out), and an Ultravox call of the default agent."""
    path = where
    clock = Clock()
    with journal_at(path, clock) as journal:
        state = CallState(
            call_id="tools1", accepted_at=0.0, carrier_call_id="CA-tools", agent="support"
        )
        journal.call_started(state)
        conversation = (
            Transcript("caller", "where is my order?"),
            Transcript("dtmf", "42#"),
            LOOKUP,
            attrs.evolve(SLOW, outcome="timeout"),
            Transcript("agent", "it has shipped"),
        )
        for item in conversation:
            journal.transcript_line(state, item)
        journal.call_ended(
            _record(
                "tools1",
                "CA-tools",
                transcript=conversation,
                agent="support",
                provider="openai",
                usage=(
                    ("input_audio_tokens", 1000.0),
                    ("input_cached_tokens", 800.0),
                    ("input_text_tokens", 234.0),
                    ("output_audio_tokens", 3400.0),
                    ("output_text_tokens", 56.0),
                ),
                tool_calls=2,
                dtmf_digits=3,
            )
        )
        clock.now = T0 + 10
        journal.call_ended(
            _record("ux1", "CA-ultravox", provider="ultravox", usage=(("billed_seconds", 42.5),))
        )
    return path


def test_calls_shows_the_agent_tool_calls_and_usage(
    agents_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["calls", "--db", agents_db]) == 0
    out = capsys.readouterr().out
    header = next(ln for ln in out.splitlines() if "CallSid" in ln)
    assert header.split() == [
        "started",
        "(UTC)",
        "CallSid",
        "agent",
        "reason",
        "duration",
        "frames",
        "in/out",
        "resumes",
        "barge-ins",
        "tools",
        "usage",
    ]
    tools = next(ln for ln in out.splitlines() if "CA-tools" in ln)
    assert tools.split()[2:4] == ["CA-tools", "support"]
    assert tools.split()[-9:] == ["2", "3", "2", "in", "1.2k", "tok,", "out", "3.5k", "tok"]
    ultravox = next(ln for ln in out.splitlines() if "CA-ultravox" in ln)
    assert ultravox.split()[3] == "default"
    assert ultravox.rstrip().endswith(" 0   42.5 s billed")


def test_transcript_shows_key_presses_and_tool_calls(
    agents_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["transcript", "CA-tools", "--db", agents_db]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("call CA-tools (voxbridge id tools1, agent support), started")
    assert lines[1:] == [
        "caller: where is my order?",
        "keys: 42#",
        'tool: lookup_order({"order":"42"}) -> {"status":"shipped"}',
        'tool: refund({}) -> {"error":"the tool did not answer within 10 s"} (timeout)',
        "agent: it has shipped",
    ]


def test_calls_and_transcript_read_a_journal_of_an_older_voxbridge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = v1_journal(tmp_path / "old.db")
    assert main(["calls", "--db", str(old)]) == 0
    row = next(ln for ln in capsys.readouterr().out.splitlines() if "CA-old " in ln)
    assert row.split()[2:5] == ["CA-old", "-", "caller_stop"]  # no agent
    assert row.split()[-3:] == ["0", "0", "-"]  # barge-ins, tools, no usage
    assert main(["transcript", "CA-old", "--db", str(old)]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["caller: hello", "agent: hi"]
