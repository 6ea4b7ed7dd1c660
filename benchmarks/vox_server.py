"""voxbridge as the benchmarks run it: ``voxbridge serve``, plus a task count and an optional profile.

This does what ``voxbridge serve`` does -- ``Settings`` from ``VOXBRIDGE_*`` variables, the same
logging set-up, :func:`voxbridge.server.serve` until SIGINT/SIGTERM -- and adds what the harness
needs from inside the process:

* ``--stats-interval S``: every S seconds a line ``stats {"tasks": N, ...}`` with the live trio
  tasks (walked from the root task; no instrument, so no cost per task) and garbage-collector
  pauses (:mod:`benchmarks.gcstats`);
* ``--profile PATH``: run under cProfile (CPU-time clock) and write the stats to PATH on
  shutdown.

The harness passes every setting through the environment (``VOXBRIDGE_IDLE_TIMEOUT`` ...), so the
server runs exactly the configuration an operator would get from the same variables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from voxbridge.logs import configure
from voxbridge.server import serve
from voxbridge.settings import Settings, SettingsError

from .gcstats import GcStats
from .trio_tasks import count_tasks, task_names


async def report_stats(interval: float) -> None:
    """Print ``stats {"tasks": N, "gc_...": ...}`` every ``interval`` seconds."""
    gc_stats = GcStats()
    while True:
        await trio.sleep(interval)
        line = {"tasks": count_tasks(), **gc_stats.snapshot()}
        sys.stdout.write("stats " + json.dumps(line) + "\n")
        sys.stdout.flush()


#: A held call has exactly one provider socket reader task: the calls a trace was taken with.
CALL_TASK = "voxbridge.upstream.connection.Upstream._read"


def _package(filename: str) -> str:
    """The package an allocation's file belongs to (``trio``, ``wsproto``, ``voxbridge``, ...);
    attrs-generated methods count as the class's package."""
    if filename.startswith("<attrs generated"):
        return filename.split()[-1].split(".")[0].lstrip("<")
    parts = filename.replace("\\", "/").split("/")
    if "site-packages" in parts[:-1]:
        return parts[parts.index("site-packages") + 1].removesuffix(".py")
    if "voxbridge" in parts[:-1]:  # a checkout
        return "voxbridge"
    return "stdlib and other"


def by_package(snapshot: Any) -> Counter[str]:
    """Traced bytes per package (:func:`_package`)."""
    totals: Counter[str] = Counter()
    for stat in snapshot.statistics("filename"):
        totals[_package(stat.traceback[0].filename)] += stat.size
    return totals


def _write_trace(path: str, snapshot: Any, total: int, idle: Counter[str]) -> None:
    by_line = snapshot.statistics("lineno")
    tasks = task_names()
    calls = tasks[CALL_TASK]
    grown = by_package(snapshot)
    grown.subtract(idle)
    lines = [f"traced {total / 1024:.0f} KiB; {calls} calls held", ""]
    if calls:
        per_call = {name: size / calls / 1024 for name, size in grown.items() if size > 0}
        lines += [
            f"per held call, by package (grown since serving began): {sum(per_call.values()):.1f} KiB"
        ]
        lines += [
            f"{kib:8.2f} KiB {name}" for name, kib in sorted(per_call.items(), key=lambda i: -i[1])
        ]
        lines += [""]
    lines += ["by file"] + [str(stat) for stat in snapshot.statistics("filename")[:25]]
    lines += ["", "tasks"] + [f"{n:6d} {name}" for name, n in tasks.most_common(25)]
    lines += ["", "by line"] + [str(stat) for stat in by_line[:60]]
    lines += ["", "voxbridge, by line"]
    lines += [str(stat) for stat in by_line if "/voxbridge/" in stat.traceback[0].filename]
    Path(path).write_text("\n".join(lines) + "\n")


