"""``voxbridge dial TO --from FROM``: an outbound call through Twilio's REST API, answered here.

voxbridge asks Twilio to call ``TO`` from ``FROM`` (``POST Calls.json``); once someone answers,
Twilio POSTs the voice webhook of this deployment -- ``--public-url`` + ``/twilio/voice``, with
``?agent=NAME`` for ``--agent`` -- and the call goes on like an inbound one: TwiML, media stream,
the agent. The agent's ``on_machine`` policy decides whether Twilio listens for an answering
machine first (``MachineDetection``: ``hangup`` -> ``Enable``, the earliest verdict;
``leave_message`` -> ``DetectMessageEnd``, which waits for the beep; ``continue`` -> none).

It prints the new ``CallSid`` (alone on its line, for scripts). With ``--wait`` it then polls the
call (``GET Calls/{Sid}.json``, every 0.25 s doubling to 2 s, for at most ``--wait-timeout``
seconds) until Twilio reports a final status, prints it, and prints the call's record from the
journal (``--db``) as ``voxbridge calls`` shows it -- or that the journal has none yet (the
server writes it when its side of the call has ended, which may be a moment later).

Exit status: 0 once the call is placed (with ``--wait``: once it ended ``completed``); 1 when
Twilio refuses or cannot be reached, or (``--wait``) the call ended otherwise (``busy``,
``no-answer``, ``failed``, ``canceled``) or is still going at the timeout; 2 for missing or bad
settings (no ``--public-url``, no Twilio credentials, an unknown agent).
"""

from __future__ import annotations

import os
from urllib.parse import urlencode

import attrs
import trio
from rich.console import Console
from rich.text import Text

from .agents import AgentConfig, check_agents
from .carriers.twilio_rest import FINAL_STATUSES, TwilioRest, TwilioRestError
from .journal import JournalError
from .journal.reader import find_calls, location
from .server.security import webhook_url
from .settings import Settings, SettingsError

__all__ = [
    "POLL_FIRST",
    "POLL_MAX",
    "DialPlan",
    "lookup_agent",
    "machine_detection",
    "plan_dial",
    "run_dial",
]

POLL_FIRST = 0.25  # seconds before the first poll; doubled after each, up to POLL_MAX
POLL_MAX = 2.0

_MACHINE_DETECTION = {"hangup": "Enable", "leave_message": "DetectMessageEnd", "continue": None}


@attrs.frozen(kw_only=True)
class DialPlan:
    """What ``voxbridge dial`` will do, checked before anything is sent.

    ``url`` is the voice webhook Twilio will POST when the call is answered,
    ``machine_detection`` the ``MachineDetection`` asked for (``None``: none), ``db`` the journal
    read after ``--wait``.
    """

    rest: TwilioRest
    to: str
    from_: str
    url: str
    machine_detection: str | None
    db: str


def lookup_agent(settings: Settings, name: str | None) -> AgentConfig:
    """The agent that will answer the call: ``name``, or the default one.

    The agents are loaded and checked as ``voxbridge serve`` does (``--agents``, with the
    ``--tools-module`` tools and ``--transfer-to`` it checks against; without ``--agents``, the
    flags' agent alone, named ``default``), so a file the server would refuse is refused here.

    Raises:
        SettingsError: no such agent, or (one line) what is wrong with the agents file or the
            tools module.
    """
    agents, _tools = check_agents(settings)
    agent = agents.default if name is None else agents.get(name)
    if agent is None:
        where = settings.agents or "the flags (no --agents / VOXBRIDGE_AGENTS file)"
        raise SettingsError(f"--agent {name}: no such agent in {where}")
    return agent


def machine_detection(agent: AgentConfig) -> str | None:
    """Twilio's ``MachineDetection`` for the agent's ``on_machine`` policy: ``hangup`` ->
    ``Enable``, ``leave_message`` -> ``DetectMessageEnd``, ``continue`` -> ``None``."""
    return _MACHINE_DETECTION[agent.on_machine]


