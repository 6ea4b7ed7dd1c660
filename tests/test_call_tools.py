"""Tools, key presses and usage inside one call: simulator -> bridge -> the OpenAI fake, in memory,
on trio's autojump clock, so every deadline is asserted exactly."""

from __future__ import annotations

from typing import Any

import trio
from test_call_providers import bridged, served

from voxbridge.agents import AgentConfig
from voxbridge.errors import Reason
from voxbridge.journal import MemoryJournal
from voxbridge.providers.events import HistoryItem, Transcript
from voxbridge.session import CallState
from voxbridge.settings import Settings
from voxbridge.testing.fake_openai import FakeOpenAIRealtime, FakeToolCall, speech, tool_answer
from voxbridge.tools import Tool, ToolContext

SILENCE = b"\xff" * 8000


class TimedJournal(MemoryJournal):
    """A memory journal that also notes when each transcript line arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.at: list[tuple[float, HistoryItem]] = []

    def transcript_line(self, state: CallState, line: HistoryItem) -> None:
        super().transcript_line(state, line)
        self.at.append((trio.current_time(), line))


def slow_tool(started: list[float], cancelled: list[float]) -> Tool:
    async def handler(arguments: dict[str, Any], context: ToolContext) -> object:
        started.append(trio.current_time())
        try:
            await trio.sleep_forever()
        finally:
            cancelled.append(trio.current_time())

    return Tool("slow", "Never answers.", handler=handler)


async def test_a_tool_that_overruns_tool_timeout_is_cancelled_at_it_and_the_model_is_told(
    autojump_clock: Any,
) -> None:
    started: list[float] = []
    cancelled: list[float] = []
    fake = await served(
        FakeOpenAIRealtime(
            caller_transcripts=[(0.5, "Do the slow thing.")],
            tool_calls=[FakeToolCall("slow", {})],
        )
    )
    settings = Settings(tool_timeout=3.0)
    tools = [slow_tool(started, cancelled)]
    async with bridged(
        fake, settings, call_options={"tools": tools}, audio=SILENCE, seconds=6.0
    ) as outcome:
        pass
    assert outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP  # a tool never ends a call
    assert len(started) == len(cancelled) == 1
    assert cancelled[0] - started[0] == 3.0  # exactly tool_timeout
    [(_, output)] = fake.tool_outputs
    assert output == '{"error":"the tool did not answer within 3 s"}'
    assert outcome.sample("voxbridge_tool_calls_total", tool="slow", outcome="timeout") == 1
    caller = outcome.caller
    assert caller is not None
    assert speech(tool_answer(output)) in bytes(caller.played)  # the model told the caller


async def test_beyond_eight_tool_calls_at_once_the_model_is_told_to_try_again(
    autojump_clock: Any,
) -> None:
    started: list[float] = []
    cancelled: list[float] = []
    fake = await served(
        FakeOpenAIRealtime(
            caller_transcripts=[(0.5, "Go.")],
            tool_calls=[FakeToolCall("slow", {}, call_id=f"call_{n}") for n in range(9)],
        )
    )
    settings = Settings(tool_timeout=30.0)
    tools = [slow_tool(started, cancelled)]
    async with bridged(
        fake, settings, call_options={"tools": tools}, audio=SILENCE, seconds=3.0
    ) as outcome:
        pass
    assert len(started) == 8  # the ninth never ran
    assert len(cancelled) == 8  # the call's end cancelled the eight: nothing outlives it
    assert [call_id for call_id, _ in fake.tool_outputs] == ["call_8"]
    assert "too many tool calls" in fake.tool_outputs[0][1]
    assert outcome.sample("voxbridge_tool_calls_total", tool="slow", outcome="error") == 1


async def test_key_presses_are_grouped_by_the_inter_digit_timeout(autojump_clock: Any) -> None:
    fake = await served(FakeOpenAIRealtime())
    journal = TimedJournal()
    keys = [(0.2, "4"), (0.5, "2"), (2.0, "9"), (2.1, "#"), (2.2, "1")]
    t0 = trio.current_time()
    async with bridged(
        fake, Settings(), journal=journal, audio=SILENCE, seconds=5.0, dtmf=keys
    ) as outcome:
        pass
    lines = [
        (round(at - t0, 2), line)
        for at, line in journal.at
        if isinstance(line, Transcript) and line.role == "dtmf"
    ]
    # "42": 1 s after the "2"; "9#": at the "#"; "1": 1 s after it. (The simulator's clock starts
    # when its WebSocket is up: a few virtual ms after t0, the same for every key.)
    offset = lines[0][0] - 1.5
    assert 0 <= offset < 0.1
    assert lines == [
        (round(1.5 + offset, 2), Transcript("dtmf", "42")),
        (round(2.1 + offset, 2), Transcript("dtmf", "9#")),
        (round(3.2 + offset, 2), Transcript("dtmf", "1")),
    ]
    assert fake.user_texts == [
        "The caller pressed 4 2 on the keypad.",
        "The caller pressed 9 # on the keypad.",
        "The caller pressed 1 on the keypad.",
    ]
    assert outcome.sample("voxbridge_dtmf_digits_total") == 5


async def test_an_agent_that_ignores_key_presses_still_counts_and_journals_them(
    autojump_clock: Any,
) -> None:
    fake = await served(FakeOpenAIRealtime())
    agent = AgentConfig(name="quiet", dtmf="ignore")
    async with bridged(
        fake, Settings(), call_options={"agent": agent}, seconds=2.0, dtmf=[(0.2, "5")]
    ) as outcome:
        pass
    assert fake.user_texts == []
    [record] = outcome.journal.records
    assert (record.agent, record.dtmf_digits) == ("quiet", 1)
    assert Transcript("dtmf", "5") in record.transcript


async def test_usage_of_every_response_is_metered_and_recorded(autojump_clock: Any) -> None:
    fake = await served(FakeOpenAIRealtime(speak=[(0.5, speech("Hello there."), "Hello there.")]))
    async with bridged(fake, Settings(), audio=SILENCE, seconds=2.0) as outcome:
        pass
    totals = fake.usage_totals()
    assert totals  # the fake reported usage
    [record] = outcome.journal.records
    assert dict(record.usage) == totals
    for kind, amount in totals.items():
        labels = {"provider": record.provider, "kind": kind}
        sample = outcome.sample("voxbridge_provider_usage_total", **labels)
        assert sample == amount


async def test_bad_tool_calls_are_error_results_and_the_call_goes_on(autojump_clock: Any) -> None:
    async def order(arguments: dict[str, Any], context: ToolContext) -> object:
        return {"order": arguments["order"]}

    lookup = Tool(
        "lookup",
        "Look up an order.",
        {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]},
        order,
    )
    fake = await served(
        FakeOpenAIRealtime(
            caller_transcripts=[(0.5, "One."), (1.0, "Two.")],
            tool_calls=[
                FakeToolCall("lookup", "{not json", call_id="c1"),
                FakeToolCall("lookup", {"id": 5}, after_turn=2, call_id="c2"),
            ],
        )
    )
    async with bridged(
        fake, Settings(), call_options={"tools": [lookup]}, audio=SILENCE, seconds=3.0
    ) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.CALLER_STOP
    assert fake.tool_outputs == [
        ("c1", '{"error":"arguments are not valid JSON"}'),
        ("c2", '{"error":"missing required argument(s): order"}'),
    ]
    assert outcome.sample("voxbridge_tool_calls_total", tool="lookup", outcome="bad_arguments") == 2


class SilentTwilio:
    """Twilio's REST API that never answers (a ``CarrierRest`` stand-in)."""

    can_transfer = True

    def __init__(self) -> None:
        self.asked: list[tuple[str, float]] = []

    async def complete(self, call_id: str) -> None:
        self.asked.append((call_id, trio.current_time()))
        await trio.sleep_forever()

    async def transfer(self, call_id: str, target: str) -> None:
        await trio.sleep_forever()


