"""Tests of voxbridge.server.security: signed URLs, Twilio signatures, per-call tokens, exposure.

The oracle for signatures is the official ``twilio`` package: whatever
``RequestValidator(token).compute_signature(url, params)`` produces for the URL Twilio requested
must pass, and voxbridge must accept exactly what ``RequestValidator.validate`` accepts for one of
its tokens (the port variants included). Synchronous tables first, then a property test.
"""

from __future__ import annotations

import hmac
import time
import warnings
from typing import Any
from urllib.parse import urlencode
from xml.etree import ElementTree

import attrs
import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from voxbridge.carriers.registry import CARRIERS
from voxbridge.carriers.twilio_webhooks import TwilioWebhooks
from voxbridge.cli import _settings, build_parser
from voxbridge.journal import MemoryJournal
from voxbridge.server import security
from voxbridge.server.app import VoxbridgeApp
from voxbridge.server.security import (
    CallTokenError,
    CallTokens,
    CarrierAuth,
    FormParams,
    TwilioSignatures,
    check_exposure,
    is_loopback,
    parse_form,
    signature_header,
    stream_url,
    token_key,
    webhook_url,
)
from voxbridge.settings import Settings, SettingsError

TOKEN_A = "a3f1c2d4e5b6a7980123456789abcdef"  # the shape of a Twilio auth token
TOKEN_B = "0fedcba9876543210fedcba987654321"
TOKEN_C = "ffffffffffffffffffffffffffffffff"
PUBLIC = "https://voice.example.com"
VOICE = "https://voice.example.com/twilio/voice"
MEDIA = "wss://voice.example.com/twilio/media"
CALL = "CA" + "0123456789abcdef" * 2
OTHER_CALL = "CA" + "fedcba9876543210" * 2
FORM = {"CallSid": CALL, "From": "+15551230000", "To": "+15559870000", "CallerName": ""}
NOW = 1_800_000_000.25
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sign(token: str, url: str, params: dict[str, Any] | None = None) -> str:
    """What Twilio puts in ``X-Twilio-Signature`` (the official implementation)."""
    return str(RequestValidator(token).compute_signature(url, params or {}))


def twilio_accepts(tokens: list[str], url: str, params: Any, signature: str) -> bool:
    """The oracle: the official validator, under any of ``tokens``."""
    return any(RequestValidator(t).validate(url, params, signature) for t in tokens)


def _without(form: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in form.items() if v}


def _flip(signature: str) -> str:
    middle = len(signature) // 2
    return signature[:middle] + ("A" if signature[middle] != "A" else "B") + signature[middle + 1 :]


# --- URLs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("public", "query", "webhook", "stream"),
    [
        (PUBLIC, b"", VOICE, MEDIA),
        (PUBLIC + "/", b"", VOICE, MEDIA),
        (
            "https://voice.example.com:8443",
            b"",
            "https://voice.example.com:8443/twilio/voice",
            "wss://voice.example.com:8443/twilio/media",
        ),
        (
            "https://example.com/vox/",
            b"",
            "https://example.com/vox/twilio/voice",
            "wss://example.com/vox/twilio/media",
        ),
        (
            PUBLIC,
            b"agent=sales&x=a%20b",
            VOICE + "?agent=sales&x=a%20b",  # the raw query string, as requested
            MEDIA + "?agent=sales&x=a%20b",
        ),
        (
            "http://localhost:8080",
            b"",
            "http://localhost:8080/twilio/voice",
            "ws://localhost:8080/twilio/media",
        ),
    ],
)
def test_signed_urls_are_rebuilt_from_the_public_url(
    public: str, query: bytes, webhook: str, stream: str
) -> None:
    assert webhook_url(public, query) == webhook
    assert stream_url(public, query) == stream


# --- signatures: the official package as the oracle ----------------------------------------------


def test_a_signed_webhook_with_its_parameters_is_accepted() -> None:
    params = parse_form(urlencode(FORM).encode())
    signature = sign(TOKEN_A, VOICE, FORM)
    assert TwilioSignatures([TOKEN_A]).valid(VOICE, params, signature)
    assert TwilioSignatures([TOKEN_A]).valid(VOICE, params, signature.encode())  # header bytes
    assert twilio_accepts([TOKEN_A], VOICE, FORM, signature)


