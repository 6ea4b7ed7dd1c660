"""A call that ends while the caller is still streaming must give its TCP socket back.

Twilio sends a 20 ms ``media`` frame 50 times a second until it reads our close frame. hypercorn
(0.18, trio worker) feeds each app through a ten-message queue and its connection reader waits
while the queue is full; nothing closes the queue when the app returns, so once the app is gone the
eleventh frame parks the reader for good and the socket stays open, unread bytes and all, for the
life of the process (``voxbridge.server.containment``: the queue trap).

The first test proves the trap on the installed hypercorn with its own classes (so the rest prove
something); the second runs the same exchange with ``ReleasingTaskGroup``. Then end to end: the
real server in-process (a caller that answers our close, and one that never reads it), and
``hypercorn -k trio voxbridge.asgi:app`` as a subprocess. "Holds the socket" is read from the
kernel: the TCP sockets in ``/proc/<pid>/net/tcp*`` between the server's port and the caller's,
owned by a file descriptor of that process or a descendant (hypercorn's CLI serves from a worker). Loopback only; every test has a real-time budget.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpx
import hypercorn.trio.run
import hypercorn.trio.tcp_server
import pytest
import trio
from callkit import ACCOUNT_SID, CALL_SID, STREAM_SID, connected_frame, media_frame, start_frame
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer
from prometheus_client.parser import text_string_to_metric_families
from test_e2e_server import running, wait_until
from test_process import read_until
from trio_websocket import WebSocketRequest, serve_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState as WSState
from wsproto.events import AcceptConnection, CloseConnection, Event, Ping, Request, TextMessage
from wsproto.utilities import LocalProtocolError

from voxbridge.carriers.twilio_wire import encode_stop
from voxbridge.errors import Disconnect
from voxbridge.server.asgi_carrier import AsgiCarrier
from voxbridge.server.containment import ReleasingTaskGroup, install
from voxbridge.session.carrier import TrioWebSocketCarrier

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/net/tcp").exists(), reason="reads sockets from Linux /proc"
)

BUDGET = 10.0  # seconds of real time per test
BURST = 30  # media frames the caller sends right after stop, without waiting
MEDIA_BEFORE_STOP = 10
CLOSE_TIMEOUT = 0.5  # teardown_timeout = 3 * 0.5 + 1 = 2.5 s
HYPERCORN = str(Path(sys.executable).with_name("hypercorn"))

_TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


def process_tree(pid: int) -> set[int]:
    """``pid`` and its descendants (``hypercorn`` serves from a worker process it starts)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree = {pid}
    while True:
        more = {child for child, parent in parents.items() if parent in tree} - tree
        if not more:
            return tree
        tree |= more


def held_sockets(pid: int, local_port: int, remote_port: int) -> list[str]:
    """The TCP sockets process ``pid`` (or a descendant) has an fd for, ``local_port`` to ``remote_port``.

    Each as ``"STATE rx=N"`` (N: bytes the process has not read). A socket the process closed may
    linger in the kernel (TIME_WAIT, FIN_WAIT) but no longer belongs to an fd, so it is not counted.
    """
    inodes = set()
    for member in process_tree(pid):
        try:
            fds = os.listdir(f"/proc/{member}/fd")
        except OSError:  # exited while we looked
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{member}/fd/{fd}")
            except OSError:  # closed while we looked
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    held = []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, queues, inode = (
                fields[1],
                fields[2],
                fields[3],
                fields[4],
                fields[9],
            )
            if (
                int(local.rsplit(":", 1)[1], 16) == local_port
                and int(remote.rsplit(":", 1)[1], 16) == remote_port
                and inode in inodes
            ):
                held.append(f"{_TCP_STATES.get(state, state)} rx={int(queues.split(':')[1], 16)}")
    return held


def stop_frame() -> str:
    return encode_stop(STREAM_SID, CALL_SID, ACCOUNT_SID, sequence_number=MEDIA_BEFORE_STOP + 2)


@attrs.define
class Caller:
    """What a caller that streams past its own ``stop`` saw."""

    port: int  # the caller's local port
    stopped_at: float = 0.0  # trio.current_time() when stop went out
    sent_after_stop: int = 0
    held_before_stop: list[str] = attrs.Factory(list)  # the server's side, just before stop
    close_code: int | None = None  # the server's close frame, once read
    close_read_at: float | None = None
    dropped_at: float | None = None  # when the server's FIN or RST reached the caller


