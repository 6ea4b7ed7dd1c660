"""Every way a call can end, on the real server over loopback: nothing outlives the call.

The promise: whatever either peer does, no socket (carrier or provider) and no task outlives its
call by more than ``Settings.teardown_timeout``. For each ending reason this runs one call through
the real ``voxbridge.server.serve`` (hypercorn's trio worker, in this process) against a provider
fake, with a Twilio-like caller: it streams a 20 ms ``media`` frame 50 times a second and echoes
every ``mark`` until it reads our close frame (then it answers the close and, as RFC 6455 7.1.1
asks of a client, waits for the server to close TCP). The second variant is a caller that stops
reading once the call has started: it never reads our close frame and keeps streaming until a send
fails, so the server has to give its socket back without the caller's help.

The clock starts when the server *decides* the call's end (the call's ``disconnect`` is set: the
moment teardown begins), and by ``teardown_timeout`` + ``MARGIN`` after it:

* this process holds no socket that the call opened: every socket file descriptor is compared
  with those open before the call (``/proc/self/fd``), so the server's socket to the caller, its
  provider sockets, and a socket reset by its peer (which has no TCP table entry left, but still
  an fd) all count, while a TIME_WAIT left behind by a proper close does not. Left out: the
  caller's own socket and the provider fake's side of its sessions (a fake that stopped reading
  keeps its session until it is shut down, which says nothing about the server);
* the registry is empty;
* once the caller is finished, the trio task tree holds no task that was not there before the call
  (the fake's own tasks aside, for the same reason);
* ``/metrics`` says ``voxbridge_calls_active 0`` and counted the reason exactly once, and no other.

The provider-side endings (``upstream_*``, ``agent_hangup``) run on every registered provider: one
table, ``PROVIDER_FAKES``, says how each provider's fake produces each of them (its knobs are named
alike in every fake), or why its protocol cannot (the case is then skipped with that reason); the
caller-side cases run on OpenAI only, and the variant whose caller stops reading once per reason.

Every other registered carrier with a simulator wire (the registry decides, ``CARRIERS``: a new
carrier gets its rows without an edit here) runs every reason it can produce: the caller-side
cases (``caller_stop`` only for a carrier with a stop event), ``max_duration``,
``server_shutdown``, the ``upstream_*`` endings on one provider fake (OpenAI's), and
``agent_hangup`` through its own REST API's fake (``CARRIER_APIS``: the goodbye wait, then its
hang-up, which the fake must have received for the call).
``transferred`` has Twilio's REST API at ``FakeTwilio`` and a call it places (``PlacedCall``): the
model calls ``transfer_call``, the server redirects the call to ``<Dial>`` through that API.

The server runs in this process, so all of this is read directly; Linux only (``/proc``).
"""

from __future__ import annotations

import enum
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpx
import psutil
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from voxbridge.audio import FRAME_BYTES
from voxbridge.carriers.registry import CARRIERS as CARRIER_SPECS
from voxbridge.errors import Reason
from voxbridge.providers.registry import PROVIDERS
from voxbridge.server import RunningServer, serve
from voxbridge.session.call import Call
from voxbridge.settings import Settings
from voxbridge.testing import FakeCall, FakeOpenAIRealtime, FakeTwilio, FaultStream, fake_for
from voxbridge.testing.carrier import wire_for
from voxbridge.testing.carrier_wire import CallerWire, Marked, SimulatedCall
from voxbridge.testing.fake_openai import FakeToolCall, speech
from voxbridge.testing.fake_plivo import FakePlivo
from voxbridge.testing.fake_telnyx import FakeTelnyx
from voxbridge.testing.fake_vonage import FakeVonage
from voxbridge.testing.plivo_wire import PlivoWire

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/fd"), reason="reads this process's sockets from Linux /proc"
)

CASE_BUDGET = 15.0  # real seconds per case, whatever happens
MARGIN = 0.5  # seconds of scheduling slack on top of teardown_timeout
CALLER_GRACE = 0.25  # seconds a caller gets to notice, by itself, that the server let it go
TALK = 0.3  # seconds the caller streams before its script does its thing
BURST = 30  # media frames sent right after stop, without waiting
READ_LAG = 0.1  # seconds between our bytes arriving and the caller reading them: frames in flight
POLL = 0.01
#: When a fake provider closes its session (seconds after it opened): between two of the bridge's
#: keepalive pings (0.5 s apart). The fakes run on trio-websocket 0.12, whose reader crashes when a
#: ping arrives while it is closing (python-trio/trio-websocket#184): that would be the fake failing.
PROVIDER_ENDS_AT = 0.75

#: Short deadlines for every case (close_timeout 0.5 s: teardown_timeout = 2.5 s).
SHORT = {
    "idle_timeout": 1.0,
    "start_timeout": 1.0,
    "max_call_duration": 30.0,
    "keepalive_interval": 0.5,
    "pong_timeout": 0.5,
    "close_timeout": 0.5,
    "connect_timeout": 1.0,
    "reconnect_budget": 1.0,
    "drain_timeout": 0.5,
}

