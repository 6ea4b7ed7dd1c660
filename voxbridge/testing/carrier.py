"""A Twilio Media Streams carrier simulator: a fake phone call over a real WebSocket.

It sends what Twilio sends (``connected``, ``start``, 20 ms ``media`` frames in real time, ``stop``),
plays the agent audio it receives in real time as Twilio does (queued behind what is playing; a
``clear`` discards what is queued), echoes ``mark`` messages back once the audio before them has
played, and records what the bridge sent, what the caller actually *heard*
(:attr:`CallResult.played`) and how the bridge closed the socket. Behaviours for fault tests:

* ``stall_after`` -- stop sending after that many seconds but keep the TCP connection open and keep
  reading: the zombie caller every other bridge leaks;
* ``vanish_after`` -- drop the TCP connection abruptly (no ``stop``, no close frame): a phone dying
  in a tunnel.

The same :class:`CarrierSimulator` drives in-memory tests (hand it a stream from
``trio.testing.memory_stream_pair``), ``voxbridge call`` and the demo (:func:`simulate_call`).
Every wait is bounded by ``close_wait``: the simulator cannot hang a test.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections import deque
from collections.abc import Sequence
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
from ..carriers.twilio_wire import (
    encode_connected,
    encode_dtmf,
    encode_inbound_media,
    encode_mark_echo,
    encode_start,
    encode_stop,
)
from .faults import FaultStream

__all__ = ["CallResult", "CarrierSimulator", "simulate_call"]

FRAME_SECONDS = FRAME_BYTES / 8000  # 20 ms


@attrs.define
class CallResult:
    """What the simulated caller saw. Times are ``trio.current_time()`` values.

    ``audio_received`` is every byte of agent audio (mu-law 8 kHz, 8 bytes per ms) the bridge
    sent; ``played`` is what the caller heard of it: exactly the bytes whose real-time playback
    happened, in order. A chunk cut by a ``clear`` adds the part played before the clear, audio a
    ``clear`` discarded adds nothing, and audio still queued when the call ended (``closed_at``:
    the bridge closed the socket, or the simulator stopped reading) adds what had played by then.
    ``clears_at`` holds the arrival time of each ``clear``.
    """

    call_sid: str
    stream_sid: str
    frames_sent: int = 0
    dtmf_sent: int = 0
    frames_received: int = 0
    marks_received: int = 0
    marks_echoed: int = 0
    clears_received: int = 0
    #: For each ``clear``: milliseconds of agent audio the caller had heard when it arrived.
    heard_ms_at_clear: list[float] = attrs.Factory(list)
    clears_at: list[float] = attrs.Factory(list)
    audio_received: bytearray = attrs.field(factory=bytearray, repr=False)
    played: bytearray = attrs.field(factory=bytearray, repr=False)
    connected_at: float | None = None
    first_sent_at: float | None = None
    first_received_at: float | None = None
    last_sent_at: float | None = None
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str | None = None
    rejected_status: int | None = None  # the HTTP status if the server refused the upgrade

    def heard_ms(self, byte_value: int | None = None) -> float:
        """Milliseconds of agent audio the caller heard (:attr:`played`, 8 bytes per ms).

        With ``byte_value`` (0..255), only the samples of that mu-law code: a test that sends each
        agent item as one constant byte (item A ``b"\\x11" * 8000``, item B ``b"\\x22" * 8000``)
        gets how much of each item the caller heard.
        """
        if byte_value is None:
            return len(self.played) / BYTES_PER_MS
        return self.played.count(byte_value) / BYTES_PER_MS

    @property
    def round_trip(self) -> float | None:
        """Seconds from the first frame sent to the first audio received back."""
        if self.first_sent_at is None or self.first_received_at is None:
            return None
        return self.first_received_at - self.first_sent_at


def _status(rejected: BaseExceptionGroup[ConnectionRejected]) -> int:
    """The HTTP status of a refused handshake. trio-websocket raises the refusal from its reader
    task, a direct child of the simulator's nursery, so ``except*`` hands over a flat group."""
    return int(getattr(rejected.exceptions[0], "status_code", 0))


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


