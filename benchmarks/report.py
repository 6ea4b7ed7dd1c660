"""Write a run's ``results.json``, ``report.md`` and plots; publish one run as ``RESULTS.md``.

The report puts voxbridge next to both baselines (and the layer floor) in every table, as ratios
first: numbers from different runs on shared machines are not comparable, ratios from one run are.
The targets of BENCHMARKS.md are evaluated here, each marked *met*, *not met* or *not evaluated*
(with the reason: a smoke run, a size smaller than the target names, a feature not available).
"""

from __future__ import annotations

import array
import json
import math
import re
import shutil
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


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def ordered(peers: dict[str, Any]) -> list[str]:
    return [k for k in PEER_ORDER if k in peers] + [k for k in peers if k not in PEER_ORDER]


# ------------------------------------------------------------------------------- targets


def _row(figure: str, target: str, measured: str, status: str, note: str = "") -> dict[str, str]:
    return {
        "figure": figure,
        "target": target,
        "measured": measured,
        "status": status,
        "note": note,
    }


def targets(results: dict[str, Any]) -> list[dict[str, str]]:
    """Evaluate the BENCHMARKS.md targets against this run."""
    sc = results.get("scenarios", {})
    smoke = results.get("smoke", False)
    rows: list[dict[str, str]] = []

    def status(ok: bool | None, size_ok: bool = True, why: str = "") -> tuple[str, str]:
        if smoke:
            return "not evaluated", "smoke run (toy sizes)"
        if ok is None:
            return "not evaluated", why or "not measured"
        if not size_ok:
            return "not evaluated", why
        return ("met" if ok else "not met"), ""

    # stall
    stall = sc.get("stall", {}).get("peers", {})
    if "voxbridge" in stall:
        vox = stall["voxbridge"]
        n = v(vox["calls"]) or 0
        p99 = v(vox["teardown_p99"])
        orphans = v(vox["orphaned"])
        others = ", ".join(
            f"{LABELS.get(k, k)} {f(v(stall[k]['orphaned']), 0)}/{f(v(stall[k]['calls']), 0)}"
            for k in ordered(stall)
            if not k.startswith("voxbridge")
        )
        st, note = status(
            None if p99 is None else p99 <= 50,
            n >= 1000,
            f"run with {n:.0f} calls; the target names 1,000",
        )
        rows.append(
            _row(
                "stall teardown p99 (minus idle timeout)",
                "<= 50 ms with 1,000 stalled calls",
                f"{f(p99, 1, 'ms')} with {n:.0f} calls",
                st,
                note,
            )
        )
        st, note = status(
            None if orphans is None else orphans == 0,
            n >= 1000,
            f"run with {n:.0f} calls; the target names 1,000",
        )
        rows.append(
            _row(
                "orphaned upstream sockets (idle + 5 s)",
                "0 (baselines: every socket)",
                f"voxbridge {f(orphans, 0)}/{n:.0f}; {others}",
                st,
                note,
            )
        )
    # relay
    relay = sc.get("relay", {}).get("variants", {})
    floor = sc.get("floor", {}).get("stacks", {})
    trio_floor = next((s for name, s in floor.items() if name.startswith("trio")), None)
    variant = "agent" if "agent" in relay else next(iter(relay), None)
    if variant is not None:
        peers = relay[variant]
        vox = peers.get("voxbridge")
        if vox is not None:
            cps = v(vox["cpu_per_call_second"])
            trio = v(peers["trio"]["cpu_per_call_second"]) if "trio" in peers else None
            r = cps / trio if cps is not None and trio else None
            st, note = status(None if r is None else r <= 0.9)
            rows.append(
                _row(
                    f"relay CPU per call-second, default settings ({variant} upstream)",
                    "<= 0.9x the naive trio baseline",
                    f"{f(cps, 2, 'ms')} vs {f(trio, 2, 'ms')}: {rx(cps, trio)}",
                    st,
                    note,
                )
            )
            per_msg = v(vox["cpu_per_message"])
            fl = v(trio_floor["floor_per_message"]) if trio_floor else None
            r = per_msg / fl if per_msg is not None and fl else None
            st, note = status(None if r is None else r <= 1.3, why="floor scenario not run")
            rows.append(
                _row(
                    "relay CPU per relayed frame vs the layer floor (hypercorn + trio-websocket)",
                    "within 1.3x of the floor",
                    f"{f(per_msg, 0, 'us')} vs floor {f(fl, 0, 'us')}: {rx(per_msg, fl)}",
                    st,
                    note,
                )
            )
        batch = peers.get("voxbridge-batch")
        asyncio_ = v(peers["asyncio"]["cpu_per_call_second"]) if "asyncio" in peers else None
        if batch is not None:
            b = v(batch["cpu_per_call_second"])
            r = b / asyncio_ if b is not None and asyncio_ else None
            st, note = status(None if r is None else r <= 0.8)
            rows.append(
                _row(
                    "relay CPU per call-second, opt-in batching",
                    "<= 0.8x the asyncio baseline",
                    f"{f(b, 2, 'ms')} vs {f(asyncio_, 2, 'ms')}: {rx(b, asyncio_)} "
                    f"(latency p50 {f(v(batch['latency_p50']), 1, 'ms')})",
                    st,
                    note,
                )
            )
        else:
            rows.append(
                _row(
                    "relay CPU per call-second, opt-in batching",
                    "<= 0.8x the asyncio baseline",
                    "-",
                    "not evaluated",
                    "upstream batching is not available in this voxbridge",
                )
            )
    # capacity
    cap = sc.get("capacity", {}).get("peers", {})
    if "voxbridge" in cap:
        vc = v(cap["voxbridge"]["calls_per_core"])
        tc = v(cap["trio"]["calls_per_core"]) if "trio" in cap else None
        r = vc / tc if vc is not None and tc else None
        st, note = status(None if r is None else r >= 1.2)
        rows.append(
            _row(
                "capacity: real-time calls per core (p99 <= 20 ms, loss <= 0.1 %)",
                ">= 1.2x the naive trio baseline",
                f"{f(vc, 0)} vs {f(tc, 0)}: {rx(vc, tc)}",
                st,
                note,
            )
        )
        if "voxbridge-batch" in cap:
            bc = v(cap["voxbridge-batch"]["calls_per_core"])
            ac = v(cap["asyncio"]["calls_per_core"]) if "asyncio" in cap else None
            r = bc / ac if bc is not None and ac else None
            st, note = status(None if r is None else r >= 1.2)
            rows.append(
                _row(
                    "capacity with batching",
                    ">= 1.2x the asyncio baseline",
                    f"{f(bc, 0)} vs {f(ac, 0)}: {rx(bc, ac)}",
                    st,
                    note,
                )
            )
        else:
            rows.append(
                _row(
                    "capacity with batching",
                    ">= 1.2x the asyncio baseline",
                    "-",
                    "not evaluated",
                    "upstream batching is not available in this voxbridge",
                )
            )
    # memory
    mem = sc.get("memory", {}).get("peers", {})
    if "voxbridge" in mem:
        per = v(mem["voxbridge"]["rss_per_call"])
        n = v(mem["voxbridge"]["calls_held"]) or 0
        st, note = status(
            None if per is None else per <= 64, n >= 1000, f"{n:.0f} calls held; target names 1,000"
        )
        rows.append(
            _row(
                "memory: RSS per established call",
                "<= 64 KiB at 1,000 calls",
                f"{f(per, 1, 'KiB')} at {n:.0f} calls",
                st,
                note,
            )
        )
    # soak
    soak = sc.get("soak", {}).get("peers", {})
    if "voxbridge" in soak:
        s = soak["voxbridge"]
        n = v(s["calls"]) or 0
        size_note = f"{n:,.0f} calls; the target names >= 10,000 (--soak-calls 10000)"
        growth = v(s["rss_growth_after_warmup"])
        st, note = status(None if growth is None else growth <= 2, n >= 10000, size_note)
        rows.append(
            _row(
                "soak: RSS growth after warm-up",
                "<= 2 % over >= 10,000 calls",
                f"{f(growth, 2, '%')} over {n:,.0f} calls",
                st,
                note,
            )
        )
        fds0, fds1 = v(s["fds_before"]), v(s["fds_after"])
        t0, t1 = v(s["tasks_before"]), v(s["tasks_after"])
        ok = None
        if None not in (fds0, fds1, t0, t1):
            assert fds0 is not None and fds1 is not None and t0 is not None and t1 is not None
            ok = fds1 <= fds0 + 1 and t1 <= t0
        st, note = status(ok, n >= 10000, size_note)
        rows.append(
            _row(
                "soak: fds and tasks back to baseline",
                "fds and tasks as before the load",
                f"fds {f(fds0, 0)} -> {f(fds1, 0)}, tasks {f(t0, 0)} -> {f(t1, 0)}",
                st,
                note,
            )
        )
        missing = v(s["missing_records"])
        st, note = status(None if missing is None else missing == 0, n >= 10000, size_note)
        rows.append(
            _row(
                "soak: calls whose record is missing",
                "0",
                f"{f(missing, 0)} of {f(v(s['records_started']), 0)} started",
                st,
                note,
            )
        )
    return rows


