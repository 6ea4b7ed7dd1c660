"""OpenAI Realtime (GA) over WebSocket: a provider and its sans-IO codec.

voxbridge asks the provider for G.711 mu-law in and out (``audio/pcmu``), so a Twilio
``media.payload`` becomes ``input_audio_buffer.append.audio`` unchanged, and an audio delta is
Twilio's audio too: no transcoding. A delta is decoded as strict base64 (the same check as Twilio's
``media.payload``); one that fails raises :class:`~voxbridge.errors.BadAudio`, and the call drops
that chunk alone. Only the GA interface is spoken: the beta one (``OpenAI-Beta: realtime=v1``) was
shut down in 2026.

* Opening a session sends ``session.update`` (mu-law both ways, server VAD, caller transcription,
  voice, instructions, and the agent's tools as ``function`` tools), then the conversation so far
  as ``conversation.item.create`` events, so a resumed session (after a drop, or the 60-minute
  ``session_expired``) keeps the context: transcript lines as messages, key presses as the user
  message :func:`~voxbridge.providers.events.dtmf_message`, tool exchanges as a ``function_call``
  item and its ``function_call_output``. In the call's first session an agent with a greeting
  speaks first: a ``response.create`` whose ``response.instructions`` (which replace the session's
  for that one response) ask the model to say exactly the greeting (never in a resumed session).
* The codec follows the response lifecycle (``response.created`` .. ``response.done``): a new
  response is a :class:`~voxbridge.providers.events.ResponseStarted`, audio carries its
  ``item_id`` and ``response_id``, and ``response.done`` is a
  :class:`~voxbridge.providers.events.ResponseDone` with the tool calls the response asks for and
  its token usage.
* A tool result goes back as a ``function_call_output`` item and a ``response.create`` (the model
  answers it); to a session that never saw the call (a resume replaced the one that asked), the
  ``function_call`` item is replayed first, since the service refuses an output for an unknown
  ``call_id``. A key press is a user text message and a ``response.create``.
* Barge-in sends ``response.cancel`` for a response still in progress (server VAD usually cancels
  it first; the ``response_cancel_not_active`` error that race produces is expected and ignored),
  then one ``conversation.item.truncate`` per agent item the caller had not finished hearing: the
  item being heard at the heard millisecond, the items queued behind it at 0 ms. Truncating at 0
  rather than ``conversation.item.delete`` keeps every item in the conversation, in order, with its
  unheard audio and transcript removed -- one message kind for every item, and the model still
  sees that it began an answer that was cut off. The mirror race, a ``response.create`` (tool
  result, key press) while server VAD's own response is active, gets
  ``conversation_already_has_active_response``: ignored too (the item is in the conversation; the
  active response or the next one hears it).
* OpenAI never ends a call on its own: any close is a dropped session the call may resume.

Outbound caller audio frames are built from a template (base64 never needs JSON escaping);
everything else goes through ``json.dumps``. Inbound frames are parsed with ``orjson`` and mapped to
neutral events; events the bridge does not act on map to ``None`` (providers add events often, and
an unknown one is not an error). A frame that is not a JSON object with a string ``type`` (or a
binary frame) raises ``RemoteProtocolError``.

The shapes follow the ``openai`` package's ``types.realtime`` models;
``tests/test_openai_realtime.py`` validates every frame built here against them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
import orjson

from ..audio import b64_decode
from ..errors import BadAudio, Reason, RemoteProtocolError, SettingsError
from .base import Frame, ProviderSession, configured
from .endpoint import ProviderEndpoint, checked_ws_url
from .events import (
    AgentAudio,
    HistoryItem,
    ProviderError,
    ProviderEvent,
    ResponseDone,
    ResponseStarted,
    SpeechStarted,
    ToolCall,
    ToolExchange,
    Transcript,
    Truncation,
    Usage,
    dtmf_message,
)
from .spec import NoSettings, ProviderSpec, option

if TYPE_CHECKING:
    from ..agents import AgentConfig
    from ..settings import Settings
    from ..tools import Tool

__all__ = [
    "ECHO_SPEC",
    "GREETING_PROMPT",
    "OPENAI_MODEL",
    "OPENAI_URL",
    "SPEC",
    "TRANSCRIPTION_MODEL",
    "OpenAIProvider",
    "OpenAIRealtimeCodec",
    "OpenAISettings",
    "greeting_instructions",
    "openai_endpoint",
]

OPENAI_URL = "wss://api.openai.com/v1/realtime"
#: The default Realtime model and caller-transcription model: current GA names in the ``openai``
#: package's types, with no announced shutdown (tests/test_openai_realtime.py checks).
OPENAI_MODEL = "gpt-realtime-2.1"
TRANSCRIPTION_MODEL = "gpt-transcribe"
OPENAI_FLAVOURS = ("ga",)
#: The OpenAI Realtime beta interface (``OpenAI-Beta: realtime=v1``) was shut down in 2026.
BETA_GONE = (
    "--openai-flavour / VOXBRIDGE_OPENAI_FLAVOUR: the OpenAI Realtime beta interface was shut "
    "down in 2026; use ga (the default: the GA interface at /v1/realtime)"
)

_AUDIO_DELTA = "response.output_audio.delta"
_AGENT_TRANSCRIPT_DONE = "response.output_audio_transcript.done"
_CALLER_TRANSCRIPT_DONE = "conversation.item.input_audio_transcription.completed"
#: The error a ``response.cancel`` gets when the response already ended (server VAD cancels on
#: ``speech_started`` too): an expected race at every barge-in, not worth a warning.
CANCEL_NOT_ACTIVE = "response_cancel_not_active"
#: The error a ``response.create`` gets while another response is active (server VAD answered
#: the caller just before a tool result or a key press arrived): the mirror race, as expected.
ALREADY_ACTIVE = "conversation_already_has_active_response"
_EXPECTED_ERRORS = frozenset({CANCEL_NOT_ACTIVE, ALREADY_ACTIVE})

#: Transcript role -> (message role, content part type). Assistant text is ``output_text``
#: (``RealtimeConversationItemAssistantMessage``); the user's is ``input_text``. Key presses
#: (``dtmf``) are replayed as the user message the model was told at the time.
_MESSAGE_ROLES: dict[str, tuple[str, str]] = {
    "caller": ("user", "input_text"),
    "agent": ("assistant", "output_text"),
    "dtmf": ("user", "input_text"),
}

#: ``response.usage`` field -> usage kind (``voxbridge_provider_usage_total{kind}``), in order.
_USAGE_KINDS: tuple[tuple[str, str, str], ...] = (
    ("input_token_details", "text_tokens", "input_text_tokens"),
    ("input_token_details", "audio_tokens", "input_audio_tokens"),
    ("input_token_details", "cached_tokens", "input_cached_tokens"),
    ("output_token_details", "text_tokens", "output_text_tokens"),
    ("output_token_details", "audio_tokens", "output_audio_tokens"),
)

#: What the greeting's ``response.instructions`` say before the greeting itself.
GREETING_PROMPT = (
    "Start the call: greet the caller by saying exactly the text below, word for word, "
    "and nothing else.\n\n"
)


def greeting_instructions(greeting: str) -> str:
    """The ``response.instructions`` that make the model say ``greeting``: :data:`GREETING_PROMPT`
    followed by the greeting."""
    return GREETING_PROMPT + greeting


def _dumps(event: dict[str, Any]) -> str:
    # ensure_ascii (the default) keeps lone surrogates from a provider transcript sendable as text.
    return json.dumps(event, separators=(",", ":"))


def _plain(value: Any) -> Any:
    """``value`` with every mapping a dict and every sequence a list, for ``json.dumps``."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _item_create(item: dict[str, Any]) -> str:
    return _dumps({"type": "conversation.item.create", "item": item})


