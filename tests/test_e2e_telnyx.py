"""Telnyx end to end: the real server (hypercorn on port 0, loopback) with Telnyx's caller wire.

Every case runs against three providers' fakes (the echo agent, the OpenAI Realtime fake, the
Ultravox fake), the caller being :class:`voxbridge.testing.CarrierSimulator` speaking
:class:`voxbridge.testing.telnyx_wire.TelnyxWire` on ``WS /telnyx/media``:

* a normal call round-trips audio: mu-law (PCMU) byte for byte; L16 at 16 kHz is resampled twice
  each way (soxr, band-limited and delayed by its filters), so no byte can be compared: there the
  caller's 1 s tone must come back for at least 0.8 s (the echo's delay and the frames in flight
  at the stop aside) and at its level within 0.5 dB (a 440 Hz tone lies far below the 4 kHz band
  edge of the 8 kHz leg, so the filters leave its energy alone; measured: 0.01 dB);
* barge-in: the provider says the caller started speaking, the caller receives a ``clear``;
* a stalled caller (no media, still connected) ends ``idle_timeout``, the provider session closed;
* the carrier's auth is checked before accept: with a stream token configured, an upgrade
  without it (or with another) gets HTTP 403 and no provider session opens; a webhook without a
  valid Ed25519 signature gets 403; a signed webhook's TeXML carries the per-call token, and a
  stream presenting it is a normal call;
* the documented TeXML setup (public key in the DER form the docs show, API key): a start
  without the call's token, or with a forged one, ends ``protocol_error`` before any provider
  session, and the call's own token is a normal call;
* ``end_call`` hangs up through the Call Control API (the fake Telnyx REST server);
* ``voxbridge call --carrier telnyx`` and ``voxbridge demo --carrier telnyx`` speak Telnyx.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode
from xml.etree import ElementTree

import httpx
import pytest
import trio
from carrierkit import BUDGET, Rig, cli_call, demo_tour, metric, rms_db, serving
from test_e2e_providers import PROVIDERS as ROWS
from test_e2e_providers import TURN_MS
from test_e2e_server import scrape

from voxbridge.audio import FRAME_BYTES, tone
from voxbridge.server.security import CallTokens
from voxbridge.testing import CallResult, simulate_call
from voxbridge.testing.fake_openai import FakeToolCall as OpenAIToolCall
from voxbridge.testing.fake_telnyx import FakeTelnyx, WebhookSigner
from voxbridge.testing.fake_ultravox import FakeToolCall as UltravoxToolCall
from voxbridge.testing.telnyx_wire import TelnyxWire

PROVIDERS = ["echo", "openai", "ultravox"]
SENT = tone(1.0) * 3  # what the simulated caller streams (its one-second tone, looped)
API_KEY = "KEYtelnyx0123456789"
STREAM_TOKEN = "stream-token-0123456789abcdef"
Knobs = dict[str, Any]

OPENAI_END = {
    "caller_transcripts": [(0.2, "that is all")],
    "tool_calls": [OpenAIToolCall("end_call", {})],
}
#: provider -> the knobs that make its fake call ``end_call``.
END_CALL: dict[str, Knobs] = {
    "echo": OPENAI_END,
    "openai": OPENAI_END,
    "ultravox": {"api_key": "uv-key", "tool_calls": [UltravoxToolCall("end_call", {}, at=0.3)]},
}


class TelnyxRig(Rig):
    @property
    def telnyx(self) -> FakeTelnyx:
        telnyx: FakeTelnyx = self.api
        return telnyx


@asynccontextmanager
async def telnyx_rig(
    provider: str, *knobs: Knobs, telnyx: Knobs | None = None, **settings: Any
) -> AsyncIterator[TelnyxRig]:
    """The server with ``provider``'s fake (made with ``knobs``) and a fake Telnyx REST API;
    ``telnyx`` are the server's Telnyx settings besides the API key and URL."""
    own = {"api_key": API_KEY, **(telnyx or {})}
    api = FakeTelnyx(api_key=API_KEY)
    async with serving(
        "telnyx", provider, *knobs, api=api, own=own, kind=TelnyxRig, **settings
    ) as rig:
        yield rig


async def call(rig: Rig, wire: TelnyxWire | None = None, **options: Any) -> CallResult:
    return await simulate_call(rig.media_url, wire=wire or TelnyxWire(), **options)


