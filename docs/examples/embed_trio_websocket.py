"""Embed voxbridge in your own trio app: carrier WebSockets served with trio-websocket.

Every accepted WebSocket on ``/twilio/media`` becomes one call, bridged to an ``EchoAgent`` that
runs in the same nursery (use ``voxbridge.provider_for(settings)`` for a real provider). Run it
with ``python docs/examples/embed_trio_websocket.py`` and place a call with
``voxbridge call ws://127.0.0.1:8080/twilio/media``.
"""

from __future__ import annotations

import logging
from functools import partial

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from voxbridge import (
    CallRegistry,
    Metrics,
    ProviderEndpoint,
    Settings,
    TrioWebSocketCarrier,
    run_call,
)
from voxbridge.echo_agent import EchoAgent

log = logging.getLogger("embed_example")

MEDIA_PATH = "/twilio/media"


async def main(
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    settings: Settings | None = None,
    metrics: Metrics | None = None,
    calls: CallRegistry | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve carrier WebSockets on ``host:port`` until cancelled.

    ``await nursery.start(main)`` returns the media URL (``ws://host:port/twilio/media``).
    """
    settings = Settings() if settings is None else settings
    # One Metrics for all calls; Metrics(registry) counts into your own CollectorRegistry.
    metrics = Metrics() if metrics is None else metrics
    # Running calls and the records of recent ones (an empty CallRegistry is falsy: test for None).
    calls = CallRegistry() if calls is None else calls

    async with trio.open_nursery() as nursery:
        agent = EchoAgent()
        agent_url = await nursery.start(agent.serve)
        endpoint = ProviderEndpoint("echo", agent_url)

        async def handle(request: WebSocketRequest) -> None:
            if request.path != MEDIA_PATH:
                await request.reject(404, body=b"no such route\n")
                return
            try:
                ws = await request.accept()
            except ConnectionClosed:  # the caller left during the handshake
                return
            disconnect = await run_call(
                TrioWebSocketCarrier(ws),
                endpoint,
                settings=settings,
                metrics=metrics,
                registry=calls,
            )
            log.info("call ended: %s (close code %d)", disconnect, disconnect.reason.close_code)

        server = await nursery.start(
            partial(
                serve_websocket,
                handle,
                host,
                port,
                ssl_context=None,
                max_message_size=64 * 1024,  # a Twilio frame is a few hundred bytes
                connect_timeout=settings.start_timeout,  # the HTTP upgrade must not hang either
                disconnect_timeout=settings.close_timeout,
            )
        )
        task_status.started(f"ws://{host}:{server.port}{MEDIA_PATH}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    trio.run(main, 8080)
