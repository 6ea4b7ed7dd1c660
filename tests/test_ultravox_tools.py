"""Ultravox tools, key presses, greetings and billed usage: codec tables, request bodies, and the
provider against ``FakeUltravox`` over real loopback.

The wire shapes asserted here are Ultravox's (``fixie-ai/ultradox``): ``apps/datamessages.mdx``
for ``client_tool_invocation`` / ``client_tool_result`` / ``user_text_message``, the OpenAPI
schema behind ``api-reference/calls/calls-post.mdx`` and ``calls-get.mdx`` for ``selectedTools``,
``initialMessages``, ``firstSpeakerSettings`` and ``billedDuration``. Every socket test runs under a
real-time budget; the usage tests that need time use a mock transport on the autojump clock.
"""

from __future__ import annotations

import json
import logging
from types import MappingProxyType
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio.testing
from test_ultravox import BUDGET, KEY, joined, provider, running

from voxbridge.agents import AgentConfig
from voxbridge.audio import pcm16_to_ulaw
from voxbridge.errors import RemoteProtocolError
from voxbridge.providers.base import Provider
from voxbridge.providers.events import (
    AgentAudio,
    HistoryItem,
    ToolCall,
    ToolExchange,
    Transcript,
    Usage,
)
from voxbridge.providers.ultravox import UltravoxCodec, parse_duration
from voxbridge.providers.ultravox_rest import UltravoxProvider
from voxbridge.testing.fake_ultravox import FakeToolCall, speech_for
from voxbridge.tools import END_CALL, Tool

LOOKUP = Tool(
    "lookup_order",
    "Look up an order by its number.",
    {
        "type": "object",
        "properties": {
            "number": {"type": "string", "description": "the order number"},
            "verbose": {"type": "boolean"},
        },
        "required": ["number"],
    },
)

LOOKUP_DEFINITION = {
    "temporaryTool": {
        "modelToolName": "lookup_order",
        "description": "Look up an order by its number.",
        "dynamicParameters": [
            {
                "name": "number",
                "location": "PARAMETER_LOCATION_BODY",
                "schema": {"type": "string", "description": "the order number"},
                "required": True,
            },
            {
                "name": "verbose",
                "location": "PARAMETER_LOCATION_BODY",
                "schema": {"type": "boolean"},
                "required": False,
            },
        ],
        "client": {},
    }
}


def plain(**options: Any) -> UltravoxProvider:
    """A provider that is never asked to do I/O."""
    settings: dict[str, Any] = {"voice": None, "system_prompt": "Be brief.", "connect_timeout": 2}
    return UltravoxProvider(KEY, **(settings | options))


def mocked(answer: Any, **options: Any) -> UltravoxProvider:
    """A provider whose requests ``answer`` (a sync or async httpx handler) serves."""
    return plain(
        client_factory=lambda: httpx.AsyncClient(transport=httpx.MockTransport(answer)),
        **options,
    )


def frames(codec_frames: list[str | bytes]) -> list[Any]:
    return [json.loads(frame) for frame in codec_frames]


# --- codec: tool invocations ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "arguments"),
    [
        ({"location": "Seattle"}, '{"location":"Seattle"}'),
        ({}, "{}"),
        ({"n": 1, "tags": ["a", "b"], "x": {"y": None}}, '{"n":1,"tags":["a","b"],"x":{"y":null}}'),
    ],
)
def test_client_tool_invocation_is_a_tool_call(parameters: dict[str, Any], arguments: str) -> None:
    frame = json.dumps(
        {
            "type": "client_tool_invocation",
            "toolName": "get_weather",
            "invocationId": "unique-invocation-id",
            "parameters": parameters,
        }
    )
    assert UltravoxCodec().decode(frame) == ToolCall(
        "unique-invocation-id", "get_weather", arguments
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"invocationId": "i", "parameters": {}},
        {"toolName": "", "invocationId": "i", "parameters": {}},
        {"toolName": 3, "invocationId": "i", "parameters": {}},
        {"toolName": "t", "parameters": {}},
        {"toolName": "t", "invocationId": None, "parameters": {}},
        {"toolName": "t", "invocationId": "", "parameters": {}},
        {"toolName": "t", "invocationId": 7, "parameters": {}},
        {"toolName": "t", "invocationId": "i"},
        {"toolName": "t", "invocationId": "i", "parameters": None},
        {"toolName": "t", "invocationId": "i", "parameters": [1]},
        {"toolName": "t", "invocationId": "i", "parameters": '{"a": 1}'},
    ],
)
def test_malformed_tool_invocations(fields: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError, match="client_tool_invocation"):
        UltravoxCodec().decode(json.dumps({"type": "client_tool_invocation"} | fields))