# ------------------------------------------------------------------------------- sections


def _relay(sc: dict[str, Any]) -> str:
    relay = sc["relay"]
    floor = sc.get("floor", {}).get("stacks", {})
    from .floor import PEER_STACK

    out = [f"## {relay['title']}", ""]
    p = relay["params"]
    rounds = p.get("rounds", 1)
    out.append(
        f"{p['calls']} calls, 20 ms frames in real time both ways, {p['seconds']:g} s measured "
        f"after {p['warmup']:g} s warm-up, in {rounds} round(s) that interleave the peers; each "
        "row is the peer's median round (by CPU), *rounds* lists every round's CPU ms / call-s. *Frame* = 20 ms of audio in either direction (a "
        "call-second is 50 caller frames and, from the agent, 50 more); a bridge may merge "
        "queued frames into fewer messages, and *msgs to caller* counts the media, mark and "
        "clear messages it sent each caller per call-second. Latency: round trip "
        "(echo) or agent-to-caller delivery of bursts (agent). Ratios are voxbridge / that peer "
        "(lower is cheaper); *vs floor* divides by the layer floor of the peer's own stack."
    )
    for variant, peers in relay["variants"].items():
        out += ["", f"### {variant} upstream", ""]
        vox = peers.get("voxbridge")
        rows = []
        for key in ordered(peers):
            figs = peers[key]
            stack = floor.get(PEER_STACK.get(key, ""), {})
            rows.append(
                [
                    LABELS.get(key, key),
                    f(v(figs["cpu_per_call_second"]), 2),
                    " / ".join(
                        f(x, 1)
                        for x in (figs.get("cpu_per_call_second_rounds") or {}).get("value") or []
                    ),
                    f(v(figs["cpu_per_message"]), 0),
                    rx(v(figs["cpu_per_message"]), v(stack.get("floor_per_message"))),
                    "-"
                    if key == "voxbridge" or vox is None
                    else rx(v(vox["cpu_per_call_second"]), v(figs["cpu_per_call_second"])),
                    f(v(figs.get("caller_messages_per_call_second")), 0),
                    f(v(figs["server_cpu_pct"]), 0),
                    f(v(figs["latency_p50"]), 1),
                    f(v(figs["latency_p99"]), 1),
                    f"{f(v(figs['frames_lost']), 0)} ({f(v(figs['loss_pct']), 2)} %)",
                    f"{f(v(figs['generator_cpu_pct']), 0)} / {f(v(figs['fake_cpu_pct']), 0)}",
                ]
            )
        out.append(
            table(
                [
                    "peer",
                    "CPU ms / call-s",
                    "rounds",
                    "CPU us / frame",
                    "vs floor",
                    "voxbridge / peer",
                    "msgs to caller / call-s",
                    "server CPU %",
                    "p50 ms",
                    "p99 ms",
                    "frames lost",
                    "load CPU % (gen / fake)",
                ],
                rows,
            )
        )
        gemini = peers.get("voxbridge-gemini")
        if vox is not None and gemini is not None:
            a, b = v(vox["cpu_per_call_second"]), v(gemini["cpu_per_call_second"])
            if a is not None and b is not None:
                out += [
                    "",
                    f"Resampling (Gemini Live: 8 -> 16 kHz up, 24 -> 8 kHz down, soxr) costs "
                    f"{b - a:+.2f} ms CPU per call-second here ({(b - a) / a * 100:+.0f} % on "
                    "the OpenAI-protocol peer). Its latency is timed by audio position (echo) "
                    "or a stamp coded into the audio (agent), and includes the resamplers' "
                    "hold-back; its lost frames include the audio they still hold at hang-up.",
                ]
    out += ["", "![relay CPU per call-second](relay_cpu.png)"]
    return "\n".join(out)


