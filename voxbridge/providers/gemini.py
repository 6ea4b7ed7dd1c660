"""Gemini Live (``BidiGenerateContent``) over WebSocket: a provider and its sans-IO codec.

Gemini Live speaks 16-bit PCM at 16 kHz in and 24 kHz out; Twilio speaks G.711 mu-law at 8 kHz.
The codec therefore transcodes *and resamples* on the hot path, with ``soxr`` streaming resamplers
(``soxr.ResampleStream``), one per direction and per session, whose filter state carries from one
20 ms chunk to the next. A chunk-by-chunk resampler without state (or linear interpolation) clicks
at every chunk boundary and aliases; soxr is a maintained, band-limited, C implementation whose
cost is a few tens of microseconds per chunk (``python -m benchmarks.codec``: 2.6 ms of CPU per
call-second). The resamplers are pure computation, so the codec stays sans-IO. soxr's variable-rate engine is used for its latency (see
:func:`voxbridge.audio.resampler`).

* Opening a session sends ``setup`` (the model, audio responses with the agent's voice, the system
  instruction, the tools as ``functionDeclarations``, caller and agent transcription, a sliding
  context window so audio sessions are not capped at 15 minutes, and ``sessionResumption``). When
  the call already holds a resumption handle (:class:`Resumption`, shared by every session of one
  call) the setup names it and nothing is replayed: the service restores the conversation itself.
  Without one the conversation so far is sent as ``clientContent`` turns after a
  ``historyConfig{initialHistoryInClientContent}`` setup. In the call's first session a greeting is
  asked for as ``realtimeInput.text``. The service must answer ``setupComplete`` before anything
  else is sent (the ``google-genai`` client waits for it too): the codec
  :attr:`~GeminiCodec.awaits_acknowledgement`, so the link sends ``setup`` alone, and the turns,
  the greeting and caller audio only after ``setupComplete`` (:meth:`GeminiCodec.acknowledged`).
* Agent audio (``serverContent.modelTurn.parts[].inlineData``, ``audio/pcm;rate=24000``) is
  validated (strict base64, whole samples, the PCM mime type and rate) -- :class:`BadAudio`
  otherwise -- then resampled to 8 kHz and encoded as mu-law.
* ``serverContent.interrupted`` is :class:`SpeechStarted` (the bridge clears Twilio's buffer; the
  service truncated the turn itself, so :meth:`GeminiCodec.interrupt` sends nothing). The output
  resampler's tail of the interrupted turn is discarded.
* Transcription chunks are gathered; a caller line is final when the agent begins to answer (or at
  the end of the turn), an agent line at ``turnComplete`` (or when the caller interrupts it).
* ``toolCall.functionCalls`` become :class:`ToolCall` events; results go back as
  ``toolResponse.functionResponses``.
* ``usageMetadata`` (per turn) is :class:`Usage` by modality.
* ``sessionResumptionUpdate`` stores the newest resumable handle in :class:`Resumption`.
* ``goAway{timeLeft}`` (about a minute before the service ends a connection, at about 10 minutes)
  is :class:`SessionEnding`: the call has its link recycle the session, make before break
  (:meth:`~voxbridge.session.link.ProviderLink.recycle_soon`), the new session resuming with the
  handle, at a turn boundary: at once if the model is not answering; else ``SessionEnding`` says
  ``answering``, and the codec says ``SessionEnding`` again when the answer has ended
  (``turnComplete``, or ``interrupted``), so the caller hears it whole (the link recycles at the
  latest ``RECYCLE_MARGIN`` seconds before the time is up). The model is answering from its first
  audio or output transcription until ``turnComplete`` or ``interrupted``. The service closes the
  connection (1000) when the time is up.
* :meth:`GeminiCodec.flush`, when the link stops reading a session, gives the events still queued
  (below) and the transcript lines still being gathered.

One server message may carry several things (a ``turnComplete`` with ``usageMetadata``, say), but
:meth:`GeminiCodec.decode` returns one event per frame. Audio, barge-in, tool calls and ``goAway``
are returned at once; transcripts and usage wait in a small queue and come out with the next frames
that carry nothing urgent (Gemini sends many: transcription chunks, resumption updates).
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
import numpy as np
import orjson

from ..audio import b64_decode, b64_encode, pcm16_to_ulaw, resampler, ulaw_to_pcm16
from ..errors import BadAudio, Reason, RemoteProtocolError, SettingsError
from .base import Frame, Provider, ProviderCodec, ProviderSession, configured
from .endpoint import ProviderEndpoint, checked_ws_url
from .events import (
    AgentAudio,
    HistoryItem,
    ProviderEvent,
    SessionEnding,
    SpeechStarted,
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
    "CLOSE_REASONS",
    "GEMINI_MODEL",
    "GEMINI_URL",
    "GEMINI_VOICE",
    "GeminiCodec",
    "GeminiProvider",
    "Resumption",
    "gemini_endpoint",
]

GEMINI_URL = (
    "wss://generativelanguage.googleapis.com/ws/"
    "google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
)
GEMINI_MODEL = "gemini-2.5-flash-native-audio-latest"
GEMINI_VOICE = "Puck"
CARRIER_RATE = 8000
INPUT_RATE = 16000
OUTPUT_RATE = 24000
INPUT_MIME = f"audio/pcm;rate={INPUT_RATE}"
#: Buffered transcript text kept per role (characters); a line longer than this is cut.
MAX_TRANSCRIPT = 16384
#: Events waiting behind the urgent ones (see the module docstring); the oldest go first.
MAX_PENDING = 64
#: What the greeting request says before the greeting itself.
GREETING_PROMPT = (
    "Start the call: greet the caller by saying exactly the text below, word for word, "
    "and nothing else.\n\n"
)
#: Sent after a replayed conversation that ends with the caller's words or a tool's result.
RESUME_PROMPT = "The connection was restored. Continue the conversation where it left off."

_PCM_MIME = re.compile(r"audio/pcm(?:;\s*rate=([0-9]{1,6}))?", re.IGNORECASE)
_ROLES = {"caller": "user", "dtmf": "user", "agent": "model"}
#: ``usageMetadata`` details modality -> usage kind suffix.
_MODALITIES = {"TEXT": "text", "AUDIO": "audio"}
_URGENT = (AgentAudio, SpeechStarted, ToolCall, SessionEnding)
#: The usage kinds ``usageMetadata`` yields (``voxbridge_provider_usage_total{kind}``).
USAGE_KINDS = (
    "input_text_tokens",
    "input_audio_tokens",
    "input_other_tokens",
    "input_cached_tokens",
    "input_tool_tokens",
    "input_tokens",
    "output_text_tokens",
    "output_audio_tokens",
    "output_other_tokens",
    "output_thinking_tokens",
    "output_tokens",
)


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


@attrs.define
class Resumption:
    """The newest session resumption handle of one call, shared by its sessions' codecs.

    ``handle`` is ``None`` until the service says a point of the session is resumable, and again
    when it says the current point is not (a drop then replays the history instead).
    """

    handle: str | None = attrs.field(default=None, repr=lambda h: "set" if h else "None")


class GeminiCodec:
    """Encode client messages and decode server messages for one Gemini Live session.

    Args:
        model: the model, without or with the ``models/`` prefix.
        voice: a prebuilt voice name (``Puck``, ``Kore``, ...).
        instructions: the system instruction (empty: none is sent).
        tools: declared as ``functionDeclarations``.
        greeting: what the agent says first at call start (``None`` or ``""``: it waits).
        resumption: the call's :class:`Resumption` (a fresh one if not given).
    """

    def __init__(
        self,
        *,
        model: str = GEMINI_MODEL,
        voice: str = GEMINI_VOICE,
        instructions: str = "",
        tools: Sequence[Tool] = (),
        greeting: str | None = None,
        resumption: Resumption | None = None,
    ) -> None:
        self.model = model if model.startswith("models/") else f"models/{model}"
        self.voice = voice
        self.instructions = instructions
        self.tools = tuple(tools)
        self.greeting = greeting
        self.resumption = Resumption() if resumption is None else resumption
        #: ``goAway.timeLeft`` in seconds, once the service announced the end of this connection.
        self.ending_in: float | None = None
        self.setup_complete = False
        #: The model is answering: audio or output transcription since the last turn ended.
        self.answering = False
        self._ending_after_turn = False  # goAway came while answering: say so when it ends
        self._after_setup: list[Frame] = []  # what acknowledged() sends after setupComplete
        self._resumed_with: str | None = None
        self._up = resampler(CARRIER_RATE, INPUT_RATE)
        self._down = resampler(OUTPUT_RATE, CARRIER_RATE)
        self._down_dirty = False
        self._caller = ""
        self._agent = ""
        self._pending: deque[ProviderEvent] = deque(maxlen=MAX_PENDING)

    def __repr__(self) -> str:
        return f"GeminiCodec(model={self.model!r}, resumption={self.resumption!r})"

    # --- client messages ----------------------------------------------------------------------

    def setup(self, *, handle: str | None, history: bool) -> dict[str, Any]:
        """The ``setup`` message body."""
        setup: dict[str, Any] = {
            "model": self.model,
            "generationConfig": {
                "responseModalities": ["AUDIO"],
                "speechConfig": {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": self.voice}}},
            },
        }
        if self.instructions:
            setup["systemInstruction"] = {"parts": [{"text": self.instructions}]}
        if self.tools:
            setup["tools"] = [
                {
                    "functionDeclarations": [
                        {
                            "name": tool.name,
                            "description": tool.description,
                            "parametersJsonSchema": _plain(tool.parameters),
                        }
                        for tool in self.tools
                    ]
                }
            ]
        setup["sessionResumption"] = {} if handle is None else {"handle": handle}
        setup["contextWindowCompression"] = {"slidingWindow": {}}
        setup["inputAudioTranscription"] = {}
        setup["outputAudioTranscription"] = {}
        if history:
            setup["historyConfig"] = {"initialHistoryInClientContent": True}
        return {"setup": setup}

    #: ``setup``, then wait for ``setupComplete`` (:meth:`acknowledged`).
    awaits_acknowledgement = True

    def opening(self, history: Sequence[HistoryItem], *, first: bool) -> list[Frame]:
        """``setup`` (naming the call's resumption handle in a session that is not the
        ``first``, when there is one and a conversation to resume). After ``setupComplete``
        (:meth:`acknowledged`): without a handle, ``history`` as one ``clientContent`` (and a
        nudge if the model owes an answer); in the ``first`` session, the greeting request."""
        handle = self.resumption.handle if history and not first else None
        self._resumed_with = handle
        turns = [] if handle is not None else _turns(history)
        after: list[Frame] = []
        if turns:
            after.append(_dumps({"clientContent": {"turns": turns, "turnComplete": True}}))
            if _owes_an_answer(history[-1]):
                after.append(_text_input(RESUME_PROMPT))
        if first and self.greeting:
            after.append(_text_input(GREETING_PROMPT + self.greeting))
        self._after_setup = after
        return [_dumps(self.setup(handle=handle, history=bool(turns)))]

    def acknowledged(self, frame: Frame) -> list[Frame] | None:
        """``None`` unless ``frame`` is ``setupComplete``; then what waits for it (the replayed
        turns, a nudge, the greeting). :meth:`decode` still decodes the frame, to the same
        effect."""
        raw = frame.encode() if isinstance(frame, str) else bytes(frame)
        if b"setupComplete" not in raw:
            return None
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(message, dict) or "setupComplete" not in message:
            return None
        self.setup_complete = True  # (a close from now on is not a refusal of the handle)
        frames, self._after_setup = self._after_setup, []
        return frames

    def audio(self, payload: str) -> Frame:
        """Caller audio (base64 mu-law 8 kHz) as ``realtimeInput.audio``, PCM16LE at 16 kHz.

        Raises:
            RemoteProtocolError: ``payload`` is not strict base64.
        """
        try:
            ulaw = b64_decode(payload)
        except ValueError as exc:
            raise RemoteProtocolError(str(exc)) from None
        samples = np.frombuffer(ulaw_to_pcm16(ulaw), dtype="<i2")
        pcm = self._up.resample_chunk(samples).astype("<i2", copy=False).tobytes()
        return (
            '{"realtimeInput":{"audio":{"data":"'
            + b64_encode(pcm)
            + '","mimeType":"'
            + INPUT_MIME
            + '"}}}'
        )

    def interrupt(self, truncations: Sequence[Truncation]) -> list[Frame]:
        """Nothing: the service stopped and truncated the turn itself."""
        return []

    def tool_result(self, exchange: ToolExchange, *, known: bool) -> list[Frame]:
        """``toolResponse.functionResponses[{id, name, response}]``: ``response`` is the output
        object (a non-object output is wrapped as ``{"output": ...}``).

        Not ``known`` (a resume replaced the session that asked): the exchange is replayed as
        ``clientContent`` (the call, then its response), which also makes the model answer.
        """
        response = _response(exchange.output)
        if not known:
            turns = _exchange_turns(exchange)
            return [_dumps({"clientContent": {"turns": turns, "turnComplete": True}})]
        function = {"id": exchange.call_id, "name": exchange.name, "response": response}
        return [_dumps({"toolResponse": {"functionResponses": [function]}})]

    def dtmf(self, digits: str) -> list[Frame]:
        """Key presses as ``realtimeInput.text`` (:func:`dtmf_message`); the model answers."""
        return [_text_input(dtmf_message(digits))]

    keepalive = None  # no keepalive message in the protocol: caller audio and WebSocket pings

    def closing(self) -> list[Frame]:
        """Nothing: Gemini Live has no goodbye message; closing the socket ends the session."""
        return []

    def flush(self) -> list[ProviderEvent]:
        """The events still queued (:attr:`pending`), then the caller's and the agent's lines
        still being gathered, final now that the session ends."""
        events = [*self._pending, *self._flush("caller"), *self._flush("agent")]
        self._pending.clear()
        return events

    def close_reason(self, code: int) -> Reason:
        """What Gemini closing the socket with ``code`` means: see :data:`CLOSE_REASONS`.

        A session that was refused before ``setupComplete`` while naming a resumption handle
        may have been refused for the handle (expired): the handle is forgotten and the session
        is resumed by replaying the history instead.
        """
        if self._resumed_with is not None and not self.setup_complete:
            if self.resumption.handle == self._resumed_with:
                self.resumption.handle = None
            return Reason.UPSTREAM_CLOSED
        return CLOSE_REASONS.get(code, Reason.UPSTREAM_CLOSED)

    # --- server messages ----------------------------------------------------------------------

    def decode(self, frame: Frame) -> ProviderEvent | None:
        """Map one server message to a neutral event (see the module docstring for the order).

        Raises:
            BadAudio: ``inlineData`` that is not strict base64, whole 16-bit samples, or
                ``audio/pcm`` at 24 kHz.
            RemoteProtocolError: malformed JSON, or fields of the wrong type.
        """
        if isinstance(frame, str):
            text: str | bytes = frame
        else:
            text = bytes(frame)  # Gemini sends its JSON messages as binary frames too
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise RemoteProtocolError(f"Gemini sent malformed JSON: {exc}") from None
        if not isinstance(message, dict):
            raise RemoteProtocolError("Gemini message is not a JSON object")
        events = self._events(message)
        urgent = next((e for e in events if isinstance(e, _URGENT)), None)
        for event in events:
            if event is not urgent:
                self._pending.append(event)
        if urgent is not None:
            return urgent
        return self._pending.popleft() if self._pending else None

    @property
    def pending(self) -> int:
        """Events decoded but not yet returned."""
        return len(self._pending)

    def _events(self, message: dict[str, Any]) -> list[ProviderEvent]:
        events: list[ProviderEvent] = []
        if "setupComplete" in message:
            self.setup_complete = True
        content = _object(message, "serverContent")
        if content is not None:
            events += self._server_content(content)
        calls = _object(message, "toolCall")
        if calls is not None:
            events += _tool_calls(calls)
        usage = _object(message, "usageMetadata")
        if usage is not None:
            counted = _usage(usage)
            if counted is not None:
                events.append(counted)
        update = _object(message, "sessionResumptionUpdate")
        if update is not None:
            self._resumption_update(update)
        away = _object(message, "goAway")
        if away is not None:
            self.ending_in = _duration(away.get("timeLeft"))
            self._ending_after_turn = self.answering
            events.append(SessionEnding(self.ending_in, answering=self.answering))
        return events

    def _server_content(self, content: dict[str, Any]) -> list[ProviderEvent]:
        events: list[ProviderEvent] = []
        heard = _transcription(content, "inputTranscription")
        if heard:
            if self._agent:  # the caller speaks after the agent: the agent's line is over
                events += self._flush("agent")
            self._caller = (self._caller + heard)[:MAX_TRANSCRIPT]
        said = _transcription(content, "outputTranscription")
        if said:
            events += self._flush("caller")  # the agent answers: the caller's line is over
            self._agent = (self._agent + said)[:MAX_TRANSCRIPT]
            self.answering = True
        turn = _object(content, "modelTurn")
        if turn is not None:
            audio = self._model_audio(turn)
            if audio:
                events.append(AgentAudio(audio))
            if self._down_dirty:
                self.answering = True
        interrupted = _flag(content, "interrupted")
        if interrupted:
            self._down.clear()  # the tail of the cut turn never plays
            self._down_dirty = False
            events.append(SpeechStarted())
            events += self._flush("agent")
        finished = _flag(content, "generationComplete") or _flag(content, "turnComplete")
        if finished and self._down_dirty:
            tail = self._down.resample_chunk(np.zeros(0, dtype="<i2"), last=True)
            self._down.clear()
            self._down_dirty = False
            if len(tail):
                events.append(AgentAudio(pcm16_to_ulaw(tail.astype("<i2").tobytes())))
        if _flag(content, "turnComplete"):
            events += self._flush("caller") + self._flush("agent")
        if interrupted or _flag(content, "turnComplete"):
            self.answering = False
            if self._ending_after_turn:  # the answer goAway waited for has ended: recycle now
                self._ending_after_turn = False
                events.append(SessionEnding(None, answering=False))
        return events

    def _flush(self, role: str) -> list[ProviderEvent]:
        text = self._caller if role == "caller" else self._agent
        if role == "caller":
            self._caller = ""
        else:
            self._agent = ""
        text = " ".join(text.split())
        return [Transcript(role, text)] if text else []

    def _model_audio(self, turn: dict[str, Any]) -> bytes:
        parts = turn.get("parts", [])
        if not isinstance(parts, list):
            raise RemoteProtocolError("Gemini modelTurn.parts must be a list")
        pcm = bytearray()
        for part in parts:
            if not isinstance(part, dict):
                raise RemoteProtocolError("Gemini modelTurn part must be an object")
            inline = _object(part, "inlineData")
            if inline is None:
                continue  # text or thought parts: the transcription carries the words
            mime, data = inline.get("mimeType"), inline.get("data")
            if not isinstance(mime, str) or not isinstance(data, str):
                raise BadAudio("Gemini inlineData needs a string mimeType and data")
            match = _PCM_MIME.fullmatch(mime.strip())
            if match is None or int(match.group(1) or OUTPUT_RATE) != OUTPUT_RATE:
                raise BadAudio(f"Gemini audio is {mime[:64]!r}, not audio/pcm;rate=24000")
            try:
                chunk = b64_decode(data)
            except ValueError as exc:
                raise BadAudio(f"Gemini audio: {exc}") from None
            if len(chunk) % 2:
                raise BadAudio(f"Gemini audio of {len(chunk)} bytes is not whole 16-bit samples")
            pcm += chunk
        if not pcm:
            return b""
        samples = np.frombuffer(bytes(pcm), dtype="<i2")
        self._down_dirty = True
        out = self._down.resample_chunk(samples)
        return pcm16_to_ulaw(out.astype("<i2", copy=False).tobytes()) if len(out) else b""

    def _resumption_update(self, update: dict[str, Any]) -> None:
        resumable, handle = update.get("resumable"), update.get("newHandle")
        if resumable is not None and not isinstance(resumable, bool):
            raise RemoteProtocolError("Gemini sessionResumptionUpdate.resumable must be a bool")
        if handle is not None and not isinstance(handle, str):
            raise RemoteProtocolError("Gemini sessionResumptionUpdate.newHandle must be a string")
        if resumable and handle:
            self.resumption.handle = handle
        elif resumable is False:
            self.resumption.handle = None  # this point cannot be resumed: replay instead


def _object(message: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = message.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RemoteProtocolError(f"Gemini {key} must be an object")
    return value


def _flag(content: dict[str, Any], key: str) -> bool:
    value = content.get(key)
    if value is not None and not isinstance(value, bool):
        raise RemoteProtocolError(f"Gemini serverContent.{key} must be a bool")
    return bool(value)


def _transcription(content: dict[str, Any], key: str) -> str:
    value = _object(content, key)
    if value is None:
        return ""
    text = value.get("text")
    if text is None:
        return ""
    if not isinstance(text, str):
        raise RemoteProtocolError(f"Gemini {key}.text must be a string")
    return text


def _tool_calls(message: dict[str, Any]) -> list[ProviderEvent]:
    calls = message.get("functionCalls", [])
    if not isinstance(calls, list):
        raise RemoteProtocolError("Gemini toolCall.functionCalls must be a list")
    events: list[ProviderEvent] = []
    for call in calls:
        if not isinstance(call, dict):
            raise RemoteProtocolError("Gemini function call must be an object")
        call_id, name, args = call.get("id"), call.get("name"), call.get("args", {})
        if not isinstance(call_id, str) or not call_id:
            raise RemoteProtocolError("Gemini function call without a string 'id'")
        if not isinstance(name, str) or not name:
            raise RemoteProtocolError("Gemini function call without a string 'name'")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise RemoteProtocolError("Gemini function call 'args' must be an object")
        try:
            arguments = orjson.dumps(args).decode()
        except orjson.JSONEncodeError as exc:
            raise RemoteProtocolError(f"Gemini function args cannot be re-encoded: {exc}") from None
        events.append(ToolCall(call_id, name, arguments))
    return events


def _count(value: object, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RemoteProtocolError(f"Gemini usageMetadata.{what} must be a count")
    return value


def _details(usage: dict[str, Any], key: str, direction: str) -> dict[str, int] | None:
    details = usage.get(key)
    if details is None:
        return None
    if not isinstance(details, list):
        raise RemoteProtocolError(f"Gemini usageMetadata.{key} must be a list")
    counts: dict[str, int] = {}
    for detail in details:
        if not isinstance(detail, dict):
            raise RemoteProtocolError(f"Gemini usageMetadata.{key} entries must be objects")
        modality = _MODALITIES.get(str(detail.get("modality")), "other")
        kind = f"{direction}_{modality}_tokens"
        counts[kind] = counts.get(kind, 0) + _count(detail.get("tokenCount"), key)
    return counts


def _usage(usage: dict[str, Any]) -> Usage | None:
    """``usageMetadata`` (the tokens of one turn) as usage kinds: by modality where the details
    say, else ``input_tokens`` / ``output_tokens``; cached and thinking tokens apart."""
    counts: dict[str, int] = {}
    for key, direction, total in (
        ("promptTokensDetails", "input", "promptTokenCount"),
        ("responseTokensDetails", "output", "responseTokenCount"),
    ):
        details = _details(usage, key, direction)
        if details is not None:
            counts |= details
        else:
            amount = _count(usage.get(total), total)
            if amount:
                counts[f"{direction}_tokens"] = amount
    for key, kind in (
        ("cachedContentTokenCount", "input_cached_tokens"),
        ("thoughtsTokenCount", "output_thinking_tokens"),
        ("toolUsePromptTokenCount", "input_tool_tokens"),
    ):
        amount = _count(usage.get(key), key)
        if amount:
            counts[kind] = amount
    pairs = tuple((kind, float(n)) for kind, n in counts.items() if n)
    return Usage(pairs) if pairs else None


def _duration(value: object) -> float | None:
    """A protobuf ``Duration`` in JSON (``"12.5s"``) in seconds."""
    if isinstance(value, str) and value.endswith("s"):
        try:
            seconds = float(value[:-1])
        except ValueError:
            seconds = -1.0
        if 0 <= seconds < 1e9:
            return seconds
    if value is None:
        return None
    raise RemoteProtocolError("Gemini goAway.timeLeft must be a duration such as '50s'")


def _text_input(text: str) -> str:
    return _dumps({"realtimeInput": {"text": text}})


def _response(output: str) -> dict[str, Any]:
    try:
        value = orjson.loads(output)
    except orjson.JSONDecodeError:
        return {"output": output}
    return value if isinstance(value, dict) else {"output": value}


def _exchange_turns(exchange: ToolExchange) -> list[dict[str, Any]]:
    try:
        args = orjson.loads(exchange.arguments)
    except orjson.JSONDecodeError:
        args = None
    call = {
        "id": exchange.call_id,
        "name": exchange.name,
        "args": args if isinstance(args, dict) else {},
    }
    response = {
        "id": exchange.call_id,
        "name": exchange.name,
        "response": _response(exchange.output),
    }
    return [
        {"role": "model", "parts": [{"functionCall": call}]},
        {"role": "user", "parts": [{"functionResponse": response}]},
    ]


def _turns(history: Sequence[HistoryItem]) -> list[dict[str, Any]]:
    """``history`` as ``Content`` turns: caller lines and key presses from the user, agent lines
    from the model, a tool exchange as a ``functionCall`` and its ``functionResponse``."""
    turns: list[dict[str, Any]] = []
    for item in history:
        if isinstance(item, ToolExchange):
            turns += _exchange_turns(item)
        elif item.role in _ROLES and item.text:
            text = dtmf_message(item.text) if item.role == "dtmf" else item.text
            turns.append({"role": _ROLES[item.role], "parts": [{"text": text}]})
    return turns


def _owes_an_answer(item: HistoryItem) -> bool:
    return isinstance(item, ToolExchange) or item.role in ("caller", "dtmf")


#: Gemini's close codes that are not "the session dropped, resume it": 1007 (an invalid
#: argument, such as a bad API key or model) and 1008 (policy violation) refuse us, and retrying
#: cannot help. 1000 (the connection's time is up, after ``goAway``) and 1011 are resumed.
CLOSE_REASONS: dict[int, Reason] = {1007: Reason.UPSTREAM_REJECTED, 1008: Reason.UPSTREAM_REJECTED}


def gemini_endpoint(url: str, api_key: str | None, *, name: str = "gemini") -> ProviderEndpoint:
    """The endpoint of a Gemini Live service at ``url``, with ``?key=`` when there is a key.

    The key sits in the URL's query, which :class:`ProviderEndpoint` keeps out of its ``repr``
    (it shows only scheme and host for a URL with a path); a URL without a path gets Gemini's
    resource path, so the key can never be shown.
    """
    parts = urlsplit(url)
    if not parts.path.strip("/"):
        parts = parts._replace(path=urlsplit(GEMINI_URL).path)
        url = urlunsplit(parts)
    if not api_key:
        return ProviderEndpoint(name, url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "key"]
    query.append(("key", api_key))
    return ProviderEndpoint(name, urlunsplit(parts._replace(query=urlencode(query))))


class GeminiProvider:
    """Gemini Live as a :class:`~voxbridge.providers.base.Provider` (no I/O to prepare).

    Every session of a call shares one :class:`Resumption`: :meth:`for_agent` (once per call)
    makes a fresh one, so two calls never share a handle.

    Args:
        endpoint: see :func:`gemini_endpoint`.
        model, voice, instructions, tools, greeting: see :class:`GeminiCodec`.
        name: the metric label; defaults to ``endpoint.name``.
    """

    def __init__(
        self,
        endpoint: ProviderEndpoint,
        *,
        model: str = GEMINI_MODEL,
        voice: str = GEMINI_VOICE,
        instructions: str = "",
        tools: Sequence[Tool] = (),
        greeting: str | None = None,
        name: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.model = model
        self.voice = voice
        self.instructions = instructions
        self.tools: tuple[Tool, ...] = tuple(tools)
        self.greeting = greeting
        self.name = endpoint.name if name is None else name
        self.resumption = Resumption()

    def __repr__(self) -> str:
        return (
            f"GeminiProvider({self.endpoint!r}, model={self.model!r}, "
            f"tools={[tool.name for tool in self.tools]!r})"
        )

    def for_agent(self, agent: AgentConfig, tools: Sequence[Tool]) -> Self:
        """A copy for ``agent`` (:func:`~voxbridge.providers.base.configured`) with a fresh
        :class:`Resumption`, so two calls never share a handle. No I/O."""
        provider = configured(self, agent, tools)
        provider.resumption = Resumption()
        return provider

    def codec(self) -> GeminiCodec:
        """A fresh codec (fresh resamplers) sharing this provider's :class:`Resumption`."""
        return GeminiCodec(
            model=self.model,
            voice=self.voice,
            instructions=self.instructions,
            tools=self.tools,
            greeting=self.greeting,
            resumption=self.resumption,
        )

    async def session(self, history: Sequence[HistoryItem], *, first: bool) -> ProviderSession:
        """The endpoint and a fresh codec (``codec.opening`` resumes or replays ``history``, and
        asks for the greeting in the ``first`` session)."""
        return ProviderSession(self.endpoint, self.codec())


