"""A TCP fault proxy: a real trio proxy on loopback that puts network faults between two peers.

Between a bridge and its provider (or a carrier and the bridge) there is rarely a bare wire: there
is a load balancer, a NAT gateway, a stateful firewall. Each keeps a table of the TCP flows it
forwards, and forgets a flow that has been idle -- no byte in either direction -- for longer than its
idle timeout: 350 s by default on an AWS Network Load Balancer (configurable from 60 s to 6000 s),
4 minutes by default on an Azure Load Balancer. When it forgets the flow it tells neither end: no
FIN, no RST; both sockets stay ESTABLISHED. What happens to the next segment depends on the box. The
NLB answers it with a RST, so whichever end sends first fails then. Azure's default, like many
firewalls and NATs, drops it and every later one in silence: a blackhole. (Azure's optional "TCP
reset on idle" resets both ends at expiry instead.) Into a blackhole a send still succeeds (the bytes
go into the kernel's send buffer), TCP retransmits into the void for about fifteen minutes on Linux
(``tcp_retries2``) before it gives up, and a reader that only waits for data waits all that time --
behind either box, an end that never sends never learns anything. For a bridge that is a call that
stays "up", silent, holding a provider session and a carrier slot. The defence is an
application-level ping with its own deadline, sent more often than the shortest idle timeout on the
path -- and a test that proves it, which is what this proxy is for. It imitates the blackhole, the
harsher case; :meth:`FaultProxy.reset` gives the RST.

:class:`FaultProxy` listens on loopback (port 0: any free port) and forwards each accepted connection
to ``target_host:target_port``, one :class:`ProxiedConnection` record per connection. Its knobs,
settable at construction and at run time, for every live connection and every later one:

* ``idle_blackhole`` -- the silent drop above: a connection that carries no byte in either direction
  for that many seconds is blackholed. A WebSocket that pings more often survives; one that stays
  silent that long is blackholed.
* ``latency`` -- seconds added to each chunk, per direction; order is preserved.
* ``slice_to`` -- deliver in writes of at most that many bytes, to exercise a peer's framing.
* ``close_after`` -- close (FIN, or RST with ``reset=True``) once that many bytes have been delivered
  in a direction, cutting a message in the middle.
* ``stop_reading`` -- the proxy stops reading from one side: that side's sends back up once the
  kernel buffers fill, as behind a zero receive window.

and its actions on the live connections: :meth:`FaultProxy.blackhole` (the silent drop, now) and
:meth:`FaultProxy.reset` (close both ends with a RST). Every one also exists on a single
:class:`ProxiedConnection`.

Every loop is bounded: a connection ends when either end closes (or, once blackholed, when both
have) -- a FIN from one end is passed on as a FIN to the other once what came before it has been
delivered (a half-close ends the whole connection), a RST as a RST -- :meth:`FaultProxy.serve` runs until cancelled and closes every socket it opened, the connect to
the target has a deadline, and each direction holds at most ``buffer`` chunks (of at most 64 KiB) read
but not yet delivered. Times come from :func:`trio.current_time`, so a test's clock is the proxy's;
the sockets are real, so it is meant for real time on loopback.
"""

from __future__ import annotations

import math
import socket
import struct
from typing import Any, Literal, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import attrs
import trio

__all__ = ["Direction", "FaultProxy", "ProxiedConnection", "Side"]

Direction: TypeAlias = Literal["up", "down", "both"]
"""``"up"``: client to target; ``"down"``: target to client; ``"both"``."""

Side: TypeAlias = Literal["client", "target", "both"]
"""The end of a connection the proxy reads from: the ``client`` that connected to it, the ``target``."""

_Name: TypeAlias = Literal["up", "down"]
_BOTH: tuple[_Name, ...] = ("up", "down")

CHUNK_BYTES = 65536
"""The most the proxy reads from a socket at once (bytes)."""

_DEFAULT_PORTS = {"ws": 80, "http": 80, "wss": 443, "https": 443}


