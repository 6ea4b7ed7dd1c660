"""Vonage end to end: the real server (hypercorn, trio worker, port 0 on loopback), the provider
fakes, the Vonage caller simulator (:class:`~voxbridge.testing.vonage_wire.VonageWire`) and the fake
Vonage (REST hang-ups, the signed answer webhook), all over real sockets.

For Vonage x {echo, the OpenAI fake, the Ultravox fake}: a call round-trips audio (byte for byte
at 8 kHz, where L16 is G.711 decoded and nothing is resampled; within stated bounds at 16 kHz,
where both sides resample), every agent audio frame is exactly 20 ms, a barge-in reaches the caller
as ``{"action":"clear"}`` (Vonage has no marks: the call estimates what was heard), a stalled
caller ends ``idle_timeout`` with the provider's socket closed. With the checks on
(``VONAGE_SIGNATURE_SECRET``): the signed answer webhook hands the stream a per-call token and the
call's ``uuid`` in the NCCO's ``headers``; an upgrade without Vonage's JWT, or with a forged one,
gets HTTP 403 before accept and no call starts; a stream without its token ends before any
provider session; ``end_call`` hangs up through Vonage's REST API with an application JWT.
``voxbridge call --carrier vonage`` and ``voxbridge demo --carrier vonage`` speak Vonage.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from carrierkit import Rig, cli_call, demo_tour, metric, rms, serving, stalled_call
from test_e2e_providers import PROVIDERS as ROWS
from test_e2e_providers import TURN_MS, disconnects

from voxbridge.audio import tone
from voxbridge.testing import CallResult, simulate_call
from voxbridge.testing.fake_openai import FakeToolCall as OpenAIToolCall
from voxbridge.testing.fake_openai import speech
from voxbridge.testing.fake_ultravox import FakeToolCall as UltravoxToolCall
from voxbridge.testing.fake_ultravox import speech_for
from voxbridge.testing.fake_vonage import Answer, FakeVonage
from voxbridge.testing.vonage_wire import VonageWire

PROVIDERS = ["echo", "openai", "ultravox"]
APPLICATION = "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
SECRET = "e2e-vonage-signature-secret-0123456789abcdef"
SENT = tone(1.0) * 3  # what the simulated caller streams (its one-second tone, looped)


class VonageRig(Rig):
    """The rig, and Vonage's side of an inbound call: its signed answer webhook, then the stream."""

    @property
    def vonage(self) -> FakeVonage:
        vonage: FakeVonage = self.api
        return vonage

    async def answer(self, **options: Any) -> tuple[str, Answer]:
        """Vonage's signed answer webhook (a JSON POST with its JWT)."""
        return await self.vonage.answer(self.server.url + "/vonage/answer", **options)

    async def answered_call(
        self, *, signature_secret: str | None = SECRET, **options: Any
    ) -> tuple[CallResult, VonageWire]:
        """The whole inbound call: the answer webhook, then the stream its NCCO names (at its
        ``content-type``, with its ``headers``), the upgrade carrying Vonage's JWT."""
        call_uuid, answer = await self.answer()
        assert answer.status == 200, answer.body
        assert answer.endpoint is not None and answer.stream_url == self.media_url
        rate = int(answer.endpoint["content-type"].rpartition("=")[2])
        wire = VonageWire(rate, signature_secret=signature_secret)
        assert answer.headers["uuid"] == call_uuid  # the stream learns its call from the NCCO
        assert ("authorization" in answer.endpoint) is (signature_secret is not None)
        if signature_secret is None:
            assert answer.headers == {"uuid": call_uuid}  # no token without checks
        result = await simulate_call(
            answer.stream_url,
            wire=wire,
            call_sid=call_uuid,
            custom_parameters=answer.headers,
            **options,
        )
        return result, wire


@asynccontextmanager
async def rig(
    provider: str, *knobs: dict[str, Any], signed: bool = False, **settings: Any
) -> AsyncIterator[VonageRig]:
    """voxbridge serving Vonage in front of ``provider``'s fake (made with ``knobs``), and a fake
    Vonage REST API; ``signed``: Vonage's checks on (the signature secret)."""
    api = FakeVonage(APPLICATION, signature_secret=SECRET)
    own: dict[str, Any] = {"application_id": APPLICATION, "private_key": api.private_key}
    if signed:
        own["signature_secret"] = SECRET
    async with serving(
        "vonage", provider, *knobs, api=api, own=own, kind=VonageRig, **settings
    ) as deployed:
        yield deployed


