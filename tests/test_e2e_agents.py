"""Agents that act, end to end: a real voxbridge server (hypercorn, signatures on), the fake Twilio
placing and answering calls over real HTTP and WebSockets, and the provider fakes speaking the
documented protocols -- tools, end_call, transfer_call, key presses, agent choice, answering
machines, usage metering.

Caller audio is mu-law silence, so the provider fakes' echo of it is silence too and what the
caller heard of the agent's "speech" (each fake's deterministic audio for a text) can be found in
:attr:`CallResult.played` with the silence taken out.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from test_e2e_server import scrape

from voxbridge.audio import pcm16_to_ulaw
from voxbridge.carriers.twilio_rest import TwilioRest
from voxbridge.journal.reader import find_calls, read_lines, recent_calls
from voxbridge.server import RunningServer, serve
from voxbridge.server.security import webhook_url
from voxbridge.settings import Settings
from voxbridge.testing import simulate_call
from voxbridge.testing.fake_openai import FakeOpenAIRealtime, speech, text_answer, tool_answer
from voxbridge.testing.fake_openai import FakeToolCall as OpenAIToolCall
from voxbridge.testing.fake_twilio import FakeCall, FakeTwilio, route_to
from voxbridge.testing.fake_ultravox import FakeToolCall, FakeUltravox, speech_for

BUDGET = 30.0
ACCOUNT = "AC" + "7" * 32
TOKEN = secrets.token_hex(16)
PUBLIC = "https://voice.example.test"
TO, FROM = "+15550101000", "+15550102000"
SILENCE = b"\xff" * 8000  # 1 s of mu-law silence, looped by the caller
TARGET = "+15550104000"
API_KEY, API_SECRET = "SK" + "3" * 32, secrets.token_hex(16)

TOOLS = """
from voxbridge import Tool


async def lookup_order(arguments, context):
    return {"order": arguments["order"], "status": "shipped", "call": context.call_sid}


async def broken(arguments, context):
    raise RuntimeError("database password is hunter2")


TOOLS = [
    Tool(
        "lookup_order",
        "Look up an order by its number.",
        {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]},
        lookup_order,
    ),
    Tool("broken", "A tool that fails.", handler=broken),
]
"""


@pytest.fixture(scope="module")
def shop_tools(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tools module on disk, as an operator writes one (``--tools-module shop_tools.py``);
    one file for the module: a process imports a tools module once."""
    path = tmp_path_factory.mktemp("tools") / "e2e_agent_tools.py"
    path.write_text(TOOLS, encoding="utf-8")
    return str(path)


def heard(call: FakeCall) -> bytes:
    """What the caller heard of the agent, silence taken out."""
    assert call.result is not None
    return bytes(call.result.played).replace(b"\xff", b"")


def said(text: str) -> bytes:
    """The fake Ultravox agent's speech for ``text``, as the caller hears it (silence out)."""
    return pcm16_to_ulaw(speech_for(text)).replace(b"\xff", b"")


@attrs.define
class Deployment:
    server: RunningServer
    twilio: FakeTwilio
    settings: Settings

    async def scrape(self) -> dict[Any, float]:
        """``/metrics`` once every call has been accounted for (a caller's socket closes before
        the server's teardown -- the provider's close, its usage -- has finished)."""
        with trio.fail_after(10):
            await self.server.app.registry.wait_empty()
        return await scrape(self.server)

    async def inbound(self, **options: Any) -> FakeCall:
        return await self.twilio.inbound_call(webhook_url(PUBLIC), to=TO, from_=FROM, **options)


