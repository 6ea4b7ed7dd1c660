"""Write a run's ``results.json``, ``report.md`` and plots; publish one run as ``RESULTS.md``.

The report puts voxbridge next to both baselines (and the layer floor) in every table, as ratios
first: numbers from different runs on shared machines are not comparable, ratios from one run are.
The targets of BENCHMARKS.md are evaluated here, each marked *met*, *not met* or *not evaluated*
(with the reason: a smoke run, a size smaller than the target names, a figure not measured); a
target not met carries what explains it where the run has it (the profile, the longest collector
pause, the tasks per call).
"""

from __future__ import annotations

import array
import importlib
import json
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import ROOT

__all__ = ["publish", "targets", "write_all"]

PEER_ORDER = (
    "voxbridge",
    "voxbridge-gemini",
    "voxbridge-batch",
    "voxbridge-json",
    "trio",
    "asyncio",
)
LABELS = {
    "voxbridge": "voxbridge",
    "voxbridge-gemini": "voxbridge, Gemini Live (resampling)",
    "voxbridge-batch": "voxbridge + batching",
    "voxbridge-json": "voxbridge, stdlib json",
    "trio": "naive trio baseline",
    "asyncio": "asyncio tutorial baseline",
}
COLORS = {
    "voxbridge": "#1f77b4",
    "voxbridge-batch": "#17becf",
    "voxbridge-json": "#9467bd",
    "voxbridge-gemini": "#d62728",
    "trio": "#ff7f0e",
    "asyncio": "#2ca02c",
}
MiB = 1024 * 1024


# ------------------------------------------------------------------------------- helpers


def _clean(obj: Any) -> Any:
    """JSON-safe copy: no sample arrays, NaN/inf as null."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if k != "samples"}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, array.array):
        return None
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def v(figure: dict[str, Any] | None) -> float | None:
    """The value of a figure, or None."""
    if not figure:
        return None
    value = figure.get("value")
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def f(value: float | None, digits: int = 1, unit: str = "") -> str:
    """Format a number for a table ("-" when missing)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 1000 and digits <= 1 else f"{value:,.{digits}f}"
    return f"{text} {unit}".rstrip()


def rx(a: float | None, b: float | None) -> str:
    """Ratio a/b as ``0.85x``."""
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def ordered(peers: dict[str, Any]) -> list[str]:
    return [k for k in PEER_ORDER if k in peers] + [k for k in peers if k not in PEER_ORDER]


def label(key: str) -> str:
    return LABELS.get(key, key)


#: A table column: its header, and its cell from a peer's key and figures.
Column = tuple[str, Callable[[str, dict[str, Any]], str]]


def num(*names: str, digits: int = 0, scale: float = 1.0) -> Callable[[str, dict[str, Any]], str]:
    """A cell with the figures ``names`` (divided by ``scale``), joined by " / "."""

    def cell(_key: str, figs: dict[str, Any]) -> str:
        values = (v(figs.get(name)) for name in names)
        return " / ".join(f(None if x is None else x / scale, digits) for x in values)

    return cell


def vs(peers: dict[str, Any], name: str) -> Column:
    """The column *voxbridge / peer* of figure ``name``."""
    vox = peers.get("voxbridge")

    def cell(key: str, figs: dict[str, Any]) -> str:
        if vox is None or key == "voxbridge":
            return "-"
        return rx(v(vox.get(name)), v(figs.get(name)))

    return "voxbridge / peer", cell


def peer_table(peers: dict[str, Any], columns: list[Column], first: str = "peer") -> str:
    """One row per peer (voxbridge first): its label, then ``columns``."""
    rows = [[label(key)] + [cell(key, peers[key]) for _, cell in columns] for key in ordered(peers)]
    return table([first] + [header for header, _ in columns], rows)


# ------------------------------------------------------------------------------- targets


class Targets:
    """The BENCHMARKS.md targets as rows: figure, target, measured, status, note, kind.

    ``kind`` "cpu" marks a target a CPU profile explains when it is missed (``run.py`` profiles
    voxbridge after the scenarios when one is, with ``--profile auto``).
    """

    def __init__(self, results: dict[str, Any]) -> None:
        self.smoke = bool(results.get("smoke"))
        self.profile = results.get("profile")
        self.rows: list[dict[str, str]] = []

    def add(
        self,
        figure: str,
        target: str,
        measured: str,
        ok: bool | None,
        *,
        short: str = "",
        why: str = "not measured",
        explain: str = "",
        kind: str = "",
    ) -> None:
        """One row; ``short``: how the run falls short of the size the target names (then it is
        not evaluated); ``why``: why ``ok`` is None; ``explain``: what explains a miss."""
        if self.smoke:
            status, note = "not evaluated", "smoke run (toy sizes)"
        elif ok is None or short:
            status, note = "not evaluated", why if ok is None else short
        else:
            status = "met" if ok else "not met"
            profile = self.cpu_profile() if kind == "cpu" else ""
            note = "" if ok else "; ".join(part for part in (explain, profile) if part)
        self.rows.append(
            {
                "figure": figure,
                "target": target,
                "measured": measured,
                "status": status,
                "note": note,
                "kind": kind,
            }
        )

    def cpu_profile(self) -> str:
        """What the CPU profile of this run says, for a CPU target missed."""
        prof = self.profile
        if not prof:
            return "no profile in this run (`--profile py-spy`)"
        groups = ", ".join(f"{name} {pct:.0f} %" for name, pct in prof["groups"][:5])
        return (
            f"profile ({prof['tool']}, relay {prof['variant']} load, self time): {groups}; "
            "see *Profile*"
        )


