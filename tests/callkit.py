"""Shared rig for the call-level tests: one bridged call, entirely in memory, fully observed.

Everything runs on the autojump clock. Besides what the fakes record (the carrier simulator's
``CallResult``, the echo agent's ``AgentSession``), the rig wraps *the bridge's own ends* of both
byte streams in a :class:`Tap`. A tap is a :class:`~voxbridge.testing.FaultStream` (so it can make
the bridge's sends or receives block) that also records, from the bridge's side:

* every WebSocket close frame the bridge *tried* to send, with the virtual time of the attempt, the
  code and the reason (decoded from the frame, unmasking client frames) -- even when the peer never
  gets to read it. The first one on a socket is the instant teardown started, i.e. the instant the
  call's reason was decided;
* when the bridge sent WebSocket pings (``pings``);
* when the bridge closed the stream (``closed_at``).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from voxbridge.audio import FRAME_BYTES
from voxbridge.carriers.twilio_wire import encode_connected, encode_inbound_media, encode_start
from voxbridge.errors import Disconnect, Reason
from voxbridge.metrics import Metrics
from voxbridge.providers.endpoint import ProviderEndpoint
from voxbridge.session import run_call
from voxbridge.session.call import Call
from voxbridge.session.registry import CallRegistry
from voxbridge.settings import Settings
from voxbridge.testing import CarrierSimulator, FakeEchoAgent, FaultStream
from voxbridge.testing.memory import accept_carrier
from voxbridge.upstream import StreamConnector

ENDPOINT = ProviderEndpoint("echo", "ws://echo/v1/realtime")
STREAM_SID = "MZ" + "0" * 32
CALL_SID = "CA" + "1" * 32
ACCOUNT_SID = "AC" + "2" * 32
#: Virtual seconds any one test may take before the rig gives up (a hang fails, never blocks CI).
RIG_BUDGET = 10_000.0


# --- frames ---------------------------------------------------------------------------------------


def start_frame() -> str:
    return encode_start(STREAM_SID, CALL_SID, ACCOUNT_SID, sequence_number=1)


def media_frame(index: int) -> str:
    payload = base64.b64encode(b"\xff" * FRAME_BYTES).decode("ascii")  # mu-law silence
    return encode_inbound_media(
        STREAM_SID, payload, chunk=index + 1, timestamp=index * 20, sequence_number=index + 2
    )


def connected_frame() -> str:
    return encode_connected()


# --- the tap --------------------------------------------------------------------------------------


def parse_close_frame(data: bytes | bytearray | memoryview) -> tuple[int | None, str] | None:
    """``(code, reason)`` if ``data`` starts with a WebSocket close frame, else ``None``."""
    data = bytes(data)
    if len(data) < 2 or data[0] != 0x88:  # FIN + opcode 8
        return None
    masked, length, at = data[1] & 0x80, data[1] & 0x7F, 2
    if length == 126:
        length, at = int.from_bytes(data[2:4], "big"), 4
    elif length == 127:
        length, at = int.from_bytes(data[2:10], "big"), 10
    mask = data[at : at + 4] if masked else b"\0\0\0\0"
    at += 4 if masked else 0
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data[at : at + length]))
    if len(payload) < 2:
        return None, ""
    return int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8")


class Tap(FaultStream):
    """The bridge's end of a stream: fault knobs plus a record of what the bridge did with it.

    Args:
        inner: the stream.
        writes_before_stall: if set, every ``send_all`` after this many blocks (as after
            :meth:`stop_writing`); 1 lets a WebSocket client's handshake request through and
            nothing after it.
    """

    def __init__(self, inner: trio.abc.Stream, *, writes_before_stall: int | None = None) -> None:
        super().__init__(inner)
        self.writes_before_stall = writes_before_stall
        self.writes = 0
        self.writing_blocked = False
        self.first_blocked_write_at: float | None = None
        self.close_frames: list[tuple[float, int | None, str]] = []
        self.pings: list[float] = []
        self.closed_at: float | None = None

    def stop_writing(self) -> None:
        self.writing_blocked = True
        super().stop_writing()

    @property
    def first_close_at(self) -> float | None:
        return self.close_frames[0][0] if self.close_frames else None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        if self.writes_before_stall is not None and self.writes > self.writes_before_stall:
            self.stop_writing()
        close = parse_close_frame(data)
        if close is not None:
            self.close_frames.append((trio.current_time(), *close))
        elif data[:1] == b"\x89":  # FIN + ping
            self.pings.append(trio.current_time())
        if self.writing_blocked and self.first_blocked_write_at is None:
            self.first_blocked_write_at = trio.current_time()
        await super().send_all(data)

    async def aclose(self) -> None:
        if self.closed_at is None:
            self.closed_at = trio.current_time()
        await super().aclose()


# --- a hand-driven caller -------------------------------------------------------------------------


class RawCaller:
    """The carrier side driven by a script of ``(at, frame)``: ``at`` in seconds after ``t0``.

    Records the close code/reason/time it saw and every frame the bridge sent it.
    """

    def __init__(self, stream: trio.abc.Stream, t0: float) -> None:
        self.stream = FaultStream(stream)
        self.t0 = t0
        self.ws: WebSocketConnection | None = None
        self.received: list[str | bytes] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed_at: float | None = None
        self.closed = trio.Event()

    async def run(self, script: list[tuple[float, str]]) -> None:
        async with trio.open_nursery() as nursery:
            self.ws = await wrap_client_stream(nursery, self.stream, "localhost", "/twilio/media")
            nursery.start_soon(self._read, self.ws)
            for at, frame in script:
                await trio.sleep_until(self.t0 + at)
                try:
                    await self.ws.send_message(frame)
                except ConnectionClosed:
                    break
            await self.closed.wait()
            nursery.cancel_scope.cancel()

    async def _read(self, ws: WebSocketConnection) -> None:
        try:
            while True:
                self.received.append(await ws.get_message())
        except ConnectionClosed as exc:
            self.close_code = exc.reason.code
            self.close_reason = exc.reason.reason
        finally:
            self.closed_at = trio.current_time()
            self.closed.set()


# --- the rig --------------------------------------------------------------------------------------


@attrs.define(eq=False)
class Rig:
    """One call's surroundings. Times in the helpers are seconds after ``t0``."""

    nursery: trio.Nursery
    t0: float
    settings: Settings
    agent: FakeEchoAgent
    metrics: Metrics = attrs.Factory(Metrics)
    registry: CallRegistry = attrs.Factory(CallRegistry)
    carrier_tap: Tap | None = None
    upstream_taps: list[Tap] = attrs.Factory(list)
    sim: CarrierSimulator | None = None
    caller: RawCaller | None = None
    connects: int = 0
    carrier: Any = None

    def rel(self, when: float | None) -> float | None:
        return None if when is None else when - self.t0

    def now(self) -> float:
        return trio.current_time() - self.t0

    # --- the provider side ---

    def connector(self, *, writes_before_stall: int | None = None) -> StreamConnector:
        """Reaches the echo agent in memory; the bridge's end is a :class:`Tap`."""

        async def connect(host: str, port: int) -> trio.abc.Stream:
            self.connects += 1
            client, server = trio.testing.memory_stream_pair()
            self.nursery.start_soon(self.agent.handle_stream, server)
            tap = Tap(client, writes_before_stall=writes_before_stall)
            self.upstream_taps.append(tap)
            return tap

        return connect

    def silent_connector(self) -> StreamConnector:
        """TCP connects, but nobody ever answers the WebSocket handshake."""

        async def connect(host: str, port: int) -> trio.abc.Stream:
            self.connects += 1
            client, _server = trio.testing.memory_stream_pair()
            tap = Tap(client)
            self.upstream_taps.append(tap)
            return tap

        return connect

    def hanging_connector(self) -> StreamConnector:
        """TCP connect never completes."""

        async def connect(host: str, port: int) -> trio.abc.Stream:
            self.connects += 1
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        return connect

    def refusing_connector(self) -> StreamConnector:
        """TCP connect refused at once."""

        async def connect(host: str, port: int) -> trio.abc.Stream:
            self.connects += 1
            raise ConnectionRefusedError(111, "Connection refused")

        return connect

    @property
    def upstream(self) -> Tap:
        assert len(self.upstream_taps) == 1, self.upstream_taps
        return self.upstream_taps[0]

    @property
    def session(self) -> Any:
        assert len(self.agent.sessions) == 1, self.agent.sessions
        return self.agent.sessions[0]

    # --- the carrier side ---

    async def accept_sim(self, **options: Any) -> None:
        """Start a :class:`CarrierSimulator` (``options``) and accept its socket."""
        caller_end, bridge_end = trio.testing.memory_stream_pair()
        options.setdefault("close_wait", 500)
        self.sim = CarrierSimulator(caller_end, **options)
        self.nursery.start_soon(self.sim.run)
        await self._accept(bridge_end)

    async def accept_script(self, script: list[tuple[float, str]]) -> None:
        """Start a :class:`RawCaller` playing ``script`` and accept its socket."""
        caller_end, bridge_end = trio.testing.memory_stream_pair()
        self.caller = RawCaller(caller_end, self.t0)
        self.nursery.start_soon(self.caller.run, script)
        await self._accept(bridge_end)

    async def _accept(self, bridge_end: trio.abc.Stream) -> None:
        self.carrier_tap = Tap(bridge_end)
        self.carrier = await accept_carrier(self.nursery, self.carrier_tap)
        assert trio.current_time() == self.t0, "accepting must take no virtual time"

    @property
    def carrier_close(self) -> tuple[int | None, str | None, float | None]:
        """(code, reason, time after t0) as the carrier saw its socket close."""
        if self.sim is not None:
            r = self.sim.result
            return r.close_code, r.close_reason, self.rel(r.closed_at)
        assert self.caller is not None
        c = self.caller
        return c.close_code, c.close_reason, self.rel(c.closed_at)

    # --- the call ---

    def call(self, connect_stream: StreamConnector | None = None) -> Call:
        return Call(
            self.carrier,
            ENDPOINT,
            settings=self.settings,
            metrics=self.metrics,
            registry=self.registry,
            connect_stream=connect_stream or self.connector(),
        )

    async def run(self, connect_stream: StreamConnector | None = None) -> Disconnect:
        return await run_call(
            self.carrier,
            ENDPOINT,
            settings=self.settings,
            metrics=self.metrics,
            registry=self.registry,
            connect_stream=connect_stream or self.connector(),
        )

    def at(self, seconds: float, action: Callable[[], object]) -> None:
        """Run ``action()`` at ``t0 + seconds``."""

        async def later() -> None:
            await trio.sleep_until(self.t0 + seconds)
            action()

        self.nursery.start_soon(later)

    def when(self, seconds: float, action: Callable[[], Awaitable[object]]) -> None:
        """Run ``await action()`` at ``t0 + seconds``."""

        async def later() -> None:
            await trio.sleep_until(self.t0 + seconds)
            await action()

        self.nursery.start_soon(later)

    # --- what was counted ---

    def disconnects(self) -> dict[Reason, float]:
        get = self.metrics.registry.get_sample_value
        return {
            r: get("voxbridge_call_disconnects_total", {"reason": r.value}) or 0.0 for r in Reason
        }

    def calls_active(self) -> float | None:
        return self.metrics.registry.get_sample_value("voxbridge_calls_active")

    def assert_accounted_once(self, reason: Reason) -> None:
        """Exactly one disconnect, for ``reason``; no call active; registry remembers it."""
        counted = {r: v for r, v in self.disconnects().items() if v}
        assert counted == {reason: 1.0}
        assert self.calls_active() == 0
        assert len(self.registry) == 0
        assert [record.reason for record in self.registry.recent] == [reason]
        get = self.metrics.registry.get_sample_value
        assert get("voxbridge_call_duration_seconds_count", {"reason": reason.value}) == 1


@asynccontextmanager
async def rig(
    settings: Settings | None = None, *, agent: FakeEchoAgent | None = None
) -> AsyncIterator[Rig]:
    """A nursery for one call and its fakes; cancelled on exit. Fails a hang after RIG_BUDGET."""
    with trio.fail_after(RIG_BUDGET):
        async with trio.open_nursery() as nursery:
            yield Rig(
                nursery=nursery,
                t0=trio.current_time(),
                settings=settings or Settings(),
                agent=agent or FakeEchoAgent(delay=0.1),
            )
            nursery.cancel_scope.cancel()


def approx(value: float) -> Any:
    """Virtual times are exact up to float rounding of sums like ``49 * 0.02``."""
    return pytest.approx(value, abs=1e-6)
