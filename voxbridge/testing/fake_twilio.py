"""A local Twilio: the REST Calls API, and the calls it places (voice webhook, then media stream).

Real sockets on loopback, like the other fakes: the REST API is a small ASGI app served by
hypercorn's trio worker on ``127.0.0.1`` port 0; the calls it places are real HTTP requests to
the voice webhook and a real WebSocket to the media stream, played by
:class:`~voxbridge.testing.CarrierSimulator` (the same simulated caller as ``voxbridge call``).

**REST** (Twilio API 2010-04-01, the subset voxbridge uses; form-encoded requests, JSON answers in
Twilio's shapes, errors as Twilio's ``{"code", "message", "more_info", "status"}``):

* ``POST /2010-04-01/Accounts/{AccountSid}/Calls.json`` -- ``To``, ``From``, ``Url`` or
  ``Twiml``, optional ``Method``, ``MachineDetection``, ``StatusCallback``: 201 and the call
  (``status`` ``queued``), which the fake then places (below). 400 without ``To`` (21201),
  ``From`` (21213) or ``Url``/``Twiml`` (21205).
* ``POST .../Calls/{CallSid}.json`` -- ``Status=completed`` hangs up (a call not yet answered
  ends ``canceled``; a call already over is left as it is), ``Status=canceled`` cancels a call
  not yet answered; ``Twiml=...`` or ``Url=...`` replaces what an in-progress call is doing
  (400, code 21220, for a call that is not in progress).
* ``GET .../Calls/{CallSid}.json`` -- the call.

Every request needs HTTP Basic auth with one of ``credentials`` (401, code 20003, otherwise); an
unknown account or call is 404, code 20404; another method 405, code 20004. (An invalid
``Status`` value, 21218, and a body over 1 MiB, 20001, have stand-in codes.) Each request is
recorded in :attr:`FakeTwilio.requests` as a :class:`RestRequest` (method, path, form, auth
username, what was answered).

**Placing a call** (one background task per call, statuses ``queued`` -> ``ringing`` ->
``in-progress`` -> ``completed``, each recorded in :attr:`FakeCall.statuses`):

1. Ring for ``ring_seconds``; with ``outcome`` (``busy``, ``no-answer``, ``failed``) the call
   ends there. Otherwise it is answered (``in-progress``); with ``MachineDetection`` the fake's
   ``answered_by`` (``human``, ``machine_start``, ``machine_end_beep``, ``fax``, ``unknown``, ...)
   is the call's ``answered_by``.
2. The voice webhook: ``POST Url`` with the form ``AccountSid``, ``ApiVersion``, ``CallSid``,
   ``CallStatus``, ``Called``, ``Caller``, ``Direction`` (``outbound-api``), ``From``, ``To`` and
   ``AnsweredBy`` when machine detection was asked for; signed (``X-Twilio-Signature``, computed
   with the official ``RequestValidator``) when the fake has an ``auth_token``. Recorded in
   :attr:`FakeCall.webhooks`.
3. The TwiML answered, verb by verb (each recorded in :attr:`FakeCall.verbs`): ``<Hangup/>``
   ends the call; ``<Connect><Stream url=...>`` with its ``<Parameter>`` elements opens the media
   WebSocket (``ws://`` only: ``route`` a ``wss://`` URL to a local server; the upgrade is
   signed too, over the stream URL as written and no parameters) and plays a caller:
   ``connected``, ``start`` (``callSid`` the call's, ``customParameters`` the TwiML's
   parameters), ``seconds`` of caller audio in real time, then ``stop``, and waits (at most
   ``close_wait``) for the bridge to close; what the caller heard is :attr:`FakeCall.result`
   (a :class:`~voxbridge.testing.CallResult`: frames, marks, clears, the audio played).
   ``<Dial>`` records its target (``<Number>``, ``<Sip>`` or text) in :attr:`FakeTwilio.dialled`
   and :attr:`FakeCall.dialled` (the dialled leg itself is not simulated); ``<Redirect>`` fetches
   the next document; ``<Say>``, ``<Play>``, ``<Pause>`` take no time. When the document is done,
   so is the call (``completed``).

A REST update during the call interrupts it as on Twilio: a running stream gets ``stop`` at once
(the bridge then closes it), and the call hangs up or goes on with the new TwiML (a ``<Dial>``
then lands in :attr:`FakeTwilio.dialled`). ``StatusCallback`` gets the final status (signed),
right after :attr:`FakeCall.ended` is set.

**Inbound calls**: ``await fake.inbound_call(webhook_url, to=..., from_=...)`` plays a call that
voxbridge did not create (``Direction=inbound``, ``CallStatus=ringing`` in the webhook) through
the same webhook -> TwiML -> stream flow and returns its :class:`FakeCall` once it has ended;
meanwhile voxbridge may complete or redirect it through the REST API like any other call.

**Public URLs**: the fake signs the URL it requests, as Twilio does. For a server whose
``--public-url`` is not this machine, ``route=route_to(public_url, server_url)`` makes the fake
sign the public URL and connect to the local one.

Usage::

    fake = FakeTwilio(account_sid, auth_token=token, caller_seconds=1.0)
    async with trio.open_nursery() as nursery:
        api_url = await nursery.start(fake.serve)       # http://127.0.0.1:PORT
        ...                                             # voxbridge --twilio-api-url api_url
        call = await fake.wait_for_call()               # the first call created over REST
        await call.wait_ended()
        assert call.statuses == ["queued", "ringing", "in-progress", "completed"]

Every wait here is bounded (``close_wait``, ``webhook_timeout``, ``WAIT_TIMEOUT``): a fake that
hangs would hide the bugs it exists to find.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import secrets
import xml.etree.ElementTree as ElementTree
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import attrs
import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from trio_websocket import WebSocketConnection
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]  # no stubs

from ..carriers.twilio_wire import encode_stop
from .carrier import CallResult, CarrierSimulator

__all__ = [
    "ANSWERED_BY",
    "FakeCall",
    "FakeTwilio",
    "RestRequest",
    "Webhook",
    "route_to",
]

API_VERSION = "2010-04-01"
WAIT_TIMEOUT = 30.0  # wait_for_call / wait_ended / inbound_call raise trio.TooSlowError after this
MAX_BODY = 1 << 20
SIGNATURE_HEADER = "X-Twilio-Signature"
FINAL = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
UNANSWERED = ("busy", "no-answer", "failed")
#: Twilio's ``AnsweredBy`` values (``Enable`` gives the first ones, ``DetectMessageEnd`` the
#: ``machine_end_*`` ones).
ANSWERED_BY = (
    "human",
    "machine_start",
    "machine_end_beep",
    "machine_end_silence",
    "machine_end_other",
    "fax",
    "unknown",
)

_CALLS = re.compile(r"/2010-04-01/Accounts/([^/]+)/Calls\.json")
_CALL = re.compile(r"/2010-04-01/Accounts/([^/]+)/Calls/([^/]+)\.json")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _now() -> datetime:
    return datetime.now(UTC)


def _rfc2822(when: datetime | None) -> str | None:
    """Twilio's timestamps: ``Tue, 31 Aug 2010 20:36:28 +0000``."""
    return format_datetime(when) if when is not None else None