class CarrierSimulator:
    """Plays one Twilio call over an open byte stream.

    Args:
        stream: the TCP (or in-memory) stream to the bridge.
        host, resource: for the WebSocket handshake (``Host`` header and path).
        audio: mu-law 8 kHz audio to stream (looped); a 440 Hz tone if omitted.
        seconds: how long to stream before sending ``stop``.
        stall_after: stop sending after this many seconds, keep the socket open and reading.
        vanish_after: drop the connection abruptly after this many seconds.
        send_stop: send ``stop`` at the end (the normal hang-up).
        close_wait: how long to wait for the bridge to close the socket at the end.
        custom_parameters: ``start.customParameters``.
        extra_headers: handshake headers (e.g. a signature).
        call_sid: the ``CallSid`` of ``start`` (a fresh random one if omitted).
        dtmf: key presses to send, as ``(seconds after start, digit)``, while audio streams.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        host: str = "localhost",
        resource: str = "/twilio/media",
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
    ) -> None:
        self.stream = FaultStream(stream)
        self.host = host
        self.resource = resource
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
        self.account_sid = _sid("AC")

    def frames(self) -> list[str]:
        """Every payload the call will send, precomputed (base64 of 20 ms of audio)."""
        count = max(1, round(self.seconds / FRAME_SECONDS))
        audio = self.audio
        while len(audio) < count * FRAME_BYTES:
            audio += self.audio
        return [
            base64.b64encode(audio[i * FRAME_BYTES : (i + 1) * FRAME_BYTES]).decode("ascii")
            for i in range(count)
        ]

    async def run(self) -> CallResult:
        """Run the call to its end (the bridge closed, or ``close_wait`` passed)."""
        result = self.result
        ws: WebSocketConnection | None = None
        try:
            async with trio.open_nursery() as nursery:
                with trio.move_on_after(self.close_wait):
                    ws = await wrap_client_stream(
                        nursery,
                        self.stream,  # type: ignore[arg-type]  # any trio Stream works
                        self.host,
                        self.resource,
                        extra_headers=[(k.encode(), v.encode()) for k, v in self.extra_headers],
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

    async def _send(self, ws: WebSocketConnection, frame: str) -> bool:
        with trio.move_on_after(self.close_wait):
            try:
                await ws.send_message(frame)
                return True
            except ConnectionClosed:
                return False
        return False

    async def _talk(self, ws: WebSocketConnection, done: trio.Event) -> None:
        result, sid = self.result, self.result.stream_sid
        if not (
            await self._send(ws, encode_connected())
            and await self._send(
                ws,
                encode_start(
                    sid,
                    result.call_sid,
                    self.account_sid,
                    sequence_number=1,
                    custom_parameters=self.custom_parameters,
                ),
            )
        ):
            return
        start = trio.current_time()
        result.first_sent_at = start
        keys = list(self.dtmf)
        sequence = 2
        for index, payload in enumerate(self.frames()):
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
                digit = keys.pop(0)[1]
                if not await self._send(ws, encode_dtmf(sid, digit, sequence_number=sequence)):
                    return
                sequence += 1
                result.dtmf_sent += 1
            frame = encode_inbound_media(
                sid, payload, chunk=index + 1, timestamp=index * 20, sequence_number=sequence
            )
            sequence += 1
            if not await self._send(ws, frame):
                return
            result.frames_sent += 1
            result.last_sent_at = trio.current_time()
        if self.send_stop and not done.is_set():
            await self._send(ws, encode_stop(sid, result.call_sid, self.account_sid, sequence))

    async def _read(self, ws: WebSocketConnection, done: trio.Event) -> None:
        """Receive what the bridge sends and play it back like Twilio does.

        Agent audio is "played" in real time from when it arrives (queued behind what is still
        playing); a ``mark`` is echoed when the audio sent before it has finished playing; a
        ``clear`` discards the queued audio and echoes every pending mark at once.
        """
        result = self.result
        player = _Player(self, ws)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(player.echo_marks)
                try:
                    while True:
                        message = await ws.get_message()
                        event = json.loads(message)
                        kind = event.get("event")
                        if kind == "media":
                            now = trio.current_time()
                            if result.first_received_at is None:
                                result.first_received_at = now
                            result.frames_received += 1
                            audio = base64.b64decode(event["media"]["payload"])
                            result.audio_received += audio
                            player.queue(now, audio)
                        elif kind == "mark":
                            result.marks_received += 1
                            player.mark(event["mark"]["name"])
                        elif kind == "clear":
                            now = trio.current_time()
                            result.clears_received += 1
                            result.clears_at.append(now)
                            result.heard_ms_at_clear.append(player.heard_ms(now))
                            await player.clear(now)
                except ConnectionClosed as exc:
                    if exc.reason is not None:
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


class _Player:
    """Twilio's playback, simulated: real-time audio, marks echoed when played or cleared.

    What has played goes to ``CallResult.played``: each chunk is kept with the time it starts
    playing until it has played out (added whole) or is cut (by a ``clear`` or the end of the call:
    the part played by then is added, what is queued behind it is dropped).
    """

    def __init__(self, simulator: CarrierSimulator, ws: WebSocketConnection) -> None:
        self._simulator = simulator
        self._ws = ws
        self._play_until = 0.0  # when the audio queued so far has finished playing
        self._started_at: float | None = None  # when the current stretch of audio began playing
        self._queued_seconds = 0.0  # seconds of audio in the current stretch
        self._chunks: deque[tuple[float, bytes]] = deque()  # (starts playing at, audio), unplayed
        self._stopped = False
        self._pending: list[tuple[float, str]] = []  # (due, mark name)
        self._wake = trio.Event()
        self._sequence = 10**6  # our echo sequence numbers, apart from the media ones

    def queue(self, now: float, audio: bytes) -> None:
        if self._stopped:
            return
        self._settle(now)
        if self._started_at is None or now >= self._play_until:
            self._started_at, self._queued_seconds = now, 0.0  # silence before: a new stretch
            self._play_until = now
        seconds = len(audio) / 8000
        self._chunks.append((self._play_until, audio))
        self._play_until += seconds
        self._queued_seconds += seconds

    def _settle(self, now: float) -> None:
        """Move the chunks that have played out by ``now`` to ``played``."""
        played = self._simulator.result.played
        while self._chunks:
            start, audio = self._chunks[0]
            if start + len(audio) / 8000 > now:
                return
            played.extend(audio)
            self._chunks.popleft()

    def _cut(self, now: float) -> None:
        """Playback stops at ``now``: the part of the playing chunk heard so far is kept, the
        rest and everything queued behind it are dropped."""
        played = self._simulator.result.played
        for start, audio in self._chunks:  # in order; those not yet started add nothing
            heard = min(len(audio), max(0, round((now - start) * 8000)))  # samples, 1 byte each
            played.extend(audio[:heard])
        self._chunks.clear()

    def stop(self, now: float) -> None:
        """The call is over at ``now``: nothing plays after it."""
        if not self._stopped:
            self._cut(now)
            self._stopped = True

    def heard_ms(self, now: float) -> float:
        if self._started_at is None:
            return 0.0
        return min(now - self._started_at, self._queued_seconds) * 1000

    def mark(self, name: str) -> None:
        self._pending.append((self._play_until, name))
        self._wake.set()

    async def clear(self, now: float) -> None:
        self._cut(now)
        self._play_until = now
        self._started_at = None
        pending, self._pending = self._pending, []
        for _, name in pending:
            await self._echo(name)
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
        simulator = self._simulator
        if simulator.stalled:
            return  # a stalled carrier sends nothing at all
        self._sequence += 1
        stream_sid = simulator.result.stream_sid
        if await simulator._send(self._ws, encode_mark_echo(stream_sid, name, self._sequence)):
            simulator.result.marks_echoed += 1


async def simulate_call(url: str, **options: object) -> CallResult:
    """Open a TCP connection to ``url`` (``ws://host:port/path``) and play one call on it.

    ``options`` are :class:`CarrierSimulator`'s keyword arguments.
    """
    parts = urlsplit(url)
    if parts.scheme != "ws" or parts.hostname is None:
        raise ValueError(f"expected ws://host:port/path, got {url!r}")
    port = parts.port or 80
    with trio.fail_after(float(options.get("close_wait", 10.0))):  # type: ignore[arg-type]
        stream = await trio.open_tcp_stream(parts.hostname, port)
    simulator = CarrierSimulator(
        stream,
        host=f"{parts.hostname}:{port}",
        resource=parts.path or "/",
        **options,  # type: ignore[arg-type]
    )
    return await simulator.run()