def size(have: float, want: int, what: str) -> str:
    """'' when ``have`` reaches the size the target names, else why it is not evaluated."""
    return "" if have >= want else f"run with {have:,.0f} {what}; the target names {want:,}"


def targets(results: dict[str, Any]) -> list[dict[str, str]]:
    """Evaluate the BENCHMARKS.md targets against this run."""
    sc = results.get("scenarios", {})
    t = Targets(results)
    _stall_targets(t, sc)
    _relay_targets(t, sc.get("relay", {}))
    cap = sc.get("capacity", {}).get("peers", {})
    if "voxbridge" in cap:
        vc = v(cap["voxbridge"]["calls_per_core"])
        tc = v(cap["trio"]["calls_per_core"]) if "trio" in cap else None
        notes = "; ".join(
            f"{label(k)}: {n}"
            for k in ("voxbridge", "trio")
            if (n := cap.get(k, {}).get("calls_per_core", {}).get("note"))
        )
        r = div(vc, tc)
        t.add(
            "capacity: real-time calls per core (p99 <= 20 ms, loss <= 0.1 %)",
            ">= 1.5x the naive trio baseline",
            f"{f(vc, 0)} vs {f(tc, 0)}: {rx(vc, tc)}" + (f" ({notes})" if notes else ""),
            None if r is None else r >= 1.5,
            kind="cpu",
            explain=_echo_messages(sc.get("relay", {})),
        )
    p99 = v(sc.get("bargein", {}).get("sparse_p99_worst"))  # the worst carrier condition's
    cases = sc.get("bargein", {}).get("cases", {})

    def over(mode: str) -> list[str]:
        return [k for k, c in cases.items() if (v(c[mode]["error_p99"]) or 0) > 40]

    t.add(
        "barge-in accuracy: heard-position error of the mark-saving mode, p99",
        "<= 40 ms (caller with playout start latency and jitter)",
        f"{f(p99, 1, 'ms')} (worst condition)",
        None if p99 is None else p99 <= 40,
        why="the bargein scenario did not run",
        explain=f"over 40 ms: sparse in {len(over('sparse'))} of {len(cases)} conditions "
        f"({'; '.join(over('sparse'))}), exact mode in {len(over('exact'))}",
    )
    mem = sc.get("memory", {}).get("peers", {})
    if "voxbridge" in mem:
        per, n = v(mem["voxbridge"]["rss_per_call"]), v(mem["voxbridge"]["calls_held"]) or 0
        tasks = ", ".join(
            f"{label(k)} {f(v(mem[k].get('tasks_per_call')), 1)}" for k in ordered(mem)
        )
        t.add(
            "memory: RSS per established call",
            "<= 40 KiB at 1,000 calls",
            f"{f(per, 1, 'KiB')} at {n:,.0f} calls",
            None if per is None else per <= 40,
            short=size(n, 1000, "calls"),
            explain=f"live tasks per call held: {tasks}",
        )
    _soak_targets(t, sc.get("soak", {}))
    return t.rows


def _stall_targets(t: Targets, sc: dict[str, Any]) -> None:
    stall = sc.get("stall", {}).get("peers", {})
    vox = stall.get("voxbridge")
    if vox is not None:
        n = v(vox["calls"]) or 0
        p99, orphans, gc = (
            v(vox["teardown_p99"]),
            v(vox["orphaned"]),
            v(vox.get("server_gc_pause_max")),
        )
        t.add(
            "stall teardown p99 (minus idle timeout)",
            "<= 50 ms with 5,000 concurrent stalled calls",
            f"{f(p99, 1, 'ms')} with {n:,.0f} calls",
            None if p99 is None else p99 <= 50,
            short=size(n, 5000, "calls"),
            explain=f"longest garbage-collector pause meanwhile {f(gc, 1, 'ms')}",
        )
        others = ", ".join(
            f"{label(k)} {f(v(stall[k]['orphaned']), 0)}/{f(v(stall[k]['calls']), 0)}"
            for k in ordered(stall)
            if not k.startswith("voxbridge")
        )
        t.add(
            "orphaned upstream sockets (idle + 5 s)",
            "0 (baselines: every socket)",
            f"voxbridge {f(orphans, 0)}/{n:,.0f}; {others}",
            None if orphans is None else orphans == 0,
            short=size(n, 5000, "calls"),
        )
    soak = sc.get("soak", {})
    s = soak.get("peers", {}).get("voxbridge")
    if s is not None:
        left = v(s["carrier_sockets_after"])
        t.add(
            "carrier sockets left when callers keep streaming after the end (soak)",
            "0",
            f"{f(left, 0)}"
            + "".join(
                f", {n} {state}" for state, n in s["carrier_sockets_after"]["states"].items()
            ),
            None if left is None else left == 0,
            short=""
            if soak["params"].get("stop_linger", 0) > 0
            else "soak run with --soak-stop-linger 0: callers did not stream after the end",
        )


