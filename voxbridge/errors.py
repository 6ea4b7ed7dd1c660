"""The error vocabulary of voxbridge.

Two families, kept apart on purpose (the h11/wsproto convention):

* ``RemoteProtocolError`` -- *their* bad input. A sans-IO codec raises it, with a message that says
  what was wrong, when a peer sends something we cannot accept: malformed JSON, an unknown event, a
  missing field, bad base64, events out of order. It is an ordinary ``ValueError`` subclass and never
  carries I/O state. The call layer turns it into ``Disconnect(Reason.PROTOCOL_ERROR)``.

* ``Disconnect`` -- how a call ends. Every way a call can end (the carrier hangs up, a deadline fires,
  the provider drops, a bug) becomes exactly one ``Disconnect`` with a ``Reason`` from the closed set in
  docs/architecture.md. Natural and synthetic ends are the same exception and go through the same teardown.

Between them sit the **edge errors** of the provider leg. The upstream edge (``voxbridge.upstream``)
is the only code that sees trio-websocket's ``ConnectionClosed``, ``HandshakeError`` or ``OSError``;
it maps them to :class:`UpstreamError` subclasses that say *what happened to one socket* and nothing
about the call:

* :class:`UpstreamConnectFailed` -- a session could not be opened (refused, unreachable, timed out);
  ``status`` carries the HTTP status of a refused handshake or REST request;
* :class:`UpstreamClosed` -- the provider closed the socket (``code``: 1006 when no close frame came);
* :class:`UpstreamTimeout` -- a wait on the provider ran out (no pong, a send that never drained).

Only :class:`voxbridge.session.link.ProviderLink` decides what an edge error means for the call: drop
the session and resume, keep the working session (a failed recycle), or give up. Giving up raises
:class:`LinkDown` with a ``Reason``, and only the call turns that into a ``Disconnect``. "The link
dropped" and "the call is over" are different exceptions on purpose.

The carrier transports map their library's "the peer is gone" straight to
``Disconnect(CALLER_CLOSED)``: there is nothing to resume on the carrier side.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from functools import partial

__all__ = [
    "CLOSE_CODES",
    "BadAudio",
    "Disconnect",
    "LinkDown",
    "Reason",
    "RemoteProtocolError",
    "SettingsError",
    "UpstreamClosed",
    "UpstreamConnectFailed",
    "UpstreamError",
    "UpstreamTimeout",
]


class SettingsError(ValueError):
    """A setting has a value voxbridge cannot run with. The message names the flag and env var."""


class RemoteProtocolError(ValueError):
    """A peer sent input that breaks its protocol. The message says what and where."""


class BadAudio(RemoteProtocolError):
    """A provider sent audio that fails validation (not strict base64, not whole 16-bit samples).

    The call drops that one chunk and counts it (``reason="bad_audio"``); the rest of the stream
    plays on.
    """


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
    UPSTREAM_REJECTED = "upstream_rejected"
    UPSTREAM_KEEPALIVE_TIMEOUT = "upstream_keepalive_timeout"
    UPSTREAM_STALLED = "upstream_stalled"
    AGENT_HANGUP = "agent_hangup"
    TRANSFERRED = "transferred"
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


# docs/architecture.md (the reasons table): 1000 normal, 1001 going away, 1008 policy violation, 1011 server error.
CLOSE_CODES: dict[Reason, int] = {
    Reason.CALLER_STOP: 1000,
    Reason.AGENT_HANGUP: 1000,
    Reason.TRANSFERRED: 1000,
    Reason.MAX_DURATION: 1000,
    Reason.IDLE_TIMEOUT: 1000,
    Reason.START_TIMEOUT: 1000,
    Reason.CALLER_CLOSED: 1000,  # nobody is left to read it; 1000 is the honest code
    Reason.CALLER_STALLED: 1011,
    Reason.SERVER_SHUTDOWN: 1001,
    Reason.PROTOCOL_ERROR: 1008,
    Reason.UPSTREAM_CONNECT_FAILED: 1011,
    Reason.UPSTREAM_CLOSED: 1011,
    Reason.UPSTREAM_REJECTED: 1011,
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


class _Reasoned(Exception):
    """An exception that carries a ``Reason`` and a short detail for the log."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}" if self.detail else self.reason.value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, {self.detail!r})"


class Disconnect(_Reasoned):
    """The call is over, for ``reason``.

    Args:
        reason: one of the closed set of reasons.
        detail: a short human sentence for the log (never a secret, never audio).
    """


def ends_call(reason: Reason) -> Callable[[str], Disconnect]:
    """The error factory of a deadline that ends the call with ``reason`` (see ``deadlines``)."""
    return _ENDERS[reason]


_ENDERS = {reason: partial(Disconnect, reason) for reason in Reason}


class LinkDown(_Reasoned):
    """The provider link gave up: the call cannot go on, for ``reason``.

    Raised only by :class:`voxbridge.session.link.ProviderLink` (after it tried to resume, or at
    once for a refusal or the agent hanging up); the call turns it into ``Disconnect(reason)``.
    A different class from ``Disconnect`` on purpose: "the link dropped" is not "the call is over".
    """


class UpstreamError(Exception):
    """One provider socket failed. Raised by ``voxbridge.upstream``; the message is the detail."""


class UpstreamConnectFailed(UpstreamError):
    """A provider session could not be opened.

    Args:
        detail: what failed (never a secret).
        status: the HTTP status when the provider answered and refused (handshake or REST), else
            ``None`` (unreachable, timed out, TLS, protocol).
    """

    def __init__(self, detail: str, *, status: int | None = None) -> None:
        super().__init__(detail)
        self.status = status

    @property
    def refused(self) -> bool:
        """The provider refused our credentials or our account (401, 403): retrying cannot help."""
        return self.status in REFUSED_STATUSES


#: HTTP statuses that mean "the provider refuses us": auth or account (RFC 9110 15.5.2, 15.5.4).
REFUSED_STATUSES = frozenset({401, 403})


class UpstreamClosed(UpstreamError):
    """The provider's socket is closed.

    Args:
        code: the close code the provider sent (RFC 6455 7.4); 1006 when no close frame arrived.
        detail: who closed it and why, for the log.
    """

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class UpstreamTimeout(UpstreamError):
    """A wait on the provider ran out: no pong, or a send the provider never read."""
