"""deploy/prometheus/: the recording rules and alerts, checked by Prometheus's own promtool.

* ``promtool check rules`` accepts each file, and counts every rule in it;
* ``promtool test rules`` runs the unit tests in deploy/prometheus/tests/, which show each alert
  firing and not firing (checked here too, from the test files themselves);
* every alert on a share has a minimum-volume guard, and the quiet-night test groups (named
  ``quiet night: ...``) pass because of it: with the guards removed, promtool sees each of their
  alerts fire;
* the drain alert compares each process with its own exported drain timeout (no fixed ``for``);
* every expression names only metrics voxbridge exports or series the rules record, and the
  upstream failure ratio counts exactly the ``upstream_*`` reasons of the code;
* docs/metrics.md documents every rule and alert.

Without promtool on PATH the promtool tests are skipped, saying why (tests/services.py).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from promql_names import RULE_FILES, exported_series, metric_names, recorded_names, rules
from services import binary

from voxbridge.errors import Reason

ROOT = Path(__file__).resolve().parents[1]
TESTS = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.yml"))
METRICS_DOC = ROOT / "docs" / "metrics.md"
#: Prometheus's naming convention for recorded series: level:metric:operations.
RECORD_NAME = re.compile(r"[a-z_]+:voxbridge_[a-z_]+:[a-z0-9_]+")
SEVERITIES = {"warning", "critical"}


@pytest.fixture
def promtool() -> str:
    return binary("promtool")


def alerts() -> list[dict[str, object]]:
    return [rule for rule in rules() if "alert" in rule]


def test_the_files_are_there() -> None:
    assert [path.name for path in RULE_FILES] == ["voxbridge-alerts.yml", "voxbridge-rules.yml"]
    assert [path.name for path in TESTS] == [
        "calls_test.yml",
        "process_test.yml",
        "rejections_test.yml",
    ]


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda path: path.name)
def test_promtool_check_rules(promtool: str, path: Path) -> None:
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    groups = yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
    count = sum(len(group["rules"]) for group in groups)
    assert f"SUCCESS: {count} rules found" in done.stdout


@pytest.mark.parametrize("path", TESTS, ids=lambda path: path.name)
def test_promtool_test_rules(promtool: str, path: Path) -> None:
    done = subprocess.run(
        [promtool, "test", "rules", path.name],
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_test_rules_can_fail(promtool: str, tmp_path: Path) -> None:
    """A unit test expecting an alert that does not fire fails: the passes above mean something."""
    test = {
        "rule_files": [str(path) for path in RULE_FILES],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": 'voxbridge_drain_started_timestamp_seconds{job="v",instance="a"}',
                        "values": "0x10",
                    },
                    {
                        "series": 'voxbridge_drain_timeout_seconds{job="v",instance="a"}',
                        "values": "30x10",
                    },
                ],
                "alert_rule_test": [
                    {
                        "alertname": "VoxbridgeDrainTooLong",
                        "eval_time": "5m",
                        "exp_alerts": [{"exp_labels": {"severity": "warning"}}],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "wrong_test.yml"
    path.write_text(yaml.safe_dump(test))
    done = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "FAILED" in done.stdout + done.stderr


def test_every_alert_is_shown_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in TESTS:
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {str(rule["alert"]) for rule in alerts()}
    assert firing == names, "alerts never shown firing: " + str(names - firing)
    assert quiet == names, "alerts never shown not firing: " + str(names - quiet)


#: Alerts on a share of calls (or of drops): each needs a minimum volume as well, or a quiet
#: night with a handful of calls pages.
RATIO_ALERTS = {
    "VoxbridgeIdleTimeoutSpike",
    "VoxbridgeUpstreamFailureRatioHigh",
    "VoxbridgeUpstreamResumesFailing",
    "VoxbridgeUpstreamResumesFrequent",
}
#: The name that marks a promtool test group as a quiet night, which must not page.
QUIET_NIGHT = "quiet night"


def without_guards(expr: str) -> str:
    """An alert expression without its ``and ...`` lines (the volume guards)."""
    return "\n".join(line for line in expr.splitlines() if not line.strip().startswith("and "))


def is_a_share(expr: str) -> bool:
    """Whether ``expr`` compares a share: a recorded ratio, or a division of recorded rates."""
    names = metric_names(expr)
    divides = " / " in expr and bool(names & recorded_names())
    return divides or any(":ratio_" in name for name in names)


def test_ratio_alerts_have_a_minimum_volume_guard() -> None:
    ratios = {str(rule["alert"]) for rule in alerts() if is_a_share(str(rule["expr"]))}
    assert ratios == RATIO_ALERTS
    for rule in alerts():
        if rule["alert"] not in RATIO_ALERTS:
            continue
        guards = [
            line.strip()
            for line in str(rule["expr"]).splitlines()
            if line.strip().startswith("and ")
        ]
        # At least 0.01/s: more than 3 events in the 5 minutes of the rate.
        (guard,) = guards
        threshold = re.fullmatch(r"and (?:on \(job\) )?\S+:rate5m(?:\{[^}]*\})? > ([0-9.]+)", guard)
        assert threshold, (rule["alert"], guard)
        assert float(threshold.group(1)) >= 0.01, rule["alert"]


def test_quiet_nights_would_page_without_the_volume_guards(promtool: str, tmp_path: Path) -> None:
    """The quiet-night test groups pass (test_promtool_test_rules) because of the guards: with
    them removed, every alert they expect not to fire fires at every time they check."""
    alerts_file, rules_file = RULE_FILES
    document = yaml.safe_load(alerts_file.read_text(encoding="utf-8"))
    for group in document["groups"]:
        for rule in group["rules"]:
            rule["expr"] = without_guards(rule["expr"])
    unguarded = tmp_path / "voxbridge-alerts.yml"
    unguarded.write_text(yaml.safe_dump(document))

    quiet = [
        case
        for path in TESTS
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]
        if case.get("name", "").startswith(QUIET_NIGHT)
    ]
    checks = {
        (check["alertname"], check["eval_time"])
        for case in quiet
        for check in case["alert_rule_test"]
    }
    assert all(not check["exp_alerts"] for case in quiet for check in case["alert_rule_test"])
    assert {name for name, _ in checks} == RATIO_ALERTS - {"VoxbridgeIdleTimeoutSpike"}

    test = tmp_path / "quiet_test.yml"
    test.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(rules_file), str(unguarded)],
                "evaluation_interval": "1m",
                "tests": quiet,
            }
        )
    )
    done = subprocess.run(
        [promtool, "test", "rules", str(test)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stdout + done.stderr
    failed = set(re.findall(r"alertname: (\w+), time: (\w+),", done.stdout + done.stderr))
    assert failed == checks


def test_the_drain_alert_compares_each_process_with_its_own_drain_timeout() -> None:
    """No fixed ``for``: the drain's start and timeout come from the process (the promtool tests
    show it firing a minute past a 30 s and a 300 s timeout, and not in a normal 300 s drain)."""
    (rule,) = [rule for rule in alerts() if rule["alert"] == "VoxbridgeDrainTooLong"]
    assert "for" not in rule
    assert metric_names(str(rule["expr"])) == {
        "voxbridge_drain_started_timestamp_seconds",
        "voxbridge_drain_timeout_seconds",
    }


def test_every_alert_has_a_severity_and_says_what_is_wrong() -> None:
    for rule in alerts():
        labels, annotations = rule["labels"], rule["annotations"]
        assert isinstance(labels, dict) and isinstance(annotations, dict)
        assert labels["severity"] in SEVERITIES, rule["alert"]
        assert annotations["summary"] and annotations["description"], rule["alert"]


def test_recorded_series_follow_the_naming_convention() -> None:
    names = [str(rule["record"]) for rule in rules() if "record" in rule]
    assert len(names) == len(set(names))
    for name in names:
        assert RECORD_NAME.fullmatch(name), name


def test_rules_name_only_exported_metrics_and_recorded_series() -> None:
    allowed = set(exported_series()) | recorded_names()
    for rule in rules():
        names = metric_names(str(rule["expr"]))
        assert names, rule
        assert names <= allowed, (rule.get("record") or rule["alert"], names - allowed)


def test_the_upstream_failure_ratio_counts_every_upstream_reason() -> None:
    (ratio,) = [
        r for r in rules() if r.get("record") == "job:voxbridge_upstream_failures:ratio_rate5m"
    ]
    assert metric_names(str(ratio["expr"])) == {
        "job:voxbridge_upstream_failures:rate5m",
        "job:voxbridge_call_disconnects:rate5m",
    }
    (rule,) = [r for r in rules() if r.get("record") == "job:voxbridge_upstream_failures:rate5m"]
    (regex,) = re.findall(r'reason=~"([^"]+)"', str(rule["expr"]))
    upstream = {reason.value for reason in Reason if reason.value.startswith("upstream_")}
    assert set(regex.split("|")) == upstream


def test_docs_describe_every_rule_and_alert() -> None:
    text = METRICS_DOC.read_text(encoding="utf-8").split("\n## Recording rules and alerts", 1)[1]
    for rule in rules():
        name = rule.get("record") or rule["alert"]
        assert f"| `{name}` |" in text, f"{name} is not in docs/metrics.md's tables"
