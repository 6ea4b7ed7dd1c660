"""The TCP fault proxy on real loopback sockets: pass-through, the idle blackhole, the other knobs.

Every test runs under a real-time budget (``trio.fail_after``). Timing assertions are lower bounds
only (a delay is at least what was asked); "nothing arrives" is checked over a short real wait.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket,
    serve_websocket,
)

from voxbridge.testing import FaultProxy, ProxiedConnection

BUDGET = 5.0  # seconds of real time any one test may take


class Target:
    """A TCP server on loopback: echoes, or hands each accepted stream to the test."""

    def __init__(self, *, echo: bool = False) -> None:
        self.echo = echo
        self._send, self.accepted = trio.open_memory_channel[trio.SocketStream](16)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        if self.echo:
            try:
                async for data in stream:
                    await stream.send_all(data)
            except trio.BrokenResourceError:
                pass
            return
        await self._send.send(stream)
        await trio.sleep_forever()  # the test owns the stream; serve_listeners closes it at the end


@asynccontextmanager
async def proxied(*, echo: bool = False, **knobs: Any) -> AsyncIterator[tuple[FaultProxy, Target]]:
    """A target server and a proxy in front of it; on exit, every proxied connection is closed."""
    target = Target(echo=echo)
    async with trio.open_nursery() as nursery:
        target_port = await nursery.start(target.serve)
        proxy = FaultProxy("127.0.0.1", target_port, **knobs)
        await nursery.start(proxy.serve)
        yield proxy, target
        nursery.cancel_scope.cancel()
    assert proxy.live == []
    assert all(conn.closed_at is not None for conn in proxy.connections)


async def connect(
    proxy: FaultProxy, target: Target
) -> tuple[trio.SocketStream, trio.SocketStream, ProxiedConnection]:
    """(client end, target end, the proxy's record) of a new connection through the proxy."""
    assert proxy.port is not None
    client = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    server = await target.accepted.receive()
    return client, server, proxy.connections[-1]


async def receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        assert chunk, f"EOF after {len(data)} of {n} bytes"
        data += chunk
    return bytes(data)


async def assert_nothing_arrives(stream: trio.abc.ReceiveStream, seconds: float) -> None:
    """No byte and no EOF (and no error) on ``stream`` for ``seconds``."""
    with trio.move_on_after(seconds):
        data = await stream.receive_some()
        pytest.fail(f"expected silence, got {'EOF' if not data else repr(data)}")


async def read_until_end(stream: trio.abc.ReceiveStream) -> tuple[bytes, BaseException | None]:
    """Everything ``stream`` delivers until EOF (error None) or an error (returned)."""
    data = bytearray()
    try:
        while chunk := await stream.receive_some():
            data += chunk
    except trio.BrokenResourceError as exc:
        return bytes(data), exc
    return bytes(data), None


async def wait_blackholed(conn: ProxiedConnection) -> None:
    while not conn.blackholed:
        await trio.sleep(0.01)


# -- pass-through ----------------------------------------------------------------------------------


async def test_pass_through_is_byte_exact_both_ways() -> None:
    up, down = os.urandom(3_000_000), os.urandom(2_000_000)
    with trio.fail_after(BUDGET):
        async with proxied() as (proxy, target):
            client, server, conn = await connect(proxy, target)
            async with client, server:
                got: dict[str, bytes] = {}

                async def collect(name: str, stream: trio.SocketStream, n: int) -> None:
                    got[name] = await receive_exactly(stream, n)

                async with trio.open_nursery() as nursery:  # both ways at once
                    nursery.start_soon(client.send_all, up)
                    nursery.start_soon(server.send_all, down)
                    nursery.start_soon(collect, "up", server, len(up))
                    nursery.start_soon(collect, "down", client, len(down))
                assert got["up"] == up
                assert got["down"] == down
                assert (conn.bytes_up, conn.bytes_down) == (len(up), len(down))

                await client.aclose()
                assert await server.receive_some() == b""  # the client's close is passed on
                await conn.wait_closed()
                assert conn.close_reason == "client closed"
                assert not conn.blackholed


async def test_echo_target_through_the_proxy() -> None:
    with trio.fail_after(BUDGET):
        async with proxied(echo=True) as (proxy, _):
            assert proxy.port is not None
            async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as client:
                for size in (1, 100, 70_000):
                    message = os.urandom(size)
                    await client.send_all(message)
                    assert await receive_exactly(client, size) == message
            conn = await proxy.wait_for_connection()
            await conn.wait_closed()
            assert conn.bytes_up == conn.bytes_down == 70_101


# -- the idle blackhole ----------------------------------------------------------------------------


async def test_idle_blackhole_drops_silently_after_n_seconds_of_silence() -> None:
    with trio.fail_after(BUDGET):
        async with proxied(idle_blackhole=0.3) as (proxy, target):
            client, server, conn = await connect(proxy, target)
            async with client, server:
                # A byte every 0.1 s, either way, keeps the flow alive well past 0.3 s.
                start = trio.current_time()
                for i in range(7):
                    await trio.sleep(0.1)
                    sender, receiver = (client, server) if i % 2 else (server, client)
                    await sender.send_all(b"k")
                    assert await receiver.receive_some() == b"k"
                assert trio.current_time() - start >= 0.7
                assert not conn.blackholed

                # Then silence: blackholed no sooner than 0.3 s after the last byte.
                await wait_blackholed(conn)
                assert conn.blackholed_at is not None
                assert conn.blackholed_at - conn.last_activity >= 0.3

                # Bytes either way vanish; neither end sees data, EOF or an error; both stay open.
                await client.send_all(b"lost up")
                await server.send_all(b"lost down")
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(assert_nothing_arrives, server, 0.3)
                    nursery.start_soon(assert_nothing_arrives, client, 0.3)
                assert (conn.discarded_up, conn.discarded_down) == (7, 9)
                assert conn.open

                # A close is swallowed too: the target sees no EOF; the record ends with both.
                await client.aclose()
                await assert_nothing_arrives(server, 0.2)
                assert conn.open
                await server.aclose()
                await conn.wait_closed()
                assert conn.close_reason == "both ends closed while blackholed"


async def test_blackhole_now_one_connection_and_idle_set_at_run_time() -> None:
    with trio.fail_after(BUDGET):
        async with proxied() as (proxy, target):
            client1, server1, conn1 = await connect(proxy, target)
            client2, server2, conn2 = await connect(proxy, target)
            async with client1, server1, client2, server2:
                conn1.blackhole()
                await client1.send_all(b"one")
                await client2.send_all(b"two")
                assert await receive_exactly(server2, 3) == b"two"  # the other one still passes
                await assert_nothing_arrives(server1, 0.2)
                assert not conn2.blackholed

                proxy.set_idle_blackhole(0.2)  # live connections and later ones
                await wait_blackholed(conn2)
                client3, server3, conn3 = await connect(proxy, target)
                async with client3, server3:
                    assert conn3.idle_blackhole == 0.2
                    await wait_blackholed(conn3)
                    await client3.send_all(b"three")
                    await assert_nothing_arrives(server3, 0.2)

                proxy.set_idle_blackhole(None)
                client4, server4, conn4 = await connect(proxy, target)
                async with client4, server4:
                    await trio.sleep(0.3)
                    await client4.send_all(b"four")
                    assert await receive_exactly(server4, 4) == b"four"
                    assert not conn4.blackholed


# -- a WebSocket through the proxy -----------------------------------------------------------------


async def echo_websocket(request: WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except ConnectionClosed:
        pass


@asynccontextmanager
async def websocket_through(proxy: FaultProxy) -> AsyncIterator[WebSocketConnection]:
    """A client WebSocket to the echo server through ``proxy``; torn down by cancellation, so a
    blackholed one cannot hold the test for a close handshake."""
    assert proxy.port is not None
    with trio.CancelScope() as scope:
        async with open_websocket(
            "127.0.0.1", proxy.port, "/", use_ssl=False, connect_timeout=1, disconnect_timeout=1
        ) as ws:
            yield ws
            scope.cancel()


@asynccontextmanager
async def websocket_proxy(**knobs: Any) -> AsyncIterator[FaultProxy]:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, echo_websocket, "127.0.0.1", 0, None)
        proxy = FaultProxy("127.0.0.1", server.port, **knobs)
        await nursery.start(proxy.serve)
        yield proxy
        nursery.cancel_scope.cancel()
    assert proxy.live == []


async def test_websocket_with_pings_more_often_than_the_idle_timeout_survives() -> None:
    with trio.fail_after(BUDGET):
        async with websocket_proxy(idle_blackhole=0.3) as proxy:
            async with websocket_through(proxy) as ws:
                conn = await proxy.wait_for_connection()
                end = trio.current_time() + 1.0
                while trio.current_time() < end:
                    with trio.fail_after(0.5):
                        await ws.ping()
                    await trio.sleep(0.1)
                assert not conn.blackholed
                await ws.send_message("still here")
                with trio.fail_after(0.5):
                    assert await ws.get_message() == "still here"


async def test_silent_websocket_is_blackholed_and_its_ping_times_out() -> None:
    with trio.fail_after(BUDGET):
        async with websocket_proxy(idle_blackhole=0.3) as proxy:
            async with websocket_through(proxy) as ws:
                conn = await proxy.wait_for_connection()
                with trio.fail_after(0.5):
                    await ws.ping()  # alive at first
                await wait_blackholed(conn)
                with pytest.raises(trio.TooSlowError):
                    with trio.fail_after(0.5):
                        await ws.ping()
                assert conn.open
                assert conn.discarded_up > 0  # the ping went in and vanished


async def test_websocket_framing_survives_one_byte_writes() -> None:
    with trio.fail_after(BUDGET):
        async with websocket_proxy(slice_to=1) as proxy:
            async with websocket_through(proxy) as ws:
                for message in ("hello", "x" * 300, b"\x00\x01" * 100):
                    await ws.send_message(message)
                    assert await ws.get_message() == message
                conn = proxy.connections[0]
                assert conn.writes_up == conn.bytes_up
                assert conn.writes_down == conn.bytes_down


# -- reset, close_after, slice, latency, stop_reading ----------------------------------------------


async def test_reset_gives_both_peers_a_connection_reset() -> None:
    with trio.fail_after(BUDGET):
        async with proxied() as (proxy, target):
            client, server, conn = await connect(proxy, target)
            async with client, server:
                await client.send_all(b"hi")
                assert await receive_exactly(server, 2) == b"hi"
                proxy.reset()
                await conn.wait_closed()
                assert conn.close_reason == "reset()"
                for stream in (client, server):
                    data, exc = await read_until_end(stream)
                    assert data == b""
                    assert isinstance(exc, trio.BrokenResourceError)
                    assert isinstance(exc.__cause__, ConnectionResetError)


async def test_close_after_delivers_exactly_n_bytes_then_a_fin() -> None:
    with trio.fail_after(BUDGET):
        async with proxied(close_after=10) as (proxy, target):
            client, server, conn = await connect(proxy, target)
            async with client, server:
                await server.send_all(b"0123456789abcdefghijklmno")
                assert await read_until_end(client) == (b"0123456789", None)
                await conn.wait_closed()
                assert conn.close_reason == "close_after: 10 bytes down"
                assert conn.bytes_down == 10


async def test_close_after_at_run_time_counts_from_now_and_can_reset() -> None:
    with trio.fail_after(BUDGET):
        async with proxied() as (proxy, target):
            client, server, conn = await connect(proxy, target)
            async with client, server:
                await client.send_all(b"before")
                assert await receive_exactly(server, 6) == b"before"
                proxy.close_after(3, "up", reset=True)
                await client.send_all(b"abcdefgh")
                await conn.wait_closed()
                assert conn.close_reason == "close_after: 9 bytes up"
                assert conn.bytes_up == 9
                data, exc = await read_until_end(server)
                assert b"abc".startswith(data)  # a RST may discard what was not read yet
                assert isinstance(exc, trio.BrokenResourceError)
                _, exc = await read_until_end(client)
                assert isinstance(exc, trio.BrokenResourceError)


async def test_slice_to_delivers_in_small_writes() -> None:
    payload = os.urandom(1000)
    with trio.fail_after(BUDGET):
        async with proxied() as (proxy, target):
            proxy.slice_to(7, "up")
            client, server, conn = await connect(proxy, target)
            async with client, server:
                await client.send_all(payload)
                assert await receive_exactly(server, 1000) == payload
                assert conn.writes_up >= 143  # ceil(1000 / 7)
                await server.send_all(payload)
                assert await receive_exactly(client, 1000) == payload
                assert conn.writes_down < conn.writes_up  # the other direction is not sliced


async def test_latency_delays_each_chunk_and_keeps_order() -> None:
    with trio.fail_after(BUDGET):
        async with proxied(latency=0.1) as (proxy, target):
            proxy.set_latency(0.15, "down")
            client, server, conn = await connect(proxy, target)
            async with client, server:
                sent = trio.current_time()
                await client.send_all(b"up")
                assert await receive_exactly(server, 2) == b"up"
                assert trio.current_time() - sent >= 0.1

                sent = trio.current_time()
                await server.send_all(b"down")
                assert await receive_exactly(client, 4) == b"down"
                assert trio.current_time() - sent >= 0.15

                # Order holds even when the latency drops while chunks are in flight.
                messages = [f"m{i:02d};".encode() for i in range(20)]
                for i, message in enumerate(messages):
                    if i == 10:
                        conn.set_latency(0.0, "up")
                    await client.send_all(message)
                    await trio.sleep(0.005)
                assert await receive_exactly(server, 80) == b"".join(messages)


async def test_stop_reading_backs_up_the_client_until_resumed() -> None:
    with trio.fail_after(BUDGET):
        async with proxied() as (proxy, target):
            client, server, conn = await connect(proxy, target)
            async with client, server:
                proxy.stop_reading()
                await client.send_all(b"held")
                await assert_nothing_arrives(server, 0.2)
                assert conn.bytes_up == 0
                proxy.resume_reading()
                assert await receive_exactly(server, 4) == b"held"

                # Stopped again, a large send cannot complete: the client's writes back up, and
                # nothing reaches a target that reads everything it is given.
                conn.stop_reading("client")
                received = 0

                async def drain() -> None:
                    nonlocal received
                    while chunk := await server.receive_some():
                        received += len(chunk)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(drain)
                    with trio.move_on_after(0.4) as blocked:
                        await client.send_all(bytes(32 * 1024 * 1024))
                    assert blocked.cancelled_caught
                    assert received == 0
                    nursery.cancel_scope.cancel()


# -- lifecycle -------------------------------------------------------------------------------------


async def test_unreachable_target_resets_the_client() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            proxy = FaultProxy("127.0.0.1", dead_port)
            port = await nursery.start(proxy.serve)
            async with await trio.open_tcp_stream("127.0.0.1", port) as client:
                data, _ = await read_until_end(client)
                assert data == b""
            conn = await proxy.wait_for_connection()
            await conn.wait_closed()
            assert conn.close_reason is not None
            assert conn.close_reason.startswith("connect to target failed")
            nursery.cancel_scope.cancel()


async def test_stopping_the_proxy_closes_every_connection() -> None:
    target = Target(echo=True)
    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as outer:
            target_port = await outer.start(target.serve)
            async with trio.open_nursery() as nursery:
                proxy = FaultProxy.for_url(f"ws://127.0.0.1:{target_port}/v1/realtime")
                port = await nursery.start(proxy.serve)
                assert proxy.rewrite_url("ws://user@example.com:9/v1/realtime?model=m") == (
                    f"ws://user@127.0.0.1:{port}/v1/realtime?model=m"
                )
                clients = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
                for client in clients:
                    await client.send_all(b"ok")
                    assert await receive_exactly(client, 2) == b"ok"
                assert len(proxy.live) == 3
                nursery.cancel_scope.cancel()
            assert proxy.live == []
            assert [conn.close_reason for conn in proxy.connections] == ["proxy stopped"] * 3
            for client in clients:
                async with client:
                    assert await read_until_end(client) == (b"", None)
            outer.cancel_scope.cancel()


def test_knobs_are_validated() -> None:
    with pytest.raises(ValueError):
        FaultProxy("127.0.0.1", 1, idle_blackhole=-1)
    with pytest.raises(ValueError):
        FaultProxy("127.0.0.1", 1, slice_to=0)
    proxy = FaultProxy("127.0.0.1", 1)
    with pytest.raises(ValueError):
        proxy.set_latency(float("nan"))
    with pytest.raises(ValueError):
        proxy.close_after(5, "sideways")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        proxy.rewrite_url("ws://127.0.0.1:1/")
