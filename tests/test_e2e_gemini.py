"""Gemini Live through a real call, in memory on the autojump clock: the Twilio carrier simulator
-> the bridge (``run_call``) -> ``GeminiProvider`` -> ``FakeGemini``. Audio both ways (resampled),
barge-in (``interrupted`` -> clear), a drop resumed with a handle and one replayed from history, a
tool call, usage metering, transcripts and the caller hanging up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing
from test_call_providers import Outcome, RecordingCarrier

from voxbridge.errors import Reason
from voxbridge.providers.gemini import GeminiProvider
from voxbridge.session import run_call
from voxbridge.settings import Settings
from voxbridge.testing import CarrierSimulator
from voxbridge.testing.fake_gemini import RESOURCE, FakeGemini, FakeToolCall, Speech, pcm24
from voxbridge.testing.memory import accept_carrier, memory_connector
from voxbridge.tools import Tool, ToolContext

SILENCE = b"\xff" * 8000


@asynccontextmanager
async def bridged(
    fake: FakeGemini,
    settings: Settings,
    *,
    call_options: dict[str, Any] | None = None,
    **caller: Any,
) -> AsyncIterator[Outcome]:
    """One call: simulator -> bridge -> fake Gemini, all in memory."""
    fake.url = f"ws://gemini.invalid{RESOURCE}"  # reached in memory; the URL only names it
    outcome = Outcome()
    with trio.fail_after(10_000):  # virtual seconds
        async with trio.open_nursery() as nursery:
            caller_end, bridge_end = trio.testing.memory_stream_pair()
            simulator = CarrierSimulator(caller_end, close_wait=500, **caller)
            done = [trio.Event(), trio.Event()]

            async def call() -> None:
                outcome.caller = await simulator.run()
                done[0].set()

            nursery.start_soon(call)
            carrier = outcome.carrier = RecordingCarrier(await accept_carrier(nursery, bridge_end))
            provider = GeminiProvider(fake.endpoint(), instructions="be brief")

            async def bridge() -> None:
                outcome.disconnect = await run_call(
                    carrier,
                    provider,
                    settings=settings,
                    metrics=outcome.metrics,
                    registry=outcome.registry,
                    journal=outcome.journal,
                    connect_stream=memory_connector(nursery, fake),  # type: ignore[arg-type]
                    **(call_options or {}),
                )
                outcome.ended_at = trio.current_time()
                done[1].set()

            nursery.start_soon(bridge)
            yield outcome
            for event in done:
                await event.wait()
            nursery.cancel_scope.cancel()
    assert outcome.disconnect is not None


async def test_audio_both_ways_and_the_caller_hangs_up(autojump_clock: Any) -> None:
    fake = FakeGemini(echo=True, delay=0.05)
    async with bridged(fake, Settings(), seconds=2.0) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.CALLER_STOP
    assert outcome.caller is not None
    session = fake.sessions[0]
    assert session.setup is not None and session.setup["model"].startswith("models/")
    # 2 s of caller audio at 16 kHz reached the fake (less the resampler's 100 samples)...
    assert session.audio_bytes_in >= 2 * 32000 - 2 * 160 - 320 * 5
    # ...and came back, resampled twice, as about as much 8 kHz mu-law
    assert len(outcome.caller.audio_received) > 8000 * 1.5
    assert session.is_closed


async def test_barge_in_clears_the_caller(autojump_clock: Any) -> None:
    fake = FakeGemini(speech=[Speech(0.2, "a long answer", pcm24(2000))], interrupt_at=[1.0])
    async with bridged(fake, Settings(), seconds=2.5) as outcome:
        pass
    assert outcome.caller is not None
    assert outcome.caller.clears_received == 1
    assert outcome.sample("voxbridge_barge_ins_total") == 1
    record = outcome.registry.recent[0]
    assert ("agent", "a long answer") not in [(t.role, t.text) for t in record.transcript]


async def test_transcripts_usage_and_a_drop_resumed_with_the_handle(autojump_clock: Any) -> None:
    fake = FakeGemini(
        heard=[(0.1, "my order is 42")],
        speech=[Speech(0.3, "let me check")],
        close_at=(1.5, 1011),
        only_sessions=1,
    )
    async with bridged(fake, Settings(), seconds=3.0) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.CALLER_STOP
    record = outcome.registry.recent[0]
    assert [(t.role, t.text) for t in record.transcript] == [
        ("caller", "my order is 42"),
        ("agent", "let me check"),
    ]
    assert dict(record.usage)["input_audio_tokens"] == 20
    first, second = fake.sessions
    assert first.close_code == 1011
    assert second.resumed_from == "handle-1-1" and second.client_content == []
    assert second.audio_in > 0
    assert outcome.sample("voxbridge_upstream_reconnects_total", outcome="resumed") == 1


async def test_a_drop_without_a_handle_replays_the_history(autojump_clock: Any) -> None:
    fake = FakeGemini(
        heard=[(0.1, "hello")],
        speech=[Speech(0.3, "hi")],
        close_at=(1.0, 1011),
        only_sessions=1,
        resumable=False,
    )
    async with bridged(fake, Settings(), seconds=2.5) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.CALLER_STOP
    first, second = fake.sessions
    assert first.close_code == 1011 and second.resumed_from is None
    assert second.setup is not None
    assert second.setup["historyConfig"] == {"initialHistoryInClientContent": True}
    (content,) = second.client_content
    assert content["turns"] == [
        {"role": "user", "parts": [{"text": "hello"}]},
        {"role": "model", "parts": [{"text": "hi"}]},
    ]
    assert second.texts == []  # the agent spoke last: no nudge, no greeting


async def test_a_tool_call_is_answered(autojump_clock: Any) -> None:
    async def order(arguments: dict[str, Any], context: ToolContext) -> object:
        return {"status": f"order {arguments['order']} shipped"}

    lookup = Tool(
        "lookup",
        "Look up an order.",
        {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]},
        order,
    )
    fake = FakeGemini(tool_calls=[FakeToolCall(0.5, "lookup", {"order": "42"})])
    async with bridged(
        fake, Settings(), call_options={"tools": [lookup]}, audio=SILENCE, seconds=2.0
    ) as outcome:
        pass
    session = fake.sessions[0]
    assert session.setup is not None
    declared = session.setup["tools"][0]["functionDeclarations"]
    assert "lookup" in [d["name"] for d in declared]
    assert session.tool_responses == [
        {"id": "fc-1-1", "name": "lookup", "response": {"status": "order 42 shipped"}}
    ]
    assert outcome.sample("voxbridge_tool_calls_total", tool="lookup", outcome="ok") == 1


async def test_a_frozen_provider_is_resumed(autojump_clock: Any) -> None:
    fake = FakeGemini(echo=True, delay=0.05, freeze_at=1.0, only_sessions=1)
    settings = Settings(keepalive_interval=1.0, pong_timeout=1.0)
    async with bridged(fake, settings, seconds=6.0) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.CALLER_STOP
    first, second = fake.sessions
    assert first.is_closed and second.audio_in > 0
    assert outcome.sample("voxbridge_upstream_reconnects_total", outcome="resumed") == 1
