"""The fake Twilio: its REST API, the calls it places, and a real voxbridge server taking them.

Real sockets on loopback throughout, each test under a real-time budget: the fake's REST API
(hypercorn), a tiny TwiML application (:class:`TwimlApp`, also hypercorn) that records the
webhooks it gets and answers what the test says, and for the end-to-end tests a voxbridge server
with signatures on (``--twilio-auth-token``, ``--public-url`` on a public name the fake routes to
the loopback server, as the security e2e tests do) bridged to the echo agent. Requests to the
fake are made with :class:`~voxbridge.carriers.twilio_rest.TwilioRest` (tests/test_twilio_rest.py
checks that it sends what the official client sends) or with raw httpx for the refusals.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl

import attrs
import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from test_e2e_server import running
from twilio.request_validator import RequestValidator

from voxbridge.carriers.twilio_rest import TwilioRest, dial_twiml, hangup_twiml
from voxbridge.server import RunningServer
from voxbridge.server.security import webhook_url
from voxbridge.testing.fake_twilio import FakeCall, FakeTwilio, route_to

BUDGET = 20.0  # seconds of real time per test
ACCOUNT = "AC" + "1" * 32
TOKEN = secrets.token_hex(16)
PUBLIC = "https://voice.example.test"
TO, FROM = "+15550101000", "+15550102000"
HANGUP = '<?xml version="1.0" encoding="UTF-8"?><Response><Hangup/></Response>'
OUTBOUND = ["queued", "ringing", "in-progress", "completed"]


# --- a TwiML application -------------------------------------------------------------------------


@attrs.frozen
class HookRequest:
    """One request :class:`TwimlApp` received."""

    path: str
    query: str
    form: dict[str, str]
    headers: dict[str, str]


class TwimlApp:
    """A voice webhook: answers every POST with ``await answer(request)`` (``<Hangup/>`` by
    default) as ``text/xml``, and records each request."""

    def __init__(self, answer: Callable[[HookRequest], Awaitable[str]] | None = None) -> None:
        self.answer = answer
        self.requests: list[HookRequest] = []
        self.url = ""
        self._changed = trio.Event()

    async def wait_for(self, count: int) -> list[HookRequest]:
        """Wait until ``count`` requests have arrived (bounded by the test's budget)."""
        while len(self.requests) < count:
            await self._changed.wait()
        return self.requests

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = HookRequest(
            path=scope["path"],
            query=scope["query_string"].decode(),
            form=dict(parse_qsl(body.decode(), keep_blank_values=True)),
            headers={k.decode().lower(): v.decode() for k, v in scope["headers"]},
        )
        self.requests.append(request)
        self._changed.set()
        self._changed = trio.Event()
        twiml = HANGUP if self.answer is None else await self.answer(request)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/xml")],
            }
        )
        await send({"type": "http.response.body", "body": twiml.encode()})

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        config.graceful_timeout = 0.5
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(hypercorn_serve, self, config)
            self.url = str(binds[0])
            task_status.started(self.url)


@asynccontextmanager
async def twilio_and_app(
    fake: FakeTwilio, app: TwimlApp | None = None
) -> AsyncIterator[tuple[TwilioRest, TwimlApp]]:
    """``fake`` and ``app`` serving; a REST client of the fake with the account's credentials."""
    app = app or TwimlApp()
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            api = await nursery.start(fake.serve)
            await nursery.start(app.serve)
            yield TwilioRest(fake.account_sid, (fake.account_sid, TOKEN), base_url=api), app
            nursery.cancel_scope.cancel()


def valid_signature(url: str, form: dict[str, str], signature: str | None) -> bool:
    return bool(RequestValidator(TOKEN).validate(url, form, signature or ""))


# --- the call flow, against a TwiML application ---------------------------------------------------


async def test_an_outbound_call_rings_posts_a_signed_webhook_and_hangs_up_on_hangup() -> None:
    fake = FakeTwilio(ACCOUNT, auth_token=TOKEN, answered_by="machine_end_beep")
    async with twilio_and_app(fake) as (rest, app):
        url = f"{app.url}/twilio/voice?agent=sales"
        sid = await rest.create_call(TO, FROM, url, machine_detection="DetectMessageEnd")
        call = await fake.calls[sid].wait_ended()
    assert call.statuses == OUTBOUND
    assert call.status == "completed"
    assert call.answered_by == "machine_end_beep"
    assert call.verbs == ["Hangup"]
    assert call.errors == []
    assert call.stream_url is None
    expected_form = {
        "AccountSid": ACCOUNT,
        "ApiVersion": "2010-04-01",
        "CallSid": sid,
        "CallStatus": "in-progress",
        "Called": TO,
        "Caller": FROM,
        "Direction": "outbound-api",
        "From": FROM,
        "To": TO,
        "AnsweredBy": "machine_end_beep",
    }
    [hook] = app.requests
    assert (hook.path, hook.query, hook.form) == ("/twilio/voice", "agent=sales", expected_form)
    assert valid_signature(url, hook.form, hook.headers.get("x-twilio-signature"))
    [webhook] = call.webhooks
    assert (webhook.kind, webhook.url, webhook.status, webhook.body) == ("voice", url, 200, HANGUP)


