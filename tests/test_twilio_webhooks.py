"""Twilio's CarrierWebhooks: the checks, the webhook's call, and the TwiML answers, sans-IO.

The oracle for signatures is the official ``twilio`` package (``RequestValidator``), as in
tests/test_security.py, which checks :class:`TwilioSignatures` itself in depth; here the requests
are :class:`HttpRequest` values as the server builds them (the public URL, lower-case headers, the
raw form body).
"""

from __future__ import annotations

from urllib.parse import urlencode
from xml.etree import ElementTree

import pytest
from twilio.request_validator import RequestValidator

from voxbridge.carriers.base import CallRequest, HttpRequest
from voxbridge.carriers.twilio_webhooks import SPEC, TwilioWebhooks, connect_twiml
from voxbridge.errors import RemoteProtocolError
from voxbridge.settings import Settings

TOKEN_A = "a3f1c2d4e5b6a7980123456789abcdef"
TOKEN_B = "0fedcba9876543210fedcba987654321"
VOICE = "https://voice.example.com/twilio/voice"
MEDIA = "wss://voice.example.com/twilio/media"
CALL = "CA" + "0123456789abcdef" * 2
FORM = {"CallSid": CALL, "From": "+15551230000", "To": "+15559870000", "AnsweredBy": "human"}
NOW = 1_800_000_000.0


def webhook(form: dict[str, str], signature: str | None = None, url: str = VOICE) -> HttpRequest:
    headers = {} if signature is None else {"x-twilio-signature": signature}
    return HttpRequest(url, "POST", headers, urlencode(form).encode())


def upgrade(signature: str | None, url: str = MEDIA) -> HttpRequest:
    headers = {} if signature is None else {"x-twilio-signature": signature}
    return HttpRequest(url, "GET", headers)


def sign(token: str, url: str, params: dict[str, str] | None = None) -> str:
    return str(RequestValidator(token).compute_signature(url, params or {}))


def test_without_auth_tokens_nothing_is_checked() -> None:
    off = TwilioWebhooks()
    assert not off.checks and off.token_secrets == () and off.signatures is None
    assert off.webhook_signed(webhook(FORM), now=NOW)
    assert off.upgrade_signed(upgrade(None), now=NOW)


def test_webhook_and_upgrade_signatures_under_either_token() -> None:
    hooks = TwilioWebhooks([TOKEN_A, TOKEN_B])
    assert hooks.checks and hooks.token_secrets == (TOKEN_A, TOKEN_B)
    for token in (TOKEN_A, TOKEN_B):
        assert hooks.webhook_signed(webhook(FORM, sign(token, VOICE, FORM)), now=NOW)
        assert hooks.upgrade_signed(upgrade(sign(token, MEDIA)), now=NOW)
    other = "f" * 32
    refused = {
        "missing": webhook(FORM),
        "another token": webhook(FORM, sign(other, VOICE, FORM)),
        "another form": webhook({**FORM, "To": "+1555"}, sign(TOKEN_A, VOICE, FORM)),
        "another URL": webhook(FORM, sign(TOKEN_A, VOICE, FORM), url=VOICE + "?x=1"),
        "the upgrade's": webhook(FORM, sign(TOKEN_A, MEDIA)),
    }
    for what, request in refused.items():
        assert not hooks.webhook_signed(request, now=NOW), what
    assert not hooks.upgrade_signed(upgrade(None), now=NOW)
    assert not hooks.upgrade_signed(upgrade(sign(TOKEN_A, VOICE)), now=NOW)
    assert not hooks.upgrade_signed(upgrade(""), now=NOW)


def test_the_call_of_a_webhook() -> None:
    hooks = TwilioWebhooks()
    assert hooks.call(webhook(FORM)) == CallRequest(CALL, "+15559870000", "human")
    assert hooks.call(webhook({"CallSid": CALL})) == CallRequest(CALL, "", "")
    with pytest.raises(RemoteProtocolError, match="no CallSid in the request"):
        hooks.call(webhook({"To": "+15559870000"}))
    with pytest.raises(RemoteProtocolError):
        hooks.call(HttpRequest(VOICE, "POST", {}, b"\xff\xfe=garbage&&&"))


def test_connect_is_twiml_with_escaped_parameters_and_hangup_hangs_up() -> None:
    hooks = TwilioWebhooks([TOKEN_A])
    tricky = "a\"b<c>&d'e"
    answer = hooks.connect(MEDIA, {"agent": "sales", "voxbridge_token": tricky})
    assert answer.content_type == "text/xml"
    stream = ElementTree.fromstring(answer.body).find("./Connect/Stream")
    assert stream is not None and stream.get("url") == MEDIA
    assert [p.attrib for p in stream.findall("Parameter")] == [
        {"name": "agent", "value": "sales"},
        {"name": "voxbridge_token", "value": tricky},
    ]
    assert f'<Stream url="{MEDIA}" />' in connect_twiml(MEDIA, {})
    hangup = hooks.hangup()
    assert hangup.content_type == "text/xml"
    root = ElementTree.fromstring(hangup.body)
    assert [child.tag for child in root] == ["Hangup"]


def test_the_spec_builds_webhooks_from_the_flat_twilio_settings() -> None:
    settings = Settings(twilio_auth_token=f"{TOKEN_A},{TOKEN_B}", public_url="https://x.test")
    hooks = SPEC.build_webhooks(settings)
    assert hooks.checks and hooks.token_secrets == (TOKEN_A, TOKEN_B)
    assert not SPEC.build_webhooks(Settings()).checks
    for text in (repr(hooks), repr(SPEC)):
        assert TOKEN_A not in text and TOKEN_B not in text
