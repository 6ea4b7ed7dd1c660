"""A local OpenAI GPT-Live: a real WebSocket server that speaks the Live protocol.

It serves trio-websocket on a :class:`~voxbridge.testing.FaultStream`-wrapped stream (real TCP on
loopback via :meth:`FakeGptLive.serve`, or any ``trio.abc.Stream`` via
:meth:`FakeGptLive.handle_stream` for in-memory tests). Every server event it sends is shaped as
the ``openai`` package's ``types.live.ServerEvent`` models say (``tests/test_fake_gpt_live.py``
validates them).

What it does for a bridge:

* The handshake needs ``Authorization: Bearer <api_key>`` (401 otherwise; ``api_key=None``
  accepts anything). The first client event must be ``session.start``; it is checked (a
  ``model``; ``audio.format`` ``audio/pcmu`` at 8000 Hz, as a bridge asks; no unknown field; an
  ``input`` of at most 128 text messages) and answered, ``start_delay`` later (starting a session
  takes the service a moment), with ``session.started`` carrying the resolved session, or at once
  with an ``error`` and close 1008 when invalid. The protocol says "send session.start first and
  wait for session.started before application commands", and the fake holds a client to it: any
  command that arrives before ``session.started`` was sent -- caller audio included -- gets an
  ``error`` (``session_not_started``) and is not acted on, and each is a protocol violation the
  tests assert on (``LiveSession.before_started``; the audio ones also in ``audio_before_start``).
* ``session.input_audio.append`` is counted (``LiveSession.audio_in``); in echo mode
  (``echo_delay``) each chunk comes back that much later as ``session.output_audio.delta``.
* Scripted speech (``speak``): audio sent as ``chunk_ms`` deltas, faster than real time
  (``speak_pace``), each with its share of ``session.output_transcript.delta``. At an
  ``interrupt_at`` time the model stops speaking mid-turn -- and, as the real protocol, says
  nothing about it: the deltas simply stop (``LiveSession.interrupted`` records the bytes sent).
* ``caller_transcripts``: ``session.input_transcript.delta`` fragments.
* Usage: ``session.usage.updated`` every ``usage_every`` seconds with the cumulative billable
  seconds (whole seconds since ``session.started``); ``session.closed`` carries the final total.
* ``session.close`` -> ``session.closed{reason: close_requested}`` then close 1000.
  ``closed_at=(at, reason)`` sends ``session.closed`` with any reason (``expired``,
  ``remote_hangup``, ``content``, ``connection_lost``) then closes the socket (1000; 1011 for
  ``connection_lost``).
* ``session.commentary.append`` / ``session.instructions.append`` are recorded (greetings, key
  presses) and answered by speaking :func:`~voxbridge.testing.fake_openai.text_answer` of them.
* Tool calls (``tool_calls``): with a Responses delegation configured, a ``session.delegation.
  created`` and a ``response.event`` wrapping ``response.output_item.done`` with the
  ``function_call``; ``response.item.create`` with its ``function_call_output`` is recorded and
  ``response.create`` makes the model speak :func:`~voxbridge.testing.fake_openai.tool_answer`.
  A tool the session did not declare to a Responses backend (``delegation.responses.tools``) is
  never called, as the service cannot: the fake records it in ``LiveSession.undeclared_tools``.
* ``hangup_at``: the model ends the call, ``session.closed{reason: remote_hangup}`` then close
  1000 (what ``closed_at=(at, "remote_hangup")`` does, under the name the other fakes use).
* Fault knobs, named as :class:`~voxbridge.testing.FakeOpenAIRealtime`'s: ``refuse_status``,
  ``handshake_delay``, ``close_at`` (drop with a code and ``close_reason``, no
  ``session.closed``), ``stop_reading_at`` (freeze), ``corrupt_deltas``, ``events_at`` (raw
  events); ``only_session=k`` applies the scripted and fault knobs to the k-th connection only.
  There is no ``speech_started_at``: the Live API has no event saying the caller interrupted.

Every wait here is bounded: a fake that hangs would hide the bugs it exists to find.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from types import MappingProxyType
from typing import Any

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream
from wsproto.utilities import LocalProtocolError

from ..audio import BYTES_PER_MS, b64_decode, b64_encode
from ..providers.endpoint import ProviderEndpoint
from ..providers.gpt_live import GPT_LIVE_MODEL, GPT_LIVE_VOICE, gpt_live_endpoint
from .fake_openai import speech, text_answer, tool_answer
from .faults import FaultStream, record_close

__all__ = ["FakeGptLive", "FakeLiveToolCall", "LiveSession"]

HANDSHAKE_TIMEOUT = 10.0
SEND_TIMEOUT = 5.0
CLOSED_REASONS = ("close_requested", "expired", "content", "remote_hangup", "connection_lost")
_SESSION_FIELDS = {
    "model",
    "audio",
    "client",
    "delegation",
    "input",
    "instructions",
    "safety_identifier",
    "store",
    "triggers",
}
_CLIENT_EVENTS = {
    "session.start",
    "session.update",
    "session.input_audio.append",
    "session.input_audio.mute",
    "session.input_audio.unmute",
    "session.output_audio.fixture.play",
    "session.instructions.append",
    "session.thinking.append",
    "session.commentary.append",
    "decision.create",
    "decision.item.create",
    "decision.item.delete",
    "response.item.create",
    "response.create",
    "session.close",
}

Event = dict[str, Any]


@attrs.frozen
class FakeLiveToolCall:
    """A task the Live model delegates to the Responses backend, which calls ``name``."""

    name: str
    arguments: str = "{}"
    at: float = 0.0


@attrs.define(eq=False)
class LiveSession:
    """One connection to the fake, as the provider saw it."""

    stream: FaultStream
    number: int
    opened_at: float
    path: str = ""
    headers: dict[str, str] = attrs.Factory(dict)
    ws: WebSocketConnection | None = None
    started_at: float | None = None
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str | None = None
    #: The ``session`` of ``session.start``, as received.
    start: dict[str, Any] | None = None
    events_in: list[Event] = attrs.Factory(list)
    events_out: list[Event] = attrs.Factory(list)
    audio_in: int = 0
    #: Appends received before ``session.started`` was sent (each answered with an ``error``).
    audio_before_start: int = 0
    #: The type of every command received before ``session.started`` was sent (answered with an
    #: ``error`` and ignored): a client that did not wait.
    before_started: list[str] = attrs.Factory(list)
    #: Scripted tool calls not made: the session declared no Responses backend with the tool.
    undeclared_tools: list[str] = attrs.Factory(list)
    audio_bytes_in: int = 0
    #: Agent audio bytes sent (scripted, echo and answers).
    audio_out: int = 0
    deltas_out: int = 0
    commentaries: list[str] = attrs.Factory(list)
    instructions: list[str] = attrs.Factory(list)
    tool_outputs: list[tuple[str, str]] = attrs.Factory(list)
    #: Bytes of each interrupted turn sent before the model stopped.
    interrupted: list[int] = attrs.Factory(list)
    closed_reason: str | None = None
    #: Whether the scripted and fault knobs apply to this connection.
    scripted: bool = False
    errors_sent: list[Event] = attrs.Factory(list)
    closed: trio.Event = attrs.Factory(trio.Event)
    _ids: int = 0
    _speaking: trio.Lock = attrs.Factory(trio.Lock)
    _interrupt: trio.Event | None = None
    _corrupt: Mapping[int, str] = MappingProxyType({})
    #: Echo chunks waiting, with when each is due: one task plays them, in order.
    _echo: trio.MemorySendChannel[tuple[float, bytes]] | None = None
    _calls: dict[str, str] = attrs.Factory(dict)

    def next_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}_{self.number}_{self._ids}"

    def billed(self) -> int:
        """Whole seconds since ``session.started`` (0 before)."""
        if self.started_at is None:
            return 0
        end = self.closed_at if self.closed_at is not None else trio.current_time()
        return int(end - self.started_at + 1e-9)  # (whole seconds: 2.05 - 0.05 is 2)


class FakeGptLive:
    """A local GPT-Live service with behaviour and fault knobs.

    Times (``*_at``, ``speak``) are seconds after ``session.started``.

    Args:
        api_key: the key the handshake must carry as ``Authorization: Bearer`` (``None``: any).
        echo_delay: echo each appended chunk back this many seconds later (``None``: no echo).
        speak: ``(at, mulaw, transcript)``: the model says ``transcript`` as ``mulaw`` at ``at``.
        speak_pace: how many times faster than real time speech is sent (``math.inf``: at once).
        chunk_ms: milliseconds of audio per delta.
        interrupt_at: at these times the model stops the turn it is speaking (no event says so).
        caller_transcripts: ``(at, text)``: ``session.input_transcript.delta`` with ``text``.
        usage_every: seconds between ``session.usage.updated`` events (``None``: none).
        start_delay: seconds between ``session.start`` and ``session.started``.
        closed_at: ``(at, reason)``: ``session.closed`` with ``reason``, then close.
        close_at: ``(at, code)``: close the socket with ``code``, no ``session.closed``.
        close_reason: the close reason sent with ``close_at``.
        hangup_at: the model hangs up: ``session.closed`` ``remote_hangup``, then close 1000.
        stop_reading_at: stop reading the socket (a frozen service: no pongs).
        refuse_status: reject the handshake with this HTTP status.
        handshake_delay: wait this long before accepting the handshake (a slow service).
        corrupt_deltas: ``{k: text}``: the k-th audio delta of a session carries ``text``.
        events_at: ``(at, event)``: send this raw event.
        tool_calls: :class:`FakeLiveToolCall` list (needs a Responses delegation with the tool).
        answer_pace: speak_pace of answers to commentary, instructions and tool results.
        only_session: apply scripted and fault knobs to the k-th connection only (1-based).
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        echo_delay: float | None = None,
        speak: Sequence[tuple[float, bytes, str]] = (),
        speak_pace: float = 5.0,
        chunk_ms: int = 20,
        interrupt_at: Sequence[float] = (),
        caller_transcripts: Sequence[tuple[float, str]] = (),
        usage_every: float | None = 1.0,
        start_delay: float = 0.05,
        closed_at: tuple[float, str] | None = None,
        close_at: tuple[float, int] | None = None,
        close_reason: str = "fake provider closes (fault knob)",
        hangup_at: float | None = None,
        stop_reading_at: float | None = None,
        refuse_status: int | None = None,
        handshake_delay: float = 0.0,
        corrupt_deltas: Mapping[int, str] = MappingProxyType({}),
        events_at: Sequence[tuple[float, Mapping[str, Any]]] = (),
        tool_calls: Sequence[FakeLiveToolCall] = (),
        answer_pace: float = 5.0,
        only_session: int | None = None,
    ) -> None:
        if speak_pace <= 0 or chunk_ms <= 0 or answer_pace <= 0:
            raise ValueError("speak_pace, answer_pace and chunk_ms must be positive")
        if start_delay < 0:
            raise ValueError("start_delay must not be negative")
        if closed_at is not None and closed_at[1] not in CLOSED_REASONS:
            raise ValueError(f"closed_at reason must be one of {CLOSED_REASONS}")
        self.api_key = api_key
        self.echo_delay = echo_delay
        self.speak = sorted(speak, key=lambda turn: turn[0])
        self.speak_pace = speak_pace
        self.chunk_ms = chunk_ms
        self.interrupt_at = list(interrupt_at)
        self.caller_transcripts = list(caller_transcripts)
        self.usage_every = usage_every
        self.start_delay = start_delay
        self.closed_at = closed_at
        self.close_at = close_at
        self.close_reason = close_reason
        self.hangup_at = hangup_at
        self.stop_reading_at = stop_reading_at
        self.refuse_status = refuse_status
        self.handshake_delay = handshake_delay
        self.corrupt_deltas = dict(corrupt_deltas)
        self.events_at = [(when, dict(event)) for when, event in events_at]
        self.tool_calls = list(tool_calls)
        self.answer_pace = answer_pace
        self.only_session = only_session
        self.sessions: list[LiveSession] = []
        self.refused: list[LiveSession] = []
        self.connections = 0
        self.url: str | None = None
        self._opened = trio.Event()

    # --- serving ------------------------------------------------------------------------------

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` until cancelled; ``nursery.start`` returns the ``ws://`` URL."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()
        self.url = f"ws://{bound[0]}:{bound[1]}/v1/live/sessions"
        task_status.started(self.url)
        await trio.serve_listeners(self.handle_stream, listeners)

    def endpoint(self) -> ProviderEndpoint:
        """The endpoint a bridge uses to reach this fake (after :meth:`serve` started)."""
        if self.url is None:
            raise RuntimeError("FakeGptLive.serve() has not started")
        return gpt_live_endpoint(self.url, self.api_key)

    async def wait_for_session(self, count: int = 1) -> LiveSession:
        """Wait until ``count`` sessions have opened; the caller bounds the wait."""
        while len(self.sessions) < count:
            await self._opened.wait()
        return self.sessions[count - 1]

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection on an open byte stream (TCP or in memory)."""
        self.connections += 1
        number = self.connections
        scripted = self.only_session is None or self.only_session == number
        fault = FaultStream(stream)
        session = LiveSession(stream=fault, number=number, opened_at=trio.current_time())
        try:
            await self._serve_one(fault, session, scripted)
        except* (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except* LocalProtocolError:
            pass  # a ping crossed our close (trio-websocket issue #184)
        finally:
            if session.closed_at is None:
                session.closed_at = trio.current_time()
            session.closed.set()
            await trio.aclose_forcefully(fault)

    async def _serve_one(self, fault: FaultStream, session: LiveSession, scripted: bool) -> None:
        delay = self.handshake_delay if scripted else 0.0
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(HANDSHAKE_TIMEOUT + delay):
                request = await wrap_server_stream(nursery, fault)
                session.path = request.path
                session.headers = {
                    k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers
                }
                status = self.refuse_status if scripted else None
                authorization = session.headers.get("authorization")
                if self.api_key is not None and authorization != f"Bearer {self.api_key}":
                    status = status or 401
                if status is not None:
                    self.refused.append(session)
                    body = {"error": {"type": "invalid_request_error", "code": str(status)}}
                    await request.reject(
                        status,
                        extra_headers=[(b"content-type", b"application/json")],
                        body=json.dumps(body).encode(),
                    )
                else:
                    await trio.sleep(delay)
                    session.ws = await request.accept()
            if session.ws is not None:
                self.sessions.append(session)
                self._opened.set()
                self._opened = trio.Event()
                await self._converse(session, session.ws, scripted)
            nursery.cancel_scope.cancel()

    # --- one session --------------------------------------------------------------------------

    async def _converse(
        self, session: LiveSession, ws: WebSocketConnection, scripted: bool
    ) -> None:
        send = partial(self._send, session, ws)
        if scripted:
            session._corrupt = self.corrupt_deltas
            session.scripted = True
        async with trio.open_nursery() as nursery:
            if self.echo_delay is not None:
                session._echo, echoes = trio.open_memory_channel[tuple[float, bytes]](512)
                nursery.start_soon(self._play_echo, session, send, echoes)
            try:
                while True:
                    message = await ws.get_message()
                    await self._receive(nursery, session, ws, send, message)
            except ConnectionClosed as exc:
                record_close(session, exc)
            finally:
                nursery.cancel_scope.cancel()

    def _schedule(
        self,
        nursery: trio.Nursery,
        session: LiveSession,
        ws: WebSocketConnection,
        send: Callable[[Event], Awaitable[bool]],
        t0: float,
    ) -> None:
        def at(when: float, action: Callable[[], Awaitable[object]]) -> None:
            async def run() -> None:
                await trio.sleep_until(t0 + when)
                await action()

            nursery.start_soon(run)

        async def speak() -> None:
            for when, audio, transcript in self.speak:
                await trio.sleep_until(t0 + when)
                await self._say(session, send, audio, transcript, self.speak_pace)

        async def interrupt() -> None:
            if session._interrupt is not None:
                session._interrupt.set()

        async def stop_reading() -> None:
            session.stream.stop_reading()

        async def inject() -> None:
            for when, event in sorted(self.events_at, key=lambda entry: entry[0]):
                await trio.sleep_until(t0 + when)
                await send(event)

        if self.speak:
            nursery.start_soon(speak)
        for when in self.interrupt_at:
            at(when, interrupt)
        for when, text in self.caller_transcripts:
            at(when, partial(self._caller_transcript, session, send, text))
        for call in self.tool_calls:
            at(call.at, partial(self._tool_call, session, send, call))
        if self.closed_at is not None:
            when, reason = self.closed_at
            at(when, partial(self._finish, session, ws, send, reason))
        if self.hangup_at is not None:
            at(self.hangup_at, partial(self._finish, session, ws, send, "remote_hangup"))
        if self.close_at is not None:
            when, code = self.close_at
            at(when, partial(self._close, session, ws, code, self.close_reason))
        if self.stop_reading_at is not None:
            at(self.stop_reading_at, stop_reading)
        if self.events_at:
            nursery.start_soon(inject)

    async def _receive(
        self,
        nursery: trio.Nursery,
        session: LiveSession,
        ws: WebSocketConnection,
        send: Callable[[Event], Awaitable[bool]],
        message: str | bytes,
    ) -> None:
        if isinstance(message, bytes):
            await self._error(session, send, "invalid_message", "Binary frames are not supported.")
            return
        try:
            event = json.loads(message)
        except ValueError:
            await self._error(session, send, "invalid_json", "The message is not valid JSON.")
            return
        if not isinstance(event, dict) or event.get("type") not in _CLIENT_EVENTS:
            await self._error(session, send, "invalid_event", "Unknown client event type.")
            return
        kind = event["type"]
        if kind == "session.input_audio.append":
            session.audio_in += 1
            if session.started_at is None:
                session.audio_before_start += 1
                session.before_started.append(kind)
                await self._error(
                    session, send, "session_not_started", "Wait for session.started first."
                )
                return
            await self._audio_in(nursery, session, send, event)
            return
        session.events_in.append(event)
        if kind == "session.start":
            await self._start(nursery, session, ws, send, event)
        elif session.started_at is None:
            session.before_started.append(kind)
            await self._error(
                session, send, "session_not_started", "Wait for session.started first."
            )
        elif kind == "session.close":
            await self._finish(session, ws, send, "close_requested")
        elif kind == "session.commentary.append" and isinstance(event.get("content"), str):
            session.commentaries.append(event["content"])
            answer = text_answer(event["content"])
            nursery.start_soon(self._say, session, send, speech(answer), answer, self.answer_pace)
        elif kind == "session.instructions.append" and isinstance(event.get("content"), str):
            session.instructions.append(event["content"])
            answer = text_answer(event["content"])
            nursery.start_soon(self._say, session, send, speech(answer), answer, self.answer_pace)
        elif kind == "response.item.create":
            item = event.get("item")
            if not isinstance(item, dict) or item.get("type") != "function_call_output":
                await self._error(session, send, "invalid_item", "Unsupported item.")
            elif item.get("call_id") not in session._calls:
                await self._error(session, send, "unknown_call_id", "No such function call.")
            else:
                session.tool_outputs.append((item["call_id"], str(item.get("output"))))
        elif kind == "response.create" and session.tool_outputs:
            answer = tool_answer(session.tool_outputs[-1][1])
            nursery.start_soon(self._say, session, send, speech(answer), answer, self.answer_pace)

    async def _start(
        self,
        nursery: trio.Nursery,
        session: LiveSession,
        ws: WebSocketConnection,
        send: Callable[[Event], Awaitable[bool]],
        event: Event,
    ) -> None:
        config = event.get("session")
        problem = _start_problem(config) if session.start is None else "already started"
        if problem is not None:
            await self._error(session, send, "invalid_session", problem)
            await self._close(session, ws, 1008, "invalid session.start")
            return
        assert isinstance(config, dict)
        session.start = config
        nursery.start_soon(self._started, nursery, session, ws, send)

    async def _started(
        self,
        nursery: trio.Nursery,
        session: LiveSession,
        ws: WebSocketConnection,
        send: Callable[[Event], Awaitable[bool]],
    ) -> None:
        """``session.started``, ``start_delay`` after ``session.start`` (read on meanwhile)."""
        await trio.sleep(self.start_delay)
        resolved = self._resource(session)
        session.started_at = trio.current_time()
        await send({"type": "session.started", "event_id": session.next_id("event"), **resolved})
        if self.usage_every is not None:
            nursery.start_soon(self._report_usage, session, send, self.usage_every)
        if session.scripted:  # times count from session.started: no speech before it
            self._schedule(nursery, session, ws, send, session.started_at)

    def _resource(self, session: LiveSession) -> Event:
        config = dict(session.start or {})
        audio = dict(config.get("audio") or {})
        audio.setdefault("output", {"voice": GPT_LIVE_VOICE})
        resource = {
            **config,
            "id": f"sess_{session.number}",
            "expires_at": 1_800_000_000,
            "model": config.get("model", GPT_LIVE_MODEL),
            "status": "active",
            "audio": audio,
        }
        return {"session": resource}

    async def _report_usage(
        self, session: LiveSession, send: Callable[[Event], Awaitable[bool]], every: float
    ) -> None:
        while True:
            await trio.sleep(every)
            usage = {"seconds": session.billed()}
            event = {"type": "session.usage.updated", "event_id": session.next_id("event")}
            await send({**event, "usage": usage})

    async def _audio_in(
        self,
        nursery: trio.Nursery,
        session: LiveSession,
        send: Callable[[Event], Awaitable[bool]],
        event: Event,
    ) -> None:
        audio = event.get("audio")
        try:
            chunk = b64_decode(audio) if isinstance(audio, str) else None
        except ValueError:
            chunk = None
        if chunk is None:
            await self._error(session, send, "invalid_audio", "audio must be base64.")
            return
        session.audio_bytes_in += len(chunk)
        if session._echo is not None and self.echo_delay is not None:
            try:
                session._echo.send_nowait((trio.current_time() + self.echo_delay, chunk))
            except trio.WouldBlock:
                pass  # a full queue drops the chunk, never queues without bound

    async def _play_echo(
        self,
        session: LiveSession,
        send: Callable[[Event], Awaitable[bool]],
        echoes: trio.MemoryReceiveChannel[tuple[float, bytes]],
    ) -> None:
        """Play the echo back in the order it came (chunks that arrived together are due
        together: one task per chunk could send them in any order)."""
        async for due, chunk in echoes:
            await trio.sleep_until(due)
            await self._delta(session, send, chunk)

    async def _say(
        self,
        session: LiveSession,
        send: Callable[[Event], Awaitable[bool]],
        audio: bytes,
        transcript: str,
        pace: float,
    ) -> None:
        """Speak ``audio`` in ``chunk_ms`` deltas, ``transcript`` spread over them; stops
        silently at an interrupt."""
        async with session._speaking:
            interrupt = session._interrupt = trio.Event()
            step = self.chunk_ms * BYTES_PER_MS
            chunks = [audio[i : i + step] for i in range(0, len(audio), step)] or [b""]
            words = _spread(transcript, len(chunks))
            sent = 0
            for chunk, words_now in zip(chunks, words, strict=True):
                if interrupt.is_set():
                    session.interrupted.append(sent)
                    break
                if words_now:
                    await self._transcript(
                        session, send, "session.output_transcript.delta", words_now
                    )
                if chunk:
                    await self._delta(session, send, chunk)
                    sent += len(chunk)
                if not math.isinf(pace):
                    await trio.sleep(self.chunk_ms / 1000 / pace)
            session._interrupt = None

    async def _delta(
        self, session: LiveSession, send: Callable[[Event], Awaitable[bool]], chunk: bytes
    ) -> None:
        session.deltas_out += 1
        session.audio_out += len(chunk)
        payload = session._corrupt.get(session.deltas_out, b64_encode(chunk))
        await send({"type": "session.output_audio.delta", "delta": payload})

    async def _transcript(
        self, session: LiveSession, send: Callable[[Event], Awaitable[bool]], kind: str, text: str
    ) -> None:
        start = 0 if session.started_at is None else session.started_at
        ms = int((trio.current_time() - start) * 1000)
        event = {"type": kind, "event_id": session.next_id("event"), "delta": text}
        await send({**event, "start_ms": ms, "end_ms": ms})

    async def _caller_transcript(
        self, session: LiveSession, send: Callable[[Event], Awaitable[bool]], text: str
    ) -> None:
        await self._transcript(session, send, "session.input_transcript.delta", text)

    async def _tool_call(
        self, session: LiveSession, send: Callable[[Event], Awaitable[bool]], call: FakeLiveToolCall
    ) -> None:
        if call.name not in _declared_tools(session.start):
            session.undeclared_tools.append(call.name)  # no backend could run it: nothing happens
            return
        delegation_id = session.next_id("deleg")
        call_id = session.next_id("call")
        session._calls[call_id] = call.name
        created = {
            "type": "session.delegation.created",
            "event_id": session.next_id("event"),
            "offset_ms": 0,
            "delegation": {"id": delegation_id, "target": "responses", "type": "delegation"},
        }
        await send(created)
        item = {
            "type": "function_call",
            "id": session.next_id("fc"),
            "call_id": call_id,
            "name": call.name,
            "arguments": call.arguments,
            "status": "completed",
        }
        nested = {"type": "response.output_item.done", "output_index": 0, "item": item}
        event = {"type": "response.event", "event_id": session.next_id("event"), "event": nested}
        await send({**event, "delegation_id": delegation_id})

    async def _finish(
        self,
        session: LiveSession,
        ws: WebSocketConnection,
        send: Callable[[Event], Awaitable[bool]],
        reason: str,
    ) -> None:
        """``session.closed`` with ``reason`` and the final usage, then close the socket."""
        session.closed_reason = reason
        event = {"type": "session.closed", "event_id": session.next_id("event"), "reason": reason}
        usage = {"seconds": session.billed()}
        await send({**event, **self._resource(session), "usage": usage})
        code = 1011 if reason == "connection_lost" else 1000
        await self._close(session, ws, code, f"session closed: {reason}")

    async def _error(
        self, session: LiveSession, send: Callable[[Event], Awaitable[bool]], code: str, text: str
    ) -> None:
        error = {"code": code, "message": text, "type": "invalid_request_error"}
        session.errors_sent.append(error)
        await send({"type": "error", "event_id": session.next_id("event"), "error": error})

    async def _close(
        self, session: LiveSession, ws: WebSocketConnection, code: int, why: str
    ) -> None:
        if session.close_code is None:
            session.close_code = code
            session.close_reason = why
        with trio.move_on_after(SEND_TIMEOUT):
            await ws.aclose(code, why)

    async def _send(self, session: LiveSession, ws: WebSocketConnection, event: Event) -> bool:
        session.events_out.append(event)
        with trio.move_on_after(SEND_TIMEOUT):
            try:
                await ws.send_message(json.dumps(event, separators=(",", ":")))
            except ConnectionClosed:
                return False
            return True
        return False


def _spread(text: str, parts: int) -> list[str]:
    """``text`` cut into ``parts`` consecutive pieces (some possibly empty)."""
    size = math.ceil(len(text) / parts) if text else 0
    return [text[i * size : (i + 1) * size] for i in range(parts)]


def _declared_tools(config: dict[str, Any] | None) -> set[str]:
    """The function tools a ``session.start`` ``session`` declared to a Responses backend."""
    delegation = (config or {}).get("delegation")
    if not isinstance(delegation, dict) or delegation.get("type") != "responses":
        return set()
    responses = delegation.get("responses")
    tools = responses.get("tools") if isinstance(responses, dict) else None
    if not isinstance(tools, list):
        return set()
    return {
        tool["name"]
        for tool in tools
        if isinstance(tool, dict)
        and tool.get("type") == "function"
        and isinstance(tool.get("name"), str)
    }


def _start_problem(config: object) -> str | None:
    """Why a ``session.start`` ``session`` is refused, as far as a bridge uses it."""
    if not isinstance(config, dict):
        return "session must be an object"
    unknown = set(config) - _SESSION_FIELDS
    if unknown:
        return f"unknown session fields: {sorted(unknown)}"
    if not isinstance(config.get("model"), str) or not config["model"]:
        return "session.model is required"
    audio = config.get("audio")
    fmt = audio.get("format") if isinstance(audio, dict) else None
    if fmt != {"type": "audio/pcmu", "rate": 8000}:
        return f"audio.format must be audio/pcmu at 8000 Hz, got {fmt!r}"
    history = config.get("input", [])
    if not isinstance(history, list) or len(history) > 128:
        return "session.input must be a list of at most 128 messages"
    for message in history:
        if not isinstance(message, dict):
            return "session.input items must be objects"
        content = message.get("content")
        part = content[0] if isinstance(content, list) and len(content) == 1 else None
        if message.get("role") not in ("developer", "user", "assistant") or not (
            isinstance(part, dict) and isinstance(part.get("text"), str)
        ):
            return "session.input messages need a role and one text part"
    return None
