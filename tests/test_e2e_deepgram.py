"""A real call through Deepgram's protocol, in memory on the autojump clock: the Twilio carrier
simulator -> run_call -> DeepgramProvider -> FakeDeepgram. Audio both ways, barge-in, a drop
resumed with the conversation replayed, a frozen server resumed, a tool call, key presses, the
agent's hang-up (end_call) and refusals; ``KeepAlive`` holding a session while the caller is
silent, and a ``KeepAlive`` the server never reads dropping the session like any stalled send."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing
from pytest import approx
from test_call_providers import Outcome, RecordingCarrier

from voxbridge.errors import Reason
from voxbridge.providers.deepgram import DeepgramProvider, deepgram_endpoint
from voxbridge.providers.endpoint import ProviderEndpoint
from voxbridge.providers.events import Transcript
from voxbridge.session import run_call
from voxbridge.settings import Settings
from voxbridge.testing import CarrierSimulator, FaultStream
from voxbridge.testing.fake_deepgram import FakeDeepgram, FakeFunctionCall, speech_for
from voxbridge.testing.memory import accept_carrier, memory_connector
from voxbridge.tools import Tool, ToolContext

SILENCE = b"\xff" * 8000


def fake_deepgram(**knobs: Any) -> FakeDeepgram:
    fake = FakeDeepgram(**knobs)
    fake.url = "ws://fake.invalid/v1/agent/converse"  # reached in memory; the URL only names it
    return fake


@asynccontextmanager
async def bridged(
    fake: FakeDeepgram,
    settings: Settings,
    *,
    provider_options: dict[str, Any] | None = None,
    call_options: dict[str, Any] | None = None,
    endpoint: ProviderEndpoint | None = None,
    taps: list[FaultStream] | None = None,
    **caller: Any,
) -> AsyncIterator[Outcome]:
    """One call: simulator -> bridge -> fake Deepgram, all in memory; the body runs alongside.
    With ``taps``, the bridge's end of each provider connection is a :class:`FaultStream`,
    appended there."""
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
            carrier = outcome.carrier = RecordingCarrier(await accept_carrier(nursery, bridge_end))
            provider = DeepgramProvider(endpoint or fake.endpoint(), **(provider_options or {}))
            connect_stream = memory_connector(nursery, fake)  # type: ignore[arg-type]
            if taps is not None:
                memory = connect_stream

                async def tapped(host: str, port: int) -> trio.abc.Stream:
                    tap = FaultStream(await memory(host, port))
                    taps.append(tap)
                    return tap

                connect_stream = tapped

            async def bridge() -> None:
                outcome.disconnect = await run_call(
                    carrier,
                    provider,
                    settings=settings,
                    metrics=outcome.metrics,
                    registry=outcome.registry,
                    journal=outcome.journal,
                    connect_stream=connect_stream,
                    **(call_options or {}),
                )
                outcome.ended_at = trio.current_time()
                done[1].set()

            nursery.start_soon(bridge)
            yield outcome
            for event in done:
                await event.wait()
            nursery.cancel_scope.cancel()  # a frozen fake never finishes on its own
    assert outcome.disconnect is not None


class QuickTwilio:
    """Twilio's REST API that completes calls at once (a ``CarrierRest`` stand-in)."""

    can_transfer = True

    def __init__(self) -> None:
        self.completed: list[str] = []

    async def complete(self, call_id: str) -> None:
        self.completed.append(call_id)

    async def transfer(self, call_id: str, target: str) -> None:
        raise AssertionError("no transfer here")


async def test_audio_both_ways_with_a_greeting(autojump_clock: Any) -> None:
    fake = fake_deepgram(echo_delay=0.05)
    options = {"greeting": "Hello, how can I help?", "prompt": "be brief"}
    async with bridged(fake, Settings(), provider_options=options, seconds=2.0) as outcome:
        pass
    caller = outcome.caller
    assert caller is not None and outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP
    [session] = fake.sessions
    assert session.greeting == "Hello, how can I help?"
    assert session.settings is not None and session.settings["agent"]["think"]["prompt"]
    assert session.audio_in > 0 and session.audio_out > 0  # the caller's audio, echoed
    assert bytes(caller.audio_received).startswith(speech_for("Hello, how can I help?"))
    assert len(caller.audio_received) > len(speech_for("Hello, how can I help?"))
    record = outcome.registry.recent[0]
    assert record.transcript == (Transcript("agent", "Hello, how can I help?"),)
    assert fake.errors == []


