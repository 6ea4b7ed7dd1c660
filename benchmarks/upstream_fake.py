"""A lean OpenAI-Realtime and Gemini Live upstream for load: asyncio, no WebSocket library.

It speaks as much of the protocol as a bridge needs -- ``session.created`` on connect,
``session.updated`` for ``session.update``, audio out as ``response.output_audio.delta`` -- and is
cheap enough per message that it is never the bottleneck next to the servers it feeds. Modes:

* ``echo``: every ``input_audio_buffer.append`` comes straight back as one delta with the same
  base64 audio (which carries the caller's send time, so the caller measures the round trip);
* ``agent``: like a realtime agent, it answers in bursts faster than real time: after every
  ``--burst`` appends it sends that many fresh 20 ms deltas back to back, stamped when sent;
* ``silent``: listens only (stall and memory scenarios).

A connection whose upgrade request names Gemini's ``...BidiGenerateContent`` resource speaks Gemini
Live instead (the relay's ``voxbridge-gemini`` peer): ``setup`` is answered with
``setupComplete``; caller audio comes as ``realtimeInput.audio`` (PCM16LE 16 kHz) and agent audio
goes as ``serverContent.modelTurn`` ``inlineData`` (``audio/pcm;rate=24000``). ``echo`` resamples
each chunk to 24 kHz (soxr, streaming, one resampler per connection, as
:mod:`voxbridge.testing.fake_gemini` does) and sends it straight back; ``agent`` answers every
``--burst`` frames' worth of audio with that many 20 ms chunks back to back, the first carrying
its send time as :func:`benchmarks.wire.pcm_stamp`, then ``turnComplete`` with ``usageMetadata``
and a ``sessionResumptionUpdate``, as Gemini ends a turn. Counts are in 20 ms frames of audio
(fractions where a resampled chunk is not a whole frame).

Per connection it records when it opened, when the bridge's close frame came and when the TCP
connection was gone, plus the send time of the last caller frame it got (decoded from the audio),
so the stall scenario measures teardown on this side of the bridge and counts orphaned sockets.

Fault knobs for the soak (``--drop`` / ``--stall`` fractions, seeded): a dropped connection is
aborted 0.3-1.5 s after it opened; a stalled one (from 0.3-1.5 s on) answers nothing -- no
audio, no pong, no close -- while still draining its socket, so the fake sees when the bridge
gives up.

Control: one command per line on stdin -- ``stats`` (prints one JSON line; ``stats delays``
adds per-connection teardown figures), ``reset`` (forget every connection so far, zero the
counters), ``mode echo|agent|silent``, ``quit``. The first line on stdout is
``upstream listening on ws://127.0.0.1:PORT/v1/realtime``.

With ``--certfile PEM`` (key and certificate chain) it serves ``wss://`` instead: asyncio's TLS
transport under the same protocol, as a production provider serves TLS (the harness makes the
certificate with ``trustme``: :meth:`benchmarks.harness.Bench.certificates`).
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import functools
import json
import os
import random
import ssl
import stat
import sys
import threading
from typing import Any

from . import wire

__all__ = ["FakeUpstream", "main"]

GEMINI_IN_FRAME = 640  # bytes of 20 ms PCM16LE at 16 kHz
GEMINI_OUT_FRAME = 960  # bytes of 20 ms PCM16LE at 24 kHz


@functools.cache
def gemini_kit() -> tuple[Any, Any, bytes]:
    """numpy, soxr, and 20 ms of a 440 Hz tone at 24 kHz as a modelTurn frame (every chunk of a
    burst but the first): loaded in the background from the start with ``--gemini``, else with the
    first Gemini connection, so the fake starts in a tenth of the time."""
    import numpy
    import soxr  # type: ignore[import-untyped]  # no stubs, no py.typed

    from voxbridge.testing.fake_gemini import pcm24

    return numpy, soxr, wire.gemini_audio_frame(pcm24(20))


class Conn(asyncio.Protocol):
    """One bridge-to-provider WebSocket, server side."""

    __slots__ = (
        "appends",
        "bursts",
        "close_frame_at",
        "closed_at",
        "deltas",
        "fake",
        "fault",
        "gemini",
        "handshake",
        "last_stamp",
        "opened_at",
        "reader",
        "stalled",
        "transport",
        "up",
    )

    def __init__(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self.transport: asyncio.Transport | None = None
        self.handshake = b""
        self.reader: wire.FrameReader | None = None
        self.opened_at = wire.now_us()
        self.closed_at: int | None = None
        self.close_frame_at: int | None = None
        self.last_stamp: bytes | None = None
        self.appends: float = 0  # caller frames (20 ms each) received
        self.bursts = 0
        self.deltas: float = 0  # agent frames (20 ms each) sent
        self.fault = ""
        self.stalled = False
        self.gemini = False  # speaks Gemini Live (by the resource in the upgrade request)
        self.up: Any = None  # Gemini echo: the 16 -> 24 kHz resampler

    # --- asyncio protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.fake.conns.append(self)
        self.fake.open += 1
        self.fake.pick_fault(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed_at = wire.now_us()
        self.fake.open -= 1

    def data_received(self, data: bytes) -> None:
        if self.reader is None:
            self.handshake += data
            end = self.handshake.find(b"\r\n\r\n")
            if end < 0:
                if len(self.handshake) > 16384:
                    self._abort()
                return
            request = self.handshake[:end]
            response = wire.handshake_response(request)
            rest = self.handshake[end + 4 :]
            self.handshake = b""
            if response is None:
                self._abort()
                return
            self.reader = wire.FrameReader()
            self.gemini = b"BidiGenerateContent" in request[: request.find(b"\r\n")]
            if self.gemini:
                gemini_kit()  # loaded now, at connect, rather than with the first audio
            self._write(response if self.gemini else response + wire.SESSION_CREATED)
            if not rest:
                return
            data = rest
        if self.stalled:
            return
        try:
            messages = self.reader.feed(data)
        except ValueError:
            self._abort()
            return
        fake = self.fake
        for opcode, payload in messages:
            if opcode == wire.OP_TEXT and self.gemini:
                self._gemini(payload)
            elif opcode == wire.OP_TEXT:
                if b"input_audio_buffer.append" in payload[:48]:
                    at = payload.find(b'"audio"')
                    first = payload.find(b'"', at + 7) + 1
                    audio = payload[first : payload.find(b'"', first)]
                    frames = 1 if len(audio) <= wire.FRAME_B64 else wire.frame_count(audio)
                    self.appends += frames
                    fake.appends += frames
                    self.last_stamp = audio[:8] if frames == 1 else wire.last_stamp(audio)
                    if fake.mode == "echo":
                        self._write(wire.delta_frame(audio))
                        self.deltas += frames
                        fake.deltas += frames
                    elif fake.mode == "agent" and self.appends // fake.burst > self.bursts:
                        self.bursts += 1
                        stamp8 = wire.stamp()
                        frame = wire.fresh_delta_frame(stamp8)
                        self._write(frame * fake.burst)
                        self.deltas += fake.burst
                        fake.deltas += fake.burst
                elif b"session.update" in payload[:40]:
                    self._write(wire.SESSION_UPDATED)
            elif opcode == wire.OP_PING:
                self._write(wire.server_frame(payload, wire.OP_PONG))
            elif opcode == wire.OP_CLOSE:
                self.close_frame_at = wire.now_us()
                self._write(wire.server_frame(payload[:2], wire.OP_CLOSE))
                if self.transport is not None:
                    self.transport.close()
                return

    def _gemini(self, payload: bytes) -> None:
        """One Gemini Live client message (see the module docstring)."""
        fake = self.fake
        if payload.startswith(b'{"realtimeInput":{"audio"'):
            at = payload.find(b'"data":"') + 8
            audio = payload[at : payload.find(b'"', at)]
            size = len(audio) * 3 // 4 - audio[-2:].count(b"=")  # PCM bytes
            frames = size / GEMINI_IN_FRAME
            self.appends += frames
            fake.appends += frames
            if fake.mode == "echo":
                np, soxr, _ = gemini_kit()
                if self.up is None:
                    self.up = soxr.ResampleStream(16000, 24000, 1, dtype="int16", vr=True)
                pcm = np.frombuffer(binascii.a2b_base64(audio), dtype="<i2")
                out = self.up.resample_chunk(pcm).astype("<i2", copy=False).tobytes()
                if out:
                    self._write(wire.gemini_audio_frame(out))
                    frames = len(out) / GEMINI_OUT_FRAME
                    self.deltas += frames
                    fake.deltas += frames
            elif fake.mode == "agent" and self.appends // fake.burst > self.bursts:
                self.bursts += 1
                first = wire.gemini_audio_frame(wire.pcm_stamp())
                self._write(
                    first
                    + gemini_kit()[2] * (fake.burst - 1)
                    + wire.GEMINI_TURN_COMPLETE
                    + wire.GEMINI_RESUMPTION_UPDATE
                )
                self.deltas += fake.burst
                fake.deltas += fake.burst
        elif payload.startswith(b'{"setup"'):
            self._write(wire.GEMINI_SETUP_COMPLETE)

    # --- helpers ----------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.stalled and not self.transport.is_closing():
            self.transport.write(data)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def drop(self) -> None:
        """Fault: the provider vanishes (connection aborted, no close frame)."""
        if self.closed_at is None:
            self._abort()

    def stall(self) -> None:
        """Fault: a frozen provider -- nothing is answered (not even pings), nothing is sent.

        Bytes are still read and dropped, so the fake sees when the bridge gives up and closes;
        at 20 ms frames a bridge's send buffer would take minutes to fill anyway.
        """
        if self.closed_at is None:
            self.stalled = True


class FakeUpstream:
    """The fake's state: settings, connections since the last reset, counters."""

    def __init__(
        self,
        mode: str = "echo",
        burst: int = 50,
        drop: float = 0.0,
        stall: float = 0.0,
        seed: int = 1,
    ) -> None:
        self.mode = mode
        self.burst = max(1, burst)
        self.drop = drop
        self.stall = stall
        self.rng = random.Random(seed)
        self.conns: list[Conn] = []
        self.open = 0
        self.appends: float = 0  # 20 ms caller frames received (Gemini: fractions of frames)
        self.deltas: float = 0  # 20 ms agent frames sent
        self.faults = {"drop": 0, "stall": 0}

    def pick_fault(self, conn: Conn) -> None:
        if not (self.drop or self.stall):
            return
        loop = asyncio.get_running_loop()
        r = self.rng.random()
        after = self.rng.uniform(0.3, 1.5)
        if r < self.drop:
            conn.fault = "drop"
            self.faults["drop"] += 1
            loop.call_later(after, conn.drop)
        elif r < self.drop + self.stall:
            conn.fault = "stall"
            self.faults["stall"] += 1
            loop.call_later(after, conn.stall)

    def stats(self, *, delays: bool = False) -> dict[str, Any]:
        """Counters since the last reset; ``delays`` adds per-connection teardown figures."""
        closed = [c for c in self.conns if c.closed_at is not None]
        out: dict[str, Any] = {
            "open_now": self.open,
            "opened": len(self.conns),
            "closed": len(closed),
            "open_since_reset": len(self.conns) - len(closed),
            "appends": round(self.appends, 2),
            "deltas": round(self.deltas, 2),
            "faults": dict(self.faults),
            "now_us": wire.now_us(),
        }
        if delays:
            # time from the send of the last caller frame to the socket being gone (and to the
            # close frame), in microseconds; connections that never carried audio are skipped.
            out["teardown_us"] = [
                wire.elapsed_us(wire.decode_stamp(c.last_stamp), c.closed_at)
                for c in closed
                if c.last_stamp and c.closed_at is not None
            ]
            out["close_frame_us"] = [
                wire.elapsed_us(wire.decode_stamp(c.last_stamp), c.close_frame_at)
                for c in closed
                if c.last_stamp and c.close_frame_at is not None
            ]
            out["last_audio_open_us"] = [
                wire.decode_stamp(c.last_stamp)
                for c in self.conns
                if c.closed_at is None and c.last_stamp
            ]
        return out

    def reset(self) -> None:
        """Forget every connection so far (the next figures are about new ones only)."""
        self.conns = []
        self.appends = self.deltas = 0
        self.faults = {"drop": 0, "stall": 0}


