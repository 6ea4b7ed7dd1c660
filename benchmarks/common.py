"""What every scenario needs: processes on pinned cores, CPU and memory readings, statistics.

Every peer (voxbridge, the baselines, the floor's echo servers), the upstream fake and the load
generators run as subprocesses. The server under test is pinned to the last core, everything else
(the fake, the generators, this harness) to the others, so the server's core is its own and the
load never competes with it. :class:`Proc` starts a process, waits for the line that announces its
URL, keeps reading its stdout on a thread (``stats {...}`` lines, replies to commands) and reads
its CPU time, RSS and open file descriptors through psutil.
"""

from __future__ import annotations

import json
import math
import os
import platform
import queue
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

import psutil

__all__ = [
    "PYTHON",
    "ROOT",
    "CpuSample",
    "HarnessError",
    "Proc",
    "cores",
    "fig",
    "machine_info",
    "percentile",
    "positive",
    "raise_fd_limit",
    "versions",
]

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


class HarnessError(RuntimeError):
    """The harness itself failed (a process did not start, a generator crashed ...)."""


def positive(value: object) -> bool:
    """A measured figure that must be a finite number above zero is one (smoke checks)."""
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def fig(value: float | int | None, unit: str, **extra: Any) -> dict[str, Any]:
    """One figure with its unit, as results.json stores it (``None`` = not measured)."""
    if isinstance(value, float) and not math.isfinite(value):
        value = None
    out: dict[str, Any] = {"value": value, "unit": unit}
    out.update(extra)
    return out


# ------------------------------------------------------------------------------- machine


def cores() -> tuple[set[int], set[int]]:
    """(server cores, load cores): the last allowed core for the server, the rest for the load.

    On a one-core machine both are that core (nothing is pinned apart).
    """
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    if len(allowed) < 2:
        return set(allowed), set(allowed)
    return {allowed[-1]}, set(allowed[:-1])


def pin(pid: int, cpus: set[int]) -> bool:
    """Pin ``pid`` and all its threads to ``cpus``; False where that is not allowed."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    try:
        for tid in tids:
            os.sched_setaffinity(tid, cpus)
        return True
    except (AttributeError, OSError):
        return False


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise RLIMIT_NOFILE (soft, up to the hard limit) for this process and its children."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def machine_info(server: set[int] | None = None, load: set[int] | None = None) -> dict[str, Any]:
    """CPU count and model, kernel, memory, fd limit, and the cores server and load run on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if server is None or load is None:
        server, load = cores()
    return {
        "cpu_count": os.cpu_count(),
        "cpus_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model or platform.processor(),
        "kernel": platform.release(),
        "system": platform.system(),
        "memory_total_bytes": psutil.virtual_memory().total,
        "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "server_cores": sorted(server),
        "load_cores": sorted(load),
        "load_average_at_start": os.getloadavg(),
    }


