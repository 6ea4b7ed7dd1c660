"""Plivo end to end: the real server (hypercorn, trio worker, port 0 on loopback), the provider
fakes, the Plivo caller simulator (:class:`~voxbridge.testing.plivo_wire.PlivoWire`) and the fake
Plivo (REST hang-ups, the signed answer webhook), all over real sockets.

For Plivo x {echo, the OpenAI fake, the Ultravox fake}: a call round-trips audio (byte for byte
in mu-law; within stated bounds through L16 16 kHz, where both sides resample), a barge-in reaches
the caller as ``clearAudio`` and the call waits for none of the checkpoints it cleared (Plivo
never echoes them), a stalled caller ends ``idle_timeout`` with the provider's socket closed. With
the checks on (``PLIVO_AUTH_TOKEN``): the signed answer webhook hands the stream a per-call token
in ``extraHeaders``; a forged upgrade signature gets HTTP 403 before accept, a forged or missing
token ends the call before any provider session; ``end_call`` hangs up through Plivo's REST API.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
import trio
from carrierkit import Rig, cli_call, demo_tour, metric, rms, serving, stalled_call
from test_e2e_providers import PROVIDERS as ROWS
from test_e2e_providers import TURN_MS, disconnects

from voxbridge.audio import tone, ulaw_to_pcm16
from voxbridge.carriers.base import AudioFormat
from voxbridge.server.security import CallTokens
from voxbridge.session.playback import Playback
from voxbridge.testing import CallResult, simulate_call
from voxbridge.testing.fake_openai import FakeToolCall as OpenAIToolCall
from voxbridge.testing.fake_openai import speech
from voxbridge.testing.fake_plivo import Answer, FakePlivo
from voxbridge.testing.fake_ultravox import FakeToolCall as UltravoxToolCall
from voxbridge.testing.fake_ultravox import speech_for
from voxbridge.testing.plivo_wire import PlivoWire

PROVIDERS = ["echo", "openai", "ultravox"]
PUBLIC = "https://voice.example.test"
ANSWER_URL = PUBLIC + "/plivo/answer"
STREAM_URL = "wss://voice.example.test/plivo/media"
AUTH_ID = "MA" + "E" * 18
AUTH_TOKEN = secrets.token_hex(16)
SENT = tone(1.0) * 3  # what the simulated caller streams (its one-second tone, looped)
L16_16K = "audio/x-l16;rate=16000"


class PlivoRig(Rig):
    """The rig, and Plivo's side of an inbound call: its signed answer webhook, then the stream."""

    @property
    def plivo(self) -> FakePlivo:
        plivo: FakePlivo = self.api
        return plivo

    async def answer(self, **options: Any) -> tuple[str, Answer]:
        """Plivo's signed answer webhook, sent to the server for its public URL."""
        return await self.plivo.answer(
            self.server.url + "/plivo/answer", signed_url=ANSWER_URL, **options
        )

    async def answered_call(self, *, sign_upgrade: bool = True, **options: Any) -> CallResult:
        """The whole inbound call: the answer webhook, then the stream it names (its token in
        the URL's query string and in ``extraHeaders``, its ``contentType``), the upgrade signed
        as Plivo may sign it (over the URL as written, query included)."""
        call_uuid, answer = await self.answer()
        assert answer.status == 200, answer.body
        query = stream_query(answer)
        wire = PlivoWire(
            answer.stream["contentType"],
            sign_upgrade=(AUTH_TOKEN, STREAM_URL + query) if sign_upgrade else None,
        )
        return await simulate_call(
            self.media_url + query,
            wire=wire,
            call_sid=call_uuid,
            custom_parameters=answer.parameters,
            **options,
        )


def stream_query(answer: Answer) -> str:
    """The query string of the answer's stream URL (``?voxbridge_token=<the per-call token>``),
    checked to be the only difference from the media route and to carry the ``extraHeaders``
    token."""
    assert answer.stream_url is not None
    assert answer.stream_url.startswith(STREAM_URL + "?voxbridge_token=")
    query = answer.stream_url[len(STREAM_URL) :]
    assert query == "?voxbridge_token=" + answer.parameters["voxbridge_token"]
    return query


