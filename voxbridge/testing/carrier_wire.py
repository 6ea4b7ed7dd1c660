"""What the caller simulator needs to know about one carrier's wire: a :class:`CallerWire` each.

The simulator's engine (:mod:`voxbridge.testing.carrier`) is carrier-neutral: it streams caller audio
in real time, plays the agent audio it receives in real time (queued, cut by a clear), echoes marks
the way the carrier does, and injects the faults (stall, vanish). A :class:`CallerWire` supplies the
carrier's side of it, as pure functions over frames: what the carrier sends (handshake, audio, key
presses, mark echoes, stop) and how it reads what the bridge sends back.

Caller audio is handed to :meth:`CallerWire.audio` as mu-law 8 kHz bytes (one 20 ms chunk); a
carrier that streams another format (L16, 16 kHz) converts it there, and :meth:`CallerWire.parse`
returns agent audio as mu-law 8 kHz bytes again, so the engine's clock (8 bytes per ms) and its
record of what the caller heard stay the same for every carrier.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, TypeAlias

import attrs

from ..carriers.base import Capabilities, Frame

__all__ = ["AgentSpoke", "CallerWire", "Cleared", "Marked", "SimulatedCall", "WireEvent"]


@attrs.define
class SimulatedCall:
    """The identity of one simulated call and the counters its frames carry.

    ``custom_parameters`` are what the carrier would hand back from the webhook answer (the
    per-call token among them). ``sequence`` is the next sequence number the carrier would send.
    """

    call_id: str
    stream_id: str
    account_id: str
    custom_parameters: Mapping[str, str] = attrs.Factory(dict)
    sequence: int = 1
    chunk: int = 1
    timestamp_ms: int = 0

    def next_sequence(self) -> int:
        number = self.sequence
        self.sequence += 1
        return number


@attrs.frozen
class AgentSpoke:
    """The bridge sent agent audio (mu-law 8 kHz bytes, converted back if the wire is not)."""

    audio: bytes


@attrs.frozen
class Marked:
    """The bridge sent a mark (checkpoint) named ``name``."""

    name: str


@attrs.frozen
class Cleared:
    """The bridge asked to drop the queued audio."""


WireEvent: TypeAlias = AgentSpoke | Marked | Cleared


class CallerWire(Protocol):
    """One carrier's wire, as its caller simulator speaks it."""

    #: The carrier's registry name (``twilio``), and what its stream does.
    carrier: str
    capabilities: Capabilities

    def upgrade_headers(self, call: SimulatedCall) -> list[tuple[str, str]]:
        """Extra headers of the WebSocket upgrade (a stream token, a JWT), if the carrier sends
        any."""
        ...

    def handshake(self, call: SimulatedCall) -> list[Frame]:
        """The frames the carrier sends first (``connected`` and ``start``, or Vonage's
        ``websocket:connected``)."""
        ...

    def audio(self, call: SimulatedCall, mulaw: bytes) -> Frame:
        """One chunk of caller audio (mu-law 8 kHz bytes; 20 ms), as the carrier frames it.
        Advances ``call``'s counters."""
        ...

    def dtmf(self, call: SimulatedCall, digit: str) -> Frame:
        """The caller pressed ``digit``."""
        ...

    def mark_echo(self, call: SimulatedCall, name: str) -> Frame:
        """The carrier's echo of mark ``name`` (only asked when ``capabilities.marks``)."""
        ...

    def stop(self, call: SimulatedCall) -> Frame | None:
        """The carrier's stop event, or ``None`` when it has none (the socket just closes)."""
        ...

    def parse(self, frame: Frame) -> WireEvent | None:
        """A frame the bridge sent, as what the carrier would do with it (``None``: ignored).

        Raises:
            ValueError: the carrier would reject the frame (the simulator records it as a
                protocol error of the bridge, as the carrier would close or log it).
        """
        ...
