"""Keep one connection's trouble inside that connection (hypercorn issue #225, and the queue trap).

**#225.** hypercorn's trio worker runs every connection's ``TCPServer`` in the server nursery. A
protocol error it does not expect -- a WebSocket upgrade followed by one stray byte is enough --
escapes ``TCPServer.run`` as ``h11.LocalProtocolError``, reaches the server nursery and takes down
every live call and the process (docs/library-notes.md, "#225"; upstream fixed and reverted it).
voxbridge contains it: a ``TCPServer`` subclass whose ``run`` logs the error, counts it, closes that
one socket and returns.

**The queue trap.** hypercorn hands each ASGI app its messages through a memory channel of
``config.max_app_queue_size`` (10) made in ``TaskGroup.spawn_app``; the connection's only reader
(``TCPServer._read_data`` -> protocol -> ``WSStream`` -> ``app_put``) waits in ``channel.send``
while that channel is full. Nothing closes the channel when the app returns, so once an app has
finished, the eleventh message that arrives blocks the reader for good -- and so does the
``websocket.disconnect`` hypercorn itself queues from the app's task on the way out, which is what
would have closed the socket. A Twilio caller streams 50 frames a second until it reads our close
frame, so a call that ends while the caller is still talking leaves its TCP socket ESTABLISHED (or
CLOSE-WAIT) with unread bytes, and two hypercorn tasks, for the life of the process.
:class:`ReleasingTaskGroup` is ``spawn_app`` with the fix upstream would make: the app's receive
channel is closed the moment the app returns (a reader waiting in ``send`` wakes up), and a message
for a finished app is discarded instead of raising ``BrokenResourceError`` into hypercorn's reader
(docs/library-notes.md, "the queue trap"; ``AsgiCarrier.close`` drains for the same reason).

Why these hooks: both are the narrowest names hypercorn's trio worker looks up at run time.
``hypercorn.trio.run`` instantiates ``TCPServer`` from its own namespace and
``hypercorn.trio.tcp_server`` instantiates ``TaskGroup`` from its own, so rebinding those two
names changes only TCP connections of the trio worker, and only what is broken (the subclass
overrides one method each). The layout is checked before anything is rebound; if hypercorn moved
things, ``install()`` logs a warning and leaves that part alone rather than guessing.

**Fast paths.** ``install()`` binds ``voxbridge.server.fastpaths.FastTCPServer``, a
``ContainedTCPServer`` that skips hypercorn's per-message lock, scopes and failed ``recv`` on plain
TCP, and :class:`ReleasingTaskGroup` hands a message to an app with room in its queue without a
yield (docs/library-notes.md, "Per-message fast paths in hypercorn's trio TCPServer"). When the
fast paths do not fit the installed hypercorn, ``ContainedTCPServer`` is bound alone. It also
binds ``fastpaths.NotifyingWSStream`` as ``hypercorn.protocol.h11.WSStream`` (an app is told when
hypercorn refused a client that sent data before the 101).

``install()`` is idempotent (a server class it bound, or a ``ContainedTCPServer`` bound on
purpose, is kept) and is called when ``voxbridge.server`` is imported, so it also protects
``hypercorn -k trio voxbridge.asgi:app``.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import hypercorn.trio.run as _hypercorn_run  # internal layout: test_e2e_hypercorn225 checks it
import hypercorn.trio.task_group as _hypercorn_task_group
import hypercorn.trio.tcp_server as _hypercorn_tcp_server
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.ws_stream import WSStream
from hypercorn.trio.task_group import TaskGroup as _TaskGroup
from hypercorn.trio.tcp_server import TCPServer as _TCPServer
from hypercorn.typing import (
    AppWrapper,
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)
from wsproto.events import Ping

__all__ = ["ContainedTCPServer", "ReleasingTaskGroup", "install"]

log = logging.getLogger("voxbridge.server")

#: What ``ReleasingTaskGroup.spawn_app`` relies on: hypercorn's ``_handle`` and ``spawn_app`` as of
#: 0.17/0.18. Checked by parameter names at install time.
_HANDLE_PARAMS = ("app", "config", "scope", "receive", "send", "sync_spawn", "call_soon")
_SPAWN_APP_PARAMS = ("self", "app", "config", "scope", "send")
#: How long one write to a peer may block when the app has no ``send_timeout`` (seconds).
WRITE_TIMEOUT = 5.0
#: The WebSocket ping loop ``ReleasingTaskGroup.spawn`` replaces (``WSStream._send_pings``).
_PING_LOOP = "_send_pings"


class ContainedTCPServer(_TCPServer):
    """hypercorn's per-connection server, with its failures kept to itself, and bounded writes.

    hypercorn writes every frame with ``send_all`` inside a *shielded* scope with no deadline, so
    a carrier that stops reading (a full window) blocked the app's ``send`` for ever: no deadline
    of the call, not even ``max_call_duration``, could end it, and the call never reached its
    teardown (only the kernel's ``TCP_USER_TIMEOUT`` did, under ``voxbridge serve``; nothing under
    ``hypercorn -k trio``). The shield is right -- a write cancelled half-way leaves half a frame
    on the stream, and a call that ends while it sends audio must still be able to send its close
    frame -- but a shield needs a deadline: the app's ``send_timeout`` (``WRITE_TIMEOUT`` for an
    app without one). A write still blocked then closes the stream: the peer does not read.
    """

    async def protocol_send(self, event: Event) -> None:
        if not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        async with self.send_lock:
            await self._send_locked(event.data)

    async def _send_locked(self, data: bytes | memoryview) -> None:
        """Write ``data`` with ``send_lock`` held: shielded, bounded by ``_write_timeout``."""
        try:
            with trio.CancelScope(shield=True) as bound:
                bound.deadline = trio.current_time() + self._write_timeout
                await self.stream.send_all(data)
            if bound.cancelled_caught:  # the peer stopped reading: half a frame may be out
                await trio.aclose_forcefully(self.stream)
                await self.protocol.handle(Closed())
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            # Busy: hypercorn's ``_close`` sends EOF without the send lock, so a write racing a
            # connection that is closing (a malformed frame from the peer) finds the stream
            # busy. The connection is gone either way; the call must see "closed", not a bug.
            await self.protocol.handle(Closed())

    async def _read_data(self) -> None:
        await self._read_until_closed()
        # The peer is gone: hypercorn's keep-alive idle timer (5 s) would otherwise hold the
        # connection, and its socket in CLOSE_WAIT, until it fires.
        await self.idle_task.stop()

    async def _read_until_closed(self) -> None:
        """hypercorn's read loop (``voxbridge.server.fastpaths`` replaces it)."""
        await super()._read_data()

    @functools.cached_property
    def _write_timeout(self) -> float:
        """The app's ``send_timeout``, looked up once per connection (not per write)."""
        settings = getattr(getattr(self.app, "app", None), "settings", None)
        timeout = getattr(settings, "send_timeout", None)
        return timeout if isinstance(timeout, int | float) else WRITE_TIMEOUT

    async def run(self) -> None:
        try:
            await super().run()
        except Exception as exc:  # the whole point: nothing reaches the server nursery
            log.warning(
                "connection failed and was contained: %s: %s", type(exc).__name__, exc, exc_info=exc
            )
            # The ASGI app hypercorn wraps may want to count it (VoxbridgeApp does).
            notify = getattr(getattr(self.app, "app", None), "connection_contained", None)
            if callable(notify):
                notify(exc)
            await trio.aclose_forcefully(self.stream)
        finally:
            self._let_go()

    def _let_go(self) -> None:
        """Drop the connection's protocol and task group once it is over.

        hypercorn hands its protocol the bound ``self.protocol_send``, so a finished connection
        is a reference cycle (``TCPServer`` -> ``protocol`` -> bound method -> ``TCPServer``)
        holding every object of the connection -- h11 and wsproto state, the WebSocket stream,
        the app's queue -- until a cyclic collection finds it. Nothing uses them once ``run``
        has returned (the connection's tasks are done), so the connection is freed by reference
        counting the moment its last task ends.
        """
        self.__dict__.pop("protocol", None)
        self.__dict__.pop("_task_group", None)