def versions() -> dict[str, str]:
    """Python and the packages that matter here."""
    out = {"python": platform.python_version(), "implementation": platform.python_implementation()}
    for name in (
        "voxbridge",
        "trio",
        "trio-websocket",
        "hypercorn",
        "wsproto",
        "h11",
        "uvicorn",
        "websockets",
        "prometheus-client",
        "psutil",
        "matplotlib",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


# ---------------------------------------------------------------------------------- stats


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return float(ordered[rank])


# ------------------------------------------------------------------------------ processes


class CpuSample:
    """user+system CPU seconds of a set of processes at one moment (exited ones count as 0)."""

    def __init__(self, procs: Sequence[Proc]) -> None:
        self.at = time.monotonic()
        self.cpu = {p.name: p.cpu() for p in procs}

    def delta(self, later: CpuSample) -> dict[str, float]:
        return {name: later.cpu.get(name, 0.0) - value for name, value in self.cpu.items()}


_READY = re.compile(r"listening on (\S+)")


class Proc:
    """One subprocess of the harness.

    Args:
        name: a label for logs and results.
        argv: the command (``[PYTHON, "-m", ...]``).
        cpus: cores to pin it to, right after start (threads it starts later inherit).
        pin_when_ready: pin only once it is ready (so several can start on every core).
        env: extra environment variables.
        log: where its stderr goes.
        ready: wait for a ``... listening on URL`` line on stdout (``url`` holds it) before the
            constructor returns; with ``ready=False`` call :meth:`wait_ready` later (to start
            several processes at once) or not at all.
        stdin: give it a pipe on stdin for commands (:meth:`command`).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpus: set[int] | None = None,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        ready: bool = True,
        stdin: bool = False,
        timeout: float = 20.0,
        pin_when_ready: bool = False,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.url: str | None = None
        self.stats: list[tuple[float, dict[str, Any]]] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._log: TextIO | None = open(log, "a") if log else None  # noqa: SIM115
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env.setdefault("PYTHONPATH", str(ROOT))
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log if self._log else subprocess.DEVNULL,
            cwd=ROOT,
            env=full_env,
            text=True,
            bufsize=1,
        )
        self.pid = self.popen.pid
        self.cpus = cpus
        self.pin_when_ready = pin_when_ready
        self.pinned = pin(self.pid, cpus) if cpus and not pin_when_ready else False
        try:
            self.ps: psutil.Process | None = psutil.Process(self.pid)
        except psutil.Error:
            self.ps = None
        self._last_cpu = 0.0
        self._thread = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._thread.start()
        self.timeout = timeout
        if ready:
            self.wait_ready()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            line = line.rstrip("\n")
            if line.startswith("stats "):
                try:
                    self.stats.append((time.monotonic(), json.loads(line[6:])))
                except ValueError:
                    pass
                continue
            self._lines.put(line)
        self._lines.put(None)

    def wait_ready(self, timeout: float | None = None) -> str:
        """Wait for the ``listening on URL`` line; returns (and sets) ``url``."""
        if self.url is not None:
            return self.url
        self.url = self._wait_ready(self.timeout if timeout is None else timeout)
        if self.pin_when_ready and self.cpus:
            self.pinned = pin(self.pid, self.cpus)
        return self.url

    def _wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise HarnessError(f"{self.name} did not start within {timeout:g}s")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise HarnessError(
                    f"{self.name} exited during start-up (status {self.popen.wait()}); "
                    f"see its log {self._log.name if self._log else ''}"
                )
            match = _READY.search(line)
            if match:
                return match.group(1)

    def line(self, timeout: float) -> str:
        """The next stdout line (not a stats line)."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise HarnessError(f"{self.name}: no output within {timeout:g}s") from None
        if line is None:
            raise HarnessError(f"{self.name} exited (status {self.popen.poll()})")
        return line

    def command(self, text: str, timeout: float = 10.0) -> dict[str, Any]:
        """Send one command line on stdin and return the JSON line it answers."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(text + "\n")
        self.popen.stdin.flush()
        reply: dict[str, Any] = json.loads(self.line(timeout))
        return reply

    # --- readings ---------------------------------------------------------------------------

    def cpu(self) -> float:
        """user+system CPU seconds so far (the last reading once it has exited)."""
        if self.ps is not None:
            try:
                t = self.ps.cpu_times()
                self._last_cpu = t.user + t.system
            except psutil.Error:
                pass
        return self._last_cpu

    def rss(self) -> int:
        """Resident set size in bytes (0 once exited)."""
        try:
            return int(self.ps.memory_info().rss) if self.ps else 0
        except psutil.Error:
            return 0

    def fds(self) -> int:
        """Open file descriptors (0 once exited)."""
        try:
            return int(self.ps.num_fds()) if self.ps else 0
        except psutil.Error:
            return 0

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"{self.name} still running after {timeout:g}s") from None

    def terminate(self) -> None:
        """SIGTERM without waiting (:meth:`stop` later waits); lets several exit at once."""
        if self.popen.poll() is None:
            self.cpu()
            try:
                self.popen.send_signal(signal.SIGTERM)
            except OSError:
                pass

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds. Returns the exit status."""
        if self.popen.poll() is None:
            self.cpu()  # last reading while it still exists
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        if self.popen.stdin is not None:
            try:
                self.popen.stdin.close()
            except OSError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.popen.returncode

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
