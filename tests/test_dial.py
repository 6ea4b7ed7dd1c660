"""``voxbridge dial``: an outbound call through the fake Twilio, in-process.

``main(["dial", ...])`` runs its own ``trio.run``, so it runs in a worker thread while this test's
event loop serves the fake Twilio (REST on loopback) and a TwiML application for the webhook
(tests/test_fake_twilio.py's ``TwimlApp``). The application writes the call's journal record
when the webhook arrives (as voxbridge would during the call; a fixed clock, so the line printed
is known), then answers ``<Hangup/>``.
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from rich.console import Console
from test_cli_journal import T0, Clock, _record
from test_fake_twilio import ACCOUNT, BUDGET, FROM, HANGUP, TO, TOKEN, HookRequest, TwimlApp

from voxbridge.agents import AgentConfig
from voxbridge.cli import main
from voxbridge.dial import lookup_agent, machine_detection, print_journal_line
from voxbridge.journal import SQLiteJournal
from voxbridge.session import CallState
from voxbridge.settings import Settings, SettingsError
from voxbridge.testing.fake_twilio import FakeTwilio

ENVIRONMENT = (
    "VOXBRIDGE_PUBLIC_URL",
    "VOXBRIDGE_TWILIO_ACCOUNT_SID",
    "VOXBRIDGE_TWILIO_AUTH_TOKEN",
    "VOXBRIDGE_TWILIO_API_KEY",
    "VOXBRIDGE_TWILIO_API_SECRET",
    "VOXBRIDGE_TWILIO_API_URL",
    "VOXBRIDGE_AGENTS",
    "VOXBRIDGE_DB",
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


def journal_the_call(db: Path, sid: str) -> None:
    """What voxbridge's journal would hold after the call (``voxbridge calls``' fixture values)."""
    with SQLiteJournal(db, clock=Clock()) as journal:
        journal.call_started(CallState(call_id="dialled1", accepted_at=0.0, carrier_call_id=sid))
        journal.call_ended(_record("dialled1", sid))
        assert journal.flush(5)


@asynccontextmanager
async def twilio(
    db: Path | None = None, **knobs: Any
) -> AsyncIterator[tuple[FakeTwilio, list[str]]]:
    """The fake Twilio and a webhook application; yields the fake and the ``dial`` flags."""

    async def answer(request: HookRequest) -> str:
        if db is not None:
            await trio.to_thread.run_sync(journal_the_call, db, request.form["CallSid"])
        return HANGUP

    fake, app = FakeTwilio(ACCOUNT, auth_token=TOKEN, **knobs), TwimlApp(answer)
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            api = await nursery.start(fake.serve)
            public = await nursery.start(app.serve)
            flags = [
                *("--public-url", public),
                *("--twilio-account-sid", ACCOUNT),
                *("--twilio-auth-token", TOKEN),
                *("--twilio-api-url", api),
            ]
            yield fake, flags
            nursery.cancel_scope.cancel()


async def dial(argv: list[str]) -> int:
    """``voxbridge dial`` in a worker thread (it runs its own trio loop)."""
    status = await trio.to_thread.run_sync(main, ["dial", *argv], abandon_on_cancel=True)
    assert isinstance(status, int)
    return status


async def test_dial_waits_for_the_call_and_prints_its_journal_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "calls.db"
    async with twilio(db) as (fake, flags):
        status = await dial([TO, "--from", FROM, "--wait", "--db", str(db), *flags])
        [call] = fake.calls.values()
    sid = call.sid
    assert status == 0
    assert capsys.readouterr().out.splitlines() == [
        sid,
        f"call {sid}: completed",
        f"journal: 2026-05-28 20:26:40 UTC  {sid}  caller_stop  1:15  frames in/out 3760/1200"
        "  resumes 2  barge-ins 3",
    ]
    create, *polls = fake.requests
    assert (create.method, create.path, create.username) == (
        "POST",
        f"/2010-04-01/Accounts/{ACCOUNT}/Calls.json",
        ACCOUNT,
    )
    assert create.form == {
        "To": TO,
        "From": FROM,
        "Url": f"{flags[1]}/twilio/voice",
        "Method": "POST",
    }
    assert polls and {(p.method, p.path) for p in polls} == {
        ("GET", f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{sid}.json")
    }
    assert call.statuses == ["queued", "ringing", "in-progress", "completed"]


AGENTS = """
[agents.sales]
on_machine = "leave_message"
greeting = "Hello from Acme sales."

