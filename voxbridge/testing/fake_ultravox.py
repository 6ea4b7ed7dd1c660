"""A local Ultravox: the REST call-creation API and the server-WebSocket medium, on real sockets.

Two real servers on loopback, each on its own port:

* **REST** -- a tiny ASGI app served by hypercorn's trio worker. ``POST /api/calls`` checks
  ``X-API-Key`` (401 otherwise), validates the ``StartCallRequest`` as far as a bridge uses it (an
  8 kHz ``serverWebSocket`` medium, well-formed ``initialMessages`` -- tool call and result messages
  included --, ``firstSpeakerSettings`` and client temporary tools in ``selectedTools``; 400
  otherwise), records it as a :class:`CallRequest` and answers 201 with a ``Call`` whose ``joinUrl``
  points at the WebSocket server. ``GET /api/calls/<callId>`` (401 without the key, 404 for an
  unknown id) answers the ``Call``, with a ``billedDuration`` once its WebSocket has closed: the
  seconds it was joined, rounded to 0.1 s (``"2.4s"``).
* **WebSocket** -- trio-websocket on a :class:`~voxbridge.testing.FaultStream`-wrapped TCP stream,
  like :class:`~voxbridge.testing.FakeEchoAgent`. ``/calls/<callId>`` (only for created calls) sends
  ``call_started`` and ``state``; plays every binary (PCM) frame back ``delay`` seconds later; answers
  ``ping`` with ``pong``; speaks a scripted list of :class:`Utterance` as ``transcript`` messages
  (partials, then ``final``); speaks scripted agent audio (``agent_audio``: s16le 8 kHz PCM as
  ``chunk_ms`` binary frames, ``speak_pace`` times faster than real time, as the service bursts);
  sends ``playback_clear_buffer`` at ``clear_at``; hangs up at ``hangup_at`` (close 1000: the agent
  ended the call), after the agent audio scheduled up to then has gone out (a goodbye, then the
  hang-up); and ends the call with 1000 when it receives ``hang_up``, as Ultravox does. With a
  greeting text in ``firstSpeakerSettings.agent.text`` it greets on join. Scripted
  :class:`FakeToolCall` s become ``client_tool_invocation`` messages (only for tools the call
  selected); each ``client_tool_result`` is answered with speech (:func:`speech_for` the result)
  and a final agent transcript naming it; each ``user_text_message`` with speech for its text.

Each WebSocket is recorded as an :class:`UltravoxSession` (open/close times, close code, audio
frames in and out, data messages received and sent), so a test checks from the provider's side what
the bridge did; ``fake.tool_results``, ``fake.user_texts`` and ``fake.errors`` (protocol mistakes
the fake refused) span every session. Fault knobs, named as
:class:`~voxbridge.testing.FakeOpenAIRealtime`'s: ``refuse_status`` (REST answers that status),
``rest_delay`` (slow REST), ``handshake_delay`` (slow WebSocket handshake), ``close_at=(seconds,
code)`` (drop mid-call, with ``close_reason``), ``stop_reading_at`` (the WebSocket stops reading:
no pongs), ``speech_started_at`` (``playback_clear_buffer``, Ultravox's barge-in, as ``clear_at``),
``frames_at`` (any raw frame, binary or text, at a given time: an odd-length PCM frame, broken
JSON) and ``only_session=k`` (the scripted and fault knobs apply to the call created by the k-th
``POST /api/calls`` only, refused ones counted); per session, the ``FaultStream``
(``stop_reading`` -> no pongs, ``vanish`` -> no close frame).

Every wait here is bounded: a fake that hangs would hide the bugs it exists to find.
"""

from __future__ import annotations

import json
import logging
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream
from wsproto.utilities import LocalProtocolError

from .faults import FaultStream, record_close

__all__ = [
    "CallRequest",
    "FakeToolCall",
    "FakeUltravox",
    "UltravoxSession",
    "Utterance",
    "speech_for",
]

HANDSHAKE_TIMEOUT = 10.0
WAIT_TIMEOUT = 10.0  # wait_for_session / wait_closed raise trio.TooSlowError after this
SEND_TIMEOUT = 5.0
MAX_BODY = 1 << 20
SAMPLE_RATE = 8000
PCM_BYTES_PER_MS = SAMPLE_RATE * 2 // 1000  # s16le mono at 8 kHz: 16 bytes per ms
WORD_GAP = 0.01  # seconds between the transcript messages of one utterance
SPEECH_MS = 100  # milliseconds of speech_for() audio
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)  # the wall clock of trio time 0 in Call timestamps