async def trace_peak(path: str, idle: Counter[str], interval: float = 2.0) -> None:
    """Keep in ``path`` the tracemalloc top allocation sites (and live tasks) at the highest
    traced total seen: where a held call's memory goes. ``idle`` (traced bytes per package while
    serving, before any call) is the baseline of the figures per held call.

    Diagnostics only (``VOXBENCH_TRACEMALLOC=path``): tracing slows the server down several times.
    """
    import tracemalloc

    peak = 0
    while True:
        await trio.sleep(interval)
        snapshot = tracemalloc.take_snapshot()
        total = sum(stat.size for stat in snapshot.statistics("filename"))
        if total > peak:
            peak = total
            _write_trace(path, snapshot, total, idle)


async def run(settings: Settings, stats_interval: float) -> None:
    async with trio.open_nursery() as nursery:
        trace_path = os.environ.get("VOXBENCH_TRACEMALLOC")
        if trace_path:
            import tracemalloc

            tracemalloc.start()

        async def serve_then_stop(*, task_status: trio.TaskStatus[object]) -> None:
            await serve(settings, task_status=task_status)
            nursery.cancel_scope.cancel()

        server = await nursery.start(serve_then_stop)
        if trace_path:  # the baseline: serving, before any call (none can come before this line)
            nursery.start_soon(trace_peak, trace_path, by_package(tracemalloc.take_snapshot()))
        sys.stdout.write(f"voxbridge listening on {server.url}\n")  # type: ignore[attr-defined]
        sys.stdout.flush()
        if stats_interval > 0:
            nursery.start_soon(report_stats, stats_interval)


def use_stdlib_json() -> None:
    """Parse with the ``json`` module as voxbridge did before orjson (``VOXBENCH_JSON=stdlib``):
    the A/B of the parser inside one benchmark run. Benchmarks only."""
    import functools
    import types

    from voxbridge.carriers import twilio
    from voxbridge.providers import openai_realtime, ultravox

    def reject(name: str) -> object:
        raise ValueError(f"{name} is not JSON")

    stdlib = types.SimpleNamespace(loads=json.loads, JSONDecodeError=ValueError)
    hooked = types.SimpleNamespace(
        loads=functools.partial(json.loads, parse_constant=reject), JSONDecodeError=ValueError
    )
    twilio.orjson = hooked  # type: ignore[attr-defined]
    openai_realtime.orjson = stdlib  # type: ignore[attr-defined]
    ultravox.orjson = stdlib  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.vox_server",
        description="voxbridge serve for the benchmarks (settings from VOXBRIDGE_* variables).",
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream-url", help="provider URL (sets provider_url)")
    parser.add_argument("--stats-interval", type=float, default=0.0, help="0 = no stats lines")
    parser.add_argument(
        "--profile",
        default=os.environ.get("VOXBENCH_PROFILE"),
        help="write cProfile stats here on shutdown (default: $VOXBENCH_PROFILE)",
    )
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(port=args.port, provider_url=args.upstream_url)
    except SettingsError as exc:
        sys.stderr.write(f"vox_server: {exc}\n")
        return 2
    configure(settings.log_format, settings.log_level)
    if os.environ.get("VOXBENCH_GC_THRESHOLD"):  # experiments: "700,10,10" is CPython's default
        import gc

        gc.set_threshold(*(int(x) for x in os.environ["VOXBENCH_GC_THRESHOLD"].split(",")))
    if os.environ.get("VOXBENCH_JSON") == "stdlib":
        use_stdlib_json()
    if args.profile:
        import cProfile
        import time

        profiler = cProfile.Profile(time.process_time)  # CPU time: idle waits do not count
        profiler.enable()
        try:
            trio.run(run, settings, args.stats_interval)
        except KeyboardInterrupt:
            pass
        finally:
            profiler.disable()
            profiler.dump_stats(args.profile)
    else:
        try:
            trio.run(run, settings, args.stats_interval)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
