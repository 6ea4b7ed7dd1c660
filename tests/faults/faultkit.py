"""The fault suite's rig: the real server in this process, a provider fake, and a ``FaultProxy`` on
either leg (or both), with what every case checks once the call has ended.

The proxies sit where a load balancer or a NAT would: between the caller and the server
(``carrier_proxy``: the caller dials the proxy, the proxy dials the server) and between the server
and its provider (``provider_proxy``: ``provider_url`` is rewritten to the proxy with
``FaultProxy.rewrite_url``). Everything the test owns -- the fake, the proxies, the callers, the
socket watcher -- runs in one nursery, ``Rig.tools``, so that what is left over when a call has
ended can be blamed on the server alone:

* **sockets**: every socket file descriptor of this process that was not open before the call,
  less the test's own (the fake's sessions, the callers, the proxies' sockets: recognised by
  their ports while they are in the kernel's TCP tables, by inode once they are not), must be
  gone ``teardown_timeout`` + ``MARGIN`` after the end was decided. That covers the server's
  socket to the caller and every provider socket it opened, including one reset by its peer
  (no TCP table entry left, still an fd);
* **tasks**: no task outside ``Rig.tools`` that was not in the tree before the call;
* **accounting**: ``/metrics`` counted the reason exactly once and no other, no call is active,
  and the registry's :class:`~voxbridge.session.state.CallRecord` is complete (reason, close
  code, ``ended_at``, ``upstream_closed_at`` when a provider session opened).

The helpers of ``test_e2e_endings`` (task walk, socket inodes, metrics parsing) are reused as they
are. Times are ``trio.current_time()`` seconds; real sockets on loopback, Linux only (``/proc``).
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import attrs
import psutil
import trio
from test_e2e_endings import (
    SHORT,
    Samples,
    _under,
    all_tasks,
    describe,
    disconnects,
    fake_inodes,
    inode_of,
    poll_until,
    scrape,
    socket_inodes,
)

from voxbridge.errors import Reason
from voxbridge.server import RunningServer, serve
from voxbridge.session.call import Call
from voxbridge.session.state import CallRecord
from voxbridge.settings import Settings
from voxbridge.testing import CarrierSimulator, FakeOpenAIRealtime, FaultProxy

CASE_BUDGET = 20.0  # real seconds per case, whatever happens
MARGIN = 0.5  # seconds of scheduling slack on top of a deadline (two cores, a loaded CI box)
WATCH_EVERY = 0.02  # seconds between two looks at the kernel's TCP tables
POLL = 0.005  # seconds between two looks at whether the call's end was decided

#: Short deadlines for every case: teardown_timeout = 3 * 0.5 + 1 = 2.5 s.
SETTINGS: dict[str, Any] = {**SHORT, "send_timeout": 1.0}
#: For a call that must survive a slow path: every wait on the path far longer than its round
#: trip, even on a loaded box (the path's delay is the fault, not a deadline).
PATIENT: dict[str, Any] = {"pong_timeout": 2.0, "close_timeout": 2.0, "idle_timeout": 5.0}


def echo_fake(**knobs: Any) -> FakeOpenAIRealtime:
    """A healthy provider that echoes the caller after 50 ms (plus any fault knob)."""
    return FakeOpenAIRealtime(echo_delay=0.05, **knobs)


@attrs.define(eq=False)
class Rig:
    """One server, its provider fake, the proxies, and the test's own nursery."""

    server: RunningServer
    fake: FakeOpenAIRealtime
    tools: trio.Nursery
    carrier_proxy: FaultProxy | None
    provider_proxy: FaultProxy | None
    caller_inodes: set[int] = attrs.Factory(set)

    @property
    def settings(self) -> Settings:
        return self.server.app.settings

    @property
    def media_url(self) -> str:
        """Where a caller dials: through the carrier proxy if there is one."""
        url = self.server.media_url
        return self.carrier_proxy.rewrite_url(url) if self.carrier_proxy else url

    def test_owned(self, conn: Any) -> bool:
        """Whether a TCP socket of this process is the test's (not the server's), by its ports."""
        local = {self.fake_port, *(p.port for p in self.proxies)}
        remote = {self.server.port, *(p.port for p in self.proxies if p is self.carrier_proxy)}
        if self.provider_proxy is not None:  # then only the proxy dials the fake
            remote.add(self.fake_port)
        return conn.laddr.port in local or bool(conn.raddr and conn.raddr.port in remote)

    @property
    def proxies(self) -> list[FaultProxy]:
        return [p for p in (self.carrier_proxy, self.provider_proxy) if p is not None]

    @property
    def fake_port(self) -> int:
        assert self.fake.url is not None
        port = urlsplit(self.fake.url).port
        assert port is not None
        return port

    def call(self) -> Call:
        (call,) = self.server.app.registry.active()
        return call


