"""hypercorn's per-message fast paths (``voxbridge.server.fastpaths``, docs/library-notes.md).

Each behaviour test runs against ``FastTCPServer`` and against ``ContainedTCPServer`` (hypercorn's
paths with voxbridge's containment, what ran before): same bytes, same events, same bounds. The
tests that fail if a fast path is removed count what the fast path saves: the yields of a send
(a trio instrument counting the task's steps), the ``fail_after`` scopes of the read loop, the
yield of a put into the app queue. Real sockets on 127.0.0.1; deadlines under the autojump clock.
End to end: a real call through hypercorn on port 0, over plain TCP and over TLS (``trustme``),
with the fast paths taken on plain TCP and standing aside over TLS.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from types import SimpleNamespace
from typing import Any

import hypercorn.trio.run
import pytest
import trio
import trio.testing
import trustme
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.worker_context import WorkerContext
from test_e2e_fuzz import read_for, request, upgrade_headers, ws_key
from test_e2e_server import disconnects, running, scrape, wait_until
from wsproto.frame_protocol import FrameProtocol

from voxbridge.server import VoxbridgeApp
from voxbridge.server import fastpaths as fastpaths_module
from voxbridge.server.containment import ContainedTCPServer, ReleasingTaskGroup, install
from voxbridge.server.fastpaths import MAX_RECV, FastTCPServer
from voxbridge.settings import Settings
from voxbridge.testing import FakeEchoAgent
from voxbridge.testing.carrier import CarrierSimulator

SEND_TIMEOUT = 2.0
SERVERS = [FastTCPServer, ContainedTCPServer]
CA = trustme.CA()
HOST = "localhost"


# ----------------------------------------------------------------------------------- helpers


class Recorder:
    """Stands in for hypercorn's protocol: records what the server hands it."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.closed = trio.Event()

    async def handle(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, Closed):
            self.closed.set()

    @property
    def data(self) -> bytes:
        return b"".join(e.data for e in self.events if isinstance(e, RawData))


class StepCounter(trio.abc.Instrument):
    """How many times ``task`` was scheduled: a coroutine that never yields adds none."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def yields_of(call: Callable[[], Awaitable[object]]) -> int:
    counter = StepCounter(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(counter)
    try:
        await call()
    finally:
        trio.lowlevel.remove_instrument(counter)
    return counter.steps


@asynccontextmanager
async def tcp_pair(
    *, sndbuf: int | None = None, rcvbuf: int | None = None
) -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    """(server side, client side) of one loopback TCP connection; small buffers if asked."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    sock = trio.socket.socket()
    if rcvbuf is not None:  # before connecting, so the window is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect(("127.0.0.1", port))
    client = trio.SocketStream(sock)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    if sndbuf is not None:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    try:
        yield server, client
    finally:
        await trio.aclose_forcefully(server)
        await trio.aclose_forcefully(client)


def make_server(
    cls: type[ContainedTCPServer], stream: trio.abc.Stream, *, read_timeout: float | None = None
) -> tuple[ContainedTCPServer, Recorder]:
    config = Config()
    config.read_timeout = read_timeout
    settings = SimpleNamespace(send_timeout=SEND_TIMEOUT)
    app = SimpleNamespace(app=SimpleNamespace(settings=settings))  # what _write_timeout reads
    server = cls(app, config, WorkerContext(None), {}, stream)  # type: ignore[arg-type]
    recorder = Recorder()
    server.protocol = recorder  # type: ignore[assignment]
    return server, recorder


async def read_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some()
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return data