@asynccontextmanager
async def deployed(
    provider_fake: Any, *, twilio: Any = None, signed: bool = True, **settings: Any
) -> AsyncIterator[Deployment]:
    """voxbridge (signatures on, Twilio REST at the fake) in front of ``provider_fake``, and a
    fake Twilio that signs with the server's auth token and reaches it through the public URL.

    ``signed=False``: no auth token (a simulated caller may connect straight to the media URL);
    Twilio REST then authenticates with an API key."""
    holder: list[str] = []
    fake_twilio = FakeTwilio(
        ACCOUNT,
        auth_token=TOKEN,
        caller_audio=SILENCE,
        route=lambda url: route_to(PUBLIC, holder[0])(url),
        **(twilio or {}),
    )
    stop = trio.Event()
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            provider_url = await nursery.start(provider_fake.serve)
            api_url = await nursery.start(fake_twilio.serve)
            values: dict[str, Any] = {
                "port": 0,
                "public_url": PUBLIC,
                "twilio_account_sid": ACCOUNT,
                "twilio_api_url": api_url,
                "provider_url": provider_url,
                **settings,
            }
            if signed:
                values["twilio_auth_token"] = TOKEN
            else:
                values.update(twilio_api_key=API_KEY, twilio_api_secret=API_SECRET)
                fake_twilio.credentials.append((API_KEY, API_SECRET))
            config = Settings(**values)
            server = await nursery.start(
                lambda task_status: serve(
                    config, shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            holder.append(server.url)
            try:
                yield Deployment(server, fake_twilio, config)
            finally:
                stop.set()
                nursery.cancel_scope.deadline = trio.current_time() + 10
            nursery.cancel_scope.cancel()


def rest_updates(twilio: FakeTwilio, sid: str) -> list[dict[str, str]]:
    """The REST updates voxbridge made to call ``sid``."""
    path = f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{sid}.json"
    return [r.form for r in twilio.requests if r.method == "POST" and r.path == path]


def metric(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


ULTRAVOX = {"provider": "ultravox", "provider_settings": {"ultravox": {"api_key": "uv-test-key"}}}


# --- tools ----------------------------------------------------------------------------------------


async def test_an_agent_calls_a_python_tool_and_speaks_its_result(shop_tools: str) -> None:
    fake = FakeUltravox(tool_calls=[FakeToolCall("lookup_order", {"order": "42"}, at=0.2)])
    async with deployed(fake, tools_module=shop_tools, **ULTRAVOX) as deployment:
        call = await deployment.inbound(seconds=2.0)
        samples = await deployment.scrape()
    [request] = fake.calls.values()
    assert request.tool_names == ["lookup_order", "broken", "end_call"]  # no --transfer-to
    [result] = fake.tool_results
    output = f'{{"order":"42","status":"shipped","call":"{call.sid}"}}'
    assert result["result"] == output
    assert said(output) in heard(call)  # the agent spoke the result, and the caller heard it
    assert metric(samples, "voxbridge_tool_calls_total", tool="lookup_order", outcome="ok") == 1
    assert metric(samples, "voxbridge_tool_calls_total", tool="broken", outcome="error") == 0
    [journaled] = find_calls("voxbridge.db", call.sid)
    assert journaled.tool_calls == 1
    lines = read_lines("voxbridge.db", journaled.call_id)
    tool_lines = [line for line in lines if line.role == "tool"]
    assert [line.text for line in tool_lines] == [f'lookup_order({{"order":"42"}}) -> {output}']


async def test_a_failing_tool_gives_the_model_an_error_and_the_call_goes_on(
    shop_tools: str,
) -> None:
    fake = FakeUltravox(tool_calls=[FakeToolCall("broken", {}, at=0.2)])
    async with deployed(fake, tools_module=shop_tools, **ULTRAVOX) as deployment:
        call = await deployment.inbound(seconds=1.5)
        samples = await deployment.scrape()
    [result] = fake.tool_results
    assert result["errorType"] == "implementation-error"
    assert "hunter2" not in str(result)  # the exception's text stays on the server
    assert call.result is not None and call.result.close_reason == "caller_stop"
    assert metric(samples, "voxbridge_tool_calls_total", tool="broken", outcome="error") == 1


# --- end_call and transfer_call -------------------------------------------------------------------


async def test_end_call_hangs_up_through_rest_once_the_goodbye_was_heard() -> None:
    goodbye = speech_for("Thanks for calling, goodbye!", ms=800)
    fake = FakeUltravox(tool_calls=[FakeToolCall("end_call", {}, say=goodbye, at=0.3)])
    async with deployed(fake, **ULTRAVOX) as deployment:
        call = await deployment.inbound(seconds=20.0)
        samples = await deployment.scrape()
    assert call.result is not None
    assert pcm16_to_ulaw(goodbye).replace(b"\xff", b"") in heard(call)  # every byte played
    assert rest_updates(deployment.twilio, call.sid) == [{"Status": "completed"}]
    assert call.statuses[-1] == "completed"
    assert call.result.frames_sent < 5 / 0.02  # ended by the agent, long before the caller
    assert call.result.close_reason == "agent_hangup"
    assert metric(samples, "voxbridge_call_disconnects_total", reason="agent_hangup") == 1
    assert metric(samples, "voxbridge_tool_calls_total", tool="end_call", outcome="ok") == 1
    [journaled] = find_calls("voxbridge.db", call.sid)
    assert (journaled.reason, journaled.tool_calls) == ("agent_hangup", 1)


async def test_transfer_call_redirects_to_dial_and_ends_transferred() -> None:
    words = speech_for("Putting you through to a colleague.", ms=500)
    fake = FakeUltravox(
        tool_calls=[FakeToolCall("transfer_call", {"reason": "billing"}, say=words, at=0.3)]
    )
    async with deployed(fake, transfer_to=TARGET, **ULTRAVOX) as deployment:
        call = await deployment.inbound(seconds=20.0)
        samples = await deployment.scrape()
    [request] = fake.calls.values()
    assert "transfer_call" in request.tool_names
    assert pcm16_to_ulaw(words).replace(b"\xff", b"") in heard(call)
    [update] = rest_updates(deployment.twilio, call.sid)
    assert f"<Dial><Number>{TARGET}</Number></Dial>" in update["Twiml"]
    assert deployment.twilio.dialled == {call.sid: TARGET}
    assert metric(samples, "voxbridge_call_disconnects_total", reason="transferred") == 1
    [journaled] = find_calls("voxbridge.db", call.sid)
    assert journaled.reason == "transferred"
    assert journaled.detail == f"transferred to {TARGET}"


async def test_a_refused_transfer_is_an_error_for_the_model_and_the_call_goes_on() -> None:
    fake = FakeUltravox(tool_calls=[FakeToolCall("transfer_call", {}, at=0.3)])
    # Twilio does not know voxbridge's credentials: the redirect is refused (HTTP 401).
    twilio = {"credentials": [("AC" + "0" * 32, "other")]}
    async with deployed(fake, twilio=twilio, transfer_to=TARGET, **ULTRAVOX) as deployment:
        call = await deployment.inbound(seconds=1.5)
        samples = await deployment.scrape()
    [result] = fake.tool_results
    assert result["errorType"] == "implementation-error"
    assert TOKEN not in str(result)
    assert deployment.twilio.dialled == {}
    assert call.result is not None and call.result.close_reason == "caller_stop"
    assert metric(samples, "voxbridge_tool_calls_total", tool="transfer_call", outcome="error") == 1


async def test_without_rest_credentials_end_call_and_transfer_are_not_offered() -> None:
    fake = FakeUltravox()
    async with deployed(
        fake, twilio_account_sid=None, transfer_to=TARGET, **ULTRAVOX
    ) as deployment:
        await deployment.inbound(seconds=0.5)
    [request] = fake.calls.values()
    assert request.tool_names == []


# --- key presses ----------------------------------------------------------------------------------


async def test_key_presses_reach_the_model_coalesced_and_are_journaled() -> None:
    fake = FakeUltravox()
    keys = [(0.2, "4"), (0.5, "2"), (0.7, "#"), (1.0, "9")]  # "42#" ends at "#"; "9" alone
    async with deployed(fake, signed=False, **ULTRAVOX) as deployment:
        result = await simulate_call(
            deployment.server.media_url, audio=SILENCE, seconds=3.0, dtmf=keys
        )
        samples = await deployment.scrape()
    assert result.dtmf_sent == 4
    texts = [message["text"] for message in fake.user_texts]
    assert texts == [
        "The caller pressed 4 2 # on the keypad.",
        "The caller pressed 9 on the keypad.",
    ]
    assert all(message["urgency"] == "immediate" for message in fake.user_texts)
    assert metric(samples, "voxbridge_dtmf_digits_total") == 4
    [journaled] = find_calls("voxbridge.db", result.call_sid)
    assert journaled.dtmf_digits == 4
    lines = read_lines("voxbridge.db", journaled.call_id)
    assert [(line.role, line.text) for line in lines if line.role == "dtmf"] == [
        ("dtmf", "42#"),
        ("dtmf", "9"),
    ]


# --- choosing the agent ---------------------------------------------------------------------------

AGENTS = f"""
[agents.sales]
instructions = "You sell."
numbers = ["{TO}"]

[agents.support]
instructions = "You support."
dtmf = "ignore"

[agents.voicemail]
instructions = "You leave messages."
greeting = "Hi, this is Acme calling about your order."
on_machine = "leave_message"

[agents.hangup]
on_machine = "hangup"
"""


def agents_file(text: str = AGENTS) -> str:
    path = Path("agents.toml")  # (each test runs in its own temporary directory)
    path.write_text(text, encoding="utf-8")
    return str(path)


async def test_the_called_number_chooses_the_agent_and_the_signed_token_carries_it() -> None:
    fake = FakeUltravox()
    async with deployed(fake, agents=agents_file(), **ULTRAVOX) as deployment:
        sales = await deployment.inbound(seconds=0.5)  # to TO: sales
        other = await deployment.twilio.inbound_call(
            webhook_url(PUBLIC), to="+15550109999", from_=FROM, seconds=0.5
        )
    prompts = [request.body["systemPrompt"] for request in fake.calls.values()]
    assert prompts == ["You sell.", deployment.settings.instructions]
    # the choice travelled inside the signed token, not as a parameter anyone could set
    assert set(sales.stream_parameters) == set(other.stream_parameters) == {"voxbridge_token"}
    agents = {j.call_sid: j.agent for j in recent_calls("voxbridge.db")}
    assert agents == {sales.sid: "sales", other.sid: "default"}


async def test_an_agent_parameter_chooses_the_agent_without_signatures() -> None:
    fake = FakeUltravox()
    async with deployed(fake, signed=False, agents=agents_file(), **ULTRAVOX) as deployment:
        url = deployment.server.media_url
        support = await simulate_call(url, seconds=0.5, custom_parameters={"agent": "support"})
        unknown = await simulate_call(url, seconds=0.5, custom_parameters={"agent": "nobody"})
        keys = await simulate_call(
            url, seconds=1.5, custom_parameters={"agent": "support"}, dtmf=[(0.2, "5")]
        )
    prompts = [request.body["systemPrompt"] for request in fake.calls.values()]
    assert prompts == ["You support.", "You support."]  # none for the unknown agent
    assert (unknown.close_code, unknown.close_reason) == (1008, "protocol_error")
    assert support.close_reason == keys.close_reason == "caller_stop"
    assert fake.user_texts == []  # the support agent ignores key presses: journaled only
    [journaled] = find_calls("voxbridge.db", keys.call_sid)
    assert (journaled.agent, journaled.dtmf_digits) == ("support", 1)


def test_a_bad_agents_file_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from voxbridge.cli import main

    Path("agents.toml").write_text('[agents.sales]\ndtmf = "beep"\n', encoding="utf-8")
    assert main(["serve", "--agents", "agents.toml"]) == 2
    out = capsys.readouterr().out
    assert out.strip().splitlines() == [
        "voxbridge: agents.toml: [agents.sales] dtmf: must be one of forward, ignore; got 'beep'"
    ]


# --- answering machines ---------------------------------------------------------------------------


async def answered_by_machine(
    agent: str, seconds: float = 10.0
) -> tuple[FakeCall, FakeUltravox, dict[Any, float]]:
    """An outbound call (created over REST, as ``voxbridge dial --agent`` does) that a machine
    answers, the machine's side streaming ``seconds`` of audio."""
    fake = FakeUltravox()
    twilio = {"answered_by": "machine_end_beep", "caller_seconds": seconds}
    async with deployed(fake, twilio=twilio, agents=agents_file(), **ULTRAVOX) as deployment:
        api_url = deployment.settings.twilio_api_url
        assert api_url is not None
        rest = TwilioRest(ACCOUNT, (ACCOUNT, TOKEN), base_url=api_url)
        sid = await rest.create_call(
            TO, FROM, webhook_url(PUBLIC, f"agent={agent}".encode()), machine_detection="Enable"
        )
        call = await deployment.twilio.calls[sid].wait_ended()
        samples = await deployment.scrape()
    assert call.webhooks[0].form["AnsweredBy"] == "machine_end_beep"
    return call, fake, samples


async def test_a_machine_answering_an_agent_that_hangs_up_gets_no_stream() -> None:
    call, fake, _ = await answered_by_machine("hangup")
    assert call.verbs == ["Hangup"]
    assert call.result is None and fake.calls == {}  # no stream, no provider session


async def test_an_agent_leaves_its_greeting_on_the_machine_then_hangs_up() -> None:
    call, fake, samples = await answered_by_machine("voicemail")
    greeting = "Hi, this is Acme calling about your order."
    [request] = fake.calls.values()
    assert request.greeting == greeting
    assert said(greeting) in heard(call)
    assert call.result is not None and call.result.close_reason == "agent_hangup"
    assert call.result.frames_sent < 5 / 0.02  # not the caller's 10 s
    assert metric(samples, "voxbridge_call_disconnects_total", reason="agent_hangup") == 1


async def test_a_machine_answering_an_agent_that_continues_is_a_normal_call() -> None:
    call, fake, _ = await answered_by_machine("sales", 1.0)  # on_machine = "continue" (default)
    assert len(fake.calls) == 1
    assert call.result is not None and call.result.close_reason == "caller_stop"


# --- usage ----------------------------------------------------------------------------------------


async def test_ultravox_billed_seconds_are_metered_and_journaled() -> None:
    fake = FakeUltravox()
    async with deployed(fake, **ULTRAVOX) as deployment:
        call = await deployment.inbound(seconds=1.0)
        samples = await deployment.scrape()
    [session] = fake.sessions
    billed = round(session.joined_seconds, 1)
    assert billed > 0.5
    kind = {"provider": "ultravox", "kind": "billed_seconds"}
    assert metric(samples, "voxbridge_provider_usage_total", **kind) == billed
    [journaled] = find_calls("voxbridge.db", call.sid)
    assert journaled.usage == {"billed_seconds": billed}


# --- the same over OpenAI Realtime ------------------------------------------------------------------

OPENAI = {"provider": "openai"}


async def test_openai_agent_calls_a_tool_speaks_the_result_and_usage_is_metered(
    shop_tools: str,
) -> None:
    fake = FakeOpenAIRealtime(
        caller_transcripts=[(0.3, "Where is my order 42?")],
        tool_calls=[OpenAIToolCall("lookup_order", {"order": "42"}, say=speech("Let me check."))],
    )
    async with deployed(fake, tools_module=shop_tools, **OPENAI) as deployment:
        call = await deployment.inbound(seconds=3.0)
        samples = await deployment.scrape()
    output = f'{{"order":"42","status":"shipped","call":"{call.sid}"}}'
    [(_, given)] = fake.tool_outputs
    assert given == output
    assert speech("Let me check.") + speech(tool_answer(output)) in heard(call)
    assert metric(samples, "voxbridge_tool_calls_total", tool="lookup_order", outcome="ok") == 1
    # usage: what the provider reported in every response.done, metered and journaled
    totals = fake.usage_totals()
    assert totals["output_audio_tokens"] > 0 and totals["input_audio_tokens"] > 0
    for kind, amount in totals.items():
        assert (
            metric(samples, "voxbridge_provider_usage_total", provider="openai", kind=kind)
            == amount
        )
    [journaled] = find_calls("voxbridge.db", call.sid)
    assert journaled.usage == totals


async def test_openai_end_call_after_the_goodbye_and_key_presses_reach_the_model() -> None:
    fake = FakeOpenAIRealtime(
        caller_transcripts=[(1.5, "That is all, thanks.")],
        tool_calls=[OpenAIToolCall("end_call", {}, say=speech("Goodbye!"))],
    )
    async with deployed(fake, signed=False, **OPENAI) as deployment:
        result = await simulate_call(
            deployment.server.media_url, audio=SILENCE, seconds=20.0, dtmf=[(0.2, "7")]
        )
        samples = await deployment.scrape()
    assert fake.user_texts == ["The caller pressed 7 on the keypad."]
    played = bytes(result.played)
    assert speech(text_answer("The caller pressed 7 on the keypad.")) in played
    assert speech("Goodbye!") in played
    assert result.close_reason == "agent_hangup"
    assert metric(samples, "voxbridge_call_disconnects_total", reason="agent_hangup") == 1
    updates = rest_updates(deployment.twilio, result.call_sid)
    assert updates == [{"Status": "completed"}]  # (the fake Twilio did not place this call: 404)


async def test_openai_agent_greets_first_from_the_agents_file() -> None:
    fake = FakeOpenAIRealtime()
    agents = agents_file('[agents.default]\ngreeting = "Acme, good morning!"\n')
    async with deployed(fake, agents=agents, **OPENAI) as deployment:
        call = await deployment.inbound(seconds=1.5)
    assert fake.greetings == ["Acme, good morning!"]
    assert speech("Acme, good morning!") in heard(call)
