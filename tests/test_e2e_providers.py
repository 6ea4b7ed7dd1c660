"""``voxbridge serve --provider <name>`` against every registered provider's fake, on real loopback.

The server is the real one (hypercorn, trio worker); each provider is its shipped fake
(:func:`voxbridge.testing.fake_for`), reached through ``--provider-url`` exactly as the real
endpoint would be; the caller is the Twilio simulator, playing agent audio in real time and echoing
marks as Twilio does. One capability table, ``PROVIDERS``, says for each provider how to make its
fake do each thing -- speak, hear the caller, interrupt, call a tool, hang up -- and how to read
back what reached it; every test is parametrized over it, so adding a provider is adding a row:

* audio both ways (the frames counted at each hop);
* barge-in: the provider says the caller started speaking, the caller gets a ``clear``;
* a dropped session resumed, its successor opened with the conversation so far;
* a tool call answered, the result reaching the provider;
* a hang-up from the provider, where its protocol has one;
* a frozen provider (it stops reading: no pongs) resumed.

A thing a provider's protocol cannot do is a row entry that says why (``Cannot``): the test then
checks what the documentation promises instead (GPT-Live has no barge-in event: no ``clear``, the
audio sent plays out) or is skipped with that reason (no hang-up in OpenAI's, Deepgram's or
Gemini's protocol). The tool the server offers is ``TOOLS`` here (``--tools-module`` is this file).
Every wait is an event or a poll with a deadline; every call has a budget.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs
import pytest
import trio
from test_e2e_server import scrape

from voxbridge import Tool
from voxbridge.audio import tone
from voxbridge.providers.registry import PROVIDERS as REGISTERED
from voxbridge.server import RunningServer, serve
from voxbridge.session.state import CallRecord
from voxbridge.settings import Settings
from voxbridge.testing import CallResult, fake_for, simulate_call
from voxbridge.testing.fake_deepgram import FakeFunctionCall
from voxbridge.testing.fake_gemini import FakeToolCall as GeminiToolCall
from voxbridge.testing.fake_gemini import Speech, pcm24
from voxbridge.testing.fake_gpt_live import FakeLiveToolCall
from voxbridge.testing.fake_openai import FakeToolCall as OpenAIToolCall
from voxbridge.testing.fake_ultravox import FakeToolCall as UltravoxToolCall
from voxbridge.testing.fake_ultravox import Utterance, speech_for

BUDGET = 20.0  # real seconds per call, whatever happens
FRAME_MS = 20
#: Short deadlines: a missing pong is noticed within a second, a resume takes a moment.
SHORT = {
    "keepalive_interval": 0.5,
    "pong_timeout": 0.5,
    "close_timeout": 0.5,
    "connect_timeout": 2.0,
    "reconnect_budget": 2.0,
}
SENT = tone(1.0) * 3  # what the simulated caller streams (its one-second tone, looped)
TURN_MS = 2000  # the agent turn the caller interrupts
SAID = "where is my order 42"  # the caller's turn, as the provider transcribes it
OUTPUT = '{"order":"42","status":"shipped"}'  # what the tool answers

#: The fault knobs named alike in every fake (the table in docs/providers.md).
SHARED_KNOBS = (
    "refuse_status",
    "handshake_delay",
    "close_at",
    "close_reason",
    "stop_reading_at",
    "speech_started_at",
    "hangup_at",
    "only_session",
)

Knobs = dict[str, Any]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# --- the tool the server offers (``--tools-module`` is this file) ---------------------------------


async def lookup_order(arguments: dict[str, Any], context: object) -> dict[str, str]:
    return {"order": arguments["order"], "status": "shipped"}


TOOLS = [
    Tool(
        "lookup_order",
        "Look up an order by its number.",
        {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]},
        lookup_order,
    )
]


# --- the capability table -------------------------------------------------------------------------


@attrs.frozen
class Cannot:
    """A thing the provider's protocol cannot do, and why."""

    why: str