STREAM_SID = "MZ" + "e" * 32
CALL_SID = "CA" + "e" * 32
ACCOUNT_SID = "AC" + "e" * 32
SILENCE = b"\xff" * FRAME_BYTES
UV_KEY = "uv-endings-key"
API_KEY, API_SECRET = "SK" + "e" * 32, "endings-secret"  # voxbridge's Twilio REST credentials
TRANSFER_TARGET = "+15550104000"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# --- the caller -----------------------------------------------------------------------------------


class Script(enum.Enum):
    """What the caller does after ``connected``, ``start`` and ``TALK`` seconds of media."""

    STREAM = "streams until it reads our close"
    STOP = "sends stop, then 30 frames at once, then streams on"
    CLOSE = "closes its WebSocket (close handshake), no stop"
    FIN = "closes TCP (FIN, still reading), no close frame, no stop"
    RESET = "resets TCP (RST), no close frame, no stop"
    SILENT = "goes silent: no media, no mark echoes, still connected"
    GARBAGE = "sends a frame that is not JSON, then streams on"
    CONNECTED_ONLY = "sends connected and never start"


class CallerStream(FaultStream):
    """The caller's byte stream, with a network's latency where loopback has none.

    ``FaultStream``'s knobs; every read delayed by ``READ_LAG`` (so the caller goes on streaming
    for a while after our close frame went out, as Twilio does over a WAN); and a cork, so that
    several frames leave in one write (on loopback our close frame would otherwise come back
    between two frames of a burst).
    """

    def __init__(self, inner: trio.abc.Stream) -> None:
        super().__init__(inner)
        self._corked: list[bytes] | None = None
        # The uncorked burst is written by the talking task, outside trio-websocket's own send
        # lock, while the reading task may be echoing a mark: one lock for every write.
        self._writing = trio.Lock()

    def cork(self) -> None:
        self._corked = []

    async def uncork(self) -> None:
        data, self._corked = b"".join(self._corked or ()), None
        async with self._writing:
            await super().send_all(data)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await super().receive_some(max_bytes)
        await trio.sleep(READ_LAG)  # what we send reaches the caller a little late, as over a WAN
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._corked is None:
            async with self._writing:
                await super().send_all(data)
        else:
            self._corked.append(bytes(data))
            await trio.lowlevel.checkpoint()


@attrs.define(eq=False)
class Caller:
    """A caller on trio-websocket speaking ``carrier``'s wire (Twilio's by default);
    ``reads=False`` stops reading once the call started."""

    script: Script
    reads: bool = True
    carrier: str = "twilio"
    port: int = 0  # the caller's local (ephemeral) port
    inode: int = 0  # its socket's inode (its own socket is not the server's to close)
    close: tuple[int, str | None] | None = None  # the close frame it read from us
    frames_sent: int = 0
    marks_echoed: int = 0
    send_failed: bool = False  # a send failed: the server let go of the connection
    server_closed_tcp: bool = False  # after the close handshake, the server's FIN (or RST) came
    finished: trio.Event = attrs.Factory(trio.Event)
    _talking: bool = True
    _heard_close: trio.Event = attrs.Factory(trio.Event)
    wire: CallerWire = attrs.field(
        init=False, default=attrs.Factory(lambda self: wire_for(self.carrier), takes_self=True)
    )
    call: SimulatedCall = attrs.field(
        init=False, factory=lambda: SimulatedCall(CALL_SID, STREAM_SID, ACCOUNT_SID)
    )

    async def run(self, url: str) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        stream = await trio.open_tcp_stream(parts.hostname, parts.port)
        self.port = stream.socket.getsockname()[1]
        self.inode = os.fstat(stream.socket.fileno()).st_ino
        fault = CallerStream(stream)
        try:
            async with trio.open_nursery() as nursery:
                resource = f"{parts.path}?{parts.query}" if parts.query else parts.path
                headers = self.wire.upgrade_headers(self.call)  # e.g. a signature
                ws = await wrap_client_stream(
                    nursery,
                    fault,
                    parts.hostname,
                    resource,
                    extra_headers=[(k.encode(), v.encode()) for k, v in headers],
                )
                async with trio.open_nursery() as talking:
                    if self.reads:
                        talking.start_soon(self._read, ws)
                    try:
                        await self._play(ws, fault)
                    except ConnectionClosed:
                        self.send_failed = True
                    if not self.reads:
                        talking.cancel_scope.cancel()
                    # else the reader returns once it has read our close frame
                if not self.reads or self.script is Script.RESET:
                    nursery.cancel_scope.cancel()  # nobody is reading: nothing more to learn
                # else trio-websocket's reader ends when the server closes TCP: wait for that
            self.server_closed_tcp = self.reads and self._heard_close.is_set()
        finally:
            await trio.aclose_forcefully(fault)
            self.finished.set()

    async def _media(self, ws: WebSocketConnection) -> None:
        await ws.send_message(self.wire.audio(self.call, SILENCE))
        self.frames_sent += 1

    async def _stream(self, ws: WebSocketConnection, seconds: float = float("inf")) -> None:
        """50 frames a second for ``seconds``, or until our close frame has been read."""
        with trio.move_on_after(seconds):
            while not self._heard_close.is_set():
                await self._media(ws)
                await trio.sleep(0.02)

    async def _play(self, ws: WebSocketConnection, fault: CallerStream) -> None:
        *connected, start = self.wire.handshake(self.call)
        for frame in connected:  # Twilio's and Telnyx's connected; nothing for Plivo
            await ws.send_message(frame)
        if self.script is Script.CONNECTED_ONLY:
            if not self.reads:
                fault.stop_reading()
            await self._heard_close.wait()
            return
        await ws.send_message(start)
        await self._stream(ws, TALK)
        if not self.reads:
            fault.stop_reading()  # from here on nothing is read: not our close frame, no pings
        if self.script is Script.STOP:
            fault.cork()  # stop and the burst behind it leave in one write
            stop = self.wire.stop(self.call)
            assert stop is not None, f"{self.carrier} has no stop event"
            await ws.send_message(stop)
            for _ in range(BURST):
                await self._media(ws)
            await fault.uncork()
        elif self.script is Script.CLOSE:
            await ws.aclose(1000, "caller hangs up")
            return
        elif self.script is Script.FIN:
            await fault.send_eof()  # and then, reading on, wait for the server to close
            await self._heard_close.wait()
            return
        elif self.script is Script.RESET:
            sock = fault.inner.socket  # type: ignore[attr-defined]
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await fault.vanish()
            return
        elif self.script is Script.SILENT:
            self._talking = False
            await self._heard_close.wait()
            return
        elif self.script is Script.GARBAGE:
            await ws.send_message("not json")
        await self._stream(ws)

    async def _read(self, ws: WebSocketConnection) -> None:
        while True:
            try:
                message = await ws.get_message()
            except ConnectionClosed as exc:
                if exc.reason is not None:
                    self.close = (exc.reason.code, exc.reason.reason)
                self._heard_close.set()
                return
            try:
                event = self.wire.parse(message)
            except ValueError:
                continue  # not the caller's business here
            if isinstance(event, Marked) and self._talking:
                echo = self.wire.mark_echo(self.call, event.name)
                try:
                    await ws.send_message(echo)
                    self.marks_echoed += 1
                except ConnectionClosed:
                    pass  # our close is on its way: get_message says so, with the reason


