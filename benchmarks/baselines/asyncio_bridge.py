"""Baseline: the tutorial-style asyncio bridge (uvicorn + ``websockets``), no deadlines.

The shape every "Twilio + OpenAI Realtime in Python" tutorial uses: an ASGI WebSocket endpoint,
``websockets.connect`` to the provider, two receive loops -- caller to provider and provider to
caller -- joined with ``asyncio.gather``, and nothing bounding any wait. A caller that goes silent
with its TCP connection open keeps its provider socket open for ever; that is the point of the
comparison, not a bug added for it.

Run: ``python -m benchmarks.baselines.asyncio_bridge --port 0 --upstream-url ws://127.0.0.1:P/v1/realtime``
(or ``BENCH_PORT`` / ``BENCH_UPSTREAM_URL``). It prints ``asyncio-baseline listening on http://...``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from typing import Any

import uvicorn
import websockets

from ..gcstats import GcStats

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


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI app: ``/twilio/media`` bridges a call; any HTTP request gets 404."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"not found\n"})
        return
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    async with websockets.connect(UPSTREAM_URL) as openai_ws:
        await openai_ws.send(json.dumps(SESSION_UPDATE))
        stream_sid = None

        async def receive_from_twilio() -> None:
            nonlocal stream_sid
            try:
                while True:
                    message = await receive()
                    if message["type"] == "websocket.disconnect":
                        break
                    data = json.loads(message["text"])
                    if data["event"] == "media":
                        audio_append = {
                            "type": "input_audio_buffer.append",
                            "audio": data["media"]["payload"],
                        }
                        await openai_ws.send(json.dumps(audio_append))
                    elif data["event"] == "start":
                        stream_sid = data["start"]["streamSid"]
                    elif data["event"] == "stop":
                        break
            finally:
                await openai_ws.close()

        async def send_to_twilio() -> None:
            async for openai_message in openai_ws:
                response = json.loads(openai_message)
                if response["type"] == "response.output_audio.delta" and "delta" in response:
                    audio_delta = {
                        "event": "media",
                        "streamSid": stream_sid,
                        "media": {"payload": response["delta"]},
                    }
                    await send({"type": "websocket.send", "text": json.dumps(audio_delta)})

        await asyncio.gather(receive_from_twilio(), send_to_twilio())


async def report_stats(interval: float) -> None:
    """Print ``stats {"tasks": N, "gc_...": ...}`` every ``interval`` seconds (for the harness)."""
    gc_stats = GcStats()
    while True:
        await asyncio.sleep(interval)
        line = {"tasks": len(asyncio.all_tasks()), **gc_stats.snapshot()}
        sys.stdout.write("stats " + json.dumps(line) + "\n")
        sys.stdout.flush()


async def serve(host: str, port: int, stats_interval: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level="warning", access_log=False, backlog=4096)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(1000):  # uvicorn has no "started" event: poll, bounded (10 s)
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    sys.stdout.write(f"asyncio-baseline listening on http://{host}:{sock.getsockname()[1]}\n")
    sys.stdout.flush()
    stats = asyncio.create_task(report_stats(stats_interval)) if stats_interval > 0 else None
    await task
    if stats is not None:
        stats.cancel()


def main(argv: list[str] | None = None) -> None:
    global UPSTREAM_URL
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.baselines.asyncio_bridge",
        description="Tutorial-style asyncio bridge: uvicorn + websockets, no deadlines.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("BENCH_PORT", "0")))
    parser.add_argument("--upstream-url", default=UPSTREAM_URL)
    parser.add_argument("--stats-interval", type=float, default=0.0, help="0 = no stats lines")
    args = parser.parse_args(argv)
    UPSTREAM_URL = args.upstream_url
    asyncio.run(serve(args.host, args.port, args.stats_interval))


if __name__ == "__main__":
    main()