def _floor(sc: dict[str, Any]) -> str:
    floor = sc["floor"]
    p = floor["params"]
    out = [f"## {floor['title']}", ""]
    out.append(
        f"Echo servers under the relay load ({p['calls']} calls, {p['seconds']:g} s). One echo is "
        "one message in and one out; a relayed message costs half an echo on each of the two "
        "layers a bridge is built from, so a stack's floor per relayed message is half the sum of "
        "its two layers' echo costs."
    )
    rows = [
        [
            kind,
            f(v(figs["cpu_per_echo"]), 0),
            f(v(figs["server_cpu_pct"]), 0),
            f(v(figs["generator_cpu_pct"]), 0),
        ]
        for kind, figs in floor["servers"].items()
    ]
    out += ["", table(["echo server", "CPU us / echo", "server CPU %", "generator CPU %"], rows)]
    rows = [
        [name, f(v(s["floor_per_message"]), 0), f(v(s["floor_per_call_second"]), 2)]
        for name, s in floor["stacks"].items()
    ]
    out += ["", table(["stack", "floor us / relayed message", "floor ms / call-s"], rows)]
    return "\n".join(out)


def _capacity(sc: dict[str, Any]) -> str:
    cap = sc["capacity"]
    p = cap["params"]
    out = [f"## {cap['title']}", ""]
    out.append(
        f"Server pinned to one core; steps of x{p['factor']:g} from {p['start']} calls (echo "
        f"upstream, {p['seconds']:g} s measured per step) until round-trip p99 > {p['p99_ms']:g} "
        f"ms (plus the window, for voxbridge with batching: its frames wait for it on purpose) or "
        f"loss > {p['loss_pct']:g} %, then {p['bisect']} bisection step(s). The round trip "
        "crosses the bridge twice."
    )
    peers = cap["peers"]
    vox = peers.get("voxbridge")
    rows = []
    for key in ordered(peers):
        figs = peers[key]
        note = figs["calls_per_core"].get("note", "")
        rows.append(
            [
                LABELS.get(key, key),
                f(v(figs["calls_per_core"]), 0) + (f" ({note})" if note else ""),
                f(v(figs["first_failure"]), 0),
                "-"
                if key == "voxbridge" or vox is None
                else rx(v(vox["calls_per_core"]), v(figs["calls_per_core"])),
                "yes" if figs.get("load_bound") else "no",
            ]
        )
    out += [
        "",
        table(
            ["peer", "calls per core", "first failing step", "voxbridge / peer", "load-bound step"],
            rows,
        ),
    ]
    rows = []
    for key in ordered(peers):
        for s in peers[key]["steps"]:
            rows.append(
                [
                    LABELS.get(key, key),
                    str(s["calls"]),
                    f(s["p50_ms"], 1),
                    f(s["p99_ms"], 1),
                    f(s["loss_pct"], 2),
                    f(s["server_cpu_pct"], 0),
                    f(s["load_cpu_pct"], 0),
                    "pass" if s["passed"] else "FAIL",
                ]
            )
    out += [
        "",
        "<details><summary>every step</summary>",
        "",
        table(
            ["peer", "calls", "p50 ms", "p99 ms", "loss %", "server CPU %", "load CPU %", ""], rows
        ),
        "",
        "</details>",
        "",
        "![latency vs calls](capacity_latency.png)",
    ]
    return "\n".join(out)


