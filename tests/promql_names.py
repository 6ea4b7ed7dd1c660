"""What the Prometheus rules and the Grafana dashboard may name, and what they do name.

``exported_series()`` is every series name a voxbridge ``/metrics`` carries, read from the samples
of a fresh registry (every label value is pre-initialised, so every family has its samples from the
start: a counter ``x`` is ``x_total`` and ``x_created``; a histogram ``_bucket``, ``_sum``,
``_count``, ``_created``). ``metric_names(expr)`` parses PromQL with promql-parser (a
port of Prometheus's own parser, so a syntax error fails the test) and returns the metric names its
selectors select. ``promtool_parses`` has the real Prometheus parser check expressions too.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

import promql_parser
import yaml

from voxbridge.metrics import Metrics

__all__ = [
    "RULE_FILES",
    "exported_series",
    "family_of",
    "metric_names",
    "promtool_parses",
    "recorded_names",
    "rules",
]

ROOT = Path(__file__).resolve().parent.parent
RULE_FILES = sorted((ROOT / "deploy" / "prometheus").glob("*.yml"))

#: Grafana's range variables, replaced by a duration so the expression is PromQL.
_GRAFANA_RANGE = re.compile(r"\$(__rate_interval|__interval|__range)\b|\$\{(__\w+)\}")


def exported_series() -> dict[str, str]:
    """Every series name of voxbridge's ``/metrics`` -> the family (as documented) it belongs to."""
    names: dict[str, str] = {}
    for family in Metrics().registry.collect():
        documented = family_of(family.name, family.type)
        for sample in family.samples:
            names[sample.name] = documented
    return names


def family_of(name: str, kind: str) -> str:
    """The name a family is documented under: a counter's with ``_total``, others' as is."""
    return name + "_total" if kind == "counter" else name


def rules() -> list[dict[str, object]]:
    """Every rule (recording and alerting) of every file in deploy/prometheus/."""
    found: list[dict[str, object]] = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            found.extend(group["rules"])
    return found


def recorded_names() -> set[str]:
    """The series deploy/prometheus's recording rules record."""
    return {str(rule["record"]) for rule in rules() if "record" in rule}


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects (``x{...}``, ``x[5m]`` and ``{__name__="x"}``).

    Grafana's ``$__rate_interval``, ``$__interval`` and ``$__range`` become ``5m`` first; other
    variables may appear only inside label matchers' strings (``job=~"$job"``).

    Raises:
        ValueError: ``expr`` is not PromQL, or a selector has no literal metric name.
    """
    text = _GRAFANA_RANGE.sub("5m", expr)
    try:
        tree = promql_parser.parse(text)
    except Exception as exc:  # the parser raises a bare exception type of its own
        raise ValueError(f"not PromQL: {expr!r}: {exc}") from None
    names: set[str] = set()
    unnamed: list[str] = []

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            else:
                equal = [
                    m.value
                    for m in node.matchers.matchers
                    if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal
                ]
                if len(equal) != 1:
                    unnamed.append(str(node))
                names.update(equal)
        return True

    promql_parser.walk(tree, visit)
    if unnamed:
        raise ValueError(f"selectors without a metric name in {expr!r}: {unnamed}")
    return names


def promtool_parses(promtool: str, exprs: Iterable[str], tmp_path: Path) -> None:
    """Have Prometheus's own parser (``promtool check rules``) read every expression.

    Raises:
        AssertionError: promtool refused one; its output says which.
    """
    records = [
        {"record": f"check:expr_{i}:x", "expr": _GRAFANA_RANGE.sub("5m", expr)}
        for i, expr in enumerate(exprs)
    ]
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": records}]}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr
