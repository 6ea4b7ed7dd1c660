"""The metric catalogue: what CONTRACT.md promises, what the registry holds, what docs/metrics.md
says, and what a running server serves.

* Every metric of CONTRACT.md's table is exported, with its type and labels (``CONTRACT``, kept in
  step with the shared CONTRACT.md when it is beside the checkout).
* Every label value is pre-initialised: each labelled family holds exactly the closed sets the code
  defines, and a real server scraped before, during and after calls serves the same series each
  time (nothing appears late, nothing vanishes).
* No ids in labels: label names from a short list, values from closed sets, and no call's or
  stream's SID anywhere in a scrape.
* ``promtool check metrics`` (Prometheus's own linter) passes on a scrape of a running server
  with calls in flight.
* docs/metrics.md's catalogue is the registry, both ways: names, types, labels, and every label
  value the process starts with.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from itertools import product
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from services import binary
from test_e2e_server import running

from voxbridge.carriers.registry import CARRIERS as REGISTERED_CARRIERS
from voxbridge.errors import Reason
from voxbridge.metrics import (
    CARRIERS,
    DIRECTIONS,
    PROVIDER_DROPS,
    PROVIDERS,
    RECONNECT_OUTCOMES,
    REJECTIONS,
    UNKNOWN_TOOL,
    USAGE_KINDS,
    Metrics,
)
from voxbridge.providers.registry import PROVIDERS as REGISTERED_PROVIDERS
from voxbridge.server import RunningServer
from voxbridge.testing import CallResult, simulate_call
from voxbridge.tools import BUILTIN_TOOLS, OUTCOMES

ROOT = Path(__file__).resolve().parents[1]
METRICS_DOC = ROOT / "docs" / "metrics.md"
#: The shared design contract, beside the checkout (as on developers' machines and in CI).
CONTRACT_MD = ROOT.parent / "shared" / "design" / "CONTRACT.md"
BUDGET = 30.0  # seconds of real time per end-to-end test

#: CONTRACT.md's metrics table: name -> (type, label names).
CONTRACT: dict[str, tuple[str, tuple[str, ...]]] = {
    "voxbridge_calls_active": ("gauge", ()),
    "voxbridge_calls_started_total": ("counter", ("carrier", "provider")),
    "voxbridge_call_disconnects_total": ("counter", ("reason",)),
    "voxbridge_call_duration_seconds": ("histogram", ("reason",)),
    "voxbridge_connections_rejected_total": ("counter", ("reason",)),
    "voxbridge_media_frames_total": ("counter", ("direction",)),
    "voxbridge_media_frames_dropped_total": ("counter", ("direction",)),
    "voxbridge_upstream_connect_seconds": ("histogram", ("provider",)),
    "voxbridge_upstream_reconnects_total": ("counter", ("outcome",)),
    "voxbridge_upstream_ping_rtt_seconds": ("histogram", ()),
    "voxbridge_barge_ins_total": ("counter", ()),
    "voxbridge_journal_write_errors_total": ("counter", ()),
    "voxbridge_provider_frames_dropped_total": ("counter", ("provider", "reason")),
    "voxbridge_tool_calls_total": ("counter", ("tool", "outcome")),
    "voxbridge_provider_usage_total": ("counter", ("provider", "kind")),
}

REASONS = {(reason.value,) for reason in Reason}
TOOLS = (*BUILTIN_TOOLS, UNKNOWN_TOOL)
#: Every labelled family -> the label values it is pre-initialised with (label names sorted).
PREINITIALISED: dict[str, set[tuple[str, ...]]] = {
    "voxbridge_calls_started_total": set(product(CARRIERS, PROVIDERS)),
    "voxbridge_call_disconnects_total": REASONS,
    "voxbridge_call_duration_seconds": REASONS,
    "voxbridge_connections_rejected_total": {(r,) for r in REJECTIONS},
    "voxbridge_media_frames_total": {(d,) for d in DIRECTIONS},
    "voxbridge_media_frames_dropped_total": {(d,) for d in DIRECTIONS},
    "voxbridge_provider_frames_dropped_total": set(product(PROVIDERS, PROVIDER_DROPS)),
    "voxbridge_upstream_connect_seconds": {(p,) for p in PROVIDERS},
    "voxbridge_upstream_reconnects_total": {(o,) for o in RECONNECT_OUTCOMES},
    "voxbridge_tool_calls_total": set(product(OUTCOMES, TOOLS)),  # (outcome, tool): sorted names
    "voxbridge_provider_usage_total": {
        (kind, provider) for provider, kinds in USAGE_KINDS.items() for kind in kinds
    },
}
#: Every label name voxbridge uses; ``le`` is a histogram's bucket bound.
LABEL_NAMES = {"carrier", "provider", "reason", "direction", "outcome", "tool", "kind", "le"}
#: Twilio SIDs (two capitals, 32 hex digits), UUIDs, phone numbers: ids that must never be labels.
ID_PATTERN = re.compile(
    r"[A-Z]{2}[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\+\d{6,}"
)

Family = tuple[str, str, tuple[str, ...], set[tuple[str, ...]]]  # name, type, labels, values


def family_of(name: str, kind: str) -> str:
    """The name a family is documented under: a counter's with ``_total``, others' as is."""
    return name + "_total" if kind == "counter" else name


def families(registry: CollectorRegistry | None = None) -> dict[str, Family]:
    """A fresh registry's families by documented name: (name, type, label names, label values)."""
    found: dict[str, Family] = {}
    for family in (registry or Metrics().registry).collect():
        name = family_of(family.name, family.type)
        labels: set[str] = set()
        values: set[tuple[str, ...]] = set()
        for sample in family.samples:
            pairs = sorted((k, v) for k, v in sample.labels.items() if k != "le")
            labels.update(k for k, _ in pairs)
            if pairs:
                values.add(tuple(v for _, v in pairs))
        found[name] = (name, family.type, tuple(sorted(labels)), values)
    return found


