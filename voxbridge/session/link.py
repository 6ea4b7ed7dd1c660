"""The call's link to its provider: every provider socket it opens, and what to do when one fails.

A call talks to one provider *session* at a time: an :class:`~voxbridge.upstream.Upstream` socket
plus the :class:`~voxbridge.providers.ProviderCodec` for it. :class:`ProviderLink` is the only owner
of those sockets and the only place that decides what a failure of one means. The upstream edge
reports what happened to a socket (:class:`~voxbridge.errors.UpstreamClosed`, ``UpstreamTimeout``,
``UpstreamConnectFailed``); the link either replaces the session or gives up with
:class:`~voxbridge.errors.LinkDown`, which the call (and only the call) turns into a ``Disconnect``.

The policy, in one place:

* **open** at call start: prepare a session (the provider may do REST first), open the socket, send
  the codec's opening frames (the greeting in the call's first session only: ``first``), and, for
  a service that must acknowledge a session first (``ProviderCodec.awaits_acknowledgement``), read
  until it has (within ``connect_timeout``) and send the rest: the call gets the session, and
  sends it caller audio, only then. Failures are retried with exponential backoff and jitter within
  ``connect_timeout`` (when ``reconnect_budget`` > 0); then ``upstream_connect_failed``.
* **drop**: a session is dropped when the provider closes it, when a send to it does not finish
  within ``send_timeout`` (it stopped reading), or when a ping gets no pong within ``pong_timeout``
  (it froze, or a load balancer silently dropped the flow). A dead socket is aborted at once: no
  close handshake with a peer known dead.
* **resume** after a drop: new sessions are tried with backoff, each seeded with the conversation so
  far (the call's final transcript lines), so the agent keeps its context. While resuming the link
  has no session (:attr:`ProviderLink.session` is None) and the call drops caller audio, counted.
* **the budget**: a drop opens a resume *episode* with ``reconnect_budget`` seconds. A resumed session
  is on probation until it has stayed up for ``reconnect_budget`` seconds (at least
  ``MIN_PROBATION``) and then answered a ping: only then is it counted ``resumed`` and the episode
  closed. A session that
  dies on probation is charged to the same episode, so a provider that accepts and drops every
  session cannot keep a call (and its bill) alive for ever. Budget spent: give up with the reason of
  the drop that opened the episode (``upstream_closed``, ``upstream_stalled``,
  ``upstream_keepalive_timeout``), counted ``failed``.
* **refusals are final**: a handshake refused with 401/403, or a close code the provider's table
  calls a refusal (``ProviderCodec.close_reason`` -> ``upstream_rejected``), ends the call at once,
  never retried, so the carrier's fallback (Twilio's action URL) runs while the caller still listens.
  A close the table calls the agent hanging up ends the call ``agent_hangup``.
* **recycle** before a session gets too old (OpenAI ends them at 60 minutes), or when the
  provider announces that it will end the session (Gemini's ``goAway``, through
  :meth:`ProviderLink.recycle_soon`: at once, or once the agent's answer has ended, at the latest
  ``RECYCLE_MARGIN`` before the end): make before break -- open and seed a new session, wait for it
  to answer a ping (so it is alive and read the opening frames), switch to it, then close the old
  one. A recycle that fails in any way closes what it opened and keeps the working session; it
  never ends the call, and is tried again ``RECYCLE_RETRY`` later. If the old session drops before
  the switch, the recycle is abandoned (what it opened is closed) and the drop is resumed as any
  other: one replacement, never two.
* **flush**: whenever the link stops reading a session (a drop, before it is resumed; a recycle,
  at the switch; the end of the call) its codec gives up what it still holds
  (``ProviderCodec.flush``: a transcript line not yet final, events not yet returned) to
  ``on_final``, so the call journals them and a resumed session is seeded with them.
* **keepalive**: every ``keepalive_interval`` the current session is pinged (no pong within
  ``pong_timeout`` drops it); a provider that wants a message of its own besides
  (:attr:`~voxbridge.providers.base.ProviderCodec.keepalive`: Deepgram's ``KeepAlive``) gets it on
  its cadence, bounded by ``send_timeout`` (a send that does not finish drops the session).

Every socket the link opens is in :attr:`ProviderLink.sockets` until it is closed, and
:meth:`ProviderLink.aclose` closes all of them on every path. Every wait is bounded by
:func:`voxbridge.deadlines.deadline`; each socket's reader task (its only task) is shielded only
until the call's own hard bound (``live_until``).
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager

import trio

from .. import tracing
from ..deadlines import deadline, deadline_at
from ..errors import (
    LinkDown,
    Reason,
    UpstreamClosed,
    UpstreamConnectFailed,
    UpstreamError,
    UpstreamTimeout,
)
from ..metrics import Metrics
from ..providers.base import Frame, Keepalive, ProviderCodec
from ..providers.base import Provider as ProviderT
from ..providers.events import HistoryItem, ProviderEvent, Usage
from ..settings import Settings
from ..upstream import StreamConnector, Upstream

__all__ = ["ProviderLink", "Session"]

log = logging.getLogger("voxbridge.call")

FIRST_BACKOFF = 0.1  # seconds; doubles per attempt, with jitter
MAX_BACKOFF = 2.0
MIN_PROBATION = 1.0  # seconds a resumed session must stay up to count as resumed, at the least
RECYCLE_RETRY = 60.0  # seconds between recycle attempts after one failed
EARLY_FRAMES = 4096  # frames a recycled session may send before the switch (its history acks)
#: Seconds before a provider's announced end of a session (``SessionEnding.seconds_left``) by which
#: its recycle starts at the latest, answer or not: time to connect, set up and ping the next one
#: (well under a second, as a rule). A recycle that takes longer is overtaken by the provider's
#: close, which is resumed like any drop.
RECYCLE_MARGIN = 2.0


class Session:
    """One open provider session: its socket and codec, and why the link dropped it (if it did)."""

    __slots__ = ("codec", "early", "keepalive", "keepalive_at", "lost", "upstream")

    def __init__(self, upstream: Upstream, codec: ProviderCodec) -> None:
        self.upstream = upstream
        self.codec = codec
        #: The codec's keepalive message, and when upkeep sends it next (trio time; ``inf``: never).
        self.keepalive: Keepalive | None = codec.keepalive
        self.keepalive_at = (
            math.inf if self.keepalive is None else upstream.opened_at + self.keepalive.interval
        )
        #: ``(reason, detail)`` once the link dropped this session; the reason is what the call
        #: ends with if no session can replace it.
        self.lost: tuple[Reason, str] | None = None
        #: Frames read before the call switched to this session (a recycle), in order; the
        #: reading task gets them first. Made only when needed (an empty deque is 600 bytes).
        self.early: deque[Frame] | None = None

    def receive_nowait(self) -> Frame | None:
        """The next frame if one is already here (``early`` first), else ``None``."""
        if self.early:
            return self.early.popleft()
        return self.upstream.receive_nowait()


class _NoSession(Exception):
    """No session could be opened: ``reason`` is ``UPSTREAM_REJECTED`` or ``UPSTREAM_CONNECT_FAILED``."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _not_in_time(detail: str) -> UpstreamConnectFailed:
    return UpstreamConnectFailed(f"no session in time: {detail}")


