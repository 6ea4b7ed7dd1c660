"""Twilio's REST API, the part voxbridge uses: create, update and fetch a Call (API 2010-04-01).

Three things need it: the ``end_call`` tool hangs a call up (``Status=completed``), the
``transfer_call`` tool hands it on (``Twiml=<Response><Dial>...``) and ``voxbridge dial`` places an
outbound call (``POST Calls.json``). Every request is exactly what the official ``twilio`` package
sends for the same operation (``client.calls.create(...)``, ``client.calls(sid).update(...)``,
``client.calls(sid).fetch()``: same method, path, form fields and Basic auth;
tests/test_twilio_rest.py checks it against the official client), over **httpx** rather than that
client: its sync client would block the event loop (or need a worker thread trio cannot cancel) and
its async one is asyncio-only, while httpx runs under trio and every request here is cancelled by
its deadline like any other wait.

:class:`TwilioRest` is Twilio's :class:`~voxbridge.carriers.base.CarrierRest`, the carrier-neutral
REST hooks the call uses: :meth:`TwilioRest.complete` and :meth:`TwilioRest.transfer` (a redirect to
:func:`dial_twiml`); ``can_transfer`` is true.

Errors, one class for all (:class:`TwilioRestError`, a
:class:`~voxbridge.carriers.base.CarrierRestError`): Twilio's refusals carry the HTTP status and
Twilio's error ``code`` and ``message`` (its JSON error body: ``code``, ``message``, ``more_info``,
``status``); a transport failure or a timeout has ``status=None``. No credential is ever part of a
message or a ``repr``.

The TwiML documents (:func:`dial_twiml`, :func:`hangup_twiml`) are built with the official
``twilio.twiml.voice_response.VoiceResponse``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import httpx
from twilio.twiml.voice_response import VoiceResponse  # type: ignore[import-untyped]  # no stubs

from ..deadlines import deadline
from .addressing import is_transfer_target
from .base import CarrierRestError

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "API_URL",
    "API_VERSION",
    "FINAL_STATUSES",
    "MACHINE_DETECTION",
    "REST_TIMEOUT",
    "TwilioRest",
    "TwilioRestError",
    "dial_twiml",
    "hangup_twiml",
]

API_URL = "https://api.twilio.com"
API_VERSION = "2010-04-01"
REST_TIMEOUT = 10.0  # seconds for one request, connection to last byte
#: A call in one of these statuses is over (Twilio's ``CallInstance.Status``).
FINAL_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
#: ``MachineDetection`` values: ``Enable`` answers as soon as a machine is recognised
#: (``AnsweredBy=machine_start``), ``DetectMessageEnd`` waits for the greeting's end
#: (``machine_end_beep`` / ``machine_end_silence`` / ``machine_end_other``) to leave a message.
MACHINE_DETECTION = ("Enable", "DetectMessageEnd")
#: Twilio's "the requested resource was not found": for a call, it is gone (or never was).
NOT_FOUND = 20404
ERROR_EXCERPT = 200  # characters of a non-JSON error body quoted in a message

ClientFactory = Callable[[], httpx.AsyncClient]


class TwilioRestError(CarrierRestError):
    """Twilio refused a request, or it could not be made (a
    :class:`~voxbridge.carriers.base.CarrierRestError`).

    Attributes:
        status: the HTTP status; ``None`` when no answer came (connection failed, timed out).
        code: Twilio's error code (``20404`` not found, ``20003`` authentication failed,
            ``21220`` the call is not in progress, ...; https://www.twilio.com/docs/api/errors),
            when the answer had one.
        message: Twilio's error message, or what went wrong.
        more_info: Twilio's link for the code, when given.
    """

    def __init__(
        self, status: int | None, code: int | None, message: str, *, more_info: str | None = None
    ) -> None:
        super().__init__(status, code, message)
        self.args = (status, code, message)
        self.message = message
        self.more_info = more_info

    def __str__(self) -> str:
        if self.status is None:
            return f"Twilio REST API: {self.message}"
        code = f", error {self.code}" if self.code is not None else ""
        return f"Twilio REST API: HTTP {self.status}{code}: {self.message}"


class TwilioRest:
    """An async client of Twilio's Calls resource (``/2010-04-01/Accounts/{AccountSid}/Calls``).

    Args:
        account_sid: the account (``AC...``) whose calls these are; part of every path.
        credentials: ``(username, password)`` for HTTP Basic auth: an API key and its secret
            (``SK...``), or the account SID and its auth token.
        base_url: ``https://api.twilio.com``; a fake's URL in tests.
        timeout: seconds for one request, from connecting to the last byte of the answer.
        client_factory: makes the ``httpx.AsyncClient`` for one request (entered and closed
            here); for tests, proxies or custom TLS. Default: a plain client.

    Raises:
        ValueError: ``base_url`` is not http(s)://, or ``timeout`` is not positive.
    """

    def __init__(
        self,
        account_sid: str,
        credentials: tuple[str, str],
        *,
        base_url: str = API_URL,
        timeout: float = REST_TIMEOUT,
        client_factory: ClientFactory | None = None,
    ) -> None:
        if urlsplit(base_url).scheme not in ("http", "https"):
            raise ValueError("the Twilio REST base URL must be http:// or https://")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self.account_sid = account_sid
        self._credentials = credentials
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._client_factory = client_factory

    def __repr__(self) -> str:
        return (
            f"TwilioRest(account_sid={self.account_sid!r}, base_url={self.base_url!r}, "
            "credentials=<set>)"
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        timeout: float = REST_TIMEOUT,
        client_factory: ClientFactory | None = None,
    ) -> TwilioRest | None:
        """The client ``settings`` allow: ``twilio_account_sid`` and
        ``twilio_rest_credentials`` (an API key and secret, else the account SID and the first
        auth token), against ``twilio_api_url`` or Twilio's own. ``None`` without credentials."""
        credentials = settings.twilio_rest_credentials
        if credentials is None or settings.twilio_account_sid is None:
            return None
        return cls(
            settings.twilio_account_sid,
            credentials,
            base_url=settings.twilio_api_url or API_URL,
            timeout=timeout,
            client_factory=client_factory,
        )

    @property
    def calls_url(self) -> str:
        """``{base_url}/2010-04-01/Accounts/{AccountSid}/Calls.json``."""
        account = quote(self.account_sid, safe="")
        return f"{self.base_url}/{API_VERSION}/Accounts/{account}/Calls.json"

    def call_url(self, call_sid: str) -> str:
        """``{base_url}/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json``."""
        account = quote(self.account_sid, safe="")
        call = quote(call_sid, safe="")  # a SID from the wire must not steer the path
        return f"{self.base_url}/{API_VERSION}/Accounts/{account}/Calls/{call}.json"

    # --- operations ----------------------------------------------------------------------------

    @property
    def can_transfer(self) -> bool:
        """Always true: :meth:`transfer` redirects the call to ``<Dial>``."""
        return True

    async def complete(self, call_id: str) -> None:
        """Hang the call up: ``POST Calls/{Sid}.json`` with ``Status=completed``.

        ``call_id`` is the call's SID (``CA...``). A call Twilio no longer knows (404, code 20404)
        is already over: that counts as done.

        Raises:
            TwilioRestError: any other refusal, a transport failure or the timeout.
        """
        try:
            await self._request("POST", self.call_url(call_id), {"Status": "completed"})
        except TwilioRestError as exc:
            if not (exc.status == 404 and exc.code == NOT_FOUND):
                raise

    async def redirect(self, call_sid: str, twiml: str) -> None:
        """Replace what the call is doing with ``twiml``: ``POST Calls/{Sid}.json`` with
        ``Twiml=...``. A running media stream stops (Twilio sends ``stop``) and the call goes on
        with the new document, e.g. :func:`dial_twiml`.

        Raises:
            TwilioRestError: refused (21220: the call is not in progress; 20404: no such call),
                a transport failure or the timeout.
        """
        await self._request("POST", self.call_url(call_sid), {"Twiml": twiml})

    async def transfer(self, call_id: str, target: str) -> None:
        """Hand the call (SID ``call_id``) on to ``target``: :meth:`redirect` to
        :func:`dial_twiml` of it. Twilio stops the media stream (``stop``) and dials.

        Raises:
            ValueError: ``target`` is neither an E.164 number nor a ``sip:`` URI.
            TwilioRestError: refused (21220: the call is not in progress; 20404: no such call),
                a transport failure or the timeout.
        """
        await self.redirect(call_id, dial_twiml(target))

    async def create_call(
        self,
        to: str,
        from_: str,
        url: str,
        *,
        machine_detection: str | None = None,
        status_callback: str | None = None,
    ) -> str:
        """Place an outbound call: ``POST Calls.json`` with ``To``, ``From``, ``Url``,
        ``Method=POST`` [, ``MachineDetection``] [, ``StatusCallback``].

        Twilio dials ``to`` from ``from_`` and, once answered, POSTs its voice webhook to ``url``
        (with ``AnsweredBy`` when ``machine_detection`` is given).

        Args:
            to: the number called (E.164), a SIP URI or a client.
            from_: a Twilio number of the account (E.164).
            url: the voice webhook that answers with TwiML.
            machine_detection: ``Enable`` or ``DetectMessageEnd`` (:data:`MACHINE_DETECTION`).
            status_callback: a URL Twilio POSTs the call's final status to.

        Returns:
            The new call's SID (``CA...``).

        Raises:
            ValueError: ``machine_detection`` is not one of :data:`MACHINE_DETECTION`.
            TwilioRestError: refused, a transport failure, the timeout, or an answer with no
                ``sid``.
        """
        if machine_detection is not None and machine_detection not in MACHINE_DETECTION:
            raise ValueError(f"machine_detection must be one of {', '.join(MACHINE_DETECTION)}")
        form = {"To": to, "From": from_, "Url": url, "Method": "POST"}
        if machine_detection is not None:
            form["MachineDetection"] = machine_detection
        if status_callback is not None:
            form["StatusCallback"] = status_callback
        call = await self._request("POST", self.calls_url, form)
        sid = call.get("sid")
        if not isinstance(sid, str) or not sid:
            raise TwilioRestError(None, None, "the created call has no sid")
        return sid

    async def fetch_call(self, call_sid: str) -> dict[str, Any]:
        """The call as Twilio has it: ``GET Calls/{Sid}.json`` (``sid``, ``status``,
        ``answered_by``, ``direction``, ``duration``, ... as Twilio's Call resource).

        Raises:
            TwilioRestError: refused (20404: no such call), a transport failure or the timeout.
        """
        return await self._request("GET", self.call_url(call_sid))

    # --- the I/O edge --------------------------------------------------------------------------

    async def _request(
        self, method: str, url: str, form: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        from .. import __version__  # here: this module may be imported while voxbridge loads

        headers = {"Accept": "application/json", "User-Agent": f"voxbridge/{__version__}"}
        timed_out = self._error(f"no answer within {self.timeout:g} s")
        try:
            with deadline(self.timeout, lambda detail: timed_out):
                async with self._client() as client:
                    response = await client.request(
                        method,
                        url,
                        data=dict(form) if form is not None else None,
                        headers=headers,
                        auth=self._credentials,
                    )
        except httpx.TimeoutException:
            raise timed_out from None
        except httpx.HTTPError as exc:
            raise self._error(f"{method} failed: {type(exc).__name__}: {exc}") from None
        if not response.is_success:
            raise self._refused(response)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise self._error(f"HTTP {response.status_code} with a body that is not a JSON object")
        return body

    def _client(self) -> httpx.AsyncClient:
        if self._client_factory is not None:
            return self._client_factory()
        return httpx.AsyncClient(timeout=self.timeout)

    def _redact(self, text: str) -> str:
        secret = self._credentials[1]
        return text.replace(secret, "<redacted>") if secret else text

    def _error(self, message: str, status: int | None = None) -> TwilioRestError:
        return TwilioRestError(status, None, self._redact(message))

    def _refused(self, response: httpx.Response) -> TwilioRestError:
        """Twilio's error body (``code``, ``message``, ``more_info``) as a TwilioRestError."""
        try:
            body = json.loads(response.text)
        except (ValueError, RecursionError):
            body = None
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            code = body.get("code")
            more_info = body.get("more_info")
            return TwilioRestError(
                response.status_code,
                code if isinstance(code, int) and not isinstance(code, bool) else None,
                self._redact(body["message"]),
                more_info=more_info if isinstance(more_info, str) else None,
            )
        text = " ".join(response.text.split()) or response.reason_phrase or "(empty body)"
        if len(text) > ERROR_EXCERPT:
            text = text[: ERROR_EXCERPT - 3] + "..."
        return self._error(text, response.status_code)


# --- TwiML ----------------------------------------------------------------------------------------


def dial_twiml(target: str) -> str:
    """The TwiML that hands the call on to ``target``.

    ``<Response><Dial><Number>+15551230000</Number></Dial></Response>`` for an E.164 number,
    ``<Response><Dial><Sip>sip:desk@example.com</Sip></Dial></Response>`` for a ``sip:`` or
    ``sips:`` URI (no XML declaration), built with the official ``VoiceResponse``.

    Raises:
        ValueError: ``target`` is neither (``voxbridge.settings.is_transfer_target``).
    """
    if not is_transfer_target(target):
        raise ValueError("a transfer target is an E.164 number (+15551230000) or a sip: URI")
    response = VoiceResponse()
    dial = response.dial()
    if target.startswith("+"):
        dial.number(target)
    else:
        dial.sip(target)
    return str(response.to_xml(xml_declaration=False))


def hangup_twiml() -> str:
    """``<Response><Hangup /></Response>``, built with the official ``VoiceResponse``."""
    response = VoiceResponse()
    response.hangup()
    return str(response.to_xml(xml_declaration=False))