# --- records ------------------------------------------------------------------------------------


@attrs.define(eq=False)
class RestRequest:
    """One REST request as the fake saw it.

    ``form`` is the decoded form body (a repeated name keeps its last value), ``username`` the
    Basic auth username (``None`` without one), ``status`` what the fake answered (0 until it
    has), ``content_type`` and ``accept`` the request's headers.
    """

    method: str
    path: str
    form: dict[str, str]
    username: str | None
    content_type: str | None = None
    accept: str | None = None
    status: int = 0


@attrs.define(eq=False)
class Webhook:
    """One request the fake made to the application: ``kind`` is ``voice`` (the voice webhook,
    or a ``<Redirect>``) or ``status`` (the ``StatusCallback``). ``url`` is the URL requested
    and signed (before ``route``); ``status`` the HTTP status (``None`` if no answer came, then
    ``error`` says why); ``body`` what was answered (the TwiML)."""

    kind: str
    url: str
    form: dict[str, str]
    signature: str | None
    status: int | None = None
    body: str | None = None
    error: str | None = None


@attrs.define(eq=False)
class FakeCall:
    """One call, created over REST (``direction="outbound-api"``) or by :meth:`FakeTwilio.inbound_call`
    (``"inbound"``). Times are wall-clock UTC (Twilio's resource fields).

    ``statuses`` is every status in order; ``verbs`` every TwiML verb executed; ``documents``
    every TwiML document received (webhook answers and REST updates); ``updates`` the forms of the
    REST updates; ``stream_url``/``stream_parameters``/``stream_sid`` the media stream opened (the
    last one); ``result`` what its caller saw and heard; ``dialled`` a ``<Dial>``'s target;
    ``errors`` what went wrong (Twilio's error code first, e.g. ``"11200 ..."``).
    ``stream_started`` is set once a media stream's caller runs; ``ended`` once the fake is done
    with the call (its stream closed, its status final).
    """

    sid: str
    account_sid: str
    to: str
    from_: str
    direction: str
    url: str | None = None
    twiml: str | None = None
    machine_detection: str | None = None
    status_callback: str | None = None
    seconds: float = 2.0
    audio: bytes | None = attrs.field(default=None, repr=False)
    status: str = "queued"
    statuses: list[str] = attrs.Factory(list)
    answered_by: str | None = None
    webhooks: list[Webhook] = attrs.Factory(list)
    documents: list[str] = attrs.Factory(list)
    verbs: list[str] = attrs.Factory(list)
    updates: list[dict[str, str]] = attrs.Factory(list)
    stream_url: str | None = None
    stream_parameters: dict[str, str] = attrs.Factory(dict)
    stream_sid: str | None = None
    result: CallResult | None = None
    dialled: str | None = None
    errors: list[str] = attrs.Factory(list)
    created_at: datetime = attrs.Factory(_now)
    updated_at: datetime = attrs.Factory(_now)
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    stream_started: trio.Event = attrs.Factory(trio.Event)
    ended: trio.Event = attrs.Factory(trio.Event)
    # What interrupts the call: a REST hang-up (the final status) or new TwiML / a new Url.
    _hang_up: str | None = None
    _next: tuple[str, str] | None = None
    _scope: trio.CancelScope | None = None
    _caller: _Caller | None = None

    @property
    def uri(self) -> str:
        return f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{self.sid}.json"

    async def wait_ended(self) -> FakeCall:
        """Wait (at most ``WAIT_TIMEOUT``, else ``trio.TooSlowError``) until the call is over."""
        with trio.fail_after(WAIT_TIMEOUT):
            await self.ended.wait()
        return self

    def resource(self) -> dict[str, Any]:
        """The call as Twilio's REST API shows it (the Call resource's JSON)."""
        duration = None
        if self.answered_at is not None and self.ended_at is not None:
            duration = str(int((self.ended_at - self.answered_at).total_seconds()))
        base = self.uri.removesuffix(".json")
        return {
            "account_sid": self.account_sid,
            "annotation": None,
            "answered_by": self.answered_by,
            "api_version": API_VERSION,
            "caller_name": None,
            "date_created": _rfc2822(self.created_at),
            "date_updated": _rfc2822(self.updated_at),
            "direction": self.direction,
            "duration": duration,
            "end_time": _rfc2822(self.ended_at),
            "forwarded_from": None,
            "from": self.from_,
            "from_formatted": self.from_,
            "group_sid": None,
            "parent_call_sid": None,
            "phone_number_sid": None,
            "price": None,
            "price_unit": "USD",
            "queue_time": "0",
            "sid": self.sid,
            "start_time": _rfc2822(self.answered_at),
            "status": self.status,
            "subresource_uris": {
                name: f"{base}/{resource}.json"
                for name, resource in (
                    ("notifications", "Notifications"),
                    ("recordings", "Recordings"),
                    ("payments", "Payments"),
                    ("events", "Events"),
                    ("siprec", "Siprec"),
                    ("streams", "Streams"),
                    ("transcriptions", "Transcriptions"),
                )
            },
            "to": self.to,
            "to_formatted": self.to,
            "trunk_sid": None,
            "uri": self.uri,
        }

    def webhook_form(self, *, status: str | None = None) -> dict[str, str]:
        """The parameters Twilio sends the application about this call."""
        form = {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": self.sid,
            "CallStatus": status or self.status,
            "Called": self.to,
            "Caller": self.from_,
            "Direction": self.direction,
            "From": self.from_,
            "To": self.to,
        }
        if self.answered_by is not None:
            form["AnsweredBy"] = self.answered_by
        return form

    def _interrupted(self) -> bool:
        return self._hang_up is not None or self._next is not None

    def _interrupt(self) -> None:
        """A REST update arrived: stop the stream (``stop``, then the bridge closes) or cancel
        the webhook request or the ringing in progress."""
        if self._caller is not None:
            self._caller.end()
        if self._scope is not None:
            self._scope.cancel()

    def _take_next(self) -> tuple[str, str] | None:
        if self._hang_up is not None:
            return None
        upcoming, self._next = self._next, None
        return upcoming