async def test_user_started_speaking_clears_the_caller(autojump_clock: Any) -> None:
    speech = b"\x22" * 24000  # 3 s
    fake = fake_deepgram(speak=[(0.5, speech, "a long answer")], user_started_at=[1.7])
    async with bridged(fake, Settings(), seconds=4.0) as outcome:
        pass
    caller = outcome.caller
    assert caller is not None and outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP
    assert caller.clears_received == 1
    assert 0 < caller.heard_ms(0x22) < 3000
    assert outcome.sample("voxbridge_barge_ins_total") == 1


async def test_a_drop_is_resumed_with_the_conversation_in_context_messages(
    autojump_clock: Any,
) -> None:
    fake = fake_deepgram(
        echo_delay=0.05,
        caller_transcripts=[(0.5, "my order number is 42")],
        close_at=(2.0, 1011),
        only_session=1,
    )
    options = {"greeting": "Hi!"}
    async with bridged(fake, Settings(), provider_options=options, seconds=5.0) as outcome:
        pass
    assert outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP  # the call survived the drop
    first, second = fake.sessions
    assert first.close_code == 1011 and first.greeting == "Hi!"
    assert second.greeting is None  # no second greeting on resume
    assert second.context_messages == [
        {"type": "History", "role": "assistant", "content": "Hi!"},
        {"type": "History", "role": "user", "content": "my order number is 42"},
    ]
    assert second.audio_in > 0
    assert outcome.sample("voxbridge_upstream_reconnects_total", outcome="resumed") == 1
    assert outcome.registry.recent[0].resumes == 1


async def test_a_frozen_server_is_resumed(autojump_clock: Any) -> None:
    fake = fake_deepgram(echo_delay=0.05, stop_reading_at=1.0, only_session=1)
    async with bridged(fake, Settings(), seconds=40.0) as outcome:
        pass
    assert outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP
    assert len(fake.sessions) == 2
    assert outcome.registry.recent[0].resumes == 1


async def test_a_tool_call_is_answered_with_a_function_call_response(autojump_clock: Any) -> None:
    async def order(arguments: dict[str, Any], context: ToolContext) -> object:
        return {"status": "shipped", "number": arguments["number"]}

    lookup = Tool(
        "lookup_order",
        "Find an order.",
        {"type": "object", "properties": {"number": {"type": "string"}}, "required": ["number"]},
        handler=order,
    )
    fake = fake_deepgram(
        function_calls=[FakeFunctionCall("lookup_order", '{"number":"42"}', at=0.5)]
    )
    async with bridged(
        fake, Settings(), call_options={"tools": [lookup]}, audio=SILENCE, seconds=3.0
    ) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.caller is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP
    [session] = fake.sessions
    assert session.settings is not None
    assert [f["name"] for f in session.settings["agent"]["think"]["functions"]] == ["lookup_order"]
    [response] = session.function_responses
    content = '{"status":"shipped","number":"42"}'
    assert response == {
        "type": "FunctionCallResponse",
        "id": "fc-1-1",
        "name": "lookup_order",
        "content": content,
    }
    assert speech_for(content) in bytes(outcome.caller.played)  # the agent told the caller
    assert outcome.sample("voxbridge_tool_calls_total", tool="lookup_order", outcome="ok") == 1
    assert fake.errors == []


async def test_key_presses_are_injected_user_messages(autojump_clock: Any) -> None:
    fake = fake_deepgram()
    async with bridged(fake, Settings(), seconds=3.0, dtmf=[(0.2, "5")]) as outcome:
        pass
    assert outcome.disconnect is not None
    assert fake.sessions[0].injected == ["The caller pressed 5 on the keypad."]