def test_tool_parameters_too_deep_to_reencode_are_a_protocol_error() -> None:
    deep = "[" * 300 + "]" * 300  # orjson reads 1024 levels but writes 255
    frame = '{"type":"client_tool_invocation","toolName":"t","invocationId":"i","parameters":'
    with pytest.raises(RemoteProtocolError, match="re-encoded"):
        UltravoxCodec().decode(frame + '{"a":' + deep + "}}")


# --- codec: tool results, key presses -------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "output", "expected"),
    [
        (
            "ok",
            '{"status":"shipped"}',
            {"result": '{"status":"shipped"}', "responseType": "tool-response"},
        ),
        ("ok", "plain text", {"result": "plain text", "responseType": "tool-response"}),
        (
            "unknown_tool",
            '{"error":"no tool named \'x\' is available"}',
            {"errorType": "undefined", "errorMessage": "no tool named 'x' is available"},
        ),
        (
            "error",
            '{"error":"the tool failed (KeyError)"}',
            {"errorType": "implementation-error", "errorMessage": "the tool failed (KeyError)"},
        ),
        (
            "timeout",
            '{"error":"the tool did not answer within 10 s"}',
            {
                "errorType": "implementation-error",
                "errorMessage": "the tool did not answer within 10 s",
            },
        ),
        (
            "bad_arguments",
            '{"error":"missing required argument(s): number"}',
            {
                "errorType": "implementation-error",
                "errorMessage": "missing required argument(s): number",
            },
        ),
        ("error", "not json", {"errorType": "implementation-error", "errorMessage": "not json"}),
        ("error", '["x"]', {"errorType": "implementation-error", "errorMessage": '["x"]'}),
    ],
)
def test_tool_result_frames(outcome: str, output: str, expected: dict[str, Any]) -> None:
    exchange = ToolExchange("inv-1", "lookup_order", '{"number":"42"}', output, outcome)
    assert frames(UltravoxCodec().tool_result(exchange, known=True)) == [
        {"type": "client_tool_result", "invocationId": "inv-1"} | expected
    ]


@pytest.mark.parametrize("outcome", ["ok", "error", "unknown_tool"])
def test_tool_result_for_a_replaced_session_is_told_as_a_user_text_message(outcome: str) -> None:
    # the new session is a new Ultravox call that never made the invocation (it would refuse a
    # client_tool_result): the agent is told the exchange, and answers it
    exchange = ToolExchange("inv-1", "lookup_order", '{"n":1}', '{"error":"x"}', outcome)
    (frame,) = UltravoxCodec().tool_result(exchange, known=False)
    assert json.loads(frame) == {
        "type": "user_text_message",
        "text": 'The result of the tool call lookup_order({"n":1}), asked for before the'
        ' connection was restored: {"error":"x"}',
        "urgency": "immediate",
    }


@pytest.mark.parametrize(
    ("digits", "text"),
    [
        ("1", "The caller pressed 1 on the keypad."),
        ("12#", "The caller pressed 1 2 # on the keypad."),
        ("*0D", "The caller pressed * 0 D on the keypad."),
    ],
)
def test_dtmf_is_an_immediate_user_text_message(digits: str, text: str) -> None:
    assert frames(UltravoxCodec().dtmf(digits)) == [
        {"type": "user_text_message", "text": text, "urgency": "immediate"}
    ]