def test_a_signed_websocket_upgrade_with_no_parameters_is_accepted() -> None:
    signature = sign(TOKEN_A, MEDIA)
    assert TwilioSignatures([TOKEN_A]).valid(MEDIA, None, signature)
    assert TwilioSignatures([TOKEN_A]).valid(MEDIA, {}, signature)


TAMPERED = [
    ("no signature", VOICE, FORM, None),
    ("empty signature", VOICE, FORM, ""),
    ("another host", VOICE, FORM, sign(TOKEN_A, "https://evil.example.com/twilio/voice", FORM)),
    ("another path", VOICE, FORM, sign(TOKEN_A, PUBLIC + "/twilio/other", FORM)),
    ("plain http", VOICE, FORM, sign(TOKEN_A, "http://voice.example.com/twilio/voice", FORM)),
    ("a query added", VOICE, FORM, sign(TOKEN_A, VOICE + "?agent=x", FORM)),
    ("a query removed", VOICE + "?agent=x", FORM, sign(TOKEN_A, VOICE, FORM)),
    ("a parameter changed", VOICE, FORM, sign(TOKEN_A, VOICE, {**FORM, "CallSid": OTHER_CALL})),
    ("a parameter added", VOICE, FORM, sign(TOKEN_A, VOICE, {**FORM, "Extra": "1"})),
    ("a parameter removed", VOICE, FORM, sign(TOKEN_A, VOICE, {"CallSid": CALL})),
    ("a blank parameter dropped", VOICE, FORM, sign(TOKEN_A, VOICE, _without(FORM))),
    (
        "another port",
        VOICE,
        FORM,
        sign(TOKEN_A, "https://voice.example.com:8443/twilio/voice", FORM),
    ),
    ("another token", VOICE, FORM, sign(TOKEN_C, VOICE, FORM)),
    ("one character flipped", VOICE, FORM, _flip(sign(TOKEN_A, VOICE, FORM))),
    ("truncated", VOICE, FORM, sign(TOKEN_A, VOICE, FORM)[:-2]),
    ("padded", VOICE, FORM, sign(TOKEN_A, VOICE, FORM) + "="),
    ("webhook signature on the socket", MEDIA, {}, sign(TOKEN_A, VOICE)),
    (
        "socket signed as https",
        MEDIA,
        {},
        sign(TOKEN_A, "https://voice.example.com/twilio/media"),
    ),
    ("socket signed with parameters", MEDIA, {}, sign(TOKEN_A, MEDIA, FORM)),
    ("non-ASCII header", VOICE, FORM, "é" * 28),
]


@pytest.mark.parametrize(
    ("what", "url", "params", "signature"),
    TAMPERED,
    ids=[case[0] for case in TAMPERED],
)
def test_tampering_is_refused_as_twilio_refuses_it(
    what: str, url: str, params: dict[str, str], signature: str | None
) -> None:
    checker = TwilioSignatures([TOKEN_A, TOKEN_B])
    form = parse_form(urlencode(params).encode())
    assert not checker.valid(url, form, signature), what
    if signature:
        assert not twilio_accepts([TOKEN_A, TOKEN_B], url, params, signature), what


@pytest.mark.parametrize(
    ("public", "signed", "accepted"),
    [
        # Twilio's own validator checks the URL with and without the default port.
        (PUBLIC, "https://voice.example.com:443/twilio/voice", True),
        ("https://voice.example.com:443", VOICE, True),
        ("https://voice.example.com:443", "https://voice.example.com:443/twilio/voice", True),
        (PUBLIC, "https://voice.example.com:8443/twilio/voice", False),
        ("https://voice.example.com:8443", "https://voice.example.com:8443/twilio/voice", True),
        ("https://voice.example.com:8443", VOICE, True),  # the port removed: Twilio accepts it too
        ("http://voice.example.com", "http://voice.example.com:80/twilio/voice", True),
        (PUBLIC, "https://voice.example.com:80/twilio/voice", False),
    ],
)
def test_port_variants_behave_as_twilios_validator(
    public: str, signed: str, accepted: bool
) -> None:
    url = webhook_url(public)
    signature = sign(TOKEN_A, signed, FORM)
    ours = TwilioSignatures([TOKEN_A]).valid(url, parse_form(urlencode(FORM).encode()), signature)
    assert ours is accepted
    assert twilio_accepts([TOKEN_A], url, FORM, signature) is accepted


