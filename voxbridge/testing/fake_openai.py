"""A local OpenAI Realtime (GA): a real WebSocket server that speaks the protocol as the service does.

It serves trio-websocket on a :class:`~voxbridge.testing.FaultStream`-wrapped stream (real TCP on
loopback via :meth:`FakeOpenAIRealtime.serve`, or any ``trio.abc.Stream`` via
:meth:`FakeOpenAIRealtime.handle_stream` for in-memory tests). Every server event it sends is shaped
as the service sends it (``event_id``, ``response_id``, ``item_id``, ``output_index``,
``content_index``, ...): ``tests/test_fake_openai.py`` validates them against the ``openai``
package's ``RealtimeServerEvent`` union.

What it does for a bridge:

* ``session.created`` on connect; ``session.update`` is checked the way the GA service checks it (a
  ``session.type``; no beta-only or unknown field; one output modality; function tools with valid,
  distinct names) and answered with ``session.updated`` carrying the effective configuration, or
  with an ``error``.
* ``conversation.item.create`` -> ``conversation.item.added`` + ``conversation.item.done`` (GA
  content types per role checked; a ``function_call_output`` whose ``call_id`` the conversation
  does not hold is refused, as the service refuses it); ``conversation.item.truncate`` ->
  ``conversation.item.truncated``, or an ``error`` for an unknown item or a position past the audio
  sent; ``response.cancel``, ``input_audio_buffer.commit`` / ``clear`` answered as the service
  does; unknown types -> ``error``.
* ``response.create`` -> a spoken response whose words follow from what it answers: the greeting
  its ``response.instructions`` ask for, :func:`tool_answer` of a tool result, :func:`text_answer`
  of a user text message (key presses); the audio is :func:`speech` of the words, which
  :func:`heard_text` reads back from what a caller heard. While a response is active it gets the
  ``conversation_already_has_active_response`` error instead, as from the service.
* Tool calls (``tool_calls``): after the caller's k-th transcript, a response that may speak and
  then calls a declared function (``response.function_call_arguments.*`` and the
  ``function_call`` item in ``response.done``).
* Usage: every ``response.done`` carries a ``usage`` object computed by a fixed rule
  (``FakeOpenAIRealtime._usage``), kept in ``ResponseRecord.usage`` and summed by
  :meth:`FakeOpenAIRealtime.usage_totals`.
* Echo mode (``echo_delay``): each ``input_audio_buffer.append`` comes back ``echo_delay`` seconds
  later as a ``response.output_audio.delta`` (item ``item_echo``; after each ``speech_started``
  a new item and response, ``item_echo_2`` ..., as an agent answers each caller turn anew) -- what
  :class:`FakeEchoAgent` is.
* Scripted agent turns (``speak``): a full response -- ``response.created``, the output item and
  ``conversation.item.added``, the content part, 20 ms ``response.output_audio.delta`` chunks sent
  *faster than real time* (``speak_pace``, as the real service bursts), then the ``.done`` events,
  the transcript and ``response.done``. ``input_audio_buffer.speech_started`` during a turn cancels
  it as server VAD does (``response.done`` with status ``cancelled``, reason ``turn_detected``);
  so does a client ``response.cancel`` (reason ``client_cancelled``; one naming another
  ``response_id`` than the turn in progress gets the ``response_cancel_not_active`` error).
* Fault knobs: ``refuse_status``, ``handshake_delay``, ``close_at``, ``stop_reading_at``, ``flood``,
  ``error_at``, ``session_expired_at`` (the 60-minute limit: ``error`` ``session_expired``, then
  close 1001), ``late_chunks`` (audio already in flight: a cancelled turn still sends that many
  deltas of its item before its ``.done`` events), ``corrupt_deltas`` (the k-th audio delta of a
  session carries the given text instead of its base64) and ``events_at`` (any raw server event
  at a given time). ``only_session=k`` applies the scripted and fault knobs to the k-th connection
  only, so a test can drop one session and let the resumed one run healthy.

Each accepted connection is recorded as an :class:`AgentSession` (open/close times and code, every
client event received, the truncates, item creates and ``session.update`` events, the responses
made, the tool outputs, user texts and greetings answered), so a test checks *from the provider's
side* what the bridge did.

Every wait here is bounded: a fake that hangs would hide the bugs it exists to find.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from types import MappingProxyType
from typing import Any

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream
from wsproto.utilities import LocalProtocolError

from ..audio import BYTES_PER_MS, b64_size
from ..providers.endpoint import ProviderEndpoint
from ..providers.openai_realtime import GREETING_PROMPT, OPENAI_MODEL, openai_endpoint
from .faults import FaultStream, record_close

__all__ = [
    "GENERIC_ANSWER",
    "SPEECH_BYTES",
    "AgentSession",
    "FakeOpenAIRealtime",
    "FakeToolCall",
    "FunctionCallRecord",
    "ResponseRecord",
    "heard_text",
    "speech",
    "text_answer",
    "tool_answer",
]

HANDSHAKE_TIMEOUT = 10.0
SEND_TIMEOUT = 5.0
SILENCE = b"\xff"  # mu-law silence
ECHO_ITEM = "item_echo"
ECHO_RESPONSE = "resp_echo"
SESSION_EXPIRED_MESSAGE = "Your session hit the maximum duration of 60 minutes."

#: Mu-law bytes per UTF-8 byte of a text the fake says (2 ms): see :func:`speech`.
SPEECH_BYTES = 16
#: What the fake says to a ``response.create`` that answers nothing in particular.
GENERIC_ANSWER = "How can I help?"
ALREADY_ACTIVE = "conversation_already_has_active_response"

Event = dict[str, Any]
Send = Callable[[Event], Awaitable[bool]]


def speech(text: str) -> bytes:
    """The mu-law audio the fake sends when it says ``text``: each UTF-8 byte of ``text``
    repeated :data:`SPEECH_BYTES` times (2 ms a byte; never ``0xff``, mu-law silence).

    Deterministic and invertible, so a test can tell from the caller's side what was said:
    :func:`heard_text`.
    """
    return bytes(byte for byte in text.encode("utf-8") for _ in range(SPEECH_BYTES))


def heard_text(audio: bytes) -> str:
    """The text whose :func:`speech` ``audio`` is (or starts with, for audio cut short); bytes
    that are not UTF-8 become U+FFFD."""
    return audio[::SPEECH_BYTES].decode("utf-8", "replace")


def tool_answer(output: str) -> str:
    """What the fake says (and its transcript) when it answers a tool result ``output``."""
    return f"The result is {output}"


def text_answer(text: str) -> str:
    """What the fake says (and its transcript) when it answers a user text message ``text``
    (the bridge's key presses)."""
    return f"Noted: {text}"


@attrs.frozen(eq=False)
class FakeToolCall:
    """A tool call the fake's model makes (the ``tool_calls`` knob).

    After the caller's ``after_turn``-th turn -- the ``after_turn``-th caller transcript the session
    sends (``caller_transcripts``: the fake hears the caller only through them) -- the fake
    answers with one response: ``say`` (mu-law audio, optional, with ``transcript``) as an
    assistant message, then a ``function_call`` output item calling ``name`` with ``arguments``.

    Args:
        name: the function called; it must be declared in ``session.update`` ``tools``, else the
            fake sends an ``error`` (code ``tool_not_declared``) instead of the response.
        arguments: a dict, sent as its compact JSON text, or a ``str`` sent as is (malformed
            arguments for a test).
        say: audio spoken before the call (none: the response is the call alone).
        after_turn: the caller turn (1-based) it follows.
        transcript: the transcript of ``say``.
        call_id: the ``call_id``; ``None``: ``call_<session>_<n>``.
    """

    name: str
    arguments: Mapping[str, Any] | str = attrs.field(factory=dict)
    say: bytes = b""
    after_turn: int = 1
    transcript: str = ""
    call_id: str | None = None

    @property
    def arguments_text(self) -> str:
        """The ``arguments`` as sent."""
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(dict(self.arguments), separators=(",", ":"))


@attrs.define(eq=False)
class FunctionCallRecord:
    """The ``function_call`` output item of a response (see :class:`FakeToolCall`). ``sent`` is
    false when the response was cancelled before the call went out."""

    item_id: str
    call_id: str
    name: str
    arguments: str
    sent: bool = False


# What a GA ``session.update`` may name (RealtimeSessionCreateRequest and its audio config).
_SESSION_KEYS = frozenset(
    {
        "type",
        "model",
        "output_modalities",
        "audio",
        "instructions",
        "include",
        "max_output_tokens",
        "prompt",
        "tool_choice",
        "tools",
        "tracing",
        "truncation",
        "reasoning",
        "parallel_tool_calls",
    }
)
_AUDIO_KEYS = {
    "input": frozenset({"format", "noise_reduction", "transcription", "turn_detection"}),
    "output": frozenset({"format", "speed", "voice"}),
}
_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
# GA content part types a client may create, per message role.
_CONTENT_TYPES = {
    "system": frozenset({"input_text"}),
    "user": frozenset({"input_text", "input_audio", "input_image"}),
    "assistant": frozenset({"output_text"}),
}
# Client events the GA service knows; the ones the fake does not act on are only recorded.
_CLIENT_EVENTS = frozenset(
    {
        "session.update",
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
        "input_audio_buffer.clear",
        "output_audio_buffer.clear",
        "conversation.item.create",
        "conversation.item.retrieve",
        "conversation.item.truncate",
        "conversation.item.delete",
        "response.create",
        "response.cancel",
    }
)


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    """Deep-merge ``update`` into ``into``: only the fields present are updated.

    An object of another ``type`` (an audio format, a turn detection mode) replaces the old one.
    """
    for key, value in update.items():
        old = into.get(key)
        if (
            isinstance(value, dict)
            and isinstance(old, dict)
            and value.get("type") == old.get("type")
        ):
            _merge(old, value)
        else:
            into[key] = value


@attrs.define(eq=False)
class ResponseRecord:
    """One response the fake made (a scripted turn, a tool call, an answer to a
    ``response.create``; see ``trigger``). Times are ``trio.current_time()``."""

    response_id: str
    item_id: str
    started_at: float
    audio: bytes
    transcript: str
    sent_bytes: int = 0
    deltas: int = 0
    finished_at: float | None = None
    status: str = "in_progress"  # completed | cancelled | failed
    reason: str | None = None  # turn_detected | client_cancelled, once cancelled
    cancelled_at: float | None = None  # when the cancel arrived
    late_deltas: int = 0  # deltas sent after the cancel (``late_chunks``), counted in ``deltas``
    interrupted: trio.Event = attrs.Factory(trio.Event)
    #: what made it: speak, flood, tool_call, tool_answer, text_answer, greeting, generic
    trigger: str = "speak"
    #: False for a response that is a function call alone (``item_id`` is then the call's item)
    message: bool = True
    function_call: FunctionCallRecord | None = None
    #: The usage its ``response.done`` carried, as voxbridge's kinds (every kind, zeros too);
    #: ``None`` until that event was sent.
    usage: dict[str, int] | None = None

    @property
    def sent_ms(self) -> int:
        return self.sent_bytes // BYTES_PER_MS

    def cancel(self, reason: str) -> None:
        """Stop the turn before its next chunk (never in the middle of a send), or after the
        ``late_chunks`` already in flight. The first cancel's reason and time are kept."""
        if self.reason is None:
            self.reason = reason
            self.cancelled_at = trio.current_time()
        self.interrupted.set()


@attrs.define(eq=False)
class AgentSession:
    """One provider-side WebSocket, as the fake saw it. Times are ``trio.current_time()``.

    ``opened_at`` is when the connection arrived, ``accepted_at`` when the WebSocket handshake
    completed (the scripted times count from there). ``events_in`` holds the client events received
    (parsed, the first ``record_limit`` of them; ``events_in_at`` their arrival times); ``truncates``,
    ``items_created`` and ``session_updates`` hold every event of those types. ``config`` is the
    effective session configuration. ``corrupted`` lists ``(k, item_id)`` for each audio delta
    sent with a ``corrupt_deltas`` text (k: its 1-based number among the session's audio deltas);
    the records of audio sent (``ResponseRecord.sent_bytes``, ``items``) count its real audio.

    ``tool_outputs`` (``(call_id, output)``), ``user_texts`` and ``greetings`` list what each
    ``response.create`` of the session answered (see :class:`FakeOpenAIRealtime`);
    ``caller_turns`` counts the caller transcripts sent; ``call_ids`` are the function calls the
    conversation holds (the fake's own and those the client created); ``text_in_bytes`` is the
    UTF-8 size of the text the client put in the conversation (for the usage rule).
    """

    stream: FaultStream
    opened_at: float
    number: int = 0
    path: str = ""
    headers: dict[str, str] = attrs.Factory(dict)
    accepted_at: float | None = None
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str | None = None
    frames_in: int = 0
    audio_in: int = 0
    audio_in_bytes: int = 0
    audio_out: int = 0
    dropped: int = 0
    session_updates: list[dict[str, Any]] = attrs.Factory(list)
    events_in: list[dict[str, Any]] = attrs.Factory(list)
    events_in_at: list[float] = attrs.Factory(list)
    events_out: list[dict[str, Any]] = attrs.Factory(list)
    truncates: list[dict[str, Any]] = attrs.Factory(list)
    items_created: list[dict[str, Any]] = attrs.Factory(list)
    errors_sent: list[dict[str, Any]] = attrs.Factory(list)
    corrupted: list[tuple[int, str]] = attrs.Factory(list)
    speech_started_at: list[float] = attrs.Factory(list)
    responses: list[ResponseRecord] = attrs.Factory(list)
    config: dict[str, Any] = attrs.Factory(dict)
    items: dict[str, int] = attrs.Factory(dict)  # conversation item id -> ms of audio sent
    current: ResponseRecord | None = None
    closed: trio.Event = attrs.Factory(trio.Event)
    ws: WebSocketConnection | None = None
    _ids: int = 0
    _last_item: str | None = None
    echo_turn: int = 1  # the echo answers each caller turn (each speech_started) with a new item
    _buffered_bytes: int = 0
    _audio_deltas: int = 0  # audio deltas sent so far (echo and turns), for ``corrupt_deltas``
    _corrupt: Mapping[int, str] = attrs.Factory(dict)
    _speaking: trio.Lock = attrs.Factory(trio.Lock)
    tool_outputs: list[tuple[str, str]] = attrs.Factory(list)
    user_texts: list[str] = attrs.Factory(list)
    greetings: list[str] = attrs.Factory(list)
    caller_turns: int = 0
    call_ids: set[str] = attrs.Factory(set)
    text_in_bytes: int = 0
    _last_created: dict[str, Any] | None = None  # the last item created since a response.create
    _reserved: int = 0  # accepted response.create turns not yet started
    _last_input_tokens: int = 0  # the previous response's input tokens: the cached prefix
    _nursery: trio.Nursery | None = None
    _calls: int = 0

    @property
    def active(self) -> str | None:
        """The id of the response in progress (or about to start), if any."""
        if self.current is not None:
            return self.current.response_id
        return "resp_pending" if self._reserved else None

    @property
    def echo_ids(self) -> tuple[str, str]:
        """The echo's current ``(item_id, response_id)``: ``item_echo``/``resp_echo``, then
        ``item_echo_2``/``resp_echo_2`` after the first ``speech_started``, and so on."""
        if self.echo_turn == 1:
            return ECHO_ITEM, ECHO_RESPONSE
        return f"{ECHO_ITEM}_{self.echo_turn}", f"{ECHO_RESPONSE}_{self.echo_turn}"

    @property
    def is_closed(self) -> bool:
        return self.closed.is_set()

    def next_call_id(self) -> str:
        """``call_<session>_<k>`` for the session's k-th tool call."""
        self._calls += 1
        return f"call_{self.number}_{self._calls}"

    def next_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}_{self.number}_{self._ids}"


