"""Scenario *relay*: what a call costs in CPU, and how fast and complete the audio gets through.

N simulated Twilio callers each stream 20 ms mu-law frames in real time through the bridge for T
seconds. Two upstream variants, each peer in both:

* ``agent`` (the headline): the upstream fake answers like a realtime agent -- after every second
  of caller audio, one second of its own audio as 50 deltas back to back, faster than real time;
* ``echo``: every caller frame comes straight back as one delta.

The modes named in ``variants`` run over a ``ws://`` upstream, those in ``tls`` over a ``wss://``
one (variants ``agent-tls``, ``echo-tls``); by default both run both ways: production providers
are TLS. The fake then
serves a test certificate (``trustme``) and every peer trusts the test CA through its default TLS
context (:class:`benchmarks.harness.TlsCertificates`), so each pays for TLS what it pays in
production. The peers of both upstreams run side by side and the rounds interleave them all.

Figures per peer and variant, over the measurement window (after the calls connected and a
warm-up): server CPU (user+sys of the server process) per call-second of bridged caller audio and
per relayed frame (20 ms of audio in either direction; a bridge that merges queued frames into
one message pays per message, so merging shows here), the messages it sent each caller per
call-second (media, marks, clears), server CPU use, latency (echo: caller round
trip; agent: delivery from the agent's send to the caller), frames lost over the whole run (sent
by one side, never seen by the other), and the CPU of the load generators and the fake next to the
server's so a saturated load side is visible.

The ``voxbridge-gemini`` peer (on request) runs ``--provider gemini`` against the same fake
speaking Gemini Live, so voxbridge resamples both ways (8 -> 16 kHz up, 24 -> 8 kHz down): its CPU
next to the ``voxbridge`` peer's is the cost of resampling. Resampled audio cannot carry the
callers' timestamps, so its latency is read by position (echo) or from a stamp coded to survive
resampling (agent; see :mod:`benchmarks.wire`): the same two spans, measured another way. Its
frames lost include the audio the resamplers still hold when a call hangs up (tens of ms a call).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

from .common import Proc, fig, positive
from .harness import PEERS, Bench, latency_summary, ratio
from .wire import FRAME_SECONDS

NAME = "relay"
TITLE = "Relay: CPU per call and per message, latency, loss"


@dataclass
class Params:
    """Relay parameters (``--calls`` ... on the command line)."""

    calls: int = 20
    seconds: float = 10.0
    warmup: float = 2.0
    #: the upstream modes run over ``ws://``
    variants: str = "agent,echo"
    #: the modes run over a ``wss://`` upstream too ("" for none)
    tls: str = "agent,echo"
    burst: int = 50
    rounds: int = 3

    @classmethod
    def smoke(cls) -> Params:
        # both modes over wss:// only: every other scenario runs ws:// (a minute's budget); the
        # longer warm-up leaves the TLS handshakes time on a busy machine
        return cls(
            calls=3, seconds=0.5, warmup=0.3, variants="", tls="agent,echo", burst=10, rounds=1
        )


def measure(
    bench: Bench,
    peer: Proc,
    fake: Proc | None,
    *,
    calls: int,
    seconds: float,
    warmup: float,
    label: str,
    url: str | None = None,
    audio: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``calls`` real-time callers against ``peer`` for ``seconds``; return the raw readings.

    Shared with the capacity and floor scenarios. ``url`` overrides the peer's media URL (the
    floor's echo servers take any path); ``audio`` is added to the generators' spec (how to time
    resampled audio: :func:`resampled`).
    """
    if fake is not None:
        fake.command("reset")
    start = time.monotonic() + bench.lead
    ramp = max(0.05 if bench.smoke else 0.3, calls / 100)
    w0 = start + ramp + warmup
    w1 = w0 + seconds
    spec = {
        "url": url or bench.media_url(peer),
        "calls": calls,
        "start_at": start,
        "ramp": ramp,
        "stream_until": w1,
        "grace": 0.2 if bench.smoke else 1.0,
        "after": "stop",
        "window": [w0, w1],
        "deadline": w1 + 20,
        "frames": math.ceil((w1 - start) / FRAME_SECONDS) + 100,
        **(audio or {}),
    }
    run = bench.load(label, spec)
    watched = [peer, *run.procs] + ([fake] if fake is not None else [])
    try:
        cpu = bench.cpu_window(watched, w0, w1, label)
        load = run.wait()
    finally:
        run.stop()
    time.sleep(0.05 if bench.smoke else 0.3)
    upstream = fake.command("stats") if fake is not None else None
    window = cpu.pop("_seconds")
    gen_cpu = sum(v for k, v in cpu.items() if "-gen" in k)
    return {
        "window": window,
        "server_cpu": cpu[peer.name],
        "gen_cpu": gen_cpu,
        "fake_cpu": cpu.get(fake.name, 0.0) if fake is not None else 0.0,
        "load": load,
        "upstream": upstream,
        "calls": calls,
    }