@attrs.define(eq=False)
class _Flow:
    """One direction of one connection: its knobs and its counters."""

    name: _Name
    source: str
    sink: str
    latency: float = 0.0
    slice_to: int | None = None
    limit: int | None = None  # close once ``delivered`` reaches this (absolute byte count)
    limit_reset: bool = False
    reading: bool = True
    resumed: trio.Event = attrs.field(factory=trio.Event)
    delivered: int = 0
    writes: int = 0
    discarded: int = 0

    def pause(self) -> None:
        self.reading = False

    def resume(self) -> None:
        self.reading = True
        self.resumed.set()
        self.resumed = trio.Event()

    async def wait_reading(self) -> None:
        while not self.reading:
            await self.resumed.wait()


def _flows_named(direction: Direction) -> tuple[_Name, ...]:
    if direction == "both":
        return _BOTH
    if direction == "up":
        return ("up",)
    if direction == "down":
        return ("down",)
    raise ValueError(f"direction must be 'up', 'down' or 'both', not {direction!r}")


def _flows_read_from(side: Side) -> tuple[_Name, ...]:
    if side == "both":
        return _BOTH
    if side == "client":
        return ("up",)
    if side == "target":
        return ("down",)
    raise ValueError(f"side must be 'client', 'target' or 'both', not {side!r}")


def _check_seconds(name: str, seconds: float | None, *, allow_none: bool) -> None:
    if seconds is None:
        if not allow_none:
            raise ValueError(f"{name} must be a number of seconds, not None")
        return
    if not (seconds >= 0 and math.isfinite(seconds)):
        raise ValueError(f"{name} must be finite and >= 0 seconds, not {seconds!r}")


def _check_count(name: str, n: int | None, *, minimum: int) -> None:
    if n is not None and n < minimum:
        raise ValueError(f"{name} must be None or >= {minimum}, not {n!r}")


