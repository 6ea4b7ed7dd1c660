"""Vonage's HTTP side (voxbridge.carriers.vonage_webhooks): signed-webhook JWTs (valid, invalid,
stale), the WebSocket upgrade's JWT, the answer webhook, and the NCCO answers, with Vonage's
official packages as oracles (``vonage-jwt``'s ``verify_signature``; ``vonage-voice``'s answer
webhook and websocket endpoint models)."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
from vonage_jwt import verify_signature
from vonage_voice.models import AnswerWebhook, WebsocketEndpoint
from vonage_voice.models.common import WebsocketAuthorization

from voxbridge.carriers.base import CallRequest, CarrierWebhooks, HttpRequest
from voxbridge.carriers.vonage_webhooks import (
    CLOCK_SKEW,
    MAX_AGE,
    MAX_TOKEN,
    VonageWebhooks,
    bearer,
    payload_hashes,
    sign_request,
)
from voxbridge.errors import RemoteProtocolError

SECRET = "vonage-signature-secret-0123456789abcdef"  # >= 32 bytes: PyJWT warns below
NEXT = "vonage-next-signature-secret-fedcba9876543210"
OTHER = "not-the-vonage-signature-secret-0123456789"
NOW = 1_767_225_600.0
CALL = "63f61863-4a51-4f6b-86e1-46edebcf9356"
ANSWER_URL = "https://voice.example.com/vonage/answer"
MEDIA_URL = "wss://voice.example.com/vonage/media"
# The answer webhook's JSON as Vonage sends it (the fields of vonage-voice's AnswerWebhook).
BODY = json.dumps(
    {
        "from": "447700900001",
        "to": "447700900000",
        "endpoint_type": "phone",
        "uuid": CALL,
        "conversation_uuid": "CON-aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
        "region_url": "https://api-eu-1.vonage.com",
    },
    separators=(",", ":"),
).encode()


def token(
    secret: str = SECRET, *, now: float = NOW, body: bytes | None = BODY, **claims: Any
) -> str:
    """A JWT as Vonage signs a request, plus ``claims`` (``None`` removes one)."""
    signed = sign_request(secret, now=now, jti="jti-1", body=body, api_key="abcd1234")
    if not claims:
        return signed
    payload = jwt.decode(signed, secret, algorithms=["HS256"])
    payload.update(claims)
    payload = {key: value for key, value in payload.items() if value is not None}
    return jwt.encode(payload, secret, algorithm="HS256")


def post(body: bytes = BODY, auth: str | None = None, url: str = ANSWER_URL) -> HttpRequest:
    headers = {"content-type": "application/json"}
    if auth is not None:
        headers["authorization"] = auth
    return HttpRequest(url, "POST", headers, body)


def hooks(*secrets: str, **options: Any) -> VonageWebhooks:
    return VonageWebhooks(secrets or (SECRET,), **options)


def test_is_carrier_webhooks() -> None:
    checked: CarrierWebhooks = hooks()
    assert checked.checks and checked.token_secrets == (SECRET,)
    assert SECRET not in repr(checked)
    unchecked = VonageWebhooks()
    assert not unchecked.checks and unchecked.token_secrets == ()
    with pytest.raises(ValueError, match="at most two"):
        VonageWebhooks(("a", "b", "c"))
    with pytest.raises(ValueError, match="at most two"):
        VonageWebhooks(("",))
    with pytest.raises(ValueError, match="8000, 16000 or 24000"):
        VonageWebhooks(sample_rate=11025)


# --- signatures ------------------------------------------------------------------------------------


def test_a_signed_webhook_is_valid_and_the_oracle_agrees() -> None:
    signed = token()
    assert verify_signature(signed, SECRET)  # vonage-jwt's own check
    assert not verify_signature(signed, OTHER)
    assert hooks().webhook_signed(post(auth=f"Bearer {signed}"), now=NOW + 1)
    assert not hooks(OTHER).webhook_signed(post(auth=f"Bearer {signed}"), now=NOW + 1)


def test_the_payload_hash_is_the_bodys_sha256() -> None:
    claims = jwt.decode(token(), SECRET, algorithms=["HS256"])
    assert claims["payload_hash"] == hashlib.sha256(BODY).hexdigest()
    assert claims["iat"] == int(NOW) and claims["iss"] == "Vonage"


@pytest.mark.parametrize(
    ("auth", "valid"),
    [
        (None, False),
        ("", False),
        ("Bearer", False),
        ("Basic dXNlcjpwYXNz", False),
        ("Bearer not-a-jwt", False),
        ("bearer {good}", True),
        ("  Bearer   {good}  ", True),
        ("Bearer {other}", False),
        ("Bearer {none}", False),
        ("Bearer {hs512}", False),
        ("Bearer {no_iat}", False),
        ("Bearer {string_iat}", False),
        ("Bearer {bool_iat}", False),
        ("Bearer {stale}", False),
        ("Bearer {almost_stale}", True),
        ("Bearer {future}", False),
        ("Bearer {slightly_future}", True),
        ("Bearer {expired}", False),
        ("Bearer {not_yet}", False),
        ("Bearer {tampered_hash}", False),
        ("Bearer {no_hash}", True),
        ("Bearer {numeric_hash}", False),
        ("Bearer {upper_hash}", True),
    ],
)
def test_webhook_signatures(auth: str | None, valid: bool) -> None:
    tokens = {
        "good": token(),
        "other": token(OTHER),
        "none": jwt.encode({"iat": int(NOW)}, None, algorithm="none"),
        "hs512": jwt.encode({"iat": int(NOW)}, SECRET + SECRET, algorithm="HS512"),
        "no_iat": token(iat=None),
        "string_iat": token(iat=str(int(NOW))),
        "bool_iat": token(iat=True),
        "stale": token(now=NOW - MAX_AGE - 1),
        "almost_stale": token(now=NOW - MAX_AGE + 1),
        "future": token(now=NOW + CLOCK_SKEW + 1),
        "slightly_future": token(now=NOW + CLOCK_SKEW - 1),
        "expired": token(exp=int(NOW - CLOCK_SKEW - 1)),
        "not_yet": token(nbf=int(NOW + CLOCK_SKEW + 1)),
        "tampered_hash": token(payload_hash=hashlib.sha256(b"other").hexdigest()),
        "no_hash": token(body=None),
        "numeric_hash": token(payload_hash=12),
        "upper_hash": token(payload_hash=hashlib.sha256(BODY).hexdigest().upper()),
    }
    header = None if auth is None else auth.format(**tokens)
    assert hooks().webhook_signed(post(auth=header), now=NOW) is valid


def test_a_tampered_body_fails_its_payload_hash() -> None:
    signed = token()
    tampered = BODY.replace(b"447700900000", b"447700900666")
    assert hooks().webhook_signed(post(tampered, f"Bearer {signed}"), now=NOW) is False
    # the signature itself is intact: only the payload check catches it
    assert verify_signature(signed, SECRET)


def test_a_reformatted_json_body_matches_its_compact_hash() -> None:
    """Vonage's support article hashes the parameters as compact JSON; a body that arrives
    spaced out (same object, same order) still matches."""
    pretty = json.dumps(json.loads(BODY), indent=2).encode()
    assert hooks().webhook_signed(post(pretty, f"Bearer {token()}"), now=NOW)


def test_a_get_webhook_hashes_its_query() -> None:
    query = {"uuid": CALL, "to": "447700900000", "from": "447700900001"}
    url = f"{ANSWER_URL}?{urlencode(query)}"
    digest = hashlib.sha256(json.dumps(query, separators=(",", ":")).encode()).hexdigest()
    assert payload_hashes("GET", url, b"") == {digest}
    request = HttpRequest(url, "GET", {"authorization": f"Bearer {token(payload_hash=digest)}"})
    assert hooks().webhook_signed(request, now=NOW)
    wrong = HttpRequest(url.replace("447700900000", "1"), "GET", dict(request.headers))
    assert not hooks().webhook_signed(wrong, now=NOW)
    assert payload_hashes("GET", ANSWER_URL, b"") == set()


def test_rotation_accepts_either_secret() -> None:
    rotating = hooks(SECRET, NEXT)
    assert rotating.token_secrets == (SECRET, NEXT)
    for secret in (SECRET, NEXT):
        assert rotating.webhook_signed(post(auth=f"Bearer {token(secret)}"), now=NOW)
    assert not rotating.webhook_signed(post(auth=f"Bearer {token(OTHER)}"), now=NOW)


def test_without_checks_everything_passes() -> None:
    unchecked = VonageWebhooks()
    assert unchecked.webhook_signed(post(), now=NOW)
    assert unchecked.upgrade_signed(HttpRequest(MEDIA_URL, "GET", {}), now=NOW)


def test_bearer() -> None:
    assert bearer({"authorization": "Bearer abc"}) == "abc"
    assert bearer({}) is None
    assert bearer({"authorization": "Bearer " + "a" * (MAX_TOKEN + 1)}) is None
    assert bearer({"authorization": "Token abc"}) is None


# --- the WebSocket upgrade -----------------------------------------------------------------------


def upgrade(auth: str | None) -> HttpRequest:
    return HttpRequest(MEDIA_URL, "GET", {} if auth is None else {"authorization": auth})


def test_the_upgrade_needs_a_fresh_vonage_jwt() -> None:
    """What ``"authorization":{"type":"vonage"}`` makes Vonage send: the signed-webhook JWT, so
    HS256 with the signature secret (no payload to hash)."""
    good = sign_request(SECRET, now=NOW, jti="j", application_id="app")
    assert verify_signature(good, SECRET)
    assert hooks().upgrade_signed(upgrade(f"Bearer {good}"), now=NOW + 10)
    assert not hooks().upgrade_signed(upgrade(None), now=NOW)
    assert not hooks().upgrade_signed(upgrade(f"Bearer {token(OTHER)}"), now=NOW)
    assert not hooks().upgrade_signed(upgrade(f"Bearer {good}"), now=NOW + MAX_AGE + 1)
    # a payload_hash on an upgrade is not checked: there is no payload
    assert hooks().upgrade_signed(upgrade(f"Bearer {token(body=b'x')}"), now=NOW)


def test_claims_are_returned_only_when_valid() -> None:
    checked = hooks()
    claims = checked.claims(token(), now=NOW)
    assert claims is not None and claims["api_key"] == "abcd1234"
    assert checked.claims(None, now=NOW) is None
    assert checked.claims(token(), now=NOW + MAX_AGE + 1) is None


# --- the answer webhook ----------------------------------------------------------------------------


def test_call_reads_vonages_answer_json() -> None:
    """The fields voxbridge reads are the ones vonage-voice's AnswerWebhook model names."""
    model = AnswerWebhook.model_validate_json(BODY)
    request = hooks().call(post())
    assert request == CallRequest(call_id=model.uuid or "", to="+" + (model.to or ""))
    assert request.answered_by == ""


