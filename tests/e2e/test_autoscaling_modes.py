"""Autoscaling modes with the operator on the real control plane (no load: kwok pods).

- native: the operator owns the Deployment's replicas (minReplicas 2 gives 2), records
  status.autoscaling, and `kubectl scale mdep` changes spec.replicas without moving the
  Deployment: the Autoscaling condition says spec.replicas is not used. The simulated
  pods serve no metrics, so every scrape fails, which holds the count (never scales down).
- keda with KEDA's real CRD: the operator applies the ScaledObject and gives up the
  Deployment's replicas (its field manager no longer owns spec.replicas); switching back to
  native deletes the ScaledObject and the native count applies.
- keda without the CRD: Autoscaling=False, reason ScaledObjectNotServed.
- hpa: the operator applies the autoscaling/v2 HorizontalPodAutoscaler.

The load-driven behaviour with real llama.cpp pods is tests/e2e/test_autoscaling_load.py.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from e2e.cluster.local import REPO
from e2e.harness import ClusterHandle, ModelDeploymentApi, OperatorProcess, wait_until
from kubernetes import client

NAME = "scaled"
DEADLINE = 90


@pytest.fixture
def operator(crd_cluster: ClusterHandle, namespace: str) -> Iterator[OperatorProcess]:
    """The operator for this test's namespace: resync every second, autoscale every second."""
    process = OperatorProcess(
        crd_cluster.kubeconfig, namespace, autoscale_interval_seconds=1.0
    ).start()
    try:
        yield process
    finally:
        process.stop()


def scaled_gemma(**autoscaling: Any) -> dict[str, Any]:
    """The CPU gemma example, small enough for several replicas, with autoscaling."""
    md: dict[str, Any] = yaml.safe_load((REPO / "examples" / "gemma-270m-cpu.yaml").read_text())
    md["metadata"] = {"name": NAME}
    small = {"cpu": "1", "memory": "1Gi"}
    md["spec"]["serving"] = {"resources": {"requests": small, "limits": small}}
    md["spec"]["cache"] = {"accessMode": "ReadWriteMany"}
    md["spec"]["autoscaling"] = {"enabled": True, **autoscaling}
    return md


def deployment_spec_replicas(api: ModelDeploymentApi) -> int | None:
    """The Deployment's spec.replicas, or None while it does not exist."""
    try:
        found = client.AppsV1Api(api.cluster.api_client()).read_namespaced_deployment(
            NAME, api.namespace
        )
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return int(found.spec.replicas)


def autoscaling_status(api: ModelDeploymentApi) -> dict[str, Any]:
    """status.autoscaling of the test's ModelDeployment."""
    return dict((api.md(NAME).get("status") or {}).get("autoscaling") or {})


def test_native_mode_owns_the_count_and_says_when_spec_replicas_is_not_used(
    crd_cluster: ClusterHandle, namespace: str, operator: OperatorProcess
) -> None:
    api = ModelDeploymentApi(crd_cluster, namespace)
    api.create(scaled_gemma(minReplicas=2, maxReplicas=3))
    wait_until(
        lambda: (
            deployment_spec_replicas(api) == 2
            and autoscaling_status(api).get("desiredReplicas") == 2
        ),
        DEADLINE,
        "the Deployment at minReplicas 2",
    )
    # The autoscaler ran: the simulated pods serve no metrics, so it holds.
    wait_until(
        lambda: "never scale down on missing metrics" in autoscaling_status(api).get("reason", ""),
        DEADLINE,
        "an autoscaler decision on missing metrics",
    )
    status = autoscaling_status(api)
    assert status["mode"] == "native" and status["currentReplicas"] == 2
    spec_before = copy.deepcopy(api.md(NAME)["spec"])

    scaled = crd_cluster.kubectl("scale", "-n", namespace, f"mdep/{NAME}", "--replicas=5")
    assert scaled.returncode == 0, scaled.stderr

    def said() -> bool:
        found = api.condition(NAME, "Autoscaling") or {}
        return "spec.replicas (5) is not used" in found.get("message", "")

    wait_until(said, DEADLINE, "the Autoscaling condition to say spec.replicas is not used")
    condition = api.condition(NAME, "Autoscaling") or {}
    assert condition["status"] == "True" and condition["reason"] == "Native"
    assert deployment_spec_replicas(api) == 2
    # The operator wrote no spec: only kubectl scale changed spec.replicas.
    assert api.md(NAME)["spec"] == {**spec_before, "replicas": 5}


