"""Tasks per live call, counted on the real server, and the carrier pings that cost none.

Every trio task is memory (its coroutine, frames, context and cancel scopes: most of a call's
65 KiB, issue 15), so a call runs the tasks its work needs and no more. A live call of the real
server (hypercorn's trio worker on port 0, in this process, against the echo fake) has six:

* hypercorn's two per connection: the connection (``TCPServer.run``, its read loop) and the ASGI
  app's task, in which the call itself runs;
* the call's three (docs/architecture.md): caller to provider, provider to caller, and the
  link's upkeep (provider keepalive, recycling);
* the provider socket's reader (trio-websocket's reader task, with no host task around it).

There used to be eight: hypercorn's WebSocket ping loop per connection, and a task hosting the
provider socket's reader. The carrier pings now come from one task per process (and
``--websocket-ping-interval 0`` turns them off); they still reach every open WebSocket.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
from callkit import connected_frame, media_frame, start_frame
from test_e2e_server import wait_until
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Ping, Request, TextMessage

from voxbridge.server import RunningServer, serve
from voxbridge.settings import Settings
from voxbridge.testing import FakeEchoAgent, simulate_call

TASKS_PER_CALL = 6
CALLS = 3
BUDGET = 20.0  # seconds of real time per test


def tasks_under(nursery: trio.Nursery) -> Counter[str]:
    """Every task running under ``nursery``, by name."""
    names: Counter[str] = Counter()
    pending = list(nursery.child_tasks)
    while pending:
        task = pending.pop()
        names[task.name.rsplit(".", 2)[-2] + "." + task.name.rsplit(".", 1)[-1]] += 1
        for child in task.child_nurseries:
            pending += child.child_tasks
    return names


def all_task_names() -> Counter[str]:
    root = trio.lowlevel.current_root_task()
    names: Counter[str] = Counter()
    pending = [root]
    while pending:
        task = pending.pop()
        names[task.name] += 1
        for child in task.child_nurseries:
            pending += child.child_tasks
    return names


@asynccontextmanager
async def server_apart(**overrides: Any) -> AsyncIterator[tuple[RunningServer, trio.Nursery, Any]]:
    """The server in a nursery of its own (so its tasks can be counted), the fake and whatever
    the test starts (``outside``) in another."""
    agent = FakeEchoAgent(delay=0.02)
    stop = trio.Event()
    async with trio.open_nursery() as outside:
        url = await outside.start(agent.serve)
        settings = Settings(port=0, provider="echo", provider_url=url, **overrides)
        async with trio.open_nursery() as inside:
            server = await inside.start(
                lambda task_status: serve(
                    settings, shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            try:
                yield server, inside, outside
            finally:
                stop.set()
                inside.cancel_scope.deadline = trio.current_time() + 10
        outside.cancel_scope.cancel()


def all_live(server: RunningServer, calls: int) -> bool:
    """``calls`` calls running, each with its provider session open (nothing left opening)."""
    active = server.app.registry.active()
    return len(active) == calls and all(
        call._link is not None and call._link.session is not None for call in active
    )


@pytest.mark.parametrize("ping_interval", [0.2, 0.0])
async def test_a_live_call_runs_six_tasks(ping_interval: float) -> None:
    with trio.fail_after(BUDGET):
        async with server_apart(websocket_ping_interval=ping_interval) as (server, inside, outside):
            idle = tasks_under(inside)
            for _ in range(CALLS):
                outside.start_soon(lambda: simulate_call(server.media_url, seconds=1.5))
            await wait_until(lambda: all_live(server, CALLS))
            await trio.sleep(0.5)  # past a ping or two, with audio flowing both ways
            assert all_live(server, CALLS)
            held = tasks_under(inside)
            pingers = [n for n in all_task_names() if "WebSocket pings" in n]
            await server.app.registry.wait_empty()

    per_call = held - idle
    assert per_call.total() == TASKS_PER_CALL * CALLS, per_call
    assert per_call == Counter(
        {
            "_highlevel_serve_listeners._run_handler": CALLS,  # hypercorn's TCPServer.run
            "task_group._handle": CALLS,  # the ASGI app, running the call
            "Call._guard": 3 * CALLS,  # caller to provider, provider to caller, upkeep
            "Upstream._read": CALLS,  # trio-websocket's reader of the provider socket
        }
    )
    # the carrier pings: one task for the whole process (none with pings off)
    assert pingers == (
        [f"voxbridge WebSocket pings every {ping_interval:g} s"] if ping_interval else []
    )


async def pings_seen(url: str, seconds: float) -> int:
    """Place a call by hand (wsproto: every frame seen) and count the server's pings to it over
    ``seconds`` of the call."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    ws = WSConnection(ConnectionType.CLIENT)
    pings = 0
    try:
        await stream.send_all(ws.send(Request(host=parts.netloc, target=parts.path)))
        while not any(isinstance(event, AcceptConnection) for event in ws.events()):
            ws.receive_data(await stream.receive_some())
        frames = [connected_frame(), start_frame(), *(media_frame(i) for i in range(5))]
        await stream.send_all(b"".join(ws.send(TextMessage(f)) for f in frames))
        with trio.move_on_after(seconds):
            while True:
                data = await stream.receive_some()
                if not data:
                    break
                ws.receive_data(data)
                pings += sum(isinstance(event, Ping) for event in ws.events())
    finally:
        await trio.aclose_forcefully(stream)
    return pings


@pytest.mark.parametrize(("interval", "low", "high"), [(0.2, 3, 6), (0.0, 0, 0)])
async def test_carrier_pings_without_a_task_per_connection(
    interval: float, low: int, high: int
) -> None:
    # 1.1 s of a call with pings every 0.2 s: five in theory (the first within an interval of
    # the accept); the machine is shared, so a ping may come late, never early or doubled.
    with trio.fail_after(BUDGET):
        async with server_apart(websocket_ping_interval=interval, idle_timeout=5.0) as (
            server,
            _inside,
            _outside,
        ):
            seen = await pings_seen(server.media_url, 1.1)
            await server.app.registry.wait_empty()
    assert low <= seen <= high


def test_zero_turns_the_carrier_pings_off() -> None:
    from voxbridge.errors import SettingsError
    from voxbridge.server.serve import hypercorn_config

    assert hypercorn_config(Settings(websocket_ping_interval=0), 3).websocket_ping_interval is None
    assert hypercorn_config(Settings(), 3).websocket_ping_interval == 15
    with pytest.raises(SettingsError):
        Settings(websocket_ping_interval=-1)
