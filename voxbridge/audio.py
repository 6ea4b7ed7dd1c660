"""G.711 mu-law audio helpers: pure functions over bytes.

The codec itself is CPython's ``audioop`` (C, exact G.711), which the standard library ships up to
3.12 and the ``audioop-lts`` package provides, under the same module name, from 3.13. It is
deprecated on 3.11/3.12 with a warning at import; that warning is about the module's future in the
standard library, which ``audioop-lts`` covers, so it is silenced here and only here.
"""

from __future__ import annotations

import binascii
import math
import warnings
import wave
from pathlib import Path

import soxr  # type: ignore[import-untyped]  # no stubs, no py.typed

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = [
    "BYTES_PER_MS",
    "FRAME_BYTES",
    "SAMPLE_RATE",
    "SILENCE",
    "b64_decode",
    "b64_encode",
    "b64_join",
    "b64_size",
    "pcm16_to_ulaw",
    "pcm16_to_ulaw_b64",
    "read_wav_as_ulaw",
    "resampler",
    "tone",
    "ulaw_b64_to_pcm16",
    "ulaw_to_pcm16",
]

SAMPLE_RATE = 8000
FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
BYTES_PER_MS = 8  # 8 kHz mu-law: one byte per sample
SILENCE = b"\xff"  # mu-law code for 0


def b64_decode(payload: str) -> bytes:
    """Strict base64 (RFC 4648 section 4, padded, nothing outside the alphabet) to bytes.

    The one check every base64 audio payload passes, whichever peer sent it: Twilio's
    ``media.payload`` and a provider's audio delta alike.

    Raises:
        ValueError: ``payload`` is not strict base64 (a character outside the alphabet, bad or
            missing padding, data after the padding).
    """
    try:
        audio = binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not valid base64: {exc}") from None
    if len(payload) != (len(audio) + 2) // 3 * 4:  # CPython < 3.12.4 lets excess "=" through
        raise ValueError("not valid base64: excess padding")
    return audio


def b64_encode(audio: bytes) -> str:
    """Bytes to base64 text: only ``[A-Za-z0-9+/=]``, so it never needs escaping inside JSON."""
    return binascii.b2a_base64(audio, newline=False).decode("ascii")


def b64_size(payload: str) -> int:
    """Bytes of audio in a (well-formed) base64 payload, without decoding it."""
    return len(payload) * 3 // 4 - (2 if payload.endswith("==") else payload.endswith("="))


def b64_join(payloads: list[str]) -> str:
    """Base64 payloads merged into one that carries their bytes in order.

    Base64 text cannot simply be concatenated (padding may sit between them), so the bytes are
    decoded and encoded once; a single payload is returned as it is.
    """
    if len(payloads) == 1:
        return payloads[0]
    return b64_encode(b"".join([binascii.a2b_base64(payload) for payload in payloads]))


def pcm16_to_ulaw(pcm: bytes) -> bytes:
    """Signed 16-bit little-endian PCM to G.711 mu-law (same rate).

    Raises:
        ValueError: ``pcm`` has an odd length (not a whole number of 16-bit samples).
    """
    if len(pcm) % 2:
        raise ValueError(f"16-bit PCM must have an even length, got {len(pcm)} bytes")
    return audioop.lin2ulaw(pcm, 2)


def ulaw_to_pcm16(ulaw: bytes) -> bytes:
    """G.711 mu-law to signed 16-bit little-endian PCM (same rate)."""
    return audioop.ulaw2lin(ulaw, 2)


def ulaw_b64_to_pcm16(payload: str) -> bytes:
    """Base64 mu-law (a Twilio ``media.payload``) to signed 16-bit little-endian PCM.

    Raises:
        ValueError: ``payload`` is not strict base64.
    """
    return audioop.ulaw2lin(b64_decode(payload), 2)


def pcm16_to_ulaw_b64(pcm: bytes) -> str:
    """Signed 16-bit little-endian PCM to base64 mu-law, ready for a Twilio ``media.payload``.

    Raises:
        ValueError: ``pcm`` has an odd length.
    """
    return b64_encode(pcm16_to_ulaw(pcm))


def tone(seconds: float, frequency: float = 440.0, *, amplitude: float = 0.3) -> bytes:
    """A sine tone as 8 kHz mu-law: the default audio of simulated callers."""
    count = int(seconds * SAMPLE_RATE)
    scale = amplitude * 32767
    step = 2 * math.pi * frequency / SAMPLE_RATE
    samples = bytearray()
    for n in range(count):
        samples += int(scale * math.sin(step * n)).to_bytes(2, "little", signed=True)
    return pcm16_to_ulaw(bytes(samples))


def read_wav_as_ulaw(path: str | Path) -> bytes:
    """Read a PCM WAV file (any rate, mono or stereo, 8/16/24/32-bit) as 8 kHz mono mu-law.

    Raises:
        ValueError: the file is not a PCM WAV file.
    """
    try:
        with wave.open(str(path), "rb") as wav:
            width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
            data = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"{path}: not a PCM WAV file ({exc})") from None
    if width == 1:  # 8-bit WAV is unsigned; audioop works on signed samples
        data = audioop.bias(data, 1, -128)
    if width != 2:
        data = audioop.lin2lin(data, width, 2)
    if channels == 2:
        data = audioop.tomono(data, 2, 0.5, 0.5)
    elif channels != 1:
        raise ValueError(f"{path}: {channels} channels; mono or stereo only")
    if rate != SAMPLE_RATE:
        data, _ = audioop.ratecv(data, 2, 1, rate, SAMPLE_RATE, None)
    return pcm16_to_ulaw(data)


def resampler(in_rate: int, out_rate: int) -> soxr.ResampleStream:
    """A streaming soxr resampler for 16-bit mono audio: one per stream and direction, since its
    filter state carries from one chunk to the next (resampling chunks on their own would click
    at every boundary). Feed it ``numpy`` ``<i2`` arrays with ``resample_chunk``.

    ``vr=True`` (soxr's variable-rate engine, band-limited at ``HQ``) because the default
    fixed-rate engine works in FFT blocks: it returns nothing for four or five 20 ms chunks and
    then a burst, adding about 100 ms each way. The variable-rate engine returns every chunk's
    share at once and holds back a steady 25-30 ms (measured with soxr 1.1: 30 ms from 8 to
    16 kHz, 25 ms from 24 to 8 kHz; ``benchmarks/codec.py``), at 3-7 times the CPU of the
    fixed-rate engine.
    """
    return soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality="HQ", vr=True)
