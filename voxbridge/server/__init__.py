"""The HTTP/WebSocket edge: the ASGI app, hypercorn startup, and containment of hypercorn #225."""

from . import containment
from .app import VoxbridgeApp
from .serve import RunningServer, serve

containment.install()

__all__ = ["RunningServer", "VoxbridgeApp", "serve"]
