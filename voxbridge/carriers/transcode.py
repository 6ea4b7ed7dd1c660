"""Audio conversion between a carrier stream's format and the call's neutral mu-law 8 kHz.

Chosen once per stream, when its format is known (:func:`transcoder`): ``None`` for mu-law 8 kHz,
the common case, so those carriers forward the caller's base64 payload untouched. Otherwise a
:class:`Transcoder` holds the per-stream state: G.711 via ``audioop`` (:mod:`voxbridge.audio`),
byte order for big-endian L16 (Telnyx), and, for 16 and 24 kHz streams (Vonage, Plivo and Telnyx
L16 at 16000), one ``soxr`` streaming resampler per direction whose filter state carries across chunks
(resampling each chunk on its own would click at every boundary). Sans-IO: pure computation.

**Priming.** A streaming resampler holds back the start of what it is fed while its filter fills:
soxr's variable-rate HQ engine (:func:`voxbridge.audio.resampler`), from 8 kHz to 16 or 24 kHz,
holds back exactly 240 input samples, 30 ms (measured with soxr 1.1;
tests/test_carrier_shared.py holds it). Unprimed, the first 20 ms chunk of agent audio would come out empty -- no frame a
carrier takes -- and the second short. So a :class:`Transcoder` feeds its agent-side resampler
:data:`PRIMING_MS` of silence when it is made, and from then on every 20 ms chunk of agent audio
comes out as 20 ms at the stream's rate, the first included: 30 ms is the smallest amount that does
it (with 10 ms or less the first chunk comes out empty, with less than 30 ms short). The priming
gives no output itself (nothing is discarded) and adds no delay: the samples come out when they
would anyway, behind 30 ms of silence (and the filter's pre-ringing of the first sound, which an
unprimed resampler drops) instead of behind nothing. The caller side is not primed: a caller chunk
that converts to nothing yet decodes to ``None``.
"""

from __future__ import annotations

import binascii
import warnings

import numpy as np

from ..audio import (
    BYTES_PER_MS,
    SILENCE,
    b64_decode,
    b64_encode,
    pcm16_to_ulaw,
    resampler,
    ulaw_to_pcm16,
)
from ..errors import BadAudio
from .base import AudioFormat

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = ["PRIMING_MS", "RATES", "Transcoder", "transcoder"]

NEUTRAL_RATE = 8000
#: Sample rates a carrier stream may use (Hz).
RATES = (8000, 16000, 24000)
#: Milliseconds of silence an agent-side resampler is fed when it is made: its hold-back (see the
#: module docstring).
PRIMING_MS = 30


def transcoder(audio_format: AudioFormat) -> Transcoder | None:
    """The conversion for a stream in ``audio_format``: ``None`` when it is mu-law 8 kHz.

    Raises:
        ValueError: a format voxbridge cannot convert (mu-law at another rate, a rate not in
            :data:`RATES`).
    """
    if audio_format.is_neutral:
        return None
    return Transcoder(audio_format)


class Transcoder:
    """One stream's conversion to and from mu-law 8 kHz; its agent-side resampler comes primed
    (see the module docstring).

    Raises:
        ValueError: (construction) a format it cannot convert.
    """

    def __init__(self, audio_format: AudioFormat) -> None:
        if audio_format.encoding != "l16" or audio_format.sample_rate not in RATES:
            raise ValueError(f"cannot convert {audio_format} to mu-law 8 kHz")
        self.format = audio_format
        rate = audio_format.sample_rate
        self._down = resampler(rate, NEUTRAL_RATE) if rate != NEUTRAL_RATE else None
        self._up = resampler(NEUTRAL_RATE, rate) if rate != NEUTRAL_RATE else None
        if self._up is not None:
            self.from_neutral(SILENCE * (PRIMING_MS * BYTES_PER_MS))  # gives nothing: see above

    @property
    def resamples(self) -> bool:
        """Whether the stream's rate is not 8 kHz (a resampler each way)."""
        return self._up is not None

    def __repr__(self) -> str:
        return f"Transcoder({self.format!r})"

    def to_neutral(self, audio: bytes) -> str:
        """Caller audio (raw bytes in the stream's format) as base64 mu-law 8 kHz.

        Raises:
            BadAudio: not a whole number of 16-bit samples.
        """
        if len(audio) % 2:
            raise BadAudio(f"L16 audio must be whole 16-bit samples, got {len(audio)} bytes")
        pcm = audioop.byteswap(audio, 2) if self.format.big_endian else audio
        if self._down is not None:
            samples = np.frombuffer(pcm, dtype="<i2")
            pcm = self._down.resample_chunk(samples).tobytes()
        return b64_encode(pcm16_to_ulaw(pcm))

    def to_neutral_b64(self, payload: str) -> str:
        """:meth:`to_neutral` for a base64 payload (a text-frame carrier in L16).

        Raises:
            BadAudio: not strict base64, or not whole samples.
        """
        try:
            audio = b64_decode(payload)
        except (binascii.Error, ValueError) as exc:
            raise BadAudio(f"audio payload is not valid base64: {exc}") from None
        return self.to_neutral(audio)

    def from_neutral(self, mulaw: bytes) -> bytes:
        """Agent audio (raw mu-law 8 kHz) as raw bytes in the stream's format."""
        pcm = ulaw_to_pcm16(mulaw)
        if self._up is not None:
            samples = np.frombuffer(pcm, dtype="<i2")
            pcm = self._up.resample_chunk(samples).tobytes()
        return audioop.byteswap(pcm, 2) if self.format.big_endian else pcm
