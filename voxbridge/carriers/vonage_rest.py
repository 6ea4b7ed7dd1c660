"""Vonage's Voice REST API, the part voxbridge uses: hang a call up (``end_call``).

``PUT https://api.nexmo.com/v1/calls/{uuid}`` with the JSON body ``{"action":"hangup"}`` ends a
live call; Vonage answers ``204 No Content`` (the Voice API reference, "Modify an in progress
call"; the official ``vonage-voice`` package's ``Voice.hangup`` sends exactly this). A call Vonage
does not know as live answers ``404``, which counts as done (the call is over: the same rule as the
other carriers; what Vonage answers for a call that has just completed is not documented, and
anything but 2xx and 404 is an error).

Every request carries ``Authorization: Bearer <JWT>``: an **application JWT**, signed RS256 with
the application's private key (``VONAGE_PRIVATE_KEY``), with the claims Vonage's own
``vonage-jwt`` package gives it: ``application_id``, ``iat``, ``jti`` (a fresh UUID) and ``exp``
(:data:`JWT_TTL` after ``iat``). PyJWT signs it; the key is parsed once, when the client is made.

Over **httpx** (not the ``vonage`` packages, whose client is synchronous and would block the
event loop), so a request is cancelled by the caller's trio cancel scope like any other wait, and
bounded by ``timeout`` besides.

Transfer is not offered (:attr:`VonageRest.can_transfer` false): Vonage's transfer
(``{"action":"transfer","destination":{"type":"ncco",...}}``) replaces the call's NCCO, and
connecting it to a phone needs a ``from`` number of the account that voxbridge does not know.

Errors are :class:`VonageRestError` (a :class:`~voxbridge.carriers.base.CarrierRestError`):
Vonage's refusal with the HTTP status and its problem text (the body is an RFC 7807 object with
``type``, ``title`` and ``detail``; Vonage has no numeric error codes, so ``code`` is ``None``), or
``status=None`` for a transport failure or the timeout. No key, JWT or secret is part of a message
or a ``repr``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import quote, urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from ..deadlines import deadline
from .base import NamedRestError

__all__ = ["API_URL", "JWT_TTL", "REST_TIMEOUT", "VonageRest", "VonageRestError"]

API_URL: Final = "https://api.nexmo.com"
REST_TIMEOUT: Final = 10.0  # seconds for one request, connection to last byte
#: Seconds an application JWT is valid (``exp`` - ``iat``): vonage-jwt's default, 15 minutes.
JWT_TTL: Final = 15 * 60
ERROR_EXCERPT: Final = 200  # characters of an error body quoted in a message

ClientFactory = Callable[[], httpx.AsyncClient]


class VonageRestError(NamedRestError):
    """Vonage refused a request (``status``, its problem text), or it could not be made
    (``status`` ``None``). ``code`` is always ``None``: Vonage's errors carry no code."""

    API = "Vonage REST API"


def load_private_key(pem: str) -> RSAPrivateKey:
    """The RSA private key in ``pem`` (PKCS#8 or PKCS#1, unencrypted), as Vonage issues them.

    Raises:
        ValueError: not a PEM RSA private key (the key is not quoted back).
    """
    try:
        key = load_pem_private_key(pem.encode("utf-8"), password=None)
    except (ValueError, TypeError):
        raise ValueError("the private key is not an unencrypted PEM private key") from None
    if not isinstance(key, RSAPrivateKey):
        raise ValueError("the private key is not an RSA key (Vonage's are)")
    return key