[agents.night-desk]
on_machine = "hangup"
"""


async def test_dial_with_an_agent_asks_for_its_machine_detection_and_prints_only_the_sid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS)
    async with twilio() as (fake, flags):
        status = await dial(
            [TO, "--from", FROM, "--agent", "night-desk", "--agents", str(agents), *flags]
        )
        [call] = fake.calls.values()
        await call.wait_ended()
    assert status == 0
    assert capsys.readouterr().out == f"{call.sid}\n"
    assert fake.requests[0].form == {
        "To": TO,
        "From": FROM,
        "Url": f"{flags[1]}/twilio/voice?agent=night-desk",
        "Method": "POST",
        "MachineDetection": "Enable",
    }
    assert call.webhooks[0].url == f"{flags[1]}/twilio/voice?agent=night-desk"
    assert call.answered_by == "human"


async def test_a_call_that_ends_otherwise_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "none.db"
    async with twilio(outcome="busy") as (fake, flags):
        status = await dial([TO, "--from", FROM, "--wait", "--db", str(db), *flags])
        [call] = fake.calls.values()
    assert status == 1
    assert capsys.readouterr().out.splitlines() == [
        call.sid,
        f"call {call.sid}: busy",
        f"journal: no journal at {str(db)!r}",
    ]


async def test_wait_gives_up_after_the_wait_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    async with twilio(ring_seconds=60) as (fake, flags):
        began = trio.current_time()
        status = await dial([TO, "--from", FROM, "--wait", "--wait-timeout", "0.5", *flags])
        waited = trio.current_time() - began
        [call] = fake.calls.values()
    assert status == 1
    assert capsys.readouterr().out.splitlines() == [
        call.sid,
        f"voxbridge dial: call {call.sid} is still ringing after 0.5 s",
    ]
    assert 0.5 <= waited < 5


async def test_a_refusal_is_one_line_without_the_token(capsys: pytest.CaptureFixture[str]) -> None:
    async with twilio() as (fake, flags):
        flags[flags.index("--twilio-auth-token") + 1] = "wrong-token"
        status = await dial([TO, "--from", FROM, *flags])
    assert status == 1
    assert capsys.readouterr().out == (
        "voxbridge dial: Twilio REST API: HTTP 401, error 20003: Authenticate\n"
    )
    assert fake.calls == {}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--twilio-account-sid", ACCOUNT],
            "voxbridge: dial needs --public-url / VOXBRIDGE_PUBLIC_URL: the address Twilio "
            "calls back when the call is answered",
        ),
        (
            ["--public-url", "https://voice.example.test", "--twilio-auth-token", TOKEN],
            "voxbridge: dial needs Twilio credentials: --twilio-account-sid / "
            "VOXBRIDGE_TWILIO_ACCOUNT_SID and --twilio-auth-token / VOXBRIDGE_TWILIO_AUTH_TOKEN "
            "(or an API key: VOXBRIDGE_TWILIO_API_KEY and VOXBRIDGE_TWILIO_API_SECRET)",
        ),
        (
            [
                *("--public-url", "https://voice.example.test"),
                *("--twilio-auth-token", TOKEN, "--twilio-account-sid", ACCOUNT),
                *("--agent", "sales"),
            ],
            "voxbridge: --agent sales: no such agent in the flags (no --agents / "
            "VOXBRIDGE_AGENTS file)",
        ),
        (
            ["--wait-timeout", "0"],
            "voxbridge: --wait-timeout must be positive",
        ),
    ],
)
def test_missing_settings_are_one_line_and_exit_2(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dial", TO, "--from", FROM, *flags]) == 2
    out = capsys.readouterr().out
    assert out == message + "\n"
    assert TOKEN not in out


@pytest.mark.parametrize(
    ("on_machine", "expected"),
    [("hangup", "Enable"), ("leave_message", "DetectMessageEnd"), ("continue", None)],
)
def test_machine_detection_follows_the_agents_policy(on_machine: Any, expected: str | None) -> None:
    agent = AgentConfig(on_machine=on_machine, greeting="Hello.")
    assert machine_detection(agent) == expected


def test_lookup_agent_reads_the_agents_file_as_serve_does(tmp_path: Path) -> None:
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS)
    settings = Settings(agents=str(agents))
    assert lookup_agent(settings, "sales").on_machine == "leave_message"
    assert lookup_agent(settings, "night-desk").on_machine == "hangup"
    assert lookup_agent(settings, None).name == "default"
    with pytest.raises(SettingsError, match=f"--agent nobody: no such agent in {agents}$"):
        lookup_agent(settings, "nobody")
    assert lookup_agent(Settings(), None).on_machine == "continue"  # the flags' agent
    assert lookup_agent(Settings(), "default").name == "default"
    agents.write_text('[agents.sales]\non_machine = "beep"\n')
    with pytest.raises(SettingsError, match=r"\[agents\.sales\] on_machine"):
        lookup_agent(settings, "sales")


def test_the_journal_line_says_when_there_is_no_record_yet(tmp_path: Path) -> None:
    db = tmp_path / "calls.db"
    with SQLiteJournal(db, clock=Clock()):
        pass  # an empty journal
    out = io.StringIO()
    console = Console(file=out, width=60)
    sid = "CA" + "4" * 32
    print_journal_line(console, db, sid)
    journal_the_call(db, sid)
    print_journal_line(console, os.fspath(db), sid)
    assert out.getvalue().splitlines() == [
        f"journal: no record of {sid} in {db} yet",
        f"journal: 2026-05-28 20:26:40 UTC  {sid}  caller_stop  1:15  frames in/out 3760/1200"
        "  resumes 2  barge-ins 3",
    ]
    assert T0 == 1_780_000_000.0  # the clock the line's time comes from
