"""Rendered objects: labels, owners, security, engine command lines, hash and determinism."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
import yaml
from nodepool import load_e2e_pool, model_deployment

from modeldeploy.api import parse_model_deployment
from modeldeploy.config import OperatorConfig
from modeldeploy.placement import plan_placement
from modeldeploy.render import ANNOTATION_SPEC_HASH, RenderInputs, render_objects, spec_hash
from modeldeploy.sizing import GIB

E2E = load_e2e_pool()
CONFIG = OperatorConfig()
UID = "6f1c1b9e-0d1c-4c1e-9a57-2f0c8b1d0a11"
GGUF_SPEC: dict[str, Any] = {
    "model": {
        "source": "hf://Qwen/Qwen2.5-7B-Instruct-GGUF",
        "quantization": "Q4_K_M",
        "revision": "bb46c15ee4bb56c5b63245ef50fd7637234d6f75",
        "servedName": "qwen",
    },
    "hardware": {"accelerator": "cpu"},
    "serving": {
        "contextLength": 8192,
        "maxConcurrentRequests": 4,
        "args": ["--temp", "0.7"],
        "env": [{"name": "HOME", "value": "/home/app"}, {"name": "EXTRA", "value": "1"}],
    },
}
VLLM_SPEC: dict[str, Any] = {
    "model": {"source": "hf://hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"},
    "replicas": 2,
    "serving": {"args": ["--enforce-eager"]},
}


def _render(spec: dict[str, Any], **metadata: Any) -> list[dict[str, Any]]:
    md = parse_model_deployment(model_deployment(copy.deepcopy(spec), **metadata))
    placement = plan_placement(md.spec, E2E, CONFIG)
    return render_objects(RenderInputs(md, placement, CONFIG))


def _by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objects}


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = _by_kind(objects)["Deployment"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    return container


def test_objects_in_apply_order() -> None:
    assert [o["kind"] for o in _render(GGUF_SPEC)] == [
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
    ]
    no_cache = {**GGUF_SPEC, "cache": {"enabled": False}}
    assert [o["kind"] for o in _render(no_cache)] == ["Deployment", "Service"]


def test_labels_and_owner_references() -> None:
    objects = _render(GGUF_SPEC, uid=UID)
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "llamacpp"
        assert labels["app.kubernetes.io/instance"] == "demo"
        assert labels["app.kubernetes.io/managed-by"] == "modeldeploy"
        assert labels["modeldeploy.io/model-deployment"] == "demo"
        assert labels["app.kubernetes.io/component"] in {"server", "model-cache"}
        assert obj["metadata"]["namespace"] == "default"
        assert obj["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "modeldeploy.io/v1alpha1",
                "kind": "ModelDeployment",
                "name": "demo",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    deployment = _by_kind(objects)["Deployment"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == {
        "modeldeploy.io/model-deployment": "demo",
        "app.kubernetes.io/component": "server",
    }
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert _by_kind(objects)["Service"]["spec"]["selector"] == selector


def test_no_owner_reference_without_uid() -> None:
    for obj in _render(GGUF_SPEC):
        assert "ownerReferences" not in obj["metadata"]


def test_restricted_pod_security() -> None:
    pod = _by_kind(_render(VLLM_SPEC))["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["readOnlyRootFilesystem"] is True
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tmp"] == {"name": "tmp", "emptyDir": {}}
    assert not any("hostPath" in v for v in pod["volumes"])


def test_the_security_contexts_are_planning_settings() -> None:
    pod_context = {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "Localhost"}}
    container_context = {"runAsNonRoot": True, "capabilities": {"drop": ["ALL", "NET_RAW"]}}
    config = OperatorConfig(
        pod_security_context=pod_context, container_security_context=container_context
    )
    md = parse_model_deployment(model_deployment(copy.deepcopy(VLLM_SPEC)))
    objects = render_objects(RenderInputs(md, plan_placement(md.spec, E2E, config), config))
    pod = _by_kind(objects)["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"] == pod_context
    for container in pod["containers"] + pod["initContainers"]:
        assert container["securityContext"] == container_context
    # Copies: the rendered objects never share the config's mappings.
    assert pod["securityContext"] is not pod_context
    assert pod["containers"][0]["securityContext"] is not container_context


def test_llamacpp_container() -> None:
    objects = _render(GGUF_SPEC)
    container = _container(objects)
    assert container["name"] == "llamacpp"
    assert container["image"] == CONFIG.llamacpp_image
    assert container["command"] == ["modeldeploy", "serve-runtime", "llamacpp", "--"]
    args = container["args"]
    flags = dict(zip(args[:-2:2], args[1:-2:2], strict=False))
    assert flags["--ctx-size"] == str(8192 * 4)
    assert flags["--parallel"] == "4"
    # Sized to the model (sizing.cpu_threads: 2 + 4 GiB of weights), not to the node.
    assert flags["--threads"] == "6"
    assert "--n-gpu-layers" not in flags  # CPU: no offload flag (a CPU build warns about it)
    assert flags["--alias"] == "qwen"
    assert flags["--port"] == "8000"
    assert "--metrics" in args
    assert args[-2:] == ["--temp", "0.7"]  # the user's args come last
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    resources = container["resources"]
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == "6"


def test_vllm_container() -> None:
    objects = _render(VLLM_SPEC)
    container = _container(objects)
    assert container["command"] == ["modeldeploy", "serve-runtime", "vllm", "--"]
    args = container["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "1"
    assert args[args.index("--quantization") + 1] == "awq_marlin"  # Hopper runs Marlin
    assert args[args.index("--max-model-len") + 1] == "4096"
    assert args[args.index("--max-num-seqs") + 1] == "4"
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.9"
    assert args[args.index("--served-model-name") + 1] == "demo"
    assert "--enable-prefix-caching" in args
    assert args[-1] == "--enforce-eager"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HF_HUB_OFFLINE"] == "1"
    pod = _by_kind(objects)["Deployment"]["spec"]["template"]["spec"]
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert _by_kind(objects)["Deployment"]["spec"]["replicas"] == 2


def test_vllm_dtype_for_unquantized_checkpoints() -> None:
    objects = _render({"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct"}})
    args = _container(objects)["args"]
    assert args[args.index("--dtype") + 1] == "bfloat16"
    assert "--quantization" not in args


def test_env_merge() -> None:
    env = _container(_render(GGUF_SPEC))["env"]
    names = [e["name"] for e in env]
    assert names.count("HOME") == 1
    assert env[-2:] == [{"name": "HOME", "value": "/home/app"}, {"name": "EXTRA", "value": "1"}]
    values = {e["name"]: e.get("value") for e in env}
    assert values["MODELDEPLOY_MODEL_SOURCE"] == "hf://Qwen/Qwen2.5-7B-Instruct-GGUF"
    assert values["MODELDEPLOY_MODEL_REVISION"] == "bb46c15ee4bb56c5b63245ef50fd7637234d6f75"
    assert values["MODELDEPLOY_QUANTIZATION"] == "Q4_K_M"
    assert values["MODELDEPLOY_CACHE_DIR"] == "/models"
    assert values["MODELDEPLOY_SERVED_NAME"] == "qwen"


def test_probes_use_health_and_scale_startup_with_size() -> None:
    small = _container(_render(GGUF_SPEC))
    big = _container(_render(VLLM_SPEC))
    for container in (small, big):
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    small_budget = (
        small["startupProbe"]["failureThreshold"] * small["startupProbe"]["periodSeconds"]
    )
    big_budget = big["startupProbe"]["failureThreshold"] * big["startupProbe"]["periodSeconds"]
    assert small_budget < big_budget <= 3600


def test_metrics_annotations() -> None:
    template = _by_kind(_render(GGUF_SPEC))["Deployment"]["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/port"] == "8000"


def test_cache_claim() -> None:
    objects = _render(GGUF_SPEC)
    claim = _by_kind(objects)["PersistentVolumeClaim"]
    assert claim["metadata"]["name"] == "demo-model-cache"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    md = parse_model_deployment(model_deployment(copy.deepcopy(GGUF_SPEC)))
    weights = plan_placement(md.spec, E2E, CONFIG).memory.weights_bytes
    expected = math.ceil(weights * CONFIG.cache_headroom / GIB)
    assert claim["spec"]["resources"]["requests"]["storage"] == f"{expected}Gi"
    pod = _by_kind(objects)["Deployment"]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "model-cache")
    assert volume["persistentVolumeClaim"] == {"claimName": "demo-model-cache"}

    sized = {
        **GGUF_SPEC,
        "cache": {"size": "50Gi", "storageClassName": "fast", "accessMode": "ReadWriteOnce"},
    }
    claim = _by_kind(_render(sized))["PersistentVolumeClaim"]
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "50Gi"}},
        "storageClassName": "fast",
    }

    no_cache = _render({**GGUF_SPEC, "cache": {"enabled": False}})
    pod = _by_kind(no_cache)["Deployment"]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "model-cache")
    assert volume["emptyDir"]["sizeLimit"] == f"{expected}Gi"


def test_service() -> None:
    service = _by_kind(_render(GGUF_SPEC))["Service"]
    assert service["metadata"]["name"] == "demo"
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {
            "name": "http",
            "port": 8000,
            "targetPort": "http",
            "protocol": "TCP",
            "appProtocol": "http",
        }
    ]


def test_spec_hash() -> None:
    deployment = _by_kind(_render(GGUF_SPEC))["Deployment"]
    template = copy.deepcopy(deployment["spec"]["template"])
    digest = template["metadata"]["annotations"].pop(ANNOTATION_SPEC_HASH)
    assert digest == spec_hash(template)
    assert deployment["metadata"]["annotations"][ANNOTATION_SPEC_HASH] == digest
    assert len(digest) == 16
    changed = copy.deepcopy(GGUF_SPEC)
    changed["serving"]["args"] = ["--temp", "0.2"]
    other = _by_kind(_render(changed))["Deployment"]
    assert other["metadata"]["annotations"][ANNOTATION_SPEC_HASH] != digest
    # Replicas are not part of the pod template: scaling does not roll pods (two replicas
    # still fit the same class, so the placement is the same).
    rescaled = _by_kind(_render({**GGUF_SPEC, "replicas": 2}))["Deployment"]
    assert rescaled["spec"]["replicas"] == 2
    assert rescaled["metadata"]["annotations"][ANNOTATION_SPEC_HASH] == digest


@pytest.mark.parametrize("spec", [GGUF_SPEC, VLLM_SPEC], ids=["llamacpp", "vllm"])
def test_rendering_is_deterministic(spec: dict[str, Any]) -> None:
    first = _render(spec, uid=UID)
    second = _render(spec, uid=UID)
    assert json.dumps(first) == json.dumps(second)
    assert yaml.safe_dump(first, sort_keys=False) == yaml.safe_dump(second, sort_keys=False)


def test_rendering_does_not_depend_on_node_order() -> None:
    md = parse_model_deployment(model_deployment(copy.deepcopy(VLLM_SPEC)))
    forward = render_objects(RenderInputs(md, plan_placement(md.spec, E2E, CONFIG), CONFIG))
    backward = render_objects(RenderInputs(md, plan_placement(md.spec, E2E[::-1], CONFIG), CONFIG))
    assert json.dumps(forward) == json.dumps(backward)
