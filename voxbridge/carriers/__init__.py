"""Carrier-side protocols: sans-IO codecs for the telephony WebSocket streams voxbridge accepts."""

from __future__ import annotations

from voxbridge.carriers.twilio import (
    Connected,
    Dtmf,
    LocalProtocolError,
    Mark,
    Media,
    MediaFormat,
    Start,
    Stop,
    TwilioEvent,
    TwilioStream,
)

__all__ = [
    "Connected",
    "Dtmf",
    "LocalProtocolError",
    "Mark",
    "Media",
    "MediaFormat",
    "Start",
    "Stop",
    "TwilioEvent",
    "TwilioStream",
]
