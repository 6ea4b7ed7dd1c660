"""GPT-Live end to end: a real call (the Twilio carrier simulator -> run_call -> FakeGptLive), in
memory on trio's autojump clock: audio both ways, no ``clear`` when the model stops by itself, a
drop resumed with the conversation replayed, a tool call, hang-ups and a content close."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from voxbridge.audio import tone
from voxbridge.errors import Disconnect, Reason
from voxbridge.metrics import Metrics
from voxbridge.providers.gpt_live import GREETING_PROMPT, GptLiveProvider
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
    assert [(t.role, t.text) for t in record.transcript][:1] == [("caller", "hello there")]
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
    assert resumed["input"] == [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "my order number is 42"}],
        }
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


async def test_no_audio_reaches_the_service_before_session_start(autojump_clock: Any) -> None:
    fake = FakeGptLive(usage_every=None)
    async with bridged(fake, Settings(), seconds=1.0):
        pass
    session = fake.sessions[0]
    assert session.events_in[0]["type"] == "session.start"  # the opening goes first
    assert session.audio_in > 0
    assert session.audio_before_start == 0
    assert session.errors_sent == []
