"""One phone call, bridged: a nursery, three tasks, a deadline on every wait, one teardown.

The shape (docs/architecture.md, "The call lifecycle")::

    Call.run()
      sockets nursery  ── hosts the provider sockets' readers; outlives the call's own tasks so the
      │                   close handshakes can complete during teardown
      └─ call scope    ── deadline = accept + max_call_duration; Call.end() cancels it
           wait for the carrier's start              (start_timeout; the codec's StreamStarted)
           task nursery                              (the carrier is read from here to the end)
           ├── caller_to_upstream   receive (idle_timeout) -> CarrierCodec.decode ->
           │                        ProviderLink.send; mark echoes -> Playback; StreamStopped
           │                        -> caller_stop; audio dropped (counted) while the
           │                        link has no session (opening, resuming);
           │                        opt-in: audio gathered for upstream_batch_ms (AudioBatch)
           ├── upstream_to_caller   ProviderLink.open (connect_timeout, retried with backoff), then
           │                        ProviderLink.receive (which resumes a dropped session) ->
           │                        decode (bad frames dropped, counted) -> send to the carrier
           │                        (send_timeout); a mark after each media message (a carrier
           │                        without marks: a playout estimate); barge-in -> `clear`
           │                        (its marks settled), cancel + truncates, late audio dropped;
           │                        agent hang-up
           │                        -> wait for the goodbye to be heard (farewell_timeout); usage
           │                        metered; each tool call started as a task here
           ├── ProviderLink.upkeep  pings under pong_timeout, recycling at session_max_age
           ├── keypad               from the first key press: keys grouped (DTMF_INTERDIGIT_TIMEOUT)
           │                        -> transcript, and to the model unless the agent ignores them
           └── a tool call          run_tool (tool_timeout) -> result to the model; end_call and
                                    transfer_call: heard, then the carrier's REST API (CarrierRest),
                                    then the call ends
      teardown (shielded, bounded by teardown_timeout): close the provider link and the carrier,
                                    side by side
    account (synchronous, exactly once): metrics, journal, one log line, the call span's
                                    attributes, registry removal

Every way the call can end becomes a ``Disconnect(reason)``: a deadline firing (a task's
``Watchdog``), a peer leaving (the transports), the carrier's stop (``StreamStopped``; a carrier
that sends none ends ``caller_closed`` when its socket closes), a bad frame, the provider
link giving up (``LinkDown``, turned into a ``Disconnect`` here and nowhere else), ``Call.end()``
from outside, the max-duration deadline, a cancellation by the host app (``server_shutdown``), or a
bug (``internal_error``, chained from the exception group). Tasks do not let either escape into the
nursery: ``_guard`` records the reason (first reason wins) and cancels the call scope, so no code
ever picks exception groups apart by hand.

The call speaks only the carrier protocol (:mod:`voxbridge.carriers.base`): a
:class:`~voxbridge.carriers.base.CarrierCodec` per stream (its ``capabilities`` say whether marks
exist), and a :class:`~voxbridge.carriers.base.CarrierRest` for the built-in tools. Nothing here
knows which carrier it is, beyond its name.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial

import orjson
import trio
from prometheus_client import Counter

from .. import tracing
from ..agents import AgentConfig
from ..audio import BYTES_PER_MS, b64_size
from ..carriers.base import (
    CallerAudio,
    CarrierCodec,
    CarrierEvent,
    CarrierRest,
    CarrierRestError,
    Dtmf,
    MarkPlayed,
    StreamStarted,
    StreamStopped,
)
from ..deadlines import Deadline
from ..errors import (
    BadAudio,
    Disconnect,
    LinkDown,
    Reason,
    RemoteProtocolError,
    UpstreamTimeout,
    ends_call,
)
from ..journal import CallJournal, MemoryJournal
from ..logs import call_context
from ..metrics import UNKNOWN_TOOL, Metrics
from ..providers.base import Frame, Provider
from ..providers.endpoint import ProviderEndpoint
from ..providers.events import (
    AgentAudio,
    AgentHangup,
    ProviderError,
    ProviderEvent,
    ResponseDone,
    ResponseStarted,
    SessionEnding,
    SpeechStarted,
    ToolCall,
    ToolExchange,
    Transcript,
    Truncation,
    Usage,
)
from ..providers.openai_realtime import OpenAIProvider
from ..settings import Settings
from ..tools import END_CALL, TRANSFER_CALL, Tool, ToolContext, run_tool
from ..upstream import StreamConnector, open_tcp_stream_tuned
from ..upstream.fastpaths import FastWebSocketConnection
from .batch import AudioBatch
from .carrier import CarrierClosed, CarrierSocket
from .link import ProviderLink, Session
from .playback import Playback
from .registry import CallRegistry
from .state import CallRecord, CallState
from .watchdog import Watchdog

__all__ = ["Call", "run_call"]

log = logging.getLogger("voxbridge.call")

# Which setting bounds the wait behind each timeout reason (for the one log line per call).
# (A provider drop is bounded by reconnect_budget after its own deadline: its detail says both.)
_LIMITS = {
    Reason.IDLE_TIMEOUT: "idle_timeout",
    Reason.START_TIMEOUT: "start_timeout",
    Reason.MAX_DURATION: "max_call_duration",
    Reason.UPSTREAM_CONNECT_FAILED: "connect_timeout",
    Reason.CALLER_STALLED: "send_timeout",
}


async def run_call(
    carrier: CarrierSocket,
    provider: Provider | ProviderEndpoint,
    *,
    settings: Settings | None = None,
    metrics: Metrics | None = None,
    registry: CallRegistry | None = None,
    journal: CallJournal | None = None,
    connect_stream: StreamConnector | None = None,
    on_start: Callable[[StreamStarted], None] | None = None,
    tools: Sequence[Tool] = (),
    agent: AgentConfig | None = None,
    configure: Callable[[StreamStarted], AgentConfig | None] | None = None,
    carrier_rest: CarrierRest | None = None,
    codec: CarrierCodec | None = None,
    carrier_name: str = "twilio",
) -> Disconnect:
    """Bridge one accepted carrier WebSocket to a provider until the call ends.

    Runs in the caller's trio task; everything the call starts ends before this returns. Cancelling
    the surrounding scope ends the call with ``server_shutdown`` (teardown still runs, shielded and
    bounded) and then lets the cancellation propagate.

    Args:
        carrier: the accepted carrier socket (see :class:`voxbridge.session.CarrierSocket`).
        provider: the provider (see :func:`voxbridge.providers.provider_for`), or just the
            endpoint of an OpenAI-Realtime-compatible service (GA protocol).
        settings: deadlines and provider options; defaults to ``Settings()``.
        metrics: where to count; a private registry if omitted.
        registry: where the call registers itself while it runs (and is remembered after).
        journal: where the call's record and transcript go; in memory if omitted.
        connect_stream: opens the byte stream to the provider; defaults to tuned TCP.
        on_start: called with the carrier's start (:class:`~voxbridge.carriers.base.StreamStarted`:
            ``call_id``, ``stream_id``, ``account_id``, ``custom_parameters``, ``details``) before
            any provider session opens; it refuses the call by raising ``Disconnect`` (e.g.
            ``PROTOCOL_ERROR`` for a bad per-call token).
        tools: tools the agent may call (see :class:`voxbridge.Tool`); each call runs in the
            call's nursery under ``settings.tool_timeout``.
        agent: the agent (voice, instructions, greeting, tools offered, DTMF policy, ...);
            ``AgentConfig()`` if omitted: the provider's own settings, every tool offered.
        configure: called with the ``StreamStarted`` (after ``on_start``); the agent it returns
            replaces ``agent`` for this call (``None`` keeps it). It refuses the call by raising
            ``Disconnect``.
        carrier_rest: the carrier's REST API for this call's account
            (:class:`~voxbridge.carriers.base.CarrierRest`, e.g.
            :class:`~voxbridge.carriers.twilio_rest.TwilioRest`): enables the built-in
            ``end_call``, and ``transfer_call`` when it ``can_transfer`` and there is a transfer
            target.
        codec: the carrier's codec for this stream (:class:`~voxbridge.carriers.base.CarrierCodec`,
            fresh: one per stream); default: a new one of the registered carrier
            ``carrier_name``.
        carrier_name: the carrier's name (the ``carrier`` metric label and record field).

    Returns:
        The ``Disconnect`` that ended the call; ``.reason`` is one of the closed set.
    """
    call = Call(
        carrier,
        provider,
        settings=settings if settings is not None else Settings(),
        metrics=metrics if metrics is not None else Metrics(),
        registry=registry,
        journal=journal,
        connect_stream=connect_stream,
        on_start=on_start,
        tools=tools,
        agent=agent,
        configure=configure,
        carrier_rest=carrier_rest,
        codec=codec,
        carrier_name=carrier_name,
    )
    return await call.run()


def _as_provider(provider: Provider | ProviderEndpoint, settings: Settings) -> Provider:
    if isinstance(provider, ProviderEndpoint):
        return OpenAIProvider.from_settings(provider, settings)
    return provider


# Agent audio in one media message at most: 100 ms of mu-law. A mark follows every media message,
# so this is also the worst-case granularity of barge-in truncation: chunks queued together are
# merged up to it (_coalesce), and a provider chunk longer than it goes out in slices of it.
MAX_MEDIA_BYTES = 800

IDLE_TIMEOUT = ends_call(Reason.IDLE_TIMEOUT)

# Caller audio kept while the first provider session opens: 2 s of 20 ms frames (about 21 KB).
OPENING_BACKLOG_FRAMES = 100

# Caller audio may run ahead of real time by this much (network jitter delivers bursts); beyond
# it, a flood is dropped and counted, so a carrier cannot make the provider bill faster than
# the call's clock or queue audio without bound.
FLOOD_BURST_MS = 2000


class _RealTime:
    """A token bucket in milliseconds of audio, refilled by the clock: audio is admitted while it
    is at most ``burst_ms`` ahead of real time."""

    __slots__ = ("_at", "_burst", "_tokens", "dropped")

    def __init__(self, burst_ms: float) -> None:
        self._burst = burst_ms
        self._tokens = burst_ms
        self._at = -math.inf
        self.dropped = 0

    def admits(self, nbytes: int, now: float) -> bool:
        """``nbytes`` of mu-law (8 per ms) arriving at ``now`` (seconds): within real time?"""
        tokens = min(self._burst, self._tokens + (now - self._at) * 1000)
        self._at = now
        need = nbytes / BYTES_PER_MS
        if tokens < need:
            self._tokens = tokens
            self.dropped += 1
            return False
        self._tokens = tokens - need
        return True


# Key presses less than this apart (seconds) are one group, told to the model as one message:
# people type a number at 2-4 keys a second, and a pause of a second means they are done.
DTMF_INTERDIGIT_TIMEOUT = 1.0
MAX_DTMF_GROUP = 32  # keys in one group at most (a long number plus some)
MAX_DTMF_DIGITS = 64  # keys queued, not read yet, at most
# Tool calls of one call running at once at most; beyond, the model is told to try again.
MAX_TOOLS_RUNNING = 8

# The caller ending the call while the agent's goodbye plays: the agent's hang-up stands.
_CALLER_LEFT = frozenset({Reason.CALLER_STOP, Reason.CALLER_CLOSED})


#: How long the sender waits, in a burst, for the provider socket's reader to hand over what it
#: has received before it sends a message under the bound (seconds; :func:`_coalesce`). A reader
#: hands a socket read over in microseconds, and a burst is ahead of real time by far more.
BURST_SETTLE = 0.001


def _whole_reads(session: Session) -> bool:
    """Whether ``session``'s socket reader hands over every message of a socket read in one
    scheduler pass (voxbridge's reader), not one per pass (trio-websocket's own)."""
    return isinstance(getattr(session.upstream, "ws", None), FastWebSocketConnection)


class _Merge:
    """Agent audio of one item and response, joined up to ``MAX_MEDIA_BYTES`` (:func:`_coalesce`)."""

    __slots__ = ("carry", "chunks", "item_id", "response_id", "size")

    def __init__(self, first: AgentAudio) -> None:
        self.chunks = [first.audio]
        self.size = len(first.audio)
        self.item_id = first.item_id
        self.response_id = first.response_id
        self.carry: ProviderEvent | None = None  # the event that ended the merge, read ahead

    @property
    def open(self) -> bool:
        """Nothing read ahead yet: a full merge stays open until the next event is read (it is
        then read ahead, so the next message knows it continues a burst)."""
        return self.carry is None

    @property
    def merged(self) -> tuple[bytes, ProviderEvent | None]:
        """The audio, and the event that ended the merge (``None``: none read ahead)."""
        chunks = self.chunks
        return b"".join(chunks) if len(chunks) > 1 else chunks[0], self.carry

    def add(self, event: ProviderEvent | None) -> None:
        """Join ``event``'s audio, or end the merge with it (``None``: a frame dropped)."""
        if (
            type(event) is AgentAudio
            and event.item_id == self.item_id
            and event.response_id == self.response_id
            and self.size + len(event.audio) <= MAX_MEDIA_BYTES
        ):
            self.chunks.append(event.audio)
            self.size += len(event.audio)
        elif event is not None:
            self.carry = event  # another item or event, or too much to join: handled next

    def drain(
        self, session: Session, decode: Callable[[Session, Frame], ProviderEvent | None]
    ) -> bool:
        """Take what ``session`` has queued while the merge is open; False if nothing was."""
        took = False
        while self.open and (frame := session.receive_nowait()) is not None:
            took = True
            self.add(decode(session, frame))
        return took

    async def settle(
        self,
        session: Session,
        decode: Callable[[Session, Frame], ProviderEvent | None],
        link: ProviderLink,
    ) -> tuple[bytes, ProviderEvent | None]:
        """Wait ``BURST_SETTLE`` at a time while the rest of a burst arrives (:func:`_coalesce`)."""
        while self.open and self.size < MAX_MEDIA_BYTES and link.session is session:
            await trio.sleep(BURST_SETTLE)  # the rest of the burst the socket has received
            if not self.drain(session, decode):
                break
        return self.merged


