"""A sans-IO codec for Telnyx Media Streaming (TeXML ``<Connect><Stream bidirectionalMode="rtp">``).

Telnyx talks to us over one WebSocket per call, one JSON text frame per message, in snake_case
(Telnyx's "Stream call media over WebSocket" AsyncAPI reference, its Call Control
``streaming_start`` page and the TeXML ``<Stream>`` verb page; pipecat's Telnyx serializer as a
second reading). This module turns those frames into the neutral events of
:mod:`voxbridge.carriers.base` and builds the frames we send back; it never touches a socket, a
clock or a logger.

The state machine of one stream::

    fresh --connected--> connected --start--> started --stop--> stopped
      |                                 ^      |    ^
      +-------------start---------------+      +----+ media / mark / dtmf
    (error: in any state but stopped)

``connected`` is optional and comes at most once, before ``start``. ``start`` comes exactly once
and must name the call (``start.call_control_id``), the stream (top-level ``stream_id``) and an
audio format voxbridge converts (``start.media_format``: ``PCMU`` at 8000 Hz, or ``L16`` at 8000
or 16000 Hz, mono). ``media``, ``mark`` (the echo of a mark we sent) and ``dtmf`` are valid only
while started; a ``stream_id`` they carry must be the one ``start`` announced. ``stop`` ends the
stream and nothing may follow it. A frame that breaks a rule raises
:class:`~voxbridge.errors.RemoteProtocolError` (the call ends ``protocol_error``) and leaves the
state exactly as it was; no other exception escapes :meth:`TelnyxStream.decode`, whatever text or
bytes it is fed. Sending before ``start`` raises
:class:`~voxbridge.carriers.base.LocalProtocolError` (our bug); sending after ``stop`` is allowed
(a send racing the hang-up is not a bug).

Choices where Telnyx's documents leave room (recorded in docs/carriers.md too):

* **Media order.** Telnyx says the order of ``media`` frames is not guaranteed. The codec forwards
  caller audio in *arrival* order and counts, in :attr:`TelnyxStream.out_of_order`, every frame
  whose ``media.chunk`` is not above the highest chunk seen so far (a late or repeated chunk).
  Reordering would need a jitter buffer, i.e. added latency on every call, to fix an occasional
  20 ms swap the provider's speech recognition shrugs off; the counter makes the trade visible.
* **``error`` frames** (Telnyx telling us it could not use a frame we sent) are not protocol
  errors of *theirs*: they decode to ``None``, are counted in :attr:`TelnyxStream.errors` and the
  last one is kept (:attr:`TelnyxStream.last_error`, a :class:`TelnyxError`). The call goes on.
* **Unknown events** decode to ``None`` and are counted in :attr:`TelnyxStream.ignored`: Telnyx's
  event list is younger than Twilio's and a new informational event must not end calls.
* **``media`` of the outbound track** (a stream configured with ``both_tracks``) is our own
  audio coming back: it decodes to ``None``.
* **Custom parameters** (what the TeXML ``<Parameter>`` elements carried: the per-call token among
  them) are read from ``start.custom_parameters``, as an object of strings or as Call Control's
  list of ``{"name", "value"}`` pairs; ``start.client_state`` is kept in :class:`Start`.
* **The outbound format** is not echoed in ``start`` (D.6). Our TeXML answer asks for the same
  codec and rate both ways, so the codec sends what ``start.media_format`` announced unless it was
  built with another ``outbound`` format.

Audio: ``PCMU`` at 8 kHz is the call's neutral format, so caller payloads are forwarded verbatim
(validated once: strict, non-empty base64) and agent audio is only base64-encoded: copy-free.
``L16`` is big-endian (network order, RFC 2586; D.6) and goes through one
:class:`~voxbridge.carriers.transcode.Transcoder` per direction, chosen at ``start`` (16 kHz is
resampled by soxr streaming resamplers whose state spans the call).

Outbound frames carry no ``stream_id`` (Telnyx's examples and pipecat send none): ``media`` is
``{"event":"media","media":{"payload":...}}``, ``mark`` ``{"event":"mark","mark":{"name":...}}``,
``clear`` ``{"event":"clear"}``. Payloads are base64 text built here from bytes and mark names are
JSON-escaped, so nothing a provider says can change an outbound frame's JSON structure.

The frames Telnyx sends, for simulators and tests, are built by :mod:`voxbridge.testing.telnyx_wire`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, TypeAlias

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
    "CODECS",
    "DTMF_DIGITS",
    "L16_RATES",
    "MediaFormat",
    "Start",
    "TelnyxError",
    "TelnyxStream",
    "audio_format",
]

#: The stream codecs voxbridge asks Telnyx for (``--telnyx-codec``).
CODECS: Final = ("PCMU", "L16")
#: The sample rates (Hz) voxbridge converts for ``L16``; ``PCMU`` is always 8000.
L16_RATES: Final = (8000, 16000)
_TEXT_EXCERPT: Final = 200  # characters of Telnyx's error title/detail kept


def audio_format(codec: str, sample_rate: int) -> AudioFormat:
    """The :class:`~voxbridge.carriers.base.AudioFormat` of a Telnyx stream codec.

    ``PCMU`` at 8000 Hz is mu-law 8 kHz (:data:`~voxbridge.carriers.base.MULAW_8K`); ``L16`` at
    8000 or 16000 Hz is big-endian 16-bit PCM.

    Raises:
        ValueError: a codec or rate voxbridge does not convert.
    """
    if codec == "PCMU" and sample_rate == 8000:
        return MULAW_8K
    if codec == "L16" and sample_rate in L16_RATES:
        return AudioFormat("l16", sample_rate, big_endian=True)
    raise ValueError(
        f"Telnyx codec {codec[:16]!r} at {sample_rate} Hz is not supported "
        "(PCMU at 8000 Hz, or L16 at 8000 or 16000 Hz)"
    )


# --------------------------------------------------------------------------------------- events


@attrs.frozen
class MediaFormat:
    """``start.media_format``: the codec of the audio Telnyx streams to us."""

    encoding: str
    sample_rate: int
    channels: int


def _params(params: Mapping[str, str]) -> dict[str, str]:
    return dict(params)


@attrs.frozen
class Start:
    """Telnyx's ``start`` frame (``StreamStarted.details``).

    Attributes:
        stream_id: the top-level ``stream_id``.
        call_control_id: the ``v3:...`` id Call Control commands (hang-up, transfer) name.
        user_id: the Telnyx account (``""`` when not sent).
        client_state: ``start.client_state`` as sent (base64 text; ``""`` when absent or null).
        media_format: what Telnyx streams to us.
        custom_parameters: the TeXML ``<Parameter>`` pairs (a private copy, not hashed).
        from_: ``start.from`` (``""`` when absent or null).
        to: ``start.to`` (``""`` when absent or null).
    """

    stream_id: str
    call_control_id: str
    user_id: str
    client_state: str
    media_format: MediaFormat
    custom_parameters: Mapping[str, str] = attrs.field(converter=_params, hash=False)
    from_: str = ""
    to: str = ""


@attrs.frozen
class TelnyxError:
    """An ``error`` frame: Telnyx could not use something we sent (``code`` is Telnyx's error
    code as sent, ``""`` when absent; ``title`` and ``detail`` are cut to 200 characters)."""

    code: str
    title: str
    detail: str


# ------------------------------------------------------------------------------ field checking


def _custom_parameters(value: object) -> dict[str, str]:
    """``start.custom_parameters``: an object of strings, or a list of ``{"name", "value"}``."""
    if value is MISSING or value is None:
        return {}
    if type(value) is dict:
        for name, item in value.items():
            if type(item) is not str:
                raise RemoteProtocolError(
                    f"start.custom_parameters[{show(name)}] must be a string, got {show(item)}"
                )
        return value  # checked above: every value is a string
    if type(value) is list:
        params: dict[str, str] = {}
        for pair in value:
            if type(pair) is not dict:
                raise RemoteProtocolError(
                    f"start.custom_parameters must hold objects, got {show(pair)}"
                )
            name = string_field(pair, "name", "start.custom_parameters[].name")
            params[name] = string_field(pair, "value", "start.custom_parameters[].value")
        return params
    raise RemoteProtocolError(
        f"start.custom_parameters must be an object or an array, got {show(value)}"
    )


def _excerpt(value: object) -> str:
    if type(value) is str:
        return value[:_TEXT_EXCERPT]
    if type(value) is int:
        return str(value)
    return ""


# ---------------------------------------------------------------------------------------- codec

_Decoder: TypeAlias = Callable[["TelnyxStream", dict[str, object]], CarrierEvent | None]
_CLEAR: Final = '{"event":"clear"}'
_MEDIA_PREFIX: Final = '{"event":"media","media":{"payload":"'


class TelnyxStream:
    """The state of one Telnyx media stream, fed one WebSocket frame at a time
    (a :class:`~voxbridge.carriers.base.CarrierCodec`).

    Args:
        outbound: the format Telnyx expects our audio in (the TeXML ``bidirectionalCodec`` and
            ``bidirectionalSamplingRate``); ``None``: the format ``start`` announces for the
            caller's audio (our TeXML asks for the same both ways).

    Attributes:
        MAX_FRAME: frames longer than this (characters for ``str``, bytes for ``bytes``) are
            rejected before parsing: 64 KiB, about 2 s of L16 16 kHz audio in base64.
        out_of_order: caller ``media`` frames whose ``chunk`` was not above the highest seen.
        errors: ``error`` frames received; :attr:`last_error` is the last one.
        ignored: frames with an event this codec does not know (decoded to ``None``).
    """

    MAX_FRAME: int = 64 * 1024
    capabilities: Capabilities = Capabilities(
        marks=True, echoes_cleared_marks=True, sends_stop=True, binary_audio=False
    )

    def __init__(self, outbound: AudioFormat | None = None) -> None:
        self._outbound_format = outbound
        self._connected = False
        self._start: Start | None = None
        self._stopped = False
        self._down: Transcoder | None = None  # caller audio -> mu-law 8 kHz
        self._up: Transcoder | None = None  # agent mu-law 8 kHz -> the stream's format
        self._highest_chunk = -1
        self.out_of_order = 0
        self.errors = 0
        self.ignored = 0
        self.last_error: TelnyxError | None = None

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "started" if self._start else "fresh"
        return f"TelnyxStream({state}, stream_id={self.stream_id!r})"

    # ------------------------------------------------------------------------------- state

    @property
    def start(self) -> Start | None:
        """The ``start`` frame, once received."""
        return self._start

    @property
    def started(self) -> bool:
        """True once ``start`` has been received (it stays true after ``stop``)."""
        return self._start is not None

    @property
    def stopped(self) -> bool:
        """True once ``stop`` has been received; no further frame is accepted."""
        return self._stopped

    @property
    def stream_id(self) -> str | None:
        """The ``stream_id`` from ``start``, or ``None`` before it."""
        return None if self._start is None else self._start.stream_id

    # ----------------------------------------------------------------------------- inbound

    def decode(self, frame: Frame) -> CarrierEvent | None:
        """Decode one WebSocket frame from Telnyx and advance the state machine.

        Args:
            frame: the frame's text; ``bytes`` are decoded as UTF-8.

        Returns:
            The neutral event, or ``None`` for a frame that carries nothing for the call
            (``connected``, ``error``, an unknown event, outbound-track media, caller audio
            that a resampler has buffered whole).

        Raises:
            RemoteProtocolError: the frame is not a valid Telnyx message in the current state (too
                long, not UTF-8, not a JSON object, no event, a missing or mistyped field, bad
                base64, an unsupported media format, out of order, another stream's id, ...).
                The state is left unchanged.
            TypeError: ``frame`` is neither ``str`` nor ``bytes`` (a bug in the caller).
        """
        if self._stopped:
            raise RemoteProtocolError("frame after stop")
        event, message = parse_frame(frame, self.MAX_FRAME, foreign=TypeError)
        decoder = _DECODERS.get(event)
        if decoder is None:
            self.ignored += 1
            return None
        try:
            return decoder(self, message)
        except RemoteProtocolError:
            raise
        except SAFETY_NET as exc:  # a decoder bug; still never let it escape
            raise unexpected(event, exc) from exc

    def _require_started(self, message: dict[str, object], event: str) -> Start:
        start = self._start
        if start is None:
            raise RemoteProtocolError(f"{event} before start")
        same_stream(message, "stream_id", start.stream_id, event)
        return start

    def _decode_connected(self, message: dict[str, object]) -> None:
        if self._start is not None:
            raise RemoteProtocolError("connected after start")
        if self._connected:
            raise RemoteProtocolError("duplicate connected")
        string_field(message, "version", "connected.version", "", nullable=True)
        self._connected = True  # its body may repeat the stream token: never kept
        return None

    def _decode_start(self, message: dict[str, object]) -> StreamStarted:
        if self._start is not None:
            raise RemoteProtocolError("duplicate start")
        stream_id = string_field(message, "stream_id", "stream_id")
        if not stream_id:
            raise RemoteProtocolError("stream_id is empty")
        body = object_field(message, "start", "start")
        call_control_id = string_field(body, "call_control_id", "start.call_control_id")
        if not call_control_id:
            raise RemoteProtocolError("start.call_control_id is empty")
        fmt = object_field(body, "media_format", "start.media_format")
        encoding = string_field(fmt, "encoding", "start.media_format.encoding")
        sample_rate = counter(fmt.get("sample_rate", MISSING), "start.media_format.sample_rate")
        channels = counter(fmt.get("channels", 1), "start.media_format.channels")
        if channels != 1:
            raise RemoteProtocolError(f"start.media_format.channels must be 1, got {channels}")
        try:
            inbound = audio_format(encoding.upper(), sample_rate)
        except ValueError as exc:
            raise RemoteProtocolError(f"start.media_format: {exc}") from None
        outbound = self._outbound_format or inbound
        params = _custom_parameters(body.get("custom_parameters", MISSING))
        start = Start(
            stream_id=stream_id,
            call_control_id=call_control_id,
            user_id=string_field(body, "user_id", "start.user_id", "", nullable=True),
            client_state=string_field(
                body, "client_state", "start.client_state", "", nullable=True
            ),
            media_format=MediaFormat(encoding, sample_rate, channels),
            custom_parameters=params,
            from_=string_field(body, "from", "start.from", "", nullable=True),
            to=string_field(body, "to", "start.to", "", nullable=True),
        )
        # a Transcoder primes its outbound resampler: no media payload goes out empty
        self._down, self._up = transcoder(inbound), transcoder(outbound)  # ValueError: a bug
        self._start = start
        return StreamStarted(
            call_id=call_control_id,
            stream_id=stream_id,
            account_id=start.user_id,
            custom_parameters=params,
            audio_format=inbound,
            details=start,
        )

    def _decode_media(self, message: dict[str, object]) -> CallerAudio | None:
        self._require_started(message, "media")
        body = object_field(message, "media", "media")
        track = string_field(body, "track", "media.track", "inbound", nullable=True)
        payload, audio = audio_payload(body, "media.payload")
        chunk = optional_counter(body, "chunk", "media.chunk", nullable=True)
        optional_counter(body, "timestamp", "media.timestamp", nullable=True)
        if track == "outbound":
            return None  # our own audio, streamed back with both_tracks
        down = self._down
        if down is not None:
            if len(audio) % 2:  # checked before the resampler's state moves
                raise RemoteProtocolError(
                    f"L16 media.payload must be whole 16-bit samples, got {len(audio)} bytes"
                )
            payload = down.to_neutral(audio)
        if chunk is not None:
            if chunk <= self._highest_chunk:
                self.out_of_order += 1
            else:
                self._highest_chunk = chunk
        return CallerAudio(payload) if payload else None

    def _decode_mark(self, message: dict[str, object]) -> MarkPlayed:
        self._require_started(message, "mark")
        body = object_field(message, "mark", "mark")
        return MarkPlayed(string_field(body, "name", "mark.name"))

    def _decode_dtmf(self, message: dict[str, object]) -> Dtmf:
        self._require_started(message, "dtmf")
        body = object_field(message, "dtmf", "dtmf")
        return Dtmf(digit(string_field(body, "digit", "dtmf.digit"), "dtmf.digit"))

    def _decode_error(self, message: dict[str, object]) -> None:
        body = message.get("payload", MISSING)
        if body is MISSING or body is None:
            body = message.get("error", {})
        if type(body) is not dict:
            raise RemoteProtocolError(f"error.payload must be an object, got {show(body)}")
        self.last_error = TelnyxError(
            code=_excerpt(body.get("code")),
            title=_excerpt(body.get("title")),
            detail=_excerpt(body.get("detail")),
        )
        self.errors += 1
        return None

    def _decode_stop(self, message: dict[str, object]) -> StreamStopped:
        self._require_started(message, "stop")
        body = message.get("stop", MISSING)
        if body is not MISSING and body is not None and type(body) is not dict:
            raise RemoteProtocolError(f"stop must be an object, got {show(body)}")
        self._stopped = True
        return StreamStopped()

    # ---------------------------------------------------------------------------- outbound

    def _check(self, what: str) -> None:
        if self._start is None:
            raise LocalProtocolError(f"cannot send {what} before start")

    def audio(self, mulaw: bytes) -> str:
        """A ``media`` frame that plays ``mulaw`` (raw mu-law 8 kHz, no header) to the caller,
        converted to the stream's outbound format (``L16``: big-endian, resampled).

        Returns:
            ``{"event":"media","media":{"payload":"<base64>"}}``

        Raises:
            LocalProtocolError: no ``start`` has been received yet.
        """
        self._check("media")
        up = self._up
        raw = mulaw if up is None else up.from_neutral(mulaw)
        return f'{_MEDIA_PREFIX}{b64_encode(raw)}"}}}}'

    def mark(self, name: str) -> str:
        """A ``mark`` frame; Telnyx echoes it once the audio sent before it has played (or was
        cleared).

        Returns:
            ``{"event":"mark","mark":{"name":"..."}}`` (``name`` JSON-escaped).

        Raises:
            LocalProtocolError: no ``start`` has been received yet.
        """
        self._check("mark")
        return f'{{"event":"mark","mark":{{"name":{json_string(name)}}}}}'

    def clear(self) -> str:
        """A ``clear`` frame: Telnyx drops the audio it has queued and echoes the pending marks.

        Returns:
            ``{"event":"clear"}``

        Raises:
            LocalProtocolError: no ``start`` has been received yet.
        """
        self._check("clear")
        return _CLEAR


_DECODERS: Final[dict[str, _Decoder]] = {
    "connected": TelnyxStream._decode_connected,
    "start": TelnyxStream._decode_start,
    "media": TelnyxStream._decode_media,
    "mark": TelnyxStream._decode_mark,
    "dtmf": TelnyxStream._decode_dtmf,
    "error": TelnyxStream._decode_error,
    "stop": TelnyxStream._decode_stop,
}
