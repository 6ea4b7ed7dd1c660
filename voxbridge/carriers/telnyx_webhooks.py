"""Telnyx's HTTP side, sans-IO: webhook signatures, the TeXML voice webhook, the answer documents.

**Webhook signatures** (Telnyx's "Receiving webhooks" guide and the TeXML callback references; the
official ``telnyx`` package's ``telnyx.lib.webhook_verification`` is the test oracle): every
webhook carries ``telnyx-timestamp`` (Unix seconds) and ``telnyx-signature-ed25519``, the base64
Ed25519 signature of ``<timestamp>|<raw body>`` made with the account's private key. voxbridge
verifies it with ``cryptography`` against the account's public key (``--telnyx-public-key``, the
base64 key Mission Control shows) and refuses a timestamp more than :data:`TOLERANCE` seconds away
from its clock, either way (the official package's rule: a captured webhook cannot be replayed
later, and a clock far ahead is no better).

**The media stream upgrade.** TeXML's ``<Stream>`` documents no authentication attribute, so the
stream our TeXML answer starts carries nothing the upgrade could be judged by: the per-call token
(a ``<Parameter>``, verified at ``start`` before any provider session opens) is the check. A
stream started through Call Control with ``stream_auth_token`` carries that token in the
``x-telnyx-streaming-auth-token`` header of the upgrade (D.6): with ``--telnyx-stream-token``
set (environment only), an upgrade without that exact token (constant-time comparison) is refused
before it is accepted.

**The voice webhook** (``POST /telnyx/voice``, a TeXML application's voice URL): a form-encoded
body (JSON is read too) with ``CallSid`` (the ``call_control_id``, which the stream's ``start``
carries again), ``To``, ``From`` and, with answering-machine detection, ``AnsweredBy`` in
Twilio's words.

**The answer** is TeXML: ``<Connect><Stream>`` with ``bidirectionalMode="rtp"`` -- without it
Telnyx streams the caller to us and silently drops everything we send back (D.6) -- the codec and
rate both ways (``codec``, ``bidirectionalCodec``, ``bidirectionalSamplingRate``), the inbound
track only, and one ``<Parameter>`` per parameter (TeXML's ``<Stream>`` page: "Parameters are
included in the start message"). Built with :mod:`xml.etree.ElementTree`, so values are escaped.

No error message or ``repr`` here contains a key, a token or a signature.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Mapping
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import RemoteProtocolError, SettingsError
from .base import CallRequest, HttpAnswer, HttpRequest
from .telnyx import TelnyxSettings

__all__ = [
    "SIGNATURE_HEADER",
    "STREAM_TOKEN_HEADER",
    "TIMESTAMP_HEADER",
    "TOLERANCE",
    "TelnyxWebhooks",
    "hangup_texml",
    "stream_texml",
]

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
STREAM_TOKEN_HEADER = "x-telnyx-streaming-auth-token"
#: Seconds a webhook's timestamp may differ from our clock, either way (the official package's).
TOLERANCE = 300.0
XML_CONTENT_TYPE = "application/xml"
_XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>'
_MAX_TIMESTAMP_DIGITS = 12


def stream_texml(
    stream_url: str, parameters: Mapping[str, str], *, codec: str = "PCMU", sample_rate: int = 8000
) -> bytes:
    """The TeXML that connects the call to a bidirectional RTP stream at ``stream_url``.

    ``<Response><Connect><Stream url=... track="inbound_track" codec=... bidirectionalMode="rtp"
    bidirectionalCodec=... bidirectionalSamplingRate=...><Parameter name=... value=.../>...``
    """
    response = ElementTree.Element("Response")
    connect = ElementTree.SubElement(response, "Connect")
    stream = ElementTree.SubElement(
        connect,
        "Stream",
        {
            "url": stream_url,
            "track": "inbound_track",
            "codec": codec,
            "bidirectionalMode": "rtp",
            "bidirectionalCodec": codec,
            "bidirectionalSamplingRate": str(sample_rate),
        },
    )
    for name, value in parameters.items():
        ElementTree.SubElement(stream, "Parameter", {"name": name, "value": value})
    return _XML_DECLARATION + ElementTree.tostring(response, encoding="unicode").encode()


def hangup_texml() -> bytes:
    """``<Response><Hangup/></Response>``: end the call at once."""
    response = ElementTree.Element("Response")
    ElementTree.SubElement(response, "Hangup")
    return _XML_DECLARATION + ElementTree.tostring(response, encoding="unicode").encode()


class TelnyxWebhooks:
    """Telnyx's :class:`~voxbridge.carriers.base.CarrierWebhooks`.

    Raises:
        ValueError: checks (a public key or a stream token) without a token secret.

    Args:
        public_key: the account's Ed25519 public key (32 bytes); ``None``: no signature checks.
        stream_token: the ``x-telnyx-streaming-auth-token`` the upgrade must carry; ``None``: the
            upgrade carries nothing to check.
        token_secrets: the secrets per-call tokens are keyed from (the API key, the stream token);
            with checks on, at least one.
        codec: ``PCMU`` or ``L16``, asked both ways in the answer.
        sample_rate: its rate in Hz.
        tolerance: seconds a webhook timestamp may differ from ``now``.
    """

    def __init__(
        self,
        *,
        public_key: bytes | None = None,
        stream_token: str | None = None,
        token_secrets: tuple[str, ...] = (),
        codec: str = "PCMU",
        sample_rate: int = 8000,
        tolerance: float = TOLERANCE,
    ) -> None:
        self._key = None if public_key is None else Ed25519PublicKey.from_public_bytes(public_key)
        self._stream_token = stream_token.encode() if stream_token else None
        if (self._key is not None or self._stream_token is not None) and not token_secrets:
            raise ValueError("checks need a secret to key per-call tokens from")
        self._token_secrets = token_secrets
        self.codec = codec
        self.sample_rate = sample_rate
        self.tolerance = tolerance

    @classmethod
    def from_settings(cls, own: TelnyxSettings) -> TelnyxWebhooks:
        """The webhooks of a server with these Telnyx settings.

        Raises:
            SettingsError: a public key without a secret to key per-call tokens from (the API
                key or the stream token): the public key is public, so it cannot be one.
        """
        secrets = tuple(s for s in (own.api_key, own.stream_token) if s)
        if own.public_key and not secrets:
            raise SettingsError(
                "--telnyx-public-key needs TELNYX_API_KEY (or VOXBRIDGE_TELNYX_STREAM_TOKEN): "
                "the per-call token that binds a stream to its webhook is keyed from a secret"
            )
        return cls(
            public_key=own.public_key_bytes,
            stream_token=own.stream_token,
            token_secrets=secrets,
            codec=own.codec,
            sample_rate=own.sample_rate,
        )

    def __repr__(self) -> str:
        return (
            f"TelnyxWebhooks(checks={self.checks}, stream_token="
            f"{'<set>' if self._stream_token else None}, codec={self.codec!r}, "
            f"sample_rate={self.sample_rate})"
        )

    @property
    def checks(self) -> bool:
        """Whether requests are checked: a public key (webhook signatures) or a stream token
        (the upgrade) is configured; then per-call tokens are minted and required too."""
        return self._key is not None or self._stream_token is not None

    @property
    def token_secrets(self) -> tuple[str, ...]:
        """The secrets per-call tokens are keyed from (the API key, then the stream token; the
        first mints); ``()`` without checks. The public key is public: never one of them."""
        return self._token_secrets if self.checks else ()

    def webhook_signed(self, request: HttpRequest, *, now: float) -> bool:
        """Whether ``request`` carries a valid ``telnyx-signature-ed25519`` over
        ``<telnyx-timestamp>|<body>``, with the timestamp within :attr:`tolerance` of ``now``
        (Unix seconds). True without a public key (the signature is what it checks)."""
        key = self._key
        if key is None:
            return True
        timestamp = request.headers.get(TIMESTAMP_HEADER, "")
        signature = request.headers.get(SIGNATURE_HEADER, "")
        if not (0 < len(timestamp) <= _MAX_TIMESTAMP_DIGITS and timestamp.isascii()):
            return False
        if not timestamp.isdigit() or abs(now - int(timestamp)) > self.tolerance:
            return False
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            return False
        if len(raw) != 64:
            return False
        try:
            key.verify(raw, timestamp.encode("ascii") + b"|" + request.body)
        except InvalidSignature:
            return False
        return True

    def upgrade_signed(self, request: HttpRequest, *, now: float) -> bool:
        """Whether the media upgrade carries the configured stream token (constant-time); true
        without one (TeXML streams carry none: the per-call token at ``start`` is the check)."""
        expected = self._stream_token
        if expected is None:
            return True
        given = request.headers.get(STREAM_TOKEN_HEADER, "").encode("utf-8", "replace")
        return hmac.compare_digest(given, expected)

    def call(self, request: HttpRequest) -> CallRequest:
        """The call a TeXML voice webhook is about (``CallSid``, ``To``, ``AnsweredBy``).

        Raises:
            RemoteProtocolError: the body is not a form (or a JSON object) naming a ``CallSid``.
        """
        fields = _fields(request)
        call_id = fields.get("CallSid", "")
        if not call_id:
            raise RemoteProtocolError("the Telnyx webhook has no CallSid")
        return CallRequest(
            call_id=call_id, to=fields.get("To", ""), answered_by=fields.get("AnsweredBy", "")
        )

    def connect(self, stream_url: str, parameters: Mapping[str, str]) -> HttpAnswer:
        """TeXML connecting the call to a bidirectional RTP stream at ``stream_url``, with the
        parameters as ``<Parameter>`` elements (:func:`stream_texml`)."""
        body = stream_texml(stream_url, parameters, codec=self.codec, sample_rate=self.sample_rate)
        return HttpAnswer(XML_CONTENT_TYPE, body)

    def hangup(self) -> HttpAnswer:
        """TeXML that ends the call at once (:func:`hangup_texml`)."""
        return HttpAnswer(XML_CONTENT_TYPE, hangup_texml())


def _fields(request: HttpRequest) -> dict[str, str]:
    """The webhook's fields: a form (the last value of a repeated name) or a JSON object of
    scalars. Anything else has no fields."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    text = request.body.decode("utf-8", errors="replace")
    if content_type == "application/json":
        try:
            body = json.loads(text)
        except (ValueError, RecursionError):
            raise RemoteProtocolError("the Telnyx webhook body is not JSON") from None
        if not isinstance(body, dict):
            raise RemoteProtocolError("the Telnyx webhook body is not a JSON object")
        return {k: v for k, v in body.items() if isinstance(v, str)}
    if not request.body and request.method == "GET":  # voice_method GET: the fields are the query
        text = urlsplit(request.url).query
    form = parse_qs(text, keep_blank_values=True, errors="replace")
    return {name: values[-1] for name, values in form.items()}
