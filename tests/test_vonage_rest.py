"""Vonage's REST client (voxbridge.carriers.vonage_rest) against the fake Vonage over real
loopback HTTP, with Vonage's own ``vonage-jwt`` as the oracle of the application JWT and
``vonage-voice`` as the oracle of the hang-up request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from vonage_jwt import JwtClient

from voxbridge.carriers.base import CarrierRest, CarrierRestError
from voxbridge.carriers.vonage_rest import JWT_TTL, VonageRest, VonageRestError, load_private_key
from voxbridge.testing.fake_vonage import FakeVonage

APPLICATION = "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
CALL = "63f61863-4a51-4f6b-86e1-46edebcf9356"

# One key pair for the module (RSA generation takes a moment).
_FAKE = FakeVonage(APPLICATION)
KEY = _FAKE.private_key


@pytest.fixture
async def fake(nursery: trio.Nursery) -> AsyncIterator[FakeVonage]:
    vonage = FakeVonage(APPLICATION)
    await nursery.start(vonage.serve)
    yield vonage


def client(fake: FakeVonage, key: str | None = None, **options: Any) -> VonageRest:
    return VonageRest(APPLICATION, key or fake.private_key, base_url=fake.base_url, **options)


def test_is_a_carrier_rest_without_transfer() -> None:
    rest: CarrierRest = VonageRest(APPLICATION, KEY)
    assert rest.can_transfer is False
    assert "PRIVATE" not in repr(rest) and KEY[40:80] not in repr(rest)
    assert (
        VonageRest(APPLICATION, KEY).call_url("a/b?c") == "https://api.nexmo.com/v1/calls/a%2Fb%3Fc"
    )


async def test_transfer_is_not_offered() -> None:
    with pytest.raises(NotImplementedError):
        await VonageRest(APPLICATION, KEY).transfer(CALL, "+447700900000")


def test_the_application_jwt_has_vonage_jwts_claims() -> None:
    """The claims and header of ``vonage_jwt.JwtClient.generate_application_jwt`` (the oracle),
    signed RS256 with the application's key."""
    public = load_private_key(KEY).public_key()
    ours = VonageRest(APPLICATION, KEY, clock=lambda: 1_767_225_600.5).application_jwt()
    theirs = JwtClient(APPLICATION, KEY).generate_application_jwt().decode()
    options = {"verify_exp": False, "verify_iat": False}
    ours_claims = jwt.decode(ours, public, algorithms=["RS256"], options=options)
    theirs_claims = jwt.decode(theirs, public, algorithms=["RS256"], options=options)
    assert set(ours_claims) == set(theirs_claims) == {"application_id", "iat", "jti", "exp"}
    assert ours_claims["application_id"] == theirs_claims["application_id"] == APPLICATION
    assert ours_claims["iat"] == 1_767_225_600
    assert ours_claims["exp"] - ours_claims["iat"] == theirs_claims["exp"] - theirs_claims["iat"]
    assert ours_claims["exp"] - ours_claims["iat"] == JWT_TTL
    assert jwt.get_unverified_header(ours) == jwt.get_unverified_header(theirs)
    assert jwt.get_unverified_header(ours) == {"alg": "RS256", "typ": "JWT"}
    rest = VonageRest(APPLICATION, KEY)
    assert (
        jwt.decode(rest.application_jwt(), public, algorithms=["RS256"])["jti"]
        != jwt.decode(rest.application_jwt(), public, algorithms=["RS256"])["jti"]
    )


async def test_complete_hangs_up_a_live_call(fake: FakeVonage) -> None:
    fake.add_call(CALL)
    await client(fake).complete(CALL)
    assert fake.hangups == [CALL]
    assert fake.calls[CALL] == "completed"
    (request,) = fake.requests
    assert (request.method, request.path, request.body, request.authorized, request.status) == (
        "PUT",
        f"/v1/calls/{CALL}",
        {"action": "hangup"},
        True,
        204,
    )


async def test_the_fake_takes_the_official_jwt_and_refuses_a_forged_one(fake: FakeVonage) -> None:
    """The fake is honest: a JWT from vonage-jwt with the application's key passes, one signed
    with another key or naming another application does not."""
    assert fake._authorized(
        "Bearer " + JwtClient(APPLICATION, fake.private_key).generate_application_jwt().decode()
    )
    assert not fake._authorized(
        "Bearer " + JwtClient(APPLICATION, KEY).generate_application_jwt().decode()
    )
    assert not fake._authorized(
        "Bearer " + JwtClient("another-app", fake.private_key).generate_application_jwt().decode()
    )


