"""What a phone carrier's media stream is to voxbridge: a sans-IO codec behind a small protocol.

A carrier (Twilio, Telnyx, Plivo, Vonage) streams one call's audio over one WebSocket. Each carrier
module has a :class:`CarrierCodec`: it turns the carrier's frames into the neutral events below and
builds the carrier's frames from neutral commands (play audio, mark, clear). It never touches a
socket, a clock or a logger. The call (:mod:`voxbridge.session.call`) speaks only this protocol, so
adding a carrier is one module plus one line in :mod:`voxbridge.carriers.registry`.

**Audio.** The neutral audio of a call is G.711 mu-law, 8 kHz, mono -- what the providers take and
what most carriers send:

* caller audio arrives as :class:`CallerAudio` with ``payload`` in base64 mu-law 8 kHz; a carrier
  that sends mu-law 8 kHz base64 (Twilio, Telnyx PCMU, Plivo mu-law) hands its payload over as
  received, with no copy and no re-encoding;
* agent audio is given to :meth:`CarrierCodec.audio` as raw mu-law 8 kHz bytes.

A carrier whose stream is in another format (Vonage's binary L16 at 8 or 16 kHz, Telnyx L16
big-endian, Plivo L16) converts in its codec with a :class:`~voxbridge.carriers.transcode.Transcoder`
chosen once, when the stream's format is known (its start), from
:func:`voxbridge.carriers.transcode.transcoder`; for
mu-law 8 kHz it is the identity. So the conversion is decided once per call, and the common case
costs nothing.

**Events in** (:data:`CarrierEvent`): :class:`StreamStarted` (exactly once, first),
:class:`CallerAudio`, :class:`MarkPlayed`, :class:`Dtmf`, :class:`StreamStopped`. Frames that carry
nothing for the call (Twilio's ``connected``, Plivo's ``clearedAudio``) decode to ``None``.
:meth:`CarrierCodec.decode` raises only :class:`~voxbridge.errors.RemoteProtocolError` on bad input
(the call ends ``protocol_error``), whatever it is fed.

**Commands out:** :meth:`CarrierCodec.audio`, :meth:`CarrierCodec.mark`, :meth:`CarrierCodec.clear`.
Building a frame before the stream started raises :class:`LocalProtocolError` (our bug).

**Capabilities** (:class:`Capabilities`) say what the call may rely on: whether marks exist and are
echoed, whether a cleared mark is still echoed, whether the carrier says ``stop`` before closing,
and whether audio travels in binary frames.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol, TypeAlias

import attrs

__all__ = [
    "MULAW_8K",
    "AudioFormat",
    "CallerAudio",
    "Capabilities",
    "CarrierCodec",
    "CarrierEvent",
    "Dtmf",
    "Frame",
    "HttpAnswer",
    "HttpRequest",
    "LocalProtocolError",
    "MarkPlayed",
    "StreamStarted",
    "StreamStopped",
]

#: One WebSocket message: text (JSON control and, for most carriers, audio) or binary (audio).
Frame: TypeAlias = str | bytes


class LocalProtocolError(RuntimeError):
    """We did something the protocol does not allow (e.g. sent before the start): our bug."""


@attrs.frozen
class AudioFormat:
    """An audio stream's format: ``mulaw`` (G.711 mu-law, 8 bits per sample) or ``l16`` (16-bit
    signed linear PCM, little-endian unless ``big_endian``), at ``sample_rate`` Hz, mono."""

    encoding: Literal["mulaw", "l16"]
    sample_rate: int
    big_endian: bool = False

    @property
    def is_neutral(self) -> bool:
        """Whether this is the call's own format, mu-law 8 kHz (no conversion needed)."""
        return self.encoding == "mulaw" and self.sample_rate == 8000


#: The call's neutral audio format: G.711 mu-law, 8 kHz, mono.
MULAW_8K = AudioFormat("mulaw", 8000)


def _params(params: Mapping[str, str]) -> dict[str, str]:
    return dict(params)


@attrs.frozen
class StreamStarted:
    """The stream has started: which call it carries and what the carrier passed along.

    Attributes:
        call_id: the carrier's id of the call (Twilio ``CallSid``, Telnyx ``call_control_id``,
            Plivo ``callId``, Vonage call ``uuid``); what hang-up and transfer REST calls name.
        stream_id: the carrier's id of this media stream (``""`` when it has none).
        account_id: the carrier account the call belongs to (``""`` when not sent).
        custom_parameters: parameters our webhook answer attached to the stream (Twilio
            ``<Parameter>``, Telnyx ``client_state``, Plivo ``extra_headers``, Vonage handshake
            ``headers``); a private copy that takes no part in hashing.
        audio_format: the stream's audio format, as the carrier announced it.
        details: the carrier's own start event (e.g. :class:`voxbridge.carriers.twilio.Start`),
            for embedders that need a carrier-specific field.
    """

    call_id: str
    stream_id: str
    account_id: str
    custom_parameters: Mapping[str, str] = attrs.field(converter=_params, hash=False)
    audio_format: AudioFormat = MULAW_8K
    details: Any = attrs.field(default=None, eq=False, hash=False, repr=False)


