"""The provider socket's per-message fast paths (``voxbridge.upstream.fastpaths``), ws and wss.

Three things, each shown against the library in the same test:

* **Each fast path is there.** Scheduler passes are counted with a trio ``Instrument`` (a task's
  steps): trio-websocket's own ``WebSocketConnection`` and the fast class run the same exchange
  over the same kind of stream, and the difference must be exactly what the fast path removes --
  one pass per message handed to ``get_message``, one per send (the send lock), and over TLS one
  per transport read and write (``SSLStream``'s inner locks). Without a fast path its test fails.
* **Behaviour is the library's.** Close handshakes from either side, pings and pongs, the paused
  reader of a full queue (no pongs until the queue drains), fragmented and oversized messages,
  concurrent senders, cancelled sends to a peer that stopped reading, and the closing races of
  docs/library-notes.md are run under both classes, over ``ws`` and ``wss``, with the same
  expected result written once for both.
* **wss end to end.** ``voxbridge serve`` (hypercorn, port 0) bridges a simulated caller to the
  OpenAI Realtime fake served over TLS on 127.0.0.1 (certificates from ``trustme``, trusted the way
  an operator trusts a private CA: ``SSL_CERT_FILE``), and a real TLS socket to a peer that stops
  reading still lets a deadline end a send.

In memory on the autojump clock unless the test says loopback; the peer is either trio-websocket's
server or a raw wsproto one when the test needs the exact bytes on the wire (a burst in one write).
"""

from __future__ import annotations

import collections
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trustme
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    wrap_server_stream,
)
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from voxbridge.audio import tone
from voxbridge.providers.endpoint import ProviderEndpoint
from voxbridge.server import serve
from voxbridge.settings import Settings
from voxbridge.testing import FakeOpenAIRealtime, FaultStream, simulate_call
from voxbridge.upstream import Upstream
from voxbridge.upstream import connection as upstream_connection
from voxbridge.upstream.fastpaths import (
    WEBSOCKET_CONNECTION,
    DirectLock,
    FastWebSocketConnection,
    direct_tls_locks,
    websocket_class,
)

HOST = "provider.test"
CA = trustme.CA()
CERT = CA.issue_cert(HOST, "127.0.0.1")

#: The two implementations every behaviour test runs under: (class, TLS locks made direct).
KINDS = {
    "library": (WebSocketConnection, False),
    "fast": (FastWebSocketConnection, True),
}
LEGS = ("ws", "wss")

StreamPair = Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]]


def server_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    CERT.configure_cert(context)
    return context


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    CA.configure_trust(context)
    return context


class Steps(trio.abc.Instrument):
    """Scheduler passes (task steps) per task name while installed."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.counts[task.name] += 1


@asynccontextmanager
async def counting_steps() -> AsyncIterator[Steps]:
    steps = Steps()
    trio.lowlevel.add_instrument(steps)
    try:
        yield steps
    finally:
        trio.lowlevel.remove_instrument(steps)


class RawPeer:
    """The provider end written with wsproto directly: what it writes goes out in one write."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.SERVER)

    async def accept(self) -> None:
        while not any(isinstance(event, Request) for event in await self.read()):
            pass
        await self.stream.send_all(self.ws.send(AcceptConnection()))

    async def write(self, *events: Event) -> None:
        await self.stream.send_all(b"".join(self.ws.send(event) for event in events))

    async def read(self) -> list[Event]:
        data = await self.stream.receive_some()
        self.ws.receive_data(data if data else None)
        return list(self.ws.events())


