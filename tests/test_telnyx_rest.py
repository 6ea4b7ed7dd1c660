"""``TelnyxRest`` against the fake Telnyx over real loopback HTTP, with the official ``telnyx``
client as the oracle for what is sent.

The oracle: ``telnyx.AsyncTelnyx`` (httpx underneath, so it runs under trio), pointed at the same
fake, performs the same commands; the fake records both, and the requests must match (method,
path, JSON body, Bearer key, content type). Errors: Telnyx's JSON errors from the fake (401, 422
code 90018), a port nothing listens on, a server that never answers (a real, short timeout, and
the caller's own cancel scope), and httpx's ``MockTransport`` for odd answers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import trio
from telnyx import AsyncTelnyx

from voxbridge.carriers.base import CarrierRestError
from voxbridge.carriers.telnyx_rest import API_URL, TelnyxRest
from voxbridge.carriers.telnyx_webhooks import TelnyxSettings, rest
from voxbridge.testing.fake_telnyx import FakeTelnyx, RestRequest

KEY = "KEY0199A1B2C3D4E5F6_secretpart"
CALL = "v3:MdI91X4lWFEs7IgbBEOT9M4AigoY08M0WWZFISt1Yw2axZ_IiE4pqg"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelnyx]:
    fake = FakeTelnyx(api_key=KEY)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        yield fake
        nursery.cancel_scope.cancel()


def api(fake: FakeTelnyx, key: str = KEY, **options: float) -> TelnyxRest:
    assert fake.base_url is not None
    return TelnyxRest(key, base_url=fake.base_url, **options)


def official(fake: FakeTelnyx) -> AsyncTelnyx:
    return AsyncTelnyx(api_key=KEY, base_url=fake.base_url, max_retries=0)


def wire(request: RestRequest) -> tuple[object, ...]:
    return (
        request.method,
        request.path,
        request.body,
        request.authorized,
        (request.content_type or "").split(";")[0],
        request.status,
    )


async def test_hangup_is_what_the_official_client_sends(fake: FakeTelnyx) -> None:
    await api(fake).complete(CALL)
    async with official(fake) as client:
        await client.calls.actions.hangup(call_control_id="v3:other")
    ours, theirs = fake.requests
    assert wire(ours) == (
        "POST",
        f"/v2/calls/{CALL}/actions/hangup",
        {},
        True,
        "application/json",
        200,
    )
    assert wire(theirs) == (*wire(ours)[:1], "/v2/calls/v3:other/actions/hangup", *wire(ours)[2:])
    assert fake.hangups == [CALL, "v3:other"]


async def test_transfer_is_what_the_official_client_sends(fake: FakeTelnyx) -> None:
    await api(fake).transfer(CALL, "+15551230000")
    async with official(fake) as client:
        await client.calls.actions.transfer(call_control_id=CALL, to="sip:desk@example.com")
    ours, theirs = fake.requests
    assert wire(ours) == (
        "POST",
        f"/v2/calls/{CALL}/actions/transfer",
        {"to": "+15551230000"},
        True,
        "application/json",
        200,
    )
    assert wire(theirs)[:2] == wire(ours)[:2] and theirs.body == {"to": "sip:desk@example.com"}
    assert wire(theirs)[3:] == wire(ours)[3:]
    assert fake.transfers == [(CALL, "+15551230000"), (CALL, "sip:desk@example.com")]
    assert TelnyxRest(KEY).can_transfer


async def test_hanging_up_an_ended_call_is_done(fake: FakeTelnyx) -> None:
    fake.end(CALL)
    await api(fake).complete(CALL)  # 422, code 90018: no error
    assert [r.status for r in fake.requests] == [422]
    assert fake.hangups == []
    await api(fake).complete("v3:live")
    await api(fake).complete("v3:live")  # twice: the second finds it ended
    assert [r.status for r in fake.requests] == [422, 200, 422]


async def test_transfer_of_an_ended_call_is_refused(fake: FakeTelnyx) -> None:
    fake.end(CALL)
    with pytest.raises(CarrierRestError) as info:
        await api(fake).transfer(CALL, "+15551230000")
    assert (info.value.status, info.value.code) == (422, 90018)
    assert "Call has already ended" in str(info.value)


async def test_a_wrong_key_is_refused_and_never_quoted(fake: FakeTelnyx) -> None:
    wrong = "KEYwrong_0123456789"
    with pytest.raises(CarrierRestError) as info:
        await api(fake, wrong).complete(CALL)
    assert (info.value.status, info.value.code) == (401, 10009)
    assert wrong not in str(info.value) and KEY not in str(info.value)
    assert fake.requests[0].authorized is False and fake.hangups == []


async def test_a_bad_target_sends_nothing(fake: FakeTelnyx) -> None:
    with pytest.raises(ValueError, match=r"E\.164"):
        await api(fake).transfer(CALL, "desk")
    assert fake.requests == []


async def test_nothing_listening_is_a_transport_error() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = TelnyxRest(KEY, base_url=f"http://127.0.0.1:{port}/v2")
    with pytest.raises(CarrierRestError, match="POST failed: ConnectError") as info:
        await client.complete(CALL)
    assert info.value.status is None and KEY not in str(info.value)


async def _silent_server(task_status: trio.TaskStatus[int]) -> None:
    """Accepts connections and never answers."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    streams: list[trio.SocketStream] = []
    try:
        async with listeners[0]:
            while True:
                streams.append(await listeners[0].accept())
    finally:
        for stream in streams:
            stream.socket.close()  # synchronous: this runs while being cancelled