def _echo_messages(relay: dict[str, Any]) -> str:
    """What a miss under the echo load owes to the messages to the caller (exact marks: a mark
    per media message), from the relay's echo variant."""
    echo = relay.get("variants", {}).get("echo", {})
    vox, trio = (
        v(echo.get(k, {}).get("caller_messages_per_call_second")) for k in ("voxbridge", "trio")
    )
    if vox is None or trio is None:
        return ""
    return (
        f"echo load: voxbridge sends each caller {vox:.0f} messages a call-second (media and"
        f" marks, and as many mark echoes come back), the trio baseline {trio:.0f}"
    )


def _relay_targets(t: Targets, relay: dict[str, Any]) -> None:
    variants = relay.get("variants", {})

    def cost(variant: str, peer: str, name: str = "cpu_per_call_second") -> float | None:
        return v(variants.get(variant, {}).get(peer, {}).get(name))

    for mode, asyncio_bound in (("agent", 1.0), ("echo", None)):
        vox, trio, aio = cost(mode, "voxbridge"), cost(mode, "trio"), cost(mode, "asyncio")
        if vox is None:
            continue
        r_trio, r_aio = div(vox, trio), div(vox, aio)
        ok = None if r_trio is None else r_trio <= 0.65
        if ok is not None and asyncio_bound is not None:
            ok = None if r_aio is None else ok and r_aio <= asyncio_bound
        t.add(
            f"relay cost, default settings, {mode} upstream (CPU per call-second)",
            "<= 0.65x the naive trio baseline"
            + (" and <= 1.0x the asyncio baseline" if asyncio_bound else "; asyncio reported"),
            f"{f(vox, 2, 'ms')}: {rx(vox, trio)} trio ({f(trio, 2, 'ms')}), {rx(vox, aio)} "
            f"asyncio ({f(aio, 2, 'ms')})",
            ok,
            kind="cpu",
            explain=_echo_messages(relay) if mode == "echo" else "",
        )
    agent = variants.get("agent", {}).get("voxbridge")
    if agent is not None:
        p99, calls = v(agent["latency_p99"]), v(agent["calls"]) or 0
        t.add(
            "relay latency: agent-to-caller p99",
            "<= 20 ms at 20 calls (0.1: 104-218 ms)",
            f"{f(p99, 1, 'ms')} (p50 {f(v(agent['latency_p50']), 1, 'ms')}) at {calls:,.0f} calls",
            None if p99 is None else p99 <= 20,
            short=size(calls, 20, "calls"),
            kind="cpu",
        )
    modes = dict.fromkeys(m.removesuffix("-tls") for m in variants)
    if modes:
        parts, complete = [], True
        for mode in modes:
            tls, plain = variants.get(f"{mode}-tls", {}), variants.get(mode, {})
            complete &= all(
                cost(name, k) is not None for name in (mode, f"{mode}-tls") for k in plain | tls
            )
            vox = cost(f"{mode}-tls", "voxbridge")
            added = ", ".join(
                f"{k} {rx(cost(f'{mode}-tls', k), cost(mode, k))}" for k in ordered(tls)
            )
            parts.append(
                f"{mode}: voxbridge {rx(vox, cost(f'{mode}-tls', 'trio'))} trio, "
                f"{rx(vox, cost(f'{mode}-tls', 'asyncio'))} asyncio; TLS cost {added or '-'}"
            )
        t.add(
            "relay over TLS (wss:// upstream, test certificates)",
            "reported for every peer",
            "; ".join(parts),
            complete,
            explain="a peer or variant without a wss:// figure (`--relay-tls agent,echo`)",
        )


def _soak_targets(t: Targets, soak: dict[str, Any]) -> None:
    s = soak.get("peers", {}).get("voxbridge")
    if s is None:
        return
    n = v(s["calls"]) or 0
    short = size(n, 10000, "calls")
    growth, garbage = v(s["rss_growth_after_warmup"]), v(s.get("cyclic_garbage_per_call"))
    t.add(
        "soak: RSS growth after warm-up",
        "<= 2 % over >= 10,000 calls",
        f"{f(growth, 2, '%')} over {n:,.0f} calls (median RSS of the load's last fifth vs its second)",
        None if growth is None else growth <= 2,
        short=short,
        explain=f"cyclic garbage per finished call: {f(garbage, 1)}" if garbage is not None else "",
    )
    t.add(
        "soak: cyclic garbage per finished call (gc census)",
        "0",
        f(garbage, 1, "objects"),
        None if garbage is None else garbage == 0,
        short=short,
        why="no gc census in this run (soak figure `cyclic_garbage_per_call`)",
    )
    fds0, fds1, t0, t1 = (
        v(s[k]) for k in ("fds_before", "fds_after", "tasks_before", "tasks_after")
    )
    ok = None
    if fds0 is not None and fds1 is not None and t0 is not None and t1 is not None:
        ok = fds1 <= fds0 + 1 and t1 <= t0
    t.add(
        "soak: fds and tasks back to baseline (callers stream after `stop`)",
        "fds and tasks as before the load",
        f"fds {f(fds0, 0)} -> {f(fds1, 0)}, tasks {f(t0, 0)} -> {f(t1, 0)}",
        ok,
        short=short,
    )
    missing = v(s["missing_records"])
    t.add(
        "soak: calls whose record is missing",
        "0",
        f"{f(missing, 0)} of {f(v(s['records_started']), 0)} started",
        None if missing is None else missing == 0,
        short=short,
    )