@pytest.mark.parametrize("signed", [MEDIA, "wss://voice.example.com:80/twilio/media"])
def test_websocket_port_variants_behave_as_twilios_validator(signed: str) -> None:
    # twilio-python adds :443 only for https; for wss its "with port" variant is :80. voxbridge
    # accepts exactly what that validator accepts, no more.
    signature = sign(TOKEN_A, signed)
    url = stream_url(PUBLIC)
    assert TwilioSignatures([TOKEN_A]).valid(url, None, signature)
    assert twilio_accepts([TOKEN_A], url, {}, signature)
    port_443 = sign(TOKEN_A, "wss://voice.example.com:443/twilio/media")
    assert TwilioSignatures([TOKEN_A]).valid(url, None, port_443) is twilio_accepts(
        [TOKEN_A], url, {}, port_443
    )


@pytest.mark.parametrize("signer", [TOKEN_A, TOKEN_B])
def test_rotation_accepts_a_signature_under_either_token(signer: str) -> None:
    params = parse_form(urlencode(FORM).encode())
    signature = sign(signer, VOICE, FORM)
    assert TwilioSignatures([TOKEN_A, TOKEN_B]).valid(VOICE, params, signature)
    assert TwilioSignatures([TOKEN_B, TOKEN_A]).valid(VOICE, params, signature)
    assert not TwilioSignatures([TOKEN_C]).valid(VOICE, params, signature)
    other = TOKEN_B if signer == TOKEN_A else TOKEN_A
    assert not TwilioSignatures([other]).valid(VOICE, params, signature)


def test_every_candidate_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # No short cut once one matched, and hmac.compare_digest (not twilio's Python loop, whose
    # time depends on how many characters match) for each: 2 tokens x 2 port variants.
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", counting)
    signature = sign(TOKEN_A, VOICE, FORM)
    assert TwilioSignatures([TOKEN_A, TOKEN_B]).valid(VOICE, FORM, signature)
    assert len(calls) == 4
    assert sum(real(a, b) for a, b in calls) == 1


def test_parse_form_reads_what_twilio_signs() -> None:
    form = parse_form(b"CallSid=CA1&CallerName=&From=%2B1555&Name=a+b&Name=c&Emoji=%F0%9F%93%9E")
    assert form == {
        "CallSid": ["CA1"],
        "CallerName": [""],  # blank values are signed too
        "From": ["+1555"],
        "Name": ["a b", "c"],  # a repeated name keeps every value
        "Emoji": ["\N{TELEPHONE RECEIVER}"],
    }
    assert form.getall("Name") == ["a b", "c"]
    assert parse_form(b"") == {}


def test_repeated_parameters_are_signed_as_twilio_signs_them() -> None:
    body = b"Digits=1&Digits=2&CallSid=CA1"
    form = parse_form(body)
    signature = str(RequestValidator(TOKEN_A).compute_signature(VOICE, form))
    assert TwilioSignatures([TOKEN_A]).valid(VOICE, form, signature)
    assert not TwilioSignatures([TOKEN_A]).valid(
        VOICE, parse_form(b"Digits=1&CallSid=CA1"), signature
    )


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"x-twilio-signature", b"abc=")], b"abc="),
        ([(b"host", b"x"), (b"X-Twilio-Signature", b"abc=")], b"abc="),
        ([], None),
        ([(b"x-twilio-signature", b"")], None),
        ([(b"x-twilio-signature", b"abc="), (b"x-twilio-signature", b"abc=")], None),  # ambiguous
    ],
)
def test_signature_header(headers: list[tuple[bytes, bytes]], expected: bytes | None) -> None:
    assert signature_header(headers) == expected


values = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
forms = st.dictionaries(
    st.text("abcdefgXYZ_", min_size=1, max_size=6), st.lists(values, min_size=1, max_size=3)
)


@PROPERTY
@given(
    form=forms,
    public=st.sampled_from([PUBLIC, "https://voice.example.com:443", "https://h.example:8443/p"]),
    query=st.sampled_from([b"", b"a=1", b"agent=x%20y&b="]),
    signer=st.sampled_from([TOKEN_A, TOKEN_B, TOKEN_C]),
    signed_port=st.sampled_from(["", ":443", ":8443", ":80"]),
    tamper=st.sampled_from(["none", "flip", "param"]),
)
def test_accepts_exactly_what_twilios_validator_accepts(
    form: dict[str, list[str]],
    public: str,
    query: bytes,
    signer: str,
    signed_port: str,
    tamper: str,
) -> None:
    url = webhook_url(public, query)
    # What Twilio may have signed: the same URL with or without some port.
    parts = url.split("/", 3)
    host = parts[2].split(":")[0] + signed_port
    signed_url = f"{parts[0]}//{host}/{parts[3]}"
    body = urlencode([(k, v) for k, vs in form.items() for v in vs]).encode()
    params = parse_form(body)
    signature = str(RequestValidator(signer).compute_signature(signed_url, params))
    if tamper == "flip":
        signature = _flip(signature)
    elif tamper == "param":
        params = FormParams({**params, "Injected": ["1"]})
    ours = TwilioSignatures([TOKEN_A, TOKEN_B]).valid(url, params, signature)
    assert ours is twilio_accepts([TOKEN_A, TOKEN_B], url, params, signature)
    default_port = signed_port == "" or (signed_port == ":443" and ":8443" not in public)
    if tamper == "none" and signer != TOKEN_C and default_port:
        assert ours  # the common case is indeed accepted, not just "agrees with the oracle"
    if tamper != "none" or signer == TOKEN_C:
        assert not ours


def test_signature_checker_needs_one_or_two_tokens() -> None:
    with pytest.raises(ValueError):
        TwilioSignatures([])
    with pytest.raises(ValueError):
        TwilioSignatures([TOKEN_A, TOKEN_B, TOKEN_C])


# --- per-call tokens -----------------------------------------------------------------------------


def claims_of(token: str, auth_token: str = TOKEN_A) -> dict[str, Any]:
    """The claims, checked against ``auth_token``'s key (not against the wall clock)."""
    options = {"verify_exp": False, "verify_iat": False}
    return dict(jwt.decode(token, token_key(auth_token), algorithms=["HS256"], options=options))


def test_a_token_is_an_hs256_jwt_bound_to_the_call() -> None:
    tokens = CallTokens([TOKEN_A], ttl=60)
    token = tokens.mint(CALL, now=NOW)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = claims_of(token)
    assert claims == {"sub": CALL, "iat": 1_800_000_000, "exp": 1_800_000_061}
    assert claims["exp"] - NOW >= 60  # never shorter than the ttl
    tokens.verify(token, CALL, now=NOW)
    tokens.verify(token, CALL, now=NOW + 60)


def test_the_key_is_derived_from_the_auth_token() -> None:
    key = token_key(TOKEN_A)
    context = b"voxbridge call token v1\x00twilio"
    assert key == hmac.new(TOKEN_A.encode(), context, "sha256").digest()
    assert len(key) == 32 and TOKEN_A.encode() not in key
    assert token_key(TOKEN_A) != token_key(TOKEN_B)
    # Stateless: another replica (another instance, same auth token) verifies it.
    token = CallTokens([TOKEN_A], ttl=60).mint(CALL, now=NOW)
    CallTokens([TOKEN_A], ttl=60).verify(token, CALL, now=NOW + 1)


