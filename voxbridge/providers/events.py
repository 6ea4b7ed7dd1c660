"""The neutral vocabulary between the call and any provider codec.

Events flow from a provider codec to the call (:data:`ProviderEvent`); a :class:`Truncation` flows
back, from the call's playback tracking to the codec, when the caller barges in.

Agent audio is validated *bytes* of G.711 mu-law at 8 kHz: a codec checks the provider's audio as
strictly as Twilio's (strict base64, whole 16-bit samples) and raises
:class:`~voxbridge.errors.BadAudio` otherwise, and the carrier codec encodes the bytes itself, so no
provider text reaches a carrier frame unvalidated.
"""

from __future__ import annotations

import attrs

__all__ = [
    "AgentAudio",
    "AgentHangup",
    "HistoryItem",
    "ProviderError",
    "ProviderEvent",
    "ResponseDone",
    "ResponseStarted",
    "SessionEnding",
    "SpeechStarted",
    "ToolCall",
    "ToolExchange",
    "Transcript",
    "Truncation",
    "Usage",
    "dtmf_message",
    "tool_result_message",
]


@attrs.frozen
class AgentAudio:
    """Agent speech for the caller: G.711 mu-law bytes, 8 kHz mono (8 bytes per ms).

    ``item_id`` names the conversation item the audio belongs to and ``response_id`` the response
    that produced it, when the provider says (OpenAI Realtime does; Ultravox does not). The call
    uses them to truncate what the caller did not hear and to drop audio of interrupted answers.
    """

    audio: bytes
    item_id: str | None = None
    response_id: str | None = None


@attrs.frozen
class ResponseStarted:
    """The provider began a new response (an answer): audio of earlier, interrupted answers that
    still arrives after this is impossible, so the call stops watching for it."""

    response_id: str | None = None


@attrs.frozen
class SpeechStarted:
    """The provider's VAD heard the caller start speaking (barge-in candidate)."""

    audio_start_ms: int | None = None


@attrs.frozen
class Transcript:
    """A final transcript line.

    ``role`` is ``caller`` or ``agent`` for speech, or ``dtmf`` for keys the caller pressed
    (``text`` is the digits, e.g. ``"123#"``; a codec replays it as :func:`dtmf_message`).
    """

    role: str
    text: str


@attrs.frozen
class ToolCall:
    """The model asks for a tool: ``arguments`` is the JSON text of an object (as the model wrote
    it: the call parses and checks it). ``call_id`` is the provider's id for this call
    (OpenAI ``call_id``, Ultravox ``invocationId``), quoted back with the result."""

    call_id: str
    name: str
    arguments: str = "{}"


@attrs.frozen
class ToolExchange:
    """A tool call and its result, as the conversation remembers it (history, transcript,
    journal). ``output`` is the JSON text given to the model; ``outcome`` is the
    ``voxbridge_tool_calls_total`` label (``ok``, ``error``, ``timeout``, ``unknown_tool``,
    ``bad_arguments``)."""

    call_id: str
    name: str
    arguments: str
    output: str
    outcome: str = "ok"

    @property
    def text(self) -> str:
        """One line for the transcript: ``name(arguments) -> output``."""
        return f"{self.name}({self.arguments}) -> {self.output}"


#: What a provider session is seeded with on resume: the conversation so far, in order.
HistoryItem = Transcript | ToolExchange


@attrs.frozen
class Usage:
    """Provider usage to meter: ``(kind, amount)`` pairs, e.g. ``("input_audio_tokens", 120)`` or
    ``("billed_seconds", 42)``. Amounts add up over a call (the codec reports increments)."""

    counts: tuple[tuple[str, float], ...] = ()


@attrs.frozen
class ResponseDone:
    """A response (an answer) ended: its ``status`` (``completed``, ``cancelled``, ...), the tool
    calls it asks for (only when it completed), and what it cost."""

    response_id: str | None = None
    status: str = "completed"
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage | None = None


def dtmf_message(digits: str) -> str:
    """The user message that tells a model about key presses: ``"The caller pressed 1 2 # on
    the keypad."``"""
    return f"The caller pressed {' '.join(digits)} on the keypad."


def tool_result_message(exchange: ToolExchange) -> str:
    """The user message that tells a model the result of a tool call made by a session that has
    since been replaced, for a protocol that cannot take the result itself there (Deepgram,
    Ultravox): ``'The result of the tool call lookup({"order": "42"}), asked for before the
    connection was restored: {...}'``."""
    return (
        f"The result of the tool call {exchange.name}({exchange.arguments}), asked for before "
        f"the connection was restored: {exchange.output}"
    )


@attrs.frozen
class AgentHangup:
    """The agent ended the call."""

    message: str = ""


@attrs.frozen
class ProviderError:
    """An error event from the provider. Most are recoverable; the call decides."""

    code: str
    message: str


@attrs.frozen
class SessionEnding:
    """The provider announced that it will close this session soon (Gemini Live's ``goAway``):
    ``seconds_left`` until it does, or ``None`` when it did not say. The conversation is not over:
    the call asks its link to replace the session, make before break
    (:meth:`~voxbridge.session.link.ProviderLink.recycle_soon`), at a turn boundary: at once when
    the agent is not ``answering``; else when the answer has ended (the codec then says
    ``SessionEnding`` again, not ``answering``), at the latest ``RECYCLE_MARGIN`` seconds before
    ``seconds_left`` runs out."""

    seconds_left: float | None = None
    answering: bool = False


@attrs.frozen
class Truncation:
    """What the caller heard of one agent item when they barged in: its first ``audio_end_ms``
    milliseconds (0: none of it; it was queued behind the item being heard)."""

    item_id: str
    audio_end_ms: int


ProviderEvent = (
    AgentAudio
    | ResponseStarted
    | ResponseDone
    | SpeechStarted
    | Transcript
    | ToolCall
    | Usage
    | AgentHangup
    | ProviderError
    | SessionEnding
)