def plan_dial(settings: Settings, to: str, from_: str, *, agent: str | None = None) -> DialPlan:
    """Check the settings and build the request.

    Raises:
        SettingsError: no ``--public-url`` (Twilio needs the webhook's public address), no
            Twilio REST credentials, or an agent that cannot be found (:func:`lookup_agent`).
    """
    if settings.public_url is None:
        raise SettingsError(
            "dial needs --public-url / VOXBRIDGE_PUBLIC_URL: the address Twilio calls back "
            "when the call is answered"
        )
    rest = TwilioRest.from_settings(settings)
    if rest is None:
        raise SettingsError(
            "dial needs Twilio credentials: --twilio-account-sid / VOXBRIDGE_TWILIO_ACCOUNT_SID "
            "and --twilio-auth-token / VOXBRIDGE_TWILIO_AUTH_TOKEN (or an API key: "
            "VOXBRIDGE_TWILIO_API_KEY and VOXBRIDGE_TWILIO_API_SECRET)"
        )
    found = lookup_agent(settings, agent)
    query = urlencode({"agent": agent}).encode() if agent is not None else b""
    return DialPlan(
        rest=rest,
        to=to,
        from_=from_,
        url=webhook_url(settings.public_url, query),
        machine_detection=machine_detection(found),
        db=settings.db,
    )


async def run_dial(
    console: Console, plan: DialPlan, *, wait: bool = False, wait_timeout: float = 600.0
) -> int:
    """Place the call, print its SID; with ``wait``, follow it to its end (module docstring).

    Returns:
        The exit status (0, or 1: refused, unreachable, ended other than ``completed``, or
        still going after ``wait_timeout`` seconds).
    """
    try:
        sid = await plan.rest.create_call(
            plan.to, plan.from_, plan.url, machine_detection=plan.machine_detection
        )
    except TwilioRestError as exc:
        console.print(Text(f"voxbridge dial: {exc}", style="red"), soft_wrap=True)
        return 1
    console.print(Text(sid), soft_wrap=True)
    if not wait:
        return 0
    status: str | None = None
    interval = POLL_FIRST
    try:
        with trio.move_on_after(wait_timeout):
            while True:
                call = await plan.rest.fetch_call(sid)
                status = str(call.get("status"))
                if status in FINAL_STATUSES:
                    break
                await trio.sleep(interval)
                interval = min(2 * interval, POLL_MAX)
    except TwilioRestError as exc:
        console.print(Text(f"voxbridge dial: {exc}", style="red"), soft_wrap=True)
        return 1
    if status not in FINAL_STATUSES:
        console.print(
            Text(f"voxbridge dial: call {sid} is still {status} after {wait_timeout:g} s"),
            soft_wrap=True,
        )
        return 1
    console.print(Text(f"call {sid}: {status}"), soft_wrap=True)
    print_journal_line(console, plan.db, sid)
    return 0 if status == "completed" else 1


def print_journal_line(console: Console, db: str | os.PathLike[str], call_sid: str) -> None:
    """The journal's record(s) of ``call_sid``, one line each, with the columns of
    ``voxbridge calls``; or one line saying there is none (yet) or no readable journal."""
    from .journal_cli import _duration, _outcome, _plain, _when

    try:
        calls = find_calls(db, call_sid)
    except JournalError as exc:
        console.print(_plain(f"journal: {exc}"), soft_wrap=True)
        return
    if not calls:
        console.print(
            _plain(f"journal: no record of {call_sid} in {location(db)} yet"), soft_wrap=True
        )
        return
    for call in calls:  # a carrier may reuse a CallSid for several streams
        line = _plain(f"journal: {_when(call.started_at)} UTC  {call.call_sid}  ")
        line.append_text(_outcome(call))
        line.append_text(
            _plain(
                f"  {_duration(call.duration_s)}  frames in/out "
                f"{call.frames_from_caller}/{call.frames_to_caller}  resumes {call.resumes}  "
                f"barge-ins {call.barge_ins}"
            )
        )
        console.print(line, soft_wrap=True)