def test_call_reads_a_get_and_a_form() -> None:
    query = urlencode({"uuid": CALL, "to": "447700900000", "from": "447700900001"})
    assert hooks().call(HttpRequest(f"{ANSWER_URL}?{query}", "GET", {})) == CallRequest(
        CALL, "+447700900000"
    )
    form = HttpRequest(ANSWER_URL, "POST", {}, query.encode())
    assert hooks().call(form) == CallRequest(CALL, "+447700900000")


@pytest.mark.parametrize(
    ("to", "expected"),
    [
        ("447700900000", "+447700900000"),
        ("+447700900000", "+447700900000"),
        ("sip:agent@example.com", "sip:agent@example.com"),
        ("1234", "1234"),
        (12345678, ""),
        (None, ""),
    ],
)
def test_numbers_become_e164(to: object, expected: str) -> None:
    body = json.dumps({"uuid": CALL, "to": to}).encode()
    assert hooks().call(post(body)).to == expected


@pytest.mark.parametrize(
    "body", [b"", b"[]", b'{"uuid":""}', b'{"uuid":5}', b"not json", b'{"to":"447700900000"}']
)
def test_a_webhook_without_a_uuid_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="no uuid"):
        hooks().call(post(body))


# --- answers ---------------------------------------------------------------------------------------