def _message(role: str, part: str, text: str) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": [{"type": part, "text": text}]}


def _function_call(exchange: ToolExchange) -> dict[str, Any]:
    return {
        "type": "function_call",
        "call_id": exchange.call_id,
        "name": exchange.name,
        "arguments": exchange.arguments,
    }


def _function_call_output(exchange: ToolExchange) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": exchange.call_id, "output": exchange.output}


_RESPONSE_CREATE = _dumps({"type": "response.create"})


class OpenAIRealtimeCodec:
    """Encode client events and decode server events for one OpenAI Realtime (GA) session.

    Args:
        model: the model named in ``session.update``.
        voice: the agent voice.
        instructions: the system instructions.
        transcription_model: the model that transcribes the caller (``gpt-transcribe``, ...).
        tools: the tools declared to the model (``session.update`` ``tools``, with
            ``tool_choice: "auto"``); none: neither field is sent.
        greeting: what the agent says first at call start (``None`` or ``""``: it waits for the
            caller).
    """

    def __init__(
        self,
        *,
        model: str = OPENAI_MODEL,
        voice: str = "alloy",
        instructions: str = "",
        transcription_model: str = TRANSCRIPTION_MODEL,
        tools: Sequence[Tool] = (),
        greeting: str | None = None,
    ) -> None:
        self.model = model
        self.voice = voice
        self.instructions = instructions
        self.transcription_model = transcription_model
        self.tools: tuple[Tool, ...] = tuple(tools)
        self.greeting = greeting
        #: The response being generated (from ``response.created`` to ``response.done``).
        self.response_id: str | None = None

    def __repr__(self) -> str:
        return (
            f"OpenAIRealtimeCodec(model={self.model!r}, voice={self.voice!r}, "
            f"tools={[tool.name for tool in self.tools]!r})"
        )

    # --- opening ------------------------------------------------------------------------------

    #: The service takes ``session.update`` and audio at once: nothing to wait for.
    awaits_acknowledgement = False

    def opening(self, history: Sequence[HistoryItem], *, first: bool) -> list[Frame]:
        """``session.update``, then ``history`` as ``conversation.item.create`` events, then -- in
        the call's ``first`` session, for an agent with a greeting -- the greeting's
        ``response.create``.

        Transcript lines with empty text are skipped (an empty message adds nothing).

        Raises:
            ValueError: a transcript role is not ``caller``, ``agent`` or ``dtmf``.
        """
        frames: list[Frame] = [self.session_update()]
        for item in history:
            frames.extend(self.history_items(item))
        if first and self.greeting:
            frames.append(self.greeting_response(self.greeting))
        elif history and _owes_an_answer(history[-1]):
            # A tool result or key presses that arrived while the session was being replaced:
            # the model has not answered them yet.
            frames.append(_dumps({"type": "response.create"}))
        return frames

    def session_update(
        self,
        *,
        model: str | None = None,
        voice: str | None = None,
        instructions: str | None = None,
    ) -> str:
        """The ``session.update`` that configures mu-law passthrough, server VAD, transcription
        and the tools.

        The keyword arguments override the codec's own settings for this one frame.
        """
        session: dict[str, Any] = {
            "type": "realtime",
            "model": self.model if model is None else model,
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "turn_detection": {"type": "server_vad"},
                    "transcription": {"model": self.transcription_model},
                },
                "output": {
                    "format": {"type": "audio/pcmu"},
                    "voice": self.voice if voice is None else voice,
                },
            },
            "instructions": self.instructions if instructions is None else instructions,
        }
        if self.tools:
            session["tools"] = [
                {
                    "type": "function",
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": _plain(tool.parameters),
                }
                for tool in self.tools
            ]
            session["tool_choice"] = "auto"
        return _dumps({"type": "session.update", "session": session})

    def history_items(self, item: HistoryItem) -> list[str]:
        """One remembered item as ``conversation.item.create`` events.

        A transcript line is one completed text message (none if its text is empty): the
        caller's a ``user`` ``input_text``, the agent's an ``assistant`` ``output_text``, key
        presses the ``user`` message :func:`dtmf_message` of the digits. A tool exchange is its
        ``function_call`` item, then its ``function_call_output``.

        Raises:
            ValueError: a transcript role is not ``caller``, ``agent`` or ``dtmf``.
        """
        if isinstance(item, ToolExchange):
            return [_item_create(_function_call(item)), _item_create(_function_call_output(item))]
        try:
            role, part = _MESSAGE_ROLES[item.role]
        except KeyError:
            raise ValueError(
                f"transcript role must be 'caller', 'agent' or 'dtmf', got {item.role!r}"
            ) from None
        if not item.text:
            return []
        text = dtmf_message(item.text) if item.role == "dtmf" else item.text
        return [_item_create(_message(role, part, text))]

    @staticmethod
    def greeting_response(greeting: str) -> str:
        """The ``response.create`` whose instructions ask the model to say ``greeting``
        (:func:`greeting_instructions`)."""
        response = {"instructions": greeting_instructions(greeting)}
        return _dumps({"type": "response.create", "response": response})

    # --- the hot paths ------------------------------------------------------------------------

    @staticmethod
    def audio(payload: str) -> str:
        """``input_audio_buffer.append`` carrying base64 audio exactly as received."""
        # base64 text contains only [A-Za-z0-9+/=]: nothing to escape.
        return '{"type":"input_audio_buffer.append","audio":"' + payload + '"}'

    #: The former name of :meth:`audio`.
    append_audio = audio

    def decode(self, frame: Frame) -> ProviderEvent | None:
        """Map one server frame to a neutral event, or ``None`` for events the bridge ignores.

        ``response.done`` is always a :class:`ResponseDone` (it ends the response in progress,
        whatever else it holds): see :func:`_response_done` for how its fields are read.

        Raises:
            BadAudio: an audio delta that is not strict base64.
            RemoteProtocolError: a binary frame, or not a JSON object with a string ``type``, or a
                mapped event with a field of the wrong type.
        """
        if not isinstance(frame, str):
            raise RemoteProtocolError("OpenAI Realtime sent a binary frame; it speaks JSON text")
        try:
            event = orjson.loads(frame)  # several times faster than json on audio deltas
        except orjson.JSONDecodeError as exc:
            raise RemoteProtocolError(f"provider sent malformed JSON: {exc}") from None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise RemoteProtocolError("provider frame is not a JSON object with a string 'type'")
        kind = event["type"]
        if kind == _AUDIO_DELTA:
            delta = event.get("delta")
            if not isinstance(delta, str):
                raise BadAudio(f"{kind}.delta must be a base64 string, got {_kind(delta)}")
            try:
                audio = b64_decode(delta)
            except ValueError as exc:
                raise BadAudio(f"{kind}.delta is {exc}") from None
            if not audio:
                return None  # nothing to play
            return AgentAudio(audio, _id(event.get("item_id")), _id(event.get("response_id")))
        if kind == "response.created":
            response = event.get("response")
            self.response_id = _id(response.get("id")) if isinstance(response, dict) else None
            return ResponseStarted(self.response_id)
        if kind == "response.done":
            self.response_id = None
            return _response_done(event.get("response"))
        if kind == "input_audio_buffer.speech_started":
            start = event.get("audio_start_ms")
            return SpeechStarted(start if type(start) is int else None)
        if kind == _AGENT_TRANSCRIPT_DONE:
            return Transcript("agent", _text(event.get("transcript")))
        if kind == _CALLER_TRANSCRIPT_DONE:
            return Transcript("caller", _text(event.get("transcript")))
        if kind == "error":
            error = event.get("error")
            error = error if isinstance(error, dict) else {}
            code = _text(error.get("code") or error.get("type"))
            if code in _EXPECTED_ERRORS:
                return None  # a cancel or a create raced the server's own: expected
            return ProviderError(code, _text(error.get("message")))
        return None

    # --- tools and key presses ----------------------------------------------------------------

    def tool_result(self, exchange: ToolExchange, *, known: bool) -> list[Frame]:
        """The ``function_call_output`` of ``exchange`` and a ``response.create`` (the model
        answers with the result).

        ``known=False`` (the session that asked was replaced by a resume): the ``function_call``
        item first, since the service refuses an output whose ``call_id`` it does not know.
        """
        frames: list[Frame] = [] if known else [_item_create(_function_call(exchange))]
        frames.append(_item_create(_function_call_output(exchange)))
        frames.append(_RESPONSE_CREATE)
        return frames

    def dtmf(self, digits: str) -> list[Frame]:
        """The user message :func:`dtmf_message` of ``digits``, and a ``response.create``."""
        message = _message("user", "input_text", dtmf_message(digits))
        return [_item_create(message), _RESPONSE_CREATE]

    # --- barge-in and the end -----------------------------------------------------------------

    def interrupt(self, truncations: Sequence[Truncation]) -> list[Frame]:
        """``response.cancel`` if a response is in progress, then one ``conversation.item.truncate``
        per truncation, in order.

        The cancel stops the model generating an answer the caller talked over (server VAD usually
        did already); each truncate makes the model's memory of an item end where the caller
        stopped hearing it (0 ms: never heard).
        """
        frames: list[Frame] = []
        if self.response_id is not None:
            cancel = {"type": "response.cancel", "response_id": self.response_id}
            frames.append(_dumps(cancel))
        for cut in truncations:
            truncate = {
                "type": "conversation.item.truncate",
                "item_id": cut.item_id,
                "content_index": 0,
                "audio_end_ms": max(0, int(cut.audio_end_ms)),
            }
            frames.append(_dumps(truncate))
        return frames

    keepalive = None  # no keepalive message in the protocol: caller audio and WebSocket pings

    def acknowledged(self, frame: Frame) -> list[Frame] | None:
        """Nothing waits for an acknowledgement (never called: see
        :attr:`awaits_acknowledgement`)."""
        return []

    def flush(self) -> list[ProviderEvent]:
        """Nothing is held: transcript lines come whole (their ``done`` and ``completed``
        events), decoded as they come."""
        return []

    def closing(self) -> list[Frame]:
        """Nothing: closing the socket ends an OpenAI Realtime session."""
        return []

    def close_reason(self, code: int) -> Reason:
        """What OpenAI closing the socket with ``code`` means: see :data:`CLOSE_REASONS`."""
        return CLOSE_REASONS.get(code, Reason.UPSTREAM_CLOSED)