def _stall(sc: dict[str, Any]) -> str:
    stall = sc["stall"]
    p = stall["params"]
    out = [f"## {stall['title']}", ""]
    out.append(
        f"{p['calls']} calls connect ({p['ramp_rate']:g}/s), trickle a frame every "
        f"{p['trickle']:g} s, then all go silent within {p['spread']:g} s with TCP open. "
        f"voxbridge idle_timeout = {p['idle_timeout']:g} s. Teardown delay = time from the "
        "caller's last frame to the upstream TCP connection closed, seen by the upstream fake, "
        f"minus idle_timeout. Orphans counted {p['orphan_wait']:g} s after every idle timeout "
        "expired."
    )
    peers = stall["peers"]
    rows = []
    for key in ordered(peers):
        figs = peers[key]
        rows.append(
            [
                LABELS.get(key, key),
                f(v(figs["upstream_sessions"]), 0),
                f(v(figs["closed_by_bridge"]), 0),
                f(v(figs["orphaned"]), 0),
                f(v(figs["teardown_p50"]), 1),
                f(v(figs["teardown_p99"]), 1),
                f(v(figs["teardown_max"]), 1),
                f(v(figs["caller_close_p99"]), 1),
                f(v(figs["server_cpu_pct_stalling"]), 0),
                f(v(figs.get("server_gc_pause_max")), 1),
                f((v(figs["server_rss_stalled"]) or 0) / MiB, 1),
            ]
        )
    out += [
        "",
        table(
            [
                "peer",
                "upstream sessions",
                "closed by bridge",
                "orphaned",
                "teardown p50 ms",
                "p99 ms",
                "max ms",
                "caller sees close p99 ms",
                "server CPU % meanwhile",
                "longest GC pause ms",
                "RSS while stalled MiB",
            ],
            rows,
        ),
        "",
        "A baseline's teardown is '-': it never closes a stalled call's upstream socket.",
        "",
        "![teardown delay histogram](stall_teardown.png)",
    ]
    return "\n".join(out)