@attrs.frozen
class Row:
    """How one provider's fake does each thing the matrix asks, as that fake's knobs (the fault
    knobs -- ``close_at``, ``stop_reading_at``, ``only_session``, ``hangup_at``,
    ``speech_started_at`` -- are named alike in every fake), and how to read back from its records
    what reached it. Times are seconds after the fake's session opened.

    Attributes:
        settings: the ``Settings`` fields the provider needs (its key).
        echo: knobs that make the fake play the caller's audio back.
        passthrough: the caller's audio comes back byte for byte (no resampling on the way).
        speak: ``(at, ms)`` -> knobs: the agent speaks for ``ms`` from ``at``.
        interrupt: ``at`` -> knobs: the provider says the caller started speaking; or
            ``Cannot`` (the test then checks what the documentation promises instead).
        hear: ``(at, text)`` -> knobs: the provider transcribes the caller saying ``text``.
        replayed: the caller's words the second session's opening carried, from the records.
        tool_call: ``(at, name, arguments)`` -> knobs: the model calls a tool.
        tool_settings: ``Settings`` fields a tool call needs besides the key.
        tool_outputs: the tool results the fake received, as the JSON text sent.
        hangup: ``at`` -> knobs: the provider ends the call; or ``Cannot``.
        check: extra checks of what the fake recorded in the audio test (the negotiated format).
    """

    settings: Knobs
    echo: Knobs
    passthrough: bool
    speak: Callable[[float, int], Knobs]
    interrupt: Callable[[float], Knobs] | Cannot
    hear: Callable[[float, str], Knobs]
    replayed: Callable[[Any], list[str]]
    tool_call: Callable[[float, str, Mapping[str, str]], Knobs]
    tool_outputs: Callable[[Any], list[str]]
    hangup: Callable[[float], Knobs] | Cannot
    tool_settings: Knobs = attrs.Factory(dict)
    check: Callable[[Any], None] = lambda fake: None


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


TURN_BYTE = 0x11  # the mu-law byte an agent turn is made of: the caller's tone never has it


def mulaw_turn(at: float, ms: int) -> Knobs:
    """An agent turn of one constant mu-law byte (``TURN_BYTE``), with a transcript."""
    return {"speak": [(at, bytes([TURN_BYTE]) * (8 * ms), "an answer")]}


def openai_replayed(fake: Any) -> list[str]:
    return [
        part["text"]
        for event in fake.sessions[1].items_created
        if event["item"].get("role") == "user"
        for part in event["item"]["content"]
    ]


def openai_format(fake: Any) -> None:
    audio = fake.sessions[0].session_updates[0]["session"]["audio"]
    assert audio["input"]["format"] == audio["output"]["format"] == {"type": "audio/pcmu"}
    assert audio["input"]["transcription"]["model"] == "gpt-transcribe"


def ultravox_replayed(fake: Any) -> list[str]:
    messages = fake.requests[-1].initial_messages
    return [m["text"] for m in messages if m["role"] == "MESSAGE_ROLE_USER"]


def ultravox_format(fake: Any) -> None:
    request = fake.requests[0]
    assert request.api_key == "uv-key"
    assert request.medium["inputSampleRate"] == request.medium["outputSampleRate"] == 8000


def gemini_replayed(fake: Any) -> list[str]:
    """A Gemini session resumes with a handle, nothing replayed: the fake continues the
    conversation of the session that issued it. What the caller said in that one."""
    handle = fake.sessions[1].resumed_from
    [issuer] = [session for session in fake.sessions if handle in session.handles]
    return [
        m["serverContent"]["inputTranscription"]["text"]
        for m in issuer.sent
        if "inputTranscription" in m.get("serverContent", {})
    ]


def gemini_format(fake: Any) -> None:
    setup = fake.sessions[0].setup
    assert setup["generationConfig"]["responseModalities"] == ["AUDIO"]
    assert fake.sessions[0].errors == []  # every audio message was PCM at 16 kHz


