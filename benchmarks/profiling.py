"""Where voxbridge's server time goes: the relay load, once, under a profiler.

``python -m benchmarks.run --profile py-spy`` (or ``cprofile``; by default ``auto``: py-spy when a
CPU, latency or capacity target is not met, so the report explains the miss) runs voxbridge under
the relay scenario's agent load after the scenarios and writes ``profile-voxbridge.txt`` (the full listing)
next to the report; the report shows the top functions by self and inclusive time and the share
of each package (voxbridge itself, trio, hypercorn, wsproto, trio-websocket, json, logging ...).

* ``py-spy`` samples the running server from outside (100 Hz, idle time excluded; each sample
  pauses the process for a few microseconds so its stacks are consistent). The ``bench`` extra
  installs it (or pass ``--py-spy PATH``); without it this falls back to cProfile.
* ``cprofile`` runs the server under cProfile with a CPU-time clock; it slows the server down
  (every call is traced), so shares are indicative, absolute times are not.
"""

from __future__ import annotations

import pstats
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .common import HarnessError
from .harness import Bench
from .relay import Params as RelayParams
from .relay import measure

__all__ = ["profile_voxbridge"]


def package_of(location: str) -> str:
    """A coarse owner for a source path: voxbridge, a site-package, or a stdlib module."""
    path = location.replace("\\", "/")
    if path.endswith("trio/_socket.py"):
        return "trio socket calls (incl. the kernel's send/recv)"
    if "/voxbridge/" in path or path.startswith("voxbridge/"):
        return "voxbridge"
    if "/benchmarks/" in path or path.startswith("benchmarks/"):
        return "benchmarks wrapper"
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/lib/python3" in path:
        rest = path.split("/lib/python3", 1)[1].split("/", 1)
        module = rest[1] if len(rest) > 1 else path
        return "stdlib " + module.split("/", 1)[0].removesuffix(".py")
    if path.startswith("<") or path == "~":
        return "builtins (C)"
    top = path.lstrip("./").split("/", 1)[0].removesuffix(".py")  # py-spy: "trio/_socket.py"
    return f"stdlib {top}" if top in sys.stdlib_module_names else top


def _top(counter: Counter[str], total: float, n: int = 30) -> list[dict[str, Any]]:
    return [
        {"function": name, "pct": count / total * 100 if total else 0.0}
        for name, count in counter.most_common(n)
    ]


#: Leaf frames of a thread blocked on a lock (a C call below them): waiting, not running. py-spy's
#: idle detection lets some through on these VMs (voxbridge's journal thread in ``queue.get``, trio's
#: idle worker threads), so they are dropped here rather than counted as their package's time.
WAITS = frozenset(
    {
        "Condition.wait (threading.py)",
        "Event.wait (threading.py)",
        "Thread._wait_for_tstate_lock (threading.py)",
        "WorkerThread._work (trio/_core/_thread_cache.py)",
    }
)


