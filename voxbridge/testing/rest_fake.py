"""What the carriers' fake REST APIs share (Telnyx, Plivo, Vonage): a server on loopback and hang-ups.

Each fake (:class:`~voxbridge.testing.fake_telnyx.FakeTelnyx`,
:class:`~voxbridge.testing.fake_plivo.FakePlivo`, :class:`~voxbridge.testing.fake_vonage.FakeVonage`)
is a :class:`FakeRestApi`: a small ASGI 3 application served by hypercorn's trio worker on
``127.0.0.1`` port 0 (:meth:`FakeRestApi.serve`, real sockets, as the other fakes), which answers
the ASGI lifespan protocol itself and hands every HTTP request to the fake's
:meth:`FakeRestApi.handle`. The hang-ups it accepts are recorded in order
(:attr:`FakeRestApi.hangups`) and can be awaited (:meth:`FakeRestApi.wait_hangup`, bounded by
:data:`WAIT_TIMEOUT`). :func:`read_body` and :func:`respond` read and write JSON over ASGI.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

__all__ = ["WAIT_TIMEOUT", "FakeRestApi", "Receive", "Scope", "Send", "read_body", "respond"]

#: Seconds any wait of a fake lasts at most (then ``trio.TooSlowError``).
WAIT_TIMEOUT = 30.0

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class FakeRestApi:
    """A fake REST API on loopback: subclasses implement :meth:`handle`.

    Attributes:
        PATH: what follows ``http://127.0.0.1:PORT`` in :attr:`base_url` (``/v2`` for Telnyx).
        base_url: the URL the client is given (its ``--<carrier>-api-url``), once serving.
        hangups: the calls hung up through the API, in order.
    """

    PATH = ""

    def __init__(self) -> None:
        self.base_url = ""
        self.hangups: list[str] = []
        self._changed = trio.Event()

    async def serve(
        self,
        host: str = "127.0.0.1",
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the API on a free port until cancelled; ``await nursery.start(fake.serve)``
        returns :attr:`base_url` (``http://127.0.0.1:PORT`` and :attr:`PATH`)."""
        config = Config()
        config.bind = [f"{host}:0"]
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        config.graceful_timeout = 0.5
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(hypercorn_serve, self.app, config)
            self.base_url = f"{binds[0]}{self.PATH}"
            task_status.started(self.base_url)
            await trio.sleep_forever()

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The API as an ASGI 3 application: the lifespan protocol, then :meth:`handle`."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        if scope["type"] == "http":
            await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one HTTP request (and record it)."""
        raise NotImplementedError

    def hung_up(self, call_id: str) -> None:
        """Record a hang-up of ``call_id`` (:meth:`wait_hangup` sees it)."""
        self.hangups.append(call_id)
        self.changed()

    def changed(self) -> None:
        """Wake whoever waits on the fake's records (a request was answered)."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_hangup(self, count: int = 1) -> str:
        """Wait (at most :data:`WAIT_TIMEOUT`, else ``trio.TooSlowError``) for ``count`` hang-ups;
        return the ``count``-th call id."""
        with trio.fail_after(WAIT_TIMEOUT):
            while len(self.hangups) < count:
                await self._changed.wait()
        return self.hangups[count - 1]


async def read_body(receive: Receive, limit: int | None = None) -> bytes | None:
    """An HTTP request's body (``b""`` if the client left); ``None`` when it is over ``limit``
    bytes. Each message is awaited at most :data:`WAIT_TIMEOUT`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        with trio.fail_after(WAIT_TIMEOUT):
            message = await receive()
        if message["type"] != "http.request":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def respond(
    send: Send, status: int, body: Any = None, *, content_type: str = "application/json"
) -> None:
    """Answer ``status`` with ``body`` as JSON (``None``: no body and no content type)."""
    data = b"" if body is None else json.dumps(body).encode()
    headers = [(b"content-length", str(len(data)).encode())]
    if body is not None:
        headers.insert(0, (b"content-type", content_type.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