@attrs.frozen
class CallerAudio:
    """A chunk of caller audio: ``payload`` is base64 mu-law 8 kHz (see the module docstring)."""

    payload: str


@attrs.frozen
class MarkPlayed:
    """The carrier played the audio sent before the mark ``name`` (Twilio and Telnyx also echo a
    mark whose audio was cleared; see :attr:`Capabilities.echoes_cleared_marks`)."""

    name: str


@attrs.frozen
class Dtmf:
    """The caller pressed a key; ``digit`` is one of ``0-9 * # A-D``."""

    digit: str


@attrs.frozen
class StreamStopped:
    """The carrier said the stream is over (Twilio's and Telnyx's ``stop``)."""


CarrierEvent: TypeAlias = StreamStarted | CallerAudio | MarkPlayed | Dtmf | StreamStopped
"""Every neutral event a :class:`CarrierCodec` returns."""


@attrs.frozen
class Capabilities:
    """What a carrier's stream does, so the call relies on nothing it does not.

    Attributes:
        marks: it confirms playback: a mark (Twilio, Telnyx) or checkpoint (Plivo) is echoed once
            the audio sent before it has played. Without marks (Vonage), the heard position is an
            estimate from the time audio was sent.
        echoes_cleared_marks: a mark whose audio a ``clear`` discarded is still echoed (Twilio,
            Telnyx), or never (false: Plivo). The call does not read it: a ``clear`` settles
            every pending mark itself, either way, and a late echo of one finds nothing. It is
            declared for the caller simulator, which echoes as the carrier does.
        sends_stop: the carrier sends a stop event when the caller hangs up (Twilio, Telnyx):
            ``caller_stop``, and a close without it is ``caller_closed``. When false (Plivo,
            Vonage) the carrier hangs up by closing its WebSocket: after the start, a clean close
            (a close frame, 1000 or 1005; RFC 6455 section 7.4.1) ends the call ``caller_stop``,
            a connection dropped without one (1006) ``caller_closed``.
        binary_audio: audio travels in binary frames (Vonage), else base64 in text frames.
        frame_ms: agent audio must go out in messages of exactly this many milliseconds
            (Vonage: 20), so the call hands :meth:`CarrierCodec.audio` at most that much at a
            time; 0: any size. Audio the codec holds back (``audio`` returns an empty frame) is
            not sent, marked nor counted until a later frame carries it.
    """

    marks: bool = True
    echoes_cleared_marks: bool = True
    sends_stop: bool = True
    binary_audio: bool = False
    frame_ms: int = 0


class CarrierCodec(Protocol):
    """Sans-IO encoding and decoding of one carrier media stream."""

    capabilities: Capabilities

    def decode(self, frame: Frame) -> CarrierEvent | None:
        """One frame from the carrier as a neutral event, or ``None`` for a frame that carries
        nothing for the call.

        Raises:
            RemoteProtocolError: the frame is not valid in the stream's current state (the state
                is left as it was). Nothing else escapes, whatever ``frame`` holds.
        """
        ...

    def audio(self, mulaw: bytes) -> Frame:
        """A frame that plays ``mulaw`` (raw mu-law 8 kHz, no header) to the caller; an empty
        frame when there is nothing to send yet (a codec with ``capabilities.frame_ms`` holds
        back what does not fill a frame until the next call), which the call does not send.

        Raises:
            LocalProtocolError: the stream has not started.
        """
        ...

    def mark(self, name: str) -> Frame | None:
        """A frame asking the carrier to echo ``name`` once the audio before it has played, or
        ``None`` when the carrier has no marks (``capabilities.marks`` false).

        Raises:
            LocalProtocolError: the stream has not started.
        """
        ...

    def clear(self) -> Frame:
        """A frame that drops the audio queued at the carrier (barge-in).

        Raises:
            LocalProtocolError: the stream has not started.
        """
        ...


# --- the HTTP side: webhooks and the checks before a stream is accepted --------------------------


