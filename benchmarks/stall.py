"""Scenario *stall*: zombie callers -- silent, TCP left open -- at scale.

N calls connect (``ramp_rate`` per second) and trickle one frame every ``trickle`` seconds (so
none is idle while the others connect), then all go silent within ``spread`` seconds of each other
with their TCP connections open and still reading. With ``spread`` equal to the idle timeout (the
default) the last call goes silent just as the first one's timeout fires: N concurrent stalled
calls, their timeouts firing at N / ``spread`` per second. (A smaller spread makes the teardowns
burstier; on one core they then queue behind each other, which is CPU, not deadline, behaviour.)
The defaults are the target's size: 5,000 concurrent stalled calls, ``idle_timeout`` and
``spread`` 10 s (500 teardowns a second), a frame every 5 s each until then (1,000 frames a
second in all, so the trickle does not load the core the teardowns need). voxbridge runs with
that ``idle_timeout``; the baselines have no such deadline.

Figures, measured by the upstream fake on its side of the bridge:

* per call, the time from the send of the caller's last frame (decoded from the audio the fake
  received) to the upstream TCP connection being closed, minus ``idle_timeout``: p50, p99, max;
* calls closed early: before ``idle_timeout`` had passed since the caller's last frame (never
  right; the harness reports it as a problem);
* orphaned upstream sockets: connections still open ``orphan_wait`` (5 s) after every call's idle
  timeout has passed. The baselines keep every one open -- that is what they do, and it is reported
  as measured.

The caller's own view (last frame sent to the server's close) is recorded too.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any

from .common import fig, percentile
from .harness import Bench
from .wire import elapsed_us

NAME = "stall"
TITLE = "Stall: teardown of silent callers with TCP open"


@dataclass
class Params:
    """Stall parameters."""

    calls: int = 5000
    idle_timeout: float = 10.0
    ramp_rate: float = 100.0
    trickle: float = 5.0
    spread: float = 10.0
    orphan_wait: float = 5.0

    @classmethod
    def smoke(cls) -> Params:
        return cls(
            calls=30, idle_timeout=0.3, ramp_rate=300.0, trickle=0.1, spread=0.1, orphan_wait=0.5
        )


def _summary(delays_ms: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(delays_ms, 50),
        "p99": percentile(delays_ms, 99),
        "max": max(delays_ms) if delays_ms else math.nan,
    }


def run(bench: Bench, params: Params) -> dict[str, Any]:
    """Stall every peer's calls; teardown delays, orphans."""
    result: dict[str, Any] = {"title": TITLE, "params": vars(params), "peers": {}, "delays": {}}
    idle_us = params.idle_timeout * 1e6
    with bench.scenario(NAME, len(bench.peers)) as task:
        fake = bench.fake("silent", tag="-stall")
        try:
            assert fake.url is not None
            peers = bench.start_peers(
                fake.url,
                tag="-stall",
                settings={"idle_timeout": params.idle_timeout},
                stats_interval=0.25,
            )
            try:
                for key, peer in peers.items():
                    fake.command("reset")
                    start = time.monotonic() + bench.lead
                    ramp = params.calls / params.ramp_rate
                    silent = start + ramp + max(0.3 if bench.smoke else 1.0, 2 * params.trickle)
                    check_at = silent + params.spread + params.idle_timeout + params.orphan_wait
                    spec = {
                        "url": bench.media_url(peer),
                        "calls": params.calls,
                        "start_at": start,
                        "ramp": ramp,
                        "interval": params.trickle,
                        "stream_until": silent,
                        "stream_spread": params.spread,
                        "grace": 0.0,
                        "after": "hold",
                        "hold_until": check_at + (0.1 if bench.smoke else 0.5),
                        "window": [start, silent],
                        "deadline": check_at + 20,
                        "frames": 1000,
                    }
                    run_ = bench.load(f"stall-{key}", spec)
                    try:
                        bench.sleep_until(silent, f"stall {key}: {params.calls} calls connect")
                        rss = peer.rss()
                        fds = peer.fds()
                        cpu0 = peer.cpu()
                        teardowns_end = silent + params.spread + params.idle_timeout + 1.0
                        bench.sleep_until(teardowns_end, f"stall {key}: silent")
                        cpu = (peer.cpu() - cpu0) / (teardowns_end - silent)
                        gc_max = max(
                            (
                                s.get("gc_max_ms", 0.0)
                                for t, s in peer.stats
                                if silent <= t <= teardowns_end + 0.3
                            ),
                            default=None,
                        )
                        bench.sleep_until(check_at, f"stall {key}: orphans?")
                        up = fake.command("stats delays")
                        load = run_.wait()
                    finally:
                        run_.stop()
                    teardown = [(us - idle_us) / 1000 for us in up["teardown_us"]]
                    close_frame = [(us - idle_us) / 1000 for us in up["close_frame_us"]]
                    caller = [
                        (elapsed_us(last, closed) - idle_us) / 1000
                        for last, closed in zip(
                            load["last_sent_us"], load["closed_us"], strict=True
                        )
                        if last is not None and closed is not None
                    ]
                    # a baseline never closes: how long its orphans had been silent at the check
                    silent_for = [
                        elapsed_us(last, up["now_us"]) / 1e6 for last in up["last_audio_open_us"]
                    ]
                    td, cf = _summary(teardown), _summary(close_frame)
                    result["peers"][key] = {
                        "calls": fig(params.calls, "calls"),
                        "calls_opened": fig(load["opened"], "calls"),
                        "upstream_sessions": fig(up["opened"], "sessions"),
                        "closed_by_bridge": fig(len(teardown), "sessions"),
                        "orphaned": fig(up["open_since_reset"], "sessions"),
                        # closed before idle_timeout had passed since the last frame was sent:
                        # never right (the bridge hears a frame after it was sent)
                        "closed_early": fig(sum(1 for ms in teardown if ms < 0), "sessions"),
                        "teardown_p50": fig(td["p50"], "ms", note="minus idle_timeout"),
                        "teardown_p99": fig(td["p99"], "ms", note="minus idle_timeout"),
                        "teardown_max": fig(td["max"], "ms", note="minus idle_timeout"),
                        "close_frame_p99": fig(cf["p99"], "ms", note="minus idle_timeout"),
                        "caller_close_p99": fig(
                            percentile(caller, 99), "ms", note="caller's view, minus idle_timeout"
                        ),
                        "orphans_silent_min": fig(min(silent_for) if silent_for else None, "s"),
                        "server_cpu_pct_stalling": fig(
                            cpu * 100, "% of a core", note="from going silent to timeouts + 1 s"
                        ),
                        "server_gc_pause_max": fig(
                            gc_max, "ms", note="longest garbage-collector pause meanwhile"
                        ),
                        "server_rss_stalled": fig(rss, "bytes"),
                        "server_fds_stalled": fig(fds, "fds"),
                    }
                    result["delays"][key] = teardown
                    peer.terminate()
                    bench.advance(task)
            finally:
                bench.retire(*peers.values())
        finally:
            bench.retire(fake)
    return result


def check(result: dict[str, Any]) -> list[str]:
    problems = []
    vox = result["peers"].get("voxbridge")
    if vox is not None:
        if vox["orphaned"]["value"] != 0:
            problems.append(f"stall voxbridge: {vox['orphaned']['value']} orphaned sockets")
        if vox["closed_by_bridge"]["value"] != vox["calls"]["value"]:
            problems.append("stall voxbridge: not every upstream session was closed")
        if vox.get("closed_early", {}).get("value"):
            problems.append(
                f"stall voxbridge: {vox['closed_early']['value']} sessions closed before"
                " idle_timeout had passed since the caller's last frame"
            )
        p99 = vox["teardown_p99"]["value"]
        if p99 is None or not math.isfinite(p99) or p99 < 0:
            problems.append(f"stall voxbridge: teardown p99 = {p99}")
    for key, figs in result["peers"].items():
        if figs["upstream_sessions"]["value"] != figs["calls"]["value"]:
            problems.append(f"stall {key}: {figs['upstream_sessions']['value']} upstream sessions")
    return problems


def main(argv: list[str] | None = None) -> int:
    from .run import main as run_main

    return run_main(argv, only=[NAME])


if __name__ == "__main__":
    sys.exit(main())
