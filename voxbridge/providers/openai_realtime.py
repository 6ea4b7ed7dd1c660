"""OpenAI Realtime (GA and beta) over WebSocket: a provider and its sans-IO codec.

voxbridge asks the provider for G.711 mu-law in and out (GA ``audio/pcmu``, beta ``g711_ulaw``), so a
Twilio ``media.payload`` becomes ``input_audio_buffer.append.audio`` unchanged, and an audio delta is
Twilio's audio too: no transcoding. A delta is decoded as strict base64 (the same check as Twilio's
``media.payload``); one that fails raises :class:`~voxbridge.errors.BadAudio`, and the call drops
that chunk alone.

* Opening a session sends ``session.update`` (mu-law both ways, server VAD, caller transcription,
  voice, instructions), then the conversation so far as ``conversation.item.create`` events, so a
  resumed session (after a drop, or the 60-minute ``session_expired``) keeps the context.
* The codec follows the response lifecycle (``response.created`` .. ``response.done``): a new
  response is a :class:`~voxbridge.providers.events.ResponseStarted`, and audio carries its
  ``item_id`` and ``response_id``.
* Barge-in sends ``response.cancel`` for a response still in progress (server VAD usually cancels
  it first; the ``response_cancel_not_active`` error that race produces is expected and ignored),
  then one ``conversation.item.truncate`` per agent item the caller had not finished hearing: the
  item being heard at the heard millisecond, the items queued behind it at 0 ms. Truncating at 0
  rather than ``conversation.item.delete`` keeps every item in the conversation, in order, with its
  unheard audio and transcript removed -- one message kind for every item, and the model still
  sees that it began an answer that was cut off.
* OpenAI never ends a call on its own: any close is a dropped session the call may resume.

Outbound caller audio frames are built from a template (base64 never needs JSON escaping);
everything else goes through ``json.dumps``. Inbound frames are parsed with ``orjson`` and mapped to
neutral events; events the bridge does not act on map to ``None`` (providers add events often, and
an unknown one is not an error). A frame that is not a JSON object with a string ``type`` (or a
binary frame) raises ``RemoteProtocolError``.

The GA and beta shapes follow the ``openai`` package's ``types.realtime`` and
``types.beta.realtime`` models; ``tests/test_openai_realtime.py`` validates every frame built here
against them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal, get_args
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
import orjson

from ..audio import b64_decode
from ..errors import BadAudio, Reason, RemoteProtocolError
from ..settings import Settings
from .base import Frame, ProviderSession
from .endpoint import ProviderEndpoint
from .events import (
    AgentAudio,
    ProviderError,
    ProviderEvent,
    ResponseStarted,
    SpeechStarted,
    Transcript,
    Truncation,
)

__all__ = [
    "BETA_HEADER",
    "Flavour",
    "OpenAIProvider",
    "OpenAIRealtimeCodec",
    "openai_endpoint",
]

Flavour = Literal["ga", "beta"]
_FLAVOURS: tuple[str, ...] = get_args(Flavour)

#: The header that selects the beta protocol (``realtime=v1``); GA connections must not send it.
BETA_HEADER = ("OpenAI-Beta", "realtime=v1")

_AUDIO_DELTA = frozenset({"response.output_audio.delta", "response.audio.delta"})
_AGENT_TRANSCRIPT_DONE = frozenset(
    {"response.output_audio_transcript.done", "response.audio_transcript.done"}
)
_CALLER_TRANSCRIPT_DONE = "conversation.item.input_audio_transcription.completed"
#: The error a ``response.cancel`` gets when the response already ended (server VAD cancels on
#: ``speech_started`` too): an expected race at every barge-in, not worth a warning.
CANCEL_NOT_ACTIVE = "response_cancel_not_active"

#: Transcript role -> (message role, content part type) per flavour. GA assistant text is
#: ``output_text`` (``RealtimeConversationItemAssistantMessage``); beta assistant text is ``text``
#: (``ConversationItemContent``). Both take ``input_text`` for the user.
_HISTORY_ROLES: dict[str, dict[str, tuple[str, str]]] = {
    "ga": {"caller": ("user", "input_text"), "agent": ("assistant", "output_text")},
    "beta": {"caller": ("user", "input_text"), "agent": ("assistant", "text")},
}


def _dumps(event: dict[str, Any]) -> str:
    # ensure_ascii (the default) keeps lone surrogates from a provider transcript sendable as text.
    return json.dumps(event, separators=(",", ":"))


def _checked_flavour(flavour: str) -> Flavour:
    if flavour not in _FLAVOURS:
        raise ValueError(f"OpenAI Realtime flavour must be 'ga' or 'beta', got {flavour!r}")
    return flavour  # type: ignore[return-value]


class OpenAIRealtimeCodec:
    """Encode client events and decode server events for one OpenAI Realtime session.

    Args:
        flavour: ``"ga"`` (``gpt-realtime``) or ``"beta"`` (``OpenAI-Beta: realtime=v1``).
        model: the model named in the GA ``session.update`` (beta takes it from the URL only).
        voice: the agent voice.
        instructions: the system instructions.
        transcription_model: the model that transcribes the caller (``whisper-1``,
            ``gpt-4o-transcribe``, ...).
    """

    def __init__(
        self,
        flavour: Flavour = "ga",
        *,
        model: str = "gpt-realtime",
        voice: str = "alloy",
        instructions: str = "",
        transcription_model: str = "whisper-1",
    ) -> None:
        self.flavour: Flavour = _checked_flavour(flavour)
        self.model = model
        self.voice = voice
        self.instructions = instructions
        self.transcription_model = transcription_model
        #: The response being generated (from ``response.created`` to ``response.done``).
        self.response_id: str | None = None

    def __repr__(self) -> str:
        return f"OpenAIRealtimeCodec({self.flavour!r}, model={self.model!r}, voice={self.voice!r})"

    # --- opening ------------------------------------------------------------------------------

    def opening(self, history: Sequence[Transcript]) -> list[Frame]:
        """``session.update``, then one ``conversation.item.create`` per line of ``history``.

        Lines with empty text are skipped (an empty message adds nothing to the context).

        Raises:
            ValueError: a transcript role is neither ``caller`` nor ``agent``.
        """
        frames: list[Frame] = [self.session_update()]
        frames.extend(self.history_item(line) for line in history if line.text)
        return frames

    def session_update(
        self,
        *,
        model: str | None = None,
        voice: str | None = None,
        instructions: str | None = None,
    ) -> str:
        """The ``session.update`` that configures mu-law passthrough, server VAD and transcription.

        The keyword arguments override the codec's own settings for this one frame.
        """
        model = self.model if model is None else model
        voice = self.voice if voice is None else voice
        instructions = self.instructions if instructions is None else instructions
        session: dict[str, Any]
        if self.flavour == "ga":
            session = {
                "type": "realtime",
                "model": model,
                "output_modalities": ["audio"],
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcmu"},
                        "turn_detection": {"type": "server_vad"},
                        "transcription": {"model": self.transcription_model},
                    },
                    "output": {"format": {"type": "audio/pcmu"}, "voice": voice},
                },
                "instructions": instructions,
            }
        else:
            session = {
                "turn_detection": {"type": "server_vad"},
                "input_audio_format": "g711_ulaw",
                "output_audio_format": "g711_ulaw",
                "voice": voice,
                "instructions": instructions,
                "modalities": ["text", "audio"],
                "input_audio_transcription": {"model": self.transcription_model},
            }
        return _dumps({"type": "session.update", "session": session})

    def history_item(self, line: Transcript) -> str:
        """One transcript line as a ``conversation.item.create`` (a completed text message).

        Raises:
            ValueError: the role is neither ``caller`` nor ``agent``.
        """
        try:
            role, part = _HISTORY_ROLES[self.flavour][line.role]
        except KeyError:
            raise ValueError(
                f"transcript role must be 'caller' or 'agent', got {line.role!r}"
            ) from None
        item = {"type": "message", "role": role, "content": [{"type": part, "text": line.text}]}
        return _dumps({"type": "conversation.item.create", "item": item})

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
        if kind in _AUDIO_DELTA:
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
            return None
        if kind == "input_audio_buffer.speech_started":
            start = event.get("audio_start_ms")
            return SpeechStarted(start if type(start) is int else None)
        if kind in _AGENT_TRANSCRIPT_DONE:
            return Transcript("agent", _text(event.get("transcript")))
        if kind == _CALLER_TRANSCRIPT_DONE:
            return Transcript("caller", _text(event.get("transcript")))
        if kind == "error":
            error = event.get("error")
            error = error if isinstance(error, dict) else {}
            code = _text(error.get("code") or error.get("type"))
            if code == CANCEL_NOT_ACTIVE:
                return None  # our barge-in cancel raced the server's own: expected
            return ProviderError(code, _text(error.get("message")))
        return None

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
    flavour: Flavour = "ga",
    model: str = "gpt-realtime",
    name: str = "openai",
) -> ProviderEndpoint:
    """The endpoint of an OpenAI Realtime service at ``url``.

    Adds ``?model=`` when the URL names no model, ``Authorization: Bearer`` when there is a key,
    and ``OpenAI-Beta: realtime=v1`` for the beta flavour. The key lives only in the headers,
    which :class:`ProviderEndpoint` keeps out of its ``repr``.
    """
    flavour = _checked_flavour(flavour)
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not any(key == "model" for key, _ in query):
        query.append(("model", model))
        url = urlunsplit(parts._replace(query=urlencode(query)))
    headers: list[tuple[str, str]] = []
    if api_key:
        headers.append(("Authorization", f"Bearer {api_key}"))
    if flavour == "beta":
        headers.append(BETA_HEADER)
    return ProviderEndpoint(name, url, tuple(headers), flavour=flavour)


def _with_flavour(endpoint: ProviderEndpoint, flavour: Flavour) -> ProviderEndpoint:
    """``endpoint`` with exactly the beta header ``flavour`` needs, and ``flavour`` recorded."""
    others = tuple(h for h in endpoint.headers if h[0].lower() != BETA_HEADER[0].lower())
    headers = (*others, BETA_HEADER) if flavour == "beta" else others
    if headers == endpoint.headers and endpoint.flavour == flavour:
        return endpoint
    return attrs.evolve(endpoint, headers=headers, flavour=flavour)


class OpenAIProvider:
    """OpenAI Realtime as a :class:`~voxbridge.providers.base.Provider`.

    Preparing a session does no I/O: it pairs the endpoint with a fresh codec, which replays the
    conversation so far when the session opens.

    Args:
        endpoint: where to connect; see :func:`openai_endpoint`.
        flavour: ``"ga"`` or ``"beta"``; ``None`` takes ``endpoint.flavour``. The endpoint's
            ``OpenAI-Beta`` header is made to match (added for beta, removed for GA).
        model, voice, instructions, transcription_model: see :class:`OpenAIRealtimeCodec`.
        name: the metric label; defaults to ``endpoint.name``.
    """

    def __init__(
        self,
        endpoint: ProviderEndpoint,
        *,
        flavour: Flavour | None = None,
        model: str = "gpt-realtime",
        voice: str = "alloy",
        instructions: str = "",
        transcription_model: str = "whisper-1",
        name: str | None = None,
    ) -> None:
        self.flavour: Flavour = _checked_flavour(endpoint.flavour if flavour is None else flavour)
        self.endpoint = _with_flavour(endpoint, self.flavour)
        self.model = model
        self.voice = voice
        self.instructions = instructions
        self.transcription_model = transcription_model
        self.name = endpoint.name if name is None else name

    @classmethod
    def from_settings(
        cls, endpoint: ProviderEndpoint, settings: Settings, *, flavour: Flavour | None = None
    ) -> OpenAIProvider:
        """The provider for ``endpoint`` with the model, voice and instructions of ``settings``.

        Raises:
            SettingsError: ``instructions_file`` cannot be read.
        """
        return cls(
            endpoint,
            flavour=flavour,
            model=settings.openai_model,
            voice=settings.voice or "alloy",
            instructions=settings.agent_instructions(),
            transcription_model=settings.transcription_model,
        )

    def __repr__(self) -> str:
        return f"OpenAIProvider({self.endpoint!r}, flavour={self.flavour!r}, model={self.model!r})"

    def codec(self) -> OpenAIRealtimeCodec:
        """A fresh codec with this provider's settings."""
        return OpenAIRealtimeCodec(
            self.flavour,
            model=self.model,
            voice=self.voice,
            instructions=self.instructions,
            transcription_model=self.transcription_model,
        )

    async def session(self, history: Sequence[Transcript]) -> ProviderSession:
        """The endpoint and a fresh codec (``history`` is replayed by ``codec.opening``)."""
        return ProviderSession(self.endpoint, self.codec())