def _memory(sc: dict[str, Any]) -> str:
    mem = sc["memory"]
    p = mem["params"]
    out = [f"## {mem['title']}", ""]
    out.append(
        f"{p['calls']} calls held open (a frame every {p['trickle']:g} s each way), RSS read "
        f"{p['settle']:g} s after the last connected, against the idle RSS after warm-up calls."
    )
    peers = mem["peers"]
    vox = peers.get("voxbridge")
    rows = []
    for key in ordered(peers):
        figs = peers[key]
        rows.append(
            [
                LABELS.get(key, key),
                f(v(figs["calls_held"]), 0),
                f((v(figs["rss_idle"]) or 0) / MiB, 1),
                f((v(figs["rss_held"]) or 0) / MiB, 1),
                f((v(figs["rss_after"]) or 0) / MiB, 1),
                f(v(figs["rss_per_call"]), 1),
                "-"
                if key == "voxbridge" or vox is None
                else rx(v(vox["rss_per_call"]), v(figs["rss_per_call"])),
                f(v(figs["fds_per_call"]), 2),
            ]
        )
    out += [
        "",
        table(
            [
                "peer",
                "calls held",
                "RSS idle MiB",
                "RSS held MiB",
                "RSS after MiB",
                "KiB / call",
                "voxbridge / peer",
                "fds / call",
            ],
            rows,
        ),
    ]
    return "\n".join(out)


