"""A true half-open connection: one peer's network vanishes under the server, no FIN, no RST.

Run as a script by ``test_half_open.py`` (``python partition.py CASE``; root only): it makes two
private network namespaces of its own -- ``S``, where the server runs, and ``R``, the remote
peer's -- joined by a veth pair (169.254.77.1 in S, .2 in R: link-local addresses that exist
only inside these namespaces). The peer behind the link is the caller or the provider, depending
on the case. ``Partition.cut`` takes R's end of the link down: from then on every packet either
way is dropped in silence, and the server's TCP peer is simply gone -- its kernel gets no ACK,
no RST, nothing, as when a phone dies in a tunnel or a provider's host loses its network. (A
``FaultProxy`` blackhole cannot show this: there the proxy's kernel still ACKs every byte.)

The process switches namespaces with ``unshare(2)``/``setns(2)`` (through ctypes: Python 3.11 has
no ``os.unshare``): its main thread, where trio runs, lives in S; sockets are bound to the
namespace they were created in, so R's sockets (the caller's, or the fake provider's listener)
are made before trio starts, while the thread is briefly in R. ``ip`` (iproute2) configures the
link, run from the thread while it is in the right namespace.

It prints one JSON line: what the call did, measured in-process, and the result of
``faultkit.assert_clean_end`` (sockets, tasks, metrics, call record). Exit status 77 with
``{"skip": ...}`` means the partition could not be made here (not root, no ``ip``, no veth, no
namespaces): the test skips.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import socket
import subprocess
import sys
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # faultkit, and the helpers in tests/

import attrs  # noqa: E402
import trio  # noqa: E402
from faultkit import (  # noqa: E402
    MARGIN,
    Outcome,
    Rig,
    Watch,
    assert_clean_end,
    fault_rig,
    place_call,
)

from voxbridge.settings import Settings  # noqa: E402

SKIP = 77
S_ADDR, R_ADDR = "169.254.77.1", "169.254.77.2"
CLONE_NEWNET = 0x40000000
BUDGET = 20.0  # real seconds for one case
#: The server listens on S's link address, not loopback: say that this is meant.
EXPOSED = {"insecure": True} if "insecure" in attrs.fields_dict(Settings) else {}


class CannotPartition(Exception):
    """The machine does not allow the partition (the test skips)."""


def _libc_call(name: str, *args: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}: {os.strerror(errno)}")


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise CannotPartition(f"ip {' '.join(args)}: {done.stderr.strip()}")


class Partition:
    """Namespaces S (this thread, from :meth:`make` on) and R, joined by a veth pair."""

    def __init__(self) -> None:
        self.s = self.r = -1
        #: Made in R: a TCP socket for the caller to connect from, and the provider's listener.
        self.caller_socket: socket.socket | None = None
        self.provider_listener: socket.socket | None = None
        self.cut_at: float | None = None

    def make(self) -> None:
        if os.geteuid() != 0:
            raise CannotPartition("needs root (network namespaces, veth)")
        if shutil.which("ip") is None:
            raise CannotPartition("needs ip (iproute2)")
        try:
            _libc_call("unshare", CLONE_NEWNET)
            ip("link", "set", "lo", "up")
            self.s = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            _libc_call("unshare", CLONE_NEWNET)
        except OSError as exc:
            raise CannotPartition(f"cannot make a network namespace: {exc}") from exc
        self.r = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        ip("link", "set", "lo", "up")
        s_path = f"/proc/{os.getpid()}/fd/{self.s}"
        ip("link", "add", "vr", "type", "veth", "peer", "name", "vs", "netns", s_path)
        ip("addr", "add", f"{R_ADDR}/24", "dev", "vr")
        ip("link", "set", "vr", "up")
        self.caller_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener = self.provider_listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((R_ADDR, 0))
        listener.listen(16)
        _libc_call("setns", self.s, CLONE_NEWNET)
        ip("addr", "add", f"{S_ADDR}/24", "dev", "vs")
        ip("link", "set", "vs", "up")

    def cut(self) -> None:
        """Take R's end of the link down: the peer in R vanishes, silently."""
        _libc_call("setns", self.r, CLONE_NEWNET)
        try:
            ip("link", "set", "vr", "down")
        finally:
            _libc_call("setns", self.s, CLONE_NEWNET)
        self.cut_at = trio.current_time()

    def close(self) -> None:
        for sock in (self.caller_socket, self.provider_listener):
            if sock is not None:
                sock.close()
        for fd in (self.s, self.r):
            if fd >= 0:
                os.close(fd)


