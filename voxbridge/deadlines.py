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
*re-armed*: one scope around a task's loop whose deadline (and error) move before every wait.
Moving a scope's deadline is not free (trio's setter runs a ``@contextmanager`` and pushes the new
deadline on the run loop's heap; the old entry stays there until it is popped), so a re-arm moves
it only when it must:

* never **early**: a deadline earlier than the wait needs is always moved (to ``LATENESS`` past
  what is needed, so the re-arms of the next ``LATENESS`` seconds -- a frame every 20 ms -- find it
  in place);
* at most ``LATENESS`` **late**: a deadline later than needed is kept while it is at most
  ``LATENESS`` (50 ms) later, and moved to exactly what is needed otherwise. A first arm, or one
  after :meth:`Deadline.disarm`, is therefore exact.

So a re-armed deadline fires between the instant its wait needs and ``LATENESS`` after it; a
one-shot :func:`deadline` fires exactly. A wait that may be abandoned and started over without
losing anything (a receive from a queue) can go further (``arm(..., restartable=True)``): it keeps
an *earlier* deadline that the previous wait left armed, and if that one fires first, the block ends
quietly (:attr:`Deadline.ended_early`) and the caller starts the wait again under a fresh
``Deadline``; ``disarm(restartable=True)`` does the same for a wait with no deadline of its own.
See docs/timeouts.md, "How precise a deadline is".

This module imports trio only, so every layer above the sans-IO codecs may use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import TracebackType

import trio

__all__ = ["LATENESS", "Deadline", "ErrorFactory", "deadline", "deadline_at"]

#: Builds the error a deadline raises when it fires, from a short detail sentence.
ErrorFactory = Callable[[str], BaseException]

#: How late a re-armed deadline may fire, in seconds (never early): see the module docstring.
LATENESS = 0.05


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
    A re-armed deadline fires up to :data:`LATENESS` after the instant its wait needs, never
    before (module docstring); the error's detail says how long was really waited.
    """

    __slots__ = ("_error", "_needed", "_scope", "_seconds", "_since", "ended_early")

    def __init__(self) -> None:
        self._scope = trio.CancelScope()
        self._error: ErrorFactory = _unset
        self._seconds = math.inf
        self._since = 0.0
        self._needed = math.inf  # the absolute time the armed wait must fail at (at the earliest)
        #: True once the block ended because a deadline kept for a ``restartable`` wait fired
        #: before that wait's own: no error was raised, and the wait is to be started again.
        self.ended_early = False

    def arm(
        self,
        seconds: float,
        error: ErrorFactory,
        *,
        since: float | None = None,
        restartable: bool = False,
    ) -> None:
        """The next wait must end within ``seconds`` of ``since`` (default: now), or ``error``.

        The scope's deadline moves only if it would fire early, or more than :data:`LATENESS`
        late (module docstring). With ``restartable`` (a wait that can be abandoned and begun
        again without loss) an earlier deadline is kept too: if it fires first, the block ends
        without an error and :attr:`ended_early` is set.

        If the current deadline already expired (a wait finished at the very instant it fired),
        the scope is cancelled for good: the error of the deadline that really expired is kept.
        """
        scope = self._scope
        if scope.cancel_called:
            return
        start = trio.current_time() if since is None else since
        needed = start + seconds
        self._error = error
        self._seconds = seconds
        self._since = start
        self._needed = needed
        armed = scope.deadline
        if armed < needed:
            if not restartable:
                scope.deadline = needed + LATENESS  # room for the re-arms that follow
        elif armed > needed + LATENESS:
            scope.deadline = needed

    def disarm(self, *, restartable: bool = False) -> None:
        """The next wait has no deadline of this one's (something else bounds it).

        With ``restartable`` (a wait that can be abandoned and begun again without loss) the
        deadline a previous wait left armed is kept, not moved: if it fires during this wait, the
        block ends without an error and :attr:`ended_early` is set, as for :meth:`arm`'s.
        """
        scope = self._scope
        if not scope.cancel_called:
            self._needed = math.inf
            if not restartable and scope.deadline != math.inf:
                scope.deadline = math.inf

    @property
    def deadline(self) -> float:
        """The absolute trio time at which the scope fires (``inf`` when disarmed, unless
        restartable): from the armed wait's own deadline to :data:`LATENESS` after it, or
        earlier for a restartable wait (:meth:`arm`, :meth:`disarm`)."""
        return self._scope.deadline

    @property
    def expired(self) -> bool:
        """The scope has fired (the next checkpoint inside it raises): a wait that returned in
        the very tick it fired is to be handled under a fresh ``Deadline``."""
        return self._scope.cancel_called

    def __enter__(self) -> Deadline:
        self._scope.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        scope = self._scope
        suppressed = scope.__exit__(exc_type, exc, tb)
        if scope.cancelled_caught:
            if scope.deadline < self._needed:  # kept for a restartable wait: not its deadline
                self.ended_early = True
                return True
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
