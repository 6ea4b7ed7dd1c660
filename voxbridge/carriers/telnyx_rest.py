"""Telnyx's Call Control API, the part voxbridge uses: hang a call up, transfer it.

The built-in tools need two commands (Telnyx's API v2 reference, "Hangup call" and "Transfer
call"; the requests are the official ``telnyx`` package's ``client.calls.actions.hangup(id)`` and
``.transfer(id, to=target)``, which tests/test_telnyx_rest.py uses as the oracle):

* ``POST {api}/calls/{call_control_id}/actions/hangup`` with ``{}``: the ``end_call`` tool. A
  ``422`` whose error code is ``90018`` ("Call has already ended") counts as done;
* ``POST {api}/calls/{call_control_id}/actions/transfer`` with ``{"to": target}`` (an E.164
  number or a ``sip:`` URI): the ``transfer_call`` tool.

Each is one JSON request with ``Authorization: Bearer <API key>`` (``TELNYX_API_KEY``, environment
only), over **httpx** under trio, so the caller's cancel scope (its deadline) cancels it like any
other wait, and :attr:`TelnyxRest.timeout` bounds it too. Errors are
:class:`~voxbridge.carriers.base.CarrierRestError`: Telnyx's refusals carry the HTTP status and
the first error's numeric ``code`` and ``title``/``detail`` (its body is
``{"errors": [{"code": "90018", "title": ..., "detail": ...}]}``); a transport failure or a
timeout has ``status=None``. No message or ``repr`` contains the API key.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import httpx

from ..deadlines import deadline
from .addressing import is_transfer_target
from .base import CarrierRestError

if TYPE_CHECKING:
    from .telnyx_webhooks import TelnyxSettings

__all__ = ["ALREADY_ENDED", "API_URL", "REST_TIMEOUT", "TelnyxRest"]

API_URL = "https://api.telnyx.com/v2"
REST_TIMEOUT = 10.0  # seconds for one request, connection to last byte
#: Telnyx's "Call has already ended" (with HTTP 422): a hang-up that finds the call gone is done.
ALREADY_ENDED = 90018
ERROR_EXCERPT = 200  # characters of an error text quoted in a message

ClientFactory = Callable[[], httpx.AsyncClient]


class TelnyxRest:
    """An async client of Telnyx's Call Control commands (a
    :class:`~voxbridge.carriers.base.CarrierRest`).

    Args:
        api_key: the API key (``KEY...``), sent as a Bearer token.
        base_url: ``https://api.telnyx.com/v2``; a fake's URL in tests.
        timeout: seconds for one request, from connecting to the last byte of the answer.
        client_factory: makes the ``httpx.AsyncClient`` for one request (entered and closed
            here); for tests, proxies or custom TLS. Default: a plain client.

    Raises:
        ValueError: ``base_url`` is not http(s)://, the key is empty, or ``timeout`` is not
            positive.
    """

    can_transfer = True

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = API_URL,
        timeout: float = REST_TIMEOUT,
        client_factory: ClientFactory | None = None,
    ) -> None:
        if urlsplit(base_url).scheme not in ("http", "https"):
            raise ValueError("the Telnyx API base URL must be http:// or https://")
        if not api_key:
            raise ValueError("a Telnyx API key is needed")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._client_factory = client_factory

    def __repr__(self) -> str:
        return f"TelnyxRest(base_url={self.base_url!r}, api_key=<set>)"

    @classmethod
    def from_settings(
        cls, own: TelnyxSettings, *, client_factory: ClientFactory | None = None
    ) -> TelnyxRest | None:
        """The client these Telnyx settings allow: ``None`` without an API key."""
        if not own.api_key:
            return None
        return cls(own.api_key, base_url=own.api_url or API_URL, client_factory=client_factory)

    def action_url(self, call_control_id: str, action: str) -> str:
        """``{base_url}/calls/{call_control_id}/actions/{action}`` (the id escaped whole: an id
        from the wire must not steer the path)."""
        return f"{self.base_url}/calls/{quote(call_control_id, safe='')}/actions/{action}"

    async def complete(self, call_id: str) -> None:
        """Hang the call up (``actions/hangup``). A call that has already ended (422, code
        90018) counts as done.

        Raises:
            CarrierRestError: any other refusal, a transport failure or the timeout.
        """
        try:
            await self._post(self.action_url(call_id, "hangup"), {})
        except CarrierRestError as exc:
            if not (exc.status == 422 and exc.code == ALREADY_ENDED):
                raise

    async def transfer(self, call_id: str, target: str) -> None:
        """Transfer the call to ``target`` (``actions/transfer`` with ``{"to": target}``); the
        media stream ends (Telnyx sends ``stop``).

        Raises:
            ValueError: ``target`` is neither an E.164 number nor a ``sip:`` URI.
            CarrierRestError: refused (90018: the call has ended), a transport failure or the
                timeout.
        """
        if not is_transfer_target(target):
            raise ValueError("a transfer target is an E.164 number (+15551230000) or a sip: URI")
        await self._post(self.action_url(call_id, "transfer"), {"to": target})

    # --- the I/O edge --------------------------------------------------------------------------

    async def _post(self, url: str, body: Mapping[str, Any]) -> dict[str, Any]:
        from .. import __version__  # here: this module may be imported while voxbridge loads

        headers = {
            "Accept": "application/json",
            "Authorization": f"Bearer {self._api_key}",
            "User-Agent": f"voxbridge/{__version__}",
        }
        timed_out = self._error(f"no answer within {self.timeout:g} s")
        try:
            with deadline(self.timeout, lambda detail: timed_out):
                async with self._client() as client:
                    response = await client.post(url, json=dict(body), headers=headers)
        except httpx.TimeoutException:
            raise timed_out from None
        except httpx.HTTPError as exc:
            raise self._error(f"POST failed: {type(exc).__name__}: {exc}") from None
        if not response.is_success:
            raise self._refused(response)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise self._error(f"HTTP {response.status_code} with a body that is not a JSON object")
        return answer

    def _client(self) -> httpx.AsyncClient:
        if self._client_factory is not None:
            return self._client_factory()
        return httpx.AsyncClient(timeout=self.timeout)

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "<redacted>")

    def _error(self, message: str, status: int | None = None) -> CarrierRestError:
        return CarrierRestError(status, None, "Telnyx API: " + self._redact(message))

    def _refused(self, response: httpx.Response) -> CarrierRestError:
        """Telnyx's error body (``errors[0]``: ``code``, ``title``, ``detail``) as an error."""
        try:
            body = json.loads(response.text)
        except (ValueError, RecursionError):
            body = None
        errors = body.get("errors") if isinstance(body, dict) else None
        first = errors[0] if isinstance(errors, list) and errors else None
        if isinstance(first, dict):
            raw_code = first.get("code")
            code = (
                int(raw_code)
                if isinstance(raw_code, str)
                and 0 < len(raw_code) <= 9
                and raw_code.isascii()
                and raw_code.isdigit()
                else raw_code
                if isinstance(raw_code, int) and not isinstance(raw_code, bool)
                else None
            )
            words = [first.get(k) for k in ("title", "detail")]
            text = ": ".join(w for w in words if isinstance(w, str) and w) or "(no detail)"
            shown = f", error {code}" if code is not None else ""
            return CarrierRestError(
                response.status_code,
                code,
                self._redact(
                    f"Telnyx API: HTTP {response.status_code}{shown}: {text[:ERROR_EXCERPT]}"
                ),
            )
        text = " ".join(response.text.split()) or response.reason_phrase or "(empty body)"
        if len(text) > ERROR_EXCERPT:
            text = text[: ERROR_EXCERPT - 3] + "..."
        return self._error(f"HTTP {response.status_code}: {text}", response.status_code)