class VonageRest:
    """An async client of Vonage's call resource: a :class:`~voxbridge.carriers.base.CarrierRest`.

    Args:
        application_id: the Vonage application's id (the JWT's ``application_id``).
        private_key: its private key, PEM.
        base_url: ``https://api.nexmo.com``; a fake's URL in tests.
        timeout: seconds for one request, from connecting to the last byte of the answer.
        client_factory: makes the ``httpx.AsyncClient`` for one request (entered and closed
            here); default: a plain client.
        clock: Unix time in seconds, for the JWT's ``iat`` (``time.time``).

    Raises:
        ValueError: an empty application id, a key that is not a PEM RSA private key, a base URL
            that is not http(s)://, or a timeout that is not positive.
    """

    def __init__(
        self,
        application_id: str,
        private_key: str,
        *,
        base_url: str = API_URL,
        timeout: float = REST_TIMEOUT,
        client_factory: ClientFactory | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not application_id:
            raise ValueError("the Vonage REST API needs an application id")
        if urlsplit(base_url).scheme not in ("http", "https"):
            raise ValueError("the Vonage REST base URL must be http:// or https://")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self.application_id = application_id
        self._key = load_private_key(private_key)
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._client_factory = client_factory
        self._clock = clock

    def __repr__(self) -> str:
        return (
            f"VonageRest(application_id={self.application_id!r}, base_url={self.base_url!r}, "
            "private_key=<set>)"
        )

    @property
    def can_transfer(self) -> bool:
        """False: see the module docstring."""
        return False

    def application_jwt(self) -> str:
        """A fresh application JWT (RS256): ``application_id``, ``iat``, ``jti``, ``exp``."""
        issued = int(self._clock())
        claims = {
            "application_id": self.application_id,
            "iat": issued,
            "jti": str(uuid.uuid4()),
            "exp": issued + JWT_TTL,
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"typ": "JWT"})

    def call_url(self, call_id: str) -> str:
        """``{base_url}/v1/calls/{uuid}``."""
        return f"{self.base_url}/v1/calls/{quote(call_id, safe='')}"  # an id must not steer

    async def complete(self, call_id: str) -> None:
        """Hang the call up: ``PUT /v1/calls/{uuid}`` ``{"action":"hangup"}``. A call Vonage
        does not know as live (404) is over already: that counts as done.

        Raises:
            VonageRestError: any other refusal, a transport failure or the timeout.
        """
        response = await self._request("PUT", self.call_url(call_id), {"action": "hangup"})
        if response.status_code == 404 or response.is_success:
            return
        raise self._refused(response)

    async def transfer(self, call_id: str, target: str) -> None:
        """Not offered for Vonage.

        Raises:
            NotImplementedError: always (:attr:`can_transfer` is false).
        """
        raise NotImplementedError("voxbridge does not transfer Vonage calls")

    # --- the I/O edge --------------------------------------------------------------------------

    async def _request(self, method: str, url: str, body: dict[str, Any]) -> httpx.Response:
        from .. import __version__  # here: this module may be imported while voxbridge loads

        headers = {
            "Accept": "application/json",
            "Authorization": f"Bearer {self.application_jwt()}",
            "User-Agent": f"voxbridge/{__version__}",
        }
        timed_out = VonageRestError(None, f"no answer within {self.timeout:g} s")
        response: httpx.Response | None = None
        try:
            with deadline(self.timeout, lambda detail: timed_out):
                async with self._client() as client:
                    response = await client.request(method, url, headers=headers, json=body)
        except httpx.TimeoutException:
            raise timed_out from None
        except httpx.HTTPError as exc:
            # httpx's messages name the URL, never the headers (the JWT)
            raise VonageRestError(None, f"{method} failed: {type(exc).__name__}: {exc}") from None
        if response is None:  # cannot happen: the deadline raises when it fires
            raise timed_out
        return response

    def _client(self) -> httpx.AsyncClient:
        if self._client_factory is not None:
            return self._client_factory()
        return httpx.AsyncClient(timeout=self.timeout)

    def _refused(self, response: httpx.Response) -> VonageRestError:
        """Vonage's problem body (``title``, ``detail``) as a VonageRestError."""
        try:
            body = json.loads(response.text)
        except (ValueError, RecursionError):
            body = None
        parts: list[str] = []
        if isinstance(body, dict):
            parts = [
                body[key]
                for key in ("title", "detail")
                if isinstance(body.get(key), str) and body[key]
            ]
        text = ": ".join(parts) or " ".join(response.text.split()) or response.reason_phrase
        text = text or "(empty body)"
        if len(text) > ERROR_EXCERPT:
            text = text[: ERROR_EXCERPT - 3] + "..."
        return VonageRestError(response.status_code, text)
