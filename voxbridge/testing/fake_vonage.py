"""A local Vonage: the Voice REST call resource voxbridge uses, and the answer webhook of a call.

Real sockets on loopback, like the other fakes: the REST API is a small ASGI app served by
hypercorn's trio worker on ``127.0.0.1`` port 0.

**The application.** The fake is one Vonage application: an ``application_id`` and an RSA key pair
made when it starts (:attr:`FakeVonage.private_key` is the PEM voxbridge is given as
``VONAGE_PRIVATE_KEY``), and one account with an ``api_key`` and a signature secret
(:attr:`FakeVonage.signature_secret`, voxbridge's ``VONAGE_SIGNATURE_SECRET``).

**REST** (Voice API v1, the subset voxbridge uses; errors as Vonage's RFC 7807 problem objects
``{"type", "title", "detail", "instance"}``):

* ``PUT /v1/calls/{uuid}`` with a JSON body ``{"action": "hangup"}`` -- hang up a live call:
  ``204`` and the call is over (recorded in :attr:`FakeVonage.hangups`); ``404`` for a call that
  is not live; another ``action`` of Vonage's (``mute``, ``unmute``, ``earmuff``, ``unearmuff``)
  ``204``; anything else ``400``.
* ``GET /v1/calls/{uuid}`` -- a live call (``uuid``, ``status`` ``answered``), ``404`` when not
  live.

Every request needs ``Authorization: Bearer <JWT>``: an application JWT signed RS256 with the
application's private key, verified with its public key, whose ``application_id`` is the fake's
and whose ``iat``/``exp`` hold now (``401`` otherwise). Another path is ``404``, another method
``405``. Knobs for failure tests: ``fail_with`` (``(status, title)``: every REST request is
answered so) and ``delay`` (seconds before any answer). Each request is recorded in
:attr:`FakeVonage.requests`.

**Calls**: :meth:`FakeVonage.add_call` makes a live call the REST API knows;
:meth:`FakeVonage.answer` plays Vonage's side of an inbound call's answer webhook: it registers the
call, sends the JSON Vonage sends (``uuid``, ``conversation_uuid``, ``from``, ``to``,
``region_url``) to the answer URL with a signed-webhook JWT (HS256 with the signature secret,
``payload_hash`` of the body), and reads the NCCO answered (:class:`Answer`: the websocket
endpoint and its ``headers``). The media stream itself is played by
:class:`~voxbridge.testing.CarrierSimulator` with :class:`~voxbridge.testing.vonage_wire.VonageWire`.

Every wait here is bounded (``WAIT_TIMEOUT``).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import attrs
import httpx
import jwt
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ..carriers.vonage_webhooks import sign_request
from .rest_fake import WAIT_TIMEOUT, FakeRestApi, Receive, Scope, Send, read_body, respond

__all__ = ["Answer", "FakeVonage", "VonageRestRequest"]

_CALL = re.compile(r"/v1/calls/([^/]+)")
#: The actions of ``PUT /v1/calls/{uuid}`` the fake accepts besides ``hangup``.
_OTHER_ACTIONS = frozenset({"mute", "unmute", "earmuff", "unearmuff"})
_ERRORS = "https://developer.nexmo.com/api-errors"


@attrs.define(eq=False)
class VonageRestRequest:
    """One REST request as the fake saw it: ``body`` its JSON (``None`` if none or not JSON),
    ``authorized`` whether its JWT verified, ``status`` what the fake answered (0 until it
    has)."""

    method: str
    path: str
    body: Any
    authorized: bool
    status: int = 0


@attrs.define(eq=False)
class Answer:
    """What the application answered to an answer webhook.

    ``ncco`` is the JSON answered (``None`` when it was not JSON); ``endpoint`` the first
    ``websocket`` endpoint of its ``connect`` action (``None`` without one), ``headers`` that
    endpoint's ``headers``, as Vonage would hand them back in ``websocket:connected``.
    """

    status: int
    body: str
    content_type: str
    ncco: Any = None
    endpoint: dict[str, Any] | None = None
    headers: dict[str, Any] = attrs.Factory(dict)

    @property
    def stream_url(self) -> str | None:
        """The endpoint's ``uri``."""
        return None if self.endpoint is None else self.endpoint.get("uri")


