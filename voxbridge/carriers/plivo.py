"""A sans-IO codec for Plivo Audio Streams (bidirectional ``<Stream>`` XML).

Plivo talks to us over one WebSocket per call, one JSON text frame per message. This module turns
those frames into the neutral events of :mod:`voxbridge.carriers.base` and builds the frames we
send back; it never touches a socket, a clock or a logger. The wire, as Plivo documents it
("Audio Streaming Protocol Reference" and the ``<Stream>`` XML reference, docs.plivo.com; the
shapes are also those of Plivo's own stream SDKs, ``plivo-stream-sdk-java``)::

    Plivo -> us  start         {"event":"start","sequenceNumber":1,"start":{"callId":"<uuid>",
                                "streamId":"<uuid>","accountId":"MA...","tracks":["inbound"],
                                "mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000}},
                                "extra_headers":"k1=v1,k2=v2"}
                 media         {"event":"media","sequenceNumber":42,"streamId":"<uuid>",
                                "media":{"track":"inbound","timestamp":"1705312200000",
                                "chunk":41,"payload":"<base64>"},"extra_headers":"..."}
                 dtmf          {"event":"dtmf","streamId":"<uuid>","dtmf":{"digit":"5",...}}
                 playedStream  {"event":"playedStream","streamId":"<uuid>","name":"<checkpoint>"}
                 clearedAudio  {"event":"clearedAudio","streamId":"<uuid>"}
    us -> Plivo  playAudio     {"event":"playAudio","streamId":"<uuid>","media":{"contentType":
                                "audio/x-mulaw","sampleRate":8000,"payload":"<base64>"}}
                 checkpoint    {"event":"checkpoint","streamId":"<uuid>","name":"<checkpoint>"}
                 clearAudio    {"event":"clearAudio","streamId":"<uuid>"}

Note the types (docs/carriers.md, "Plivo"): ``sequenceNumber`` and ``media.chunk``
are JSON numbers, ``media.timestamp`` a string of Unix epoch milliseconds. The codec reads
counters either way (a number or a string of digits) and checks them, but does not require them.

The state machine of one stream::

    fresh --start--> started --stop (tolerated)--> stopped
                      |    ^
                      +----+ media / dtmf / playedStream / clearedAudio

``start`` comes exactly once and first. ``media``, ``dtmf``, ``playedStream`` and
``clearedAudio`` are valid only once started, and a top-level ``streamId`` must be the one
``start`` announced. **Plivo sends no stop**: the socket closing is the end of the stream
(:attr:`Capabilities.sends_stop` false). Plivo's stream SDKs nevertheless model a ``stop`` event,
so one is accepted as :class:`~voxbridge.carriers.base.StreamStopped` and nothing may follow it.
A frame that breaks a rule raises :class:`~voxbridge.errors.RemoteProtocolError` and leaves the
state exactly as it was; nothing else escapes :meth:`PlivoStream.decode`, whatever it is fed.
An ``event`` this codec does not know (Plivo adds events over time) decodes to ``None`` and is
counted in :attr:`PlivoStream.unknown_events`, rather than ending a paid call. A checkpoint echo
spelled ``played`` (one Plivo support article's name for ``playedStream``) is read as one.
Sending before ``start`` raises :class:`~voxbridge.carriers.base.LocalProtocolError`.

**Checkpoints.** ``playedStream`` comes only for a checkpoint whose audio *played*: a
``clearAudio`` discards the audio and its checkpoints, which are never echoed
(:attr:`Capabilities.echoes_cleared_marks` false; the call settles them itself at the clear).
``clearedAudio`` confirms the clear and carries nothing for the call (``None``).

**Audio.** The stream's format is the ``contentType`` of our ``<Stream>`` answer, announced in
``start.mediaFormat``: ``audio/x-mulaw`` 8000 Hz (voxbridge's default: the caller's base64 payload
is handed to the call as received, no copy), or ``audio/x-l16`` at 8000 or 16000 Hz (16-bit
linear PCM, little-endian: Plivo does not state the byte order, and little-endian is what its
``playAudio`` examples and every other L16 carrier but Telnyx use), converted to and from mu-law
8 kHz by a :class:`~voxbridge.carriers.transcode.Transcoder` chosen once at ``start`` (at
16 kHz its outbound resampler comes primed, so that no ``playAudio`` goes out empty while it
fills; caller audio converted to nothing yet decodes to ``None``). Outbound
``playAudio`` frames use the stream's own format, with ``contentType`` and ``sampleRate`` always
set (Plivo's pages disagree on the default). They also carry the top-level ``streamId``, as
Plivo's stream SDKs and pipecat send it.

**Parameters** travel in ``extraHeaders`` of the ``<Stream>`` element and come back as the
string ``extra_headers`` on every message. Plivo allows 512 bytes of ``[A-Za-z0-9]`` in the keys
and values (pairs joined by ``,``, key and value by ``=``; the echo has been documented with
``;`` between pairs, so both separators are read). voxbridge's parameters are any text (the
per-call token is a JWT, with ``.``, ``-`` and ``_``), so each key and value is *Z-escaped*
(:func:`encode_header_text`): letters and digits other than ``Z`` stand for themselves, every
other byte of the text's UTF-8 is ``Z`` and two upper-case hex digits (``_`` -> ``Z5F``, ``Z`` ->
``Z5A``): percent-encoding with ``Z`` for ``%``. A JWT grows by about a tenth. Text that is not
a valid Z-escape (an operator's own ``extraHeaders="userId=12345"``) is read as it is.

Only provider bytes reach an outbound frame, and only as base64; checkpoint names are
JSON-escaped and the stream id is escaped once, at ``start``: no text from a provider can change
an outbound frame's JSON structure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, TypeAlias

import attrs

from ..audio import b64_encode
from ..errors import RemoteProtocolError
from .base import (
    MULAW_8K,
    AudioFormat,
    CallerAudio,
    Capabilities,
    CarrierEvent,
    Dtmf,
    Frame,
    LocalProtocolError,
    MarkPlayed,
    StreamStarted,
    StreamStopped,
)
from .fields import (
    DTMF_DIGITS,
    MISSING,
    SAFETY_NET,
    audio_payload,
    counter,
    digit,
    json_string,
    object_field,
    optional_counter,
    parse_frame,
    same_stream,
    show,
    string_field,
    unexpected,
)
from .transcode import Transcoder, transcoder

__all__ = [
    "CAPABILITIES",
    "CONTENT_TYPES",
    "DTMF_DIGITS",
    "EXTRA_HEADERS_MAX",
    "L16_ENCODING",
    "MULAW_ENCODING",
    "PlivoStart",
    "PlivoStream",
    "content_type_of",
    "decode_extra_headers",
    "decode_header_text",
    "encode_extra_headers",
    "encode_header_text",
]

MULAW_ENCODING: Final = "audio/x-mulaw"
L16_ENCODING: Final = "audio/x-l16"
#: The ``contentType`` values of Plivo's ``<Stream>`` (and ``--plivo-content-type``), and the
#: format each one streams.
CONTENT_TYPES: Final[Mapping[str, AudioFormat]] = {
    "audio/x-mulaw;rate=8000": MULAW_8K,
    "audio/x-l16;rate=8000": AudioFormat("l16", 8000),
    "audio/x-l16;rate=16000": AudioFormat("l16", 16000),
}
DEFAULT_CONTENT_TYPE: Final = "audio/x-mulaw;rate=8000"
#: Plivo's limit on the ``extraHeaders`` attribute, in bytes.
EXTRA_HEADERS_MAX: Final = 512
#: What a Plivo stream does (see the module docstring).
CAPABILITIES: Final = Capabilities(
    marks=True, echoes_cleared_marks=False, sends_stop=False, binary_audio=False
)


def content_type_of(audio_format: AudioFormat) -> str:
    """The ``contentType`` (``audio/x-l16;rate=16000``) that streams ``audio_format``.

    Raises:
        ValueError: a format Plivo does not stream.
    """
    for name, known in CONTENT_TYPES.items():
        if known == audio_format:
            return name
    raise ValueError(f"Plivo streams no {audio_format}")


# --- extraHeaders: Z-escaping ---------------------------------------------------------------------

_ESCAPE: Final = "Z"
_PLAIN: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYabcdefghijklmnopqrstuvwxyz0123456789")
_HEX: Final = frozenset("0123456789ABCDEF")


def encode_header_text(text: str) -> str:
    """``text`` in ``[A-Za-z0-9]`` only, reversibly: ``Z``-escaping (see the module docstring).

    ``"voxbridge_token"`` -> ``"voxbridgeZ5Ftoken"``; ``"Zoe"`` -> ``"Z5Aoe"``.
    """
    if all(char in _PLAIN for char in text):
        return text
    out: list[str] = []
    for char in text:
        if char in _PLAIN:
            out.append(char)
        else:
            out.extend(f"{_ESCAPE}{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
    return "".join(out)


def decode_header_text(text: str) -> str:
    """The text :func:`encode_header_text` made ``text`` from; ``text`` itself when it is not a
    valid Z-escape (a ``Z`` not followed by two upper-case hex digits, or bytes that are not
    UTF-8)."""
    if _ESCAPE not in text:
        return text
    raw = bytearray()
    index, size = 0, len(text)
    while index < size:
        char = text[index]
        if char == _ESCAPE:
            pair = text[index + 1 : index + 3]
            if len(pair) != 2 or not (pair[0] in _HEX and pair[1] in _HEX):
                return text
            raw.append(int(pair, 16))
            index += 3
        else:
            raw.extend(char.encode("utf-8"))
            index += 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return text


def encode_extra_headers(parameters: Mapping[str, str]) -> str:
    """The ``extraHeaders`` attribute carrying ``parameters``: ``k1=v1,k2=v2``, each key and
    value Z-escaped (:func:`encode_header_text`), in the mapping's order.

    Raises:
        ValueError: an empty key, or the result is over Plivo's 512 bytes
            (:data:`EXTRA_HEADERS_MAX`).
    """
    pairs = []
    for key, value in parameters.items():
        if not key:
            raise ValueError("an extraHeaders key must not be empty")
        pairs.append(f"{encode_header_text(key)}={encode_header_text(value)}")
    text = ",".join(pairs)
    if len(text) > EXTRA_HEADERS_MAX:
        raise ValueError(
            f"extraHeaders of {len(text)} bytes is over Plivo's {EXTRA_HEADERS_MAX}-byte limit"
        )
    return text


def decode_extra_headers(text: str) -> dict[str, str]:
    """The parameters in an ``extra_headers`` string: pairs separated by ``,`` or ``;``, key and
    value by the first ``=``, each decoded by :func:`decode_header_text`. Empty pieces are
    skipped; a piece without ``=`` is a key with an empty value; a repeated key keeps its last
    value. Never raises."""
    parameters: dict[str, str] = {}
    for piece in text.replace(";", ",").split(","):
        piece = piece.strip()
        if not piece:
            continue
        key, _, value = piece.partition("=")
        parameters[decode_header_text(key.strip())] = decode_header_text(value.strip())
    return parameters


# --- events -----------------------------------------------------------------------------------------


@attrs.frozen
class PlivoStart:
    """Plivo's ``start`` as received (:attr:`StreamStarted.details` of a Plivo stream).

    ``extra_headers`` is the raw string (``""`` when absent); ``sequence_number`` is ``None``
    when Plivo sent none.
    """

    call_id: str
    stream_id: str
    account_id: str
    tracks: tuple[str, ...]
    audio_format: AudioFormat
    extra_headers: str
    sequence_number: int | None = None


# --- field checking ---------------------------------------------------------------------------------


def _audio_format(fmt: dict[str, Any]) -> AudioFormat:
    encoding = string_field(fmt, "encoding", "start.mediaFormat.encoding")
    base = encoding.partition(";")[0].strip().lower()
    sample_rate = counter(fmt.get("sampleRate", MISSING), "start.mediaFormat.sampleRate")
    if base == MULAW_ENCODING and sample_rate == 8000:
        return MULAW_8K
    if base == L16_ENCODING and sample_rate in (8000, 16000):
        return AudioFormat("l16", sample_rate)
    raise RemoteProtocolError(
        f"start.mediaFormat {show(encoding)} at {sample_rate} Hz is not one voxbridge streams "
        "(audio/x-mulaw 8000, audio/x-l16 8000 or 16000)"
    )


# --- the codec ----------------------------------------------------------------------------------------

_Decoder: TypeAlias = Callable[["PlivoStream", dict[str, Any]], CarrierEvent | None]


class PlivoStream:
    """The state of one Plivo audio stream: a :class:`~voxbridge.carriers.base.CarrierCodec`.

    Attributes:
        MAX_FRAME: frames longer than this (characters for ``str``, bytes for ``bytes``) are
            rejected before parsing (a 20 ms L16 16 kHz chunk is under 1 KiB of JSON).
        capabilities: :data:`CAPABILITIES`.
        unknown_events: how many frames with an ``event`` this codec does not know were ignored.
    """

    MAX_FRAME: int = 64 * 1024
    capabilities: Capabilities = CAPABILITIES

    def __init__(self) -> None:
        self._start: PlivoStart | None = None
        self._stopped = False
        self._transcoder: Transcoder | None = None
        self._sid_json = ""
        self._play_prefix = ""
        self.unknown_events = 0

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "started" if self._start else "fresh"
        return f"PlivoStream({state}, stream_id={self.stream_id!r})"

    # --- state ------------------------------------------------------------------------------------

    @property
    def start(self) -> PlivoStart | None:
        """Plivo's ``start``, once received."""
        return self._start

    @property
    def started(self) -> bool:
        """True once ``start`` has been received (it stays true after a ``stop``)."""
        return self._start is not None

    @property
    def stopped(self) -> bool:
        """True once a ``stop`` has been received; no further frame is accepted."""
        return self._stopped

    @property
    def stream_id(self) -> str | None:
        """``start.streamId``, or ``None`` before it."""
        return None if self._start is None else self._start.stream_id

    @property
    def call_id(self) -> str | None:
        """``start.callId`` (Plivo's ``CallUUID``), or ``None`` before it."""
        return None if self._start is None else self._start.call_id

    @property
    def audio_format(self) -> AudioFormat | None:
        """The stream's format from ``start.mediaFormat``, or ``None`` before it."""
        return None if self._start is None else self._start.audio_format

    # --- inbound ----------------------------------------------------------------------------------

    def decode(self, frame: Frame) -> CarrierEvent | None:
        """One WebSocket frame from Plivo as a neutral event (``None``: nothing for the call).

        Args:
            frame: the frame's text; ``bytes`` are read as UTF-8.

        Returns:
            :class:`StreamStarted`, :class:`CallerAudio` (base64 mu-law 8 kHz: Plivo's own
            payload for a mu-law stream), :class:`MarkPlayed`, :class:`Dtmf`,
            :class:`StreamStopped`, or ``None`` (``clearedAudio``, an unknown event, the first
            chunks of a 16 kHz stream while the resampler fills).

        Raises:
            RemoteProtocolError: the frame is not a valid Plivo message in the current state
                (too long, not UTF-8, not a JSON object, missing or mistyped field, bad base64,
                out of order, another stream's ``streamId``, ...). The state is left unchanged.
        """
        if self._stopped:
            raise RemoteProtocolError("frame after stop")
        event, message = parse_frame(frame, self.MAX_FRAME)
        decoder = _DECODERS.get(event)
        if decoder is None:
            self.unknown_events += 1
            return None
        try:
            return decoder(self, message)
        except RemoteProtocolError:
            raise
        except SAFETY_NET as exc:  # a decoder bug; still never let it escape
            raise unexpected(event, exc) from exc

    def _require_started(self, message: dict[str, Any], event: str) -> PlivoStart:
        start = self._start
        if start is None:
            raise RemoteProtocolError(f"{event} before start")
        same_stream(message, "streamId", start.stream_id, event)
        return start

    def _decode_start(self, message: dict[str, Any]) -> StreamStarted:
        if self._start is not None:
            raise RemoteProtocolError("duplicate start")
        body = object_field(message, "start", "start")
        stream_id = string_field(body, "streamId", "start.streamId")
        if not stream_id:
            raise RemoteProtocolError("start.streamId is empty")
        top = message.get("streamId", MISSING)
        if top is not MISSING and top != stream_id:
            raise RemoteProtocolError(
                f"streamId {show(top)} does not match start.streamId {stream_id!r}"
            )
        call_id = string_field(body, "callId", "start.callId")
        if not call_id:
            raise RemoteProtocolError("start.callId is empty")
        account_id = string_field(body, "accountId", "start.accountId", "")
        tracks = body.get("tracks", [])
        if type(tracks) is not list or not all(type(track) is str for track in tracks):
            raise RemoteProtocolError(f"start.tracks must be an array of strings: {show(tracks)}")
        audio_format = _audio_format(object_field(body, "mediaFormat", "start.mediaFormat"))
        extra = string_field(message, "extra_headers", "extra_headers", "")
        sequence_number = optional_counter(message, "sequenceNumber", "sequenceNumber")

        start = PlivoStart(
            call_id=call_id,
            stream_id=stream_id,
            account_id=account_id,
            tracks=tuple(tracks),
            audio_format=audio_format,
            extra_headers=extra,
            sequence_number=sequence_number,
        )
        # Nothing below can fail: the state changes only once the whole frame was valid.
        converter = transcoder(audio_format)  # primed: no playAudio goes out empty
        sid_json = json_string(stream_id)
        if converter is None:
            media = f'"contentType":"{MULAW_ENCODING}","sampleRate":8000'
        else:
            media = f'"contentType":"{L16_ENCODING}","sampleRate":{audio_format.sample_rate}'
        self._play_prefix = (
            f'{{"event":"playAudio","streamId":{sid_json},"media":{{{media},"payload":"'
        )
        self._sid_json = sid_json
        self._transcoder = converter
        self._start = start
        return StreamStarted(
            call_id=call_id,
            stream_id=stream_id,
            account_id=account_id,
            custom_parameters=decode_extra_headers(extra),
            audio_format=audio_format,
            details=start,
        )

    def _decode_media(self, message: dict[str, Any]) -> CallerAudio | None:
        self._require_started(message, "media")
        optional_counter(message, "sequenceNumber", "sequenceNumber")
        body = object_field(message, "media", "media")
        payload, audio = audio_payload(body, "media.payload")
        optional_counter(body, "chunk", "media.chunk")
        optional_counter(body, "timestamp", "media.timestamp")
        string_field(body, "track", "media.track", "")
        converter = self._transcoder
        if converter is None:
            return CallerAudio(payload)
        if len(audio) % 2:
            raise RemoteProtocolError(
                f"L16 media.payload of {len(audio)} bytes is not whole samples"
            )
        neutral = converter.to_neutral(audio)
        return CallerAudio(neutral) if neutral else None

    def _decode_dtmf(self, message: dict[str, Any]) -> Dtmf:
        self._require_started(message, "dtmf")
        body = object_field(message, "dtmf", "dtmf")
        return Dtmf(digit(string_field(body, "digit", "dtmf.digit"), "dtmf.digit"))

    def _decode_played(self, message: dict[str, Any]) -> MarkPlayed:
        self._require_started(message, "playedStream")
        return MarkPlayed(string_field(message, "name", "playedStream.name"))

    def _decode_cleared(self, message: dict[str, Any]) -> None:
        self._require_started(message, "clearedAudio")
        return None

    def _decode_stop(self, message: dict[str, Any]) -> StreamStopped:
        self._require_started(message, "stop")
        self._stopped = True
        return StreamStopped()

    # --- outbound ---------------------------------------------------------------------------------

    def audio(self, mulaw: bytes) -> str:
        """A ``playAudio`` frame that plays ``mulaw`` (raw mu-law 8 kHz, no header) to the
        caller, in the stream's format (converted for an L16 stream).

        Returns:
            ``{"event":"playAudio","streamId":"...","media":{"contentType":"audio/x-mulaw",
            "sampleRate":8000,"payload":"..."}}``

        Raises:
            LocalProtocolError: no ``start`` has been received yet.
        """
        if self._start is None:
            raise LocalProtocolError("cannot send playAudio before start")
        converter = self._transcoder
        audio = mulaw if converter is None else converter.from_neutral(mulaw)
        return f'{self._play_prefix}{b64_encode(audio)}"}}}}'

    def mark(self, name: str) -> str:
        """A ``checkpoint`` frame: Plivo answers ``playedStream`` with ``name`` once the audio
        sent before it has played (never, if a ``clearAudio`` discards it first).

        Returns:
            ``{"event":"checkpoint","streamId":"...","name":"..."}`` (``name`` JSON-escaped).

        Raises:
            LocalProtocolError: no ``start`` has been received yet.
        """
        sid = self._sid("checkpoint")
        return f'{{"event":"checkpoint","streamId":{sid},"name":{json_string(name)}}}'

    def clear(self) -> str:
        """A ``clearAudio`` frame: Plivo drops the audio queued (and its checkpoints).

        Returns:
            ``{"event":"clearAudio","streamId":"..."}``

        Raises:
            LocalProtocolError: no ``start`` has been received yet.
        """
        return f'{{"event":"clearAudio","streamId":{self._sid("clearAudio")}}}'

    def _sid(self, what: str) -> str:
        if self._start is None:
            raise LocalProtocolError(f"cannot send {what} before start")
        return self._sid_json


_DECODERS: Final[dict[str, _Decoder]] = {
    "start": PlivoStream._decode_start,
    "media": PlivoStream._decode_media,
    "dtmf": PlivoStream._decode_dtmf,
    "playedStream": PlivoStream._decode_played,
    "played": PlivoStream._decode_played,
    "clearedAudio": PlivoStream._decode_cleared,
    "stop": PlivoStream._decode_stop,
}