# --- the registry ---------------------------------------------------------------------------------


def test_every_contract_metric_is_exported_with_its_type_and_labels() -> None:
    exported = families()
    for name, (kind, labels) in CONTRACT.items():
        assert name in exported, f"{name} (CONTRACT.md) is not exported"
        assert exported[name][1:3] == (kind, tuple(sorted(labels))), name


def test_contract_table_matches_the_shared_contract() -> None:
    if not CONTRACT_MD.exists():
        pytest.skip(f"no shared design contract at {CONTRACT_MD}")
    section = CONTRACT_MD.read_text(encoding="utf-8").split("\n## Metrics", 1)[1]
    section = section.split("\n## ", 1)[0]
    table: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        name = re.fullmatch(r"`(voxbridge_\w+)`", cells[0])
        if name and len(cells) >= 3:
            labels = re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", cells[2]))
            table[name.group(1)] = (cells[1], tuple(labels))
    assert table == CONTRACT


def test_every_label_value_is_preinitialised() -> None:
    labelled = {name: f for name, f in families().items() if f[2]}
    assert set(labelled) == set(PREINITIALISED), "a labelled family has no entry here"
    for name, (_, _, _, values) in labelled.items():
        assert values == PREINITIALISED[name], name


def test_every_registered_provider_is_preinitialised() -> None:
    assert set(REGISTERED_PROVIDERS) <= set(PROVIDERS)
    assert set(USAGE_KINDS) <= set(PROVIDERS)


def test_every_registered_carrier_is_preinitialised() -> None:
    assert list(CARRIERS) == list(REGISTERED_CARRIERS)  # the registry itself, in its order
    values = families()["voxbridge_calls_started_total"][3]
    assert {carrier for carrier, _ in values} == set(REGISTERED_CARRIERS)


