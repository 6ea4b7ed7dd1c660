"""A local Deepgram Voice Agent: the ``/v1/agent/converse`` WebSocket protocol, with fault knobs.

What it speaks (the shapes of the ``deepgram-sdk`` agent v1 types):

* The handshake needs ``Authorization: Token <api_key>`` (401 otherwise, as Deepgram answers a bad
  key). On accept the fake sends ``Welcome{request_id}``.
* The first client message must be ``Settings`` with mu-law 8 kHz input and output (``container:
  "none"``) and an ``agent`` object; anything else (or audio before it) is answered with
  ``Error`` and a close with 1008, and listed in ``errors``. A valid one is answered with
  ``SettingsApplied``, then the ``agent.greeting``, if any, is spoken.
* Binary frames are caller audio (mu-law bytes), echoed back as agent audio after ``echo_delay``.
* Agent turns (``speak``, the greeting, answers): ``AgentStartedSpeaking``, binary mu-law chunks,
  ``ConversationText{role: "assistant"}``, ``AgentAudioDone``. ``UserStartedSpeaking`` (at
  ``user_started_at`` and ``speech_started_at``) cuts a turn in progress, as Deepgram's own
  barge-in does.
* ``FunctionCallRequest{functions: [{id, name, arguments, client_side: true}]}`` for each
  :class:`FakeFunctionCall`; a ``FunctionCallResponse`` is recorded and answered with speech and
  ``ConversationText`` ``"<name> answered: <content>"``.
* ``InjectUserMessage`` is recorded (``injected``) and answered with ``speech_for(content)``;
  ``KeepAlive`` is counted, with its arrival time (``keepalives_at``). With ``idle_timeout`` the
  fake closes a session that sent nothing (audio, ``KeepAlive``, any message) for that long, as
  Deepgram does.

Times are seconds after a session's handshake; ``only_session`` restricts the scripted and fault
knobs (not the echo) to one connection (1-based), so one session drops and the next runs healthy.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Sequence
from typing import Any

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream
from wsproto.utilities import LocalProtocolError

from ..providers.deepgram import DeepgramProvider, deepgram_endpoint
from ..providers.endpoint import ProviderEndpoint
from .faults import FaultStream, record_close

__all__ = ["DeepgramSession", "FakeDeepgram", "FakeFunctionCall", "speech_for"]

HANDSHAKE_TIMEOUT = 10.0
SEND_TIMEOUT = 5.0
SPEECH_MS = 100
BYTES_PER_MS = 8  # mu-law 8 kHz
#: ``AgentStartedSpeaking``'s latencies (seconds), all required fields.
_LATENCIES = {"total_latency": 0.25, "tts_latency": 0.1, "ttt_latency": 0.15}


def speech_for(text: str, ms: int = SPEECH_MS) -> bytes:
    """``ms`` of mu-law "speech" for ``text``: its bytes, repeated (a test can tell answers apart)."""
    data = text.encode() or b"\xff"
    size = ms * BYTES_PER_MS
    return (data * (size // len(data) + 1))[:size]


@attrs.frozen
class FakeFunctionCall:
    """A scripted function call: at ``at`` the agent says ``say`` (mu-law), then asks for
    ``name`` with ``arguments`` (JSON text). ``client_side`` false: a server-side call, which
    the bridge must ignore."""

    name: str
    arguments: str = "{}"
    at: float = 0.0
    say: bytes = b""
    client_side: bool = True


@attrs.define(eq=False)
class DeepgramSession:
    """One WebSocket as the fake saw it (times are ``trio.current_time()``).

    ``messages`` are the JSON messages received, ``sent`` those sent; ``audio_in`` /
    ``audio_bytes_in`` count caller audio frames; ``audio_out`` the echoed frames;
    ``agent_audio_out`` every byte of scripted agent speech sent; ``function_calls`` maps each
    call id sent to its call; ``function_responses`` and ``injected`` hold what the client sent.
    """

    stream: FaultStream
    number: int
    opened_at: float
    path: str = ""
    headers: dict[str, str] = attrs.Factory(dict)
    accepted_at: float | None = None
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str | None = None
    settings: dict[str, Any] | None = None
    messages: list[dict[str, Any]] = attrs.Factory(list)
    sent: list[dict[str, Any]] = attrs.Factory(list)
    audio_in: int = 0
    audio_bytes_in: int = 0
    audio_out: int = 0
    dropped: int = 0
    agent_audio_out: bytearray = attrs.field(factory=bytearray, repr=False)
    function_calls: dict[str, FakeFunctionCall] = attrs.Factory(dict)
    function_responses: list[dict[str, Any]] = attrs.Factory(list)
    injected: list[str] = attrs.Factory(list)
    keepalives: int = 0
    keepalives_at: list[float] = attrs.Factory(list)  # when each ``KeepAlive`` arrived
    idle: trio.CancelScope = attrs.Factory(trio.CancelScope)  # for ``idle_timeout``
    interrupted: int = 0
    errors: list[str] = attrs.Factory(list)
    closed: trio.Event = attrs.Factory(trio.Event)
    ws: WebSocketConnection | None = None
    _speaking: trio.Lock = attrs.Factory(trio.Lock)
    _turn: trio.CancelScope | None = None
    _configured: trio.Event = attrs.Factory(trio.Event)

    @property
    def context_messages(self) -> list[dict[str, Any]]:
        """``agent.context.messages`` of this session's ``Settings`` (the replayed history)."""
        agent = (self.settings or {}).get("agent", {})
        context = agent.get("context") if isinstance(agent, dict) else None
        messages = context.get("messages") if isinstance(context, dict) else None
        return messages if isinstance(messages, list) else []

    @property
    def greeting(self) -> str | None:
        agent = (self.settings or {}).get("agent", {})
        greeting = agent.get("greeting") if isinstance(agent, dict) else None
        return greeting if isinstance(greeting, str) else None