async def open_client(
    nursery: trio.Nursery,
    kind: str,
    leg: str,
    *,
    pair: StreamPair = trio.testing.memory_stream_pair,
    queue: int = 64,
    max_size: int = 1024 * 1024,
) -> tuple[WebSocketConnection, trio.abc.Stream]:
    """A client connection of ``kind`` over ``leg``, its reader in ``nursery``, before the
    handshake; and the provider's end of the byte stream (TLS already on it for ``wss``)."""
    cls, direct = KINDS[kind]
    client, server = pair()
    if leg == "wss":
        client = trio.SSLStream(client, client_context(), server_hostname=HOST)
        server = trio.SSLStream(server, server_context(), server_side=True)
        if direct:
            assert direct_tls_locks(client)
    ws = cls(
        client,
        WSConnection(ConnectionType.CLIENT),
        host=HOST,
        path="/v1/realtime",
        message_queue_size=queue,
        max_message_size=max_size,
    )
    nursery.start_soon(ws._reader_task, name="reader")
    return ws, server


async def open_with_raw_peer(
    nursery: trio.Nursery, kind: str, leg: str, **options: Any
) -> tuple[WebSocketConnection, RawPeer]:
    ws, server = await open_client(nursery, kind, leg, **options)
    peer = RawPeer(server)
    await peer.accept()
    await ws._open_handshake.wait()
    return ws, peer


async def open_with_library_peer(
    nursery: trio.Nursery, kind: str, leg: str, **options: Any
) -> tuple[WebSocketConnection, WebSocketConnection]:
    ws, server = await open_client(nursery, kind, leg, **options)
    request = await wrap_server_stream(nursery, server)
    peer = await request.accept()
    await ws._open_handshake.wait()
    return ws, peer


# --- the fast paths are there ---------------------------------------------------------------------


def test_the_provider_leg_builds_the_fast_class() -> None:
    # the layout check passes on the pinned trio-websocket, and Upstream uses what it chose
    assert WEBSOCKET_CONNECTION is FastWebSocketConnection
    assert upstream_connection.WEBSOCKET_CONNECTION is FastWebSocketConnection


def test_a_changed_library_layout_turns_the_fast_paths_off(monkeypatch, caplog) -> None:
    async def _send(self: object, event: Event, extra: object) -> None: ...  # pragma: no cover

    monkeypatch.setattr(WebSocketConnection, "_send", _send)
    with caplog.at_level(logging.WARNING, logger="voxbridge.upstream"):
        assert websocket_class() is WebSocketConnection
    assert "fast paths are NOT installed" in caplog.text


@pytest.mark.parametrize("leg", LEGS)
async def test_a_burst_is_queued_without_a_scheduler_pass_per_message(autojump_clock, leg):
    # Ten messages in one write, read in one receive_some: the library's reader yields once per
    # message it hands to get_message; the fast reader queues all ten and reads on.
    passes = {}
    for kind in KINDS:
        async with trio.open_nursery() as nursery:
            ws, peer = await open_with_raw_peer(nursery, kind, leg)
            await trio.testing.wait_all_tasks_blocked()
            async with counting_steps() as steps:
                await peer.write(*(TextMessage(f"m{i}") for i in range(10)))
                await trio.testing.wait_all_tasks_blocked()
            assert ws._recv_channel.statistics().current_buffer_used == 10
            assert [await ws.get_message() for _ in range(10)] == [f"m{i}" for i in range(10)]
            passes[kind] = steps.counts["reader"]
            nursery.cancel_scope.cancel()
    saved_by_tls_locks = 1 if leg == "wss" else 0  # the one transport read, under SSLStream's lock
    assert passes["library"] - passes["fast"] == 10 + saved_by_tls_locks


@pytest.mark.parametrize("leg", LEGS)
async def test_a_send_takes_a_scheduler_pass_fewer(autojump_clock, leg):
    # The library takes the send lock with a checkpoint even when it is free, then writes (another
    # checkpoint); over TLS, SSLStream takes its inner send lock the same way before the transport
    # write. The fast class skips the first; direct TLS locks skip the second.
    passes = {}
    for kind in KINDS:
        async with trio.open_nursery() as nursery:
            ws, peer = await open_with_library_peer(nursery, kind, leg)
            await trio.testing.wait_all_tasks_blocked()
            async with counting_steps() as steps:
                for i in range(10):
                    await ws.send_message(f"m{i}")
            assert [await peer.get_message() for _ in range(10)] == [f"m{i}" for i in range(10)]
            passes[kind] = steps.counts[trio.lowlevel.current_task().name]
            nursery.cancel_scope.cancel()
    per_send = 2 if leg == "wss" else 1
    assert passes["library"] - passes["fast"] == 10 * per_send


