"""Plivo's HTTP side (voxbridge.carriers.plivo_webhooks): V3 signatures, checked against the
official ``plivo`` package, the answer webhook, and the ``<Stream>`` XML."""

from __future__ import annotations

import secrets
from urllib.parse import urlencode
from xml.etree import ElementTree

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voxbridge.carriers.base import CallRequest, CarrierWebhooks, HttpRequest
from voxbridge.carriers.plivo import decode_extra_headers, encode_extra_headers
from voxbridge.carriers.plivo_webhooks import (
    MA_SIGNATURE_HEADER,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    SPEC,
    PlivoWebhooks,
    sign,
    signed_text,
)
from voxbridge.cli import build_parser
from voxbridge.errors import RemoteProtocolError, SettingsError
from voxbridge.server.security import CallTokenError, CallTokens, CarrierAuth
from voxbridge.settings import Settings

plivo_utils = pytest.importorskip("plivo.utils.signature_v3")
plivoxml = pytest.importorskip("plivo").plivoxml

TOKEN = "MjM0NTY3ODkwYWJjZGVmZ2hpamtsbW5vcHFyc3R1"
OTHER = "ZZZ0NTY3ODkwYWJjZGVmZ2hpamtsbW5vcHFyc3R1"
PUBLIC = "https://voice.example.com"
ANSWER_URL = PUBLIC + "/plivo/answer"
STREAM_URL = "wss://voice.example.com/plivo/media"
FORM = {
    "CallUUID": "12345678-1234-1234-1234-123456789abc",
    "CallStatus": "in-progress",
    "Direction": "inbound",
    "Event": "StartApp",
    "From": "14155550199",
    "To": "14155550100",
}
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def webhooks(*tokens: str) -> PlivoWebhooks:
    return PlivoWebhooks(tokens, public_url=PUBLIC)


def signed_post(
    url: str = ANSWER_URL,
    form: dict[str, str] = FORM,
    *,
    token: str = TOKEN,
    header: str = SIGNATURE_HEADER,
    nonce: str = "05429567804466091622",
) -> HttpRequest:
    signature = sign(token, "POST", url, nonce, {k: [v] for k, v in form.items()})
    return HttpRequest(
        url=url,
        method="POST",
        headers={header: signature, NONCE_HEADER: nonce},
        body=urlencode(form).encode(),
    )


# --- the algorithm, against the official package -----------------------------------------------

SAFE = st.text("abcXYZ019-_.~", min_size=1, max_size=8)
VALUES = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=10)


@st.composite
def urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["https", "http"]))
    host = draw(st.sampled_from(["voice.example.com", "127.0.0.1:8080", "example.com:443"]))
    path = "/" + "/".join(draw(st.lists(SAFE, max_size=3)))
    # the package fails on a query whose decoded values are not ASCII (parse_qs over bytes)
    query = draw(st.lists(st.tuples(SAFE, st.text(st.characters(max_codepoint=127))), max_size=3))
    return f"{scheme}://{host}{path}" + (f"?{urlencode(query)}" if query else "")


@FUZZ
@given(
    url=urls(),
    params=st.dictionaries(SAFE, VALUES, max_size=5),
    method=st.sampled_from(["POST", "GET"]),
    nonce=st.text("0123456789", min_size=1, max_size=20),
)
def test_signatures_are_the_official_packages(
    url: str, params: dict[str, str], method: str, nonce: str
) -> None:
    """Whatever the URL, form and nonce, ``plivo.utils.validate_v3_signature`` accepts the
    signature computed here, and refuses it for another token."""
    ours = sign(TOKEN, method, url, nonce, {k: [v] for k, v in params.items()})
    assert plivo_utils.validate_v3_signature(method, url, nonce, TOKEN, ours, dict(params))
    assert not plivo_utils.validate_v3_signature(method, url, nonce, OTHER, ours, dict(params))
    if method == "POST":
        expected = plivo_utils.construct_post_url(url, dict(params)).decode("utf-8")
    else:
        expected = plivo_utils.construct_get_url(url, dict(params)).decode("utf-8")
    assert signed_text(method, url, {k: [v] for k, v in params.items()}) == expected


@FUZZ
@given(query=st.text(max_size=30), body=st.binary(max_size=60))
def test_any_request_is_judged_without_error(query: str, body: bytes) -> None:
    """Whatever query and body arrive (the package itself fails on non-ASCII query values),
    the check answers True or False."""
    request = HttpRequest(
        f"{ANSWER_URL}?{query}", "POST", {SIGNATURE_HEADER: "x", NONCE_HEADER: "1"}, body
    )
    assert webhooks(TOKEN).webhook_signed(request, now=0) is False
    assert webhooks(TOKEN).upgrade_signed(request, now=0) is False


