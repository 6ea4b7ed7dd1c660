"""Scenario *floor*: what the layers cost before any bridge code runs.

WebSocket echo servers of hypercorn, trio-websocket, uvicorn and ``websockets`` (see
:mod:`benchmarks.echo_servers`) under the relay's load: N callers streaming 20 ms Twilio frames in
real time, every frame echoed. Figure per layer: server CPU per echo (one message in, one out).

A bridge relaying one frame each way does one receive and one send on its server layer and one
receive and one send on its client layer, which is one echo's worth of work on each. So the floor
for a bridge, per relayed message (a frame in either direction), is half the sum of the echo costs
of its two layers: hypercorn + trio-websocket for voxbridge and the naive trio baseline, uvicorn +
``websockets`` for the asyncio baseline. (An echo *server* stands in for the client layer; the
client side of the same library does the same framing plus masking.)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from .common import fig, positive
from .echo_servers import KINDS
from .harness import Bench
from .relay import measure
from .wire import FRAME_SECONDS

NAME = "floor"
TITLE = "Floor: CPU per message of each layer (echo servers)"

STACKS = {
    "trio stack (hypercorn + trio-websocket)": ("hypercorn", "trio-websocket"),
    "asyncio stack (uvicorn + websockets)": ("uvicorn", "websockets"),
}
PEER_STACK = {
    "voxbridge": "trio stack (hypercorn + trio-websocket)",
    "voxbridge-batch": "trio stack (hypercorn + trio-websocket)",
    "voxbridge-json": "trio stack (hypercorn + trio-websocket)",
    "voxbridge-gemini": "trio stack (hypercorn + trio-websocket)",
    "trio": "trio stack (hypercorn + trio-websocket)",
    "asyncio": "asyncio stack (uvicorn + websockets)",
}


@dataclass
class Params:
    """Floor parameters."""

    calls: int = 20
    seconds: float = 10.0
    warmup: float = 2.0

    @classmethod
    def smoke(cls) -> Params:
        return cls(calls=3, seconds=0.5, warmup=0.1)


def run(bench: Bench, params: Params) -> dict[str, Any]:
    """Measure every echo server; derive the per-stack floors."""
    result: dict[str, Any] = {"title": TITLE, "params": vars(params), "servers": {}, "stacks": {}}
    with bench.scenario(NAME, len(KINDS)) as task:
        for kind in KINDS:
            server = bench.echo_server(kind)
            try:
                assert server.url is not None
                raw = measure(
                    bench,
                    server,
                    None,  # no upstream: the echo server is the far end
                    calls=params.calls,
                    seconds=params.seconds,
                    warmup=params.warmup,
                    label=f"floor {kind}",
                    url=server.url + "/echo",
                )
            finally:
                bench.retire(server)
            load, window, cpu = raw["load"], raw["window"], raw["server_cpu"]
            echoes = load["received_window"]
            lost = load["sent"] - load["received"]
            result["servers"][kind] = {
                "calls": fig(params.calls, "calls"),
                "echoes": fig(echoes, "messages"),
                "cpu_per_echo": fig(cpu / echoes * 1e6 if echoes else None, "us/echo"),
                "server_cpu_pct": fig(cpu / window * 100, "% of a core"),
                "generator_cpu_pct": fig(raw["gen_cpu"] / window * 100, "% of a core"),
                "frames_lost": fig(lost, "frames"),
                "call_seconds": fig(load["sent_window"] * FRAME_SECONDS, "call-s"),
            }
            bench.advance(task)
    for stack, (server_layer, client_layer) in STACKS.items():
        a = result["servers"][server_layer]["cpu_per_echo"]["value"]
        b = result["servers"][client_layer]["cpu_per_echo"]["value"]
        per_message = (a + b) / 2 if a is not None and b is not None else None
        result["stacks"][stack] = {
            "layers": [server_layer, client_layer],
            "floor_per_message": fig(per_message, "us/message"),
            # a call-second is 50 caller frames and 50 agent frames: 100 relayed messages
            "floor_per_call_second": fig(
                per_message * 100 / 1000 if per_message is not None else None, "ms/call-s"
            ),
        }
    return result


def check(result: dict[str, Any]) -> list[str]:
    problems = []
    for kind, figs in result["servers"].items():
        value = figs["cpu_per_echo"]["value"]
        # CPU time is read in clock ticks (10 ms): a light echo server in a short smoke window can
        # use less than one. Zero with echoes measured is below resolution, not a broken harness.
        if not positive(value) and not (value == 0 and positive(figs["echoes"]["value"])):
            problems.append(f"floor {kind}: cpu_per_echo = {value}")
    for stack, figs in result["stacks"].items():
        if figs["floor_per_message"]["value"] is None:
            problems.append(f"floor {stack}: no floor")
    return problems


def main(argv: list[str] | None = None) -> int:
    from .run import main as run_main

    return run_main(argv, only=[NAME])


if __name__ == "__main__":
    sys.exit(main())
