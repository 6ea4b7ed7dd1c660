"""End to end: who may open a call, on the real server (hypercorn on port 0, real sockets).

The server runs with ``--twilio-auth-token`` (two tokens: rotation) and ``--public-url``; Twilio
is played by this file: it signs like the official ``twilio`` package
(``RequestValidator.compute_signature``) over the *public* URLs, never over the loopback address
the test really connects to, which is the point: the server must rebuild what Twilio signed from
its settings, not from the request's ``Host``. Each test checks what the caller saw, what the
provider saw (no session opened for a refused call), and ``/metrics``.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest
import trio
from test_e2e_server import disconnects, raw_websocket, running, scrape, wait_until
from trio_websocket import ConnectionRejected
from twilio.request_validator import RequestValidator

from voxbridge.logs import ConsoleFormatter, JsonFormatter
from voxbridge.server import RunningServer, serve
from voxbridge.server.security import CallTokens, token_key
from voxbridge.settings import Settings, SettingsError
from voxbridge.testing import CallResult, CarrierSimulator, FakeEchoAgent

BUDGET = 20.0  # seconds of real time per test
PUBLIC = "https://voice.example.test"
VOICE_URL = PUBLIC + "/twilio/voice"
MEDIA_URL = "wss://voice.example.test/twilio/media"
AUTH_TOKENS = (secrets.token_hex(16), secrets.token_hex(16))  # current, next (rotation)
AUTH = ",".join(AUTH_TOKENS)
WRONG_TOKEN = secrets.token_hex(16)

SIGN = object()  # sign the upgrade like Twilio does
MINT = object()  # get a per-call token from the signed webhook


def sign(url: str, params: dict[str, str] | None = None, token: str = AUTH_TOKENS[0]) -> str:
    """``X-Twilio-Signature`` as Twilio computes it (the official implementation)."""
    return str(RequestValidator(token).compute_signature(url, params or {}))


def new_call_sid() -> str:
    return "CA" + secrets.token_hex(16)


def secured(
    agent: FakeEchoAgent | None = None, **overrides: Any
) -> AbstractAsyncContextManager[tuple[RunningServer, FakeEchoAgent]]:
    """A voxbridge server with signature checks on, bridged to ``agent``; torn down on exit."""
    return running(agent, **{"twilio_auth_token": AUTH, "public_url": PUBLIC, **overrides})


def webhook_form(call_sid: str) -> dict[str, str]:
    return {
        "CallSid": call_sid,
        "AccountSid": "AC" + "0" * 32,
        "From": "+15551230000",
        "To": "+15559870000",
        "CallerName": "",
    }


async def post_webhook(
    server: RunningServer,
    form: dict[str, str],
    signature: str | None,
    query: str = "",
) -> httpx.Response:
    headers = {} if signature is None else {"X-Twilio-Signature": signature}
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        return await client.post(f"/twilio/voice{query}", data=form, headers=headers)


def token_in(twiml: str) -> str:
    """The ``voxbridge_token`` ``<Parameter>`` of the TwiML's ``<Stream>``."""
    root = ElementTree.fromstring(twiml)
    stream = root.find("./Connect/Stream")
    assert stream is not None, twiml
    assert stream.get("url") == MEDIA_URL
    [parameter] = stream.findall("Parameter")
    assert parameter.get("name") == "voxbridge_token"
    value = parameter.get("value")
    assert value
    return value


async def webhook_token(server: RunningServer, call_sid: str, token: str = AUTH_TOKENS[0]) -> str:
    """What Twilio does first: the signed webhook, whose TwiML carries the per-call token."""
    form = webhook_form(call_sid)
    response = await post_webhook(server, form, sign(VOICE_URL, form, token))
    assert response.status_code == 200, response.text
    return token_in(response.text)