@attrs.define(eq=False)
class PlacedCall:
    """The caller of a call FakeTwilio places: created over its REST API with TwiML
    ``<Connect><Stream>`` at the server, played by Twilio's own simulated caller (it reads
    everything, echoes marks, sends ``stop`` when Twilio's REST API is told to end or redirect
    the call). So the call has a CallSid Twilio knows, and the server can transfer it."""

    twilio: FakeTwilio | None = None  # the rig's
    script: Script = Script.STREAM
    reads: bool = True
    port: int = 0  # the caller's local (ephemeral) port
    inode: int = 0  # its socket's inode
    close: tuple[int, str | None] | None = None  # the close frame it read from us
    call: FakeCall | None = None
    finished: trio.Event = attrs.Factory(trio.Event)

    async def run(self, url: str) -> None:
        assert self.twilio is not None
        try:
            server_port = urlsplit(url).port
            twiml = f'<Response><Connect><Stream url="{url}"/></Connect></Response>'
            async with httpx.AsyncClient(auth=(API_KEY, API_SECRET), timeout=5) as client:
                created = await client.post(
                    f"{self.twilio.base_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json",
                    data={"To": "+15550101000", "From": "+15550102000", "Twiml": twiml},
                )
            assert created.status_code == 201, created.text
            call = self.call = await self.twilio.wait_for_call()
            await call.stream_started.wait()  # its TCP connection to the server is open
            [(self.port, fd)] = [
                (conn.laddr.port, conn.fd)
                for conn in psutil.Process().net_connections(kind="tcp")
                if conn.raddr
                and conn.raddr.port == server_port
                and conn.status == psutil.CONN_ESTABLISHED
            ]
            self.inode = os.fstat(fd).st_ino
            await call.wait_ended()
            if call.result is not None and call.result.close_code is not None:
                self.close = (call.result.close_code, call.result.close_reason)
        finally:
            self.finished.set()


# --- the cases ------------------------------------------------------------------------------------


@attrs.define(eq=False)
class Rig:
    """One server, its provider fake, and what a case may poke at."""

    server: RunningServer
    fake: Any
    stop: trio.Event  # the server's shutdown trigger
    fake_nursery: trio.Nursery
    twilio: FakeTwilio | None = None  # Twilio's REST API, for the cases that need it
    api: Any = None  # another carrier's REST API fake (CARRIER_APIS), for agent_hangup


Hook = Callable[[Rig], Awaitable[None]]


async def refuse_after_first_session(rig: Rig) -> None:
    """Let the first provider session open, then refuse every later one (no resume possible)."""
    await rig.fake.wait_for_session()
    rig.fake.refuse_status = 503


async def shut_down_soon(rig: Rig) -> None:
    await trio.sleep(TALK + 0.2)
    rig.stop.set()