class _Caller(CarrierSimulator):
    """The simulated caller of one media stream, with the call's SIDs, that a REST update can
    stop: :meth:`end` makes it send ``stop`` at once (then, as always, wait for the bridge to
    close). The simulator's own ``stop`` is off: this class sends it, at the end of the audio or
    at :meth:`end`, unless the bridge has closed the socket first."""

    def __init__(
        self, stream: trio.abc.Stream, *, call_sid: str, account_sid: str, **options: Any
    ) -> None:
        super().__init__(stream, send_stop=False, **options)
        self.result.call_sid = call_sid
        self.account_sid = account_sid
        self._end = trio.Event()

    def end(self) -> None:
        self._end.set()

    async def _talk(self, ws: WebSocketConnection, done: trio.Event) -> None:
        over = trio.Event()  # the simulator stops sending audio once this is set
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_when_any, over, done, self._end)
            await super()._talk(ws, over)
            nursery.cancel_scope.cancel()
        if not done.is_set():  # the bridge has not closed the socket: hang up like Twilio
            result = self.result
            stop = encode_stop(
                result.stream_sid, result.call_sid, self.account_sid, result.frames_sent + 2
            )
            await self._send(ws, stop)


async def _when_any(out: trio.Event, *events: trio.Event) -> None:
    async def wait(event: trio.Event, scope: trio.CancelScope) -> None:
        await event.wait()
        scope.cancel()

    async with trio.open_nursery() as nursery:
        for event in events:
            nursery.start_soon(wait, event, nursery.cancel_scope)
    out.set()


