"""A caller that stops reading while the agent talks is released within the call's bounds.

The provider answers with a burst (``flood=40000``: 800 s of agent audio, sent as fast as possible,
as realtime providers do) and the caller stops reading right after ``start``, so our sends to the
caller fill the socket buffers (the ending matrix's "caller_never_reads" variant does not: its
provider echoes at real time for well under a second). hypercorn writes to the carrier inside a
shielded scope, so a caller with a full window blocked the app's ``send`` for ever: neither the
call's ``send_timeout`` nor ``max_call_duration`` could interrupt it and the teardown (provider
socket included) never started; ``voxbridge serve`` was freed only by the kernel's
``tcp_user_timeout`` (~15 s after accept here), ``hypercorn -k trio voxbridge.asgi:app`` never.
``voxbridge.server.containment.ContainedTCPServer`` gives that shield a deadline (the app's
``send_timeout``) and closes the stream when a write outlives it.

The test holds, under both ``voxbridge serve`` (in-process) and ``hypercorn -k trio
voxbridge.asgi:app`` (a subprocess): the call ends (``voxbridge_calls_active`` back to 0) and the
caller's socket is released (read from ``/proc``, as in ``test_e2e_carrier_release``) within
``max_call_duration`` + the teardown bound, and the provider session is closed. Loopback only.
The test proves something only if a write to the caller blocks: the burst (about 11.5 MB on the
wire) must exceed what the kernel buffers for a peer that never reads (about 4.3 MB on loopback
with the default ``net.ipv4.tcp_wmem``). So it also asserts how the call ended: on the blocked
write (``caller_stalled``, or ``caller_closed`` once the cancelled write closed the stream), never
at ``max_call_duration``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from callkit import connected_frame, media_frame, start_frame
from test_e2e_carrier_release import HYPERCORN, held_sockets, scrape_url
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from voxbridge.server import serve
from voxbridge.settings import Settings
from voxbridge.testing import FakeOpenAIRealtime

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/net/tcp").exists(), reason="reads sockets from Linux /proc"
)

MAX_CALL = 4.0
CLOSE_TIMEOUT = 0.5
BOUND = MAX_CALL + 3 * CLOSE_TIMEOUT + 1 + 0.5  # decided at max_call_duration, + teardown, + slack
ENV = {
    "VOXBRIDGE_CLOSE_TIMEOUT": str(CLOSE_TIMEOUT),
    "VOXBRIDGE_SEND_TIMEOUT": "1",
    "VOXBRIDGE_IDLE_TIMEOUT": "30",
    "VOXBRIDGE_MAX_CALL_DURATION": str(MAX_CALL),
}


@asynccontextmanager
async def server(mode: str, provider_url: str) -> AsyncIterator[tuple[str, int, int]]:
    if mode == "serve":
        settings = Settings(
            port=0,
            provider="openai",
            provider_url=provider_url,
            provider_settings={"openai": {"api_key": "k"}},
            close_timeout=CLOSE_TIMEOUT,
            send_timeout=1,
            idle_timeout=30,
            max_call_duration=MAX_CALL,
        )
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            running = await nursery.start(
                lambda task_status: serve(
                    settings, shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            yield running.url, running.port, os.getpid()
            nursery.cancel_scope.cancel()
        return
    env = {
        **os.environ,
        **ENV,
        "VOXBRIDGE_PROVIDER": "openai",
        "VOXBRIDGE_PROVIDER_URL": provider_url,
        "OPENAI_API_KEY": "k",
    }
    process = await trio.lowlevel.open_process(
        [HYPERCORN, "-k", "trio", "--bind", "127.0.0.1:0", "voxbridge.asgi:app"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    assert process.stdout is not None
    try:
        seen = b""
        with trio.fail_after(10):
            while not (m := re.search(rb"Running on (http://127\.0\.0\.1:(\d+))", seen)):
                seen += await process.stdout.receive_some()
        async with trio.open_nursery() as nursery:

            async def drain() -> None:
                assert process.stdout is not None
                while await process.stdout.receive_some():
                    pass

            nursery.start_soon(drain)
            yield m.group(1).decode(), int(m.group(2)), process.pid
            nursery.cancel_scope.cancel()
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()


@pytest.mark.hang_limit(60)
@pytest.mark.parametrize("mode", ["serve", "hypercorn"])
async def test_a_caller_that_stops_reading_during_an_agent_burst_is_released(mode: str):
    fake = FakeOpenAIRealtime(echo_delay=None, flood=40000)
    await _run(mode, fake)


async def _run(mode: str, fake: FakeOpenAIRealtime) -> None:
    async with trio.open_nursery() as top:
        provider_url = await top.start(fake.serve)
        async with server(mode, provider_url) as (url, port, pid):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            try:
                await _call(stream, url, port, pid, fake)
            finally:
                await trio.aclose_forcefully(stream)
        top.cancel_scope.cancel()


async def _call(
    stream: trio.SocketStream, url: str, port: int, pid: int, fake: FakeOpenAIRealtime
) -> None:
    caller_port = stream.socket.getsockname()[1]
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host=f"127.0.0.1:{port}", target="/twilio/media")))
    while not any(isinstance(e, AcceptConnection) for e in ws.events()):
        ws.receive_data(await stream.receive_some())
    accepted = trio.current_time()
    await stream.send_all(
        ws.send(TextMessage(connected_frame())) + ws.send(TextMessage(start_frame()))
    )
    # From here on the caller never reads; it streams 50 frames/s as Twilio does.
    released_after = None
    ended_after = None
    index = 0
    sending = True
    with trio.move_on_after(BOUND + 10):
        while released_after is None or ended_after is None:
            if sending:
                with trio.move_on_after(0.1) as blocked:
                    try:
                        await stream.send_all(ws.send(TextMessage(media_frame(index))))
                    except trio.BrokenResourceError:
                        sending = False  # the server let go of us
                if blocked.cancelled_caught:
                    sending = False  # the server stopped reading too (a partial frame is out)
                index += 1
            now = trio.current_time() - accepted
            if released_after is None and not held_sockets(pid, port, caller_port):
                released_after = now
            if ended_after is None:
                samples = await scrape_url(url)
                if samples.get(("voxbridge_calls_active", ())) == 0:
                    ended_after = now
            await trio.sleep(0.02)
    samples = await scrape_url(url)
    reasons = {
        dict(labels)["reason"]: value
        for (name, labels), value in samples.items()
        if name == "voxbridge_call_disconnects_total" and value
    }
    # The burst outgrew the kernel's buffers, so a write to the caller did block and the call
    # ended on it -- not at max_call_duration, which would prove nothing about the blocked write.
    assert set(reasons) <= {"caller_stalled", "caller_closed"}, reasons
    sessions_closed = [s.closed_at is not None for s in fake.sessions]
    assert released_after is not None and released_after <= BOUND, (released_after, BOUND)
    assert ended_after is not None and ended_after <= BOUND, (ended_after, BOUND)
    assert all(sessions_closed), "the provider session outlived the call"
