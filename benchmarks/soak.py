"""Scenario *soak*: thousands of calls with faults; does the process stay flat?

Calls start at ``rate`` per second, each streaming real-time audio for ``seconds_min`` to
``seconds_max`` seconds, then ending one of three ways: hang up normally (Twilio's ``stop`` and a
close), stall (go silent with TCP open and reading -- a zombie that waits for the server until the
end of the load), or vanish (TCP reset). The upstream fake drops a fraction of its sessions
(connection aborted) and stalls another (stops reading and answering pings). voxbridge runs with
short deadlines so faults resolve within the run (``idle_timeout``, ``keepalive_interval``,
``pong_timeout``, and voxbridge's default ``close_timeout``); the baselines have none.

Sampled every ``sample_interval`` seconds: RSS and open fds of the server (psutil) and its live
tasks (printed by the server itself). Figures: RSS growth after warm-up (median of the last fifth
of the load against the median of the second fifth), fds and tasks at the end of the load and
after settling (until they are back where they were before the load, every call the peer
counted as started has ended and the fake has no session open, at most ``settle`` seconds:
hypercorn's per-connection ping task outlives a closed WebSocket by up to one ping interval,
15 s in voxbridge) against before, and calls whose record is missing -- for voxbridge, calls started
minus calls ended by any reason on ``/metrics`` (for the naive trio baseline its own counters; the
tutorial keeps no records).
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from .common import Proc, fig
from .harness import Bench
from .memory import warm_up

NAME = "soak"
TITLE = "Soak: calls with faults over time"


@dataclass
class Params:
    """Soak parameters."""

    calls: int = 10000
    rate: float = 20.0
    seconds_min: float = 0.2
    seconds_max: float = 0.8
    caller_stall: float = 0.1
    caller_vanish: float = 0.1
    upstream_drop: float = 0.05
    upstream_stall: float = 0.05
    idle_timeout: float = 2.0
    keepalive_interval: float = 2.0
    pong_timeout: float = 2.0
    close_timeout: float = 2.0
    sample_interval: float = 0.5
    settle: float = 18.0

    @classmethod
    def smoke(cls) -> Params:
        return cls(
            calls=30,
            rate=60.0,
            seconds_min=0.2,
            seconds_max=0.4,
            idle_timeout=0.3,
            keepalive_interval=0.3,
            pong_timeout=0.3,
            close_timeout=0.3,
            sample_interval=0.1,
            settle=0.8,
        )


def _records(key: str, metrics: dict[str, float]) -> tuple[float | None, float | None]:
    """(calls started, calls ended) from a peer's /metrics, where it keeps them."""
    if key.startswith("voxbridge"):
        started = sum(
            v for k, v in metrics.items() if k.startswith("voxbridge_calls_started_total")
        )
        ended = sum(
            v for k, v in metrics.items() if k.startswith("voxbridge_call_disconnects_total")
        )
        return started, ended
    if key == "trio":
        return metrics.get("bridge_calls_started_total"), metrics.get("bridge_calls_ended_total")
    return None, None


def _tasks(peer: Proc) -> int | None:
    return peer.stats[-1][1].get("tasks") if peer.stats else None


def run(bench: Bench, params: Params) -> dict[str, Any]:
    """Soak every peer; series and figures."""
    result: dict[str, Any] = {"title": TITLE, "params": vars(params), "peers": {}, "series": {}}
    settings = {
        "idle_timeout": params.idle_timeout,
        "keepalive_interval": params.keepalive_interval,
        "pong_timeout": params.pong_timeout,
        "close_timeout": params.close_timeout,
    }
    duration = params.calls / params.rate
    with bench.scenario(NAME, len(bench.peers)) as task:
        fake = bench.fake(
            "echo",
            tag="-soak",
            drop=params.upstream_drop,
            stall=params.upstream_stall,
        )
        try:
            assert fake.url is not None
            interval = min(params.sample_interval, 0.5)
            peers = bench.start_peers(
                fake.url, tag="-soak", settings=settings, stats_interval=interval
            )
            try:
                for key, peer in peers.items():
                    result["peers"][key], result["series"][key] = soak_one(
                        bench, key, peer, fake, params, duration
                    )
                    peer.terminate()
                    bench.advance(task)
            finally:
                bench.retire(*peers.values())
        finally:
            bench.retire(fake)
    return result