def _coalesce(
    first: AgentAudio,
    session: Session,
    decode: Callable[[Session, Frame], ProviderEvent | None],
    read_ahead: bool,
) -> tuple[bytes, ProviderEvent | None] | _Merge:
    """The agent audio of one media message: ``first``'s, joined with what is queued behind it.

    Returns the audio and the event that ended the merge, read ahead (to handle next), if any; or,
    when the message continues a burst and may take more of it, the merge, whose
    :meth:`_Merge.settle` returns them once the rest has arrived.

    The rule (docs/architecture.md, "The hot path"):

    * **What merges**: chunks of ``first``'s item and response, in the order the provider sent
      them, that the provider session has already received, up to ``MAX_MEDIA_BYTES`` (100 ms of
      mu-law); a chunk that alone is longer goes alone (the caller slices it).
    * **What ends a merge**: the bound (the chunk that would pass it begins the next message), or
      any other event -- a ``SpeechStarted``, another item or response, a transcript, a tool
      call -- which is returned and handled next, in order. So a barge-in's ``clear`` follows
      exactly the audio the provider sent before it, and audio behind it is judged after it
      (``Playback.admits``: late audio is dropped, never merged into a message sent before).
    * **Marks**: the caller sends one mark per message (exact mode) or per burst (sparse), so the
      heard position and a barge-in's truncation are exact to a message, at most 100 ms.
    * **By construction, not by scheduling**: what merges depends on what the provider sent and
      when it arrived, never on how often the carrier's sends yield (not at all with hypercorn's
      fast path, twice without it) nor on how the provider socket's reader hands messages over.
      voxbridge's reader (:class:`~voxbridge.upstream.fastpaths.FastWebSocketConnection`) hands
      a whole socket read over in one scheduler pass, so what it has read is queued whenever the
      sender looks. A message that continues a burst (``first`` was read ahead: the message
      before it was full, or ended by another event) and is under the bound may be cut by the end
      of a socket read, with the next read already arrived: it waits ``BURST_SETTLE`` (1 ms) at a
      time while more of the burst comes. Any other message goes at once: nothing waits for
      audio that has not arrived. trio-websocket's own reader (the fallback) hands over one
      message per pass, so with it every message under the bound waits ``BURST_SETTLE``.
    """
    if len(first.audio) >= MAX_MEDIA_BYTES:
        return first.audio, None
    frame = session.receive_nowait()
    whole_reads = _whole_reads(session)
    if frame is None and not read_ahead and whole_reads:
        return first.audio, None  # the common case in real time: a chunk alone in its read
    merge = _Merge(first)
    if frame is not None:
        merge.add(decode(session, frame))
        merge.drain(session, decode)
    if (read_ahead or not whole_reads) and merge.open and merge.size < MAX_MEDIA_BYTES:
        return merge  # the caller awaits merge.settle()
    return merge.merged