class FakeDeepgram:
    """A Deepgram Voice Agent server for tests and demos.

    Args:
        api_key: the key the handshake must carry (``Authorization: Token <api_key>``);
            ``None`` accepts any.
        echo_delay: echo each caller audio frame back this many seconds later (``None``: no echo).
        speak: ``(at, mulaw, transcript)`` agent turns (turns never overlap).
        speak_pace: how many times faster than real time turns are sent (``math.inf``: at once).
        chunk_ms: milliseconds of agent audio per binary frame.
        user_started_at: send ``UserStartedSpeaking`` at these times, cutting a turn in progress.
        speech_started_at: the same, under the name the other fakes use (both lists are sent).
        caller_transcripts: ``(at, text)``: a user ``ConversationText``.
        function_calls: :class:`FakeFunctionCall` list.
        error_at: ``(at, code, description)``: send an ``Error``.
        frames_at: ``(at, frame)``: send this raw frame (``bytes`` binary, ``str`` text).
        refuse_status: reject every handshake with this HTTP status.
        handshake_delay: wait this long before accepting a handshake.
        close_at: ``(at, code)``: close the session with ``code``.
        close_reason: the close reason sent with ``close_at``.
        hangup_at: close with 1000 at this time, once the turns due by then are spoken.
        stop_reading_at: stop reading the connection (no pongs: a frozen server).
        idle_timeout: as Deepgram does, end a session that has received no message (audio,
            ``KeepAlive``, anything) for this long: ``Error`` ``CLIENT_MESSAGE_TIMEOUT``, then a
            close with 1011. WebSocket pings do not count.
        only_session: apply the scripted and fault knobs to this connection only (1-based).
    """

    def __init__(
        self,
        *,
        api_key: str | None = "dg-test-key",
        echo_delay: float | None = None,
        speak: Sequence[tuple[float, bytes, str]] = (),
        speak_pace: float = 5.0,
        chunk_ms: int = 20,
        user_started_at: Sequence[float] = (),
        speech_started_at: Sequence[float] = (),
        caller_transcripts: Sequence[tuple[float, str]] = (),
        function_calls: Sequence[FakeFunctionCall] = (),
        error_at: Sequence[tuple[float, str, str]] = (),
        frames_at: Sequence[tuple[float, bytes | str]] = (),
        refuse_status: int | None = None,
        handshake_delay: float = 0.0,
        close_at: tuple[float, int] | None = None,
        close_reason: str = "fake provider closes (fault knob)",
        hangup_at: float | None = None,
        stop_reading_at: float | None = None,
        idle_timeout: float | None = None,
        only_session: int | None = None,
    ) -> None:
        self.api_key = api_key
        self.echo_delay = echo_delay
        self.speak = list(speak)
        self.speak_pace = speak_pace
        self.chunk_ms = chunk_ms
        self.user_started_at = list(user_started_at)
        self.speech_started_at = list(speech_started_at)
        self.caller_transcripts = list(caller_transcripts)
        self.function_calls = list(function_calls)
        self.error_at = list(error_at)
        self.frames_at = list(frames_at)
        self.refuse_status = refuse_status
        self.handshake_delay = handshake_delay
        self.close_at = close_at
        self.close_reason = close_reason
        self.hangup_at = hangup_at
        self.stop_reading_at = stop_reading_at
        self.idle_timeout = idle_timeout
        self.only_session = only_session
        self.url: str | None = None
        self.connections = 0
        self.sessions: list[DeepgramSession] = []
        self.refused: list[DeepgramSession] = []
        self.errors: list[str] = []
        self._opened = trio.Event()

    def __repr__(self) -> str:
        return f"FakeDeepgram(url={self.url!r}, sessions={len(self.sessions)})"

    # --- serving ------------------------------------------------------------------------------

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` until cancelled; ``await nursery.start(fake.serve)`` returns
        the ``ws://.../v1/agent/converse`` URL."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()
        self.url = f"ws://{bound[0]}:{bound[1]}/v1/agent/converse"
        task_status.started(self.url)
        await trio.serve_listeners(self.handle_stream, listeners)

    def endpoint(self) -> ProviderEndpoint:
        """The endpoint (with this fake's key) a bridge uses to reach it."""
        if self.url is None:
            raise RuntimeError("FakeDeepgram.serve() has not started")
        return deepgram_endpoint(self.api_key, self.url)

    def provider(self, **options: Any) -> DeepgramProvider:
        """A :class:`DeepgramProvider` for this fake (``options`` go to it)."""
        return DeepgramProvider(self.endpoint(), **options)

    async def wait_for_session(self, count: int = 1) -> DeepgramSession:
        """Wait until ``count`` sessions have opened; return the ``count``-th (the caller
        bounds the wait)."""
        while len(self.sessions) < count:
            await self._opened.wait()
        return self.sessions[count - 1]

    def scripted(self, number: int) -> bool:
        return self.only_session is None or number == self.only_session

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection on an already-open byte stream (TCP or in memory)."""
        self.connections += 1
        number = self.connections
        scripted = self.scripted(number)
        fault = FaultStream(stream)
        session = DeepgramSession(stream=fault, number=number, opened_at=trio.current_time())
        try:
            async with trio.open_nursery() as nursery:
                delay = self.handshake_delay if scripted else 0.0
                with trio.move_on_after(HANDSHAKE_TIMEOUT + delay):
                    request = await wrap_server_stream(nursery, fault)
                    session.path = request.path
                    session.headers = {
                        k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers
                    }
                    status = self._refusal(session, scripted)
                    if status is not None:
                        self.refused.append(session)
                        await request.reject(status, body=b'{"err_code":"INVALID_AUTH"}')
                    else:
                        await trio.sleep(delay)
                        session.ws = await request.accept()
                if session.ws is not None:
                    session.accepted_at = trio.current_time()
                    self.sessions.append(session)
                    self._opened.set()
                    self._opened = trio.Event()
                    await self._converse(session, session.ws, scripted)
                nursery.cancel_scope.cancel()
        except* (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client left (perhaps mid-handshake)
        except* LocalProtocolError:
            pass  # a ping crossed our close (trio-websocket issue #184)
        finally:
            if session.closed_at is None:
                session.closed_at = trio.current_time()
            session.closed.set()
            await trio.aclose_forcefully(fault)

    def _refusal(self, session: DeepgramSession, scripted: bool) -> int | None:
        if scripted and self.refuse_status is not None:
            return self.refuse_status
        if self.api_key is not None and session.headers.get("authorization") != (
            f"Token {self.api_key}"
        ):
            return 401
        return None

    # --- one session --------------------------------------------------------------------------

    async def _converse(
        self, session: DeepgramSession, ws: WebSocketConnection, scripted: bool
    ) -> None:
        playback_in, playback_out = trio.open_memory_channel[tuple[float, bytes]](256)
        async with trio.open_nursery() as nursery:
            if self.echo_delay is not None:
                nursery.start_soon(self._echo, session, ws, playback_out)
            await self._send(session, ws, {"type": "Welcome", "request_id": str(uuid.uuid4())})
            if scripted:
                self._schedule(nursery, session, ws)
            if self.idle_timeout is not None:
                session.idle.deadline = trio.current_time() + self.idle_timeout
                nursery.start_soon(self._idle_watch, session, ws)
            try:
                while True:
                    message = await ws.get_message()
                    if self.idle_timeout is not None:
                        session.idle.deadline = trio.current_time() + self.idle_timeout
                    if isinstance(message, bytes):
                        if session.settings is None:
                            await self._refuse(session, ws, "audio before Settings")
                            continue
                        session.audio_in += 1
                        session.audio_bytes_in += len(message)
                        if self.echo_delay is not None:
                            due = trio.current_time() + self.echo_delay
                            try:
                                playback_in.send_nowait((due, message))
                            except trio.WouldBlock:
                                session.dropped += 1  # a full queue drops the frame
                    else:
                        await self._on_text(session, ws, message, nursery)
            except ConnectionClosed as exc:
                record_close(session, exc)
            finally:
                nursery.cancel_scope.cancel()

    def _schedule(
        self, nursery: trio.Nursery, session: DeepgramSession, ws: WebSocketConnection
    ) -> None:
        t0 = session.accepted_at or trio.current_time()
        before_hangup: list[trio.Event] = []
        for at, audio, transcript in self.speak:
            spoken = trio.Event()
            if self.hangup_at is not None and at <= self.hangup_at:
                before_hangup.append(spoken)
            nursery.start_soon(
                self._scheduled_turn, session, ws, t0 + at, audio, transcript, spoken
            )
        for at in [*self.user_started_at, *self.speech_started_at]:
            nursery.start_soon(self._user_started, session, ws, t0 + at)
        for at, text in self.caller_transcripts:
            message = {"type": "ConversationText", "role": "user", "content": text}
            nursery.start_soon(self._send_at, session, ws, t0 + at, message)
        for at, code, description in self.error_at:
            error = {"type": "Error", "code": code, "description": description}
            nursery.start_soon(self._send_at, session, ws, t0 + at, error)
        for at, frame in self.frames_at:
            nursery.start_soon(self._raw_at, session, ws, t0 + at, frame)
        for number, call in enumerate(self.function_calls, start=1):
            nursery.start_soon(self._function_call, session, ws, t0 + call.at, call, number)
        if self.close_at is not None:
            drop_at, drop_code = self.close_at
            no_wait: list[trio.Event] = []
            nursery.start_soon(
                self._close_at, session, ws, t0 + drop_at, drop_code, self.close_reason, no_wait
            )
        if self.hangup_at is not None:
            when = t0 + self.hangup_at
            nursery.start_soon(self._close_at, session, ws, when, 1000, "hung up", before_hangup)
        if self.stop_reading_at is not None:
            nursery.start_soon(self._freeze, session, t0 + self.stop_reading_at)

    async def _on_text(
        self, session: DeepgramSession, ws: WebSocketConnection, text: str, nursery: trio.Nursery
    ) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            await self._refuse(session, ws, f"not a JSON message with a type: {text[:200]}")
            return
        session.messages.append(message)
        kind = message["type"]
        if session.settings is None:
            problem = _invalid_settings(message)
            if problem is not None:
                await self._refuse(session, ws, problem)
                return
            session.settings = message
            await self._send(session, ws, {"type": "SettingsApplied"})
            greeting = session.greeting
            if greeting:
                nursery.start_soon(self._greet, session, ws, greeting)
            else:
                session._configured.set()
        elif kind == "KeepAlive":
            session.keepalives += 1
            session.keepalives_at.append(trio.current_time())
        elif kind == "InjectUserMessage":
            content = message.get("content")
            if not isinstance(content, str):
                self._error(session, f"malformed InjectUserMessage: {text[:200]}")
                return
            session.injected.append(content)
            said = f"you said: {content}"
            nursery.start_soon(self._turn_now, session, ws, speech_for(content), said)
        elif kind == "FunctionCallResponse":
            session.function_responses.append(message)
            answer = self._function_answer(session, message)
            if answer is not None:
                nursery.start_soon(self._turn_now, session, ws, *answer)
        elif kind == "Settings":
            self._error(session, "a second Settings message")

    def _function_answer(
        self, session: DeepgramSession, message: dict[str, Any]
    ) -> tuple[bytes, str] | None:
        call_id, name, content = (message.get(k) for k in ("id", "name", "content"))
        call = session.function_calls.get(call_id) if isinstance(call_id, str) else None
        if call is None:
            self._error(session, f"FunctionCallResponse for an unknown id {call_id!r}")
            return None
        if name != call.name or not isinstance(content, str):
            self._error(session, f"malformed FunctionCallResponse: {message}")
            return None
        del session.function_calls[call_id]  # type: ignore[arg-type]
        return speech_for(content), f"{call.name} answered: {content}"

    def _error(self, session: DeepgramSession, problem: str) -> None:
        session.errors.append(problem)
        self.errors.append(f"session {session.number}: {problem}")

    async def _refuse(
        self, session: DeepgramSession, ws: WebSocketConnection, problem: str
    ) -> None:
        """What Deepgram does with bad settings or data: an ``Error``, then a close (1008)."""
        self._error(session, problem)
        error = {"type": "Error", "code": "INVALID_SETTINGS", "description": problem[:200]}
        await self._send(session, ws, error)
        await self._close(session, ws, 1008, "invalid settings")

    # --- speech -------------------------------------------------------------------------------

    async def _greet(self, session: DeepgramSession, ws: WebSocketConnection, text: str) -> None:
        try:
            async with session._speaking:
                session._configured.set()  # other turns queue behind the greeting
                await self._speak(session, ws, speech_for(text), text)
        finally:
            session._configured.set()

    async def _scheduled_turn(
        self,
        session: DeepgramSession,
        ws: WebSocketConnection,
        when: float,
        audio: bytes,
        transcript: str,
        spoken: trio.Event,
    ) -> None:
        try:
            await trio.sleep_until(when)
            await self._turn_now(session, ws, audio, transcript)
        finally:
            spoken.set()

    async def _turn_now(
        self, session: DeepgramSession, ws: WebSocketConnection, audio: bytes, transcript: str
    ) -> None:
        await session._configured.wait()
        async with session._speaking:
            await self._speak(session, ws, audio, transcript)

    async def _speak(
        self,
        session: DeepgramSession,
        ws: WebSocketConnection,
        audio: bytes,
        transcript: str,
        then: dict[str, Any] | None = None,
    ) -> None:
        """One agent turn (the caller holds ``_speaking``); ``UserStartedSpeaking`` cuts it."""
        with trio.CancelScope() as scope:
            session._turn = scope
            if audio:
                started = {"type": "AgentStartedSpeaking", **_LATENCIES}
                await self._send(session, ws, started)
            step = self.chunk_ms * BYTES_PER_MS
            gap = 0.0 if math.isinf(self.speak_pace) else self.chunk_ms / 1000 / self.speak_pace
            begin = trio.current_time()
            for index, start in enumerate(range(0, len(audio), step)):
                await trio.sleep_until(begin + index * gap)
                chunk = audio[start : start + step]
                if not await self._send_frame(ws, chunk):
                    return
                session.agent_audio_out += chunk
            if gap and audio:
                await trio.sleep_until(begin + math.ceil(len(audio) / step) * gap)
            if transcript:
                text = {"type": "ConversationText", "role": "assistant", "content": transcript}
                await self._send(session, ws, text)
            if audio:
                await self._send(session, ws, {"type": "AgentAudioDone"})
            if then is not None:
                await self._send(session, ws, then)
        session._turn = None

    async def _user_started(
        self, session: DeepgramSession, ws: WebSocketConnection, when: float
    ) -> None:
        await trio.sleep_until(when)
        if session._turn is not None:
            session._turn.cancel()
            session.interrupted += 1
        await self._send(session, ws, {"type": "UserStartedSpeaking"})

    async def _function_call(
        self,
        session: DeepgramSession,
        ws: WebSocketConnection,
        when: float,
        call: FakeFunctionCall,
        number: int,
    ) -> None:
        await trio.sleep_until(when)
        call_id = f"fc-{session.number}-{number}"
        if call.client_side:
            session.function_calls[call_id] = call
        request = {
            "type": "FunctionCallRequest",
            "functions": [
                {
                    "id": call_id,
                    "name": call.name,
                    "arguments": call.arguments,
                    "client_side": call.client_side,
                }
            ],
        }
        await session._configured.wait()
        async with session._speaking:
            await self._speak(session, ws, call.say, "", then=request)

    async def _echo(
        self,
        session: DeepgramSession,
        ws: WebSocketConnection,
        playback: trio.MemoryReceiveChannel[tuple[float, bytes]],
    ) -> None:
        async for due, audio in playback:
            await trio.sleep_until(due)
            if not await self._send_frame(ws, audio):
                return
            session.audio_out += 1

    # --- faults -------------------------------------------------------------------------------

    async def _send_at(
        self,
        session: DeepgramSession,
        ws: WebSocketConnection,
        when: float,
        message: dict[str, Any],
    ) -> None:
        await trio.sleep_until(when)
        await self._send(session, ws, message)

    async def _raw_at(
        self, session: DeepgramSession, ws: WebSocketConnection, when: float, frame: bytes | str
    ) -> None:
        await trio.sleep_until(when)
        await self._send_frame(ws, frame)

    async def _close_at(
        self,
        session: DeepgramSession,
        ws: WebSocketConnection,
        when: float,
        code: int,
        reason: str,
        after: Sequence[trio.Event],
    ) -> None:
        await trio.sleep_until(when)
        for spoken in after:
            await spoken.wait()
        await self._close(session, ws, code, reason)

    async def _idle_watch(self, session: DeepgramSession, ws: WebSocketConnection) -> None:
        """Close the session once ``session.idle`` (pushed back by every message) expires."""
        with session.idle:
            await trio.sleep_forever()
        error = {
            "type": "Error",
            "code": "CLIENT_MESSAGE_TIMEOUT",
            "description": "no message from the client in time",
        }
        await self._send(session, ws, error)
        await self._close(session, ws, 1011, "client message timeout")

    async def _freeze(self, session: DeepgramSession, when: float) -> None:
        await trio.sleep_until(when)
        session.stream.stop_reading()

    async def _close(
        self, session: DeepgramSession, ws: WebSocketConnection, code: int, reason: str
    ) -> None:
        if session.close_code is None:
            session.close_code, session.close_reason = code, reason
        with trio.move_on_after(SEND_TIMEOUT):
            await ws.aclose(code, reason)

    async def _send_frame(self, ws: WebSocketConnection, frame: bytes | str) -> bool:
        with trio.move_on_after(SEND_TIMEOUT):
            try:
                await ws.send_message(frame)
            except ConnectionClosed:
                return False
            return True
        return False

    async def _send(
        self, session: DeepgramSession, ws: WebSocketConnection, message: dict[str, Any]
    ) -> None:
        if await self._send_frame(ws, json.dumps(message, separators=(",", ":"))):
            session.sent.append(message)


def _invalid_settings(message: dict[str, Any]) -> str | None:
    """Why ``message`` is not a ``Settings`` a mu-law 8 kHz bridge may send, or ``None``."""
    if message.get("type") != "Settings":
        return f"the first message must be Settings, not {str(message.get('type'))[:64]!r}"
    audio = message.get("audio")
    if not isinstance(audio, dict):
        return "Settings without an audio object"
    want_in = {"encoding": "mulaw", "sample_rate": 8000}
    want_out = {"encoding": "mulaw", "sample_rate": 8000, "container": "none"}
    if audio.get("input") != want_in:
        return f"audio.input must be {want_in}, got {audio.get('input')!r}"
    if audio.get("output") != want_out:
        return f"audio.output must be {want_out}, got {audio.get('output')!r}"
    agent = message.get("agent")
    if not isinstance(agent, dict):
        return "Settings without an agent object"
    for part in ("listen", "think", "speak"):
        value = agent.get(part)
        if not isinstance(value, dict) or not isinstance(value.get("provider"), dict):
            return f"agent.{part}.provider must be an object"
    context = agent.get("context", {})
    messages = context.get("messages", []) if isinstance(context, dict) else None
    if not isinstance(messages, list) or not all(_valid_history(m) for m in messages):
        return "agent.context.messages must be History messages"
    functions = agent["think"].get("functions", [])
    if not isinstance(functions, list) or not all(
        isinstance(f, dict) and isinstance(f.get("name"), str) for f in functions
    ):
        return "agent.think.functions must be objects with a name"
    return None


def _valid_history(message: Any) -> bool:
    if not isinstance(message, dict) or message.get("type") != "History":
        return False
    if "function_calls" in message:
        calls = message["function_calls"]
        keys = {"id": str, "name": str, "client_side": bool, "arguments": str, "response": str}
        return isinstance(calls, list) and all(
            isinstance(c, dict) and all(isinstance(c.get(k), t) for k, t in keys.items())
            for c in calls
        )
    return message.get("role") in ("user", "assistant") and isinstance(message.get("content"), str)
