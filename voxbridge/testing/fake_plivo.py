"""A local Plivo: the REST call resource voxbridge uses, and the answer webhook of a call.

Real sockets on loopback, like the other fakes: the REST API is a small ASGI app served by
hypercorn's trio worker on ``127.0.0.1`` port 0.

**REST** (Plivo API v1, the subset voxbridge uses; JSON answers, errors as Plivo's
``{"api_id": ..., "error": ...}``):

* ``DELETE /v1/Account/{auth_id}/Call/{call_uuid}/`` -- hang up a live call: ``204`` and the call
  is over (recorded in :attr:`FakePlivo.hangups`); ``404`` for a call that is not live.
* ``GET /v1/Account/{auth_id}/Call/{call_uuid}/`` -- a live call (``call_uuid``,
  ``call_status``), ``404`` when not live.

Every request needs HTTP Basic auth with the fake's auth id and token (``401`` otherwise); another
account's path is ``404``, another method ``405``. Knobs for failure tests: ``fail_with``
(``(status, error)``: every REST request is answered so) and ``delay`` (seconds before any
answer). Each request is recorded in :attr:`FakePlivo.requests`.

**Calls**: :meth:`FakePlivo.add_call` makes a live call the REST API knows;
:meth:`FakePlivo.answer` plays Plivo's side of an inbound call's answer webhook: it registers the
call, POSTs the form Plivo sends (``CallUUID``, ``From``, ``To``, ``Direction``, ``CallStatus``,
``Event``) to the answer URL, signed with ``X-Plivo-Signature-V3`` (the fake's auth token, a
fresh nonce), and reads the ``<Stream>`` XML answered (:class:`Answer`: the stream URL, its
attributes, the decoded ``extraHeaders``). The media stream itself is played by
:class:`~voxbridge.testing.CarrierSimulator` with :class:`~voxbridge.testing.plivo_wire.PlivoWire`.

Every wait here is bounded (``WAIT_TIMEOUT``).
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import uuid
from typing import Any
from urllib.parse import urlencode
from xml.etree import ElementTree

import attrs
import httpx
import trio

from ..carriers.plivo import decode_extra_headers
from ..carriers.plivo_webhooks import NONCE_HEADER, SIGNATURE_HEADER, sign
from .rest_fake import WAIT_TIMEOUT, FakeRestApi, Receive, Scope, Send, respond

__all__ = ["Answer", "FakePlivo", "PlivoRestRequest"]

_CALL = re.compile(r"/v1/Account/([^/]+)/Call/([^/]+)/")


@attrs.define(eq=False)
class PlivoRestRequest:
    """One REST request as the fake saw it: ``username`` is the Basic auth user (``None``
    without one), ``status`` what the fake answered (0 until it has)."""

    method: str
    path: str
    username: str | None
    status: int = 0


@attrs.define(eq=False)
class Answer:
    """What the application answered to an answer webhook.

    ``stream_url`` is the ``<Stream>`` element's text, ``stream`` its attributes and
    ``parameters`` its ``extraHeaders`` decoded (``None``/empty when the answer had no
    ``<Stream>``); ``verbs`` the elements of the ``<Response>`` in order.
    """

    status: int
    body: str
    content_type: str
    verbs: list[str] = attrs.Factory(list)
    stream_url: str | None = None
    stream: dict[str, str] = attrs.Factory(dict)
    parameters: dict[str, str] = attrs.Factory(dict)


class FakePlivo(FakeRestApi):
    """A local Plivo REST API (hang-ups) and answer-webhook client, for tests.

    Args:
        auth_id: the account's Auth ID (``MA...``).
        auth_token: its Auth Token: REST requests must authenticate with it, and webhooks are
            signed with it.
        fail_with: ``(status, error)``: answer every REST request with this error.
        delay: seconds to wait before answering any REST request.
    """

    def __init__(
        self,
        auth_id: str = "MA" + "F" * 18,
        auth_token: str = "fake-plivo-auth-token",
        *,
        fail_with: tuple[int, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        super().__init__()
        self.auth_id = auth_id
        self.auth_token = auth_token
        self.fail_with = fail_with
        self.delay = delay
        #: call uuid -> ``in-progress`` or ``completed``
        self.calls: dict[str, str] = {}
        self.requests: list[PlivoRestRequest] = []

    def __repr__(self) -> str:
        return f"FakePlivo(auth_id={self.auth_id!r}, base_url={self.base_url!r})"

    def add_call(self, call_uuid: str | None = None) -> str:
        """Make ``call_uuid`` (a fresh UUID if omitted) a live call; return it."""
        call_uuid = call_uuid or str(uuid.uuid4())
        self.calls[call_uuid] = "in-progress"
        return call_uuid

    # --- the answer webhook -------------------------------------------------------------------

    async def answer(
        self,
        answer_url: str,
        *,
        call_uuid: str | None = None,
        to: str = "14155550100",
        from_: str = "14155550199",
        signed_url: str | None = None,
        auth_token: str | None = None,
    ) -> tuple[str, Answer]:
        """Play Plivo's answer webhook of an inbound call; return its call uuid and the answer.

        Args:
            answer_url: where to POST (a local server).
            call_uuid: the call's uuid (a fresh one if omitted); it becomes a live call.
            to, from_: the numbers, as Plivo sends them (no ``+``).
            signed_url: the URL to sign when it is not ``answer_url`` (the public URL of a
                server reached locally).
            auth_token: sign with this token instead of the fake's (a bad signature).
        """
        call_uuid = self.add_call(call_uuid)
        form = {
            "CallUUID": call_uuid,
            "CallStatus": "in-progress",
            "Direction": "inbound",
            "Event": "StartApp",
            "From": from_,
            "To": to,
        }
        nonce = str(secrets.randbelow(10**20)).zfill(20)
        params = {key: [value] for key, value in form.items()}
        signature = sign(
            auth_token or self.auth_token, "POST", signed_url or answer_url, nonce, params
        )
        headers = {
            SIGNATURE_HEADER: signature,
            NONCE_HEADER: nonce,
            "content-type": "application/x-www-form-urlencoded",
        }
        with trio.fail_after(WAIT_TIMEOUT):
            async with httpx.AsyncClient(timeout=WAIT_TIMEOUT) as client:
                response = await client.post(answer_url, content=urlencode(form), headers=headers)
        answer = Answer(
            status=response.status_code,
            body=response.text,
            content_type=response.headers.get("content-type", ""),
        )
        if response.status_code == 200:
            _read_xml(answer)
        return call_uuid, answer

    # --- REST ---------------------------------------------------------------------------------

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One REST request: recorded, answered (after ``delay``)."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        credentials = _basic_auth(headers.get("authorization"))
        request = PlivoRestRequest(
            method=scope["method"],
            path=scope["path"],
            username=credentials[0] if credentials else None,
        )
        self.requests.append(request)
        if self.delay:
            await trio.sleep(self.delay)
        status, body = self._handle(request, credentials)
        request.status = status
        self.changed()
        await respond(send, status, body)

    def _handle(
        self, request: PlivoRestRequest, credentials: tuple[str, str] | None
    ) -> tuple[int, dict[str, Any] | None]:
        api_id = str(uuid.uuid4())
        expected = f"{self.auth_id}:{self.auth_token}".encode()
        if credentials is None or not secrets.compare_digest(
            f"{credentials[0]}:{credentials[1]}".encode(), expected
        ):
            return 401, {"api_id": api_id, "error": "authentication failed"}
        if self.fail_with is not None:
            status, error = self.fail_with
            return status, {"api_id": api_id, "error": error}
        match = _CALL.fullmatch(request.path)
        if match is None or match[1] != self.auth_id:
            return 404, {"api_id": api_id, "error": "not found"}
        call_uuid = match[2]
        live = self.calls.get(call_uuid) == "in-progress"
        if request.method == "DELETE":
            if not live:
                return 404, {"api_id": api_id, "error": "not found"}
            self.calls[call_uuid] = "completed"
            self.hung_up(call_uuid)
            return 204, None
        if request.method == "GET":
            if not live:
                return 404, {"api_id": api_id, "error": "not found"}
            return 200, {"api_id": api_id, "call_uuid": call_uuid, "call_status": "in-progress"}
        return 405, {"api_id": api_id, "error": f"{request.method} not allowed"}


def _read_xml(answer: Answer) -> None:
    root = ElementTree.fromstring(answer.body)
    answer.verbs = [child.tag for child in root]
    stream = root.find("Stream")
    if stream is not None:
        answer.stream_url = (stream.text or "").strip()
        answer.stream = dict(stream.attrib)
        answer.parameters = decode_extra_headers(stream.attrib.get("extraHeaders", ""))


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
