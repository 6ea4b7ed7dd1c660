"""Keep one connection's failure inside that connection (hypercorn issue #225).

hypercorn's trio worker runs every connection's ``TCPServer`` in the server nursery. A protocol
error it does not expect -- a WebSocket upgrade followed by one stray byte is enough -- escapes
``TCPServer.run`` as ``h11.LocalProtocolError``, reaches the server nursery and takes down every live
call and the process (LIBRARY_FACTS 1; upstream fixed and reverted it). voxbridge contains it: a
``TCPServer`` subclass whose ``run`` logs the error, counts it, closes that one socket and returns.

``install()`` swaps the class hypercorn's trio worker instantiates. It is idempotent and is called
when ``voxbridge.server`` is imported, so it also protects ``hypercorn -k trio voxbridge.asgi:app``.
"""

from __future__ import annotations

import logging

import hypercorn.trio.run as _hypercorn_run  # internal layout: test_e2e_hypercorn225 checks it
import trio
from hypercorn.trio.tcp_server import TCPServer as _TCPServer

__all__ = ["ContainedTCPServer", "install"]

log = logging.getLogger("voxbridge.server")


class ContainedTCPServer(_TCPServer):
    """hypercorn's per-connection server, with its failures kept to itself."""

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


def install() -> bool:
    """Make hypercorn's trio worker use :class:`ContainedTCPServer`. Returns True if installed."""
    if not hasattr(_hypercorn_run, "TCPServer"):  # pragma: no cover - hypercorn changed shape
        log.warning("hypercorn has no trio.run.TCPServer: #225 containment NOT installed")
        return False
    _hypercorn_run.TCPServer = ContainedTCPServer
    return True
