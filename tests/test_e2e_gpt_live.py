"""GPT-Live end to end: a real call (the Twilio carrier simulator -> run_call -> FakeGptLive), in
memory on trio's autojump clock: audio both ways, no ``clear`` when the model stops by itself, a
drop resumed with the conversation replayed, a tool call, hang-ups and a content close."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from pytest import approx

from voxbridge.audio import tone
from voxbridge.errors import Disconnect, Reason
from voxbridge.journal import MemoryJournal
from voxbridge.metrics import Metrics
from voxbridge.providers.gpt_live import GREETING_PROMPT, GptLiveProvider
from voxbridge.server.app import VoxbridgeApp
from voxbridge.session import CallRegistry, run_call
from voxbridge.settings import Settings
from voxbridge.testing import CallResult, CarrierSimulator
from voxbridge.testing.fake_gpt_live import FakeGptLive, FakeLiveToolCall
from voxbridge.testing.fake_openai import heard_text, speech, text_answer, tool_answer
from voxbridge.testing.memory import accept_carrier, memory_connector
from voxbridge.tools import Tool, ToolContext


class Outcome:
    def __init__(self) -> None:
        self.disconnect: Disconnect | None = None
        self.caller: CallResult | None = None
        self.metrics = Metrics()
        self.registry = CallRegistry()


@asynccontextmanager
async def bridged(
    fake: FakeGptLive,
    settings: Settings,
    *,
    provider: GptLiveProvider | None = None,
    call_options: dict[str, Any] | None = None,
    **caller: Any,
) -> AsyncIterator[Outcome]:
    """One call: simulator -> bridge -> fake, all in memory. The body runs alongside the call."""
    fake.url = "ws://fake.invalid/v1/live/sessions"  # reached in memory; the URL only names it
    outcome = Outcome()
    with trio.fail_after(10_000):  # virtual seconds: a hang fails instead of spinning for ever
        async with trio.open_nursery() as nursery:
            caller_end, bridge_end = trio.testing.memory_stream_pair()
            simulator = CarrierSimulator(caller_end, close_wait=500, **caller)
            done = [trio.Event(), trio.Event()]

            async def call() -> None:
                outcome.caller = await simulator.run()
                done[0].set()

            nursery.start_soon(call)
            carrier = await accept_carrier(nursery, bridge_end)
            chosen = provider or GptLiveProvider(fake.endpoint(), instructions="be brief")

            async def bridge() -> None:
                outcome.disconnect = await run_call(
                    carrier,
                    chosen,
                    settings=settings,
                    metrics=outcome.metrics,
                    registry=outcome.registry,
                    connect_stream=memory_connector(nursery, fake),  # type: ignore[arg-type]
                    **(call_options or {}),
                )
                done[1].set()

            nursery.start_soon(bridge)
            yield outcome
            for event in done:
                await event.wait()
            nursery.cancel_scope.cancel()
    assert outcome.disconnect is not None


def usage(outcome: Outcome) -> float:
    labels = {"provider": "gpt-live", "kind": "billed_seconds"}
    value = outcome.metrics.registry.get_sample_value("voxbridge_provider_usage_total", labels)
    return value or 0.0


async def test_audio_both_ways_transcripts_and_usage(autojump_clock: Any) -> None:
    fake = FakeGptLive(
        api_key="sk-live",
        echo_delay=0.05,
        caller_transcripts=[(0.5, "hello "), (0.6, "there")],
        speak=[(1.0, tone(0.2), "hi, how can I help?")],
        usage_every=1.0,
    )
    provider = GptLiveProvider(fake_endpoint(fake), instructions="be brief")
    async with bridged(fake, Settings(), provider=provider, seconds=3.0) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.caller is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP
    session = fake.sessions[0]
    assert session.audio_in > 100  # 3 s of 20 ms frames
    assert session.start is not None and session.start["instructions"] == "be brief"
    assert outcome.caller.audio_received  # the echo and the speech came back
    assert fake.sessions[0].closed_reason == "close_requested"  # closing() sent session.close
    record = outcome.registry.recent[0]
    # the agent's last line too: it never ends by an event, the end of the call ends it
    assert [(t.role, t.text) for t in record.transcript] == [
        ("caller", "hello there"),
        ("agent", "hi, how can I help?"),
    ]
    assert usage(outcome) >= 2


async def test_the_model_stopping_by_itself_sends_no_clear(autojump_clock: Any) -> None:
    said = speech("a long answer that the caller talks over " * 20)
    fake = FakeGptLive(speak=[(0.5, said, "a long answer")], speak_pace=1.0, interrupt_at=[1.0])
    async with bridged(fake, Settings(), seconds=4.0) as outcome:
        pass
    assert outcome.caller is not None
    session = fake.sessions[0]
    assert len(session.interrupted) == 1 and 0 < session.interrupted[0] < len(said)
    assert outcome.caller.clears_received == 0  # no event says so: nothing to clear
    assert heard_text(said).startswith(heard_text(outcome.caller.played))
    assert len(outcome.caller.played) == session.interrupted[0]


async def test_drop_is_resumed_with_the_conversation_replayed(autojump_clock: Any) -> None:
    fake = FakeGptLive(
        caller_transcripts=[(0.5, "my order number is 42")],
        speak=[(0.8, tone(0.1), "let me check")],
        close_at=(1.5, 1011),
        only_session=1,
    )
    async with bridged(fake, Settings(), seconds=4.0) as outcome:
        pass
    assert outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP
    assert len(fake.sessions) == 2
    resumed = fake.sessions[1].start
    assert resumed is not None
    # the agent's line had not ended when the session dropped (no event ends a turn): the drop
    # ends it, so the resumed model knows what it said last
    assert resumed["input"] == [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "my order number is 42"}],
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "let me check"}],
        },
    ]
    record = outcome.registry.recent[0]
    assert [(t.role, t.text) for t in record.transcript] == [
        ("caller", "my order number is 42"),
        ("agent", "let me check"),
    ]


async def test_expired_session_is_resumed(autojump_clock: Any) -> None:
    fake = FakeGptLive(closed_at=(1.0, "expired"), only_session=1)
    async with bridged(fake, Settings(), seconds=3.0) as outcome:
        pass
    assert outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP
    assert [s.closed_reason for s in fake.sessions] == ["expired", "close_requested"]


async def test_tool_call(autojump_clock: Any) -> None:
    seen: list[dict[str, Any]] = []

    async def get_time(arguments: dict[str, Any], context: ToolContext) -> str:
        seen.append(arguments)
        return "noon"

    tool = Tool("get_time", "The time now.", handler=get_time)
    fake = FakeGptLive(tool_calls=[FakeLiveToolCall("get_time", '{"zone":"UTC"}', at=0.5)])
    provider = GptLiveProvider(fake_endpoint(fake), tools_model="gpt-5-mini")
    async with bridged(
        fake, Settings(), provider=provider, call_options={"tools": [tool]}, seconds=3.0
    ) as outcome:
        pass
    assert outcome.caller is not None
    assert seen == [{"zone": "UTC"}]
    session = fake.sessions[0]
    assert session.start is not None
    assert session.start["delegation"]["responses"]["tools"][0]["name"] == "get_time"
    assert len(session.tool_outputs) == 1
    assert "noon" in session.tool_outputs[0][1]
    assert heard_text(outcome.caller.played) == tool_answer(session.tool_outputs[0][1])


async def test_remote_hangup_ends_the_call(autojump_clock: Any) -> None:
    fake = FakeGptLive(closed_at=(1.0, "remote_hangup"))
    async with bridged(fake, Settings(), seconds=5.0) as outcome:
        pass
    assert outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.AGENT_HANGUP
    assert len(fake.sessions) == 1


async def test_content_close_is_final(autojump_clock: Any) -> None:
    fake = FakeGptLive(closed_at=(1.0, "content"))
    async with bridged(fake, Settings(), seconds=5.0) as outcome:
        pass
    assert outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.UPSTREAM_REJECTED
    assert len(fake.sessions) == 1


def fake_endpoint(fake: FakeGptLive) -> Any:
    fake.url = "ws://fake.invalid/v1/live/sessions"
    return fake.endpoint()


async def test_frozen_provider_is_resumed(autojump_clock: Any) -> None:
    fake = FakeGptLive(stop_reading_at=1.0, only_session=1, usage_every=None)
    async with bridged(fake, Settings(), seconds=60.0) as outcome:
        pass
    assert outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP
    # the ping at 20 s gets no pong: the session is dropped at 30 s and resumed
    assert len(fake.sessions) == 2
    assert fake.sessions[1].opened_at >= 30


async def test_greeting_and_key_presses(autojump_clock: Any) -> None:
    fake = FakeGptLive(answer_pace=5.0)
    provider = GptLiveProvider(fake_endpoint(fake), greeting="Welcome to Acme.")
    async with bridged(
        fake, Settings(), provider=provider, seconds=4.0, dtmf=[(2.0, "7")]
    ) as outcome:
        pass
    assert outcome.caller is not None
    session = fake.sessions[0]
    assert session.commentaries == [GREETING_PROMPT + "Welcome to Acme."]
    assert session.instructions == ["The caller pressed 7 on the keypad."]
    heard = heard_text(outcome.caller.played)
    assert heard.startswith(text_answer(GREETING_PROMPT + "Welcome to Acme."))
    assert heard.endswith(text_answer("The caller pressed 7 on the keypad."))


async def test_no_audio_reaches_the_service_before_session_started(autojump_clock: Any) -> None:
    # "wait for session.started before application commands": the service takes 0.5 s to start
    # the session; the caller's audio meanwhile waits (the opening backlog) and then goes, in
    # order, after the greeting. Nothing is refused, nothing lost.
    fake = FakeGptLive(usage_every=None, start_delay=0.5)
    provider = GptLiveProvider(fake_endpoint(fake), greeting="Welcome.")
    async with bridged(fake, Settings(), provider=provider, seconds=2.0) as outcome:
        pass
    session = fake.sessions[0]
    assert session.started_at is not None
    assert session.started_at - session.opened_at == approx(0.5)
    assert [e["type"] for e in session.events_in[:2]] == [
        "session.start",
        "session.commentary.append",  # the greeting, once started
    ]
    assert session.audio_before_start == 0 and session.before_started == []
    assert session.errors_sent == []
    record = outcome.registry.recent[0]
    assert session.audio_in == record.frames_from_caller == 100  # 2 s of 20 ms frames
    dropped = outcome.metrics.registry.get_sample_value(
        "voxbridge_media_frames_dropped_total", {"direction": "to_upstream"}
    )
    assert not dropped


async def test_a_drop_before_any_line_ended_does_not_greet_again(autojump_clock: Any) -> None:
    # the first session drops while the greeting is still being said: no line is final, the
    # history is empty, and the resumed session must not greet again
    fake = FakeGptLive(close_at=(0.08, 1011), only_session=1, answer_pace=1.0, usage_every=None)
    provider = GptLiveProvider(fake_endpoint(fake), greeting="Welcome to Acme.")
    async with bridged(fake, Settings(), provider=provider, seconds=2.0) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.CALLER_STOP
    first, second = fake.sessions
    assert first.commentaries == [GREETING_PROMPT + "Welcome to Acme."]
    assert second.commentaries == []
    # what the agent had said of it when the session dropped is the history's last line
    assert second.start is not None
    [line] = second.start["input"]
    assert line["role"] == "assistant"
    answer = text_answer(GREETING_PROMPT + "Welcome to Acme.")
    assert answer.startswith(line["content"][0]["text"]) and line["content"][0]["text"]


async def test_tools_without_a_tools_model_are_never_called(autojump_clock: Any) -> None:
    # no --gpt-live-tools-model: no Responses backend is declared, and the service cannot run
    # the tool (the fake, like it, never calls one that was not declared)
    ran: list[object] = []

    async def get_time(arguments: dict[str, Any], context: ToolContext) -> str:
        ran.append(arguments)
        return "noon"

    tool = Tool("get_time", "The time now.", handler=get_time)
    fake = FakeGptLive(tool_calls=[FakeLiveToolCall("get_time", at=0.5)], usage_every=None)
    async with bridged(fake, Settings(), call_options={"tools": [tool]}, seconds=2.0) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.CALLER_STOP
    session = fake.sessions[0]
    assert session.start is not None and "delegation" not in session.start
    assert session.undeclared_tools == ["get_time"] and ran == []


async def test_serve_warns_once_about_tools_gpt_live_cannot_declare(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tool = Tool("lookup_order", "Find an order.")
    url = "ws://127.0.0.1:9/v1/live/sessions"

    async def warnings(settings: Settings) -> list[str]:
        caplog.clear()
        caplog.set_level(logging.INFO, logger="voxbridge.server")
        app = VoxbridgeApp(settings, journal=MemoryJournal(), tools=[tool])
        async with trio.open_nursery() as nursery:
            await app.start(nursery)
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    plain = Settings(provider="gpt-live", provider_url=url, host="127.0.0.1")
    assert [w for w in await warnings(plain) if "tools" in w] == [
        "tools the model is never offered: agent default: lookup_order not declared to GPT-Live:"
        " the Live model runs tools only through a Responses backend, and"
        " --gpt-live-tools-model is not set"
    ]
    backed = attrs.evolve(plain, provider_settings={"gpt-live": {"tools_model": "gpt-5-mini"}})
    assert [w for w in await warnings(backed) if "tools" in w] == []