class _Backoff:
    """Exponential backoff with jitter: pauses of 0.1, 0.2, 0.4 ... up to 2 s, each 50-100 %."""

    __slots__ = ("_delay",)

    def __init__(self) -> None:
        self._delay = FIRST_BACKOFF

    async def pause(self, until: float) -> None:
        """Sleep the next pause, never past ``until``."""
        pause = self._delay * random.uniform(0.5, 1.0)
        self._delay = min(self._delay * 2, MAX_BACKOFF)
        await trio.sleep_until(min(trio.current_time() + pause, until))


class _Episode:
    """The drops since the last session that proved healthy: the budget and backoff they share."""

    __slots__ = ("backoff", "detail", "reason", "until")

    def __init__(self, reason: Reason, detail: str, until: float) -> None:
        self.reason = reason
        self.detail = detail
        self.until = until
        self.backoff = _Backoff()


class ProviderLink:
    """The provider side of one call: the current session, and every socket opened for it.

    Args:
        provider: prepares sessions.
        settings: the deadlines (``connect_timeout``, ``send_timeout``, ``pong_timeout``,
            ``keepalive_interval``, ``reconnect_budget``, ``session_max_age``, ``close_timeout``).
        metrics: where reconnects, connect times and ping round trips are counted.
        nursery: hosts each socket's reader task; must outlive the call's own tasks.
        connect_stream: opens the byte stream to the provider.
        history: the call's final transcript lines, replayed into every new session.
        call_id: for log lines.
        live_until: absolute trio time the call cannot outlive; no socket's reader outlives it.
        on_usage: told what each session cost, for providers that say so only after a session
            ended (asked at :meth:`aclose`, within ``close_timeout``).
        on_final: told what a session's codec still held when the link stopped reading it
            (``ProviderCodec.flush``): before a dropped session is resumed, at a recycle's switch,
            and at :meth:`aclose`.
    """

    def __init__(
        self,
        provider: ProviderT,
        *,
        settings: Settings,
        metrics: Metrics,
        nursery: trio.Nursery,
        connect_stream: StreamConnector,
        history: Sequence[HistoryItem],
        call_id: str,
        live_until: float,
        on_usage: Callable[[Usage], None] | None = None,
        on_final: Callable[[Sequence[ProviderEvent]], None] | None = None,
    ) -> None:
        self.provider = provider
        self.settings = settings
        self.metrics = metrics
        self._nursery = nursery
        self._connect_stream = connect_stream
        self._history = history
        self._extra = {"call_id": call_id}
        self._live_until = live_until
        self._tracer = tracing.tracer()
        #: The session the call talks to; ``None`` before it opens and while resuming.
        self.session: Session | None = None
        #: Every socket this link opened and has not closed yet.
        self.sockets: set[Upstream] = set()
        self._episode: _Episode | None = None
        self._probation_until: float | None = None
        self._opened = trio.Event()
        self._changed = trio.Event()
        self._pinging: tuple[Session, trio.CancelScope] | None = None  # upkeep's ping in flight
        self._recycling: trio.CancelScope | None = None  # upkeep's recycle in flight
        self._ending: Session | None = None  # the provider said it ends this one: recycle it
        self._ending_by = -math.inf  # ...at this trio time at the latest
        self.resumes = 0  # sessions resumed that proved healthy
        self.on_usage = on_usage
        self.on_final = on_final
        # How to ask what each session prepared so far cost, once it ended (Ultravox).
        self._usage_queries: list[Callable[[], Awaitable[Usage | None]]] = []

    @property
    def opened(self) -> bool:
        """True once the first session opened (afterwards, no session means resuming)."""
        return self._opened.is_set()

    # --- opening ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the first session, retrying within ``connect_timeout`` (if ``reconnect_budget``).

        Raises:
            LinkDown: ``UPSTREAM_CONNECT_FAILED`` when no session opened in time;
                ``UPSTREAM_REJECTED`` when the provider refused us.
        """
        retry = self.settings.reconnect_budget > 0
        until = trio.current_time() + self.settings.connect_timeout
        try:
            self.session = await self._establish(until, retry=retry)
        except _NoSession as exc:
            raise LinkDown(exc.reason, exc.detail) from None
        self._opened.set()

    async def _establish(
        self, until: float, *, retry: bool, backoff: _Backoff | None = None
    ) -> Session:
        """A new open session, seeded with the history, tried with backoff until ``until``."""
        backoff = backoff or _Backoff()
        attempts = 0
        while True:
            attempts += 1
            started = trio.current_time()
            with self._connect_span(attempts) as span:
                try:
                    session = await self._attempt(until)
                except _NoSession as exc:
                    span.fail(exc.reason.value, exc.detail)
                    if exc.reason is Reason.UPSTREAM_REJECTED:
                        raise
                    last = exc.detail
                else:
                    self.metrics.upstream_connect_seconds.labels(
                        provider=self.provider.name
                    ).observe(trio.current_time() - started)
                    return session
            now = trio.current_time()
            if not retry or now >= until:
                raise _NoSession(
                    Reason.UPSTREAM_CONNECT_FAILED,
                    f"{self.provider.name}: {last} ({attempts} attempts)",
                )
            log.debug("provider attempt %d failed: %s", attempts, last, extra=self._extra)
            await backoff.pause(until)

    def _connect_span(self, attempt: int) -> AbstractContextManager[tracing.Span]:
        name = self.provider.name
        return self._tracer.span(
            "voxbridge.provider.connect",
            kind="client",
            attributes={
                "voxbridge.provider": name,
                "gen_ai.provider.name": name,
                "voxbridge.attempt": attempt,
            },
        )

    async def _attempt(self, until: float) -> Session:
        """One try: prepare, connect, send the opening frames (and wait for the service's
        acknowledgement, for a codec that awaits one). Leaves no socket open on failure."""
        settings = self.settings
        first = not self._opened.is_set()  # the call's first session: the greeting is its own
        give_up_at = min(until, trio.current_time() + settings.connect_timeout)
        try:
            with deadline_at(give_up_at, _not_in_time):
                prepared = await self.provider.session(list(self._history), first=first)
                if prepared.usage is not None:
                    self._usage_queries.append(prepared.usage)  # it may bill from now on
                upstream = await Upstream.open(
                    self._nursery,
                    prepared.endpoint,
                    connect_stream=self._connect_stream,
                    live_until=self._live_until,
                )
        except UpstreamConnectFailed as exc:
            reason = Reason.UPSTREAM_REJECTED if exc.refused else Reason.UPSTREAM_CONNECT_FAILED
            raise _NoSession(reason, str(exc)) from None
        self.sockets.add(upstream)
        codec = prepared.codec
        session = Session(upstream, codec)
        try:
            # Within send_timeout, and within what is left of the attempts' time.
            opening_by = min(trio.current_time() + settings.send_timeout, until)
            with deadline_at(opening_by, UpstreamTimeout):
                for frame in codec.opening(self._history, first=first):
                    await upstream.send(frame)
            if codec.awaits_acknowledgement:
                # Nothing else before the service says it started the session: the session is
                # the call's (and gets caller audio) only once this returned.
                rest = await self._acknowledgement(session, give_up_at)
                opening_by = min(trio.current_time() + settings.send_timeout, until)
                with deadline_at(opening_by, UpstreamTimeout):
                    for frame in rest:
                        await upstream.send(frame)
        except UpstreamClosed as exc:
            await self._discard(upstream)
            reason = prepared.codec.close_reason(exc.code)
            if reason is not Reason.UPSTREAM_REJECTED:
                reason = Reason.UPSTREAM_CONNECT_FAILED
            raise _NoSession(reason, f"closed before the session was set up: {exc}") from None
        except UpstreamTimeout as exc:
            await self._discard(upstream)
            raise _NoSession(
                Reason.UPSTREAM_CONNECT_FAILED, f"the opening frames were not read: {exc}"
            ) from None
        except BaseException:  # cancelled mid-opening, or never acknowledged: the socket goes
            await self._discard(upstream)
            raise
        return session

    async def _acknowledgement(self, session: Session, by: float) -> list[Frame]:
        """Read ``session`` until its codec finds the service's acknowledgement of the session
        (``ProviderCodec.acknowledged``), at trio time ``by`` at the latest; return what the
        codec sends then. The frames read are kept in order (``early``): the call decodes them,
        the acknowledgement included, once it has the session.

        Raises:
            UpstreamClosed: the service closed the session (refused its opening frames, say).
            _NoSession: no acknowledgement in time (``UPSTREAM_CONNECT_FAILED``).
        """
        early = session.early = deque()

        def unacknowledged(detail: str) -> _NoSession:
            return _NoSession(
                Reason.UPSTREAM_CONNECT_FAILED,
                f"the service did not acknowledge the session within connect_timeout="
                f"{self.settings.connect_timeout:g}s ({len(early)} frames read)",
            )

        with deadline_at(by, unacknowledged):
            while len(early) < EARLY_FRAMES:
                frame = await session.upstream.receive()
                early.append(frame)
                rest = session.codec.acknowledged(frame)
                if rest is not None:
                    return rest
        raise unacknowledged("too many frames")

    # --- the session in use -------------------------------------------------------------------

    async def receive(
        self, *, before_resume: Callable[[], None] | None = None
    ) -> tuple[Session, Frame]:
        """The next frame of the current session, and that session (its codec decodes the frame).

        A dropped session is resumed here, in the task that reads the provider; a recycled one is
        replaced by the new one. Waits while the first session opens.

        The waits can be abandoned (cancelled) and begun again without losing a frame; resuming
        cannot, so ``before_resume`` is called first: the caller drops there any deadline it
        kept for the restartable wait (``Deadline.disarm``). If that deadline has already fired,
        the wait ends there (``Cancelled``), before the resume began, and is begun again.

        Raises:
            LinkDown: the link gave up (budget spent, a refusal) or the agent hung up.
        """
        if not self._opened.is_set():  # (a set Event's wait() still yields: not per frame)
            await self._opened.wait()
        while True:
            session = self.session
            if session is None:  # pragma: no cover - only this task resumes, after open()
                raise LinkDown(Reason.INTERNAL_ERROR, "no provider session to read")
            if session.early:
                return session, session.early.popleft()
            try:
                return session, await session.upstream.receive()
            except UpstreamClosed as exc:
                if session is not self.session:
                    continue  # recycled under us: read the new session
                if session.lost is None:
                    session.lost = (session.codec.close_reason(exc.code), str(exc))
                if before_resume is not None:
                    before_resume()
                    # A kept deadline that fired in the very tick the close came cannot be
                    # dropped any more: end the caller's wait here, before anything changed, and
                    # it calls again (the closed socket reports the close again).
                    await trio.lowlevel.checkpoint_if_cancelled()
                await self._recover(session)

    async def send(self, session: Session, frame: Frame) -> bool:
        """Send ``frame`` to ``session``; the caller bounds the wait.

        For the hot path: the calling task already has a re-armable deadline, so it arms it with
        ``send_timeout`` and ``UpstreamTimeout`` rather than paying for a new scope per frame,
        and reports a timeout with :meth:`lose` (``UPSTREAM_STALLED``). Elsewhere use
        :meth:`send_within`.

        Returns:
            False when the session is gone (the frame is dropped; the caller counts it).
        """
        if session.lost is not None:
            return False
        try:
            await session.upstream.send(frame)
        except UpstreamClosed:
            return False  # the reading task sees the close and decides
        return True

    async def send_within(self, session: Session, frame: Frame) -> bool:
        """:meth:`send` within ``send_timeout``; a send that does not finish drops the session.

        Returns:
            False when the session is gone or was dropped (the frame is dropped).
        """
        try:
            with deadline(self.settings.send_timeout, UpstreamTimeout):
                sent = await self.send(session, frame)
        except UpstreamTimeout as exc:
            await self.lose(session, Reason.UPSTREAM_STALLED, f"a send did not finish: {exc}")
            return False
        return sent

    async def lose(self, session: Session, reason: Reason, detail: str) -> None:
        """``session`` is dead (``reason`` if nothing replaces it): abort its socket at once.

        The task reading the provider then sees the socket closed and resumes (or gives up).
        """
        if session.lost is None:
            session.lost = (reason, detail)
            log.info("provider session lost: %s", detail, extra=self._extra)
        await self._discard(session.upstream)

    def _flush(self, session: Session) -> None:
        """The link stops reading ``session``: what its codec still holds goes to ``on_final``."""
        events = session.codec.flush()
        if events and self.on_final is not None:
            self.on_final(events)

    async def _recover(self, session: Session) -> None:
        """Replace the dropped ``session`` within the episode's budget, or give up."""
        assert session.lost is not None
        reason, detail = session.lost
        self._flush(session)  # its last words belong to the history the next session is given
        self.session = None
        self._probation_until = None
        if self._pinging is not None and self._pinging[0] is session:
            self._pinging[1].cancel()  # a ping in flight on it would wait out pong_timeout
        if self._recycling is not None:
            # A recycle in flight (a goAway's, say, when the provider closed first) is abandoned:
            # it closes what it opened, and the resume below opens the one replacement.
            self._recycling.cancel()
        await self._discard(session.upstream)
        if reason in (Reason.AGENT_HANGUP, Reason.UPSTREAM_REJECTED):
            raise LinkDown(reason, detail)
        now = trio.current_time()
        budget = self.settings.reconnect_budget
        if budget <= 0:
            raise LinkDown(reason, detail)
        episode = self._episode
        if episode is None:
            episode = self._episode = _Episode(reason, detail, until=now + budget)
        else:  # the replacement died on probation: same budget, and a pause before the next
            await episode.backoff.pause(episode.until)
        failed = self.metrics.upstream_reconnects.labels(outcome="failed")
        if trio.current_time() >= episode.until:
            failed.inc()
            raise LinkDown(
                episode.reason, f"{episode.detail}; reconnect_budget={budget:g}s spent ({detail})"
            )
        log.info("provider session dropped (%s): resuming", detail, extra=self._extra)
        attributes = {
            "voxbridge.provider": self.provider.name,
            "voxbridge.drop_reason": reason.value,
        }
        with self._tracer.span("voxbridge.provider.resume", attributes=attributes) as span:
            try:
                self.session = await self._establish(
                    episode.until, retry=True, backoff=episode.backoff
                )
            except _NoSession as exc:
                failed.inc()
                span.fail(exc.reason.value, exc.detail)
                if exc.reason is Reason.UPSTREAM_REJECTED:
                    raise LinkDown(exc.reason, exc.detail) from None
                raise LinkDown(
                    episode.reason, f"{episode.detail}; resuming failed: {exc.detail}"
                ) from None
        self._probation_until = trio.current_time() + max(budget, MIN_PROBATION)
        self._wake_upkeep()

    def _wake_upkeep(self) -> None:
        """The session changed: upkeep recomputes when to ping, recycle, settle a probation."""
        self._changed.set()
        self._changed = trio.Event()

    def _proved_healthy(self) -> None:
        """The resumed session survived its probation (or the call ended while it worked)."""
        session = self.session
        self._probation_until = None
        if session is None or session.lost is not None:
            return  # it died on probation: the reading task charges that to the episode
        self._episode = None
        self.resumes += 1
        self.metrics.upstream_reconnects.labels(outcome="resumed").inc()

    # --- upkeep: keepalive, recycling, probation ------------------------------------------------

    async def upkeep(self) -> None:
        """Keepalive, recycling and probation, in one task of the call (a task is memory at scale).

        Every ``keepalive_interval`` (from the end of the previous ping) the current session is
        pinged under ``pong_timeout``; no pong drops it. A codec that declares a keepalive message
        (:class:`~voxbridge.providers.base.Keepalive`) has it sent on its cadence, under
        ``send_timeout``. At ``session_max_age``, or at once after :meth:`recycle_soon`, the session
        is recycled; a failed recycle is retried ``RECYCLE_RETRY`` seconds later. Never raises for
        a provider fault: a dropped session is the reading task's to resume.
        """
        settings = self.settings
        await self._opened.wait()
        next_ping = trio.current_time() + settings.keepalive_interval
        recycle_not_before = -math.inf
        while True:
            session = self.session
            wake = next_ping
            if session is not None and session.lost is None:
                recycle_at = self._recycle_at(session, recycle_not_before)
                wake = min(wake, recycle_at, session.keepalive_at)
            if self._probation_until is not None:
                wake = min(wake, self._probation_until)
            with trio.move_on_at(wake):
                await self._changed.wait()
            now = trio.current_time()
            session = self.session
            if self._ending is not None and self._ending is not session:
                self._ending = None  # replaced meanwhile: nothing left to recycle
            if session is None or session.lost is not None:  # resuming: check the next one later
                self._probation_until = None  # (a lost session never proves healthy)
                if now >= next_ping:
                    next_ping = now + settings.keepalive_interval
                continue
            if self._probation_until is not None and now >= self._probation_until:
                # Up for the whole probation, and it must still answer a ping: a session that
                # froze right after it opened has not proved anything by staying "up".
                await self._ping(session)
                next_ping = trio.current_time() + settings.keepalive_interval
                if self.session is session:
                    self._proved_healthy()
                continue
            if now >= session.keepalive_at:
                await self._keep_alive(session, now)
                continue
            if now >= self._recycle_at(session, recycle_not_before):
                recycled = await self.recycle()
                if not recycled and self.session is session and session.lost is None:
                    recycle_not_before = trio.current_time() + RECYCLE_RETRY  # it carries on
                continue
            if now >= next_ping:
                await self._ping(session)
                next_ping = trio.current_time() + settings.keepalive_interval

    def recycle_soon(self, session: Session, ends_in: float | None = None) -> None:
        """The provider will end ``session`` soon (Gemini's ``goAway``): have upkeep recycle it,
        make before break, instead of at ``session_max_age``. Does not wait.

        ``ends_in`` ``None``: at once (no answer in flight, or the one in flight has just ended).
        A number: the agent is answering, and the provider ends the session in ``ends_in``
        seconds; the recycle waits for the answer to end (the call calls this again, without
        ``ends_in``), at the latest until ``RECYCLE_MARGIN`` seconds before that end (at once if
        less is left). A later call can bring the recycle forward, never put it off.

        Nothing happens if ``session`` is no longer the current one (replaced already, or dropped
        and being resumed). After a failed recycle the next try still waits ``RECYCLE_RETRY``. If
        the provider closes ``session`` before the switch, the recycle is abandoned and the drop
        resumed like any other (:meth:`receive`), so one session replaces it, not two.
        """
        if session is not self.session or session.lost is not None:
            return
        now = trio.current_time()
        by = now if ends_in is None else now + max(0.0, ends_in - RECYCLE_MARGIN)
        if self._ending is session and by >= self._ending_by:
            return
        if by <= now:
            log.info("the provider is ending the session: recycling it now", extra=self._extra)
        else:
            log.info(
                "the provider is ending the session: recycling it when the agent's answer ends"
                " (in %gs at the latest)",
                by - now,
                extra=self._extra,
            )
        self._ending = session
        self._ending_by = by
        self._wake_upkeep()

    def _recycle_at(self, session: Session, not_before: float) -> float:
        if self._ending is session:
            return max(self._ending_by, not_before)
        return max(session.upstream.opened_at + self.settings.session_max_age, not_before)

    async def _keep_alive(self, session: Session, now: float) -> None:
        """Send ``session`` its codec's keepalive message; the next one is due an interval on."""
        keepalive = session.keepalive
        assert keepalive is not None  # else keepalive_at is inf
        session.keepalive_at = now + keepalive.interval
        await self.send_within(session, keepalive.frame)  # a stalled send drops the session

    async def _ping(self, session: Session) -> None:
        pong_timeout = self.settings.pong_timeout
        # trio-websocket never wakes a pending ping when its socket closes: the reading task
        # cancels this scope when it finds the session gone, so upkeep moves on at once.
        scope = trio.CancelScope()
        self._pinging = (session, scope)
        try:
            with scope, deadline(pong_timeout, UpstreamTimeout):
                rtt = await session.upstream.ping()
                self.metrics.upstream_ping_rtt.observe(rtt)
        except UpstreamTimeout:
            await self.lose(
                session,
                Reason.UPSTREAM_KEEPALIVE_TIMEOUT,
                f"no pong within pong_timeout={pong_timeout:g}s",
            )
        except UpstreamClosed:
            pass  # the reading task sees the close and decides
        finally:
            self._pinging = None

    async def recycle(self) -> bool:
        """Make before break: open a fresh session, switch to it, close the old one.

        Returns:
            True if the call now talks to the fresh session. False if it could not be opened (or
            the old session dropped meanwhile, which abandons the recycle): whatever was opened is
            closed, the call carries on.
        """
        old = self.session
        attributes = {"voxbridge.provider": self.provider.name}
        with self._tracer.span("voxbridge.provider.recycle", attributes=attributes) as span:
            recycled = False
            with trio.CancelScope() as scope:  # cancelled by _recover: the old session dropped
                self._recycling = scope
                try:
                    recycled = await self._recycle(span, old)
                finally:
                    self._recycling = None
            if scope.cancelled_caught and old is not None and old.lost is not None:
                span.fail(
                    old.lost[0].value, f"the session dropped before the switch: {old.lost[1]}"
                )
            span.set("voxbridge.recycled", recycled)
            return recycled

    async def _recycle(self, span: tracing.Span, old: Session | None) -> bool:
        until = trio.current_time() + max(self.settings.reconnect_budget, MIN_PROBATION)
        try:
            fresh = await self._establish(until, retry=True)
        except _NoSession as exc:
            log.warning(
                "recycle failed, the working session carries on: %s", exc.detail, extra=self._extra
            )
            span.fail(exc.reason.value, exc.detail)
            return False
        # Make before break means *made*: the fresh session must answer a ping -- so it is alive
        # and has read the opening frames sent before the ping -- before the call relies on it.
        try:
            with deadline(self.settings.pong_timeout, UpstreamTimeout):
                await self._ping_while_reading(fresh)
        except UpstreamError as exc:
            log.warning(
                "recycle failed, the working session carries on: the new session did not answer "
                "a ping: %s",
                exc,
                extra=self._extra,
            )
            lost = (
                Reason.UPSTREAM_CLOSED
                if isinstance(exc, UpstreamClosed)
                else Reason.UPSTREAM_KEEPALIVE_TIMEOUT
            )
            span.fail(lost.value, f"the new session did not answer a ping: {exc}")
            await self._discard(fresh.upstream)
            return False
        except BaseException:  # abandoned (the old session dropped) or the call ends
            await self._discard(fresh.upstream)
            raise
        if old is None or self.session is not old or old.lost is not None:
            await self._close(fresh.upstream, 1000, "not needed")
            return False
        self.session = fresh
        self._recycling = None  # switched: a drop from now on is the fresh session's to resume
        self._wake_upkeep()
        self._flush(old)  # the call reads the fresh session from now on
        log.info("provider session recycled", extra=self._extra)
        await self._close(old.upstream, 1000, "recycled")
        return True

    async def _ping_while_reading(self, fresh: Session) -> None:
        """Ping ``fresh`` and wait for the pong, reading its frames meanwhile (kept, in order).

        Nobody else reads a session before the switch, and its answers to the replayed history
        (two events per line with OpenAI) would fill the socket's queue; a full queue pauses
        trio-websocket's reader, which then answers no pong. So they are read here, up to
        ``EARLY_FRAMES`` (more fails the recycle: the old session carries on).

        Raises:
            UpstreamClosed: the session closed. UpstreamTimeout: too many frames to keep.
        """
        failure: UpstreamError | None = None
        if fresh.early is None:
            fresh.early = deque()
        early = fresh.early  # (after what waiting for its acknowledgement read, in order)

        async def read(nursery: trio.Nursery) -> None:
            nonlocal failure
            try:
                while len(early) < EARLY_FRAMES:
                    early.append(await fresh.upstream.receive())
                failure = UpstreamTimeout(f"more than {EARLY_FRAMES} frames before the switch")
            except UpstreamClosed as exc:
                failure = exc
            nursery.cancel_scope.cancel()

        async def ping(nursery: trio.Nursery) -> None:
            nonlocal failure
            try:
                await fresh.upstream.ping()
            except UpstreamClosed as exc:
                failure = exc
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:  # each task keeps its errors: no group
            nursery.start_soon(read, nursery)
            nursery.start_soon(ping, nursery)
        if failure is not None:
            raise failure

    # --- closing ------------------------------------------------------------------------------

    async def aclose(self, code: int, reason: str) -> None:
        """Say goodbye (best effort), then close every socket this link opened. Bounded.

        The current session gets the codec's closing frames and a close handshake, each within
        ``close_timeout``; any other socket still open is aborted. Safe under cancellation: the
        sockets are closed on every path.
        """
        if self._probation_until is not None:
            self._proved_healthy()  # the call ends for another reason while it works: it resumed
        session, self.session = self.session, None
        if session is not None:
            self._flush(session)  # the agent's last words, if the provider never said they ended
        try:
            if session is not None and session.lost is None:
                with trio.move_on_after(self.settings.close_timeout):
                    for frame in session.codec.closing():
                        await session.upstream.send(frame)
                await self._close(session.upstream, code, reason)
        except UpstreamError:
            pass  # the provider left first: nothing more to say
        finally:
            await self._abort_all()
        await self._settle()

    async def _settle(self) -> None:
        """Ask what each session cost (providers that bill per session, after it ended), side
        by side, within ``close_timeout``; what does not answer in time is not metered."""
        queries, self._usage_queries = self._usage_queries, []
        if not queries or self.on_usage is None:
            return
        on_usage = self.on_usage

        async def ask(query: Callable[[], Awaitable[Usage | None]]) -> None:
            usage = await query()
            if usage is not None:
                on_usage(usage)

        with trio.move_on_after(self.settings.close_timeout):
            async with trio.open_nursery() as nursery:
                for query in queries:
                    nursery.start_soon(ask, query)

    async def _close(self, upstream: Upstream, code: int, reason: str) -> None:
        """Close handshake within ``close_timeout``; the socket is closed either way."""
        try:
            with trio.move_on_after(self.settings.close_timeout):
                await upstream.aclose(code, reason)
        finally:
            await self._discard(upstream)

    async def _abort_all(self) -> None:
        """Abort every socket still open, even in a cancelled context: each abort closes its
        stream before it first checkpoints, and the rest are reached through ``finally``."""
        if not self.sockets:
            return
        upstream = self.sockets.pop()
        try:
            await upstream.abort()
        finally:
            await self._abort_all()

    async def _discard(self, upstream: Upstream) -> None:
        """Close ``upstream`` at once (no handshake) and forget it. Idempotent."""
        self.sockets.discard(upstream)
        await upstream.abort()
