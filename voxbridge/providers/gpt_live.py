"""OpenAI GPT-Live (the full-duplex Live API) over WebSocket: a provider and its sans-IO codec.

Checked against ``openai`` 3.57.0, ``openai/types/live/`` (``ClientEvent`` and ``ServerEvent``
unions); ``tests/test_gpt_live.py`` validates every frame built here against those models.

GPT-Live is not the Realtime API with new names: the model listens and speaks at once and decides
for itself when to stop talking, so there are no responses, no items, no VAD events and no
truncation. What that means for a bridge:

* **Audio.** ``session.start`` asks for ``audio/pcmu`` at 8000 Hz, so a Twilio ``media.payload``
  becomes ``session.input_audio.append.audio`` unchanged, and a ``session.output_audio.delta`` is
  decoded as strict base64 (:func:`voxbridge.audio.b64_decode`, the same check as Twilio's payload)
  into :class:`~voxbridge.providers.events.AgentAudio` mu-law bytes (no item or response id: the
  protocol has none). A delta that fails raises :class:`~voxbridge.errors.BadAudio`.
* **Barge-in.** The server event list (``ServerEvent``) has *no* event saying the caller started
  speaking or the model stopped or was interrupted: no ``speech_started``, no ``interrupted``, no
  response lifecycle. The model simply stops sending ``session.output_audio.delta``. So this codec
  never emits :class:`~voxbridge.providers.events.SpeechStarted`, the call never sends the carrier
  a ``clear`` for GPT-Live, and :meth:`GptLiveCodec.interrupt` sends nothing (there is no truncate).
  The cost: agent audio already queued at the carrier when the model stops still plays out (the
  service sends faster than real time, so up to the carrier's buffer). Input transcript deltas are
  not used as a barge-in signal: in a full-duplex conversation the caller's "mm-hm" while the model
  speaks is transcribed too, and is not an interruption.
* **Transcripts.** ``session.input_transcript.delta`` / ``session.output_transcript.delta`` are
  fragments, and "do not define complete turns or include a transcript-done event": no server
  event of ``ServerEvent`` says that the model (or the caller) finished speaking. So the codec
  accumulates each side's fragments (:attr:`GptLiveCodec.pending`) and emits a final
  :class:`~voxbridge.providers.events.Transcript` line at the first thing that proves it over: the
  other side's first fragment (a change of speaker), ``session.delegation.created`` (the model
  hands work to a backend: what it said before is a line), and the end of the session:
  :meth:`GptLiveCodec.flush`, which the link calls when it stops reading the session (a drop, a
  recycle, the end of the call, ``session.closed`` included). So the agent's last line reaches the
  journal, and the history a resumed session is seeded with.
* **Usage.** ``session.usage.updated`` and ``session.closed`` carry *cumulative* billable
  ``seconds`` (no tokens; "do not sum values across usage events"): the codec reports the increase
  since the previous report as ``Usage((("billed_seconds", delta),))``. None of OpenAI Realtime's
  token kinds exist in GPT-Live usage, so ``billed_seconds`` (Ultravox's kind) is the only kind.
* **Closing.** :meth:`GptLiveCodec.closing` sends ``session.close``; the service answers
  ``session.closed{reason, usage}`` and closes the socket. The reason decides what the close means
  (:data:`CLOSED_REASONS`), remembered for :meth:`GptLiveCodec.close_reason`:
  ``remote_hangup`` is :class:`~voxbridge.providers.events.AgentHangup` (the call ends
  ``agent_hangup``); ``content`` (a safety filter ended the session) is a
  :class:`~voxbridge.providers.events.ProviderError` and the close is a refusal
  (``upstream_rejected``: final, never retried -- a new session seeded with the same history would
  hit the same filter -- and the carrier's fallback can run); ``expired`` (the session duration
  limit) and ``connection_lost`` are drops the link resumes with the conversation replayed;
  ``close_requested`` that voxbridge did not request ends the call (``agent_hangup``).
* **History.** A resumed session is seeded through ``session.start`` ``session.input``: text-only
  developer, user and assistant messages, at most 128 messages and 8,192 rendered tokens. The codec
  keeps the most recent lines that fit, estimating tokens conservatively as ``ceil(chars / 3)``
  plus 8 per message for the role framing (:func:`history_input`). Key presses are the user
  message :func:`~voxbridge.providers.events.dtmf_message`; a tool exchange is a developer message
  (the protocol has no function-call items in history).
* **Starting.** ``session.start`` must come first, "and wait for ``session.started`` before
  application commands": the codec :attr:`~GptLiveCodec.awaits_acknowledgement`, so the link
  sends ``session.start`` alone, reads until ``session.started``
  (:meth:`GptLiveCodec.acknowledged`), then sends the greeting, and only then does caller audio
  flow.
* **Greeting and key presses.** No ``response.create`` exists for the Live model itself. The
  greeting is ``session.commentary.append`` ("context the Live model can communicate to the user")
  asking it to say the text, in the call's first session only; key presses are
  ``session.instructions.append`` with :func:`~voxbridge.providers.events.dtmf_message` (kept in
  the conversation through compaction).
* **Tools.** The Live model does not call functions itself: it delegates tasks. With tools and a
  ``tools_model``, ``session.start`` sets ``delegation`` to a Responses backend with the tools as
  ``function`` tools; the backend's calls arrive inside ``response.event`` (a nested Responses
  ``response.output_item.done`` whose item is a ``function_call``) and become
  :class:`~voxbridge.providers.events.ToolCall`; a result goes back as ``response.item.create``
  (``function_call_output``) and ``response.create``. To a session that never saw the call (a
  resume), the exchange is told as ``session.commentary.append`` instead. Without a
  ``tools_model`` no tools are declared (the service cannot run them):
  :meth:`GptLiveProvider.tools_warning` says so, and ``voxbridge serve`` logs it at start.

Inbound frames are parsed with ``orjson``; a frame that is not a JSON object with a string
``type`` (or a binary frame) raises ``RemoteProtocolError``; events the bridge does not act on map
to ``None``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

import attrs
import orjson

from ..audio import b64_decode
from ..errors import BadAudio, Reason, RemoteProtocolError, SettingsError
from .base import Frame, ProviderSession, configured
from .endpoint import ProviderEndpoint, checked_ws_url
from .events import (
    AgentAudio,
    AgentHangup,
    HistoryItem,
    ProviderError,
    ProviderEvent,
    ToolCall,
    ToolExchange,
    Transcript,
    Truncation,
    Usage,
    dtmf_message,
)
from .spec import ProviderSpec, option

if TYPE_CHECKING:
    from ..agents import AgentConfig
    from ..settings import Settings
    from ..tools import Tool

__all__ = [
    "CLOSED_REASONS",
    "CLOSE_REASONS",
    "GPT_LIVE_MODEL",
    "GPT_LIVE_URL",
    "GPT_LIVE_VOICE",
    "MAX_HISTORY_MESSAGES",
    "MAX_HISTORY_TOKENS",
    "SPEC",
    "GptLiveCodec",
    "GptLiveProvider",
    "GptLiveSettings",
    "estimate_tokens",
    "gpt_live_endpoint",
    "history_input",
]

GPT_LIVE_URL = "wss://api.openai.com/v1/live/sessions"
GPT_LIVE_MODEL = "gpt-live-1"
#: The service's default voice (``SessionConfig.audio.output.voice``).
GPT_LIVE_VOICE = "marin"
#: ``SessionConfig.input``: "at most 128 messages and a configured rendered-token limit (8,192 by
#: default)".
MAX_HISTORY_MESSAGES = 128
MAX_HISTORY_TOKENS = 8192
#: Tokens counted per history message for its role framing, on top of its text.
MESSAGE_OVERHEAD_TOKENS = 8
#: The usage kind (``voxbridge_provider_usage_total{kind}``): cumulative billable seconds.
USAGE_KIND = "billed_seconds"

_AUDIO_DELTA = "session.output_audio.delta"
_INPUT_TRANSCRIPT = "session.input_transcript.delta"
_OUTPUT_TRANSCRIPT = "session.output_transcript.delta"
_STARTED = "session.started"

#: What the greeting's commentary says before the greeting itself.
GREETING_PROMPT = (
    "Start the call: greet the caller by saying exactly the text below, word for word, "
    "and nothing else.\n\n"
)

#: ``session.closed.reason`` -> what the close of the socket that follows means.
CLOSED_REASONS: dict[str, Reason] = {
    "close_requested": Reason.AGENT_HANGUP,
    "expired": Reason.UPSTREAM_CLOSED,
    "content": Reason.UPSTREAM_REJECTED,
    "remote_hangup": Reason.AGENT_HANGUP,
    "connection_lost": Reason.UPSTREAM_CLOSED,
}

#: Close codes that are not "the session dropped, resume it", when no ``session.closed`` said
#: otherwise: 1008 (policy violation) is a refusal of the key or account.
CLOSE_REASONS: dict[int, Reason] = {1008: Reason.UPSTREAM_REJECTED}


def _dumps(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def estimate_tokens(text: str) -> int:
    """A conservative token estimate of one history message: ``ceil(len(text) / 3)`` plus
    :data:`MESSAGE_OVERHEAD_TOKENS` (English averages about 4 characters per token)."""
    return math.ceil(len(text) / 3) + MESSAGE_OVERHEAD_TOKENS


def _tool_text(exchange: ToolExchange) -> str:
    return f"Tool call earlier in this call: {exchange.text}"


def _history_message(item: HistoryItem) -> dict[str, Any] | None:
    if isinstance(item, ToolExchange):
        return _message("developer", _tool_text(item))
    if item.role not in ("caller", "agent", "dtmf"):
        raise ValueError(f"transcript role must be 'caller', 'agent' or 'dtmf', got {item.role!r}")
    if not item.text:
        return None
    if item.role == "agent":
        return _message("assistant", item.text)
    text = dtmf_message(item.text) if item.role == "dtmf" else item.text
    return _message("user", text)


def _message(role: str, text: str) -> dict[str, Any]:
    part = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "role": role, "content": [{"type": part, "text": text}]}


def history_input(
    history: Sequence[HistoryItem],
    *,
    max_messages: int = MAX_HISTORY_MESSAGES,
    max_tokens: int = MAX_HISTORY_TOKENS,
) -> list[dict[str, Any]]:
    """The most recent ``history`` that fits GPT-Live's ``session.input`` limits, oldest first.

    Walks back from the newest line, keeping each while the running :func:`estimate_tokens`
    total stays within ``max_tokens`` and at most ``max_messages`` are kept; it stops at the
    first line that does not fit (the replay stays a contiguous tail of the conversation).
    Empty transcript lines are skipped.

    Raises:
        ValueError: a transcript role is not ``caller``, ``agent`` or ``dtmf``.
    """
    kept: list[dict[str, Any]] = []
    tokens = 0
    for item in reversed(history):
        message = _history_message(item)
        if message is None:
            continue
        cost = estimate_tokens(message["content"][0]["text"])
        if len(kept) >= max_messages or tokens + cost > max_tokens:
            break
        kept.append(message)
        tokens += cost
    kept.reverse()
    return kept


class GptLiveCodec:
    """Encode client events and decode server events for one GPT-Live session.

    Args:
        model: ``session.model`` (``gpt-live-1``).
        voice: the agent voice (a built-in name such as ``marin``).
        instructions: the Live model's instructions (omitted when empty: server defaults).
        tools: the tools, declared to a Responses backend when ``tools_model`` is set.
        tools_model: the Responses model the Live session delegates tool work to (``None``: no
            tools are declared).
        greeting: what the agent says first at call start (``None`` or ``""``: it waits).
    """

    def __init__(
        self,
        *,
        model: str = GPT_LIVE_MODEL,
        voice: str = GPT_LIVE_VOICE,
        instructions: str = "",
        tools: Sequence[Tool] = (),
        tools_model: str | None = None,
        greeting: str | None = None,
    ) -> None:
        self.model = model
        self.voice = voice
        self.instructions = instructions
        self.tools: tuple[Tool, ...] = tuple(tools)
        self.tools_model = tools_model
        self.greeting = greeting
        #: ``session.closed.reason``, once the service said why the session ended.
        self.closed_reason: str | None = None
        #: Whether :meth:`closing` asked the service to close.
        self.close_requested = False
        #: The transcript line being accumulated: ``(role, text)``.
        self.pending: tuple[str, str] | None = None
        self._billed = 0.0
        #: What :meth:`acknowledged` sends once the service has started the session.
        self._after_start: list[Frame] = []

    def __repr__(self) -> str:
        return f"GptLiveCodec(model={self.model!r}, voice={self.voice!r})"

    # --- opening ------------------------------------------------------------------------------

    #: ``session.start``, then wait for ``session.started`` (:meth:`acknowledged`).
    awaits_acknowledgement = True

    def opening(self, history: Sequence[HistoryItem], *, first: bool) -> list[Frame]:
        """``session.start``, with ``history`` as its ``input`` (:func:`history_input`). In the
        call's ``first`` session, for an agent with a greeting, the greeting's
        ``session.commentary.append`` follows ``session.started`` (:meth:`acknowledged`).

        Raises:
            ValueError: a transcript role is not ``caller``, ``agent`` or ``dtmf``.
        """
        self._after_start = []
        if first and self.greeting:
            self._after_start.append(self.commentary(GREETING_PROMPT + self.greeting))
        return [self.session_start(history)]

    def acknowledged(self, frame: Frame) -> list[Frame] | None:
        """``None`` unless ``frame`` is ``session.started``; then the frames that wait for it
        (the greeting, in the first session). Does not change what :meth:`decode` does."""
        if not isinstance(frame, str) or _STARTED not in frame:
            return None
        try:
            event = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(event, dict) or event.get("type") != _STARTED:
            return None
        frames, self._after_start = self._after_start, []
        return frames

    def session_start(self, history: Sequence[HistoryItem] = ()) -> str:
        """The ``session.start`` event: model, mu-law 8 kHz, voice, instructions, tools, history."""
        session: dict[str, Any] = {
            "model": self.model,
            "audio": {
                "format": {"type": "audio/pcmu", "rate": 8000},
                "output": {"voice": self.voice},
            },
        }
        if self.instructions:
            session["instructions"] = self.instructions
        if self.tools and self.tools_model:
            session["delegation"] = {
                "type": "responses",
                "responses": {
                    "model": self.tools_model,
                    "tools": [
                        {
                            "type": "function",
                            "name": tool.name,
                            "description": tool.description,
                            "parameters": _plain(tool.parameters),
                        }
                        for tool in self.tools
                    ],
                },
            }
        messages = history_input(history)
        if messages:
            session["input"] = messages
        return _dumps({"type": "session.start", "session": session})

    @staticmethod
    def commentary(text: str) -> str:
        """``session.commentary.append``: context the model says to the caller."""
        return _dumps({"type": "session.commentary.append", "content": text, "delegation_id": None})

    # --- the hot paths ------------------------------------------------------------------------

    @staticmethod
    def audio(payload: str) -> str:
        """``session.input_audio.append`` carrying base64 mu-law exactly as received."""
        # base64 text contains only [A-Za-z0-9+/=]: nothing to escape.
        return '{"type":"session.input_audio.append","audio":"' + payload + '"}'

    def decode(self, frame: Frame) -> ProviderEvent | None:
        """Map one server frame to a neutral event, or ``None`` for events the bridge ignores.

        Raises:
            BadAudio: an audio delta that is not strict base64.
            RemoteProtocolError: a binary frame, not a JSON object with a string ``type``, or a
                mapped event with a field of the wrong type.
        """
        if not isinstance(frame, str):
            raise RemoteProtocolError("GPT-Live sent a binary frame; it speaks JSON text")
        try:
            event = orjson.loads(frame)
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
            return AgentAudio(audio) if audio else None
        if kind == _INPUT_TRANSCRIPT:
            return self._fragment("caller", _string(event, "delta"))
        if kind == _OUTPUT_TRANSCRIPT:
            return self._fragment("agent", _string(event, "delta"))
        if kind == "session.usage.updated":
            return self._usage(event.get("usage"))
        if kind == "session.closed":
            return self._closed(event)
        if kind == "response.event":
            return _tool_call(event.get("event"))
        if kind == "session.delegation.created":
            return self._end_line()  # the model hands work over: what it said is a line
        if kind == "error":
            error = event.get("error")
            error = error if isinstance(error, dict) else {}
            return ProviderError(
                _text(error.get("code") or error.get("type")), _text(error.get("message"))
            )
        return None

    def _fragment(self, role: str, text: str) -> Transcript | None:
        pending = self.pending
        if pending is not None and pending[0] == role:
            self.pending = (role, pending[1] + text)
            return None
        line = self._end_line()  # a change of speaker ends the other side's line
        self.pending = (role, text)
        return line

    def _end_line(self) -> Transcript | None:
        """The line being gathered, now final (``None`` if there is none, or only blanks)."""
        pending, self.pending = self.pending, None
        if pending is None or not pending[1].strip():
            return None
        return Transcript(pending[0], pending[1].strip())

    def _usage(self, usage: object) -> Usage | None:
        if not isinstance(usage, dict):
            raise RemoteProtocolError(f"usage must be an object, got {_kind(usage)}")
        seconds: Any = usage.get("seconds")
        finite = type(seconds) is int or (type(seconds) is float and math.isfinite(seconds))
        if not finite:  # (bool excluded: type(True) is bool)
            raise RemoteProtocolError(f"usage.seconds must be a number, got {_kind(seconds)}")
        total = float(seconds)
        increase = total - self._billed
        if increase <= 0:
            return None  # cumulative: never negative, and a repeat adds nothing
        self._billed = total
        return Usage(((USAGE_KIND, increase),))

    def _closed(self, event: dict[str, Any]) -> ProviderEvent | None:
        reason = _string(event, "reason")
        if reason not in CLOSED_REASONS:
            raise RemoteProtocolError(f"session.closed.reason {reason!r} is not a known reason")
        self.closed_reason = reason
        usage = event.get("usage")
        increase = self._usage(usage) if usage is not None else None
        if reason == "remote_hangup":
            return AgentHangup("GPT-Live session closed: remote_hangup")
        if reason == "content":
            return ProviderError("content", "GPT-Live closed the session: safety filter")
        return increase

    # --- tools and key presses ----------------------------------------------------------------

    def tool_result(self, exchange: ToolExchange, *, known: bool) -> list[Frame]:
        """``response.item.create`` with the ``function_call_output``, and ``response.create``.

        ``known=False`` (a resumed session never saw the call): the exchange as commentary.
        """
        if not known:
            return [self.commentary(_tool_text(exchange))]
        output = {
            "type": "function_call_output",
            "call_id": exchange.call_id,
            "output": exchange.output,
        }
        return [
            _dumps({"type": "response.item.create", "item": output}),
            _dumps({"type": "response.create"}),
        ]

    def dtmf(self, digits: str) -> list[Frame]:
        """``session.instructions.append`` with :func:`dtmf_message` of ``digits``."""
        appended = {
            "type": "session.instructions.append",
            "content": dtmf_message(digits),
            "delegation_id": None,
        }
        return [_dumps(appended)]

    # --- barge-in and the end -----------------------------------------------------------------

    def interrupt(self, truncations: Sequence[Truncation]) -> list[Frame]:
        """Nothing: the model handles interruptions itself and has no truncate."""
        return []

    keepalive = None  # no keepalive message in the protocol: caller audio and WebSocket pings

    def closing(self) -> list[Frame]:
        """``session.close``; the service answers ``session.closed`` with the final usage."""
        self.close_requested = True
        return ['{"type":"session.close"}']

    def flush(self) -> list[ProviderEvent]:
        """The line still being gathered (:attr:`pending`), final now that the session ends:
        the protocol has no event that ends a turn, so the agent's last words would be lost
        otherwise."""
        line = self._end_line()
        return [] if line is None else [line]

    def close_reason(self, code: int) -> Reason:
        """What the socket closing with ``code`` means: the ``session.closed`` reason if one came
        (:data:`CLOSED_REASONS`; an unrequested ``close_requested`` is the agent hanging up),
        else :data:`CLOSE_REASONS`, else a drop to resume."""
        if self.closed_reason is not None:
            return CLOSED_REASONS[self.closed_reason]
        return CLOSE_REASONS.get(code, Reason.UPSTREAM_CLOSED)


def _tool_call(nested: object) -> ToolCall | None:
    """A function call of the Responses backend (``response.output_item.done``), or ``None``."""
    if not isinstance(nested, dict):
        raise RemoteProtocolError(f"response.event.event must be an object, got {_kind(nested)}")
    if nested.get("type") != "response.output_item.done":
        return None
    item = nested.get("item")
    if not isinstance(item, dict) or item.get("type") != "function_call":
        return None
    call_id, name = item.get("call_id"), item.get("name")
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
        raise RemoteProtocolError("function_call needs string call_id and name")
    arguments = item.get("arguments")
    if arguments is None:
        arguments = "{}"
    if not isinstance(arguments, str):
        raise RemoteProtocolError(
            f"function_call.arguments must be a string, got {_kind(arguments)}"
        )
    return ToolCall(call_id, name, arguments)


def _string(event: dict[str, Any], field: str) -> str:
    value = event.get(field)
    if not isinstance(value, str):
        raise RemoteProtocolError(f"{event['type']}.{field} must be a string, got {_kind(value)}")
    return value


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


# --- the provider -------------------------------------------------------------------------------


def gpt_live_endpoint(
    url: str = GPT_LIVE_URL, api_key: str | None = None, *, name: str = "gpt-live"
) -> ProviderEndpoint:
    """The endpoint of a GPT-Live service at ``url``, with ``Authorization: Bearer`` when there
    is a key (the model goes in ``session.start``, never in the URL)."""
    headers = (("Authorization", f"Bearer {api_key}"),) if api_key else ()
    return ProviderEndpoint(name, url, headers)


class GptLiveProvider:
    """OpenAI GPT-Live as a :class:`~voxbridge.providers.base.Provider`. No I/O to prepare.

    Args:
        endpoint: where to connect; see :func:`gpt_live_endpoint`.
        model, voice, instructions, tools, tools_model, greeting: see :class:`GptLiveCodec`.
        name: the metric label; defaults to ``endpoint.name``.
    """

    def __init__(
        self,
        endpoint: ProviderEndpoint,
        *,
        model: str = GPT_LIVE_MODEL,
        voice: str = GPT_LIVE_VOICE,
        instructions: str = "",
        tools: Sequence[Tool] = (),
        tools_model: str | None = None,
        greeting: str | None = None,
        name: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.model = model
        self.voice = voice
        self.instructions = instructions
        self.tools: tuple[Tool, ...] = tuple(tools)
        self.tools_model = tools_model
        self.greeting = greeting
        self.name = endpoint.name if name is None else name

    @classmethod
    def from_settings(cls, endpoint: ProviderEndpoint, settings: Settings) -> Self:
        """The provider for ``endpoint`` with the model and tools model of ``settings``'
        ``gpt-live`` settings, and its voice and instructions.

        Raises:
            SettingsError: ``instructions_file`` cannot be read.
        """
        own: GptLiveSettings = SPEC.own(settings)
        return cls(
            endpoint,
            model=own.model,
            voice=settings.voice or GPT_LIVE_VOICE,
            instructions=settings.agent_instructions(),
            tools_model=own.tools_model,
        )

    def for_agent(self, agent: AgentConfig, tools: Sequence[Tool]) -> Self:
        """A copy for ``agent`` (:func:`~voxbridge.providers.base.configured`). No I/O."""
        return configured(self, agent, tools)

    def tools_warning(self, tools: Sequence[str]) -> str | None:
        """Why ``tools`` (names), offered to an agent of this provider, will not reach the model:
        no ``tools_model`` (``--gpt-live-tools-model``), so no Responses backend is declared to
        run them. ``None`` when they will (or there are none)."""
        if not tools or self.tools_model:
            return None
        return (
            f"{', '.join(tools)} not declared to GPT-Live: the Live model runs tools only through "
            "a Responses backend, and --gpt-live-tools-model is not set"
        )

    def __repr__(self) -> str:
        return f"GptLiveProvider({self.endpoint!r}, model={self.model!r})"

    def codec(self) -> GptLiveCodec:
        """A fresh codec with this provider's settings."""
        return GptLiveCodec(
            model=self.model,
            voice=self.voice,
            instructions=self.instructions,
            tools=self.tools,
            tools_model=self.tools_model,
            greeting=self.greeting,
        )

    async def session(self, history: Sequence[HistoryItem], *, first: bool) -> ProviderSession:
        """The endpoint and a fresh codec (``history`` is replayed, and the greeting said in the
        ``first`` session, by ``codec.opening``)."""
        return ProviderSession(self.endpoint, self.codec())


