"""The NetworkPolicy in front of a ModelDeployment's pods (render/network_policy.py)."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from nodepool import load_e2e_pool, model_deployment

from modeldeploy.api import parse_model_deployment
from modeldeploy.config import OperatorConfig
from modeldeploy.placement import plan_placement
from modeldeploy.render import RenderInputs, render_objects
from modeldeploy.settings import OperatorSettings

E2E = load_e2e_pool()
UID = "6f1c1b9e-0d1c-4c1e-9a57-2f0c8b1d0a11"
SPEC: dict[str, Any] = {
    "model": {"source": "hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF", "quantization": "Q4_K_M"},
    "hardware": {"accelerator": "cpu"},
    "cache": {"enabled": False},
}
HOME = {"matchLabels": {"kubernetes.io/metadata.name": "modeldeploy-system"}}
PEERS = (
    {"namespaceSelector": HOME, "podSelector": {"matchLabels": {"component": "gateway"}}},
    {"namespaceSelector": HOME, "podSelector": {"matchLabels": {"component": "operator"}}},
)


def render(config: OperatorConfig) -> list[dict[str, Any]]:
    md = parse_model_deployment(model_deployment(copy.deepcopy(SPEC), uid=UID))
    return render_objects(RenderInputs(md, plan_placement(md.spec, E2E, config), config))


def test_no_peers_no_network_policy() -> None:
    assert [o["kind"] for o in render(OperatorConfig())] == ["Deployment", "Service"]


def test_model_pods_admit_only_the_peers_on_the_serving_port() -> None:
    objects = render(dataclasses.replace(OperatorConfig(), model_ingress_from=PEERS))
    assert [o["kind"] for o in objects] == ["Deployment", "Service", "NetworkPolicy"]
    deployment, _, policy = objects
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    meta = policy["metadata"]
    assert (meta["name"], meta["namespace"]) == ("demo", deployment["metadata"]["namespace"])
    # Labels like every child (pruned and watched by them), and owned by the ModelDeployment.
    labels = meta["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "modeldeploy"
    assert labels["modeldeploy.io/model-deployment"] == "demo"
    assert labels["app.kubernetes.io/component"] == "network-policy"
    (owner,) = meta["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("ModelDeployment", UID, True)
    spec = policy["spec"]
    # The server pods, exactly as the Deployment selects them.
    assert spec["podSelector"] == deployment["spec"]["selector"]
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["from"] == list(PEERS)
    (port,) = rule["ports"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert port == {"port": "http", "protocol": "TCP"}
    assert "http" in {p["name"] for p in container["ports"]}
    # The config's peers are copied, not shared.
    rule["from"][0]["podSelector"]["matchLabels"]["component"] = "changed"
    assert PEERS[0]["podSelector"]["matchLabels"]["component"] == "gateway"


def test_the_settings_file_fills_the_peers() -> None:
    settings = OperatorSettings.model_validate(
        {"planning": {"modelIngressFrom": [dict(peer) for peer in PEERS]}}
    )
    assert tuple(settings.planning.model_ingress_from) == PEERS
    assert render(settings.planning)[-1]["kind"] == "NetworkPolicy"


def test_the_writer_applies_and_deletes_network_policies() -> None:
    from kubernetes import client

    from modeldeploy.apply import Writer

    patch, delete = Writer(client.ApiClient())._kind("NetworkPolicy")
    assert patch.__name__ == "patch_namespaced_network_policy"
    assert delete.__name__ == "delete_namespaced_network_policy"