@asynccontextmanager
async def fault_rig(
    fake: FakeOpenAIRealtime | None = None,
    *,
    carrier_proxy: dict[str, Any] | None = None,
    provider_proxy: dict[str, Any] | None = None,
    fake_listener: trio.SocketListener | None = None,
    **settings: Any,
) -> AsyncIterator[Rig]:
    """The server with ``SETTINGS`` (``settings`` override), a proxy on each leg given knobs.

    ``carrier_proxy`` / ``provider_proxy``: ``FaultProxy`` keyword arguments (``{}``: a clean
    proxy, faults added at run time), or ``None`` for no proxy on that leg. ``fake_listener``:
    serve the fake there (a socket made elsewhere, e.g. in another network namespace) instead of
    on a loopback port of its own.
    """
    fake = fake or echo_fake()
    async with trio.open_nursery() as tools:
        if fake_listener is None:
            url = await tools.start(fake.serve)
        else:
            url = await tools.start(serve_fake_on, fake, fake_listener)
        upstream = None
        if provider_proxy is not None:
            upstream = FaultProxy.for_url(url, **provider_proxy)
            await tools.start(upstream.serve)
            url = upstream.rewrite_url(url)
        config = Settings(port=0, provider="openai", provider_url=url, **{**SETTINGS, **settings})
        async with trio.open_nursery() as servers:
            server = await servers.start(
                lambda task_status: serve(
                    config, shutdown_trigger=trio.sleep_forever, task_status=task_status
                )
            )
            downstream = None
            if carrier_proxy is not None:
                downstream = FaultProxy("127.0.0.1", server.port, **carrier_proxy)
                await tools.start(downstream.serve)
            try:
                yield Rig(server, fake, tools, downstream, upstream)
            finally:
                servers.cancel_scope.cancel()  # the checks are done: no graceful stop needed
        tools.cancel_scope.cancel()


async def serve_fake_on(
    fake: FakeOpenAIRealtime,
    listener: trio.SocketListener,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``fake.serve``, on a listener made by the caller."""
    host, port = listener.socket.getsockname()[:2]
    fake.url = f"ws://{host}:{port}/v1/realtime"
    task_status.started(fake.url)
    await trio.serve_listeners(fake.handle_stream, [listener])


# --- the caller -----------------------------------------------------------------------------------


@attrs.define(eq=False)
class Caller:
    """A :class:`CarrierSimulator` placed through the rig, with the audio it sends."""

    sim: CarrierSimulator
    finished: trio.Event = attrs.Factory(trio.Event)

    @property
    def result(self) -> Any:
        return self.sim.result

    def sent_audio(self) -> bytes:
        return b"".join(base64.b64decode(frame) for frame in self.sim.frames())

    def echoed_verbatim(self) -> bool:
        """Agent audio came back, and it is exactly what the caller sent (the fake echoes)."""
        got = bytes(self.result.audio_received)
        return bool(got) and self.sent_audio()[: len(got)] == got


async def place_call(
    rig: Rig, *, stream: trio.SocketStream | None = None, **options: Any
) -> Caller:
    """Start a simulated Twilio call (``CarrierSimulator`` options) in ``rig.tools``; return once
    the server has it in its registry. ``stream``: a connection to ``rig.media_url`` made by the
    caller (default: one is opened here)."""
    parts = urlsplit(rig.media_url)
    assert parts.hostname is not None and parts.port is not None
    if stream is None:
        stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    inode = inode_of(stream)
    assert inode is not None
    rig.caller_inodes.add(inode)
    options.setdefault("close_wait", 5.0)
    caller = Caller(CarrierSimulator(stream, host=parts.netloc, resource=parts.path, **options))

    async def run() -> None:
        try:
            await caller.sim.run()
        finally:
            caller.finished.set()

    rig.tools.start_soon(run)
    registry = rig.server.app.registry
    assert await poll_until(lambda: len(registry) > 0, trio.current_time() + 5), "no call"
    return caller


# --- what every case checks -----------------------------------------------------------------------


@attrs.define
class Outcome:
    """How one call ended. Times are ``trio.current_time()`` values."""

    #: The server decided the end (its reason recorded, teardown begun) after ``decided_after``
    #: and by ``decided_at`` (two looks, about POLL apart).
    decided_after: float
    decided_at: float
    reason: Reason | None
    bound: float  # teardown_timeout + MARGIN: by then nothing of the call may be left
    released_after: float | None  # seconds after decided_at when sockets and registry were clear
    held: list[str]  # sockets of the call still open at the bound
    new_tasks: list[str]  # tasks of the call still running at the bound
    record: CallRecord | None
    samples: Samples


class Watch:
    """Takes the baseline before a call and, after it, what the server still holds.

    Construct it once the rig is up and before the call is placed. Two tasks in ``rig.tools``
    keep noting which sockets are the test's while they are in the TCP tables, and when the
    first call's end is decided.
    """

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.tasks = all_tasks()
        self.sockets = socket_inodes()
        self.test_owned: set[int] = set()
        self.call: Call | None = None
        self.decided: tuple[float, float] | None = None  # (after, by): see Outcome
        self._decided = trio.Event()
        rig.tools.start_soon(self._note_test_sockets)
        rig.tools.start_soon(self._follow_the_call)

    async def _note_test_sockets(self) -> None:
        while True:
            self.note_test_sockets()
            await trio.sleep(WATCH_EVERY)

    async def _follow_the_call(self) -> None:
        """Find the first call in the registry; note when its end is decided, within POLL."""
        registry = self.rig.server.app.registry
        while not registry.active():
            await trio.sleep(POLL)
        call = self.call = registry.active()[0]
        before = trio.current_time()
        while call.disconnect is None:
            before = trio.current_time()
            await trio.sleep(POLL)
        self.decided = (before, trio.current_time())
        self._decided.set()

    def note_test_sockets(self) -> None:
        for conn in psutil.Process().net_connections(kind="tcp"):
            if conn.fd >= 0 and self.rig.test_owned(conn):
                try:
                    link = os.readlink(f"/proc/self/fd/{conn.fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    self.test_owned.add(int(link[len("socket:[") : -1]))

    def held_by_server(self) -> set[int]:
        self.note_test_sockets()
        theirs = self.test_owned | fake_inodes(self.rig.fake) | self.rig.caller_inodes
        return socket_inodes() - self.sockets - theirs

    async def outcome(self) -> Outcome:
        """Wait for the call's end to be decided, then for everything of it to be released (at
        most until the teardown bound); report what was left."""
        await self._decided.wait()
        assert self.call is not None and self.decided is not None
        call = self.call
        before, decided = self.decided
        registry = self.rig.server.app.registry
        bound = self.rig.settings.teardown_timeout + MARGIN
        deadline = decided + bound
        held: set[int] = set()

        def released() -> bool:
            nonlocal held
            held = self.held_by_server()
            return not held and len(registry) == 0

        released_after = None
        if await poll_until(released, deadline):
            released_after = trio.current_time() - decided
        new: list[str] = []

        def no_new_tasks() -> bool:
            nonlocal new
            left = all_tasks() - self.tasks - _under(self.rig.tools)
            new = sorted(task.name for task in left)
            return not left

        await poll_until(no_new_tasks, deadline)
        record = next((r for r in registry.recent if r.call_id == call.state.call_id), None)
        return Outcome(
            decided_after=before,
            decided_at=decided,
            reason=call.disconnect.reason if call.disconnect else None,
            bound=bound,
            released_after=released_after,
            held=describe(held),
            new_tasks=new,
            record=record,
            samples=await scrape(self.rig.server),
        )


@attrs.define(eq=False)
class Trial:
    """One call placed through a rig, watched."""

    rig: Rig
    watch: Watch
    caller: Caller

    async def ended(self, *, caller_too: bool = True) -> Outcome:
        """The call's outcome; with ``caller_too``, once the caller has finished as well."""
        outcome = await self.watch.outcome()
        if caller_too:
            await self.caller.finished.wait()
        return outcome