if TYPE_CHECKING:  # mypy checks that both classes satisfy the protocols they implement

    def _conforms(codec: GeminiCodec, provider: GeminiProvider) -> tuple[ProviderCodec, Provider]:
        return codec, provider


# --- declaration ----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class GeminiSettings:
    """``--gemini-*`` settings (the key: ``GEMINI_API_KEY`` or ``GOOGLE_API_KEY``, environment
    only)."""

    api_key: str | None = option(None, "Gemini API key (also GOOGLE_API_KEY)", secret=True)
    model: str = option(GEMINI_MODEL, "Gemini Live model (a native-audio model)")


def _build(settings: Settings, own: GeminiSettings, echo_url: str | None) -> GeminiProvider:
    if not own.api_key and settings.provider_url is None:
        raise SettingsError("provider gemini needs GEMINI_API_KEY (or GOOGLE_API_KEY)")
    endpoint = gemini_endpoint(checked_ws_url(settings.provider_url or GEMINI_URL), own.api_key)
    return GeminiProvider(
        endpoint,
        model=own.model,
        voice=settings.voice or GEMINI_VOICE,
        instructions=settings.agent_instructions(),
    )


SPEC = ProviderSpec(
    name="gemini",
    settings=GeminiSettings,
    build=_build,
    close_reasons=CLOSE_REASONS,
    codec=GeminiCodec,
    key_variables=("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    usage_kinds=USAGE_KINDS,
    endpoint="ws(s)://...BidiGenerateContent",
    fake="voxbridge.testing.fake_gemini:FakeGemini",
    voice=GEMINI_VOICE,
)