async def place_call(
    server: RunningServer,
    *,
    call_sid: str | None = None,
    token: object = MINT,
    signature: object = SIGN,
    parameters: dict[str, str] | None = None,
    seconds: float = 0.5,
    **options: Any,
) -> CallResult:
    """A Twilio media stream for ``call_sid``: signed upgrade, ``token`` in ``customParameters``.

    ``token``: ``MINT`` (from the signed webhook), a string, or ``None`` (no token parameter);
    ``signature``: ``SIGN`` (Twilio's, over the public stream URL), a string, or ``None``.
    """
    call_sid = call_sid or new_call_sid()
    if token is MINT:
        token = await webhook_token(server, call_sid)
    if signature is SIGN:
        signature = sign(MEDIA_URL)
    custom = dict(parameters or {})
    if token is not None:
        custom["voxbridge_token"] = str(token)
    headers = [] if signature is None else [("X-Twilio-Signature", str(signature))]
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    simulator = CarrierSimulator(
        stream,
        host=f"127.0.0.1:{server.port}",
        seconds=seconds,
        custom_parameters=custom,
        extra_headers=headers,
        **options,
    )
    simulator.result.call_sid = call_sid  # the simulator's start carries this CallSid
    return await simulator.run()


def rejected(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], reason: str) -> float:
    return samples[("voxbridge_connections_rejected_total", (("reason", reason),))]


# --- signatures ----------------------------------------------------------------------------------


async def test_webhook_with_a_missing_or_bad_signature_is_403_and_counted() -> None:
    call_sid = new_call_sid()
    form = webhook_form(call_sid)
    with trio.fail_after(BUDGET):
        async with secured() as (server, _agent):
            host_url = f"{server.url}/twilio/voice"  # what a Host-trusting server would rebuild
            attempts = {
                "missing": await post_webhook(server, form, None),
                "wrong token": await post_webhook(server, form, sign(VOICE_URL, form, WRONG_TOKEN)),
                "signed for the Host": await post_webhook(server, form, sign(host_url, form)),
                "tampered parameter": await post_webhook(
                    server, {**form, "CallSid": new_call_sid()}, sign(VOICE_URL, form)
                ),
                "query added": await post_webhook(server, form, sign(VOICE_URL, form), "?x=1"),
            }
            samples = await scrape(server)

    for what, response in attempts.items():
        assert response.status_code == 403, what
        assert "Parameter" not in response.text and "Stream" not in response.text, what
    assert rejected(samples, "bad_signature") == len(attempts)


async def test_media_upgrade_with_a_missing_or_bad_signature_is_403_before_the_upgrade() -> None:
    with trio.fail_after(BUDGET):
        async with secured() as (server, agent):
            with pytest.raises(ConnectionRejected) as bare:
                async with raw_websocket(server.media_url):
                    pass
            host_url = server.media_url  # ws://127.0.0.1:<port>/twilio/media: the Host's URL
            attempts = {
                "wrong token": await place_call(
                    server, signature=sign(MEDIA_URL, token=WRONG_TOKEN)
                ),
                "signed for the Host": await place_call(server, signature=sign(host_url)),
                "the webhook's signature": await place_call(server, signature=sign(VOICE_URL)),
                "https instead of wss": await place_call(
                    server, signature=sign(PUBLIC + "/twilio/media")
                ),
            }
            samples = await scrape(server)

    assert bare.value.status_code == 403
    for what, result in attempts.items():
        assert result.rejected_status == 403, what
        assert result.frames_sent == 0, what
    assert agent.sessions == []  # no provider session for anyone
    assert rejected(samples, "bad_signature") == 1 + len(attempts)
    assert sum(disconnects(samples).values()) == 0  # no call ever started


async def test_signed_webhook_returns_twiml_with_a_token_bound_to_the_call() -> None:
    call_sid = new_call_sid()
    form = webhook_form(call_sid)
    with trio.fail_after(BUDGET):
        async with secured() as (server, _agent):
            # Rotation: Twilio already signs with the second token; the query string is signed.
            signature = sign(VOICE_URL + "?campaign=spring", form, AUTH_TOKENS[1])
            response = await post_webhook(server, form, signature, "?campaign=spring")
            no_sid = {k: v for k, v in form.items() if k != "CallSid"}
            without_call = await post_webhook(server, no_sid, sign(VOICE_URL, no_sid))
            samples = await scrape(server)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/xml")
    token = token_in(response.text)
    now = time.time()
    CallTokens(AUTH_TOKENS, ttl=60).verify(token, call_sid, now=now)  # minted with either: OK
    CallTokens(AUTH_TOKENS[:1], ttl=60).verify(token, call_sid, now=now)  # with the first one
    assert without_call.status_code == 400
    assert rejected(samples, "bad_signature") == 0


# --- per-call tokens -----------------------------------------------------------------------------


