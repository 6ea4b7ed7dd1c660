"""Run the app on hypercorn's trio worker, in-process, on a socket voxbridge configured itself.

Why not just ``config.bind = ["host:port"]`` (docs/library-notes.md, the hypercorn notes):

* hypercorn writes to carrier sockets inside a shielded scope, so a carrier that stops reading would
  block a write for ever and no app deadline could stop it. The kernel can: the listening socket
  gets TCP keepalive and ``TCP_USER_TIMEOUT``, which accepted sockets inherit, and is handed to
  hypercorn as ``fd://N``.
* one worker per process (``-w N`` breaks graceful shutdown), started with ``hypercorn.trio.serve``
  and our own signal handling; drain happens inside the shutdown trigger, before hypercorn stops.
* ``websocket_max_message_size`` 64 KiB (a Twilio frame is a few hundred bytes) and pings to the
  carrier every ``websocket_ping_interval`` (<= 20 s; 0: none) so proxies see traffic.
"""

from __future__ import annotations

import gc
import logging
import signal
import socket
from collections.abc import Awaitable, Callable

import attrs
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from ..journal import CallJournal
from ..metrics import Metrics
from ..session.registry import CallRegistry
from ..settings import Settings
from ..upstream import StreamConnector, tune_socket
from . import containment
from .app import VoxbridgeApp
from .security import check_exposure

__all__ = ["RunningServer", "hypercorn_config", "listen_socket", "serve", "tune_gc"]

log = logging.getLogger("voxbridge.server")

MAX_MESSAGE_SIZE = 64 * 1024


@attrs.frozen
class RunningServer:
    """What ``await nursery.start(serve, settings)`` hands back."""

    url: str
    app: VoxbridgeApp
    port: int

    @property
    def media_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/twilio/media"


def listen_socket(settings: Settings) -> socket.socket:
    """A listening TCP socket with keepalive and ``TCP_USER_TIMEOUT``, inherited by accepted ones."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tune_socket(sock, settings.tcp_user_timeout)
        sock.bind((settings.host, settings.port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


def hypercorn_config(settings: Settings, fd: int) -> Config:
    """The hypercorn configuration voxbridge runs with."""
    config = Config()
    config.bind = [f"fd://{fd}"]
    config.workers = 1
    config.websocket_max_message_size = MAX_MESSAGE_SIZE
    config.websocket_ping_interval = settings.websocket_ping_interval or None  # 0: no pings
    # Drain (in the shutdown trigger) has ended every call before hypercorn starts its graceful
    # period, so what is left then is idle keep-alive connections (docs/operations.md, "Known
    # library behaviours"). Nothing there is worth waiting for.
    config.graceful_timeout = 1.0
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


async def wait_for_signal() -> None:
    """Return on the first SIGINT or SIGTERM."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            return


def tune_gc(settings: Settings) -> None:
    """Raise CPython's generation-0 threshold to ``settings.gc_threshold`` (0: leave it).

    Every call allocates and frees a steady stream of short-lived objects. At CPython's default
    (a collection per 700 net allocations) that means thousands of young collections a second
    under load, each promoting whatever is briefly alive -- a burst of teardowns, say -- to older
    generations, which then trigger full collections: stop-the-world pauses of hundreds of
    milliseconds with a thousand calls' objects alive, during which no deadline fires on time.
    With 20,000, short-lived objects die young, full collections become rare, and the collector's
    CPU drops too (benchmarks: stall teardown p99). The older generations' thresholds are kept.
    """
    if settings.gc_threshold > 0:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(settings.gc_threshold, gen1, gen2)


async def serve(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    registry: CallRegistry | None = None,
    connect_stream: StreamConnector | None = None,
    journal: CallJournal | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve voxbridge until ``shutdown_trigger`` returns (default: SIGINT/SIGTERM), then drain.

    ``await nursery.start(serve, settings)`` returns a :class:`RunningServer` once the socket is
    listening and the provider endpoint is resolved (with ``port=0``, read the port from it).

    The call journal is at ``settings.db`` (a SQLite file, or a ``postgresql://`` DSN) unless
    ``journal`` is given: opened first (marking calls a crash left live), before the socket is bound, and flushed and closed
    last, after the drain and every call's teardown -- also when the host cancels ``serve``.

    Raises:
        SettingsError: ``host`` is not loopback and there is neither a ``twilio_auth_token`` nor
            ``insecure`` (:func:`voxbridge.server.security.check_exposure`); nothing is started.
        JournalError: the journal at ``settings.db`` cannot be opened.
    """
    check_exposure(settings)  # before anything opens or binds
    containment.install()
    tune_gc(settings)
    app = VoxbridgeApp(
        settings,
        metrics=metrics,
        registry=registry,
        journal=journal,
        connect_stream=connect_stream,
    )
    await app.open_journal()  # a bad --db fails here, before anything else starts
    try:
        await _serve_app(app, settings, shutdown_trigger, task_status)
    finally:
        await app.aclose()  # no call is left to account for: flush the journal


async def _serve_app(
    app: VoxbridgeApp,
    settings: Settings,
    shutdown_trigger: Callable[[], Awaitable[None]] | None,
    task_status: trio.TaskStatus[RunningServer],
) -> None:
    sock = listen_socket(settings)
    host, port = sock.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    config = hypercorn_config(settings, sock.detach())  # hypercorn owns the fd from here
    trigger = shutdown_trigger or wait_for_signal

    async def shutdown() -> None:
        await trigger()
        await app.drain()

    async with trio.open_nursery() as nursery:
        await app.start(nursery)  # the echo agent lives as long as the server

        async def run_hypercorn(*, task_status: trio.TaskStatus[object]) -> None:
            await hypercorn_serve(
                app,  # type: ignore[arg-type]  # an ASGI 3 callable; hypercorn's union is narrower
                config,
                shutdown_trigger=shutdown,
                task_status=task_status,
            )
            nursery.cancel_scope.cancel()  # hypercorn is done: stop the app's own tasks too

        await nursery.start(run_hypercorn)
        url = f"http://{shown_host}:{port}"
        log.debug("listening on %s (provider %s)", url, settings.provider)
        task_status.started(RunningServer(url=url, app=app, port=port))
