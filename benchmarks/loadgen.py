"""The load generator: many simulated Twilio callers in one asyncio process, at minimal cost.

Each call is an ``asyncio.Protocol`` on a raw TCP connection (no WebSocket library; see
:mod:`benchmarks.wire`). One ticker per process sends every call its next 20 ms frame: calls are
spread over the ticks of one frame interval, a frame is three precomputed byte strings joined, and
the ticker catches up from the clock, never from a count, so a late tick cannot slow the stream.
Received media messages are not parsed as JSON: the 8 characters after ``"payload"`` (and its
quote) are the sender's timestamp (see :mod:`benchmarks.wire`), which is all the latency figure
needs. A bridge may merge queued frames into one message; then the payload is decoded and every
160-byte frame in it counts, with its own timestamp.

Audio that was resampled on the way (a bridge to Gemini Live) cannot carry those timestamps; the
spec says so with ``resampled``. Received audio then counts by its bytes (a frame is 160), and a
frame's latency is read by position -- ``echo``: when the bytes back reach the end of a frame the
call sent, minus that frame's send time -- or, ``agent``, from the stamp the fake coded into the
first frame of each ``burst`` frames (:func:`benchmarks.wire.decode_pcm_stamp`).

The harness runs one or more of these processes with a JSON spec (``--spec-file``) and reads one
JSON line back. For a quick manual run, flags build a spec::

    python -m benchmarks.loadgen --url ws://127.0.0.1:8080/twilio/media --calls 10 --seconds 5

Spec keys (all optional but ``url``): ``calls``, ``start_at`` (``CLOCK_MONOTONIC`` seconds),
``ramp`` (seconds over which calls connect), ``interval`` (seconds between a call's frames),
``stream_until`` (when calls stop sending), ``grace`` (seconds to wait for the last echoes),
``after`` (``stop``: send Twilio's stop and close; ``hold``: stay connected and silent, keep
reading, until ``hold_until``; ``vanish``: reset the TCP connection), ``hold_until``,
``window`` ([start, end] for latency and window counts), ``soak`` (a schedule of calls with
faults, see :class:`Soak`), ``samples_path`` (where latency samples go, uint32 microseconds),
``deadline`` (hard stop), ``seed``, ``resampled`` (``echo`` or ``agent``: the upstream's mode,
for resampled audio) with ``burst`` (the agent's frames per burst).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import binascii
import json
import os
import random
import socket
import struct
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from . import wire

__all__ = ["main", "run"]

MAX_BUFFERED = 4 * 1024 * 1024  # a call whose server stopped reading stops being fed past this


class Call(asyncio.Protocol):
    """One simulated Twilio caller."""

    __slots__ = (
        "aborted",
        "accept",
        "after",
        "close_code",
        "close_sent",
        "closed_at",
        "connected_at",
        "gen",
        "handshake",
        "head",
        "index",
        "kind",
        "last_sent",
        "port",
        "reader",
        "received",
        "request",
        "rx_bytes",
        "send_times",
        "sent",
        "sids",
        "stamps",
        "state",
        "stop_at",
        "streaming",
        "tail",
        "transport",
    )

    def __init__(self, gen: Generator, index: int, kind: str = "normal") -> None:
        self.gen = gen
        self.index = index
        self.kind = kind
        self.transport: asyncio.Transport | None = None
        self.request, self.accept = wire.handshake_request(gen.host, gen.port, gen.path)
        self.handshake = b""
        self.reader: wire.FrameReader | None = None
        self.sids = wire.TwilioFrames.new_sids()
        self.tail = wire.TwilioFrames.tail(self.sids[0])
        self.state = "connecting"
        self.streaming = False
        self.stop_at = gen.stream_until + gen.stream_spread * (
            gen.global_index(index) / max(1, gen.calls_total)
        )
        self.sent = 0
        self.received: float = 0  # frames (resampled audio: fractions of frames)
        self.last_sent: int | None = None
        self.port = 0  # the caller's own port: the soak finds its sockets on the server by it
        self.connected_at: int | None = None
        self.closed_at: int | None = None
        self.close_code: int | None = None
        self.close_sent = False
        self.aborted = False
        # resampled audio (see the module docstring): bytes received, every frame's send time
        # (echo), the first bytes of the current burst and the stamps of bursts (agent)
        self.rx_bytes = 0
        self.send_times: array.array[int] | None = (
            array.array("Q") if gen.resampled == "echo" else None
        )
        self.head = bytearray()
        self.stamps: dict[int, int | None] = {}

    # --- asyncio protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed_at is None and not self.aborted:  # the server closed (or reset) it
            self.closed_at = wire.now_us()
        self.streaming = False
        if self.state != "done":
            self.state = "done"
            self.gen.call_done(self)

    def data_received(self, data: bytes) -> None:
        if self.reader is None:
            self.handshake += data
            end = self.handshake.find(b"\r\n\r\n")
            if end < 0:
                return
            head, rest = self.handshake[:end], self.handshake[end + 4 :]
            self.handshake = b""
            status = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"?"
            if status != b"101":
                self.gen.rejected[status.decode("latin-1")] = (
                    self.gen.rejected.get(status.decode("latin-1"), 0) + 1
                )
                self.state = "rejected"
                self.abort()
                return
            self.reader = wire.FrameReader()
            self.state = "open"
            self.connected_at = wire.now_us()
            self.gen.call_open(self)
            if not rest:
                return
            data = rest
        try:
            messages = self.reader.feed(data)
        except ValueError:
            self.abort()
            return
        now = wire.now_us()
        gen = self.gen
        for opcode, payload in messages:
            if opcode == wire.OP_TEXT:
                at = payload.find(b'"payload"')
                if at >= 0:
                    at = payload.find(b'"', at + 9) + 1
                    end = payload.find(b'"', at)
                    gen.media_messages += 1
                    if gen.resampled:
                        self._resampled(payload[at:end], now)
                        continue
                    if end - at <= wire.FRAME_B64:  # one 20 ms frame: its stamp leads
                        stamps = [wire.decode_stamp(payload[at : at + 8])]
                    else:  # a bridge merged queued frames: every 160 bytes starts a stamp
                        stamps = wire.frame_stamps(payload[at:end])
                    self.received += len(stamps)
                    gen.received += len(stamps)
                    if gen.in_window(now):
                        gen.received_window += len(stamps)
                        for sent_at in stamps:
                            gen.samples.append(min(wire.elapsed_us(sent_at, now), 0xFFFFFFFF))
                elif b'"event":"mark"' in payload:
                    gen.marks += 1
                    try:
                        name = json.dumps(json.loads(payload)["mark"]["name"]).encode()
                    except (ValueError, KeyError, TypeError):
                        continue
                    self._write(wire.TwilioFrames.mark_echo(self.sids[0], name, self.sent + 2))
                elif b'"event":"clear"' in payload:
                    gen.clears += 1
            elif opcode == wire.OP_PING:
                self._write(wire.client_frame(payload, wire.OP_PONG))
            elif opcode == wire.OP_CLOSE:
                if self.closed_at is None:
                    self.closed_at = now
                    self.close_code = struct.unpack("!H", payload[:2])[0] if payload else 1005
                self.streaming = False
                if not self.close_sent:
                    self.close_sent = True
                    self._write(wire.client_frame(payload[:2], wire.OP_CLOSE))
                if self.transport is not None:
                    self.transport.close()

    def _resampled(self, b64: bytes, now: int) -> None:
        """Count and time a media payload of resampled audio (see the module docstring)."""
        gen = self.gen
        size = len(b64) * 3 // 4 - b64[-2:].count(b"=")
        before, after = self.rx_bytes, self.rx_bytes + size
        self.rx_bytes = after
        frames = size / wire.FRAME_BYTES
        self.received += frames
        gen.received += frames
        done = range(before // wire.FRAME_BYTES, after // wire.FRAME_BYTES)  # frames now whole
        if self.send_times is not None:  # echo: the frame this call sent at that position
            times = self.send_times
            latencies = [now - times[k] for k in done if k < len(times)]
        else:  # agent: its burst's stamp, from the burst's first frame
            burst_bytes = gen.burst * wire.FRAME_BYTES
            raw: bytes | None = None
            at = before
            while at < after:
                burst, offset = divmod(at, burst_bytes)
                if offset >= wire.PCM_STAMP_BYTES:
                    at = (burst + 1) * burst_bytes
                    continue
                if raw is None:
                    raw = binascii.a2b_base64(b64)
                take = min(wire.PCM_STAMP_BYTES - offset, after - at)
                self.head += raw[at - before : at - before + take]
                at += take
                if len(self.head) == wire.PCM_STAMP_BYTES:
                    stamp = wire.decode_pcm_stamp(bytes(self.head))
                    self.head.clear()
                    if stamp is None:
                        gen.stamp_errors += 1
                    self.stamps = {k: v for k, v in self.stamps.items() if k >= burst - 1}
                    self.stamps[burst] = stamp
            latencies = []
            for k in done:
                stamp = self.stamps.get(k // gen.burst)
                if stamp is not None:
                    latencies.append(wire.elapsed32_us(stamp, now))
        if gen.in_window(now):
            gen.received_window += frames
            gen.samples.extend(min(x, 0xFFFFFFFF) for x in latencies)

    # --- actions ----------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send_media(self, heads: list[bytes], count: int) -> bool:
        transport = self.transport
        if transport is None or transport.is_closing():
            self.streaming = False
            return False
        if transport.get_write_buffer_size() > MAX_BUFFERED:
            self.gen.skipped += 1
            return False
        now = wire.now_us()
        transport.write(heads[self.sent % count] + wire.stamp(now) + self.tail)
        self.sent += 1
        self.last_sent = now
        if self.send_times is not None:
            self.send_times.append(now)
        return True

    def hang_up(self, linger: float = 0.0) -> None:
        """Twilio's way: ``stop``, then a close frame; the server's reply ends the call.

        With ``linger`` (the soak) the caller is Twilio on a live call: after ``stop`` it goes on
        streaming 20 ms media and echoing marks until it reads the server's close frame, for at
        most ``linger`` seconds; then it sends its own close frame and closes (:meth:`give_up`).
        A server that stops reading its caller but keeps the connection is caught this way.
        """
        if self.state != "open" or self.close_sent:
            self.streaming = False
            return
        stop = wire.TwilioFrames.stop(*self.sids, self.sent + 2)
        if linger > 0:
            self._write(stop)
            asyncio.get_running_loop().call_later(linger, self.give_up)
            return
        self.streaming = False
        self.close_sent = True
        self._write(stop + wire.client_frame(wire.close_payload(1000), wire.OP_CLOSE))

    def give_up(self) -> None:
        """No close frame from the server within the linger after ``stop``: close from here."""
        if self.state != "open" or self.closed_at is not None:
            return
        self.gen.stop_unanswered += 1
        self.streaming = False
        if not self.close_sent:
            self.close_sent = True
            self._write(wire.client_frame(wire.close_payload(1000), wire.OP_CLOSE))
        if self.transport is not None:
            self.transport.close()  # FIN: a server that no longer reads sits in CLOSE_WAIT

    def vanish(self) -> None:
        """Drop the TCP connection abruptly (RST, no close frame): a phone dying in a tunnel."""
        self.streaming = False
        if self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
        self.abort()

    def abort(self) -> None:
        self.aborted = True
        if self.transport is not None:
            self.transport.abort()


class Generator:
    """The process's calls, ticker and counters."""

    def __init__(self, spec: dict[str, Any]) -> None:
        url = urlsplit(spec["url"])
        if url.hostname is None or not (
            url.hostname.startswith("127.") or url.hostname in ("localhost", "::1")
        ):
            raise SystemExit("loadgen: loopback URLs only")
        self.host = url.hostname
        self.port = url.port or 80
        self.path = url.path or "/"
        self.spec = spec
        self.resampled: str | None = spec.get("resampled")  # "echo" or "agent", see Call
        self.burst = int(spec.get("burst", 50))
        self.stamp_errors = 0  # agent bursts whose stamp failed its check
        now = time.monotonic()
        self.calls_wanted = int(spec.get("calls", 1))
        self.start_at = float(spec.get("start_at", now + 0.2))
        self.ramp = float(spec.get("ramp", 0.0))
        self.interval = float(spec.get("interval", wire.FRAME_SECONDS))
        self.stream_until = float(spec.get("stream_until", self.start_at + self.ramp + 5))
        self.grace = float(spec.get("grace", 1.0))
        self.after = spec.get("after", "stop")
        self.hold_until = float(spec.get("hold_until", self.stream_until + self.grace + 5))
        window = spec.get("window") or [self.start_at, self.stream_until]
        self.window = (int(window[0] * 1e6), int(window[1] * 1e6))
        self.deadline = float(spec.get("deadline", self.hold_until + 15))
        self.soak = spec.get("soak")
        # several processes share one load: interleave their calls over the ticks and stop times
        self.offset = int(spec.get("bucket_offset", 0))
        self.stride = int(spec.get("bucket_stride", 1))
        self.calls_total = int(spec.get("calls_total", self.calls_wanted * self.stride))
        self.stream_spread = float(spec.get("stream_spread", 0.0))
        self.rng = random.Random(spec.get("seed", 1))
        frames = int(spec.get("frames", 3000))
        self.frames = wire.TwilioFrames(frames)
        self.calls: list[Call] = []
        self.live = 0
        self.started = 0
        self.connect_errors = 0
        self.rejected: dict[str, int] = {}
        self.received: float = 0  # frames (resampled audio: fractions of frames)
        self.received_window: float = 0
        self.media_messages = 0
        self.sent_window = 0
        self.marks = 0
        self.clears = 0
        self.skipped = 0
        self.stop_unanswered = 0
        self.samples = array.array("I")
        self.lateness_max = 0.0
        self.ticks = 0
        self.kinds: dict[str, int] = {}
        self.done = asyncio.Event()
        # ticker: calls are spread over the ticks of one frame interval
        self.tick = max(0.002, self.interval / 20)
        self.slots = max(1, round(self.interval / self.tick))
        self.buckets: list[list[Call]] = [[] for _ in range(self.slots)]
        self.next_bucket = 0

    def in_window(self, now_us: int) -> bool:
        return self.window[0] <= now_us < self.window[1]

    # --- calls ------------------------------------------------------------------------------

    async def place(self, call: Call) -> None:
        self.calls.append(call)
        self.started += 1
        self.live += 1
        self.kinds[call.kind] = self.kinds.get(call.kind, 0) + 1
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: call, self.host, self.port)
        except OSError:
            self.connect_errors += 1
            call.state = "done"
            self.call_done(call)

    def call_open(self, call: Call) -> None:
        # connected + start, then media from the next tick of its bucket
        call._write(wire.TwilioFrames.opening(*call.sids))
        call.streaming = True
        self.buckets[self.global_index(call.index) % self.slots].append(call)

    def call_done(self, call: Call) -> None:
        self.live -= 1
        if self.live <= 0 and self.all_placed():
            self.done.set()

    def global_index(self, index: int) -> int:
        """The call's index among the calls of every generator process of this load."""
        return index * self.stride + self.offset

    def all_placed(self) -> bool:
        return self.started >= self.calls_wanted

    def on_tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        target = int((now - self.start_at) / self.tick)
        heads, count = self.frames.heads, self.frames.count
        # how late the oldest bucket still due is: a saturated generator shows here
        lateness = now - (self.start_at + self.next_bucket * self.tick)
        if lateness > self.lateness_max:
            self.lateness_max = lateness
        streaming = now < self.stream_until + self.stream_spread
        in_window = self.in_window(wire.now_us())
        while self.next_bucket <= target:
            bucket = self.buckets[self.next_bucket % self.slots]
            self.next_bucket += 1
            if not streaming:
                continue
            if any(not c.streaming for c in bucket):
                bucket[:] = [c for c in bucket if c.streaming]
            for call in bucket:
                if call.stop_at <= now:
                    call.streaming = False
                elif call.send_media(heads, count) and in_window:
                    self.sent_window += 1
        self.ticks += 1
        if streaming:
            loop.call_at(self.start_at + (target + 1) * self.tick, self.on_tick)

    # --- the run ----------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, self.start_at - loop.time()))
        loop.call_soon(self.on_tick)
        if self.soak:
            await Soak(self, self.soak).run()
        else:
            await self._run_fixed()

    async def _run_fixed(self) -> None:
        loop = asyncio.get_running_loop()
        n = self.calls_wanted
        tasks = []
        for i in range(n):
            at = self.start_at + (self.ramp * i / n if n > 1 else 0.0)
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.place(Call(self, i))))
        await asyncio.gather(*tasks)
        # stop streaming at stream_until (the ticker does), wait for the last echoes
        stopped = self.stream_until + self.stream_spread
        await asyncio.sleep(max(0.0, stopped + self.grace - loop.time()))
        if self.after == "stop":
            for call in self.calls:
                call.hang_up()
            end = min(self.deadline, loop.time() + 5.0)
        elif self.after == "vanish":
            for call in self.calls:
                call.vanish()
            end = loop.time() + 0.5
        else:  # hold: silent, TCP open, keep reading until the server closes or hold_until
            end = self.hold_until
        try:
            await asyncio.wait_for(self.done.wait(), timeout=max(0.0, end - loop.time()))
        except TimeoutError:
            pass
        for call in self.calls:
            if call.state != "done":
                call.abort()
        await asyncio.sleep(0.05)

    def result(self) -> dict[str, Any]:
        t = os.times()
        opened = [c for c in self.calls if c.connected_at is not None]
        closed_by_server = [c for c in opened if c.close_code is not None]
        codes: dict[str, int] = {}
        for c in closed_by_server:
            codes[str(c.close_code)] = codes.get(str(c.close_code), 0) + 1
        return {
            "calls": len(self.calls),
            "opened": len(opened),
            "rejected": self.rejected,
            "connect_errors": self.connect_errors,
            "sent": sum(c.sent for c in self.calls),
            "sent_window": self.sent_window,
            "received": self.received,
            "received_window": self.received_window,
            "media_messages": self.media_messages,
            "latency_samples": len(self.samples),
            "stamp_errors": self.stamp_errors,
            "marks": self.marks,
            "clears": self.clears,
            "skipped": self.skipped,
            "stop_unanswered": self.stop_unanswered,
            "lateness_max_ms": round(self.lateness_max * 1000, 3),
            "ticks": self.ticks,
            "close_codes": codes,
            "kinds": self.kinds,
            "still_open": sum(1 for c in opened if c.closed_at is None),
            # caller's view of each call, for the stall scenario: last frame sent, closed
            "last_sent_us": [c.last_sent for c in opened],
            "closed_us": [c.closed_at for c in opened],
            "ports": [c.port for c in opened],
            "cpu_user": t.user,
            "cpu_system": t.system,
        }