def test_the_key_is_derived_per_carrier() -> None:
    """The same secret on two carriers gives two keys: a token minted for one carrier's call is
    refused by the other's checks (finding 15: it was one key for every carrier)."""
    assert token_key(TOKEN_A, "plivo") != token_key(TOKEN_A, "twilio")
    assert (
        token_key(TOKEN_A, "plivo")
        == hmac.new(TOKEN_A.encode(), b"voxbridge call token v1\x00plivo", "sha256").digest()
    )
    token = CallTokens([TOKEN_A], ttl=60, carrier="vonage").mint(CALL, now=NOW)
    CallTokens([TOKEN_A], ttl=60, carrier="vonage").verify(token, CALL, now=NOW + 1)
    for other in ("twilio", "plivo", "telnyx"):
        with pytest.raises(CallTokenError, match="not signed"):
            CallTokens([TOKEN_A], ttl=60, carrier=other).verify(token, CALL, now=NOW + 1)


def test_an_upgrade_check_skips_only_the_call_binding() -> None:
    """``call_sid`` ``None`` (a media upgrade names no call yet): signature and expiry still."""
    tokens = CallTokens([TOKEN_A], ttl=60)
    token = tokens.mint(CALL, now=NOW)
    assert tokens.verify(token, None, now=NOW + 1)["sub"] == CALL
    with pytest.raises(CallTokenError, match="expired"):
        tokens.verify(token, None, now=NOW + 61)
    with pytest.raises(CallTokenError, match="not signed"):
        CallTokens([TOKEN_B], ttl=60).verify(token, None, now=NOW + 1)


KEY_A = token_key(TOKEN_A)
GOOD = {"sub": CALL, "iat": 1_800_000_000, "exp": 1_800_000_060}


