"""The I/O edge to voice-AI providers: trio-websocket, deadlines, and error mapping."""

from .connection import StreamConnector, Upstream, open_tcp_stream_tuned, tune_socket

__all__ = ["StreamConnector", "Upstream", "open_tcp_stream_tuned", "tune_socket"]
