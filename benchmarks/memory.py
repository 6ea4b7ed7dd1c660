"""Scenario *memory*: resident memory per established call.

Each peer first serves a few short warm-up calls (so one-off allocations are not charged to the
calls), then its idle RSS is read. N calls connect (``ramp_rate`` per second) and stay up, each
sending one frame every ``trickle`` seconds that the echo upstream plays back, so every call is
established in both directions with traffic flowing. Once all are up and ``settle`` seconds have
passed, RSS and open file descriptors are read again. RSS per call = (RSS held - RSS idle) / calls
held. The RSS after the calls ended is recorded too, and the live tasks per call held (each peer
prints its task count: trio tasks walked from the root task, asyncio's ``all_tasks``), which is
where much of a trio call's memory goes (every task and cancel scope is a few objects).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

from .common import Proc, fig, positive
from .harness import Bench

NAME = "memory"
TITLE = "Memory: RSS per established call"


@dataclass
class Params:
    """Memory parameters."""

    calls: int = 1000
    ramp_rate: float = 50.0
    trickle: float = 5.0
    settle: float = 3.0

    @classmethod
    def smoke(cls) -> Params:
        return cls(calls=30, ramp_rate=300.0, trickle=0.2, settle=0.3)


def warm_up(bench: Bench, peer: Proc, label: str, calls: int = 10, seconds: float = 1.0) -> None:
    """A few short calls through ``peer`` so its one-off allocations happen before a reading."""
    if bench.smoke:  # toy size: the harness is checked, not the figure
        return
    start = time.monotonic() + bench.lead
    spec = {
        "url": bench.media_url(peer),
        "calls": calls,
        "start_at": start,
        "ramp": 0.2,
        "stream_until": start + 0.2 + seconds,
        "grace": 0.2,
        "after": "stop",
        "deadline": start + seconds + 15,
        "frames": 200,
    }
    run = bench.load(f"{label}-warmup", spec, procs=1)
    try:
        run.wait()
    finally:
        run.stop()
    time.sleep(0.1 if bench.smoke else 0.5)


def tasks_after(peer: Proc, when: float, timeout: float = 3.0) -> int | None:
    """The peer's live tasks from its first ``stats`` line printed after ``when`` (monotonic)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [s for t, s in peer.stats if t > when]
        if lines:
            tasks: int | None = lines[0].get("tasks")
            return tasks
        time.sleep(0.05)
    return None


def run(bench: Bench, params: Params) -> dict[str, Any]:
    """Hold N calls on every peer; RSS per call."""
    result: dict[str, Any] = {"title": TITLE, "params": vars(params), "peers": {}}
    with bench.scenario(NAME, len(bench.peers)) as task:
        fake = bench.fake("echo", tag="-memory")
        try:
            assert fake.url is not None
            peers = bench.start_peers(fake.url, tag="-memory", stats_interval=0.1)
            try:
                for key, peer in peers.items():
                    warm_up(bench, peer, f"memory-{key}")
                    rss_idle, fds_idle = peer.rss(), peer.fds()
                    tasks_idle = tasks_after(peer, time.monotonic())
                    fake.command("reset")
                    start = time.monotonic() + bench.lead
                    ramp = params.calls / params.ramp_rate
                    held_at = start + ramp + params.settle
                    spec = {
                        "url": bench.media_url(peer),
                        "calls": params.calls,
                        "start_at": start,
                        "ramp": ramp,
                        "interval": params.trickle,
                        "stream_until": held_at + 0.5,
                        "grace": 0.3,
                        "after": "stop",
                        "deadline": held_at + 30,
                        "frames": 1000,
                    }
                    run_ = bench.load(f"memory-{key}", spec)
                    try:
                        bench.sleep_until(held_at, f"memory {key}: {params.calls} calls connect")
                        rss_held, fds_held = peer.rss(), peer.fds()
                        tasks_held = tasks_after(peer, time.monotonic())
                        up = fake.command("stats")
                        load = run_.wait()
                    finally:
                        run_.stop()
                    time.sleep(0.2 if bench.smoke else 1.0)
                    rss_after, fds_after = peer.rss(), peer.fds()
                    held = min(load["opened"], up["open_since_reset"])
                    per_call = (rss_held - rss_idle) / held if held else None
                    result["peers"][key] = {
                        "calls": fig(params.calls, "calls"),
                        "calls_held": fig(held, "calls"),
                        "rss_idle": fig(rss_idle, "bytes"),
                        "rss_held": fig(rss_held, "bytes"),
                        "rss_after": fig(rss_after, "bytes"),
                        "rss_per_call": fig(
                            per_call / 1024 if per_call is not None else None, "KiB"
                        ),
                        "fds_idle": fig(fds_idle, "fds"),
                        "fds_held": fig(fds_held, "fds"),
                        "fds_after": fig(fds_after, "fds"),
                        "fds_per_call": fig((fds_held - fds_idle) / held if held else None, "fds"),
                        "tasks_idle": fig(tasks_idle, "tasks"),
                        "tasks_held": fig(tasks_held, "tasks"),
                        "tasks_per_call": fig(
                            (tasks_held - tasks_idle) / held
                            if held and tasks_held is not None and tasks_idle is not None
                            else None,
                            "tasks",
                        ),
                    }
                    peer.terminate()
                    bench.advance(task)
            finally:
                bench.retire(*peers.values())
        finally:
            bench.retire(fake)
    return result


def check(result: dict[str, Any]) -> list[str]:
    problems = []
    for key, figs in result["peers"].items():
        value = figs["rss_per_call"]["value"]
        if not positive(value):
            problems.append(f"memory {key}: rss_per_call = {value}")
        if figs["calls_held"]["value"] != figs["calls"]["value"]:
            problems.append(f"memory {key}: held {figs['calls_held']['value']} calls")
    return problems


def main(argv: list[str] | None = None) -> int:
    from .run import main as run_main

    return run_main(argv, only=[NAME])


if __name__ == "__main__":
    sys.exit(main())