def test_repeated_form_values_sign_as_the_package_does() -> None:
    params = {"Digits": ["9", "1"], "To": ["1415"]}
    ours = sign(TOKEN, "POST", ANSWER_URL, "1", params)
    assert plivo_utils.validate_v3_signature("POST", ANSWER_URL, "1", TOKEN, ours, params)
    assert signed_text("POST", ANSWER_URL, params) == f"{ANSWER_URL}?Digits1Digits9To1415"


def test_the_signed_text_worked_example() -> None:
    """Plivo's algorithm by hand: query sorted with ``.``, form sorted without separators."""
    url = ANSWER_URL + "?b=2&a=1"
    assert signed_text("POST", url, {"To": ["x"], "CallUUID": ["u"]}) == (
        f"{ANSWER_URL}?a=1&b=2.CallUUIDuTox"
    )
    assert signed_text("POST", ANSWER_URL, {}) == ANSWER_URL
    assert signed_text("GET", url, {"c": ["3"]}) == f"{ANSWER_URL}?a=1&b=2&c=3"


# --- the answer webhook ---------------------------------------------------------------------------


def test_is_carrier_webhooks() -> None:
    hooks: CarrierWebhooks = webhooks(TOKEN)
    assert hooks.checks and hooks.token_secrets == (TOKEN,)
    assert TOKEN not in repr(hooks)
    assert not PlivoWebhooks().checks and PlivoWebhooks().token_secrets == ()


def test_a_signed_webhook_passes() -> None:
    assert webhooks(TOKEN).webhook_signed(signed_post(), now=0)
    # with the main account's header, or under the second token while rotating
    assert webhooks(TOKEN).webhook_signed(signed_post(header=MA_SIGNATURE_HEADER), now=0)
    assert webhooks(OTHER, TOKEN).webhook_signed(signed_post(), now=0)
    # Plivo may send several signatures in one header
    request = signed_post()
    both = {**request.headers, SIGNATURE_HEADER: "bm9wZQ==," + request.headers[SIGNATURE_HEADER]}
    assert webhooks(TOKEN).webhook_signed(
        HttpRequest(request.url, "POST", both, request.body), now=0
    )


def test_a_webhook_query_string_is_signed_too() -> None:
    url = ANSWER_URL + "?agent=sales"
    assert webhooks(TOKEN).webhook_signed(signed_post(url), now=0)
    moved = signed_post(url)
    assert not webhooks(TOKEN).webhook_signed(
        HttpRequest(ANSWER_URL + "?agent=support", "POST", moved.headers, moved.body), now=0
    )


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(
            lambda r: HttpRequest(r.url, r.method, r.headers, r.body + b"&x=1"), id="form"
        ),
        pytest.param(
            lambda r: HttpRequest(r.url.replace("answer", "voice"), r.method, r.headers, r.body),
            id="url",
        ),
        pytest.param(
            lambda r: HttpRequest(r.url, r.method, {**r.headers, NONCE_HEADER: "1"}, r.body),
            id="nonce",
        ),
        pytest.param(
            lambda r: HttpRequest(
                r.url, r.method, {k: v for k, v in r.headers.items() if k != NONCE_HEADER}, r.body
            ),
            id="no-nonce",
        ),
        pytest.param(lambda r: HttpRequest(r.url, r.method, {}, r.body), id="no-headers"),
        pytest.param(
            lambda r: HttpRequest(r.url, r.method, {**r.headers, SIGNATURE_HEADER: ""}, r.body),
            id="empty-signature",
        ),
        pytest.param(
            lambda r: HttpRequest(r.url, r.method, {**r.headers, SIGNATURE_HEADER: "é"}, r.body),
            id="non-ascii",
        ),
        pytest.param(lambda r: HttpRequest(r.url, "GET", r.headers, r.body), id="as-GET"),
    ],
)
def test_a_tampered_webhook_fails(tamper: object) -> None:
    request = tamper(signed_post())  # type: ignore[operator]
    assert not webhooks(TOKEN).webhook_signed(request, now=0)


def test_another_token_fails() -> None:
    assert not webhooks(TOKEN).webhook_signed(signed_post(token=OTHER), now=0)
    assert not webhooks(OTHER).webhook_signed(signed_post(), now=0)