async def read_until_eof(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    try:
        while chunk := await stream.receive_some():
            data += chunk
    except trio.BrokenResourceError:
        pass
    return data


# ------------------------------------------------------------------------------------- sends


@pytest.mark.parametrize(("cls", "yields"), [(FastTCPServer, 0), (ContainedTCPServer, 2)])
async def test_a_send_with_the_lock_free_is_one_write_without_a_yield(
    cls: type[ContainedTCPServer], yields: int
) -> None:
    """hypercorn's send yields twice (taking the lock, then ``send_all``); the fast one not at
    all. Fails if the fast path is removed: the count would be 2."""
    frames = [bytes([65 + i]) * (100 + i) for i in range(20)]
    async with tcp_pair() as (server_stream, client):
        server, recorder = make_server(cls, server_stream)
        counts = [await yields_of(partial(server.protocol_send, RawData(f))) for f in frames]
        received = await read_exactly(client, sum(map(len, frames)))
    assert counts == [yields] * len(frames)
    assert received == b"".join(frames)
    assert recorder.events == []
    assert not server.send_lock.locked()


@pytest.mark.parametrize("cls", SERVERS)
@pytest.mark.parametrize("call_deadline", [None, SEND_TIMEOUT / 4], ids=["alone", "call_deadline"])
async def test_a_send_the_peer_does_not_take_is_bounded_by_send_timeout(
    cls: type[ContainedTCPServer],
    call_deadline: float | None,
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A zero receive window: the kernel takes part of the frame at once, the rest waits under
    the shielded scope until ``send_timeout``; then the stream is closed (and the protocol told).
    What reached the peer is a prefix of the frame. A call whose own deadline passes during the
    write does not cut it short (half a frame would go out): its cancellation arrives once the
    write's bound has closed the stream."""
    frame = bytes(range(256)) * (16 * 1024)  # 4 MiB: far more than the buffers hold
    async with tcp_pair(sndbuf=16 * 1024, rcvbuf=16 * 1024) as (server_stream, client):
        server, recorder = make_server(cls, server_stream)
        start = trio.current_time()
        with trio.CancelScope() as call:
            if call_deadline is not None:
                call.deadline = start + call_deadline
            await server.protocol_send(RawData(frame))
        elapsed = trio.current_time() - start
        received = await read_until_eof(client)
        closed = server_stream.socket.fileno() == -1
    assert elapsed == pytest.approx(SEND_TIMEOUT)
    assert closed
    assert call.cancelled_caught is (call_deadline is not None)
    if call_deadline is None:
        assert recorder.events == [Closed()]
    assert 0 < len(received) < len(frame)
    assert frame.startswith(received)
    assert not server.send_lock.locked()


async def test_sends_queue_behind_a_write_under_way() -> None:
    """A frame sent while another is still being written (the lock is held) waits its turn:
    the peer gets both whole, in order. Without the lock check the second frame's bytes would
    land in the middle of the first."""
    first = b"A" * (4 * 1024 * 1024)
    second = b"B" * 300
    with trio.fail_after(10):
        async with tcp_pair(sndbuf=16 * 1024, rcvbuf=16 * 1024) as (server_stream, client):
            server, recorder = make_server(FastTCPServer, server_stream)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.protocol_send, RawData(first))
                await trio.testing.wait_all_tasks_blocked()
                assert server.send_lock.locked()  # the first frame is part-written, waiting
                nursery.start_soon(server.protocol_send, RawData(second))
                await trio.testing.wait_all_tasks_blocked()
                received = await read_exactly(client, len(first) + len(second))
    assert received == first + second
    assert recorder.events == []


@pytest.mark.parametrize("cls", SERVERS)
async def test_a_cancelled_send_raises_and_writes_nothing(cls: type[ContainedTCPServer]) -> None:
    async with tcp_pair() as (server_stream, client):
        server, recorder = make_server(cls, server_stream)
        with trio.CancelScope() as scope:
            scope.cancel()
            await server.protocol_send(RawData(b"not this"))
            pytest.fail("the send did not raise Cancelled")  # pragma: no cover
        await server.protocol_send(RawData(b"this"))
        received = await read_exactly(client, 4)
    assert scope.cancelled_caught
    assert received == b"this"
    assert recorder.events == []


@pytest.mark.parametrize("cls", SERVERS)
@pytest.mark.parametrize("how", ["eof_sent", "closed", "reset"])
async def test_a_send_on_a_connection_that_is_gone_reports_closed(
    cls: type[ContainedTCPServer], how: str
) -> None:
    """After hypercorn sent EOF, after the stream was closed, or once the peer reset: no error,
    the protocol hears ``Closed()`` (the reset is noticed on the write after the RST came)."""
    with trio.fail_after(10):
        async with tcp_pair() as (server_stream, client):
            server, recorder = make_server(cls, server_stream)
            if how == "eof_sent":
                await server_stream.send_eof()
            elif how == "closed":
                await server_stream.aclose()
            else:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                await client.aclose()
            for _ in range(3):
                await server.protocol_send(RawData(b"x" * 100))
                if recorder.events:
                    break
                await trio.sleep(0.05)  # the RST is on its way
    assert recorder.events[:1] == [Closed()]


# ------------------------------------------------------------------------------------- reads


class FailAfterCounter:
    """``trio.fail_after``, counting its uses."""

    def __init__(self) -> None:
        self.calls = 0
        self.real = trio.fail_after

    def __call__(self, seconds: float) -> Any:
        self.calls += 1
        return self.real(seconds)


@pytest.mark.parametrize(("cls", "scopes_per_read"), [(FastTCPServer, 0), (ContainedTCPServer, 1)])
async def test_the_read_loop_hands_over_every_byte_then_closed(
    cls: type[ContainedTCPServer], scopes_per_read: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same events both ways: the bytes in order, ``b""`` at end of stream, then ``Closed()``.
    hypercorn opens ``fail_after(inf)`` around every read; the fast loop none (no
    ``read_timeout``). Fails if the fast path is removed: the scope count would be one per read."""
    scopes = FailAfterCounter()
    sent = [bytes([48 + i % 10]) * 200 for i in range(30)]
    with trio.fail_after(10):
        async with tcp_pair() as (server_stream, client):
            server, recorder = make_server(cls, server_stream)
            monkeypatch.setattr(trio, "fail_after", scopes)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server._read_data)
                for chunk in sent:
                    await client.send_all(chunk)
                    await trio.sleep(0.002)  # one message per read, as a caller's 20 ms frames
                await client.send_eof()
                await recorder.closed.wait()
    assert recorder.data == b"".join(sent)
    reads = [e for e in recorder.events if isinstance(e, RawData)]
    assert reads[-1] == RawData(b"") and recorder.events[-1] == Closed()
    assert all(len(e.data) <= MAX_RECV for e in reads)
    assert scopes.calls == scopes_per_read * len(reads)


async def test_the_fast_read_never_finds_the_socket_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast loop waits until the socket is readable and reads it once: no read returns
    ``EAGAIN`` (hypercorn's ``receive_some`` tries ``recv`` first, and on a drained socket that
    fails every time)."""
    results: list[str] = []
    real_read = os.read

    def spy(fd: int, size: int) -> bytes:
        try:
            data = real_read(fd, size)
        except BlockingIOError:
            results.append("EAGAIN")
            raise
        results.append("data" if data else "eof")
        return data

    monkeypatch.setattr(fastpaths_module.os, "read", spy)
    with trio.fail_after(10):
        async with tcp_pair() as (server_stream, client):
            server, recorder = make_server(FastTCPServer, server_stream)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server._read_data)
                for _ in range(20):
                    await client.send_all(b"m" * 300)
                    await trio.sleep(0.002)
                await client.send_eof()
                await recorder.closed.wait()
    assert results.count("EAGAIN") == 0
    assert results[-1] == "eof"
    assert recorder.data == b"m" * 300 * 20


@pytest.mark.parametrize("cls", SERVERS)
async def test_a_configured_read_timeout_still_ends_the_read_loop(
    cls: type[ContainedTCPServer], autojump_clock: trio.testing.MockClock
) -> None:
    async with tcp_pair() as (server_stream, client):
        server, recorder = make_server(cls, server_stream, read_timeout=7.0)
        await client.send_all(b"hello")
        start = trio.current_time()
        await server._read_data()
        elapsed = trio.current_time() - start
    assert elapsed == pytest.approx(7.0)
    assert recorder.events == [RawData(b"hello"), Closed()]


@pytest.mark.parametrize("cls", SERVERS)
async def test_a_close_from_another_task_ends_the_read_loop(cls: type[ContainedTCPServer]) -> None:
    """hypercorn closes the stream from its idle timer or its ``_close``; the waiting reader
    wakes (trio's ``notify_closing``) and the loop ends with ``Closed()``."""
    with trio.fail_after(10):
        async with tcp_pair() as (server_stream, _client):
            server, recorder = make_server(cls, server_stream)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server._read_data)
                await trio.testing.wait_all_tasks_blocked()
                await server_stream.aclose()
                await recorder.closed.wait()
    assert recorder.events == [Closed()]