async def test_end_call_hangs_up_after_the_goodbye(autojump_clock: Any) -> None:
    goodbye = b"\x44" * 4000  # 0.5 s
    fake = fake_deepgram(function_calls=[FakeFunctionCall("end_call", "{}", at=0.5, say=goodbye)])
    rest = QuickTwilio()
    async with bridged(
        fake, Settings(), call_options={"carrier_rest": rest}, audio=SILENCE, seconds=30.0
    ) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.caller is not None
    assert outcome.disconnect.reason is Reason.AGENT_HANGUP
    assert outcome.caller.heard_ms(0x44) == 500  # the goodbye was heard in full
    assert rest.completed == [outcome.caller.call_sid]
    assert outcome.ended_at < 5.0


async def test_a_bad_key_is_rejected_at_once(autojump_clock: Any) -> None:
    fake = fake_deepgram()
    assert fake.url is not None
    wrong = deepgram_endpoint("wrong-key", fake.url)
    async with bridged(fake, Settings(), endpoint=wrong, seconds=5.0) as outcome:
        pass
    assert outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.UPSTREAM_REJECTED
    assert fake.sessions == [] and len(fake.refused) == 1


async def test_a_1008_close_is_final(autojump_clock: Any) -> None:
    fake = fake_deepgram(close_at=(1.0, 1008))
    async with bridged(fake, Settings(), seconds=5.0) as outcome:
        pass
    assert outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.UPSTREAM_REJECTED
    assert len(fake.sessions) == 1


async def test_caller_audio_keeps_an_idle_timing_session_open(autojump_clock: Any) -> None:
    """Twilio streams audio all call long, so Deepgram's idle close (here after 1 s without a
    client message) never fires while the caller streams: the audio holds the session, which the
    KeepAlive every 8 s could not."""
    fake = fake_deepgram(idle_timeout=1.0)
    async with bridged(fake, Settings(), seconds=15.0) as outcome:
        pass
    assert outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP
    [session] = fake.sessions
    assert session.accepted_at is not None
    assert session.keepalives_at == [approx(session.accepted_at + 8.0)]


async def test_keepalive_holds_the_session_while_the_caller_is_silent(autojump_clock: Any) -> None:
    # The caller stops sending audio after 1 s and stays on the line; Deepgram closes a session
    # that hears nothing for 10 s. The link's KeepAlive every 8 s holds the one session until the
    # call's own idle_timeout (60 s after the last frame) ends the call. Without it the session
    # was closed at 11 s (CLIENT_MESSAGE_TIMEOUT, 1011) and resumed, again and again.
    fake = fake_deepgram(idle_timeout=10.0)
    async with bridged(fake, Settings(), seconds=100.0, stall_after=1.0) as outcome:
        pass
    assert outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.IDLE_TIMEOUT
    [session] = fake.sessions
    assert session.accepted_at is not None
    opened = session.accepted_at
    assert session.keepalives_at == [approx(opened + 8.0 * n) for n in range(1, 8)]  # 8 .. 56 s
    assert session.errors == [] and session.close_code == 1000  # closed by the bridge at the end
    assert outcome.sample("voxbridge_upstream_reconnects_total", outcome="resumed") == 0
    assert fake.errors == []


async def test_a_keepalive_the_server_never_reads_drops_the_session(autojump_clock: Any) -> None:
    # The caller is silent after 1 s; at 5 s nothing the bridge writes reaches the first session
    # any more. The KeepAlive due at 8 s never leaves: after send_timeout (5 s) the session is
    # lost at 13 s, aborted (no close handshake with a peer that does not read) and resumed.
    fake = fake_deepgram()
    taps: list[FaultStream] = []
    async with bridged(fake, Settings(), taps=taps, seconds=100.0, stall_after=1.0) as outcome:
        await trio.sleep(5.0)
        taps[0].stop_writing()
    assert outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.IDLE_TIMEOUT
    first, second = fake.sessions
    assert first.accepted_at is not None and second.accepted_at is not None
    assert first.keepalives == 0  # the one due at 8 s was stuck in the bridge
    assert first.closed_at == approx(first.accepted_at + 13.0)  # 8 s + send_timeout
    assert first.close_code == 1006  # aborted: no close frame reached the server
    assert second.accepted_at == approx(first.closed_at)
    assert second.keepalives_at[:2] == [approx(second.accepted_at + 8.0 * n) for n in (1, 2)]
    assert outcome.sample("voxbridge_upstream_reconnects_total", outcome="resumed") == 1