OPENAI_ROW = Row(
    settings={},
    echo={"echo_delay": 0.05},
    passthrough=True,
    speak=mulaw_turn,
    interrupt=lambda at: {"speech_started_at": [at]},
    hear=lambda at, text: {"caller_transcripts": [(at, text)]},
    replayed=openai_replayed,
    # the fake hears the caller only through its transcripts: the call follows the first
    tool_call=lambda at, name, arguments: {
        "caller_transcripts": [(at, SAID)],
        "tool_calls": [OpenAIToolCall(name, dict(arguments))],
    },
    tool_outputs=lambda fake: [output for _, output in fake.tool_outputs],
    hangup=Cannot(
        "OpenAI Realtime has no hang-up (every close is a drop to resume): the agent ends a call "
        "with the end_call tool, tests/test_e2e_agents.py"
    ),
    check=openai_format,
)

#: provider -> how its fake does each thing (every registered provider has a row).
PROVIDERS: dict[str, Row] = {
    "echo": attrs.evolve(OPENAI_ROW, echo={"delay": 0.05}),
    "openai": OPENAI_ROW,
    "ultravox": Row(
        settings={"provider_settings": {"ultravox": {"api_key": "uv-key"}}},
        echo={"api_key": "uv-key", "delay": 0.05},
        passthrough=True,  # PCM16 both ways: G.711 round-trips byte for byte
        speak=lambda at, ms: {"api_key": "uv-key", "agent_audio": [(at, speech_for("hi", ms))]},
        interrupt=lambda at: {"speech_started_at": [at]},  # playback_clear_buffer
        hear=lambda at, text: {"api_key": "uv-key", "script": [Utterance(at, "user", text)]},
        replayed=ultravox_replayed,
        tool_call=lambda at, name, arguments: {
            "api_key": "uv-key",
            "tool_calls": [UltravoxToolCall(name, dict(arguments), at=at)],
        },
        tool_outputs=lambda fake: [result["result"] for result in fake.tool_results],
        hangup=lambda at: {"api_key": "uv-key", "hangup_at": at},  # close 1000
        check=ultravox_format,
    ),
    "gpt-live": Row(
        settings={"provider_settings": {"gpt-live": {"api_key": "sk-live"}}},
        echo={"api_key": "sk-live", "echo_delay": 0.05},
        passthrough=True,
        # real time, so that the model is still speaking when it stops
        speak=lambda at, ms: {**mulaw_turn(at, ms), "speak_pace": 1.0},
        interrupt=Cannot(
            "the Live API has no event saying the caller interrupted: the model stops by itself, "
            "voxbridge sends no clear and what was sent plays out (docs/providers.md)"
        ),
        hear=lambda at, text: {"caller_transcripts": [(at, text)]},
        replayed=lambda fake: [
            message["content"][0]["text"]
            for message in fake.sessions[1].start["input"]
            if message["role"] == "user"
        ],
        tool_call=lambda at, name, arguments: {
            "tool_calls": [FakeLiveToolCall(name, compact(arguments), at=at)]
        },
        tool_settings={"provider_settings": {"gpt-live": {"tools_model": "gpt-5-mini"}}},
        tool_outputs=lambda fake: [out for s in fake.sessions for _, out in s.tool_outputs],
        hangup=lambda at: {"hangup_at": at},  # session.closed remote_hangup
        check=lambda fake: None,  # the fake refuses a session.start that is not pcmu at 8 kHz
    ),
    "deepgram": Row(
        settings={"provider_settings": {"deepgram": {"api_key": "dg-key"}}},
        echo={"api_key": "dg-key", "echo_delay": 0.05},
        passthrough=True,
        speak=lambda at, ms: {"api_key": "dg-key", **mulaw_turn(at, ms)},
        interrupt=lambda at: {"speech_started_at": [at]},  # UserStartedSpeaking
        hear=lambda at, text: {"api_key": "dg-key", "caller_transcripts": [(at, text)]},
        replayed=lambda fake: [
            message["content"]
            for message in fake.sessions[1].context_messages
            if message.get("role") == "user"
        ],
        tool_call=lambda at, name, arguments: {
            "api_key": "dg-key",
            "function_calls": [FakeFunctionCall(name, compact(arguments), at=at)],
        },
        tool_outputs=lambda fake: [
            response["content"] for s in fake.sessions for response in s.function_responses
        ],
        hangup=Cannot(
            "Deepgram's agent API has no hang-up (a close is a drop to resume): the agent ends a "
            "call with the end_call tool, tests/test_e2e_deepgram.py"
        ),
        check=lambda fake: None,  # the fake refuses Settings that are not mu-law 8 kHz
    ),
    "gemini": Row(
        settings={"provider_settings": {"gemini": {"api_key": "gm-key"}}},
        echo={"api_key": "gm-key", "echo": True, "delay": 0.05},
        passthrough=False,  # 8 kHz mu-law -> 16 kHz PCM in, 24 kHz PCM -> 8 kHz out
        speak=lambda at, ms: {"api_key": "gm-key", "speech": [Speech(at, "an answer", pcm24(ms))]},
        interrupt=lambda at: {"speech_started_at": [at]},  # serverContent.interrupted
        hear=lambda at, text: {"api_key": "gm-key", "heard": [(at, text)]},
        replayed=gemini_replayed,
        tool_call=lambda at, name, arguments: {
            "api_key": "gm-key",
            "tool_calls": [GeminiToolCall(at, name, dict(arguments))],
        },
        tool_outputs=lambda fake: [
            compact(response["response"]) for s in fake.sessions for response in s.tool_responses
        ],
        hangup=Cannot(
            "Gemini Live has no hang-up: the service only ends a connection at its time limit "
            "(goAway, then 1000), which is resumed"
        ),
        check=gemini_format,
    ),
}