def _py_spy_summary(raw: Path) -> tuple[Counter[str], Counter[str], Counter[str], float, int]:
    """Self, inclusive and per-package counts from py-spy's raw (folded) output, their total, and
    the samples dropped as :data:`WAITS`."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0.0
    waiting = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_strip_line(frame) for frame in stack.split(";")]
        if frames[-1] in WAITS:
            waiting += count
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
        packages[package_of(_location(frames[-1]))] += count
    return own, inclusive, packages, total, waiting


def _strip_line(frame: str) -> str:
    # "send_message (trio_websocket/_impl.py:123)" -> "send_message (trio_websocket/_impl.py)"
    if frame.endswith(")") and "(" in frame:
        name, _, loc = frame[:-1].rpartition(" (")
        return f"{name} ({loc.rsplit(':', 1)[0]})"
    return frame


def _location(frame: str) -> str:
    return frame[:-1].rpartition(" (")[2] if frame.endswith(")") else frame


def _cprofile_summary(path: Path) -> tuple[Counter[str], Counter[str], Counter[str], float]:
    stats = pstats.Stats(str(path))
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0.0
    for (filename, line, name), row in stats.stats.items():  # type: ignore[attr-defined]
        tottime, cumtime = row[2], row[3]
        label = f"{name} ({filename}:{line})" if filename != "~" else name
        own[label] += tottime
        inclusive[label] += cumtime
        packages[package_of(filename)] += tottime
        total += tottime
    return own, inclusive, packages, total


def profile_voxbridge(
    bench: Bench, tool: str, *, seconds: float = 15.0, py_spy: str | None = None
) -> dict[str, Any]:
    """Profile voxbridge under the relay agent load; returns what the report shows."""
    params = RelayParams.smoke() if bench.smoke else RelayParams()
    beside = Path(sys.executable).with_name("py-spy")  # the bench extra installs it there
    spy = py_spy or shutil.which("py-spy") or (str(beside) if beside.exists() else None)
    if tool == "py-spy" and not spy:
        bench.notes.append("py-spy not found: profiled with cProfile instead")
        tool = "cprofile"
    listing = bench.out / "profile-voxbridge.txt"
    stats_path = bench.work / "voxbridge.pstats"
    raw_path = bench.work / "voxbridge.pyspy"
    with bench.scenario("profile", 1) as task:
        fake = bench.fake("agent", tag="-profile", burst=params.burst)
        try:
            assert fake.url is not None
            peer = bench.peer(
                "voxbridge",
                fake.url,
                tag="-profile",
                profile=stats_path if tool == "cprofile" else None,
            )
            spy_proc: subprocess.Popen[bytes] | None = None
            try:
                if tool == "py-spy":
                    assert spy is not None
                    duration = bench.lead + max(0.3, params.calls / 100) + params.warmup + seconds
                    spy_proc = subprocess.Popen(
                        [
                            spy,
                            "record",
                            "--pid",
                            str(peer.pid),
                            "--duration",
                            str(max(1, round(duration))),
                            "--rate",
                            "100",
                            "--format",
                            "raw",
                            "--output",
                            str(raw_path),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=open(bench.logs / "py-spy.log", "w"),  # noqa: SIM115
                    )
                    time.sleep(0.3)
                fake.command("mode agent")
                raw = measure(
                    bench,
                    peer,
                    fake,
                    calls=params.calls,
                    seconds=seconds,
                    warmup=params.warmup,
                    label="profile voxbridge",
                )
                if spy_proc is not None:
                    spy_proc.wait(timeout=60)
            finally:
                peer.stop(grace=15.0)
                if spy_proc is not None and spy_proc.poll() is None:
                    spy_proc.kill()
        finally:
            bench.retire(fake)
        bench.advance(task)
    if tool == "py-spy":
        if not raw_path.exists():
            raise HarnessError(f"py-spy wrote no profile (see {bench.logs / 'py-spy.log'})")
        own, inclusive, packages, total, waiting = _py_spy_summary(raw_path)
        unit = "samples"
    else:
        if not stats_path.exists():
            raise HarnessError("the cProfile run wrote no stats")
        own, inclusive, packages, total = _cprofile_summary(stats_path)
        unit, waiting = "CPU seconds", 0
    with open(listing, "w") as out:
        out.write(f"voxbridge under the relay agent load, {tool}, total {total:.1f} {unit}")
        out.write(
            f" ({waiting} more of threads waiting on a lock, dropped)\n\n" if waiting else "\n\n"
        )
        out.write("== by package (self) ==\n")
        for name, count in packages.most_common():
            out.write(f"{count / total * 100:6.2f} %  {name}\n")
        out.write("\n== by function, self ==\n")
        for name, count in own.most_common(80):
            out.write(f"{count / total * 100:6.2f} %  {name}\n")
        out.write("\n== by function, inclusive ==\n")
        for name, count in inclusive.most_common(80):
            out.write(f"{count / total * 100:6.2f} %  {name}\n")
    return {
        "tool": tool,
        "calls": params.calls,
        "variant": "agent",
        "seconds": seconds,
        "server_cpu_pct": raw["server_cpu"] / raw["window"] * 100,
        "file": listing.name,
        "total": total,
        "unit": unit,
        "waiting_dropped": waiting,
        "self": _top(own, total),
        "inclusive": _top(inclusive, total),
        "groups": [(name, count / total * 100) for name, count in packages.most_common(15)],
    }
