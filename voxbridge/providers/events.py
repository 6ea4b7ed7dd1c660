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
    "ProviderError",
    "ProviderEvent",
    "ResponseStarted",
    "SpeechStarted",
    "Transcript",
    "Truncation",
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
    """A final transcript line; ``role`` is ``caller`` or ``agent``."""

    role: str
    text: str


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
class Truncation:
    """What the caller heard of one agent item when they barged in: its first ``audio_end_ms``
    milliseconds (0: none of it; it was queued behind the item being heard)."""

    item_id: str
    audio_end_ms: int


ProviderEvent = (
    AgentAudio | ResponseStarted | SpeechStarted | Transcript | AgentHangup | ProviderError
)
