"""Test support: Node objects as kubectl prints them, and a scheduler-predicate evaluator.

``admitted`` answers "on which of these nodes could the kube-scheduler place this pod?" for
the predicates the planner relies on: node readiness and cordons, ``nodeSelector``,
required node affinity (``In``/``NotIn``/``Exists``/``DoesNotExist``/``Gt``/``Lt``) and
NoSchedule/NoExecute taints against tolerations. It is written from the Kubernetes API
reference, independently of ``modeldeploy.hardware``, so that tests check the planner's
affinity against Kubernetes semantics rather than against itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
E2E_POOL = REPO / "e2e" / "cluster" / "nodes.yaml"
EXAMPLES = REPO / "examples"


def load_e2e_pool() -> list[dict[str, Any]]:
    """The simulated node pool of the e2e cluster (multi-document Node YAML)."""
    return [doc for doc in yaml.safe_load_all(E2E_POOL.read_text()) if doc]


def gpu_node(
    name: str,
    product: str,
    memory_mib: int,
    count: int,
    *,
    cpu: str = "32",
    memory: str = "256Gi",
    arch: str = "amd64",
    compute: tuple[int, int] | None = None,
    taint: bool = True,
    ready: bool = True,
) -> dict[str, Any]:
    """A GPU node with GPU Feature Discovery labels and the usual NoSchedule taint."""
    labels = {
        "kubernetes.io/arch": arch,
        "kubernetes.io/hostname": name,
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": product,
        "nvidia.com/gpu.memory": str(memory_mib),
        "nvidia.com/gpu.count": str(count),
    }
    if compute is not None:
        labels["nvidia.com/gpu.compute.major"] = str(compute[0])
        labels["nvidia.com/gpu.compute.minor"] = str(compute[1])
    node = _node(name, labels, {"cpu": cpu, "memory": memory, "nvidia.com/gpu": str(count)})
    if taint:
        node["spec"]["taints"] = [
            {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
        ]
    if not ready:
        node["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    return node


def cpu_node(
    name: str,
    *,
    cpu: str = "16",
    memory: str = "64Gi",
    arch: str = "amd64",
    level: str = "avx2",
    instance_type: str | None = None,
) -> dict[str, Any]:
    """A CPU node with Node Feature Discovery cpuid labels up to ``level``."""
    labels = {"kubernetes.io/arch": arch, "kubernetes.io/hostname": name}
    flags = {"avx2": ["AVX2"], "avx512": ["AVX2", "AVX512F"], "amx": ["AVX2", "AVX512F", "AMXBF16"]}
    for flag in flags.get(level, []):
        labels[f"feature.node.kubernetes.io/cpu-cpuid.{flag}"] = "true"
    if instance_type:
        labels["node.kubernetes.io/instance-type"] = instance_type
    return _node(name, labels, {"cpu": cpu, "memory": memory})


def _node(name: str, labels: dict[str, str], allocatable: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {},
        "status": {
            "allocatable": {**allocatable, "pods": "110"},
            "capacity": {**allocatable, "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def _expression_matches(expression: dict[str, Any], labels: dict[str, str]) -> bool:
    key, operator = expression["key"], expression["operator"]
    values = expression.get("values") or []
    present = key in labels
    if operator == "In":
        return present and labels[key] in values
    if operator == "NotIn":
        return not present or labels[key] not in values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator in {"Gt", "Lt"}:
        if not present:
            return False
        try:
            actual, bound = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return actual > bound if operator == "Gt" else actual < bound
    raise AssertionError(f"unknown operator {operator}")


def _tolerated(taint: dict[str, Any], tolerations: list[dict[str, Any]]) -> bool:
    for toleration in tolerations:
        if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
            continue
        operator = toleration.get("operator", "Equal")
        if not toleration.get("key"):
            if operator == "Exists":
                return True
            continue
        if toleration["key"] != taint.get("key"):
            continue
        if operator == "Exists" or toleration.get("value", "") == taint.get("value", ""):
            return True
    return False


def admitted(pod_spec: dict[str, Any], nodes: list[dict[str, Any]]) -> set[str]:
    """Names of the nodes the scheduler's label, affinity and taint predicates allow."""
    names = set()
    affinity = (pod_spec.get("affinity") or {}).get("nodeAffinity") or {}
    required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
    tolerations = pod_spec.get("tolerations") or []
    for node in nodes:
        labels = node["metadata"].get("labels") or {}
        conditions = node.get("status", {}).get("conditions") or []
        if any(c["type"] == "Ready" and c["status"] != "True" for c in conditions):
            continue
        if node.get("spec", {}).get("unschedulable"):
            continue
        selector = pod_spec.get("nodeSelector") or {}
        if any(labels.get(k) != v for k, v in selector.items()):
            continue
        if required is not None and not any(
            all(_expression_matches(e, labels) for e in term.get("matchExpressions", []))
            for term in required["nodeSelectorTerms"]
        ):
            continue
        taints = node.get("spec", {}).get("taints") or []
        if any(
            t["effect"] in {"NoSchedule", "NoExecute"} and not _tolerated(t, tolerations)
            for t in taints
        ):
            continue
        names.add(node["metadata"]["name"])
    return names


def model_deployment(spec: dict[str, Any], name: str = "demo", **metadata: Any) -> dict[str, Any]:
    """A ModelDeployment object around ``spec``."""
    return {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "default", **metadata},
        "spec": spec,
    }
