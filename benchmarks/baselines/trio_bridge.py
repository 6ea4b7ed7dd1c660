"""Baseline: a naive trio bridge (hypercorn + trio-websocket), no deadlines, no keepalive.

What a careful trio user writes first: an ASGI WebSocket endpoint on hypercorn's trio worker,
``open_websocket_url`` to the provider, one nursery per call with two tasks, either task ending
cancels the other, and Prometheus counters for calls and frames. Nothing bounds a wait: a caller
that goes silent with its TCP connection open keeps its provider socket open for ever.

Run: ``python -m benchmarks.baselines.trio_bridge --port 0 --upstream-url ws://127.0.0.1:P/v1/realtime``
(or ``BENCH_PORT`` / ``BENCH_UPSTREAM_URL``). It prints ``trio-baseline listening on http://...``;
``GET /metrics`` serves the counters.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from prometheus_client import CollectorRegistry, Counter, generate_latest
from trio_websocket import ConnectionClosed, open_websocket_url

from ..gcstats import GcStats
from ..trio_tasks import count_tasks

UPSTREAM_URL = os.environ.get("BENCH_UPSTREAM_URL", "ws://127.0.0.1:9000/v1/realtime")

SESSION_UPDATE = {
    "type": "session.update",
    "session": {
        "type": "realtime",
        "model": "gpt-realtime",
        "output_modalities": ["audio"],
        "audio": {
            "input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad"}},
            "output": {"format": {"type": "audio/pcmu"}, "voice": "alloy"},
        },
        "instructions": "You are a helpful, concise phone assistant.",
    },
}

REGISTRY = CollectorRegistry()
CALLS_STARTED = Counter("bridge_calls_started", "Calls started.", registry=REGISTRY)
CALLS_ENDED = Counter("bridge_calls_ended", "Calls ended.", registry=REGISTRY)
FRAMES = Counter("bridge_media_frames", "Frames relayed.", ["direction"], registry=REGISTRY)
TO_UPSTREAM = FRAMES.labels(direction="to_upstream")
TO_CALLER = FRAMES.labels(direction="to_caller")


async def bridge(receive: Any, send: Any) -> None:
    """One call: caller <-> provider until either side ends."""
    async with open_websocket_url(UPSTREAM_URL) as upstream:
        await upstream.send_message(json.dumps(SESSION_UPDATE))
        stream_sid = None
        async with trio.open_nursery() as nursery:

            async def caller_to_upstream() -> None:
                nonlocal stream_sid
                while True:
                    message = await receive()
                    if message["type"] == "websocket.disconnect":
                        break
                    data = json.loads(message["text"])
                    if data["event"] == "media":
                        await upstream.send_message(
                            json.dumps(
                                {
                                    "type": "input_audio_buffer.append",
                                    "audio": data["media"]["payload"],
                                }
                            )
                        )
                        TO_UPSTREAM.inc()
                    elif data["event"] == "start":
                        stream_sid = data["start"]["streamSid"]
                    elif data["event"] == "stop":
                        break
                nursery.cancel_scope.cancel()

            async def upstream_to_caller() -> None:
                try:
                    while True:
                        event = json.loads(await upstream.get_message())
                        if event["type"] == "response.output_audio.delta":
                            frame = {
                                "event": "media",
                                "streamSid": stream_sid,
                                "media": {"payload": event["delta"]},
                            }
                            await send({"type": "websocket.send", "text": json.dumps(frame)})
                            TO_CALLER.inc()
                except ConnectionClosed:
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(caller_to_upstream)
            nursery.start_soon(upstream_to_caller)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI app: ``/twilio/media`` bridges a call, ``/metrics`` serves the counters."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        found = scope["path"] == "/metrics"
        body = generate_latest(REGISTRY) if found else b"not found\n"
        await send({"type": "http.response.start", "status": 200 if found else 404, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    CALLS_STARTED.inc()
    try:
        await bridge(receive, send)
    finally:
        CALLS_ENDED.inc()


async def report_stats(interval: float) -> None:
    """Print ``stats {"tasks": N, "gc_...": ...}`` every ``interval`` seconds (for the harness)."""
    gc_stats = GcStats()
    while True:
        await trio.sleep(interval)
        line = {"tasks": count_tasks(), **gc_stats.snapshot()}
        sys.stdout.write("stats " + json.dumps(line) + "\n")
        sys.stdout.flush()


async def serve(host: str, port: int, stats_interval: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    bound = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.graceful_timeout = 1.0
    async with trio.open_nursery() as nursery:
        await nursery.start(hypercorn_serve, app, config)
        sys.stdout.write(f"trio-baseline listening on http://{host}:{bound}\n")
        sys.stdout.flush()
        if stats_interval > 0:
            nursery.start_soon(report_stats, stats_interval)


def main(argv: list[str] | None = None) -> None:
    global UPSTREAM_URL
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.baselines.trio_bridge",
        description="Naive trio bridge: hypercorn + trio-websocket, no deadlines, no keepalive.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("BENCH_PORT", "0")))
    parser.add_argument("--upstream-url", default=UPSTREAM_URL)
    parser.add_argument("--stats-interval", type=float, default=0.0, help="0 = no stats lines")
    args = parser.parse_args(argv)
    UPSTREAM_URL = args.upstream_url
    try:
        trio.run(serve, args.host, args.port, args.stats_interval)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