# ------------------------------------------------------------------------------- sections
# Each returns its section's paragraphs (tables, plots); render() adds the scenario's title.


def _relay(sc: dict[str, Any]) -> list[str]:
    from .floor import PEER_STACK

    relay, floor = sc["relay"], sc.get("floor", {}).get("stacks", {})
    p = relay["params"]
    out = [
        f"{p['calls']} calls, 20 ms frames in real time both ways, {p['seconds']:g} s measured "
        f"after {p['warmup']:g} s warm-up, in {p.get('rounds', 1)} round(s) that interleave the "
        "peers; each row is the peer's median round (by CPU), *rounds* lists every round's CPU "
        "ms / call-s. *Upstream* is the provider leg: `ws` plain, `wss` TLS with a test "
        "certificate every peer trusts through its default TLS context; *TLS cost* is the "
        "peer's CPU over wss / over ws. *Frame* = 20 ms of audio in either direction (a "
        "call-second is 50 caller frames and, from the agent, 50 more); a bridge may merge "
        "queued frames into fewer messages, and *msgs to caller* counts the media, mark and "
        "clear messages it sent each caller per call-second. Latency: round trip (echo) or "
        "agent-to-caller delivery of bursts (agent). *voxbridge / peer* compares over the same "
        "upstream (lower is cheaper); *vs floor* divides by the layer floor of the peer's own "
        "stack."
    ]
    cps = "cpu_per_call_second"
    header = ["peer", "upstream", "CPU ms / call-s", "rounds", "CPU us / frame", "vs floor"]
    header += ["voxbridge / peer", "TLS cost", "msgs to caller / call-s", "server CPU %"]
    header += ["p50 ms", "p99 ms", "frames lost", "load CPU % (gen / fake)"]
    variants = relay["variants"]
    for mode in dict.fromkeys(m.removesuffix("-tls") for m in variants):
        legs = {"ws": variants.get(mode, {}), "wss": variants.get(f"{mode}-tls", {})}
        rows = []
        for key in ordered(legs["ws"] | legs["wss"]):  # each peer's ws and wss rows adjacent
            for transport, peers in legs.items():
                figs, vox, plain = peers.get(key), peers.get("voxbridge"), legs["ws"].get(key)
                if figs is None:
                    continue
                floor_ = v(floor.get(PEER_STACK.get(key, ""), {}).get("floor_per_message"))
                rows.append(
                    [
                        label(key),
                        transport,
                        f(v(figs[cps]), 2),
                        " / ".join(f(x, 1) for x in figs[f"{cps}_rounds"]["value"]),
                        f(v(figs["cpu_per_message"]), 0),
                        rx(v(figs["cpu_per_message"]), floor_),
                        "-" if vox is None or key == "voxbridge" else rx(v(vox[cps]), v(figs[cps])),
                        rx(v(figs[cps]), v(plain[cps])) if plain and transport == "wss" else "-",
                        f(v(figs.get("caller_messages_per_call_second")), 0),
                        f(v(figs["server_cpu_pct"]), 0),
                        f(v(figs["latency_p50"]), 1),
                        f(v(figs["latency_p99"]), 1),
                        f"{f(v(figs['frames_lost']), 0)} ({f(v(figs['loss_pct']), 2)} %)",
                        num("generator_cpu_pct", "fake_cpu_pct")(key, figs),
                    ]
                )
        out += [f"### {mode} upstream", table(header, rows)]
        a = v(legs["ws"].get("voxbridge", {}).get(cps))
        b = v(legs["ws"].get("voxbridge-gemini", {}).get(cps))
        if a and b is not None:
            out.append(
                f"Resampling (Gemini Live: 8 -> 16 kHz up, 24 -> 8 kHz down, soxr) costs "
                f"{b - a:+.2f} ms CPU per call-second here ({(b - a) / a * 100:+.0f} % on "
                "the OpenAI-protocol peer). Its latency is timed by audio position (echo) "
                "or a stamp coded into the audio (agent), and includes the resamplers' "
                "hold-back; its lost frames include the audio they still hold at hang-up."
            )
    return [*out, "![relay CPU per call-second](relay_cpu.png)"]


