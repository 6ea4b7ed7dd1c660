"""The call's deadlines: :mod:`voxbridge.deadlines` with a ``Reason`` instead of an error.

Every wait of the call's own tasks on a peer ends the call when it runs out, with the reason named
for that wait (``idle_timeout``, ``start_timeout``, ``caller_stalled``). So the call's tasks arm
their deadlines with a reason and get ``Disconnect(reason)`` -- the same exception a natural hang-up
raises, so both go through the same teardown. Waits on the provider are the provider link's, which
arms the same idiom with edge errors instead (a provider fault may be resumed, not the call ended).
"""

from __future__ import annotations

from ..deadlines import Deadline
from ..errors import Reason, ends_call

__all__ = ["Watchdog", "deadline"]


class Watchdog(Deadline):
    """A re-armable :class:`~voxbridge.deadlines.Deadline` whose expiry ends the call.

    Use as::

        watchdog = Watchdog()
        with watchdog:                       # raises Disconnect(reason) if a deadline fired
            while True:
                watchdog.arm(idle_timeout, Reason.IDLE_TIMEOUT)
                frame = await carrier.receive()
                ...
    """

    __slots__ = ()

    def arm(  # type: ignore[override]
        self,
        seconds: float,
        reason: Reason,
        *,
        since: float | None = None,
        restartable: bool = False,
    ) -> None:
        """The next wait must finish within ``seconds`` of ``since`` (default: now), or ``reason``.

        Fires from that instant to :data:`~voxbridge.deadlines.LATENESS` after it, never before;
        ``restartable`` as in :meth:`Deadline.arm <voxbridge.deadlines.Deadline.arm>`.
        """
        super().arm(seconds, ends_call(reason), since=since, restartable=restartable)


def deadline(seconds: float, reason: Reason) -> Watchdog:
    """``fail_after`` that raises ``Disconnect(reason)``: for one wait off the hot path."""
    watchdog = Watchdog()
    watchdog.arm(seconds, reason)
    return watchdog
