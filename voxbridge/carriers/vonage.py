"""A sans-IO codec for the Vonage Voice API's WebSocket (NCCO ``connect`` to a ``websocket``).

Vonage opens one WebSocket per call to the ``uri`` of the NCCO's ``websocket`` endpoint. Unlike
the other carriers, its audio is **binary**: after one JSON text message, both directions carry
raw 16-bit signed little-endian linear PCM (L16), mono, at the endpoint's ``content-type`` rate,
in binary frames with no envelope and no base64. Control travels in JSON text frames. This module
turns those frames into the neutral events of :mod:`voxbridge.carriers.base` and builds the frames
we send back; it never touches a socket, a clock or a logger. The wire (Vonage's "WebSockets"
guide, developer.vonage.com/voice/voice-api/concepts/websockets, and the NCCO reference; the DTMF
shape recorded in docs/carriers.md, "Vonage"; the 24 kHz rate and the ``authorization`` object from the official
SDKs, ``vonage-voice`` 1.5 and vonage-node-sdk's ``WebsocketEndpoint``)::

    Vonage -> us  websocket:connected  {"event":"websocket:connected",
                                        "content-type":"audio/l16;rate=16000", <our headers>}
                  (binary)             L16 caller audio, 20 ms a frame (640 bytes at 16 kHz)
                  websocket:dtmf       {"event":"websocket:dtmf","digit":"5","duration":260}
                                       (also read: {"event":"websocket:dtmf",
                                        "dtmf":{"digit":"5","duration":260}})
                  websocket:cleared    {"event":"websocket:cleared"}
                  websocket:notify     {"event":"websocket:notify","payload":{...}}
    us -> Vonage  (binary)             L16 agent audio, whole 20 ms frames
                  clear                {"action":"clear"}

The state machine of one stream::

    fresh --websocket:connected--> connected
                                    |      ^
                                    +------+ binary audio / dtmf / cleared / notify

``websocket:connected`` comes exactly once and first: it is the stream's start
(:class:`~voxbridge.carriers.base.StreamStarted`). Audio, ``websocket:dtmf``,
``websocket:cleared`` and ``websocket:notify`` are valid only after it. **Vonage sends no stop**:
the socket closing is the end of the call (:attr:`Capabilities.sends_stop` false), and it has
**no marks** (:attr:`Capabilities.marks` false: :meth:`VonageStream.mark` returns ``None``; the
call estimates what the caller has heard from when it sent the audio). A frame that breaks a rule
raises :class:`~voxbridge.errors.RemoteProtocolError` and leaves the state exactly as it was;
nothing else escapes :meth:`VonageStream.decode`, whatever it is fed. A text ``event`` this codec
does not know decodes to ``None`` and is counted in :attr:`VonageStream.unknown_events`, rather
than ending a paid call. Sending before ``websocket:connected`` raises
:class:`~voxbridge.carriers.base.LocalProtocolError`.

**The call id.** Vonage's first message carries only the NCCO endpoint's ``headers`` and the
``content-type``: nothing names the call. voxbridge's answer (:mod:`.vonage_webhooks`) therefore
puts the call's ``uuid`` (the answer webhook's ``uuid``, what the REST API's hang-up names) in the
headers, next to the per-call token. :attr:`StreamStarted.call_id` is the ``uuid`` header; when it
is absent, the ``sub`` claim of the per-call token (``voxbridge_token``), which the server then
verifies with its key and against that same call id before any provider session opens. A
``websocket:connected`` naming no call at all is a protocol error. An operator writing their own
NCCO includes ``"uuid"`` in ``headers`` (see docs/carriers.md). Every other header comes back in
:attr:`StreamStarted.custom_parameters`: strings as sent, any other JSON value as its compact JSON
text. Vonage caps ``headers`` at 512 bytes (:data:`HEADERS_MAX`); ``event`` and ``content-type``
would collide with Vonage's own keys of the message (:data:`RESERVED_HEADERS`).

**Audio.** The stream's format is the ``content-type`` of ``websocket:connected``:
``audio/l16;rate=8000``, ``16000`` (voxbridge's default, ``--vonage-sample-rate``) or ``24000``.
Each direction has its own :class:`~voxbridge.carriers.transcode.Transcoder`, chosen once at the
start: at 8 kHz the conversion is G.711 alone (exact); at 16 and 24 kHz a soxr streaming
resampler per direction whose filter state carries across frames. Caller audio converted to
nothing yet (the first frame while the resampler fills) decodes to ``None``.

Agent audio goes out in **whole 20 ms frames** (:data:`FRAME_MS`: 320, 640 or 960 bytes a
frame), as Vonage's guide asks and its own tutorial sends: :attr:`Capabilities.frame_ms` is 20, so
the call hands :meth:`VonageStream.audio` 20 ms at a time and each call sends one frame. The
resampler's output does not line up with the call's chunks, so it sends the whole frames ready and
keeps the rest (less than one frame) for the next; the outbound resampler comes primed
(:class:`~voxbridge.carriers.transcode.Transcoder`), so that each 20 ms of input has a whole frame
ready, and at 16 and 24 kHz the first frame starts with 10 ms of silence. When no whole frame is
ready (the provider handed over less than 20 ms), :meth:`~VonageStream.audio` returns an **empty** frame,
which the call does not send: the audio waits for the next chunk. A :meth:`~VonageStream.clear`
drops the leftover and restarts the outbound resampler, so nothing of the interrupted answer plays
after it. Vonage plays frames in order and buffers up to 3072 of them (about a minute at 20 ms): a
bridge that sends agent audio faster than real time must not get more than that ahead (the call
sends provider audio as it arrives; a single answer longer than a minute, sent in one burst, would
overflow Vonage's buffer).

Only provider audio reaches an outbound binary frame, and the one outbound text frame is a
constant (``{"action":"clear"}``): no text from a provider can change an outbound frame's JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any, Final

import attrs
import orjson

from ..audio import BYTES_PER_MS, SILENCE
from ..errors import RemoteProtocolError
from . import fields
from .base import (
    AudioFormat,
    CallerAudio,
    Capabilities,
    CarrierEvent,
    Dtmf,
    Frame,
    LocalProtocolError,
    StreamStarted,
)
from .fields import DTMF_DIGITS, MISSING, SAFETY_NET, parse_frame, show, unexpected
from .transcode import Transcoder

__all__ = [
    "CALL_HEADER",
    "CAPABILITIES",
    "CLEAR",
    "CONTENT_TYPES",
    "DEFAULT_SAMPLE_RATE",
    "DTMF_DIGITS",
    "FRAME_MS",
    "HEADERS_MAX",
    "RESERVED_HEADERS",
    "SAMPLE_RATES",
    "L16Framer",
    "VonageConnected",
    "VonageStream",
    "content_type_of",
    "encode_headers",
    "parse_content_type",
]

#: The ``content-type`` values of a Vonage WebSocket endpoint, and the format each one streams.
CONTENT_TYPES: Final[Mapping[str, AudioFormat]] = {
    "audio/l16;rate=8000": AudioFormat("l16", 8000),
    "audio/l16;rate=16000": AudioFormat("l16", 16000),
    "audio/l16;rate=24000": AudioFormat("l16", 24000),
}
SAMPLE_RATES: Final = (8000, 16000, 24000)
DEFAULT_SAMPLE_RATE: Final = 16000
#: Milliseconds of audio in one binary frame, both ways.
FRAME_MS: Final = 20
#: Vonage's limit on an endpoint's ``headers``, in bytes (of their compact JSON).
HEADERS_MAX: Final = 512
#: Keys of ``websocket:connected`` that are Vonage's, so no header may have these names.
RESERVED_HEADERS: Final = frozenset({"event", "content-type"})
#: The header that names the call (its ``uuid``): see the module docstring.
CALL_HEADER: Final = "uuid"
#: The per-call token's parameter (``voxbridge.server.security.TOKEN_PARAMETER``).
TOKEN_HEADER: Final = "voxbridge_token"
#: The one control frame we send: drop the audio Vonage has queued (it answers
#: ``websocket:cleared``).
CLEAR: Final = '{"action":"clear"}'
#: What a Vonage stream does (see the module docstring).
CAPABILITIES: Final = Capabilities(
    marks=False, echoes_cleared_marks=False, sends_stop=False, binary_audio=True, frame_ms=FRAME_MS
)


def content_type_of(sample_rate: int) -> str:
    """The endpoint ``content-type`` (``audio/l16;rate=16000``) of a stream at ``sample_rate``.

    Raises:
        ValueError: a rate Vonage does not stream (8000, 16000 and 24000 Hz only).
    """
    if sample_rate not in SAMPLE_RATES:
        raise ValueError(f"Vonage streams L16 at 8000, 16000 or 24000 Hz, not {sample_rate}")
    return f"audio/l16;rate={sample_rate}"


def parse_content_type(text: str) -> AudioFormat:
    """The format of a ``content-type`` such as ``audio/l16;rate=16000`` (case and spaces
    ignored; Vonage's own spelling has neither).

    Raises:
        RemoteProtocolError: not L16 at a rate Vonage streams.
    """
    parts = [part.strip().lower() for part in text.split(";")]
    if parts[0] == "audio/l16":
        params: dict[str, str] = {}
        for part in parts[1:]:
            name, _, value = part.partition("=")
            params[name.strip()] = value.strip()
        rate = params.get("rate", "")
        if rate.isascii() and rate.isdigit() and int(rate) in SAMPLE_RATES:
            return AudioFormat("l16", int(rate))
    raise RemoteProtocolError(
        f"content-type {show(text)} is not one voxbridge streams "
        "(audio/l16 at rate 8000, 16000 or 24000)"
    )


def encode_headers(parameters: Mapping[str, str]) -> dict[str, str]:
    """The NCCO endpoint ``headers`` carrying ``parameters``: the same names and values, checked.

    Raises:
        ValueError: an empty or reserved name (:data:`RESERVED_HEADERS`), or more than Vonage's
            512 bytes (:data:`HEADERS_MAX`) of compact JSON.
    """
    headers = dict(parameters)
    for name in headers:
        if not name or name in RESERVED_HEADERS:
            raise ValueError(f"{name!r} cannot be the name of a Vonage endpoint header")
    size = len(json.dumps(headers, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    if size > HEADERS_MAX:
        raise ValueError(f"headers of {size} bytes are over Vonage's {HEADERS_MAX}-byte limit")
    return headers


def _token_subject(token: str) -> str:
    """The ``sub`` claim of a JWT, read without verifying it (the server verifies it); ``""``
    when ``token`` is not a JWT with a string ``sub``."""
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > 4096:
        return ""
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        return ""
    subject = claims.get("sub") if type(claims) is dict else None
    return subject if type(subject) is str else ""


# --- audio framing ------------------------------------------------------------------------------


class L16Framer:
    """Mu-law 8 kHz in, L16 at ``audio_format``'s rate out, in whole 20 ms frames.

    One per direction of a stream (it holds a resampler's state and the leftover bytes). Used by
    :class:`VonageStream` for agent audio and by the caller simulator's wire for caller audio.
    """

    __slots__ = ("_pending", "_transcoder", "format", "frame_bytes")

    def __init__(self, audio_format: AudioFormat) -> None:
        self.format = audio_format
        #: Bytes of one 20 ms frame (320, 640 or 960).
        self.frame_bytes = audio_format.sample_rate * 2 * FRAME_MS // 1000
        self._transcoder, self._pending = self._fresh()

    def _fresh(self) -> tuple[Transcoder, bytearray]:
        converter = Transcoder(self.format)  # primed: each 20 ms in gives 20 ms out
        pending = bytearray()
        if converter.resamples:
            # half a frame of silence ahead (Vonage's frame timing since the first release):
            # input in 10 ms pieces then goes out on the first piece, not the second
            pending += converter.from_neutral(SILENCE * (FRAME_MS // 2 * BYTES_PER_MS))
        return converter, pending

    def __repr__(self) -> str:
        return f"L16Framer({self.format!r}, pending={len(self._pending)})"

    def frame(self, mulaw: bytes) -> bytes:
        """``mulaw`` converted, as whole frames: the rest (less than one frame) is kept for the
        next call; ``b""`` when no whole frame is ready."""
        pending = self._pending
        pending += self._transcoder.from_neutral(mulaw)
        size = len(pending) - len(pending) % self.frame_bytes
        out = bytes(pending[:size])
        del pending[:size]
        return out

    def reset(self) -> None:
        """Forget the leftover and the resampler's state (a clear: nothing of it plays)."""
        self._transcoder, self._pending = self._fresh()


# --- events -----------------------------------------------------------------------------------------


def _copy(headers: Mapping[str, str]) -> dict[str, str]:
    return dict(headers)


@attrs.frozen
class VonageConnected:
    """Vonage's ``websocket:connected`` as received (:attr:`StreamStarted.details` of a Vonage
    stream): its ``content-type`` as sent, the format, and every header (values as text)."""

    content_type: str
    audio_format: AudioFormat
    headers: Mapping[str, str] = attrs.field(converter=_copy, hash=False)


def _as_text(value: Any) -> str:
    """A header's value as text: a string as it is, any other JSON value as compact JSON."""
    if type(value) is str:
        return value
    return orjson.dumps(value).decode("utf-8")


# --- the codec ----------------------------------------------------------------------------------------


class VonageStream:
    """The state of one Vonage WebSocket: a :class:`~voxbridge.carriers.base.CarrierCodec`.

    Attributes:
        MAX_FRAME: frames longer than this (characters for ``str``, bytes for ``bytes``) are
            rejected before they are read (a 20 ms frame is 960 bytes at most).
        capabilities: :data:`CAPABILITIES`.
        unknown_events: how many text frames with an ``event`` this codec does not know were
            ignored.
    """

    MAX_FRAME: int = 64 * 1024
    capabilities: Capabilities = CAPABILITIES

    def __init__(self) -> None:
        self._connected: VonageConnected | None = None
        self._inbound: Transcoder | None = None
        self._outbound: L16Framer | None = None
        self.unknown_events = 0

    def __repr__(self) -> str:
        state = "connected" if self._connected else "fresh"
        return f"VonageStream({state}, format={self.audio_format!r})"

    # --- state ------------------------------------------------------------------------------------

    @property
    def connected(self) -> VonageConnected | None:
        """Vonage's ``websocket:connected``, once received."""
        return self._connected

    @property
    def started(self) -> bool:
        """True once ``websocket:connected`` has been received."""
        return self._connected is not None

    @property
    def audio_format(self) -> AudioFormat | None:
        """The stream's format from its ``content-type``, or ``None`` before it."""
        return None if self._connected is None else self._connected.audio_format

    # --- inbound ----------------------------------------------------------------------------------

    def decode(self, frame: Frame) -> CarrierEvent | None:
        """One WebSocket frame from Vonage as a neutral event (``None``: nothing for the call).

        Args:
            frame: a text frame (``str``: a JSON event) or a binary frame (``bytes``: L16 audio).

        Returns:
            :class:`StreamStarted` (``websocket:connected``), :class:`CallerAudio` (base64 mu-law
            8 kHz), :class:`Dtmf`, or ``None`` (``websocket:cleared``, ``websocket:notify``, an
            unknown event, an empty frame, audio while the resampler fills).

        Raises:
            RemoteProtocolError: the frame is not valid in the current state (too long, text that
                is not a JSON object with an ``event``, audio before ``websocket:connected`` or
                not whole 16-bit samples, a second ``websocket:connected``, an unknown
                ``content-type``, no call id, a bad DTMF digit). The state is left unchanged.
        """
        if isinstance(frame, bytes | bytearray | memoryview):
            return self._decode_audio(bytes(frame))
        event, message = parse_frame(frame, self.MAX_FRAME)
        try:
            if event == "websocket:connected":
                return self._decode_connected(message)
            if event == "websocket:dtmf":
                return self._decode_dtmf(message)
            if event in ("websocket:cleared", "websocket:notify"):
                self._require_connected(event)
                return None
        except RemoteProtocolError:
            raise
        except SAFETY_NET as exc:  # a decoder bug; still never let it escape
            raise unexpected(event, exc) from exc
        self.unknown_events += 1
        return None

    def _require_connected(self, what: str) -> None:
        if self._connected is None:
            raise RemoteProtocolError(f"{what} before websocket:connected")

    def _decode_audio(self, audio: bytes) -> CallerAudio | None:
        self._require_connected("audio")
        if len(audio) > self.MAX_FRAME:
            raise RemoteProtocolError(f"frame of {len(audio)} exceeds MAX_FRAME={self.MAX_FRAME}")
        if len(audio) % 2:
            raise RemoteProtocolError(f"L16 audio of {len(audio)} bytes is not whole samples")
        if not audio:
            return None
        assert self._inbound is not None
        payload = self._inbound.to_neutral(audio)
        return CallerAudio(payload) if payload else None

    def _decode_connected(self, message: dict[str, Any]) -> StreamStarted:
        if self._connected is not None:
            raise RemoteProtocolError("duplicate websocket:connected")
        content_type = message.get("content-type", MISSING)
        if type(content_type) is not str:
            if content_type is MISSING:
                raise RemoteProtocolError("websocket:connected has no content-type")
            raise RemoteProtocolError(f"content-type must be a string, got {show(content_type)}")
        audio_format = parse_content_type(content_type)
        headers = {
            name: _as_text(value) for name, value in message.items() if name not in RESERVED_HEADERS
        }
        call_id = headers.get(CALL_HEADER) or _token_subject(headers.get(TOKEN_HEADER, ""))
        if not call_id:
            raise RemoteProtocolError(
                f"websocket:connected names no call (no {CALL_HEADER!r} header, no per-call token)"
            )
        connected = VonageConnected(content_type, audio_format, headers)
        # Nothing below can fail: the state changes only once the whole frame was valid.
        self._inbound = Transcoder(audio_format)
        self._outbound = L16Framer(audio_format)
        self._connected = connected
        return StreamStarted(
            call_id=call_id,
            stream_id="",
            account_id="",
            custom_parameters=headers,
            audio_format=audio_format,
            details=connected,
        )

    def _decode_dtmf(self, message: dict[str, Any]) -> Dtmf:
        self._require_connected("websocket:dtmf")
        digit = message.get("digit", MISSING)
        if digit is MISSING:
            body = message.get("dtmf", MISSING)
            if type(body) is not dict:
                raise RemoteProtocolError("websocket:dtmf has no digit")
            digit = body.get("digit", MISSING)
        return Dtmf(fields.digit(digit, "websocket:dtmf digit"))

    # --- outbound ---------------------------------------------------------------------------------

    def audio(self, mulaw: bytes) -> bytes:
        """A binary frame that plays ``mulaw`` (raw mu-law 8 kHz, no header) to the caller: L16
        at the stream's rate, whole 20 ms frames; ``b""`` (send nothing) when less than one
        frame is ready (see the module docstring).

        Raises:
            LocalProtocolError: no ``websocket:connected`` has been received yet.
        """
        if self._outbound is None:
            raise LocalProtocolError("cannot send audio before websocket:connected")
        return self._outbound.frame(mulaw)

    def mark(self, name: str) -> None:
        """``None``: Vonage has no marks (``capabilities.marks`` is false).

        Raises:
            LocalProtocolError: no ``websocket:connected`` has been received yet.
        """
        if self._connected is None:
            raise LocalProtocolError("cannot mark before websocket:connected")
        return None

    def clear(self) -> str:
        """``{"action":"clear"}``: Vonage drops the audio it has queued (and answers
        ``websocket:cleared``). The leftover of the last frame is dropped too.

        Raises:
            LocalProtocolError: no ``websocket:connected`` has been received yet.
        """
        if self._outbound is None:
            raise LocalProtocolError("cannot clear before websocket:connected")
        self._outbound.reset()
        return CLEAR