class _Pinger:
    """The WebSockets pinged every ``interval`` seconds in this trio run, and the one task that
    pings them, while there are any (a system task: it belongs to no connection).

    Each interval it pings them all, one after the other: what hypercorn's ``WSStream._send_pings``
    does with a task per connection. A WebSocket joins ``interval`` seconds before its first ping
    at the latest (hypercorn's first ping is sent at the accept) and leaves when its connection's
    read loop ends; the task ends with the last one. A ping waits behind a write under way on its
    connection (the send lock) at most ``interval`` seconds, then that connection is skipped this
    round; a write already started is bounded by the connection's own write deadline
    (``send_timeout``), which delays the pings after it by as much at worst.
    """

    __slots__ = ("_scope", "interval", "streams")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.streams: set[WSStream] = set()
        self._scope = trio.CancelScope()
        trio.lowlevel.spawn_system_task(
            self._ping_every_interval, name=f"voxbridge WebSocket pings every {interval:g} s"
        )

    @classmethod
    def every(cls, interval: float) -> _Pinger:
        """This run's pinger for ``interval``, started if there is none."""
        try:
            pingers = _PINGERS.get()
        except LookupError:
            pingers = {}
            _PINGERS.set(pingers)
        pinger = pingers.get(interval)
        if pinger is None:
            pinger = pingers[interval] = cls(interval)
        return pinger

    def discard(self, stream: WSStream) -> None:
        """``stream`` is pinged no more; the last one out ends the task (at once, not a sleep
        later: nothing outlives the connections it served)."""
        self.streams.discard(stream)
        if self.streams:
            return
        self._scope.cancel()
        pingers = _PINGERS.get()
        if pingers.get(self.interval) is self:
            del pingers[self.interval]

    async def _ping_every_interval(self) -> None:
        """Never raises: a system task's exception would end the whole run."""
        with self._scope:
            while True:
                await trio.sleep(self.interval)
                for stream in list(self.streams):
                    if stream.closed:
                        self.discard(stream)
                        continue
                    try:
                        with trio.move_on_after(self.interval):
                            await stream._send_wsproto_event(Ping())
                    except Exception as exc:  # one connection's trouble stays with it
                        self.discard(stream)
                        log.debug(
                            "WebSocket ping failed, no more pings on that connection: %r", exc
                        )