def _soak(sc: dict[str, Any]) -> str:
    soak = sc["soak"]
    p = soak["params"]
    out = [f"## {soak['title']}", ""]
    out.append(
        f"{p['calls']:,} calls at {p['rate']:g}/s, {p['seconds_min']:g}-{p['seconds_max']:g} s "
        f"of audio each; callers: {p['caller_stall'] * 100:g} % stall (silent, TCP open, until the "
        f"load ends), {p['caller_vanish'] * 100:g} % vanish (TCP reset); upstream: "
        f"{p['upstream_drop'] * 100:g} % dropped, {p['upstream_stall'] * 100:g} % stalled. "
        f"voxbridge: idle_timeout {p['idle_timeout']:g} s, keepalive {p['keepalive_interval']:g} "
        f"s, pong_timeout {p['pong_timeout']:g} s, close_timeout {p['close_timeout']:g} s. *After* = once the peer was idle again "
        "(fds and tasks as before, every call it counted ended, no upstream session open), at "
        f"most {p['settle']:g} s after the load ended. Missing records = calls started minus calls ended on the peer's own counters."
    )
    peers = soak["peers"]
    rows = []
    for key in ordered(peers):
        s = peers[key]
        rows.append(
            [
                LABELS.get(key, key),
                f"{f(v(s['calls_opened']), 0)} / {f(v(s['calls']), 0)}",
                f"{f((v(s['rss_before']) or 0) / MiB, 1)} / {f((v(s['rss_max']) or 0) / MiB, 1)}"
                f" / {f((v(s['rss_after']) or 0) / MiB, 1)}",
                f(v(s["rss_growth_after_warmup"]), 2),
                f"{f(v(s['fds_before']), 0)} / {f(v(s['fds_load_end']), 0)} / "
                f"{f(v(s['fds_after']), 0)}",
                f"{f(v(s['tasks_before']), 0)} / {f(v(s['tasks_load_end']), 0)} / "
                f"{f(v(s['tasks_after']), 0)}",
                f(v(s["upstream_open_after"]), 0),
                f(v(s["missing_records"]), 0) if v(s["missing_records"]) is not None else "n/a",
            ]
        )
    out += [
        "",
        table(
            [
                "peer",
                "calls connected",
                "RSS MiB before / max / after",
                "RSS growth %",
                "fds before / load end / after",
                "tasks before / load end / after",
                "upstream open after",
                "missing records",
            ],
            rows,
        ),
        "",
        "![RSS, fds and tasks over time](soak_series.png)",
    ]
    return "\n".join(out)


def _codec(sc: dict[str, Any]) -> str:
    codec = sc["codec"]
    p = codec["params"]
    out = [f"## {codec['title']}", ""]
    out.append(
        "The JSON parse of the frames voxbridge handles most, on the server's core, best of "
        f"{p['repeat']} x {p['number']:,} parses. *json + hook* is `json.loads(frame, "
        "parse_constant=...)` as voxbridge's Twilio codec called it before (a new decoder per "
        "call); *json* is plain `json.loads`, as its provider codecs did; voxbridge now uses "
        "*orjson* for both. Speed-up = json / orjson."
    )
    rows = [
        [
            name,
            f(v(figs["chars"]), 0),
            f(v(figs["json_loads_hook"]), 2),
            f(v(figs["json_loads"]), 2),
            f(v(figs["orjson"]), 2),
            f"{f(v(figs['speedup']), 1)}x",
        ]
        for name, figs in codec["frames"].items()
    ]
    out += [
        "",
        table(
            ["frame", "chars", "json + hook us", "json us", "orjson us", "orjson speed-up"],
            rows,
        ),
        "",
        "`TwilioStream.receive` of one media frame (parse, validation, event), as voxbridge runs "
        f"it now: {f(v(codec['twilio_receive_media']), 2)} us.",
    ]
    audio = codec.get("provider_audio")
    if audio:
        rows = [
            [
                name,
                f(v(audio[f"{key}_in" if key != "soxr" else "soxr_8k_to_16k"]), 1),
                f(v(audio[f"{key}_out" if key != "soxr" else "soxr_24k_to_8k"]), 1),
                f(v(audio[f"{key}_per_call_second"]), 2),
            ]
            for name, key in (
                ("OpenAI Realtime (mu-law passed through)", "openai"),
                ("Gemini Live (PCM16 16 / 24 kHz: converted and resampled)", "gemini"),
                ("soxr alone (8 -> 16 kHz in, 24 -> 8 kHz out)", "soxr"),
            )
        ]
        out += [
            "",
            "Provider audio per 20 ms frame as the codecs run it: *in* is the caller's frame "
            "to the provider's message (`codec.audio`), *out* the provider's message to mu-law "
            "for the caller (`codec.decode`); a call-second is 50 frames each way while the agent "
            f"speaks. The Gemini agent's coded stamps read back: "
            f"{f(v(codec.get('gemini_stamps_decoded')), 0)} %.",
            "",
            table(["codec", "in us / frame", "out us / frame", "ms / call-s"], rows),
        ]
    return "\n".join(out)