class Soak:
    """Calls started at ``rate`` per second, each with its own length and fate.

    Spec: ``calls``, ``rate``, ``seconds`` ([min, max] of a call's audio), ``mix`` (fractions of
    ``stall`` -- go silent, keep TCP open and reading -- and ``vanish`` -- RST; the rest hang up
    normally), ``stall_wait`` (how long a stalled caller waits for the server before giving up)
    or ``zombie_until`` (a ``CLOCK_MONOTONIC`` time until which stalled callers stay), ``linger``
    (seconds a caller that hung up keeps streaming while it waits for the server's close frame,
    as Twilio does; 0: ``stop`` and a close frame at once).
    """

    def __init__(self, gen: Generator, spec: dict[str, Any]) -> None:
        self.gen = gen
        self.calls = int(spec.get("calls", 100))
        self.rate = float(spec.get("rate", 10.0))
        self.seconds = spec.get("seconds", [0.5, 1.5])
        self.mix = spec.get("mix", {"stall": 0.1, "vanish": 0.1})
        self.stall_wait = float(spec.get("stall_wait", 10.0))
        self.zombie_until = spec.get("zombie_until")
        self.linger = float(spec.get("linger", 0.0))
        gen.calls_wanted = self.calls

    def kind(self) -> str:
        r = self.gen.rng.random()
        if r < self.mix.get("stall", 0.0):
            return "stall"
        if r < self.mix.get("stall", 0.0) + self.mix.get("vanish", 0.0):
            return "vanish"
        return "normal"

    async def run(self) -> None:
        gen = self.gen
        loop = asyncio.get_running_loop()
        tasks = set()
        for i in range(self.calls):
            at = gen.start_at + i / self.rate
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if loop.time() > gen.deadline:
                break
            call = Call(gen, i, self.kind())
            length = gen.rng.uniform(*self.seconds)
            task = asyncio.create_task(gen.place(call))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if call.kind == "normal":
                loop.call_later(length, call.hang_up, self.linger)
                loop.call_later(length + self.linger + 5.0, call.abort)  # a server never answering
            elif call.kind == "vanish":
                loop.call_later(length, call.vanish)
            else:
                loop.call_later(length, self._stall, call)
                if self.zombie_until is not None:  # silent callers stay until the load ends
                    loop.call_at(max(float(self.zombie_until), at + length), call.abort)
                else:
                    loop.call_later(length + self.stall_wait, call.abort)
        gen.calls_wanted = gen.started
        if gen.live <= 0:
            gen.done.set()
        try:
            await asyncio.wait_for(gen.done.wait(), timeout=max(0.0, gen.deadline - loop.time()))
        except TimeoutError:
            pass
        for call in gen.calls:
            if call.state != "done":
                call.abort()
        await asyncio.sleep(0.05)

    @staticmethod
    def _stall(call: Call) -> None:
        call.streaming = False


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one generator with ``spec`` in this process; return its result."""
    gen = Generator(spec)

    async def main() -> None:
        try:
            await asyncio.wait_for(gen.run(), timeout=max(1.0, gen.deadline - time.monotonic()))
        except TimeoutError:
            for call in gen.calls:
                call.abort()

    asyncio.run(main())
    result = gen.result()
    path = spec.get("samples_path")
    if path:
        with open(path, "wb") as f:
            gen.samples.tofile(f)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.loadgen",
        description="Simulated Twilio callers for the benchmarks (one process; the harness runs "
        "several). Prints one JSON line with what it saw.",
    )
    parser.add_argument("--spec-file", help="JSON spec written by the harness")
    parser.add_argument("--url", help="media URL, e.g. ws://127.0.0.1:8080/twilio/media")
    parser.add_argument("--calls", type=int, default=10, help="concurrent calls (default 10)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of audio per call")
    parser.add_argument("--ramp", type=float, default=1.0, help="seconds to connect all calls")
    args = parser.parse_args(argv)
    if args.spec_file:
        with open(args.spec_file) as f:
            spec = json.load(f)
    elif args.url:
        start = time.monotonic() + 0.2
        spec = {
            "url": args.url,
            "calls": args.calls,
            "start_at": start,
            "ramp": args.ramp,
            "stream_until": start + args.ramp + args.seconds,
            "window": [start + args.ramp, start + args.ramp + args.seconds],
        }
    else:
        parser.error("give --spec-file or --url")
    result = run(spec)
    if not args.spec_file:
        for key in ("last_sent_us", "closed_us", "ports"):
            result.pop(key)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