# --- request bodies -----------------------------------------------------------------------------


def test_tools_become_client_temporary_tools() -> None:
    body = plain(tools=[LOOKUP, END_CALL]).request_body([], first=True)
    assert body["selectedTools"] == [
        LOOKUP_DEFINITION,
        {
            "temporaryTool": {
                "modelToolName": "end_call",
                "description": END_CALL.description,
                "dynamicParameters": [
                    {
                        "name": "reason",
                        "location": "PARAMETER_LOCATION_BODY",
                        "schema": {
                            "type": "string",
                            "description": "why the call ends, in a few words",
                        },
                        "required": False,
                    }
                ],
                "client": {},
            }
        },
    ]


def test_a_tool_without_properties_has_no_dynamic_parameters_and_mappings_become_dicts() -> None:
    bare = Tool("ping", "Ping.", MappingProxyType({"type": "object"}))
    nested = Tool(
        "pick",
        "Pick.",
        MappingProxyType(
            {
                "type": "object",
                "properties": MappingProxyType({"choice": MappingProxyType({"enum": ("a", "b")})}),
                "required": ("choice", "not_a_property"),
            }
        ),
    )
    body = plain(tools=[bare, nested]).request_body([], first=True)
    assert [tool["temporaryTool"]["dynamicParameters"] for tool in body["selectedTools"]] == [
        [],
        [
            {
                "name": "choice",
                "location": "PARAMETER_LOCATION_BODY",
                "schema": {"enum": ["a", "b"]},
                "required": True,
            }
        ],
    ]
    json.dumps(body)  # plain JSON all the way down


@pytest.mark.parametrize(
    ("tool_timeout", "timeout"), [(10.0, "11s"), (2.25, "3.25s"), (39.5, "40s"), (120.0, "40s")]
)
def test_tool_timeout_is_ours_plus_a_margin_at_most_40s(tool_timeout: float, timeout: str) -> None:
    body = plain(tools=[LOOKUP], tool_timeout=tool_timeout).request_body([], first=True)
    assert body["selectedTools"][0]["temporaryTool"]["timeout"] == timeout


def test_no_tools_no_selected_tools_and_duplicate_names_are_refused() -> None:
    assert "selectedTools" not in plain().request_body([], first=True)
    with pytest.raises(ValueError, match="unique"):
        plain(tools=[LOOKUP, LOOKUP])


@pytest.mark.parametrize(
    ("greeting", "first_speaker"),
    [
        (None, {"agent": {}}),
        ("", {"user": {}}),
        ("Hello, Dr. Donut here!", {"agent": {"text": "Hello, Dr. Donut here!"}}),
    ],
)
def test_greeting_at_call_start(greeting: str | None, first_speaker: dict[str, Any]) -> None:
    body = plain(greeting=greeting).request_body([], first=True)
    assert body["firstSpeakerSettings"] == first_speaker
    assert "initialMessages" not in body


@pytest.mark.parametrize("greeting", [None, "", "Hello again!"])
def test_greeting_is_not_repeated_on_resume(greeting: str | None) -> None:
    uv = plain(greeting=greeting)
    assert uv.request_body([Transcript("agent", "Hi.")], first=False)["firstSpeakerSettings"] == {
        "user": {}
    }
    assert uv.request_body([Transcript("caller", "Hi.")], first=False)["firstSpeakerSettings"] == {
        "agent": {}
    }
    # a session dropped before any line was final is resumed with nothing to replay: it still
    # waits for the caller (no greeting, no greeting prompt)
    resumed = uv.request_body([], first=False)
    assert resumed["firstSpeakerSettings"] == {"user": {}} and "initialMessages" not in resumed