# --------------------------------------------------------------------------------- app queue


@asynccontextmanager
async def app_queue(
    group_class: type[TaskGroup], app_started: trio.Event, app_may_receive: trio.Event
) -> AsyncIterator[tuple[Callable[[Any], Awaitable[None]], list[Any], trio.Event]]:
    """``spawn_app`` with an app that receives only once allowed, and returns after 12."""
    received: list[Any] = []
    finished = trio.Event()

    async def app(scope: Any, receive: Any, send: Any, sync_spawn: Any, call_soon: Any) -> None:
        app_started.set()
        await app_may_receive.wait()
        for _ in range(12):
            received.append(await receive())
        finished.set()

    async def send(message: Any) -> None:
        pass

    async with group_class() as group:
        put = await group.spawn_app(app, Config(), {}, send)  # type: ignore[arg-type]
        await app_started.wait()
        yield put, received, finished


@pytest.mark.parametrize(("group_class", "yields"), [(ReleasingTaskGroup, 0), (TaskGroup, 1)])
async def test_a_message_for_an_app_with_room_is_queued_without_a_yield(
    group_class: type[TaskGroup], yields: int
) -> None:
    """hypercorn's put is ``channel.send``: a yield per message even with room. Fails if the
    fast path is removed (the count would be 1). A full queue still makes the reader wait
    (the queue trap's fix needs that wait to end when the app returns: test_e2e_carrier_release)."""
    messages = [{"type": "websocket.receive", "text": str(i)} for i in range(12)]
    may_receive = trio.Event()
    with trio.fail_after(10):
        async with app_queue(group_class, trio.Event(), may_receive) as (put, received, finished):
            counts = [await yields_of(partial(put, m)) for m in messages[:10]]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(put, messages[10])  # the queue holds 10: this one waits
                await trio.testing.wait_all_tasks_blocked()
                assert received == []
                may_receive.set()
            await put(messages[11])
            await finished.wait()
    assert counts == [yields] * 10
    assert received == messages


