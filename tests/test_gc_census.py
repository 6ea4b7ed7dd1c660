"""No garbage cycles per call: a finished call is freed by reference counting, end to end.

Each case runs real calls through the real server (``voxbridge.server.serve``: hypercorn's trio
worker on port 0, in this process) against the echo fake, with the cyclic collector disabled from
just before the calls to just after them, and then counts what a full collection finds
unreachable (``gc.DEBUG_SAVEALL`` keeps it in ``gc.garbage`` to be counted): objects of cyclic
garbage per finished call. The target, and the assertion, is exactly zero. Everything in this
process counts -- the server, the fake provider and the simulated callers -- so nothing is
filtered out.

Two cycles made every call's objects garbage before (issue 15): ``Call._ending`` -> the
``Disconnect``'s traceback -> the call's frames -> the call; and hypercorn's ``TCPServer`` ->
``protocol`` -> the bound ``protocol_send`` -> ``TCPServer``. The server's own callbacks
(``on_start``, ``configure``: closures over the call) and the link's ``on_usage`` (the call's
bound method) were two more.
"""

from __future__ import annotations

import gc
import io
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio
from test_e2e_server import disconnects, raw_websocket, running, scrape
from trio_websocket import ConnectionClosed

from voxbridge.server import RunningServer
from voxbridge.session.call import Call
from voxbridge.testing import FakeEchoAgent, simulate_call

CALLS = 3  # calls per census (after one of the same kind, so lazy set-up is not counted)
BUDGET = 30.0  # seconds of real time per case

Place = Callable[[RunningServer, FakeEchoAgent], Awaitable[None]]


@contextmanager
def census() -> Iterator[list[object]]:
    """Collect, disable the collector for the block, then collect with ``DEBUG_SAVEALL``: the
    list holds every object the collector found unreachable (created in the block). The
    collector's state is restored on every path."""
    gc.collect()
    enabled, flags = gc.isenabled(), gc.get_debug()
    already = len(gc.garbage)
    found: list[object] = []
    gc.disable()
    try:
        yield found
        gc.set_debug(flags | gc.DEBUG_SAVEALL)
        gc.collect()
        found += gc.garbage[already:]
    finally:
        del gc.garbage[already:]
        gc.set_debug(flags)
        if enabled:
            gc.enable()


def by_type(objects: list[object]) -> Counter[str]:
    return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in objects)


async def normal(server: RunningServer, agent: FakeEchoAgent) -> None:
    """A call that talks for 0.5 s (the echo plays back, marks echoed) and hangs up."""
    result = await simulate_call(server.media_url, seconds=0.5)
    assert result.close_reason == "caller_stop" and result.frames_received > 0


async def stop_at_once(server: RunningServer, agent: FakeEchoAgent) -> None:
    """A caller that hangs up right after its start, while the provider session opens."""
    result = await simulate_call(server.media_url, seconds=0.02)
    assert result.close_reason == "caller_stop"


async def idle(server: RunningServer, agent: FakeEchoAgent) -> None:
    """A caller that goes silent, TCP open: ``idle_timeout``."""
    result = await simulate_call(server.media_url, seconds=30, stall_after=0.2)
    assert result.close_reason == "idle_timeout"


async def resumed_then_stopped(server: RunningServer, agent: FakeEchoAgent) -> None:
    """The provider closes the session (``upstream_closed``); it is resumed; the caller hangs
    up on the resumed session."""
    sessions = len(agent.sessions)
    agent.hangup_after = 0.25
    try:
        result = await simulate_call(server.media_url, seconds=0.45)
    finally:
        agent.hangup_after = None
    assert result.close_reason == "caller_stop"
    assert len(agent.sessions) == sessions + 2  # the first, closed by the fake, and the resumed
    assert agent.sessions[-2].close_code == 1011


async def protocol_error(server: RunningServer, agent: FakeEchoAgent) -> None:
    """A frame that is not JSON: ``protocol_error``."""
    reason = None
    async with raw_websocket(server.media_url) as ws:
        await ws.send_message("{not json")
        try:  # (not pytest.raises: its ExceptionInfo would hold this frame, a cycle of the test's)
            await ws.get_message()
        except ConnectionClosed as closed:
            reason = closed.reason.reason
    assert reason == "protocol_error"