def test_every_registered_provider_has_a_row_and_a_fake_that_serves() -> None:
    assert list(PROVIDERS) == list(REGISTERED)
    for name in REGISTERED:
        fake = fake_for(name)
        assert inspect.isclass(fake), name
        assert inspect.iscoroutinefunction(fake.serve), name
        assert "task_status" in inspect.signature(fake.serve).parameters, name


def test_the_shared_fault_knobs_table_is_true_of_every_fake() -> None:
    """docs/providers.md lists, for each fault knob, what each fake does with it, or ``-``: a
    fake has the knob exactly when the table says what it does."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "providers.md").read_text("utf-8")
    lines = text.split("| fault knob |", 1)[1].splitlines()
    header = [cell.strip().strip("`") for cell in lines[0].strip(" |").split("|")]
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip(" |").split("|")])
    fakes = {fake_for(name).__name__: fake_for(name) for name in REGISTERED}
    assert set(header) <= set(fakes) and len(header) == 5
    assert [row[0] for row in rows] == [f"`{knob}`" for knob in SHARED_KNOBS]
    for row in rows:
        knob = row[0].strip("`")
        for name, cell in zip(header, row[1:], strict=True):
            knobs = inspect.signature(fakes[name].__init__).parameters
            assert (knob in knobs) == (not cell.startswith("-")), (knob, name, cell)


def test_fake_for_an_unknown_provider_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        fake_for("nobody")


# --- running a call -------------------------------------------------------------------------------


@attrs.define
class Seen:
    """One call against one fake: what the caller saw, the server's metrics and call record."""

    fake: Any
    result: CallResult
    samples: Samples
    record: CallRecord

    def metric(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)