# --- the greeting is the first session's; a tool result outlives the session that asked ---------


async def test_a_drop_before_any_line_is_final_does_not_greet_again(autojump_clock: Any) -> None:
    # The first session drops 80 ms in, before the greeting's ConversationText: the history is
    # empty, and the resumed session must still not greet (it did: "not history" decided).
    fake = fake_deepgram(close_at=(0.08, 1011), only_session=1, speak_pace=1.0)  # 100 ms
    options = {"greeting": "Hello, how can I help?"}
    async with bridged(fake, Settings(), provider_options=options, seconds=2.0) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.caller is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP
    first, second = fake.sessions
    assert first.close_code == 1011 and first.greeting == "Hello, how can I help?"
    assert second.settings is not None and second.greeting is None
    assert second.context_messages == []  # nothing was final yet
    assert outcome.registry.recent[0].transcript == ()  # and nobody said anything since
    assert fake.errors == []


async def test_a_tool_result_for_a_replaced_session_reaches_the_next_one(
    autojump_clock: Any,
) -> None:
    # The tool takes 1 s; the session that asked drops at 0.5 s and is resumed before the result
    # comes. Deepgram's new session knows no call id it did not make: it is told the exchange as
    # InjectUserMessage, and answers it; a session after that has it in its context messages.
    async def slow_order(arguments: dict[str, Any], context: ToolContext) -> object:
        await trio.sleep(1.0)
        return {"status": "shipped"}

    lookup = Tool(
        "lookup_order",
        "Find an order.",
        {"type": "object", "properties": {"number": {"type": "string"}}, "required": ["number"]},
        handler=slow_order,
    )
    fake = fake_deepgram(
        function_calls=[FakeFunctionCall("lookup_order", '{"number":"42"}', at=0.2)],
        close_at=(0.5, 1011),
        only_session=1,
    )
    told = (
        'The result of the tool call lookup_order({"number":"42"}), asked for before the'
        ' connection was restored: {"status":"shipped"}'
    )
    async with bridged(
        fake, Settings(), call_options={"tools": [lookup]}, audio=SILENCE, seconds=4.0
    ) as outcome:
        second = await fake.wait_for_session(2)
        answer = {"type": "ConversationText", "role": "assistant", "content": f"you said: {told}"}
        while answer not in second.sent:  # the result, told to the session that did not ask,
            await trio.sleep(0.01)  # and answered
        assert second.ws is not None
        with trio.move_on_after(0.5):  # the bridge aborts a dropped socket: no close reply
            await second.ws.aclose(1011, "drop the second session too")
        third = await fake.wait_for_session(3)
    assert outcome.disconnect is not None and outcome.caller is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP
    first = fake.sessions[0]
    assert first.close_code == 1011 and first.function_responses == []
    assert second.function_responses == [] and second.injected == [told]
    assert speech_for(told) in bytes(outcome.caller.played)  # the agent answered it
    assert third.context_messages == [
        {
            "type": "History",
            "function_calls": [
                {
                    "id": "fc-1-1",
                    "name": "lookup_order",
                    "client_side": True,
                    "arguments": '{"number":"42"}',
                    "response": '{"status":"shipped"}',
                }
            ],
        },
        {"type": "History", "role": "assistant", "content": f"you said: {told}"},
    ]
    assert third.injected == []  # told once
    assert outcome.sample("voxbridge_tool_calls_total", tool="lookup_order", outcome="ok") == 1
    assert fake.errors == []


async def test_the_first_session_greets_even_after_failed_attempts(autojump_clock: Any) -> None:
    # the first connection is refused (503) and retried: the session that opens is still the
    # call's first, and greets
    fake = fake_deepgram(refuse_status=503, only_session=1)
    options = {"greeting": "Hello, how can I help?"}
    async with bridged(fake, Settings(), provider_options=options, seconds=1.0) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.CALLER_STOP
    assert len(fake.refused) == 1
    [session] = fake.sessions
    assert session.greeting == "Hello, how can I help?"