def _floor(sc: dict[str, Any]) -> list[str]:
    floor = sc["floor"]
    p = floor["params"]
    servers: list[Column] = [
        ("CPU us / echo", num("cpu_per_echo")),
        ("server CPU %", num("server_cpu_pct")),
        ("generator CPU %", num("generator_cpu_pct")),
    ]
    stacks: list[Column] = [
        ("floor us / relayed message", num("floor_per_message")),
        ("floor ms / call-s", num("floor_per_call_second", digits=2)),
    ]
    return [
        f"Echo servers under the relay load ({p['calls']} calls, {p['seconds']:g} s). One echo is "
        "one message in and one out; a relayed message costs half an echo on each of the two "
        "layers a bridge is built from, so a stack's floor per relayed message is half the sum of "
        "its two layers' echo costs.",
        peer_table(floor["servers"], servers, first="echo server"),
        peer_table(floor["stacks"], stacks, first="stack"),
    ]


def _capacity(sc: dict[str, Any]) -> list[str]:
    cap = sc["capacity"]
    p, peers = cap["params"], cap["peers"]

    def calls(_key: str, figs: dict[str, Any]) -> str:
        note = figs["calls_per_core"].get("note", "")
        return f(v(figs["calls_per_core"]), 0) + (f" ({note})" if note else "")

    summary: list[Column] = [
        ("calls per core", calls),
        ("first failing step", num("first_failure")),
        vs(peers, "calls_per_core"),
        ("windows", num("windows")),
        ("load-bound window", lambda _k, figs: "yes" if figs.get("load_bound") else "no"),
    ]
    rows = [
        [
            label(key),
            str(s["calls"]),
            f"{'pass' if s['passed'] else 'FAIL'} ({s['windows_passed']})",
            " / ".join(f(x, 1) for x in s["p99_windows"]),
            *(f(s[k], d) for k, d in (("p50_ms", 1), ("p99_ms", 1), ("loss_pct", 2))),
            *(f(s[k], 0) for k in ("server_cpu_pct", "load_cpu_pct")),
        ]
        for key in ordered(peers)
        for s in peers[key]["steps"]
    ]
    header = ["peer", "calls", "step (windows passed)", "p99 ms of each window"]
    header += ["median p50 ms", "p99 ms", "loss %", "server CPU %", "load CPU %"]
    return [
        f"Server pinned to one core, echo upstream. A window is a fresh set of callers, "
        f"{p['seconds']:g} s measured after {p['warmup']:g} s warm-up; it passes when the round "
        f"trip's p99 <= {p['p99_ms']:g} ms (plus the window, for voxbridge with batching: its "
        f"frames wait for it on purpose), loss <= {p['loss_pct']:g} % and every call connected. "
        f"A step passes when {p['need']} of {p['repeats']} windows pass (its windows stop once "
        f"that is certain). Steps grow x{p['factor']:g} from {p['start']} calls until one fails, "
        f"then bisect until the largest passing and the smallest failing step are within "
        f"{p['resolution'] * 100:g} % (at most {p['max_steps']} steps). The peers search side by "
        "side, one window each in turn. The round trip crosses the bridge twice.",
        peer_table(peers, summary),
        "<details><summary>every step, in the order run; figures are the median window's"
        f"</summary>\n\n{table(header, rows)}\n\n</details>",
        "![latency vs calls](capacity_latency.png)",
    ]


def _stall(sc: dict[str, Any]) -> list[str]:
    stall = sc["stall"]
    p = stall["params"]
    columns: list[Column] = [
        ("upstream sessions", num("upstream_sessions")),
        ("closed by bridge", num("closed_by_bridge")),
        ("orphaned", num("orphaned")),
        ("closed early", num("closed_early")),
        ("teardown p50 ms", num("teardown_p50", digits=1)),
        ("p99 ms", num("teardown_p99", digits=1)),
        ("max ms", num("teardown_max", digits=1)),
        ("caller sees close p99 ms", num("caller_close_p99", digits=1)),
        ("server CPU % meanwhile", num("server_cpu_pct_stalling")),
        ("longest GC pause ms", num("server_gc_pause_max", digits=1)),
        ("RSS while stalled MiB", num("server_rss_stalled", digits=1, scale=MiB)),
    ]
    return [
        f"{p['calls']} calls connect ({p['ramp_rate']:g}/s), trickle a frame every "
        f"{p['trickle']:g} s, then all go silent within {p['spread']:g} s with TCP open. "
        f"voxbridge idle_timeout = {p['idle_timeout']:g} s. Teardown delay = time from the "
        "caller's last frame to the upstream TCP connection closed, seen by the upstream fake, "
        f"minus idle_timeout; *closed early* counts calls closed before it. Orphans counted "
        f"{p['orphan_wait']:g} s after every idle timeout expired.",
        peer_table(stall["peers"], columns),
        "A baseline's teardown is '-': it never closes a stalled call's upstream socket.",
        "![teardown delay histogram](stall_teardown.png)",
    ]


def _memory(sc: dict[str, Any]) -> list[str]:
    mem = sc["memory"]
    p = mem["params"]
    columns: list[Column] = [
        ("calls held", num("calls_held")),
        (
            "RSS MiB idle / held / after",
            num("rss_idle", "rss_held", "rss_after", digits=1, scale=MiB),
        ),
        ("KiB / call", num("rss_per_call", digits=1)),
        vs(mem["peers"], "rss_per_call"),
        ("fds / call", num("fds_per_call", digits=2)),
        ("tasks / call", num("tasks_per_call", digits=1)),
    ]
    return [
        f"{p['calls']} calls held open (a frame every {p['trickle']:g} s each way), RSS and live "
        f"tasks read {p['settle']:g} s after the last connected, against the idle readings after "
        "warm-up calls.",
        peer_table(mem["peers"], columns),
    ]


