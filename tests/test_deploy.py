"""deploy/: the image, compose file and Kubernetes manifests agree with the code.

Nothing here runs Docker or Kubernetes: the files are parsed and every name they use
(commands, variables, ports, probe paths, queues, images) is checked against the code.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from service import cli, messages
from service.app import create_app
from service.settings import AppKey, Secret, Settings
from service.store import DRAMATIQ_NAMESPACE
from service.vts import sandbox

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "k8s"
IMAGE = "masking-service"
APP_SERVICES = ("web", "worker")

Doc = dict[str, Any]


# --- reading the files -------------------------------------------------------------------


def _compose() -> Doc:
    document: Doc = yaml.safe_load(COMPOSE.read_text())
    return document


def _manifests() -> list[Doc]:
    return [
        document
        for path in sorted(K8S.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


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


def _app_paths() -> set[str]:
    settings = Settings(
        redis_url="redis://127.0.0.1:1/0",
        vts_auth_id="MATEST",
        vts_auth_token=Secret("token"),
        public_base_url="http://testserver",
        api_keys=(AppKey("test", Secret("k" * 16)),),
    )
    return {getattr(route, "path", "") for route in create_app(settings).routes}


def _queues() -> set[str]:
    return {value for name, value in vars(messages).items() if name.endswith("_QUEUE")}


def _masking(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` as the ``masking`` command would; fail on anything it rejects."""
    assert argv[0] == "masking", argv
    try:
        args = cli.parse(argv[1:])
        if args.command == "sandbox":
            sandbox._parser().parse_args(args.rest)
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
    names = {entry["name"] for entry in container.get("env", [])}
    for source in container.get("envFrom", []):
        config = _named("ConfigMap", source["configMapRef"]["name"])
        names |= set(config["data"])
    return names


def test_k8s_containers_get_every_required_variable() -> None:
    """Each container is given every required variable, and nothing Settings ignores."""
    required, known = _settings_variables()
    for name in APP_SERVICES:
        environment = _container_environment(_container(name))
        assert environment <= known, environment - known
        assert required <= environment, required - environment


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
    assert [int(p.rsplit(":", 1)[1]) for p in web["ports"]] == [port]
    assert int(_named("ConfigMap", "masking-config")["data"]["PORT"]) == port
    assert ("EXPOSE", str(port)) in _dockerfile_stages()[-1]
    assert [p["containerPort"] for p in _container("web")["ports"]] == [port]


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
    """Every compose service but Redis is built from deploy/Dockerfile as one image."""
    for name, service in _compose()["services"].items():
        if name == "redis":
            continue
        build = service["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert service["image"].split(":")[0] == IMAGE


def test_k8s_runs_the_image_built_from_the_dockerfile() -> None:
    """The Deployments run the Dockerfile's image, which the kustomization retags."""
    for name in APP_SERVICES:
        assert _container(name)["image"] == IMAGE
    (kustomization,) = _of_kind("Kustomization")
    assert [image["name"] for image in kustomization["images"]] == [IMAGE]


def test_kustomization_lists_every_manifest() -> None:
    """``kubectl apply -k deploy/k8s`` applies every manifest file in the folder."""
    (kustomization,) = _of_kind("Kustomization")
    files = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


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
    """The worker's ScaledObject watches exactly the Redis lists of our dramatiq queues."""
    scaled = _named("ScaledObject", "masking-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "masking-worker"
    lists = {t["metadata"]["listName"] for t in scaled["spec"]["triggers"] if t["type"] == "redis"}
    assert lists == {f"{DRAMATIQ_NAMESPACE}:{queue}" for queue in _queues()}


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
    timeout = cli.WORKER_SHUTDOWN_TIMEOUT_MS / 1000
    for name in APP_SERVICES:
        grace = _deployment(name)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace == 30 > timeout
        assert _compose()["services"][name]["stop_grace_period"] == "30s"


def test_compose_redis_persists_and_never_evicts() -> None:
    """Compose's Redis 7 keeps an append-only file on a volume and never evicts keys."""
    redis = _compose()["services"]["redis"]
    assert redis["image"] == "redis:7"
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


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