# --- a normal call --------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_pcmu_audio_round_trips_byte_exact(provider: str) -> None:
    with trio.fail_after(BUDGET):
        async with telnyx_rig(provider, ROWS[provider].echo) as rig:
            result = await call(rig, seconds=0.6)
            await rig.server.app.registry.wait_empty()
            samples = await scrape(rig.server)
            record = rig.server.app.registry.recent[-1]
    assert (result.close_code, result.close_reason) == (1000, "caller_stop")
    assert result.frames_sent == 30 == record.frames_from_caller
    assert (record.carrier, record.call_sid) == ("telnyx", result.call_sid)
    back = bytes(result.audio_received)
    assert len(back) > 2400  # more than 0.3 s of the 0.6 s came back
    assert back == SENT[: len(back)]  # byte for byte
    assert metric(samples, "voxbridge_call_disconnects_total", reason="caller_stop") == 1


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_l16_16k_audio_round_trips_whole_and_at_its_level(provider: str) -> None:
    telnyx = {"codec": "L16", "sample_rate": 16000}
    with trio.fail_after(BUDGET):
        async with telnyx_rig(provider, ROWS[provider].echo, telnyx=telnyx) as rig:
            result = await call(rig, TelnyxWire("L16", 16000), seconds=1.0)
            await rig.server.app.registry.wait_empty()
    assert (result.close_code, result.close_reason) == (1000, "caller_stop")
    back = bytes(result.audio_received)
    # the echo of 1 s, less the echo delay and what was in flight at the stop: at least 0.8 s
    assert len(back) >= 6400
    # the tone's level survives both resamplers each way (skip their first 100 ms)
    assert abs(rms_db(back[800:]) - rms_db(SENT[800 : len(back)])) < 0.5


# --- barge-in -------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_barge_in_clears_the_telnyx_queue(provider: str) -> None:
    row = ROWS[provider]
    with trio.fail_after(BUDGET):
        async with telnyx_rig(provider, row.speak(0.1, TURN_MS), row.interrupt(0.5)) as rig:
            result = await call(rig, seconds=0.9)
            await rig.server.app.registry.wait_empty()
            samples = await scrape(rig.server)
    assert (result.close_code, result.close_reason) == (1000, "caller_stop")
    assert result.clears_received == 1
    assert metric(samples, "voxbridge_barge_ins_total") == 1
    [heard] = result.heard_ms_at_clear
    assert 0 < heard < TURN_MS


# --- a stalled caller -----------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_stalled_caller_ends_idle_timeout_and_the_provider_session_closes(
    provider: str,
) -> None:
    with trio.fail_after(BUDGET):
        async with telnyx_rig(provider, ROWS[provider].echo) as rig:
            started = trio.current_time()
            result = await call(rig, seconds=10.0, stall_after=0.3)
            await rig.server.app.registry.wait_empty()
            samples = await scrape(rig.server)
            sessions = list(rig.fake.sessions)
    assert result.close_reason == "idle_timeout"
    assert trio.current_time() - started < 5.0
    assert sessions and all(session.is_closed for session in sessions)
    assert metric(samples, "voxbridge_call_disconnects_total", reason="idle_timeout") == 1


# --- auth before accept ---------------------------------------------------------------------------


