"""Plivo's HTTP side: request signatures (V3), the answer webhook, the ``<Stream>`` XML, and where
Plivo declares itself: its settings (:class:`PlivoSettings`, ``--plivo-*``) and its
:class:`~voxbridge.carriers.spec.CarrierSpec` (:data:`SPEC`, one line of the registry).

Sans-IO: the server reads the requests and writes the answers; this module only judges and builds
them (:class:`PlivoWebhooks`, a :class:`~voxbridge.carriers.base.CarrierWebhooks`). The REST client
(:mod:`.plivo_rest`, httpx) is imported only when :data:`SPEC` builds it.

**Signatures** (Plivo's "Validation" page, docs.plivo.com/docs/voice/xml/request/validation, and
``plivo.utils.signature_v3.validate_v3_signature`` of the official ``plivo`` package, which
tests/test_plivo_webhooks.py uses as the oracle). Every request Plivo makes carries
``X-Plivo-Signature-V3`` (HMAC-SHA256 with the auth token of the account or subaccount; a
comma-separated list is allowed), ``X-Plivo-Signature-Ma-V3`` (the same with the main account's
token) and ``X-Plivo-Signature-V3-Nonce``. The signed text (:func:`signed_text`) is::

    GET:   <scheme://host/path>[?<query>].<nonce>
    POST:  <scheme://host/path>?[<query>.]<params>.<nonce>

where ``<query>`` is the URL's query parameters sorted by name as ``k=v`` pairs joined by ``&``
(a repeated name gives one pair per value, values sorted; for a GET the request's own
parameters are merged in), and ``<params>`` is the POST form sorted by name as ``kv`` with no
separator at all. The signature is the base64 of the HMAC. (Percent-escapes in the query are
read as UTF-8; the package fails on a query whose values are not ASCII, and agrees with this
module on every other URL.) The URL is the public one, rebuilt from ``--public-url``, never from
the ``Host`` header.
A signature valid under any configured token (one, or two while rotating) in either header
passes; every candidate is computed and compared in constant time (``hmac.compare_digest``).

V3 signatures carry **no timestamp**, so a replayed webhook cannot be told from a fresh one by
its signature. What a replay gets is an answer document whose per-call token is bound to the
webhook's ``CallUUID`` and expires (``--call-token-ttl``), and a live call's id cannot be taken
twice: the same exposure as Twilio's signatures, which have no timestamp either.

**The stream's upgrade.** Plivo's pages say every request it makes to your server is signed and
that it connects the stream "validating signatures if configured", but they do not show the
WebSocket upgrade's headers. So: an upgrade that carries V3 headers must verify (over the stream
URL as written in the XML, as a GET, or the same URL with ``https://`` for ``wss://``), else it
is refused with HTTP 403 before it is accepted. Whether or not it carries them, the server puts
the per-call token in the stream URL's query string (``?voxbridge_token=...``,
:attr:`PlivoWebhooks.upgrade_token_in_query`) and refuses an upgrade without a valid one
(signature and expiry) before accepting it; the same token in ``extraHeaders`` is verified again
at ``start`` for the call it was minted for, before any provider session opens.

**The answer** (:meth:`PlivoWebhooks.connect`)::

    <Response><Stream bidirectional="true" keepCallAlive="true" audioTrack="inbound"
        contentType="audio/x-mulaw;rate=8000" extraHeaders="...">wss://.../plivo/media</Stream>
    </Response>

``keepCallAlive`` makes the stream the only element that runs; ``audioTrack`` must be
``inbound`` for a bidirectional stream; ``contentType`` is ``--plivo-content-type``. The
parameters (the per-call token among them) are Z-escaped into ``extraHeaders``
(:func:`voxbridge.carriers.plivo.encode_extra_headers`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlparse, urlsplit, urlunparse, urlunsplit
from xml.etree import ElementTree

import attrs

from ..errors import RemoteProtocolError, SettingsError
from ..options import option
from .base import CallRequest, HttpAnswer, HttpRequest
from .plivo import CONTENT_TYPES, DEFAULT_CONTENT_TYPE, PlivoStream, encode_extra_headers
from .spec import CarrierSpec

if TYPE_CHECKING:
    from ..settings import Settings
    from .base import CarrierRest, CarrierWebhooks

__all__ = [
    "MA_SIGNATURE_HEADER",
    "NONCE_HEADER",
    "SIGNATURE_HEADER",
    "SPEC",
    "PlivoSettings",
    "PlivoWebhooks",
    "parse_params",
    "sign",
    "signed_text",
]

SIGNATURE_HEADER: Final = "x-plivo-signature-v3"
MA_SIGNATURE_HEADER: Final = "x-plivo-signature-ma-v3"
NONCE_HEADER: Final = "x-plivo-signature-v3-nonce"
#: At most this many comma-separated signatures are compared per header (a bound on the work one
#: request can cause).
MAX_SIGNATURES: Final = 4
XML_CONTENT_TYPE: Final = "text/xml; charset=utf-8"
_DECLARATION: Final = '<?xml version="1.0" encoding="UTF-8"?>\n'

Params = Mapping[str, Sequence[str]]


def parse_params(text: str) -> dict[str, list[str]]:
    """Form or query parameters, each name with all its values (blank values kept, ``+`` read
    as a space): what Plivo signs."""
    return parse_qs(text, keep_blank_values=True, errors="replace")


def _query_map(query: str) -> dict[str, list[str]]:
    return parse_qs(query, keep_blank_values=True, errors="replace")


def _sorted_query(params: Params) -> str:
    return "&".join(
        "&".join(f"{key}={value}" for value in sorted(params[key])) for key in sorted(params)
    )


def signed_text(method: str, url: str, params: Params | None = None) -> str:
    """The text a V3 signature covers, less its ``.<nonce>`` (see the module docstring).

    Args:
        method: ``GET`` or ``POST`` (anything but ``GET`` is read as ``POST``, as the package
            does).
        url: the full URL Plivo requested (the public one), with its query string.
        params: the POST form, or a GET's own parameters besides its query string.
    """
    parsed = urlparse(url)
    base = urlunparse((parsed.scheme, parsed.netloc, parsed.path, "", "", ""))
    query = _query_map(parsed.query)
    params = params or {}
    if method == "GET":
        merged: dict[str, Sequence[str]] = {**params, **query}
        text = _sorted_query(merged)
        return f"{base}?{text}" if text else base
    text = _sorted_query(query)
    if text or params:
        base += "?" + text
    if text and params:
        base += "."
    return base + "".join(
        "".join(f"{key}{value}" for value in sorted(params[key])) for key in sorted(params)
    )


def sign(auth_token: str, method: str, url: str, nonce: str, params: Params | None = None) -> str:
    """The ``X-Plivo-Signature-V3`` of a request: base64 HMAC-SHA256, keyed with
    ``auth_token``, of :func:`signed_text` ``.<nonce>``."""
    message = f"{signed_text(method, url, params)}.{nonce}".encode()
    digest = hmac.new(auth_token.encode("utf-8"), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def _variants(url: str) -> tuple[str, ...]:
    """A stream URL as written (``wss://``) and with its HTTP scheme (``https://``)."""
    parts = urlsplit(url)
    other = {"wss": "https", "ws": "http", "https": "wss", "http": "ws"}.get(parts.scheme)
    if other is None:
        return (url,)
    return (url, urlunsplit((other, *parts[1:])))


class PlivoWebhooks:
    """Plivo's :class:`~voxbridge.carriers.base.CarrierWebhooks`.

    Args:
        auth_tokens: the auth token, optionally followed by a second one (rotation); none:
            nothing is checked (loopback or ``--insecure`` only).
        content_type: the ``<Stream contentType>``, one of
            :data:`voxbridge.carriers.plivo.CONTENT_TYPES`.
        public_url: the public base URL (``--public-url``); the server rebuilds request URLs
            from it, so it is required with checks.

    Raises:
        ValueError: more than two tokens, an unknown content type, or tokens without a
            public URL.
    """

    __slots__ = ("_tokens", "content_type", "public_url")

    def __init__(
        self,
        auth_tokens: Sequence[str] = (),
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        public_url: str | None = None,
    ) -> None:
        if len(auth_tokens) > 2 or not all(auth_tokens):
            raise ValueError("expected at most two non-empty auth tokens")
        if content_type not in CONTENT_TYPES:
            raise ValueError(f"unknown Plivo contentType {content_type!r}")
        if auth_tokens and public_url is None:
            raise ValueError("signature checks need the public URL")
        self._tokens = tuple(auth_tokens)
        self.content_type = content_type
        self.public_url = public_url

    def __repr__(self) -> str:
        return (
            f"PlivoWebhooks(<{len(self._tokens)} auth token(s)>, "
            f"content_type={self.content_type!r}, public_url={self.public_url!r})"
        )

    @property
    def checks(self) -> bool:
        """Whether signatures and per-call tokens are checked (an auth token is configured)."""
        return bool(self._tokens)

    @property
    def token_secrets(self) -> tuple[str, ...]:
        """The secrets the per-call token's key is derived from: the auth tokens (the first
        mints, either verifies); ``()`` without checks."""
        return self._tokens

    @property
    def upgrade_token_in_query(self) -> bool:
        """Whether the server puts the per-call token in the stream URL's query string and
        refuses an upgrade without a valid one: with checks on (Plivo's documentation does not
        promise a signed upgrade)."""
        return self.checks

    # --- checks ------------------------------------------------------------------------------------

    def valid(
        self,
        method: str,
        urls: Sequence[str],
        headers: Mapping[str, str],
        params: Params | None = None,
    ) -> bool:
        """Whether ``headers`` carry a V3 signature (either header) that one of the tokens made
        for one of ``urls`` with ``params`` and the request's nonce. Constant time in the
        signatures: every candidate is compared."""
        nonce = headers.get(NONCE_HEADER)
        given = [
            part.strip().encode("ascii", "replace")
            for header in (SIGNATURE_HEADER, MA_SIGNATURE_HEADER)
            for part in (headers.get(header) or "").split(",")[:MAX_SIGNATURES]
            if part.strip()
        ]
        if not nonce or not given:
            return False
        matched = False
        for token in self._tokens:
            for url in urls:
                expected = sign(token, method, url, nonce, params).encode("ascii")
                for signature in given:
                    matched |= hmac.compare_digest(expected, signature)
        return matched

    def webhook_signed(self, request: HttpRequest, *, now: float) -> bool:
        """Whether an answer (or other) webhook is Plivo's: a V3 signature over
        ``request.url`` and, for a POST, its form body. True without checks. (``now`` is unused:
        V3 signatures have no timestamp.)"""
        if not self.checks:
            return True
        method = request.method.upper()
        params = parse_params(request.body.decode("utf-8", "replace")) if method == "POST" else {}
        return self.valid(
            "GET" if method == "GET" else "POST", (request.url,), request.headers, params
        )

    def upgrade_signed(self, request: HttpRequest, *, now: float) -> bool:
        """Whether the media WebSocket upgrade's own signature allows it: true without checks,
        true when it carries no V3 signature (the server checks the per-call token in the query
        string, :attr:`upgrade_token_in_query`), else whether the signature is valid for the
        stream URL (``wss://`` or ``https://``) as a GET."""
        if not self.checks:
            return True
        headers = request.headers
        if not (headers.get(SIGNATURE_HEADER) or headers.get(MA_SIGNATURE_HEADER)):
            return True
        return self.valid("GET", _variants(request.url), headers)

    # --- the webhook ---------------------------------------------------------------------------------

    def call(self, request: HttpRequest) -> CallRequest:
        """The call an answer webhook is about: ``CallUUID`` and ``To`` from the form (POST) or
        the query string (GET). Plivo sends numbers without the ``+``; an all-digit ``To`` is
        given one, so agents are chosen by E.164 number as for Twilio. Plivo's answering-machine
        verdict goes to a separate URL, so ``answered_by`` is always ``""``.

        Raises:
            RemoteProtocolError: no ``CallUUID``.
        """
        if request.method.upper() == "POST":
            params = parse_params(request.body.decode("utf-8", "replace"))
        else:
            params = parse_params(urlsplit(request.url).query)
        call_id = (params.get("CallUUID") or [""])[0]
        if not call_id:
            raise RemoteProtocolError("the Plivo webhook has no CallUUID")
        to = (params.get("To") or [""])[0]
        if to.isascii() and to.isdigit() and 8 <= len(to) <= 15:
            to = "+" + to
        return CallRequest(call_id=call_id, to=to)

    # --- answers ------------------------------------------------------------------------------------

    def connect(self, stream_url: str, parameters: Mapping[str, str]) -> HttpAnswer:
        """The ``<Stream>`` XML connecting the call to ``stream_url`` (see the module docstring),
        ``parameters`` Z-escaped in ``extraHeaders``.

        Raises:
            ValueError: the parameters do not fit Plivo's 512-byte ``extraHeaders``.
        """
        response = ElementTree.Element("Response")
        attributes = {
            "bidirectional": "true",
            "keepCallAlive": "true",
            "contentType": self.content_type,
            "audioTrack": "inbound",
        }
        if parameters:
            attributes["extraHeaders"] = encode_extra_headers(parameters)
        stream = ElementTree.SubElement(response, "Stream", attributes)
        stream.text = stream_url
        return _xml(response)

    def hangup(self) -> HttpAnswer:
        """``<Response><Hangup /></Response>``: end the call at once."""
        response = ElementTree.Element("Response")
        ElementTree.SubElement(response, "Hangup")
        return _xml(response)


def _xml(root: ElementTree.Element) -> HttpAnswer:
    body = ElementTree.tostring(root, encoding="unicode")
    return HttpAnswer(content_type=XML_CONTENT_TYPE, body=(_DECLARATION + body).encode("utf-8"))


# --- settings and the spec ----------------------------------------------------------------------------


def _content_type(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in CONTENT_TYPES:
        raise SettingsError(
            f"--plivo-content-type must be one of {', '.join(CONTENT_TYPES)}, got {value!r}"
        )


def _auth_tokens(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    tokens = value.split(",") if isinstance(value, str) else []
    if not 1 <= len(tokens) <= 2 or not all(token.strip() for token in tokens):
        raise SettingsError(
            "PLIVO_AUTH_TOKEN must be one auth token, or two separated by a comma (while rotating)"
        )


@attrs.frozen
class PlivoSettings:
    """``--plivo-*`` settings. The auth token is environment only (``PLIVO_AUTH_TOKEN``)."""

    auth_id: str | None = option(
        None,
        "Plivo Auth ID (MA... or SA...; also PLIVO_AUTH_ID): the account of REST calls",
        env=("PLIVO_AUTH_ID",),
    )
    auth_token: str | None = option(
        None,
        "Plivo Auth Token (also PLIVO_AUTH_TOKEN): enables signature checks and per-call tokens "
        "(a second, comma-separated token while rotating)",
        secret=True,
        env=("PLIVO_AUTH_TOKEN",),
        validator=_auth_tokens,
    )
    content_type: str = option(
        DEFAULT_CONTENT_TYPE,
        "the stream's audio: audio/x-mulaw;rate=8000 (no conversion), audio/x-l16;rate=8000 or "
        "audio/x-l16;rate=16000",
        validator=_content_type,
    )
    api_url: str = option("https://api.plivo.com", "Plivo REST API base URL (a fake's in tests)")

    @property
    def auth_tokens(self) -> tuple[str, ...]:
        """``auth_token`` split for rotation: ``()`` when unset, else one or two tokens."""
        if self.auth_token is None:
            return ()
        return tuple(token.strip() for token in self.auth_token.split(","))


def _webhooks(settings: Settings, own: PlivoSettings) -> CarrierWebhooks:
    tokens = own.auth_tokens
    if tokens and settings.public_url is None:
        raise SettingsError(
            "PLIVO_AUTH_TOKEN needs --public-url / VOXBRIDGE_PUBLIC_URL: Plivo signs the public "
            "URL it calls, and voxbridge rebuilds it from that setting"
        )
    return PlivoWebhooks(
        auth_tokens=tokens, content_type=own.content_type, public_url=settings.public_url
    )


def _rest(settings: Settings, own: PlivoSettings) -> CarrierRest | None:
    from .plivo_rest import PlivoRest  # here: httpx only where a REST client is built

    tokens = own.auth_tokens
    if not tokens or not own.auth_id:
        return None
    return PlivoRest(own.auth_id, tokens[0], base_url=own.api_url)


#: Plivo, as the registry lists it.
SPEC: CarrierSpec[PlivoSettings] = CarrierSpec(
    name="plivo",
    codec=PlivoStream,
    webhook="answer",
    settings=PlivoSettings,
    webhooks=_webhooks,
    simulator="voxbridge.testing.plivo_wire:PlivoWire",
    rest=_rest,
)