def test_key_presses_and_tool_exchanges_become_initial_messages() -> None:
    history: list[HistoryItem] = [
        Transcript("agent", "Which order?"),
        Transcript("dtmf", "42#"),
        ToolExchange("inv-1-1", "lookup_order", '{"number":"42"}', '{"status":"shipped"}'),
        Transcript("agent", "It has shipped."),
        Transcript("dtmf", ""),  # nothing pressed: nothing to say
        ToolExchange("inv-1-2", "nope", "{}", '{"error":"no tool"}', "unknown_tool"),
    ]
    body = plain(tools=[LOOKUP]).request_body(history, first=False)
    assert body["initialMessages"] == [
        {"role": "MESSAGE_ROLE_AGENT", "text": "Which order?", "medium": "MESSAGE_MEDIUM_VOICE"},
        {
            "role": "MESSAGE_ROLE_USER",
            "text": "The caller pressed 4 2 # on the keypad.",
            "medium": "MESSAGE_MEDIUM_TEXT",
        },
        {
            "role": "MESSAGE_ROLE_TOOL_CALL",
            "text": '{"number":"42"}',
            "invocationId": "inv-1-1",
            "toolName": "lookup_order",
        },
        {
            "role": "MESSAGE_ROLE_TOOL_RESULT",
            "text": '{"status":"shipped"}',
            "invocationId": "inv-1-1",
            "toolName": "lookup_order",
        },
        {"role": "MESSAGE_ROLE_AGENT", "text": "It has shipped.", "medium": "MESSAGE_MEDIUM_VOICE"},
        {
            "role": "MESSAGE_ROLE_TOOL_CALL",
            "text": "{}",
            "invocationId": "inv-1-2",
            "toolName": "nope",
        },
        {
            "role": "MESSAGE_ROLE_TOOL_RESULT",
            "text": '{"error":"no tool"}',
            "invocationId": "inv-1-2",
            "toolName": "nope",
        },
    ]
    # the agent answers a tool's result, as it answers the caller's last words
    assert body["firstSpeakerSettings"] == {"agent": {}}
    first_speakers = [
        plain().request_body(history[:n], first=False)["firstSpeakerSettings"] for n in (2, 3, 4)
    ]
    assert first_speakers == [{"agent": {}}, {"agent": {}}, {"user": {}}]  # key presses too


# --- for_agent -----------------------------------------------------------------------------------


def test_for_agent_overrides_what_the_agent_sets() -> None:
    base = plain(voice="Mark", model="ultravox-v0.7", greeting="Hi!", tools=[END_CALL])
    agent = AgentConfig(
        name="sales", model="ultravox-v0.8", voice="Jessica", instructions="Sell.", greeting=""
    )
    uv: Provider = base.for_agent(agent, [LOOKUP])
    assert isinstance(uv, UltravoxProvider) and uv is not base
    assert (uv.voice, uv.model, uv.system_prompt, uv.greeting) == (
        "Jessica",
        "ultravox-v0.8",
        "Sell.",
        "",
    )
    assert uv.tools == (LOOKUP,)
    assert (uv.base_url, uv.connect_timeout, uv._api_key) == (base.base_url, 2, KEY)
    # the original is untouched
    assert (base.voice, base.model, base.greeting, base.tools) == (
        "Mark",
        "ultravox-v0.7",
        "Hi!",
        (END_CALL,),
    )


def test_for_agent_keeps_what_the_agent_leaves_unset() -> None:
    base = plain(voice="Mark", model="ultravox-v0.7", greeting="Hi!", tool_timeout=5.0)
    uv = base.for_agent(AgentConfig(), ())
    assert (uv.voice, uv.model, uv.system_prompt, uv.greeting, uv.tools, uv.tool_timeout) == (
        "Mark",
        "ultravox-v0.7",
        "Be brief.",
        "Hi!",
        (),
        5.0,
    )
    assert uv.request_body([], first=True) == base.request_body([], first=True)