async def a_bug(server: RunningServer, agent: FakeEchoAgent) -> None:
    """A bug in the call (a key press handler that raises): ``internal_error``, logged with its
    traceback."""
    result = await simulate_call(server.media_url, seconds=0.6, dtmf=[(0.2, "5")])
    assert result.close_reason == "internal_error"


def _buggy_key_press(self: Call, digit: str) -> None:
    raise KeyError("a bug in the keypad")


CASES: dict[str, tuple[Place, str]] = {
    "normal": (normal, "caller_stop"),
    "caller_stop_while_opening": (stop_at_once, "caller_stop"),
    "idle_timeout": (idle, "idle_timeout"),
    "upstream_closed_resumed_then_stopped": (resumed_then_stopped, "caller_stop"),
    "protocol_error": (protocol_error, "protocol_error"),
    "internal_error": (a_bug, "internal_error"),
}


@contextmanager
def call_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The call's log lines as a production handler writes them (formatted when logged, the
    record dropped), and not handed on to pytest's capture: its handlers keep every record, and a
    record's ``exc_info`` keeps the frames of the call alive -- which would hide a cycle."""
    logger = logging.getLogger("voxbridge.call")
    text = io.StringIO()
    handler = logging.StreamHandler(text)
    monkeypatch.setattr(logger, "propagate", False)
    logger.addHandler(handler)
    try:
        yield text
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize("case", list(CASES))
async def test_a_finished_call_leaves_no_garbage_cycles(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    place, reason = CASES[case]
    if case == "internal_error":
        monkeypatch.setattr(Call, "_key_pressed", _buggy_key_press)
    with call_log(monkeypatch) as logged, trio.fail_after(BUDGET):
        async with running(idle_timeout=0.3, reconnect_budget=2.0) as (server, agent):
            await place(server, agent)  # imports, caches and the server's pinger: not counted
            await server.app.registry.wait_empty()
            with census() as garbage:
                for _ in range(CALLS):
                    await place(server, agent)
                    await server.app.registry.wait_empty()
            samples = await scrape(server)

    assert disconnects(samples)[reason] == CALLS + 1  # every call ended the way it was meant to
    per_call = len(garbage) / CALLS
    assert per_call == 0, f"{per_call:g} objects per call: {by_type(garbage).most_common(12)}"
    if case == "internal_error":  # each log line has the bug's traceback, formatted as logged
        text = logged.getvalue()
        assert text.count("call ended: internal_error") == CALLS + 1
        assert text.count("in _buggy_key_press") == CALLS + 1
        assert text.count("KeyError: 'a bug in the keypad'") == CALLS + 1


def test_the_census_counts_a_cycle() -> None:
    # The census itself: a cycle made inside the block is found, nothing else is.
    class Node:
        other: Any = None

    with census() as garbage:
        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
    assert Counter(type(o).__qualname__ for o in garbage)[Node.__qualname__] == 2
    with census() as nothing:
        c = Node()
        del c
    assert nothing == []


def test_the_bugs_exception_keeps_its_type_and_message_without_frames() -> None:
    # What ``_account`` keeps of an internal error once it is logged: the exceptions (types,
    # messages, chain, a group's members), not the frames that hold the call.
    from voxbridge.session.call import _drop_frames

    def fail() -> None:
        try:
            raise ValueError("inner")
        except ValueError as inner:
            raise KeyError("outer") from inner

    try:
        try:
            fail()
        except KeyError as exc:
            raise ExceptionGroup("tasks", [exc, RuntimeError("another")]) from None
    except ExceptionGroup as group:
        caught = group
    members = list(caught.exceptions)
    assert all(e.__traceback__ is not None for e in (caught, members[0]))
    _drop_frames(caught)
    chain = [caught, *members, members[0].__cause__]
    assert [e.__traceback__ for e in chain if e is not None] == [None] * 4
    assert [type(e).__name__ for e in chain if e is not None] == [
        "ExceptionGroup",
        "KeyError",
        "RuntimeError",
        "ValueError",
    ]
    assert str(members[0].__cause__) == "inner"