class FakeOpenAIRealtime:
    """A local OpenAI Realtime GA service with behaviour and fault knobs.

    Times (``speak``, ``*_at``) are seconds after the session's WebSocket opened.

    Args:
        echo_delay: echo each appended chunk back as an audio delta this many seconds later
            (``None``: no echo).
        queue: echo chunks waiting per session; beyond that audio is dropped (counted in
            ``AgentSession.dropped``), never queued without bound.
        speak: ``(at, mulaw_audio)`` or ``(at, mulaw_audio, transcript)``: the agent speaks at
            ``at`` (turns never overlap: a turn waits for the previous one, and turns due at the
            same time play in the order given).
        speak_pace: how many times faster than real time a turn's chunks are sent
            (``math.inf``: all at once).
        chunk_ms: milliseconds of audio per delta.
        speech_started_at: send ``input_audio_buffer.speech_started`` at these times (cancelling
            a turn in progress, as server VAD with ``interrupt_response`` does).
        late_chunks: audio already in flight when a turn is cancelled (``speech_started`` or a
            client ``response.cancel``): the turn still sends this many more deltas of its item,
            at its normal pace, before it stops and sends its ``.done`` events (status
            ``cancelled``). Real services do; it is the input for late audio after a barge-in.
        caller_transcripts: ``(at, text)``: send
            ``conversation.item.input_audio_transcription.completed``.
        refuse_status: reject the WebSocket handshake with this HTTP status.
        handshake_delay: wait this long before accepting the handshake.
        api_key: when set, reject (401) handshakes without ``Authorization: Bearer <api_key>``.
        close_at: ``(at, code)``: close the WebSocket with ``code``.
        close_reason: the close reason sent with ``close_at``.
        stop_reading_at: the connection stops reading (no pongs; the bridge's sends block).
        flood: send this many 20 ms audio deltas as one turn, as fast as possible, at open.
        error_at: ``(at, code, message)``: send an ``error`` event.
        session_expired_at: send the ``session_expired`` error, then close with 1001.
        corrupt_deltas: ``{k: text}``: the k-th ``response.output_audio.delta`` of a session
            (1-based, counting every audio delta it sends, turns and echo alike) carries ``text``
            as its ``delta`` instead of the real base64 (``{3: "QUJ"}``: bad padding; ``{1:
            "@@@@"}``: not base64). The fake believes it sent the real audio: the records count
            it. A fault knob: with ``only_session``, the other sessions send every delta intact.
        events_at: ``(at, event)``: send this raw server event (JSON-encoded as given, an
            ``event_id`` added if it has none): provider input no other knob produces. Events due
            at the same time go out in the order given.
        tool_calls: :class:`FakeToolCall` list: after the caller's ``after_turn``-th turn (its
            ``after_turn``-th ``caller_transcripts`` entry), a response that says ``say`` and
            calls the tool. Calls due after the same turn are separate responses, in the order
            given.
        only_session: apply the scripted and fault knobs above (not the echo) to the
            ``only_session``-th connection only (1-based, counting refused ones).
        model: the model named by :meth:`endpoint` and in the initial session configuration.
        record_limit: client (and server) events kept per session in ``events_in``
            (``events_out``); the typed lists are never capped.
    """

    endpoint_name = "openai"

    def __init__(
        self,
        *,
        echo_delay: float | None = None,
        queue: int = 512,
        speak: Sequence[tuple[float, bytes] | tuple[float, bytes, str]] = (),
        speak_pace: float = 5.0,
        chunk_ms: int = 20,
        speech_started_at: Sequence[float] = (),
        late_chunks: int = 0,
        caller_transcripts: Sequence[tuple[float, str]] = (),
        refuse_status: int | None = None,
        handshake_delay: float = 0.0,
        api_key: str | None = None,
        close_at: tuple[float, int] | None = None,
        close_reason: str = "fake provider closes (fault knob)",
        stop_reading_at: float | None = None,
        flood: int = 0,
        error_at: tuple[float, str, str] | None = None,
        session_expired_at: float | None = None,
        corrupt_deltas: Mapping[int, str] = MappingProxyType({}),
        events_at: Sequence[tuple[float, Mapping[str, Any]]] = (),
        tool_calls: Sequence[FakeToolCall] = (),
        only_session: int | None = None,
        model: str = OPENAI_MODEL,
        record_limit: int = 1000,
    ) -> None:
        if speak_pace <= 0 or chunk_ms <= 0:
            raise ValueError("speak_pace and chunk_ms must be positive")
        if late_chunks < 0:
            raise ValueError("late_chunks must not be negative")
        if any(k < 1 for k in corrupt_deltas):
            raise ValueError("corrupt_deltas counts audio deltas from 1")
        if any(call.after_turn < 1 for call in tool_calls):
            raise ValueError("tool_calls count caller turns from 1 (after_turn)")
        self.echo_delay = echo_delay
        self.queue = queue
        self.speak = list(speak)
        self.speak_pace = speak_pace
        self.chunk_ms = chunk_ms
        self.speech_started_at = list(speech_started_at)
        self.late_chunks = late_chunks
        self.caller_transcripts = list(caller_transcripts)
        self.refuse_status = refuse_status
        self.handshake_delay = handshake_delay
        self.api_key = api_key
        self.close_at = close_at
        self.close_reason = close_reason
        self.stop_reading_at = stop_reading_at
        self.flood = flood
        self.error_at = error_at
        self.session_expired_at = session_expired_at
        self.corrupt_deltas = dict(corrupt_deltas)
        self.events_at = [(when, copy.deepcopy(dict(event))) for when, event in events_at]
        self.tool_calls = list(tool_calls)
        self.only_session = only_session
        self.model = model
        self.record_limit = record_limit
        self.sessions: list[AgentSession] = []
        #: What the ``response.create`` events of every session answered, in order (each
        #: session also keeps its own): tool results ``(call_id, output)``, user text messages
        #: (key presses), greetings (the text the model was asked to say).
        self.tool_outputs: list[tuple[str, str]] = []
        self.user_texts: list[str] = []
        self.greetings: list[str] = []
        self.refused: list[AgentSession] = []
        self.connections = 0
        self.url: str | None = None
        self._session_opened = trio.Event()

    def scripted(self, number: int) -> bool:
        """Whether the scripted and fault knobs apply to connection ``number``."""
        return self.only_session is None or self.only_session == number

    def usage_totals(self) -> dict[str, int]:
        """The usage of every ``response.done`` sent, all sessions, summed per voxbridge kind
        (``input_text_tokens``, ...); kinds that total 0 are left out, as voxbridge's codec
        leaves zero counts out. Compare with a call's metered usage."""
        totals: dict[str, int] = {}
        for session in self.sessions:
            for record in session.responses:
                for kind, amount in (record.usage or {}).items():
                    totals[kind] = totals.get(kind, 0) + amount
        return {kind: amount for kind, amount in totals.items() if amount}

    # --- serving ------------------------------------------------------------------------------

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (0 = any free port) until cancelled.

        ``await nursery.start(fake.serve)`` returns the ``ws://`` URL to connect to.
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()
        self.url = f"ws://{bound[0]}:{bound[1]}/v1/realtime"
        task_status.started(self.url)
        await trio.serve_listeners(self.handle_stream, listeners)

    def endpoint(self) -> ProviderEndpoint:
        """The endpoint a bridge uses to reach this fake (after :meth:`serve` started)."""
        if self.url is None:
            raise RuntimeError(f"{type(self).__name__}.serve() has not started")
        return openai_endpoint(self.url, self.api_key, model=self.model, name=self.endpoint_name)

    async def wait_for_session(self, count: int = 1) -> AgentSession:
        """Wait until at least ``count`` sessions have opened; return the ``count``-th.

        The caller bounds this wait (``trio.fail_after``): only it knows how long is too long.
        """
        while len(self.sessions) < count:
            await self._session_opened.wait()
        return self.sessions[count - 1]

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection on an already-open byte stream (TCP or in-memory)."""
        self.connections += 1
        number = self.connections
        scripted = self.scripted(number)
        delay = self.handshake_delay if scripted else 0.0
        fault = FaultStream(stream)
        session = AgentSession(stream=fault, opened_at=trio.current_time(), number=number)
        try:
            await self._serve_one(stream, fault, session, scripted, delay)
        except* (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client left (perhaps mid-handshake): nothing more to serve
        except* LocalProtocolError:
            pass  # a ping crossed our close: trio-websocket's pong is refused (its issue #184)
        finally:
            if session.closed_at is None:
                session.closed_at = trio.current_time()
            session.closed.set()
            await trio.aclose_forcefully(fault)

    async def _serve_one(
        self,
        stream: trio.abc.Stream,
        fault: FaultStream,
        session: AgentSession,
        scripted: bool,
        delay: float,
    ) -> None:
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(HANDSHAKE_TIMEOUT + delay):
                request = await wrap_server_stream(nursery, fault)
                session.path = request.path
                session.headers = {
                    k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers
                }
                status = self._refusal(session, scripted)
                if status is not None:
                    self.refused.append(session)
                    body = {"error": {"type": "invalid_request_error", "code": str(status)}}
                    await request.reject(
                        status,
                        extra_headers=[(b"content-type", b"application/json")],
                        body=json.dumps(body).encode(),
                    )
                else:
                    if delay > 0:
                        await trio.sleep(delay)
                    session.ws = await request.accept()
            if session.ws is not None:
                session.accepted_at = trio.current_time()
                self.sessions.append(session)
                self._session_opened.set()
                self._session_opened = trio.Event()
                await self._converse(session, session.ws, scripted)
            nursery.cancel_scope.cancel()

    def _refusal(self, session: AgentSession, scripted: bool) -> int | None:
        if scripted and self.refuse_status is not None:
            return self.refuse_status
        authorization = session.headers.get("authorization")
        if self.api_key is not None and authorization != f"Bearer {self.api_key}":
            return 401
        return None

    # --- one session --------------------------------------------------------------------------

    async def _converse(
        self, session: AgentSession, ws: WebSocketConnection, scripted: bool
    ) -> None:
        assert session.accepted_at is not None
        t0 = session.accepted_at
        session.config = self._initial_config(session)
        if scripted:
            session._corrupt = self.corrupt_deltas
        send: Send = partial(self._send, session, ws)
        playback_in, playback_out = trio.open_memory_channel[tuple[float, str]](self.queue)
        async with trio.open_nursery() as nursery:
            session._nursery = nursery  # for the responses a response.create starts
            if self.echo_delay is not None:
                nursery.start_soon(self._play, send, playback_out, session)
            created = {"type": "session.created", "event_id": self._event_id(session)}
            await send({**created, "session": copy.deepcopy(session.config)})
            if scripted:  # times count from t0, however long session.created took to send
                self._schedule(nursery, session, ws, send, t0)
            try:
                while True:
                    message = await ws.get_message()
                    session.frames_in += 1
                    await self._receive(session, send, message, playback_in)
            except ConnectionClosed as exc:
                record_close(session, exc)
            finally:
                nursery.cancel_scope.cancel()

    def _schedule(
        self,
        nursery: trio.Nursery,
        session: AgentSession,
        ws: WebSocketConnection,
        send: Send,
        t0: float,
    ) -> None:
        def at(when: float, action: Callable[[], Awaitable[object]]) -> None:
            async def run() -> None:
                await trio.sleep_until(t0 + when)
                await action()

            nursery.start_soon(run)

        async def stop_reading() -> None:
            session.stream.stop_reading()

        if self.flood > 0:
            audio = SILENCE * (self.flood * 20 * BYTES_PER_MS)
            at(0.0, partial(self._turn, session, send, audio, "", math.inf, 20))

        async def speak() -> None:  # in order: turns due together play in the order given
            for when, audio, *said in sorted(self.speak, key=lambda turn: turn[0]):
                await trio.sleep_until(t0 + when)
                transcript = str(said[0]) if said else f"agent turn at {when:g}s"
                await self._turn(session, send, audio, transcript)

        if self.speak:
            nursery.start_soon(speak)
        for when in self.speech_started_at:
            at(when, partial(self._speech_started, session, send))
        for when, text in self.caller_transcripts:
            at(when, partial(self._caller_transcript, session, send, text))
        if self.error_at is not None:
            when, code, text = self.error_at
            at(when, partial(self._error, session, send, code, text))
        if self.stop_reading_at is not None:
            at(self.stop_reading_at, stop_reading)
        if self.close_at is not None:
            when, close_code = self.close_at
            at(when, partial(self._close, session, ws, close_code, self.close_reason))
        if self.session_expired_at is not None:
            at(self.session_expired_at, partial(self._expire, session, ws, send))

        async def inject() -> None:  # in order: events due together go out in the order given
            for when, event in sorted(self.events_at, key=lambda entry: entry[0]):
                await trio.sleep_until(t0 + when)
                await self._raw_event(session, send, event)

        if self.events_at:
            nursery.start_soon(inject)

    # --- client events ------------------------------------------------------------------------

    async def _receive(
        self,
        session: AgentSession,
        send: Send,
        message: str | bytes,
        playback: trio.MemorySendChannel[tuple[float, str]],
    ) -> None:
        if isinstance(message, bytes):
            await self._error(session, send, "invalid_message", "Binary frames are not supported.")
            return
        try:
            event = json.loads(message)
        except ValueError:
            await self._error(session, send, "invalid_json", "The server could not parse the JSON.")
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            await self._error(session, send, "invalid_value", "Events must have a string 'type'.")
            return
        if len(session.events_in) < self.record_limit:
            session.events_in.append(event)
            session.events_in_at.append(trio.current_time())
        kind = event["type"]
        client_event = event.get("event_id")
        client_event = client_event if isinstance(client_event, str) else None
        error = partial(self._error, session, send, event_id=client_event)
        if kind == "input_audio_buffer.append":
            audio = event.get("audio")
            if not isinstance(audio, str):
                await error("missing_required_parameter", "Missing 'audio'.", param="audio")
                return
            session.audio_in += 1
            size = b64_size(audio)
            session.audio_in_bytes += size
            session._buffered_bytes += size
            if self.echo_delay is not None:
                try:
                    playback.send_nowait((trio.current_time() + self.echo_delay, audio))
                except trio.WouldBlock:
                    session.dropped += 1
        elif kind == "session.update":
            session.session_updates.append(event)
            await self._session_update(session, send, event, error)
        elif kind == "conversation.item.create":
            session.items_created.append(event)
            await self._item_create(session, send, event, error)
        elif kind == "conversation.item.truncate":
            session.truncates.append(event)
            await self._truncate(session, send, event, error)
        elif kind == "response.create":
            await self._response_create(session, send, event, error)
        elif kind == "response.cancel":
            current, named = session.current, event.get("response_id")
            if current is None or (named is not None and named != current.response_id):
                await error(
                    "response_cancel_not_active",
                    "Cancellation failed: no active response found.",
                    param=None if named is None else "response_id",
                )
            else:
                current.cancel("client_cancelled")
        elif kind == "input_audio_buffer.clear":
            session._buffered_bytes = 0
            await send({"type": "input_audio_buffer.cleared", "event_id": self._event_id(session)})
        elif kind == "input_audio_buffer.commit":
            if session._buffered_bytes < 100 * BYTES_PER_MS:
                ms = session._buffered_bytes / BYTES_PER_MS
                await error(
                    "input_audio_buffer_commit_empty",
                    "Error committing input audio buffer: buffer too small. Expected at least "
                    f"100ms of audio, but buffer only has {ms:.2f}ms of audio.",
                )
                return
            session._buffered_bytes = 0
            item_id = session.next_id("item")
            await send(
                {
                    "type": "input_audio_buffer.committed",
                    "event_id": self._event_id(session),
                    "previous_item_id": session._last_item,
                    "item_id": item_id,
                }
            )
            session._last_item = item_id
        elif kind == "output_audio_buffer.clear":
            await error(
                "invalid_value", "output_audio_buffer.clear is only supported for WebRTC and SIP."
            )
        elif kind not in _CLIENT_EVENTS:
            await error("invalid_value", f"Invalid value: {kind!r}.", param="type")

    async def _session_update(
        self, session: AgentSession, send: Send, event: Event, error: Callable[..., Awaitable[None]]
    ) -> None:
        update = event.get("session")
        if not isinstance(update, dict):
            await error(
                "missing_required_parameter",
                "Missing required parameter: 'session'.",
                param="session",
            )
            return
        problem = _session_problem(update)
        if problem is not None:
            code, param, text = problem
            await error(code, text, param=param)
            return
        _merge(session.config, copy.deepcopy(update))
        updated = {"type": "session.updated", "event_id": self._event_id(session)}
        await send({**updated, "session": copy.deepcopy(session.config)})

    async def _item_create(
        self, session: AgentSession, send: Send, event: Event, error: Callable[..., Awaitable[None]]
    ) -> None:
        item = event.get("item")
        if not isinstance(item, dict):
            await error(
                "missing_required_parameter", "Missing required parameter: 'item'.", param="item"
            )
            return
        if item.get("type") == "message":
            role = item.get("role")
            allowed = _CONTENT_TYPES.get(role) if isinstance(role, str) else None
            if allowed is None:
                await error("invalid_value", f"Invalid value: {role!r}.", param="item.role")
                return
            content = item.get("content")
            if not isinstance(content, list):
                await error(
                    "missing_required_parameter", "Missing 'item.content'.", param="item.content"
                )
                return
            for index, part in enumerate(content):
                part_type = part.get("type") if isinstance(part, dict) else None
                if part_type not in allowed:
                    await error(
                        "invalid_value",
                        f"Invalid value: {part_type!r}. Supported values are: "
                        + ", ".join(repr(t) for t in sorted(allowed))
                        + ".",
                        param=f"item.content[{index}].type",
                    )
                    return
            texts = [part.get("text") for part in content]
            session.text_in_bytes += sum(len(t.encode()) for t in texts if isinstance(t, str))
        elif item.get("type") == "function_call":
            for field in ("call_id", "name", "arguments"):
                if not isinstance(item.get(field), str):
                    await error(
                        "missing_required_parameter",
                        f"Missing required parameter: 'item.{field}'.",
                        param=f"item.{field}",
                    )
                    return
            session.call_ids.add(item["call_id"])
            session.text_in_bytes += len(item["arguments"].encode())
        elif item.get("type") == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str) or not isinstance(output, str):
                param = "item.call_id" if not isinstance(call_id, str) else "item.output"
                await error(
                    "missing_required_parameter",
                    f"Missing required parameter: '{param}'.",
                    param=param,
                )
                return
            if call_id not in session.call_ids:  # as the service: the call must be known
                await error(
                    "invalid_value",
                    f"No tool call found for function call output with call_id {call_id}.",
                    param="item.call_id",
                )
                return
            session.text_in_bytes += len(output.encode())
        item_id = item.get("id")
        if not isinstance(item_id, str):
            item_id = session.next_id("item")
        created = {**item, "id": item_id, "object": "realtime.item", "status": "completed"}
        previous = event.get("previous_item_id", session._last_item)
        for kind in ("conversation.item.added", "conversation.item.done"):
            await send(
                {
                    "type": kind,
                    "event_id": self._event_id(session),
                    "previous_item_id": previous,
                    "item": created,
                }
            )
        session.items.setdefault(item_id, 0)
        session._last_item = item_id
        session._last_created = created

    async def _truncate(
        self, session: AgentSession, send: Send, event: Event, error: Callable[..., Awaitable[None]]
    ) -> None:
        item_id, end, index = (
            event.get("item_id"),
            event.get("audio_end_ms"),
            event.get("content_index"),
        )
        if not isinstance(item_id, str) or item_id not in session.items:
            await error("invalid_value", f"Item {item_id!r} not found.", param="item_id")
            return
        if type(index) is not int or index != 0:
            await error("invalid_value", "content_index must be 0.", param="content_index")
            return
        if type(end) is not int or end < 0:
            await error(
                "invalid_value",
                "audio_end_ms must be a non-negative integer.",
                param="audio_end_ms",
            )
            return
        sent = session.items[item_id]
        if end > sent:
            await error(
                "invalid_value",
                f"Audio content of {sent}ms is already shorter than {end}ms",
                param="audio_end_ms",
            )
            return
        session.items[item_id] = end
        await send(
            {
                "type": "conversation.item.truncated",
                "event_id": self._event_id(session),
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": end,
            }
        )

    # --- server events ------------------------------------------------------------------------

    async def _play(
        self,
        send: Send,
        playback: trio.MemoryReceiveChannel[tuple[float, str]],
        session: AgentSession,
    ) -> None:
        async for due, audio in playback:
            await trio.sleep_until(due)
            item_id, response_id = session.echo_ids
            session.items.setdefault(item_id, 0)
            await send(
                {
                    "type": "response.output_audio.delta",
                    "event_id": self._event_id(session),
                    "response_id": response_id,
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": self._delta(session, item_id, audio),
                }
            )
            session.audio_out += 1
            session.items[item_id] += b64_size(audio) // BYTES_PER_MS

    async def _turn(
        self,
        session: AgentSession,
        send: Send,
        audio: bytes,
        transcript: str,
        pace: float | None = None,
        chunk_ms: int | None = None,
        *,
        trigger: str = "speak",
        function_call: FakeToolCall | None = None,
        reserved: bool = False,
    ) -> None:
        """Make one response: the whole lifecycle, audio faster than real time.

        ``function_call``: the response ends with that call (after ``audio``, if any).
        ``reserved``: a ``response.create`` accepted this response (``session._reserved``).
        """
        pace = self.speak_pace if pace is None else pace
        chunk = (self.chunk_ms if chunk_ms is None else chunk_ms) * BYTES_PER_MS
        async with session._speaking:
            message = bool(audio or transcript or function_call is None)
            record = ResponseRecord(
                response_id=session.next_id("resp"),
                item_id=session.next_id("item"),
                started_at=trio.current_time(),
                audio=audio,
                transcript=transcript,
                trigger=trigger,
                message=message,
            )
            if function_call is not None:
                record.function_call = FunctionCallRecord(
                    item_id=record.item_id if not message else session.next_id("item"),
                    call_id=function_call.call_id or session.next_call_id(),
                    name=function_call.name,
                    arguments=function_call.arguments_text,
                )
            session.responses.append(record)
            session.current = record
            if reserved:
                session._reserved -= 1
            if message:
                session.items[record.item_id] = 0
            try:
                await self._respond(session, send, record, chunk, pace)
            finally:
                session.current = None
                record.finished_at = trio.current_time()

    async def _respond(
        self, session: AgentSession, send: Send, record: ResponseRecord, chunk: int, pace: float
    ) -> None:
        voice = session.config.get("audio", {}).get("output", {}).get("voice", "alloy")
        output_format = session.config.get("audio", {}).get("output", {}).get("format")
        response: dict[str, Any] = {
            "object": "realtime.response",
            "id": record.response_id,
            "status": "in_progress",
            "status_details": None,
            "output": [],
            "conversation_id": f"conv_{session.number}",
            "output_modalities": ["audio"],
            "max_output_tokens": "inf",
            "audio": {"output": {"format": output_format, "voice": voice}},
            "usage": None,
            "metadata": None,
        }
        event_id = partial(self._event_id, session)
        await send({"type": "response.created", "event_id": event_id(), "response": response})
        output: list[dict[str, Any]] = []
        record.status = "completed"
        if record.message:
            output.append(await self._message(session, send, record, chunk, pace))
        call = record.function_call
        if call is not None and record.status == "completed":
            if record.interrupted.is_set():  # cancelled before the call went out
                record.status = "cancelled"
            else:
                output.append(await self._function_call(session, send, record, call, len(output)))
        details: dict[str, Any] | None = None
        if record.status == "cancelled":
            details = {"type": "cancelled", "reason": record.reason}
        elif record.status == "failed":
            details = {"type": "failed", "error": {"type": "server_error", "code": "send_timeout"}}
        usage = self._usage(session, record)
        done = {
            **response,
            "status": record.status,
            "status_details": details,
            "output": output,
            "usage": {
                "total_tokens": sum(usage.values()) - usage["input_cached_tokens"],
                "input_tokens": usage["input_text_tokens"] + usage["input_audio_tokens"],
                "output_tokens": usage["output_text_tokens"] + usage["output_audio_tokens"],
                "input_token_details": {
                    "text_tokens": usage["input_text_tokens"],
                    "audio_tokens": usage["input_audio_tokens"],
                    "cached_tokens": usage["input_cached_tokens"],
                },
                "output_token_details": {
                    "text_tokens": usage["output_text_tokens"],
                    "audio_tokens": usage["output_audio_tokens"],
                },
            },
        }
        if session.current is record:
            session.current = None  # over: a response.create may follow at once
        if await send({"type": "response.done", "event_id": event_id(), "response": done}):
            record.usage = usage
        await send(
            {
                "type": "rate_limits.updated",
                "event_id": event_id(),
                "rate_limits": [
                    {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                    {"name": "tokens", "limit": 40000, "remaining": 39000, "reset_seconds": 1.5},
                ],
            }
        )

    @staticmethod
    def _usage(session: AgentSession, record: ResponseRecord) -> dict[str, int]:
        """The usage rule (every count an integer division, so a test can predict it):

        * input_text_tokens: UTF-8 bytes of the text the client put in the conversation so far
          (``session.text_in_bytes``) // 4;
        * input_audio_tokens: caller audio bytes received so far (``audio_in_bytes``) // 100;
        * input_cached_tokens: the previous response's input tokens (text + audio) in this
          session, 0 for the first (the prefix the service has cached);
        * output_text_tokens: UTF-8 bytes of the transcript and the call's arguments // 4;
        * output_audio_tokens: audio bytes the response sent (``sent_bytes``) // 100.
        """
        input_text = session.text_in_bytes // 4
        input_audio = session.audio_in_bytes // 100
        cached, session._last_input_tokens = session._last_input_tokens, input_text + input_audio
        call = record.function_call
        said = len(record.transcript.encode()) if record.message else 0
        arguments = len(call.arguments.encode()) if call is not None and call.sent else 0
        return {
            "input_text_tokens": input_text,
            "input_audio_tokens": input_audio,
            "input_cached_tokens": cached,
            "output_text_tokens": (said + arguments) // 4,
            "output_audio_tokens": record.sent_bytes // 100,
        }

    async def _message(
        self, session: AgentSession, send: Send, record: ResponseRecord, chunk: int, pace: float
    ) -> dict[str, Any]:
        """The assistant message of a response (output index 0): its audio and transcript.
        Sets ``record.status``; returns the item as done."""
        ids = {"response_id": record.response_id, "item_id": record.item_id, "output_index": 0}
        item: dict[str, Any] = {
            "id": record.item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        event_id = partial(self._event_id, session)
        await send(
            {
                "type": "response.output_item.added",
                "event_id": event_id(),
                "response_id": record.response_id,
                "output_index": 0,
                "item": item,
            }
        )
        await send(
            {
                "type": "conversation.item.added",
                "event_id": event_id(),
                "previous_item_id": session._last_item,
                "item": item,
            }
        )
        session._last_item = record.item_id
        part = {"type": "audio", "transcript": ""}
        await send(
            {
                "type": "response.content_part.added",
                "event_id": event_id(),
                **ids,
                "content_index": 0,
                "part": part,
            }
        )
        if record.transcript:
            await send(
                {
                    "type": "response.output_audio_transcript.delta",
                    "event_id": event_id(),
                    **ids,
                    "content_index": 0,
                    "delta": record.transcript,
                }
            )
        gap = 0.0 if math.isinf(pace) else chunk / BYTES_PER_MS / 1000 / pace
        status = "completed"
        late = 0  # chunks sent after the cancel: already in flight (``late_chunks``)
        for start in range(0, len(record.audio), chunk):
            if record.interrupted.is_set():
                if late == self.late_chunks:
                    break
                late += 1
            piece = record.audio[start : start + chunk]
            delta = self._delta(session, record.item_id, base64.b64encode(piece).decode("ascii"))
            event = {"type": "response.output_audio.delta", "event_id": event_id(), **ids}
            if not await send({**event, "content_index": 0, "delta": delta}):
                status = "failed"
                break
            record.sent_bytes += len(piece)
            record.deltas += 1
            record.late_deltas = late
            session.audio_out += 1
            session.items[record.item_id] = record.sent_ms
            if gap:
                due = trio.current_time() + gap
                with trio.move_on_at(due):
                    await record.interrupted.wait()
                if record.interrupted.is_set() and late < self.late_chunks:
                    await trio.sleep_until(due)  # audio in flight keeps its pace
        if status == "completed" and record.interrupted.is_set():
            status = "cancelled"
        record.status = status
        transcript = record.transcript
        await send(
            {
                "type": "response.output_audio.done",
                "event_id": event_id(),
                **ids,
                "content_index": 0,
            }
        )
        await send(
            {
                "type": "response.output_audio_transcript.done",
                "event_id": event_id(),
                **ids,
                "content_index": 0,
                "transcript": transcript,
            }
        )
        part = {"type": "audio", "transcript": transcript}
        await send(
            {
                "type": "response.content_part.done",
                "event_id": event_id(),
                **ids,
                "content_index": 0,
                "part": part,
            }
        )
        done_item = {
            **item,
            "status": "completed" if record.status == "completed" else "incomplete",
            "content": [{"type": "output_audio", "transcript": transcript}],
        }
        await send(
            {
                "type": "response.output_item.done",
                "event_id": event_id(),
                "response_id": record.response_id,
                "output_index": 0,
                "item": done_item,
            }
        )
        await send({"type": "conversation.item.done", "event_id": event_id(), "item": done_item})
        return done_item

    async def _function_call(
        self,
        session: AgentSession,
        send: Send,
        record: ResponseRecord,
        call: FunctionCallRecord,
        index: int,
    ) -> dict[str, Any]:
        """The ``function_call`` output item at ``index``, streamed as the service streams one
        (its arguments in one delta). Returns the item as done."""
        event_id = partial(self._event_id, session)
        item: dict[str, Any] = {
            "id": call.item_id,
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "name": call.name,
            "call_id": call.call_id,
            "arguments": "",
        }
        where = {"response_id": record.response_id, "output_index": index}
        await send(
            {"type": "response.output_item.added", "event_id": event_id(), **where, "item": item}
        )
        await send(
            {
                "type": "conversation.item.added",
                "event_id": event_id(),
                "previous_item_id": session._last_item,
                "item": item,
            }
        )
        session._last_item = call.item_id
        ids = {**where, "item_id": call.item_id, "call_id": call.call_id}
        await send(
            {
                "type": "response.function_call_arguments.delta",
                "event_id": event_id(),
                **ids,
                "delta": call.arguments,
            }
        )
        await send(
            {
                "type": "response.function_call_arguments.done",
                "event_id": event_id(),
                **ids,
                "name": call.name,
                "arguments": call.arguments,
            }
        )
        done_item = {**item, "status": "completed", "arguments": call.arguments}
        await send(
            {
                "type": "response.output_item.done",
                "event_id": event_id(),
                **where,
                "item": done_item,
            }
        )
        await send({"type": "conversation.item.done", "event_id": event_id(), "item": done_item})
        call.sent = True
        session.call_ids.add(call.call_id)
        return done_item

    async def _tool_call(self, session: AgentSession, send: Send, call: FakeToolCall) -> None:
        """A :class:`FakeToolCall` response, if the session declared the tool."""
        tools = session.config.get("tools")
        declared = {
            tool.get("name")
            for tool in (tools if isinstance(tools, list) else [])
            if isinstance(tool, dict) and tool.get("type") == "function"
        }
        if call.name not in declared:
            await self._error(
                session,
                send,
                "tool_not_declared",
                f"The fake model was scripted to call {call.name!r}, but session.update "
                "declared no function tool of that name.",
                param="session.tools",
            )
            return
        await self._turn(
            session, send, call.say, call.transcript, trigger="tool_call", function_call=call
        )

    async def _response_create(
        self, session: AgentSession, send: Send, event: Event, error: Callable[..., Awaitable[None]]
    ) -> None:
        """Answer a ``response.create``: say something derived from what it answers.

        With ``response.instructions`` (voxbridge's greeting): the text after
        :data:`GREETING_PROMPT` (or the whole instructions, for any other prompt), recorded in
        ``greetings``. Otherwise, by the last item created since the previous ``response.create``:
        a ``function_call_output`` -> :func:`tool_answer` of its output (recorded in
        ``tool_outputs``); a user message -> :func:`text_answer` of its text (``user_texts``);
        anything else -> :data:`GENERIC_ANSWER`. The audio is :func:`speech` of the text, the
        transcript the text. While a response is active: the
        ``conversation_already_has_active_response`` error, as the service answers.
        """
        response = event.get("response")
        if response is not None and not isinstance(response, dict):
            await error("invalid_type", "Invalid type for 'response'.", param="response")
            return
        active = session.active
        if active is not None:
            await error(
                ALREADY_ACTIVE,
                f"Conversation already has an active response in progress: {active}. Wait "
                "until the response is finished before creating a new one.",
            )
            return
        last, session._last_created = session._last_created, None
        instructions = (response or {}).get("instructions")
        if isinstance(instructions, str) and instructions:
            session.text_in_bytes += len(instructions.encode())
            said, trigger = instructions.removeprefix(GREETING_PROMPT), "greeting"
            session.greetings.append(said)
            self.greetings.append(said)
        elif last is not None and last.get("type") == "function_call_output":
            result = (last["call_id"], last["output"])
            session.tool_outputs.append(result)
            self.tool_outputs.append(result)
            said, trigger = tool_answer(last["output"]), "tool_answer"
        elif last is not None and last.get("type") == "message" and last.get("role") == "user":
            texts = [part.get("text") for part in last.get("content", [])]
            text = " ".join(t for t in texts if isinstance(t, str))
            session.user_texts.append(text)
            self.user_texts.append(text)
            said, trigger = text_answer(text), "text_answer"
        else:
            said, trigger = GENERIC_ANSWER, "generic"
        assert session._nursery is not None
        session._reserved += 1
        turn = partial(self._turn, trigger=trigger, reserved=True)
        session._nursery.start_soon(turn, session, send, speech(said), said)

    async def _speech_started(self, session: AgentSession, send: Send) -> None:
        session.speech_started_at.append(trio.current_time())
        session.echo_turn += 1  # what the echo plays from now on answers the new caller turn
        await send(
            {
                "type": "input_audio_buffer.speech_started",
                "event_id": self._event_id(session),
                "item_id": session.next_id("item"),
                "audio_start_ms": session.audio_in_bytes // BYTES_PER_MS,
            }
        )
        turn_detection = session.config.get("audio", {}).get("input", {}).get("turn_detection")
        interrupts = isinstance(turn_detection, dict) and turn_detection.get(
            "interrupt_response", True
        )
        if interrupts and session.current is not None:
            session.current.cancel("turn_detected")

    async def _raw_event(self, session: AgentSession, send: Send, raw: Event) -> None:
        event = copy.deepcopy(raw)
        if "event_id" not in event:
            event["event_id"] = self._event_id(session)
        await send(event)

    def _delta(self, session: AgentSession, item_id: str, audio: str) -> str:
        """The ``delta`` text of the session's next audio delta: ``audio`` unless corrupted."""
        session._audio_deltas += 1
        corrupt = session._corrupt.get(session._audio_deltas)
        if corrupt is None:
            return audio
        session.corrupted.append((session._audio_deltas, item_id))
        return corrupt

    async def _caller_transcript(self, session: AgentSession, send: Send, text: str) -> None:
        await send(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "event_id": self._event_id(session),
                "item_id": session.next_id("item"),
                "content_index": 0,
                "transcript": text,
                "usage": {"type": "duration", "seconds": 1.0},
            }
        )
        session.caller_turns += 1  # the fake hears the caller only through these transcripts
        for call in self.tool_calls:  # in order: calls after the same turn keep theirs
            if call.after_turn == session.caller_turns:
                await self._tool_call(session, send, call)

    async def _error(
        self,
        session: AgentSession,
        send: Send,
        code: str,
        message: str,
        *,
        param: str | None = None,
        event_id: str | None = None,
    ) -> None:
        error = {
            "type": "invalid_request_error",
            "code": code,
            "message": message,
            "param": param,
            "event_id": event_id,
        }
        session.errors_sent.append(error)
        await send({"type": "error", "event_id": self._event_id(session), "error": error})

    async def _close(
        self, session: AgentSession, ws: WebSocketConnection, code: int, reason: str
    ) -> None:
        session.close_code = code
        session.close_reason = reason
        with trio.move_on_after(SEND_TIMEOUT):
            await ws.aclose(code, reason)

    async def _expire(self, session: AgentSession, ws: WebSocketConnection, send: Send) -> None:
        await self._error(session, send, "session_expired", SESSION_EXPIRED_MESSAGE)
        await self._close(session, ws, 1001, "session expired")

    async def _send(self, session: AgentSession, ws: WebSocketConnection, event: Event) -> bool:
        """Send one event (bounded by ``SEND_TIMEOUT``); ``False`` if it could not be sent."""
        if len(session.events_out) < self.record_limit:
            session.events_out.append(event)
        with trio.move_on_after(SEND_TIMEOUT):
            try:
                await ws.send_message(json.dumps(event, separators=(",", ":")))
            except ConnectionClosed:
                return False
            return True
        return False

    def _event_id(self, session: AgentSession) -> str:
        return session.next_id("event")

    def _initial_config(self, session: AgentSession) -> dict[str, Any]:
        """The session configuration the service starts with (pcm16 24 kHz, server VAD)."""
        pcm = {"type": "audio/pcm", "rate": 24000}
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": f"sess_{session.number}",
            "model": self.model,
            "output_modalities": ["audio"],
            "instructions": "You are a helpful assistant.",
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "tracing": None,
            "truncation": "auto",
            "prompt": None,
            "expires_at": 0,
            "include": None,
            "audio": {
                "input": {
                    "format": dict(pcm),
                    "transcription": None,
                    "noise_reduction": None,
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.5,
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": 200,
                        "idle_timeout_ms": None,
                        "create_response": True,
                        "interrupt_response": True,
                    },
                },
                "output": {"format": dict(pcm), "voice": "alloy", "speed": 1.0},
            },
        }