async def test_a_signed_stream_with_its_token_is_a_normal_call() -> None:
    with trio.fail_after(BUDGET):
        async with secured() as (server, agent):
            result = await place_call(server, parameters={"agent": "sales"})
            session = await agent.wait_for_session()
            await wait_until(lambda: session.is_closed)
            await server.app.registry.wait_empty()
            samples = await scrape(server)
            [record] = server.app.registry.recent

    assert result.rejected_status is None
    assert result.close_code == 1000
    assert result.close_reason == "caller_stop"
    assert result.frames_received > 0  # the echo came back through the bridge
    assert disconnects(samples)["caller_stop"] == 1
    assert record.call_sid == result.call_sid
    # The token is a credential: the call's record (and so the journal) keeps the rest only.
    assert dict(record.custom_parameters) == {"agent": "sales"}


async def test_bad_tokens_end_the_call_with_protocol_error_before_any_provider_session() -> None:
    call_sid = new_call_sid()
    minted = CallTokens(AUTH_TOKENS, ttl=60)
    cases: dict[str, object] = {
        "missing": None,
        "malformed": "not-a-token",
        "expired": minted.mint(call_sid, now=time.time() - 120),
        "another call's": minted.mint(new_call_sid(), now=time.time()),
        "another auth token's": CallTokens([WRONG_TOKEN], ttl=60).mint(call_sid, now=time.time()),
    }
    results: dict[str, CallResult] = {}
    with trio.fail_after(BUDGET):
        async with secured() as (server, agent):
            for what, token in cases.items():
                results[what] = await place_call(server, call_sid=call_sid, token=token)
            await server.app.registry.wait_empty()
            samples = await scrape(server)
            details = [record.detail for record in server.app.registry.recent]

    for what, result in results.items():
        assert result.rejected_status is None, what  # signed upgrade: accepted, then refused
        assert result.close_code == 1008, what
        assert result.close_reason == "protocol_error", what
        assert result.frames_received == 0, what
    assert agent.sessions == []  # the fake provider never saw a connection
    assert disconnects(samples)["protocol_error"] == len(cases)
    assert rejected(samples, "duplicate") == 0
    assert sorted(details) == sorted(
        f"per-call token {problem}"
        for problem in (
            "missing",
            "malformed",
            "expired",
            "minted for another call",
            "not signed with the auth token",
        )
    )


async def test_a_second_live_stream_of_a_call_is_refused_and_the_first_is_unaffected() -> None:
    call_sid = new_call_sid()
    with trio.fail_after(BUDGET):
        async with secured() as (server, agent):
            async with trio.open_nursery() as nursery:
                first: list[CallResult] = []

                async def first_call() -> None:
                    first.append(await place_call(server, call_sid=call_sid, seconds=1.0))

                nursery.start_soon(first_call)
                await agent.wait_for_session()
                second = await place_call(server, call_sid=call_sid)  # a fresh, valid token
                sessions_during = len(agent.sessions)
            await server.app.registry.wait_empty()
            # Released when the first call ended: the CallSid may stream again.
            third = await place_call(server, call_sid=call_sid)
            await server.app.registry.wait_empty()
            samples = await scrape(server)

    assert second.close_code == 1008
    assert second.close_reason == "protocol_error"
    assert sessions_during == 1  # the duplicate opened no provider session
    [one] = first
    assert one.close_code == 1000 and one.close_reason == "caller_stop"
    assert one.frames_sent == 50  # 1 s of 20 ms frames, undisturbed
    assert one.frames_received > 0
    assert third.close_code == 1000 and third.close_reason == "caller_stop"
    assert rejected(samples, "duplicate") == 1
    assert disconnects(samples)["protocol_error"] == 1
    assert disconnects(samples)["caller_stop"] == 2


async def test_a_duplicate_stream_is_refused_without_signature_checks_too() -> None:
    call_sid = new_call_sid()
    with trio.fail_after(BUDGET):
        async with secured(twilio_auth_token=None, public_url=None) as (server, agent):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    partial(place_call, server, call_sid=call_sid, token=None, seconds=1.0)
                )
                await agent.wait_for_session()
                second = await place_call(server, call_sid=call_sid, token=None, signature=None)
            samples = await scrape(server)

    assert second.close_code == 1008
    assert rejected(samples, "duplicate") == 1
    assert disconnects(samples)["caller_stop"] == 1


# --- secure defaults ------------------------------------------------------------------------------


