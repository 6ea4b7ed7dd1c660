"""deploy/grafana/voxbridge.json: a Grafana dashboard that asks only for what voxbridge exports.

The JSON is loaded as Grafana would read it. Every target of every panel is parsed as PromQL
(promql-parser, a port of Prometheus's parser; Prometheus's own promtool reads them too when it is
on PATH), and the metric names it selects must be series voxbridge's ``/metrics`` carries or that
deploy/prometheus's recording rules record. The panels the operations issue asks for are there,
each querying the metric it is named for, and the data source is a variable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from promql_names import exported_series, metric_names, promtool_parses, recorded_names
from services import binary

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "voxbridge.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
MIN_SCHEMA_VERSION = 39  # Grafana 10.4

#: Panel title -> the voxbridge metrics (families, as documented) its queries must use.
REQUIRED_PANELS: dict[str, set[str]] = {
    "Active calls": {"voxbridge_calls_active"},
    "Call starts": {"voxbridge_calls_started_total"},
    "Call ends by reason": {"voxbridge_call_disconnects_total"},
    "Idle-timeout SLI": {"voxbridge_call_disconnects_total"},
    "Call duration": {"voxbridge_call_duration_seconds"},
    "Upstream connect time": {"voxbridge_upstream_connect_seconds"},
    "Upstream ping RTT": {"voxbridge_upstream_ping_rtt_seconds"},
    "Upstream reconnects": {"voxbridge_upstream_reconnects_total"},
    "Barge-ins": {"voxbridge_barge_ins_total"},
    "Connections rejected": {"voxbridge_connections_rejected_total"},
    "Tool calls": {"voxbridge_tool_calls_total"},
    "Provider usage": {"voxbridge_provider_usage_total"},
}
SLI = 'sum(rate(voxbridge_call_disconnects_total{job=~"$job", instance=~"$instance", reason="idle_timeout"}[5m]))'


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included; rows themselves are not panels."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(dashboard) for target in panel["targets"]]


def families_used(panel: dict[str, Any]) -> set[str]:
    exported = exported_series()
    return {
        exported[name]
        for target in panel["targets"]
        for name in metric_names(target["expr"])
        if name in exported
    }


def test_every_query_names_only_metrics_voxbridge_exports(dashboard: dict[str, Any]) -> None:
    allowed = set(exported_series()) | recorded_names()
    for panel in panels(dashboard):
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, (panel["title"], target["expr"])
            assert names <= allowed, (panel["title"], names - allowed)


@pytest.fixture
def promtool() -> str:
    return binary("promtool")


def test_prometheus_parses_every_query(
    dashboard: dict[str, Any], promtool: str, tmp_path: Path
) -> None:
    promtool_parses(promtool, exprs(dashboard), tmp_path)


def test_the_required_panels_are_there(dashboard: dict[str, Any]) -> None:
    by_title = {panel["title"]: panel for panel in panels(dashboard)}
    for title, metrics in REQUIRED_PANELS.items():
        assert title in by_title, f"no panel {title!r}"
        assert metrics <= families_used(by_title[title]), title


def test_the_sli_panel_shows_the_documented_sli(dashboard: dict[str, Any]) -> None:
    (panel,) = [p for p in panels(dashboard) if p["title"] == "Idle-timeout SLI"]
    assert SLI in [target["expr"] for target in panel["targets"]]


def test_call_duration_and_latencies_are_histogram_quantiles(dashboard: dict[str, Any]) -> None:
    by_title = {panel["title"]: panel for panel in panels(dashboard)}
    for title in ("Call duration", "Upstream connect time", "Upstream ping RTT"):
        for target in by_title[title]["targets"]:
            assert target["expr"].startswith("histogram_quantile("), (title, target["expr"])
            assert all(name.endswith("_bucket") for name in metric_names(target["expr"]))


def test_the_data_source_is_a_variable(dashboard: dict[str, Any]) -> None:
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    for name in ("job", "instance"):
        assert variables[name]["datasource"] == DATASOURCE
        query = re.fullmatch(r"label_values\((.+), (\w+)\)", variables[name]["definition"])
        assert query and query.group(2) == name, variables[name]["definition"]
        assert metric_names(query.group(1)) == {"voxbridge_calls_active"}


def test_the_model_is_well_formed(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= MIN_SCHEMA_VERSION
    assert dashboard["uid"] == "voxbridge" and dashboard["title"] == "voxbridge"
    ids = [panel["id"] for panel in dashboard["panels"]] + [
        panel["id"] for row in dashboard["panels"] for panel in row.get("panels", [])
    ]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
    for panel in panels(dashboard):
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