def _session_problem(update: dict[str, Any]) -> tuple[str, str, str] | None:
    """What the GA service would object to in a ``session.update``: ``(code, param, message)``."""
    if "type" not in update:
        return (
            "missing_required_parameter",
            "session.type",
            "Missing required parameter: 'session.type'.",
        )
    if update["type"] != "realtime":
        return (
            "invalid_value",
            "session.type",
            f"Invalid value: {update['type']!r}. This fake serves realtime sessions only.",
        )
    for key in update:
        if key not in _SESSION_KEYS:
            return ("unknown_parameter", f"session.{key}", f"Unknown parameter: 'session.{key}'.")
    audio = update.get("audio")
    if audio is not None:
        if not isinstance(audio, dict):
            return ("invalid_type", "session.audio", "Invalid type for 'session.audio'.")
        for direction, value in audio.items():
            allowed = _AUDIO_KEYS.get(direction)
            if allowed is None:
                return (
                    "unknown_parameter",
                    f"session.audio.{direction}",
                    f"Unknown parameter: 'session.audio.{direction}'.",
                )
            if not isinstance(value, dict):
                return (
                    "invalid_type",
                    f"session.audio.{direction}",
                    f"Invalid type for 'session.audio.{direction}'.",
                )
            for key in value:
                if key not in allowed:
                    param = f"session.audio.{direction}.{key}"
                    return ("unknown_parameter", param, f"Unknown parameter: '{param}'.")
    modalities = update.get("output_modalities")
    if modalities is not None and modalities not in (["audio"], ["text"]):
        return (
            "invalid_value",
            "session.output_modalities",
            "output_modalities must be ['audio'] or ['text']; both at once is not supported.",
        )
    return _tools_problem(update)