def _managed_replicas(api: ModelDeploymentApi) -> bool:
    """Whether the operator's field manager owns the Deployment's spec.replicas."""
    found = client.AppsV1Api(api.cluster.api_client()).read_namespaced_deployment(
        NAME, api.namespace
    )
    for entry in found.metadata.managed_fields or []:
        if entry.manager == "modeldeploy" and entry.operation == "Apply":
            return "f:replicas" in (entry.fields_v1 or {}).get("f:spec", {})
    return False


def _scaled_object(api: ModelDeploymentApi) -> dict[str, Any] | None:
    custom = client.CustomObjectsApi(api.cluster.api_client())
    try:
        found: dict[str, Any] = custom.get_namespaced_custom_object(
            "keda.sh", "v1alpha1", api.namespace, "scaledobjects", NAME
        )
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return found


def test_keda_mode_without_keda_says_so(
    crd_cluster: ClusterHandle, namespace: str, operator: OperatorProcess
) -> None:
    # Runs before the tests that install KEDA's CRD (for the rest of this module).
    api = ModelDeploymentApi(crd_cluster, namespace)
    api.create(scaled_gemma(mode="keda"))

    def refused() -> bool:
        found = api.condition(NAME, "Autoscaling") or {}
        return found.get("status") == "False"

    wait_until(refused, DEADLINE, "Autoscaling=False")
    condition = api.condition(NAME, "Autoscaling") or {}
    assert condition["reason"] == "ScaledObjectNotServed"
    assert "keda.sh/v1alpha1" in condition["message"] and "install KEDA" in condition["message"]
    # The rest of the workload is there: only the autoscaler is missing.
    assert deployment_spec_replicas(api) is not None


def test_keda_mode_applies_a_scaled_object_and_leaves_the_replicas_to_it(
    keda_cluster: ClusterHandle, namespace: str, operator: OperatorProcess
) -> None:
    api = ModelDeploymentApi(keda_cluster, namespace)
    api.create(scaled_gemma(mode="keda", maxReplicas=3, targetQueueDepth=3))
    wait_until(lambda: _scaled_object(api) is not None, DEADLINE, "the ScaledObject")
    scaled_object = _scaled_object(api)
    assert scaled_object is not None
    assert scaled_object["spec"]["scaleTargetRef"]["name"] == NAME
    assert scaled_object["spec"]["maxReplicaCount"] == 3
    (trigger,) = scaled_object["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metadata"]["threshold"] == "3"
    assert "llamacpp:requests_deferred" in trigger["metadata"]["query"]
    owner = scaled_object["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("ModelDeployment", NAME)
    wait_until(
        lambda: (api.condition(NAME, "Autoscaling") or {}).get("reason") == "Delegated",
        DEADLINE,
        "Autoscaling=True Delegated",
    )
    assert deployment_spec_replicas(api) is not None and not _managed_replicas(api)

    # Back to native: the ScaledObject is deleted and the operator decides the count again
    # (it applies spec.replicas, and so owns it again, once its count differs).
    spec = copy.deepcopy(api.md(NAME)["spec"])
    spec["autoscaling"]["mode"] = "native"
    api.patch_spec(NAME, spec)
    wait_until(lambda: _scaled_object(api) is None, DEADLINE, "the ScaledObject deleted")
    wait_until(
        lambda: (
            autoscaling_status(api).get("mode") == "native"
            and autoscaling_status(api).get("desiredReplicas") == deployment_spec_replicas(api)
        ),
        DEADLINE,
        "the native autoscaler's count on the Deployment",
    )


def test_hpa_mode_applies_a_horizontal_pod_autoscaler(
    crd_cluster: ClusterHandle, namespace: str, operator: OperatorProcess
) -> None:
    api = ModelDeploymentApi(crd_cluster, namespace)
    api.create(scaled_gemma(mode="hpa", maxReplicas=2))
    autoscaling = client.AutoscalingV2Api(crd_cluster.api_client())

    def applied() -> bool:
        try:
            autoscaling.read_namespaced_horizontal_pod_autoscaler(NAME, namespace)
        except client.ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    wait_until(applied, DEADLINE, "the HorizontalPodAutoscaler")
    hpa = autoscaling.read_namespaced_horizontal_pod_autoscaler(NAME, namespace)
    assert hpa.spec.max_replicas == 2 and hpa.spec.scale_target_ref.name == NAME
    (metric,) = hpa.spec.metrics
    assert metric.type == "Pods" and metric.pods.metric.name == "modeldeploy_requests_in_flight"
    assert not _managed_replicas(api)