@asynccontextmanager
async def caller_streaming_past_stop(
    url: str, server_pid: int, *, reads: bool = True
) -> AsyncIterator[Caller]:
    """A Twilio-like caller: start, some media, then ``stop`` and 30 frames in one write.

    Then 50 frames/s, echoing nothing, until it reads our close frame (which it answers) -- or,
    with ``reads=False``, a caller that never reads its socket, until the server drops it. A raw
    wsproto client, so the burst really is one write and nothing reads for it behind its back.
    Yields once the burst is out; the streaming goes on in the background until exit. Just
    before stop it records the sockets ``server_pid`` holds to it, so "none left" means something.
    """
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    caller = Caller(port=stream.socket.getsockname()[1])
    ws = WSConnection(ConnectionType.CLIENT)
    lock = trio.Lock()  # the streaming task and the reader (answering close, pings) both write

    async def send(*events: Event) -> None:
        async with lock:
            await stream.send_all(b"".join(ws.send(event) for event in events))

    try:
        await send(Request(host=parts.netloc, target=parts.path))
        while not any(isinstance(event, AcceptConnection) for event in ws.events()):
            data = await stream.receive_some()
            assert data, "server closed during the handshake"
            ws.receive_data(data)
        await send(TextMessage(connected_frame()), TextMessage(start_frame()))
        async with trio.open_nursery() as nursery:
            if reads:
                nursery.start_soon(_read_until_dropped, stream, ws, send, caller)
            for index in range(MEDIA_BEFORE_STOP):
                await send(TextMessage(media_frame(index)))
                await trio.sleep(0.02)
            burst = range(MEDIA_BEFORE_STOP, MEDIA_BEFORE_STOP + BURST)
            server_port = stream.socket.getpeername()[1]
            caller.held_before_stop = held_sockets(server_pid, server_port, caller.port)
            caller.stopped_at = trio.current_time()
            await send(TextMessage(stop_frame()), *(TextMessage(media_frame(i)) for i in burst))
            caller.sent_after_stop = BURST
            nursery.start_soon(_stream_until_closed, ws, send, caller)
            yield caller
            nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


async def _read_until_dropped(
    stream: trio.SocketStream, ws: WSConnection, send: Any, caller: Caller
) -> None:
    while True:
        try:
            for event in ws.events():
                if isinstance(event, CloseConnection):
                    caller.close_code = event.code
                    caller.close_read_at = trio.current_time()
                    await send(event.response())  # what Twilio does; then it waits for our FIN
                elif isinstance(event, Ping):
                    await send(event.response())
                # messages (the echo of our audio) are dropped
            data = await stream.receive_some()
        except trio.BrokenResourceError:  # the server reset the connection
            data = b""
        if not data:
            caller.dropped_at = trio.current_time()
            return
        ws.receive_data(data)


async def _stream_until_closed(ws: WSConnection, send: Any, caller: Caller) -> None:
    index = MEDIA_BEFORE_STOP + BURST
    try:
        while caller.close_read_at is None and ws.state is WSState.OPEN:
            await send(TextMessage(media_frame(index)))
            caller.sent_after_stop += 1
            index += 1
            await trio.sleep(0.02)
    except LocalProtocolError:  # the reader read our close meanwhile: Twilio stops here too
        pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):  # the server dropped us
        pass