def rate(rate: int) -> dict[str, Any]:
    return {"carrier_settings": {"vonage": {"sample_rate": rate}}}


# --- a normal call ---------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_8k_audio_round_trips_byte_for_byte(provider: str) -> None:
    """``--vonage-sample-rate 8000``: L16 at 8 kHz is G.711 decoded, nothing is resampled, so
    what the provider echoes is what the caller sent, byte for byte (but mu-law 0x7F, -0, which
    re-encodes as 0xFF, +0); each binary frame is exactly 20 ms (320 bytes) both ways; the
    caller hangs up by closing the socket (Vonage has no stop): ``caller_stop``."""
    async with rig(provider, ROWS[provider].echo, **rate(8000)) as deployed:
        wire = VonageWire(8000)
        result = await simulate_call(deployed.media_url, wire=wire, seconds=1.0, audio=SENT)
        samples = await deployed.settled()
    assert result.protocol_errors == []  # every frame the bridge sent was one Vonage accepts
    assert result.frames_sent == 50
    up = metric(samples, "voxbridge_media_frames_total", direction="to_upstream")
    dropped = metric(samples, "voxbridge_media_frames_dropped_total", direction="to_upstream")
    assert up + dropped == 50
    back = bytes(result.audio_received)
    assert len(back) > 4000
    assert back == SENT.replace(b"\x7f", b"\xff")[: len(back)]
    assert wire.agent_frames and set(wire.agent_frames) == {320}  # 20 ms each, no other size
    assert disconnects(samples) == {"caller_stop": 1}
    assert (
        metric(samples, "voxbridge_calls_started_total", carrier="vonage", provider=provider) == 1
    )


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_16k_audio_round_trips_within_bounds_in_20_ms_frames(provider: str) -> None:
    """The default, 16 kHz: the caller streams L16 16 kHz, voxbridge resamples to mu-law 8 kHz
    for the provider and back. Resampling is not byte-exact, so what is asserted: every binary
    frame the bridge sent is exactly 20 ms (640 bytes), and the echo keeps the tone's level
    within 1.5 dB (two round trips through soxr's HQ filters), and what came back converts to
    20 ms of mu-law a frame, less the caller's own resampler's delay."""
    async with rig(provider, ROWS[provider].echo) as deployed:
        wire = VonageWire()
        result = await simulate_call(deployed.media_url, wire=wire, seconds=1.0, audio=SENT)
        samples = await deployed.settled()
    assert result.protocol_errors == []
    back = bytes(result.audio_received)
    assert len(back) > 4000
    assert abs(20 * math.log10(rms(back[800:]) / rms(SENT))) < 1.5
    assert wire.agent_frames and set(wire.agent_frames) == {640}  # 20 ms each, no other size
    # 20 ms of mu-law per frame once converted back, less the caller's resampler delay (15 ms)
    assert 160 * (result.frames_received - 1) <= len(back) <= 160 * result.frames_received
    assert disconnects(samples) == {"caller_stop": 1}


async def test_the_wire_sees_only_whole_20_ms_frames() -> None:
    """The call hands the codec 20 ms at a time (``capabilities.frame_ms``) and sends no empty
    frame: a provider speaking in 75 ms chunks, four times faster than real time (so chunks are
    also joined), still reaches the caller as 640-byte frames only, all of its second of speech
    but the last partial frame (the held-back remainder of the turn's last chunk: under 20 ms)."""
    turn = bytes([0x11]) * 8000
    knobs = {"speak": [(0.1, turn, "an answer")], "chunk_ms": 75, "speak_pace": 4.0}
    async with rig("openai", knobs) as deployed:
        wire = VonageWire()
        result = await simulate_call(deployed.media_url, wire=wire, seconds=1.5)
        await deployed.settled()
    assert result.protocol_errors == []
    assert wire.agent_frames and set(wire.agent_frames) == {640}
    assert 49 <= len(wire.agent_frames) <= 50  # 1 s of audio: 50 frames, the last may wait
    assert result.heard_ms(0x11) > 900