#: This trio run's pingers, by ping interval.
_PINGERS: trio.lowlevel.RunVar[dict[float, _Pinger]] = trio.lowlevel.RunVar("voxbridge_pingers")


class ReleasingTaskGroup(_TaskGroup):
    """hypercorn's per-connection task group, which lets go of its connection when it is over.

    * The app queue stops taking messages at app exit (see :meth:`spawn_app`).
    * No ping task per connection. hypercorn spawns ``WSStream._send_pings`` per WebSocket, a
      task that sends a ping, sleeps ``websocket_ping_interval`` and only then looks at
      ``closed`` again: a task (and its scopes) per call, and a caller that reset its connection
      held the server's socket (state CLOSE, an fd) and the connection's tasks for up to 15 s
      after its call ended, since the connection's ``TCPServer`` closes its socket only after
      this group's tasks are done. Here the stream joins the process's pinger instead
      (:class:`_Pinger`: one task per process pings every open WebSocket each interval), and
      leaves it when this group's body -- hypercorn's read loop -- exits: nothing more can
      arrive or be sent then.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pinged: list[tuple[_Pinger, WSStream]] = []

    def spawn(self, func: Callable[..., Awaitable[object]], *args: Any) -> None:
        stream = getattr(func, "__self__", None)
        if getattr(func, "__name__", None) != _PING_LOOP or not isinstance(stream, WSStream):
            super().spawn(func, *args)
            return
        interval = stream.config.websocket_ping_interval
        if interval is None:  # pragma: no cover - hypercorn spawns no ping loop then
            return
        pinger = _Pinger.every(interval)
        pinger.streams.add(stream)
        self._pinged.append((pinger, stream))

    async def __aexit__(self, exc_type: Any, exc_value: Any, tb: Any) -> None:
        for pinger, stream in self._pinged:  # the read loop is over: no ping can matter any more
            pinger.discard(stream)
        self._pinged.clear()
        await super().__aexit__(exc_type, exc_value, tb)

    async def spawn_app(
        self,
        app: AppWrapper,
        config: Config,
        scope: Scope,
        send: Callable[[ASGISendEvent | None], Awaitable[None]],
    ) -> Callable[[ASGIReceiveEvent], Awaitable[None]]:
        """hypercorn's ``spawn_app``, plus: close the app's channel when the app returns.

        The close happens before hypercorn's ``_handle`` sends its final ``None`` (which queues a
        ``websocket.disconnect`` from the app's own task), so neither that nor the reader can wait
        on a queue nobody will ever read again.
        """
        put, take = trio.open_memory_channel[ASGIReceiveEvent](config.max_app_queue_size)

        async def app_then_release(
            scope: Scope,
            receive: ASGIReceiveCallable,
            send: ASGISendCallable,
            sync_spawn: Callable[..., Any],
            call_soon: Callable[..., Any],
        ) -> None:
            try:
                await app(scope, receive, send, sync_spawn, call_soon)
            finally:
                take.close()  # wakes a reader waiting in put() with BrokenResourceError

        async def put_unless_finished(message: ASGIReceiveEvent) -> None:
            try:
                # Room in the queue (the usual case): no checkpoint, no yield. ``send`` would
                # do the same ``send_nowait`` between two checkpoints (library-notes.md,
                # "Per-message fast paths in hypercorn's trio TCPServer").
                put.send_nowait(message)
            except trio.WouldBlock:  # full: wait for the app to take one, as hypercorn does
                try:
                    await put.send(message)
                except trio.BrokenResourceError:
                    pass  # the app returned while we waited
            except trio.BrokenResourceError:
                pass  # the app has returned: nobody will read this, and that is not an error

        assert self._nursery is not None  # spawn_app runs inside ``async with TaskGroup()``
        self._nursery.start_soon(
            _hypercorn_task_group._handle,
            app_then_release,
            config,
            scope,
            take.receive,
            send,
            trio.to_thread.run_sync,
            trio.from_thread.run,
        )
        return put_unless_finished


def _params(function: object) -> tuple[str, ...]:
    try:
        return tuple(inspect.signature(function).parameters)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ()


def _install_releasing_task_group() -> bool:
    """Rebind ``tcp_server.TaskGroup``, but only over the hypercorn this subclass was written for.

    ``spawn_app`` is re-implemented (the channel it makes is local to it), so a hypercorn whose
    ``_handle`` or ``spawn_app`` takes other arguments would break every connection: warn instead.
    """
    current = getattr(_hypercorn_tcp_server, "TaskGroup", None)
    if current is ReleasingTaskGroup:
        return True
    if (
        current is not _TaskGroup
        or _params(getattr(_hypercorn_task_group, "_handle", None)) != _HANDLE_PARAMS
        or _params(getattr(_TaskGroup, "spawn_app", None)) != _SPAWN_APP_PARAMS
        or not hasattr(Config, "max_app_queue_size")
        or not hasattr(WSStream, _PING_LOOP)
        or not hasattr(WSStream, "_send_wsproto_event")
    ):  # pragma: no cover - hypercorn changed shape
        log.warning(
            "hypercorn's trio TaskGroup is not laid out as expected: the app-queue release is "
            "NOT installed (a call that ends while the caller streams may hold its socket)"
        )
        return False
    _hypercorn_tcp_server.TaskGroup = ReleasingTaskGroup  # type: ignore[attr-defined]
    return True


def install() -> bool:
    """Install both containments, and the per-message fast paths, in hypercorn's trio worker.

    Idempotent. Returns True if the #225 containment is installed: ``FastTCPServer`` (a
    ``ContainedTCPServer`` with the fast paths of ``voxbridge.server.fastpaths``), or
    ``ContainedTCPServer`` alone, with a warning, when the fast paths do not fit this hypercorn.
    The queue-trap release (``ReleasingTaskGroup``) is installed independently and warns if it
    cannot be.
    """
    from .fastpaths import FastTCPServer, fits, install_notifying_ws_stream  # subclasses ours

    _install_releasing_task_group()
    unfit_stream = install_notifying_ws_stream()
    if unfit_stream is not None:  # pragma: no cover - hypercorn changed shape
        log.warning(
            "hypercorn's WebSocket stream NOT patched: %s (an app may not hear that hypercorn "
            "refused a client that sent data before the 101)",
            unfit_stream,
        )
    if not hasattr(_hypercorn_run, "TCPServer"):  # pragma: no cover - hypercorn changed shape
        log.warning("hypercorn has no trio.run.TCPServer: #225 containment NOT installed")
        return False
    if _hypercorn_run.TCPServer in (FastTCPServer, ContainedTCPServer):
        return True  # installed already (or ContainedTCPServer alone, bound on purpose)
    unfit = fits()
    if unfit is not None:  # pragma: no cover - hypercorn changed shape
        log.warning("hypercorn's per-message fast paths NOT installed: %s", unfit)
        _hypercorn_run.TCPServer = ContainedTCPServer
        return True
    _hypercorn_run.TCPServer = FastTCPServer
    return True
