"""The floor: WebSocket echo servers of each layer a bridge is built from, nothing else.

A relayed frame crosses an HTTP/WebSocket server layer (caller side) and a WebSocket client layer
(provider side). These echo servers measure what each layer costs per message on this machine
under the same load as the bridges, so voxbridge can be compared with the floor of its own stack
(hypercorn + trio-websocket) and the baselines with theirs (uvicorn + ``websockets``):

* ``hypercorn``: an ASGI echo app on hypercorn's trio worker (voxbridge's server);
* ``trio-websocket``: ``trio_websocket.serve_websocket`` (the library voxbridge uses upstream);
* ``uvicorn``: an ASGI echo app on uvicorn (the asyncio baseline's server);
* ``websockets``: ``websockets.asyncio.server.serve`` (the asyncio baseline's upstream library).

Run: ``python -m benchmarks.echo_servers KIND --port 0``; prints ``KIND listening on ws://...``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from typing import Any

KINDS = ("hypercorn", "trio-websocket", "uvicorn", "websockets")


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI: accept any WebSocket and send every text message back."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "websocket":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        await send({"type": "websocket.send", "text": message.get("text")})


def _socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    return sock


def _announce(kind: str, port: int) -> None:
    sys.stdout.write(f"{kind} listening on ws://127.0.0.1:{port}\n")
    sys.stdout.flush()


def run_hypercorn(port: int) -> None:
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    sock = _socket(port)
    bound = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, echo_app, config)
            _announce("hypercorn", bound)

    trio.run(main)


def run_trio_websocket(port: int) -> None:
    import trio
    from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except ConnectionClosed:
            pass

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, handler, "127.0.0.1", port, None)
            _announce("trio-websocket", server.port)

    trio.run(main)


def run_uvicorn(port: int) -> None:
    import uvicorn

    async def main() -> None:
        sock = _socket(port)
        config = uvicorn.Config(echo_app, log_level="warning", access_log=False)
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        for _ in range(1000):  # uvicorn has no "started" event: poll, bounded (10 s)
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        _announce("uvicorn", sock.getsockname()[1])
        await task

    asyncio.run(main())


def run_websockets(port: int) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        async with serve(handler, "127.0.0.1", port, compression=None) as server:
            _announce("websockets", server.sockets[0].getsockname()[1])
            await server.serve_forever()

    asyncio.run(main())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.echo_servers", description="A WebSocket echo server (floor)."
    )
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    runner = {
        "hypercorn": run_hypercorn,
        "trio-websocket": run_trio_websocket,
        "uvicorn": run_uvicorn,
        "websockets": run_websockets,
    }[args.kind]
    try:
        runner(args.port)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