def route_to(public_url: str, local_url: str) -> Callable[[str], str]:
    """A ``route`` for :class:`FakeTwilio`: URLs on ``public_url``'s host (``http(s)://`` and
    ``ws(s)://``, under its path) are connected to ``local_url`` instead, keeping the rest of the
    path and the query; other URLs are left alone. The signatures still cover the public URL."""
    public, local = urlsplit(public_url), urlsplit(local_url)
    prefix = public.path.rstrip("/")
    websocket = "wss" if local.scheme == "https" else "ws"

    def route(url: str) -> str:
        parts = urlsplit(url)
        if parts.netloc != public.netloc or not parts.path.startswith(prefix):
            return url
        scheme = websocket if parts.scheme in ("ws", "wss") else local.scheme
        path = local.path.rstrip("/") + parts.path[len(prefix) :]
        return urlunsplit((scheme, local.netloc, path, parts.query, ""))

    return route


# --- the fake ------------------------------------------------------------------------------------


class FakeTwilio:
    """A local Twilio (REST API + the calls it places) for tests and demos.

    Args:
        account_sid: the account (``AC...``) whose ``/Accounts/{sid}/Calls`` exist; random if
            omitted.
        credentials: the ``(username, password)`` pairs Basic auth accepts (an API key and its
            secret, the account SID and its auth token); default ``(account_sid, auth_token)``
            when ``auth_token`` is given.
        auth_token: signs the webhooks and stream upgrades (``X-Twilio-Signature``); ``None``:
            unsigned.
        answered_by: ``AnsweredBy`` of a call created with ``MachineDetection``
            (:data:`ANSWERED_BY`).
        caller_seconds: seconds of caller audio per stream (then ``stop``).
        caller_audio: mu-law 8 kHz caller audio (looped); a tone if omitted.
        ring_seconds: how long an outbound call rings before it is answered.
        outcome: ``busy``, ``no-answer`` or ``failed``: outbound calls are never answered.
        route: maps a URL the fake requests (and signs) to the one it connects to
            (:func:`route_to`); identity if omitted.
        close_wait: the simulated caller's bound on each wait (handshake, sends, the bridge's
            close after ``stop``).
        webhook_timeout: seconds for one webhook request (Twilio's is 15).

    Raises:
        ValueError: ``answered_by`` or ``outcome`` is not one of Twilio's.
    """

    def __init__(
        self,
        account_sid: str | None = None,
        *,
        credentials: Sequence[tuple[str, str]] | None = None,
        auth_token: str | None = None,
        answered_by: str = "human",
        caller_seconds: float = 2.0,
        caller_audio: bytes | None = None,
        ring_seconds: float = 0.0,
        outcome: str | None = None,
        route: Callable[[str], str] | None = None,
        close_wait: float = 10.0,
        webhook_timeout: float = 10.0,
    ) -> None:
        if answered_by not in ANSWERED_BY:
            raise ValueError(f"answered_by must be one of {', '.join(ANSWERED_BY)}")
        if outcome is not None and outcome not in UNANSWERED:
            raise ValueError(f"outcome must be one of {', '.join(UNANSWERED)}")
        self.account_sid = account_sid or _sid("AC")
        if credentials is None:
            credentials = [(self.account_sid, auth_token)] if auth_token else []
        self.credentials = list(credentials)
        self.auth_token = auth_token
        self.answered_by = answered_by
        self.caller_seconds = caller_seconds
        self.caller_audio = caller_audio
        self.ring_seconds = ring_seconds
        self.outcome = outcome
        self.route = route or (lambda url: url)
        self.close_wait = close_wait
        self.webhook_timeout = webhook_timeout
        self.requests: list[RestRequest] = []
        self.calls: dict[str, FakeCall] = {}
        #: ``CallSid`` -> the target of the ``<Dial>`` the call executed.
        self.dialled: dict[str, str] = {}
        self.base_url: str | None = None
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()

    def __repr__(self) -> str:
        return f"FakeTwilio(base_url={self.base_url!r}, calls={len(self.calls)})"

    # --- serving ------------------------------------------------------------------------------

    async def serve(
        self,
        host: str = "127.0.0.1",
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the REST API on a free port, and place calls, until cancelled.

        ``await nursery.start(fake.serve)`` returns :attr:`base_url` (``http://host:port``: the
        ``--twilio-api-url``).
        """
        config = Config()
        config.bind = [f"{host}:0"]
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        config.graceful_timeout = 0.5
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                binds = await nursery.start(hypercorn_serve, self.app, config)
                self.base_url = str(binds[0])
                task_status.started(self.base_url)
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def wait_for_call(self, count: int = 1) -> FakeCall:
        """Wait (at most ``WAIT_TIMEOUT``) until ``count`` calls exist; return the ``count``-th."""
        with trio.fail_after(WAIT_TIMEOUT):
            while len(self.calls) < count:
                await self._changed.wait()
        return list(self.calls.values())[count - 1]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def inbound_call(
        self,
        webhook_url: str,
        *,
        to: str = "+15550100001",
        from_: str = "+15550100002",
        seconds: float | None = None,
        audio: bytes | None = None,
        wait: bool = True,
    ) -> FakeCall:
        """A call to ``to`` from ``from_`` that arrives at the application's ``webhook_url``.

        Args:
            webhook_url: the voice webhook (signed as is, connected through ``route``).
            seconds, audio: this call's caller audio (default: ``caller_seconds``,
                ``caller_audio``).
            wait: return once the call has ended (at most ``WAIT_TIMEOUT``, else
                ``trio.TooSlowError``); ``False``: at once (then ``await call.wait_ended()``).

        Raises:
            RuntimeError: the fake is not serving (its background tasks run in :meth:`serve`).
        """
        if self._nursery is None:
            raise RuntimeError("FakeTwilio.inbound_call needs the fake serving (fake.serve)")
        call = self._new_call(
            to=to, from_=from_, direction="inbound", url=webhook_url, status="ringing"
        )
        if seconds is not None:
            call.seconds = seconds
        if audio is not None:
            call.audio = audio
        self._nursery.start_soon(self._place, call)
        if wait:
            await call.wait_ended()
        return call

    def _new_call(
        self, *, to: str, from_: str, direction: str, status: str, **fields: Any
    ) -> FakeCall:
        call = FakeCall(
            sid=_sid("CA"),
            account_sid=self.account_sid,
            to=to,
            from_=from_,
            direction=direction,
            seconds=self.caller_seconds,
            audio=self.caller_audio,
            status=status,
            statuses=[status],
            **fields,
        )
        self.calls[call.sid] = call
        self._notify()
        return call

    # --- REST ---------------------------------------------------------------------------------

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The REST API as an ASGI 3 application."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        body = await _read_body(receive)
        if body is None:
            await _respond(send, 413, _error(413, 20001, "Request body too large"))
            return
        request = RestRequest(
            method=scope["method"],
            path=scope["path"],
            form=dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)),
            username=None,
            content_type=headers.get("content-type"),
            accept=headers.get("accept"),
        )
        self.requests.append(request)
        credentials = _basic_auth(headers.get("authorization"))
        if credentials is not None:
            request.username = credentials[0]
        status, answer = self._handle(request, credentials)
        request.status = status
        self._notify()
        extra = [(b"www-authenticate", b'Basic realm="Twilio API"')] if status == 401 else []
        await _respond(send, status, answer, extra)

    def _handle(
        self, request: RestRequest, credentials: tuple[str, str] | None
    ) -> tuple[int, dict[str, Any]]:
        if credentials is None or not any(
            secrets.compare_digest(
                f"{u}:{p}".encode(), f"{credentials[0]}:{credentials[1]}".encode()
            )
            for u, p in self.credentials
        ):
            return 401, {
                **_error(401, 20003, "Authenticate"),
                "detail": "Your AccountSid or AuthToken was incorrect.",
            }
        not_found = 404, _error(404, 20404, f"The requested resource {request.path} was not found")
        if match := _CALLS.fullmatch(request.path):
            if match[1] != self.account_sid:
                return not_found
            if request.method != "POST":
                return 405, _error(405, 20004, "Method not allowed")
            return self._create(request.form)
        if match := _CALL.fullmatch(request.path):
            call = self.calls.get(match[2])
            if match[1] != self.account_sid or call is None:
                return not_found
            if request.method == "GET":
                return 200, call.resource()
            if request.method == "POST":
                return self._update(call, request.form)
            return 405, _error(405, 20004, "Method not allowed")
        return not_found

    def _create(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if not form.get("To"):
            return 400, _error(400, 21201, "No 'To' number is specified")
        if not form.get("From"):
            return 400, _error(400, 21213, "No 'From' number is specified")
        if not (form.get("Url") or form.get("Twiml")):
            return 400, _error(400, 21205, "Either Url or Twiml must be specified")
        assert self._nursery is not None  # the app runs inside serve()
        call = self._new_call(
            to=form["To"],
            from_=form["From"],
            direction="outbound-api",
            status="queued",
            url=form.get("Url") or None,
            twiml=form.get("Twiml") or None,
            machine_detection=form.get("MachineDetection") or None,
            status_callback=form.get("StatusCallback") or None,
        )
        self._nursery.start_soon(self._place, call)
        return 201, call.resource()

    def _update(self, call: FakeCall, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        call.updates.append(form)
        status = form.get("Status")
        if status is not None:
            if status not in ("completed", "canceled"):
                return 400, _error(400, 21218, f"Invalid Status {status!r}")
            if call.status in FINAL or (status == "canceled" and call.status == "in-progress"):
                return 200, call.resource()  # nothing to do: over already, or cancel has no effect
            call._hang_up = "completed" if call.status == "in-progress" else "canceled"
            self._set_status(call, call._hang_up)
            call._interrupt()
            return 200, call.resource()
        twiml, url = form.get("Twiml"), form.get("Url")
        if not (twiml or url):
            return 400, _error(400, 21205, "Either Url, Twiml or Status must be specified")
        if call.status != "in-progress" or call._hang_up is not None:
            return 400, _error(400, 21220, "Call is not in-progress. Cannot redirect.")
        call._next = ("twiml", twiml) if twiml else ("url", str(url))
        call._interrupt()
        call.updated_at = _now()
        return 200, call.resource()

    # --- placing calls ------------------------------------------------------------------------

    def _set_status(self, call: FakeCall, status: str) -> None:
        if call.status in FINAL or call.status == status:
            return
        now = _now()
        call.status = status
        call.statuses.append(status)
        call.updated_at = now
        if status == "in-progress":
            call.answered_at = now
        if status in FINAL:
            call.ended_at = now
        self._notify()

    async def _place(self, call: FakeCall) -> None:
        """The call's life: ring, answer, webhook, TwiML until it is over, then the callback."""
        try:
            await self._run(call)
        finally:
            self._set_status(call, call._hang_up or "completed")
            call.ended.set()
            self._notify()
        if call.status_callback:
            await self._fetch(call, call.status_callback, kind="status")

    async def _run(self, call: FakeCall) -> None:
        if call.direction == "outbound-api":
            self._set_status(call, "ringing")
            with self._interruptible(call):
                await trio.sleep(self.ring_seconds)
            if call._hang_up is not None:
                return
            if self.outcome is not None:
                self._set_status(call, self.outcome)
                return
            if call.machine_detection:
                call.answered_by = self.answered_by
            self._set_status(call, "in-progress")
        upcoming: tuple[str, str] | None
        upcoming = ("twiml", call.twiml) if call.twiml is not None else ("url", str(call.url))
        while upcoming is not None:
            kind, value = upcoming
            if kind == "url":
                twiml = None
                with self._interruptible(call):
                    twiml = await self._fetch(call, value, kind="voice")
                if twiml is None:  # interrupted, or the webhook failed
                    upcoming = call._take_next()
                    continue
                value = twiml
            if call.direction == "inbound":
                self._set_status(call, "in-progress")  # answered by executing the TwiML
            upcoming = await self._execute(call, value)

    def _interruptible(self, call: FakeCall) -> trio.CancelScope:
        """A scope a REST update cancels (ringing, a webhook request; not a stream)."""
        scope = trio.CancelScope()
        call._scope = scope
        if call._interrupted():
            scope.cancel()
        return scope

    async def _execute(self, call: FakeCall, twiml: str) -> tuple[str, str] | None:
        """Run one TwiML document; return what comes next (a redirect), or ``None``: hang up."""
        call.documents.append(twiml)
        try:
            root = ElementTree.fromstring(twiml)
        except ElementTree.ParseError as exc:
            call.errors.append(f"12100 Document parse failure: {exc}")
            return None
        if root.tag != "Response":
            call.errors.append(f"12100 Document parse failure: root <{root.tag}>, not <Response>")
            return None
        for verb in root:
            if call._interrupted():
                break
            call.verbs.append(verb.tag)
            if verb.tag in ("Hangup", "Reject"):
                return None
            if verb.tag == "Dial":
                target = _dial_target(verb)
                call.dialled = target
                self.dialled[call.sid] = target
                self._notify()
            elif verb.tag == "Connect":
                stream = verb.find("Stream")
                if stream is None or not stream.get("url"):
                    call.errors.append("12200 <Connect> without a <Stream url=...>")
                    return None
                await self._stream(call, stream)
            elif verb.tag == "Redirect":
                return ("url", (verb.text or "").strip())
            elif verb.tag not in ("Say", "Play", "Pause"):
                call.errors.append(f"12200 the fake does not run <{verb.tag}>")
        return call._take_next()

    async def _stream(self, call: FakeCall, element: ElementTree.Element) -> None:
        """``<Connect><Stream>``: open the media WebSocket and play the caller until it closes."""
        url = element.get("url", "")
        parameters = {p.get("name", ""): p.get("value", "") for p in element.findall("Parameter")}
        call.stream_url, call.stream_parameters = url, parameters
        target = urlsplit(self.route(url))
        if target.scheme != "ws" or target.hostname is None:
            call.errors.append(f"31920 the fake opens ws:// streams only (route {url!r} to one)")
            return
        port = target.port or 80
        headers = []
        if self.auth_token is not None:
            headers.append((SIGNATURE_HEADER, self._sign(url, {})))
        try:
            with trio.fail_after(self.close_wait):
                connection = await trio.open_tcp_stream(target.hostname, port)
        except (OSError, trio.TooSlowError) as exc:
            call.errors.append(f"31920 the stream could not connect: {exc!r}")
            return
        caller = _Caller(
            connection,
            call_sid=call.sid,
            account_sid=call.account_sid,
            host=f"{target.hostname}:{port}",
            resource=target.path + (f"?{target.query}" if target.query else ""),
            audio=call.audio,
            seconds=call.seconds,
            close_wait=self.close_wait,
            custom_parameters=parameters,
            extra_headers=headers,
        )
        call._caller, call.result, call.stream_sid = caller, caller.result, caller.result.stream_sid
        if call._interrupted():
            caller.end()
        call.stream_started.set()
        self._notify()
        try:
            await caller.run()
        finally:
            call._caller = None
        if caller.result.rejected_status is not None:
            call.errors.append(
                f"31920 the stream was refused: HTTP {caller.result.rejected_status}"
            )

    def _sign(self, url: str, form: dict[str, str]) -> str:
        assert self.auth_token is not None
        return str(RequestValidator(self.auth_token).compute_signature(url, form))

    async def _fetch(self, call: FakeCall, url: str, *, kind: str) -> str | None:
        """POST the call's parameters to ``url`` (signed); the body answered, ``None`` on failure."""
        form = call.webhook_form()
        signature = self._sign(url, form) if self.auth_token is not None else None
        exchange = Webhook(kind=kind, url=url, form=form, signature=signature)
        call.webhooks.append(exchange)
        self._notify()
        headers = {"User-Agent": "TwilioProxy/1.1", "Accept": "*/*"}
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        try:
            with trio.fail_after(self.webhook_timeout):
                async with httpx.AsyncClient(timeout=self.webhook_timeout) as client:
                    response = await client.post(self.route(url), data=form, headers=headers)
        except (httpx.HTTPError, trio.TooSlowError) as exc:
            exchange.error = f"{type(exc).__name__}: {exc}"
            call.errors.append(f"11200 HTTP retrieval failure: {exchange.error}")
            return None
        exchange.status, exchange.body = response.status_code, response.text
        if not response.is_success:
            call.errors.append(f"11200 HTTP retrieval failure: HTTP {response.status_code}")
            return None
        return response.text


def _dial_target(verb: ElementTree.Element) -> str:
    """What a ``<Dial>`` calls: its ``<Number>``, ``<Sip>`` or ``<Client>``, or its text."""
    for noun in verb:
        if noun.text and noun.text.strip():
            return noun.text.strip()
    return (verb.text or "").strip()


def _basic_auth(header: str | None) -> tuple[str, str] | None:
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, colon, password = decoded.partition(":")
    return (username, password) if colon else None


def _error(status: int, code: int, message: str) -> dict[str, Any]:
    """Twilio's error body."""
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


async def _read_body(receive: Receive) -> bytes | None:
    """The request body (``b""`` if the client left); ``None`` when larger than ``MAX_BODY``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        with trio.fail_after(WAIT_TIMEOUT):
            message = await receive()
        if message["type"] != "http.request":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(
    send: Send, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json; charset=utf-8"),
                (b"content-length", str(len(data)).encode()),
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