def _ends_burst(event: ProviderEvent, playback: Playback, session: Session) -> bool:
    """Whether ``event``, handled after agent audio, ends a burst (sparse marks: the audio sent
    before it gets its mark now): anything but more audio that will play, or a barge-in (its
    ``clear`` settles that audio instead)."""
    if type(event) is AgentAudio:
        return not playback.admits(event.item_id, event.response_id, session)
    return type(event) is not SpeechStarted


@contextmanager
def _counted_at_exit(
    backlog: deque[tuple[str, int]], batch: AudioBatch | None, dropped: Counter
) -> Iterator[None]:
    """Caller audio still waiting when the call ends (for the first session, or in a batch that
    was never sent) was dropped: count it."""
    try:
        yield
    finally:
        dropped.inc(sum(count for _, count in backlog) + (batch.clear() if batch else 0))
        backlog.clear()


def _drop_frames(exc: BaseException) -> None:
    """Drop the tracebacks of ``exc`` and of every exception chained to it or grouped in it.

    A bug's exception (an ``internal_error``'s cause) holds the frames of the call's tasks, and
    they hold the call: once its log line has formatted the traceback, the call keeps the
    exceptions (their types and messages, the chain, the group's members) without the frames,
    so a finished call is freed by reference counting, not left to the cyclic collector.
    """
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
        if isinstance(current, BaseExceptionGroup):
            pending += current.exceptions


def _codec_of(carrier_name: str) -> CarrierCodec:
    """A fresh codec of the registered carrier ``carrier_name``.

    Raises:
        ValueError: no carrier of that name is registered.
    """
    from ..carriers.registry import CARRIERS  # the registry imports every carrier module

    spec = CARRIERS.get(carrier_name)
    if spec is None:
        raise ValueError(f"no carrier named {carrier_name!r} (known: {', '.join(CARRIERS)})")
    return spec.codec()