def test_without_checks_everything_passes() -> None:
    hooks = PlivoWebhooks()
    unsigned = HttpRequest(ANSWER_URL, "POST", {}, b"")
    assert hooks.webhook_signed(unsigned, now=0) and hooks.upgrade_signed(unsigned, now=0)


def test_stale_a_replayed_signature_cannot_move_to_another_nonce() -> None:
    """V3 signatures carry no timestamp (a replay is judged by the per-call token, below), but
    a signature is bound to its nonce: a replay cannot pose as a fresh request."""
    request = signed_post(nonce="111")
    fresh = {**request.headers, NONCE_HEADER: "112"}
    assert webhooks(TOKEN).webhook_signed(request, now=10**9)
    assert not webhooks(TOKEN).webhook_signed(
        HttpRequest(request.url, "POST", fresh, request.body), now=0
    )


def test_stale_the_per_call_token_in_extra_headers_expires() -> None:
    """What the answer hands Plivo (the token, through ``extraHeaders``) stops working after
    its lifetime: a stream started late with it is refused."""
    tokens = CallTokens([TOKEN], ttl=60)
    token = tokens.mint(FORM["CallUUID"], now=1000.0, extra={"agent": "default"})
    answer = webhooks(TOKEN).connect(STREAM_URL, {"voxbridge_token": token})
    stream = ElementTree.fromstring(answer.body).find("Stream")
    assert stream is not None
    carried = decode_extra_headers(stream.attrib["extraHeaders"])["voxbridge_token"]
    assert tokens.verify(carried, FORM["CallUUID"], now=1059.0)["agent"] == "default"
    with pytest.raises(CallTokenError, match="expired"):
        tokens.verify(carried, FORM["CallUUID"], now=1060.0)
    with pytest.raises(CallTokenError, match="another call"):
        tokens.verify(carried, "another-call", now=1001.0)


# --- the upgrade -------------------------------------------------------------------------------------


def upgrade(
    url: str = STREAM_URL, *, signed_url: str | None = None, token: str = TOKEN
) -> HttpRequest:
    nonce = str(secrets.randbelow(10**20))
    signature = sign(token, "GET", signed_url or url, nonce)
    return HttpRequest(url, "GET", {SIGNATURE_HEADER: signature, NONCE_HEADER: nonce})


def test_upgrade_without_signature_headers_is_left_to_the_token() -> None:
    assert webhooks(TOKEN).upgrade_signed(HttpRequest(STREAM_URL, "GET", {}), now=0)


def test_a_signed_upgrade_must_verify() -> None:
    hooks = webhooks(TOKEN)
    assert hooks.upgrade_signed(upgrade(), now=0)
    assert hooks.upgrade_signed(upgrade(signed_url="https://voice.example.com/plivo/media"), now=0)
    assert hooks.upgrade_signed(upgrade(STREAM_URL + "?a=1"), now=0)
    assert not hooks.upgrade_signed(upgrade(token=OTHER), now=0)
    assert not hooks.upgrade_signed(upgrade(signed_url="wss://evil.example.com/plivo/media"), now=0)
    bad = HttpRequest(STREAM_URL, "GET", {MA_SIGNATURE_HEADER: "bm9wZQ=="})
    assert not hooks.upgrade_signed(bad, now=0)  # a signature without a nonce


# --- call(), connect(), hangup() ------------------------------------------------------------------


def test_call_reads_the_answer_webhook() -> None:
    hooks = webhooks(TOKEN)
    assert hooks.call(signed_post()) == CallRequest(call_id=FORM["CallUUID"], to="+14155550100")
    query = ANSWER_URL + "?" + urlencode({"CallUUID": "u-1", "To": "sip:desk@example.com"})
    assert hooks.call(HttpRequest(query, "GET", {})) == CallRequest("u-1", "sip:desk@example.com")
    with pytest.raises(RemoteProtocolError, match="no CallUUID"):
        hooks.call(HttpRequest(ANSWER_URL, "POST", {}, b"To=1"))


def parsed(xml: bytes) -> ElementTree.Element:
    return ElementTree.fromstring(xml)


def same_tree(a: ElementTree.Element, b: ElementTree.Element) -> bool:
    return (
        a.tag == b.tag
        and a.attrib == b.attrib
        and (a.text or "").strip() == (b.text or "").strip()
        and len(a) == len(b)
        and all(same_tree(x, y) for x, y in zip(a, b, strict=True))
    )


