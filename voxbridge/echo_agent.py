"""The echo agent ``voxbridge serve --provider echo`` runs: a voice agent that plays the caller back.

:class:`EchoAgent` is a small WebSocket server (trio-websocket, on loopback) that speaks the OpenAI
Realtime GA protocol -- JSON text frames, each with a ``type`` (OpenAI's Realtime API reference;
the ``openai`` package's ``types.realtime`` models) -- as far as an echo needs:

* on connect it sends ``session.created`` (the session: ``type`` ``realtime``, audio output);
* ``session.update`` is answered with ``session.updated``, the update's fields merged in;
* each ``input_audio_buffer.append`` comes back ``delay`` seconds after it arrived, byte for byte
  (the base64 text as received: whatever format the bridge asked for, voxbridge's ``audio/pcmu``
  included), as a ``response.output_audio.delta``. Chunks played back to back make one response:
  ``response.created`` (status ``in_progress``) before the first, ``response.done`` (status
  ``completed``, its assistant message item in ``output``) as soon as no further chunk is waiting.
  Each response has its own ids, ``resp_<session>_<k>`` and item ``item_<session>_<k>``, as each of
  the service's answers does, so a bridge's playback bookkeeping works as it does against OpenAI;
* every other client event (the greeting's ``response.create``, ``conversation.item.create``,
  ``conversation.item.truncate``, ``response.cancel``, ...) and any frame that is not a JSON object
  are accepted and ignored: an echo has nothing to say, nothing to cancel and no conversation;
* WebSocket pings are answered (trio-websocket's reader does).

Bounds (a default provider that runs for days must not grow or hang):

* the handshake within :data:`HANDSHAKE_TIMEOUT` seconds, each send within :data:`SEND_TIMEOUT`
  (a client that stops reading has its connection cut: ``close_code`` 1006), the agent's own
  close within :data:`CLOSE_TIMEOUT`;
* no client message for ``idle_timeout`` seconds (a live call sends 50 a second) ends the
  session with close code 1001;
* at most ``queue`` chunks wait to be played back per session; beyond that a chunk is dropped and
  counted (:attr:`EchoSession.dropped`);
* messages up to 1 MiB (trio-websocket's limit; a larger one closes the socket with 1009);
* one nursery per connection: the playback task and trio-websocket's reader end with the session;
* :attr:`EchoAgent.sessions` keeps the ``keep`` most recent sessions.

Each session is recorded as an :class:`EchoSession` (when it opened and closed, the close code,
frames in and out), so ``voxbridge demo`` shows *from the provider's side* that the bridge closed
its socket. The test fake with fault knobs is ``voxbridge.testing.FakeEchoAgent``.
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Iterator
from typing import Any

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream
from wsproto.utilities import LocalProtocolError

from .deadlines import Deadline, deadline
from .providers.endpoint import ProviderEndpoint

__all__ = ["CLOSE_TIMEOUT", "HANDSHAKE_TIMEOUT", "SEND_TIMEOUT", "EchoAgent", "EchoSession"]

HANDSHAKE_TIMEOUT = 10.0  # seconds for a client to complete the WebSocket handshake
SEND_TIMEOUT = 5.0  # seconds for one event to be written to the client
CLOSE_TIMEOUT = 5.0  # seconds for the agent's close handshake

Event = dict[str, Any]


class SendTimeout(Exception):
    """An event could not be written within :data:`SEND_TIMEOUT`: the client stopped reading."""


class IdleTimeout(Exception):
    """No client message for the session's ``idle_timeout``."""