def soak_one(
    bench: Bench, key: str, peer: Proc, fake: Proc, params: Params, duration: float
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    warm_up(bench, peer, f"soak-{key}")
    time.sleep(max(0.3 if bench.smoke else 1.0, params.sample_interval * 2))
    rss0, fds0, tasks0 = peer.rss(), peer.fds(), _tasks(peer)
    fake.command("reset")
    start = time.monotonic() + bench.lead
    end = start + duration + params.seconds_max
    spec = {
        "url": bench.media_url(peer),
        "start_at": start,
        "stream_until": end + 60,
        "deadline": end + 20,
        "frames": math.ceil(params.seconds_max / 0.02) + 100,
        "soak": {
            "calls": params.calls,
            "rate": params.rate,
            "seconds": [params.seconds_min, params.seconds_max],
            "mix": {"stall": params.caller_stall, "vanish": params.caller_vanish},
            "zombie_until": end,  # silent callers stay until the load ends
        },
    }
    series: dict[str, list[float]] = {"t": [], "rss": [], "fds": [], "tasks": []}
    run_ = bench.load(f"soak-{key}", spec)
    progress = bench.progress.add_task(f"  soak {key}: {params.calls} calls", total=params.calls)
    try:
        now = time.monotonic()
        while now < run_.deadline + 10 and any(p.alive() for p in run_.procs):
            series["t"].append(now - start)
            series["rss"].append(peer.rss())
            series["fds"].append(peer.fds())
            tasks = _tasks(peer)
            series["tasks"].append(tasks if tasks is not None else math.nan)
            done = max(0.0, min(params.calls, (now - start) * params.rate))
            bench.progress.update(progress, completed=done)
            time.sleep(params.sample_interval)
            now = time.monotonic()
        rss_load_end, fds_load_end, tasks_load_end = peer.rss(), peer.fds(), _tasks(peer)
        waited = time.monotonic()
        load = run_.wait()
        waited = time.monotonic() - waited
    finally:
        run_.stop()
        bench.progress.remove_task(progress)
    # settle: until the peer looks idle again -- fds and tasks back where they were, every call
    # it started ended (where it counts them), no upstream session open -- at most ``settle`` s
    settle_until = time.monotonic() + params.settle
    while (now := time.monotonic()) < settle_until:
        series["t"].append(now - start)
        series["rss"].append(peer.rss())
        fds = peer.fds()
        series["fds"].append(fds)
        tasks = _tasks(peer)
        series["tasks"].append(tasks if tasks is not None else math.nan)
        if fds <= fds0 and (tasks is None or tasks0 is None or tasks <= tasks0):
            started, ended = _records(key, bench.scrape(peer))
            if started == ended and fake.command("stats")["open_since_reset"] == 0:
                break
        time.sleep(params.sample_interval)
    settled = time.monotonic() - (settle_until - params.settle)
    rss1, fds1, tasks1 = peer.rss(), peer.fds(), _tasks(peer)
    up = fake.command("stats")
    started, ended = _records(key, bench.scrape(peer))
    # RSS growth after warm-up: the load phase split in fifths, 2nd vs 5th
    load_rss = [r for t, r in zip(series["t"], series["rss"], strict=True) if 0 <= t <= duration]
    fifth = max(1, len(load_rss) // 5)
    early = statistics.median(load_rss[fifth : 2 * fifth]) if len(load_rss) >= 5 else math.nan
    late = statistics.median(load_rss[-fifth:]) if len(load_rss) >= 5 else math.nan
    growth = (late - early) / early * 100 if early and math.isfinite(early) else math.nan
    missing = started - ended if started is not None and ended is not None else None
    figs = {
        "calls": fig(load["calls"], "calls"),
        "calls_opened": fig(load["opened"], "calls"),
        "kinds": load.get("kinds", {}),
        "generator": {
            "close_codes": load.get("close_codes", {}),
            "rejected": load.get("rejected", {}),
            "connect_errors": load.get("connect_errors", 0),
            "still_open_at_exit": load.get("still_open", 0),
            "waited_s": round(waited, 1),
        },
        "upstream_faults": up.get("faults", {}),
        "rss_before": fig(rss0, "bytes"),
        "rss_load_end": fig(rss_load_end, "bytes"),
        "rss_after": fig(rss1, "bytes"),
        "rss_growth_after_warmup": fig(growth, "%"),
        "rss_max": fig(max(series["rss"]) if series["rss"] else None, "bytes"),
        "fds_before": fig(fds0, "fds"),
        "fds_load_end": fig(fds_load_end, "fds"),
        "fds_after": fig(fds1, "fds"),
        "fds_max": fig(max(series["fds"]) if series["fds"] else None, "fds"),
        "tasks_before": fig(tasks0, "tasks"),
        "tasks_load_end": fig(tasks_load_end, "tasks"),
        "tasks_after": fig(tasks1, "tasks"),
        "records_started": fig(started, "calls"),
        "records_ended": fig(ended, "calls"),
        "missing_records": fig(
            missing, "calls", note="" if missing is not None else "this peer keeps no call records"
        ),
        "upstream_open_after": fig(up.get("open_since_reset"), "sessions"),
        "settle": fig(settled, "s", note="until the peer was idle again, at most the settle limit"),
    }
    return figs, series


def check(result: dict[str, Any]) -> list[str]:
    problems = []
    for key, figs in result["peers"].items():
        if not figs["calls_opened"]["value"]:
            problems.append(f"soak {key}: no call connected")
        for name in ("rss_before", "rss_after", "fds_before", "fds_after"):
            value = figs[name]["value"]
            if not value or value <= 0:
                problems.append(f"soak {key}: {name} = {value}")
        if not result["series"][key]["t"]:
            problems.append(f"soak {key}: no samples")
    vox = result["peers"].get("voxbridge")
    if vox is not None and vox["missing_records"]["value"] is None:
        problems.append("soak voxbridge: no records on /metrics")
    return problems


def main(argv: list[str] | None = None) -> int:
    from .run import main as run_main

    return run_main(argv, only=[NAME])


if __name__ == "__main__":
    sys.exit(main())
