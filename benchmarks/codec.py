"""Scenario *codec*: the JSON parse on the hot path (``json`` against ``orjson``), and provider audio.

Every inbound Twilio frame (media, mark echoes) and every provider event (audio deltas) is one JSON
parse. This measures, in this process on the server's core, the parse of exactly the frames
voxbridge handles -- a Twilio media frame, a Twilio mark echo, OpenAI Realtime audio deltas of 20
and 100 ms -- with the standard library's ``json.loads`` (with a ``parse_constant`` hook, which
builds a new decoder per call, as voxbridge's Twilio codec called it before; and plain, as its
provider codecs did) and ``orjson.loads``,
plus the whole ``TwilioStream.receive`` of a media frame as voxbridge now runs it. Figures are the
best of ``repeat`` timings of ``number`` parses (the least disturbed one), in microseconds.

What the saving is worth end to end: multiply by the frames per call-second (50 media frames in,
and for the agent upstream about 12 deltas and 12 mark echoes) and compare with the relay's CPU per
call-second.

Provider audio per 20 ms frame, each way, as the provider codecs run it: OpenAI Realtime passes
mu-law through (``OpenAIRealtimeCodec.audio`` builds the append around the caller's base64;
``OpenAIRealtimeCodec.decode`` parses a delta and decodes its base64); Gemini Live converts and resamples
(``GeminiCodec.audio``: base64 -> mu-law -> PCM16 -> soxr 8 -> 16 kHz -> base64 -> JSON;
``GeminiCodec.decode``: JSON -> base64 -> validated PCM16 24 kHz -> soxr 24 -> 8 kHz -> mu-law),
plus soxr's two streaming resamplers alone. A call-second is 50 frames each way (while the agent
speaks), so (in + out) x 50 is the CPU per call-second. The stamp the relay's Gemini agent codes
into its audio (:func:`benchmarks.wire.pcm_stamp`) is checked here through ``GeminiCodec.decode``.
"""

from __future__ import annotations

import base64
import json
import os
import random
import sys
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from voxbridge.audio import resampler, tone
from voxbridge.carriers.twilio import TwilioStream
from voxbridge.carriers.twilio_wire import (
    encode_connected,
    encode_inbound_media,
    encode_mark_echo,
    encode_start,
)
from voxbridge.providers.events import AgentAudio
from voxbridge.providers.gemini import GeminiCodec
from voxbridge.providers.openai_realtime import OpenAIRealtimeCodec

from . import wire
from .common import fig, pin, positive
from .harness import Bench

NAME = "codec"
TITLE = "Codec: the hot path's JSON parse, json vs orjson; provider audio per frame"

SID = "MZ" + "0" * 32


@dataclass
class Params:
    """Codec parameters."""

    number: int = 20000
    repeat: int = 7

    @classmethod
    def smoke(cls) -> Params:
        return cls(number=500, repeat=2)