def test_declared_tools_are_preinitialised() -> None:
    metrics = Metrics()
    metrics.declare_tools(["lookup_order"])
    values = families(metrics.registry)["voxbridge_tool_calls_total"][3]
    assert values == set(product(OUTCOMES, (*TOOLS, "lookup_order")))


def test_labels_carry_no_ids() -> None:
    for name, _, labels, values in families().values():
        assert set(labels) <= LABEL_NAMES, name
        for value in (v for tup in values for v in tup):
            assert re.fullmatch(r"[a-z][a-z0-9_-]*", value), (name, value)


def test_a_private_registry_has_the_process_collector_and_a_given_one_does_not() -> None:
    assert "process_open_fds" in families()
    assert not any(
        name.startswith("process_") for name in families(Metrics(CollectorRegistry()).registry)
    )


# --- docs/metrics.md --------------------------------------------------------------------------------


def catalogue_table() -> dict[str, tuple[str, tuple[str, ...]]]:
    """docs/metrics.md's catalogue table: name -> (type, label names)."""
    section = METRICS_DOC.read_text(encoding="utf-8").split("\n## Catalogue", 1)[1]
    section = section.split("\n### ", 1)[0]
    table = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        name = re.fullmatch(r"`(\w+)`", cells[0])
        if name and len(cells) == 4:
            table[name.group(1)] = (cells[1], tuple(sorted(re.findall(r"`(\w+)`", cells[2]))))
    return table


def doc_section(name: str) -> str:
    """The ``### `name``` section of docs/metrics.md (empty if there is none), followed by the
    section of the metric it says it has "the same values as"."""
    parts = METRICS_DOC.read_text(encoding="utf-8").split(f"\n### `{name}`\n", 1)
    if len(parts) == 1:
        return ""
    section = parts[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    same = re.search(r"the same values as `(\w+)`", section)
    return section + doc_section(same.group(1)) if same else section


def test_docs_catalogue_is_the_registry_both_ways() -> None:
    documented = catalogue_table()
    exported = {name: (kind, labels) for name, kind, labels, _ in families().values()}
    assert documented.keys() - exported.keys() == set(), "documented but not exported"
    assert exported.keys() - documented.keys() == set(), "exported but not in docs/metrics.md"
    assert documented == exported


def test_docs_give_every_voxbridge_metric_a_section_with_its_label_values() -> None:
    for name, _, _, values in families().values():
        if not name.startswith("voxbridge_"):
            continue
        section = doc_section(name)
        assert section, f"docs/metrics.md has no section for {name}"
        assert "```promql" in section, f"{name}: no example query"
        for value in {v for tup in values for v in tup}:
            assert f"`{value}`" in section, f"{name}: label value {value} not documented"


def test_docs_state_the_idle_timeout_sli() -> None:
    sli = 'sum(rate(voxbridge_call_disconnects_total{reason="idle_timeout"}[5m]))'
    assert sli in METRICS_DOC.read_text(encoding="utf-8").split("\n## Catalogue", 1)[0]


# --- a running server -----------------------------------------------------------------------------


async def scrape_text(server: RunningServer) -> str:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"{server.url}/metrics")
    assert response.status_code == 200
    return response.text


Series = tuple[str, tuple[tuple[str, str], ...]]


