"""Scenario *capacity*: how many real-time calls fit on one core.

The server is pinned to one core. A *window* is a fresh set of N real-time callers with the echo
upstream, measured for ``seconds`` after a ``warmup``; it passes when the round trip's p99 is at
most ``p99_ms`` (20 ms, plus the window of a peer that batches on purpose), at most ``loss_pct``
(0.1 %) of frames are lost and every call connected. A *step* (N calls) is judged by ``repeats``
windows: it passes when ``need`` of them pass (2 of 3 by default, so one noisy window -- a
garbage collection, a slow spell of the shared machine -- decides nothing either way). Windows
stop as soon as the verdict is certain (two passes, or two failures, of three).

The search: steps grow by ``factor`` from ``start`` until one fails, then bisect between the
largest passing step and the smallest failing one until they are within ``resolution`` of the
former (10 %, at least one call): finer steps near the knee. The figure is the largest passing
step: real-time calls per core. The peers ramp side by side, one window each in turn, so the
windows of one step are minutes apart and a slow spell is shared rather than pinned on one peer.
The round trip crosses the bridge twice (caller to agent and back), so this is a strict reading of
"added latency". Every window also records the load side's CPU: one where the generators and the
fake used more than 90 % of their cores is flagged, its verdict is the load's, not the server's.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import sys
from dataclasses import dataclass, field
from typing import Any

from .common import fig, positive
from .harness import PEERS, Bench, ratio
from .relay import figures, measure

NAME = "capacity"
TITLE = "Capacity: real-time calls per core"


@dataclass
class Params:
    """Capacity search parameters."""

    start: int = 10
    factor: float = 1.4
    resolution: float = 0.1
    max_calls: int = 400
    max_steps: int = 10
    repeats: int = 3
    need: int = 2
    seconds: float = 6.0
    warmup: float = 1.5
    p99_ms: float = 20.0
    loss_pct: float = 0.1

    @classmethod
    def smoke(cls) -> Params:
        # one step; a second window only if the first fails (the search is unit-tested)
        return cls(start=3, max_steps=1, repeats=2, need=1, seconds=0.5, warmup=0.1)


@dataclass
class Search:
    """One peer's search for its largest passing step; the scenario feeds it window verdicts.

    Pure bookkeeping (no processes, no clock), so the search itself is unit-tested.
    """

    params: Params
    calls: int | None = None  #: the step being measured (None once the search is over)
    passed: int | None = None  #: the largest passing step so far
    failed: int | None = None  #: the smallest failing step so far
    steps: list[dict[str, Any]] = field(default_factory=list)
    _windows: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.calls = max(1, self.params.start)

    def record(self, ok: bool) -> dict[str, Any] | None:
        """One window of the current step passed or not; returns the step's verdict once it is
        certain (``{"calls", "passed", "windows"}``, also kept in :attr:`steps`), else None."""
        assert self.calls is not None, "the search is over"
        p = self.params
        self._windows.append(ok)
        passes = sum(self._windows)
        fails = len(self._windows) - passes
        if passes < p.need and fails <= p.repeats - p.need:
            return None  # not certain yet: another window of the same step
        step = {"calls": self.calls, "passed": passes >= p.need, "windows": self._windows}
        self.steps.append(step)
        self._windows = []
        if step["passed"]:
            self.passed = self.calls
        else:
            self.failed = self.calls
        self.calls = self._next()
        return step

    def _next(self) -> int | None:
        p = self.params
        if len(self.steps) >= p.max_steps:
            return None
        low = self.passed or 0
        if self.failed is None:  # still climbing
            assert self.passed is not None
            up = min(p.max_calls, max(self.passed + 1, math.ceil(self.passed * p.factor)))
            return up if up > self.passed else None
        if self.failed - low <= max(1, math.floor(low * p.resolution)):
            return None
        return (low + self.failed) // 2 or None


def _window(
    figs: dict[str, Any], calls: int, limit_ms: float, params: Params, cores: int
) -> dict[str, Any]:
    """One window's verdict and figures from :func:`benchmarks.relay.figures`."""
    p99, loss = figs["latency_p99"]["value"], figs["loss_pct"]["value"]
    load_pct = figs["generator_cpu_pct"]["value"] + figs["fake_cpu_pct"]["value"]
    return {
        "passed": p99 is not None
        and p99 <= limit_ms
        and loss is not None
        and loss <= params.loss_pct
        and figs["calls_opened"]["value"] == calls,
        "p50_ms": figs["latency_p50"]["value"],
        "p99_ms": p99,
        "loss_pct": loss,
        "server_cpu_pct": figs["server_cpu_pct"]["value"],
        "load_cpu_pct": load_pct,
        "load_bound": load_pct > 90 * max(1, cores),
        "cpu_per_call_second": figs["cpu_per_call_second"]["value"],
    }


