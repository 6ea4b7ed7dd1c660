"""A real Prometheus scrapes a running voxbridge and computes the idle-timeout SLI.

Prometheus (the binary from Debian's ``prometheus`` package, found through tests/services.py) runs
on loopback with a config in ``tmp_path``: it scrapes the server's ``/metrics`` every second and
evaluates deploy/prometheus's rules every second. Once it has scraped the server once, calls are
placed -- two stalled callers, which the server ends with ``idle_timeout`` after a 1 s
``--idle-timeout``, and a normal one -- and the SLI is asked of Prometheus's HTTP API until it
turns non-zero.

The SLI is queried verbatim, ``[5m]`` range and all: ``rate()`` needs only two samples in its
range, one before the increment and one after, and a short range would not make it non-zero any
sooner. The sample before is the pre-initialised 0 of the first scrape. That is why the calls wait
for it: a counter first seen at 2 has no increase for ``rate()`` to see, which is the late-series
problem pre-initialisation exists to prevent.

Prometheus is stopped whatever happens: SIGTERM, then SIGKILL if it has not exited within 5 s.
Without the binary on PATH the test is skipped, saying why.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from promql_names import RULE_FILES, rules
from services import binary
from test_e2e_server import running

from voxbridge.testing import CallResult, simulate_call

BUDGET = 30.0  # seconds of real time for the whole test
STOP_GRACE = 5.0  # seconds Prometheus gets to exit after SIGTERM before SIGKILL
SLI = 'sum(rate(voxbridge_call_disconnects_total{reason="idle_timeout"}[5m]))'
IDLE_TIMEOUTS = 'sum(voxbridge_call_disconnects_total{reason="idle_timeout"})'
STALLED_CALLS = 2


@pytest.fixture
def prometheus() -> str:
    """Prometheus's path, looked up outside trio so that a skip keeps its reason."""
    return binary("prometheus")


def free_port() -> int:
    """A port nothing listens on now (bound, read, released); Prometheus binds it next."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def config(voxbridge_port: int) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in RULE_FILES],
        "scrape_configs": [
            {
                "job_name": "voxbridge",
                "static_configs": [{"targets": [f"127.0.0.1:{voxbridge_port}"]}],
            }
        ],
    }


async def stop(process: trio.Process) -> None:
    """``run_process``'s cancellation: terminate, then kill if it is still there after a while."""
    process.terminate()
    with trio.move_on_after(STOP_GRACE):
        await process.wait()
        return
    process.kill()


class PrometheusAPI:
    """Prometheus's HTTP API, on loopback."""

    def __init__(self, client: httpx.AsyncClient, url: str, process: trio.Process, log: Path):
        self.client, self.url, self.process, self.log = client, url, process, log

    def check_alive(self) -> None:
        if self.process.returncode is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise AssertionError(f"prometheus exited ({self.process.returncode}):\n{tail}")

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        response = await self.client.get(f"{self.url}/api/v1/query", params={"query": expr})
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def until(
        self, expr: str, predicate: Callable[[list[dict[str, Any]]], bool]
    ) -> list[dict[str, Any]]:
        """Query ``expr`` until ``predicate`` holds of its result (the caller bounds the wait)."""
        while True:
            self.check_alive()
            result = await self.query(expr)
            if predicate(result):
                return result
            await trio.sleep(0.2)

    async def wait_ready(self) -> None:
        while True:
            self.check_alive()
            try:
                if (await self.client.get(f"{self.url}/-/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            await trio.sleep(0.1)


def scalar(result: list[dict[str, Any]]) -> float:
    """The value of a one-sample result (``sum(...)``)."""
    assert len(result) == 1, result
    return float(result[0]["value"][1])


@pytest.mark.hang_limit(BUDGET + 20)
async def test_prometheus_scrapes_voxbridge_and_the_idle_timeout_sli_turns_non_zero(
    prometheus: str, tmp_path: Path
) -> None:
    results: list[CallResult] = []
    with trio.fail_after(BUDGET):
        async with running(idle_timeout=1.0) as (server, _agent):
            config_file = tmp_path / "prometheus.yml"
            config_file.write_text(yaml.safe_dump(config(server.port)))
            port = free_port()
            log = tmp_path / "prometheus.log"
            command = [
                prometheus,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ]
            with log.open("wb") as output:
                async with trio.open_nursery() as nursery:
                    process = await nursery.start(
                        partial(
                            trio.run_process,
                            command,
                            stdout=output,
                            stderr=output,
                            check=False,
                            deliver_cancel=stop,
                        )
                    )
                    try:
                        async with httpx.AsyncClient(timeout=5) as client:
                            api = PrometheusAPI(client, f"http://127.0.0.1:{port}", process, log)
                            await api.wait_ready()
                            # The first scrape: every series at its pre-initialised 0.
                            await api.until(
                                'up{job="voxbridge"}', lambda r: bool(r) and scalar(r) == 1
                            )
                            baseline = await api.query(IDLE_TIMEOUTS)

                            async def call(**options: float) -> None:
                                results.append(await simulate_call(server.media_url, **options))

                            async with trio.open_nursery() as calls:
                                for _ in range(STALLED_CALLS):
                                    calls.start_soon(partial(call, seconds=30, stall_after=0.3))
                                calls.start_soon(partial(call, seconds=0.5))

                            sli = await api.until(SLI, lambda r: bool(r) and scalar(r) > 0)
                            counted = await api.until(
                                IDLE_TIMEOUTS,
                                lambda r: bool(r) and scalar(r) == STALLED_CALLS,
                            )
                            recorded = await api.until(
                                'job:voxbridge_idle_timeouts:rate5m{job="voxbridge"}',
                                lambda r: bool(r) and scalar(r) > 0,
                            )
                            excess_fds = await api.query("instance:voxbridge_excess_open_fds:sum")
                            rule_health = (await client.get(f"{api.url}/api/v1/rules")).json()
                    finally:
                        nursery.cancel_scope.cancel()  # stops Prometheus (``stop``)

    assert process.returncode is not None
    assert (
        sorted(r.close_reason or "" for r in results)
        == ["caller_stop"] + ["idle_timeout"] * STALLED_CALLS
    )
    assert scalar(baseline) == 0  # the series was there, at 0, before the first call
    assert scalar(sli) > 0
    assert scalar(counted) == STALLED_CALLS
    assert scalar(recorded) > 0
    # The rules join process_open_fds with voxbridge_calls_active on real scrape labels.
    assert 0 < scalar(excess_fds) < 256
    # Prometheus evaluated every rule of deploy/prometheus against real data, without an error.
    evaluated = {
        rule["name"]: rule["health"]
        for group in rule_health["data"]["groups"]
        for rule in group["rules"]
    }
    names = {str(rule.get("record") or rule["alert"]) for rule in rules()}
    assert evaluated == dict.fromkeys(names, "ok")