# --- declaration ----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class GptLiveSettings:
    """``--gpt-live-*`` settings (the key: ``OPENAI_API_KEY``, environment only)."""

    api_key: str | None = option(None, "OpenAI key (GPT-Live)", secret=True)
    model: str = option(GPT_LIVE_MODEL, "OpenAI GPT-Live model")
    tools_model: str | None = option(
        None, "GPT-Live: the Responses model that runs tools for the live model (unset: no tools)"
    )


def _build(settings: Settings, own: GptLiveSettings, echo_url: str | None) -> GptLiveProvider:
    if not own.api_key and settings.provider_url is None:
        raise SettingsError("provider gpt-live needs OPENAI_API_KEY")
    endpoint = gpt_live_endpoint(checked_ws_url(settings.provider_url or GPT_LIVE_URL), own.api_key)
    return GptLiveProvider.from_settings(endpoint, settings)


SPEC = ProviderSpec(
    name="gpt-live",
    settings=GptLiveSettings,
    build=_build,
    close_reasons=CLOSE_REASONS,
    codec=GptLiveCodec,
    key_variables=("OPENAI_API_KEY",),
    usage_kinds=(USAGE_KIND,),
    endpoint="ws(s)://.../v1/live/sessions",
    fake="voxbridge.testing.fake_gpt_live:FakeGptLive",
    voice=GPT_LIVE_VOICE,
)
