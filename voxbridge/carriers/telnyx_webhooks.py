"""Telnyx's HTTP side, sans-IO: webhook signatures, the TeXML voice webhook, the answer documents,
and where Telnyx declares itself: its settings (:class:`TelnyxSettings`, ``--telnyx-*``) and its
:class:`~voxbridge.carriers.spec.CarrierSpec` (:data:`SPEC`, one line of the registry).

**Webhook signatures** (Telnyx's "Receiving webhooks" guide and the TeXML callback references; the
official ``telnyx`` package's ``telnyx.lib.webhook_verification`` is the test oracle): every
webhook carries ``telnyx-timestamp`` (Unix seconds) and ``telnyx-signature-ed25519``, the base64
Ed25519 signature of ``<timestamp>|<raw body>`` made with the account's private key. voxbridge
verifies it with ``cryptography`` against the account's public key (``--telnyx-public-key``, the
base64 key Mission Control shows) and refuses a timestamp more than :data:`TOLERANCE` seconds away
from its clock, either way (the official package's rule: a captured webhook cannot be replayed
later, and a clock far ahead is no better).

**The media stream upgrade.** TeXML's ``<Stream>`` documents no authentication attribute, so the
stream our TeXML answer starts carries no credential of Telnyx's own: the server puts the per-call
token in the stream URL's query string (``?voxbridge_token=...``) and refuses an upgrade without
a valid one (signature and expiry) before accepting it; the same token, as a ``<Parameter>``, is
verified again at ``start`` for the call it was minted for, before any provider session opens. A
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

No error message or ``repr`` here contains a key, a token or a signature. The REST client
(:mod:`.telnyx_rest`, httpx) is imported only when :data:`SPEC` builds it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree

import attrs
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import RemoteProtocolError, SettingsError
from ..options import option
from .base import AudioFormat, CallRequest, HttpAnswer, HttpRequest
from .spec import CarrierSpec
from .telnyx import TelnyxStream, audio_format

if TYPE_CHECKING:
    from ..settings import Settings
    from .telnyx_rest import TelnyxRest

__all__ = [
    "SIGNATURE_HEADER",
    "SPEC",
    "STREAM_TOKEN_HEADER",
    "TIMESTAMP_HEADER",
    "TOLERANCE",
    "TelnyxSettings",
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
        token_secrets: the secrets per-call tokens are keyed from (the API key; the stream token
            only without one); with checks on, at least one.
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
        # The API key keys per-call tokens; the stream token (it travels in every upgrade's
        # header, so more places see it) only when there is no API key.
        secrets = (own.api_key,) if own.api_key else (own.stream_token,) if own.stream_token else ()
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
        """The secrets per-call tokens are keyed from (the API key; the stream token only
        without one, since it travels in a header); ``()`` without checks. The public key is
        public: never one of them."""
        return self._token_secrets if self.checks else ()

    @property
    def upgrade_token_in_query(self) -> bool:
        """Whether the server puts the per-call token in the stream URL's query string and
        refuses an upgrade without a valid one: with checks on and no stream token (a TeXML
        ``<Stream>`` carries no credential header of its own)."""
        return self.checks and self._stream_token is None

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
        without one (TeXML streams carry none: the server checks the per-call token in the
        stream URL's query string instead, :attr:`upgrade_token_in_query`)."""
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


# --- settings and the spec ---------------------------------------------------------------------------


def _public_key_bytes(value: str) -> bytes:
    """An Ed25519 public key as its 32 raw bytes, from any of the forms it is shown in: the raw
    32-byte key in base64, the DER ``SubjectPublicKeyInfo`` in base64 (44 bytes, ``MCowBQYDK2Vw
    AyEA...``), or that DER as PEM (``-----BEGIN PUBLIC KEY-----``); loaded with
    ``cryptography``.

    Raises:
        SettingsError: not base64 or PEM, or not an Ed25519 public key (the value is not quoted
            back).
    """
    text = value.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            raw = base64.b64decode(text, validate=True)
            if len(raw) == 32:
                return raw
            key = serialization.load_der_public_key(raw)
    except (binascii.Error, ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise SettingsError(
            "--telnyx-public-key must be an Ed25519 public key: the raw 32 bytes or the"
            " DER SubjectPublicKeyInfo, in base64 (or PEM)"
        )
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@attrs.frozen
class TelnyxSettings:
    """``--telnyx-*`` settings. The API key (``TELNYX_API_KEY``) and the stream token
    (``VOXBRIDGE_TELNYX_STREAM_TOKEN``) are environment only.

    Raises:
        SettingsError: a codec or rate voxbridge does not convert, or a public key that is not
            an Ed25519 public key (raw or DER in base64, or PEM).
    """

    codec: str = option(
        "PCMU", "Telnyx stream codec, both ways: PCMU (mu-law, no conversion) or L16"
    )
    sample_rate: int = option(
        8000, "Telnyx stream sample rate in Hz (PCMU: 8000; L16: 8000 or 16000)"
    )
    public_key: str | None = option(
        None,
        "Telnyx account public key (Ed25519, Mission Control > Keys & Credentials; base64 of "
        "the raw 32 bytes or of the DER SubjectPublicKeyInfo, or PEM): webhook signatures are "
        "checked with it",
    )
    api_key: str | None = option(None, "Telnyx API key (also TELNYX_API_KEY)", secret=True)
    stream_token: str | None = option(
        None,
        "token Telnyx sends in x-telnyx-streaming-auth-token on the media upgrade, checked before accept",
        secret=True,
    )
    api_url: str | None = option(
        None, "Telnyx REST API base URL (default https://api.telnyx.com/v2; a fake's in tests)"
    )

    def __attrs_post_init__(self) -> None:
        try:
            audio_format(self.codec, self.sample_rate)
        except ValueError as exc:
            raise SettingsError(f"--telnyx-codec/--telnyx-sample-rate: {exc}") from None
        if self.public_key is not None:
            _public_key_bytes(self.public_key)

    @property
    def audio_format(self) -> AudioFormat:
        """The stream's format, both ways."""
        return audio_format(self.codec, self.sample_rate)

    @property
    def public_key_bytes(self) -> bytes | None:
        """The 32 bytes of :attr:`public_key` (``None`` when unset)."""
        return None if self.public_key is None else _public_key_bytes(self.public_key)


def _webhooks(settings: Settings, own: TelnyxSettings) -> TelnyxWebhooks:
    return TelnyxWebhooks.from_settings(own)


def rest(settings: Settings, own: TelnyxSettings) -> TelnyxRest | None:
    """The Call Control client ``own`` allows: ``None`` without an API key."""
    from .telnyx_rest import TelnyxRest  # here: httpx only where a REST client is built

    return TelnyxRest.from_settings(own)


#: Telnyx, as the registry lists it.
SPEC: CarrierSpec[TelnyxSettings] = CarrierSpec(
    name="telnyx",
    codec=TelnyxStream,
    webhook="voice",
    settings=TelnyxSettings,
    webhooks=_webhooks,
    simulator="voxbridge.testing.telnyx_wire:TelnyxWire",
    key_variables=("TELNYX_API_KEY",),
    rest=rest,
)