async def test_tls_reads_take_a_scheduler_pass_fewer(autojump_clock):
    # Only the SSLStream's inner locks differ here (the same fast class on both sides): three
    # messages, each in its own write, so the reader reads the transport three times.
    passes = {}
    for direct in (False, True):
        async with trio.open_nursery() as nursery:
            client, server = trio.testing.memory_stream_pair()
            tls = trio.SSLStream(client, client_context(), server_hostname=HOST)
            if direct:
                direct_tls_locks(tls)
            ws = FastWebSocketConnection(
                tls, WSConnection(ConnectionType.CLIENT), host=HOST, path="/", message_queue_size=8
            )
            nursery.start_soon(ws._reader_task, name="reader")
            peer = RawPeer(trio.SSLStream(server, server_context(), server_side=True))
            await peer.accept()
            await ws._open_handshake.wait()
            await trio.testing.wait_all_tasks_blocked()
            async with counting_steps() as steps:
                for i in range(3):
                    await peer.write(TextMessage(f"m{i}"))
                    await trio.testing.wait_all_tasks_blocked()
            assert [await ws.get_message() for _ in range(3)] == ["m0", "m1", "m2"]
            passes[direct] = steps.counts["reader"]
            nursery.cancel_scope.cancel()
    assert passes[False] - passes[True] == 3


async def test_wss_upstreams_get_both_fast_paths(autojump_clock, monkeypatch, tmp_path):
    # Upstream.open over wss, as production: the default context trusts the test CA through
    # SSL_CERT_FILE, as an operator's private CA would be trusted.
    trust_the_test_ca(monkeypatch, tmp_path)
    endpoint = ProviderEndpoint("openai", f"wss://{HOST}/v1/realtime")
    async with trio.open_nursery() as nursery:
        client, server = trio.testing.memory_stream_pair()

        async def provider() -> None:
            request = await wrap_server_stream(
                nursery, trio.SSLStream(server, server_context(), server_side=True)
            )
            ws = await request.accept()
            await ws.send_message(await ws.get_message())  # one echo, then wait for our close
            with pytest.raises(ConnectionClosed):
                await ws.get_message()
            closes.append(ws.closed)

        async def connect(host: str, port: int) -> trio.abc.Stream:
            assert (host, port) == (HOST, 443)
            return client

        closes: list[Any] = []
        nursery.start_soon(provider)
        upstream = await Upstream.open(
            nursery, endpoint, connect_stream=connect, live_until=trio.current_time() + 60
        )
        assert type(upstream.ws) is FastWebSocketConnection
        tls = upstream._stream
        assert isinstance(tls, trio.SSLStream)
        assert isinstance(tls._inner_send_lock, DirectLock)
        assert isinstance(tls._inner_recv_lock, DirectLock)
        assert direct_tls_locks(tls)  # idempotent
        await upstream.send('{"type":"ping"}')
        assert await upstream.receive() == '{"type":"ping"}'
        await upstream.aclose(1000, "caller_stop")
        await trio.testing.wait_all_tasks_blocked()
    assert [(reason.code, reason.reason) for reason in closes] == [(1000, "caller_stop")]


def test_a_stream_without_the_expected_locks_is_left_alone(caplog) -> None:
    class Other:
        _inner_send_lock = trio.Lock()  # not the StrictFIFOLock trio 0.35 uses
        _inner_recv_lock = trio.Lock()

    other = Other()
    with caplog.at_level(logging.WARNING, logger="voxbridge.upstream"):
        assert not direct_tls_locks(other)  # type: ignore[arg-type]
    assert type(other._inner_send_lock) is trio.Lock
    assert "TLS fast path is off" in caplog.text


