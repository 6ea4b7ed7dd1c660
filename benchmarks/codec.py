"""Scenario *codec*: the JSON parse on the hot path, ``json`` against ``orjson``.

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
"""

from __future__ import annotations

import base64
import json
import os
import sys
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from voxbridge.carriers.twilio import TwilioStream
from voxbridge.carriers.twilio_wire import (
    encode_connected,
    encode_inbound_media,
    encode_mark_echo,
    encode_start,
)

from .common import fig, pin, positive
from .harness import Bench

NAME = "codec"
TITLE = "Codec: the hot path's JSON parse, json vs orjson"

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
    return result


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
    return problems


def main(argv: list[str] | None = None) -> int:
    from .run import main as run_main

    return run_main(argv, only=[NAME])


if __name__ == "__main__":
    sys.exit(main())