_MESSAGE_ROLES = {
    "MESSAGE_ROLE_USER",
    "MESSAGE_ROLE_AGENT",
    "MESSAGE_ROLE_TOOL_CALL",
    "MESSAGE_ROLE_TOOL_RESULT",
}
_TOOL_ROLES = {"MESSAGE_ROLE_TOOL_CALL", "MESSAGE_ROLE_TOOL_RESULT"}
_LOCATIONS = {
    "PARAMETER_LOCATION_UNSPECIFIED",
    "PARAMETER_LOCATION_QUERY",
    "PARAMETER_LOCATION_PATH",
    "PARAMETER_LOCATION_HEADER",
    "PARAMETER_LOCATION_BODY",
}
_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_DURATION = re.compile(r"(0|[1-9][0-9]{0,11})(\.[0-9]{1,9})?s")
_URGENCIES = {"immediate", "soon", "later"}
_ERROR_TYPES = {"undefined", "implementation-error"}
_MESSAGE_MEDIA = {"MESSAGE_MEDIUM_UNSPECIFIED", "MESSAGE_MEDIUM_VOICE", "MESSAGE_MEDIUM_TEXT"}

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@attrs.frozen
class Utterance:
    """A scripted utterance, spoken ``at`` seconds after the session opened.

    ``mode="delta"`` streams it word by word as ``delta`` messages (the last one ``final``);
    ``mode="text"`` sends the full text so far each time.
    """

    at: float
    role: str  # "agent" or "user"
    text: str
    mode: str = "delta"

    def messages(self, ordinal: int) -> list[dict[str, Any]]:
        words = self.text.split(" ")
        chunks = [w if i == 0 else " " + w for i, w in enumerate(words)]
        out: list[dict[str, Any]] = []
        for i, chunk in enumerate(chunks):
            so_far = "".join(chunks[: i + 1])
            message: dict[str, Any] = {
                "type": "transcript",
                "role": self.role,
                "medium": "voice",
                "text": so_far if self.mode == "text" else None,
                "delta": chunk if self.mode != "text" else None,
                "final": i == len(chunks) - 1,
                "ordinal": ordinal,
            }
            out.append(message)
        return out


def speech_for(text: str, ms: int = SPEECH_MS) -> bytes:
    """The fake agent's "speech" for ``text``: ``ms`` milliseconds of s16le 8 kHz PCM whose
    samples cycle through the UTF-8 bytes of ``text``, each byte ``b`` as ``(b - 128) * 256``.

    Deterministic and distinct per text, so a test can tell which answer the caller heard
    (as mu-law: ``pcm16_to_ulaw(speech_for(text))``). 100 ms is 1600 bytes: five 20 ms frames.
    """
    data = text.encode() or b"\x00"
    samples = SAMPLE_RATE * ms // 1000
    return b"".join(
        ((data[i % len(data)] - 128) * 256).to_bytes(2, "little", signed=True)
        for i in range(samples)
    )


@attrs.frozen
class FakeToolCall:
    """A scripted tool call: the model calls ``name`` with ``parameters``.

    In every session, once ``at`` seconds have passed since it opened *and* the caller has sent
    at least ``after_audio`` binary (audio) frames, the agent speaks ``say`` (s16le 8 kHz PCM,
    paced like ``agent_audio``; empty: nothing) and then sends ``client_tool_invocation`` with
    ``invocationId`` ``inv-<session>-<n>`` (the 1-based session and tool-call numbers). A tool the
    call did not select is not invoked: the fake records an error instead.
    """

    name: str
    parameters: Mapping[str, Any] = attrs.field(factory=dict)
    say: bytes = b""
    at: float = 0.0
    after_audio: int = 0


@attrs.define(eq=False)
class CallRequest:
    """One ``POST /api/calls`` as the fake saw it (``status`` is what it answered)."""

    api_key: str | None
    body: Any
    query: dict[str, str]
    status: int = 0
    call_id: str | None = None
    number: int = 0  # 1-based, in the order the requests arrived (for ``only_session``)

    @property
    def initial_messages(self) -> list[dict[str, Any]]:
        messages = self.body.get("initialMessages") if isinstance(self.body, dict) else None
        return messages if isinstance(messages, list) else []

    @property
    def medium(self) -> dict[str, Any]:
        medium = self.body.get("medium") if isinstance(self.body, dict) else None
        socket = medium.get("serverWebSocket") if isinstance(medium, dict) else None
        return socket if isinstance(socket, dict) else {}

    @property
    def selected_tools(self) -> list[dict[str, Any]]:
        """The ``selectedTools`` of the request, as sent (``[]`` without)."""
        tools = self.body.get("selectedTools") if isinstance(self.body, dict) else None
        return tools if isinstance(tools, list) else []

    @property
    def tool_names(self) -> list[str]:
        """The model tool names of the selected temporary tools, in order."""
        return [
            tool["temporaryTool"]["modelToolName"]
            for tool in self.selected_tools
            if isinstance(tool, dict) and isinstance(tool.get("temporaryTool"), dict)
        ]

    @property
    def first_speaker(self) -> dict[str, Any] | None:
        """The ``firstSpeakerSettings`` of the request (``None`` without)."""
        first = self.body.get("firstSpeakerSettings") if isinstance(self.body, dict) else None
        return first if isinstance(first, dict) else None

    @property
    def greeting(self) -> str | None:
        """The agent's greeting text (``firstSpeakerSettings.agent.text``), if any."""
        agent = (self.first_speaker or {}).get("agent")
        text = agent.get("text") if isinstance(agent, dict) else None
        return text if isinstance(text, str) and text else None


