"""The Kubernetes manifests fence the admin API: a NetworkPolicy per port and a token Secret."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"


def load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text(encoding="utf-8")) if d]


def test_network_policy_opens_metrics_to_monitoring_and_admin_to_labelled_clients() -> None:
    (policy,) = load("networkpolicy.yaml")
    (deployment,) = load("deployment.yaml")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9464, "admin": 9465}
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    rules = {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"]}
    assert set(rules) == {"metrics", "admin"}
    assert rules["metrics"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert rules["admin"] == [{"podSelector": {"matchLabels": {"octopus-crm-sync/admin-client": "true"}}}]

    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["OCTOPUS_CRM_ADMIN_PORT"] == "9465"
    token_dir = str(Path(env["OCTOPUS_CRM_ADMIN_TOKEN_FILE"]).parent)
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == token_dir)
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    secrets = {d["metadata"]["name"]: d for d in load("secret.example.yaml")}
    assert "token" in secrets[volume["secret"]["secretName"]]["stringData"]
    (service,) = load("service.yaml")
    assert {p["name"] for p in service["spec"]["ports"]} == {"metrics", "admin"}
    assert "networkpolicy.yaml" in load("kustomization.yaml")[0]["resources"]


def test_kustomize_build_contains_the_network_policy() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    built = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(built.stdout) if d}
    assert ("NetworkPolicy", "octopus-crm-sync") in kinds
