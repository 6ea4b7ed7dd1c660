"""A caller process frozen mid-call (SIGSTOP): its kernel still ACKs, buffers and keeps TCP up.

``voxbridge call`` (the carrier simulator as an operator runs it) calls the in-process server and
is stopped with SIGSTOP while it streams. Nothing reaches the server any more, yet no packet says
so: the idle deadline alone must end the call, the provider socket must close with it, and the
server must let go of the caller's socket without the caller's help (its close frame sits unread
in a frozen process's buffer). Then SIGCONT: the caller wakes up to a call that is over.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import trio
from faultkit import CASE_BUDGET, MARGIN, Watch, assert_clean_end, fault_rig, wait_for, within

from voxbridge.errors import Reason

CALL = [sys.executable, "-m", "voxbridge", "call"]


async def test_sigstopped_caller_ends_idle_timeout_and_the_provider_socket_closes() -> None:
    output = bytearray()
    with trio.fail_after(CASE_BUDGET):
        async with fault_rig() as rig:
            watch = Watch(rig)
            process = await trio.lowlevel.open_process(
                [*CALL, rig.media_url, "--seconds", "30", "--close-wait", "10"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            assert process.stdout is not None
            stdout = process.stdout

            async def drain() -> None:
                while chunk := await stdout.receive_some():
                    output.extend(chunk)

            rig.tools.start_soon(drain)
            try:
                registry = rig.server.app.registry
                await wait_for(lambda: len(registry) > 0, 15)  # the interpreter starts slowly
                session = await rig.fake.wait_for_session()
                await wait_for(lambda: session.audio_out > 10)  # audio round-trips
                process.send_signal(signal.SIGSTOP)
                stopped_at = trio.current_time()
                outcome = await watch.outcome()
                # Woken, the caller finds the call over: it reads what was left for it and exits.
                process.send_signal(signal.SIGCONT)
                with trio.move_on_after(10):
                    await process.wait()
            finally:
                process.send_signal(signal.SIGCONT)  # never leave it stopped, whatever failed
                if process.returncode is None:
                    process.kill()
                await process.wait()
                await stdout.aclose()
    settings = rig.settings
    record = assert_clean_end(outcome, Reason.IDLE_TIMEOUT)
    assert record.last_caller_frame_at is not None  # (frames already in flight still count)
    silence = outcome.decided_at - record.last_caller_frame_at
    assert within(silence, settings.idle_timeout, settings.idle_timeout + MARGIN)
    assert within(outcome.decided_at - stopped_at, 0, settings.idle_timeout + MARGIN)
    assert session.is_closed and session.close_code == 1000
    assert session.closed_at is not None
    assert within(session.closed_at - outcome.decided_after, 0, settings.close_timeout + MARGIN)
    # Woken, the caller exits: it reads our close frame from its receive buffer (1000
    # idle_timeout), unless the server's RST -- its socket was closed close_timeout after the
    # close frame went out -- answered the caller's first frames and discarded the buffer (1006).
    printed = output.decode(errors="replace")
    assert process.returncode == 0, printed
    assert "idle_timeout" in printed or "1006" in printed, printed