@contextmanager
def every_log_record() -> Iterator[list[str]]:
    """Every log record of every logger at DEBUG, rendered with voxbridge's two formatters
    (message, structured fields, exception text), whatever handlers earlier tests installed."""
    texts: list[str] = []
    formatters = (JsonFormatter(), ConsoleFormatter())

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            for formatter in formatters:
                texts.append(formatter.format(record))
            texts.append(repr(record.args))

    manager = logging.root.manager
    loggers = [logging.root] + [
        logger for logger in manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    saved = [(logger, logger.level, logger.propagate, logger.disabled) for logger in loggers]
    disabled = manager.disable
    handler = Collect(logging.DEBUG)
    logging.disable(logging.NOTSET)
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        logger.propagate = True
        logger.disabled = False
    logging.root.addHandler(handler)
    try:
        yield texts
    finally:
        logging.root.removeHandler(handler)
        for logger, level, propagate, was_disabled in saved:
            logger.setLevel(level)
            logger.propagate = propagate
            logger.disabled = was_disabled
        logging.disable(disabled)


async def test_no_secret_token_or_signature_reaches_the_logs(
    capfd: pytest.CaptureFixture[str],
) -> None:
    provider_key = "sk-test-" + secrets.token_hex(20)
    secrets_seen: list[str] = [*AUTH_TOKENS, AUTH, provider_key, WRONG_TOKEN]
    secrets_seen += [token_key(t).hex() for t in AUTH_TOKENS]
    call_sid = new_call_sid()
    details: list[str] = []
    results: list[CallResult] = []
    agent = FakeEchoAgent(delay=0.05, api_key=provider_key)  # refuses a session without the key
    with every_log_record() as logs, trio.fail_after(BUDGET):
        async with secured(
            agent, provider="openai", provider_settings={"openai": {"api_key": provider_key}}
        ) as (server, _):
            form = webhook_form(call_sid)
            signature = sign(VOICE_URL, form, AUTH_TOKENS[1])
            response = await post_webhook(server, form, signature)
            token = token_in(response.text)
            bad_signature = sign(VOICE_URL, form, WRONG_TOKEN)
            refused = await post_webhook(server, form, bad_signature)
            media_signature = sign(MEDIA_URL)
            results.append(
                await place_call(server, call_sid=call_sid, token=token, signature=media_signature)
            )
            bad_media_signature = sign(MEDIA_URL, token=WRONG_TOKEN)
            results.append(await place_call(server, signature=bad_media_signature))
            expired = CallTokens(AUTH_TOKENS, ttl=60).mint(call_sid, now=time.time() - 120)
            results.append(await place_call(server, call_sid=call_sid, token=expired))
            await server.app.registry.wait_empty()
            details = [record.detail for record in server.app.registry.recent]
    secrets_seen += [token, signature, bad_signature, media_signature, bad_media_signature, expired]

    # The scenario ran as intended (the check below is not vacuous).
    assert response.status_code == 200 and refused.status_code == 403
    assert [r.close_reason for r in results] == ["caller_stop", None, "protocol_error"]
    assert results[1].rejected_status == 403
    assert len(agent.sessions) == 1  # the key was sent (the agent refuses a session without it)
    log_text = "\n".join(logs)
    assert call_sid in log_text and "per-call token expired" in log_text
    assert "call ended" in log_text
    captured = capfd.readouterr()
    journal = b"".join(path.read_bytes() for path in Path.cwd().glob("voxbridge.db*"))
    places = {
        "logs": log_text,
        "stdout": captured.out,
        "stderr": captured.err,
        "call details": "\n".join(details),
        "close reasons": "\n".join(str(r.close_reason) for r in results),
        "journal": journal.decode("latin-1"),
    }
    for where, text in places.items():
        for secret in secrets_seen:
            assert secret not in text, f"a secret reached the {where}"


async def test_validation_off_warns_once_at_start_and_on_says_so() -> None:
    with every_log_record() as logs, trio.fail_after(BUDGET):
        async with secured(twilio_auth_token=None, public_url=None):
            pass
    warnings = [line for line in logs if "signature validation is OFF" in line]
    assert len(warnings) == 2  # one record, rendered by both formatters
    assert (
        "anyone who can reach this server can open calls and paid provider sessions"
        in (warnings[0])
    )
    assert '"level": "warning"' in warnings[0]
    with every_log_record() as logs, trio.fail_after(BUDGET):
        async with secured():
            pass
    assert not any("validation is OFF" in line for line in logs)
    assert any(f"checked for {PUBLIC} (2 auth token(s))" in line for line in logs)


async def test_serve_refuses_a_public_bind_without_a_token_before_binding() -> None:
    with pytest.raises(SettingsError) as refused:
        await serve(Settings(host="0.0.0.0", port=0))
    assert "--twilio-auth-token" in str(refused.value) and "--insecure" in str(refused.value)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXBRIDGE_")}
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "voxbridge", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


def test_voxbridge_serve_refuses_a_public_bind_without_a_token() -> None:
    done = run_cli("serve", "--host", "0.0.0.0", "--port", "0")
    assert done.returncode == 2
    output = done.stdout + done.stderr
    assert "--twilio-auth-token" in output and "--insecure" in output
    assert "listening" not in output


def test_voxbridge_serve_refuses_a_token_without_a_public_url() -> None:
    token = secrets.token_hex(16)
    done = run_cli("serve", "--twilio-auth-token", token, "--port", "0")
    assert done.returncode == 2
    output = done.stdout + done.stderr
    assert "--twilio-auth-token" in output and "--public-url" in output
    assert token not in output


# --- no credential, no slot (finding 1) ----------------------------------------------------------

PLIVO_TOKEN = secrets.token_hex(16)
TELNYX_KEY = "KEY" + secrets.token_hex(8)


async def test_bare_sockets_on_every_carrier_get_403_and_take_no_slot() -> None:
    """Every carrier's checks on, ``max_calls=2``: bare upgrades to ``/plivo/media`` and
    ``/telnyx/media`` (no V3 headers, no stream token: what Plivo and a TeXML stream send) and
    ``/vonage/media`` are refused 403 before accept, while two of them are held open; a signed
    Twilio call is then admitted. (Before: Plivo's and Telnyx's were accepted and held a slot
    until ``start_timeout``, and the Twilio call got 503.)"""
    from voxbridge.testing.fake_telnyx import WebhookSigner

    carriers = {
        "plivo": {"auth_token": PLIVO_TOKEN},
        "telnyx": {"public_key": WebhookSigner().public_key, "api_key": TELNYX_KEY},
        "vonage": {"signature_secret": secrets.token_hex(32)},
    }
    with trio.fail_after(BUDGET):
        async with secured(max_calls=2, start_timeout=10.0, carrier_settings=carriers) as (
            server,
            agent,
        ):
            base = server.url.replace("http://", "ws://", 1)
            statuses = []
            for path in ("/plivo/media", "/telnyx/media", "/vonage/media") * 2:
                with pytest.raises(ConnectionRejected) as refused:
                    async with raw_websocket(base + path):
                        pass
                statuses.append(refused.value.status_code)
            result = await place_call(server, seconds=0.3)
            await server.app.registry.wait_empty()
            samples = await scrape(server)
    assert statuses == [403] * 6
    assert result.rejected_status is None and result.close_reason == "caller_stop"
    assert rejected(samples, "bad_signature") == 6
    assert rejected(samples, "capacity") == 0
    assert len(agent.sessions) == 1


async def test_unchecked_sockets_wait_in_their_own_small_pool_with_a_short_start_deadline() -> None:
    """Twilio checked, Plivo unconfigured (served unchecked on loopback), ``max_calls=2``: bare
    Plivo sockets take the unauthenticated pool (``UNAUTHENTICATED_STREAMS``), not the calls'
    slots: with the pool full the next bare socket gets 503 ``capacity`` and a signed Twilio
    call is still admitted; each waiting socket is closed ``start_timeout`` after
    ``UNAUTHENTICATED_START_TIMEOUT`` (2 s), not the configured 10 s."""
    from trio_websocket import ConnectionClosed

    from voxbridge.server.app import UNAUTHENTICATED_START_TIMEOUT, UNAUTHENTICATED_STREAMS

    with trio.fail_after(BUDGET):
        async with secured(max_calls=2, start_timeout=10.0) as (server, agent):
            media = server.url.replace("http://", "ws://", 1) + "/plivo/media"
            closed: list[tuple[float, str | None]] = []
            pool_full = trio.Event()
            opened = 0

            async def bare(started_at: float) -> None:
                nonlocal opened
                async with raw_websocket(media) as ws:
                    opened += 1
                    if opened == UNAUTHENTICATED_STREAMS:
                        pool_full.set()
                    with pytest.raises(ConnectionClosed):
                        await ws.get_message()
                    assert ws.closed is not None
                    closed.append((trio.current_time() - started_at, ws.closed.reason))

            async with trio.open_nursery() as nursery:
                began = trio.current_time()
                for _ in range(UNAUTHENTICATED_STREAMS):
                    nursery.start_soon(bare, began)
                await pool_full.wait()
                with pytest.raises(ConnectionRejected) as over:
                    async with raw_websocket(media):
                        pass
                result = await place_call(server, seconds=0.3)
            await server.app.registry.wait_empty()
            samples = await scrape(server)
    assert over.value.status_code == 503
    assert result.rejected_status is None and result.close_reason == "caller_stop"
    assert len(closed) == UNAUTHENTICATED_STREAMS
    assert all(reason == "start_timeout" for _, reason in closed)
    assert all(
        UNAUTHENTICATED_START_TIMEOUT <= took < UNAUTHENTICATED_START_TIMEOUT + 1.5
        for took, _ in closed
    )
    assert rejected(samples, "capacity") == 1
    assert disconnects(samples)["start_timeout"] == UNAUTHENTICATED_STREAMS
    assert len(agent.sessions) == 1  # the Twilio call's; no bare socket reached the provider


# --- a webhook answer that cannot be built (finding 3) -------------------------------------------


async def test_an_answer_that_cannot_be_built_is_a_400_counted_bad_request() -> None:
    """Vonage's answer webhook with a 600-character ``uuid`` (no checks, loopback): its call id
    goes into the websocket headers, over Vonage's 512-byte limit, so no answer can be built: a
    400 counted ``bad_request`` (before: an uncaught ValueError, HTTP 500)."""
    import json

    with trio.fail_after(BUDGET):
        async with running() as (server, _):
            async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
                long = await client.post(
                    "/vonage/answer",
                    content=json.dumps({"uuid": "u" * 600, "to": "447700900000"}),
                    headers={"content-type": "application/json"},
                )
                fine = await client.post(
                    "/vonage/answer",
                    content=json.dumps({"uuid": "u" * 40, "to": "447700900000"}),
                    headers={"content-type": "application/json"},
                )
            samples = await scrape(server)
    assert long.status_code == 400 and "cannot answer this call" in long.text
    assert fine.status_code == 200
    assert rejected(samples, "bad_request") == 1


# --- an oversized carrier frame (finding 10) -----------------------------------------------------


@pytest.mark.parametrize("carrier", ["twilio", "telnyx", "plivo", "vonage"])
@pytest.mark.parametrize("frame", ["text", "binary"])
async def test_a_frame_over_the_size_limit_ends_protocol_error(carrier: str, frame: str) -> None:
    """A started stream sends a 70 KiB frame (over ``websocket_max_message_size``, 64 KiB):
    hypercorn closes 1009 and the call ends ``protocol_error`` (before: ``caller_closed``, as
    if the caller had hung up)."""
    from trio_websocket import ConnectionClosed

    from voxbridge.testing.carrier import wire_for
    from voxbridge.testing.carrier_wire import SimulatedCall

    huge: str | bytes = "x" * (70 * 1024) if frame == "text" else b"\x00" * (70 * 1024)
    wire = wire_for(carrier)
    call = SimulatedCall(new_call_sid(), "MZ" + secrets.token_hex(16), "AC" + "0" * 32, {})
    with trio.fail_after(BUDGET):
        async with running() as (server, _):
            media = server.url.replace("http://", "ws://", 1) + f"/{carrier}/media"
            async with raw_websocket(media) as ws:
                for handshake in wire.handshake(call):
                    await ws.send_message(handshake)
                await ws.send_message(wire.audio(call, b"\xff" * 160))
                with trio.fail_after(5):  # the call has started
                    while not sum(
                        value
                        for (name, _), value in (await scrape(server)).items()
                        if name == "voxbridge_calls_started_total"
                    ):
                        await trio.sleep(0.01)
                await ws.send_message(huge)
                with pytest.raises(ConnectionClosed):
                    while True:
                        await ws.get_message()
            assert ws.closed is not None
            await server.app.registry.wait_empty()
            samples = await scrape(server)
    assert ws.closed.code == 1009
    assert {reason: n for reason, n in disconnects(samples).items() if n} == {"protocol_error": 1}