def echo_fake(**knobs: Any) -> Callable[[], FakeOpenAIRealtime]:
    return lambda: FakeOpenAIRealtime(echo_delay=0.05, **knobs)


ECHO = echo_fake()  # a healthy provider: echoes the caller after 50 ms


@attrs.frozen
class Case:
    reason: Reason
    script: Script = Script.STREAM
    fake: Callable[[], Any] = ECHO
    provider: str = "openai"
    settings: dict[str, Any] = attrs.Factory(dict)
    during: Hook | None = None  # runs once the call is in the registry
    never_reads: bool = True  # whether the caller-that-stops-reading variant applies
    #: Twilio's REST API is FakeTwilio, and the caller is a call it places (``PlacedCall``)
    twilio: bool = False
    #: the carrier's REST API is its fake (``CARRIER_APIS``): the agent's hang-up must reach it
    carrier_api: bool = False


# --- the provider-side endings, for every provider ------------------------------------------------


@attrs.frozen
class Ending:
    """How a provider's fake ends a call for one reason: knobs (named alike in every fake), and a
    hook run once the call is up."""

    knobs: dict[str, Any]
    during: Hook | None = None
    settings: dict[str, Any] = attrs.Factory(dict)


#: A resume that cannot succeed need not be tried for long: two or three refused attempts.
SHORT_BUDGET = {"reconnect_budget": 0.5}


@attrs.frozen
class Cannot:
    """An ending the provider's protocol cannot produce, and why."""

    why: str


@attrs.frozen
class ProviderFake:
    """A provider's fake in the ending matrix: its knobs for a healthy session (an echo, its
    key), the settings the server needs for it, and how it produces each provider-side ending."""

    healthy: dict[str, Any]
    settings: dict[str, Any]
    endings: dict[Reason, Ending | Cannot]


#: Refused with 429 (retried, not final) until ``connect_timeout`` runs out.
CONNECT_FAILED = Ending({"refuse_status": 429})
#: Dropped with 1011 (resumable), every later session refused until ``reconnect_budget`` runs out.
DROPPED = Ending({"close_at": (PROVIDER_ENDS_AT, 1011)}, refuse_after_first_session, SHORT_BUDGET)
#: Closed with 1008, a refusal in every provider's close-code table: final.
REFUSED = Ending({"close_at": (PROVIDER_ENDS_AT, 1008)})
#: Stops reading (no pongs), every later session refused.
FROZEN = Ending({"stop_reading_at": 0.1}, refuse_after_first_session, SHORT_BUDGET)
HANGS_UP = Ending({"hangup_at": PROVIDER_ENDS_AT})


def endings(hangup: Ending | Cannot) -> dict[Reason, Ending | Cannot]:
    return {
        Reason.UPSTREAM_CONNECT_FAILED: CONNECT_FAILED,
        Reason.UPSTREAM_CLOSED: DROPPED,
        Reason.UPSTREAM_REJECTED: REFUSED,
        Reason.UPSTREAM_KEEPALIVE_TIMEOUT: FROZEN,
        Reason.AGENT_HANGUP: hangup,
    }


NO_HANGUP_OPENAI = Cannot("OpenAI Realtime has no hang-up: every close but 1008 is resumed")

#: provider -> how its fake produces each provider-side ending (every registered provider).
PROVIDER_FAKES: dict[str, ProviderFake] = {
    "echo": ProviderFake({"delay": 0.05}, {}, endings(NO_HANGUP_OPENAI)),
    "openai": ProviderFake({"echo_delay": 0.05}, {}, endings(NO_HANGUP_OPENAI)),
    "ultravox": ProviderFake(
        {"api_key": UV_KEY, "delay": 0.05},
        {"provider_settings": {"ultravox": {"api_key": UV_KEY}}},
        endings(HANGS_UP),  # close 1000; connect refusals are the REST API's
    ),
    "gpt-live": ProviderFake(
        {"echo_delay": 0.05},
        {"provider_settings": {"gpt-live": {"api_key": "sk-live"}}},
        endings(HANGS_UP),  # session.closed remote_hangup
    ),
    "deepgram": ProviderFake(
        {"api_key": "dg-key", "echo_delay": 0.05},
        {"provider_settings": {"deepgram": {"api_key": "dg-key"}}},
        endings(Cannot("Deepgram's agent API has no hang-up: a close 1000 is a drop, resumed")),
    ),
    "gemini": ProviderFake(
        {"api_key": "gm-key", "echo": True, "delay": 0.05},
        {"provider_settings": {"gemini": {"api_key": "gm-key"}}},
        endings(Cannot("Gemini Live has no hang-up: its time limit's close 1000 is resumed")),
    ),
}
#: The caller-that-stops-reading variant of a provider-side ending runs once: on this provider,
#: or on the first that can produce the ending.
VARIANTS_ON = "openai"


def provider_fake(provider: str, knobs: dict[str, Any]) -> Callable[[], Any]:
    return lambda: fake_for(provider)(**PROVIDER_FAKES[provider].healthy, **knobs)


