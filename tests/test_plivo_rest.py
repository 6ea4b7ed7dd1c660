"""Plivo's REST client (voxbridge.carriers.plivo_rest) against the fake Plivo over real loopback
HTTP, and its request against the official ``plivo`` client's."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from voxbridge.carriers.base import CarrierRest, CarrierRestError
from voxbridge.carriers.plivo_rest import PlivoRest, PlivoRestError
from voxbridge.testing.fake_plivo import FakePlivo

AUTH_ID = "MAZDQ1ZJNJMDQ0NZMYMJ"
AUTH_TOKEN = "NjA3ZTY1MTFhYjQzMjc5ZDQ4NzY0YmM5ZjU2M2Mx"
CALL = "55309cee-821d-11e4-9a73-498d468c930b"


@pytest.fixture
async def fake(nursery: trio.Nursery) -> AsyncIterator[FakePlivo]:
    plivo = FakePlivo(AUTH_ID, AUTH_TOKEN)
    await nursery.start(plivo.serve)
    yield plivo


def client(fake: FakePlivo, token: str = AUTH_TOKEN, **options: Any) -> PlivoRest:
    return PlivoRest(AUTH_ID, token, base_url=fake.base_url, **options)


def test_is_a_carrier_rest_without_transfer() -> None:
    rest: CarrierRest = PlivoRest(AUTH_ID, AUTH_TOKEN)
    assert rest.can_transfer is False
    assert AUTH_TOKEN not in repr(rest)
    assert rest.call_url("a/b?c") == f"https://api.plivo.com/v1/Account/{AUTH_ID}/Call/a%2Fb%3Fc/"


async def test_transfer_is_not_offered() -> None:
    with pytest.raises(NotImplementedError):
        await PlivoRest(AUTH_ID, AUTH_TOKEN).transfer(CALL, "+15550100")


async def test_complete_hangs_up_a_live_call(fake: FakePlivo) -> None:
    fake.add_call(CALL)
    await client(fake).complete(CALL)
    assert fake.hangups == [CALL]
    assert fake.calls[CALL] == "completed"
    (request,) = fake.requests
    assert (request.method, request.path, request.username, request.status) == (
        "DELETE",
        f"/v1/Account/{AUTH_ID}/Call/{CALL}/",
        AUTH_ID,
        204,
    )


async def test_a_call_already_over_counts_as_done(fake: FakePlivo) -> None:
    await client(fake).complete(CALL)  # never live: 404
    fake.add_call(CALL)
    rest = client(fake)
    await rest.complete(CALL)
    await rest.complete(CALL)  # the second time it is over: 404 again
    assert [r.status for r in fake.requests] == [404, 204, 404]
    assert fake.hangups == [CALL]


async def test_a_refusal_is_an_error_without_the_token(fake: FakePlivo) -> None:
    fake.add_call(CALL)
    with pytest.raises(PlivoRestError) as info:
        await client(fake, token="wrong-token").complete(CALL)
    assert isinstance(info.value, CarrierRestError)
    assert (info.value.status, info.value.code) == (401, None)
    assert str(info.value) == "Plivo REST API: HTTP 401: authentication failed"
    assert fake.hangups == []


async def test_plivo_errors_carry_plivos_text(fake: FakePlivo) -> None:
    fake.fail_with = (500, f"internal error for {AUTH_TOKEN}")
    with pytest.raises(PlivoRestError) as info:
        await client(fake).complete(CALL)
    assert info.value.status == 500
    assert AUTH_TOKEN not in str(info.value)
    assert str(info.value) == "Plivo REST API: HTTP 500: internal error for <redacted>"


@pytest.mark.hang_limit(10)
async def test_no_answer_in_time_is_an_error(fake: FakePlivo) -> None:
    fake.delay = 5.0
    start = trio.current_time()
    with pytest.raises(PlivoRestError) as info:
        await client(fake, timeout=0.3).complete(CALL)
    assert info.value.status is None
    assert str(info.value) == "Plivo REST API: no answer within 0.3 s"
    assert trio.current_time() - start < 2.0


async def test_nobody_listening_is_an_error() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()  # the port is free: connecting is refused
    rest = PlivoRest(AUTH_ID, AUTH_TOKEN, base_url=f"http://127.0.0.1:{port}")
    with pytest.raises(PlivoRestError) as info:
        await rest.complete(CALL)
    assert info.value.status is None and "DELETE failed: ConnectError" in str(info.value)


async def test_the_callers_cancel_scope_bounds_it(fake: FakePlivo) -> None:
    fake.delay = 5.0
    with trio.move_on_after(0.2) as scope:
        await client(fake).complete(CALL)
    assert scope.cancelled_caught


def test_construction_checks() -> None:
    with pytest.raises(ValueError, match="auth id and an auth token"):
        PlivoRest("", AUTH_TOKEN)
    with pytest.raises(ValueError, match="http"):
        PlivoRest(AUTH_ID, AUTH_TOKEN, base_url="ftp://x")
    with pytest.raises(ValueError, match="positive"):
        PlivoRest(AUTH_ID, AUTH_TOKEN, timeout=0)


async def test_the_request_is_the_official_clients(fake: FakePlivo) -> None:
    """``plivo.RestClient(...).calls.hangup(uuid)`` sends the same method, path and Basic auth
    (captured by a transport adapter: nothing leaves the machine)."""
    plivo = pytest.importorskip("plivo")
    requests = pytest.importorskip("requests")

    sent: list[Any] = []

    class Capture(requests.adapters.BaseAdapter):  # type: ignore[misc]
        def send(self, request: Any, **kwargs: Any) -> Any:
            sent.append(request)
            response = requests.Response()
            response.status_code = 204
            response._content = b""
            response.url = request.url
            response.request = request
            return response

        def close(self) -> None:
            pass

    official = plivo.RestClient(AUTH_ID, AUTH_TOKEN)
    official.session.mount("https://", Capture())
    official.calls.hangup(CALL)
    (theirs,) = sent

    fake.add_call(CALL)
    await client(fake).complete(CALL)
    (ours,) = fake.requests
    assert theirs.method == ours.method == "DELETE"
    assert theirs.url == f"https://api.plivo.com{ours.path}"
    basic = base64.b64encode(f"{AUTH_ID}:{AUTH_TOKEN}".encode()).decode()
    assert theirs.headers["Authorization"] == f"Basic {basic}"
    assert ours.username == AUTH_ID


async def test_the_fakes_other_answers(fake: FakePlivo) -> None:
    """The fake's REST answers besides a hang-up: a live call read back, another account's path
    and another method refused as Plivo does."""
    fake.add_call(CALL)
    auth = (AUTH_ID, AUTH_TOKEN)
    path = f"{fake.base_url}/v1/Account/{AUTH_ID}/Call/{CALL}/"
    async with httpx.AsyncClient(timeout=5) as http:
        live = await http.get(path, auth=auth)
        other = await http.delete(path.replace(AUTH_ID, "MA" + "0" * 18), auth=auth)
        post = await http.post(path, auth=auth)
        await client(fake).complete(CALL)
        gone = await http.get(path, auth=auth)
    assert (live.status_code, live.json()["call_status"]) == (200, "in-progress")
    assert (other.status_code, other.json()["error"]) == (404, "not found")
    assert post.status_code == 405
    assert gone.status_code == 404
    assert fake.calls[CALL] == "completed"