@attrs.define(eq=False)
class UltravoxSession:
    """One joined call's WebSocket, as the fake saw it. Times are ``trio.current_time()``.

    ``audio_in``/``audio_bytes_in`` count the caller's binary frames and bytes received,
    ``audio_out`` the frames played back (the echo). ``agent_audio_out`` holds every byte of
    agent speech sent (``agent_audio``, the greeting, a tool call's ``say``, the answers to tool
    results and user text), in order, in ``agent_frames_out`` frames; ``frames_out`` every
    ``frames_at`` frame sent. ``messages`` are the data messages received, ``sent`` the ones sent.
    ``invocations`` maps each ``invocationId`` sent to its :class:`FakeToolCall` (answered or
    not); ``errors`` lists what the fake refused in this session.
    """

    stream: FaultStream
    opened_at: float
    call_id: str = ""
    path: str = ""
    query: dict[str, str] = attrs.Factory(dict)
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str | None = None
    audio_in: int = 0
    audio_bytes_in: int = 0
    audio_out: int = 0
    dropped: int = 0
    agent_audio_out: bytearray = attrs.field(factory=bytearray, repr=False)
    agent_frames_out: int = 0
    frames_out: list[bytes | str] = attrs.field(factory=list, repr=False)
    messages: list[dict[str, Any]] = attrs.Factory(list)
    invalid: int = 0
    sent: list[dict[str, Any]] = attrs.Factory(list)
    closed: trio.Event = attrs.Factory(trio.Event)
    ws: WebSocketConnection | None = None
    index: int = 0
    invocations: dict[str, FakeToolCall] = attrs.Factory(dict)
    errors: list[str] = attrs.Factory(list)
    _speaking: trio.Lock = attrs.Factory(trio.Lock)
    _greeted: trio.Event = attrs.Factory(trio.Event)  # speeches wait for the greeting
    _answered: set[str] = attrs.Factory(set)
    _audio_waiters: list[tuple[int, trio.Event]] = attrs.Factory(list)
    _ordinal: int = 1  # of the next transcript the fake makes up (set after the script's)

    @property
    def joined_seconds(self) -> float | None:
        """Seconds the WebSocket was open, once it has closed."""
        if self.closed_at is None or not self.is_closed:
            return None
        return self.closed_at - self.opened_at

    @property
    def is_closed(self) -> bool:
        return self.closed.is_set()

    @property
    def hang_ups(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == "hang_up"]

    async def wait_closed(self) -> None:
        """Wait (at most ``WAIT_TIMEOUT``) until the session has closed."""
        with trio.fail_after(WAIT_TIMEOUT):
            await self.closed.wait()

    async def _wait_audio_in(self, count: int) -> None:
        if self.audio_in < count:
            heard = trio.Event()
            self._audio_waiters.append((count, heard))
            await heard.wait()

    def _heard_audio(self) -> None:
        self.audio_in += 1
        if self._audio_waiters:
            waiting = []
            for count, heard in self._audio_waiters:
                if count <= self.audio_in:
                    heard.set()
                else:
                    waiting.append((count, heard))
            self._audio_waiters = waiting


