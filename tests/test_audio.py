"""G.711 mu-law helpers against the textbook codec (ITU-T G.711), not against audioop.

The reference decoder below is the ITU G.711 / Sun ``g711.c`` formula written out independently, so
a wrong table or a swapped sign in ``voxbridge.audio`` cannot hide behind the library it wraps.
"""

from __future__ import annotations

import base64
import struct
import wave
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voxbridge.audio import (
    b64_decode,
    b64_encode,
    pcm16_to_ulaw,
    pcm16_to_ulaw_b64,
    read_wav_as_ulaw,
    tone,
    ulaw_b64_to_pcm16,
    ulaw_to_pcm16,
)

BIAS = 0x84
ALL_CODES = bytes(range(256))


def reference_decode(code: int) -> int:
    """G.711 mu-law to linear, the textbook way: invert, split, rebuild, remove the bias."""
    inverted = ~code & 0xFF
    exponent = (inverted >> 4) & 0x07
    mantissa = inverted & 0x0F
    magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS
    return -magnitude if inverted & 0x80 else magnitude


def step(code: int) -> int:
    """The quantisation step of the segment ``code`` lies in (16-bit scale)."""
    return 8 << ((~code >> 4) & 0x07)


def samples(pcm: bytes) -> list[int]:
    return [value for (value,) in struct.iter_unpack("<h", pcm)]


def pack(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}h", *values)


# --- decoder ------------------------------------------------------------------------------------


def test_every_code_decodes_to_the_g711_table() -> None:
    assert samples(ulaw_to_pcm16(ALL_CODES)) == [reference_decode(c) for c in range(256)]


def test_reference_decoder_matches_published_table_anchors() -> None:
    # Sun g711.c's table, first row (0x00-0x0F) and the quietest negative row (0x70-0x7F).
    first_row = [-32124, -31100, -30076, -29052, -28028, -27004, -25980, -24956]
    first_row += [-23932, -22908, -21884, -20860, -19836, -18812, -17788, -16764]
    quiet_row = [-120, -112, -104, -96, -88, -80, -72, -64, -56, -48, -40, -32, -24, -16, -8, 0]
    assert [reference_decode(c) for c in range(0x00, 0x10)] == first_row
    assert [reference_decode(c) for c in range(0x70, 0x80)] == quiet_row
    assert [reference_decode(c) for c in range(0xF0, 0x100)] == [-v for v in quiet_row]
    assert (reference_decode(0x80), reference_decode(0xFF), reference_decode(0x7F)) == (32124, 0, 0)


# --- encoder ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("linear", "code"),
    [
        (0, 0xFF),  # silence
        (32124, 0x80),  # loudest positive
        (-32124, 0x00),  # loudest negative
        (32767, 0x80),  # clipped
        (-32768, 0x00),  # clipped
        (100, 0xF2),
        (8, 0xFE),
        (4063, 0xAF),
        (-4063, 0x2F),
        (16764, 0x8F),
        (-16764, 0x0F),
    ],
)
def test_encoder_known_points(linear: int, code: int) -> None:
    assert pcm16_to_ulaw(pack(linear)) == bytes([code])


def test_ulaw_pcm_ulaw_is_identity_except_negative_zero() -> None:
    again = pcm16_to_ulaw(ulaw_to_pcm16(ALL_CODES))
    changed = {code: again[code] for code in range(256) if again[code] != code}
    assert changed == {0x7F: 0xFF}  # -0 and +0 both decode to 0, which encodes as +0


@given(st.lists(st.integers(-32768, 32767), min_size=1, max_size=64))
def test_pcm_ulaw_pcm_error_within_one_step(values: list[int]) -> None:
    codes = pcm16_to_ulaw(pack(*values))
    decoded = samples(ulaw_to_pcm16(codes))
    for value, code, back in zip(values, codes, decoded, strict=True):
        clipped = max(-32124, min(32124, value))
        assert back == reference_decode(code)
        assert abs(clipped - back) <= step(code), (value, hex(code), back)
        assert back == 0 or (back > 0) == (value > 0)  # the sign survives


@pytest.mark.parametrize("pcm", [b"\x00", b"\x00\x00\x00"])
def test_odd_length_pcm_is_rejected(pcm: bytes) -> None:
    with pytest.raises(ValueError, match="even length"):
        pcm16_to_ulaw(pcm)
    with pytest.raises(ValueError, match="even length"):
        pcm16_to_ulaw_b64(pcm)


def test_empty_audio() -> None:
    assert pcm16_to_ulaw(b"") == b""
    assert ulaw_to_pcm16(b"") == b""
    assert pcm16_to_ulaw_b64(b"") == ""
    assert ulaw_b64_to_pcm16("") == b""


# --- base64 helpers (the provider codec's hot path) -----------------------------------------------


def test_base64_helpers_known_vectors() -> None:
    # 0xFF 0x7F 0x00 0x80 -> 0, 0, -32124, 32124
    assert ulaw_b64_to_pcm16("/38AgA==") == pack(0, 0, -32124, 32124)
    assert pcm16_to_ulaw_b64(pack(0, -32124, 32124)) == base64.b64encode(b"\xff\x00\x80").decode()


@given(st.binary(max_size=400))
def test_base64_helpers_round_trip(ulaw: bytes) -> None:
    payload = base64.b64encode(ulaw).decode()
    pcm = ulaw_b64_to_pcm16(payload)
    assert samples(pcm) == [reference_decode(c) for c in ulaw]
    assert base64.b64decode(pcm16_to_ulaw_b64(pcm)) == ulaw.replace(b"\x7f", b"\xff")