async def _control(fake: FakeUpstream, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if not line or line == "quit":
            break
        command, _, arg = line.partition(" ")
        if command == "stats":
            reply = fake.stats(delays=arg == "delays")
        elif command == "reset":
            fake.reset()
            reply = {"ok": True}
        elif command == "mode":
            fake.mode = arg
            reply = {"ok": True}
        else:
            reply = {"error": f"unknown command {command!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    stop.set()


async def serve(args: argparse.Namespace) -> None:
    fake = FakeUpstream(args.mode, args.burst, args.drop, args.stall, args.seed)
    loop = asyncio.get_running_loop()
    tls = None
    if args.certfile:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.certfile)
    server = await loop.create_server(
        lambda: Conn(fake), args.host, args.port, backlog=4096, reuse_address=True, ssl=tls
    )
    port = server.sockets[0].getsockname()[1]
    scheme = "wss" if tls else "ws"
    sys.stdout.write(f"upstream listening on {scheme}://{args.host}:{port}/v1/realtime\n")
    sys.stdout.flush()
    if args.gemini:  # loaded while the peers start, before the first Gemini connection
        threading.Thread(target=gemini_kit, name="gemini-kit", daemon=True).start()
    stop = asyncio.Event()
    # commands come on stdin when it is a pipe (the harness); otherwise run until --max-seconds
    piped = stat.S_ISFIFO(os.fstat(sys.stdin.fileno()).st_mode)
    control = asyncio.create_task(_control(fake, stop)) if piped else None
    try:
        await asyncio.wait_for(stop.wait(), timeout=args.max_seconds)
    except TimeoutError:
        pass
    if control is not None:
        control.cancel()
    server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.upstream_fake", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--port", type=int, default=0, help="port (0 = any free port)")
    parser.add_argument("--mode", choices=("echo", "agent", "silent"), default="echo")
    parser.add_argument("--burst", type=int, default=50, help="agent: deltas per burst")
    parser.add_argument("--drop", type=float, default=0.0, help="fraction of sessions dropped")
    parser.add_argument("--stall", type=float, default=0.0, help="fraction of sessions stalled")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--certfile", help="serve wss:// with this PEM key + certificate chain")
    parser.add_argument(
        "--gemini", action="store_true", help="load Gemini's kit now (a Gemini peer will come)"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=3600.0, help="exit after this long whatever happens"
    )
    args = parser.parse_args(argv)
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        parser.error("loopback addresses only")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