@asynccontextmanager
async def rig(
    provider: str, *knobs: dict[str, Any], signed: bool = False, **settings: Any
) -> AsyncIterator[PlivoRig]:
    """voxbridge serving Plivo in front of ``provider``'s fake (made with ``knobs``), and a
    fake Plivo REST API; ``signed``: Plivo's checks on (auth token, public URL)."""
    own: dict[str, Any] = {"auth_id": AUTH_ID}
    if signed:
        own["auth_token"] = AUTH_TOKEN
        settings["public_url"] = PUBLIC
    api = FakePlivo(AUTH_ID, AUTH_TOKEN)
    async with serving("plivo", provider, *knobs, api=api, own=own, kind=PlivoRig, **settings) as r:
        yield r


# --- a normal call ---------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_audio_round_trips_byte_for_byte(provider: str) -> None:
    """mu-law both ways: what the provider echoes is what the caller sent, byte for byte; the
    caller hangs up by closing the socket (Plivo has no stop): ``caller_stop``."""
    async with rig(provider, ROWS[provider].echo) as deployed:
        result = await simulate_call(deployed.media_url, carrier="plivo", seconds=1.0)
        samples = await deployed.settled()
    assert result.protocol_errors == []  # every frame the bridge sent was one Plivo accepts
    assert result.frames_sent == 50
    up = metric(samples, "voxbridge_media_frames_total", direction="to_upstream")
    dropped = metric(samples, "voxbridge_media_frames_dropped_total", direction="to_upstream")
    assert up + dropped == 50
    back = bytes(result.audio_received)
    assert len(back) > 4000
    assert back == SENT[: len(back)]
    assert disconnects(samples) == {"caller_stop": 1}
    assert metric(samples, "voxbridge_calls_started_total", carrier="plivo", provider=provider) == 1


async def test_l16_16k_round_trips_within_bounds() -> None:
    """``--plivo-content-type audio/x-l16;rate=16000``: the caller streams 16 kHz L16, voxbridge
    resamples to mu-law 8 kHz for the provider and back for ``playAudio``. Resampling is not
    byte-exact, so what is asserted: every ``playAudio`` is L16 at 16 kHz, and the echo is still
    the caller's 440 Hz tone (the spectrum's peak within 5 Hz) at its level within 1.5 dB (two
    round trips through soxr's HQ filters and G.711 twice)."""
    settings = {"carrier_settings": {"plivo": {"content_type": L16_16K}}}
    wire = PlivoWire(L16_16K)
    async with rig("echo", ROWS["echo"].echo, **settings) as deployed:
        result = await simulate_call(deployed.media_url, wire=wire, seconds=1.0, audio=SENT)
        samples = await deployed.settled()
    assert result.protocol_errors == []
    assert wire.formats == {AudioFormat("l16", 16000): result.frames_received}
    back = bytes(result.audio_received)[800:]  # after the first 100 ms (the resamplers fill)
    assert len(back) > 3200
    assert abs(20 * math.log10(rms(back) / rms(SENT))) < 1.5
    pcm = np.frombuffer(ulaw_to_pcm16(back), dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    peak = float(np.fft.rfftfreq(len(pcm), 1 / 8000)[int(np.argmax(spectrum))])
    assert abs(peak - 440) < 5
    assert disconnects(samples) == {"caller_stop": 1}


# --- barge-in ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_barge_in_clears_and_waits_for_no_cleared_checkpoint(
    provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent speaks 2 s from 0.2 s; at 0.7 s the provider says the caller started speaking.
    The caller gets ``clearAudio``; Plivo never echoes the checkpoints that clear discarded, and
    the call does not wait for them: as the clear goes out, its playback counts every one of
    them as heard, and still does when the call has ended (white box: the call's ``Playback``,
    the last checkpoint number at the clear, read by a spy on ``Playback.interrupt``)."""
    row = ROWS[provider]
    assert callable(row.interrupt)
    # the playback, the last checkpoint sent when the clear went out, whether it was heard just
    # before the clear and just after
    cleared: list[tuple[Playback, int, bool, bool]] = []
    interrupt = Playback.interrupt

    def spy(self: Playback, session: object, now: float | None = None) -> Any:
        before = self.heard_through(self.last_mark)
        truncations = interrupt(self, session, now)
        if truncations is not None:
            cleared.append((self, self.last_mark, before, self.heard_through(self.last_mark)))
        return truncations

    monkeypatch.setattr(Playback, "interrupt", spy)
    async with rig(provider, row.speak(0.2, TURN_MS), row.interrupt(0.7)) as deployed:
        result = await simulate_call(deployed.media_url, carrier="plivo", seconds=1.2)
        samples = await deployed.settled()
    [(playback, mark, heard_before, heard_after)] = cleared
    assert mark > 0 and not heard_before  # checkpoints were pending: the clear settled them
    assert heard_after and playback.heard_through(mark)
    assert result.protocol_errors == []
    assert result.clears_received == 1
    # the checkpoints whose audio played were echoed, those the clear discarded never were
    assert result.marks_echoed > 0 and result.marks_discarded > 0
    assert result.marks_echoed + result.marks_discarded <= result.marks_received
    assert metric(samples, "voxbridge_barge_ins_total") == 1
    [heard] = result.heard_ms_at_clear
    assert 0 < heard < TURN_MS  # the caller had heard some of the turn, not all
    assert disconnects(samples) == {"caller_stop": 1}


# --- a stalled caller ---------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_stalled_caller_ends_idle_timeout_and_the_provider_socket_closes(
    provider: str,
) -> None:
    async with rig(provider, ROWS[provider].echo) as deployed:
        result, samples = await stalled_call(deployed)
    assert result.close_reason == "idle_timeout"
    assert deployed.fake.sessions and all(s.is_closed for s in deployed.fake.sessions)
    assert result.last_sent_at is not None and result.closed_at is not None
    assert 1.0 <= result.closed_at - result.last_sent_at <= 2.5
    assert disconnects(samples) == {"idle_timeout": 1}


# --- checks before accept -----------------------------------------------------------------------------


async def test_signed_answer_then_signed_stream_is_a_call() -> None:
    async with rig("openai", ROWS["openai"].echo, signed=True) as deployed:
        result = await deployed.answered_call(seconds=0.6)
        samples = await deployed.settled()
    assert result.rejected_status is None and result.frames_received > 0
    assert len(deployed.fake.sessions) == 1
    assert disconnects(samples) == {"caller_stop": 1}
    assert metric(samples, "voxbridge_connections_rejected_total", reason="bad_signature") == 0


async def test_the_token_alone_admits_an_unsigned_upgrade() -> None:
    async with rig("openai", ROWS["openai"].echo, signed=True) as deployed:
        result = await deployed.answered_call(sign_upgrade=False, seconds=0.6)
        samples = await deployed.settled()
    assert result.rejected_status is None and result.frames_received > 0
    assert disconnects(samples) == {"caller_stop": 1}


async def test_a_forged_answer_webhook_is_refused() -> None:
    async with rig("openai", signed=True) as deployed:
        _, answer = await deployed.answer(auth_token="not-the-token")
        samples = await deployed.settled()
    assert answer.status == 403 and answer.stream_url is None
    assert metric(samples, "voxbridge_connections_rejected_total", reason="bad_signature") == 1


async def test_a_forged_upgrade_signature_gets_403_before_accept() -> None:
    async with rig("openai", signed=True) as deployed:
        call_uuid, answer = await deployed.answer()
        query = stream_query(answer)
        wire = PlivoWire(sign_upgrade=("not-the-token", STREAM_URL + query))
        result = await simulate_call(
            deployed.media_url + query,  # even with the right token in the URL
            wire=wire,
            call_sid=call_uuid,
            custom_parameters=answer.parameters,  # even with the right token
            seconds=0.5,
        )
        samples = await deployed.settled()
    assert result.rejected_status == 403
    assert result.frames_sent == 0
    assert deployed.fake.sessions == []  # no provider session, no call
    assert not list(deployed.server.app.registry.recent)  # no call was started
    assert metric(samples, "voxbridge_connections_rejected_total", reason="bad_signature") == 1
    assert disconnects(samples) == {}


@pytest.mark.parametrize(
    "parameters",
    [{}, {"voxbridge_token": "forged"}, "another call's"],
    ids=["no-token", "forged-token", "another-calls-token"],
)
async def test_a_stream_without_its_token_ends_before_any_provider_session(
    parameters: Any,
) -> None:
    """The upgrade carries a valid token (from an answer) in its URL, the start does not carry
    the call's token: refused at start."""
    async with rig("openai", signed=True) as deployed:
        call_uuid, answer = await deployed.answer()
        query = stream_query(answer)
        if parameters == "another call's":
            call_uuid, other = await deployed.answer()
            parameters = answer.parameters  # minted for the first call, presented for this one
            query = stream_query(other)
        result = await simulate_call(
            deployed.media_url + query,
            carrier="plivo",
            call_sid=call_uuid,
            custom_parameters=parameters,
            seconds=0.5,
        )
        samples = await deployed.settled()
    assert result.close_reason == "protocol_error"
    assert deployed.fake.sessions == []
    assert disconnects(samples) == {"protocol_error": 1}


@pytest.mark.parametrize(
    "query",
    ["", "?voxbridge_token=forged", "expired", "twilio's", "?voxbridge_token=a&voxbridge_token=b"],
    ids=["no-token", "forged", "expired", "another-carriers-key", "two-tokens"],
)
async def test_an_upgrade_without_a_valid_token_in_its_url_gets_403_before_accept(
    query: str,
) -> None:
    """The stream URL's token is the upgrade's credential (Plivo need not sign the upgrade): an
    upgrade without a valid one is refused before accept, taking no slot, even with the right
    token in ``extraHeaders`` (what a bare socket could not know anyway)."""
    async with rig("openai", signed=True, call_token_ttl=1.0) as deployed:
        call_uuid, answer = await deployed.answer()
        if query == "expired":
            query = stream_query(answer)
            await trio.sleep(2.1)  # past the 1 s token's expiry (whole seconds)
        elif query == "twilio's":  # the same secret, keyed for Twilio
            token = CallTokens([AUTH_TOKEN], 60).mint(call_uuid, now=time.time())
            query = "?voxbridge_token=" + token
        result = await simulate_call(
            deployed.media_url + query,
            carrier="plivo",
            call_sid=call_uuid,
            custom_parameters=answer.parameters,
            seconds=0.5,
        )
        samples = await deployed.settled()
    assert result.rejected_status == 403
    assert result.frames_sent == 0
    assert deployed.fake.sessions == []
    assert not list(deployed.server.app.registry.recent)
    assert metric(samples, "voxbridge_connections_rejected_total", reason="bad_signature") == 1
    assert disconnects(samples) == {}


# --- end_call -----------------------------------------------------------------------------------------


async def test_openai_end_call_hangs_up_through_plivos_rest_api() -> None:
    knobs = {
        "caller_transcripts": [(0.3, "That is all, thanks.")],
        "tool_calls": [OpenAIToolCall("end_call", {}, say=speech("Goodbye!"))],
    }
    async with rig("openai", knobs, signed=True) as deployed:
        result = await deployed.answered_call(seconds=20.0)
        samples = await deployed.settled()
        assert await deployed.plivo.wait_hangup() == result.call_sid
    assert speech("Goodbye!") in bytes(result.played)  # the goodbye was heard, then the hang-up
    assert result.close_reason == "agent_hangup"
    assert result.frames_sent < 5 / 0.02
    assert deployed.plivo.hangups == [result.call_sid]
    assert deployed.plivo.calls[result.call_sid] == "completed"
    assert metric(samples, "voxbridge_tool_calls_total", tool="end_call", outcome="ok") == 1
    assert disconnects(samples) == {"agent_hangup": 1}


async def test_ultravox_end_call_hangs_up_through_plivos_rest_api() -> None:
    goodbye = speech_for("Thanks for calling, goodbye!", ms=600)
    knobs = {"tool_calls": [UltravoxToolCall("end_call", {}, say=goodbye, at=0.3)]}
    async with rig("ultravox", ROWS["ultravox"].echo, knobs, signed=True) as deployed:
        result = await deployed.answered_call(seconds=20.0, audio=b"\xff" * 8000)
        samples = await deployed.settled()
    assert result.close_reason == "agent_hangup"
    assert deployed.plivo.hangups == [result.call_sid]
    assert metric(samples, "voxbridge_tool_calls_total", tool="end_call", outcome="ok") == 1


# --- voxbridge call --carrier plivo, voxbridge demo --carrier plivo ----------------------------------


async def test_voxbridge_call_speaks_plivo() -> None:
    """``voxbridge call --carrier plivo URL``: the simulated Plivo caller, in a child process;
    it hangs up by closing the socket, which is a successful call (exit status 0)."""
    async with rig("echo", ROWS["echo"].echo) as deployed:
        done = await cli_call("plivo", deployed.media_url)
        samples = await deployed.settled()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the caller hung up" in done.stdout
    assert metric(samples, "voxbridge_calls_started_total", carrier="plivo", provider="echo") == 1
    assert disconnects(samples) == {"caller_stop": 1}


@pytest.mark.hang_limit(60)
async def test_the_demo_tours_plivo() -> None:
    status, text = await demo_tour("plivo")
    assert status == 0, text  # every call reached /plivo/media and its upstream closed
    assert "plivo calls to /plivo/media" in text
    assert "caller_stop" in text and "idle_timeout" in text