async def test_its_own_timeout_bounds_a_request() -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_silent_server)
        client = TelnyxRest(KEY, base_url=f"http://127.0.0.1:{port}/v2", timeout=0.3)
        started = trio.current_time()
        with pytest.raises(CarrierRestError, match=r"no answer within 0\.3 s") as info:
            await client.complete(CALL)
        assert info.value.status is None
        assert 0.29 <= trio.current_time() - started < 2.0
        nursery.cancel_scope.cancel()


async def test_the_callers_cancel_scope_cancels_a_request() -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_silent_server)
        client = TelnyxRest(KEY, base_url=f"http://127.0.0.1:{port}/v2", timeout=30)
        started = trio.current_time()
        with trio.move_on_after(0.2) as scope:
            await client.complete(CALL)
        assert scope.cancelled_caught and trio.current_time() - started < 2.0
        nursery.cancel_scope.cancel()


def mocked(handler: Callable[[httpx.Request], httpx.Response]) -> TelnyxRest:
    return TelnyxRest(
        KEY,
        base_url="https://api.example/v2",
        client_factory=lambda: httpx.AsyncClient(transport=httpx.MockTransport(handler)),
    )


async def test_a_call_id_cannot_steer_the_path() -> None:
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path)
        return httpx.Response(200, json={"data": {"result": "ok"}})

    await mocked(handler).complete("v3:a/../b?x#y")
    assert seen == [b"/v2/calls/v3%3Aa%2F..%2Fb%3Fx%23y/actions/hangup"]


@pytest.mark.parametrize(
    ("status", "body", "match", "code"),
    [
        (500, "<html> oops </html>", "HTTP 500: <html> oops </html>", None),
        (503, "", "HTTP 503: Service Unavailable", None),
        (
            422,
            json.dumps({"errors": [{"code": "10015", "title": "Bad", "detail": "no"}]}),
            "error 10015: Bad: no",
            10015,
        ),
        (
            422,
            json.dumps({"errors": [{"code": 90018, "title": "gone"}]}),
            "error 90018: gone",
            90018,
        ),
        (400, json.dumps({"errors": [{"code": "x" * 50}]}), "HTTP 400: .no detail.", None),
        (400, json.dumps({"errors": []}), 'HTTP 400: {"errors": \\[\\]}', None),
        (200, "not json", "HTTP 200 with a body that is not a JSON object", None),
        (200, "[]", "HTTP 200 with a body that is not a JSON object", None),
    ],
)
async def test_odd_answers(status: int, body: str, match: str, code: int | None) -> None:
    client = mocked(lambda request: httpx.Response(status, text=body))
    with pytest.raises(CarrierRestError, match=match) as info:
        await client.transfer(CALL, "+15551230000")
    assert info.value.code == code
    assert info.value.status == (status if status != 200 else None)


async def test_a_key_echoed_in_an_error_is_redacted() -> None:
    client = mocked(lambda r: httpx.Response(403, json={"errors": [{"title": f"bad key {KEY}"}]}))
    with pytest.raises(CarrierRestError) as info:
        await client.complete(CALL)
    assert KEY not in str(info.value) and "<redacted>" in str(info.value)


def test_from_settings() -> None:
    assert rest(None, TelnyxSettings()) is None  # type: ignore[arg-type]
    client = rest(None, TelnyxSettings(api_key=KEY))  # type: ignore[arg-type]
    assert client is not None and client.base_url == API_URL
    local = TelnyxRest.from_settings(TelnyxSettings(api_key=KEY, api_url="http://127.0.0.1:9/v2/"))
    assert local is not None and local.base_url == "http://127.0.0.1:9/v2"
    assert KEY not in repr(local)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("", API_URL, 1.0), "API key"),
        ((KEY, "ftp://x", 1.0), "http"),
        ((KEY, API_URL, 0.0), "positive"),
    ],
)
def test_bad_construction(args: tuple[str, str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TelnyxRest(args[0], base_url=args[1], timeout=args[2])
