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
import trio

__all__ = ["ContainedTCPServer", "install"]

log = logging.getLogger("voxbridge.server")

try:  # hypercorn's internal layout; checked by tests/test_e2e_hypercorn225.py
    import hypercorn.trio.run as _hypercorn_run
    from hypercorn.trio.tcp_server import TCPServer as _TCPServer
except ImportError:  # pragma: no cover - a hypercorn without the trio worker
    _hypercorn_run = None
    _TCPServer = object

class ContainedTCPServer(_TCPServer):  # type: ignore[misc, valid-type]
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
    if _hypercorn_run is None or not hasattr(_hypercorn_run, "TCPServer"):
        return False
    _hypercorn_run.TCPServer = ContainedTCPServer
    return True