class Call:
    """One call's state and tasks. Most users want :func:`run_call`; drain uses :meth:`end`."""

    __slots__ = (
        "_carrier",
        "_codec",
        "_connect_stream",
        "_ending",
        "_goodbye_heard",
        "_goodbye_mark",
        "_handing_off",
        "_keypad",
        "_leaving",
        "_link",
        "_offered",
        "_playback",
        "_providers",
        "_ran",
        "_scope",
        "_span",
        "_tasks",
        "_tools_running",
        "_tracer",
        "_warned",
        "agent",
        "answered_by_machine",
        "carrier_name",
        "carrier_rest",
        "configure",
        "ended",
        "journal",
        "metrics",
        "on_start",
        "provider",
        "registry",
        "settings",
        "state",
        "tools",
    )

    def __init__(
        self,
        carrier: CarrierSocket,
        provider: Provider | ProviderEndpoint,
        *,
        settings: Settings,
        metrics: Metrics,
        registry: CallRegistry | None = None,
        journal: CallJournal | None = None,
        connect_stream: StreamConnector | None = None,
        carrier_name: str = "twilio",
        on_start: Callable[[StreamStarted], None] | None = None,
        tools: Sequence[Tool] = (),
        agent: AgentConfig | None = None,
        configure: Callable[[StreamStarted], AgentConfig | None] | None = None,
        providers: Callable[[AgentConfig], Provider] | None = None,
        carrier_rest: CarrierRest | None = None,
        codec: CarrierCodec | None = None,
    ) -> None:
        self.settings = settings
        self.on_start = on_start
        self.configure = configure
        self.agent = agent if agent is not None else AgentConfig()
        self.tools = {tool.name: tool for tool in tools}
        self.carrier_rest = carrier_rest
        #: Set before the call starts when an answering machine picked up (Twilio's
        #: ``AnsweredBy``): with ``on_machine="leave_message"`` the agent's greeting is the
        #: message, and the call hangs up once it has been heard.
        self.answered_by_machine = False
        self._providers = providers  # the provider for an agent (by default ``provider``)
        self._offered: dict[str, Tool] = {}  # the tools offered to the model, by name
        self._tasks: trio.Nursery | None = None  # the call's task nursery, once it runs
        self._tools_running = 0
        self._keypad: trio.MemorySendChannel[str] | None = None
        self.metrics = metrics
        self.registry = registry
        self.journal: CallJournal = journal if journal is not None else MemoryJournal()
        self.provider = _as_provider(provider, settings)
        self.carrier_name = carrier_name
        self._carrier = carrier
        self._connect_stream = connect_stream or open_tcp_stream_tuned(settings.tcp_user_timeout)
        self._codec = codec if codec is not None else _codec_of(carrier_name)
        self._playback = Playback(
            marks=self._codec.capabilities.marks, sparse=self.settings.marks == "sparse"
        )
        self._link: ProviderLink | None = None
        self._scope = trio.CancelScope()
        self._ending: Disconnect | None = None
        # How the call is ending while the agent's last words play (agent_hangup, transferred):
        # the caller hanging up meanwhile does not change it.
        self._leaving: Disconnect | None = None
        self._handing_off = False  # end_call or transfer_call is under way
        self._goodbye_heard: trio.Event | None = None
        self._goodbye_mark = 0  # the last mark of the agent's last words
        self._warned: set[str] = set()  # provider drop reasons already logged at warning level
        self._ran = False
        self._tracer = tracing.tracer()  # off: a no-op whose spans cost nothing
        self._span = tracing.NO_SPAN  # the call's span, while it runs
        self.state = CallState(
            call_id=uuid.uuid4().hex[:12],
            accepted_at=math.nan,
            carrier=carrier_name,
            provider=self.provider.name,
        )
        self.ended = trio.Event()

    @property
    def disconnect(self) -> Disconnect | None:
        """The reason the call ended (or is ending), once there is one."""
        return self._ending

    def end(self, reason: Reason, detail: str = "") -> None:
        """End the call with ``reason`` unless it already has one. Safe from any task, any time."""
        self._record(Disconnect(reason, detail))

    async def run(self) -> Disconnect:
        """Run the call to its end. See :func:`run_call`. A ``Call`` runs once."""
        if self._ran:
            raise RuntimeError("a Call runs once")
        self._ran = True
        # Both are context variables, which every task the call starts inherits: each log line
        # names the call (voxbridge.logs), and the call's span is the parent of every span its
        # tasks open (voxbridge.tracing).
        attributes = {
            "voxbridge.call_id": self.state.call_id,
            "voxbridge.carrier": self.carrier_name,
        }
        with (
            call_context(self.state),
            self._tracer.span("voxbridge.call", kind="server", attributes=attributes) as span,
        ):
            self._span = span
            return await self._run()

    async def _run(self) -> Disconnect:
        self.state.accepted_at = trio.current_time()
        self._scope.deadline = self.state.accepted_at + self.settings.max_call_duration
        self.metrics.calls_active.inc()
        if self.registry is not None:
            self.registry.add(self)
        try:
            async with trio.open_nursery() as sockets:
                try:
                    with self._scope:
                        await self._lifecycle(sockets)
                        self._record(Disconnect(Reason.INTERNAL_ERROR, "call tasks ended silently"))
                except Disconnect as disconnect:
                    self._record(disconnect)
                except Exception as exc:  # a bug: still one reason, still the same teardown
                    failure = Disconnect(Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
                    failure.__cause__ = exc
                    self._record(failure)
                finally:
                    if self._ending is None:
                        if self._scope.cancelled_caught:
                            self._record(Disconnect(Reason.MAX_DURATION, "max_call_duration"))
                        else:
                            self._record(Disconnect(Reason.SERVER_SHUTDOWN, "cancelled by host"))
                    await self._teardown()
        finally:
            self._account()
            self._let_go()
        assert self._ending is not None
        return self._ending

    # --- phases -------------------------------------------------------------------------------

    async def _lifecycle(self, sockets: trio.Nursery) -> None:
        await self._wait_for_start()
        self.metrics.calls_started.labels(
            carrier=self.carrier_name, provider=self.provider.name
        ).inc()
        self._journal(self.journal.call_started, self.state)
        settings = self.settings
        self._link = ProviderLink(
            self.provider,
            settings=settings,
            metrics=self.metrics,
            nursery=sockets,
            connect_stream=self._connect_stream,
            history=self.state.transcript,
            call_id=self.state.call_id,
            live_until=self._scope.deadline + settings.teardown_timeout,
            on_usage=self._add_usage,
            on_final=self._final_events,
        )
        # The carrier is read from here on, while the provider session opens too: a carrier that
        # is not read freezes its connection (docs/library-notes.md, "the queue trap").
        async with trio.open_nursery() as tasks:
            self._tasks = tasks
            tasks.start_soon(self._guard, self._caller_to_upstream)
            tasks.start_soon(self._guard, self._upstream_to_caller)
            tasks.start_soon(self._guard, self._link.upkeep)

    async def _wait_for_start(self) -> None:
        watchdog = Watchdog()
        with watchdog:
            watchdog.arm(
                self.settings.start_timeout, Reason.START_TIMEOUT, since=self.state.accepted_at
            )
            while True:
                event = self._decode(await self._carrier.receive())
                self.state.last_caller_frame_at = trio.current_time()
                if type(event) is StreamStarted:
                    start = event
                    break
                if event is not None:  # pragma: no cover - the codec orders events
                    raise Disconnect(Reason.PROTOCOL_ERROR, f"{type(event).__name__} before start")
        state = self.state
        state.started_at = state.last_caller_frame_at
        state.carrier_call_id = start.call_id
        state.stream_id = start.stream_id
        state.account_id = start.account_id
        state.custom_parameters = dict(start.custom_parameters)
        log.debug(
            "call started", extra={"call_id": state.call_id, "call_sid": state.carrier_call_id}
        )
        if self.on_start is not None:
            self.on_start(start)  # may refuse the call (Disconnect) before any provider session
        if self.configure is not None:
            self.agent = self.configure(start) or self.agent  # may refuse the call too
        self._set_up_agent()

    def _set_up_agent(self) -> None:
        """The provider and tools of ``self.agent``: what the model is offered, and how."""
        agent = self.agent
        self.state.agent = agent.name
        offered: dict[str, Tool] = dict(self.tools)
        rest = self.carrier_rest
        if rest is not None:
            offered[END_CALL.name] = END_CALL
            if rest.can_transfer and self._transfer_target() is not None:
                offered[TRANSFER_CALL.name] = TRANSFER_CALL
        if agent.tools is not None:
            offered = {name: offered[name] for name in agent.tools if name in offered}
        self._offered = offered
        base = self._providers(agent) if self._providers is not None else self.provider
        # Every call configures its own copy: per-call provider state (Gemini's resumption handle)
        # must never be shared by two calls. (An embedder's provider of 0.1 has no for_agent; it
        # still works for the default agent without tools.)
        if hasattr(base, "for_agent") or offered or agent != AgentConfig(name=agent.name):
            base = base.for_agent(agent, list(offered.values()))
        self.provider = base
        self.state.provider = base.name

    def _transfer_target(self) -> str | None:
        return self.agent.transfer_to or self.settings.transfer_to

    # --- the call's tasks ---------------------------------------------------------------------

    async def _guard(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run one call task; its ``Disconnect`` ends the call (first reason wins).

        The provider link giving up (``LinkDown``) becomes a ``Disconnect`` here, and only here.
        """
        try:
            await task()
        except Disconnect as disconnect:
            self._record(disconnect)
        except LinkDown as down:
            self._record(Disconnect(down.reason, down.detail))

    async def _caller_to_upstream(self) -> None:
        carrier, link, state, playback = self._carrier, self._link, self.state, self._playback
        assert link is not None
        frames = self.metrics.media_frames.labels(direction="to_upstream")
        dropped = self.metrics.media_frames_dropped.labels(direction="to_upstream")
        idle_timeout, send_timeout = self.settings.idle_timeout, self.settings.send_timeout
        batch_ms = self.settings.upstream_batch_ms
        batch = AudioBatch(batch_ms) if batch_ms else None  # opt-in: off by default
        listen_since: float | None = None  # when the wait for the next frame began
        # A frame (None: the end of a batching window) that came in the very tick the scope
        # fired: the next pass handles it first.
        arrived: tuple[str | bytes | None] | None = None
        flood = _RealTime(FLOOD_BURST_MS)
        now = trio.current_time()  # when the caller's last frame arrived
        watch = Deadline()

        # Caller audio that arrives while the first session opens waits for it (the newest
        # OPENING_BACKLOG_FRAMES, older ones dropped and counted); while a session is being
        # resumed it is dropped and counted. Never queued without bound.
        backlog: deque[tuple[str, int]] = deque()
        backlog_frames = 0
        sending: tuple[Session, int] | None = None  # the send in flight: its session, its frames

        async def forward(payload: str, count: int) -> None:
            """Send ``count`` frames of caller audio upstream, after any backlog."""
            nonlocal backlog_frames
            session = link.session
            if session is None:
                if link.opened:
                    dropped.inc(count)  # resuming
                    return
                backlog.append((payload, count))
                backlog_frames += count
                while backlog_frames > OPENING_BACKLOG_FRAMES:
                    backlog_frames -= backlog[0][1]
                    dropped.inc(backlog.popleft()[1])
                return
            while backlog:
                earlier, earlier_count = backlog.popleft()
                backlog_frames -= earlier_count
                await send(session, earlier, earlier_count)
            await send(session, payload, count)

        async def send(session: Session, payload: str, count: int) -> None:
            nonlocal sending
            sending = (session, count)
            # One deadline move, as for every wait of this task; the link decides what a
            # provider that stopped reading means (it drops the session and resumes).
            watch.arm(send_timeout, UpstreamTimeout)
            sent = await link.send(session, session.codec.audio(payload))
            sending = None
            if not sent:
                dropped.inc(count)  # the session is gone: the link resumes it or gives up
                return
            state.frames_from_caller += count
            state.bytes_from_caller += b64_size(payload)
            frames.inc(count)

        async def relay() -> None:
            """Carrier frames to the provider until the call ends or a provider send stalls
            (``UpstreamTimeout``), or until the deadline a send left armed fires while we
            listen: then it returns, and the next pass listens on from the same instant."""
            nonlocal listen_since, now, arrived
            with watch:
                while True:
                    frame: str | bytes | None
                    if arrived is not None:
                        (frame,), arrived = arrived, None
                        listen_since = None  # it ended the silence, as any frame does
                    else:
                        # The idle deadline counts from when we are ready to listen again: the
                        # last frame heard, or later if a send kept us from reading -- a caller
                        # is never charged for our own delays. A receive can be started over,
                        # so the earlier deadline the last send left armed stays (restartable):
                        # one deadline move per LATENESS of frames instead of two per frame.
                        if listen_since is None:
                            listen_since = trio.current_time()
                        watch.arm(idle_timeout, IDLE_TIMEOUT, since=listen_since, restartable=True)
                        if batch:  # audio gathered: wait for the next frame, up to the window
                            frame = None
                            with trio.move_on_at(batch.flush_at):
                                frame = await carrier.receive()
                        else:
                            frame = await carrier.receive()
                        if watch.expired:  # it fired in the very tick the wait ended
                            arrived = (frame,)  # handled first, under the next pass's scope
                            return
                        listen_since = None
                    if frame is None:  # the batching window ended
                        assert batch is not None
                        flushing = trio.current_time()
                        await forward(*batch.take())
                        # the silence still counts from the last frame (plus our send)
                        listen_since = now + (trio.current_time() - flushing)
                        continue
                    now = state.last_caller_frame_at = trio.current_time()
                    event = self._decode(frame)
                    if type(event) is CallerAudio:
                        if not flood.admits(b64_size(event.payload), now):
                            dropped.inc()  # faster than real time: never queued, never paid for
                            if flood.dropped == 1:
                                log.warning(
                                    "caller audio arrives faster than real time: dropping the"
                                    " excess (more than %d ms ahead)",
                                    FLOOD_BURST_MS,
                                    extra={"call_id": state.call_id},
                                )
                            continue
                        if batch is None:
                            await forward(event.payload, 1)
                        elif batch.add(event.payload, now):
                            await forward(*batch.take())
                    elif type(event) is MarkPlayed:
                        if playback.played(event.name, now):
                            self._goodbye_played()
                    elif type(event) is StreamStopped:
                        if batch:
                            await forward(*batch.take())  # the caller's last words still count
                        raise Disconnect(Reason.CALLER_STOP, "carrier sent stop")
                    elif type(event) is Dtmf:
                        self._key_pressed(event.digit)

        with _counted_at_exit(backlog, batch, dropped):
            while True:
                try:
                    await relay()  # returned: a deadline kept while listening fired; listen on
                except CarrierClosed as closed:
                    if not closed.clean or self._codec.capabilities.sends_stop:
                        raise  # a dropped connection, or a carrier whose stop says it hung up
                    # a carrier without a stop event hangs up by closing its socket cleanly
                    if batch:
                        await forward(*batch.take())  # the caller's last words still count
                    raise Disconnect(
                        Reason.CALLER_STOP, f"carrier hung up: {closed.detail}"
                    ) from None
                except UpstreamTimeout as exc:  # the provider stopped reading
                    if sending is not None:  # (else it finished in the very tick it expired)
                        stalled, count = sending
                        sending = None
                        dropped.inc(count)
                        await link.lose(
                            stalled, Reason.UPSTREAM_STALLED, f"a send did not finish: {exc}"
                        )
                watch = Deadline()  # a scope is entered once: the next pass gets a new one

    async def _upstream_to_caller(self) -> None:
        """Play the provider to the caller; when the agent hangs up, let the goodbye be heard."""
        try:
            await self._play_provider()
        except (Disconnect, LinkDown) as end:
            if end.reason is not Reason.AGENT_HANGUP:
                raise
            # sparse marks: the goodbye's last audio may still owe its mark (the provider closed
            # right after it); this task sends to the caller, so it sends that mark
            owed = self._playback.owed_mark()
            if owed is not None and (mark_frame := self._codec.mark(owed)) is not None:
                with trio.move_on_after(self.settings.send_timeout):
                    await self._carrier.send(mark_frame)
            await self._farewell(end.detail)
            raise Disconnect(end.reason, end.detail) from None

    async def _play_provider(self) -> None:
        carrier, link, state = self._carrier, self._link, self.state
        codec, playback, journal = self._codec, self._playback, self.journal
        timed = playback.timed  # the heard position comes from a playout model: it needs times
        # agent audio per message: at most MAX_MEDIA_BYTES, or exactly the carrier's frame
        step = codec.capabilities.frame_ms * BYTES_PER_MS or MAX_MEDIA_BYTES
        assert link is not None
        await link.open()
        state.upstream_connected_at = trio.current_time()
        frames = self.metrics.media_frames.labels(direction="to_caller")
        late = self.metrics.provider_frames_dropped.labels(
            provider=self.provider.name, reason="late_audio"
        )
        send_timeout = self.settings.send_timeout
        decode = self._provider_event
        carry: ProviderEvent | None = None  # an event read ahead while coalescing audio
        held = 0  # bytes of agent audio the codec holds back (not sent, marked nor counted yet)
        event: ProviderEvent | None
        session: Session | None = None
        arrived: tuple[Session, Frame] | None = None  # received as a kept deadline fired
        while True:  # a pass per scope: see "listen on" below
            watchdog = Watchdog()
            disarm = watchdog.disarm  # (the link's before_resume: bound once per pass)
            with watchdog:
                while True:
                    read_ahead = carry is not None
                    if carry is not None:  # read ahead from ``session``, which is still the one
                        event, carry = carry, None
                    else:
                        if arrived is not None:
                            (session, frame), arrived = arrived, None
                        else:
                            # Liveness of a quiet provider is the link's upkeep: this wait has
                            # no deadline. It can be started over, so the send deadline the
                            # last send left stays armed (restartable) instead of moving to
                            # "never" and back per message; the link disarms it before it
                            # resumes a dropped session (not restartable). If it fires while
                            # we listen, the scope ends quietly and the next pass listens on.
                            watchdog.disarm(restartable=True)
                            session, frame = await link.receive(before_resume=disarm)
                            if watchdog.expired:  # it fired in the very tick the wait ended
                                arrived = (session, frame)  # handled under the next scope
                                break
                        event = decode(session, frame)
                        if event is None:
                            continue
                    assert session is not None
                    if playback.owes_mark and _ends_burst(event, playback, session):
                        # sparse marks: the audio sent last ended its burst; send the mark it owes
                        owed = playback.owed_mark()
                        if owed is not None and (mark_frame := codec.mark(owed)) is not None:
                            watchdog.arm(send_timeout, Reason.CALLER_STALLED)
                            await carrier.send(mark_frame)
                    if type(event) is AgentAudio:
                        item_id, response_id = event.item_id, event.response_id
                        if not playback.admits(item_id, response_id, session):
                            late.inc()  # an answer the caller interrupted: never played
                            continue
                        # Providers send audio in bursts faster than real time. What the provider
                        # socket has received goes out merged, up to 100 ms a message (fewer
                        # messages on the hot path), whatever the scheduling (_coalesce's rule).
                        merged = _coalesce(event, session, decode, read_ahead)
                        if isinstance(merged, _Merge):  # a burst: the rest the socket has received
                            # (not restartable: bounded by the send it precedes, up to 100 ms)
                            watchdog.arm(send_timeout, Reason.CALLER_STALLED)
                            merged = await merged.settle(session, decode, link)
                        audio, carry = merged
                        # sparse marks: the burst ends here if what is queued next will not play
                        ends = carry is not None and _ends_burst(carry, playback, session)
                        for start in range(0, len(audio), step):
                            media = audio[start : start + step]  # (no copy if it is all)
                            audio_frame = codec.audio(media)
                            if not audio_frame:  # held back by the codec (frame_ms): nothing went
                                held += len(media)  # out, so no mark and no count until it does
                                continue
                            nbytes, held = held + len(media), 0  # what the codec held goes out now
                            now = trio.current_time() if timed else 0.0  # (the model's clock)
                            last = ends and start + step >= len(audio)
                            mark = playback.sent(
                                nbytes, item_id, response_id, session, now, burst_end=last
                            )
                            watchdog.arm(send_timeout, Reason.CALLER_STALLED)
                            await carrier.send(audio_frame)
                            if mark is not None and (mark_frame := codec.mark(mark)) is not None:
                                await carrier.send(mark_frame)
                            state.frames_to_caller += 1
                            state.bytes_to_caller += nbytes
                            frames.inc()
                    elif type(event) is SpeechStarted:
                        truncations = playback.interrupt(
                            session, trio.current_time() if timed else None
                        )
                        messages = session.codec.interrupt(truncations or ())
                        with self._barge_in_span(truncations):
                            if truncations is not None:  # the caller talks over the agent: barge-in
                                watchdog.arm(send_timeout, Reason.CALLER_STALLED)
                                await carrier.send(codec.clear())
                                held = 0  # the clear dropped what the codec held back too
                                self._goodbye_played()  # the clear settled every pending mark
                                state.barge_ins += 1
                                self.metrics.barge_ins.inc()
                                if log.isEnabledFor(logging.DEBUG):
                                    log.debug(
                                        "barge-in: %s",
                                        ", ".join(
                                            f"{t.item_id[:64]} at {t.audio_end_ms} ms"
                                            for t in truncations
                                        )
                                        or "no item to truncate",
                                        extra={"call_id": state.call_id},
                                    )
                            if messages:
                                watchdog.disarm()  # the link bounds its own sends
                            for message in messages:
                                if not await link.send_within(session, message):
                                    break
                    elif type(event) is ResponseStarted:
                        playback.response_started(event.response_id, session)
                    elif type(event) is ResponseDone:
                        if event.usage is not None:
                            self._add_usage(event.usage)
                        for call in event.tool_calls:
                            self._start_tool(session, call)
                    elif type(event) is ToolCall:
                        self._start_tool(session, event)
                    elif type(event) is Usage:
                        self._add_usage(event)
                    elif type(event) is Transcript:
                        state.transcript.append(event)
                        self._journal(journal.transcript_line, state, event)
                        if self.answered_by_machine and event.role == "agent":
                            self._leave_message()  # the message is spoken: hang up once heard
                        log.debug(
                            "%s: %s", event.role, event.text, extra={"call_id": state.call_id}
                        )
                    elif type(event) is AgentHangup:
                        raise Disconnect(Reason.AGENT_HANGUP, event.message or "agent hung up")
                    elif type(event) is SessionEnding:
                        # make before break, at a turn boundary: at once, or when the answer in
                        # flight has ended (at the latest RECYCLE_MARGIN before the end); a no-op if
                        # replaced already
                        link.recycle_soon(session, event.seconds_left if event.answering else None)
                    elif type(event) is ProviderError:
                        log.warning(
                            "provider error %s: %s",
                            event.code,
                            event.message,
                            extra={"call_id": state.call_id},
                        )

    def _barge_in_span(
        self, truncations: list[Truncation] | None
    ) -> AbstractContextManager[object]:
        """A barge-in's span (the ``clear`` and the truncations are sent in it), or no span when
        the caller started speaking while no agent audio was outstanding."""
        if truncations is None:
            return nullcontext()
        return self._tracer.span(
            "voxbridge.barge_in", attributes={"voxbridge.truncated_items": len(truncations)}
        )

    def _provider_event(self, session: Session, frame: Frame) -> ProviderEvent | None:
        """``frame`` decoded by ``session``'s codec; a bad frame is dropped and counted, and the
        first of each kind in a call is logged as a warning (the rest at debug: the counter has
        them)."""
        try:
            return session.codec.decode(frame)
        except RemoteProtocolError as exc:
            problem = exc
        reason = "bad_audio" if isinstance(problem, BadAudio) else "malformed"
        self.metrics.provider_frames_dropped.labels(
            provider=self.provider.name, reason=reason
        ).inc()
        level = logging.DEBUG if reason in self._warned else logging.WARNING
        self._warned.add(reason)
        log.log(
            level,
            "provider frame dropped (%s): %s",
            reason,
            problem,
            extra={"call_id": self.state.call_id},
        )
        return None

    async def _farewell(self, detail: str) -> None:
        """The agent hung up: wait until its goodbye was heard (:meth:`_heard`). The caller
        hanging up meanwhile ends the call at once, still ``agent_hangup``."""
        self._leaving = Disconnect(Reason.AGENT_HANGUP, detail)
        await self._heard()

    async def _heard(self) -> None:
        """Wait until the carrier confirms the caller heard the agent audio sent so far (the
        mark after the last of it echoed), at most ``farewell_timeout``. Audio sent meanwhile
        is not waited for: the agent's last words are what it had said when it chose to leave.
        A barge-in's ``clear`` ends the wait (nothing is left to play). Without marks, the wait
        ends when the playout estimate says the audio has played (``Playback.finishes_at``)."""
        playback = self._playback
        playback.elapse(trio.current_time())  # (the model: without marks, or audio owing one)
        until = self._goodbye_mark = playback.last_mark
        if playback.heard_through(until) or self.settings.farewell_timeout <= 0:
            return
        heard = self._goodbye_heard = trio.Event()
        with (
            trio.move_on_after(self.settings.farewell_timeout),
            trio.move_on_at(playback.finishes_at(until)),  # inf with marks: the echo tells
        ):
            await heard.wait()
        playback.elapse(trio.current_time())
        if not playback.heard_through(until):
            log.info(
                "%d ms of the agent's last words not confirmed heard within farewell_timeout=%gs",
                playback.unheard_ms,
                self.settings.farewell_timeout,
                extra={"call_id": self.state.call_id},
            )

    def _goodbye_played(self) -> None:
        """Wake :meth:`_heard` if the audio it waits for has been heard (a mark echoed, or a
        barge-in's ``clear`` settled it)."""
        goodbye = self._goodbye_heard
        if goodbye is not None and self._playback.heard_through(self._goodbye_mark):
            goodbye.set()  # the agent's goodbye has played

    # --- tools, key presses, usage ------------------------------------------------------------

    def _start_tool(self, session: Session, call: ToolCall) -> None:
        """Run the model's tool call in the call's nursery (the relay never waits for a tool)."""
        assert self._tasks is not None
        if self._tools_running >= MAX_TOOLS_RUNNING:
            exchange = ToolExchange(
                call.call_id,
                call.name,
                call.arguments,
                '{"error":"too many tool calls in progress; try again"}',
                "error",
            )
            self._tasks.start_soon(
                self._guard, partial(self._tool_refused, session, call, exchange)
            )
            return
        self._tools_running += 1
        self._tasks.start_soon(self._guard, partial(self._run_tool, session, call))

    async def _run_tool(self, session: Session, call: ToolCall) -> None:
        try:
            with self._tool_span(call):
                if call.name in (END_CALL.name, TRANSFER_CALL.name) and call.name in self._offered:
                    if self._leaving is not None or self._handing_off:
                        output = '{"error":"the call is already ending"}'
                        exchange = ToolExchange(
                            call.call_id, call.name, call.arguments, output, "error"
                        )
                        await self._tool_answered(session, exchange)
                        return
                    self._handing_off = True  # one built-in at a time: the first decides
                    if call.name == END_CALL.name:
                        await self._end_call(call)
                    else:
                        await self._transfer(session, call)
                    self._handing_off = False
                else:
                    state = self.state
                    context = ToolContext(
                        state.call_id,
                        state.carrier_call_id,
                        state.stream_id,
                        self.agent.name,
                        dict(state.custom_parameters),
                    )
                    tool = self._offered.get(call.name)
                    seconds = self.settings.tool_timeout
                    exchange = await run_tool(call, tool, context, seconds=seconds)
                    await self._tool_answered(session, exchange)
        finally:
            self._tools_running -= 1

    def _tool_span(self, call: ToolCall) -> AbstractContextManager[tracing.Span]:
        """The span of one tool call, after the GenAI semantic conventions' ``execute_tool``
        span (docs/observability.md); :meth:`_tool_done` sets its outcome."""
        name = call.name[:64]
        return self._tracer.span(
            f"execute_tool {name}",
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": name,
                "gen_ai.tool.call.id": call.call_id[:64],
                "gen_ai.tool.type": "function",
                "gen_ai.provider.name": self.provider.name,
            },
        )

    async def _tool_refused(self, session: Session, call: ToolCall, exchange: ToolExchange) -> None:
        """A tool call not run (too many running): the model is told why."""
        with self._tool_span(call):
            await self._tool_answered(session, exchange)

    async def _tool_answered(self, asked: Session, exchange: ToolExchange) -> None:
        """Count and journal ``exchange``, remember it for resumes, and tell the model."""
        self._tool_done(exchange)
        link = self._link
        assert link is not None
        session = link.session
        if session is None:
            return  # resuming: the new session is seeded with the exchange (the history)
        for frame in session.codec.tool_result(exchange, known=session is asked):
            if not await link.send_within(session, frame):
                break

    def _tool_done(self, exchange: ToolExchange) -> None:
        name = exchange.name if exchange.name in self._offered else UNKNOWN_TOOL
        self.metrics.tool_calls.labels(tool=name, outcome=exchange.outcome).inc()
        state = self.state
        state.tool_calls += 1
        state.transcript.append(exchange)
        self._journal(self.journal.transcript_line, state, exchange)
        span = tracing.current_span()  # the tool call's: this runs in its task, in its span
        if span.recording:
            span.set("voxbridge.tool.outcome", exchange.outcome)
            if exchange.outcome != "ok":
                span.fail(exchange.outcome)
        log.info(
            "tool %s: %s",
            exchange.name[:64],
            exchange.outcome,
            extra={"call_id": state.call_id, "call_sid": state.carrier_call_id},
        )

    async def _end_call(self, call: ToolCall) -> None:
        """The built-in ``end_call``: the goodbye is heard, then the call ends ``agent_hangup``."""
        self._tool_done(ToolExchange(call.call_id, call.name, call.arguments, '{"ok":true}'))
        await self._hang_up("the agent ended the call (end_call)")

    def _leave_message(self) -> None:
        """An answering machine took the call and the agent has spoken its message (its first
        final transcript line: the greeting): hang up once it has been heard
        (``on_machine="leave_message"``)."""
        if self._leaving is None and self.agent.on_machine == "leave_message":
            assert self._tasks is not None
            detail = "left a message on the answering machine"
            self._leaving = Disconnect(Reason.AGENT_HANGUP, detail)
            self._tasks.start_soon(self._guard, partial(self._hang_up, detail))

    async def _hang_up(self, detail: str) -> None:
        """Let the goodbye be heard, complete the call through the carrier's REST API (so nothing
        the carrier would do next, e.g. a later TwiML verb, keeps the line open), and end the call
        ``agent_hangup``."""

        await self._farewell(detail)
        rest, call_id = self.carrier_rest, self.state.carrier_call_id
        if rest is not None and call_id:
            try:
                with trio.fail_after(self.settings.tool_timeout):
                    await rest.complete(call_id)
            except (trio.TooSlowError, CarrierRestError) as exc:
                log.warning(
                    "completing the call through %s's REST API failed (%s); closing the "
                    "stream ends it",
                    self._carrier_title,
                    exc or "no answer within tool_timeout",
                    extra={"call_id": self.state.call_id},
                )
        raise Disconnect(Reason.AGENT_HANGUP, detail)

    @property
    def _carrier_title(self) -> str:
        """The carrier's name as a word in a sentence (``twilio`` -> ``Twilio``)."""
        return self.carrier_name.capitalize()

    async def _transfer(self, session: Session, call: ToolCall) -> None:
        """The built-in ``transfer_call``: once the caller has heard the agent, have the carrier
        move the call to the transfer target (``CarrierRest.transfer``; Twilio: a redirect to
        TwiML ``<Dial>``), and end the call ``transferred``. A refused transfer is an error
        result: the model tells the caller."""

        target = self._transfer_target()
        rest, call_id = self.carrier_rest, self.state.carrier_call_id
        assert target is not None and rest is not None
        detail = f"transferred to {target}"
        await self._heard()  # "I am putting you through": a caller who hangs up now just left
        # From here, the stream ending (the carrier leaves the stream for the dial) is the
        # transfer.
        self._leaving = Disconnect(Reason.TRANSFERRED, detail)
        try:
            if not call_id:
                raise CarrierRestError(None, None, "the stream named no call id")
            with trio.fail_after(self.settings.tool_timeout):
                await rest.transfer(call_id, target)
        except (trio.TooSlowError, CarrierRestError) as exc:
            self._leaving = None
            problem = str(exc) or f"no answer within {self.settings.tool_timeout:g} s"
            log.warning("transfer failed: %s", problem, extra={"call_id": self.state.call_id})
            # The model hears what kind of failure, never the transport's or the carrier's words.
            why = (
                f"{self._carrier_title} error {exc.code}"
                if isinstance(exc, CarrierRestError) and exc.code is not None
                else f"{self._carrier_title} did not answer"
            )
            output = orjson.dumps({"error": f"the transfer failed ({why})"}).decode()
            exchange = ToolExchange(call.call_id, call.name, call.arguments, output, "error")
            await self._tool_answered(session, exchange)
            return
        self._tool_done(ToolExchange(call.call_id, call.name, call.arguments, '{"ok":true}'))
        raise Disconnect(Reason.TRANSFERRED, detail)

    def _key_pressed(self, digit: str) -> None:
        """A DTMF key press: counted, and queued for :meth:`_read_keypad`, started at the first
        (beyond ``MAX_DTMF_DIGITS`` unread, dropped: a carrier cannot queue key presses without
        bound)."""
        self.state.dtmf_digits += 1
        self.metrics.dtmf_digits.inc()
        if self._keypad is None:  # the first key: most calls have none, and no keypad task
            assert self._tasks is not None
            self._keypad, digits = trio.open_memory_channel[str](MAX_DTMF_DIGITS)
            self._tasks.start_soon(self._guard, partial(self._read_keypad, digits))
        try:
            self._keypad.send_nowait(digit)
        except trio.WouldBlock:
            log.debug("key press dropped: too many unread", extra={"call_id": self.state.call_id})

    async def _read_keypad(self, digits: trio.MemoryReceiveChannel[str]) -> None:
        """Key presses, coalesced: digits pressed less than ``DTMF_INTERDIGIT_TIMEOUT`` apart
        make one group (``#`` ends a group at once). Each group goes to the transcript and, with
        the agent's ``dtmf="forward"``, to the model as a short user message."""
        async for first in digits:
            group = first
            while first != "#" and len(group) < MAX_DTMF_GROUP:
                with trio.move_on_after(DTMF_INTERDIGIT_TIMEOUT):
                    first = await digits.receive()
                    group += first
                    continue
                break
            line = Transcript("dtmf", group)
            state = self.state
            state.transcript.append(line)
            self._journal(self.journal.transcript_line, state, line)
            # (the keys may be a PIN or a card number: the journal has them, the log does not)
            log.debug("caller pressed %d key(s)", len(group), extra={"call_id": state.call_id})
            link = self._link
            session = link.session if link is not None else None
            if self.agent.dtmf != "forward" or session is None or link is None:
                continue
            for frame in session.codec.dtmf(group):
                if not await link.send_within(session, frame):
                    break

    def _final_events(self, events: Sequence[ProviderEvent]) -> None:
        """What a session's codec still held when the link stopped reading it
        (``ProviderCodec.flush``): its transcript lines are kept (the journal, the history the
        next session is seeded with) and its usage metered; nothing else matters any more."""
        state = self.state
        for event in events:
            if type(event) is Transcript:
                state.transcript.append(event)
                self._journal(self.journal.transcript_line, state, event)
            elif type(event) is Usage:
                self._add_usage(event)
            elif type(event) is ResponseDone and event.usage is not None:
                self._add_usage(event.usage)

    def _add_usage(self, usage: Usage) -> None:
        state, provider = self.state, self.provider.name
        for kind, amount in usage.counts:
            if amount > 0:
                state.usage[kind] = state.usage.get(kind, 0) + amount
                self.metrics.provider_usage.labels(provider=provider, kind=kind).inc(amount)

    # --- ending -------------------------------------------------------------------------------

    def _decode(self, frame: str | bytes) -> CarrierEvent | None:
        try:
            return self._codec.decode(frame)
        except RemoteProtocolError as exc:
            raise Disconnect(Reason.PROTOCOL_ERROR, str(exc)) from None

    def _journal(self, write: Callable[..., None], *args: object) -> None:
        """A journal failure is counted and logged; it never ends or breaks the call."""
        try:
            write(*args)
        except Exception:
            self.metrics.journal_write_errors.inc()
            log.exception("journal write failed", extra={"call_id": self.state.call_id})

    def _record(self, disconnect: Disconnect) -> None:
        if self._ending is None:
            leaving = self._leaving
            if leaving is not None and disconnect.reason in _CALLER_LEFT:
                detail = f"{leaving.detail}; the caller hung up during the goodbye"
                disconnect = Disconnect(leaving.reason, detail)
            # A raised Disconnect's traceback, and the exception it interrupted (its context),
            # hold the frames of the call's tasks, and those hold the call: kept here, every
            # finished call would be a reference cycle left to the cyclic collector. The log
            # line and the journal need the reason and the detail; a bug's cause keeps its
            # traceback until the log line has formatted it (``_account``).
            disconnect.__traceback__ = None
            disconnect.__context__ = None
            self._ending = disconnect
            self._scope.cancel()

    async def _teardown(self) -> None:
        """Close both peers side by side, shielded from cancellation and bounded by
        ``teardown_timeout``. Every provider socket is closed on every path: ``ProviderLink.aclose``
        aborts whatever its handshakes did not close in time."""
        assert self._ending is not None
        reason = self._ending.reason
        with trio.CancelScope(shield=True) as bound:
            bound.deadline = trio.current_time() + self.settings.teardown_timeout
            async with trio.open_nursery() as closing:
                if self._link is not None:
                    closing.start_soon(self._close_provider, self._link, reason)
                closing.start_soon(self._close_carrier, reason)

    async def _close_provider(self, link: ProviderLink, reason: Reason) -> None:
        code = 1001 if reason is Reason.SERVER_SHUTDOWN else 1000
        await link.aclose(code, reason.value)
        if self.state.upstream_connected_at is not None:
            self.state.upstream_closed_at = trio.current_time()

    async def _close_carrier(self, reason: Reason) -> None:
        # close() keeps reading until the carrier's close reply (a carrier that is not read
        # cannot finish the close handshake); bounded here.
        with trio.move_on_after(self.settings.close_timeout):
            await self._carrier.close(reason.close_code, reason.value)

    def _account(self) -> None:
        """Count, journal, log and deregister the call: synchronous, so it cannot be cut short."""
        ending = self._ending
        assert ending is not None
        state, reason = self.state, ending.reason
        link = self._link
        ended_at = trio.current_time()
        record = CallRecord(
            call_id=state.call_id,
            call_sid=state.carrier_call_id,  # the public record keeps its names (CallRecord)
            stream_sid=state.stream_id,
            reason=reason,
            detail=ending.detail,
            close_code=reason.close_code,
            accepted_at=state.accepted_at,
            ended_at=ended_at,
            last_caller_frame_at=state.last_caller_frame_at,
            upstream_opened=state.upstream_connected_at is not None,
            upstream_closed_at=state.upstream_closed_at,
            frames_from_caller=state.frames_from_caller,
            frames_to_caller=state.frames_to_caller,
            transcript=tuple(state.transcript),
            barge_ins=state.barge_ins,
            resumes=link.resumes if link is not None else 0,
            carrier=state.carrier,
            provider=state.provider,
            started_at=state.started_at,
            bytes_from_caller=state.bytes_from_caller,
            bytes_to_caller=state.bytes_to_caller,
            custom_parameters=tuple(state.custom_parameters.items()),
            agent=state.agent,
            usage=tuple(sorted(state.usage.items())),
            tool_calls=state.tool_calls,
            dtmf_digits=state.dtmf_digits,
        )
        self.metrics.call_disconnects.labels(reason=reason.value).inc()
        self.metrics.call_duration.labels(reason=reason.value).observe(record.duration)
        self.metrics.calls_active.dec()
        self._journal(self.journal.call_ended, record)
        fields: dict[str, object] = {
            "call_id": state.call_id,
            "call_sid": state.carrier_call_id,  # the log keys stay Twilio's (docs/observability.md)
            "stream_sid": state.stream_id,
            "reason": reason.value,
            "close_code": reason.close_code,
            "duration_s": round(record.duration, 3),
            "frames_in": state.frames_from_caller,
            "frames_out": state.frames_to_caller,
        }
        if reason in _LIMITS:
            limit = _LIMITS[reason]
            fields["limit"] = limit
            fields["limit_s"] = getattr(self.settings, limit)
            fields["silence_s"] = round(record.silence, 3)
        level = logging.ERROR if reason is Reason.INTERNAL_ERROR else logging.INFO
        log.log(
            level,
            "call ended: %s (%s)",
            reason.value,
            ending.detail,
            extra=fields,
            exc_info=ending.__cause__ if reason is Reason.INTERNAL_ERROR else None,
        )
        if ending.__cause__ is not None:
            _drop_frames(ending.__cause__)  # logged: its type and message stay, the frames go
        if self._span.recording:
            self._trace_end(record, ending)
        if self.registry is not None:
            self.registry.remove(self, record)
        self.ended.set()

    def _let_go(self) -> None:
        """Drop the callbacks that refer back to this call, now that it has ended.

        An app's ``on_start`` and ``configure`` are usually closures over the call (the server's
        are), and the link's callbacks (``on_usage``, ``on_final``) are this call's bound methods:
        each a reference cycle through the call, so a finished call would be freed only by the
        cyclic collector.
        """
        self.on_start = None
        self.configure = None
        if self._link is not None:
            self._link.on_usage = None
            self._link.on_final = None

    def _trace_end(self, record: CallRecord, ending: Disconnect) -> None:
        """What the call's span says about it, set once it ended (the span ends just after)."""
        span = self._span
        attributes: dict[str, tracing.AttributeValue] = {
            "voxbridge.carrier": record.carrier,
            "voxbridge.provider": record.provider,
            "gen_ai.provider.name": record.provider,
            "voxbridge.agent": record.agent,
            "voxbridge.reason": record.reason.value,
            "voxbridge.frames_in": record.frames_from_caller,
            "voxbridge.frames_out": record.frames_to_caller,
            "voxbridge.barge_ins": record.barge_ins,
            "voxbridge.resumes": record.resumes,
            "voxbridge.tool_calls": record.tool_calls,
        }
        if record.call_sid is not None:
            attributes["voxbridge.call_sid"] = record.call_sid
        if record.stream_sid is not None:
            attributes["voxbridge.stream_sid"] = record.stream_sid
        span.set_many(attributes)
        if record.reason is Reason.INTERNAL_ERROR:
            span.fail(record.reason.value, ending.detail)