# --- billed usage ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("12.3s", 12.3),
        ("0s", 0.0),
        ("900s", 900.0),
        ("0.000000001s", 1e-9),
        ("3600.5s", 3600.5),
        ("12", None),
        ("12.3", None),
        ("-1s", None),
        ("1.5 s", None),
        (" 1s", None),
        ("1s ", None),
        ("1e3s", None),
        ("s", None),
        (".5s", None),
        ("01s", None),
        ("1.s", None),
        ("1.1234567891s", None),
        ("00:00:12", None),
        ("", None),
        (None, None),
        (12, None),
        (12.3, None),
        (["1s"], None),
    ],
)
def test_parse_duration(text: object, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("status", "body", "usage"),
    [
        (200, {"callId": "c1", "billedDuration": "12.3s"}, Usage((("billed_seconds", 12.3),))),
        (200, {"callId": "c1", "billedDuration": "0s"}, Usage((("billed_seconds", 0.0),))),
        (200, {"callId": "c1", "billedDuration": None}, None),  # not billed yet
        (200, {"callId": "c1"}, None),
        (200, {"callId": "c1", "billedDuration": "twelve seconds"}, None),
        (200, ["12s"], None),
        (404, {"detail": "No Call matches the given query."}, None),
        (500, {"detail": "boom"}, None),
    ],
)
async def test_billed_usage_answers(status: int, body: Any, usage: Usage | None) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=body)

    assert await mocked(answer).billed_usage("c1") == usage
    [request] = seen
    assert (request.method, str(request.url)) == ("GET", "https://api.ultravox.ai/api/calls/c1")
    assert request.headers["x-api-key"] == KEY


async def test_billed_usage_quotes_the_call_id_and_survives_a_non_json_body() -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=b"<html>")

    assert await mocked(answer).billed_usage("../a b?") is None
    assert seen == ["https://api.ultravox.ai/api/calls/..%2Fa%20b%3F"]


async def test_billed_usage_failures_are_logged_without_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"detail": f"bad key {KEY}"})

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach {KEY}")

    caplog.set_level(logging.INFO)
    assert await mocked(refuse).billed_usage("c1") is None
    assert await mocked(unreachable).billed_usage("c2") is None
    messages = [
        r.getMessage() for r in caplog.records if r.name == "voxbridge.providers.ultravox_rest"
    ]
    assert messages == [
        "Ultravox billed usage of call c1 was refused: HTTP 401: bad key <redacted>",
        "Ultravox billed usage of call c2 failed: ConnectError: cannot reach <redacted>",
    ]
    assert KEY not in caplog.text


async def test_billed_usage_is_bounded_by_connect_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await trio.sleep(3600)
        raise AssertionError("not reached")

    start = trio.current_time()
    assert await mocked(hang, connect_timeout=0.3).billed_usage("c1") is None
    assert trio.current_time() - start == pytest.approx(0.3)