@attrs.frozen
class HttpRequest:
    """A carrier's HTTP request, as the checks see it.

    Attributes:
        url: the public URL the carrier called, rebuilt from ``--public-url`` (never from the
            request's ``Host`` header), with its query string.
        method: ``POST``, ``GET`` (a WebSocket upgrade is a ``GET``).
        headers: header names in lower case; a repeated header keeps its last value.
        body: the request body (empty for an upgrade).
    """

    url: str
    method: str
    headers: Mapping[str, str] = attrs.field(converter=_params, hash=False)
    body: bytes = b""


@attrs.frozen
class CallRequest:
    """What a carrier's webhook says about a call it asks us to handle.

    Attributes:
        call_id: the carrier's call id (as :attr:`StreamStarted.call_id` will carry it).
        to: the called number (``""`` when absent): how an agent is chosen by number.
        answered_by: answering-machine detection's verdict, in Twilio's words (``human``,
            ``machine_start``, ``machine_end_beep``, ``fax``, ...; ``""`` when not detected).
    """

    call_id: str
    to: str = ""
    answered_by: str = ""


@attrs.frozen
class HttpAnswer:
    """An HTTP answer to a webhook: the document that tells the carrier what to do."""

    content_type: str
    body: bytes


class CarrierWebhooks(Protocol):
    """The HTTP side of one carrier: signature checks, its webhook, and its answer documents.

    Sans-IO: the server reads requests and writes answers; this only judges and builds them.
    Credentials come from the carrier's settings; with none configured, ``checks`` is false and
    every request passes (loopback or ``--insecure`` only, as for Twilio).
    """

    @property
    def checks(self) -> bool:
        """Whether signatures are checked (credentials are configured)."""
        ...

    @property
    def token_secrets(self) -> tuple[str, ...]:
        """The secrets the per-call token's key is derived from: the first mints, any verifies
        (rotation). A secret shared with the carrier (Twilio: its auth tokens), never a public
        key. ``()`` when ``checks`` is false: no per-call token, and the stream's parameters are
        taken as sent."""
        ...

    def webhook_signed(self, request: HttpRequest, *, now: float) -> bool:
        """Whether a webhook request carries the carrier's valid signature (true without
        checks). ``now`` is Unix time in seconds, for signatures that carry a timestamp."""
        ...

    def upgrade_signed(self, request: HttpRequest, *, now: float) -> bool:
        """Whether a WebSocket upgrade may be accepted, judged before accepting it (true without
        checks): a signature, a stream token header or a JWT, whatever the carrier sends."""
        ...

    def call(self, request: HttpRequest) -> CallRequest:
        """The call a webhook request is about.

        Raises:
            RemoteProtocolError: the request names no call.
        """
        ...

    def connect(self, stream_url: str, parameters: Mapping[str, str]) -> HttpAnswer:
        """The answer that connects the call to a bidirectional media stream at ``stream_url``,
        passing ``parameters`` along so they come back in :attr:`StreamStarted.custom_parameters`
        (the per-call token among them)."""
        ...

    def hangup(self) -> HttpAnswer:
        """The answer that ends the call at once (an answering machine the agent should not
        talk to)."""
        ...


class CarrierRestError(Exception):
    """A carrier's REST API refused or failed a request. ``status`` is the HTTP status (``None``:
    no answer), ``code`` the carrier's own error code when it gave one. The message names no
    credential."""

    def __init__(self, status: int | None, code: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class NamedRestError(CarrierRestError):
    """A :class:`CarrierRestError` of a carrier whose errors carry no code (``code`` is ``None``):
    its text reads ``<API>: HTTP <status>: <message>``, or ``<API>: <message>`` without an answer
    (``status`` ``None``). Subclasses name the API (``API = "Plivo REST API"``)."""

    API = "REST API"

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(status, None, message)
        self.message = message

    def __str__(self) -> str:
        if self.status is None:
            return f"{self.API}: {self.message}"
        return f"{self.API}: HTTP {self.status}: {self.message}"


class CarrierRest(Protocol):
    """A carrier's call-control REST API, as the built-in tools use it (``end_call``,
    ``transfer_call``). Every request is bounded by the caller's deadline (a trio cancel scope);
    implementations use httpx, which honours it."""

    @property
    def can_transfer(self) -> bool:
        """Whether :meth:`transfer` is implemented for this carrier."""
        ...

    async def complete(self, call_id: str) -> None:
        """End the call (hang up). A call that has already ended counts as done.

        Raises:
            CarrierRestError: the carrier refused or did not answer.
        """
        ...

    async def transfer(self, call_id: str, target: str) -> None:
        """Move the call to ``target`` (E.164 number or SIP URI), leaving the media stream.

        Raises:
            CarrierRestError: the carrier refused or did not answer.
            NotImplementedError: ``can_transfer`` is false.
        """
        ...
