"""Scenario *soak*: thousands of calls with faults; does the process stay flat?

Calls start at ``rate`` per second, each streaming real-time audio for ``seconds_min`` to
``seconds_max`` seconds, then ending one of three ways: hang up as Twilio does (``stop``, then
media at 50 frames/s and mark echoes until the server's close frame is read, at most
``stop_linger`` seconds, then the caller's own close frame and FIN), stall (go silent with TCP open
and reading -- a zombie that waits for the server until the end of the load), or vanish (TCP
reset). The upstream fake drops a fraction of its sessions (connection aborted) and stalls another
(stops reading and answering pings). voxbridge runs with short deadlines so faults resolve within
the run (``idle_timeout``, ``keepalive_interval``, ``pong_timeout``, ``close_timeout``); the
baselines have none.

Sampled every ``sample_interval`` seconds: RSS and open fds of the server (psutil) and its live
tasks (printed by the server itself). Figures: RSS growth after warm-up (median of the last fifth
of the load against the median of the second fifth), fds and tasks at the end of the load and
after settling (until they are back where they were before the load, every call the peer
counted as started has ended and the fake has no session open, at most ``settle`` seconds)
against before; the cyclic garbage census (:mod:`benchmarks.gcstats`: the objects the peer's
cyclic collector freed between a full collection before the load and one after settling, per
call finished meanwhile; target 0: a finished call is freed by reference counting); the
server's sockets before and after: TCP to callers (told
by the callers' ports: a /metrics scrape hypercorn holds in CLOSE_WAIT does not count) and
upstream by state, and socket fds reset by the other end but never closed (``--smoke`` fails if
voxbridge leaves any socket to a caller or a reset one: a server that stopped reading a caller
keeps it ESTABLISHED or CLOSE_WAIT, or its fd once reset); calls whose record is missing -- for
voxbridge, calls started minus calls ended by any reason on ``/metrics`` (for the naive trio
baseline its own counters; the tutorial keeps no records).
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import psutil

from .common import Proc, fig, positive
from .gcstats import CENSUS_SIGNAL
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
    stop_linger: float = 3.0
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
            stop_linger=1.0,
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


def _census(peer: Proc, timeout: float = 5.0) -> int | None:
    """The objects ``peer``'s cyclic collector has freed so far, counted after a full collection
    it runs when asked (``CENSUS_SIGNAL``; the answer is its next ``stats`` line that says
    ``gc_census``). None: the peer prints no stats (then it has no handler: it is not asked),
    or did not answer in time."""
    if not peer.stats or not peer.alive():
        return None
    asked = time.monotonic()
    peer.popen.send_signal(CENSUS_SIGNAL)
    while time.monotonic() < asked + timeout:
        answers = [line for t, line in peer.stats if t > asked and line.get("gc_census")]
        if answers:
            collected: int | None = answers[0].get("gc_collected")
            return collected
        time.sleep(0.05)
    return None


def _sockets(peer: Proc, upstream: int | None, callers: set[int] | None) -> dict[str, Counter[str]]:
    """The server's sockets by state, listener aside: TCP to ``callers`` (their ports; None: any
    client of the server's port) and to the ``upstream`` port, and ``reset``: socket fds with no
    connection left (reset by the other end, never closed; which end it was is gone with it)."""
    port = urlsplit(peer.url or "").port
    out: dict[str, Counter[str]] = {"carrier": Counter(), "upstream": Counter(), "reset": Counter()}
    fds = f"/proc/{peer.pid}/fd"
    links: list[str] = []
    try:  # connections first: a socket closed in between lowers the fd count, never raises it
        conns = peer.ps.net_connections("all") if peer.ps else []
        for fd in os.listdir(fds):
            with contextlib.suppress(OSError):  # closed meanwhile
                links.append(os.readlink(f"{fds}/{fd}"))
    except (psutil.Error, OSError):  # exited
        return out
    for c in conns:
        if c.raddr and c.laddr.port == port and (callers is None or c.raddr.port in callers):
            out["carrier"][c.status] += 1
        elif c.raddr and c.raddr.port == upstream:
            out["upstream"][c.status] += 1
    out["reset"]["CLOSE"] = sum(link.startswith("socket:") for link in links) - len(conns)
    return {side: +states for side, states in out.items()}  # + drops the zero counts


def run(bench: Bench, params: Params) -> dict[str, Any]:
    """Soak every peer; series and figures."""
    result: dict[str, Any] = {"title": TITLE, "params": vars(params), "peers": {}, "series": {}}
    settings = {
        "idle_timeout": params.idle_timeout,
        "keepalive_interval": params.keepalive_interval,
        "pong_timeout": params.pong_timeout,
        "close_timeout": params.close_timeout,
    }
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
                        bench, key, peer, fake, params
                    )
                    peer.terminate()
                    bench.advance(task)
            finally:
                bench.retire(*peers.values())
        finally:
            bench.retire(fake)
    note = (
        "soak: the server's sockets left after the run, to callers / upstream / reset: "
        + ", ".join(
            f"{key} " + " / ".join(_left(figs, side) for side in ("carrier", "upstream", "reset"))
            for key, figs in result["peers"].items()
        )
    )
    bench.notes.append(note)  # report.md prints the notes
    bench.log(note)
    return result


def soak_one(
    bench: Bench, key: str, peer: Proc, fake: Proc, params: Params
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    warm_up(bench, peer, f"soak-{key}")
    time.sleep(max(0.3 if bench.smoke else 1.0, params.sample_interval * 2))
    series: dict[str, list[float]] = {"t": [], "rss": [], "fds": [], "tasks": []}
    start = time.monotonic() + bench.lead

    def sample() -> dict[str, Any]:
        """RSS, fds and tasks now, appended to the series too."""
        now: dict[str, Any] = {"t": time.monotonic() - start, "rss": peer.rss()}
        now.update(fds=peer.fds(), tasks=_tasks(peer))
        for name, value in now.items():
            series[name].append(math.nan if value is None else value)
        return now

    upstream = urlsplit(fake.url or "").port
    collected_before = _census(peer)
    ended_before = _records(key, bench.scrape(peer))[1]
    before, sockets_before = sample(), _sockets(peer, upstream, None)
    fake.command("reset")
    duration = params.calls / params.rate
    end = start + duration + params.seconds_max + params.stop_linger
    spec = {
        "url": bench.media_url(peer),
        "start_at": start,
        "stream_until": end + 60,
        "deadline": end + 20,
        "frames": math.ceil((params.seconds_max + params.stop_linger) / 0.02) + 100,
        "soak": {
            "calls": params.calls,
            "rate": params.rate,
            "seconds": [params.seconds_min, params.seconds_max],
            "mix": {"stall": params.caller_stall, "vanish": params.caller_vanish},
            "zombie_until": end,  # silent callers stay until the load ends
            "linger": params.stop_linger,
        },
    }
    run_ = bench.load(f"soak-{key}", spec)
    progress = bench.progress.add_task(f"  soak {key}: {params.calls} calls", total=params.calls)
    try:
        while time.monotonic() < run_.deadline + 10 and any(p.alive() for p in run_.procs):
            done = min(params.calls, max(0.0, sample()["t"] * params.rate))
            bench.progress.update(progress, completed=done)
            time.sleep(params.sample_interval)
        load_end = sample()
        waited = time.monotonic()
        load = run_.wait()
        waited = time.monotonic() - waited
    finally:
        run_.stop()
        bench.progress.remove_task(progress)
    # settle: until the peer looks idle again -- fds and tasks back where they were, every call
    # it started ended (where it counts them), no upstream session open -- at most ``settle`` s
    settle_until = time.monotonic() + params.settle
    while time.monotonic() < settle_until:
        now = sample()
        if now["fds"] <= before["fds"] and (
            now["tasks"] is None or before["tasks"] is None or now["tasks"] <= before["tasks"]
        ):
            started, ended = _records(key, bench.scrape(peer))
            if started == ended and fake.command("stats")["open_since_reset"] == 0:
                break
        time.sleep(params.sample_interval)
    settled = time.monotonic() - (settle_until - params.settle)
    after, sockets_after = sample(), _sockets(peer, upstream, set(load.pop("ports", ())))
    up = fake.command("stats")
    started, ended = _records(key, bench.scrape(peer))
    collected_after = _census(peer)
    # calls finished during the soak: the peer's own count, else the generator's
    finished = ended - ended_before if ended is not None and ended_before is not None else None
    finished = finished if finished else load["calls"]
    garbage = (
        (collected_after - collected_before) / finished
        if collected_after is not None and collected_before is not None and finished
        else None
    )
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
            "stop_unanswered": load.get("stop_unanswered", 0),
            "still_open_at_exit": load.get("still_open", 0),
            "waited_s": round(waited, 1),
        },
        "upstream_faults": up.get("faults", {}),
        "rss_growth_after_warmup": fig(growth, "%"),
        "rss_max": fig(max(series["rss"]) if series["rss"] else None, "bytes"),
        "fds_max": fig(max(series["fds"]) if series["fds"] else None, "fds"),
        "records_started": fig(started, "calls"),
        "records_ended": fig(ended, "calls"),
        "missing_records": fig(
            missing, "calls", note="" if missing is not None else "this peer keeps no call records"
        ),
        "upstream_open_after": fig(up.get("open_since_reset"), "sessions"),
        "cyclic_garbage_per_call": fig(
            garbage,
            "objects",
            note="objects the cyclic collector freed per finished call, between full "
            "collections before the load and after settling (target 0)",
        ),
        "settle": fig(settled, "s", note="until the peer was idle again, at most the settle limit"),
    }
    for when, reading in (("before", before), ("load_end", load_end), ("after", after)):
        for name, unit in (("rss", "bytes"), ("fds", "fds"), ("tasks", "tasks")):
            figs[f"{name}_{when}"] = fig(reading[name], unit)
    for when, sockets in (("before", sockets_before), ("after", sockets_after)):
        for side, states in sockets.items():
            figs[f"{side}_sockets_{when}"] = fig(sum(states.values()), "sockets", states=states)
    return figs, series


def _left(figs: dict[str, Any], side: str) -> str:
    """What ``side`` sockets were left after the run, by state ("none")."""
    states = figs[f"{side}_sockets_after"]["states"].items()
    return " ".join(f"{state} {n}" for state, n in states) or "none"


def check(result: dict[str, Any]) -> list[str]:
    problems = []
    for key, figs in result["peers"].items():
        names = ("calls_opened", "rss_before", "rss_after", "fds_before", "fds_after")
        problems += [
            f"soak {key}: {n} = {figs[n]['value']}" for n in names if not positive(figs[n]["value"])
        ]
        if not result["series"][key]["t"]:
            problems.append(f"soak {key}: no samples")
        reset = figs["reset_sockets_after"]["value"] - figs["reset_sockets_before"]["value"]
        if key.startswith("voxbridge") and (figs["carrier_sockets_after"]["value"] or reset > 0):
            problems.append(
                f"soak {key}: sockets left after the run: to callers {_left(figs, 'carrier')}, "
                f"reset but never closed {_left(figs, 'reset')} (before: "
                f"{figs['reset_sockets_before']['value']})"
            )
    vox = result["peers"].get("voxbridge")
    if vox is not None and vox["missing_records"]["value"] is None:
        problems.append("soak voxbridge: no records on /metrics")
    return problems


def main(argv: list[str] | None = None) -> int:
    from .run import main as run_main

    return run_main(argv, only=[NAME])


if __name__ == "__main__":
    sys.exit(main())