async def test_a_message_for_a_finished_app_is_dropped_quietly() -> None:
    """The queue-trap release still holds with the fast path: once the app returned, a put
    (with room or not) neither raises nor waits."""
    may_receive = trio.Event()
    with trio.fail_after(10):
        async with app_queue(ReleasingTaskGroup, trio.Event(), may_receive) as (
            put,
            received,
            finished,
        ):
            may_receive.set()
            for i in range(12):
                await put({"type": "websocket.receive", "text": str(i)})
            await finished.wait()
            await trio.testing.wait_all_tasks_blocked()
            for i in range(30):
                await put({"type": "websocket.receive", "text": f"late {i}"})
    assert len(received) == 12


# ---------------------------------------------------------------------------- install, layout


def test_install_binds_the_fast_server_over_the_hypercorn_it_was_written_for() -> None:
    assert fastpaths_module.fits() is None
    assert install() is True
    assert hypercorn.trio.run.TCPServer is FastTCPServer
    assert install() is True  # idempotent
    assert hypercorn.trio.run.TCPServer is FastTCPServer


def test_a_changed_read_loop_keeps_hypercorns_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_read_data`` is re-implemented: over a hypercorn whose loop references other names the
    fast paths stand aside, and ``ContainedTCPServer`` alone is bound."""

    async def changed_read_data(self: Any) -> None:
        await self.stream.receive_some(self.config.something_new)

    monkeypatch.setattr(hypercorn.trio.run, "TCPServer", hypercorn.trio.tcp_server.TCPServer)
    monkeypatch.setattr(fastpaths_module._TCPServer, "_read_data", changed_read_data)
    assert fastpaths_module.fits() == "hypercorn's TCPServer._read_data changed"
    assert install() is True
    assert hypercorn.trio.run.TCPServer is ContainedTCPServer


# ------------------------------------------------------------------- early data, end to end


async def test_a_client_that_sends_before_the_101_is_refused_and_its_call_ends_at_once() -> None:
    """A client that pipelines a frame after its upgrade request (RFC 6455 4.1 says wait for the
    101) gets hypercorn's 400, and the app hears ``websocket.disconnect`` at once
    (``NotifyingWSStream``): the call ends ``caller_closed`` in well under ``start_timeout``.
    Without it the app, never told, waited for the carrier's first message until
    ``start_timeout`` (the fast paths make the reader answer before the app runs, every time)."""
    start_timeout = 5.0
    pipelined = FrameProtocol(client=True, extensions=[]).send_data(
        '{"event": "connected"}', fin=True
    )
    with trio.fail_after(20):
        async with running(start_timeout=start_timeout) as (server, _agent):
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            try:
                began = trio.current_time()
                upgrade = request(b"GET", b"/twilio/media", upgrade_headers(ws_key()))
                await stream.send_all(upgrade + pipelined)
                answer = await read_for(stream, 2.0, until=b"\r\n\r\n")
            finally:
                await trio.aclose_forcefully(stream)
            await wait_until(
                lambda: disconnects_now(server).get("caller_closed", 0) == 1, timeout=3
            )
            ended_after = trio.current_time() - began
            samples = await scrape(server)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert ended_after < start_timeout / 2
    assert {reason: n for reason, n in disconnects(samples).items() if n} == {"caller_closed": 1}
    assert samples[("voxbridge_calls_active", ())] == 0


def disconnects_now(server: Any) -> dict[str, float]:
    """``voxbridge_call_disconnects_total`` by reason, read from the app's registry in-process."""
    metric = server.app.metrics.call_disconnects
    return {
        sample.labels["reason"]: sample.value
        for family in metric.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }


# ------------------------------------------------------------------------------ end to end


class PathCounts:
    """Which of FastTCPServer's paths each connection took (wraps the methods)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.raw_sends = 0
        self.slow_sends = 0
        self.readable_reads = 0
        self.stream_reads = 0
        protocol_send = FastTCPServer.protocol_send
        send_locked = ContainedTCPServer._send_locked
        readable = FastTCPServer._receive_readable
        stream = FastTCPServer._receive_stream

        async def counted_send(server: FastTCPServer, event: Event) -> None:
            self.raw_sends += isinstance(event, RawData)
            await protocol_send(server, event)

        async def counted_locked(server: ContainedTCPServer, data: bytes | memoryview) -> None:
            self.slow_sends += 1
            await send_locked(server, data)

        async def counted_readable(server: FastTCPServer) -> bytes:
            self.readable_reads += 1
            return await readable(server)

        async def counted_stream(server: FastTCPServer) -> bytes:
            self.stream_reads += 1
            return await stream(server)

        monkeypatch.setattr(FastTCPServer, "protocol_send", counted_send)
        monkeypatch.setattr(ContainedTCPServer, "_send_locked", counted_locked)
        monkeypatch.setattr(FastTCPServer, "_receive_readable", counted_readable)
        monkeypatch.setattr(FastTCPServer, "_receive_stream", counted_stream)


def server_context() -> tuple[str, str]:
    """A certificate for ``localhost`` from the test CA: (certfile, keyfile) paths."""
    cert = CA.issue_cert(HOST)
    certfile, keyfile = "server.pem", "server.key"  # in the test's own directory (conftest)
    cert.cert_chain_pems[0].write_to_path(certfile)
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(certfile, append=True)
    cert.private_key_pem.write_to_path(keyfile)
    return certfile, keyfile


@asynccontextmanager
async def voxbridge_on_hypercorn(tls: bool) -> AsyncIterator[int]:
    """voxbridge's app on hypercorn's trio worker on 127.0.0.1:0, as ``hypercorn -k trio``
    runs it (TLS with ``certfile``/``keyfile`` when asked); yields the port."""
    agent = FakeEchoAgent(delay=0.05)
    async with trio.open_nursery() as nursery:
        agent_url = await nursery.start(agent.serve)
        settings = Settings(port=0, provider="echo", provider_url=agent_url)
        app = VoxbridgeApp(settings)
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.graceful_timeout = 1.0
        if tls:
            config.certfile, config.keyfile = server_context()
        shutdown = trio.Event()

        async def run_hypercorn(task_status: trio.TaskStatus[list[str]]) -> None:
            await hypercorn_serve(
                app,  # type: ignore[arg-type]
                config,
                shutdown_trigger=shutdown.wait,
                task_status=task_status,
            )
            nursery.cancel_scope.cancel()  # hypercorn is done: stop the fake agent too

        binds = await nursery.start(run_hypercorn)
        assert binds[0].startswith("https://" if tls else "http://")
        yield int(binds[0].rsplit(":", 1)[1])
        shutdown.set()
        nursery.cancel_scope.deadline = trio.current_time() + 10


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_a_real_call_end_to_end(tls: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1.5 s call through hypercorn and voxbridge's app, plain and TLS. On plain TCP every
    write and read took its fast path; over TLS they all stood aside (hypercorn's write under
    the lock and scope; ``SSLStream.receive_some``) and the call is the same."""
    assert install() is True
    counts = PathCounts(monkeypatch)
    with trio.fail_after(30):
        async with voxbridge_on_hypercorn(tls) as port:
            stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
            if tls:
                context = ssl.create_default_context()
                CA.configure_trust(context)
                stream = trio.SSLStream(stream, context, server_hostname=HOST)
            simulator = CarrierSimulator(stream, host=f"{HOST}:{port}", seconds=1.5)
            call = await simulator.run()
    assert call.frames_sent == 75
    assert call.frames_received > 20  # the echo agent's answer, frame by frame
    assert call.marks_echoed > 0
    assert (call.close_code, call.close_reason) == (1000, "caller_stop")
    assert call.protocol_errors == []
    assert counts.raw_sends > call.frames_received
    if tls:
        assert (counts.readable_reads, counts.stream_reads > 0) == (0, True)
        assert counts.slow_sends == counts.raw_sends
    else:
        assert (counts.readable_reads > 0, counts.stream_reads) == (True, 0)
        assert counts.slow_sends == 0  # a reading caller: the kernel took every frame at once