async def test_without_machine_detection_there_is_no_answered_by_and_without_a_token_no_signature() -> (
    None
):
    fake = FakeTwilio(ACCOUNT, credentials=[(ACCOUNT, TOKEN)])
    async with twilio_and_app(fake) as (rest, app):
        sid = await rest.create_call(TO, FROM, f"{app.url}/twilio/voice")
        call = await fake.calls[sid].wait_ended()
    [hook] = app.requests
    assert "AnsweredBy" not in hook.form
    assert "x-twilio-signature" not in hook.headers
    assert call.answered_by is None
    resource = call.resource()
    assert (resource["answered_by"], resource["status"]) == (None, "completed")


@pytest.mark.parametrize("outcome", ["busy", "no-answer", "failed"])
async def test_an_unanswered_call_ends_with_its_outcome_and_no_webhook(outcome: str) -> None:
    fake = FakeTwilio(ACCOUNT, auth_token=TOKEN, outcome=outcome)
    async with twilio_and_app(fake) as (rest, app):
        sid = await rest.create_call(TO, FROM, f"{app.url}/twilio/voice")
        call = await fake.calls[sid].wait_ended()
        fetched = await rest.fetch_call(sid)
    assert call.statuses == ["queued", "ringing", outcome]
    assert fetched["status"] == outcome
    assert app.requests == []


async def test_the_status_callback_gets_the_final_status_signed() -> None:
    fake = FakeTwilio(ACCOUNT, auth_token=TOKEN)
    async with twilio_and_app(fake) as (rest, app):
        callback = f"{app.url}/status"
        sid = await rest.create_call(TO, FROM, f"{app.url}/twilio/voice", status_callback=callback)
        call = await fake.calls[sid].wait_ended()
        voice, status = await app.wait_for(2)  # the callback follows the end
    assert voice.path == "/twilio/voice"
    assert (status.path, status.form["CallStatus"], status.form["CallSid"]) == (
        "/status",
        "completed",
        sid,
    )
    assert valid_signature(callback, status.form, status.headers.get("x-twilio-signature"))
    assert [w.kind for w in call.webhooks] == ["voice", "status"]


async def test_a_redirect_while_the_webhook_is_pending_runs_the_new_twiml_and_records_the_dial() -> (
    None
):
    asked = trio.Event()

    async def hold(request: HookRequest) -> str:
        asked.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    fake = FakeTwilio(ACCOUNT, auth_token=TOKEN)
    async with twilio_and_app(fake, TwimlApp(hold)) as (rest, app):
        sid = await rest.create_call(TO, FROM, f"{app.url}/twilio/voice")
        await asked.wait()
        await rest.redirect(sid, dial_twiml("sip:desk@example.com"))
        call = await fake.calls[sid].wait_ended()
    assert fake.dialled == {sid: "sip:desk@example.com"}
    assert call.dialled == "sip:desk@example.com"
    assert call.verbs == ["Dial"]
    assert call.statuses == OUTBOUND
    assert call.documents == [dial_twiml("sip:desk@example.com")]


async def test_complete_while_ringing_cancels_and_while_the_webhook_is_pending_completes() -> None:
    asked = trio.Event()

    async def hold(request: HookRequest) -> str:
        asked.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    fake = FakeTwilio(ACCOUNT, auth_token=TOKEN, ring_seconds=60)
    async with twilio_and_app(fake, TwimlApp(hold)) as (rest, app):
        ringing = await rest.create_call(TO, FROM, f"{app.url}/twilio/voice")
        await rest.complete(ringing)
        first = await fake.calls[ringing].wait_ended()
        fake.ring_seconds = 0
        answered = await rest.create_call(TO, FROM, f"{app.url}/twilio/voice")
        await asked.wait()
        await rest.complete(answered)
        second = await fake.calls[answered].wait_ended()
    assert first.statuses == ["queued", "ringing", "canceled"]
    assert second.statuses == OUTBOUND
    assert len(app.requests) == 1  # the ringing call never reached the webhook
    assert second.verbs == []


async def test_twiml_in_create_runs_without_a_webhook() -> None:
    fake = FakeTwilio(ACCOUNT, auth_token=TOKEN)
    async with twilio_and_app(fake) as (rest, app):
        response = await _raw(
            rest,
            "POST",
            "/Calls.json",
            {"To": TO, "From": FROM, "Twiml": dial_twiml("+15550103000")},
        )
        assert response.status_code == 201
        call = await fake.calls[response.json()["sid"]].wait_ended()
    assert (call.verbs, call.dialled, app.requests) == (["Dial"], "+15550103000", [])


