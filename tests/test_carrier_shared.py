"""What the four carriers share: the JSON field checks (:mod:`voxbridge.carriers.fields`), the
primed transcoder (:mod:`voxbridge.carriers.transcode`) and the settings fields
(:mod:`voxbridge.options`).

The codecs' own tests check each carrier's frames; these check the shared pieces once, with exact
messages, and measure the priming: soxr's hold-back, and that :data:`PRIMING_MS` is the smallest
amount after which every 20 ms chunk of agent audio comes out whole.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np
import pytest

from voxbridge.audio import SILENCE, resampler, tone, ulaw_to_pcm16
from voxbridge.carriers import fields
from voxbridge.carriers.base import AudioFormat
from voxbridge.carriers.transcode import PRIMING_MS, RATES, Transcoder
from voxbridge.errors import RemoteProtocolError, SettingsError
from voxbridge.options import NoSettings, option
from voxbridge.providers.spec import NoSettings as ProviderNoSettings
from voxbridge.providers.spec import option as provider_option
from voxbridge.settings import Option

# --- fields ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ("x" * 65, "frame of 65 exceeds MAX_FRAME=64"),
        (b"\xff\xfe", "malformed JSON: frame is not valid UTF-8: invalid start byte"),
        ("[]", "frame must be a JSON object, got an array"),
        ("null", "frame must be a JSON object, got null"),
        ('{"a":1}', "frame has no 'event' field"),
        ('{"event":7}', "event must be a string, got 7"),
    ],
)
def test_parse_frame_refuses_with_one_message_for_every_carrier(
    frame: str | bytes, message: str
) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        fields.parse_frame(frame, 64)
    assert str(info.value) == message


def test_parse_frame_reads_text_and_bytes_alike() -> None:
    assert fields.parse_frame('{"event":"x","n":1}', 64) == ("x", {"event": "x", "n": 1})
    assert fields.parse_frame(b'{"event":"\xc3\xa9"}', 64) == ("é", {"event": "é"})


def test_a_frame_of_another_type_raises_what_the_carrier_says() -> None:
    with pytest.raises(RemoteProtocolError, match="a frame must be text or bytes, not int"):
        fields.parse_frame(5, 10)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a frame must be text or bytes, not list"):
        fields.parse_frame([], 10, foreign=TypeError)  # type: ignore[arg-type]


def test_string_fields_and_null() -> None:
    body: dict[str, Any] = {"a": "x", "n": None, "i": 1}
    assert fields.string_field(body, "a", "b.a") == "x"
    assert fields.string_field(body, "gone", "b.gone", "d") == "d"
    assert fields.string_field(body, "n", "b.n", "d", nullable=True) == "d"  # Telnyx's null
    for key, default, message in [
        ("gone", None, "b.gone is missing"),
        ("n", "d", "b.n must be a string, got null"),  # null is not absent (Twilio, Plivo)
        ("n", None, "b.n must be a string, got null"),
        ("i", None, "b.i must be a string, got 1"),
    ]:
        with pytest.raises(RemoteProtocolError) as info:
            fields.string_field(body, key, f"b.{key}", default)
        assert str(info.value) == message


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0), ("42", 42), (42, 42), ("9223372036854775807", 2**63 - 1), (2**63 - 1, 2**63 - 1)],
)
def test_counters_are_integers_or_digit_strings(value: object, expected: int) -> None:
    assert fields.counter(value, "c") == expected


@pytest.mark.parametrize(
    "value", ["", "-1", "1.0", "\u00b2", "9223372036854775808", -1, 2**63, True, 1.0, None, []]
)
def test_anything_else_is_not_a_counter(value: object) -> None:
    with pytest.raises(RemoteProtocolError, match=r"^c must be a non-negative integer, got "):
        fields.counter(value, "c")


def test_optional_counters() -> None:
    with pytest.raises(RemoteProtocolError, match=r"^c is missing$"):
        fields.counter(fields.MISSING, "c")
    assert fields.optional_counter({}, "c", "c") is None
    assert fields.optional_counter({"c": None}, "c", "c", nullable=True) is None
    with pytest.raises(RemoteProtocolError, match="got null"):
        fields.optional_counter({"c": None}, "c", "c")


def test_objects_digits_streams_payloads() -> None:
    with pytest.raises(RemoteProtocolError, match=r"^start\.x must be an object, got an array$"):
        fields.object_field({"x": []}, "x", "start.x")
    assert fields.digit("#", "dtmf.digit") == "#"
    with pytest.raises(RemoteProtocolError, match=r"^d must be one of 0-9 \* # A-D, got 'E'$"):
        fields.digit("E", "d")
    fields.same_stream({"sid": "S1"}, "sid", "S1", "media")
    fields.same_stream({}, "sid", "S1", "media")
    with pytest.raises(RemoteProtocolError) as info:
        fields.same_stream({"sid": "S2"}, "sid", "S1", "media")
    assert str(info.value) == "media.sid 'S2' does not match the stream 'S1'"
    assert fields.audio_payload({"payload": "AAE="}, "media.payload") == ("AAE=", b"\x00\x01")
    with pytest.raises(RemoteProtocolError, match=r"^empty media payload$"):
        fields.audio_payload({"payload": ""}, "media.payload")
    with pytest.raises(RemoteProtocolError, match=r"^media\.payload is "):
        fields.audio_payload({"payload": "A"}, "media.payload")


def test_names_in_outbound_frames_are_json_strings() -> None:
    assert fields.json_string("resp1") == '"resp1"'
    assert fields.json_string('a"},"x":{') == '"a\\"},\\"x\\":{"'
    assert fields.show("x" * 70) == repr("x" * 60 + "...")
    assert fields.show({"a": 1}) == "an object"


# --- the transcoder's priming -----------------------------------------------------------------------

RESAMPLED = [rate for rate in RATES if rate != 8000]


def first_chunks(rate: int, primed_samples: int, count: int = 4) -> list[int]:
    """Samples out for each of ``count`` 20 ms chunks, after ``primed_samples`` of silence."""
    up = resampler(8000, rate)
    if primed_samples:
        assert up.resample_chunk(np.zeros(primed_samples, dtype="<i2")).size == 0
    chunk = np.full(160, 1000, dtype="<i2")
    return [up.resample_chunk(chunk).size for _ in range(count)]


@pytest.mark.parametrize("rate", RESAMPLED)
def test_the_resampler_holds_back_30_ms_so_that_is_the_priming(rate: int) -> None:
    """soxr's VR HQ engine holds back 240 input samples (30 ms) from 8 kHz up: unprimed the first
    chunk is empty and the second short; with one sample less than the priming the first chunk
    is one sample short; with the priming every chunk is whole from the first."""
    whole = rate // 50  # 20 ms at the stream's rate
    per_input = rate // 8000
    primed = PRIMING_MS * 8
    assert first_chunks(rate, 0)[:2] == [0, whole - 10 * 8 * per_input]
    assert first_chunks(rate, 10 * 8)[0] == 0  # 10 ms or less: the first chunk is still empty
    assert first_chunks(rate, primed - 1)[0] == whole - per_input
    assert first_chunks(rate, primed) == [whole] * 4


@pytest.mark.parametrize("rate", RESAMPLED)
@pytest.mark.parametrize("big_endian", [False, True])
def test_a_transcoder_gives_every_20_ms_chunk_whole_from_the_first(
    rate: int, big_endian: bool
) -> None:
    transcoder = Transcoder(AudioFormat("l16", rate, big_endian=big_endian))
    assert transcoder.resamples
    audio = tone(0.2)
    sizes = [len(transcoder.from_neutral(audio[i : i + 160])) for i in range(0, len(audio), 160)]
    assert sizes == [rate * 2 // 50] * 10


def test_priming_adds_no_delay_only_silence_in_front() -> None:
    """The audio comes out when it would unprimed: the primed output is the unprimed one with
    the held-back 30 ms of silence in front."""
    audio = tone(0.2)
    unprimed = resampler(8000, 16000)
    late = b"".join(
        unprimed.resample_chunk(np.frombuffer(ulaw_to_pcm16(audio[i : i + 160]), "<i2")).tobytes()
        for i in range(0, len(audio), 160)
    )
    primed = Transcoder(AudioFormat("l16", 16000))
    out = b"".join(primed.from_neutral(audio[i : i + 160]) for i in range(0, len(audio), 160))
    hold_back = 2 * 16 * PRIMING_MS  # 30 ms of 16-bit samples at 16 kHz
    assert len(out) == len(late) + hold_back
    after = np.frombuffer(out[hold_back:], dtype="<i2").astype(int)
    assert np.abs(after - np.frombuffer(late, dtype="<i2")).max() <= 2  # the same, as late
    # in front: silence, but for the filter's pre-ringing of the tone's onset (which the
    # unprimed resampler drops): under 5% of the tone's peak
    lead = np.frombuffer(out[:hold_back], dtype="<i2").astype(int)
    assert np.abs(lead).max() < 0.05 * np.abs(after).max()


def test_8_khz_needs_no_priming() -> None:
    transcoder = Transcoder(AudioFormat("l16", 8000))
    assert not transcoder.resamples
    assert len(transcoder.from_neutral(SILENCE * 160)) == 320


# --- settings fields ----------------------------------------------------------------------------------


def _refuse_odd(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value % 2:
        raise SettingsError(f"--acme-{attribute.name} must be even")


@attrs.frozen
class AcmeSettings:
    region: str = option("us", "the region")
    token: str | None = option(None, "the token", secret=True, env=("ACME_TOKEN",))
    size: int = option(2, "an even size", validator=_refuse_odd)


@attrs.define
class AcmeSpec:
    name: str = "acme"
    key_variables: tuple[str, ...] = ()

    def flag_prefix(self) -> str:
        return "acme_"


def test_option_makes_flags_variables_secrets_and_checks() -> None:
    by_name = {field.name: field for field in attrs.fields(AcmeSettings)}
    region, token = (Option("x", AcmeSpec(), by_name[name]) for name in ("region", "token"))
    assert region.flag == "--acme-region" and region.variables == ("VOXBRIDGE_ACME_REGION",)
    assert token.variables == ("VOXBRIDGE_ACME_TOKEN", "ACME_TOKEN")
    assert by_name["token"].metadata["cli"] is False and by_name["region"].metadata["cli"] is True
    assert "s3cret" not in repr(AcmeSettings(token="s3cret"))
    with pytest.raises(SettingsError, match="must be even"):
        AcmeSettings(size=3)


def test_the_providers_spec_reexports_the_shared_option() -> None:
    assert provider_option is option
    assert ProviderNoSettings is NoSettings