# --- behaviour unchanged: the same expectations for the library and the fast class ----------------


@pytest.mark.parametrize("leg", LEGS)
@pytest.mark.parametrize("kind", KINDS)
async def test_the_close_handshake_we_start(autojump_clock, kind, leg):
    async with trio.open_nursery() as nursery:
        ws, peer = await open_with_library_peer(nursery, kind, leg)
        await ws.send_message("last words")
        assert await peer.get_message() == "last words"
        closed_by_peer = trio.Event()

        async def peer_reads() -> None:
            with pytest.raises(ConnectionClosed) as raised:
                await peer.get_message()
            assert (raised.value.reason.code, raised.value.reason.reason) == (4001, "bye")
            closed_by_peer.set()

        nursery.start_soon(peer_reads)
        started = trio.current_time()
        await ws.aclose(4001, "bye")
        assert trio.current_time() == started  # the reply came at once: nothing waited out
        await closed_by_peer.wait()
        assert ws.closed is not None  # the peer's echo of our close, as the library records it
        assert (ws.closed.code, ws.closed.reason) == (4001, "bye")
        with pytest.raises(ConnectionClosed):
            await ws.send_message("too late")
        with pytest.raises(ConnectionClosed):
            await ws.get_message()


@pytest.mark.parametrize("leg", LEGS)
@pytest.mark.parametrize("kind", KINDS)
async def test_the_close_the_peer_starts_comes_after_its_messages(autojump_clock, kind, leg):
    async with trio.open_nursery() as nursery:
        ws, peer = await open_with_raw_peer(nursery, kind, leg)
        await peer.write(
            TextMessage("one"),
            BytesMessage(b"two"),
            TextMessage("three"),
            CloseConnection(code=4002, reason="done"),
        )
        assert [await ws.get_message() for _ in range(3)] == ["one", b"two", "three"]
        with pytest.raises(ConnectionClosed) as raised:
            await ws.get_message()
        assert (raised.value.reason.code, raised.value.reason.reason) == (4002, "done")
        # our reply to the close went out (wsproto: the peer's close handshake is complete)
        events = await peer.read()
        assert [(type(e), getattr(e, "code", None)) for e in events] == [(CloseConnection, 4002)]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("leg", LEGS)
@pytest.mark.parametrize("kind", KINDS)
async def test_pings_and_pongs_both_ways(autojump_clock, kind, leg):
    async with trio.open_nursery() as nursery:
        ws, peer = await open_with_library_peer(nursery, kind, leg)
        with trio.fail_after(1):
            await ws.ping(b"ours")  # the peer's reader answers
            await peer.ping(b"theirs")  # ours answers
        assert ws._pings == {} and peer._pings == {}
        await ws.aclose()


@pytest.mark.parametrize("leg", LEGS)
@pytest.mark.parametrize("kind", KINDS)
async def test_a_full_queue_pauses_the_reader_and_its_pongs(autojump_clock, kind, leg):
    # docs/library-notes.md, "A paused reader answers no pings": the reader waits in the full
    # channel and reads nothing more -- the ping behind the messages gets no pong until the call
    # takes messages again.
    async with trio.open_nursery() as nursery:
        ws, peer = await open_with_raw_peer(nursery, kind, leg, queue=4)
        await peer.write(*(TextMessage(f"m{i}") for i in range(6)), Ping(b"are you there"))
        with trio.move_on_after(30) as waited:
            await peer.read()
        assert waited.cancelled_caught  # no pong: the reader is paused
        assert ws._recv_channel.statistics().current_buffer_used == 4
        # take one: the paused message goes in, the reader goes on to the next and waits again
        assert await ws.get_message() == "m0"
        with trio.move_on_after(30) as waited:
            await peer.read()
        assert waited.cancelled_caught
        got = [await ws.get_message() for _ in range(5)]
        assert got == ["m1", "m2", "m3", "m4", "m5"]
        with trio.fail_after(1):
            events = await peer.read()
        assert [(type(e), bytes(e.payload)) for e in events] == [(Pong, b"are you there")]  # type: ignore[attr-defined]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("leg", LEGS)