def sdk_endpoint(headers: dict[str, str] | None, authorize: bool, rate: int = 16000) -> Any:
    """What Vonage's own Python SDK would send for the same websocket endpoint."""
    endpoint = WebsocketEndpoint(
        uri=MEDIA_URL,
        contentType=f"audio/l16;rate={rate}",  # type: ignore[arg-type]
        headers=headers,
        authorization=WebsocketAuthorization(type="vonage") if authorize else None,
    )
    return endpoint.model_dump(mode="json", by_alias=True, exclude_none=True)


def test_connect_is_the_ncco_the_sdk_would_build() -> None:
    parameters = {"voxbridge_token": "eyJ.abc.def", "uuid": CALL}
    answer = hooks().connect(MEDIA_URL, parameters)
    assert answer.content_type == "application/json"
    ncco = json.loads(answer.body)
    assert [action["action"] for action in ncco] == ["connect"]
    (endpoint,) = ncco[0]["endpoint"]
    assert endpoint == sdk_endpoint(parameters, authorize=True)
    # without checks: no authorization asked for, and no headers when there are none
    (endpoint,) = json.loads(VonageWebhooks(sample_rate=8000).connect(MEDIA_URL, {}).body)[0][
        "endpoint"
    ]
    assert endpoint == sdk_endpoint(None, authorize=False, rate=8000)


def test_provider_or_agent_text_cannot_change_the_ncco() -> None:
    nasty = {"agent": '"],"x":[{"action":"talk"}', "uuid": 'a"b\\c'}
    ncco = json.loads(hooks().connect(MEDIA_URL, nasty).body)
    assert ncco[0]["endpoint"][0]["headers"] == nasty and len(ncco) == 1


def test_connect_refuses_headers_vonage_would_not_take() -> None:
    with pytest.raises(ValueError, match="512-byte"):
        hooks().connect(MEDIA_URL, {"big": "x" * 600})
    with pytest.raises(ValueError, match="cannot be the name"):
        hooks().connect(MEDIA_URL, {"content-type": "audio/l16;rate=8000"})


def test_hangup_is_an_empty_ncco() -> None:
    answer = hooks().hangup()
    assert (answer.content_type, json.loads(answer.body)) == ("application/json", [])


def test_sign_request_matches_a_live_clock_check() -> None:
    """The helper the fakes use: a JWT minted now passes a check at the wall clock."""
    now = time.time()
    assert hooks().webhook_signed(post(auth=f"Bearer {token(now=now)}"), now=now)