#: OpenAI's close codes that are not "the session dropped, resume it". OpenAI never hangs up a
#: call; 1008 (policy violation, RFC 6455 7.4.1) is how it refuses a key or an account mid-session,
#: and retrying cannot help. Everything else -- including 1001 after ``session_expired`` (the
#: 60-minute limit) -- is a session to resume.
CLOSE_REASONS: dict[int, Reason] = {1008: Reason.UPSTREAM_REJECTED}


def _response_done(response: object) -> ResponseDone:
    """``response.done``'s ``response`` (a ``RealtimeResponse``) as a :class:`ResponseDone`.

    The envelope must be well formed: ``response`` an object with a string ``status``, its
    ``output`` (if present and not null) a list -- else ``RemoteProtocolError``, and the call
    drops the frame. Inside it, what cannot be used is skipped rather than failing the whole
    response: an ``id`` that is not a non-empty string is ``None``; output items that are not
    ``function_call`` objects with non-empty string ``call_id`` and ``name`` are skipped (only
    ``completed`` responses' calls are taken); ``arguments`` missing or null is ``"{}"``, and
    arguments that are JSON but not a string are passed on as their JSON text (the call's
    argument check then tells the model). ``usage`` that is not an object, and counts that are
    not positive integers, are left out; ``usage`` is ``None`` when nothing is left.
    """
    if not isinstance(response, dict):
        raise RemoteProtocolError(
            f"response.done.response must be an object, got {_kind(response)}"
        )
    status = response.get("status")
    if not isinstance(status, str) or not status:
        raise RemoteProtocolError(
            f"response.done.response.status must be a string, got {_kind(status)}"
        )
    output = response.get("output")
    if output is None:
        output = []
    if not isinstance(output, list):
        raise RemoteProtocolError(
            f"response.done.response.output must be a list, got {_kind(output)}"
        )
    calls = tuple(_tool_calls(output)) if status == "completed" else ()
    return ResponseDone(_id(response.get("id")), status, calls, _usage(response.get("usage")))


