"""Vonage's side of a simulated call: a :class:`~voxbridge.testing.carrier_wire.CallerWire`.

What Vonage sends (the shapes of :mod:`voxbridge.carriers.vonage`'s docstring): with
``signature_secret`` set, ``Authorization: Bearer <JWT>`` on the WebSocket upgrade (HS256 with the
signature secret, fresh: what ``"authorization":{"type":"vonage"}`` makes Vonage send); then one
text message, ``{"event":"websocket:connected","content-type":"audio/l16;rate=16000", <headers>}``
with the headers of our NCCO (the call's parameters, and its ``uuid``: the call id voxbridge's
answer puts there; the wire adds it from the simulated call when the parameters lack it); then
caller audio as binary L16 frames of exactly 20 ms (converted from the engine's mu-law 8 kHz by a
primed soxr resampler per call), and ``websocket:dtmf`` for key presses. No marks, no stop: Vonage
hangs up by closing the socket (``capabilities``).

What it does with what the bridge sends (:meth:`VonageWire.parse`): a binary frame is agent audio
(L16 at the stream's rate, converted back to mu-law 8 kHz; :attr:`VonageWire.agent_frames` keeps
each frame's size, and :attr:`VonageWire.odd_frames` counts those that are not a whole number of
20 ms frames); ``{"action":"clear"}`` a clear; ``{"action":"notify",...}`` is ignored; anything
else, or a malformed frame, is refused with ``ValueError`` (the simulator records a protocol error
of the bridge). Vonage would answer a clear with ``websocket:cleared``: the engine has no hook to
send it, and the bridge ignores it anyway.

One wire per simulated call: it holds the resamplers' state.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from ..audio import b64_decode
from ..carriers.base import AudioFormat, Frame
from ..carriers.transcode import Transcoder
from ..carriers.vonage import (
    CALL_HEADER,
    CAPABILITIES,
    DEFAULT_SAMPLE_RATE,
    RESERVED_HEADERS,
    L16Framer,
    content_type_of,
)
from ..carriers.vonage_webhooks import sign_request
from .carrier_wire import AgentSpoke, Cleared, SimulatedCall, WireEvent

__all__ = ["DTMF_DURATION_MS", "VonageWire"]

#: ``duration`` of a simulated key press, milliseconds (the value of the documented example,
#: docs/carriers.md, "Vonage").
DTMF_DURATION_MS = 260


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


class VonageWire:
    """Vonage's wire for :class:`~voxbridge.testing.CarrierSimulator`.

    Args:
        sample_rate: the stream's L16 rate (what the NCCO's ``content-type`` asked for).
        signature_secret: sign the WebSocket upgrade with a JWT under this secret, as Vonage does
            for an endpoint with ``"authorization":{"type":"vonage"}``; ``None``: no header.
        dtmf_nested: send key presses as ``{"dtmf":{"digit":...}}`` rather than a top-level
            ``digit`` (the other layout readers have seen).

    Raises:
        ValueError: a rate Vonage does not stream.
    """

    carrier = "vonage"
    capabilities = CAPABILITIES

    def __init__(
        self,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        *,
        signature_secret: str | None = None,
        dtmf_nested: bool = False,
    ) -> None:
        self.content_type = content_type_of(sample_rate)  # raises ValueError for a bad rate
        self.format = AudioFormat("l16", sample_rate)
        self.signature_secret = signature_secret
        self.dtmf_nested = dtmf_nested
        self._caller = L16Framer(self.format)  # caller audio, mu-law -> L16, whole 20 ms frames
        self._agent = Transcoder(self.format)  # agent audio, L16 -> mu-law
        #: The size in bytes of every binary frame the bridge sent, in order.
        self.agent_frames: list[int] = []

    def __repr__(self) -> str:
        return f"VonageWire({self.format.sample_rate})"

    @property
    def odd_frames(self) -> int:
        """How many of the bridge's audio frames were not a whole number of 20 ms frames."""
        return sum(1 for size in self.agent_frames if size % self._caller.frame_bytes)

    # --- what Vonage sends ---------------------------------------------------------------------

    def upgrade_headers(self, call: SimulatedCall) -> list[tuple[str, str]]:
        """``Authorization: Bearer <JWT>`` when ``signature_secret`` is set, else none."""
        if self.signature_secret is None:
            return []
        token = sign_request(self.signature_secret, now=time.time(), jti=str(uuid.uuid4()))
        return [("Authorization", f"Bearer {token}")]

    def handshake(self, call: SimulatedCall) -> list[Frame]:
        """``websocket:connected`` with the stream's ``content-type`` and the NCCO's headers:
        the call's parameters and its ``uuid``."""
        headers = {
            name: value
            for name, value in call.custom_parameters.items()
            if name not in RESERVED_HEADERS
        }
        headers.setdefault(CALL_HEADER, call.call_id)
        message = {"event": "websocket:connected", "content-type": self.content_type, **headers}
        return [_dumps(message)]

    def audio(self, call: SimulatedCall, mulaw: bytes) -> Frame:
        """One binary frame of caller audio: L16 at the stream's rate, 20 ms (for 20 ms of
        mu-law in)."""
        frame = self._caller.frame(mulaw)
        call.chunk += 1
        call.timestamp_ms += len(mulaw) // 8
        return frame

    def dtmf(self, call: SimulatedCall, digit: str) -> Frame:
        """A ``websocket:dtmf`` text frame."""
        press: dict[str, Any] = {"digit": digit, "duration": DTMF_DURATION_MS}
        if self.dtmf_nested:
            return _dumps({"event": "websocket:dtmf", "dtmf": press})
        return _dumps({"event": "websocket:dtmf", **press})

    def mark_echo(self, call: SimulatedCall, name: str) -> Frame:
        """Never asked (``capabilities.marks`` is false).

        Raises:
            NotImplementedError: always: Vonage has no marks.
        """
        raise NotImplementedError("Vonage has no marks")

    def stop(self, call: SimulatedCall) -> Frame | None:
        """``None``: Vonage sends no stop; the socket closes."""
        return None

    # --- what Vonage does with what the bridge sends ---------------------------------------------

    def parse(self, frame: Frame) -> WireEvent | None:
        """A frame from the bridge as Vonage reads it.

        Raises:
            ValueError: audio that is not whole 16-bit samples, or a text frame that is not a
                JSON object with an ``action`` Vonage knows (``clear``, ``notify``).
        """
        if isinstance(frame, bytes | bytearray):
            audio = bytes(frame)
            if len(audio) % 2:
                raise ValueError(f"L16 audio of {len(audio)} bytes is not whole samples")
            self.agent_frames.append(len(audio))
            return AgentSpoke(b64_decode(self._agent.to_neutral(audio)) if audio else b"")
        message = json.loads(frame)  # a JSONDecodeError is a ValueError
        if not isinstance(message, dict):
            raise ValueError("a Vonage command is a JSON object")
        action = message.get("action")
        if action == "clear":
            return Cleared()
        if action == "notify":
            return None
        if "event" in message:
            raise ValueError(f"{str(message['event'])[:40]!r}: Vonage takes actions, not events")
        raise ValueError(f"Vonage has no action {str(action)[:40]!r}")