def signed_form(signer: WebhookSigner, call_id: str) -> tuple[bytes, dict[str, str]]:
    body = urlencode({"CallSid": call_id, "To": "+13129457420", "From": "+35319605860"}).encode()
    headers = {
        "content-type": "application/x-www-form-urlencoded",
        **signer.headers(body, int(time.time())),
    }
    return body, headers


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_auth_is_checked_before_accept(provider: str) -> None:
    signer = WebhookSigner()
    telnyx = {"public_key": signer.public_key, "stream_token": STREAM_TOKEN}
    call_id = "v3:e2e-call-1"
    with trio.fail_after(BUDGET):
        async with telnyx_rig(provider, ROWS[provider].echo, telnyx=telnyx) as rig:
            async with httpx.AsyncClient(base_url=rig.server.url, timeout=5) as client:
                body, headers = signed_form(signer, call_id)
                unsigned = await client.post(
                    "/telnyx/voice", content=body, headers={"content-type": headers["content-type"]}
                )
                forged = await client.post(
                    "/telnyx/voice",
                    content=body.replace(b"e2e-call-1", b"e2e-call-2"),
                    headers=headers,
                )
                answer = await client.post("/telnyx/voice", content=body, headers=headers)
            refused = [
                await call(rig, TelnyxWire(stream_token=token), seconds=0.3)
                for token in (None, "wrong-" + STREAM_TOKEN)
            ]
            sessions_after_refusals = len(rig.fake.sessions)
            stream = ElementTree.fromstring(answer.content).find("./Connect/Stream")
            assert stream is not None and stream.get("bidirectionalMode") == "rtp"
            token = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
            accepted = await call(
                rig,
                TelnyxWire(stream_token=STREAM_TOKEN),
                seconds=0.4,
                call_sid=call_id,
                custom_parameters={"voxbridge_token": str(token["voxbridge_token"])},
            )
            await rig.server.app.registry.wait_empty()
            samples = await scrape(rig.server)
    assert (unsigned.status_code, forged.status_code, answer.status_code) == (403, 403, 200)
    assert [r.rejected_status for r in refused] == [403, 403]
    assert sessions_after_refusals == 0  # no provider session for a refused upgrade
    assert accepted.rejected_status is None
    assert (accepted.close_code, accepted.close_reason) == (1000, "caller_stop")
    assert metric(samples, "voxbridge_connections_rejected_total", reason="bad_signature") == 4


async def test_the_texml_setup_checks_the_token_in_the_stream_url_before_accept() -> None:
    """The documented TeXML setup (public key + API key, no stream token): the TeXML's stream URL
    carries the per-call token in its query string; an upgrade without it, with a forged one or
    with the same API key's token minted for another carrier gets 403 before accept (no slot, no
    provider session); the answer's URL with its ``<Parameter>`` is a call; the URL of one call
    with another call's start ends ``protocol_error`` before any provider session."""
    signer = WebhookSigner()
    telnyx = {"public_key": signer.public_key}
    with trio.fail_after(BUDGET):
        async with telnyx_rig("echo", ROWS["echo"].echo, telnyx=telnyx) as rig:
            answers = []
            async with httpx.AsyncClient(base_url=rig.server.url, timeout=5) as client:
                for call_id in ("v3:texml-1", "v3:texml-2"):
                    body, headers = signed_form(signer, call_id)
                    answer = await client.post("/telnyx/voice", content=body, headers=headers)
                    assert answer.status_code == 200
                    stream = ElementTree.fromstring(answer.content).find("./Connect/Stream")
                    assert stream is not None
                    named = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
                    url, token = str(stream.get("url")), str(named["voxbridge_token"])
                    assert url.endswith("/telnyx/media?" + urlencode({"voxbridge_token": token}))
                    answers.append((call_id, "?" + url.split("?", 1)[1], token))
            twilio_keyed = CallTokens([API_KEY], 60).mint("v3:texml-1", now=time.time())
            refused = [
                await simulate_call(rig.media_url + query, wire=TelnyxWire(), seconds=0.3)
                for query in ("", "?voxbridge_token=a.b.c", "?voxbridge_token=" + twilio_keyed)
            ]
            sessions_after_refusals = len(rig.fake.sessions)
            (first, first_query, first_token), (second, _, _) = answers
            crossed = await simulate_call(
                rig.media_url + first_query,
                wire=TelnyxWire(),
                seconds=0.3,
                call_sid=second,
                custom_parameters={"voxbridge_token": first_token},
            )
            sessions_after_crossed = len(rig.fake.sessions)
            accepted = await simulate_call(
                rig.media_url + first_query,
                wire=TelnyxWire(),
                seconds=0.4,
                call_sid=first,
                custom_parameters={"voxbridge_token": first_token},
            )
            await rig.server.app.registry.wait_empty()
            samples = await scrape(rig.server)
    assert [r.rejected_status for r in refused] == [403, 403, 403]
    assert sessions_after_refusals == 0
    assert (crossed.rejected_status, crossed.close_reason) == (None, "protocol_error")
    assert sessions_after_crossed == 0
    assert (accepted.close_code, accepted.close_reason) == (1000, "caller_stop")
    assert metric(samples, "voxbridge_connections_rejected_total", reason="bad_signature") == 3


