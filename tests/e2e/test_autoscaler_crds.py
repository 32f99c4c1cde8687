"""The rendered autoscalers on a real API server: KEDA's ScaledObject CRD and autoscaling/v2.

KEDA's own CRD (pinned, from its Go module: e2e/cluster/keda.py) is installed for this
module only and removed afterwards, so that the other tests see a cluster without it. The
API server validates a ScaledObject against KEDA's schema and CEL rules, and a
HorizontalPodAutoscaler against the built-in autoscaling/v2 validation: what it accepts and
stores, and what it refuses, is the evidence that render/autoscaler.py speaks both APIs.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.cluster.local import NODES_FILE
from e2e.harness import ClusterHandle

from modeldeploy.api import parse_model_deployment
from modeldeploy.config import OperatorConfig
from modeldeploy.placement import plan_placement
from modeldeploy.render import RenderInputs
from modeldeploy.render.autoscaler import render_autoscaler

pytestmark = pytest.mark.e2e

CONFIG = OperatorConfig()
DEADLINE_SECONDS = 60


def autoscaler(cluster: ClusterHandle, namespace: str, mode: str, tmp_path: Path) -> Any:
    """``render_autoscaler`` for a llama.cpp ModelDeployment created in ``namespace``."""
    md_object = {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "demo", "namespace": namespace},
        "spec": {
            "model": {"source": "hf://Qwen/Qwen2.5-7B-Instruct-GGUF", "quantization": "Q4_K_M"},
            "hardware": {"accelerator": "cpu"},
            "autoscaling": {
                "enabled": True,
                "mode": mode,
                "minReplicas": 0,
                "maxReplicas": 5,
                "targetQueueDepth": 6,
                "scaleDownDelaySeconds": 180,
            },
        },
    }
    path = tmp_path / "demo-mdep.yaml"
    path.write_text(yaml.safe_dump(md_object))
    cluster.kubectl("apply", "--server-side", "-f", str(path))
    stored = get(cluster, namespace, "modeldeployment", "demo")
    md = parse_model_deployment(stored)
    nodes = [doc for doc in yaml.safe_load_all(NODES_FILE.read_text()) if doc]
    rendered = render_autoscaler(RenderInputs(md, plan_placement(md.spec, nodes, CONFIG), CONFIG))
    assert rendered is not None
    assert rendered["metadata"]["ownerReferences"][0]["uid"] == stored["metadata"]["uid"]
    return rendered


def get(cluster: ClusterHandle, namespace: str, kind: str, name: str) -> Any:
    """The stored object as JSON."""
    result = cluster.kubectl("get", "-n", namespace, kind, name, "-o", "json")
    return json.loads(result.stdout)


def apply(cluster: ClusterHandle, obj: dict[str, Any], tmp_path: Path) -> tuple[int, str]:
    """Server-side apply one object as the operator would; the exit code and stderr."""
    path = tmp_path / f"{obj['kind']}-{obj['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(obj))
    result = cluster.kubectl(
        "apply", "--server-side", "--field-manager=modeldeploy", "-f", str(path), check=False
    )
    return result.returncode, result.stderr


def contains(stored: Any, wanted: Any) -> bool:
    """Whether every field of ``wanted`` is in ``stored`` with the same value."""
    if isinstance(wanted, dict):
        return isinstance(stored, dict) and all(
            key in stored and contains(stored[key], value) for key, value in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(stored, list)
            and len(stored) == len(wanted)
            and all(contains(s, w) for s, w in zip(stored, wanted, strict=True))
        )
    return bool(stored == wanted)


def test_scaled_object_is_accepted_and_stored(
    keda_cluster: ClusterHandle, namespace: str, tmp_path: Path
) -> None:
    scaled = autoscaler(keda_cluster, namespace, "keda", tmp_path)
    code, stderr = apply(keda_cluster, scaled, tmp_path)
    assert code == 0, stderr
    stored = get(keda_cluster, namespace, "scaledobject", "demo")
    assert contains(stored["metadata"], scaled["metadata"])
    assert stored["spec"] == scaled["spec"]  # KEDA's schema defaults nothing we leave out
    trigger = stored["spec"]["triggers"][0]
    assert "llamacpp:requests_processing" in trigger["metadata"]["query"]
    assert "llamacpp:requests_deferred" in trigger["metadata"]["query"]
    assert (stored["spec"]["minReplicaCount"], stored["spec"]["maxReplicaCount"]) == (1, 5)
    assert trigger["metadata"]["threshold"] == "6"
    # Applying the same object again is a no-op: nothing for the operator to fight over.
    version = stored["metadata"]["resourceVersion"]
    code, stderr = apply(keda_cluster, scaled, tmp_path)
    assert code == 0, stderr
    assert get(keda_cluster, namespace, "scaledobject", "demo")["metadata"]["resourceVersion"] == (
        version
    )


def _without_trigger_metadata(spec: dict[str, Any]) -> None:
    del spec["triggers"][0]["metadata"]


def _numeric_threshold(spec: dict[str, Any]) -> None:
    spec["triggers"][0]["metadata"]["threshold"] = 6


def _string_replicas(spec: dict[str, Any]) -> None:
    spec["maxReplicaCount"] = "five"


def _min_above_max(spec: dict[str, Any]) -> None:
    spec["minReplicaCount"] = 9


# Wrong types are refused by server-side apply's typed patch (built from the CRD's schema),
# missing fields by the schema's validation, min above max by KEDA's CEL rule.
@pytest.mark.parametrize(
    ("breakage", "complaint"),
    [
        (_without_trigger_metadata, "spec.triggers[0].metadata: Required value"),
        (_numeric_threshold, ".spec.triggers[0].metadata.threshold: expected string"),
        (_string_replicas, ".spec.maxReplicaCount: expected numeric"),
        (_min_above_max, "minReplicaCount must be less than or equal to maxReplicaCount"),
    ],
    ids=["trigger without metadata", "numeric threshold", "string replicas", "min above max"],
)
def test_broken_scaled_objects_are_refused(
    keda_cluster: ClusterHandle,
    namespace: str,
    tmp_path: Path,
    breakage: Any,
    complaint: str,
) -> None:
    scaled = copy.deepcopy(autoscaler(keda_cluster, namespace, "keda", tmp_path))
    breakage(scaled["spec"])
    code, stderr = apply(keda_cluster, scaled, tmp_path)
    assert code != 0
    assert complaint in stderr, stderr
    missing = keda_cluster.kubectl("get", "-n", namespace, "scaledobject", "demo", check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr


def test_hpa_is_accepted_and_stored(
    crd_cluster: ClusterHandle, namespace: str, tmp_path: Path
) -> None:
    hpa = autoscaler(crd_cluster, namespace, "hpa", tmp_path)
    code, stderr = apply(crd_cluster, hpa, tmp_path)
    assert code == 0, stderr
    stored = get(crd_cluster, namespace, "horizontalpodautoscalers.v2.autoscaling", "demo")
    assert stored["apiVersion"] == "autoscaling/v2"
    assert contains(stored["metadata"], hpa["metadata"])
    assert contains(stored["spec"], hpa["spec"]), json.dumps(stored["spec"], indent=1)
    assert (stored["spec"]["minReplicas"], stored["spec"]["maxReplicas"]) == (1, 5)
    metric = stored["spec"]["metrics"][0]["pods"]
    assert metric["metric"]["name"] == "modeldeploy_requests_in_flight"
    assert metric["target"] == {"type": "AverageValue", "averageValue": "6"}


def test_hpa_refuses_a_window_above_an_hour(
    crd_cluster: ClusterHandle, namespace: str, tmp_path: Path
) -> None:
    # Why behavior() caps scaleDownDelaySeconds at 3600 for the HPA and KEDA modes.
    hpa = copy.deepcopy(autoscaler(crd_cluster, namespace, "hpa", tmp_path))
    hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] = 3601
    code, stderr = apply(crd_cluster, hpa, tmp_path)
    assert code != 0
    assert "stabilizationWindowSeconds" in stderr, stderr
