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

Note the types (PROTOCOLS.md D.6, which wins over D.2): ``sequenceNumber`` and ``media.chunk``
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
16 kHz its outbound resampler is primed with 20 ms of silence, so that no ``playAudio`` goes out
empty while it fills; caller audio converted to nothing yet decodes to ``None``). Outbound
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

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import attrs
import orjson

from ..audio import SILENCE, b64_decode, b64_encode
from ..errors import RemoteProtocolError, SettingsError
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
from .spec import CarrierSpec
from .transcode import Transcoder, transcoder

if TYPE_CHECKING:
    from ..settings import Settings
    from .base import CarrierRest, CarrierWebhooks

__all__ = [
    "CAPABILITIES",
    "CONTENT_TYPES",
    "DTMF_DIGITS",
    "EXTRA_HEADERS_MAX",
    "L16_ENCODING",
    "MULAW_ENCODING",
    "SPEC",
    "PlivoSettings",
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
#: 20 ms of mu-law silence: what primes a resampler at the start of a 16 kHz stream.
PRIMING: Final = SILENCE * 160
#: Every value a ``dtmf.digit`` may take.
DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")
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

_MISSING: Final = object()
_MAX_COUNTER: Final = 2**63 - 1
_TYPE_NAMES: Final[Mapping[type, str]] = {dict: "an object", list: "an array"}


def _show(value: object) -> str:
    """A JSON value for an error message, briefly and without recursing into it."""
    if isinstance(value, str):
        return repr(value[:60] + "..." if len(value) > 60 else value)
    if value is None or isinstance(value, bool | int | float):
        text = json.dumps(value)
        return text[:60] + "..." if len(text) > 60 else text
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _object(obj: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = obj.get(key, _MISSING)
    if value is _MISSING:
        raise RemoteProtocolError(f"{path} is missing")
    if type(value) is not dict:
        raise RemoteProtocolError(f"{path} must be an object, got {_show(value)}")
    return value


def _string(obj: dict[str, Any], key: str, path: str, default: str | None = None) -> str:
    value = obj.get(key, _MISSING)
    if type(value) is str:
        return value
    if value is _MISSING:
        if default is None:
            raise RemoteProtocolError(f"{path} is missing")
        return default
    raise RemoteProtocolError(f"{path} must be a string, got {_show(value)}")


def _counter(value: object, path: str) -> int:
    """A non-negative integer sent as a JSON integer or a string of digits."""
    if type(value) is int and 0 <= value <= _MAX_COUNTER:
        return value
    if type(value) is str and 0 < len(value) <= 19 and value.isascii() and value.isdigit():
        number = int(value)
        if number <= _MAX_COUNTER:
            return number
    raise RemoteProtocolError(f"{path} must be a non-negative integer, got {_show(value)}")


def _optional_counter(obj: dict[str, Any], key: str, path: str) -> int | None:
    value = obj.get(key, _MISSING)
    return None if value is _MISSING else _counter(value, path)


def _audio_format(fmt: dict[str, Any]) -> AudioFormat:
    encoding = _string(fmt, "encoding", "start.mediaFormat.encoding")
    base = encoding.partition(";")[0].strip().lower()
    rate = fmt.get("sampleRate", _MISSING)
    if rate is _MISSING:
        raise RemoteProtocolError("start.mediaFormat.sampleRate is missing")
    sample_rate = _counter(rate, "start.mediaFormat.sampleRate")
    if base == MULAW_ENCODING and sample_rate == 8000:
        return MULAW_8K
    if base == L16_ENCODING and sample_rate in (8000, 16000):
        return AudioFormat("l16", sample_rate)
    raise RemoteProtocolError(
        f"start.mediaFormat {_show(encoding)} at {sample_rate} Hz is not one voxbridge streams "
        "(audio/x-mulaw 8000, audio/x-l16 8000 or 16000)"
    )


# --- the codec ----------------------------------------------------------------------------------------

_Decoder: TypeAlias = Callable[["PlivoStream", dict[str, Any]], CarrierEvent | None]
_SAFETY_NET: Final = (
    TypeError,
    KeyError,
    AttributeError,
    IndexError,
    ValueError,
    OverflowError,
    RecursionError,
)


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
        if not isinstance(frame, str | bytes):
            raise RemoteProtocolError(f"a frame must be text or bytes, not {type(frame).__name__}")
        if len(frame) > self.MAX_FRAME:
            raise RemoteProtocolError(f"frame of {len(frame)} exceeds MAX_FRAME={self.MAX_FRAME}")
        try:
            # orjson rejects invalid UTF-8, NaN/Infinity, lone surrogates, integers beyond 64
            # bits and nesting beyond 1024, like the Twilio codec.
            message = orjson.loads(frame)
        except orjson.JSONDecodeError as exc:
            raise RemoteProtocolError(f"malformed JSON: {exc}") from exc
        if type(message) is not dict:
            raise RemoteProtocolError(f"frame must be a JSON object, got {_show(message)}")
        event = message.get("event", _MISSING)
        if type(event) is not str:
            if event is _MISSING:
                raise RemoteProtocolError("frame has no 'event' field")
            raise RemoteProtocolError(f"event must be a string, got {_show(event)}")
        decoder = _DECODERS.get(event)
        if decoder is None:
            self.unknown_events += 1
            return None
        try:
            return decoder(self, message)
        except RemoteProtocolError:
            raise
        except _SAFETY_NET as exc:  # a decoder bug; still never let it escape
            raise RemoteProtocolError(
                f"unexpected error decoding {event} frame: {type(exc).__name__}"
            ) from exc

    def _require_started(self, message: dict[str, Any], event: str) -> PlivoStart:
        start = self._start
        if start is None:
            raise RemoteProtocolError(f"{event} before start")
        sid = message.get("streamId", _MISSING)
        if sid is not _MISSING and sid != start.stream_id:
            raise RemoteProtocolError(
                f"{event}.streamId {_show(sid)} does not match the stream {start.stream_id!r}"
            )
        return start

    def _decode_start(self, message: dict[str, Any]) -> StreamStarted:
        if self._start is not None:
            raise RemoteProtocolError("duplicate start")
        body = _object(message, "start", "start")
        stream_id = _string(body, "streamId", "start.streamId")
        if not stream_id:
            raise RemoteProtocolError("start.streamId is empty")
        top = message.get("streamId", _MISSING)
        if top is not _MISSING and top != stream_id:
            raise RemoteProtocolError(
                f"streamId {_show(top)} does not match start.streamId {stream_id!r}"
            )
        call_id = _string(body, "callId", "start.callId")
        if not call_id:
            raise RemoteProtocolError("start.callId is empty")
        account_id = _string(body, "accountId", "start.accountId", "")
        tracks = body.get("tracks", [])
        if type(tracks) is not list or not all(type(track) is str for track in tracks):
            raise RemoteProtocolError(f"start.tracks must be an array of strings: {_show(tracks)}")
        audio_format = _audio_format(_object(body, "mediaFormat", "start.mediaFormat"))
        extra = _string(message, "extra_headers", "extra_headers", "")
        sequence_number = _optional_counter(message, "sequenceNumber", "sequenceNumber")

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
        converter = transcoder(audio_format)
        if converter is not None and audio_format.sample_rate != 8000:
            # A streaming resampler gives nothing for its first input (it fills its filter):
            # feed it 20 ms of silence now, so that no playAudio goes out empty.
            converter.from_neutral(PRIMING)
        sid_json = json.dumps(stream_id)
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
        _optional_counter(message, "sequenceNumber", "sequenceNumber")
        body = _object(message, "media", "media")
        payload = _string(body, "payload", "media.payload")
        if not payload:
            raise RemoteProtocolError("empty media payload")
        _optional_counter(body, "chunk", "media.chunk")
        _optional_counter(body, "timestamp", "media.timestamp")
        _string(body, "track", "media.track", "")
        converter = self._transcoder
        if converter is None:
            try:
                b64_decode(payload)
            except ValueError as exc:
                raise RemoteProtocolError(f"media.payload is {exc}") from None
            return CallerAudio(payload)
        try:
            audio = b64_decode(payload)
        except ValueError as exc:
            raise RemoteProtocolError(f"media.payload is {exc}") from None
        if len(audio) % 2:
            raise RemoteProtocolError(
                f"L16 media.payload of {len(audio)} bytes is not whole samples"
            )
        neutral = converter.to_neutral(audio)
        return CallerAudio(neutral) if neutral else None

    def _decode_dtmf(self, message: dict[str, Any]) -> Dtmf:
        self._require_started(message, "dtmf")
        body = _object(message, "dtmf", "dtmf")
        digit = _string(body, "digit", "dtmf.digit")
        if digit not in DTMF_DIGITS:
            raise RemoteProtocolError(f"dtmf.digit must be one of 0-9 * # A-D, got {_show(digit)}")
        return Dtmf(digit)

    def _decode_played(self, message: dict[str, Any]) -> MarkPlayed:
        self._require_started(message, "playedStream")
        return MarkPlayed(_string(message, "name", "playedStream.name"))

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
        quoted = f'"{name}"' if name.isascii() and name.isalnum() else json.dumps(name)
        return f'{{"event":"checkpoint","streamId":{sid},"name":{quoted}}}'

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


# --- settings and the spec ----------------------------------------------------------------------------


def _option(default: Any, help: str, *, secret: bool = False, env: tuple[str, ...] = ()) -> Any:
    """A settings field as :func:`voxbridge.providers.spec.option` makes it, plus ``env``: the
    vendor's own environment variables for it (``PLIVO_AUTH_TOKEN``), read after
    ``VOXBRIDGE_PLIVO_<FIELD>``."""
    return attrs.field(
        default=default,
        repr=not secret,
        metadata={"help": help, "secret": secret, "cli": not secret, "env": env},
    )


def _content_type(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in CONTENT_TYPES:
        raise SettingsError(
            f"--plivo-content-type must be one of {', '.join(CONTENT_TYPES)}, got {value!r}"
        )


def _auth_tokens(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    tokens = value.split(",") if isinstance(value, str) else []
    if not 1 <= len(tokens) <= 2 or not all(token.strip() for token in tokens):
        raise SettingsError(
            "PLIVO_AUTH_TOKEN must be one auth token, or two separated by a comma (while rotating)"
        )


@attrs.frozen
class PlivoSettings:
    """``--plivo-*`` settings. The auth token is environment only (``PLIVO_AUTH_TOKEN``)."""

    auth_id: str | None = _option(
        None,
        "Plivo Auth ID (MA... or SA...; also PLIVO_AUTH_ID): the account of REST calls",
        env=("PLIVO_AUTH_ID",),
    )
    auth_token: str | None = attrs.field(
        default=None,
        repr=False,
        validator=_auth_tokens,
        metadata={
            "help": "Plivo Auth Token (also PLIVO_AUTH_TOKEN): enables signature checks and "
            "per-call tokens (a second, comma-separated token while rotating)",
            "secret": True,
            "cli": False,
            "env": ("PLIVO_AUTH_TOKEN",),
        },
    )
    content_type: str = attrs.field(
        default=DEFAULT_CONTENT_TYPE,
        validator=_content_type,
        metadata={
            "help": "the stream's audio: audio/x-mulaw;rate=8000 (no conversion), "
            "audio/x-l16;rate=8000 or audio/x-l16;rate=16000",
            "secret": False,
            "cli": True,
            "env": (),
        },
    )
    api_url: str = _option("https://api.plivo.com", "Plivo REST API base URL (a fake's in tests)")

    @property
    def auth_tokens(self) -> tuple[str, ...]:
        """``auth_token`` split for rotation: ``()`` when unset, else one or two tokens."""
        if self.auth_token is None:
            return ()
        return tuple(token.strip() for token in self.auth_token.split(","))


def _webhooks(settings: Settings, own: PlivoSettings) -> CarrierWebhooks:
    from .plivo_webhooks import PlivoWebhooks

    tokens = own.auth_tokens
    if tokens and settings.public_url is None:
        raise SettingsError(
            "PLIVO_AUTH_TOKEN needs --public-url / VOXBRIDGE_PUBLIC_URL: Plivo signs the public "
            "URL it calls, and voxbridge rebuilds it from that setting"
        )
    return PlivoWebhooks(
        auth_tokens=tokens, content_type=own.content_type, public_url=settings.public_url
    )


def _rest(settings: Settings, own: PlivoSettings) -> CarrierRest | None:
    from .plivo_rest import PlivoRest

    tokens = own.auth_tokens
    if not tokens or not own.auth_id:
        return None
    return PlivoRest(own.auth_id, tokens[0], base_url=own.api_url)


SPEC: CarrierSpec[PlivoSettings] = CarrierSpec(
    name="plivo",
    codec=PlivoStream,
    webhook="answer",
    settings=PlivoSettings,
    webhooks=_webhooks,
    simulator="voxbridge.testing.plivo_wire:PlivoWire",
    rest=_rest,
)