def _owes_an_answer(item: HistoryItem) -> bool:
    """The conversation ends with something the model answers: a tool's result, key presses."""
    if isinstance(item, ToolExchange):
        return True
    return item.role == "dtmf" and bool(item.text)


def _tool_calls(output: list[Any]) -> list[ToolCall]:
    calls: list[ToolCall] = []
    for item in output:
        if not isinstance(item, dict) or item.get("type") != "function_call":
            continue
        call_id, name = _id(item.get("call_id")), _id(item.get("name"))
        if call_id is None or name is None:
            continue
        arguments = item.get("arguments")
        if arguments is None:
            arguments = "{}"
        elif not isinstance(arguments, str):
            try:  # the model's JSON, not a string: the call's argument check tells the model
                arguments = orjson.dumps(arguments).decode()
            except (orjson.JSONEncodeError, RecursionError):  # (nested too deep to re-encode)
                raise RemoteProtocolError("function_call.arguments is not a string") from None
        calls.append(ToolCall(call_id, name, arguments))
    return calls


def _usage(usage: object) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    counts: list[tuple[str, float]] = []
    for details_field, field, kind in _USAGE_KINDS:
        details = usage.get(details_field)
        amount = details.get(field) if isinstance(details, dict) else None
        if type(amount) is int and amount > 0:
            counts.append((kind, amount))
    return Usage(tuple(counts)) if counts else None