class FakeVonage(FakeRestApi):
    """A local Vonage Voice REST API (hang-ups) and answer-webhook client, for tests.

    Args:
        application_id: the application's id.
        api_key: the account's API key (a claim of its signed webhooks).
        signature_secret: the account's signature secret: webhooks are signed with it.
        fail_with: ``(status, title)``: answer every REST request with this error.
        delay: seconds to wait before answering any REST request.
    """

    def __init__(
        self,
        application_id: str = "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
        *,
        api_key: str = "abcd1234",
        signature_secret: str = "fake-vonage-signature-secret-0123456789abcdef",
        fail_with: tuple[int, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        super().__init__()
        self.application_id = application_id
        self.api_key = api_key
        self.signature_secret = signature_secret
        self.fail_with = fail_with
        self.delay = delay
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        #: The application's private key, PKCS#8 PEM (``VONAGE_PRIVATE_KEY``).
        self.private_key = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")
        self._public_key = key.public_key()
        #: call uuid -> ``answered`` or ``completed``
        self.calls: dict[str, str] = {}
        self.requests: list[VonageRestRequest] = []

    def __repr__(self) -> str:
        return f"FakeVonage(application_id={self.application_id!r}, base_url={self.base_url!r})"

    def add_call(self, call_uuid: str | None = None) -> str:
        """Make ``call_uuid`` (a fresh UUID if omitted) a live call; return it."""
        call_uuid = call_uuid or str(uuid.uuid4())
        self.calls[call_uuid] = "answered"
        return call_uuid

    def sign(
        self, body: bytes | None = None, *, secret: str | None = None, now: float | None = None
    ) -> str:
        """A JWT as this account's Vonage signs a request (HS256 with the signature secret, or
        ``secret``), with ``payload_hash`` of ``body`` when given, issued ``now`` (default: the
        wall clock)."""
        return sign_request(
            secret or self.signature_secret,
            now=time.time() if now is None else now,
            jti=str(uuid.uuid4()),
            body=body,
            api_key=self.api_key,
            application_id=self.application_id,
        )

    # --- the answer webhook -------------------------------------------------------------------

    async def answer(
        self,
        answer_url: str,
        *,
        call_uuid: str | None = None,
        to: str = "447700900000",
        from_: str = "447700900001",
        secret: str | None = None,
        signed: bool = True,
        now: float | None = None,
    ) -> tuple[str, Answer]:
        """Play Vonage's answer webhook of an inbound call (a ``POST`` of JSON); return its call
        uuid and the answer.

        Args:
            answer_url: where to POST (a local server).
            call_uuid: the call's uuid (a fresh one if omitted); it becomes a live call.
            to, from_: the numbers, as Vonage sends them (no ``+``).
            secret: sign with this secret instead of the fake's (a bad signature).
            signed: send no ``Authorization`` at all when false.
            now: the JWT's ``iat`` (a stale signature), default the wall clock.
        """
        call_uuid = self.add_call(call_uuid)
        body = json.dumps(
            {
                "from": from_,
                "to": to,
                "endpoint_type": "phone",
                "uuid": call_uuid,
                "conversation_uuid": "CON-" + str(uuid.uuid4()),
                "region_url": "https://api-eu-1.vonage.com",
            },
            separators=(",", ":"),
        ).encode()
        headers = {"content-type": "application/json"}
        if signed:
            headers["authorization"] = f"Bearer {self.sign(body, secret=secret, now=now)}"
        with trio.fail_after(WAIT_TIMEOUT):
            async with httpx.AsyncClient(timeout=WAIT_TIMEOUT) as client:
                response = await client.post(answer_url, content=body, headers=headers)
        answer = Answer(
            status=response.status_code,
            body=response.text,
            content_type=response.headers.get("content-type", ""),
        )
        if response.status_code == 200:
            _read_ncco(answer)
        return call_uuid, answer

    # --- REST ---------------------------------------------------------------------------------

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One REST request: recorded, answered (after ``delay``)."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        raw = await read_body(receive)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = VonageRestRequest(
            method=scope["method"],
            path=scope["path"],
            body=body,
            authorized=self._authorized(headers.get("authorization", "")),
        )
        self.requests.append(request)
        if self.delay:
            await trio.sleep(self.delay)
        status, answer = self._handle(request)
        request.status = status
        self.changed()
        kind = "application/problem+json" if status >= 400 else "application/json"
        await respond(send, status, answer, content_type=kind)

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        try:
            claims = jwt.decode(
                token.strip(),
                self._public_key,
                algorithms=["RS256"],
                options={"require": ["application_id", "iat", "exp", "jti"]},
            )
        except jwt.InvalidTokenError:
            return False
        return bool(claims["application_id"] == self.application_id)

    def _handle(self, request: VonageRestRequest) -> tuple[int, dict[str, Any] | None]:
        instance = str(uuid.uuid4())
        if not request.authorized:
            return 401, _problem("unauthorized", "Unauthorized", "Invalid token", instance)
        if self.fail_with is not None:
            status, title = self.fail_with
            return status, _problem("failure", title, title, instance)
        match = _CALL.fullmatch(request.path)
        if match is None:
            return 404, _problem("not-found", "Not Found", "No such resource", instance)
        call_uuid = match[1]
        live = self.calls.get(call_uuid) == "answered"
        if request.method == "PUT":
            if not live:
                detail = f"Call {call_uuid} does not exist or has ended"
                return 404, _problem("not-found", "Not Found", detail, instance)
            action = request.body.get("action") if isinstance(request.body, dict) else None
            if action == "hangup":
                self.calls[call_uuid] = "completed"
                self.hung_up(call_uuid)
                return 204, None
            if action in _OTHER_ACTIONS:
                return 204, None
            return 400, _problem("validation", "Bad Request", f"action {action!r}", instance)
        if request.method == "GET":
            if not live:
                return 404, _problem("not-found", "Not Found", "no such call", instance)
            return 200, {"uuid": call_uuid, "status": "answered", "direction": "inbound"}
        return 405, _problem("method", "Method Not Allowed", request.method, instance)


def _problem(kind: str, title: str, detail: str, instance: str) -> dict[str, Any]:
    return {"type": f"{_ERRORS}#{kind}", "title": title, "detail": detail, "instance": instance}


def _read_ncco(answer: Answer) -> None:
    try:
        answer.ncco = json.loads(answer.body)
    except ValueError:
        return
    if not isinstance(answer.ncco, list):
        return
    for action in answer.ncco:
        if not isinstance(action, dict) or action.get("action") != "connect":
            continue
        for endpoint in action.get("endpoint") or []:
            if isinstance(endpoint, dict) and endpoint.get("type") == "websocket":
                answer.endpoint = endpoint
                answer.headers = dict(endpoint.get("headers") or {})
                return
