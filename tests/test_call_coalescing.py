"""Agent audio coalescing is deterministic: the same provider bytes give the same carrier frames,
whatever the libraries' scheduling (``voxbridge.session.call._coalesce``; issue 15, item 2).

A provider sends bursts, in memory on the autojump clock. Each burst leaves the fake
(:class:`~voxbridge.testing.FakeOpenAIRealtime`) in one write, as a realtime service's burst
does when it is ahead of real time (a :class:`Corked` stream holds the fake's writes for 10 ms and
lets them go at once). The frames the bridge sends the carrier are compared exactly, under:

* the provider socket's reader: voxbridge's (``FastWebSocketConnection``: a whole socket read
  handed over in one scheduler pass) or trio-websocket's own (one message per pass), switched
  with ``voxbridge.upstream.connection.WEBSOCKET_CONNECTION``;
* the carrier's send: yielding 0 times (hypercorn's send fast path: a free lock and a write the
  kernel takes at once), twice (hypercorn's own: the send lock and ``send_all``), once or five
  times (any other carrier).

Before the coalescing was made deterministic, trio-websocket's own reader gave a different
merge on nearly every run (trio runs ready tasks in a random order), and voxbridge's reader with
a send that never yields split the 15 KB burst at its socket reads, differently from run to run.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
import trio
import trio.testing
from test_call_deadlines import remembered
from trio_websocket import WebSocketConnection

import voxbridge.upstream.connection as upstream_connection
from voxbridge.carriers.twilio_wire import encode_start, encode_stop
from voxbridge.errors import Disconnect, Reason
from voxbridge.providers.endpoint import ProviderEndpoint
from voxbridge.session import call as call_module
from voxbridge.session import run_call
from voxbridge.session.call import BURST_SETTLE, MAX_MEDIA_BYTES
from voxbridge.settings import Settings
from voxbridge.testing.fake_openai import FakeOpenAIRealtime
from voxbridge.upstream.fastpaths import FastWebSocketConnection

STREAM_SID = "MZ" + "0" * 32
CALL_SID = "CA" + "1" * 32
ACCOUNT_SID = "AC" + "2" * 32
ENDPOINT = ProviderEndpoint("fake", "ws://fake/v1/realtime")
CHUNK = 160  # 20 ms of mu-law per provider delta: MAX_MEDIA_BYTES holds five
HOLD = 0.01  # how long the Corked stream holds a burst's writes (seconds)


class Corked(trio.abc.Stream):
    """The fake's end of the provider stream: while ``corked``, writes are held, and
    :meth:`uncork` writes them in one ``send_all`` (the bridge then reads them in as few socket
    reads as its buffer allows: 4 KiB each)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.corked = False
        self.held = bytearray()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not self.corked:
            await self.inner.send_all(data)
            return
        self.held += data
        await trio.lowlevel.checkpoint()

    async def uncork(self) -> None:
        self.corked = False
        held, self.held = bytes(self.held), bytearray()
        await self.inner.send_all(held)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


class ScriptedCarrier:
    """The bridge's carrier socket, in memory: frames to read come from :attr:`frames`; every
    frame the bridge sends is recorded with its virtual time, and each send yields ``yields``
    times (the scheduling of the carrier library under test)."""

    def __init__(self, yields: int) -> None:
        self.yields = yields
        self.frames, self._frames = trio.open_memory_channel[str](16)
        self.sent: list[tuple[float, dict[str, Any]]] = []

    async def receive(self) -> str | bytes:
        try:
            return await self._frames.receive()
        except trio.EndOfChannel:
            raise Disconnect(Reason.CALLER_CLOSED, "the script ended") from None

    async def send(self, frame: str | bytes) -> None:
        self.sent.append((trio.current_time(), orjson.loads(frame)))
        for _ in range(self.yields):
            await trio.lowlevel.checkpoint()

    async def close(self, code: int, reason: str) -> None:
        self.frames.close()