# --- the cases ------------------------------------------------------------------------------------


async def connect_from_r(net: Partition, rig: Rig) -> trio.SocketStream:
    assert net.caller_socket is not None
    sock = trio.socket.from_stdlib_socket(net.caller_socket)
    await sock.connect((S_ADDR, rig.server.port))
    return trio.SocketStream(sock)


async def caller_vanishes(net: Partition, settings: dict[str, Any]) -> dict[str, Any]:
    """The caller is in R; the provider is the fake on S's loopback."""
    async with fault_rig(host=S_ADDR, **EXPOSED, **settings) as rig:
        watch = Watch(rig)
        stream = await connect_from_r(net, rig)
        await place_call(rig, stream=stream, seconds=30, close_wait=3)
        session = await rig.fake.wait_for_session()
        while session.audio_out < 10:  # audio round-trips through the link
            await trio.sleep(0.01)
        net.cut()
        outcome = await watch.outcome()
    session_closed = session.closed_at
    return report(net, rig, outcome, provider_closed_at=session_closed)


async def provider_vanishes(net: Partition, settings: dict[str, Any]) -> dict[str, Any]:
    """The provider is the fake in R; the caller is on S's loopback."""
    assert net.provider_listener is not None
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(net.provider_listener))
    async with fault_rig(host=S_ADDR, fake_listener=listener, **EXPOSED, **settings) as rig:
        watch = Watch(rig)
        await place_call(rig, seconds=30, close_wait=3)
        session = await rig.fake.wait_for_session()
        while session.audio_out < 10:
            await trio.sleep(0.01)
        net.cut()
        outcome = await watch.outcome()
    return report(net, rig, outcome, provider_closed_at=None)


def report(
    net: Partition, rig: Rig, outcome: Outcome, provider_closed_at: float | None
) -> dict[str, Any]:
    assert net.cut_at is not None
    record = outcome.record
    result: dict[str, Any] = {
        "reason": outcome.reason.value if outcome.reason else None,
        "decided_after_cut": outcome.decided_at - net.cut_at,
        "decided_after_cut_low": outcome.decided_after - net.cut_at,
        "teardown": record.ended_at - outcome.decided_after if record else None,
        "last_frame_before_cut": (
            net.cut_at - record.last_caller_frame_at
            if record and record.last_caller_frame_at
            else None
        ),
        "silence": (
            outcome.decided_at - record.last_caller_frame_at
            if record and record.last_caller_frame_at
            else None
        ),
        "provider_closed_after_decision": (
            provider_closed_at - outcome.decided_after if provider_closed_at else None
        ),
        "released_after": outcome.released_after,
        "settings": {
            name: getattr(rig.settings, name)
            for name in (
                "idle_timeout",
                "tcp_user_timeout",
                "websocket_ping_interval",
                "keepalive_interval",
                "pong_timeout",
                "reconnect_budget",
                "close_timeout",
                "teardown_timeout",
            )
        },
        "margin": MARGIN,
    }
    try:
        assert outcome.reason is not None
        assert_clean_end(outcome, outcome.reason)
        result["clean"] = "ok"
    except AssertionError as exc:
        result["clean"] = f"{exc!r}\n{traceback.format_exc()}"
    return result


Scenario = Callable[[Partition, dict[str, Any]], Awaitable[dict[str, Any]]]

CASES: dict[str, tuple[Scenario, dict[str, Any]]] = {
    # The idle deadline fires first; our close frame is never ACKed: a bounded close.
    "caller_idle": (caller_vanishes, {"idle_timeout": 1.0}),
    # The kernel gives up first: hypercorn's pings (every 0.5 s) stay unACKed for
    # tcp_user_timeout, the socket fails with ETIMEDOUT, the carrier counts as closed.
    "caller_tcp_user_timeout": (
        caller_vanishes,
        {"idle_timeout": 10.0, "tcp_user_timeout": 1.0, "websocket_ping_interval": 0.5},
    ),
    # The keepalive ping finds it; resuming dials an address whose SYNs vanish.
    "provider": (provider_vanishes, {}),
}


def main(case: str) -> int:
    scenario, settings = CASES[case]
    net = Partition()
    try:
        try:
            net.make()
        except CannotPartition as exc:
            print(json.dumps({"skip": str(exc)}))
            return SKIP

        async def run() -> dict[str, Any]:
            with trio.fail_after(BUDGET):
                return await scenario(net, settings)

        print(json.dumps({"case": case, **trio.run(run)}))
        return 0
    finally:
        net.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
