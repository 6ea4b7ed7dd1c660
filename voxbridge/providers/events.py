"""The neutral event vocabulary between the call and any provider codec.

Audio stays base64 text (``payload``) because both Twilio and OpenAI Realtime carry it that way: with
mu-law on both legs a frame passes through without being decoded or re-encoded.
"""

from __future__ import annotations

import attrs

__all__ = [
    "AgentAudio",
    "AgentHangup",
    "ProviderError",
    "ProviderEvent",
    "SpeechStarted",
    "Transcript",
]


@attrs.frozen
class AgentAudio:
    """Agent speech for the caller: base64 G.711 mu-law, 8 kHz mono."""

    payload: str
    item_id: str | None = None


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


ProviderEvent = AgentAudio | SpeechStarted | Transcript | AgentHangup | ProviderError