class FakeUltravox:
    """A local Ultravox (REST + WebSocket) for tests and demos.

    Args:
        api_key: the key ``POST /api/calls`` accepts (``X-API-Key``).
        delay: seconds between receiving caller audio and playing it back.
        script: utterances (transcripts) to speak in every session.
        agent_audio: ``(at, pcm)``: ``at`` seconds after a session opened, the agent speaks
            ``pcm`` (s16le mono 8 kHz): binary frames of ``chunk_ms``, one every
            ``chunk_ms / speak_pace`` ms. Speeches never overlap: one waits for the one before.
        chunk_ms: milliseconds of agent audio per binary frame (20 ms: 320 bytes).
        speak_pace: how many times faster than real time agent audio is sent (``math.inf``: all
            at once). A speech of ``n`` frames takes ``n * chunk_ms / speak_pace`` ms.
        clear_at: send ``playback_clear_buffer`` this many seconds after a session opened.
        speech_started_at: send ``playback_clear_buffer`` (Ultravox's barge-in: the caller
            started speaking) at these times, as the other fakes' knob of that name.
        hangup_at: the agent hangs up (close 1000) this many seconds after a session opened, or
            once every ``agent_audio`` speech due by then has been sent, if that is later (a
            goodbye's audio goes out before the hang-up).
        frames_at: fault knob -- ``(seconds, frame)``: send this raw frame (``bytes``: binary,
            ``str``: text) as is, e.g. an odd-length PCM frame.
        close_at: fault knob -- ``(seconds, code)``: drop each session with ``code``.
        close_reason: the close reason sent with ``close_at``.
        stop_reading_at: fault knob -- the session's WebSocket stops reading (no pongs; the
            bridge's sends block) this many seconds after it opened.
        refuse_status: fault knob -- answer every ``POST /api/calls`` (with ``only_session``,
            that one) with this status.
        rest_delay: fault knob -- seconds before ``POST /api/calls`` answers.
        handshake_delay: fault knob -- seconds before the WebSocket handshake is accepted.
        only_session: apply the scripted and fault knobs (not the echo, not the greeting) to the
            call created by the ``only_session``-th ``POST /api/calls`` only (1-based, refused
            ones counted), so one session drops and the resumed one runs healthy.
        close_on_hang_up: end the call (close 1000) when the client sends ``hang_up``.
        queue: chunks waiting to be played back per session; beyond that audio is dropped.
        tool_calls: :class:`FakeToolCall` s the model makes in every session. The answer to a
            ``client_tool_result`` is :func:`speech_for` its ``result`` (or its ``errorType``),
            then one final agent transcript: ``"<name> answered: <result>"`` (or ``"<name>
            failed: <errorType>: <errorMessage>"``); every result is recorded in
            ``tool_results``. A result for an invocation the session never sent, or sent twice, or
            with neither a string ``result`` nor a known ``errorType``, is refused (``errors``).

    A ``user_text_message`` is recorded in ``user_texts`` (``urgency`` must be ``immediate``,
    ``soon`` or ``later`` if given) and answered with :func:`speech_for` its text. A greeting
    (``firstSpeakerSettings.agent.text``) is spoken as :func:`speech_for` it, then a final agent
    transcript of it, right after ``call_started`` and ``state``; other speech waits for it.
    """

    def __init__(
        self,
        api_key: str = "uv-test-key",
        *,
        delay: float = 0.1,
        script: Sequence[Utterance] = (),
        agent_audio: Sequence[tuple[float, bytes]] = (),
        chunk_ms: int = 20,
        speak_pace: float = 5.0,
        clear_at: float | None = None,
        speech_started_at: Sequence[float] = (),
        hangup_at: float | None = None,
        frames_at: Sequence[tuple[float, bytes | str]] = (),
        close_at: tuple[float, int] | None = None,
        close_reason: str = "fake provider closes (fault knob)",
        stop_reading_at: float | None = None,
        refuse_status: int | None = None,
        rest_delay: float = 0.0,
        handshake_delay: float = 0.0,
        only_session: int | None = None,
        close_on_hang_up: bool = True,
        queue: int = 512,
        tool_calls: Sequence[FakeToolCall] = (),
    ) -> None:
        if speak_pace <= 0 or chunk_ms <= 0:
            raise ValueError("speak_pace and chunk_ms must be positive")
        self.api_key = api_key
        self.delay = delay
        self.script = tuple(script)
        self.agent_audio = tuple((at, bytes(pcm)) for at, pcm in agent_audio)
        self.chunk_ms = chunk_ms
        self.speak_pace = speak_pace
        self.clear_at = clear_at
        self.speech_started_at = tuple(speech_started_at)
        self.hangup_at = hangup_at
        self.frames_at = tuple(frames_at)
        self.close_at = close_at
        self.close_reason = close_reason
        self.stop_reading_at = stop_reading_at
        self.refuse_status = refuse_status
        self.rest_delay = rest_delay
        self.handshake_delay = handshake_delay
        self.only_session = only_session
        self.close_on_hang_up = close_on_hang_up
        self.queue = queue
        self.tool_calls = tuple(tool_calls)
        self.tool_results: list[dict[str, Any]] = []
        self.user_texts: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.requests: list[CallRequest] = []
        self.calls: dict[str, CallRequest] = {}
        self.sessions: list[UltravoxSession] = []
        self.base_url: str | None = None
        self.ws_url: str | None = None
        self._changed = trio.Event()

    def __repr__(self) -> str:
        return f"FakeUltravox(base_url={self.base_url!r}, calls={len(self.calls)})"

    # --- serving ------------------------------------------------------------------------------

    async def serve(
        self,
        host: str = "127.0.0.1",
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run both servers on free ports until cancelled.

        ``await nursery.start(fake.serve)`` returns :attr:`base_url` (``http://host:port/api``).
        """
        config = Config()
        config.bind = [f"{host}:0"]
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        config.graceful_timeout = 0.5
        listeners = await trio.open_tcp_listeners(0, host=host)
        try:
            bound = listeners[0].socket.getsockname()
            self.ws_url = f"ws://{bound[0]}:{bound[1]}"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, self.handle_stream, listeners)
                binds = await nursery.start(
                    hypercorn_serve,
                    self.app,
                    config,
                )
                self.base_url = f"{binds[0]}/api"
                task_status.started(self.base_url)
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    async def wait_for_session(self, count: int = 1) -> UltravoxSession:
        """Wait (at most ``WAIT_TIMEOUT``) until ``count`` sessions have opened; return the last."""
        with trio.fail_after(WAIT_TIMEOUT):
            while len(self.sessions) < count:
                await self._changed.wait()
        return self.sessions[count - 1]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def scripted(self, number: int) -> bool:
        """Whether the scripted and fault knobs apply to the call of the ``number``-th
        ``POST /api/calls`` (``only_session``)."""
        return self.only_session is None or self.only_session == number

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
        path = scope["path"].rstrip("/")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        call_id = path.removeprefix("/api/calls/")
        if path.startswith("/api/calls/") and "/" not in call_id:
            if scope["method"] != "GET":
                await _respond(send, 405, {"detail": f'Method "{scope["method"]}" not allowed.'})
                return
            await _respond(send, *self._get_call(headers.get("x-api-key"), call_id))
            return
        if path != "/api/calls":
            await _respond(send, 404, {"detail": "Not found."})
            return
        if scope["method"] != "POST":
            await _respond(send, 405, {"detail": f'Method "{scope["method"]}" not allowed.'})
            return
        try:
            raw = await _read_body(receive)
        except _ClientGone:
            return
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        request = CallRequest(api_key=headers.get("x-api-key"), body=None, query=query)
        self.requests.append(request)
        request.number = len(self.requests)
        if self.rest_delay:
            await trio.sleep(self.rest_delay)
        status, answer = self._create_call(request, raw)
        request.status = status
        self._notify()
        await _respond(send, status, answer)

    def _create_call(self, request: CallRequest, raw: bytes | None) -> tuple[int, dict[str, Any]]:
        if self.refuse_status is not None and self.scripted(request.number):
            return self.refuse_status, {
                "detail": f"refused by the fake (HTTP {self.refuse_status})"
            }
        if request.api_key is None:
            return 401, {"detail": "Authentication credentials were not provided."}
        if request.api_key != self.api_key:
            return 401, {"detail": "Invalid API key."}
        if raw is None:
            return 413, {"detail": "Request body too large."}
        try:
            request.body = json.loads(raw)
        except ValueError:
            return 400, {"detail": "JSON parse error."}
        problem = _invalid(request.body)
        if problem:
            return 400, {"detail": problem}
        call_id = str(uuid.uuid4())
        request.call_id = call_id
        self.calls[call_id] = request
        return 201, self._call(request)

    def _get_call(self, api_key: str | None, call_id: str) -> tuple[int, dict[str, Any]]:
        if api_key is None:
            return 401, {"detail": "Authentication credentials were not provided."}
        if api_key != self.api_key:
            return 401, {"detail": "Invalid API key."}
        request = self.calls.get(call_id)
        if request is None:
            return 404, {"detail": "No Call matches the given query."}
        return 200, self._call(request)

    def _call(self, request: CallRequest) -> dict[str, Any]:
        """The ``Call`` as Ultravox describes it (the fields a bridge may read)."""
        body = request.body if isinstance(request.body, dict) else {}
        session = next((s for s in self.sessions if s.call_id == request.call_id), None)
        seconds = session.joined_seconds if session is not None else None
        ended = None
        if session is not None and seconds is not None:
            if session.hang_ups:
                ended = "hangup"
            elif session.close_reason == "agent hung up":
                ended = "agent_hangup"
            else:
                ended = "connection_error"
        return {
            "callId": request.call_id,
            "created": "2026-01-01T00:00:00Z",
            "joined": _timestamp(session.opened_at) if session is not None else None,
            "ended": _timestamp(session.closed_at) if ended and session is not None else None,
            "endReason": ended,
            "billedDuration": None if seconds is None else f"{round(seconds, 1):.1f}s",
            "billingStatus": "BILLING_STATUS_PENDING" if ended is None else "BILLING_STATUS_BILLED",
            "model": body.get("model", "ultravox-v0.7"),
            "systemPrompt": body.get("systemPrompt"),
            "voice": body.get("voice"),
            "medium": body.get("medium"),
            "firstSpeakerSettings": body.get("firstSpeakerSettings", {"agent": {}}),
            "joinUrl": f"{self.ws_url}/calls/{request.call_id}",
        }

    # --- WebSocket ----------------------------------------------------------------------------

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one WebSocket connection on an already-open byte stream."""
        fault = FaultStream(stream)
        session = UltravoxSession(stream=fault, opened_at=trio.current_time())
        try:
            async with trio.open_nursery() as nursery:
                with trio.move_on_after(HANDSHAKE_TIMEOUT + self.handshake_delay):
                    request = await wrap_server_stream(nursery, fault)
                    parts = urlsplit(request.path)
                    session.path = parts.path
                    session.query = dict(parse_qsl(parts.query))
                    session.call_id = parts.path.rsplit("/", 1)[-1]
                    if not parts.path.startswith("/calls/") or session.call_id not in self.calls:
                        await request.reject(404, body=b"no such call")
                    elif any(s.call_id == session.call_id for s in self.sessions):
                        await request.reject(409, body=b"call already joined")
                    else:
                        if self.scripted(self.calls[session.call_id].number):
                            await trio.sleep(self.handshake_delay)
                        session.ws = await request.accept()
                if session.ws is not None:
                    session.opened_at = trio.current_time()
                    self.sessions.append(session)
                    session.index = len(self.sessions)
                    self._notify()
                    await self._converse(session, session.ws)
                nursery.cancel_scope.cancel()
        except* (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client left (perhaps mid-handshake): nothing more to serve
        except* LocalProtocolError:
            pass  # a ping crossed our close: trio-websocket's pong is refused (its issue #184)
        finally:
            if session.closed_at is None:
                session.closed_at = trio.current_time()
            session.closed.set()
            self._notify()
            await trio.aclose_forcefully(fault)

    async def _converse(self, session: UltravoxSession, ws: WebSocketConnection) -> None:
        playback_in, playback_out = trio.open_memory_channel[tuple[float, bytes]](self.queue)
        session._ordinal = len(self.script) + 1
        greeting = self.calls[session.call_id].greeting
        if greeting is None:
            session._greeted.set()
        scripted = self.scripted(self.calls[session.call_id].number)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._play, session, ws, playback_out)
            if scripted:
                self._schedule(nursery, session, ws)
            await self._send(session, ws, {"type": "call_started", "callId": session.call_id})
            await self._send(session, ws, {"type": "state", "state": "listening"})
            if greeting is not None:
                nursery.start_soon(self._greet, session, ws, greeting)
            try:
                while True:
                    message = await ws.get_message()
                    if isinstance(message, bytes):
                        session._heard_audio()
                        session.audio_bytes_in += len(message)
                        try:
                            playback_in.send_nowait((trio.current_time() + self.delay, message))
                        except trio.WouldBlock:
                            session.dropped += 1
                    else:
                        await self._on_data(session, ws, message, nursery)
            except ConnectionClosed as exc:
                record_close(session, exc)
            finally:
                nursery.cancel_scope.cancel()

    def _schedule(
        self, nursery: trio.Nursery, session: UltravoxSession, ws: WebSocketConnection
    ) -> None:
        """Start the scripted and fault knobs of one session."""
        for number, tool_call in enumerate(self.tool_calls, start=1):
            nursery.start_soon(self._invoke, session, ws, tool_call, number)
        for ordinal, utterance in enumerate(self.script, start=1):
            nursery.start_soon(self._speak, session, ws, utterance, ordinal)
        before_hangup: list[trio.Event] = []
        for at, pcm in self.agent_audio:
            spoken = trio.Event()
            if self.hangup_at is not None and at <= self.hangup_at:
                before_hangup.append(spoken)
            nursery.start_soon(self._say, session, ws, at, pcm, spoken)
        for at, frame in self.frames_at:
            nursery.start_soon(self._at, session, at, partial(self._raw_frame, frame=frame), ws)
        clears = [*([] if self.clear_at is None else [self.clear_at]), *self.speech_started_at]
        for at in clears:
            nursery.start_soon(self._at, session, at, self._clear, ws)
        if self.hangup_at is not None:
            hang_up = partial(self._hang_up, after=before_hangup)
            nursery.start_soon(self._at, session, self.hangup_at, hang_up, ws)
        if self.close_at is not None:
            nursery.start_soon(self._at, session, self.close_at[0], self._drop, ws)
        if self.stop_reading_at is not None:
            nursery.start_soon(self._at, session, self.stop_reading_at, self._stop_reading, ws)

    async def _on_data(
        self,
        session: UltravoxSession,
        ws: WebSocketConnection,
        text: str,
        nursery: trio.Nursery,
    ) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            session.invalid += 1
            return
        session.messages.append(message)
        if message["type"] == "ping":
            await self._send(session, ws, {"type": "pong", "timestamp": message.get("timestamp")})
        elif message["type"] == "hang_up" and self.close_on_hang_up:
            await self._close(session, ws, 1000, "client hung up")
        elif message["type"] == "client_tool_result":
            self.tool_results.append(message)
            answer = self._tool_answer(session, message)
            if answer is not None:
                nursery.start_soon(partial(self._utter, session, ws, *answer))
        elif message["type"] == "user_text_message":
            self.user_texts.append(message)
            said = message.get("text")
            if not isinstance(said, str) or message.get("urgency", "soon") not in _URGENCIES:
                self._error(session, f"malformed user_text_message: {text[:200]}")
            else:
                nursery.start_soon(self._utter, session, ws, speech_for(said))

    def _error(self, session: UltravoxSession, problem: str) -> None:
        session.errors.append(problem)
        self.errors.append(f"session {session.index}: {problem}")

    def _tool_answer(
        self, session: UltravoxSession, message: dict[str, Any]
    ) -> tuple[bytes, str] | None:
        """What the agent says to a ``client_tool_result``: (speech, transcript), or ``None``
        (an error is recorded) when the result is refused."""
        invocation = message.get("invocationId")
        if not isinstance(invocation, str):
            self._error(session, f"client_tool_result without an invocationId: {message}")
            return None
        call = session.invocations.get(invocation)
        if call is None or invocation in session._answered:
            state = "unknown" if call is None else "already answered"
            self._error(session, f"client_tool_result for an {state} invocation {invocation!r}")
            return None
        result, error_type = message.get("result"), message.get("errorType")
        if isinstance(result, str) and error_type is None:
            if message.get("responseType", "tool-response") != "tool-response":
                self._error(session, f"unexpected responseType {message.get('responseType')!r}")
                return None
            session._answered.add(invocation)
            return speech_for(result), f"{call.name} answered: {result}"
        if error_type in _ERROR_TYPES and result is None:
            session._answered.add(invocation)
            error = message.get("errorMessage")
            return speech_for(error_type), f"{call.name} failed: {error_type}: {error}"
        self._error(session, f"client_tool_result needs a string result or an errorType: {message}")
        return None

    async def _play(
        self,
        session: UltravoxSession,
        ws: WebSocketConnection,
        playback: trio.MemoryReceiveChannel[tuple[float, bytes]],
    ) -> None:
        async for due, pcm in playback:
            await trio.sleep_until(due)
            with trio.move_on_after(SEND_TIMEOUT):
                try:
                    await ws.send_message(pcm)
                    session.audio_out += 1
                except ConnectionClosed:
                    return

    async def _at(
        self,
        session: UltravoxSession,
        at: float,
        action: Callable[[UltravoxSession, WebSocketConnection], Awaitable[None]],
        ws: WebSocketConnection,
    ) -> None:
        await trio.sleep_until(session.opened_at + at)
        await action(session, ws)

    async def _speak(
        self, session: UltravoxSession, ws: WebSocketConnection, utterance: Utterance, ordinal: int
    ) -> None:
        await trio.sleep_until(session.opened_at + utterance.at)
        for message in utterance.messages(ordinal):
            await self._send(session, ws, message)
            await trio.sleep(WORD_GAP)

    async def _say(
        self,
        session: UltravoxSession,
        ws: WebSocketConnection,
        at: float,
        pcm: bytes,
        spoken: trio.Event,
    ) -> None:
        """Speak one ``agent_audio`` entry; ``spoken`` is set when it is over (or cut short).

        Every send is bounded (a failed one ends the speech), so waiting for ``spoken`` is too.
        """
        try:
            await trio.sleep_until(session.opened_at + at)
            await self._utter(session, ws, pcm)
        finally:
            spoken.set()

    async def _utter(
        self,
        session: UltravoxSession,
        ws: WebSocketConnection,
        pcm: bytes,
        transcript: str | None = None,
        then: dict[str, Any] | None = None,
    ) -> bool:
        """Take the turn (after the greeting): speak ``pcm``, then send a final agent
        ``transcript`` and the ``then`` message, if given. ``False`` if a send failed."""
        await session._greeted.wait()
        async with session._speaking:
            return await self._turn(session, ws, pcm, transcript, then)

    async def _turn(
        self,
        session: UltravoxSession,
        ws: WebSocketConnection,
        pcm: bytes,
        transcript: str | None = None,
        then: dict[str, Any] | None = None,
    ) -> bool:
        """Speak ``pcm`` in ``chunk_ms`` frames at ``speak_pace``, then ``transcript`` and
        ``then`` (the caller holds the speaking turn)."""
        step = self.chunk_ms * PCM_BYTES_PER_MS
        gap = 0.0 if math.isinf(self.speak_pace) else self.chunk_ms / 1000 / self.speak_pace
        begin = trio.current_time()
        for index, start in enumerate(range(0, len(pcm), step)):
            await trio.sleep_until(begin + index * gap)
            frame = pcm[start : start + step]
            if not await self._send_frame(session, ws, frame):
                return False
            session.agent_audio_out += frame
            session.agent_frames_out += 1
        if gap:  # the last frame's time too: the next speech keeps the pace
            await trio.sleep_until(begin + math.ceil(len(pcm) / step) * gap)
        if transcript is not None:
            final = {
                "type": "transcript",
                "role": "agent",
                "medium": "voice",
                "text": transcript,
                "delta": None,
                "final": True,
                "ordinal": session._ordinal,
            }
            session._ordinal += 1
            await self._send(session, ws, final)
        if then is not None:
            await self._send(session, ws, then)
        return True

    async def _greet(self, session: UltravoxSession, ws: WebSocketConnection, text: str) -> None:
        """Speak the call's greeting before any other speech."""
        try:
            async with session._speaking:
                session._greeted.set()  # the others now queue on the lock, behind the greeting
                await self._turn(session, ws, speech_for(text), text)
        finally:
            session._greeted.set()

    async def _invoke(
        self, session: UltravoxSession, ws: WebSocketConnection, call: FakeToolCall, number: int
    ) -> None:
        """Make one scripted tool call (see :class:`FakeToolCall`)."""
        await trio.sleep_until(session.opened_at + call.at)
        await session._wait_audio_in(call.after_audio)
        selected = self.calls[session.call_id].tool_names
        if call.name not in selected:
            self._error(session, f"tool {call.name!r} is not in selectedTools {selected!r}")
            return
        invocation = f"inv-{session.index}-{number}"
        session.invocations[invocation] = call
        message = {
            "type": "client_tool_invocation",
            "toolName": call.name,
            "invocationId": invocation,
            "parameters": dict(call.parameters),
        }
        await self._utter(session, ws, call.say, then=message)

    async def _raw_frame(
        self, session: UltravoxSession, ws: WebSocketConnection, *, frame: bytes | str
    ) -> None:
        if await self._send_frame(session, ws, frame):
            session.frames_out.append(frame)

    async def _clear(self, session: UltravoxSession, ws: WebSocketConnection) -> None:
        await self._send(session, ws, {"type": "playback_clear_buffer"})

    async def _hang_up(
        self,
        session: UltravoxSession,
        ws: WebSocketConnection,
        *,
        after: Sequence[trio.Event] = (),
    ) -> None:
        for spoken in after:  # set by _say, whose sends are bounded
            await spoken.wait()
        await self._close(session, ws, 1000, "agent hung up")

    async def _drop(self, session: UltravoxSession, ws: WebSocketConnection) -> None:
        assert self.close_at is not None
        await self._close(session, ws, self.close_at[1], self.close_reason)

    async def _stop_reading(self, session: UltravoxSession, ws: WebSocketConnection) -> None:
        session.stream.stop_reading()

    async def _close(
        self, session: UltravoxSession, ws: WebSocketConnection, code: int, reason: str
    ) -> None:
        if session.close_code is None:
            session.close_code, session.close_reason = code, reason
        with trio.move_on_after(SEND_TIMEOUT):
            await ws.aclose(code, reason)

    async def _send_frame(
        self, session: UltravoxSession, ws: WebSocketConnection, frame: bytes | str
    ) -> bool:
        """Send one raw frame (bounded by ``SEND_TIMEOUT``); ``False`` if it could not be sent."""
        with trio.move_on_after(SEND_TIMEOUT):
            try:
                await ws.send_message(frame)
            except ConnectionClosed:
                return False
            return True
        return False

    async def _send(
        self, session: UltravoxSession, ws: WebSocketConnection, message: dict[str, Any]
    ) -> None:
        with trio.move_on_after(SEND_TIMEOUT):
            try:
                await ws.send_message(json.dumps(message, separators=(",", ":")))
                session.sent.append(message)
            except ConnectionClosed:
                pass


def _invalid(body: Any) -> str | None:
    """What is wrong with a ``StartCallRequest`` for an 8 kHz bridge, or ``None``."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    for field in ("systemPrompt", "voice", "model"):
        if field in body and not isinstance(body[field], str):
            return f"{field} must be a string."
    medium = body.get("medium")
    socket = medium.get("serverWebSocket") if isinstance(medium, dict) else None
    if not isinstance(medium, dict) or len(medium) != 1 or not isinstance(socket, dict):
        return "medium must be exactly {'serverWebSocket': {...}}."
    if socket.get("inputSampleRate") != SAMPLE_RATE:
        return f"medium.serverWebSocket.inputSampleRate must be {SAMPLE_RATE}."
    if socket.get("outputSampleRate", SAMPLE_RATE) != SAMPLE_RATE:
        return f"medium.serverWebSocket.outputSampleRate must be {SAMPLE_RATE}."
    buffer = socket.get("clientBufferSizeMs", 60)
    if not isinstance(buffer, int) or isinstance(buffer, bool) or buffer <= 0:
        return "medium.serverWebSocket.clientBufferSizeMs must be a positive integer."
    first = body.get("firstSpeakerSettings")
    if first is not None and (
        not isinstance(first, dict) or len(first) != 1 or next(iter(first)) not in ("agent", "user")
    ):
        return "firstSpeakerSettings must set exactly one of agent or user."
    problem = _invalid_first_speaker(first) or _invalid_messages(body.get("initialMessages", []))
    return problem or _invalid_tools(body.get("selectedTools", []))


def _invalid_first_speaker(first: dict[str, Any] | None) -> str | None:
    """``FirstSpeakerSettings_AgentGreeting`` / ``_UserGreeting`` as far as a bridge sets them."""
    if first is None:
        return None
    settings = next(iter(first.values()))
    allowed = {"uninterruptible", "text", "prompt", "delay"} if "agent" in first else {"fallback"}
    if not isinstance(settings, dict) or not set(settings) <= allowed:
        return f"firstSpeakerSettings.{next(iter(first))} may set only {sorted(allowed)}."
    for field in ("text", "prompt"):
        if field in settings and not isinstance(settings[field], str):
            return f"firstSpeakerSettings.agent.{field} must be a string."
    return None


def _invalid_messages(messages: Any) -> str | None:
    """``initialMessages``: ``ultravox.v1.Message`` objects; each tool result follows the tool
    call of its ``invocationId``."""
    if not isinstance(messages, list):
        return "initialMessages must be a list."
    calls: set[str] = set()
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _MESSAGE_ROLES:
            return f"initialMessages[{i}].role must be one of {sorted(_MESSAGE_ROLES)}."
        if not isinstance(message.get("text"), str):
            return f"initialMessages[{i}].text must be a string."
        if message.get("medium", "MESSAGE_MEDIUM_UNSPECIFIED") not in _MESSAGE_MEDIA:
            return f"initialMessages[{i}].medium is not a MessageMedium."
        role, invocation = message["role"], message.get("invocationId")
        if role in _TOOL_ROLES:
            if not (isinstance(invocation, str) and invocation):
                return f"initialMessages[{i}].invocationId is required for tool messages."
            if not (isinstance(message.get("toolName"), str) and message["toolName"]):
                return f"initialMessages[{i}].toolName is required for tool messages."
            if role == "MESSAGE_ROLE_TOOL_CALL":
                calls.add(invocation)
            elif invocation not in calls:
                return f"initialMessages[{i}] is a tool result without an earlier tool call."
    return None


def _invalid_tools(tools: Any) -> str | None:
    """``selectedTools``: ``SelectedTool`` objects; temporary tools checked as client tools are
    (``BaseToolDefinition``: a model name, a description, body ``dynamicParameters``, one
    implementation, a ``timeout`` of at most 40 s)."""
    if not isinstance(tools, list):
        return "selectedTools must be a list."
    names: set[str] = set()
    for i, selected in enumerate(tools):
        where = f"selectedTools[{i}]"
        if (
            not isinstance(selected, dict)
            or len({"toolId", "toolName", "temporaryTool"} & set(selected)) != 1
        ):
            return f"{where} must set exactly one of toolId, toolName or temporaryTool."
        tool = selected.get("temporaryTool")
        if tool is None:
            continue
        if not isinstance(tool, dict):
            return f"{where}.temporaryTool must be an object."
        name = tool.get("modelToolName")
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
            return f"{where}.temporaryTool.modelToolName must match ^[a-zA-Z0-9_-]{{1,64}}$."
        if name in names:
            return f"{where}: the model tool name {name!r} is used twice."
        names.add(name)
        if not isinstance(tool.get("description"), str):
            return f"{where}.temporaryTool.description must be a string."
        implementations = {"http", "client", "dataConnection"} & set(tool)
        if len(implementations) != 1:
            return f"{where}.temporaryTool must set exactly one implementation."
        client = "client" in implementations
        if client and tool["client"] != {}:
            return f"{where}.temporaryTool.client must be {{}}."
        timeout = tool.get("timeout")
        if timeout is not None and not (
            isinstance(timeout, str) and _DURATION.fullmatch(timeout) and float(timeout[:-1]) <= 40
        ):
            return f"{where}.temporaryTool.timeout must be a duration of at most 40s."
        parameters = tool.get("dynamicParameters", [])
        if not isinstance(parameters, list):
            return f"{where}.temporaryTool.dynamicParameters must be a list."
        for j, parameter in enumerate(parameters):
            at = f"{where}.temporaryTool.dynamicParameters[{j}]"
            if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
                return f"{at}.name must be a string."
            if parameter.get("location") not in _LOCATIONS:
                return f"{at}.location is not a ParameterLocation."
            if client and parameter["location"] != "PARAMETER_LOCATION_BODY":
                return f"{at}: client tools take body parameters only."
            if not isinstance(parameter.get("schema"), dict):
                return f"{at}.schema must be an object."
            if not isinstance(parameter.get("required", False), bool):
                return f"{at}.required must be a boolean."
    return None


def _timestamp(at: float | None) -> str | None:
    """A trio time as the fake's wall-clock ISO timestamp (trio time 0 is :data:`EPOCH`)."""
    if at is None:
        return None
    return (EPOCH + timedelta(seconds=at)).isoformat().replace("+00:00", "Z")


async def _read_body(receive: Receive) -> bytes | None:
    """The request body; ``None`` when it is larger than ``MAX_BODY``.

    Raises:
        _ClientGone: the client disconnected before sending all of it.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            message = await receive()
        if message["type"] != "http.request":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class _ClientGone(Exception):
    pass


async def _respond(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
