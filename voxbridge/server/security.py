"""Who may open a call: signed URLs, per-call tokens, and a safe default bind, for every carrier.

A call costs money: each accepted media stream opens a paid provider session. So nothing reaches
the provider without proof that the carrier sent it. Each carrier's own checks are its
:class:`~voxbridge.carriers.base.CarrierWebhooks` (Twilio's: ``X-Twilio-Signature``,
:mod:`voxbridge.carriers.twilio_webhooks`); this module holds what every carrier shares, and the
server applies it in three places:

1. **The webhook** (``POST /<carrier>/<webhook>``, Twilio's ``POST /twilio/voice``) must carry the
   carrier's valid signature. A signature over the URL is checked against the URL rebuilt from
   ``--public-url`` (:func:`webhook_url`), never from the ``Host`` header (which the client
   chooses).
2. **The media WebSocket upgrade** (``/<carrier>/media``) must carry whatever the carrier signs
   it with (Twilio: a signature over the stream's ``wss://`` URL, :func:`stream_url`; Vonage: a
   JWT). A carrier that cannot sign the upgrade (Plivo, Telnyx's TeXML ``<Stream>``) gets the
   per-call token in the stream URL's query string instead (``?voxbridge_token=...``,
   :attr:`CarrierAuth.upgrade_token`), checked for signature and expiry. Both are checked before
   the upgrade is accepted; a missing or bad signature or token is an HTTP 403.
3. **The stream's start** must carry the per-call token that the webhook put in its answer
   (Twilio: ``<Parameter name="voxbridge_token" .../>``, :data:`TOKEN_PARAMETER`): a short-lived
   JWT (HS256) whose subject is the webhook's call id. A stream presenting no token, a bad one,
   an expired one, or one minted for another call is refused before any provider session opens.
   The token's key is derived from the carrier's shared secret
   (:attr:`~voxbridge.carriers.base.CarrierWebhooks.token_secrets`, Twilio's auth token:
   :func:`token_key`), so any replica verifies a token any other replica minted, and nothing is
   stored. :class:`CarrierAuth` is one carrier's checks and tokens, from the settings.

``--carriers`` names the carriers served (default: every registered one); the others' routes
answer 404 whatever their credentials. An enabled carrier whose credentials are not configured
checks nothing. On loopback, or with ``--insecure``, it serves anyway (Twilio's :func:`unauthenticated_warning` is logged at start);
on any other bind it is disabled (its routes answer 404, :func:`carrier_enabled`), and
:func:`check_exposure` refuses to start when that leaves no carrier at all.

Everything here is pure (no I/O, no trio; the clock is an argument), and no error message or
``repr`` here contains a token, a signature or a key.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import attrs
import jwt

from ..carriers.base import CarrierWebhooks
from ..carriers.registry import CARRIERS
from ..carriers.twilio_webhooks import (
    FormParams,
    TwilioSignatures,
    parse_form,
    signature_header,
)
from ..settings import Settings, SettingsError

if TYPE_CHECKING:
    from ..carriers.spec import CarrierSpec

__all__ = [
    "CLOCK_SKEW",
    "MEDIA_PATH",
    "TOKEN_PARAMETER",
    "VOICE_PATH",
    "CallTokenError",
    "CallTokens",
    "CarrierAuth",
    "FormParams",
    "TwilioSignatures",
    "carrier_enabled",
    "check_exposure",
    "is_loopback",
    "parse_form",
    "signature_header",
    "stream_url",
    "token_key",
    "unauthenticated_warning",
    "webhook_url",
]

#: Twilio's routes (every carrier's are ``CarrierSpec.webhook_path`` and ``.media_path``).
VOICE_PATH = "/twilio/voice"
MEDIA_PATH = "/twilio/media"
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


def webhook_url(public_url: str, query_string: bytes = b"", path: str = VOICE_PATH) -> str:
    """The URL a carrier signed for a webhook: ``public_url`` + ``path`` [+ query].

    Args:
        public_url: the external base (``--public-url``), e.g. ``https://voice.example.com``; a
            path prefix is kept (``https://example.com/vox`` -> ``https://example.com/vox/twilio/voice``).
        query_string: the request's raw query string (ASGI ``scope["query_string"]``), if any.
        path: the webhook's route (default Twilio's ``/twilio/voice``).
    """
    scheme = urlsplit(public_url).scheme
    return _with_query(_base(public_url, scheme) + path, query_string)


def stream_url(public_url: str, query_string: bytes = b"", path: str = MEDIA_PATH) -> str:
    """The media stream URL: ``public_url`` with the ``wss`` scheme + ``path`` [+ query].

    This is both the stream URL of the webhook's answer (Twilio's ``<Stream url=...>``) and the
    URL Twilio signs when it opens the WebSocket. A plain ``http://`` public URL (a local test
    setup) gives ``ws://``. ``path`` is the media route (default Twilio's ``/twilio/media``).
    """
    scheme = "wss" if urlsplit(public_url).scheme in ("https", "wss") else "ws"
    return _with_query(_base(public_url, scheme) + path, query_string)


# --- per-call tokens -----------------------------------------------------------------------------


class CallTokenError(Exception):
    """A per-call token was refused. The message says why, never what the token was."""


def token_key(secret: str, carrier: str = "twilio") -> bytes:
    """The per-call token key for a carrier's shared ``secret`` (Twilio's auth token):
    HMAC-SHA256(secret, "voxbridge call token v1" NUL ``carrier``). Deterministic, so every
    replica with the same secret derives the same key; it is not the secret itself (a leaked key
    cannot sign webhooks); and the carrier's name is in the context, so the same secret configured
    for two carriers gives two keys (a token minted for one carrier is refused by the other)."""
    context = TOKEN_KEY_CONTEXT + b"\x00" + carrier.encode("utf-8")
    return hmac.new(secret.encode("utf-8"), context, hashlib.sha256).digest()


class CallTokens:
    """Mints and verifies the short-lived token that binds a media stream to its webhook.

    A token is a JWT (HS256) with claims ``sub`` (the carrier's call id: Twilio's ``CallSid``),
    ``iat`` and ``exp`` (whole seconds since the epoch; ``exp`` at least ``ttl`` after ``iat``).

    Args:
        auth_tokens: the carrier's shared secret(s) (Twilio's auth tokens); tokens are minted with
            the first, accepted under any.
        ttl: seconds a token stays valid after it is minted.
        carrier: the carrier's name, part of the key derivation (:func:`token_key`).

    Raises:
        ValueError: no secret, or ``ttl`` not positive.
    """

    __slots__ = ("_keys", "ttl")

    def __init__(self, auth_tokens: Sequence[str], ttl: float, carrier: str = "twilio") -> None:
        if not auth_tokens:
            raise ValueError("expected at least one auth token")
        if not ttl > 0:
            raise ValueError("ttl must be positive")
        self._keys = tuple(token_key(token, carrier) for token in auth_tokens)
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

    def verify(self, token: str | None, call_sid: str | None, *, now: float) -> dict[str, Any]:
        """Check that ``token`` was minted by us, for ``call_sid``, and has not expired at ``now``.

        ``call_sid`` ``None`` skips the call binding: the check of a media upgrade, which does
        not name its call yet (the binding is checked again at the stream's start).

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
        if call_sid is not None and not hmac.compare_digest(
            str(claims["sub"]).encode(), call_sid.encode()
        ):
            raise CallTokenError("minted for another call")
        return claims


# --- all of it, from the settings ----------------------------------------------------------------


@attrs.frozen
class CarrierAuth:
    """Who may open a call through one carrier: its webhooks' checks and its per-call tokens.

    Build it with :meth:`from_settings`.

    Attributes:
        carrier: the carrier's name.
        webhooks: its :class:`~voxbridge.carriers.base.CarrierWebhooks` (the signature checks).
        tokens: its per-call tokens, keyed with its ``token_secrets`` and its name; ``None``
            when its checks are off (no credentials) or it has no shared secret.
        upgrade_token: the per-call token rides in the stream URL's query string
            (``?voxbridge_token=...``, :data:`TOKEN_PARAMETER`) and the media upgrade is refused
            (403) without a valid one: for a carrier whose upgrade carries no signature of its own
            (the webhooks' ``upgrade_token_in_query``: Plivo, Telnyx TeXML). Needs ``tokens``.
    """

    carrier: str
    webhooks: CarrierWebhooks
    tokens: CallTokens | None
    upgrade_token: bool = False

    @property
    def checks(self) -> bool:
        """Whether the carrier's signatures are checked (its credentials are configured)."""
        return self.webhooks.checks

    @classmethod
    def from_settings(cls, settings: Settings, spec: CarrierSpec[Any]) -> CarrierAuth:
        """The checks ``settings`` configure for the carrier of ``spec``.

        Raises:
            SettingsError: its credentials are inconsistent (from its webhooks builder).
        """
        webhooks = spec.build_webhooks(settings)
        secrets = webhooks.token_secrets if webhooks.checks else ()
        tokens = CallTokens(secrets, settings.call_token_ttl, spec.name) if secrets else None
        in_query = bool(getattr(webhooks, "upgrade_token_in_query", False))
        return cls(spec.name, webhooks, tokens, upgrade_token=in_query and tokens is not None)

    def upgrade_token_valid(self, query_string: bytes, *, now: float) -> dict[str, Any] | None:
        """The claims of the per-call token in a media upgrade's query string
        (``voxbridge_token``), checked for signature and expiry (not yet for the call, which the
        upgrade does not name); ``None`` when it is missing or refused."""
        if self.tokens is None:
            return None
        values = parse_qs(query_string.decode("latin-1")).get(TOKEN_PARAMETER)
        if not values or len(values) != 1:
            return None
        try:
            return self.tokens.verify(values[0], None, now=now)
        except CallTokenError:
            return None


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` exposes the server to this machine only (``localhost``,
    ``127.0.0.0/8``, ``::1``). Any other name or address, ``""`` and ``0.0.0.0`` included, is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def carrier_enabled(settings: Settings, checks: bool, name: str | None = None) -> bool:
    """Whether a carrier serves calls: it is among ``--carriers`` (every carrier by default) and
    its checks are on (credentials configured), or the bind is loopback, or ``--insecure`` is
    set. Otherwise its routes answer 404. ``name`` ``None`` skips the ``--carriers`` test."""
    if name is not None and name not in settings.enabled_carriers:
        return False
    return checks or settings.insecure or is_loopback(settings.host)


def check_exposure(
    settings: Settings, carriers: Mapping[str, CarrierSpec[Any]] | None = None
) -> None:
    """Refuse to serve unauthenticated calls beyond this machine.

    On a non-loopback bind without ``--insecure``, a carrier whose credentials are not
    configured is disabled (:func:`carrier_enabled`); this refuses to start when that leaves no
    carrier. With Twilio alone, that is Twilio's rule: no ``--twilio-auth-token``, no public bind.

    Args:
        carriers: the registered carriers (default :data:`voxbridge.carriers.registry.CARRIERS`).

    Raises:
        SettingsError: ``host`` is not loopback, ``insecure`` is not set, and no carrier has
            credentials; or a carrier's credentials are inconsistent.
    """
    if settings.insecure or is_loopback(settings.host):
        return
    specs = CARRIERS if carriers is None else carriers
    enabled = settings.enabled_carriers
    specs = {name: spec for name, spec in specs.items() if name in enabled}
    if any(spec.build_webhooks(settings).checks for spec in specs.values()):
        return
    others = [name for name in specs if name != "twilio"]
    also = (
        f" (or another carrier's credentials: {', '.join(others)}; docs/carriers.md)"
        if others
        else ""
    )
    raise SettingsError(
        f"refusing to bind --host {settings.host} without --twilio-auth-token "
        f"(VOXBRIDGE_TWILIO_AUTH_TOKEN){also}: anyone who can reach it could open calls and paid "
        "provider sessions. Set --twilio-auth-token (and --public-url), or pass --insecure "
        "(VOXBRIDGE_INSECURE=1) if something in front of voxbridge authenticates Twilio."
    )


def unauthenticated_warning() -> str:
    """The line logged at start when Twilio serves without an auth token."""
    return (
        "Twilio signature validation is OFF (no --twilio-auth-token): anyone who can reach this "
        "server can open calls and paid provider sessions"
    )
