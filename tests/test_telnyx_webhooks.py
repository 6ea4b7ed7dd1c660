"""Telnyx's HTTP side (voxbridge.carriers.telnyx_webhooks): Ed25519 webhook signatures, the
stream-token upgrade check, the TeXML webhook and the TeXML answers.

The oracle for signatures is the official ``telnyx`` package's
``telnyx.lib.webhook_verification.verify_webhook_signature`` (with PyNaCl, the ``webhooks``
extra): every case, valid or not, must get the same verdict from both. The keys are a real
Ed25519 pair made for the test (:class:`voxbridge.testing.fake_telnyx.WebhookSigner`). The
official check reads the wall clock, so these cases use it too, with margins of seconds around
the tolerance.
"""

from __future__ import annotations

import base64
import time
from urllib.parse import urlencode
from xml.etree import ElementTree

import pytest
from telnyx.lib.webhook_verification import (
    TIMESTAMP_TOLERANCE_SECONDS,
    WebhookVerificationError,
    verify_webhook_signature,
)

from voxbridge.carriers.base import CallRequest, HttpRequest
from voxbridge.carriers.telnyx_webhooks import TOLERANCE, TelnyxSettings, TelnyxWebhooks
from voxbridge.errors import RemoteProtocolError, SettingsError
from voxbridge.testing.fake_telnyx import WebhookSigner

URL = "https://voice.example.com/telnyx/voice"
BODY = urlencode(
    {
        "CallSid": "v3:abc-123",
        "AccountSid": "f5586561",
        "From": "+35319605860",
        "To": "+13129457420",
    }
).encode()
FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def signer() -> WebhookSigner:
    return WebhookSigner()


def webhooks(signer: WebhookSigner, **changes: object) -> TelnyxWebhooks:
    own = TelnyxSettings(public_key=signer.public_key, **{"api_key": "KEYtest", **changes})  # type: ignore[arg-type]
    return TelnyxWebhooks.from_settings(own)


def oracle(public_key: str, body: bytes, headers: dict[str, str]) -> bool:
    try:
        verify_webhook_signature(body, headers, public_key)
    except WebhookVerificationError:
        return False
    return True


def test_tolerance_is_the_official_one() -> None:
    assert TOLERANCE == TIMESTAMP_TOLERANCE_SECONDS


def _cases(
    signer: WebhookSigner, other: WebhookSigner, now: int
) -> list[tuple[str, bytes, dict[str, str], bool]]:
    good = signer.headers(BODY, now)
    return [
        ("valid", BODY, good, True),
        ("valid-recent", BODY, signer.headers(BODY, now - 280), True),
        ("valid-slightly-ahead", BODY, signer.headers(BODY, now + 280), True),
        ("stale", BODY, signer.headers(BODY, now - 320), False),
        ("future", BODY, signer.headers(BODY, now + 320), False),
        ("tampered-body", BODY + b"&AnsweredBy=human", good, False),
        ("other-key", BODY, other.headers(BODY, now), False),
        (
            "timestamp-swapped",
            BODY,
            {**good, "telnyx-timestamp": str(now - 1)},
            False,
        ),
        ("no-signature", BODY, {"telnyx-timestamp": str(now)}, False),
        (
            "no-timestamp",
            BODY,
            {"telnyx-signature-ed25519": good["telnyx-signature-ed25519"]},
            False,
        ),
        ("signature-not-base64", BODY, {**good, "telnyx-signature-ed25519": "%%%"}, False),
        (
            "signature-short",
            BODY,
            {**good, "telnyx-signature-ed25519": base64.b64encode(b"x" * 63).decode()},
            False,
        ),
        ("timestamp-not-digits", BODY, {**good, "telnyx-timestamp": "12a"}, False),
        ("empty-body-signed", b"", signer.headers(b"", now), True),
    ]


def test_signatures_agree_with_the_official_package(signer: WebhookSigner) -> None:
    other = WebhookSigner()
    hooks = webhooks(signer)
    assert hooks.checks
    now = int(time.time())
    for name, body, headers, expected in _cases(signer, other, now):
        request = HttpRequest(URL, "POST", {**FORM, **headers}, body)
        ours = hooks.webhook_signed(request, now=time.time())
        assert (ours, oracle(signer.public_key, body, headers)) == (expected, expected), name


def test_tolerance_is_judged_against_the_given_clock(signer: WebhookSigner) -> None:
    hooks = webhooks(signer)
    request = HttpRequest(URL, "POST", {**FORM, **signer.headers(BODY, 1_000_000)}, BODY)
    assert hooks.webhook_signed(request, now=1_000_300.0)
    assert hooks.webhook_signed(request, now=999_700.0)
    assert not hooks.webhook_signed(request, now=1_000_300.5)
    assert not hooks.webhook_signed(request, now=999_699.5)


def test_without_a_public_key_nothing_is_checked() -> None:
    hooks = TelnyxWebhooks.from_settings(TelnyxSettings())
    assert not hooks.checks
    assert hooks.webhook_signed(HttpRequest(URL, "POST", {}, BODY), now=0.0)


# ------------------------------------------------------------------------------------- upgrade

MEDIA = "wss://voice.example.com/telnyx/media"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-telnyx-streaming-auth-token": "s3cret-stream-token"}, True),
        ({"x-telnyx-streaming-auth-token": "s3cret-stream-tokeN"}, False),
        ({"x-telnyx-streaming-auth-token": ""}, False),
        ({"x-telnyx-streaming-auth-token": "s3cret-stream-token "}, False),
        ({}, False),
        ({"authorization": "Bearer s3cret-stream-token"}, False),
    ],
)
def test_upgrade_needs_the_stream_token_when_one_is_set(
    signer: WebhookSigner, headers: dict[str, str], expected: bool
) -> None:
    hooks = webhooks(signer, stream_token="s3cret-stream-token")
    assert hooks.upgrade_signed(HttpRequest(MEDIA, "GET", headers), now=0.0) is expected


