"""Scenario *bargein*: how far from the truth the heard position is at a barge-in, exact vs sparse
marks, with a caller whose carrier has playout start latency and jitter.

Each call runs in this process on trio's virtual clock (``MockClock``, autojump), all in memory:
the carrier simulator (:class:`voxbridge.testing.CarrierSimulator`, Twilio's wire, with
``playout_latency`` and a seeded ``jitter``) <-> the real call (``run_call``, ``--marks exact`` or
``sparse``) <-> the OpenAI Realtime fake. The agent speaks ``turns`` answers of 1 to 4 s (seeded),
each sent ``pace`` times faster than real time in 20 ms deltas (``inf``: all at once, as the relay's
agent does); the caller talks over each one at a random point of its playout (10 to 90 %), and the
next answer comes 0.5 to 1.5 s later. Everything in a call is virtual time, so the only timing
noise is the simulator's own jitter, and the same seed gives both modes the same true playout.

Per barge-in, the error is the ``audio_end_ms`` the call sent in ``conversation.item.truncate``
minus what the simulated caller had actually heard of that answer when the ``clear`` reached it
(``CallResult.played_ms_at_clear``): positive when the call says more was heard than was. Figures
per mode, carrier condition (latency / jitter, ms) and pace: p50, p99 and max of the absolute
error, its mean (the bias), and the marks and media messages sent to the caller per second of agent
audio. The target (benchmarks/README.md): p99 <= 40 ms for the mark-saving mode.

Run alone: ``python -m benchmarks.bargein`` (about a minute; ``--smoke`` for a few seconds).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
import time
from dataclasses import dataclass, fields
from typing import Any

import trio
import trio.testing

from voxbridge.audio import BYTES_PER_MS
from voxbridge.metrics import Metrics
from voxbridge.providers.openai_realtime import OpenAIProvider
from voxbridge.session import CallRegistry, run_call
from voxbridge.settings import Settings
from voxbridge.testing import CarrierSimulator
from voxbridge.testing.fake_openai import FakeOpenAIRealtime
from voxbridge.testing.memory import accept_carrier, memory_connector

from .common import fig, positive

NAME = "bargein"
TITLE = "Barge-in accuracy: heard-position error, exact vs sparse marks"
MODES = ("exact", "sparse")
TARGET_P99_MS = 40.0


@dataclass
class Params:
    """Barge-in parameters (``--turns`` ...)."""

    turns: int = 25  # barge-ins per call
    calls: int = 4  # calls (seeds) per mode, condition and pace
    conditions: str = "0/0,60/20,150/40,60/80"  # playout latency / jitter, ms
    paces: str = "inf,5,1"  # how much faster than real time the agent sends (inf: at once)
    seed: int = 1

    @classmethod
    def smoke(cls) -> Params:
        return cls(turns=4, calls=1, conditions="60/20", paces="5")


@dataclass
class Outcome:
    """One call: per barge-in, the ``audio_end_ms`` the call sent, and what the caller had heard
    of that answer at the barge-in and when the clear reached it; what the caller got."""

    computed: list[float]
    at_barge_in: list[float]
    at_clear: list[float]
    marks: int
    media: int
    agent_ms: float

    @property
    def complete(self) -> bool:
        return len(self.computed) == len(self.at_barge_in) == len(self.at_clear)


def script(
    rng: random.Random, turns: int, pace: float, latency: float
) -> tuple[list[tuple[float, bytes, str]], list[float]]:
    """``(speak, speech_started_at)`` for the fake: answers of 1 to 4 s, each talked over at 10
    to 90 % of its playout, the next one 0.5 to 1.5 s after that."""
    speak, barge = [], []
    at = 1.0
    for k in range(turns):
        seconds = round(rng.uniform(1.0, 4.0), 2)
        speak.append((at, bytes([0x11 + k % 200]) * round(seconds * 8000), f"turn {k}"))
        heard = rng.uniform(0.1, 0.9) * seconds  # seconds of it the caller hears, roughly
        when = at + latency + heard
        if math.isfinite(pace):  # a paced answer cannot be heard before it is sent
            when = max(when, at + latency + heard / pace)
        barge.append(round(when, 4))
        at = when + rng.uniform(0.5, 1.5)
    return speak, barge


async def one_call(
    mode: str, latency: float, jitter: float, pace: float, turns: int, seed: int
) -> Outcome:
    rng = random.Random(seed)
    speak, barge = script(rng, turns, pace, latency)
    fake = FakeOpenAIRealtime(speak=speak, speak_pace=pace, speech_started_at=barge)
    fake.url = "ws://fake.invalid/v1/realtime"  # reached in memory; the URL only names it
    async with trio.open_nursery() as nursery:
        caller_end, bridge_end = trio.testing.memory_stream_pair()
        simulator = CarrierSimulator(
            caller_end,
            seconds=barge[-1] + 1.0,
            close_wait=30,
            playout_latency=latency,
            jitter=jitter,
            seed=seed,
        )
        nursery.start_soon(simulator.run)
        carrier = await accept_carrier(nursery, bridge_end)
        await run_call(
            carrier,
            OpenAIProvider(fake.endpoint(), instructions="be brief"),
            settings=Settings(marks=mode),
            metrics=Metrics(),
            registry=CallRegistry(),
            connect_stream=memory_connector(nursery, fake),
        )
        nursery.cancel_scope.cancel()
    result, session = simulator.result, fake.sessions[0]
    # Each answer is talked over before the next begins, and the clear cuts it: what the caller
    # heard of answer k is what it heard in the call by then, less what it had by clear k - 1.
    before = [0.0, *result.played_ms_at_clear]
    return Outcome(
        computed=[t["audio_end_ms"] for t in session.truncates],
        at_barge_in=[
            result.heard_ms_at(at) - earlier
            for at, earlier in zip(session.speech_started_at, before, strict=False)
        ],
        at_clear=[b - a for a, b in itertools.pairwise(before)],
        marks=result.marks_received,
        media=result.frames_received,
        agent_ms=len(result.audio_received) / BYTES_PER_MS,
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


def spread(errors: list[float], prefix: str) -> dict[str, Any]:
    """p50, p99 and max of the absolute errors, their mean (the bias) and the most the call said
    was heard beyond the truth, in ms."""
    absolute = [abs(e) for e in errors]
    return {
        f"{prefix}p50": fig(percentile(absolute, 50), "ms"),
        f"{prefix}p99": fig(percentile(absolute, 99), "ms"),
        f"{prefix}max": fig(max(absolute, default=math.nan), "ms"),
        f"{prefix}mean": fig(sum(errors) / len(errors) if errors else None, "ms", note="bias"),
        f"{prefix}ahead": fig(max(errors, default=math.nan), "ms", note="most past the truth"),
    }


def summary(outcomes: list[Outcome], exact: list[Outcome] | None) -> dict[str, Any]:
    """One mode's figures; ``exact``: the exact mode's outcomes of the same seeds (for sparse)."""
    done = [o for o in outcomes if o.complete]
    agent_s = sum(o.agent_ms for o in outcomes) / 1000
    figures = {
        "barge_ins": fig(sum(len(o.computed) for o in done), "barge-ins"),
        "incomplete": fig(len(outcomes) - len(done), "calls", note="truncates and clears differ"),
        **spread(
            [c - t for o in done for c, t in zip(o.computed, o.at_barge_in, strict=True)],
            "error_",
        ),
        **spread(
            [c - t for o in done for c, t in zip(o.computed, o.at_clear, strict=True)],
            "at_clear_",
        ),
        "marks_per_agent_second": fig(
            sum(o.marks for o in outcomes) / agent_s if agent_s else None, "marks/s"
        ),
        "media_per_agent_second": fig(
            sum(o.media for o in outcomes) / agent_s if agent_s else None, "messages/s"
        ),
    }
    if exact is not None:
        differences = [
            c - e
            for o, x in zip(outcomes, exact, strict=True)
            if o.complete and x.complete and len(o.computed) == len(x.computed)
            for c, e in zip(o.computed, x.computed, strict=True)
        ]
        figures |= spread(differences, "vs_exact_")
    return figures


def conditions(params: Params) -> list[tuple[float, float]]:
    out = []
    for item in params.conditions.split(","):
        latency, _, jitter = item.strip().partition("/")
        out.append((float(latency) / 1000, float(jitter or 0) / 1000))
    return out


def measure(params: Params, progress: Any = None) -> dict[str, Any]:
    result: dict[str, Any] = {"title": TITLE, "params": vars(params), "cases": {}}
    for latency, jitter in conditions(params):
        for pace_text in params.paces.split(","):
            pace = float(pace_text)
            case = f"{latency * 1000:g}/{jitter * 1000:g} ms, pace {pace_text.strip()}"
            result["cases"][case] = {}
            runs: dict[str, list[Outcome]] = {mode: [] for mode in MODES}
            for mode in MODES:
                for n in range(params.calls):
                    seed = params.seed * 1000 + n
                    runs[mode].append(
                        trio.run(
                            one_call,
                            mode,
                            latency,
                            jitter,
                            pace,
                            params.turns,
                            seed,
                            clock=trio.testing.MockClock(autojump_threshold=0),
                        )
                    )
                    if progress is not None:
                        progress()
            result["cases"][case] = {
                "exact": summary(runs["exact"], None),
                "sparse": summary(runs["sparse"], runs["exact"]),
            }
    sparse_p99 = [
        case["sparse"]["error_p99"]["value"]
        for case in result["cases"].values()
        if case["sparse"]["error_p99"]["value"] is not None
    ]
    worst = max(sparse_p99, default=None)
    result["sparse_p99_worst"] = fig(worst, "ms", target=TARGET_P99_MS)
    result["sparse_meets_target"] = worst is not None and worst <= TARGET_P99_MS
    return result


def run(bench: Any, params: Params) -> dict[str, Any]:
    """The scenario in the suite: ``bench`` shows the progress (no processes are started)."""
    steps = len(conditions(params)) * len(params.paces.split(",")) * len(MODES) * params.calls
    with bench.scenario(NAME, steps) as task:
        return measure(params, lambda: bench.advance(task))


def check(result: dict[str, Any]) -> list[str]:
    """Sanity problems (smoke): every case measured, every barge-in compared."""
    problems = []
    for case, modes in result["cases"].items():
        for mode, figs in modes.items():
            if not positive(figs["barge_ins"]["value"]):
                problems.append(f"bargein {case} {mode}: no barge-in measured")
            if figs["incomplete"]["value"]:
                problems.append(f"bargein {case} {mode}: truncates and clears differ")
    return problems


def table(result: dict[str, Any]) -> str:
    """The result as a Markdown table."""
    lines = [
        "| latency / jitter, pace | mode | barge-ins | error p50 | p99 | max | bias | most ahead "
        "| p99 at the clear | p99 vs exact | marks / s | media / s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, modes in result["cases"].items():
        for mode, f in modes.items():

            def v(name: str, f: dict[str, Any] = f) -> str:
                value = f[name]["value"] if name in f else None
                return "-" if value is None else f"{value:.1f}"

            lines.append(
                f"| {case} | {mode} | {f['barge_ins']['value']} | {v('error_p50')} | "
                f"{v('error_p99')} | {v('error_max')} | {v('error_mean')} | {v('error_ahead')} | "
                f"{v('at_clear_p99')} | {v('vs_exact_p99')} | "
                f"{v('marks_per_agent_second')} | {v('media_per_agent_second')} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bargein", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--smoke", action="store_true", help="toy sizes, sanity checks")
    parser.add_argument("--json", help="also write the result to this file")
    for field in fields(Params):
        parser.add_argument(f"--{field.name}", type=type(field.default), default=None)
    args = parser.parse_args(argv)
    params = Params.smoke() if args.smoke else Params()
    for field in fields(Params):
        if (value := getattr(args, field.name)) is not None:
            setattr(params, field.name, value)
    started = time.monotonic()
    result = measure(params)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    print(table(result))
    worst = result["sparse_p99_worst"]["value"]
    verdict = "met" if result["sparse_meets_target"] else "NOT met"
    print(f"\nsparse p99, worst case: {worst} ms (target <= {TARGET_P99_MS:g} ms): {verdict}")
    print(f"elapsed: {result['elapsed_s']} s")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
    problems = check(result)
    for problem in problems:
        print(f"problem: {problem}")
    return 1 if problems and args.smoke else 0


if __name__ == "__main__":
    sys.exit(main())
