"""Run the benchmark suite: ``python -m benchmarks.run`` (``just bench``), ``--smoke`` for CI.

Every scenario runs voxbridge and both baselines back to back on this machine and writes, under
``benchmarks/results/<timestamp>/``: ``results.json`` (every figure with its unit, the machine,
the versions, the parameters), ``report.md`` (tables with ratios and the targets of
BENCHMARKS.md marked met / not met) and PNG plots. ``--smoke`` runs every scenario at toy size and
exits non-zero when the harness is broken (a figure missing, not finite, not positive where it
must be, an orphaned socket for voxbridge) -- never because a target was missed.

Scenario parameters are flags named ``--<scenario>-<parameter>`` (``--relay-calls 30``); each
scenario module also runs alone: ``python -m benchmarks.relay --calls 30``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import shutil
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console

from .common import ROOT, HarnessError, machine_info, pin, raise_fd_limit, versions
from .harness import PEERS, Bench, batching_available

__all__ = ["SCENARIOS", "main"]

SCENARIOS = ("relay", "floor", "capacity", "stall", "memory", "soak", "codec", "bargein")
RESULTS = ROOT / "benchmarks" / "results"


def scenario_module(name: str) -> ModuleType:
    return importlib.import_module(f"benchmarks.{name}")


def _add_params(parser: argparse.ArgumentParser, name: str, prefix: str) -> None:
    module = scenario_module(name)
    group = parser.add_argument_group(
        f"{name} parameters (full-run defaults; --smoke shrinks them)"
    )
    for field in dataclasses.fields(module.Params):
        kind = type(field.default)
        group.add_argument(
            f"--{prefix}{field.name.replace('_', '-')}",
            dest=f"{name}__{field.name}",
            type=kind,
            default=None,
            metavar=kind.__name__.upper(),
            help=f"default {field.default}",
        )


def build_parser(only: list[str] | None = None) -> argparse.ArgumentParser:
    single = only is not None and len(only) == 1
    prog = f"python -m benchmarks.{only[0]}" if single and only else "python -m benchmarks.run"
    doc = scenario_module(only[0]).__doc__ if single and only else __doc__
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(doc or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--smoke", action="store_true", help="toy sizes, sanity checks (CI)")
    if only is None:
        parser.add_argument(
            "--only", help=f"comma-separated scenarios (default all: {','.join(SCENARIOS)})"
        )
    parser.add_argument(
        "--peers",
        default="voxbridge,trio,asyncio",
        help=f"comma-separated peers to run (of {','.join(PEERS)}; voxbridge-batch is added "
        "automatically where batching is available)",
    )
    parser.add_argument("--out", type=Path, help="results folder (default results/<timestamp>)")
    parser.add_argument("--gen-procs", type=int, default=0, help="generator processes (0 = auto)")
    parser.add_argument(
        "--profile",
        choices=("auto", "none", "cprofile", "py-spy"),
        default="auto",
        help="profile voxbridge under the relay load once, after the scenarios; auto: with py-spy "
        "(else cProfile) when a CPU, latency or capacity target is not met, to explain it",
    )
    parser.add_argument("--profile-seconds", type=float, default=15.0, help="profiled window")
    parser.add_argument("--py-spy", default=None, help="py-spy binary (default: from PATH)")
    parser.add_argument(
        "--update-results-md",
        action="store_true",
        help="also copy report.md and plots to benchmarks/RESULTS.md (+ results-images/)",
    )
    for name in only or SCENARIOS:
        _add_params(parser, name, "" if single else f"{name}-")
    return parser


def params_for(name: str, args: argparse.Namespace) -> Any:
    module = scenario_module(name)
    params = module.Params.smoke() if args.smoke else module.Params()
    for field in dataclasses.fields(params):
        value = getattr(args, f"{name}__{field.name}", None)
        if value is not None:
            setattr(params, field.name, value)
    return params


def main(argv: list[str] | None = None, only: list[str] | None = None) -> int:
    """Entry point; ``only`` restricts to given scenarios (a scenario module's own ``main``)."""
    args = build_parser(only).parse_args(argv)
    names = list(only) if only else list(SCENARIOS)
    if only is None and args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = set(names) - set(SCENARIOS)
        if unknown:
            raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = set(peers) - set(PEERS)
    if unknown:
        raise SystemExit(f"unknown peer(s): {', '.join(sorted(unknown))}")
    if args.smoke and "voxbridge" in peers and "voxbridge-gemini" not in peers:
        peers.append("voxbridge-gemini")  # the Gemini fake and resampled timing (relay only)
    batching, why = batching_available()
    if batching and "voxbridge-batch" not in peers and "voxbridge" in peers and not args.smoke:
        peers.insert(1, "voxbridge-batch")

    console = Console(log_path=False)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + ("-smoke" if args.smoke else "")
    out = args.out or RESULTS / stamp
    out.mkdir(parents=True, exist_ok=True)
    fd_limit = raise_fd_limit()
    bench = Bench(out, smoke=args.smoke, console=console, peers=peers, gen_procs=args.gen_procs)
    if not batching:
        bench.notes.append(f"opt-in upstream batching not available in this voxbridge ({why})")

    started = time.monotonic()
    results: dict[str, Any] = {
        "suite": "voxbridge benchmarks",
        "smoke": args.smoke,
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(bench.server_cpus, bench.load_cpus),
        "versions": versions(),
        "peers": {k: PEERS[k].label for k in peers},
        "fd_limit": fd_limit,
        "batching_available": batching,
        "scenarios": {},
        "errors": {},
    }
    pin(os.getpid(), bench.load_cpus)  # the harness stays off the server's core
    problems: list[str] = []
    console.rule(f"voxbridge benchmarks{' (smoke)' if args.smoke else ''} -> {out}")
    with bench.progress:
        for name in names:
            module = scenario_module(name)
            params = params_for(name, args)
            t0 = time.monotonic()
            try:
                result = module.run(bench, params)
            except (HarnessError, OSError, ValueError, KeyError, AssertionError) as exc:
                results["errors"][name] = f"{type(exc).__name__}: {exc}"
                problems.append(f"{name}: harness error: {exc}")
                (out / "logs" / f"{name}-error.txt").write_text(traceback.format_exc())
                bench.log(f"[red]{name} failed: {exc}")
                continue
            result["elapsed_s"] = round(time.monotonic() - t0, 1)
            results["scenarios"][name] = result
            if args.smoke:
                problems += module.check(result)
            bench.log(f"{name} done in {result['elapsed_s']} s")
        tool = args.profile
        if tool == "auto":
            from .report import targets

            missed = [
                r for r in targets(results) if r["kind"] == "cpu" and r["status"] == "not met"
            ]
            tool = "py-spy" if missed else "none"
        if tool != "none" and "voxbridge" in peers:
            from .profiling import profile_voxbridge

            try:
                results["profile"] = profile_voxbridge(
                    bench, tool, seconds=args.profile_seconds, py_spy=args.py_spy
                )
            except HarnessError as exc:
                results["errors"]["profile"] = str(exc)
                problems.append(f"profile: {exc}")
    bench.close()
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["notes"] = bench.notes

    from .report import write_all

    write_all(out, results)
    shutil.rmtree(bench.work, ignore_errors=True)
    if args.update_results_md:
        from .report import publish

        publish(out)
    console.rule(f"done in {results['elapsed_s']} s")
    console.print(f"results: {out / 'results.json'}\nreport:  {out / 'report.md'}")
    if problems:
        console.print("[red]problems:")
        for problem in problems:
            console.print(f"  - {problem}")
        if args.smoke:
            return 1
    if results["errors"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