@pytest.mark.parametrize("kind", KINDS)
async def test_fragmented_messages_are_assembled(autojump_clock, kind, leg):
    async with trio.open_nursery() as nursery:
        ws, peer = await open_with_raw_peer(nursery, kind, leg)
        await peer.write(
            TextMessage("fr", message_finished=False),
            TextMessage("ag", message_finished=False),
            TextMessage("ments"),
            BytesMessage(b"\x00\x01", message_finished=False),
            BytesMessage(b"\x02"),
            TextMessage("whole"),
        )
        assert [await ws.get_message() for _ in range(3)] == ["fragments", b"\x00\x01\x02", "whole"]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("leg", LEGS)
@pytest.mark.parametrize("kind", KINDS)
async def test_an_oversized_message_closes_with_1009(autojump_clock, kind, leg):
    async with trio.open_nursery() as nursery:
        ws, peer = await open_with_raw_peer(nursery, kind, leg, max_size=100)
        await peer.write(
            TextMessage("x" * 100),  # at the limit: delivered
            TextMessage("y" * 60, message_finished=False),
            TextMessage("y" * 60),  # 120 in all: too big
        )
        assert await ws.get_message() == "x" * 100
        with pytest.raises(ConnectionClosed) as raised:
            await ws.get_message()
        assert raised.value.reason.code == 1009
        events = await peer.read()
        assert [(type(e), getattr(e, "code", None)) for e in events] == [(CloseConnection, 1009)]
        nursery.cancel_scope.cancel()


