"""A local Telnyx: the Call Control commands voxbridge sends, and signed webhooks.

Real sockets on loopback, like the other fakes: the REST API is a small ASGI app served by
hypercorn's trio worker on ``127.0.0.1`` port 0.

**REST** (Telnyx API v2, the subset voxbridge uses; JSON requests and answers in Telnyx's shapes,
errors as ``{"errors": [{"code": "<digits>", "title", "detail"}]}``):

* ``POST /v2/calls/{call_control_id}/actions/hangup`` -- body a JSON object (``{}``): 200
  ``{"data": {"result": "ok"}}`` and the call is over (recorded in :attr:`FakeTelnyx.hangups`);
  a call already over is 422, code ``90018`` ("Call has already ended"), as on Telnyx.
* ``POST /v2/calls/{call_control_id}/actions/transfer`` -- body ``{"to": target}``: 200 and the
  target recorded in :attr:`FakeTelnyx.transfers`; 422 code ``90018`` for a call that is over; 422
  code ``10015`` (a stand-in for Telnyx's validation errors) without a string ``to``.

Every request needs ``Authorization: Bearer <api_key>`` (401, code ``10009`` "Authentication
failed", otherwise); a body that is not a JSON object is 400 (code ``10015``); an unknown path 404
(code ``10005``); a method other than ``POST`` 405. Each request is recorded in
:attr:`FakeTelnyx.requests` as a :class:`RestRequest`. Every call id is a live call until it is
hung up here or :meth:`FakeTelnyx.end` says the caller left.

**Webhooks**: :class:`WebhookSigner` holds a fresh Ed25519 key pair (``cryptography``) and signs a
body as Telnyx does: ``telnyx-timestamp`` and ``telnyx-signature-ed25519`` = base64 Ed25519 over
``<timestamp>|<body>``; :attr:`WebhookSigner.public_key` is what ``--telnyx-public-key`` takes.

Usage::

    fake = FakeTelnyx(api_key="KEY0123")
    async with trio.open_nursery() as nursery:
        api_url = await nursery.start(fake.serve)  # http://127.0.0.1:PORT/v2: --telnyx-api-url
        ...
        await fake.wait_hangup()
"""

from __future__ import annotations

import base64
import hmac
import json
import re
from typing import Any

import attrs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .rest_fake import FakeRestApi, Receive, Scope, Send, read_body, respond

__all__ = ["FakeTelnyx", "RestRequest", "WebhookSigner"]

MAX_BODY = 1 << 20
ALREADY_ENDED = "90018"
_ACTION = re.compile(r"/v2/calls/([^/]+)/actions/([a-z_]+)")


@attrs.define
class RestRequest:
    """One request the fake received: ``body`` is the parsed JSON (``None`` if it was not JSON),
    ``authorized`` whether the Bearer key matched, ``status`` what was answered."""

    method: str
    path: str
    body: Any
    authorized: bool
    content_type: str | None
    accept: str | None
    status: int = 0


def _error(code: str, title: str, detail: str) -> dict[str, Any]:
    return {"errors": [{"code": code, "title": title, "detail": detail}]}


class FakeTelnyx(FakeRestApi):
    """A local Telnyx Call Control API for tests and demos.

    Args:
        api_key: the key a request's ``Authorization: Bearer`` must carry.
    """

    PATH = "/v2"

    def __init__(self, api_key: str) -> None:
        super().__init__()  # hangups: the call_control_ids hung up through the API, in order
        self.api_key = api_key
        self.requests: list[RestRequest] = []
        #: ``(call_control_id, to)`` of each accepted transfer, in order.
        self.transfers: list[tuple[str, str]] = []
        self.ended: set[str] = set()

    def __repr__(self) -> str:
        return f"FakeTelnyx(base_url={self.base_url!r}, hangups={len(self.hangups)})"

    def end(self, call_control_id: str) -> None:
        """The call is over (the caller hung up): a hang-up now gets 422 code 90018."""
        self.ended.add(call_control_id)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One request: recorded and answered."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        raw = await read_body(receive, MAX_BODY)
        try:
            body = None if raw is None else json.loads(raw or b"null")
        except ValueError:
            body = None
        scheme, _, token = headers.get("authorization", "").partition(" ")
        authorized = scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        )
        request = RestRequest(
            method=scope["method"],
            path=scope["path"],
            body=body,
            authorized=authorized,
            content_type=headers.get("content-type"),
            accept=headers.get("accept"),
        )
        self.requests.append(request)
        status, answer = self._handle(request)
        request.status = status
        self.changed()
        await respond(send, status, answer, content_type="application/json; charset=utf-8")

    def _handle(self, request: RestRequest) -> tuple[int, dict[str, Any]]:
        if not request.authorized:
            return 401, _error(
                "10009", "Authentication failed", "The API key is missing or not valid."
            )
        match = _ACTION.fullmatch(request.path)
        if match is None or match[2] not in ("hangup", "transfer"):
            return 404, _error("10005", "Resource not found", f"No route {request.path}.")
        if request.method != "POST":
            return 405, _error("10015", "Method not allowed", "Use POST.")
        if not isinstance(request.body, dict):
            return 400, _error("10015", "Bad Request", "The body must be a JSON object.")
        call_control_id, action = match[1], match[2]
        if call_control_id in self.ended:
            return 422, _error(
                ALREADY_ENDED,
                "Call has already ended",
                "This call is no longer active and can't receive commands.",
            )
        if action == "hangup":
            self.ended.add(call_control_id)
            self.hung_up(call_control_id)
            return 200, {"data": {"result": "ok"}}
        target = request.body.get("to")
        if not isinstance(target, str) or not target:
            return 422, _error("10015", "Invalid value for to", "to must be a number or SIP URI.")
        self.transfers.append((call_control_id, target))
        return 200, {"data": {"result": "ok"}}


class WebhookSigner:
    """Signs webhook bodies as Telnyx does, with a fresh Ed25519 key pair.

    Attributes:
        public_key: the public key in base64 (``--telnyx-public-key``).
    """

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()
        raw = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public_key = base64.b64encode(raw).decode("ascii")

    def __repr__(self) -> str:
        return f"WebhookSigner(public_key={self.public_key!r})"

    def headers(self, body: bytes, timestamp: int) -> dict[str, str]:
        """``telnyx-timestamp`` and ``telnyx-signature-ed25519`` for ``body`` sent at
        ``timestamp`` (Unix seconds)."""
        signature = self._key.sign(str(timestamp).encode("ascii") + b"|" + body)
        return {
            "telnyx-timestamp": str(timestamp),
            "telnyx-signature-ed25519": base64.b64encode(signature).decode("ascii"),
        }