async def test_end_call_ends_the_call_even_if_twilio_does_not_answer(autojump_clock: Any) -> None:
    fake = await served(
        FakeOpenAIRealtime(
            caller_transcripts=[(0.5, "Bye.")],
            tool_calls=[FakeToolCall("end_call", {}, say=speech("Goodbye!"))],
        )
    )
    rest = SilentTwilio()
    settings = Settings(tool_timeout=2.0)
    async with bridged(
        fake, settings, call_options={"carrier_rest": rest}, audio=SILENCE, seconds=30.0
    ) as outcome:
        pass
    assert outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.AGENT_HANGUP
    [(call_sid, asked_at)] = rest.asked
    caller = outcome.caller
    assert caller is not None and call_sid == caller.call_sid
    assert speech("Goodbye!") in bytes(caller.played)  # heard before the REST request
    assert outcome.ended_at - asked_at < 2.0 + settings.teardown_timeout
    assert outcome.ended_at - asked_at >= 2.0  # it waited for Twilio, tool_timeout long


async def test_a_resumed_session_is_seeded_with_the_tool_exchange(autojump_clock: Any) -> None:
    async def order(arguments: dict[str, Any], context: ToolContext) -> object:
        return {"status": "shipped"}

    lookup = Tool("lookup", "Look up an order.", handler=order)
    fake = await served(
        FakeOpenAIRealtime(
            caller_transcripts=[(0.5, "Where is it?")],
            tool_calls=[FakeToolCall("lookup", {}, call_id="c1")],
            close_at=(2.0, 1011),  # the session drops after the exchange
            only_session=1,
        )
    )
    async with bridged(
        fake, Settings(), call_options={"tools": [lookup]}, audio=SILENCE, seconds=4.0
    ) as outcome:
        pass
    assert outcome.disconnect is not None and outcome.disconnect.reason is Reason.CALLER_STOP
    assert len(fake.sessions) == 2
    replayed = [event["item"] for event in fake.sessions[1].items_created]
    calls = [item for item in replayed if item["type"].startswith("function_call")]
    assert calls == [
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": '{"status":"shipped"}'},
    ]


async def test_one_built_in_at_a_time_the_second_is_told_the_call_is_ending(
    autojump_clock: Any,
) -> None:
    fake = await served(
        FakeOpenAIRealtime(
            caller_transcripts=[(0.5, "A person please. No, bye.")],
            tool_calls=[
                FakeToolCall("transfer_call", {}, call_id="c1"),
                FakeToolCall("end_call", {}, call_id="c2"),
            ],
        )
    )
    rest = SilentTwilio()  # the redirect never answers: the transfer fails at tool_timeout
    options = {"carrier_rest": rest, "agent": AgentConfig(transfer_to="+15551230000")}
    async with bridged(
        fake, Settings(tool_timeout=2.0), call_options=options, audio=SILENCE, seconds=5.0
    ) as outcome:
        pass
    assert outcome.disconnect is not None
    assert outcome.disconnect.reason is Reason.CALLER_STOP  # neither the transfer nor end_call
    assert fake.tool_outputs == [
        ("c2", '{"error":"the call is already ending"}'),
        ("c1", '{"error":"the transfer failed (Twilio did not answer)"}'),
    ]
