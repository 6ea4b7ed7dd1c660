"""One phone call, bridged: a nursery, three tasks, a deadline on every wait, one teardown.

The shape (ARCHITECTURE.md, "The call")::

    Call.run()
      sockets nursery  ── hosts the provider socket's reader; outlives the call's own tasks so the
      │                   close handshake can complete during teardown
      └─ call scope    ── deadline = accept + max_call_duration; Call.end() cancels it
           wait for the carrier's `start`            (start_timeout)
           open the provider session                 (connect_timeout)
           send session.update                       (send_timeout)
           task nursery
           ├── caller_to_upstream   receive (idle_timeout, moving) -> decode -> send (send_timeout)
           ├── upstream_to_caller   receive (keepalive bounds it) -> decode -> send (send_timeout)
           └── keepalive            every keepalive_interval: ping under pong_timeout
      teardown (shielded, bounded by teardown_timeout): close provider, close carrier
    account (synchronous, exactly once): metrics, one log line, registry removal

Every way the call can end becomes a ``Disconnect(reason)``: a deadline firing (a task's
``Watchdog``), a peer leaving (the transports), the carrier's ``stop``, a bad frame, ``Call.end()``
from outside, the max-duration deadline, a cancellation by the host app (``server_shutdown``), or a
bug (``internal_error``, chained from the exception group). Tasks do not let ``Disconnect`` escape
into the nursery: ``_guard`` records it (first reason wins) and cancels the call scope, so no code
ever picks exception groups apart by hand.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Awaitable, Callable

import trio

from ..carriers.twilio import Connected, Dtmf, Mark, Media, Start, Stop, TwilioStream
from ..errors import Disconnect, Reason, RemoteProtocolError
from ..metrics import Metrics
from ..providers.endpoint import ProviderEndpoint
from ..providers.events import AgentAudio, AgentHangup, ProviderError, Transcript
from ..providers.openai_realtime import OpenAIRealtimeCodec
from ..settings import Settings
from ..upstream import StreamConnector, Upstream, open_tcp_stream_tuned
from .carrier import CarrierSocket
from .registry import CallRegistry
from .state import CallRecord, CallState
from .watchdog import Watchdog, deadline

__all__ = ["Call", "run_call"]

log = logging.getLogger("voxbridge.call")

# Which setting bounds the wait behind each timeout reason (for the one log line per call).
_LIMITS = {
    Reason.IDLE_TIMEOUT: "idle_timeout",
    Reason.START_TIMEOUT: "start_timeout",
    Reason.MAX_DURATION: "max_call_duration",
    Reason.UPSTREAM_KEEPALIVE_TIMEOUT: "pong_timeout",
    Reason.UPSTREAM_CONNECT_FAILED: "connect_timeout",
    Reason.CALLER_STALLED: "send_timeout",
    Reason.UPSTREAM_STALLED: "send_timeout",
}


async def run_call(
    carrier: CarrierSocket,
    endpoint: ProviderEndpoint,
    *,
    settings: Settings | None = None,
    metrics: Metrics | None = None,
    registry: CallRegistry | None = None,
    connect_stream: StreamConnector | None = None,
) -> Disconnect:
    """Bridge one accepted carrier WebSocket to a provider until the call ends.

    Runs in the caller's trio task; everything the call starts ends before this returns. Cancelling
    the surrounding scope ends the call with ``server_shutdown`` (teardown still runs, shielded and
    bounded) and then lets the cancellation propagate.

    Args:
        carrier: the accepted carrier socket (see :class:`voxbridge.session.CarrierSocket`).
        endpoint: the provider to bridge to (see :func:`voxbridge.providers.endpoint_for`).
        settings: deadlines and provider options; defaults to ``Settings()``.
        metrics: where to count; a private registry if omitted.
        registry: where the call registers itself while it runs (and is remembered after).
        connect_stream: opens the byte stream to the provider; defaults to tuned TCP.

    Returns:
        The ``Disconnect`` that ended the call; ``.reason`` is one of the closed set.
    """
    call = Call(
        carrier,
        endpoint,
        settings=settings or Settings(),
        metrics=metrics or Metrics(),
        registry=registry,
        connect_stream=connect_stream,
    )
    return await call.run()


class Call:
    """One call's state and tasks. Most users want :func:`run_call`; drain uses :meth:`end`."""

    def __init__(
        self,
        carrier: CarrierSocket,
        endpoint: ProviderEndpoint,
        *,
        settings: Settings,
        metrics: Metrics,
        registry: CallRegistry | None = None,
        connect_stream: StreamConnector | None = None,
        carrier_name: str = "twilio",
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.registry = registry
        self.endpoint = endpoint
        self.carrier_name = carrier_name
        self._carrier = carrier
        self._connect_stream = connect_stream or open_tcp_stream_tuned(settings.tcp_user_timeout)
        self._twilio = TwilioStream()
        self._codec = OpenAIRealtimeCodec("beta" if endpoint.flavour == "beta" else "ga")
        self._upstream: Upstream | None = None
        self._upstream_scope: trio.CancelScope | None = None
        self._scope = trio.CancelScope()
        self._ending: Disconnect | None = None
        self._ran = False
        self.state = CallState(call_id=uuid.uuid4().hex[:12], accepted_at=math.nan)
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
        self.state.accepted_at = trio.current_time()
        self._scope.deadline = self.state.accepted_at + self.settings.max_call_duration
        self.metrics.calls_active.inc()
        self.metrics.calls_started.labels(
            carrier=self.carrier_name, provider=self.endpoint.name
        ).inc()
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
                            self._record(
                                Disconnect(Reason.MAX_DURATION, "max_call_duration reached")
                            )
                        else:
                            self._record(
                                Disconnect(Reason.SERVER_SHUTDOWN, "cancelled by the host")
                            )
                    await self._teardown()
        finally:
            self._account()
        assert self._ending is not None
        return self._ending

    # --- phases -------------------------------------------------------------------------------

    async def _lifecycle(self, sockets: trio.Nursery) -> None:
        await self._wait_for_start()
        self._upstream = await sockets.start(self._host_upstream)
        session_update = self._codec.session_update(
            model=self.settings.openai_model,
            voice=self.settings.voice,
            instructions=self.settings.instructions,
        )
        with deadline(self.settings.send_timeout, Reason.UPSTREAM_STALLED):
            await self._upstream.send(session_update)
        async with trio.open_nursery() as tasks:
            tasks.start_soon(self._guard, self._caller_to_upstream)
            tasks.start_soon(self._guard, self._upstream_to_caller)
            tasks.start_soon(self._guard, self._keepalive)

    async def _wait_for_start(self) -> None:
        watchdog = Watchdog()
        with watchdog:
            watchdog.arm(
                self.settings.start_timeout, Reason.START_TIMEOUT, since=self.state.accepted_at
            )
            while True:
                event = self._decode(await self._carrier.receive())
                self.state.last_caller_frame_at = trio.current_time()
                if isinstance(event, Start):
                    start = event
                    break
                if not isinstance(event, Connected):  # pragma: no cover - the codec orders events
                    raise Disconnect(Reason.PROTOCOL_ERROR, f"{type(event).__name__} before start")
        state = self.state
        state.started_at = state.last_caller_frame_at
        state.call_sid = start.call_sid
        state.stream_sid = start.stream_sid
        state.account_sid = start.account_sid
        state.custom_parameters = dict(start.custom_parameters)
        log.debug("call started", extra={"call_id": state.call_id, "call_sid": state.call_sid})

    async def _host_upstream(self, *, task_status: trio.TaskStatus[Upstream]) -> None:
        """Open the provider socket and keep its reader alive until teardown cancels it.

        After the handshake the scope is shielded: cancelling the call's tasks (or the host
        cancelling the call) must not kill the reader, or the close handshake in teardown could
        not complete. Teardown cancels this scope explicitly once the socket is closed.
        """
        failure: Disconnect | None = None
        started = trio.current_time()
        with trio.CancelScope() as scope:
            self._upstream_scope = scope
            async with trio.open_nursery() as nursery:
                try:
                    upstream = await Upstream.connect(
                        nursery,
                        self.endpoint,
                        connect_timeout=self.settings.connect_timeout,
                        connect_stream=self._connect_stream,
                    )
                except Disconnect as exc:
                    failure = exc
                    nursery.cancel_scope.cancel()
                else:
                    scope.shield = True
                    self.state.upstream_connected_at = trio.current_time()
                    self.metrics.upstream_connect_seconds.labels(
                        provider=self.endpoint.name
                    ).observe(self.state.upstream_connected_at - started)
                    task_status.started(upstream)
                    await trio.sleep_forever()
        if failure is not None:
            raise failure

    # --- the three tasks ----------------------------------------------------------------------

    async def _guard(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run one call task; its ``Disconnect`` ends the call (first reason wins)."""
        try:
            await task()
        except Disconnect as disconnect:
            self._record(disconnect)

    async def _caller_to_upstream(self) -> None:
        carrier, upstream, state = self._carrier, self._upstream, self.state
        assert upstream is not None
        append = self._codec.append_audio
        frames = self.metrics.media_frames.labels(direction="to_upstream")
        idle_timeout, send_timeout = self.settings.idle_timeout, self.settings.send_timeout
        watchdog = Watchdog()
        with watchdog:
            while True:
                # The idle deadline counts from when we are ready to listen again: the last frame
                # heard, or later if a send (or the provider connect) kept us from reading --
                # a caller is never charged for our own delays.
                watchdog.arm(idle_timeout, Reason.IDLE_TIMEOUT)
                frame = await carrier.receive()
                now = state.last_caller_frame_at = trio.current_time()
                event = self._decode(frame)
                if type(event) is Media:
                    if event.track != "inbound":
                        continue
                    watchdog.arm(send_timeout, Reason.UPSTREAM_STALLED, since=now)
                    await upstream.send(append(event.payload))
                    state.frames_from_caller += 1
                    frames.inc()
                elif type(event) is Stop:
                    raise Disconnect(Reason.CALLER_STOP, "carrier sent stop")
                elif type(event) is Mark or type(event) is Dtmf:
                    log.debug("carrier %s", event, extra={"call_id": state.call_id})

    async def _upstream_to_caller(self) -> None:
        carrier, upstream, state, twilio = self._carrier, self._upstream, self.state, self._twilio
        assert upstream is not None
        decode = self._codec.decode
        frames = self.metrics.media_frames.labels(direction="to_caller")
        send_timeout = self.settings.send_timeout
        watchdog = Watchdog()
        with watchdog:
            while True:
                watchdog.disarm()  # liveness of a quiet provider is the keepalive's job
                frame = await upstream.receive()
                try:
                    event = decode(frame)
                except RemoteProtocolError as exc:
                    log.warning("provider frame dropped: %s", exc, extra={"call_id": state.call_id})
                    continue
                if type(event) is AgentAudio:
                    watchdog.arm(send_timeout, Reason.CALLER_STALLED)
                    await carrier.send(twilio.media(event.payload))
                    state.frames_to_caller += 1
                    frames.inc()
                elif type(event) is Transcript:
                    state.transcript.append(event)
                    log.debug("%s: %s", event.role, event.text, extra={"call_id": state.call_id})
                elif type(event) is AgentHangup:
                    raise Disconnect(Reason.AGENT_HANGUP, event.message or "agent hung up")
                elif type(event) is ProviderError:
                    log.warning(
                        "provider error %s: %s",
                        event.code,
                        event.message,
                        extra={"call_id": state.call_id},
                    )

    async def _keepalive(self) -> None:
        upstream = self._upstream
        assert upstream is not None
        rtt = self.metrics.upstream_ping_rtt
        while True:
            await trio.sleep(self.settings.keepalive_interval)
            rtt.observe(await upstream.ping(self.settings.pong_timeout))

    # --- ending -------------------------------------------------------------------------------

    def _decode(self, frame: str | bytes) -> Connected | Start | Media | Mark | Dtmf | Stop:
        try:
            return self._twilio.receive(frame)
        except RemoteProtocolError as exc:
            raise Disconnect(Reason.PROTOCOL_ERROR, str(exc)) from None

    def _record(self, disconnect: Disconnect) -> None:
        if self._ending is None:
            self._ending = disconnect
            self._scope.cancel()

    async def _teardown(self) -> None:
        """Close both peers, shielded from cancellation and bounded by ``teardown_timeout``."""
        assert self._ending is not None
        reason = self._ending.reason
        close_timeout = self.settings.close_timeout
        with trio.CancelScope(shield=True) as bound:
            bound.deadline = trio.current_time() + self.settings.teardown_timeout
            try:
                if self._upstream is not None:
                    code = 1001 if reason is Reason.SERVER_SHUTDOWN else 1000
                    await self._upstream.aclose(code, reason.value, close_timeout=close_timeout)
                    self.state.upstream_closed_at = trio.current_time()
            finally:
                if self._upstream_scope is not None:
                    self._upstream_scope.cancel()
                with trio.move_on_after(close_timeout):
                    await self._carrier.close(reason.close_code, reason.value)

    def _account(self) -> None:
        """Count, log and deregister the call: synchronous, so it cannot be cut short."""
        ending = self._ending
        assert ending is not None
        state, reason = self.state, ending.reason
        ended_at = trio.current_time()
        record = CallRecord(
            call_id=state.call_id,
            call_sid=state.call_sid,
            stream_sid=state.stream_sid,
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
        )
        self.metrics.call_disconnects.labels(reason=reason.value).inc()
        self.metrics.call_duration.labels(reason=reason.value).observe(record.duration)
        self.metrics.calls_active.dec()
        fields: dict[str, object] = {
            "call_id": state.call_id,
            "call_sid": state.call_sid,
            "stream_sid": state.stream_sid,
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
        if self.registry is not None:
            self.registry.remove(self, record)
        self.ended.set()