def _linger_zero(stream: trio.SocketStream) -> None:
    """Make the next close of ``stream`` send a RST (SO_LINGER on, timeout 0) instead of a FIN."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


class ProxiedConnection:
    """One client connection through a :class:`FaultProxy`, with its counters and its own knobs.

    Directions: ``up`` is client to target, ``down`` target to client. Byte counts are bytes; times
    are :func:`trio.current_time` seconds. The knob methods mirror :class:`FaultProxy`'s but apply to
    this connection only.

    Attributes:
        id: 1 for the proxy's first connection, 2 for the next, ...
        client_address: the ``(host, port)`` the client connected from.
        opened_at: when the proxy accepted the connection.
        closed_at: when the proxy closed both its sockets (``None`` while open).
        close_reason: why it closed, e.g. ``"client closed"``, ``"reset()"``,
            ``"close_after: 10 bytes down"``, ``"proxy stopped"`` (``None`` while open).
        blackholed_at: when it was blackholed (``None`` if it never was).
        last_activity: when the proxy last read a byte from either end (``opened_at`` until then).
    """

    def __init__(self, id: int, client_address: tuple[str, int], opened_at: float) -> None:
        self.id = id
        self.client_address = client_address
        self.opened_at = opened_at
        self.closed_at: float | None = None
        self.close_reason: str | None = None
        self.blackholed_at: float | None = None
        self.last_activity = opened_at
        self._idle_blackhole: float | None = None
        self._flows = {
            "up": _Flow("up", source="client", sink="target"),
            "down": _Flow("down", source="target", sink="client"),
        }
        self._scope = trio.CancelScope()
        self._rst = False
        self._knobs_changed = trio.Event()
        self._closed = trio.Event()
        self._ended_sides: set[str] = set()

    def __repr__(self) -> str:
        state = "closed" if self.closed_at is not None else "open"
        if self.blackholed:
            state += ", blackholed"
        return f"<ProxiedConnection #{self.id} {state}: {self.bytes_up} B up, {self.bytes_down} B down>"

    # -- state ------------------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        """True until the proxy has closed both its sockets for this connection."""
        return self.closed_at is None

    @property
    def idle_blackhole(self) -> float | None:
        """This connection's idle timeout (seconds; ``None``: never); see :meth:`set_idle_blackhole`."""
        return self._idle_blackhole

    @property
    def blackholed(self) -> bool:
        """True once bytes in both directions are being silently discarded."""
        return self.blackholed_at is not None

    @property
    def bytes_up(self) -> int:
        """Bytes passed to the target (client to target): written, or being written, to its socket."""
        return self._flows["up"].delivered

    @property
    def bytes_down(self) -> int:
        """Bytes passed to the client (target to client): written, or being written, to its socket."""
        return self._flows["down"].delivered

    @property
    def writes_up(self) -> int:
        """Writes made to the target: with ``slice_to=n``, at least ``bytes_up / n``."""
        return self._flows["up"].writes

    @property
    def writes_down(self) -> int:
        """Writes made to the client."""
        return self._flows["down"].writes

    @property
    def discarded_up(self) -> int:
        """Bytes read from the client and dropped because the connection was blackholed."""
        return self._flows["up"].discarded

    @property
    def discarded_down(self) -> int:
        """Bytes read from the target and dropped because the connection was blackholed."""
        return self._flows["down"].discarded

    async def wait_closed(self) -> None:
        """Wait until the proxy has closed this connection (the caller bounds the wait)."""
        await self._closed.wait()

    # -- knobs ------------------------------------------------------------------------------------

    def set_idle_blackhole(self, seconds: float | None) -> None:
        """Blackhole this connection once it has been idle ``seconds`` (None: never; 0: at once).

        Idle means the proxy read no byte from either end. The timer counts from the last byte, not
        from this call: a connection already idle longer is blackholed at once.
        """
        _check_seconds("idle_blackhole", seconds, allow_none=True)
        self._idle_blackhole = seconds
        self._wake()

    def set_latency(self, seconds: float, direction: Direction = "both") -> None:
        """Delay each chunk by ``seconds`` from when the proxy read it; order is preserved."""
        _check_seconds("latency", seconds, allow_none=False)
        for name in _flows_named(direction):
            self._flows[name].latency = seconds

    def slice_to(self, n_bytes: int | None, direction: Direction = "both") -> None:
        """Deliver in writes of at most ``n_bytes`` bytes (None: as read, up to 64 KiB)."""
        _check_count("slice_to", n_bytes, minimum=1)
        for name in _flows_named(direction):
            self._flows[name].slice_to = n_bytes

    def close_after(
        self, n_bytes: int | None, direction: Direction = "both", *, reset: bool = False
    ) -> None:
        """Close the connection once ``n_bytes`` more bytes have been delivered in ``direction``.

        The chunk that crosses the limit is cut, so the peer receives exactly ``n_bytes`` more bytes
        and then a FIN (a RST with ``reset=True``; unread bytes may then be lost, as with any RST).
        ``0`` closes now; ``None`` removes the limit.
        """
        _check_count("close_after", n_bytes, minimum=0)
        for name in _flows_named(direction):
            flow = self._flows[name]
            flow.limit = None if n_bytes is None else flow.delivered + n_bytes
            flow.limit_reset = reset
        self._check_limits()

    def stop_reading(self, side: Side = "client") -> None:
        """Stop reading from ``side``: its sends back up once the buffers between are full.

        A chunk being read when this is called is held, not delivered, until :meth:`resume_reading`.
        Bytes left unread are not activity for ``idle_blackhole``, and an end the proxy does not read
        from cannot be seen to close.
        """
        for name in _flows_read_from(side):
            self._flows[name].pause()

    def resume_reading(self, side: Side = "client") -> None:
        """Undo :meth:`stop_reading`."""
        for name in _flows_read_from(side):
            self._flows[name].resume()

    def blackhole(self) -> None:
        """Silently drop this connection's traffic from now on: what either end sends is read and
        discarded, nothing is delivered, no FIN, no RST; both ends stay connected.

        There is no way back, as on a real middlebox that has forgotten the flow. A close from one
        end is swallowed too; the connection ends when both ends have closed or the proxy stops.
        """
        if self.blackholed_at is not None or self.closed_at is not None:
            return
        self.blackholed_at = trio.current_time()
        self._wake()
        if len(self._ended_sides) == 2:
            self._end("both ends closed while blackholed")

    def reset(self) -> None:
        """Close both ends with a RST (SO_LINGER 0): their next read or write fails at once."""
        self._end("reset()", rst=True)

    # -- machinery --------------------------------------------------------------------------------

    def _wake(self) -> None:
        self._knobs_changed.set()
        self._knobs_changed = trio.Event()

    def _end(self, reason: str, *, rst: bool = False) -> None:
        if self.closed_at is not None or self._scope.cancel_called:
            return
        self.close_reason = reason
        self._rst = rst
        self._scope.cancel()

    def _check_limits(self) -> None:
        for flow in self._flows.values():
            if flow.limit is not None and flow.delivered >= flow.limit:
                self._end(f"close_after: {flow.delivered} bytes {flow.name}", rst=flow.limit_reset)

    async def _run(
        self,
        client: trio.SocketStream,
        target_host: str,
        target_port: int,
        connect_timeout: float,
        buffer: int,
    ) -> None:
        target: trio.SocketStream | None = None
        try:
            with self._scope:
                try:
                    with trio.fail_after(connect_timeout):
                        target = await trio.open_tcp_stream(target_host, target_port)
                except (OSError, trio.TooSlowError) as exc:
                    self._end(f"connect to target failed: {exc!r}", rst=True)
                    return
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, self._flows["up"], client, target, buffer)
                    nursery.start_soon(self._pump, self._flows["down"], target, client, buffer)
                    nursery.start_soon(self._watch_idle)
        finally:
            if self.close_reason is None:
                self.close_reason = "proxy stopped"
            # No await here: under an outer cancellation it would raise and skip the rest.
            for stream in (client, target):
                if stream is not None:
                    if self._rst:
                        _linger_zero(stream)
                    stream.socket.close()
            self.closed_at = trio.current_time()
            self._closed.set()

    async def _watch_idle(self) -> None:
        """Sleep until ``last_activity + idle_blackhole``; blackhole if nothing crossed meanwhile."""
        while self.blackholed_at is None:
            changed = self._knobs_changed
            if self._idle_blackhole is None:
                await changed.wait()
                continue
            deadline = self.last_activity + self._idle_blackhole
            if trio.current_time() >= deadline:
                self.blackhole()
                return
            with trio.move_on_at(deadline):
                await changed.wait()

    async def _pump(
        self, flow: _Flow, source: trio.SocketStream, sink: trio.SocketStream, buffer: int
    ) -> None:
        """One direction: a reader feeding a writer through a channel of ``buffer`` chunks."""
        send, receive = trio.open_memory_channel[tuple[float, bytes | None]](buffer)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write, flow, sink, receive)
            await self._read(flow, source, send)

    async def _read(
        self,
        flow: _Flow,
        source: trio.SocketStream,
        send: trio.MemorySendChannel[tuple[float, bytes | None]],
    ) -> None:
        async with send:
            while True:
                await flow.wait_reading()
                try:
                    data = await source.receive_some(CHUNK_BYTES)
                except trio.BrokenResourceError:
                    if not self.blackholed:
                        self._end(f"{flow.source} reset the connection", rst=True)
                        return
                    data = b""
                now = trio.current_time()
                if not data:
                    self._ended_sides.add(flow.source)
                    if self.blackholed:  # the FIN is swallowed like the rest
                        if len(self._ended_sides) == 2:
                            self._end("both ends closed while blackholed")
                        return
                    await send.send((now + flow.latency, None))
                    return
                if self.blackholed:
                    flow.discarded += len(data)
                    continue
                self.last_activity = now
                await flow.wait_reading()  # stopped while that read waited: hold the chunk
                await send.send((now + flow.latency, data))

    async def _write(
        self,
        flow: _Flow,
        sink: trio.SocketStream,
        receive: trio.MemoryReceiveChannel[tuple[float, bytes | None]],
    ) -> None:
        async with receive:
            async for due, data in receive:
                await trio.sleep_until(due)
                if self.blackholed:
                    flow.discarded += len(data or b"")
                    continue
                if data is None:
                    self._end(f"{flow.source} closed")
                    return
                await self._deliver(flow, sink, data)

    async def _deliver(self, flow: _Flow, sink: trio.SocketStream, data: bytes) -> None:
        if flow.limit is not None:
            data = data[: max(flow.limit - flow.delivered, 0)]
        step = flow.slice_to or max(len(data), 1)
        for start in range(0, len(data), step):
            if self.blackholed:
                flow.discarded += len(data) - start
                return
            piece = data[start : start + step]
            # Counted before the write, so a peer that has the bytes never sees a stale count.
            flow.delivered += len(piece)
            flow.writes += 1
            try:
                await sink.send_all(piece)
            except trio.BrokenResourceError:
                self._end(f"{flow.sink} went away", rst=True)
                return
        self._check_limits()


