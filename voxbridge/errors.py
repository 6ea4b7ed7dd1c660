"""The error vocabulary of voxbridge.

Two families, kept apart on purpose (the h11/wsproto convention):

* ``RemoteProtocolError`` -- *their* bad input. A sans-IO codec raises it, with a message that says
  what was wrong, when a peer sends something we cannot accept: malformed JSON, an unknown event, a
  missing field, bad base64, events out of order. It is an ordinary ``ValueError`` subclass and never
  carries I/O state. The call layer turns it into ``Disconnect(Reason.PROTOCOL_ERROR)``.

* ``Disconnect`` -- how a call ends. Every way a call can end (the carrier hangs up, a deadline fires,
  the provider drops, a bug) becomes exactly one ``Disconnect`` with a ``Reason`` from the closed set in
  CONTRACT.md. Natural and synthetic ends are the same exception and go through the same teardown.

Library exceptions (trio-websocket's ``ConnectionClosed``, ``HandshakeError``, OSError, ...) are mapped
to ``Disconnect`` at the I/O edges only (``voxbridge.upstream``, the carrier transports); nothing inside
the call ever sees them.
"""

from __future__ import annotations

import enum

__all__ = ["CLOSE_CODES", "Disconnect", "Reason", "RemoteProtocolError"]


class RemoteProtocolError(ValueError):
    """A peer sent input that breaks its protocol. The message says what and where."""


class Reason(enum.StrEnum):
    """Why a call ended. The values are the ``reason`` label of the disconnect metrics."""

    CALLER_STOP = "caller_stop"
    CALLER_CLOSED = "caller_closed"
    IDLE_TIMEOUT = "idle_timeout"
    START_TIMEOUT = "start_timeout"
    CALLER_STALLED = "caller_stalled"
    PROTOCOL_ERROR = "protocol_error"
    UPSTREAM_CONNECT_FAILED = "upstream_connect_failed"
    UPSTREAM_CLOSED = "upstream_closed"
    UPSTREAM_KEEPALIVE_TIMEOUT = "upstream_keepalive_timeout"
    UPSTREAM_STALLED = "upstream_stalled"
    AGENT_HANGUP = "agent_hangup"
    MAX_DURATION = "max_duration"
    SERVER_SHUTDOWN = "server_shutdown"
    INTERNAL_ERROR = "internal_error"

    @property
    def close_code(self) -> int:
        """The WebSocket close code sent to the carrier for this reason."""
        return CLOSE_CODES[self]

    @property
    def is_timeout(self) -> bool:
        """True for the reasons produced by a deadline firing."""
        return self in _TIMEOUTS


# CONTRACT.md: 1000 normal, 1001 going away, 1008 policy violation, 1011 server error.
CLOSE_CODES: dict[Reason, int] = {
    Reason.CALLER_STOP: 1000,
    Reason.AGENT_HANGUP: 1000,
    Reason.MAX_DURATION: 1000,
    Reason.IDLE_TIMEOUT: 1000,
    Reason.START_TIMEOUT: 1000,
    Reason.CALLER_CLOSED: 1000,  # nobody is left to read it; 1000 is the honest code
    Reason.CALLER_STALLED: 1011,
    Reason.SERVER_SHUTDOWN: 1001,
    Reason.PROTOCOL_ERROR: 1008,
    Reason.UPSTREAM_CONNECT_FAILED: 1011,
    Reason.UPSTREAM_CLOSED: 1011,
    Reason.UPSTREAM_KEEPALIVE_TIMEOUT: 1011,
    Reason.UPSTREAM_STALLED: 1011,
    Reason.INTERNAL_ERROR: 1011,
}

_TIMEOUTS = frozenset(
    {
        Reason.IDLE_TIMEOUT,
        Reason.START_TIMEOUT,
        Reason.CALLER_STALLED,
        Reason.UPSTREAM_CONNECT_FAILED,
        Reason.UPSTREAM_KEEPALIVE_TIMEOUT,
        Reason.UPSTREAM_STALLED,
        Reason.MAX_DURATION,
    }
)


class Disconnect(Exception):
    """The call is over, for ``reason``.

    Args:
        reason: one of the closed set of reasons.
        detail: a short human sentence for the log (never a secret, never audio).
        final: retrying cannot help (a provider refused our credentials): do not retry.
    """

    def __init__(self, reason: Reason, detail: str = "", *, final: bool = False) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail
        self.final = final

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}" if self.detail else self.reason.value

    def __repr__(self) -> str:
        return f"Disconnect({self.reason!r}, {self.detail!r})"