async def test_a_failing_webhook_is_error_11200_and_the_call_completes() -> None:
    fake = FakeTwilio(ACCOUNT, auth_token=TOKEN)
    async with twilio_and_app(fake) as (rest, app):
        sid = await rest.create_call(TO, FROM, f"{app.url}/nowhere")  # TwimlApp answers any path
        await fake.calls[sid].wait_ended()
        unreachable = await rest.create_call(TO, FROM, "http://127.0.0.1:1/twilio/voice")
        call = await fake.calls[unreachable].wait_ended()
    assert call.statuses == OUTBOUND
    [error] = call.errors
    assert error.startswith("11200 HTTP retrieval failure: ConnectError")


# --- REST refusals ---------------------------------------------------------------------------------


async def _raw(
    rest: TwilioRest,
    method: str,
    path: str,
    form: dict[str, str] | None = None,
    auth: tuple[str, str] | None = (ACCOUNT, TOKEN),
    account: str = ACCOUNT,
) -> httpx.Response:
    url = f"{rest.base_url}/2010-04-01/Accounts/{account}{path}"
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.request(method, url, data=form, auth=auth)


def _twilio_error(status: int, code: int, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


async def test_refusals_have_twilio_codes_and_shapes() -> None:
    fake = FakeTwilio(ACCOUNT, auth_token=TOKEN)
    async with twilio_and_app(fake) as (rest, app):
        sid = await rest.create_call(TO, FROM, f"{app.url}/twilio/voice")
        await fake.calls[sid].wait_ended()
        unknown = "CA" + "0" * 32
        cases = [
            (("GET", f"/Calls/{sid}.json", None, None), 401, 20003, "Authenticate"),
            (("GET", f"/Calls/{sid}.json", None, (ACCOUNT, "wrong")), 401, 20003, "Authenticate"),
            (
                ("GET", f"/Calls/{unknown}.json"),
                404,
                20404,
                f"The requested resource /2010-04-01/Accounts/{ACCOUNT}/Calls/{unknown}.json was not found",
            ),
            (
                ("POST", f"/Calls/{sid}.json", {"Twiml": hangup_twiml()}),
                400,
                21220,
                "Call is not in-progress. Cannot redirect.",
            ),
            (("POST", "/Calls.json", {"From": FROM, "Url": app.url}), 400, 21201, None),
            (("POST", "/Calls.json", {"To": TO, "Url": app.url}), 400, 21213, None),
            (("POST", "/Calls.json", {"To": TO, "From": FROM}), 400, 21205, None),
            (("DELETE", f"/Calls/{sid}.json"), 405, 20004, "Method not allowed"),
        ]
        for args, status, code, message in cases:
            response = await _raw(rest, *args)  # type: ignore[arg-type]
            body = response.json()
            assert (response.status_code, body["code"], body["status"]) == (status, code, status)
            assert body["more_info"] == f"https://www.twilio.com/docs/errors/{code}"
            if message is not None:
                assert body["message"] == message
        other_account = await _raw(rest, "GET", f"/Calls/{sid}.json", account="AC" + "2" * 32)
        completed_again = await _raw(rest, "POST", f"/Calls/{sid}.json", {"Status": "completed"})
    assert other_account.status_code == 404
    assert completed_again.status_code == 200
    assert completed_again.json()["status"] == "completed"
    assert fake.calls[sid].statuses == OUTBOUND  # unchanged by the second hang-up
    unauthenticated = fake.requests[-len(cases) - 2]
    assert (unauthenticated.username, unauthenticated.status) == (None, 401)
    assert fake.requests[-len(cases) - 1].username == ACCOUNT


async def test_an_api_key_authenticates_for_the_account() -> None:
    key, secret = "SK" + "3" * 32, secrets.token_hex(16)
    fake = FakeTwilio(ACCOUNT, credentials=[(key, secret)], auth_token=TOKEN)
    async with twilio_and_app(fake) as (rest, app):
        keyed = TwilioRest(ACCOUNT, (key, secret), base_url=rest.base_url)
        sid = await keyed.create_call(TO, FROM, f"{app.url}/twilio/voice")
        refused = await _raw(rest, "GET", f"/Calls/{sid}.json")  # the auth token is not a key
    assert refused.status_code == 401
    assert fake.requests[0].username == key


def test_route_to_maps_public_urls_to_the_local_server() -> None:
    route = route_to("https://voice.example.test/vox", "http://127.0.0.1:8080")
    assert route("https://voice.example.test/vox/twilio/voice?agent=a") == (
        "http://127.0.0.1:8080/twilio/voice?agent=a"
    )
    assert route("wss://voice.example.test/vox/twilio/media") == "ws://127.0.0.1:8080/twilio/media"
    assert route("https://other.example.test/vox/twilio/voice") == (
        "https://other.example.test/vox/twilio/voice"
    )
    secure = route_to("https://voice.example.test", "https://10.0.0.1:8443/base")
    assert (
        secure("wss://voice.example.test/twilio/media") == "wss://10.0.0.1:8443/base/twilio/media"
    )


def test_knobs_are_checked() -> None:
    with pytest.raises(ValueError, match="answered_by"):
        FakeTwilio(answered_by="robot")
    with pytest.raises(ValueError, match="outcome"):
        FakeTwilio(outcome="completed")


async def test_inbound_call_needs_the_fake_serving() -> None:
    with pytest.raises(RuntimeError, match=r"fake\.serve"):
        await FakeTwilio().inbound_call("http://127.0.0.1:1/twilio/voice")


# --- end to end: the fake calls a real voxbridge server ------------------------------------------


@asynccontextmanager
async def voxbridge_and_twilio(
    **knobs: Any,
) -> AsyncIterator[tuple[RunningServer, FakeTwilio, TwilioRest]]:
    """A voxbridge server (signatures on, public URL routed to it) and a fake Twilio that
    signs with the server's token."""
    with trio.fail_after(BUDGET):
        async with running(public_url=PUBLIC, twilio_auth_token=TOKEN) as (server, _agent):
            fake = FakeTwilio(
                ACCOUNT, auth_token=TOKEN, route=route_to(PUBLIC, server.url), **knobs
            )
            async with trio.open_nursery() as nursery:
                api = await nursery.start(fake.serve)
                yield server, fake, TwilioRest(ACCOUNT, (ACCOUNT, TOKEN), base_url=api)
                nursery.cancel_scope.cancel()


def _streamed(call: FakeCall) -> None:
    """The call went through voxbridge's webhook and stream, and the bridge closed it."""
    assert call.errors == []
    assert [w.status for w in call.webhooks] == [200]
    assert call.verbs[0] == "Connect"
    assert call.stream_url == "wss://voice.example.test/twilio/media"
    assert set(call.stream_parameters) == {"voxbridge_token"}  # voxbridge's per-call token
    assert call.result is not None
    assert call.result.call_sid == call.sid
    assert call.result.rejected_status is None
    assert call.result.close_code == 1000


async def test_an_outbound_call_streams_to_voxbridge_and_hears_the_echo() -> None:
    async with voxbridge_and_twilio(caller_seconds=1.0) as (_server, fake, rest):
        sid = await rest.create_call(TO, FROM, webhook_url(PUBLIC))
        call = await fake.calls[sid].wait_ended()
    _streamed(call)
    assert call.verbs == ["Connect"]
    assert call.statuses == OUTBOUND
    assert call.result is not None
    assert call.result.frames_sent == 50  # 1 s of 20 ms frames, then stop
    assert call.result.frames_received > 0  # the echo agent's audio
    assert call.result.close_reason == "caller_stop"


async def test_rest_complete_stops_an_inbound_stream_at_once() -> None:
    async with voxbridge_and_twilio(caller_seconds=60.0) as (_server, fake, rest):
        call = await fake.inbound_call(webhook_url(PUBLIC), to=TO, from_=FROM, wait=False)
        await call.stream_started.wait()
        with trio.fail_after(5):
            while call.result is None or call.result.frames_received == 0:
                await trio.sleep(0.01)  # polled: the echo's first audio has no event
        asked = trio.current_time()
        await rest.complete(call.sid)
        await call.wait_ended()
        took = trio.current_time() - asked
    _streamed(call)
    assert call.verbs == ["Connect"]
    assert call.statuses == ["ringing", "in-progress", "completed"]
    assert call.direction == "inbound"
    assert call.webhooks[0].form["Direction"] == "inbound"
    assert call.webhooks[0].form["CallStatus"] == "ringing"
    assert call.result is not None
    assert call.result.close_reason == "caller_stop"  # the fake sent stop; the bridge closed
    assert call.result.frames_sent < 60 / 0.02
    assert took < 3


async def test_rest_redirect_to_dial_stops_the_stream_and_records_the_target() -> None:
    async with voxbridge_and_twilio(caller_seconds=60.0) as (_server, fake, rest):
        call = await fake.inbound_call(webhook_url(PUBLIC), to=TO, from_=FROM, wait=False)
        await call.stream_started.wait()
        await rest.redirect(call.sid, dial_twiml("+15550104000"))
        await call.wait_ended()
    _streamed(call)
    assert fake.dialled == {call.sid: "+15550104000"}
    assert call.verbs == ["Connect", "Dial"]
    assert call.statuses == ["ringing", "in-progress", "completed"]