async def scrape_url(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"{url}/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


# --- the trap, on plain hypercorn -----------------------------------------------------------------


async def _stop_then_close_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Accept, read until a Twilio ``stop``, tidy up for 0.1 s, close and return: a call, in brief."""
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if json.loads(message.get("text") or "{}").get("event") == "stop":
                break
        await trio.sleep(0.1)  # the call's teardown (the provider's goodbye) while frames arrive
        await send({"type": "websocket.close", "code": 1000, "reason": "caller_stop"})
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return


async def _held_after_stop_on_plain_hypercorn() -> tuple[list[str], Caller]:
    """Serve ``_stop_then_close_app`` with whatever hypercorn's names point at.

    Returns the server's sockets to the caller 1 s after stop (or as soon as there are none), and
    the caller, given up to 1 s more to read what the server sent before it let go.
    """
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 0.5
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: hypercorn_serve(
                _stop_then_close_app,  # type: ignore[arg-type]
                config,
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )
        )
        port = int(binds[0].rsplit(":", 1)[1])
        async with caller_streaming_past_stop(
            f"ws://127.0.0.1:{port}/media", os.getpid()
        ) as caller:
            with trio.move_on_after(1.0):
                await wait_until(lambda: not held_sockets(os.getpid(), port, caller.port), 2)
            held = held_sockets(os.getpid(), port, caller.port)
            if not held:
                with trio.move_on_after(1.0):
                    await wait_until(lambda: caller.dropped_at is not None)
        stop.set()
        nursery.cancel_scope.deadline = trio.current_time() + 3
    return held, caller


async def test_unpatched_hypercorn_holds_the_socket_of_a_caller_streaming_after_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hypercorn.trio.run, "TCPServer", TCPServer)
    monkeypatch.setattr(hypercorn.trio.tcp_server, "TaskGroup", TaskGroup)
    with trio.fail_after(BUDGET):
        held, caller = await _held_after_stop_on_plain_hypercorn()
    assert caller.close_code == 1000  # the app closed and the caller answered ...
    assert caller.sent_after_stop >= BURST
    assert [s.split()[0] for s in caller.held_before_stop] == ["ESTABLISHED"]
    assert len(held) == 1, held  # ... yet hypercorn never read the answer: the socket is held
    assert held[0].startswith("ESTABLISHED")
    assert not held[0].endswith(" rx=0")  # with the caller's frames (and close) unread
    assert caller.dropped_at is None  # and the caller, waiting for our FIN, never gets it


async def test_released_task_group_gives_the_socket_back() -> None:
    assert install() is True
    assert hypercorn.trio.tcp_server.TaskGroup is ReleasingTaskGroup  # type: ignore[attr-defined]
    with trio.fail_after(BUDGET):
        held, caller = await _held_after_stop_on_plain_hypercorn()
    assert caller.close_code == 1000
    assert caller.sent_after_stop >= BURST
    assert [s.split()[0] for s in caller.held_before_stop] == ["ESTABLISHED"]
    assert held == []
    assert caller.dropped_at is not None


def test_install_is_idempotent() -> None:
    assert install() is True
    assert install() is True
    assert hypercorn.trio.tcp_server.TaskGroup is ReleasingTaskGroup  # type: ignore[attr-defined]
    assert ReleasingTaskGroup.__mro__[1] is TaskGroup  # wraps hypercorn's, not a previous wrapper


# --- end to end: voxbridge ------------------------------------------------------------------------


@pytest.mark.parametrize("reads", [True, False], ids=["caller_answers_close", "caller_never_reads"])
async def test_server_releases_a_caller_that_streams_past_stop(reads: bool) -> None:
    with trio.fail_after(BUDGET):
        async with running(close_timeout=CLOSE_TIMEOUT) as (server, _agent):
            bound = server.app.settings.teardown_timeout
            async with caller_streaming_past_stop(
                server.media_url, os.getpid(), reads=reads
            ) as caller:
                await wait_until(
                    lambda: not held_sockets(os.getpid(), server.port, caller.port), bound
                )
                released_after = trio.current_time() - caller.stopped_at
                if reads:
                    await wait_until(lambda: caller.dropped_at is not None, 1)  # our FIN
            samples = await scrape_url(server.url)

    assert released_after < bound
    assert caller.sent_after_stop >= BURST
    assert [s.split()[0] for s in caller.held_before_stop] == ["ESTABLISHED"]
    if reads:
        assert caller.close_code == 1000  # caller_stop, answered and drained
        assert caller.close_read_at is not None
        assert caller.close_read_at - caller.stopped_at < CLOSE_TIMEOUT  # no deadline needed
    assert samples[("voxbridge_calls_active", ())] == 0
    assert samples[("voxbridge_call_disconnects_total", (("reason", "caller_stop"),))] == 1


async def test_hypercorn_k_trio_releases_a_caller_that_streams_past_stop() -> None:
    env = {
        **os.environ,
        "VOXBRIDGE_PROVIDER": "echo",
        "VOXBRIDGE_CLOSE_TIMEOUT": str(CLOSE_TIMEOUT),
    }
    bound = 3 * CLOSE_TIMEOUT + 1  # Settings.teardown_timeout
    process = await trio.lowlevel.open_process(
        [HYPERCORN, "-k", "trio", "--bind", "127.0.0.1:0", "voxbridge.asgi:app"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        with trio.fail_after(BUDGET):
            match = await read_until(process, r"Running on (http://127\.0\.0\.1:(\d+))", 8.0)
            url, port = match.group(1), int(match.group(2))
            media_url = url.replace("http", "ws", 1) + "/twilio/media"
            async with caller_streaming_past_stop(media_url, process.pid) as caller:
                await wait_until(lambda: not held_sockets(process.pid, port, caller.port), bound)
                released_after = trio.current_time() - caller.stopped_at
                await wait_until(lambda: caller.dropped_at is not None, 1)  # our FIN
            samples = await scrape_url(url)
    finally:
        process.send_signal(signal.SIGINT)
        with trio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()

    assert released_after < bound
    assert caller.close_code == 1000
    assert caller.sent_after_stop >= BURST
    assert [s.split()[0] for s in caller.held_before_stop] == ["ESTABLISHED"]
    assert samples[("voxbridge_calls_active", ())] == 0
    assert samples[("voxbridge_call_disconnects_total", (("reason", "caller_stop"),))] == 1


# --- the carriers' close, on their own ------------------------------------------------------------


async def test_asgi_carrier_close_drains_until_disconnect_and_then_refuses_io() -> None:
    inbox: list[dict[str, Any]] = [
        {"type": "websocket.receive", "text": "late frame"} for _ in range(25)
    ]
    inbox.append({"type": "websocket.disconnect", "code": 1000})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    carrier = AsgiCarrier(receive, send)
    with trio.fail_after(1):
        await carrier.close(1000, "caller_stop")
    assert sent == [{"type": "websocket.close", "code": 1000, "reason": "caller_stop"}]
    assert inbox == []  # everything read, up to and including the disconnect
    with pytest.raises(Disconnect):
        await carrier.receive()  # would otherwise wait for ever: hypercorn queues nothing more
    with pytest.raises(Disconnect):
        await carrier.send("x")
    await carrier.close(1000, "again")  # idempotent
    assert len(sent) == 1


async def test_asgi_carrier_close_is_cancellable_and_never_raises() -> None:
    async def silent_receive() -> dict[str, Any]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        pass

    carrier = AsgiCarrier(silent_receive, send)
    with trio.fail_after(1):
        with trio.move_on_after(0.05) as bound:
            await carrier.close(1000, "caller_stop")
    assert bound.cancelled_caught  # the caller's deadline, not close, ended the drain
    with pytest.raises(Disconnect):
        await carrier.receive()  # closed by us: no reading past our own close

    async def broken_send(message: dict[str, Any]) -> None:
        raise RuntimeError("connection already gone")

    with trio.fail_after(1):
        await AsgiCarrier(silent_receive, broken_send).close(1000, "caller_stop")


async def test_trio_websocket_carrier_close_completes_while_the_caller_streams() -> None:
    """The finding in TrioWebSocketCarrier.close: trio-websocket discards after aclose, no drain."""
    closed_in: list[float] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        while json.loads(await ws.get_message()).get("event") != "stop":
            pass
        await trio.sleep(0.1)  # frames pile up in trio-websocket's queue: its reader pauses
        started = trio.current_time()
        with trio.move_on_after(2):
            await TrioWebSocketCarrier(ws).close(1000, "caller_stop")
            closed_in.append(trio.current_time() - started)

    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
            port = server.port
            async with caller_streaming_past_stop(
                f"ws://127.0.0.1:{port}/media", os.getpid()
            ) as caller:
                await wait_until(lambda: bool(closed_in), 3)
                await wait_until(lambda: not held_sockets(os.getpid(), port, caller.port), 3)
            nursery.cancel_scope.cancel()
    assert closed_in[0] < 1.0  # the handshake completed; no deadline was needed
    assert caller.close_code == 1000
    assert caller.sent_after_stop >= BURST
    assert [s.split()[0] for s in caller.held_before_stop] == ["ESTABLISHED"]


# --- a caller that resets its connection ---------------------------------------------------------


def socket_fds() -> int:
    """How many sockets this process has an fd for (a reset socket has no TCP table entry left)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:[")
        except OSError:  # closed while we looked
            continue
    return count


async def test_server_releases_a_caller_that_resets_its_connection() -> None:
    # A phone dying in a tunnel: RST mid-call, no close frame. hypercorn's WebSocket ping loop
    # sleeps websocket_ping_interval (15 s) before it notices, and the connection's socket was
    # closed only after it: the fd (state CLOSE) was held 15 s past the call. ReleasingTaskGroup
    # runs no ping loop per connection (one task per process pings them all), and a connection
    # leaves it with its read loop.
    with trio.fail_after(BUDGET):
        async with running(close_timeout=CLOSE_TIMEOUT) as (server, agent):
            bound = server.app.settings.teardown_timeout
            assert server.app.settings.websocket_ping_interval > 2 * bound  # the trap's window
            baseline = socket_fds()
            parts = urlsplit(server.media_url)
            assert parts.hostname is not None and parts.port is not None
            stream = await trio.open_tcp_stream(parts.hostname, parts.port)
            ws = WSConnection(ConnectionType.CLIENT)
            await stream.send_all(ws.send(Request(host=parts.netloc, target=parts.path)))
            while not any(isinstance(event, AcceptConnection) for event in ws.events()):
                ws.receive_data(await stream.receive_some())
            frames = [connected_frame(), start_frame(), *(media_frame(i) for i in range(10))]
            await stream.send_all(b"".join(ws.send(TextMessage(f)) for f in frames))
            session = await agent.wait_for_session()
            await wait_until(lambda: socket_fds() >= baseline + 3, 2)  # caller, server, provider
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            stream.socket.close()  # RST
            reset_at = trio.current_time()
            await wait_until(lambda: socket_fds() <= baseline, bound)
            released_after = trio.current_time() - reset_at
            await wait_until(lambda: session.is_closed, 1)
            samples = await scrape_url(server.url)
    assert released_after < bound
    assert samples[("voxbridge_calls_active", ())] == 0
    assert samples[("voxbridge_call_disconnects_total", (("reason", "caller_closed"),))] == 1