def _reject(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def frames() -> dict[str, str]:
    """The frames voxbridge parses most, exactly as they arrive."""

    def delta(ms: int) -> str:
        return json.dumps(
            {
                "type": "response.output_audio.delta",
                "event_id": "event_B4o9RHSTWobB5OQdEHLTo",
                "response_id": "resp_B4o9RHSTWobB5OQdEHLTo",
                "item_id": "item_B4o9RHSTWobB5OQdEHLTo",
                "output_index": 0,
                "content_index": 0,
                "delta": base64.b64encode(bytes(range(256)) * (ms * 8 // 256 + 1))[
                    : ms * 8 * 4 // 3
                ].decode(),
            }
        )

    media = base64.b64encode(b"\xff" * 160).decode()
    return {
        "Twilio media (20 ms)": encode_inbound_media(
            SID, media, chunk=123, timestamp=2440, sequence_number=125
        ),
        "Twilio mark echo": encode_mark_echo(SID, "vb123", 126),
        "OpenAI audio delta (20 ms)": delta(20),
        "OpenAI audio delta (100 ms)": delta(100),
    }


def best_us(fn: Callable[[], object], params: Params) -> float:
    times = timeit.repeat(fn, number=params.number, repeat=params.repeat)
    return min(times) / params.number * 1e6


def run(bench: Bench, params: Params) -> dict[str, Any]:
    pin(os.getpid(), bench.server_cpus)  # measured on the server's core, like the servers
    try:
        return _measure(bench, params)
    finally:
        pin(os.getpid(), bench.load_cpus)


def _measure(bench: Bench, params: Params) -> dict[str, Any]:
    result: dict[str, Any] = {"title": TITLE, "params": vars(params), "frames": {}}
    samples = frames()
    with bench.scenario(NAME, len(samples) + 1) as task:
        for name, frame in samples.items():
            json_kw = best_us(lambda f=frame: json.loads(f, parse_constant=_reject), params)
            json_plain = best_us(lambda f=frame: json.loads(f), params)
            fast = best_us(lambda f=frame: orjson.loads(f), params)
            assert orjson.loads(frame) == json.loads(frame)
            result["frames"][name] = {
                "chars": fig(len(frame), "characters"),
                "json_loads_hook": fig(json_kw, "us/parse"),
                "json_loads": fig(json_plain, "us/parse"),
                "orjson": fig(fast, "us/parse"),
                "speedup": fig(json_plain / fast, "x"),
            }
            bench.advance(task)
        stream = TwilioStream()
        stream.receive(encode_connected())
        stream.receive(encode_start(SID, "CA" + "1" * 32, "AC" + "2" * 32, sequence_number=1))
        count = params.number * params.repeat + 1
        payload = base64.b64encode(b"\xff" * 160).decode()
        media = iter(
            [
                encode_inbound_media(
                    SID, payload, chunk=i + 1, timestamp=i * 20, sequence_number=i + 2
                )
                for i in range(count)
            ]
        )
        receive = stream.receive
        result["twilio_receive_media"] = fig(
            best_us(lambda: receive(next(media)), params), "us/frame"
        )
        bench.advance(task)
    result["provider_audio"] = provider_audio(params)
    result["gemini_stamps_decoded"] = fig(gemini_stamps(), "%", note="of 200 random stamps")
    result["deadlines"] = deadline_moves(params)
    return result


def provider_audio(params: Params) -> dict[str, Any]:
    """Microseconds per 20 ms frame each way for OpenAI Realtime and Gemini Live, soxr alone, and
    what it adds up to per call-second (50 frames each way)."""
    caller = base64.b64encode(tone(0.02)).decode()  # a Twilio media payload
    openai = OpenAIRealtimeCodec()
    delta = json.dumps(
        {
            "type": "response.output_audio.delta",
            "event_id": "event_B4o9RHSTWobB5OQdEHLTo",
            "response_id": "resp_B4o9RHSTWobB5OQdEHLTo",
            "item_id": "item_B4o9RHSTWobB5OQdEHLTo",
            "output_index": 0,
            "content_index": 0,
            "delta": caller,
        }
    )
    gemini = GeminiCodec()
    n = np.arange(480)
    pcm24 = (np.sin(2 * np.pi * 440 * n / 24000) * 8000).astype("<i2")
    model_turn = json.dumps(
        {
            "serverContent": {
                "modelTurn": {
                    "parts": [
                        {
                            "inlineData": {
                                "mimeType": "audio/pcm;rate=24000",
                                "data": base64.b64encode(pcm24.tobytes()).decode(),
                            }
                        }
                    ]
                }
            }
        }
    )
    assert isinstance(openai.decode(delta), AgentAudio)
    for _ in range(3):  # past the resampler's start-up hold-back: every frame yields audio
        gemini.decode(model_turn)
    event = gemini.decode(model_turn)
    assert isinstance(event, AgentAudio) and len(event.audio) == wire.FRAME_BYTES
    up, down = resampler(8000, 16000), resampler(24000, 8000)
    pcm8 = (np.sin(2 * np.pi * 440 * np.arange(160) / 8000) * 8000).astype("<i2")
    us = {
        "openai_in": best_us(lambda: openai.audio(caller), params),
        "openai_out": best_us(lambda: openai.decode(delta), params),
        "gemini_in": best_us(lambda: gemini.audio(caller), params),
        "gemini_out": best_us(lambda: gemini.decode(model_turn), params),
        "soxr_in": best_us(lambda: up.resample_chunk(pcm8), params),  # 8 -> 16 kHz
        "soxr_out": best_us(lambda: down.resample_chunk(pcm24), params),  # 24 -> 8 kHz
    }
    out = {name: fig(value, "us/frame") for name, value in us.items()}
    for name in ("openai", "gemini", "soxr"):  # 50 frames each way
        per = (us[f"{name}_in"] + us[f"{name}_out"]) * 50 / 1000
        out[f"{name}_per_call_second"] = fig(per, "ms/call-s", note="50 frames each way")
    return out


def deadline_moves(params: Params) -> dict[str, Any]:
    """The call's deadline work per frame (issue 15): each relay task keeps one cancel scope and
    re-arms it per wait (``voxbridge.deadlines.Deadline``). Microseconds per frame of one task's
    pattern, with a checkpoint per wait and the virtual clock 20 ms on per frame, less the same
    loop without deadlines: ``caller_to_upstream`` (idle deadline, then ``send_timeout``) and
    ``upstream_to_caller`` (no deadline for the provider, ``send_timeout`` for the carrier), as
    the call re-arms them now (both waits restartable) and as it did before (a move of the
    scope's deadline per arm and per disarm)."""
    import contextlib  # (imported here: only this measurement runs trio)
    import math
    import time

    import trio
    import trio.testing

    from voxbridge.deadlines import Deadline

    class Before(Deadline):  # the re-arm as it was: every arm and disarm moves the deadline
        __slots__ = ()

        def arm(self, seconds: float, error: Any, *, since: float | None = None, **_: Any) -> None:
            if not self._scope.cancel_called:
                self._scope.deadline = (trio.current_time() if since is None else since) + seconds

        def disarm(self, **_: Any) -> None:
            if not self._scope.cancel_called:
                self._scope.deadline = math.inf

    checkpoint, frames = trio.lowlevel.checkpoint, params.number

    async def loop(kind: type[Deadline] | None, task: str, clock: trio.testing.MockClock) -> None:
        watch = kind() if kind is not None else None
        with watch if watch is not None else contextlib.nullcontext():
            for _ in range(frames):
                clock.jump(0.02)
                if watch is None:
                    pass
                elif task == "caller_to_upstream":
                    watch.arm(60, TimeoutError, restartable=True)  # the receive
                else:
                    watch.disarm(restartable=True)  # the wait for the provider
                await checkpoint()
                if watch is not None:
                    watch.arm(5, TimeoutError)  # the send
                await checkpoint()

    def per_frame(kind: type[Deadline] | None, task: str) -> float:
        best = math.inf
        for _ in range(params.repeat):
            clock = trio.testing.MockClock()
            started = time.process_time()
            trio.run(loop, kind, task, clock, clock=clock)
            best = min(best, time.process_time() - started)
        return best / frames * 1e6

    out: dict[str, Any] = {}
    for task in ("caller_to_upstream", "upstream_to_caller"):
        floor = per_frame(None, task)
        before, after = per_frame(Before, task) - floor, per_frame(Deadline, task) - floor
        out[task] = {
            "before": fig(before, "us/frame"),
            "after": fig(after, "us/frame"),
            "saved_per_call_second": fig((before - after) * 50 / 1000, "ms/call-s"),
        }
    return out


def gemini_stamps(count: int = 200) -> float:
    """The share of random stamps :func:`benchmarks.wire.pcm_stamp` codes into 20 ms of 24 kHz
    audio that :func:`benchmarks.wire.decode_pcm_stamp` reads back after ``GeminiCodec.decode``
    (24 -> 8 kHz, mu-law), each as the first frame of a burst (a turn), as the relay sends it."""
    rng = random.Random(7)
    silence = wire.gemini_audio_frame(bytes(960))
    tail = wire.GEMINI_TURN_COMPLETE  # the turn ends: the resampler's tail, then a fresh one
    codec = GeminiCodec()
    good = 0
    for _ in range(count):
        stamp = rng.getrandbits(32)
        audio = bytearray()
        for frame in (wire.gemini_audio_frame(wire.pcm_stamp(stamp)), silence, silence, tail):
            ((_, body),) = wire.FrameReader().feed(frame)
            event = codec.decode(body)
            if isinstance(event, AgentAudio):
                audio += event.audio
        good += wire.decode_pcm_stamp(bytes(audio[: wire.PCM_STAMP_BYTES])) == stamp
    return good / count * 100


def check(result: dict[str, Any]) -> list[str]:
    problems = []
    for name, figs in result["frames"].items():
        for key in ("json_loads_hook", "json_loads", "orjson"):
            value = figs[key]["value"]
            if not positive(value):
                problems.append(f"codec {name}: {key} = {value}")
    value = result["twilio_receive_media"]["value"]
    if not positive(value):
        problems.append(f"codec: twilio_receive_media = {value}")
    for name, figure in result["provider_audio"].items():
        if not positive(figure["value"]):
            problems.append(f"codec: provider_audio {name} = {figure['value']}")
    if result["gemini_stamps_decoded"]["value"] != 100:
        problems.append(
            f"codec: only {result['gemini_stamps_decoded']['value']} % of the Gemini agent's "
            "coded stamps survive GeminiCodec.decode (the relay's Gemini agent latency is wrong)"
        )
    return problems


def main(argv: list[str] | None = None) -> int:
    from .run import main as run_main

    return run_main(argv, only=[NAME])


if __name__ == "__main__":
    sys.exit(main())
