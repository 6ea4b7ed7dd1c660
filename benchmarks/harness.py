"""The harness: starts peers, the upstream fake and the load generators, and shows progress.

A scenario gets a :class:`Bench` and asks it for processes:

* :meth:`Bench.fake` -- the upstream fake (:mod:`benchmarks.upstream_fake`) on the load cores,
  ``ws://`` or, with ``tls=True``, ``wss://`` with a test certificate (:meth:`Bench.certificates`);
* :meth:`Bench.peer` -- voxbridge or a baseline, on the server core, talking to that fake (a
  ``wss://`` one through the system's TLS defaults, trusting the test CA: ``SSL_CERT_FILE``);
* :meth:`Bench.echo_server` -- one of the floor's echo servers, on the server core;
* :meth:`Bench.load` -- one or more generator processes (:mod:`benchmarks.loadgen`) on the load
  cores, returning a :class:`LoadRun` to wait on.

Times handed to generators are ``CLOCK_MONOTONIC`` seconds (``time.monotonic()`` here), one clock
for every process on the machine.
"""

from __future__ import annotations

import array
import json
import math
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from voxbridge.testing.fake_gemini import RESOURCE as GEMINI_RESOURCE

from .common import PYTHON, CpuSample, HarnessError, Proc, cores

__all__ = ["PEERS", "Bench", "LoadRun", "PeerSpec", "TlsCertificates", "latency_summary"]


@dataclass(frozen=True)
class PeerSpec:
    """How to run one bridge under test."""

    key: str
    label: str
    module: str
    env: dict[str, str] = field(default_factory=dict)
    metrics: str | None = None  # "voxbridge" or "trio": which /metrics names it serves
    #: The protocol it speaks to the upstream fake: "openai" (OpenAI Realtime) or "gemini" (Gemini
    #: Live; the relay only: the other scenarios read timestamps the resampled audio cannot carry).
    upstream: str = "openai"

    @property
    def batch_ms(self) -> float:
        """The opt-in upstream batching window this peer runs with (0 = none)."""
        return float(self.env.get("VOXBRIDGE_UPSTREAM_BATCH_MS", 0))


#: The batching window the ``voxbridge-batch`` peer runs with.
BATCH_MS = 40


def _voxbridge(key: str, label: str, upstream: str = "openai", **env: str) -> PeerSpec:
    """voxbridge as ``voxbridge serve`` runs it, with ``env`` on top of the common settings."""
    common = {
        "VOXBRIDGE_PROVIDER": "echo",
        "VOXBRIDGE_LOG_FORMAT": "json",
        "VOXBRIDGE_LOG_LEVEL": "info",
        "VOXBRIDGE_MAX_CALLS": "20000",
        "VOXBRIDGE_DRAIN_TIMEOUT": "2",
    }
    return PeerSpec(
        key, label, "benchmarks.vox_server", common | env, metrics="voxbridge", upstream=upstream
    )


PEERS: dict[str, PeerSpec] = {
    "voxbridge": _voxbridge("voxbridge", "voxbridge"),
    "voxbridge-batch": _voxbridge(
        "voxbridge-batch",
        f"voxbridge (batching {BATCH_MS} ms)",
        VOXBRIDGE_UPSTREAM_BATCH_MS=str(BATCH_MS),
    ),
    # Only on request (--peers voxbridge,voxbridge-json): the A/B of the JSON parser, in one run.
    "voxbridge-json": _voxbridge(
        "voxbridge-json", "voxbridge (stdlib json)", VOXBENCH_JSON="stdlib"
    ),
    # Only on request (--peers voxbridge,voxbridge-sparse): --marks sparse, a mark per burst and
    # per 500 ms of agent audio instead of per media message (benchmarks/bargein.py: accuracy).
    "voxbridge-sparse": _voxbridge(
        "voxbridge-sparse", "voxbridge (sparse marks)", VOXBRIDGE_MARKS="sparse"
    ),
    # Only on request (--peers voxbridge,voxbridge-gemini), relay only: --provider gemini against
    # the fake speaking Gemini Live -- PCM16 16 kHz in, 24 kHz out, so voxbridge resamples (soxr)
    # both ways on the hot path. Next to the voxbridge peer: what resampling costs per call.
    "voxbridge-gemini": _voxbridge(
        "voxbridge-gemini",
        "voxbridge (Gemini Live, resampling)",
        upstream="gemini",
        VOXBRIDGE_PROVIDER="gemini",
    ),
    "trio": PeerSpec(
        "trio", "naive trio baseline", "benchmarks.baselines.trio_bridge", metrics="trio"
    ),
    "asyncio": PeerSpec(
        "asyncio", "asyncio tutorial baseline", "benchmarks.baselines.asyncio_bridge"
    ),
}