def _median(values: list[float | None]) -> float | None:
    present = [x for x in values if x is not None]
    return statistics.median(present) if present else None


def run(bench: Bench, params: Params) -> dict[str, Any]:
    """Search every peer's capacity, the peers side by side; calls per core and ratios."""
    result: dict[str, Any] = {"title": TITLE, "params": vars(params), "peers": {}}
    windows: dict[str, dict[int, list[dict[str, Any]]]] = {}
    searches: dict[str, Search] = {}
    with bench.scenario(NAME, len(bench.peers)) as task, contextlib.ExitStack() as stack:
        fake = bench.fake("echo", tag="-capacity")
        stack.callback(bench.retire, fake)
        assert fake.url is not None
        peers = bench.start_peers(fake.url, tag="-capacity")
        stack.callback(bench.retire, *peers.values())
        searches = {key: Search(params) for key in peers}
        windows = {key: {} for key in peers}
        while any(s.calls is not None for s in searches.values()):
            for key, peer in peers.items():
                search = searches[key]
                n = search.calls
                if n is None:
                    continue
                raw = measure(
                    bench,
                    peer,
                    fake,
                    calls=n,
                    seconds=params.seconds,
                    warmup=params.warmup,
                    label=f"capacity {key} {n} calls, window {len(windows[key].get(n, [])) + 1}",
                )
                limit_ms = params.p99_ms + PEERS[key].batch_ms  # beyond any batching window
                window = _window(figures(raw), n, limit_ms, params, len(bench.load_cpus))
                windows[key].setdefault(n, []).append(window)
                search.record(window["passed"])
                if search.calls is None:
                    peer.terminate()  # done: its core is quiet for the others
                    bench.advance(task)
    for key, search in searches.items():
        result["peers"][key] = _peer_figures(search, windows[key])
    vox = result["peers"].get("voxbridge")
    result["ratios"] = {
        f"calls_per_core.voxbridge/{key}": ratio(
            vox["calls_per_core"]["value"], figs["calls_per_core"]["value"]
        )
        for key, figs in result["peers"].items()
        if vox is not None and key != "voxbridge"
    }
    return result


def _peer_figures(search: Search, windows: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """A peer's capacity and every step, each step's figures the median of its windows."""
    steps = []
    for step in search.steps:
        runs = windows[step["calls"]]
        summary: dict[str, Any] = {"calls": step["calls"], "passed": step["passed"]}
        for name in ("p50_ms", "p99_ms", "loss_pct", "server_cpu_pct", "load_cpu_pct"):
            summary[name] = _median([w[name] for w in runs])
        summary["cpu_per_call_second"] = _median([w["cpu_per_call_second"] for w in runs])
        summary["windows_passed"] = f"{sum(w['passed'] for w in runs)}/{len(runs)}"
        summary["p99_windows"] = [w["p99_ms"] for w in runs]
        summary["load_bound"] = any(w["load_bound"] for w in runs)
        steps.append(summary)
    passed, failed = search.passed, search.failed
    if not passed:
        note = f"fewer than {min(s['calls'] for s in steps)} (no step passed)" if steps else ""
    elif failed is None:
        note = "at least: the search ended before a step failed"
    else:
        note = ""
    return {
        "calls_per_core": fig(passed or 0, "calls", note=note),
        "first_failure": fig(failed, "calls", note="the smallest failing step"),
        "windows": fig(sum(len(w) for w in windows.values()), "windows"),
        "steps": steps,
        "load_bound": any(s["load_bound"] for s in steps),
    }


def check(result: dict[str, Any]) -> list[str]:
    problems = []
    for key, figs in result["peers"].items():
        if not figs["steps"]:
            problems.append(f"capacity {key}: no step ran")
        for step in figs["steps"]:
            if not all(positive(p99) for p99 in step["p99_windows"]):
                problems.append(f"capacity {key}: step {step['calls']} has no latency")
    return problems


def main(argv: list[str] | None = None) -> int:
    from .run import main as run_main

    return run_main(argv, only=[NAME])


if __name__ == "__main__":
    sys.exit(main())
