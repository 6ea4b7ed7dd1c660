"""Sans-IO codecs for realtime voice-AI providers, and how to reach each one.

A codec turns neutral events (:mod:`voxbridge.providers.events`) into the provider's frames and
back. It never does I/O: the call (``voxbridge.session``) owns the sockets and the clock.
"""

from .base import Frame, Keepalive, Provider, ProviderCodec, ProviderSession
from .endpoint import ProviderEndpoint
from .events import (
    AgentAudio,
    AgentHangup,
    HistoryItem,
    ProviderError,
    ProviderEvent,
    ResponseDone,
    ResponseStarted,
    SessionEnding,
    SpeechStarted,
    ToolCall,
    ToolExchange,
    Transcript,
    Truncation,
    Usage,
)

__all__ = [
    "AgentAudio",
    "AgentHangup",
    "Frame",
    "HistoryItem",
    "Keepalive",
    "Provider",
    "ProviderCodec",
    "ProviderEndpoint",
    "ProviderError",
    "ProviderEvent",
    "ProviderSession",
    "ResponseDone",
    "ResponseStarted",
    "SessionEnding",
    "SpeechStarted",
    "ToolCall",
    "ToolExchange",
    "Transcript",
    "Truncation",
    "Usage",
]