def _soak(sc: dict[str, Any]) -> list[str]:
    soak = sc["soak"]
    p = soak["params"]

    def missing(key: str, figs: dict[str, Any]) -> str:
        return "n/a" if v(figs["missing_records"]) is None else num("missing_records")(key, figs)

    columns: list[Column] = [
        ("calls connected", num("calls_opened", "calls")),
        (
            "RSS MiB before / max / after",
            num("rss_before", "rss_max", "rss_after", digits=1, scale=MiB),
        ),
        ("RSS growth %", num("rss_growth_after_warmup", digits=2)),
        ("cyclic garbage / call", num("cyclic_garbage_per_call", digits=1)),
        ("fds before / load end / after", num("fds_before", "fds_load_end", "fds_after")),
        ("tasks before / load end / after", num("tasks_before", "tasks_load_end", "tasks_after")),
        ("upstream open after", num("upstream_open_after")),
        ("missing records", missing),
    ]
    return [
        f"{p['calls']:,} calls at {p['rate']:g}/s, {p['seconds_min']:g}-{p['seconds_max']:g} s "
        f"of audio each; callers: {p['caller_stall'] * 100:g} % stall (silent, TCP open, until the "
        f"load ends), {p['caller_vanish'] * 100:g} % vanish (TCP reset); upstream: "
        f"{p['upstream_drop'] * 100:g} % dropped, {p['upstream_stall'] * 100:g} % stalled. "
        f"voxbridge: idle_timeout {p['idle_timeout']:g} s, keepalive {p['keepalive_interval']:g} "
        f"s, pong_timeout {p['pong_timeout']:g} s, close_timeout {p['close_timeout']:g} s. *After* "
        "= once the peer was idle again (fds and tasks as before, every call it counted ended, no "
        f"upstream session open), at most {p['settle']:g} s after the load ended. Missing records "
        "= calls started minus calls ended on the peer's own counters. *Cyclic garbage* = objects "
        "the peer's cyclic collector freed per finished call (the gc census; 0: reference "
        "counting freed every call).",
        peer_table(soak["peers"], columns),
        "![RSS, fds and tasks over time](soak_series.png)",
    ]


def _codec(sc: dict[str, Any]) -> list[str]:
    codec = sc["codec"]
    p = codec["params"]
    rows = [
        [name, f(v(figs["chars"]), 0)]
        + [f(v(figs[k]), 2) for k in ("json_loads_hook", "json_loads", "orjson")]
        + [f"{f(v(figs['speedup']), 1)}x"]
        for name, figs in codec["frames"].items()
    ]
    out = [
        "The JSON parse of the frames voxbridge handles most, on the server's core, best of "
        f"{p['repeat']} x {p['number']:,} parses. *json + hook* is `json.loads(frame, "
        "parse_constant=...)` as voxbridge's Twilio codec called it before (a new decoder per "
        "call); *json* is plain `json.loads`, as its provider codecs did; voxbridge now uses "
        "*orjson* for both. Speed-up = json / orjson.",
        table(
            ["frame", "chars", "json + hook us", "json us", "orjson us", "orjson speed-up"], rows
        ),
        "`TwilioStream.receive` of one media frame (parse, validation, event), as voxbridge runs "
        f"it now: {f(v(codec['twilio_receive_media']), 2)} us.",
    ]
    audio = codec.get("provider_audio")

    def per_call_s(key: str) -> str:
        return f(v(audio[f"{key}_per_call_second"]), 2)

    if audio:
        rows = [
            [name, f(v(audio[f"{key}_in"]), 1), f(v(audio[f"{key}_out"]), 1), per_call_s(key)]
            for name, key in (
                ("OpenAI Realtime (mu-law passed through)", "openai"),
                ("Gemini Live (PCM16 16 / 24 kHz: converted and resampled)", "gemini"),
                ("soxr alone (8 -> 16 kHz in, 24 -> 8 kHz out)", "soxr"),
            )
        ]
        out += [
            "Provider audio per 20 ms frame as the codecs run it: *in* is the caller's frame "
            "to the provider's message (`codec.audio`), *out* the provider's message to mu-law "
            "for the caller (`codec.decode`); a call-second is 50 frames each way while the agent "
            f"speaks. The Gemini agent's coded stamps read back: "
            f"{f(v(codec.get('gemini_stamps_decoded')), 0)} %.",
            table(["codec", "in us / frame", "out us / frame", "ms / call-s"], rows),
        ]
    return out


