"""Twilio's HTTP side: ``X-Twilio-Signature`` checks, the voice webhook and its TwiML answers.

The :class:`~voxbridge.carriers.base.CarrierWebhooks` of Twilio (:class:`TwilioWebhooks`), and
Twilio's :class:`~voxbridge.carriers.spec.CarrierSpec` (:data:`SPEC`, one line of the registry).

**Signatures** (Twilio's "Webhooks security" reference): ``X-Twilio-Signature`` is the base64
HMAC-SHA1, keyed with the account's auth token, of the URL Twilio requested followed by the form
parameters (sorted by name, each name then its value). The URL is the public one the server
rebuilt from ``--public-url`` (:attr:`~voxbridge.carriers.base.HttpRequest.url`), never the
request's ``Host``. The media WebSocket upgrade is signed the same way over its ``wss://`` URL with
no parameters. The algorithm, and its with/without-port variants (Twilio is inconsistent about
signing ``:443``), is the official ``twilio.request_validator`` one: signatures are computed with
``RequestValidator.compute_signature`` and the port variants rebuilt with that module's own
``add_port``/``remove_port``. voxbridge compares with ``hmac.compare_digest``, because
``twilio.request_validator.compare`` is a Python loop which, though it never exits early, spends a
little more time on each character that differs. Every candidate (each auth token times each port
variant) is computed and compared; none is skipped once one matched.

``--twilio-auth-token`` takes two comma-separated tokens while the account's token is rotated: a
signature valid under either is accepted, per-call tokens (:attr:`TwilioWebhooks.token_secrets`)
are minted with the first and accepted under either.

**The webhook** is the voice URL of a phone number (``POST /twilio/voice``), a form with
``CallSid``, ``To``, ``From`` and, with answering machine detection, ``AnsweredBy``. The answers
are TwiML: ``<Connect><Stream url="wss://...">`` with ``<Parameter>`` tags, which Twilio hands back
in the stream's ``start.customParameters`` (the stream URL takes no query string: Twilio drops
it), or ``<Hangup/>``.

Sans-IO: no socket, no clock (``now`` is an argument), no logging; no error message or ``repr``
here contains a token, a signature or a key.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlparse
from xml.sax.saxutils import quoteattr

from twilio.request_validator import (  # type: ignore[import-untyped]  # no stubs
    RequestValidator,
    add_port,
    remove_port,
)

from ..errors import RemoteProtocolError
from ..options import NoSettings
from .base import CallRequest, HttpAnswer, HttpRequest
from .spec import CarrierSpec
from .twilio import TwilioStream
from .twilio_rest import TwilioRest, hangup_twiml

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "SIGNATURE_HEADER",
    "SPEC",
    "TWIML",
    "FormParams",
    "TwilioSignatures",
    "TwilioWebhooks",
    "connect_twiml",
    "parse_form",
    "signature_header",
]

#: The signature header (lower case: ASGI header names and :class:`HttpRequest` keys are).
SIGNATURE_HEADER = "x-twilio-signature"
#: The content type of TwiML answers.
TWIML = "text/xml"


class FormParams(dict[str, list[str]]):
    """Form parameters, each name with all its values (a form may repeat a name).

    ``RequestValidator`` reads repeated values through ``getall`` (the MultiDict protocol).
    """

    def getall(self, name: str) -> list[str]:
        return self[name]


def parse_form(body: bytes) -> FormParams:
    """An ``application/x-www-form-urlencoded`` body as Twilio signs it: every parameter, blank
    values included (Twilio signs ``Name`` + ``""`` for an empty one), ``+`` read as a space."""
    text = body.decode("utf-8", errors="replace")
    return FormParams(parse_qs(text, keep_blank_values=True, errors="replace"))


def signature_header(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The ``X-Twilio-Signature`` of ASGI ``headers``; ``None`` if absent, empty or repeated."""
    name = SIGNATURE_HEADER.encode()
    found = [value for key, value in headers if key.lower() == name]
    return found[0] if len(found) == 1 and found[0] else None


class TwilioSignatures:
    """Checks ``X-Twilio-Signature`` values against one or two auth tokens (rotation).

    Args:
        auth_tokens: the account's auth token, optionally followed by the next (or previous) one.

    Raises:
        ValueError: no token, or more than two.
    """

    __slots__ = ("_validators",)

    def __init__(self, auth_tokens: Sequence[str]) -> None:
        if not 1 <= len(auth_tokens) <= 2:
            raise ValueError("expected one or two auth tokens")
        self._validators = tuple(RequestValidator(token) for token in auth_tokens)

    def __repr__(self) -> str:
        return f"TwilioSignatures(<{len(self._validators)} auth token(s)>)"

    def valid(
        self, url: str, params: Mapping[str, Any] | None, signature: bytes | str | None
    ) -> bool:
        """Whether ``signature`` is Twilio's for ``url`` and ``params`` under any of the tokens.

        Accepts what ``RequestValidator(token).validate(url, params, signature)`` accepts for
        either token: the signature over ``url`` with its default port removed or added (the
        port is ``443`` for ``https``, else ``80``, as in twilio-python), with the parameters
        appended in sorted order. Constant-time in the signature (``hmac.compare_digest``).

        Args:
            url: the full URL Twilio requested, rebuilt from the public URL
                (:func:`voxbridge.server.security.webhook_url`, ``stream_url``).
            params: the form parameters (:func:`parse_form`); ``None`` or empty for a WebSocket.
            signature: the header value; ``None`` (missing) is never valid.
        """
        if not signature:
            return False
        given = signature.encode("latin-1") if isinstance(signature, str) else signature
        parsed = urlparse(url)
        variants = (remove_port(parsed), add_port(parsed))
        params = params or {}
        matched = False
        for validator in self._validators:
            for variant in variants:
                expected = validator.compute_signature(variant, params).encode("ascii")
                matched |= hmac.compare_digest(expected, given)
        return matched