def provider_cases() -> Iterator[tuple[str, Case | Cannot]]:
    """``<reason>-<provider>``: every provider-side ending, on every provider."""
    variants_done: set[Reason] = set()
    order = [VARIANTS_ON, *(name for name in PROVIDER_FAKES if name != VARIANTS_ON)]
    for provider in order:
        fake = PROVIDER_FAKES[provider]
        for reason, ending in fake.endings.items():
            name = f"{reason.value}-{provider}"
            if isinstance(ending, Cannot):
                yield name, ending
                continue
            yield (
                name,
                Case(
                    reason,
                    fake=provider_fake(provider, ending.knobs),
                    provider=provider,
                    settings={**fake.settings, **ending.settings},
                    during=ending.during,
                    never_reads=reason not in variants_done,
                ),
            )
            variants_done.add(reason)


#: Put through by the built-in transfer_call tool: the model calls it after the caller's first
#: turn; voxbridge redirects the call through Twilio's REST API (FakeTwilio) to ``<Dial>``.
TRANSFERRED = Case(
    Reason.TRANSFERRED,
    fake=echo_fake(
        caller_transcripts=[(0.2, "put me through to billing")],
        tool_calls=[FakeToolCall("transfer_call", {"reason": "billing"})],
    ),
    settings={"transfer_to": TRANSFER_TARGET},
    never_reads=False,  # the caller is Twilio's own simulator
    twilio=True,
)

CASES: dict[str, Case | Cannot] = {
    "caller_stop": Case(Reason.CALLER_STOP, Script.STOP),
    "caller_closed": Case(Reason.CALLER_CLOSED, Script.CLOSE, never_reads=False),
    "caller_closed_tcp_fin": Case(Reason.CALLER_CLOSED, Script.FIN, never_reads=False),
    "caller_closed_tcp_reset": Case(Reason.CALLER_CLOSED, Script.RESET, never_reads=False),
    "idle_timeout": Case(Reason.IDLE_TIMEOUT, Script.SILENT),
    "start_timeout": Case(Reason.START_TIMEOUT, Script.CONNECTED_ONLY),
    "protocol_error": Case(Reason.PROTOCOL_ERROR, Script.GARBAGE),
    "max_duration": Case(Reason.MAX_DURATION, settings={"max_call_duration": 2.0}),
    "server_shutdown": Case(Reason.SERVER_SHUTDOWN, during=shut_down_soon),
    "transferred": TRANSFERRED,
    **dict(provider_cases()),
}


#: A carrier without a stop event (``capabilities.sends_stop`` false) hangs up by closing its
#: WebSocket cleanly (a close frame): ``caller_stop``, as Twilio's stop; a TCP drop stays
#: ``caller_closed``.
HANGS_UP_BY_CLOSING = Case(Reason.CALLER_STOP, Script.CLOSE, never_reads=False)

#: Every registered carrier besides Twilio (the default above) with a simulator wire: the registry
#: decides, so a new carrier gets its rows without an edit here.
CARRIERS = tuple(
    name for name, spec in CARRIER_SPECS.items() if name != "twilio" and spec.simulator
)
#: The cases every carrier runs, with the variant whose caller stops reading for these.
CALLER_SIDE = (
    "caller_stop",
    "caller_closed",
    "caller_closed_tcp_fin",
    "caller_closed_tcp_reset",
    "idle_timeout",
    "start_timeout",
    "protocol_error",
)
#: ... and these once each (the reads-on variant): the server's deadlines and shutdown, and the
#: provider-side endings on one provider's fake (what the provider does does not depend on the
#: carrier; how the call ends towards the carrier does).
CARRIER_TOO = (
    "max_duration",
    "server_shutdown",
    "upstream_connect_failed-openai",
    "upstream_closed-openai",
    "upstream_rejected-openai",
    "upstream_keepalive_timeout-openai",
)


@attrs.frozen
class CarrierApi:
    """A carrier's REST API fake for ``agent_hangup``: how to make it (``make``), the carrier's
    settings that point voxbridge at it (``own``, given the fake; ``api_url`` is added), and
    whether the call needs the answer webhook first (the carrier's checks are on because its
    REST credential is also its signing secret: Plivo)."""

    make: Callable[[], Any]
    own: Callable[[Any], dict[str, Any]]
    answered: bool = False


PLIVO_AUTH_ID, PLIVO_AUTH_TOKEN = "MA" + "E" * 18, "endings-plivo-token"
PUBLIC = "https://voice.example.test"  # the public URL Plivo signs its answer webhook for

#: carrier -> its REST API fake (every carrier in ``CARRIERS`` that can hang up).
CARRIER_APIS: dict[str, CarrierApi] = {
    "telnyx": CarrierApi(
        lambda: FakeTelnyx(api_key="KEYendings"), lambda api: {"api_key": "KEYendings"}
    ),
    "plivo": CarrierApi(
        lambda: FakePlivo(PLIVO_AUTH_ID, PLIVO_AUTH_TOKEN),
        lambda api: {"auth_id": PLIVO_AUTH_ID, "auth_token": PLIVO_AUTH_TOKEN},
        answered=True,
    ),
    "vonage": CarrierApi(
        FakeVonage,
        lambda api: {"application_id": api.application_id, "private_key": api.private_key},
    ),
}