@asynccontextmanager
async def fault_call(
    fake: FakeOpenAIRealtime | None = None,
    *,
    seconds: float = 30.0,
    close_wait: float = 5.0,
    prepare: Callable[[Rig], object] | None = None,
    **rig_options: Any,
) -> AsyncIterator[Trial]:
    """A rig (``fault_rig`` options), a :class:`Watch`, and a call of ``seconds`` placed on it
    (``close_wait``: how long the caller waits for the server's close after its own stop;
    ``prepare(rig)`` runs first), all within ``CASE_BUDGET``."""
    with trio.fail_after(CASE_BUDGET):
        async with fault_rig(fake, **rig_options) as rig:
            if prepare is not None:
                prepare(rig)
            watch = Watch(rig)
            caller = await place_call(rig, seconds=seconds, close_wait=close_wait)
            yield Trial(rig, watch, caller)


def assert_clean_end(outcome: Outcome, reasons: Reason | set[Reason]) -> CallRecord:
    """The call ended with (one of) ``reasons``, counted once, and left nothing behind."""
    expected = {reasons} if isinstance(reasons, Reason) else reasons
    assert outcome.reason in expected, outcome.reason
    assert outcome.reason is not None
    by = f"{outcome.bound:g} s after the end was decided"
    assert outcome.held == [], f"sockets still held {by}: {outcome.held}"
    assert outcome.released_after is not None, f"the call was still in the registry {by}"
    assert outcome.new_tasks == [], f"tasks left {by}: {outcome.new_tasks}"
    assert outcome.samples[("voxbridge_calls_active", ())] == 0
    assert disconnects(outcome.samples) == {outcome.reason.value: 1}
    record = outcome.record
    assert record is not None, "no CallRecord in the registry"
    assert record.reason is outcome.reason
    assert record.close_code == outcome.reason.close_code
    decided = outcome.decided_after
    assert decided <= record.ended_at <= outcome.decided_at + outcome.bound
    if record.upstream_opened:
        assert record.upstream_closed_at is not None, "a provider session opened, never closed"
        assert decided <= record.upstream_closed_at <= record.ended_at
    return record


def within(elapsed: float, low: float, high: float) -> bool:
    """``low <= elapsed <= high``, for assertions that print all three."""
    return low <= elapsed <= high


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> float:
    """Poll ``predicate`` until true (fails after ``timeout``); returns when it became true."""
    assert await poll_until(predicate, trio.current_time() + timeout), "timed out waiting"
    return trio.current_time()
