"""Scenario *capacity*: how many real-time calls fit on one core.

The server is pinned to one core. The number of calls goes up step by step (x ``factor``), each
step a fresh set of real-time callers with the echo upstream, until the round trip's p99 exceeds
``p99_ms`` (20 ms, plus the window for a peer that batches on purpose) or more than ``loss_pct`` (0.1 %) of frames are lost; one bisection step then
narrows the gap. The figure is the largest step that passed: real-time calls per core. The round
trip crosses the bridge twice (caller to agent and back), so this is a strict reading of "added
latency". Every step also records the load side's CPU: a step where the generators and the fake
used more than 90 % of their core is flagged, its verdict is the load's, not the server's.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

from .common import fig, positive
from .harness import PEERS, Bench, ratio
from .relay import figures, measure

NAME = "capacity"
TITLE = "Capacity: real-time calls per core"


@dataclass
class Params:
    """Capacity ramp parameters."""

    start: int = 10
    factor: float = 1.4
    max_calls: int = 400
    max_steps: int = 8
    bisect: int = 1
    seconds: float = 6.0
    warmup: float = 1.5
    p99_ms: float = 20.0
    loss_pct: float = 0.1

    @classmethod
    def smoke(cls) -> Params:
        return cls(start=3, factor=2.0, max_calls=6, max_steps=2, bisect=0, seconds=0.5, warmup=0.1)


def ramp(bench: Bench, key: str, peer: Any, fake: Any, params: Params) -> dict[str, Any]:
    """Step one peer up until it fails; return its steps and capacity."""
    limit_ms = params.p99_ms + PEERS[key].batch_ms  # added latency beyond any batching window
    steps: list[dict[str, Any]] = []
    passed: int | None = None
    failed: int | None = None
    bisections = params.bisect
    n = params.start
    for _ in range(params.max_steps):
        raw = measure(
            bench,
            peer,
            fake,
            calls=n,
            seconds=params.seconds,
            warmup=params.warmup,
            label=f"capacity {key} {n} calls",
        )
        figs = figures(raw)
        p99 = figs["latency_p99"]["value"]
        loss = figs["loss_pct"]["value"]
        load_pct = figs["generator_cpu_pct"]["value"] + figs["fake_cpu_pct"]["value"]
        ok = (
            p99 is not None
            and p99 <= limit_ms
            and loss is not None
            and loss <= params.loss_pct
            and figs["calls_opened"]["value"] == n
        )
        steps.append(
            {
                "calls": n,
                "passed": ok,
                "p50_ms": figs["latency_p50"]["value"],
                "p99_ms": p99,
                "p99_limit_ms": limit_ms,
                "loss_pct": loss,
                "server_cpu_pct": figs["server_cpu_pct"]["value"],
                "load_cpu_pct": load_pct,
                "load_bound": load_pct > 90 * max(1, len(bench.load_cpus)),
                "cpu_per_call_second": figs["cpu_per_call_second"]["value"],
            }
        )
        if ok:
            passed = n
            if failed is None:
                nxt = min(params.max_calls, max(n + 1, math.ceil(n * params.factor)))
                if nxt == n:
                    break
                n = nxt
                continue
        else:
            failed = n if failed is None else min(failed, n)
        low = passed or 0
        assert failed is not None
        if bisections > 0 and failed - low > max(2, low // 10):
            bisections -= 1
            n = (low + failed) // 2
            if n <= 0:
                break
            continue
        break
    return {"steps": steps, "passed": passed, "failed": failed}


def run(bench: Bench, params: Params) -> dict[str, Any]:
    """Ramp every peer; calls per core and ratios."""
    result: dict[str, Any] = {"title": TITLE, "params": vars(params), "peers": {}}
    with bench.scenario(NAME, len(bench.peers)) as task:
        fake = bench.fake("echo", tag="-capacity")
        try:
            assert fake.url is not None
            peers = bench.start_peers(fake.url, tag="-capacity")
            try:
                for key, peer in peers.items():
                    outcome = ramp(bench, key, peer, fake, params)
                    passed = outcome["passed"]
                    capped = outcome["failed"] is None
                    if not passed:
                        note = f"fewer than {params.start} (the first step failed)"
                    elif capped:
                        note = "at least: the ramp ended before a step failed"
                    else:
                        note = ""
                    result["peers"][key] = {
                        "calls_per_core": fig(passed or 0, "calls", note=note),
                        "first_failure": fig(outcome["failed"], "calls"),
                        "steps": outcome["steps"],
                        "load_bound": any(s["load_bound"] for s in outcome["steps"]),
                    }
                    peer.terminate()
                    bench.advance(task)
            finally:
                bench.retire(*peers.values())
        finally:
            bench.retire(fake)
    vox = result["peers"].get("voxbridge")
    result["ratios"] = {}
    if vox is not None:
        for key, figs in result["peers"].items():
            if key != "voxbridge":
                result["ratios"][f"calls_per_core.voxbridge/{key}"] = ratio(
                    vox["calls_per_core"]["value"], figs["calls_per_core"]["value"]
                )
    return result


def check(result: dict[str, Any]) -> list[str]:
    problems = []
    for key, figs in result["peers"].items():
        if not figs["steps"]:
            problems.append(f"capacity {key}: no step ran")
        for step in figs["steps"]:
            if not positive(step["p99_ms"]):
                problems.append(f"capacity {key}: step {step['calls']} has no latency")
    return problems


def main(argv: list[str] | None = None) -> int:
    from .run import main as run_main

    return run_main(argv, only=[NAME])


if __name__ == "__main__":
    sys.exit(main())