def batching_available() -> tuple[bool, str]:
    """Whether this voxbridge accepts ``upstream_batch_ms`` > 0 (the opt-in batching window)."""
    try:
        from voxbridge.settings import Settings

        Settings(upstream_batch_ms=BATCH_MS)
    except Exception as exc:
        return False, str(exc)
    return True, ""


def latency_summary(samples_us: array.array[int] | list[int]) -> dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds of microsecond samples."""
    values = sorted(samples_us)
    n = len(values)
    if not n:
        return {"n": 0, "p50": math.nan, "p90": math.nan, "p99": math.nan, "max": math.nan}

    def at(q: float) -> float:
        return values[max(0, min(n - 1, math.ceil(q / 100 * n) - 1))] / 1000

    return {
        "n": n,
        "p50": at(50),
        "p90": at(90),
        "p99": at(99),
        "max": values[-1] / 1000,
        "mean": sum(values) / n / 1000,
    }


@dataclass(frozen=True)
class TlsCertificates:
    """A run's test PKI for ``wss://`` upstreams (``trustme``).

    ``server``: the upstream fake's private key and certificate chain (PEM; for ``127.0.0.1`` and
    ``localhost``). ``trust``: the file every peer gets as ``SSL_CERT_FILE`` -- the test CA followed
    by the system's CA bundle, so a peer's default TLS context loads what it loads in production
    (``ssl.create_default_context()`` reads that variable through OpenSSL; voxbridge, trio-websocket
    and ``websockets`` all build their ``wss://`` context that way, so no peer needs a TLS option).
    """

    server: Path
    trust: Path


class LoadRun:
    """Generator processes running one spec, split across ``procs`` processes."""

    def __init__(self, bench: Bench, name: str, spec: dict[str, Any], procs: int) -> None:
        self.bench = bench
        self.name = name
        self.procs: list[Proc] = []
        self.sample_paths: list[Path] = []
        calls = int(spec.get("calls", 1))
        soak = spec.get("soak")
        total = int(soak["calls"]) if soak else calls
        procs = max(1, min(procs, total))
        for i in range(procs):
            share = total // procs + (1 if i < total % procs else 0)
            sub = dict(spec)
            sub["seed"] = int(spec.get("seed", 1)) * 100 + i
            sub["bucket_offset"] = i
            sub["bucket_stride"] = procs
            sub["calls_total"] = total
            if soak:
                sub["soak"] = dict(soak, calls=share, rate=float(soak["rate"]) / procs)
                sub["start_at"] = float(spec["start_at"]) + i / float(soak["rate"])
            else:
                sub["calls"] = share
            path = bench.work / f"{name}-{i}.bin"
            sub["samples_path"] = str(path)
            self.sample_paths.append(path)
            spec_path = bench.work / f"{name}-{i}.json"
            spec_path.write_text(json.dumps(sub))
            self.procs.append(
                Proc(
                    f"{name}-gen{i}",
                    [PYTHON, "-m", "benchmarks.loadgen", "--spec-file", str(spec_path)],
                    cpus=bench.load_cpus,
                    log=bench.logs / f"{name}-gen{i}.log",
                    ready=False,
                )
            )
        self.deadline = float(spec.get("deadline", time.monotonic() + 600))

    def wait(self) -> dict[str, Any]:
        """Wait for every generator (bounded by the spec's deadline) and merge their results."""
        merged: dict[str, Any] = {}
        for proc in self.procs:
            left = max(5.0, self.deadline - time.monotonic() + 10.0)
            try:
                line = proc.line(left)
                result = json.loads(line)
            except (HarnessError, ValueError) as exc:
                proc.stop(1.0)
                raise HarnessError(f"load generator {proc.name} failed: {exc}") from exc
            proc.wait(10.0)
            proc.stop()
            for key, value in result.items():
                if isinstance(value, bool):
                    continue
                if isinstance(value, int | float):
                    if key == "lateness_max_ms":
                        merged[key] = max(merged.get(key, 0.0), value)
                    else:
                        merged[key] = merged.get(key, 0) + value
                elif isinstance(value, list):
                    merged.setdefault(key, []).extend(value)
                elif isinstance(value, dict):
                    bucket = merged.setdefault(key, {})
                    for k, v in value.items():
                        bucket[k] = bucket.get(k, 0) + v
        samples: array.array[int] = array.array("I")
        for path in self.sample_paths:
            if path.exists():
                with open(path, "rb") as f:
                    data = f.read()
                samples.frombytes(data[: len(data) // 4 * 4])
                path.unlink()
        merged["samples"] = samples
        return merged

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop(1.0)


class Bench:
    """One benchmark run: output folders, cores, the console and its progress bars.

    Args:
        out: the run's folder (``benchmarks/results/<timestamp>``).
        smoke: toy sizes.
        console: where rich writes.
        peers: which peers scenarios run (keys of :data:`PEERS`).
        gen_procs: generator processes per load (0 = by size).
    """

    def __init__(
        self,
        out: Path,
        *,
        smoke: bool = False,
        console: Console | None = None,
        peers: list[str] | None = None,
        gen_procs: int = 0,
    ) -> None:
        self.out = out
        self.smoke = smoke
        self.console = console or Console()
        self.logs = out / "logs"
        self.work = out / "work"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.server_cpus, self.load_cpus = cores()
        self.peers = peers or ["voxbridge", "trio", "asyncio"]
        self.gen_procs = gen_procs
        self.lead = 0.25 if smoke else 0.8  # seconds from spawning generators to their start_at
        self.notes: list[str] = []
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._reapers: list[threading.Thread] = []
        self._certificates: TlsCertificates | None = None

    # --- progress ---------------------------------------------------------------------------

    @contextmanager
    def scenario(self, name: str, steps: int) -> Iterator[TaskID]:
        """A progress bar for one scenario (``steps`` units of work)."""
        task = self.progress.add_task(name, total=steps)
        try:
            yield task
        finally:
            self.progress.update(task, completed=steps)

    def advance(self, task: TaskID, description: str | None = None) -> None:
        self.progress.advance(task)
        if description:
            self.progress.update(task, description=description)

    def sleep_until(self, when: float, label: str = "") -> None:
        """Sleep until ``when`` (monotonic), with a seconds bar for this wait."""
        left = when - time.monotonic()
        if left <= 0:
            return
        task = self.progress.add_task(f"  {label}", total=round(left, 1))
        start = time.monotonic()
        while (now := time.monotonic()) < when:
            time.sleep(min(0.2, when - now))
            self.progress.update(task, completed=round(min(now - start, left), 1))
        self.progress.remove_task(task)

    def log(self, message: str) -> None:
        self.progress.console.log(message)

    # --- processes --------------------------------------------------------------------------

    def certificates(self) -> TlsCertificates:
        """The run's test certificates, made on first use in the work folder."""
        if self._certificates is None:
            import trustme

            ca = trustme.CA()
            server = self.work / "upstream-tls.pem"
            cert = ca.issue_cert("127.0.0.1", "localhost")
            cert.private_key_and_cert_chain_pem.write_to_path(str(server))
            system = ssl.get_default_verify_paths().cafile
            bundle = Path(system).read_bytes() if system and Path(system).is_file() else b""
            trust = self.work / "trust.pem"
            trust.write_bytes(ca.cert_pem.bytes() + b"\n" + bundle)
            self._certificates = TlsCertificates(server, trust)
        return self._certificates

    def fake(
        self,
        mode: str = "echo",
        tag: str = "",
        *,
        tls: bool = False,
        gemini: bool = False,
        wait: bool = True,
        **options: Any,
    ) -> Proc:
        """Start the upstream fake on the load cores (commands on stdin); ``tls``: ``wss://``;
        ``gemini``: a Gemini peer will connect (the fake loads what it needs meanwhile).

        With ``wait=False`` it returns at once; :meth:`ready` waits for it.
        """
        argv = [PYTHON, "-m", "benchmarks.upstream_fake", "--mode", mode, "--max-seconds", "3600"]
        if tls:
            argv += ["--certfile", str(self.certificates().server)]
        if gemini:
            argv.append("--gemini")
        for key, value in options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        return Proc(
            f"fake{tag}",
            argv,
            cpus=self.load_cpus,
            log=self.logs / f"fake{tag}.log",
            stdin=True,
            ready=wait,
        )

    def peer(
        self,
        key: str,
        upstream_url: str,
        *,
        settings: dict[str, Any] | None = None,
        stats_interval: float = 0.0,
        profile: Path | None = None,
        tag: str = "",
        wait: bool = True,
    ) -> Proc:
        """Start a bridge under test on the server core, talking to ``upstream_url``.

        A ``wss://`` upstream is trusted through ``SSL_CERT_FILE`` (:class:`TlsCertificates`).
        With ``wait=False`` it returns at once; :meth:`ready` waits for it.
        """
        spec = PEERS[key]
        env = dict(spec.env)
        if upstream_url.startswith("wss://"):
            env["SSL_CERT_FILE"] = str(self.certificates().trust)
        if spec.upstream == "gemini":  # the fake speaks Gemini Live on Gemini's resource path
            upstream_url = urlunsplit(urlsplit(upstream_url)._replace(path=GEMINI_RESOURCE))
        argv = [PYTHON, "-m", spec.module, "--port", "0", "--upstream-url", upstream_url]
        if spec.module == "benchmarks.vox_server":
            env["VOXBRIDGE_DB"] = str(self.work / f"voxbridge-{key}{tag}.db")
            for name, value in (settings or {}).items():
                env[f"VOXBRIDGE_{name.upper()}"] = str(value)
            if profile is not None:
                argv += ["--profile", str(profile)]
        if stats_interval > 0:
            argv += ["--stats-interval", str(stats_interval)]
        proc = Proc(
            f"{key}{tag}",
            argv,
            cpus=self.server_cpus,
            env=env,
            log=self.logs / f"{key}{tag}.log",
            timeout=30.0,
            ready=False,
            pin_when_ready=True,
        )
        if wait:
            self.ready(proc)
        return proc

    def ready(self, *procs: Proc) -> None:
        """Wait until each of ``procs`` (started with ``wait=False``) listens; stop them all if one
        does not."""
        try:
            for proc in procs:
                proc.wait_ready()
                if proc.pin_when_ready and not proc.pinned:
                    note = "server not pinned to a core (sched_setaffinity refused)"
                    if note not in self.notes:
                        self.notes.append(note)
        except BaseException:
            for proc in procs:
                proc.stop(1.0)
            raise

    def start_peers(
        self,
        upstream_url: str,
        *,
        tag: str = "",
        upstreams: tuple[str, ...] = ("openai",),
        wait: bool = True,
        **options: Any,
    ) -> dict[str, Proc]:
        """Start every peer of this run at once (idle ones cost nothing), then wait for each
        (``wait=False``: :meth:`ready` later).

        Only peers whose upstream protocol is in ``upstreams`` run (the relay alone takes the
        Gemini peer); the others are skipped with a note.
        """
        procs: dict[str, Proc] = {}
        skipped = [k for k in self.peers if PEERS[k].upstream not in upstreams]
        for key in skipped:
            note = f"{key} runs in the relay scenario only"
            if note not in self.notes:
                self.notes.append(note)
        try:
            for key in (k for k in self.peers if k not in skipped):
                procs[key] = self.peer(key, upstream_url, tag=tag, wait=False, **options)
        except BaseException:
            for proc in procs.values():
                proc.stop(1.0)
            raise
        if wait:
            self.ready(*procs.values())
        return procs

    def echo_server(self, kind: str) -> Proc:
        """Start one of the floor's echo servers on the server core."""
        return Proc(
            f"echo-{kind}",
            [PYTHON, "-m", "benchmarks.echo_servers", kind, "--port", "0"],
            cpus=self.server_cpus,
            log=self.logs / f"echo-{kind}.log",
        )

    def load(self, name: str, spec: dict[str, Any], procs: int | None = None) -> LoadRun:
        """Start generator processes for ``spec`` (calls split between them)."""
        if procs is None:
            calls = int(spec["soak"]["calls"] / 10) if spec.get("soak") else int(spec["calls"])
            procs = self.gen_procs or max(1, min(4, math.ceil(calls / 400)))
        return LoadRun(self, name, spec, procs)

    def retire(self, *procs: Proc) -> None:
        """Stop processes in the background (a graceful exit can take a second or two)."""
        for proc in procs:
            proc.terminate()
            thread = threading.Thread(target=proc.stop, name=f"stop-{proc.name}", daemon=True)
            thread.start()
            self._reapers.append(thread)

    def close(self) -> None:
        """Wait for every retired process to be gone."""
        for thread in self._reapers:
            thread.join(timeout=15)
        self._reapers.clear()

    # --- readings ---------------------------------------------------------------------------

    @staticmethod
    def media_url(proc: Proc) -> str:
        assert proc.url is not None
        return proc.url.replace("http://", "ws://", 1).rstrip("/") + "/twilio/media"

    @staticmethod
    def scrape(proc: Proc) -> dict[str, float]:
        """The peer's ``/metrics`` as {name{labels}: value} (empty if it has none)."""
        assert proc.url is not None
        try:
            # Connection: close -- the server closes first. A keep-alive scrape is held by hypercorn
            # in CLOSE_WAIT for keep_alive_timeout (5 s) after httpx's FIN, and the soak, which
            # tells callers' sockets by port, counted it as a caller's when its ephemeral port was
            # one a caller had used (2,000 callers' ports span the whole ephemeral range).
            response = httpx.get(
                proc.url + "/metrics", headers={"Connection": "close"}, timeout=5.0
            )
        except httpx.HTTPError:
            return {}
        if response.status_code != 200:
            return {}
        text = response.text
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out

    def cpu_window(
        self, procs: list[Proc], start: float, end: float, label: str
    ) -> dict[str, float]:
        """CPU seconds each process used between ``start`` and ``end`` (sleeps until then)."""
        self.sleep_until(start, f"{label}: warm-up")
        first = CpuSample(procs)
        self.sleep_until(end, f"{label}: measuring")
        second = CpuSample(procs)
        used = first.delta(second)
        used["_seconds"] = second.at - first.at
        return used


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is 0."""
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b) or b == 0:
        return None
    return a / b
