"""OpenAI Realtime (GA and beta) over WebSocket, as a sans-IO codec.

voxbridge asks the provider for G.711 mu-law in and out (GA ``audio/pcmu``, beta ``g711_ulaw``), so a
Twilio ``media.payload`` becomes ``input_audio_buffer.append.audio`` unchanged and an audio delta
becomes a Twilio ``media.payload`` unchanged: no transcoding, no base64 round trip.

Outbound frames on the hot path are built from a template (base64 never needs JSON escaping);
everything else goes through ``json.dumps``. Inbound frames are parsed with ``json.loads`` and mapped
to neutral events; events the bridge does not act on map to ``None`` (providers add events often,
and an unknown one is not an error). A frame that is not a JSON object raises ``RemoteProtocolError``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from ..errors import RemoteProtocolError
from .events import AgentAudio, ProviderError, ProviderEvent, SpeechStarted, Transcript

__all__ = ["OpenAIRealtimeCodec"]

Flavour = Literal["ga", "beta"]

_AUDIO_DELTA = {"response.output_audio.delta", "response.audio.delta"}
_AGENT_TRANSCRIPT_DONE = {
    "response.output_audio_transcript.done",
    "response.audio_transcript.done",
}
_CALLER_TRANSCRIPT_DONE = "conversation.item.input_audio_transcription.completed"


class OpenAIRealtimeCodec:
    """Encode client events and decode server events for one session.

    Args:
        flavour: ``"ga"`` (``gpt-realtime``) or ``"beta"`` (``OpenAI-Beta: realtime=v1``).
    """

    def __init__(self, flavour: Flavour = "ga") -> None:
        self.flavour = flavour

    def session_update(self, *, model: str, voice: str, instructions: str) -> str:
        """The ``session.update`` that configures mu-law passthrough and server VAD."""
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
            }
        return json.dumps({"type": "session.update", "session": session}, separators=(",", ":"))

    @staticmethod
    def append_audio(payload: str) -> str:
        """``input_audio_buffer.append`` carrying base64 audio exactly as received."""
        # base64 text contains only [A-Za-z0-9+/=]: nothing to escape.
        return '{"type":"input_audio_buffer.append","audio":"' + payload + '"}'

    @staticmethod
    def decode(frame: str | bytes) -> ProviderEvent | None:
        """Map one server frame to a neutral event, or ``None`` for events the bridge ignores.

        Raises:
            RemoteProtocolError: the frame is not a JSON object with a string ``type``.
        """
        try:
            event = json.loads(frame)
        except (ValueError, RecursionError) as exc:
            raise RemoteProtocolError(f"provider sent malformed JSON: {exc}") from None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise RemoteProtocolError("provider frame is not a JSON object with a string 'type'")
        kind = event["type"]
        if kind in _AUDIO_DELTA:
            delta = event.get("delta")
            if not isinstance(delta, str):
                raise RemoteProtocolError(f"{kind}.delta must be a base64 string")
            item = event.get("item_id")
            return AgentAudio(delta, item if isinstance(item, str) else None)
        if kind == "input_audio_buffer.speech_started":
            start = event.get("audio_start_ms")
            return SpeechStarted(start if isinstance(start, int) else None)
        if kind in _AGENT_TRANSCRIPT_DONE:
            return Transcript("agent", str(event.get("transcript", "")))
        if kind == _CALLER_TRANSCRIPT_DONE:
            return Transcript("caller", str(event.get("transcript", "")))
        if kind == "error":
            error = event.get("error")
            error = error if isinstance(error, dict) else {}
            return ProviderError(
                str(error.get("code") or error.get("type") or ""), str(error.get("message", ""))
            )
        return None