@attrs.define(eq=False)
class EchoSession:
    """One WebSocket session, as the echo agent saw it. Times are ``trio.current_time()`` seconds.

    ``close_code`` is the client's close code when the client closed (1006: the connection
    dropped with no close frame), 1001 when the agent closed an idle session, 1006 when it cut a
    client that stopped reading, and ``None`` when the agent was stopped (cancelled).
    ``frames_in`` counts client messages; ``frames_out`` server events sent; ``responses`` the
    responses begun; ``dropped`` the chunks not played back because ``queue`` were waiting.
    """

    number: int
    opened_at: float
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str | None = None
    frames_in: int = 0
    frames_out: int = 0
    responses: int = 0
    dropped: int = 0
    closed: trio.Event = attrs.Factory(trio.Event)
    _event_ids: Iterator[int] = attrs.Factory(lambda: itertools.count(1))

    @property
    def is_closed(self) -> bool:
        """The session has ended (``closed_at`` is set)."""
        return self.closed.is_set()

    def next_event_id(self) -> str:
        return f"event_{self.number}_{next(self._event_ids)}"


class EchoAgent:
    """A local OpenAI-Realtime-compatible (GA) agent that plays each caller chunk back.

    ``await nursery.start(agent.serve)`` listens on loopback and returns the ``ws://`` URL;
    :meth:`handle_stream` serves one connection on any byte stream (in-memory tests).

    Args:
        delay: seconds between a chunk arriving and its playback.
        queue: chunks waiting to be played back per session; beyond that a chunk is dropped
            (counted in :attr:`EchoSession.dropped`).
        idle_timeout: seconds without a client message before the agent closes the session
            (1001).
        keep: sessions kept in :attr:`sessions` (the most recent).

    Raises:
        ValueError: ``delay`` is negative, or ``queue``, ``idle_timeout`` or ``keep`` is not
            positive.
    """

    def __init__(
        self,
        *,
        delay: float = 0.2,
        queue: int = 512,
        idle_timeout: float = 60.0,
        keep: int = 1000,
    ) -> None:
        if delay < 0:
            raise ValueError(f"delay must not be negative, got {delay}")
        if queue < 1 or idle_timeout <= 0 or keep < 1:
            raise ValueError("queue, idle_timeout and keep must be positive")
        self.delay = delay
        self.queue = queue
        self.idle_timeout = idle_timeout
        #: The most recent sessions, oldest first; each is appended once its handshake is done.
        self.sessions: deque[EchoSession] = deque(maxlen=keep)
        self.connections = 0
        #: The ``ws://`` URL, once :meth:`serve` listens.
        self.url: str | None = None

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (0: any free port) until cancelled.

        ``await nursery.start(agent.serve)`` returns the URL to connect to,
        ``ws://<host>:<port>/v1/realtime`` (any path is served).
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        address, bound = listeners[0].socket.getsockname()[:2]
        if ":" in address:
            address = f"[{address}]"
        self.url = f"ws://{address}:{bound}/v1/realtime"
        task_status.started(self.url)
        await trio.serve_listeners(self.handle_stream, listeners)

    def endpoint(self) -> ProviderEndpoint:
        """The endpoint a bridge uses to reach this agent, named ``echo``.

        Raises:
            RuntimeError: :meth:`serve` has not started.
        """
        if self.url is None:
            raise RuntimeError("EchoAgent.serve() has not started")
        return ProviderEndpoint("echo", self.url)

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection on an open byte stream (TCP or in-memory) until it ends.

        Never raises for what a client does (it leaves, breaks the protocol, stops reading); the
        stream is closed on return.
        """
        self.connections += 1
        number = self.connections
        try:
            async with trio.open_nursery() as nursery:  # the connection's reader task lives here
                ws: WebSocketConnection | None = None
                with trio.move_on_after(HANDSHAKE_TIMEOUT):
                    request = await wrap_server_stream(nursery, stream)
                    ws = await request.accept()
                if ws is not None:
                    session = EchoSession(number, opened_at=trio.current_time())
                    self.sessions.append(session)
                    try:
                        await self._converse(session, ws)
                    finally:
                        _ended(session, ws)
                nursery.cancel_scope.cancel()
        except* (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client left (perhaps mid-handshake): recorded by _ended
        except* LocalProtocolError:
            pass  # a ping crossed our close: trio-websocket's pong is refused (its issue #184)
        except* SendTimeout:
            pass  # the client stopped reading: the session was cut (recorded by _send)
        finally:
            await trio.aclose_forcefully(stream)

    async def _converse(self, session: EchoSession, ws: WebSocketConnection) -> None:
        # The player holds the chunk due next; the channel's buffer holds the rest of ``queue``.
        chunks_in, chunks_out = trio.open_memory_channel[tuple[float, str]](self.queue - 1)
        config: Event = {
            "type": "realtime",
            "object": "realtime.session",
            "id": f"sess_{session.number}",
            "output_modalities": ["audio"],
        }
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._play, session, ws, chunks_out)
            await _send(session, ws, {"type": "session.created", "session": config})
            idle = Deadline()
            try:
                with idle:
                    while True:
                        idle.arm(self.idle_timeout, IdleTimeout)
                        message = await ws.get_message()
                        idle.disarm()  # a send below is bounded by its own deadline
                        session.frames_in += 1
                        event = _parse(message)
                        kind = event.get("type")
                        if kind == "input_audio_buffer.append":
                            audio = event.get("audio")
                            if isinstance(audio, str):
                                try:
                                    chunks_in.send_nowait((trio.current_time() + self.delay, audio))
                                except trio.WouldBlock:
                                    session.dropped += 1
                        elif kind == "session.update":
                            update = event.get("session")
                            if isinstance(update, dict):
                                config.update(update)
                            updated = {"type": "session.updated", "session": config}
                            await _send(session, ws, updated)
            except IdleTimeout as exc:
                session.close_code, session.close_reason = 1001, f"idle: {exc}"
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await ws.aclose(1001, "idle")
            except ConnectionClosed:
                pass  # the client closed: _ended records how
            finally:
                nursery.cancel_scope.cancel()

    async def _play(
        self,
        session: EchoSession,
        ws: WebSocketConnection,
        chunks: trio.MemoryReceiveChannel[tuple[float, str]],
    ) -> None:
        """Play each chunk back when due; chunks played back to back are one response."""
        response_id = item_id = ""
        async for due, audio in chunks:
            await trio.sleep_until(due)
            if not response_id:
                session.responses += 1
                response_id = f"resp_{session.number}_{session.responses}"
                item_id = f"item_{session.number}_{session.responses}"
                created = _response(response_id, "in_progress", [])
                await _send(session, ws, {"type": "response.created", "response": created})
            delta = {
                "type": "response.output_audio.delta",
                "response_id": response_id,
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "delta": audio,
            }
            await _send(session, ws, delta)
            if chunks.statistics().current_buffer_used == 0:
                item = {
                    "id": item_id,
                    "object": "realtime.item",
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_audio"}],
                }
                done = _response(response_id, "completed", [item])
                await _send(session, ws, {"type": "response.done", "response": done})
                response_id = item_id = ""


def _response(response_id: str, status: str, output: list[Event]) -> Event:
    return {
        "id": response_id,
        "object": "realtime.response",
        "status": status,
        "output": output,
        "output_modalities": ["audio"],
    }


def _parse(message: str | bytes) -> Event:
    """A client message as an event; ``{}`` (ignored) for anything but a JSON object."""
    if isinstance(message, bytes):
        return {}
    try:
        event = json.loads(message)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}


async def _send(session: EchoSession, ws: WebSocketConnection, event: Event) -> None:
    """Send one server event (an ``event_id`` added) within :data:`SEND_TIMEOUT`.

    Raises:
        SendTimeout: the client did not take it in time (the session is recorded as cut, 1006).
        ConnectionClosed: the client is gone.
    """
    frame = json.dumps({**event, "event_id": session.next_event_id()}, separators=(",", ":"))
    try:
        with deadline(SEND_TIMEOUT, SendTimeout):
            await ws.send_message(frame)
    except SendTimeout as exc:
        session.close_code, session.close_reason = 1006, f"send timed out: {exc}"
        raise
    session.frames_out += 1


def _ended(session: EchoSession, ws: WebSocketConnection) -> None:
    """Record the end of ``session``: when, and (if the agent did not say) the client's close."""
    if session.close_code is None and ws.closed is not None:
        session.close_code, session.close_reason = ws.closed.code, ws.closed.reason
    session.closed_at = trio.current_time()
    session.closed.set()