def merged(*parts: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments merged, nested dicts (``provider_settings``) and lists (``speak``)
    combined, not replaced."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = merged(out[key], value)
            elif isinstance(value, list) and isinstance(out.get(key), list):
                out[key] = [*out[key], *value]
            else:
                out[key] = value
    return out


@asynccontextmanager
async def serving(provider: str, fake: Any, settings: Knobs) -> AsyncIterator[RunningServer]:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(fake.serve)
        config = Settings(
            port=0, provider=provider, provider_url=url, tools_module=__file__, **settings
        )
        server = await nursery.start(
            lambda task_status: serve(config, shutdown_trigger=stop.wait, task_status=task_status)
        )
        try:
            yield server
        finally:
            stop.set()
        nursery.cancel_scope.cancel()


async def call(
    provider: str, *knobs: Knobs, seconds: float, settings: Mapping[str, Any] = MappingProxyType({})
) -> Seen:
    """One simulated call through ``voxbridge serve --provider provider`` against its fake,
    made with ``knobs``; once the server has accounted for it, what everyone saw."""
    row = PROVIDERS[provider]
    fake = fake_for(provider)(**merged(*knobs))
    with trio.fail_after(BUDGET):
        async with serving(provider, fake, merged(SHORT, row.settings, settings)) as server:
            result = await simulate_call(server.media_url, seconds=seconds)
            await server.app.registry.wait_empty()  # the server's teardown is done too
            samples = await scrape(server)
            record = server.app.registry.recent[-1]
    return Seen(fake, result, samples, record)


def disconnects(samples: Samples) -> dict[str, float]:
    """The calls ended, by reason (the reasons counted at least once)."""
    return {
        dict(labels)["reason"]: value
        for (name, labels), value in samples.items()
        if name == "voxbridge_call_disconnects_total" and value
    }


def audio_in(fake: Any) -> int:
    """Caller audio messages every session of the fake received."""
    return sum(session.audio_in for session in fake.sessions)


# --- the matrix -----------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_audio_both_ways(provider: str) -> None:
    row = PROVIDERS[provider]
    seen = await call(provider, row.echo, seconds=0.6)
    result = seen.result
    assert (result.close_code, result.close_reason) == (1000, "caller_stop")
    assert disconnects(seen.samples) == {"caller_stop": 1}
    up = seen.metric("voxbridge_media_frames_total", direction="to_upstream")
    dropped = seen.metric("voxbridge_media_frames_dropped_total", direction="to_upstream")
    # every frame the caller sent was relayed (or dropped before the session was up), and every
    # one relayed reached the provider
    assert result.frames_sent == 30
    assert up + dropped == 30 == seen.record.frames_from_caller
    assert audio_in(seen.fake) == up > 20
    # the echo came back: every frame relayed to the caller arrived
    down = seen.metric("voxbridge_media_frames_total", direction="to_caller")
    assert result.frames_received == down == seen.record.frames_to_caller > 0
    back = bytes(result.audio_received)
    assert len(back) > 2400  # more than 0.3 s of the 0.6 s came back
    if row.passthrough:
        assert back == SENT[: len(back)]  # byte for byte
    row.check(seen.fake)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_barge_in(provider: str) -> None:
    """The agent speaks 2 s from 0.1 s; at 0.5 s the provider says the caller started speaking
    (GPT-Live: the model stops by itself, and says nothing)."""
    row = PROVIDERS[provider]
    if isinstance(row.interrupt, Cannot):
        stop = {"interrupt_at": [0.5]}  # GPT-Live's: the model stops mid-turn, silently
        seen = await call(provider, row.speak(0.1, TURN_MS), stop, seconds=0.9)
        [session] = seen.fake.sessions
        [sent] = session.interrupted  # the bytes it had sent when it stopped
        assert 0 < sent < TURN_MS * 8
        assert seen.result.clears_received == 0  # nothing to clear on: no clear
        assert seen.metric("voxbridge_barge_ins_total") == 0
        assert len(seen.result.played) == sent  # all of it played out
        return
    seen = await call(provider, row.speak(0.1, TURN_MS), row.interrupt(0.5), seconds=0.9)
    result = seen.result
    assert (result.close_code, result.close_reason) == (1000, "caller_stop")
    assert result.clears_received == 1
    assert seen.metric("voxbridge_barge_ins_total") == 1 == seen.record.barge_ins
    [heard] = result.heard_ms_at_clear
    assert 0 < heard < TURN_MS  # the caller had heard some of the turn, not all
    if provider in ("openai", "echo"):  # the item was truncated at what the caller heard
        session = seen.fake.sessions[0]
        [turn] = [response for response in session.responses if response.trigger == "speak"]
        [truncate] = [t for t in session.truncates if t["item_id"] == turn.item_id]
        # of the turn (the echo aside): within a frame, plus the milliseconds a mark echo and
        # the clear take on loopback
        assert 0 <= result.heard_ms(TURN_BYTE) - truncate["audio_end_ms"] <= FRAME_MS + 10


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_drop_is_resumed_with_the_conversation_replayed(provider: str) -> None:
    """The caller speaks at 0.1 s, the agent answers at 0.25 s, the provider drops the session
    (1011) at 0.6 s; the second session is opened with the caller's turn."""
    row = PROVIDERS[provider]
    drop = {"close_at": (0.6, 1011), "only_session": 1}
    seen = await call(provider, row.hear(0.1, SAID), row.speak(0.25, 100), drop, seconds=1.2)
    assert (seen.result.close_code, seen.result.close_reason) == (1000, "caller_stop")
    assert len(seen.fake.sessions) == 2
    assert seen.fake.sessions[0].close_code == 1011
    assert seen.metric("voxbridge_upstream_reconnects_total", outcome="resumed") == 1
    assert seen.record.resumes == 1
    assert ("caller", SAID) in [(line.role, line.text) for line in seen.record.transcript]
    assert row.replayed(seen.fake) == [SAID]
    assert seen.fake.sessions[1].audio_in > 0  # the call went on in the new session


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_tool_call_is_answered(provider: str) -> None:
    row = PROVIDERS[provider]
    seen = await call(
        provider,
        row.echo,
        row.tool_call(0.1, "lookup_order", {"order": "42"}),
        seconds=0.8,
        settings=row.tool_settings,
    )
    assert (seen.result.close_code, seen.result.close_reason) == (1000, "caller_stop")
    assert row.tool_outputs(seen.fake) == [OUTPUT]
    assert seen.metric("voxbridge_tool_calls_total", tool="lookup_order", outcome="ok") == 1
    assert seen.record.tool_calls == 1


def unless_cannot(what: Callable[[Row], object]) -> list[Any]:
    """The providers, each row whose ``what`` is ``Cannot`` skipped with its reason.

    A mark, not ``pytest.skip()`` in the test: pytest-trio re-raises a skip from inside an async
    test without its reason (``Skipped`` is all the summary would say)."""
    return [
        pytest.param(name, marks=pytest.mark.skip(reason=f"{name}: {cannot.why}"))
        if isinstance(cannot := what(row), Cannot)
        else name
        for name, row in PROVIDERS.items()
    ]


@pytest.mark.parametrize("provider", unless_cannot(lambda row: row.hangup))
async def test_the_provider_hangs_up(provider: str) -> None:
    row = PROVIDERS[provider]
    assert not isinstance(row.hangup, Cannot)
    seen = await call(provider, row.echo, row.hangup(0.3), seconds=5.0)
    result = seen.result
    assert (result.close_code, result.close_reason) == (1000, "agent_hangup")
    assert disconnects(seen.samples) == {"agent_hangup": 1}
    assert seen.record.reason.value == "agent_hangup"
    assert result.frames_sent < 50  # ended by the agent, long before the caller's 5 s
    [session] = seen.fake.sessions  # not resumed
    assert session.close_code == 1000


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_frozen_provider_is_resumed(provider: str) -> None:
    """The first session stops reading at 0.2 s: the next ping (0.5 s apart) gets no pong within
    0.5 s, and the session is replaced."""
    row = PROVIDERS[provider]
    frozen = {"stop_reading_at": 0.2, "only_session": 1}
    seen = await call(provider, row.echo, frozen, seconds=1.5)
    assert (seen.result.close_code, seen.result.close_reason) == (1000, "caller_stop")
    first, second = seen.fake.sessions
    assert first.close_code in (None, 1006)  # no close handshake: the bridge cut the socket
    assert second.audio_in > 0
    assert seen.metric("voxbridge_upstream_reconnects_total", outcome="resumed") == 1
    assert seen.record.resumes == 1
    assert disconnects(seen.samples) == {"caller_stop": 1}