@pytest.mark.parametrize("content_type", ["audio/x-mulaw;rate=8000", "audio/x-l16;rate=16000"])
def test_connect_is_the_stream_plivoxml_builds(content_type: str) -> None:
    parameters = {"voxbridge_token": "eyJhbGciOi.J9-x_y", "agent": "sales"}
    answer = PlivoWebhooks(content_type=content_type).connect(STREAM_URL, parameters)
    assert answer.content_type == "text/xml; charset=utf-8"
    assert answer.body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    expected = plivoxml.ResponseElement()
    expected.add(
        plivoxml.StreamElement(
            STREAM_URL,
            bidirectional=True,
            keepCallAlive=True,
            contentType=content_type,
            audioTrack="inbound",
            extraHeaders=encode_extra_headers(parameters),
        )
    )
    assert same_tree(parsed(answer.body), parsed(expected.to_string().encode()))
    stream = parsed(answer.body).find("Stream")
    assert stream is not None
    assert decode_extra_headers(stream.attrib["extraHeaders"]) == parameters


def test_connect_without_parameters_and_with_too_many() -> None:
    stream = parsed(PlivoWebhooks().connect(STREAM_URL, {}).body).find("Stream")
    assert stream is not None and "extraHeaders" not in stream.attrib
    with pytest.raises(ValueError, match="512-byte limit"):
        PlivoWebhooks().connect(STREAM_URL, {"k": "x" * 600})


def test_connect_escapes_the_url() -> None:
    url = STREAM_URL + '?a=1&b="<x>"'
    stream = parsed(PlivoWebhooks().connect(url, {}).body).find("Stream")
    assert stream is not None and stream.text == url


def test_hangup_is_plivoxmls() -> None:
    expected = plivoxml.ResponseElement()
    expected.add(plivoxml.HangupElement())
    assert same_tree(parsed(PlivoWebhooks().hangup().body), parsed(expected.to_string().encode()))


def test_construction_checks() -> None:
    with pytest.raises(ValueError, match="public URL"):
        PlivoWebhooks([TOKEN])
    with pytest.raises(ValueError, match="at most two"):
        PlivoWebhooks(["a", "b", "c"], public_url=PUBLIC)
    with pytest.raises(ValueError, match="contentType"):
        PlivoWebhooks(content_type="audio/x-alaw;rate=8000")


# --- settings ---------------------------------------------------------------------------------------


def test_settings_read_plivos_own_variables() -> None:
    """``PLIVO_AUTH_ID`` and ``PLIVO_AUTH_TOKEN`` (Plivo's names) are read, after
    ``VOXBRIDGE_PLIVO_*``; the token is environment only and never shown."""
    env = {"PLIVO_AUTH_ID": "MA1", "PLIVO_AUTH_TOKEN": TOKEN, "VOXBRIDGE_PUBLIC_URL": PUBLIC}
    settings = Settings.from_env(env)
    own = settings.carrier_settings["plivo"]
    assert (own.auth_id, own.auth_tokens) == ("MA1", (TOKEN,))
    assert TOKEN not in repr(settings)
    first = Settings.from_env({**env, "VOXBRIDGE_PLIVO_AUTH_TOKEN": f"{OTHER},{TOKEN}"})
    assert first.carrier_settings["plivo"].auth_tokens == (OTHER, TOKEN)
    auth = CarrierAuth.from_settings(settings, SPEC)
    assert auth.checks and auth.tokens is not None
    assert SPEC.build_rest(settings) is not None
    assert SPEC.build_rest(Settings()) is None  # no credentials: no end_call
    flags = build_parser().parse_args(["serve", "--plivo-content-type", "audio/x-l16;rate=16000"])
    assert flags.plivo_content_type == "audio/x-l16;rate=16000"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--plivo-auth-token", TOKEN])


def test_settings_refuse_what_plivo_cannot_do() -> None:
    with pytest.raises(SettingsError, match="--plivo-content-type must be one of"):
        Settings(carrier_settings={"plivo": {"content_type": "audio/x-alaw;rate=8000"}})
    with pytest.raises(SettingsError, match="one auth token, or two"):
        Settings(carrier_settings={"plivo": {"auth_token": "a,b,c"}})
    no_public_url = Settings(carrier_settings={"plivo": {"auth_token": TOKEN}})
    with pytest.raises(SettingsError, match="needs --public-url"):
        SPEC.build_webhooks(no_public_url)
