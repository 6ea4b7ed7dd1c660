"""True half-open connections: the server's TCP peer vanishes without a FIN or a RST.

Each case runs ``partition.py`` (next to this file) in a subprocess: it builds two private network
namespaces joined by a veth pair, runs the real server in one and the vanishing peer (the caller,
or the provider) in the other, takes the peer's link down mid-call, and reports what the call did
as JSON, with ``faultkit.assert_clean_end`` already applied in-process (sockets, tasks, metrics,
call record). Unlike a ``FaultProxy`` blackhole, nothing ACKs the server's bytes any more, so the
kernel's own deadline (``tcp_user_timeout``) is in play too.

Needs Linux, root, network namespaces, veth and ``ip`` (iproute2); skipped otherwise, with the
reason.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from faultkit import MARGIN

SCRIPT = Path(__file__).with_name("partition.py")
SKIP = 77
SLACK = 0.05


def _why_not() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root to make network namespaces and a veth pair"
    if shutil.which("ip") is None:
        return "needs ip (iproute2) to configure the veth pair"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


async def partitioned(case: str) -> dict[str, Any]:
    with trio.fail_after(40):
        done = await trio.run_process(
            [sys.executable, "-W", "error", str(SCRIPT), case],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = done.stdout.decode(errors="replace")
    err = done.stderr.decode(errors="replace")
    lines = out.strip().splitlines()
    result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    if done.returncode == SKIP:
        pytest.skip(f"cannot partition here: {result.get('skip', err[-500:])}")
    assert done.returncode == 0, f"partition.py {case} failed:\n{out}\n{err}"
    assert result.get("clean") == "ok", result.get("clean")
    return result


async def test_caller_vanishes_idle_timeout_and_a_bounded_close() -> None:
    r = await partitioned("caller_idle")
    s = r["settings"]
    assert r["reason"] == "idle_timeout"
    assert s["idle_timeout"] <= r["silence"] <= s["idle_timeout"] + MARGIN
    assert r["decided_after_cut"] <= s["idle_timeout"] + MARGIN
    # Our close frame is never ACKed, let alone answered: the carrier close takes close_timeout.
    assert s["close_timeout"] <= r["teardown"] <= s["close_timeout"] + MARGIN
    assert 0 <= r["provider_closed_after_decision"] <= s["close_timeout"] + MARGIN


async def test_caller_vanishes_the_kernel_gives_up_at_tcp_user_timeout() -> None:
    r = await partitioned("caller_tcp_user_timeout")
    s = r["settings"]
    assert r["reason"] == "caller_closed"  # hypercorn reads ETIMEDOUT as a closed connection
    # The first unACKed bytes go out within a ping interval of the cut; the kernel fails the
    # socket tcp_user_timeout later (to within its retransmission timer). Long before idle.
    low = s["tcp_user_timeout"] - SLACK  # bytes sent just before the cut may be the first unACKed
    high = s["tcp_user_timeout"] + s["websocket_ping_interval"] + 2 * MARGIN
    assert low <= r["decided_after_cut"] <= high
    assert r["decided_after_cut"] < s["idle_timeout"]
    assert 0 <= r["provider_closed_after_decision"] <= s["close_timeout"] + MARGIN


async def test_provider_vanishes_upstream_keepalive_timeout() -> None:
    r = await partitioned("provider")
    s = r["settings"]
    assert r["reason"] == "upstream_keepalive_timeout"
    # A ping within keepalive_interval, no pong within pong_timeout: dropped, then resuming dials
    # an address whose SYNs vanish, until the budget is spent.
    low = s["pong_timeout"] + s["reconnect_budget"] - SLACK  # a ping in flight at the cut
    high = s["keepalive_interval"] + low + MARGIN
    assert low <= r["decided_after_cut_low"] and r["decided_after_cut"] <= high
