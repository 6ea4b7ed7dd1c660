"""``TwilioRest``: what it sends (the official ``twilio`` client as the oracle), its errors, TwiML.

The oracle: ``twilio.rest.Client``, with an HTTP client that sends its requests to the fake
Twilio instead of api.twilio.com, performs the same operations as ``TwilioRest``; the fake records
both, and the requests must match (method, path, form fields, Basic auth username, content type
and accept). The official client is synchronous, so it runs in a worker thread. Error mapping is
tested against the fake (Twilio's JSON errors), a port nothing listens on, a server that never
answers (a real, short timeout), and httpx's ``MockTransport`` for odd answers.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from functools import partial
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest
import trio
from test_fake_twilio import ACCOUNT, BUDGET, FROM, TO, TOKEN, HookRequest, TwimlApp, twilio_and_app
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from voxbridge.carriers.twilio_rest import (
    API_URL,
    TwilioRest,
    TwilioRestError,
    dial_twiml,
    hangup_twiml,
)
from voxbridge.settings import Settings
from voxbridge.testing.fake_twilio import FakeTwilio, RestRequest


class FakeHostClient(TwilioHttpClient):  # type: ignore[misc]  # untyped base
    """The official HTTP client, sending what it would send to api.twilio.com to ``base_url``."""

    def __init__(self, base_url: str) -> None:
        super().__init__(timeout=5)
        self.base_url = base_url

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        assert url.startswith("https://api.twilio.com/")
        return super().request(method, self.base_url + url.removeprefix(API_URL), *args, **kwargs)


def _wire(request: RestRequest, sid: str, placeholder: str) -> tuple[Any, ...]:
    return (
        request.method,
        request.path.replace(sid, placeholder),
        request.form,
        request.username,
        request.content_type,
        request.accept,
        request.status,
    )


async def test_requests_equal_the_official_clients() -> None:
    asked = trio.Event()

    async def hold(request: HookRequest) -> str:  # keeps each call in progress until redirected
        asked.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    fake = FakeTwilio(ACCOUNT, auth_token=TOKEN)
    async with twilio_and_app(fake, TwimlApp(hold)) as (ours, app):
        http = FakeHostClient(ours.base_url)
        official = Client(ACCOUNT, TOKEN, http_client=http)
        url, callback, transfer = f"{app.url}/twilio/voice", f"{app.url}/status", "+15550105000"

        async def in_thread(operation: Callable[[], Any]) -> Any:
            return await trio.to_thread.run_sync(operation, abandon_on_cancel=True)

        try:
            # ours
            our_sid = await ours.create_call(
                TO, FROM, url, machine_detection="Enable", status_callback=callback
            )
            await asked.wait()
            asked = trio.Event()
            our_call = await ours.fetch_call(our_sid)
            await ours.redirect(our_sid, dial_twiml(transfer))
            await ours.complete(our_sid)
            mark = len(fake.requests)
            # the official client, the same operations
            created = await in_thread(
                lambda: official.calls.create(
                    to=TO,
                    from_=FROM,
                    url=url,
                    method="POST",
                    machine_detection="Enable",
                    status_callback=callback,
                )
            )
            await asked.wait()
            fetched = await in_thread(lambda: official.calls(created.sid).fetch())
            await in_thread(lambda: official.calls(created.sid).update(twiml=dial_twiml(transfer)))
            await in_thread(lambda: official.calls(created.sid).update(status="completed"))
        finally:
            http.session.close()
        for sid in (our_sid, created.sid):
            await fake.calls[sid].wait_ended()
    ours_sent = [_wire(r, our_sid, "{sid}") for r in fake.requests[:mark]]
    official_sent = [_wire(r, created.sid, "{sid}") for r in fake.requests[mark:]]
    assert ours_sent == official_sent
    assert [r[:3] for r in ours_sent] == [
        (
            "POST",
            f"/2010-04-01/Accounts/{ACCOUNT}/Calls.json",
            {
                "To": TO,
                "From": FROM,
                "Url": url,
                "Method": "POST",
                "MachineDetection": "Enable",
                "StatusCallback": callback,
            },
        ),
        ("GET", f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{{sid}}.json", {}),
        (
            "POST",
            f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{{sid}}.json",
            {"Twiml": f"<Response><Dial><Number>{transfer}</Number></Dial></Response>"},
        ),
        ("POST", f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{{sid}}.json", {"Status": "completed"}),
    ]
    # what each side read back from the same answers
    assert (our_call["sid"], our_call["status"], our_call["answered_by"]) == (
        our_sid,
        "in-progress",
        "human",
    )
    assert (fetched.sid, fetched.status, fetched.answered_by, fetched.direction) == (
        created.sid,
        "in-progress",
        "human",
        "outbound-api",
    )
    assert fake.dialled == {our_sid: transfer, created.sid: transfer}


async def test_complete_counts_a_call_twilio_no_longer_knows_as_done() -> None:
    fake = FakeTwilio(ACCOUNT, auth_token=TOKEN)
    async with twilio_and_app(fake) as (rest, _app):
        await rest.complete("CA" + "0" * 32)
        with pytest.raises(TwilioRestError) as fetched:
            await rest.fetch_call("CA" + "0" * 32)
    assert (fetched.value.status, fetched.value.code) == (404, 20404)
    assert fetched.value.more_info == "https://www.twilio.com/docs/errors/20404"
    assert [r.status for r in fake.requests] == [404, 404]


async def test_a_refusal_carries_twilios_code_and_message_and_never_the_secret() -> None:
    fake = FakeTwilio(ACCOUNT, auth_token=TOKEN)
    wrong = secrets.token_hex(16)
    async with twilio_and_app(fake) as (rest, app):
        client = TwilioRest(ACCOUNT, (ACCOUNT, wrong), base_url=rest.base_url)
        with pytest.raises(TwilioRestError) as refused:
            await client.create_call(TO, FROM, app.url)
    error = refused.value
    assert (error.status, error.code, error.message) == (401, 20003, "Authenticate")
    assert str(error) == "Twilio REST API: HTTP 401, error 20003: Authenticate"
    for text in (str(error), repr(error), repr(client)):
        assert wrong not in text
    assert repr(client) == (
        f"TwilioRest(account_sid='{ACCOUNT}', base_url='{rest.base_url}', credentials=<set>)"
    )


async def test_an_unreachable_api_is_an_error_without_a_status() -> None:
    with trio.socket.socket() as sock:  # a port that was free a moment ago: refused
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = TwilioRest(ACCOUNT, (ACCOUNT, TOKEN), base_url=f"http://127.0.0.1:{port}")
    with trio.fail_after(BUDGET), pytest.raises(TwilioRestError) as failed:
        await client.complete("CA" + "1" * 32)
    assert (failed.value.status, failed.value.code) == (None, None)
    assert str(failed.value).startswith("Twilio REST API: POST failed: ConnectError")
    assert TOKEN not in str(failed.value)


async def test_an_api_that_never_answers_times_out() -> None:
    async def accept_and_say_nothing(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            serve = partial(trio.serve_tcp, accept_and_say_nothing, 0, host="127.0.0.1")
            [listener] = await nursery.start(serve)
            port = listener.socket.getsockname()[1]
            client = TwilioRest(
                ACCOUNT, (ACCOUNT, TOKEN), base_url=f"http://127.0.0.1:{port}", timeout=0.3
            )
            began = trio.current_time()
            with pytest.raises(TwilioRestError) as timed_out:
                await client.fetch_call("CA" + "1" * 32)
            waited = trio.current_time() - began
            nursery.cancel_scope.cancel()
    assert (timed_out.value.status, str(timed_out.value)) == (
        None,
        "Twilio REST API: no answer within 0.3 s",
    )
    assert 0.3 <= waited < 2


def _mocked(status: int, body: bytes, content_type: str = "application/json") -> TwilioRest:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"content-type": content_type})

    return TwilioRest(
        ACCOUNT,
        (ACCOUNT, TOKEN),
        client_factory=lambda: httpx.AsyncClient(transport=httpx.MockTransport(answer)),
    )


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (502, b"<html>Bad gateway</html>", "Twilio REST API: HTTP 502: <html>Bad gateway</html>"),
        (503, b"", "Twilio REST API: HTTP 503: Service Unavailable"),
        (500, b'{"code": "x", "message": "odd"}', "Twilio REST API: HTTP 500: odd"),
        (500, b"x" * 500, "Twilio REST API: HTTP 500: " + "x" * 197 + "..."),
        (200, b"not json", "Twilio REST API: HTTP 200 with a body that is not a JSON object"),
        (200, b"[]", "Twilio REST API: HTTP 200 with a body that is not a JSON object"),
    ],
)
async def test_odd_answers_are_errors(status: int, body: bytes, expected: str) -> None:
    with pytest.raises(TwilioRestError) as failed:
        await _mocked(status, body).fetch_call("CA" + "1" * 32)
    assert str(failed.value) == expected
    assert failed.value.code is None


async def test_create_needs_a_sid_and_complete_needs_code_20404_to_ignore_a_404() -> None:
    with pytest.raises(TwilioRestError, match="the created call has no sid"):
        await _mocked(201, b'{"status": "queued"}').create_call(TO, FROM, "https://x.test/")
    with pytest.raises(TwilioRestError) as not_twilios:
        await _mocked(404, b"Not Found", "text/plain").complete("CA" + "1" * 32)
    assert (not_twilios.value.status, not_twilios.value.code) == (404, None)
    with pytest.raises(ValueError, match="machine_detection"):
        await _mocked(201, b"{}").create_call(TO, FROM, "https://x.test/", machine_detection="on")


def test_from_settings_prefers_an_api_key_and_needs_an_account() -> None:
    public = "https://voice.example.test"
    assert TwilioRest.from_settings(Settings()) is None
    assert TwilioRest.from_settings(Settings(public_url=public, twilio_auth_token=TOKEN)) is None
    assert TwilioRest.from_settings(Settings(twilio_account_sid=ACCOUNT)) is None
    by_token = TwilioRest.from_settings(
        Settings(public_url=public, twilio_auth_token=f"{TOKEN},next", twilio_account_sid=ACCOUNT)
    )
    assert by_token is not None
    assert (by_token.base_url, by_token._credentials) == (API_URL, (ACCOUNT, TOKEN))
    by_key = TwilioRest.from_settings(
        Settings(
            twilio_account_sid=ACCOUNT,
            twilio_api_key="SK1",
            twilio_api_secret="s3cret",
            twilio_api_url="http://127.0.0.1:9999/",
        )
    )
    assert by_key is not None
    assert (by_key.base_url, by_key._credentials) == ("http://127.0.0.1:9999", ("SK1", "s3cret"))
    assert by_key.call_url("CA1/../x") == (
        f"http://127.0.0.1:9999/2010-04-01/Accounts/{ACCOUNT}/Calls/CA1%2F..%2Fx.json"
    )


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="http"):
        TwilioRest(ACCOUNT, (ACCOUNT, TOKEN), base_url="ftp://api.twilio.com")
    with pytest.raises(ValueError, match="timeout"):
        TwilioRest(ACCOUNT, (ACCOUNT, TOKEN), timeout=0)


@pytest.mark.parametrize(
    ("target", "twiml"),
    [
        ("+15550106000", "<Response><Dial><Number>+15550106000</Number></Dial></Response>"),
        (
            "sip:desk@example.com",
            "<Response><Dial><Sip>sip:desk@example.com</Sip></Dial></Response>",
        ),
        (
            "sips:desk@example.com;transport=tls&x=1",
            "<Response><Dial><Sip>sips:desk@example.com;transport=tls&amp;x=1</Sip></Dial>"
            "</Response>",
        ),
    ],
)
def test_dial_twiml(target: str, twiml: str) -> None:
    assert dial_twiml(target) == twiml
    dial = ElementTree.fromstring(twiml).find("Dial")
    assert dial is not None and dial[0].text == target


@pytest.mark.parametrize("target", ["15550106000", "+1", "tel:+15550106000", "sip:nohost", ""])
def test_dial_twiml_refuses_what_is_not_a_transfer_target(target: str) -> None:
    with pytest.raises(ValueError, match=r"E\.164"):
        dial_twiml(target)


def test_hangup_twiml() -> None:
    assert hangup_twiml() == "<Response><Hangup /></Response>"