def figures(raw: dict[str, Any], *, echo_fake: bool = True) -> dict[str, Any]:
    """The relay figures from :func:`measure`'s readings."""
    load, upstream, window = raw["load"], raw["upstream"], raw["window"]
    call_seconds = load["sent_window"] * FRAME_SECONDS
    messages = load["sent_window"] + load["received_window"]
    cpu = raw["server_cpu"]
    lat = latency_summary(load["samples"])
    if upstream is not None:
        lost_up = load["sent"] - upstream["appends"]
        lost_down = upstream["deltas"] - load["received"]
        total = load["sent"] + upstream["deltas"]
    else:  # echo server: what came back
        lost_up, lost_down = 0, load["sent"] - load["received"]
        total = 2 * load["sent"]
    lost = max(0, lost_up) + max(0, lost_down)
    return {
        "calls": fig(raw["calls"], "calls"),
        "calls_opened": fig(load["opened"], "calls"),
        "window": fig(window, "s"),
        "call_seconds": fig(call_seconds, "call-s"),
        "messages": fig(messages, "messages"),
        "server_cpu": fig(cpu, "s"),
        "cpu_per_call_second": fig(
            cpu / call_seconds * 1000 if call_seconds else None, "ms/call-s"
        ),
        "cpu_per_message": fig(
            cpu / messages * 1e6 if messages else None,
            "us/frame",
            note="per 20 ms frame relayed in either direction",
        ),
        "caller_messages_per_call_second": fig(
            (load.get("media_messages", 0) + load.get("marks", 0) + load.get("clears", 0))
            / (load["sent"] * FRAME_SECONDS)
            if load["sent"]
            else None,
            "messages/call-s",
            note="media, mark and clear messages the bridge sent each caller (whole run)",
        ),
        "server_cpu_pct": fig(cpu / window * 100, "% of a core"),
        "generator_cpu_pct": fig(raw["gen_cpu"] / window * 100, "% of a core"),
        "fake_cpu_pct": fig(raw["fake_cpu"] / window * 100, "% of a core"),
        "latency_p50": fig(lat["p50"], "ms"),
        "latency_p99": fig(lat["p99"], "ms"),
        "latency_max": fig(lat["max"], "ms"),
        "latency_samples": fig(lat["n"], "samples"),
        "frames_lost": fig(lost, "frames", up=lost_up, down=lost_down),
        "loss_pct": fig(lost / total * 100 if total else None, "%"),
        "generator_lateness_max": fig(load.get("lateness_max_ms", 0.0), "ms"),
        "stamp_errors": fig(
            load.get("stamp_errors", 0),
            "bursts",
            note="resampled agent audio: bursts whose coded stamp failed its check (untimed)",
        ),
    }


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def run(bench: Bench, params: Params) -> dict[str, Any]:
    """Run every peer through every variant, over ``ws://`` and ``wss://``; the results."""
    plan = [(mode, "ws", mode) for mode in _names(params.variants)]
    plan += [(mode, "wss", f"{mode}-tls") for mode in _names(params.tls)]
    result: dict[str, Any] = {"title": TITLE, "params": vars(params), "variants": {}}
    rounds: dict[str, dict[str, list[dict[str, Any]]]] = {variant: {} for *_, variant in plan}
    transports = {transport for _, transport, _ in plan}
    steps = len(bench.peers) * len(plan) * params.rounds
    with bench.scenario(NAME, steps) as task, contextlib.ExitStack() as stack:
        legs: dict[str, tuple[Proc, dict[str, Proc]]] = {}
        tags = {"ws": "-relay", "wss": "-relay-tls"}
        gemini = any(PEERS[key].upstream == "gemini" for key in bench.peers)
        fakes = {
            t: bench.fake(
                "agent", tag=tags[t], tls=t == "wss", gemini=gemini, burst=params.burst, wait=False
            )
            for t in sorted(transports)
        }
        stack.callback(bench.retire, *fakes.values())
        for transport, fake in fakes.items():  # every process starts at once, then all are waited
            bench.ready(fake)
            assert fake.url is not None
            peers = bench.start_peers(
                fake.url, tag=tags[transport], upstreams=("openai", "gemini"), wait=False
            )
            stack.callback(bench.retire, *peers.values())
            legs[transport] = fake, peers
        bench.ready(*(peer for _, peers in legs.values() for peer in peers.values()))
        # Rounds interleave the peers (A B C, A B C, ...), so a slow spell of this shared machine
        # hits all of them rather than one; each figure is the median round's.
        for n in range(params.rounds):
            for mode, transport, variant in plan:
                fake, peers = legs[transport]
                fake.command(f"mode {mode}")
                for key, peer in peers.items():
                    raw = measure(
                        bench,
                        peer,
                        fake,
                        calls=params.calls,
                        seconds=params.seconds,
                        warmup=params.warmup,
                        label=f"relay {variant} {key} round {n + 1}",
                        audio=resampled(key, mode, params.burst),
                    )
                    rounds[variant].setdefault(key, []).append(figures(raw))
                    bench.advance(task)
    for variant, by_peer in rounds.items():
        result["variants"][variant] = {key: median_round(runs) for key, runs in by_peer.items()}
    result["ratios"] = ratios(result)
    return result