def connect_twiml(stream_url: str, parameters: Mapping[str, str]) -> str:
    """``<Response><Connect><Stream url=...>`` with one ``<Parameter>`` per item of
    ``parameters`` (names and values XML-escaped); a bare ``<Stream url=... />`` without any."""
    if not parameters:
        stream = f"<Stream url={quoteattr(stream_url)} />"
    else:
        inner = "".join(
            f"<Parameter name={quoteattr(name)} value={quoteattr(value)} />"
            for name, value in parameters.items()
        )
        stream = f"<Stream url={quoteattr(stream_url)}>{inner}</Stream>"
    return f'<?xml version="1.0" encoding="UTF-8"?><Response><Connect>{stream}</Connect></Response>'


def _first(form: Mapping[str, list[str]], name: str) -> str:
    found = form.get(name)
    return found[0] if found else ""


class TwilioWebhooks:
    """Twilio's :class:`~voxbridge.carriers.base.CarrierWebhooks`.

    Args:
        auth_tokens: the account's auth token(s) (``Settings.twilio_auth_tokens``): none turns
            the checks off, two accept either while the token is rotated.

    Raises:
        ValueError: more than two auth tokens.
    """

    __slots__ = ("_auth_tokens", "signatures")

    def __init__(self, auth_tokens: Sequence[str] = ()) -> None:
        self._auth_tokens = tuple(auth_tokens)
        #: The signature checker; ``None`` without auth tokens.
        self.signatures = TwilioSignatures(self._auth_tokens) if self._auth_tokens else None

    def __repr__(self) -> str:
        return f"TwilioWebhooks(<{len(self._auth_tokens)} auth token(s)>)"

    @property
    def checks(self) -> bool:
        return self.signatures is not None

    @property
    def token_secrets(self) -> tuple[str, ...]:
        """The auth tokens: the per-call token key is derived from them (the first mints)."""
        return self._auth_tokens

    def webhook_signed(self, request: HttpRequest, *, now: float) -> bool:
        """Whether ``X-Twilio-Signature`` is Twilio's over ``request.url`` and the form body."""
        if self.signatures is None:
            return True
        signature = request.headers.get(SIGNATURE_HEADER)
        return self.signatures.valid(request.url, parse_form(request.body), signature)

    def upgrade_signed(self, request: HttpRequest, *, now: float) -> bool:
        """Whether ``X-Twilio-Signature`` is Twilio's over the ``wss://`` ``request.url`` (no
        parameters are signed)."""
        if self.signatures is None:
            return True
        return self.signatures.valid(request.url, None, request.headers.get(SIGNATURE_HEADER))

    def call(self, request: HttpRequest) -> CallRequest:
        """``CallSid``, ``To`` and ``AnsweredBy`` of the webhook's form body.

        Raises:
            RemoteProtocolError: the form has no ``CallSid``.
        """
        form = parse_form(request.body)
        call_sid = _first(form, "CallSid")
        if not call_sid:
            raise RemoteProtocolError("no CallSid in the request")
        return CallRequest(call_sid, _first(form, "To"), _first(form, "AnsweredBy"))

    def connect(self, stream_url: str, parameters: Mapping[str, str]) -> HttpAnswer:
        """TwiML ``<Connect><Stream>`` to ``stream_url`` with ``parameters`` as ``<Parameter>``s
        (:func:`connect_twiml`)."""
        return HttpAnswer(TWIML, connect_twiml(stream_url, parameters).encode())

    def hangup(self) -> HttpAnswer:
        """TwiML ``<Hangup/>``."""
        return HttpAnswer(TWIML, hangup_twiml().encode())


def _webhooks(settings: Settings, own: NoSettings) -> TwilioWebhooks:
    return TwilioWebhooks(settings.twilio_auth_tokens)


def _rest(settings: Settings, own: NoSettings) -> TwilioRest | None:
    return TwilioRest.from_settings(settings)


#: Twilio, as the registry lists it. Its settings are the flat ``twilio_*`` fields of
#: :class:`~voxbridge.settings.Settings` (a documented contract), so it has no settings class.
SPEC: CarrierSpec[NoSettings] = CarrierSpec(
    name="twilio",
    codec=TwilioStream,
    webhook="voice",
    settings=NoSettings,
    webhooks=_webhooks,
    simulator="voxbridge.testing.carrier:TwilioWire",
    rest=_rest,
)