class SlowWrites(FaultStream):
    """Every write takes 10 ms, so senders pile up behind the one writing."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.sleep(0.01)
        await super().send_all(data)


@pytest.mark.parametrize("kind", KINDS)
async def test_concurrent_senders_keep_their_order_and_whole_frames(autojump_clock, kind):
    def slow_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
        client, server = trio.testing.memory_stream_pair()
        return SlowWrites(client), server

    async with trio.open_nursery() as nursery:
        ws, peer = await open_with_library_peer(nursery, kind, "ws", pair=slow_pair)
        started = trio.current_time()
        async with trio.open_nursery() as senders:
            for i in range(5):
                senders.start_soon(ws.send_message, f"{i}" * 3000)
                await trio.testing.wait_all_tasks_blocked()  # the i-th sender is in line
        # one after the other, in the order they came, each whole: 5 writes of 10 ms
        assert trio.current_time() - started == pytest.approx(0.05)
        assert [await peer.get_message() for _ in range(5)] == [f"{i}" * 3000 for i in range(5)]
        await ws.aclose()


@pytest.mark.parametrize("leg", LEGS)
@pytest.mark.parametrize("kind", KINDS)
async def test_a_send_to_a_peer_that_stopped_reading_is_cancelled_on_time(
    autojump_clock, kind, leg
):
    # LIBRARY_FACTS 10, docs/library-notes.md "Sends are cancellable": the fast send still waits
    # in the write, where the caller's deadline ends it -- and a sender queued behind it too.
    wires: list[FaultStream] = []

    def blackholed_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
        client, server = trio.testing.memory_stream_pair()
        wires.append(FaultStream(client))
        return wires[-1], server

    async with trio.open_nursery() as nursery:
        ws, _peer = await open_with_raw_peer(nursery, kind, leg, pair=blackholed_pair)
        wires[0].stop_writing()  # from here on nothing we write leaves: the peer's window is 0
        started = trio.current_time()
        with trio.move_on_after(5) as first:
            await ws.send_message("x" * 1000)
        assert first.cancelled_caught and trio.current_time() - started == 5
        assert not ws._stream_lock.locked()  # released on the way out
        if leg == "wss":
            # trio: an SSLStream whose write was cancelled is broken; the library maps it to 1006
            with pytest.raises(ConnectionClosed) as raised:
                await ws.send_message("y")
            assert raised.value.reason.code == 1006 and trio.current_time() - started == 5
            nursery.cancel_scope.cancel()
            return
        ended: list[float] = []

        async def send_within(seconds: float) -> None:
            with trio.move_on_after(seconds):
                await ws.send_message("y")
            ended.append(trio.current_time() - started)

        async with trio.open_nursery() as senders:
            senders.start_soon(send_within, 2)  # takes the lock, blocks in the write
            await trio.testing.wait_all_tasks_blocked()
            senders.start_soon(send_within, 1)  # waits for the lock
        assert ended == [6, 7]
        assert not ws._stream_lock.locked()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("leg", LEGS)
@pytest.mark.parametrize("kind", KINDS)
async def test_a_provider_that_vanishes_mid_send_reads_as_1006(autojump_clock, kind, leg):
    async with trio.open_nursery() as nursery:
        ws, peer = await open_with_raw_peer(nursery, kind, leg)
        await trio.aclose_forcefully(peer.stream)
        with pytest.raises(ConnectionClosed) as raised:
            for _ in range(100):  # the reader may notice first; either way the send fails
                await ws.send_message("hello?")
        assert raised.value.reason.code == 1006
        with pytest.raises(ConnectionClosed):
            await ws.get_message()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("leg", LEGS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("queue", [64, 2])
async def test_messages_after_our_close_are_discarded_and_the_close_completes(
    autojump_clock, kind, leg, queue
):
    # docs/library-notes.md (the queue trap): trio-websocket's aclose closes the queue's receive
    # side, so a reader waiting in a full queue (queue=2) wakes and discards, and what arrives
    # after our close frame is dropped while the reader reads on to the peer's close reply.
    async with trio.open_nursery() as nursery:
        ws, peer = await open_with_raw_peer(nursery, kind, leg, queue=queue)
        await peer.write(*(TextMessage(f"early {i}") for i in range(5)))
        await trio.testing.wait_all_tasks_blocked()
        assert ws._recv_channel.statistics().current_buffer_used == min(queue, 5)

        async def peer_closes_late() -> None:
            while not any(isinstance(e, CloseConnection) for e in await peer.read()):
                pass
            await trio.sleep(0.5)
            # wsproto will not send data once the peer closed: the frames by hand (RFC 6455 5.2)
            late = b"".join(bytes([0x81, 6]) + f"late {i}".encode() for i in (1, 2))
            await peer.stream.send_all(late + peer.ws.send(CloseConnection(code=1000)))

        nursery.start_soon(peer_closes_late)
        started = trio.current_time()
        with trio.fail_after(5):
            await ws.aclose(1000, "caller_stop")
        assert trio.current_time() - started == 0.5  # the reply, not a timeout, ended it
        with pytest.raises(ConnectionClosed):
            await ws.get_message()
        nursery.cancel_scope.cancel()


# --- on loopback: real sockets, real TLS ----------------------------------------------------------


async def serve_over_tls(
    handler: Callable[[trio.abc.Stream], Any], *, task_status: trio.TaskStatus[int]
) -> None:
    """Serve ``handler`` on 127.0.0.1 behind TLS (the test CA's certificate); started: the port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(
        handler, [trio.SSLListener(listener, server_context()) for listener in listeners]
    )


