"""The deadline idiom, written once: a cancel scope whose expiry raises *our* error.

trio's ``fail_after`` is six lines: a ``move_on_after`` scope, then "if it fired, raise
``TooSlowError``". Every layer of voxbridge needs the same shape with its own error -- the call ends
with ``Disconnect(IDLE_TIMEOUT)``, the upstream edge reports ``UpstreamTimeout`` and lets the
provider link decide -- so the shape lives here, once, and each layer passes the error to raise::

    with deadline(settings.pong_timeout, UpstreamTimeout):
        await upstream.ping()

The error is any callable taking one detail string (an exception class, or
``functools.partial(Disconnect, reason)``); the detail says how long was waited and the limit.

On the hot path a task must not build a new scope per frame, so a :class:`Deadline` can also be
*re-armed*: one scope around a task's loop whose deadline (and error) move before every wait. Moving
a deadline is an attribute write on the scope, no allocation.

This module imports trio only, so every layer above the sans-IO codecs may use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import TracebackType

import trio

__all__ = ["Deadline", "ErrorFactory", "deadline", "deadline_at"]

#: Builds the error a deadline raises when it fires, from a short detail sentence.
ErrorFactory = Callable[[str], BaseException]


def _unset(detail: str) -> BaseException:
    return RuntimeError(f"a Deadline fired that was never armed ({detail})")


class Deadline:
    """One cancel scope whose expiry raises the error of the wait it was armed for.

    Use it once (``with deadline(seconds, error):``) or re-arm it per wait::

        watch = Deadline()
        with watch:                                   # raises the armed error if it fired
            while True:
                watch.arm(idle_timeout, IdleError)
                frame = await carrier.receive()

    Errors raised inside the block pass through untouched; only the scope's own expiry becomes
    the armed error (raised ``from None``: the ``Cancelled`` behind it is an implementation detail).
    """

    __slots__ = ("_error", "_scope", "_seconds", "_since")

    def __init__(self) -> None:
        self._scope = trio.CancelScope()
        self._error: ErrorFactory = _unset
        self._seconds = math.inf
        self._since = 0.0

    def arm(self, seconds: float, error: ErrorFactory, *, since: float | None = None) -> None:
        """The next wait must end within ``seconds`` of ``since`` (default: now), or ``error``.

        If the current deadline already expired (a wait finished at the very instant it fired),
        the scope is cancelled for good: the error of the deadline that really expired is kept.
        """
        if self._scope.cancel_called:
            return
        start = trio.current_time() if since is None else since
        self._scope.deadline = start + seconds
        self._error = error
        self._seconds = seconds
        self._since = start

    def disarm(self) -> None:
        """The next wait has no deadline of this one's (something else bounds it)."""
        if not self._scope.cancel_called:
            self._scope.deadline = math.inf

    @property
    def deadline(self) -> float:
        """The absolute trio time at which the armed wait fails (``inf`` when disarmed)."""
        return self._scope.deadline

    def __enter__(self) -> Deadline:
        self._scope.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        suppressed = self._scope.__exit__(exc_type, exc, tb)
        if self._scope.cancelled_caught:
            waited = trio.current_time() - self._since
            raise self._error(f"waited {waited:.3f}s (limit {self._seconds:g}s)") from None
        return bool(suppressed)


def deadline(seconds: float, error: ErrorFactory) -> Deadline:
    """``fail_after(seconds)`` that raises ``error(detail)``: for one wait off the hot path."""
    watch = Deadline()
    watch.arm(seconds, error)
    return watch


def deadline_at(when: float, error: ErrorFactory) -> Deadline:
    """``fail_at(when)`` that raises ``error(detail)``: ``when`` is an absolute trio time."""
    watch = Deadline()
    now = trio.current_time()
    watch.arm(when - now, error, since=now)
    return watch
