"""Structured logs: the call's ids on every line of a call (a context variable and a filter), the
one line per call end, and no secret in any line.

Calls run through ``bridged()`` (simulator -> bridge -> the OpenAI fake, in memory, on the autojump
clock) or, for secrets, through a real server and the fake Twilio on loopback. Log output is what
:func:`voxbridge.logs.configure` writes, parsed back line by line.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from test_call_providers import bridged, served
from test_e2e_agents import deployed, rest_updates

from voxbridge.audio import tone
from voxbridge.errors import Reason
from voxbridge.logs import (
    CallContextFilter,
    ConsoleFormatter,
    JsonFormatter,
    call_context,
    configure,
    current_call,
)
from voxbridge.session import CallState
from voxbridge.settings import Settings
from voxbridge.testing.fake_openai import FakeOpenAIRealtime, FakeToolCall, speech
from voxbridge.tools import Tool, ToolContext
from voxbridge.upstream import Upstream

SILENCE = b"\xff" * 8000
CALL_FIELDS = ("call_id", "call_sid", "stream_sid")


@contextmanager
def json_logs(level: str = "debug") -> Iterator[io.StringIO]:
    """``configure("json", level)`` into a buffer; the loggers as they were afterwards."""
    names = ("voxbridge", "hypercorn")
    saved = [
        (logger, logger.handlers[:], logger.level, logger.propagate)
        for logger in map(logging.getLogger, names)
    ]
    buffer = io.StringIO()
    configure("json", level, stream=buffer)
    try:
        yield buffer
    finally:
        for logger, handlers, level_was, propagate in saved:
            logger.handlers[:] = handlers
            logger.setLevel(level_was)
            logger.propagate = propagate


def parsed(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def record(name: str = "voxbridge.call", **extra: Any) -> logging.LogRecord:
    logger = logging.getLogger(name)
    return logger.makeRecord(name, logging.INFO, __file__, 1, "a line", (), None, extra=extra)


# --- the context and the filter -------------------------------------------------------------------


def test_the_filter_adds_the_call_inside_its_context_and_nothing_outside() -> None:
    state = CallState(call_id="c0ffee000001", accepted_at=0.0)
    on_handler = CallContextFilter()
    outside = record()
    assert on_handler.filter(outside) is True
    assert not any(hasattr(outside, field) for field in CALL_FIELDS)
    with call_context(state):
        early = record()
        on_handler.filter(early)
        state.carrier_call_id, state.stream_id = "CA" + "1" * 32, "MZ" + "2" * 32  # start arrives
        late = record()
        on_handler.filter(late)
    assert current_call() is None
    assert (early.call_id, early.call_sid, early.stream_sid) == ("c0ffee000001", None, None)
    assert (late.call_id, late.call_sid, late.stream_sid) == (
        "c0ffee000001",
        "CA" + "1" * 32,
        "MZ" + "2" * 32,
    )


def test_an_explicit_extra_wins_and_contexts_nest() -> None:
    outer = CallState(call_id="outer0000001", accepted_at=0.0, carrier_call_id="CAouter")
    inner = CallState(call_id="inner0000001", accepted_at=0.0)
    on_handler = CallContextFilter()
    with call_context(outer):
        with call_context(inner):
            assert current_call() is inner
            explicit = record(call_id="given", call_sid=None)
            on_handler.filter(explicit)
        assert current_call() is outer
        after = record()
        on_handler.filter(after)
    assert (explicit.call_id, explicit.call_sid, explicit.stream_sid) == ("given", None, None)
    assert (after.call_id, after.call_sid) == ("outer0000001", "CAouter")


def test_json_and_console_lines_carry_the_call() -> None:
    state = CallState(
        call_id="abc123abc123", accepted_at=0.0, carrier_call_id="CA9", stream_id="MZ9"
    )
    with json_logs("info") as buffer, call_context(state):
        logging.getLogger("voxbridge.tools").info("tool %s: %s", "lookup", "ok")
        logging.getLogger("hypercorn.error").info("from hypercorn, in the call's task")
    lines = parsed(buffer)
    assert [(line["logger"], line["call_id"], line["call_sid"]) for line in lines] == [
        ("voxbridge.tools", "abc123abc123", "CA9"),
        ("hypercorn.error", "abc123abc123", "CA9"),
    ]
    assert lines[0]["message"] == "tool lookup: ok"
    # the console: the same fields as key=value, with None ones left out
    line = record(call_id="abc123abc123", call_sid="CA9", stream_sid=None)
    assert ConsoleFormatter().format(line) == "a line  call_id=abc123abc123 call_sid=CA9"


def test_the_console_handler_has_the_filter_too() -> None:
    names = ("voxbridge", "hypercorn")
    saved = [(logging.getLogger(n), logging.getLogger(n).handlers[:]) for n in names]
    buffer = io.StringIO()
    try:
        configure("console", "info", stream=buffer)
        state = CallState(call_id="feed00000001", accepted_at=0.0, carrier_call_id="CA7")
        with call_context(state):
            logging.getLogger("voxbridge.call").info("hello")
        handler = logging.getLogger("voxbridge").handlers[0]
        assert any(isinstance(f, CallContextFilter) for f in handler.filters)
        assert logging.getLogger("hypercorn").handlers == [handler]
    finally:
        for logger, handlers in saved:
            logger.handlers[:] = handlers
    assert "hello  call_id=feed00000001 call_sid=CA7" in buffer.getvalue()


# --- a real call ----------------------------------------------------------------------------------


async def test_every_line_of_a_call_names_it_whichever_task_and_logger_wrote_it(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A line from the reader task of each provider socket (the call's `sockets` nursery, not its
    # task nursery): the socket is opened from the call's task, so its reader inherits the context.
    read = Upstream._read

    async def logged_read(self: Upstream) -> None:
        logging.getLogger("voxbridge.upstream").debug("reading a provider socket")
        await read(self)

    monkeypatch.setattr(Upstream, "_read", logged_read)

    async def lookup(arguments: dict[str, Any], context: ToolContext) -> object:
        # Lines a tool's libraries write, in the tool call's task.
        logging.getLogger("hypercorn.error").info("hypercorn, in a tool call's task")
        logging.getLogger("voxbridge.providers.openai_realtime").info("a provider line")
        return {"status": "shipped"}

    async def broken(arguments: dict[str, Any], context: ToolContext) -> object:
        raise RuntimeError("it broke")  # voxbridge.tools logs it, with extra={"call_id": ...}

    tools = [Tool("lookup", "Look up.", handler=lookup), Tool("broken", "Fails.", handler=broken)]
    fake = await served(
        FakeOpenAIRealtime(
            caller_transcripts=[(0.5, "Where is it?")],
            tool_calls=[FakeToolCall("lookup", {}), FakeToolCall("broken", {})],
            close_at=(1.5, 1011),  # a drop: the link logs, and a second socket opens
            only_session=1,
        )
    )
    with json_logs("debug") as buffer:
        async with bridged(
            fake, Settings(), call_options={"tools": tools}, audio=SILENCE, seconds=3.0
        ) as outcome:
            pass
    caller = outcome.caller
    assert caller is not None and outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP
    [ended] = outcome.registry.recent
    lines = parsed(buffer)
    loggers = {line["logger"] for line in lines}
    assert {
        "voxbridge.call",
        "voxbridge.upstream",
        "voxbridge.tools",
        "voxbridge.providers.openai_realtime",
        "hypercorn.error",
    } <= loggers
    assert sum(line["message"] == "reading a provider socket" for line in lines) == 2
    for line in lines:
        ids = tuple(line.get(field) for field in CALL_FIELDS)
        assert ids == (ended.call_id, caller.call_sid, caller.stream_sid), line


async def test_the_call_end_line_of_a_timeout_has_the_limit_and_the_silence(
    autojump_clock: Any,
) -> None:
    fake = await served(FakeOpenAIRealtime())
    settings = Settings(idle_timeout=5.0)
    with json_logs("info") as buffer:
        async with bridged(fake, settings, seconds=3.0, stall_after=1.0) as outcome:
            pass
    caller, disconnect = outcome.caller, outcome.disconnect
    assert caller is not None and disconnect is not None
    [ended] = outcome.registry.recent
    [line] = [line for line in parsed(buffer) if line["message"].startswith("call ended")]
    assert line["message"] == f"call ended: idle_timeout ({disconnect.detail})"
    assert {key: line[key] for key in line if key not in ("time", "message")} == {
        "level": "info",
        "logger": "voxbridge.call",
        "call_id": ended.call_id,
        "call_sid": caller.call_sid,
        "stream_sid": caller.stream_sid,
        "reason": "idle_timeout",
        "close_code": 1000,
        "duration_s": round(ended.duration, 3),
        "frames_in": caller.frames_sent,
        "frames_out": ended.frames_to_caller,
        "limit": "idle_timeout",
        "limit_s": 5.0,
        "silence_s": round(ended.silence, 3),
    }
    assert caller.frames_sent == 50  # 1 s of 20 ms frames, then silence
    # the configured idle timeout (a re-armed deadline fires up to LATENESS, 50 ms, late)
    assert 5.0 - 0.01 <= line["silence_s"] <= 5.0 + 0.05 + 0.01
    assert line["duration_s"] == pytest.approx(1.0 + 5.0, abs=0.05)


async def test_the_call_end_line_of_a_normal_end_has_no_limit(autojump_clock: Any) -> None:
    fake = await served(FakeOpenAIRealtime(echo_delay=0.05))
    with json_logs("info") as buffer:
        async with bridged(fake, Settings(), seconds=1.0) as outcome:
            pass
    [ended] = outcome.registry.recent
    [line] = [line for line in parsed(buffer) if line["message"].startswith("call ended")]
    assert line["reason"] == "caller_stop" and line["close_code"] == 1000
    assert line["frames_in"] == ended.frames_from_caller == 50
    assert line["frames_out"] == ended.frames_to_caller > 0
    assert not {"limit", "limit_s", "silence_s"} & line.keys()


# --- nothing secret -------------------------------------------------------------------------------


@contextmanager
def all_logs_at_debug() -> Iterator[list[str]]:
    """voxbridge's and hypercorn's lines as ``configure("json", "debug")`` writes them, and every
    other logger's records at DEBUG rendered by both formatters; everything restored after."""
    texts: list[str] = []
    others: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            others.append(JsonFormatter().format(record))
            others.append(ConsoleFormatter().format(record))
            others.append(repr(record.args))

    manager = logging.root.manager
    loggers = [logging.root] + [
        logger for logger in manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    saved = [(logger, logger.level, logger.disabled) for logger in loggers]
    disabled = manager.disable
    handler = Collect(logging.DEBUG)
    handler.addFilter(CallContextFilter())
    logging.disable(logging.NOTSET)
    for logger in loggers:
        logger.disabled = False
    logging.root.setLevel(logging.DEBUG)
    logging.root.addHandler(handler)
    try:
        with json_logs("debug") as buffer:
            try:
                yield texts
            finally:
                texts.extend(buffer.getvalue().splitlines())
                texts.extend(others)
    finally:
        logging.root.removeHandler(handler)
        for logger, level, was_disabled in saved:
            logger.setLevel(level)
            logger.disabled = was_disabled
        logging.disable(disabled)


@pytest.mark.hang_limit(60)
async def test_no_secret_reaches_any_log_line_of_a_call() -> None:
    openai_key = "sk-test-" + secrets.token_hex(20)
    api_key, api_secret = "SK" + secrets.token_hex(16), secrets.token_hex(16)
    basic = base64.b64encode(f"{api_key}:{api_secret}".encode()).decode()
    fake = FakeOpenAIRealtime(
        api_key=openai_key,  # refuses a session without it: the key was really used
        caller_transcripts=[(0.5, "That is all, thanks.")],
        tool_calls=[FakeToolCall("end_call", {}, say=speech("Goodbye!"))],
        speak=[(0.2, tone(0.3, 300), "Hello.")],
    )
    with all_logs_at_debug() as logs:
        async with deployed(
            fake,
            twilio={"credentials": [(api_key, api_secret)]},
            provider="openai",
            provider_settings={"openai": {"api_key": openai_key}},
            twilio_api_key=api_key,
            twilio_api_secret=api_secret,
        ) as deployment:
            call = await deployment.inbound(seconds=20.0)
            await deployment.scrape()
    auth_token = deployment.settings.twilio_auth_token
    assert auth_token
    # The scenario ran: a signed webhook, the provider session with the key, the REST hang-up
    # with the API key and secret.
    assert call.result is not None and call.result.close_reason == "agent_hangup"
    assert rest_updates(deployment.twilio, call.sid) == [{"Status": "completed"}]
    assert [r.username for r in deployment.twilio.requests if r.username] == [api_key]
    assert len(fake.sessions) == 1
    json_lines = [json.loads(text) for text in logs if text.startswith('{"time"')]
    ended = [line for line in json_lines if line["message"].startswith("call ended")]
    assert [(line["reason"], line["call_sid"]) for line in ended] == [("agent_hangup", call.sid)]
    assert any(line["message"] == "tool end_call: ok" for line in json_lines)
    text = "\n".join(logs)
    for secret in (openai_key, auth_token, api_secret, basic, f"Bearer {openai_key}"):
        assert secret not in text