async def test_billed_usage_lets_a_cancellation_through(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await trio.sleep(3600)
        raise AssertionError("not reached")

    with trio.move_on_after(0.1) as outer:
        await mocked(hang, connect_timeout=5).billed_usage("c1")
        raise AssertionError("billed_usage swallowed the cancellation")
    assert outer.cancelled_caught
    assert trio.current_time() == pytest.approx(0.1)


# --- against the fake -----------------------------------------------------------------------------


async def test_the_codec_knows_its_call_id() -> None:
    with trio.fail_after(BUDGET):
        async with running() as fake:
            session = await provider(fake).session([], first=True)
    [request] = fake.requests
    assert isinstance(session.codec, UltravoxCodec)
    assert session.codec.call_id == request.call_id is not None


@pytest.mark.parametrize("answer", [{}, {"callId": 7}, {"callId": ""}])
async def test_call_id_is_none_when_ultravox_does_not_say(answer: dict[str, Any]) -> None:
    def created(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, json=answer | {"joinUrl": "wss://uv.example/calls/c1"})

    session = await mocked(created).session([], first=True)
    assert isinstance(session.codec, UltravoxCodec) and session.codec.call_id is None


async def test_billed_usage_from_the_fake_once_the_session_is_over() -> None:
    with trio.fail_after(BUDGET):
        async with running() as fake:
            uv = provider(fake)
            session = await uv.session([], first=True)
            codec = session.codec
            assert isinstance(codec, UltravoxCodec) and codec.call_id is not None
            assert await uv.billed_usage(codec.call_id) is None  # not joined
            async with joined(session.endpoint) as ws:
                agent = await fake.wait_for_session()
                assert await uv.billed_usage(codec.call_id) is None  # still going
                await trio.sleep(0.25)
                for frame in codec.closing():
                    await ws.send_message(frame)
                await agent.wait_closed()
            usage = await uv.billed_usage(codec.call_id)
            unknown = await uv.billed_usage("00000000-0000-0000-0000-000000000000")
            wrong_key = await provider(fake, key="uv-wrong").billed_usage(codec.call_id)
    assert agent.joined_seconds is not None and agent.joined_seconds >= 0.25
    assert usage == Usage((("billed_seconds", round(agent.joined_seconds, 1)),))
    assert unknown is None and wrong_key is None


async def test_tools_greeting_tool_call_and_key_presses_through_the_fake() -> None:
    calls = [FakeToolCall("lookup_order", {"number": "42"}, say=speech_for("One moment."))]
    with trio.fail_after(BUDGET):
        async with running(tool_calls=calls, delay=60) as fake:
            uv = provider(fake, greeting="Welcome to Dr. Donut!", tools=[LOOKUP], tool_timeout=4)
            session = await uv.session([], first=True)
            codec = session.codec
            events: list[Any] = []
            async with joined(session.endpoint) as ws:

                async def read_until(done: Any) -> None:
                    while not done():
                        event = codec.decode(await ws.get_message())
                        if event is not None:
                            events.append(event)

                def of(kind: type) -> list[Any]:
                    return [e for e in events if isinstance(e, kind)]

                await read_until(lambda: of(ToolCall))
                [call] = of(ToolCall)
                output = orjson.dumps({"status": "shipped"}).decode()
                exchange = ToolExchange(call.call_id, call.name, call.arguments, output)
                for frame in codec.tool_result(exchange, known=True):
                    await ws.send_message(frame)
                await read_until(lambda: len(of(Transcript)) == 2)
                for frame in codec.dtmf("42#"):
                    await ws.send_message(frame)
                # greeting, say, answer, key presses: 100 ms each, 800 mu-law bytes
                await read_until(lambda: sum(len(e.audio) for e in of(AgentAudio)) == 4 * 800)
    [request] = fake.requests
    assert request.selected_tools == [
        {"temporaryTool": LOOKUP_DEFINITION["temporaryTool"] | {"timeout": "5s"}}
    ]
    assert request.first_speaker == {"agent": {"text": "Welcome to Dr. Donut!"}}
    assert call == ToolCall("inv-1-1", "lookup_order", '{"number":"42"}')
    assert [e for e in events if isinstance(e, Transcript)] == [
        Transcript("agent", "Welcome to Dr. Donut!"),
        Transcript("agent", 'lookup_order answered: {"status":"shipped"}'),
    ]
    heard = b"".join(e.audio for e in events if isinstance(e, AgentAudio))
    assert heard == pcm16_to_ulaw(
        speech_for("Welcome to Dr. Donut!")
        + speech_for("One moment.")
        + speech_for('{"status":"shipped"}')
        + speech_for("The caller pressed 4 2 # on the keypad.")
    )
    assert fake.tool_results == [
        {
            "type": "client_tool_result",
            "invocationId": "inv-1-1",
            "result": '{"status":"shipped"}',
            "responseType": "tool-response",
        }
    ]
    assert fake.user_texts == [
        {
            "type": "user_text_message",
            "text": "The caller pressed 4 2 # on the keypad.",
            "urgency": "immediate",
        }
    ]
    assert fake.errors == []