def test_upgrade_without_a_stream_token_carries_nothing_to_check(signer: WebhookSigner) -> None:
    assert webhooks(signer).upgrade_signed(HttpRequest(MEDIA, "GET", {}), now=0.0)
    # ... so the server checks the per-call token in the stream URL's query instead
    assert webhooks(signer).upgrade_token_in_query
    assert not webhooks(signer, stream_token="tok").upgrade_token_in_query


def test_token_secrets_are_the_secrets_never_the_public_key(signer: WebhookSigner) -> None:
    assert webhooks(signer).token_secrets == ("KEYtest",)
    # the stream token travels in every upgrade's header: a token secret only without an API key
    assert webhooks(signer, api_key="KEYapi", stream_token="tok").token_secrets == ("KEYapi",)
    assert webhooks(signer, api_key=None, stream_token="tok").token_secrets == ("tok",)
    with pytest.raises(SettingsError, match="needs TELNYX_API_KEY"):
        webhooks(signer, api_key=None)
    with pytest.raises(ValueError, match="secret"):
        TelnyxWebhooks(public_key=base64.b64decode(signer.public_key))


def test_without_checks_there_are_no_token_secrets() -> None:
    hooks = TelnyxWebhooks.from_settings(TelnyxSettings(api_key="KEYapi"))
    assert (hooks.checks, hooks.token_secrets) == (False, ())


def test_a_stream_token_alone_turns_the_checks_on_but_signs_no_webhook() -> None:
    hooks = TelnyxWebhooks.from_settings(TelnyxSettings(stream_token="tok"))
    assert (hooks.checks, hooks.token_secrets) == (True, ("tok",))
    assert hooks.webhook_signed(HttpRequest(URL, "POST", FORM, BODY), now=0.0)
    assert not hooks.upgrade_signed(HttpRequest(MEDIA, "GET", {}), now=0.0)


def test_repr_names_no_secret(signer: WebhookSigner) -> None:
    text = repr(webhooks(signer, api_key="KEYapi-secret", stream_token="tok-secret"))
    assert "secret" not in text and signer.public_key not in text


# ------------------------------------------------------------------------------------- webhook


def test_call_from_a_texml_form() -> None:
    body = urlencode(
        {"CallSid": "v3:abc", "To": "+13129457420", "AnsweredBy": "machine_start", "X": "1"}
    ).encode()
    hooks = TelnyxWebhooks()
    assert hooks.call(HttpRequest(URL, "POST", FORM, body)) == CallRequest(
        "v3:abc", "+13129457420", "machine_start"
    )


def test_call_from_json_and_from_a_get_query() -> None:
    hooks = TelnyxWebhooks()
    json_request = HttpRequest(
        URL, "POST", {"content-type": "application/json"}, b'{"CallSid":"v3:j","To":"+1555"}'
    )
    assert hooks.call(json_request) == CallRequest("v3:j", "+1555")
    get = HttpRequest(URL + "?CallSid=v3%3Aq&To=%2B1444", "GET", {})
    assert hooks.call(get) == CallRequest("v3:q", "+1444")


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (FORM, b"To=%2B1555"),
        (FORM, b""),
        (FORM, b"CallSid="),
        ({"content-type": "application/json"}, b"[1]"),
        ({"content-type": "application/json"}, b"{"),
        ({"content-type": "application/json"}, b'{"CallSid": 5}'),
    ],
)
def test_a_webhook_naming_no_call_is_refused(headers: dict[str, str], body: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="Telnyx webhook"):
        TelnyxWebhooks().call(HttpRequest(URL, "POST", headers, body))


# ------------------------------------------------------------------------------------- answers


def test_connect_asks_for_a_bidirectional_rtp_stream_with_parameters() -> None:
    hooks = TelnyxWebhooks.from_settings(TelnyxSettings())
    params = {"voxbridge_token": "a.b.c", "agent": "x\"<&>'y"}
    answer = hooks.connect(MEDIA, params)
    assert answer.content_type == "application/xml"
    assert answer.body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = ElementTree.fromstring(answer.body)
    assert root.tag == "Response" and [c.tag for c in root] == ["Connect"]
    (stream,) = root[0]
    assert stream.tag == "Stream"
    assert stream.attrib == {
        "url": MEDIA,
        "track": "inbound_track",
        "codec": "PCMU",
        "bidirectionalMode": "rtp",
        "bidirectionalCodec": "PCMU",
        "bidirectionalSamplingRate": "8000",
    }
    assert [(p.tag, p.attrib) for p in stream] == [
        ("Parameter", {"name": name, "value": value}) for name, value in params.items()
    ]


def test_connect_with_l16_16k() -> None:
    hooks = TelnyxWebhooks.from_settings(TelnyxSettings(codec="L16", sample_rate=16000))
    stream = ElementTree.fromstring(hooks.connect(MEDIA, {}).body)[0][0]
    assert (
        stream.attrib["codec"],
        stream.attrib["bidirectionalCodec"],
        stream.attrib["bidirectionalSamplingRate"],
        stream.attrib["bidirectionalMode"],
    ) == ("L16", "L16", "16000", "rtp")


def test_hangup() -> None:
    answer = TelnyxWebhooks().hangup()
    root = ElementTree.fromstring(answer.body)
    assert (answer.content_type, root.tag, [c.tag for c in root]) == (
        "application/xml",
        "Response",
        ["Hangup"],
    )