def _profile(results: dict[str, Any]) -> list[str]:
    prof = results["profile"]
    out = [
        f"{prof['tool']} on the voxbridge server under the relay load ({prof['calls']} calls, "
        f"{prof['variant']} upstream, {prof['seconds']:g} s). Full listing: `{prof['file']}`."
    ]
    for title, key in (("self time", "self"), ("inclusive time", "inclusive")):
        rows = [[f"{e['pct']:.1f} %", f"`{e['function']}`"] for e in (prof.get(key) or [])[:20]]
        if rows:
            out += [f"**By {title}**", table(["share", "function"], rows)]
    if prof.get("groups"):
        rows = [[f"{pct:.1f} %", name] for name, pct in prof["groups"]]
        out += ["**By package (self time)**", table(["share", "package"], rows)]
    return out


SECTIONS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "relay": _relay,
    "floor": _floor,
    "capacity": _capacity,
    "stall": _stall,
    "memory": _memory,
    "soak": _soak,
    "codec": _codec,
}


def render(results: dict[str, Any]) -> str:
    """report.md for a run."""
    m, ver = results["machine"], results["versions"]
    title = "voxbridge benchmarks" + (" (smoke run)" if results.get("smoke") else "")
    out = [
        f"# {title}",
        f"Run {results['started_utc']}, {results['elapsed_s']:g} s. Machine: {m['cpu_count']} "
        f"CPUs ({m['cpu_model']}), Linux {m['kernel']}, {m['memory_total_bytes'] / MiB / 1024:.0f}"
        f" GiB; server pinned to core {m['server_cores']}, load on {m['load_cores']}. Python "
        f"{ver['python']}, trio {ver['trio']}, trio-websocket {ver['trio-websocket']}, hypercorn "
        f"{ver['hypercorn']}, wsproto {ver['wsproto']}, uvicorn {ver['uvicorn']}, websockets "
        f"{ver['websockets']}, voxbridge {ver['voxbridge']}.",
        "Numbers from different runs on shared machines are not comparable; ratios within one "
        "run are. Every figure with its unit is in `results.json`.",
    ]
    if results.get("notes"):
        out.append("Notes: " + "; ".join(results["notes"]) + ".")
    if results.get("errors"):
        out.append("**Errors:** " + "; ".join(f"{k}: {e}" for k, e in results["errors"].items()))
    rows = [
        [r["figure"], r["target"], r["measured"], r["status"], r["note"]] for r in targets(results)
    ]
    for row in rows:
        row[3] = f"**{row[3]}**" if row[3] == "met" else row[3]
    if rows:
        out += [
            "## Targets (BENCHMARKS.md)",
            "Each target is *met* or *not met* by this run, or *not evaluated* with the reason; a "
            "miss carries what the run has to explain it.",
            table(["figure", "target", "measured", "status", "note"], rows),
        ]
    for name, scenario in results["scenarios"].items():  # in the order they ran
        out.append(f"## {scenario['title']}")
        if name in SECTIONS:
            out += SECTIONS[name](results["scenarios"])
        elif hasattr(module := importlib.import_module(f"benchmarks.{name}"), "table"):
            out.append(module.table(scenario))  # a scenario that renders itself
    if results.get("profile"):
        out += ["## Profile: where voxbridge's server time goes", *_profile(results)]
    return "\n\n".join(out) + "\n"


# ---------------------------------------------------------------------------------- plots