def delta(item: str, response: str, n: int) -> dict[str, Any]:
    """A 20 ms audio delta whose every byte is ``n`` (so a merge reads back as its chunks)."""
    return {
        "type": "response.output_audio.delta",
        "response_id": response,
        "item_id": item,
        "output_index": 0,
        "content_index": 0,
        "delta": base64.b64encode(bytes([n]) * CHUNK).decode("ascii"),
    }


def chunks(item: str, response: str, first: int, count: int) -> list[dict[str, Any]]:
    return [delta(item, response, n) for n in range(first, first + count)]


SPEECH_STARTED = {"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": "u1"}

#: (seconds after the session opened, the events sent in one write)
BURSTS: list[tuple[float, list[dict[str, Any]]]] = [
    # 8 chunks in one socket read: 100 ms, then the 60 ms left
    (1.0, chunks("item_a", "resp_a", 1, 8)),
    # 40 chunks, about 15 KB: four socket reads; merged across them, 100 ms a message
    (1.5, chunks("item_x", "resp_x", 20, 40)),
    # two items of one response: the second item ends the first's merge
    (2.0, chunks("item_b", "resp_b", 100, 3) + chunks("item_c", "resp_b", 103, 3)),
    # a barge-in inside a burst: the audio before it goes out, the clear follows it at once, and
    # the same item's audio after it is late (dropped), never merged into the message before
    (
        2.5,
        [*chunks("item_d", "resp_d", 120, 3), SPEECH_STARTED, *chunks("item_d", "resp_d", 123, 2)],
    ),
    # a chunk alone (a provider speaking in real time): it goes at once, no waiting for more
    (3.0, chunks("item_e", "resp_e", 130, 1)),
]

#: What the carrier receives: (the burst's arrival, HOLD after it was sent; how many times
#: BURST_SETTLE after it the frame goes out with voxbridge's reader and a send that never yields;
#: the frame: media as the chunk numbers it merged, a mark after each, the clear).
EXPECTED: list[tuple[float, int, str, tuple[int, ...]]] = [
    (1.0, 0, "media", (1, 2, 3, 4, 5)),
    (1.0, 0, "mark", ()),
    (1.0, 1, "media", (6, 7, 8)),  # the rest of the read, after waiting for more in vain
    (1.0, 1, "mark", ()),
    # the first socket read holds eleven chunks: two full messages at once; the eleventh waits
    # BURST_SETTLE, in which the reader hands over the three other reads (a send that yields
    # gives it the time, and nothing waits)
    *[
        (
            1.5,
            0 if k < 2 else 1,
            kind,
            tuple(range(20 + 5 * k, 25 + 5 * k)) if kind == "media" else (),
        )
        for k in range(8)
        for kind in ("media", "mark")
    ],
    (2.0, 0, "media", (100, 101, 102)),
    (2.0, 0, "mark", ()),
    (2.0, 1, "media", (103, 104, 105)),
    (2.0, 1, "mark", ()),
    (2.5, 0, "media", (120, 121, 122)),
    (2.5, 0, "mark", ()),
    (2.5, 0, "clear", ()),
    (3.0, 0, "media", (130,)),
    (3.0, 0, "mark", ()),
]


def frames_of(carrier: ScriptedCarrier, t0: float) -> list[tuple[float, str, tuple[int, ...]]]:
    out: list[tuple[float, str, tuple[int, ...]]] = []
    for at, frame in carrier.sent:
        kind = frame["event"]
        numbers: tuple[int, ...] = ()
        if kind == "media":
            audio = base64.b64decode(frame["media"]["payload"])
            assert len(audio) % CHUNK == 0 and len(audio) <= MAX_MEDIA_BYTES
            numbers = tuple(audio[::CHUNK])
        out.append((round(at - t0 - HOLD, 6), kind, numbers))
    return out