def trust_the_test_ca(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Make ``ssl.create_default_context()`` trust the test CA, as an operator would a private CA."""
    ca_file = tmp_path / "ca.pem"
    CA.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))


async def test_a_call_through_a_wss_provider(monkeypatch, tmp_path):
    # voxbridge serve (hypercorn, port 0) -> wss:// OpenAI Realtime fake on 127.0.0.1: the caller's
    # second of audio is echoed back byte for byte, pings every 0.2 s are answered over TLS (one
    # session: none was lost), and the close handshake reaches the fake.
    trust_the_test_ca(monkeypatch, tmp_path)
    installed: list[bool] = []

    def spy(stream: trio.SSLStream[Any]) -> bool:
        installed.append(direct_tls_locks(stream))
        return installed[-1]

    monkeypatch.setattr(upstream_connection, "direct_tls_locks", spy)
    fake = FakeOpenAIRealtime(echo_delay=0.05)
    stop = trio.Event()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_over_tls, fake.handle_stream)
            settings = Settings(
                port=0,
                provider="openai",
                provider_url=f"wss://127.0.0.1:{port}/v1/realtime",
                keepalive_interval=0.2,
                pong_timeout=1.0,
            )
            server = await nursery.start(
                lambda task_status: serve(
                    settings, shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            result = await simulate_call(server.media_url, seconds=1.0)
            await server.app.registry.wait_empty()
            record = server.app.registry.recent[-1]
            stop.set()
            nursery.cancel_scope.cancel()
    assert (result.close_code, result.close_reason) == (1000, "caller_stop")
    assert installed == [True]
    assert len(fake.sessions) == 1
    session = fake.sessions[0]
    assert (session.close_code, session.close_reason) == (1000, "caller_stop")
    assert result.frames_sent == 50 == record.frames_from_caller
    assert session.audio_in > 40
    back = bytes(result.audio_received)
    assert len(back) > 4000 and back == tone(1.0)[: len(back)]
    assert result.frames_received == record.frames_to_caller > 0


async def closing(stream: trio.abc.Stream, task: Callable[[], Any]) -> None:
    """Run ``task`` (a connection's reader); close ``stream`` however it ends."""
    try:
        await task()
    finally:
        await trio.aclose_forcefully(stream)


@pytest.mark.parametrize("leg", LEGS)
@pytest.mark.parametrize("kind", KINDS)
async def test_a_send_to_a_loopback_peer_that_stopped_reading_ends_on_its_deadline(kind, leg):
    # Real sockets with small buffers: once the kernel's buffers are full, the write waits for a
    # window that never opens, and the deadline around the send ends it.
    cls, direct = KINDS[kind]
    accepted = trio.Event()

    async def peer(stream: trio.abc.Stream) -> None:
        async with stream, trio.open_nursery() as nursery:
            request = await wrap_server_stream(nursery, stream)
            await request.accept()
            accepted.set()
            await trio.sleep_forever()  # reads nothing: the socket's window closes

    async def plain_server(*, task_status: trio.TaskStatus[int]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(peer, listeners)

    async def small_buffers(stream: trio.abc.Stream) -> None:
        raw = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        assert isinstance(raw, trio.SocketStream)
        raw.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
        await peer(stream)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            if leg == "wss":
                port = await nursery.start(serve_over_tls, small_buffers)
            else:
                port = await nursery.start(plain_server)
            stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
            stream.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_SNDBUF, 4096)
            if leg == "wss":
                stream = trio.SSLStream(stream, client_context(), server_hostname="127.0.0.1")
                if direct:
                    assert direct_tls_locks(stream)
            ws = cls(stream, WSConnection(ConnectionType.CLIENT), host=HOST, path="/")
            nursery.start_soon(closing, stream, ws._reader_task)
            await ws._open_handshake.wait()
            await accepted.wait()
            sent = 0
            progress: list[int] = []
            ended: list[tuple[bool, float]] = []

            async def sender() -> None:
                nonlocal sent
                with trio.move_on_after(2.0) as bound:
                    while True:
                        await ws.send_message(b"x" * 16384)
                        sent += 1
                ended.append((bound.cancelled_caught, trio.current_time() - started))

            started = trio.current_time()
            async with trio.open_nursery() as senders:
                senders.start_soon(sender)
                await trio.sleep(1.0)
                progress.append(sent)
                await trio.sleep(0.5)
                progress.append(sent)
            nursery.cancel_scope.cancel()
    assert progress[0] == progress[1]  # stalled for the last half second: the window is closed
    assert ended[0][0] and 2.0 <= ended[0][1] < 2.5  # and the deadline ended the blocked send