def parse(text: str) -> dict[Series, float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[Series, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def wait_for(server: RunningServer, predicate: Callable[[dict[Series, float]], bool]) -> str:
    """Scrape until ``predicate`` holds of the samples (bounded by the caller's deadline)."""
    while True:
        text = await scrape_text(server)
        if predicate(parse(text)):
            return text
        await trio.sleep(0.05)


def ended(samples: dict[Series, float], reason: str) -> float:
    return value(samples, "voxbridge_call_disconnects_total", reason=reason)


def run_promtool(promtool: str, text: str) -> tuple[int, str]:
    """``promtool check metrics`` on ``text`` (stdin): its exit status and everything it printed."""
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def promtool() -> str:
    """promtool's path, looked up outside trio so that a skip keeps its reason."""
    return binary("promtool")


@pytest.mark.hang_limit(60)
async def test_scrapes_with_calls_in_flight_pass_promtool_and_no_series_appears_late(
    promtool: str,
) -> None:
    results: list[CallResult] = []

    async def call(**options: float) -> None:
        results.append(await simulate_call(server.media_url, **options))

    with trio.fail_after(BUDGET):
        async with running(idle_timeout=1.0) as (server, _agent):
            before = await scrape_text(server)
            async with trio.open_nursery() as calls:
                calls.start_soon(lambda: call(seconds=5.0))  # still running at the scrape
                calls.start_soon(lambda: call(seconds=0.4))  # ends caller_stop
                calls.start_soon(lambda: call(seconds=30.0, stall_after=0.3))  # idle_timeout
                during = await wait_for(
                    server,
                    lambda s: ended(s, "idle_timeout") == 1 and ended(s, "caller_stop") == 1,
                )
            after = await wait_for(server, lambda s: ended(s, "caller_stop") == 2)

    in_flight = parse(during)
    assert value(in_flight, "voxbridge_calls_active") == 1
    assert value(in_flight, "voxbridge_calls_started_total", carrier="twilio", provider="echo") == 3
    assert value(parse(after), "voxbridge_calls_active") == 0
    # Pre-initialised: the same series before the first call, mid-call, and after the last.
    assert parse(during).keys() == parse(before).keys()
    assert parse(after).keys() == parse(before).keys()
    reasons = sorted(result.close_reason or "" for result in results)
    assert reasons == ["caller_stop", "caller_stop", "idle_timeout"]
    # No ids: no call's or stream's SID anywhere in what was served.
    for result in results:
        for text in (during, after):
            assert result.call_sid not in text and result.stream_sid not in text
    assert not ID_PATTERN.search(during + after)
    # Prometheus's linter, on each scrape: nothing to say.
    for text in (before, during, after):
        assert run_promtool(promtool, text) == (0, "")


def test_promtool_reports_a_lint_problem(promtool: str) -> None:
    """The check above can fail: promtool does flag a counter without ``_total``."""
    status, output = run_promtool(
        promtool, "# HELP x_things x\n# TYPE x_things counter\nx_things 1\n"
    )
    assert status != 0
    assert 'counter metrics should have "_total" suffix' in output


@pytest.mark.hang_limit(40)
async def test_a_drain_exports_that_it_runs_when_it_began_and_its_timeout() -> None:
    """What the VoxbridgeDrainTooLong alert compares: the wall-clock time the drain began (0
    before), against the process's own drain timeout (``--drain-timeout`` from the start, then
    the bound of the drain that runs); ``voxbridge_draining`` turns 1 as well."""
    gauges = (
        "voxbridge_draining",
        "voxbridge_drain_started_timestamp_seconds",
        "voxbridge_drain_timeout_seconds",
    )
    with trio.fail_after(BUDGET):
        async with running(drain_timeout=45.0) as (server, _agent):
            idle = parse(await scrape_text(server))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: simulate_call(server.media_url, seconds=2.0))
                await wait_for(server, lambda s: value(s, "voxbridge_calls_active") == 1)
                before = time.time()
                nursery.start_soon(server.app.drain, 10.0)
                async with httpx.AsyncClient(timeout=5) as client:
                    while (await client.get(f"{server.url}/readyz")).status_code != 503:
                        await trio.sleep(0.02)
                after = time.time()
                draining = parse(await scrape_text(server))
    assert [value(idle, name) for name in gauges] == [0, 0, 45]
    assert [value(draining, name) for name in gauges[::2]] == [1, 10]
    assert before <= value(draining, "voxbridge_drain_started_timestamp_seconds") <= after
