"""The built-in echo agent: an OpenAI-Realtime-shaped provider that plays the caller back.

It is a real WebSocket server (trio-websocket, real TCP on loopback, or any ``trio.abc.Stream`` via
:meth:`EchoAgent.handle_stream` for in-memory tests) speaking the GA Realtime protocol as far as a
bridge needs it:

* sends ``session.created`` on connect and answers ``session.update`` with ``session.updated``;
* for each ``input_audio_buffer.append`` schedules the same audio, ``delay`` seconds later, as a
  ``response.output_audio.delta`` (so a bridge's round trip is measurable);
* answers WebSocket pings (trio-websocket does this in its reader task).

Each connection is recorded as an :class:`AgentSession` -- when it opened and closed, with which
close code, what it received -- so tests and the demo can check, *from the provider's side*, that
the bridge closed its upstream socket. Fault knobs (``hangup_after``, and per session the
:class:`~voxbridge.testing.FaultStream` behind it) make it misbehave on purpose.

Every wait here is bounded too: a fake that hangs would hide the bugs it exists to find.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

from ..providers.endpoint import ProviderEndpoint
from .faults import FaultStream

__all__ = ["AgentSession", "EchoAgent"]

HANDSHAKE_TIMEOUT = 10.0
SEND_TIMEOUT = 5.0


@attrs.define(eq=False)
class AgentSession:
    """One provider-side WebSocket, as the agent saw it. Times are ``trio.current_time()``."""

    stream: FaultStream
    opened_at: float
    path: str = ""
    headers: dict[str, str] = attrs.Factory(dict)
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str | None = None
    frames_in: int = 0
    audio_in: int = 0
    audio_out: int = 0
    dropped: int = 0
    session_updates: list[dict[str, Any]] = attrs.Factory(list)
    closed: trio.Event = attrs.Factory(trio.Event)
    ws: WebSocketConnection | None = None

    @property
    def is_closed(self) -> bool:
        return self.closed.is_set()


class EchoAgent:
    """A local OpenAI-Realtime-compatible agent that echoes audio after ``delay`` seconds.

    Args:
        delay: seconds between receiving a caller chunk and playing it back.
        hangup_after: fault knob -- close each session with ``hangup_code`` this many seconds
            after it opened.
        hangup_code: the close code for ``hangup_after``.
        queue: chunks waiting to be played back per session; beyond that audio is dropped
            (and counted in ``AgentSession.dropped``), never queued without bound.
    """

    def __init__(
        self,
        *,
        delay: float = 0.2,
        hangup_after: float | None = None,
        hangup_code: int = 1011,
        queue: int = 512,
    ) -> None:
        self.delay = delay
        self.hangup_after = hangup_after
        self.hangup_code = hangup_code
        self.queue = queue
        self.sessions: list[AgentSession] = []
        self.url: str | None = None
        self._session_opened = trio.Event()

    # --- serving ------------------------------------------------------------------------------

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (0 = any free port) until cancelled.

        ``await nursery.start(agent.serve)`` returns the ``ws://`` URL to connect to.
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()
        self.url = f"ws://{bound[0]}:{bound[1]}/v1/realtime"
        task_status.started(self.url)
        await trio.serve_listeners(self.handle_stream, listeners)

    def endpoint(self) -> ProviderEndpoint:
        """The endpoint a bridge uses to reach this agent (after :meth:`serve` started)."""
        if self.url is None:
            raise RuntimeError("EchoAgent.serve() has not started")
        return ProviderEndpoint("echo", self.url)

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection on an already-open byte stream (TCP or in-memory)."""
        fault = FaultStream(stream)
        session = AgentSession(stream=fault, opened_at=trio.current_time())
        try:
            async with trio.open_nursery() as nursery:
                with trio.move_on_after(HANDSHAKE_TIMEOUT):
                    request = await wrap_server_stream(nursery, fault)
                    session.path = request.path
                    session.headers = {
                        k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers
                    }
                    session.ws = await request.accept()
                if session.ws is not None:
                    self.sessions.append(session)
                    self._session_opened.set()
                    self._session_opened = trio.Event()
                    await self._converse(session, session.ws)
                nursery.cancel_scope.cancel()
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            if session.closed_at is None:
                session.closed_at = trio.current_time()
            session.closed.set()
            await trio.aclose_forcefully(fault)

    async def wait_for_session(self, count: int = 1) -> AgentSession:
        """Wait until at least ``count`` sessions have opened; return the ``count``-th."""
        while len(self.sessions) < count:
            await self._session_opened.wait()
        return self.sessions[count - 1]

    # --- one session --------------------------------------------------------------------------

    async def _converse(self, session: AgentSession, ws: WebSocketConnection) -> None:
        playback_in, playback_out = trio.open_memory_channel[tuple[float, str]](self.queue)
        send = partial(self._send, session, ws)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._play, send, playback_out, session)
            if self.hangup_after is not None:
                nursery.start_soon(self._hang_up, session, ws, self.hangup_after)
            await send({"type": "session.created", "session": {"type": "realtime"}})
            try:
                while True:
                    message = await ws.get_message()
                    session.frames_in += 1
                    try:
                        event = json.loads(message)
                    except ValueError:
                        continue
                    kind = event.get("type") if isinstance(event, dict) else None
                    if kind == "input_audio_buffer.append":
                        session.audio_in += 1
                        due = trio.current_time() + self.delay
                        try:
                            playback_in.send_nowait((due, event["audio"]))
                        except trio.WouldBlock:
                            session.dropped += 1
                    elif kind == "session.update":
                        session.session_updates.append(event)
                        await send({"type": "session.updated", "session": event.get("session")})
            except ConnectionClosed as exc:
                session.closed_at = trio.current_time()
                if session.close_code is None and exc.reason is not None:
                    # (when set already, we closed it ourselves -- a fault knob -- and said why)
                    session.close_code = exc.reason.code
                    session.close_reason = exc.reason.reason
            finally:
                nursery.cancel_scope.cancel()

    async def _play(
        self,
        send: Any,
        playback: trio.MemoryReceiveChannel[tuple[float, str]],
        session: AgentSession,
    ) -> None:
        async for due, audio in playback:
            await trio.sleep_until(due)
            await send(
                {
                    "type": "response.output_audio.delta",
                    "event_id": f"event_{session.audio_out}",
                    "response_id": "resp_echo",
                    "item_id": "item_echo",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": audio,
                }
            )
            session.audio_out += 1

    async def _send(
        self, session: AgentSession, ws: WebSocketConnection, event: dict[str, Any]
    ) -> None:
        with trio.move_on_after(SEND_TIMEOUT):
            try:
                await ws.send_message(json.dumps(event, separators=(",", ":")))
            except ConnectionClosed:
                pass

    async def _hang_up(self, session: AgentSession, ws: WebSocketConnection, after: float) -> None:
        await trio.sleep(after)
        session.close_code = self.hangup_code
        session.close_reason = "echo agent hangs up (fault knob)"
        with trio.move_on_after(SEND_TIMEOUT):
            await ws.aclose(session.close_code, session.close_reason)