def plots(out: Path, results: dict[str, Any]) -> list[str]:
    """PNG plots (matplotlib, Agg). Returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []
    sc = results["scenarios"]

    def save(fig_: Any, name: str) -> None:
        fig_.tight_layout()
        fig_.savefig(out / name, dpi=110)
        plt.close(fig_)
        written.append(name)

    if "relay" in sc:
        variants = sc["relay"]["variants"]
        fig_, ax = plt.subplots(figsize=(8, 4))
        names = list(variants)
        peers = ordered({k: 1 for vs in variants.values() for k in vs})
        width = 0.8 / max(1, len(peers))
        for i, key in enumerate(peers):
            values = [v(variants[n].get(key, {}).get("cpu_per_call_second")) or 0 for n in names]
            xs = [j + i * width for j in range(len(names))]
            ax.bar(xs, values, width, label=LABELS.get(key, key), color=COLORS.get(key))
        floor = sc.get("floor", {}).get("stacks", {})
        for name, stack in floor.items():
            value = v(stack["floor_per_call_second"])
            if value:
                ax.axhline(
                    value,
                    linestyle="--",
                    linewidth=1,
                    color="#1f77b4" if name.startswith("trio") else "#2ca02c",
                    label=f"floor: {name}",
                )
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names)
        ax.set_ylabel("server CPU ms per call-second")
        ax.set_title("Relay cost (lower is better)")
        ax.legend(fontsize=7)
        save(fig_, "relay_cpu.png")

    if "capacity" in sc:
        fig_, ax = plt.subplots(figsize=(8, 4))
        p99_limit = sc["capacity"]["params"]["p99_ms"]
        for key in ordered(sc["capacity"]["peers"]):
            steps = sorted(sc["capacity"]["peers"][key]["steps"], key=lambda s: s["calls"])
            xs = [s["calls"] for s in steps]
            ax.plot(
                xs,
                [s["p99_ms"] for s in steps],
                marker="o",
                color=COLORS.get(key),
                label=f"{LABELS.get(key, key)} p99 (median window; dots: each window)",
            )
            ax.scatter(
                [s["calls"] for s in steps for _ in s["p99_windows"]],
                [p99 for s in steps for p99 in s["p99_windows"]],
                s=8,
                color=COLORS.get(key),
                alpha=0.5,
            )
            ax.plot(
                xs,
                [s["p50_ms"] for s in steps],
                marker=".",
                linestyle=":",
                color=COLORS.get(key),
                label=f"{LABELS.get(key, key)} p50",
            )
        ax.axhline(p99_limit, color="red", linewidth=1, label=f"{p99_limit:g} ms limit")
        ax.set_yscale("log")
        ax.set_xlabel("concurrent real-time calls (server on one core)")
        ax.set_ylabel("round trip ms (log)")
        ax.set_title("Capacity: latency vs calls")
        ax.legend(fontsize=7)
        save(fig_, "capacity_latency.png")

    if "stall" in sc:
        fig_, ax = plt.subplots(figsize=(8, 4))
        delays = sc["stall"].get("delays", {})
        peers = sc["stall"]["peers"]
        for key in ordered(peers):
            data = [d for d in delays.get(key, []) if d is not None and math.isfinite(d)]
            if data:
                ax.hist(
                    data,
                    bins=40,
                    alpha=0.7,
                    color=COLORS.get(key),
                    label=f"{LABELS.get(key, key)} ({len(data)} closed)",
                )
        orphans = [
            f"{LABELS.get(k, k)}: {f(v(peers[k]['orphaned']), 0)} of "
            f"{f(v(peers[k]['calls']), 0)} orphaned"
            for k in ordered(peers)
            if v(peers[k]["orphaned"])
        ]
        if orphans:
            ax.text(
                0.98,
                0.95,
                "\n".join(orphans),
                transform=ax.transAxes,
                ha="right",
                va="top",
                fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.8},
            )
        ax.set_xlabel("teardown delay minus idle_timeout (ms)")
        ax.set_ylabel("calls")
        ax.set_title("Stall: last caller frame to upstream socket closed")
        ax.legend(fontsize=7, loc="upper left")
        save(fig_, "stall_teardown.png")

    if "soak" in sc:
        fig_, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
        for key in ordered(sc["soak"]["series"]):
            series = sc["soak"]["series"][key]
            t = series["t"]
            label = LABELS.get(key, key)
            axes[0].plot(t, [r / MiB for r in series["rss"]], color=COLORS.get(key), label=label)
            axes[1].plot(t, series["fds"], color=COLORS.get(key), label=label)
            axes[2].plot(t, series["tasks"], color=COLORS.get(key), label=label)
        duration = sc["soak"]["params"]["calls"] / sc["soak"]["params"]["rate"]
        for ax in axes:
            ax.axvline(duration, color="grey", linewidth=0.8, linestyle=":")
        axes[0].set_ylabel("RSS MiB")
        axes[1].set_ylabel("open fds")
        axes[2].set_ylabel("live tasks")
        axes[2].set_xlabel("seconds since the first call (dotted: last call started)")
        axes[0].set_title("Soak: server RSS, fds and tasks over time")
        axes[0].legend(fontsize=7)
        save(fig_, "soak_series.png")
    return written


# ---------------------------------------------------------------------------------- write


def write_all(out: Path, results: dict[str, Any]) -> None:
    """results.json, plots, report.md in ``out``."""
    clean = _clean(results)
    try:
        clean["plots"] = plots(out, clean)
    except Exception as exc:  # a broken plot must not lose the figures
        clean["plots"] = []
        clean.setdefault("errors", {})["plots"] = f"{type(exc).__name__}: {exc}"
    clean["targets"] = targets(clean)
    (out / "results.json").write_text(json.dumps(clean, indent=2) + "\n")
    (out / "report.md").write_text(render(clean))


def publish(out: Path, dest: Path | None = None) -> Path:
    """Copy one run's report.md, plots and profile to ``benchmarks/RESULTS.md`` + ``results-images/``."""
    dest = dest or ROOT / "benchmarks" / "RESULTS.md"
    images = dest.parent / "results-images"
    images.mkdir(exist_ok=True)
    for png in out.glob("*.png"):
        shutil.copy2(png, images / png.name)
    text = (out / "report.md").read_text()
    text = re.sub(r"\]\(([\w-]+\.png)\)", r"](results-images/\1)", text)
    listing = out / "profile-voxbridge.txt"
    if listing.exists():
        shutil.copy2(listing, images / listing.name)
        text = text.replace(
            f"`{listing.name}`", f"[results-images/{listing.name}](results-images/{listing.name})"
        )
    header = (
        "<!-- Generated by `python -m benchmarks.run --update-results-md` from "
        f"benchmarks/results/{out.name}/report.md and benchmarks/HISTORY.md; do not edit by "
        "hand. -->\n\n"
    )
    history = dest.parent / "HISTORY.md"
    if history.exists():  # the before/after record of each hot-path change, kept by hand
        text += "\n" + history.read_text()
    dest.write_text(header + text)
    return dest