def _forge(claims: dict[str, Any], key: bytes | None = KEY_A, algorithm: str = "HS256") -> str:
    """A token voxbridge did not mint (PyJWT's key-length warning is beside the point here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        return jwt.encode(claims, key, algorithm=algorithm)


BAD_TOKENS = [
    ("missing", None, "missing"),
    ("empty", "", "missing"),
    ("not a JWT", "not-a-token", "malformed"),
    ("three dots of junk", "a.b.c", "malformed"),
    ("another auth token's", CallTokens([TOKEN_C], 60).mint(CALL, now=NOW), "not signed"),
    ("another call's", CallTokens([TOKEN_A], 60).mint(OTHER_CALL, now=NOW), "another call"),
    ("expired", CallTokens([TOKEN_A], 60).mint(CALL, now=NOW - 61), "expired"),
    ("issued in the future", _forge({**GOOD, "iat": 1_800_000_010}), "future"),
    ("no sub", _forge({"iat": GOOD["iat"], "exp": GOOD["exp"]}), "malformed"),
    ("no exp", _forge({"sub": CALL, "iat": GOOD["iat"]}), "malformed"),
    ("no iat", _forge({"sub": CALL, "exp": GOOD["exp"]}), "malformed"),
    ("float exp", _forge({**GOOD, "exp": 1_800_000_060.5}), "malformed"),
    ("numeric sub", _forge({**GOOD, "sub": 12}), "malformed"),
    ("HS512 with the right key", _forge(GOOD, algorithm="HS512"), "malformed"),
    ("alg none", _forge(GOOD, key=None, algorithm="none"), "malformed"),
    ("the auth token as key", _forge(GOOD, key=TOKEN_A.encode() * 2), "not signed"),
]


@pytest.mark.parametrize(
    ("what", "token", "problem"),
    BAD_TOKENS,
    ids=[case[0] for case in BAD_TOKENS],
)
def test_bad_tokens_are_refused(what: str, token: str | None, problem: str) -> None:
    with pytest.raises(CallTokenError) as refused:
        CallTokens([TOKEN_A], ttl=60).verify(token, CALL, now=NOW)
    message = str(refused.value)
    assert problem in message, what
    # Raised from None: PyJWT's own message (which may quote the token) is not chained in.
    assert refused.value.__cause__ is None
    assert refused.value.__context__ is None or refused.value.__suppress_context__
    for secret in filter(None, (token, TOKEN_A)):
        assert secret not in message
        assert secret not in repr(refused.value)


def test_a_token_expires_exactly_at_exp() -> None:
    tokens = CallTokens([TOKEN_A], ttl=60)
    token = tokens.mint(CALL, now=1000.0)
    tokens.verify(token, CALL, now=1059.999)
    with pytest.raises(CallTokenError, match="expired"):
        tokens.verify(token, CALL, now=1060.0)


def test_a_small_clock_difference_between_replicas_is_tolerated() -> None:
    token = CallTokens([TOKEN_A], ttl=60).mint(CALL, now=NOW + security.CLOCK_SKEW)
    CallTokens([TOKEN_A], ttl=60).verify(token, CALL, now=NOW)  # minted by a clock ahead of ours


def test_rotation_mints_with_the_first_token_and_accepts_either() -> None:
    before = CallTokens([TOKEN_A], ttl=60)
    rotating = CallTokens([TOKEN_B, TOKEN_A], ttl=60)
    after = CallTokens([TOKEN_B], ttl=60)
    old = before.mint(CALL, now=NOW)
    new = rotating.mint(CALL, now=NOW)
    rotating.verify(old, CALL, now=NOW)  # minted by a replica not yet rotated
    rotating.verify(new, CALL, now=NOW)
    before_rotated = CallTokens([TOKEN_A, TOKEN_B], ttl=60)
    before_rotated.verify(new, CALL, now=NOW)
    claims_of(new, TOKEN_B)  # signed with the first token's key
    after.verify(new, CALL, now=NOW)
    with pytest.raises(CallTokenError, match="not signed"):
        after.verify(old, CALL, now=NOW)


def test_token_helpers_keep_secrets_out_of_repr() -> None:
    auth = CarrierAuth.from_settings(
        Settings(twilio_auth_token=f"{TOKEN_A},{TOKEN_B}", public_url=PUBLIC), CARRIERS["twilio"]
    )
    assert auth.checks and auth.tokens is not None
    webhooks = auth.webhooks
    assert isinstance(webhooks, TwilioWebhooks)
    for text in (repr(auth), repr(webhooks), repr(webhooks.signatures), repr(auth.tokens)):
        assert TOKEN_A not in text and TOKEN_B not in text
        assert token_key(TOKEN_A).hex() not in text


def test_token_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError):
        CallTokens([TOKEN_A], ttl=0)
    with pytest.raises(ValueError):
        CallTokens([], ttl=60)


# --- the TwiML -----------------------------------------------------------------------------------


def test_twiml_carries_the_token_xml_escaped() -> None:
    app = VoxbridgeApp(Settings(public_url=PUBLIC), journal=MemoryJournal())
    tricky = "a\"b<c>&d'e"
    root = ElementTree.fromstring(app.twiml({"headers": []}, tricky))
    stream = root.find("./Connect/Stream")
    assert stream is not None and stream.get("url") == MEDIA
    [parameter] = stream.findall("Parameter")
    assert parameter.attrib == {"name": "voxbridge_token", "value": tricky}
    plain = app.twiml({"headers": []})
    assert f'<Stream url="{MEDIA}" />' in plain and "Parameter" not in plain


# --- settings ------------------------------------------------------------------------------------


def test_a_token_requires_the_public_url_naming_both_flags() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings(twilio_auth_token=TOKEN_A)
    message = str(refused.value)
    assert "--twilio-auth-token" in message and "--public-url" in message
    assert TOKEN_A not in message


@pytest.mark.parametrize(
    "value",
    ["", ",", f"{TOKEN_A},", f",{TOKEN_A}", f"{TOKEN_A},{TOKEN_B},{TOKEN_C}", f"{TOKEN_A}, "],
)
def test_bad_token_lists_are_refused_without_quoting_them(value: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings(twilio_auth_token=value, public_url=PUBLIC)
    assert "--twilio-auth-token" in str(refused.value)
    for token in (TOKEN_A, TOKEN_B, TOKEN_C):
        assert token not in str(refused.value)


def test_the_auth_token_is_split_for_rotation_and_kept_out_of_repr() -> None:
    settings_ = Settings(twilio_auth_token=f" {TOKEN_A} , {TOKEN_B}", public_url=PUBLIC)
    assert settings_.twilio_auth_tokens == (TOKEN_A, TOKEN_B)
    assert Settings(twilio_auth_token=TOKEN_A, public_url=PUBLIC).twilio_auth_tokens == (TOKEN_A,)
    assert Settings().twilio_auth_tokens == ()
    assert TOKEN_A not in repr(settings_) and TOKEN_B not in repr(settings_)
    field = attrs.fields(Settings).twilio_auth_token
    assert field.metadata["secret"] is True
    off = CarrierAuth.from_settings(Settings(), CARRIERS["twilio"])
    assert not off.checks and off.tokens is None


def test_security_settings_from_the_environment() -> None:
    env = {
        "VOXBRIDGE_TWILIO_AUTH_TOKEN": f"{TOKEN_A},{TOKEN_B}",
        "VOXBRIDGE_PUBLIC_URL": PUBLIC,
        "VOXBRIDGE_CALL_TOKEN_TTL": "30",
        "VOXBRIDGE_INSECURE": "true",
    }
    loaded = Settings.from_env(env)
    assert loaded.twilio_auth_tokens == (TOKEN_A, TOKEN_B)
    assert loaded.call_token_ttl == 30.0
    assert loaded.insecure is True
    assert Settings().call_token_ttl == 60.0 and Settings().insecure is False


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("1", True),
        ("TRUE", True),
        ("yes", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
def test_boolean_environment_values(raw: str, value: bool) -> None:
    assert Settings.from_env({"VOXBRIDGE_INSECURE": raw}).insecure is value


def test_a_bad_boolean_is_refused() -> None:
    with pytest.raises(SettingsError, match="VOXBRIDGE_INSECURE"):
        Settings.from_env({"VOXBRIDGE_INSECURE": "maybe"})
    with pytest.raises(SettingsError, match="--insecure"):
        Settings(insecure="yes")  # type: ignore[arg-type]


def test_call_token_ttl_must_be_positive() -> None:
    with pytest.raises(SettingsError, match="--call-token-ttl"):
        Settings(call_token_ttl=0)


@pytest.mark.parametrize(
    "url",
    [
        "voice.example.com",
        "ftp://voice.example.com",
        "wss://voice.example.com",
        "https://",
        "https://voice.example.com?x=1",
        "https://voice.example.com#frag",
        "https://user:secret@voice.example.com",
        "https://voice.example.com:notaport",
    ],
)
def test_bad_public_urls_are_refused(url: str) -> None:
    with pytest.raises(SettingsError, match="--public-url"):
        Settings(public_url=url)


def test_the_command_line_takes_the_security_flags() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--twilio-auth-token",
            TOKEN_A,
            "--public-url",
            PUBLIC,
            "--insecure",
            "--call-token-ttl",
            "20",
        ]
    )
    loaded = _settings(args)
    assert loaded.twilio_auth_tokens == (TOKEN_A,)
    assert loaded.insecure is True
    assert loaded.call_token_ttl == 20.0
    assert _settings(build_parser().parse_args(["serve"])).insecure is False


# --- exposure ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.5", False),
        ("voice.example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_public_bind_without_a_token_is_refused() -> None:
    with pytest.raises(SettingsError) as refused:
        check_exposure(Settings(host="0.0.0.0"))
    message = str(refused.value)
    assert "--twilio-auth-token" in message and "--insecure" in message and "0.0.0.0" in message


@pytest.mark.parametrize(
    "values",
    [
        {"host": "127.0.0.1"},
        {"host": "::1"},
        {"host": "localhost"},
        {"host": "0.0.0.0", "insecure": True},
        {"host": "0.0.0.0", "twilio_auth_token": TOKEN_A, "public_url": PUBLIC},
    ],
)
def test_allowed_binds(values: dict[str, Any]) -> None:
    check_exposure(Settings(**values))


def test_tokens_minted_now_verify_now() -> None:
    # The app uses the wall clock (tokens cross replicas): mint and verify agree on it.
    tokens = CallTokens([TOKEN_A], ttl=60)
    tokens.verify(tokens.mint(CALL, now=time.time()), CALL, now=time.time())