# --- barge-in ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_barge_in_clears_and_the_heard_position_is_estimated(provider: str) -> None:
    """The agent speaks 2 s from 0.2 s; at 0.7 s the provider says the caller started speaking.
    The caller gets ``{"action":"clear"}``; no mark was ever sent or echoed (Vonage has none), and
    nothing is outstanding after the clear: the call took the heard position from its estimate."""
    row = ROWS[provider]
    outstanding_after_clear: list[bool] = []
    async with rig(provider, row.speak(0.2, TURN_MS), row.interrupt(0.7)) as deployed:  # type: ignore[operator]
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                while not deployed.server.app.registry.active():
                    await trio.sleep(0.005)
                (call,) = deployed.server.app.registry.active()
                while not call.state.barge_ins:
                    await trio.sleep(0.005)
                outstanding_after_clear.append(call._playback.outstanding)

            nursery.start_soon(watch)
            result = await simulate_call(deployed.media_url, carrier="vonage", seconds=1.2)
            nursery.cancel_scope.cancel()
        samples = await deployed.settled()
    assert result.clears_received == 1
    assert (result.marks_received, result.marks_echoed) == (0, 0)
    assert result.protocol_errors == []
    assert metric(samples, "voxbridge_barge_ins_total") == 1
    [heard] = result.heard_ms_at_clear
    assert 0 < heard < TURN_MS
    assert outstanding_after_clear == [False]
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
        result, _ = await deployed.answered_call(seconds=0.6)
        samples = await deployed.settled()
        record = deployed.server.app.registry.recent[-1]
    assert result.rejected_status is None and result.frames_received > 0
    assert len(deployed.fake.sessions) == 1
    assert record.call_sid == result.call_sid  # the uuid of the answer webhook
    assert disconnects(samples) == {"caller_stop": 1}
    assert metric(samples, "voxbridge_connections_rejected_total", reason="bad_signature") == 0


async def test_without_checks_the_answer_still_names_the_call() -> None:
    """No signature secret (loopback): no token, no ``authorization``, but the NCCO's headers
    still carry the call's ``uuid`` (``CarrierSpec.call_parameter``), which the stream's start
    takes as its call id: what the journal records and ``end_call`` would hang up."""
    async with rig("echo", ROWS["echo"].echo) as deployed:
        result, _ = await deployed.answered_call(signature_secret=None, seconds=0.4)
        await deployed.settled()
        record = deployed.server.app.registry.recent[-1]
    assert record.call_sid == result.call_sid
    (call_uuid,) = deployed.vonage.calls
    assert result.call_sid == call_uuid


async def test_a_forged_or_unsigned_answer_webhook_is_refused() -> None:
    async with rig("openai", signed=True) as deployed:
        _, forged = await deployed.answer(secret="not-the-vonage-signature-secret-0123456789")
        _, unsigned = await deployed.answer(signed=False)
        _, stale = await deployed.answer(now=1_000_000_000)
        samples = await deployed.settled()
    for answer in (forged, unsigned, stale):
        assert answer.status == 403 and answer.endpoint is None
    assert metric(samples, "voxbridge_connections_rejected_total", reason="bad_signature") == 3


@pytest.mark.parametrize(
    "secret", [None, "not-the-vonage-signature-secret-0123456789"], ids=["no-jwt", "forged-jwt"]
)
async def test_an_upgrade_without_vonages_jwt_gets_403_before_accept(secret: str | None) -> None:
    async with rig("openai", signed=True) as deployed:
        call_uuid, answer = await deployed.answer()
        result = await simulate_call(
            deployed.media_url,
            wire=VonageWire(signature_secret=secret),
            call_sid=call_uuid,
            custom_parameters=answer.headers,  # even with the right token
            seconds=0.5,
        )
        samples = await deployed.settled()
    assert result.rejected_status == 403
    assert result.frames_sent == 0
    assert deployed.fake.sessions == []  # no provider session, no call
    assert not list(deployed.server.app.registry.recent)
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
    async with rig("openai", signed=True) as deployed:
        if parameters == "another call's":
            _, answer = await deployed.answer()
            parameters = {"voxbridge_token": answer.headers["voxbridge_token"]}  # not its uuid
        result = await simulate_call(
            deployed.media_url,
            wire=VonageWire(signature_secret=SECRET),
            custom_parameters=parameters,
            seconds=0.5,
        )
        samples = await deployed.settled()
    assert result.rejected_status is None  # the upgrade was Vonage's: the token is what fails
    assert result.close_reason == "protocol_error"
    assert deployed.fake.sessions == []
    assert disconnects(samples) == {"protocol_error": 1}