async def test_the_request_is_the_official_clients(fake: FakeVonage) -> None:
    """vonage-voice's ``Voice.hangup(uuid)`` sends ``PUT /v1/calls/{uuid}`` with
    ``{"action": "hangup"}``: ours is the same request (captured by swapping the SDK's HTTP
    client's ``put``: nothing leaves the machine)."""
    from vonage_voice import Voice

    sent: list[tuple[str, str, Any]] = []

    class Capture:
        api_host = "api.nexmo.com"

        def put(self, host: str, path: str, params: Any = None, **kwargs: Any) -> None:
            sent.append((host, path, params))

    Voice(Capture()).hangup(CALL)  # type: ignore[arg-type]
    fake.add_call(CALL)
    await client(fake).complete(CALL)
    (request,) = fake.requests
    assert sent == [("api.nexmo.com", request.path, request.body)]
    assert request.method == "PUT"


async def test_a_call_already_over_counts_as_done(fake: FakeVonage) -> None:
    await client(fake).complete(CALL)  # never live: 404
    fake.add_call(CALL)
    rest = client(fake)
    await rest.complete(CALL)
    await rest.complete(CALL)  # the second time it is over: 404 again
    assert [r.status for r in fake.requests] == [404, 204, 404]
    assert fake.hangups == [CALL]


async def test_a_refusal_is_an_error_without_the_key(fake: FakeVonage) -> None:
    fake.add_call(CALL)
    with pytest.raises(VonageRestError) as info:
        await client(fake, key=KEY).complete(CALL)  # another application's key
    assert isinstance(info.value, CarrierRestError)
    assert (info.value.status, info.value.code) == (401, None)
    assert str(info.value) == "Vonage REST API: HTTP 401: Unauthorized: Invalid token"
    assert fake.hangups == [] and fake.requests[0].authorized is False


async def test_vonage_errors_carry_vonages_text(fake: FakeVonage) -> None:
    fake.fail_with = (500, "Internal Error")
    with pytest.raises(VonageRestError) as info:
        await client(fake).complete(CALL)
    assert info.value.status == 500
    assert str(info.value) == "Vonage REST API: HTTP 500: Internal Error: Internal Error"


@pytest.mark.hang_limit(10)
async def test_no_answer_in_time_is_an_error(fake: FakeVonage) -> None:
    fake.delay = 5.0
    start = trio.current_time()
    with pytest.raises(VonageRestError) as info:
        await client(fake, timeout=0.3).complete(CALL)
    assert info.value.status is None
    assert str(info.value) == "Vonage REST API: no answer within 0.3 s"
    assert trio.current_time() - start < 2.0


async def test_nobody_listening_is_an_error() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()  # the port is free: connecting is refused
    rest = VonageRest(APPLICATION, KEY, base_url=f"http://127.0.0.1:{port}")
    with pytest.raises(VonageRestError) as info:
        await rest.complete(CALL)
    assert info.value.status is None and "PUT failed: ConnectError" in str(info.value)
    assert "eyJ" not in str(info.value)  # no JWT in the message


async def test_the_callers_cancel_scope_bounds_it(fake: FakeVonage) -> None:
    fake.delay = 5.0
    with trio.move_on_after(0.2) as scope:
        await client(fake).complete(CALL)
    assert scope.cancelled_caught


def test_construction_checks() -> None:
    with pytest.raises(ValueError, match="application id"):
        VonageRest("", KEY)
    with pytest.raises(ValueError, match="http"):
        VonageRest(APPLICATION, KEY, base_url="ftp://x")
    with pytest.raises(ValueError, match="positive"):
        VonageRest(APPLICATION, KEY, timeout=0)
    with pytest.raises(ValueError, match="not an unencrypted PEM private key") as info:
        VonageRest(APPLICATION, "-----BEGIN PRIVATE KEY-----\nsecret-material\n")
    assert "secret-material" not in str(info.value)
    ec_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="not an RSA key"):
        VonageRest(APPLICATION, ec_key.decode())