def _id(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


# --- the provider -------------------------------------------------------------------------------


def openai_endpoint(
    url: str,
    api_key: str | None,
    *,
    model: str = OPENAI_MODEL,
    name: str = "openai",
) -> ProviderEndpoint:
    """The endpoint of an OpenAI Realtime (GA) service at ``url``.

    Adds ``?model=`` when the URL names no model, and ``Authorization: Bearer`` when there is a
    key. The key lives only in the headers, which :class:`ProviderEndpoint` keeps out of its
    ``repr``.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not any(key == "model" for key, _ in query):
        query.append(("model", model))
        url = urlunsplit(parts._replace(query=urlencode(query)))
    headers = (("Authorization", f"Bearer {api_key}"),) if api_key else ()
    return ProviderEndpoint(name, url, headers)


def _with_model(endpoint: ProviderEndpoint, model: str) -> ProviderEndpoint:
    """``endpoint`` with its URL's ``model`` parameter set to ``model``, if it has one (an
    endpoint without one, such as an echo agent's, is left as it is)."""
    parts = urlsplit(endpoint.url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not any(key == "model" for key, _ in query):
        return endpoint
    query = [(key, model if key == "model" else value) for key, value in query]
    return attrs.evolve(endpoint, url=urlunsplit(parts._replace(query=urlencode(query))))


class OpenAIProvider:
    """OpenAI Realtime as a :class:`~voxbridge.providers.base.Provider`.

    Preparing a session does no I/O: it pairs the endpoint with a fresh codec, which replays the
    conversation so far when the session opens.

    Args:
        endpoint: where to connect; see :func:`openai_endpoint`.
        model, voice, instructions, transcription_model, tools, greeting: see
            :class:`OpenAIRealtimeCodec`.
        name: the metric label; defaults to ``endpoint.name``.
    """

    def __init__(
        self,
        endpoint: ProviderEndpoint,
        *,
        model: str = OPENAI_MODEL,
        voice: str = "alloy",
        instructions: str = "",
        transcription_model: str = TRANSCRIPTION_MODEL,
        tools: Sequence[Tool] = (),
        greeting: str | None = None,
        name: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.model = model
        self.voice = voice
        self.instructions = instructions
        self.transcription_model = transcription_model
        self.tools: tuple[Tool, ...] = tuple(tools)
        self.greeting = greeting
        self.name = endpoint.name if name is None else name

    @classmethod
    def from_settings(cls, endpoint: ProviderEndpoint, settings: Settings) -> Self:
        """The provider for ``endpoint`` with the model, voice, instructions and transcription
        model of ``settings`` (no tools, no greeting: :meth:`for_agent` adds them).

        Raises:
            SettingsError: ``instructions_file`` cannot be read.
        """
        own: OpenAISettings = SPEC.own(settings)
        return cls(
            endpoint,
            model=own.model,
            voice=settings.voice or "alloy",
            instructions=settings.agent_instructions(),
            transcription_model=own.transcription_model,
        )

    def for_agent(self, agent: AgentConfig, tools: Sequence[Tool]) -> Self:
        """A copy of this provider for ``agent`` (:func:`~voxbridge.providers.base.configured`).

        A model override also replaces the ``model`` parameter of the endpoint URL (an endpoint
        without one is kept as it is). No I/O.
        """
        provider = configured(self, agent, tools)
        if agent.model is not None:
            provider.endpoint = _with_model(self.endpoint, agent.model)
        return provider

    def __repr__(self) -> str:
        return (
            f"OpenAIProvider({self.endpoint!r}, model={self.model!r}, "
            f"tools={[tool.name for tool in self.tools]!r})"
        )

    def codec(self) -> OpenAIRealtimeCodec:
        """A fresh codec with this provider's settings."""
        return OpenAIRealtimeCodec(
            model=self.model,
            voice=self.voice,
            instructions=self.instructions,
            transcription_model=self.transcription_model,
            tools=self.tools,
            greeting=self.greeting,
        )

    async def session(self, history: Sequence[HistoryItem], *, first: bool) -> ProviderSession:
        """The endpoint and a fresh codec (``history`` is replayed, and the greeting asked for in
        the ``first`` session, by ``codec.opening``)."""
        return ProviderSession(self.endpoint, self.codec())


# --- declaration ----------------------------------------------------------------------------------


def _flavour(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value == "beta":
        raise SettingsError(BETA_GONE)
    if value not in OPENAI_FLAVOURS:
        raise SettingsError(
            f"--openai-flavour / VOXBRIDGE_OPENAI_FLAVOUR must be one of "
            f"{', '.join(OPENAI_FLAVOURS)}; got {value!r}"
        )


@attrs.frozen(kw_only=True)
class OpenAISettings:
    """``--openai-*`` settings (the key: ``OPENAI_API_KEY``, environment only)."""

    api_key: str | None = option(None, "OpenAI key", secret=True)
    model: str = option(OPENAI_MODEL, "OpenAI Realtime model (GA)")
    flavour: str = attrs.field(
        default="ga",
        validator=_flavour,
        metadata={
            "help": "OpenAI Realtime API: ga (the beta interface was shut down in 2026)",
            "secret": False,
            "cli": True,
        },
    )
    transcription_model: str = option(
        TRANSCRIPTION_MODEL, "OpenAI model that transcribes the caller"
    )


def _openai(settings: Settings, own: OpenAISettings, echo_url: str | None) -> OpenAIProvider:
    if not own.api_key and settings.provider_url is None:
        raise SettingsError("provider openai needs OPENAI_API_KEY")
    endpoint = openai_endpoint(
        checked_ws_url(settings.provider_url or OPENAI_URL), own.api_key, model=own.model
    )
    return OpenAIProvider.from_settings(endpoint, settings)


def _echo(settings: Settings, own: NoSettings, echo_url: str | None) -> OpenAIProvider:
    url = settings.provider_url or echo_url
    if url is None:
        raise SettingsError("the echo provider needs a running echo agent (echo_url)")
    return OpenAIProvider.from_settings(ProviderEndpoint("echo", checked_ws_url(url)), settings)


SPEC = ProviderSpec(
    name="openai",
    settings=OpenAISettings,
    build=_openai,
    close_reasons=CLOSE_REASONS,
    codec=OpenAIRealtimeCodec,
    key_variables=("OPENAI_API_KEY",),
    usage_kinds=tuple(kind for _, _, kind in _USAGE_KINDS),
    endpoint="ws(s)://.../v1/realtime",
    fake="voxbridge.testing.fake_openai:FakeOpenAIRealtime",
    voice="alloy",
)

#: The built-in echo agent (:mod:`voxbridge.echo_agent`) speaks OpenAI Realtime on loopback.
ECHO_SPEC = ProviderSpec(
    name="echo",
    settings=NoSettings,
    build=_echo,
    close_reasons=CLOSE_REASONS,
    codec=OpenAIRealtimeCodec,
    endpoint="ws(s)://.../v1/realtime of a running echo agent",
    fake="voxbridge.testing.echo_agent:FakeEchoAgent",
    voice="alloy",
)
