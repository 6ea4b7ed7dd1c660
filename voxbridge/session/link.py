"""The call's connection to its provider, across drops, reconnects and session recycling.

A call talks to one provider *session* at a time (an :class:`~voxbridge.upstream.Upstream` socket
plus the :class:`~voxbridge.providers.ProviderCodec` for it). :class:`ProviderLink` owns that pair
and replaces it when needed:

* **open** at call start: prepare a session (the provider may do REST first), open the socket, send
  the codec's opening frames. Failures are retried with exponential backoff and jitter inside
  ``connect_timeout`` (when ``reconnect_budget`` > 0); then ``upstream_connect_failed``.
* **resume** when the socket drops mid-call (and the codec says the drop is not the agent hanging
  up): the old socket is closed, and new sessions are tried with backoff within ``reconnect_budget``.
  Each new session is seeded with the conversation so far (``history``: the call's final transcript
  lines), so the agent keeps its context. While resuming, :attr:`ready` is False and the call drops
  caller audio (and counts it) rather than queueing it. Budget exhausted: ``upstream_closed``.
* **recycle** before a session gets too old (OpenAI ends sessions at 60 minutes): make before break
  -- open and seed the new session first, switch to it, then close the old one.

Every wait here is bounded: session preparation and the socket handshake by ``connect_timeout`` (and
the remaining budget), the opening frames by ``send_timeout``, closing by ``close_timeout``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import trio

from ..errors import Disconnect, Reason
from ..metrics import Metrics
from ..providers.base import Provider as ProviderT
from ..providers.base import ProviderCodec, ProviderSession
from ..providers.events import Transcript
from ..settings import Settings
from ..upstream import StreamConnector, Upstream
from .watchdog import deadline

__all__ = ["ProviderLink"]

log = logging.getLogger("voxbridge.call")

FIRST_BACKOFF = 0.1  # seconds; doubles per attempt, with jitter
MAX_BACKOFF = 2.0


class ProviderLink:
    """The current provider session of one call, and how to replace it."""

    def __init__(
        self,
        provider: ProviderT,
        *,
        settings: Settings,
        metrics: Metrics,
        nursery: trio.Nursery,
        connect_stream: StreamConnector,
        history: Sequence[Transcript],
        call_id: str,
    ) -> None:
        self.provider = provider
        self.settings = settings
        self.metrics = metrics
        self._nursery = nursery
        self._connect_stream = connect_stream
        self._history = history
        self._call_id = call_id
        self.upstream: Upstream | None = None
        self.codec: ProviderCodec | None = None
        self._spare: Upstream | None = None  # a session being opened to replace the current one
        self.ready = False
        self.sessions = 0
        self.resumes = 0

    # --- opening ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the first session, retrying within ``connect_timeout``.

        Raises:
            Disconnect: ``UPSTREAM_CONNECT_FAILED`` when no session opened in time;
                ``UPSTREAM_STALLED`` when the provider does not read the opening frames.
        """
        retry = self.settings.reconnect_budget > 0
        until = trio.current_time() + self.settings.connect_timeout
        await self._open_until(until, retry=retry, failure=Reason.UPSTREAM_CONNECT_FAILED)

    async def resume(self, why: str) -> None:
        """The session dropped: open a new one, seeded with the conversation so far.

        Raises:
            Disconnect: ``UPSTREAM_CLOSED`` when ``reconnect_budget`` ran out.
        """
        self.ready = False
        dropped = self.upstream
        self.upstream = None
        if dropped is not None:
            await dropped.aclose(1001, "resuming", close_timeout=self.settings.close_timeout)
        budget = self.settings.reconnect_budget
        if budget <= 0:
            raise Disconnect(Reason.UPSTREAM_CLOSED, why)
        log.info("provider session dropped (%s): resuming", why, extra={"call_id": self._call_id})
        try:
            await self._open_until(
                trio.current_time() + budget, retry=True, failure=Reason.UPSTREAM_CLOSED
            )
        except Disconnect:
            self.metrics.upstream_reconnects.labels(outcome="failed").inc()
            raise
        self.resumes += 1
        self.metrics.upstream_reconnects.labels(outcome="resumed").inc()

    async def recycle(self) -> None:
        """Make before break: open a fresh session, switch to it, close the old one.

        Raises:
            Disconnect: as :meth:`resume` if the new session cannot be opened within budget.
        """
        old = self.upstream
        until = trio.current_time() + max(self.settings.reconnect_budget, 1.0)
        session, upstream = await self._attempt_until(
            until, retry=True, failure=Reason.UPSTREAM_CLOSED
        )
        self.upstream, self.codec, self.ready = upstream, session.codec, True
        self._spare = None
        log.info("provider session recycled", extra={"call_id": self._call_id})
        if old is not None:
            await old.aclose(1000, "recycled", close_timeout=self.settings.close_timeout)

    async def _open_until(self, until: float, *, retry: bool, failure: Reason) -> None:
        session, upstream = await self._attempt_until(until, retry=retry, failure=failure)
        self.upstream, self.codec, self.ready = upstream, session.codec, True
        self._spare = None

    async def _attempt_until(
        self, until: float, *, retry: bool, failure: Reason
    ) -> tuple[ProviderSession, Upstream]:
        delay = FIRST_BACKOFF
        attempts = 0
        while True:
            attempts += 1
            started = trio.current_time()
            try:
                with trio.move_on_at(until):
                    result = await self._attempt()
                    self.metrics.upstream_connect_seconds.labels(
                        provider=self.provider.name
                    ).observe(trio.current_time() - started)
                    return result
                last = f"no session within the deadline ({attempts} attempts)"
            except Disconnect as exc:
                if exc.reason is not Reason.UPSTREAM_CONNECT_FAILED:
                    raise
                last = exc.detail
                if exc.final:
                    raise Disconnect(failure, f"{self.provider.name}: {last}") from None
            now = trio.current_time()
            if not retry or now >= until:
                raise Disconnect(failure, f"{self.provider.name}: {last}")
            pause = min(delay * random.uniform(0.5, 1.0), until - now)
            log.debug("provider attempt %d failed: %s", attempts, last)
            await trio.sleep(pause)
            delay = min(delay * 2, MAX_BACKOFF)

    async def _attempt(self) -> tuple[ProviderSession, Upstream]:
        settings = self.settings
        with trio.move_on_after(settings.connect_timeout) as scope:
            session = await self.provider.session(list(self._history))
        if scope.cancelled_caught:
            raise Disconnect(
                Reason.UPSTREAM_CONNECT_FAILED,
                f"session not prepared within connect_timeout={settings.connect_timeout:g}s",
            )
        upstream = await Upstream.open(
            self._nursery,
            session.endpoint,
            connect_timeout=settings.connect_timeout,
            connect_stream=self._connect_stream,
        )
        self._spare = upstream  # teardown closes it even if the opening below is cut short
        with deadline(settings.send_timeout, Reason.UPSTREAM_STALLED):
            for frame in session.codec.opening(self._history):
                await upstream.send(frame)
        self.sessions += 1
        return session, upstream

    # --- closing ------------------------------------------------------------------------------

    async def aclose(self, code: int, reason: str) -> None:
        """Say goodbye (best effort) and close every socket this link opened. Bounded."""
        self.ready = False
        close_timeout = self.settings.close_timeout
        sockets = [u for u in dict.fromkeys((self.upstream, self._spare)) if u is not None]
        for upstream in sockets:
            if upstream is self.upstream and self.codec is not None:
                with trio.move_on_after(close_timeout):
                    try:
                        for frame in self.codec.closing():
                            await upstream.send(frame)
                    except Disconnect:
                        pass
            await upstream.aclose(code, reason, close_timeout=close_timeout)