@pytest.mark.parametrize("payload", ["abc", "ab c=", "====", "é"])
def test_bad_base64_is_rejected(payload: str) -> None:
    with pytest.raises(ValueError, match="base64"):
        ulaw_b64_to_pcm16(payload)


# --- strict base64: every audio payload's one check ---------------------------------------------


@pytest.mark.parametrize(
    ("payload", "audio"),
    [
        ("", b""),
        ("QQ==", b"A"),
        ("QUI=", b"AB"),
        ("QUJD", b"ABC"),
        ("QUJDRA==", b"ABCD"),
        ("/38AgA==", b"\xff\x7f\x00\x80"),
        ("+/+/", b"\xfb\xff\xbf"),  # the standard alphabet's last two letters
        ("AAAA", b"\x00\x00\x00"),
    ],
)
def test_b64_decode_accepts_strict_base64(payload: str, audio: bytes) -> None:
    assert b64_decode(payload) == audio


@pytest.mark.parametrize(
    "payload",
    [
        "@@@@",  # outside the alphabet
        "QUJD-_==",  # the URL-safe alphabet
        "QUJ",  # missing padding
        "QQ",
        "QQ=",
        "Q",
        "QUJDR",
        "QUJD\n",  # MIME line break
        "\nQUJD",
        "QU JD",
        " QUJD",
        "QUJD\t",
        "QQ==QQ==",  # data after the padding
        "QQ==Q",
        "QQ=Q",  # padding in the middle
        "=QUJ",  # leading padding
        "====",
        "=",
        "QUJ\u00e9",  # non-ASCII text
        "\uff31\uff35\uff2a\uff24",  # fullwidth "QUJD"
        "QUJD\x00",
        "QUJD=",  # excess padding (CPython 3.11's strict mode alone lets it through)
        "QUJD====",
        "QQ===",
    ],
)
def test_b64_decode_rejects_anything_else(payload: str) -> None:
    with pytest.raises(ValueError, match=r"^not valid base64: "):
        b64_decode(payload)


@pytest.mark.parametrize(("payload", "audio"), [("QR==", b"A"), ("QUK=", b"AB")])
def test_b64_decode_noncanonical_spellings_are_the_same_bytes_or_rejected(
    payload: str, audio: bytes
) -> None:
    """Non-zero pad bits: CPython 3.11's strict mode accepts them, newer versions reject them
    (gh-146311). Either way they never decode to other bytes."""
    try:
        decoded = b64_decode(payload)
    except ValueError as exc:
        assert str(exc).startswith("not valid base64: ")
    else:
        assert decoded == audio


@settings(max_examples=200)
@given(st.binary(max_size=1000))
def test_b64_encode_round_trips(audio: bytes) -> None:
    payload = b64_encode(audio)
    assert payload == base64.b64encode(audio).decode("ascii")  # standard, padded, no newline
    assert set(payload) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
    assert b64_decode(payload) == audio


def test_b64_encode_known_vectors() -> None:
    # RFC 4648 section 10
    vectors = {
        b"": "",
        b"f": "Zg==",
        b"fo": "Zm8=",
        b"foo": "Zm9v",
        b"foob": "Zm9vYg==",
        b"fooba": "Zm9vYmE=",
        b"foobar": "Zm9vYmFy",
    }
    for audio, payload in vectors.items():
        assert b64_encode(audio) == payload
        assert b64_decode(payload) == audio


def test_tone_is_8khz_ulaw() -> None:
    audio = tone(0.02)
    assert len(audio) == 160
    assert max(abs(v) for v in samples(ulaw_to_pcm16(audio))) <= 0.31 * 32767


# --- WAV files ----------------------------------------------------------------------------------


def write_wav(path: Path, frames: bytes, *, width: int, channels: int, rate: int) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setsampwidth(width)
        wav.setnchannels(channels)
        wav.setframerate(rate)
        wav.writeframes(frames)
    return path


def test_wav_16bit_8khz_mono(tmp_path: Path) -> None:
    values = [0, 32124, -32124, 100, 8] * 80
    path = write_wav(tmp_path / "a.wav", pack(*values), width=2, channels=1, rate=8000)
    assert read_wav_as_ulaw(path) == pcm16_to_ulaw(pack(*values))
    assert len(read_wav_as_ulaw(path)) == 400


def test_wav_16bit_16khz_stereo(tmp_path: Path) -> None:
    frames = pack(*([1000, 1000] * 1600))  # 0.1 s, both channels equal
    path = write_wav(tmp_path / "b.wav", frames, width=2, channels=2, rate=16000)
    audio = read_wav_as_ulaw(path)
    assert abs(len(audio) - 800) <= 1  # 0.1 s at 8 kHz
    assert set(audio[10:-10]) == set(pcm16_to_ulaw(pack(1000)))


def test_wav_8bit(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "c.wav", bytes([128] * 240), width=1, channels=1, rate=8000)
    assert read_wav_as_ulaw(str(path)) == b"\xff" * 240  # unsigned 128 is silence


def test_not_a_wav(tmp_path: Path) -> None:
    path = tmp_path / "d.wav"
    path.write_bytes(b"RIFF not really")
    with pytest.raises(ValueError, match="not a PCM WAV"):
        read_wav_as_ulaw(path)
