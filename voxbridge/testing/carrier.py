"""A carrier simulator: a fake phone call over a real WebSocket, for any carrier.

The engine (:class:`CarrierSimulator`) is carrier-neutral. It streams caller audio in real time
(20 ms chunks), plays the agent audio it receives in real time as a carrier does (queued behind
what is playing; a clear discards what is queued), echoes marks once the audio before them has
played, and records what the bridge sent, what the caller actually *heard*
(:attr:`CallResult.played`) and how the bridge closed the socket. What the frames look like is
the carrier's :class:`~voxbridge.testing.carrier_wire.CallerWire` (``wire=``): Twilio's
(:class:`TwilioWire`, the default) sends ``connected``, ``start``, ``media``, ``dtmf``, ``mark``
echoes and ``stop``; another carrier's wire sends its own handshake and frames, converts audio to
and from its format, and says through ``wire.capabilities`` how marks behave:

* ``marks`` false (Vonage): no mark is ever echoed;
* ``echoes_cleared_marks`` true (Twilio, Telnyx): the marks pending at a clear are echoed at the
  clear; false (Plivo): they are dropped, never echoed (counted in
  :attr:`CallResult.marks_discarded`);
* a wire whose ``stop`` is ``None`` (Plivo, Vonage) hangs up by closing the WebSocket.

The engine converts nothing itself: the wire gets and returns mu-law 8 kHz, so the engine's clock
(8 bytes per ms) and its record of what was heard are the same for every carrier. Behaviours for
fault tests:

* ``stall_after`` -- stop sending after that many seconds but keep the TCP connection open and keep
  reading: the zombie caller every other bridge leaks;
* ``vanish_after`` -- drop the TCP connection abruptly (no stop, no close frame): a phone dying
  in a tunnel.

And for the playout itself (both 0 by default: audio plays the instant it arrives):

* ``playout_latency`` -- seconds between agent audio reaching an idle carrier (nothing playing:
  the start of the call, after a silence or a clear) and its first sample playing: the carrier's
  jitter buffer filling up. Audio queued behind what is playing follows it without a gap;
* ``jitter`` -- each agent audio message reaches the carrier up to this many seconds late
  (uniform, from a ``random.Random(seed)``), in order: what the bridge sends after it (marks, a
  clear) never overtakes it. Audio that arrives after the audio before it ran out starts a new
  stretch, after ``playout_latency`` again. Each mark echo goes back up to ``jitter`` late too
  (in order, drawn from ``random.Random(f"{seed}/echoes")``, so the audio's delays do not depend
  on how many marks there are).

The same :class:`CarrierSimulator` drives in-memory tests (hand it a stream from
``trio.testing.memory_stream_pair``), ``voxbridge call`` and the demo (:func:`simulate_call`,
``carrier=`` names a registered carrier whose spec names its wire). Every wait is bounded by
``close_wait``: the simulator cannot hang a test.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import json
import math
import random
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
)

from ..audio import BYTES_PER_MS, FRAME_BYTES, tone
from ..carriers.base import Capabilities, Frame
from ..carriers.registry import CARRIERS
from ..carriers.twilio_wire import (
    encode_connected,
    encode_dtmf,
    encode_inbound_media,
    encode_mark_echo,
    encode_start,
    encode_stop,
)
from .carrier_wire import AgentSpoke, CallerWire, Cleared, Marked, SimulatedCall, WireEvent
from .faults import FaultStream

__all__ = ["CallResult", "CarrierSimulator", "TwilioWire", "simulate_call", "wire_for"]

FRAME_SECONDS = FRAME_BYTES / 8000  # 20 ms
_T = TypeVar("_T")


@attrs.define
class CallResult:
    """What the simulated caller saw. Times are ``trio.current_time()`` values.

    ``call_sid`` and ``stream_sid`` are the carrier's call and stream ids the simulator sent
    (Twilio's names: ``CA...`` and ``MZ...``-shaped for every carrier).

    ``audio_received`` is every byte of agent audio (mu-law 8 kHz, 8 bytes per ms, as the wire
    converted it) the bridge sent; ``played`` is what the caller heard of it: exactly the bytes
    whose real-time playback happened, in order. A chunk cut by a clear adds the part played
    before the clear, audio a clear discarded adds nothing, and audio still queued when the call
    ended (``closed_at``: the bridge closed the socket, or the simulator stopped reading) adds
    what had played by then. ``clears_at`` holds the arrival time of each clear.
    ``protocol_errors`` holds why each frame the carrier would have refused was refused.
    """

    call_sid: str
    stream_sid: str
    frames_sent: int = 0
    dtmf_sent: int = 0
    frames_received: int = 0
    marks_received: int = 0
    marks_echoed: int = 0
    #: Marks a clear discarded and the carrier never echoes (``echoes_cleared_marks`` false).
    marks_discarded: int = 0
    clears_received: int = 0
    #: For each clear: milliseconds of agent audio the caller had heard when it arrived, of the
    #: stretch playing then (since the carrier's queue last ran dry).
    heard_ms_at_clear: list[float] = attrs.Factory(list)
    #: For each clear: milliseconds of agent audio the caller had heard in the whole call, when
    #: it arrived (:meth:`heard_ms` at that instant).
    played_ms_at_clear: list[float] = attrs.Factory(list)
    #: When each piece of :attr:`played` began playing, and its bytes, in order (what
    #: :meth:`heard_ms_at` reads).
    playout: list[tuple[float, int]] = attrs.field(factory=list, repr=False)
    clears_at: list[float] = attrs.Factory(list)
    audio_received: bytearray = attrs.field(factory=bytearray, repr=False)
    played: bytearray = attrs.field(factory=bytearray, repr=False)
    protocol_errors: list[str] = attrs.Factory(list)
    connected_at: float | None = None
    first_sent_at: float | None = None
    first_received_at: float | None = None
    last_sent_at: float | None = None
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str | None = None
    rejected_status: int | None = None  # the HTTP status if the server refused the upgrade
    #: The caller hung up by closing the WebSocket (a carrier without a stop event: Plivo,
    #: Vonage); then ``close_code`` stays ``None`` (the close was the caller's own).
    hung_up: bool = False

    def heard_ms(self, byte_value: int | None = None) -> float:
        """Milliseconds of agent audio the caller heard (:attr:`played`, 8 bytes per ms).

        With ``byte_value`` (0..255), only the samples of that mu-law code: a test that sends each
        agent item as one constant byte (item A ``b"\\x11" * 8000``, item B ``b"\\x22" * 8000``)
        gets how much of each item the caller heard.
        """
        if byte_value is None:
            return len(self.played) / BYTES_PER_MS
        return self.played.count(byte_value) / BYTES_PER_MS

    def heard_ms_at(self, when: float) -> float:
        """Milliseconds of agent audio the caller had heard by ``when`` (a
        ``trio.current_time()`` value), exactly, from :attr:`playout`."""
        heard = 0.0
        for start, nbytes in self.playout:
            if start >= when:
                break
            heard += min(nbytes / BYTES_PER_MS, (when - start) * 1000)
        return heard

    @property
    def round_trip(self) -> float | None:
        """Seconds from the first frame sent to the first audio received back."""
        if self.first_sent_at is None or self.first_received_at is None:
            return None
        return self.first_received_at - self.first_sent_at


# --- Twilio's wire ---------------------------------------------------------------------------------


class TwilioWire:
    """Twilio Media Streams as the caller's side speaks it (a
    :class:`~voxbridge.testing.carrier_wire.CallerWire`), built on
    :mod:`voxbridge.carriers.twilio_wire`'s encoders.

    Twilio sends ``connected`` then ``start`` (with ``customParameters``), ``media`` frames with
    ``sequenceNumber``, ``media.chunk`` and ``media.timestamp`` as digit strings (one sequence
    across every message), ``dtmf``, ``mark`` echoes and ``stop``. From the bridge it takes
    ``media``, ``mark`` and ``clear``; anything else is its error 31924, a binary frame 31950
    (Twilio's error reference), so :meth:`parse` refuses them with ``ValueError``.
    """

    carrier = "twilio"
    capabilities = Capabilities()  # marks, cleared marks echoed, stop, base64 text audio

    def upgrade_headers(self, call: SimulatedCall) -> list[tuple[str, str]]:
        """None: a signature (``X-Twilio-Signature``) is the test's to add (``extra_headers``)."""
        return []

    def handshake(self, call: SimulatedCall) -> list[Frame]:
        start = encode_start(
            call.stream_id,
            call.call_id,
            call.account_id,
            sequence_number=call.next_sequence(),
            custom_parameters=call.custom_parameters,
        )
        return [encode_connected(), start]

    def audio(self, call: SimulatedCall, mulaw: bytes) -> Frame:
        frame = encode_inbound_media(
            call.stream_id,
            base64.b64encode(mulaw).decode("ascii"),
            chunk=call.chunk,
            timestamp=call.timestamp_ms,
            sequence_number=call.next_sequence(),
        )
        call.chunk += 1
        call.timestamp_ms += len(mulaw) // BYTES_PER_MS
        return frame

    def dtmf(self, call: SimulatedCall, digit: str) -> Frame:
        return encode_dtmf(call.stream_id, digit, sequence_number=call.next_sequence())

    def mark_echo(self, call: SimulatedCall, name: str) -> Frame:
        return encode_mark_echo(call.stream_id, name, call.next_sequence())

    def stop(self, call: SimulatedCall) -> Frame | None:
        return encode_stop(call.stream_id, call.call_id, call.account_id, call.next_sequence())

    def parse(self, frame: Frame) -> WireEvent | None:
        """``media`` -> :class:`AgentSpoke`, ``mark`` -> :class:`Marked`, ``clear`` ->
        :class:`Cleared`.

        Raises:
            ValueError: a binary frame, not a JSON object, an unknown event, a missing field or a
                payload that is not base64.
        """
        if not isinstance(frame, str):
            raise ValueError("a binary frame (Twilio error 31950)")
        event: Any = json.loads(frame)  # a JSONDecodeError is a ValueError
        if not isinstance(event, dict):
            raise ValueError("not a JSON object")
        kind = event.get("event")
        try:
            if kind == "media":
                payload = event["media"]["payload"]
                return AgentSpoke(base64.b64decode(payload, validate=True))
            if kind == "mark":
                return Marked(str(event["mark"]["name"]))
        except (KeyError, TypeError, binascii.Error) as exc:
            raise ValueError(f"bad {kind} frame: {type(exc).__name__}") from None
        if kind == "clear":
            return Cleared()
        raise ValueError(f"unknown event {str(kind)[:40]!r} (Twilio error 31924)")


def wire_for(carrier: str) -> CallerWire:
    """A fresh wire of a registered carrier: the class its spec's ``simulator`` names.

    Raises:
        ValueError: an unknown carrier, or one whose spec names no simulator.
    """
    spec = CARRIERS.get(carrier)
    if spec is None:
        raise ValueError(f"unknown carrier {carrier!r} (known: {', '.join(CARRIERS)})")
    module, _, name = spec.simulator.partition(":")
    if not (module and name):
        raise ValueError(f"carrier {carrier!r} names no simulator")
    wire: CallerWire = getattr(importlib.import_module(module), name)()
    return wire


# --- the engine ------------------------------------------------------------------------------------


def _status(rejected: BaseExceptionGroup[ConnectionRejected]) -> int:
    """The HTTP status of a refused handshake. trio-websocket raises the refusal from its reader
    task, a direct child of the simulator's nursery, so ``except*`` hands over a flat group."""
    return int(getattr(rejected.exceptions[0], "status_code", 0))


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


class CarrierSimulator:
    """Plays one call over an open byte stream, as the carrier of ``wire`` would.

    Args:
        stream: the TCP (or in-memory) stream to the bridge.
        host, resource: for the WebSocket handshake (``Host`` header and path; default
            ``/<carrier>/media``).
        audio: mu-law 8 kHz audio to stream (looped); a 440 Hz tone if omitted.
        seconds: how long to stream before hanging up (the carrier's stop, or a close).
        stall_after: stop sending after this many seconds, keep the socket open and reading.
        vanish_after: drop the connection abruptly after this many seconds.
        send_stop: hang up at the end (the normal end of a call).
        close_wait: how long to wait for the bridge to close the socket at the end.
        custom_parameters: what the carrier hands back from the webhook's answer (Twilio's
            ``start.customParameters``).
        extra_headers: more handshake headers (e.g. a signature), after the wire's own.
        call_sid: the carrier's call id (a fresh random one if omitted).
        dtmf: key presses to send, as ``(seconds after start, digit)``, while audio streams.
        wire: the carrier's wire (one per call: it may hold conversion state);
            :class:`TwilioWire` if omitted.
        playout_latency: seconds from agent audio reaching an idle carrier to its playing.
        jitter: each agent audio message arrives up to this many seconds late (in order).
        seed: the jitter's random seed: the audio's delays are ``random.Random(seed)``'s
            ``uniform(0, jitter)`` draws in turn, the echoes' those of
            ``random.Random(f"{seed}/echoes")``.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        host: str = "localhost",
        resource: str | None = None,
        audio: bytes | None = None,
        seconds: float = 2.0,
        stall_after: float | None = None,
        vanish_after: float | None = None,
        send_stop: bool = True,
        close_wait: float = 10.0,
        custom_parameters: dict[str, str] | None = None,
        extra_headers: list[tuple[str, str]] | None = None,
        call_sid: str | None = None,
        dtmf: Sequence[tuple[float, str]] = (),
        wire: CallerWire | None = None,
        playout_latency: float = 0.0,
        jitter: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.stream = FaultStream(stream)
        self.playout_latency = playout_latency
        self.jitter = jitter
        self.random = random.Random(seed)  # the audio's delays
        # the echoes' delays, drawn apart: how many marks there are moves no audio
        self.echo_random = random.Random(None if seed is None else f"{seed}/echoes")
        self.wire: CallerWire = wire if wire is not None else TwilioWire()
        self.host = host
        self.resource = resource if resource is not None else f"/{self.wire.carrier}/media"
        self.audio = audio if audio else tone(1.0)
        self.seconds = seconds
        self.stall_after = stall_after
        self.vanish_after = vanish_after
        self.send_stop = send_stop
        self.close_wait = close_wait
        self.custom_parameters = custom_parameters or {}
        self.extra_headers = extra_headers or []
        self.result = CallResult(call_sid=call_sid or _sid("CA"), stream_sid=_sid("MZ"))
        self.dtmf = sorted(dtmf)
        self.stalled = False
        self.hung_up = False  # we closed the WebSocket (a carrier without a stop event)
        self.account_sid = _sid("AC")
        self.call: SimulatedCall | None = None  # the wire's view of the call, once it runs

    def chunks(self) -> list[bytes]:
        """Every 20 ms chunk of mu-law audio the call will send, in order (``audio`` looped)."""
        count = max(1, round(self.seconds / FRAME_SECONDS))
        audio = self.audio
        while len(audio) < count * FRAME_BYTES:
            audio += self.audio
        return [audio[i * FRAME_BYTES : (i + 1) * FRAME_BYTES] for i in range(count)]

    def frames(self) -> list[str]:
        """Every chunk the call will send, as base64 (what Twilio puts in ``media.payload``)."""
        return [base64.b64encode(chunk).decode("ascii") for chunk in self.chunks()]

    async def run(self) -> CallResult:
        """Run the call to its end (the bridge closed, or ``close_wait`` passed)."""
        result = self.result
        call = self.call = SimulatedCall(
            call_id=result.call_sid,
            stream_id=result.stream_sid,
            account_id=self.account_sid,
            custom_parameters=dict(self.custom_parameters),
        )
        headers = [*self.wire.upgrade_headers(call), *self.extra_headers]
        ws: WebSocketConnection | None = None
        try:
            async with trio.open_nursery() as nursery:
                with trio.move_on_after(self.close_wait):
                    ws = await wrap_client_stream(
                        nursery,
                        self.stream,  # type: ignore[arg-type]  # any trio Stream works
                        self.host,
                        self.resource,
                        extra_headers=[(k.encode(), v.encode()) for k, v in headers],
                    )
                if ws is None:
                    nursery.cancel_scope.cancel()
                    return result
                result.connected_at = trio.current_time()
                done = trio.Event()
                nursery.start_soon(self._read, ws, done)
                await self._talk(ws, done)
                with trio.move_on_after(self.close_wait):
                    await done.wait()
                nursery.cancel_scope.cancel()
        except* ConnectionRejected as rejected:  # the library raises it from its reader task
            result.rejected_status = _status(rejected)
        finally:
            await trio.aclose_forcefully(self.stream)
        return result

    def _running(self) -> SimulatedCall:
        assert self.call is not None, "the call is not running"
        return self.call

    async def _send(self, ws: WebSocketConnection, frame: Frame) -> bool:
        with trio.move_on_after(self.close_wait):
            try:
                await ws.send_message(frame)
                return True
            except ConnectionClosed:
                return False
        return False

    async def _talk(self, ws: WebSocketConnection, done: trio.Event) -> None:
        result, wire, call = self.result, self.wire, self._running()
        for frame in wire.handshake(call):
            if not await self._send(ws, frame):
                return
        start = trio.current_time()
        result.first_sent_at = start
        keys = list(self.dtmf)
        for index, chunk in enumerate(self.chunks()):
            at = start + index * FRAME_SECONDS
            if self.vanish_after is not None and at - start >= self.vanish_after:
                await self.stream.vanish()
                return
            if self.stall_after is not None and at - start >= self.stall_after:
                self.stalled = True  # stay connected and reading; send nothing more, not even marks
                return
            await trio.sleep_until(at)
            if done.is_set():
                return
            while keys and keys[0][0] <= at - start:
                if not await self._send(ws, wire.dtmf(call, keys.pop(0)[1])):
                    return
                result.dtmf_sent += 1
            if not await self._send(ws, wire.audio(call, chunk)):
                return
            result.frames_sent += 1
            result.last_sent_at = trio.current_time()
        if self.send_stop and not done.is_set():
            stop = wire.stop(call)
            if stop is not None:
                await self._send(ws, stop)
            else:  # the carrier hangs up by closing the socket
                self.hung_up = result.hung_up = True
                with trio.move_on_after(self.close_wait):
                    await ws.aclose()

    async def _read(self, ws: WebSocketConnection, done: trio.Event) -> None:
        """Receive what the bridge sends and play it back like the carrier does.

        Agent audio is "played" in real time from when it arrives (queued behind what is still
        playing, or ``playout_latency`` after it reaches an idle carrier), each message up to
        ``jitter`` late; a mark is echoed when the audio sent before it has finished playing; a
        clear discards the queued audio and echoes every pending mark at once, or drops them when
        the carrier does not echo cleared marks.
        """
        result = self.result
        player = _Player(self, ws, self._running())

        async def arrived(event: WireEvent) -> None:
            now = trio.current_time()
            if isinstance(event, AgentSpoke):
                if result.first_received_at is None:
                    result.first_received_at = now
                result.frames_received += 1
                result.audio_received += event.audio
                player.queue(now, event.audio)
            elif isinstance(event, Marked):
                result.marks_received += 1
                player.mark(event.name)
            elif isinstance(event, Cleared):
                result.clears_received += 1
                result.clears_at.append(now)
                result.heard_ms_at_clear.append(player.heard_ms(now))
                await player.clear(now)
                result.played_ms_at_clear.append(result.heard_ms())

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(player.echo_marks)
                late: Callable[[WireEvent], None] | None = None
                if self.jitter > 0:  # audio arrives up to jitter late; echoes go back the same
                    audio = self.random
                    late = _delay_line(
                        nursery,
                        arrived,
                        lambda event: (
                            audio.uniform(0.0, self.jitter)
                            if isinstance(event, AgentSpoke)
                            else 0.0
                        ),
                    )
                    echoes = self.echo_random
                    player.late_echo = _delay_line(
                        nursery, player.send_echo, lambda _: echoes.uniform(0.0, self.jitter)
                    )
                try:
                    while True:
                        message = await ws.get_message()
                        try:
                            event = self.wire.parse(message)
                        except ValueError as exc:
                            result.protocol_errors.append(str(exc))
                            continue
                        if event is None:
                            continue
                        if late is None:
                            await arrived(event)
                        else:
                            late(event)
                except ConnectionClosed as exc:
                    if exc.reason is not None and not self.hung_up:
                        result.close_code = exc.reason.code
                        result.close_reason = exc.reason.reason
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            result.closed_at = trio.current_time()
            player.stop(result.closed_at)  # the caller hears nothing more
            done.set()


def _delay_line(
    nursery: trio.Nursery, deliver: Callable[[_T], Awaitable[None]], delay: Callable[[_T], float]
) -> Callable[[_T], None]:
    """A network path with jitter: returns the function that takes each item as it is sent;
    ``deliver`` gets them in order, each ``delay(item)`` seconds late, never before the one before
    it (one ordered stream, as a WebSocket is)."""
    send, receive = trio.open_memory_channel[tuple[float, _T]](math.inf)
    latest = -math.inf

    def put(item: _T) -> None:
        nonlocal latest
        latest = at = max(trio.current_time() + delay(item), latest)
        send.send_nowait((at, item))

    async def run() -> None:
        async with receive:
            async for at, item in receive:
                await trio.sleep_until(at)
                await deliver(item)

    nursery.start_soon(run)
    return put


class _Player:
    """A carrier's playback, simulated: real-time audio, marks echoed when played (and, per
    ``wire.capabilities``, when cleared).

    What has played goes to ``CallResult.played``: each chunk is kept with the time it starts
    playing until it has played out (added whole) or is cut (by a clear or the end of the call:
    the part played by then is added, what is queued behind it is dropped).
    """

    def __init__(
        self, simulator: CarrierSimulator, ws: WebSocketConnection, call: SimulatedCall
    ) -> None:
        self._simulator = simulator
        self._ws = ws
        self._call = call
        self._capabilities = simulator.wire.capabilities
        self._play_until = 0.0  # when the audio queued so far has finished playing
        self._started_at: float | None = None  # when the current stretch of audio began playing
        self._queued_seconds = 0.0  # seconds of audio in the current stretch
        self._chunks: deque[tuple[float, bytes]] = deque()  # (starts playing at, audio), unplayed
        self._stopped = False
        self._pending: list[tuple[float, str]] = []  # (due, mark name)
        self._wake = trio.Event()
        #: With jitter: takes each echo, to send it up to ``jitter`` late.
        self.late_echo: Callable[[str], None] | None = None

    def queue(self, now: float, audio: bytes) -> None:
        if self._stopped:
            return
        self._settle(now)
        if self._started_at is None or now >= self._play_until:
            # silence before: a new stretch, once the jitter buffer has filled
            start = now + self._simulator.playout_latency
            self._started_at, self._queued_seconds = start, 0.0
            self._play_until = start
        seconds = len(audio) / 8000
        self._chunks.append((self._play_until, audio))
        self._play_until += seconds
        self._queued_seconds += seconds

    def _settle(self, now: float) -> None:
        """Move the chunks that have played out by ``now`` to ``played``."""
        result = self._simulator.result
        while self._chunks:
            start, audio = self._chunks[0]
            if start + len(audio) / 8000 > now:
                return
            result.played.extend(audio)
            result.playout.append((start, len(audio)))
            self._chunks.popleft()

    def _cut(self, now: float) -> None:
        """Playback stops at ``now``: the part of the playing chunk heard so far is kept, the
        rest and everything queued behind it are dropped."""
        result = self._simulator.result
        for start, audio in self._chunks:  # in order; those not yet started add nothing
            heard = min(len(audio), max(0, round((now - start) * 8000)))  # samples, 1 byte each
            if heard:
                result.played.extend(audio[:heard])
                result.playout.append((start, heard))
        self._chunks.clear()

    def stop(self, now: float) -> None:
        """The call is over at ``now``: nothing plays after it."""
        if not self._stopped:
            self._cut(now)
            self._stopped = True

    def heard_ms(self, now: float) -> float:
        """Milliseconds heard by ``now`` of the stretch playing (or about to)."""
        if self._started_at is None:
            return 0.0
        return max(0.0, min(now - self._started_at, self._queued_seconds)) * 1000

    def mark(self, name: str) -> None:
        if not self._capabilities.marks:
            return  # the carrier has no marks: nothing to echo
        self._pending.append((self._play_until, name))
        self._wake.set()

    async def clear(self, now: float) -> None:
        self._cut(now)
        self._play_until = now
        self._started_at = None
        pending, self._pending = self._pending, []
        if self._capabilities.echoes_cleared_marks:
            for _, name in pending:
                await self._echo(name)
        else:
            self._simulator.result.marks_discarded += len(pending)
        self._wake.set()

    async def echo_marks(self) -> None:
        while True:
            if not self._pending:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            due, name = self._pending[0]
            with trio.move_on_at(due):
                await self._wake.wait()  # a clear or a new mark may change what is due
                self._wake = trio.Event()
                continue
            if self._pending and self._pending[0] == (due, name):
                self._pending.pop(0)
                await self._echo(name)

    async def _echo(self, name: str) -> None:
        if self.late_echo is not None:
            self.late_echo(name)
        else:
            await self.send_echo(name)

    async def send_echo(self, name: str) -> None:
        simulator = self._simulator
        if simulator.stalled:
            return  # a stalled carrier sends nothing at all
        if await simulator._send(self._ws, simulator.wire.mark_echo(self._call, name)):
            simulator.result.marks_echoed += 1


async def simulate_call(url: str, *, carrier: str | None = None, **options: Any) -> CallResult:
    """Open a TCP connection to ``url`` (``ws://host:port/path``) and play one call on it.

    Args:
        url: the bridge's media route, e.g. ``ws://127.0.0.1:8080/twilio/media``; a query string
            (``?voxbridge_token=...``, a stream URL as a webhook answer wrote it) is kept.
        carrier: a registered carrier whose wire to speak (:func:`wire_for`); Twilio's if
            omitted (or the ``wire`` option).
        options: :class:`CarrierSimulator`'s keyword arguments.

    Raises:
        ValueError: ``url`` is not ``ws://host:port/path``, or ``carrier`` is unknown.
    """
    parts = urlsplit(url)
    if parts.scheme != "ws" or parts.hostname is None:
        raise ValueError(f"expected ws://host:port/path, got {url!r}")
    if carrier is not None:
        if "wire" in options:
            raise ValueError("give carrier= or wire=, not both")
        options["wire"] = wire_for(carrier)
    port = parts.port or 80
    with trio.fail_after(float(options.get("close_wait", 10.0))):
        stream = await trio.open_tcp_stream(parts.hostname, port)
    simulator = CarrierSimulator(
        stream,
        host=f"{parts.hostname}:{port}",
        resource=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
        **options,
    )
    return await simulator.run()