def _profile(results: dict[str, Any]) -> str:
    prof = results["profile"]
    out = ["## Profile: where voxbridge's server time goes", ""]
    out.append(
        f"{prof['tool']} on the voxbridge server under the relay load ({prof['calls']} calls, "
        f"{prof['variant']} upstream, {prof['seconds']:g} s). Full listing: `{prof['file']}`."
    )
    for title, key in (("self time", "self"), ("inclusive time", "inclusive")):
        entries = prof.get(key) or []
        if not entries:
            continue
        rows = [[f"{e['pct']:.1f} %", f"`{e['function']}`"] for e in entries[:20]]
        out += ["", f"**By {title}**", "", table(["share", "function"], rows)]
    if prof.get("groups"):
        rows = [[f"{pct:.1f} %", name] for name, pct in prof["groups"]]
        out += ["", "**By package (self time)**", "", table(["share", "package"], rows)]
    return "\n".join(out)


def render(results: dict[str, Any]) -> str:
    """report.md for a run."""
    m, ver = results["machine"], results["versions"]
    title = "voxbridge benchmarks" + (" (smoke run)" if results.get("smoke") else "")
    out = [f"# {title}", ""]
    out.append(
        f"Run {results['started_utc']}, {results['elapsed_s']:g} s. Machine: {m['cpu_count']} "
        f"CPUs ({m['cpu_model']}), Linux {m['kernel']}, {m['memory_total_bytes'] / MiB / 1024:.0f}"
        f" GiB; server pinned to core {m['server_cores']}, load on {m['load_cores']}. Python "
        f"{ver['python']}, trio {ver['trio']}, trio-websocket {ver['trio-websocket']}, hypercorn "
        f"{ver['hypercorn']}, wsproto {ver['wsproto']}, uvicorn {ver['uvicorn']}, websockets "
        f"{ver['websockets']}, voxbridge {ver['voxbridge']}."
    )
    out += [
        "",
        "Numbers from different runs on shared machines are not comparable; ratios within one "
        "run are. Every figure with its unit is in `results.json`.",
    ]
    if results.get("notes"):
        out += ["", "Notes: " + "; ".join(results["notes"]) + "."]
    if results.get("errors"):
        out += ["", "**Errors:** " + "; ".join(f"{k}: {e}" for k, e in results["errors"].items())]
    rows = [
        [
            r["figure"],
            r["target"],
            r["measured"],
            f"**{r['status']}**" if r["status"] == "met" else r["status"],
            r["note"],
        ]
        for r in targets(results)
    ]
    if rows:
        out += [
            "",
            "## Targets (BENCHMARKS.md)",
            "",
            table(["figure", "target", "measured", "status", "note"], rows),
        ]
    sc = results["scenarios"]
    for name, section in (
        ("relay", _relay),
        ("floor", _floor),
        ("capacity", _capacity),
        ("stall", _stall),
        ("memory", _memory),
        ("soak", _soak),
        ("codec", _codec),
    ):
        if name in sc:
            out += ["", section(sc)]
    if results.get("profile"):
        out += ["", _profile(results)]
    return "\n".join(out) + "\n"


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
                label=f"{LABELS.get(key, key)} p99",
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
