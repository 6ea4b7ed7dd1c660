"""Vonage's HTTP side: signed-webhook JWTs, the answer webhook, the NCCO answers, and where Vonage
declares itself: its settings (:class:`VonageSettings`, ``--vonage-*``) and its
:class:`~voxbridge.carriers.spec.CarrierSpec` (:data:`SPEC`, one line of the registry).

Sans-IO: the server reads the requests and writes the answers; this module only judges and builds
them (:class:`VonageWebhooks`, a :class:`~voxbridge.carriers.base.CarrierWebhooks`). No socket, no
clock (``now`` is an argument), no logging; no message or ``repr`` here holds a secret or a token.
The REST client (:mod:`.vonage_rest`, httpx) is imported only when :data:`SPEC` builds it.

**Signatures** (Vonage's "Signed webhooks" pages for the Voice API and the Messages API, and its
support article on verifying Voice webhooks; the official ``vonage-jwt`` package's
``verify_signature``, which tests/test_vonage_webhooks.py uses as the oracle). A signed Vonage
request carries ``Authorization: Bearer <JWT>``, the JWT signed **HS256 with the account's
signature secret** (the ``api_key`` claim names the account; ``iat``, ``jti``, ``iss``, and for a
request with a payload ``payload_hash``, the hex SHA-256 of the payload). voxbridge verifies:

* the signature, HS256 only (never ``none``, never another algorithm), under the configured
  signature secret, or either of two while it is rotated;
* the JWT's age: ``iat`` at most :data:`MAX_AGE` (5 minutes) old and not in the future beyond
  :data:`CLOCK_SKEW`; an ``exp`` or ``nbf``, if present, honoured (with the same skew);
* ``payload_hash``, when present: the SHA-256 of the request body as received, or of its compact
  JSON (the form Vonage's support article describes: the parameters as a JSON object without
  whitespace, in their order); for a ``GET``, of the query parameters as such a JSON object.

**The WebSocket's upgrade.** Our answer asks Vonage to authenticate the WebSocket handshake
(``"authorization":{"type":"vonage"}`` on the endpoint): Vonage then sends ``Authorization:
Bearer <JWT>`` on the upgrade, "the same JWT used for signed webhooks" (vonage-node-sdk's
``WebsocketAuthorization``). So the application key is **not** what verifies it: the signature
secret is, as for the webhooks. With checks on, an upgrade without a valid, fresh JWT is refused
with HTTP 403 before it is accepted; its ``payload_hash``, if any, is not checked (an upgrade
has no payload). The per-call token in the endpoint's ``headers`` is checked besides, at the
stream's start.

Without a signature secret (loopback or ``--insecure`` only), nothing is checked.

**The answer webhook** (``POST /vonage/answer``: set the application's answer URL with
``http_method`` ``POST``; Vonage then sends JSON). Its ``uuid`` is the call
(:attr:`~voxbridge.carriers.base.CallRequest.call_id`), ``to`` the called number. A ``GET`` with
the same fields in the query string (Vonage's default answer method) is read the same way by
:meth:`VonageWebhooks.call` and checked by :meth:`VonageWebhooks.webhook_signed`, for a route that
serves it.

**The answers** are NCCOs (JSON arrays of actions):

* :meth:`VonageWebhooks.connect`: ``[{"action":"connect","endpoint":[{"type":"websocket",
  "uri":"wss://.../vonage/media","content-type":"audio/l16;rate=16000","headers":{...},
  "authorization":{"type":"vonage"}}]}]``: the parameters (the per-call token among them) in
  ``headers``, which come back in ``websocket:connected``; ``authorization`` only with checks on.
* :meth:`VonageWebhooks.hangup`: ``[]``: an NCCO with no action ends the call at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeGuard
from urllib.parse import parse_qsl, urlsplit

import attrs
import jwt
import orjson

from ..errors import RemoteProtocolError, SettingsError
from ..options import option
from .base import CallRequest, HttpAnswer, HttpRequest
from .spec import CarrierSpec
from .vonage import (
    CALL_HEADER,
    DEFAULT_SAMPLE_RATE,
    SAMPLE_RATES,
    VonageStream,
    content_type_of,
    encode_headers,
)

if TYPE_CHECKING:
    from ..settings import Settings
    from .base import CarrierRest, CarrierWebhooks

__all__ = [
    "ALGORITHM",
    "CLOCK_SKEW",
    "MAX_AGE",
    "MAX_TOKEN",
    "NCCO_CONTENT_TYPE",
    "SPEC",
    "VonageSettings",
    "VonageWebhooks",
    "bearer",
    "connect_ncco",
    "payload_hashes",
    "sign_request",
]

ALGORITHM: Final = "HS256"
#: Seconds a signed request's JWT stays acceptable after its ``iat``.
MAX_AGE: Final = 300.0
#: Seconds a JWT's ``iat`` may lie in the future (clocks differ), and its ``exp`` in the past.
CLOCK_SKEW: Final = 60.0
#: Characters of an ``Authorization`` header read at most (a bound on the work one request causes).
MAX_TOKEN: Final = 4096
NCCO_CONTENT_TYPE: Final = "application/json"


def bearer(headers: Mapping[str, str]) -> str | None:
    """The token of ``Authorization: Bearer <token>`` in ``headers`` (lower-case names);
    ``None`` when absent, of another scheme, empty, or longer than :data:`MAX_TOKEN`."""
    value = headers.get("authorization", "")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN:
        return None
    return token


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def payload_hashes(method: str, url: str, body: bytes) -> set[str]:
    """The ``payload_hash`` values a request may carry: hex SHA-256 of the body as received and
    of its compact JSON (a ``POST``), or of the query parameters as a compact JSON object (a
    ``GET``). Never raises."""
    if method.upper() == "GET":
        query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
        return {hashlib.sha256(_compact(query)).hexdigest()} if query else set()
    hashes = {hashlib.sha256(body).hexdigest()}
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return hashes
    hashes.add(hashlib.sha256(_compact(parsed)).hexdigest())
    return hashes


def sign_request(
    secret: str,
    *,
    now: float,
    jti: str,
    body: bytes | None = None,
    api_key: str = "",
    application_id: str = "",
) -> str:
    """A JWT as Vonage signs a request (HS256 with ``secret``): ``iat`` (``now``, whole seconds),
    ``jti``, ``iss`` ``Vonage``, the ``api_key`` and ``application_id`` when given, and
    ``payload_hash`` of ``body`` when given. What the fakes and the caller simulator send."""
    claims: dict[str, Any] = {"iat": int(now), "jti": jti, "iss": "Vonage"}
    if api_key:
        claims["api_key"] = api_key
    if application_id:
        claims["application_id"] = application_id
    if body is not None:
        claims["payload_hash"] = hashlib.sha256(body).hexdigest()
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def connect_ncco(
    stream_url: str, headers: Mapping[str, str], *, sample_rate: int, authorize: bool
) -> list[dict[str, Any]]:
    """The NCCO connecting a call to the WebSocket ``stream_url`` (see the module docstring).

    Raises:
        ValueError: headers Vonage would not take (:func:`voxbridge.carriers.vonage.encode_headers`)
            or a rate it does not stream.
    """
    endpoint: dict[str, Any] = {
        "type": "websocket",
        "uri": stream_url,
        "content-type": content_type_of(sample_rate),
    }
    if headers:
        endpoint["headers"] = encode_headers(headers)
    if authorize:
        endpoint["authorization"] = {"type": "vonage"}
    return [{"action": "connect", "endpoint": [endpoint]}]


def _time(value: object) -> TypeGuard[float]:
    """Whether a claim is a time: a JSON number (not a boolean)."""
    return type(value) in (int, float)


def _number(value: object) -> str:
    """A number as Vonage sends it (digits, no ``+``) in E.164 (``+`` added); anything else as
    it is (a SIP URI, a client user)."""
    if not isinstance(value, str):
        return ""
    if value.isascii() and value.isdigit() and 8 <= len(value) <= 15:
        return "+" + value
    return value


class VonageWebhooks:
    """Vonage's :class:`~voxbridge.carriers.base.CarrierWebhooks`.

    Args:
        signature_secrets: the account's signature secret, optionally followed by a second one
            (rotation); none: nothing is checked (loopback or ``--insecure`` only).
        sample_rate: the stream's L16 rate (``--vonage-sample-rate``).
        max_age: seconds a signed request's JWT stays acceptable (:data:`MAX_AGE`).

    Raises:
        ValueError: more than two secrets, an empty one, or a rate Vonage does not stream.
    """

    __slots__ = ("_secrets", "max_age", "sample_rate")

    def __init__(
        self,
        signature_secrets: Sequence[str] = (),
        *,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        max_age: float = MAX_AGE,
    ) -> None:
        if len(signature_secrets) > 2 or not all(signature_secrets):
            raise ValueError("expected at most two non-empty signature secrets")
        content_type_of(sample_rate)  # raises ValueError for a rate Vonage does not stream
        self._secrets = tuple(signature_secrets)
        self.sample_rate = sample_rate
        self.max_age = max_age

    def __repr__(self) -> str:
        return (
            f"VonageWebhooks(<{len(self._secrets)} signature secret(s)>, "
            f"sample_rate={self.sample_rate})"
        )

    @property
    def checks(self) -> bool:
        """Whether JWTs and per-call tokens are checked (a signature secret is configured)."""
        return bool(self._secrets)

    @property
    def token_secrets(self) -> tuple[str, ...]:
        """The secrets the per-call token's key is derived from: the signature secrets (the
        first mints, either verifies); ``()`` without checks."""
        return self._secrets

    # --- checks ------------------------------------------------------------------------------------

    def claims(self, token: str | None, *, now: float) -> dict[str, Any] | None:
        """The claims of ``token`` if it is a fresh JWT signed HS256 with one of the signature
        secrets (see the module docstring), else ``None``."""
        if not token:
            return None
        claims: dict[str, Any] | None = None
        for secret in self._secrets:
            try:
                claims = jwt.decode(
                    token,
                    secret,
                    algorithms=[ALGORITHM],  # never "none", never another algorithm
                    # the clock is ours (``now``): PyJWT checks only the form of the claims here
                    options={
                        "require": ["iat"],
                        "verify_exp": False,
                        "verify_iat": False,
                        "verify_nbf": False,
                        "verify_aud": False,
                        "verify_iss": False,
                    },
                )
                break
            except jwt.InvalidSignatureError:
                continue  # perhaps the other secret (rotation)
            except jwt.InvalidTokenError:
                return None
        if claims is None or not self._fresh(claims, now):
            return None
        return claims

    def _fresh(self, claims: Mapping[str, Any], now: float) -> bool:
        issued = claims.get("iat")
        if not (_time(issued) and now - self.max_age <= issued <= now + CLOCK_SKEW):
            return False
        expires, not_before = claims.get("exp"), claims.get("nbf")
        if expires is not None and not (_time(expires) and now < expires + CLOCK_SKEW):
            return False
        return not_before is None or (_time(not_before) and now >= not_before - CLOCK_SKEW)

    def webhook_signed(self, request: HttpRequest, *, now: float) -> bool:
        """Whether a webhook carries a valid, fresh Vonage JWT whose ``payload_hash`` (when it
        has one) matches the request. True without checks."""
        if not self.checks:
            return True
        claims = self.claims(bearer(request.headers), now=now)
        if claims is None:
            return False
        expected = claims.get("payload_hash")
        if expected is None:
            return True
        if type(expected) is not str:
            return False
        given = expected.strip().lower().encode("ascii", "replace")
        matched = False
        for digest in payload_hashes(request.method, request.url, request.body):
            matched |= hmac.compare_digest(digest.encode("ascii"), given)
        return matched

    def upgrade_signed(self, request: HttpRequest, *, now: float) -> bool:
        """Whether the media WebSocket upgrade carries a valid, fresh Vonage JWT (see the module
        docstring). True without checks."""
        if not self.checks:
            return True
        return self.claims(bearer(request.headers), now=now) is not None

    # --- the webhook ---------------------------------------------------------------------------------

    def call(self, request: HttpRequest) -> CallRequest:
        """The call an answer webhook is about: ``uuid`` and ``to`` of the JSON body (a
        ``POST``; a form body is read too) or of the query string (a ``GET``). Vonage sends
        numbers without the ``+``; an all-digit ``to`` is given one, so agents are chosen by
        E.164 number as for Twilio. Vonage reports machine detection in its event webhook, not
        here, so ``answered_by`` is ``""``.

        Raises:
            RemoteProtocolError: no ``uuid``.
        """
        fields: Mapping[str, Any]
        if request.method.upper() == "GET":
            fields = dict(parse_qsl(urlsplit(request.url).query, keep_blank_values=True))
        else:
            try:
                parsed = orjson.loads(request.body)
            except orjson.JSONDecodeError:
                text = request.body.decode("utf-8", "replace")
                parsed = dict(parse_qsl(text, keep_blank_values=True))
            fields = parsed if isinstance(parsed, dict) else {}
        call_id = fields.get("uuid")
        if not isinstance(call_id, str) or not call_id:
            raise RemoteProtocolError("the Vonage answer webhook has no uuid")
        return CallRequest(call_id=call_id, to=_number(fields.get("to")))

    # --- answers ------------------------------------------------------------------------------------

    def connect(self, stream_url: str, parameters: Mapping[str, str]) -> HttpAnswer:
        """The NCCO connecting the call to ``stream_url`` (see the module docstring), with
        ``parameters`` in the endpoint's ``headers`` (their ``uuid`` names the call for the
        stream: :data:`voxbridge.carriers.vonage.CALL_HEADER`).

        Raises:
            ValueError: the parameters do not fit Vonage's 512-byte ``headers``, or use a
                reserved name.
        """
        ncco = connect_ncco(
            stream_url, parameters, sample_rate=self.sample_rate, authorize=self.checks
        )
        return HttpAnswer(NCCO_CONTENT_TYPE, _compact(ncco))

    def hangup(self) -> HttpAnswer:
        """``[]``: an NCCO with no action, which ends the call at once."""
        return HttpAnswer(NCCO_CONTENT_TYPE, b"[]")


# --- settings and the spec ----------------------------------------------------------------------------


def _sample_rate(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in SAMPLE_RATES:
        raise SettingsError(f"--vonage-sample-rate must be 8000, 16000 or 24000, got {value!r}")


def _signature_secrets(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    secrets = value.split(",") if isinstance(value, str) else []
    if not 1 <= len(secrets) <= 2 or not all(secret.strip() for secret in secrets):
        raise SettingsError(
            "VONAGE_SIGNATURE_SECRET must be one signature secret, or two separated by a comma "
            "(while rotating)"
        )


def _private_key(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not isinstance(value, str) or "-----BEGIN" not in value):
        raise SettingsError(
            "VONAGE_PRIVATE_KEY must be the application's private key in PEM "
            "(-----BEGIN PRIVATE KEY-----...), not a file name"
        )


@attrs.frozen
class VonageSettings:
    """``--vonage-*`` settings. The secrets are environment only: the signature secret
    (``VONAGE_SIGNATURE_SECRET``) and the application's private key (``VONAGE_PRIVATE_KEY``)."""

    application_id: str | None = option(
        None,
        "Vonage application id (also VONAGE_APPLICATION_ID): with VONAGE_PRIVATE_KEY, the REST "
        "API's JWTs (end_call)",
        env=("VONAGE_APPLICATION_ID",),
    )
    private_key: str | None = option(
        None,
        "the Vonage application's private key, PEM (also VONAGE_PRIVATE_KEY): signs the REST "
        "API's JWTs (RS256)",
        secret=True,
        env=("VONAGE_PRIVATE_KEY",),
        validator=_private_key,
    )
    signature_secret: str | None = option(
        None,
        "the Vonage account's signature secret (also VONAGE_SIGNATURE_SECRET): enables checks of "
        "signed webhooks and the WebSocket's JWT, and per-call tokens (a second, comma-separated "
        "secret while rotating)",
        secret=True,
        env=("VONAGE_SIGNATURE_SECRET",),
        validator=_signature_secrets,
    )
    sample_rate: int = option(
        DEFAULT_SAMPLE_RATE,
        "the stream's L16 sample rate: 8000, 16000 or 24000 (Hz)",
        validator=_sample_rate,
    )
    api_url: str = option("https://api.nexmo.com", "Vonage Voice API base URL (a fake's in tests)")

    @property
    def signature_secrets(self) -> tuple[str, ...]:
        """``signature_secret`` split for rotation: ``()`` when unset, else one or two."""
        if self.signature_secret is None:
            return ()
        return tuple(secret.strip() for secret in self.signature_secret.split(","))

    @property
    def private_key_pem(self) -> str | None:
        """``private_key`` with ``\\n`` escapes turned into newlines (a key pasted into a
        one-line variable), ``None`` when unset."""
        key = self.private_key
        if key is None or "\n" in key:
            return key
        return key.replace("\\n", "\n")


def _webhooks(settings: Settings, own: VonageSettings) -> CarrierWebhooks:
    return VonageWebhooks(own.signature_secrets, sample_rate=own.sample_rate)


def _rest(settings: Settings, own: VonageSettings) -> CarrierRest | None:
    from .vonage_rest import VonageRest  # here: httpx only where a REST client is built

    key = own.private_key_pem
    if not own.application_id or key is None:
        return None
    try:
        return VonageRest(own.application_id, key, base_url=own.api_url)
    except ValueError as exc:
        raise SettingsError(f"VONAGE_PRIVATE_KEY / --vonage-api-url: {exc}") from None


#: Vonage, as the registry lists it.
SPEC: CarrierSpec[VonageSettings] = CarrierSpec(
    name="vonage",
    codec=VonageStream,
    webhook="answer",
    settings=VonageSettings,
    webhooks=_webhooks,
    simulator="voxbridge.testing.vonage_wire:VonageWire",
    rest=_rest,
    call_parameter=CALL_HEADER,
)