# --- end_call -----------------------------------------------------------------------------------------


async def test_openai_end_call_hangs_up_through_vonages_rest_api() -> None:
    """The goodbye plays, then voxbridge hangs up with ``PUT /v1/calls/{uuid}``. At 8 kHz the
    goodbye arrives byte for byte in whole 20 ms frames: all of it but its last partial frame
    (under 20 ms), which the codec holds back for a next chunk that never comes."""
    goodbye = speech("Thanks for calling, goodbye!")  # 448 bytes: 2 whole frames and 128 more
    knobs = {
        "caller_transcripts": [(0.3, "That is all, thanks.")],
        "tool_calls": [OpenAIToolCall("end_call", {}, say=goodbye)],
    }
    async with rig("openai", knobs, signed=True, **rate(8000)) as deployed:
        result, wire = await deployed.answered_call(seconds=20.0)
        samples = await deployed.settled()
        assert await deployed.vonage.wait_hangup() == result.call_sid
    whole = len(goodbye) // 160 * 160
    assert bytes(result.played) == goodbye[:whole].replace(b"\x7f", b"\xff")
    assert wire.agent_frames == [320] * (whole // 160)
    assert result.close_reason == "agent_hangup"
    assert result.frames_sent < 5 / 0.02
    assert deployed.vonage.hangups == [result.call_sid]
    assert deployed.vonage.calls[result.call_sid] == "completed"
    (request,) = deployed.vonage.requests
    assert (request.method, request.body, request.authorized) == ("PUT", {"action": "hangup"}, True)
    assert metric(samples, "voxbridge_tool_calls_total", tool="end_call", outcome="ok") == 1
    assert disconnects(samples) == {"agent_hangup": 1}


async def test_ultravox_end_call_hangs_up_through_vonages_rest_api() -> None:
    goodbye = speech_for("Thanks for calling, goodbye!", ms=600)
    knobs = {"tool_calls": [UltravoxToolCall("end_call", {}, say=goodbye, at=0.3)]}
    async with rig("ultravox", ROWS["ultravox"].echo, knobs, signed=True) as deployed:
        result, _ = await deployed.answered_call(seconds=20.0, audio=b"\xff" * 8000)
        samples = await deployed.settled()
    assert result.close_reason == "agent_hangup"
    assert deployed.vonage.hangups == [result.call_sid]
    assert metric(samples, "voxbridge_tool_calls_total", tool="end_call", outcome="ok") == 1


# --- voxbridge call --carrier vonage, voxbridge demo --carrier vonage ---------------------------------


async def test_voxbridge_call_speaks_vonage() -> None:
    """``voxbridge call --carrier vonage URL``: the simulated Vonage caller, in a child process;
    it hangs up by closing the socket, which is a successful call (exit status 0)."""
    async with rig("echo", ROWS["echo"].echo) as deployed:
        done = await cli_call("vonage", deployed.media_url)
        samples = await deployed.settled()
        record = deployed.server.app.registry.recent[-1]
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the caller hung up" in done.stdout
    assert record.carrier == "vonage"
    assert metric(samples, "voxbridge_calls_started_total", carrier="vonage", provider="echo") == 1
    assert disconnects(samples) == {"caller_stop": 1}


@pytest.mark.hang_limit(60)
async def test_the_demo_tours_vonage() -> None:
    status, text = await demo_tour("vonage")
    assert status == 0, text  # every call reached /vonage/media and its upstream closed
    assert "vonage calls to /vonage/media" in text
    assert "caller_stop" in text and "idle_timeout" in text
