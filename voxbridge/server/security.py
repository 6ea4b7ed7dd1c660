"""Who may open a call: Twilio request signatures, per-call tokens, and a safe default bind.

A call costs money: each accepted media stream opens a paid provider session. So nothing reaches
the provider without proof that Twilio sent it, checked in three places:

1. **The voice webhook** (``POST /twilio/voice``) must carry a valid ``X-Twilio-Signature``:
   base64 HMAC-SHA1, keyed with the account's auth token, over the URL Twilio requested followed
   by the form parameters (sorted). The URL is rebuilt from ``--public-url``, never from the
   ``Host`` header (which the client chooses): :func:`webhook_url`.
2. **The media WebSocket upgrade** (``/twilio/media``) must carry one too, over the ``wss://``
   URL of the stream (:func:`stream_url`) and no parameters. Both are checked before the upgrade
   is accepted; a missing or bad signature is an HTTP 403.
3. **The stream's ``start``** must carry the per-call token that the webhook put in the TwiML
   (``<Parameter name="voxbridge_token" .../>``, :data:`TOKEN_PARAMETER`): a short-lived JWT
   (HS256) whose subject is the webhook's ``CallSid``. A stream presenting no token, a bad one,
   an expired one, or one minted for another call is refused before any provider session opens.
   The token's key is derived from the auth token (:func:`token_key`), so any replica verifies a
   token any other replica minted, and nothing is stored.

The algorithm (and its with/without-port variants, since Twilio is inconsistent about signing
``:443``) is the official ``twilio.request_validator`` one: this module computes signatures with
``RequestValidator.compute_signature`` and rebuilds the port variants with that module's own
``add_port``/``remove_port``. voxbridge owns the URL, the parameters and the comparison: it
compares with ``hmac.compare_digest``, because ``twilio.request_validator.compare`` is a Python
loop which, though it never exits early, spends a little more time on each character that
differs (it leaks how many characters match). Every candidate (each auth token times each port
variant) is computed and compared; none is skipped once one matched.

``--twilio-auth-token`` takes two comma-separated tokens while the account's token is rotated: a
signature valid under either is accepted, tokens are minted with the first and accepted under
either.

Without an auth token nothing is checked: :func:`unauthenticated_warning` is logged at start, and
:func:`check_exposure` refuses to bind anything but loopback unless ``--insecure`` says so.

Everything here is pure (no I/O, no trio; the clock is an argument), and no error message or
``repr`` here contains a token, a signature or a key.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlparse, urlsplit

import attrs
import jwt
from twilio.request_validator import (  # type: ignore[import-untyped]  # no stubs
    RequestValidator,
    add_port,
    remove_port,
)

from ..settings import Settings, SettingsError

__all__ = [
    "CLOCK_SKEW",
    "MEDIA_PATH",
    "SIGNATURE_HEADER",
    "TOKEN_PARAMETER",
    "VOICE_PATH",
    "CallTokenError",
    "CallTokens",
    "TwilioAuth",
    "TwilioSignatures",
    "check_exposure",
    "is_loopback",
    "parse_form",
    "signature_header",
    "stream_url",
    "token_key",
    "unauthenticated_warning",
    "webhook_url",
]

VOICE_PATH = "/twilio/voice"
MEDIA_PATH = "/twilio/media"
SIGNATURE_HEADER = b"x-twilio-signature"  # ASGI header names are lower-case bytes
TOKEN_PARAMETER = "voxbridge_token"
TOKEN_KEY_CONTEXT = b"voxbridge call token v1"
TOKEN_ALGORITHM = "HS256"
# A token minted on one replica is verified on another: tolerate this much clock difference in
# its issue time (its expiry needs none: the stream starts seconds after the webhook, well within
# the token's lifetime).
CLOCK_SKEW = 5.0


# --- URLs -----------------------------------------------------------------------------------------


def _base(public_url: str, scheme: str) -> str:
    parts = urlsplit(public_url)
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _with_query(url: str, query_string: bytes) -> str:
    return f"{url}?{query_string.decode('latin-1')}" if query_string else url


def webhook_url(public_url: str, query_string: bytes = b"") -> str:
    """The URL Twilio signed for a voice webhook: ``public_url`` + ``/twilio/voice`` [+ query].

    Args:
        public_url: the external base (``--public-url``), e.g. ``https://voice.example.com``; a
            path prefix is kept (``https://example.com/vox`` -> ``https://example.com/vox/twilio/voice``).
        query_string: the request's raw query string (ASGI ``scope["query_string"]``), if any.
    """
    scheme = urlsplit(public_url).scheme
    return _with_query(_base(public_url, scheme) + VOICE_PATH, query_string)


def stream_url(public_url: str, query_string: bytes = b"") -> str:
    """The media stream URL: ``public_url`` with the ``wss`` scheme + ``/twilio/media`` [+ query].

    This is both the ``<Stream url=...>`` of the TwiML and the URL Twilio signs when it opens the
    WebSocket. A plain ``http://`` public URL (a local test setup) gives ``ws://``.
    """
    scheme = "wss" if urlsplit(public_url).scheme in ("https", "wss") else "ws"
    return _with_query(_base(public_url, scheme) + MEDIA_PATH, query_string)


# --- signatures ----------------------------------------------------------------------------------


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
    found = [value for name, value in headers if name.lower() == SIGNATURE_HEADER]
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
                (:func:`webhook_url`, :func:`stream_url`).
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


# --- per-call tokens -----------------------------------------------------------------------------


class CallTokenError(Exception):
    """A per-call token was refused. The message says why, never what the token was."""


def token_key(auth_token: str) -> bytes:
    """The per-call token key for ``auth_token``: HMAC-SHA256(auth_token, "voxbridge call token
    v1"). Deterministic, so every replica with the same auth token derives the same key, and it
    is not the auth token itself (a leaked key cannot sign webhooks)."""
    return hmac.new(auth_token.encode("utf-8"), TOKEN_KEY_CONTEXT, hashlib.sha256).digest()


class CallTokens:
    """Mints and verifies the short-lived token that binds a media stream to its webhook.

    A token is a JWT (HS256) with claims ``sub`` (the call's ``CallSid``), ``iat`` and ``exp``
    (whole seconds since the epoch; ``exp`` at least ``ttl`` after ``iat``).

    Args:
        auth_tokens: the auth token(s); tokens are minted with the first, accepted under any.
        ttl: seconds a token stays valid after it is minted.

    Raises:
        ValueError: no auth token, or ``ttl`` not positive.
    """

    __slots__ = ("_keys", "ttl")

    def __init__(self, auth_tokens: Sequence[str], ttl: float) -> None:
        if not auth_tokens:
            raise ValueError("expected at least one auth token")
        if not ttl > 0:
            raise ValueError("ttl must be positive")
        self._keys = tuple(token_key(token) for token in auth_tokens)
        self.ttl = ttl

    def __repr__(self) -> str:
        return f"CallTokens(ttl={self.ttl:g}, <{len(self._keys)} key(s)>)"

    def mint(self, call_sid: str, *, now: float, extra: Mapping[str, str] | None = None) -> str:
        """A token for ``call_sid``, valid from ``now`` (seconds since the epoch) for ``ttl``.

        ``extra`` claims ride along, signed: what the webhook decided for the call (the agent,
        an answering machine), so whichever replica takes the stream knows it.
        """
        claims: dict[str, Any] = dict(extra or {})
        claims.update(sub=call_sid, iat=math.floor(now), exp=math.ceil(now + self.ttl))
        return jwt.encode(claims, self._keys[0], algorithm=TOKEN_ALGORITHM)

    def verify(self, token: str | None, call_sid: str, *, now: float) -> dict[str, Any]:
        """Check that ``token`` was minted by us, for ``call_sid``, and has not expired at ``now``.

        Returns:
            The token's claims (``sub``, ``iat``, ``exp`` and the ``extra`` it was minted with).

        Raises:
            CallTokenError: the token is missing, malformed, not signed with any of the keys,
                expired, issued in the future (beyond ``CLOCK_SKEW``), or for another call.
        """
        if not token:
            raise CallTokenError("missing")
        claims: dict[str, Any] | None = None
        for key in self._keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=[TOKEN_ALGORITHM],  # never "none", never another algorithm
                    # the clock is ours (``now``): PyJWT checks only the form of the claims here
                    options={
                        "require": ["sub", "iat", "exp"],
                        "verify_exp": False,
                        "verify_iat": False,
                        "verify_nbf": False,
                    },
                )
                break
            except jwt.InvalidSignatureError:
                continue  # perhaps the other key (rotation)
            except jwt.InvalidTokenError:
                raise CallTokenError("malformed") from None
        if claims is None:
            raise CallTokenError("not signed with the auth token")
        issued, expires = claims["iat"], claims["exp"]
        if not (type(issued) is int and type(expires) is int):
            raise CallTokenError("malformed")
        if now >= expires:
            raise CallTokenError("expired")
        if issued > now + CLOCK_SKEW:
            raise CallTokenError("issued in the future")
        if not hmac.compare_digest(str(claims["sub"]).encode(), call_sid.encode()):
            raise CallTokenError("minted for another call")
        return claims


# --- all of it, from the settings ----------------------------------------------------------------


@attrs.frozen
class TwilioAuth:
    """The checks of a server whose settings have a Twilio auth token.

    Build it with :meth:`from_settings`, which returns ``None`` when validation is off.
    """

    public_url: str
    signatures: TwilioSignatures
    tokens: CallTokens

    @classmethod
    def from_settings(cls, settings: Settings) -> TwilioAuth | None:
        """The checks ``settings`` ask for; ``None`` without ``twilio_auth_token``."""
        tokens = settings.twilio_auth_tokens
        if not tokens:
            return None
        assert settings.public_url is not None  # Settings refuses a token without a public URL
        return cls(
            public_url=settings.public_url,
            signatures=TwilioSignatures(tokens),
            tokens=CallTokens(tokens, settings.call_token_ttl),
        )

    def webhook_signed(
        self, query_string: bytes, params: Mapping[str, Any], signature: bytes | None
    ) -> bool:
        """Whether a ``POST /twilio/voice`` with these form ``params`` is Twilio's."""
        url = webhook_url(self.public_url, query_string)
        return self.signatures.valid(url, params, signature)

    def upgrade_signed(self, query_string: bytes, signature: bytes | None) -> bool:
        """Whether a ``/twilio/media`` WebSocket upgrade is Twilio's (no parameters are signed)."""
        url = stream_url(self.public_url, query_string)
        return self.signatures.valid(url, None, signature)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` exposes the server to this machine only (``localhost``,
    ``127.0.0.0/8``, ``::1``). Any other name or address, ``""`` and ``0.0.0.0`` included, is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse to serve unauthenticated calls beyond this machine.

    Raises:
        SettingsError: no ``twilio_auth_token``, ``host`` is not loopback, and ``insecure`` is
            not set.
    """
    if settings.twilio_auth_tokens or settings.insecure or is_loopback(settings.host):
        return
    raise SettingsError(
        f"refusing to bind --host {settings.host} without --twilio-auth-token "
        "(VOXBRIDGE_TWILIO_AUTH_TOKEN): anyone who can reach it could open calls and paid "
        "provider sessions. Set --twilio-auth-token (and --public-url), or pass --insecure "
        "(VOXBRIDGE_INSECURE=1) if something in front of voxbridge authenticates Twilio."
    )


def unauthenticated_warning() -> str:
    """The line logged at start when no auth token is configured."""
    return (
        "Twilio signature validation is OFF (no --twilio-auth-token): anyone who can reach this "
        "server can open calls and paid provider sessions"
    )