async def bridge_bursts(yields: int) -> list[tuple[float, str, tuple[int, ...]]]:
    """One call through the bursts above; the carrier frames relative to the session's open."""
    fake = FakeOpenAIRealtime(events_at=[(at, event) for at, burst in BURSTS for event in burst])
    carrier = ScriptedCarrier(yields)
    corks: list[Corked] = []
    async with trio.open_nursery() as nursery:

        async def connect(host: str, port: int) -> trio.abc.Stream:
            client, server = trio.testing.memory_stream_pair()
            corks.append(Corked(server))
            nursery.start_soon(fake.handle_stream, corks[-1])
            return client

        async def caller() -> None:
            await carrier.frames.send(
                encode_start(STREAM_SID, CALL_SID, ACCOUNT_SID, sequence_number=1)
            )
            session = await fake.wait_for_session(1)
            for at, _ in BURSTS:
                await trio.sleep_until(session.opened_at + at - HOLD / 2)
                corks[0].corked = True
                await trio.sleep_until(session.opened_at + at + HOLD)
                await corks[0].uncork()
            await trio.sleep_until(session.opened_at + 4)
            await carrier.frames.send(encode_stop(STREAM_SID, CALL_SID, ACCOUNT_SID, 2))

        nursery.start_soon(caller)
        settings = Settings(idle_timeout=100, marks="exact")
        disconnect = await run_call(carrier, ENDPOINT, settings=settings, connect_stream=connect)
    assert disconnect.reason is Reason.CALLER_STOP, disconnect
    assert len(corks) == 1  # one session: nothing was resumed
    return frames_of(carrier, fake.sessions[0].opened_at)


@pytest.fixture(params=["voxbridge-reader", "trio-websocket-reader"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The provider socket's reader for the connections the test opens."""
    fast = request.param == "voxbridge-reader"
    connection = FastWebSocketConnection if fast else WebSocketConnection
    monkeypatch.setattr(upstream_connection, "WEBSOCKET_CONNECTION", connection)
    return str(request.param)


@pytest.mark.parametrize("yields", [0, 1, 2, 5], ids=lambda n: f"send-yields-{n}")
async def test_a_burst_gives_the_same_carrier_frames_whatever_the_scheduling(
    autojump_clock: trio.testing.MockClock, reader: str, yields: int
) -> None:
    # three calls each: trio runs the ready tasks of a pass in a random order, so a merge that
    # depended on scheduling would show as a difference between runs, or from EXPECTED
    for _ in range(3):
        frames = await bridge_bursts(yields)
        assert [(kind, numbers) for _, kind, numbers in frames] == [
            (kind, numbers) for _, _, kind, numbers in EXPECTED
        ]
        times = [at for at, _, _ in frames]
        if reader == "voxbridge-reader" and yields == 0:  # production: hypercorn's fast path
            assert times == [
                pytest.approx(arrival + settles * BURST_SETTLE, abs=1e-9)
                for arrival, settles, _, _ in EXPECTED
            ]
        # When they go out may move by the BURST_SETTLE waits a merge needed (none when a send
        # yielded to the reader); what goes out does not. trio-websocket's reader hands over one
        # message per pass, so a message under the bound, the first of a burst too, waits.
        waits = 1 if reader == "voxbridge-reader" else 2
        for at, (arrival, _, _, _) in zip(times, EXPECTED, strict=True):
            assert arrival - 1e-9 <= at <= arrival + waits * BURST_SETTLE + 1e-9


async def test_a_settle_runs_under_the_sends_own_deadline(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sender waits for the provider under the deadline its last send left (restartable); a
    # settle cannot be started over (it holds chunks already taken), so it arms the send's own
    # deadline first: never less than send_timeout ahead while it waits. With trio-websocket's
    # own reader a message settles right after that wait (the kept deadline, from a send 0.5 s
    # earlier, would have 4.55 s left).
    monkeypatch.setattr(upstream_connection, "WEBSOCKET_CONNECTION", WebSocketConnection)
    made = remembered(monkeypatch, "Watchdog")
    settle = call_module._Merge.settle
    left: list[float] = []

    async def settling(self: call_module._Merge, *args: Any) -> tuple[bytes, Any]:
        left.append(made[-1].deadline - trio.current_time())
        return await settle(self, *args)

    monkeypatch.setattr(call_module._Merge, "settle", settling)
    await bridge_bursts(0)
    assert len(left) >= 3 and min(left) >= Settings().send_timeout