def der_form(raw_base64: str) -> str:
    """The base64 DER ``SubjectPublicKeyInfo`` of a raw base64 Ed25519 key (``MCowBQYDK2VwAyEA``
    and the key): the form carriers.md's example shows."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(raw_base64))
    der = key.public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


@pytest.mark.parametrize("start_token", ["missing", "forged", "the call's"])
async def test_the_documented_texml_setup_checks_the_start_token(start_token: str) -> None:
    """carriers.md's Telnyx setup as written: the public key (in the DER form its example shows)
    and the API key, no stream token, a TeXML application. The stream URL of a signed answer
    carries a valid token, so the upgrade is accepted; the start's ``voxbridge_token``
    ``<Parameter>`` is then the call's check: missing or forged, the call ends ``protocol_error``
    before any provider session; the answer's own token makes a normal call."""
    signer = WebhookSigner()
    telnyx = {"public_key": der_form(signer.public_key)}
    call_id = "v3:documented-1"
    with trio.fail_after(BUDGET):
        async with telnyx_rig("echo", ROWS["echo"].echo, telnyx=telnyx) as rig:
            async with httpx.AsyncClient(base_url=rig.server.url, timeout=5) as client:
                body, headers = signed_form(signer, call_id)
                answer = await client.post("/telnyx/voice", content=body, headers=headers)
            assert answer.status_code == 200, answer.text
            stream = ElementTree.fromstring(answer.content).find("./Connect/Stream")
            assert stream is not None
            named = {p.get("name"): str(p.get("value")) for p in stream.findall("Parameter")}
            url = str(stream.get("url"))
            query = "?" + url.split("?", 1)[1] if "?" in url else ""
            parameters = {
                "missing": {},
                "forged": {"voxbridge_token": named["voxbridge_token"][:-4] + "AAAA"},
                "the call's": named,
            }[start_token]
            result = await simulate_call(
                rig.media_url + query,
                wire=TelnyxWire(),
                seconds=0.4,
                call_sid=call_id,
                custom_parameters=parameters,
            )
            await rig.server.app.registry.wait_empty()
            samples = await scrape(rig.server)
    assert result.rejected_status is None  # the upgrade's own check passed
    if start_token == "the call's":
        assert (result.close_code, result.close_reason) == (1000, "caller_stop")
        assert len(rig.fake.sessions) == 1
        assert metric(samples, "voxbridge_call_disconnects_total", reason="caller_stop") == 1
    else:
        assert result.close_reason == "protocol_error"
        assert rig.fake.sessions == []  # refused before any provider session
        assert metric(samples, "voxbridge_call_disconnects_total", reason="protocol_error") == 1


# --- end_call -------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_end_call_hangs_up_through_call_control(provider: str) -> None:
    with trio.fail_after(BUDGET):
        async with telnyx_rig(provider, END_CALL[provider]) as rig:
            result = await call(rig, seconds=10.0, audio=b"\xff" * FRAME_BYTES)
            await rig.server.app.registry.wait_empty()
            samples = await scrape(rig.server)
            hangups = list(rig.telnyx.hangups)
    assert result.close_reason == "agent_hangup"
    assert hangups == [result.call_sid]
    assert metric(samples, "voxbridge_tool_calls_total", tool="end_call", outcome="ok") == 1


# --- voxbridge call --carrier telnyx, voxbridge demo --carrier telnyx -------------------------------


async def test_voxbridge_call_speaks_telnyx() -> None:
    with trio.fail_after(BUDGET):
        async with telnyx_rig("echo", ROWS["echo"].echo) as rig:
            done = await cli_call("telnyx", rig.media_url)
            await rig.server.app.registry.wait_empty()
            samples = await scrape(rig.server)
            record = rig.server.app.registry.recent[-1]
    assert done.returncode == 0, done.stdout + done.stderr
    assert "caller_stop" in done.stdout
    assert record.carrier == "telnyx"
    assert metric(samples, "voxbridge_calls_started_total", carrier="telnyx", provider="echo") == 1


@pytest.mark.hang_limit(60)
async def test_the_demo_tours_the_telnyx_route() -> None:
    status, text = await demo_tour("telnyx")
    assert status == 0, text  # every call was recorded: it reached /telnyx/media
    assert "telnyx calls to /telnyx/media" in text
    assert "caller_stop" in text and "idle_timeout" in text