def resampled(key: str, mode: str, burst: int) -> dict[str, Any] | None:
    """The generators' spec keys for a peer whose upstream resamples the audio (else ``None``)."""
    if PEERS[key].upstream == "openai":
        return None
    return {"resampled": mode, "burst": burst}


def median_round(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of the round with the median CPU per call-second, with every round's CPU."""
    ordered = sorted(runs, key=lambda r: r["cpu_per_call_second"]["value"] or math.inf)
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["cpu_per_call_second_rounds"] = fig(
        [r["cpu_per_call_second"]["value"] for r in runs], "ms/call-s", note="every round, in order"
    )
    return chosen


def ratios(result: dict[str, Any]) -> dict[str, Any]:
    """voxbridge / each baseline for the cost figures, per variant; TLS / plain, per peer."""
    out: dict[str, Any] = {}
    variants = result["variants"]
    for variant, peers in variants.items():
        vox = peers.get("voxbridge")
        for other in peers:
            if vox is not None and other != "voxbridge":
                for name in ("cpu_per_call_second", "cpu_per_message"):
                    out[f"{variant}.{name}.voxbridge/{other}"] = ratio(
                        vox[name]["value"], peers[other][name]["value"]
                    )
            plain = variants.get(variant.removesuffix("-tls"), {}).get(other)
            if variant.endswith("-tls") and plain is not None:
                out[f"{variant}.cpu_per_call_second.{other}.tls/plain"] = ratio(
                    peers[other]["cpu_per_call_second"]["value"],
                    plain["cpu_per_call_second"]["value"],
                )
    return out


def check(result: dict[str, Any]) -> list[str]:
    """Sanity problems (smoke): every peer measured, figures finite and positive."""
    problems = []
    for variant, peers in result["variants"].items():
        for key, figs in peers.items():
            for name in ("cpu_per_call_second", "cpu_per_message", "latency_p50", "latency_p99"):
                value = figs[name]["value"]
                if not positive(value):
                    problems.append(f"relay {variant} {key}: {name} = {value}")
            if figs["calls_opened"]["value"] != figs["calls"]["value"]:
                problems.append(f"relay {variant} {key}: not every call connected")
            if figs["stamp_errors"]["value"]:
                problems.append(
                    f"relay {variant} {key}: {figs['stamp_errors']['value']} bad stamps"
                )
    return problems


def main(argv: list[str] | None = None) -> int:
    from .run import main as run_main

    return run_main(argv, only=[NAME])


if __name__ == "__main__":
    sys.exit(main())