#: The agent hangs up (``end_call``, after a goodbye) once the caller's first turn is in: the
#: call waits for the goodbye to play, then hangs up through the carrier's REST API.
CARRIER_HANGUP = Case(
    Reason.AGENT_HANGUP,
    fake=echo_fake(
        caller_transcripts=[(0.2, "That is all, thanks.")],
        tool_calls=[FakeToolCall("end_call", {}, say=speech("Goodbye!"))],
    ),
    never_reads=False,
    carrier_api=True,
)


def _params() -> Iterator[Any]:
    for name, case in CASES.items():
        if isinstance(case, Cannot):
            yield pytest.param(
                None, True, "twilio", id=name, marks=pytest.mark.skip(reason=case.why)
            )
            continue
        yield pytest.param(case, True, "twilio", id=name)
        if case.never_reads:
            yield pytest.param(case, False, "twilio", id=f"{name}-caller_never_reads")
    for carrier in CARRIERS:
        stops = wire_for(carrier).capabilities.sends_stop
        for name in CALLER_SIDE:
            case = CASES[name]
            assert isinstance(case, Case)
            if case.script is Script.STOP and not stops:
                continue  # a carrier without a stop event: its clean close is its stop
            if case.script is Script.CLOSE and not stops:
                # the clean close (a close frame, 1000) is that carrier's hang-up: caller_stop
                case, name = HANGS_UP_BY_CLOSING, "caller_stop_by_close"
            yield pytest.param(case, True, carrier, id=f"{carrier}-{name}")
            if case.never_reads:
                yield pytest.param(case, False, carrier, id=f"{carrier}-{name}-caller_never_reads")
        for name in CARRIER_TOO:
            yield pytest.param(CASES[name], True, carrier, id=f"{carrier}-{name}")
        if carrier in CARRIER_APIS:
            yield pytest.param(CARRIER_HANGUP, True, carrier, id=f"{carrier}-agent_hangup")


def test_every_registered_carrier_runs_the_matrix() -> None:
    # A carrier without a simulator wire, or without a REST fake here, would get fewer cases
    # silently: every registered carrier has both.
    assert set(CARRIERS) == set(CARRIER_SPECS) - {"twilio"}
    assert set(CARRIER_APIS) == set(CARRIERS)
    assert all(isinstance(CASES[name], Case) for name in CARRIER_TOO)
    params = list(_params())
    for carrier in CARRIERS:
        mine = [param.values[0] for param in params if param.values[2] == carrier]
        stops = wire_for(carrier).capabilities.sends_stop
        reasons = {case.reason for case in mine}
        expected = set(Reason) - {
            Reason.INTERNAL_ERROR,
            Reason.CALLER_STALLED,
            Reason.UPSTREAM_STALLED,
            Reason.TRANSFERRED,
        }
        assert reasons == expected, carrier  # caller_stop too: a clean close is its hang-up
        assert (CASES["caller_stop"] in mine) is stops
        assert (HANGS_UP_BY_CLOSING in mine) is not stops


def test_every_registered_provider_has_its_provider_side_endings() -> None:
    assert list(PROVIDER_FAKES) == list(PROVIDERS)
    provider_side = {
        Reason.UPSTREAM_CONNECT_FAILED,
        Reason.UPSTREAM_CLOSED,
        Reason.UPSTREAM_REJECTED,
        Reason.UPSTREAM_KEEPALIVE_TIMEOUT,
        Reason.AGENT_HANGUP,
    }
    for name, fake in PROVIDER_FAKES.items():
        assert set(fake.endings) == provider_side, name
    # every reason a call can end with is in the matrix, bar internal_error (a bug) and the
    # stalls (tests/test_call_deadlines.py, tests/test_e2e_caller_stops_reading.py)
    reasons = {case.reason for case in CASES.values() if isinstance(case, Case)}
    left = {Reason.INTERNAL_ERROR, Reason.CALLER_STALLED, Reason.UPSTREAM_STALLED}
    assert reasons == set(Reason) - left


# --- what to look at ------------------------------------------------------------------------------