class FaultProxy:
    """A TCP proxy on loopback that forwards to ``target_host:target_port``, with fault knobs.

    ::

        proxy = FaultProxy("127.0.0.1", fake_port, idle_blackhole=0.3)
        port = await nursery.start(proxy.serve)
        ...  # connect to 127.0.0.1:port instead of the target
        conn = await proxy.wait_for_connection()
        proxy.set_latency(0.05, "down")

    The knob arguments and methods apply to every live connection and to every later one (a
    connection's own methods change it alone); :meth:`blackhole` and :meth:`reset` act on the live
    connections only (``set_idle_blackhole(0)`` blackholes later ones as they open).

    Args:
        target_host: where each accepted connection is forwarded.
        target_port: the target's port.
        idle_blackhole: seconds without a byte in either direction after which a connection is
            silently blackholed (``None``: never; ``0``: as soon as it opens).
        latency: seconds added to each chunk, both directions.
        slice_to: deliver in writes of at most this many bytes, both directions (``None``: as read).
        close_after: close a connection once this many bytes have been delivered in either
            direction (``None``: no limit); see :meth:`close_after`.
        stop_reading: do not read from the client (see :meth:`stop_reading`).
        connect_timeout: seconds allowed to connect to the target; on failure the client is reset.
        buffer: chunks (of at most 64 KiB) each direction may hold read but not yet delivered.

    Attributes:
        connections: every connection accepted, oldest first, open or closed.
        host, port: where the proxy listens (``None`` until :meth:`serve` has started).
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        idle_blackhole: float | None = None,
        latency: float = 0.0,
        slice_to: int | None = None,
        close_after: int | None = None,
        stop_reading: bool = False,
        connect_timeout: float = 5.0,
        buffer: int = 64,
    ) -> None:
        _check_seconds("idle_blackhole", idle_blackhole, allow_none=True)
        _check_seconds("latency", latency, allow_none=False)
        _check_count("slice_to", slice_to, minimum=1)
        _check_count("close_after", close_after, minimum=0)
        _check_seconds("connect_timeout", connect_timeout, allow_none=False)
        _check_count("buffer", buffer, minimum=1)
        self.target_host = target_host
        self.target_port = target_port
        self.connect_timeout = connect_timeout
        self.buffer = buffer
        self.host: str | None = None
        self.port: int | None = None
        self.connections: list[ProxiedConnection] = []
        self._idle_blackhole = idle_blackhole
        self._latency = {"up": latency, "down": latency}
        self._slice_to = {"up": slice_to, "down": slice_to}
        self._close_after: dict[str, tuple[int, bool] | None] = {
            "up": None if close_after is None else (close_after, False),
            "down": None if close_after is None else (close_after, False),
        }
        self._stopped: set[Literal["client", "target"]] = {"client"} if stop_reading else set()
        self._connection_added = trio.Event()

    @classmethod
    def for_url(cls, url: str, **knobs: Any) -> FaultProxy:
        """A proxy in front of the host and port of ``url`` (``ws://``, ``wss://``, ``http(s)://``).

        Use :meth:`rewrite_url` on the same URL to get the one to connect to.
        """
        parts = urlsplit(url)
        if parts.hostname is None:
            raise ValueError(f"no host in {url!r}")
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
        if port is None:
            raise ValueError(f"no port in {url!r}")
        return cls(parts.hostname, port, **knobs)

    def rewrite_url(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's (after :meth:`serve` started)."""
        if self.port is None:
            raise RuntimeError("FaultProxy.serve() has not started")
        parts = urlsplit(url)
        netloc = f"{self.host}:{self.port}"
        if parts.username is not None:
            userinfo = parts.username
            if parts.password is not None:
                userinfo += f":{parts.password}"
            netloc = f"{userinfo}@{netloc}"
        return urlunsplit(parts._replace(netloc=netloc))

    @property
    def live(self) -> list[ProxiedConnection]:
        """The connections still open, oldest first."""
        return [conn for conn in self.connections if conn.open]

    @property
    def idle_blackhole(self) -> float | None:
        """The idle timeout given to new connections (seconds; ``None``: never)."""
        return self._idle_blackhole

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (0: any free port) and proxy every connection until cancelled.

        ``port = await nursery.start(proxy.serve)`` returns the bound port. On cancellation every
        connection's sockets are closed (FIN, or RST for a connection being reset).
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()
        self.host, self.port = bound[0], bound[1]
        task_status.started(bound[1])
        await trio.serve_listeners(self._handle, listeners)

    async def wait_for_connection(self, count: int = 1) -> ProxiedConnection:
        """Wait until at least ``count`` connections were accepted; return the ``count``-th.

        The caller bounds the wait (``trio.fail_after``).
        """
        while len(self.connections) < count:
            await self._connection_added.wait()
        return self.connections[count - 1]

    # -- knobs: every live connection and every later one ----------------------------------------

    def set_idle_blackhole(self, seconds: float | None) -> None:
        """Blackhole connections idle for ``seconds`` (None: never); see
        :meth:`ProxiedConnection.set_idle_blackhole`."""
        _check_seconds("idle_blackhole", seconds, allow_none=True)
        self._idle_blackhole = seconds
        for conn in self.live:
            conn.set_idle_blackhole(seconds)

    def set_latency(self, seconds: float, direction: Direction = "both") -> None:
        """Delay each chunk by ``seconds`` in ``direction``; order is preserved."""
        _check_seconds("latency", seconds, allow_none=False)
        for name in _flows_named(direction):
            self._latency[name] = seconds
        for conn in self.live:
            conn.set_latency(seconds, direction)

    def slice_to(self, n_bytes: int | None, direction: Direction = "both") -> None:
        """Deliver in writes of at most ``n_bytes`` bytes in ``direction`` (None: as read)."""
        _check_count("slice_to", n_bytes, minimum=1)
        for name in _flows_named(direction):
            self._slice_to[name] = n_bytes
        for conn in self.live:
            conn.slice_to(n_bytes, direction)

    def close_after(
        self, n_bytes: int | None, direction: Direction = "both", *, reset: bool = False
    ) -> None:
        """Close each connection after ``n_bytes`` more bytes in ``direction`` (FIN; RST with
        ``reset=True``): counted from now on a live connection, from its start on a later one.
        ``None`` removes the limit. See :meth:`ProxiedConnection.close_after`."""
        _check_count("close_after", n_bytes, minimum=0)
        for name in _flows_named(direction):
            self._close_after[name] = None if n_bytes is None else (n_bytes, reset)
        for conn in self.live:
            conn.close_after(n_bytes, direction, reset=reset)

    def stop_reading(self, side: Side = "client") -> None:
        """Stop reading from ``side`` of every connection; see
        :meth:`ProxiedConnection.stop_reading`."""
        for name in _flows_read_from(side):
            self._stopped.add("client" if name == "up" else "target")
        for conn in self.live:
            conn.stop_reading(side)

    def resume_reading(self, side: Side = "client") -> None:
        """Undo :meth:`stop_reading`."""
        for name in _flows_read_from(side):
            self._stopped.discard("client" if name == "up" else "target")
        for conn in self.live:
            conn.resume_reading(side)

    # -- actions: live connections only -----------------------------------------------------------

    def blackhole(self) -> None:
        """Blackhole every live connection now; see :meth:`ProxiedConnection.blackhole`."""
        for conn in self.live:
            conn.blackhole()

    def reset(self) -> None:
        """Close every live connection with a RST at both ends."""
        for conn in self.live:
            conn.reset()

    # -- machinery --------------------------------------------------------------------------------

    async def _handle(self, client: trio.SocketStream) -> None:
        try:
            peer = client.socket.getpeername()
            address = (str(peer[0]), int(peer[1]))
        except OSError:
            address = ("", 0)
        conn = ProxiedConnection(len(self.connections) + 1, address, trio.current_time())
        conn.set_idle_blackhole(self._idle_blackhole)
        for name in _BOTH:
            conn.set_latency(self._latency[name], name)
            conn.slice_to(self._slice_to[name], name)
            limit = self._close_after[name]
            if limit is not None:
                conn.close_after(limit[0], name, reset=limit[1])
        for side in self._stopped:
            conn.stop_reading(side)
        self.connections.append(conn)
        self._connection_added.set()
        self._connection_added = trio.Event()
        await conn._run(
            client, self.target_host, self.target_port, self.connect_timeout, self.buffer
        )
