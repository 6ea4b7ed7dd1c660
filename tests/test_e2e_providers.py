"""``voxbridge serve --provider openai|ultravox`` against the provider fakes, on real loopback.

The server is the real one (hypercorn, trio worker); the providers are the shipped fakes, reached
through ``--provider-url`` exactly as the real endpoints would be; the caller is the Twilio
simulator, playing agent audio in real time and echoing marks as Twilio does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from test_e2e_server import disconnects, scrape

from voxbridge.audio import tone
from voxbridge.server import RunningServer, serve
from voxbridge.settings import Settings
from voxbridge.testing import simulate_call
from voxbridge.testing.fake_deepgram import FakeDeepgram
from voxbridge.testing.fake_gemini import FakeGemini
from voxbridge.testing.fake_gpt_live import FakeGptLive
from voxbridge.testing.fake_openai import FakeOpenAIRealtime
from voxbridge.testing.fake_ultravox import FakeUltravox, Utterance

BUDGET = 30.0
FRAME_MS = 20


@asynccontextmanager
async def serving(provider_fake: Any, **settings: Any) -> AsyncIterator[RunningServer]:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(provider_fake.serve)
        server = await nursery.start(
            lambda task_status: serve(
                Settings(port=0, provider_url=url, **settings),
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )
        )
        try:
            yield server
        finally:
            stop.set()
        nursery.cancel_scope.cancel()


async def test_openai_barge_in_over_real_sockets() -> None:
    fake = FakeOpenAIRealtime(
        speak=[(0.3, tone(3.0, 300), "a long answer")], speech_started_at=[1.5]
    )
    with trio.fail_after(BUDGET):
        async with serving(fake, provider="openai") as server:
            result = await simulate_call(server.media_url, seconds=2.5)
            samples = await scrape(server)
    session = fake.sessions[0]
    assert result.clears_received == 1
    assert len(session.truncates) == 1
    heard = result.heard_ms_at_clear[0]
    assert 900 < heard < 1300  # about 1.2 s of the answer played before the caller spoke
    # Within one frame, plus the few milliseconds a mark echo and the clear take on loopback.
    assert 0 <= heard - session.truncates[0]["audio_end_ms"] <= FRAME_MS + 10
    assert samples[("voxbridge_barge_ins_total", ())] == 1
    assert (result.close_code, result.close_reason) == (1000, "caller_stop")
    # the session was configured for mu-law passthrough with transcription on
    audio = session.session_updates[0]["session"]["audio"]
    assert audio["input"]["format"] == {"type": "audio/pcmu"}
    assert audio["input"]["transcription"]["model"] == "gpt-transcribe"


async def test_openai_drop_is_resumed_over_real_sockets() -> None:
    fake = FakeOpenAIRealtime(echo_delay=0.05, close_at=(0.5, 1011), only_session=1)
    with trio.fail_after(BUDGET):
        async with serving(fake, provider="openai") as server:
            result = await simulate_call(server.media_url, seconds=2.0)
            samples = await scrape(server)
    assert (result.close_code, result.close_reason) == (1000, "caller_stop")
    assert len(fake.sessions) == 2
    assert fake.sessions[1].audio_in > 0
    key = ("voxbridge_upstream_reconnects_total", (("outcome", "resumed"),))
    assert samples[key] == 1


async def test_ultravox_round_trip_transcripts_barge_in_and_hang_up() -> None:
    fake = FakeUltravox(
        api_key="uv-key",
        delay=0.05,
        script=[Utterance(0.4, "user", "hello"), Utterance(0.8, "agent", "hi there")],
        clear_at=1.2,
        hangup_at=2.0,
    )
    with trio.fail_after(BUDGET):
        async with serving(fake, provider="ultravox", ultravox_api_key="uv-key") as server:
            result = await simulate_call(server.media_url, seconds=10.0)
            samples = await scrape(server)
            record = server.app.registry.recent[0]
    request = fake.requests[0]
    assert request.api_key == "uv-key"
    assert request.medium["inputSampleRate"] == request.medium["outputSampleRate"] == 8000
    # audio came back through PCM16 and out as mu-law again: G.711 round trip, byte-exact
    sent = tone(1.0) * 10  # the simulator loops its one-second tone
    back = bytes(result.audio_received)
    assert len(back) > 8000
    assert back == sent[: len(back)]
    # playback_clear_buffer while the echo was playing: barge-in, so Twilio was told to clear
    assert result.clears_received == 1
    assert [(t.role, t.text) for t in record.transcript] == [
        ("caller", "hello"),
        ("agent", "hi there"),
    ]
    assert (result.close_code, result.close_reason) == (1000, "agent_hangup")
    assert disconnects(samples)["agent_hangup"] == 1
    assert fake.sessions[0].is_closed


@pytest.mark.parametrize(
    ("provider", "fake", "keys"),
    [
        (
            "gpt-live",
            lambda: FakeGptLive(api_key="sk-live", echo_delay=0.05),
            {"openai_api_key": "sk-live"},
        ),
        (
            "deepgram",
            lambda: FakeDeepgram(api_key="dg-key", echo_delay=0.05),
            {"deepgram_api_key": "dg-key"},
        ),
        ("gemini", lambda: FakeGemini(api_key="gm-key", echo=True), {"gemini_api_key": "gm-key"}),
    ],
)
async def test_the_newer_providers_round_trip_audio_over_real_sockets(
    provider: str, fake: Any, keys: dict[str, str]
) -> None:
    """``voxbridge serve --provider gpt-live|deepgram|gemini`` against each fake, the key checked
    by the fake: the caller's audio comes back through the bridge (resampled twice for Gemini)."""
    agent = fake()
    with trio.fail_after(BUDGET):
        async with serving(agent, provider=provider, **keys) as server:
            result = await simulate_call(server.media_url, seconds=1.5)
            samples = await scrape(server)
    assert (result.close_code, result.close_reason) == (1000, "caller_stop")
    assert result.frames_received > 10  # the echo came back
    started = samples[
        ("voxbridge_calls_started_total", (("carrier", "twilio"), ("provider", provider)))
    ]
    assert started == 1
