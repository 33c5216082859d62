"""deploy/k8s/s3: the Kubernetes component that keeps recordings in a bucket instead of a
shared volume names only what the base manifests and the settings define."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from service.settings import Settings
from tests.test_deploy import (
    K8S,
    _compose,
    _container,
    _env_file,
    _named,
    _settings_variables,
)

COMPONENT = K8S / "s3"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _patches() -> list[dict[str, Any]]:
    component = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    return [d for patch in component["patches"] for d in _documents(COMPONENT / patch["path"])]


def test_component_configures_a_bucket_with_known_variables() -> None:
    """The ConfigMap patch names a valid bucket and drops RECORDINGS_DIR; the Secret holds
    only variables Settings reads."""
    _, known = _settings_variables()
    (config,) = [d for d in _patches() if d["kind"] == "ConfigMap"]
    data = {k: v for k, v in config["data"].items() if v is not None}
    assert set(config["data"]) <= known
    assert config["data"]["RECORDINGS_DIR"] is None
    base = {"REDIS_URL": "redis://x", "VTS_AUTH_ID": "a", "VTS_AUTH_TOKEN": "t",
            "PUBLIC_BASE_URL": "https://x", "API_KEYS": "k" * 16}  # fmt: skip
    assert Settings.from_env(base | data).recordings_s3 is not None
    component = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    ((envs,),) = [g["envs"] for g in component["secretGenerator"] if g["name"] == "masking-s3"]
    assert _env_file(COMPONENT / f"{envs}.example").keys() <= known
    assert not any(_env_file(COMPONENT / f"{envs}.example").values())


def test_component_removes_the_shared_volume_it_replaces() -> None:
    """The claim, and each container's mount and volume it deletes, exist in the base."""
    (claim,) = [d for d in _patches() if d["kind"] == "PersistentVolumeClaim"]
    assert claim["$patch"] == "delete"
    _named("PersistentVolumeClaim", claim["metadata"]["name"])
    for deployment in (d for d in _patches() if d["kind"] == "Deployment"):
        name = deployment["metadata"]["name"].removeprefix("masking-")
        spec = deployment["spec"]["template"]["spec"]
        (patched,) = spec["containers"]
        container = _container(name)
        assert patched["name"] == container["name"]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {m["mountPath"] for m in patched["volumeMounts"]} <= mounts
        assert patched["envFrom"][0] == {"configMapRef": {"name": "masking-config"}}
        volumes = {v["name"] for v in _named("Deployment", f"masking-{name}")["spec"]["template"]
                   ["spec"]["volumes"]}  # fmt: skip
        assert {v["name"] for v in spec["volumes"]} <= volumes


def test_compose_redis_has_a_memory_ceiling() -> None:
    """Compose's Redis has a maxmemory, so a full Redis refuses writes instead of swapping."""
    command = _compose()["services"]["redis"]["command"]
    assert "--maxmemory" in command