@asynccontextmanager
async def rig_for(case: Case, carrier: str = "twilio") -> AsyncIterator[Rig]:
    fake = case.fake()
    stop = trio.Event()
    async with trio.open_nursery() as fakes:
        url = await fakes.start(fake.serve)
        twilio, rest, api = None, {}, None
        if case.carrier_api:
            row = CARRIER_APIS[carrier]
            api = row.make()
            own = {**row.own(api), "api_url": await fakes.start(api.serve)}
            rest = {"carrier_settings": {carrier: own}}
            if row.answered:
                rest["public_url"] = PUBLIC
        if case.twilio:
            twilio = FakeTwilio(ACCOUNT_SID, credentials=[(API_KEY, API_SECRET)], caller_seconds=10)
            rest = {
                "twilio_account_sid": ACCOUNT_SID,
                "twilio_api_url": await fakes.start(twilio.serve),
                "twilio_api_key": API_KEY,
                "twilio_api_secret": API_SECRET,
            }
        settings = Settings(
            port=0, provider=case.provider, provider_url=url, **{**SHORT, **rest, **case.settings}
        )
        async with trio.open_nursery() as servers:
            server = await servers.start(
                lambda task_status: serve(
                    settings, shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            try:
                yield Rig(server, fake, stop, fakes, twilio, api)
            finally:
                servers.cancel_scope.cancel()  # the checks are done: no graceful stop needed
        fakes.cancel_scope.cancel()


def carrier_sockets(server_port: int, caller_port: int) -> list[str]:
    """The server's TCP sockets to the caller, from the kernel's TCP tables (fd owners only)."""
    return [
        f"{conn.laddr.port}->{conn.raddr.port} {conn.status}"
        for conn in psutil.Process().net_connections(kind="tcp")
        if conn.raddr and (conn.laddr.port, conn.raddr.port) == (server_port, caller_port)
    ]


def socket_inodes() -> set[int]:
    """Every socket this process has a file descriptor for, by inode.

    Wider than the TCP tables: a socket reset by its peer has no table entry left, yet its fd (and
    the memory behind it) stays until the owner closes it.
    """
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed while we looked
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[len("socket:[") : -1]))
    return inodes


def inode_of(stream: object) -> int | None:
    sock = getattr(stream, "socket", None)
    fd = sock.fileno() if sock is not None else -1
    return os.fstat(fd).st_ino if fd >= 0 else None


def fake_inodes(fake: Any) -> set[int]:
    """The sockets the provider fake still holds on its side (a fake that stopped reading keeps
    its session until it is shut down: that is the fake's business, not the server's)."""
    sessions = [*fake.sessions, *getattr(fake, "refused", ())]
    inodes = {inode_of(session.stream.inner) for session in sessions}
    return {inode for inode in inodes if inode is not None}


def describe(inodes: set[int]) -> list[str]:
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            fds[int(fd)] = int(link[len("socket:[") : -1])
    conns = {conn.fd: conn for conn in psutil.Process().net_connections(kind="all")}
    out = []
    for fd, inode in sorted(fds.items()):
        if inode not in inodes:
            continue
        conn = conns.get(fd)
        if conn is None:
            out.append(f"fd {fd}: no TCP table entry (reset by the peer, never closed)")
        elif conn.raddr:
            out.append(f"fd {fd}: {conn.laddr.port}->{conn.raddr.port} {conn.status}")
        else:
            out.append(f"fd {fd}: {conn.laddr} {conn.status}")
    return out


def all_tasks() -> set[trio.lowlevel.Task]:
    return set(_walk(trio.lowlevel.current_root_task()))


def _walk(task: trio.lowlevel.Task) -> Iterator[trio.lowlevel.Task]:
    yield task
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            yield from _walk(child)


def _under(nursery: trio.Nursery) -> set[trio.lowlevel.Task]:
    return {task for child in nursery.child_tasks for task in _walk(child)}


def parse_metrics(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(server: RunningServer) -> Samples:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"{server.url}/metrics")
    assert response.status_code == 200
    return parse_metrics(response.text)


def disconnects(samples: Samples) -> dict[str, float]:
    return {
        dict(labels)["reason"]: value
        for (name, labels), value in samples.items()
        if name == "voxbridge_call_disconnects_total" and value
    }


async def poll_until(check: Callable[[], bool], deadline: float) -> bool:
    while not check():
        if trio.current_time() >= deadline:
            return False
        await trio.sleep(POLL)
    return True


@attrs.define
class Outcome:
    """What one case saw. Times are seconds after the server decided the call's end."""

    reason: Reason | None = None
    bound: float = 0.0
    held_before: list[str] = attrs.Factory(list)  # the server's sockets to the caller, mid-call
    held: list[str] = attrs.Factory(list)  # sockets the call left open at the deadline
    released_after: float | None = None
    new_tasks: list[str] = attrs.Factory(list)  # tasks the call left behind
    samples: Samples = attrs.Factory(dict)
    dialled: dict[str, str] = attrs.Factory(dict)  # FakeTwilio: CallSid -> <Dial> target
    hangups: list[str] = attrs.Factory(list)  # the carrier's REST API fake: calls hung up


async def answered(rig: Rig, carrier: str, caller: Caller) -> str:
    """The carrier's answer webhook, as the carrier sends it (signed): the stream URL the server
    answered with (on this server), its parameters handed to ``caller``'s start, its upgrade
    signed."""
    api = rig.api
    assert isinstance(api, FakePlivo), carrier  # the one carrier that needs it (CARRIER_APIS)
    api.add_call(CALL_SID)
    server = rig.server
    _, answer = await api.answer(
        f"{server.url}/{carrier}/answer",
        call_uuid=CALL_SID,
        signed_url=f"{PUBLIC}/{carrier}/answer",
    )
    assert answer.status == 200 and answer.stream_url is not None, answer.body
    caller.call.custom_parameters = answer.parameters
    # the upgrade signed as Plivo may sign it, for the stream URL as the answer wrote it
    caller.wire = PlivoWire(sign_upgrade=(PLIVO_AUTH_TOKEN, answer.stream_url))
    public = urlsplit(answer.stream_url)
    query = f"?{public.query}" if public.query else ""
    return server.media_url.replace("/twilio/media", public.path + query)


async def run_case(case: Case, caller: Caller | PlacedCall, carrier: str = "twilio") -> Outcome:
    """Run one call to its end; check what the server still holds by the teardown bound."""
    outcome = Outcome()
    async with rig_for(case, carrier) as rig:
        server = rig.server
        outcome.bound = server.app.settings.teardown_timeout
        baseline, baseline_sockets = all_tasks(), socket_inodes()
        if isinstance(caller, PlacedCall):
            caller.twilio = rig.twilio
        if isinstance(rig.api, FakeVonage):
            rig.api.add_call(CALL_SID)  # a live call its REST API can hang up
        async with trio.open_nursery() as callers:
            url = server.media_url
            if isinstance(caller, Caller):
                url = url.replace("/twilio/media", f"/{caller.carrier}/media")
                if case.carrier_api and CARRIER_APIS[carrier].answered:
                    url = await answered(rig, carrier, caller)
            callers.start_soon(caller.run, url)
            await poll_until(
                lambda: len(server.app.registry) > 0 and caller.port > 0, trio.current_time() + 5
            )
            (call,) = server.app.registry.active()
            if case.during is not None:
                callers.start_soon(case.during, rig)
            outcome.held_before = carrier_sockets(server.port, caller.port)
            decided = await _decided(call)
            deadline = decided + outcome.bound + MARGIN

            def released() -> bool:
                new = socket_inodes() - baseline_sockets - fake_inodes(rig.fake) - {caller.inode}
                outcome.held = describe(new)
                return not new and len(server.app.registry) == 0

            if await poll_until(released, deadline):
                outcome.released_after = trio.current_time() - decided
            with trio.move_on_at(min(deadline, trio.current_time() + CALLER_GRACE)):
                await caller.finished.wait()  # a caller that reads learns of it by itself
            if rig.twilio is not None:  # Twilio goes on to the <Dial> once the stream is over
                twilio = rig.twilio
                await poll_until(lambda: bool(twilio.dialled), deadline)
                outcome.dialled = dict(twilio.dialled)
            if rig.api is not None:
                api = rig.api
                await poll_until(lambda: bool(api.hangups), deadline)
                outcome.hangups = list(api.hangups)
            callers.cancel_scope.cancel()
        outcome.reason = call.disconnect.reason if call.disconnect else None

        # The caller is finished: every task the call started must be gone by the deadline.
        def no_new_tasks() -> bool:
            new = all_tasks() - baseline - _under(rig.fake_nursery)
            outcome.new_tasks = sorted(task.name for task in new)
            return not new

        await poll_until(no_new_tasks, deadline)
        if rig.stop.is_set():  # the server is gone: its registry still renders what it counted
            outcome.samples = parse_metrics(server.app.metrics.render().decode())
        else:
            outcome.samples = await scrape(server)
    return outcome


async def _decided(call: Call) -> float:
    """When the call's end was decided (its reason recorded, teardown starting)."""
    while call.disconnect is None:
        await trio.sleep(0.005)
    return trio.current_time()


# --- the matrix -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "reads", "carrier"), list(_params()))
async def test_nothing_outlives_the_call(case: Case, reads: bool, carrier: str) -> None:
    caller = PlacedCall() if case.twilio else Caller(case.script, reads=reads, carrier=carrier)
    with trio.fail_after(CASE_BUDGET):
        outcome = await run_case(case, caller, carrier)

    assert outcome.reason is case.reason
    by = f"{outcome.bound + MARGIN:g} s after the end"
    assert outcome.held_before, "the server's socket to the caller was not seen mid-call"
    assert outcome.held == [], f"still held {by}: {outcome.held}"
    assert outcome.released_after is not None, "the call was still in the registry"
    assert outcome.samples[("voxbridge_calls_active", ())] == 0
    assert disconnects(outcome.samples) == {case.reason.value: 1}
    if reads and case.script not in (Script.CLOSE, Script.FIN, Script.RESET):
        assert caller.close == (case.reason.close_code, case.reason.value)
    if case.carrier_api:  # the goodbye played, then the hang-up through the carrier's REST API
        assert outcome.hangups == [CALL_SID]
    if isinstance(caller, PlacedCall):  # the transfer: the call went on to Twilio's <Dial>
        assert caller.call is not None
        assert outcome.dialled == {caller.call.sid: TRANSFER_TARGET}
    elif reads and case.script not in (Script.CLOSE, Script.FIN, Script.RESET):
        assert caller.server_closed_tcp  # and then the server closed TCP, as a client waits for
    if not reads and case.script not in (Script.CONNECTED_ONLY, Script.SILENT):
        assert caller.close is None  # it really never read our close frame
        assert caller.send_failed  # it streamed until the server let go of it
    assert outcome.new_tasks == [], f"tasks left {by}: {outcome.new_tasks}"