def _tools_problem(update: dict[str, Any]) -> tuple[str, str, str] | None:
    """What the service would object to in ``tools`` and ``tool_choice`` (function tools: a
    name of 1-64 ``[A-Za-z0-9_-]``, an object ``parameters`` schema; no duplicate names)."""
    tools = update.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            return ("invalid_type", "session.tools", "Invalid type for 'session.tools'.")
        names: set[str] = set()
        for index, tool in enumerate(tools):
            param = f"session.tools[{index}]"
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind not in ("function", "mcp"):
                return ("invalid_value", f"{param}.type", f"Invalid value: {kind!r}.")
            if kind != "function":
                continue
            name = tool.get("name")
            if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
                return (
                    "invalid_value",
                    f"{param}.name",
                    f"Invalid '{param}.name': string does not match pattern "
                    "'^[a-zA-Z0-9_-]{1,64}$'.",
                )
            if name in names:
                return ("invalid_value", f"{param}.name", f"Duplicate tool name: {name!r}.")
            names.add(name)
            schema = tool.get("parameters")
            if schema is not None and not isinstance(schema, dict):
                return ("invalid_type", f"{param}.parameters", f"Invalid type for '{param}'.")
    choice = update.get("tool_choice")
    if choice not in (None, "auto", "none", "required") and not isinstance(choice, dict):
        return ("invalid_value", "session.tool_choice", f"Invalid value: {choice!r}.")
    return None
