"""Deadlines on peers, as one re-armable cancel scope per task.

trio's ``fail_after`` is a ``move_on_after`` scope plus "if it fired, raise". voxbridge needs the same
with a *reason* attached, and on the hot path it must not build a new scope per frame. So each call
task owns one :class:`Watchdog`: a single ``CancelScope`` around the task's loop whose deadline is
moved before every wait, together with the reason that wait would end the call for. When the scope
fires, :meth:`Watchdog.check` raises ``Disconnect(reason)`` -- the same exception a natural hang-up
raises, so both go through the same teardown.

Moving a deadline is an attribute write; no allocation, no new scope.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import trio

from ..errors import Disconnect, Reason

__all__ = ["Watchdog", "deadline"]


class Watchdog:
    """One cancel scope whose deadline and reason move with the task's current wait.

    Use as::

        watchdog = Watchdog()
        with watchdog:                       # raises Disconnect(reason) if a deadline fired
            while True:
                watchdog.arm(idle_timeout, Reason.IDLE_TIMEOUT)
                frame = await carrier.receive()
                ...
    """

    __slots__ = ("_reason", "_scope", "_seconds", "_since")

    def __init__(self) -> None:
        self._scope = trio.CancelScope()
        self._reason = Reason.INTERNAL_ERROR
        self._seconds = math.inf
        self._since = 0.0

    def arm(self, seconds: float, reason: Reason, *, since: float | None = None) -> None:
        """The next wait must finish within ``seconds`` of ``since`` (default: now), or ``reason``.

        If the current deadline already expired (a wait finished at the very instant it fired),
        the scope is cancelled for good: keep the reason of the deadline that really expired.
        """
        if self._scope.cancel_called:
            return
        start = trio.current_time() if since is None else since
        self._scope.deadline = start + seconds
        self._reason = reason
        self._seconds = seconds
        self._since = start

    def disarm(self) -> None:
        """The next wait has no deadline of this watchdog's (another mechanism bounds it)."""
        self._scope.deadline = math.inf

    def __enter__(self) -> Watchdog:
        self._scope.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> bool:
        suppressed = self._scope.__exit__(*exc_info)  # type: ignore[arg-type]
        if self._scope.cancelled_caught:
            waited = trio.current_time() - self._since
            raise Disconnect(
                self._reason,
                f"waited {waited:.3f}s (limit {self._seconds:g}s)",
            ) from None
        return bool(suppressed)


@contextmanager
def deadline(seconds: float, reason: Reason) -> Iterator[None]:
    """``fail_after`` that raises ``Disconnect(reason)``: for one-off waits off the hot path."""
    watchdog = Watchdog()
    with watchdog:
        watchdog.arm(seconds, reason)
        yield
