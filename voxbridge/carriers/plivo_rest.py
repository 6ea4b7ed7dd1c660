"""Plivo's REST API, the part voxbridge uses: hang a call up (``end_call``).

``DELETE https://api.plivo.com/v1/Account/{auth_id}/Call/{call_uuid}/`` with HTTP Basic auth
(auth id, auth token) ends a live call: Plivo answers ``204 No Content``; ``404`` means the call
is not live (already ended), which counts as done (Plivo's "Hang up a call" reference; pipecat's
Plivo serializer treats the two answers the same way). Over **httpx** (not the ``plivo`` package,
whose client is synchronous and would block the event loop), so a request is cancelled by the
caller's trio cancel scope like any other wait, and bounded by ``timeout`` besides.

Transfer is not offered (:attr:`PlivoRest.can_transfer` false): Plivo's "Transfer a call"
(``POST .../Call/{call_uuid}/`` with ``legs`` and ``aleg_url``) moves the call to a URL that must
answer with new XML, which voxbridge does not serve.

Errors are :class:`PlivoRestError` (a :class:`~voxbridge.carriers.base.CarrierRestError`):
Plivo's refusal with the HTTP status and Plivo's ``error`` text (its JSON error body is
``{"api_id": ..., "error": ...}``; Plivo has no numeric error codes, so ``code`` is ``None``),
or ``status=None`` for a transport failure or the timeout. No credential is part of a message or
a ``repr``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Final
from urllib.parse import quote, urlsplit

import httpx

from ..deadlines import deadline
from .base import NamedRestError

__all__ = ["API_URL", "REST_TIMEOUT", "PlivoRest", "PlivoRestError"]

API_URL: Final = "https://api.plivo.com"
REST_TIMEOUT: Final = 10.0  # seconds for one request, connection to last byte
ERROR_EXCERPT: Final = 200  # characters of a non-JSON error body quoted in a message

ClientFactory = Callable[[], httpx.AsyncClient]


class PlivoRestError(NamedRestError):
    """Plivo refused a request (``status``, Plivo's ``error`` text), or it could not be made
    (``status`` ``None``). ``code`` is always ``None``: Plivo's errors carry no code."""

    API = "Plivo REST API"


class PlivoRest:
    """An async client of Plivo's Call resource: a :class:`~voxbridge.carriers.base.CarrierRest`.

    Args:
        auth_id: the account's Auth ID (``MA...``/``SA...``): the Basic auth user and part of
            every path.
        auth_token: its Auth Token (the Basic auth password).
        base_url: ``https://api.plivo.com``; a fake's URL in tests.
        timeout: seconds for one request, from connecting to the last byte of the answer.
        client_factory: makes the ``httpx.AsyncClient`` for one request (entered and closed
            here); default: a plain client.

    Raises:
        ValueError: an empty auth id or token, a base URL that is not http(s)://, or a timeout
            that is not positive.
    """

    def __init__(
        self,
        auth_id: str,
        auth_token: str,
        *,
        base_url: str = API_URL,
        timeout: float = REST_TIMEOUT,
        client_factory: ClientFactory | None = None,
    ) -> None:
        if not auth_id or not auth_token:
            raise ValueError("the Plivo REST API needs an auth id and an auth token")
        if urlsplit(base_url).scheme not in ("http", "https"):
            raise ValueError("the Plivo REST base URL must be http:// or https://")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self.auth_id = auth_id
        self._auth_token = auth_token
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._client_factory = client_factory

    def __repr__(self) -> str:
        return f"PlivoRest(auth_id={self.auth_id!r}, base_url={self.base_url!r}, auth_token=<set>)"

    @property
    def can_transfer(self) -> bool:
        """False: see the module docstring."""
        return False

    def call_url(self, call_id: str) -> str:
        """``{base_url}/v1/Account/{auth_id}/Call/{call_uuid}/``."""
        account = quote(self.auth_id, safe="")
        call = quote(call_id, safe="")  # an id from the wire must not steer the path
        return f"{self.base_url}/v1/Account/{account}/Call/{call}/"

    async def complete(self, call_id: str) -> None:
        """Hang the call up: ``DELETE Call/{call_uuid}/``. A call Plivo does not know as live
        (404) is over already: that counts as done.

        Raises:
            PlivoRestError: any other refusal, a transport failure or the timeout.
        """
        response = await self._request("DELETE", self.call_url(call_id))
        if response.status_code == 404 or response.is_success:
            return
        raise self._refused(response)

    async def transfer(self, call_id: str, target: str) -> None:
        """Not offered for Plivo.

        Raises:
            NotImplementedError: always (:attr:`can_transfer` is false).
        """
        raise NotImplementedError("voxbridge does not transfer Plivo calls")

    # --- the I/O edge --------------------------------------------------------------------------

    async def _request(self, method: str, url: str) -> httpx.Response:
        from .. import __version__  # here: this module may be imported while voxbridge loads

        headers = {"Accept": "application/json", "User-Agent": f"voxbridge/{__version__}"}
        timed_out = self._error(f"no answer within {self.timeout:g} s")
        response: httpx.Response | None = None
        try:
            with deadline(self.timeout, lambda detail: timed_out):
                async with self._client() as client:
                    response = await client.request(
                        method, url, headers=headers, auth=(self.auth_id, self._auth_token)
                    )
        except httpx.TimeoutException:
            raise timed_out from None
        except httpx.HTTPError as exc:
            raise self._error(f"{method} failed: {type(exc).__name__}: {exc}") from None
        if response is None:  # cannot happen: the deadline raises when it fires
            raise timed_out
        return response

    def _client(self) -> httpx.AsyncClient:
        if self._client_factory is not None:
            return self._client_factory()
        return httpx.AsyncClient(timeout=self.timeout)

    def _redact(self, text: str) -> str:
        return text.replace(self._auth_token, "<redacted>")

    def _error(self, message: str, status: int | None = None) -> PlivoRestError:
        return PlivoRestError(status, self._redact(message))

    def _refused(self, response: httpx.Response) -> PlivoRestError:
        """Plivo's error body (``{"api_id", "error"}``) as a PlivoRestError."""
        try:
            body = json.loads(response.text)
        except (ValueError, RecursionError):
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]:
            text = body["error"]
        else:
            text = " ".join(response.text.split()) or response.reason_phrase or "(empty body)"
        if len(text) > ERROR_EXCERPT:
            text = text[: ERROR_EXCERPT - 3] + "..."
        return self._error(text, response.status_code)
