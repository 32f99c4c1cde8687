"""The local control plane behaves like a real cluster: nodes, scheduling, GC, admission."""

from __future__ import annotations

import json
from typing import Any

import pytest
from e2e.harness import ClusterHandle, pool_nodes, wait_until
from kubernetes import client

H100 = "NVIDIA-H100-80GB-HBM3"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def gpu_deployment(name: str, gpus: int, node_selector: dict[str, str]) -> dict[str, Any]:
    """A Deployment of one pod that asks for ``gpus`` GPUs and tolerates the GPU taint."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": node_selector,
                    "tolerations": [GPU_TOLERATION],
                    "containers": [
                        {
                            "name": "main",
                            "image": "registry.invalid/gpu-probe:0",
                            "resources": {
                                "requests": {"nvidia.com/gpu": str(gpus)},
                                "limits": {"nvidia.com/gpu": str(gpus)},
                            },
                        }
                    ],
                },
            },
        },
    }


def pods_of(core: client.CoreV1Api, namespace: str, app: str) -> list[client.V1Pod]:
    """The pods carrying label app=<app>."""
    return list(core.list_namespaced_pod(namespace, label_selector=f"app={app}").items)


def test_every_pool_node_is_ready_with_its_labels_taints_and_gpus(cluster: ClusterHandle) -> None:
    core = client.CoreV1Api(cluster.api_client())
    for wanted in pool_nodes():
        name = wanted["metadata"]["name"]
        node = core.read_node(name)
        ready = [c for c in node.status.conditions if c.type == "Ready"]
        assert ready and ready[0].status == "True", f"{name} not Ready"
        assert wanted["metadata"]["labels"].items() <= node.metadata.labels.items()
        taints = {(t.key, t.effect) for t in node.spec.taints or []}
        gpus = wanted["status"]["allocatable"].get("nvidia.com/gpu")
        if gpus:
            assert node.status.allocatable["nvidia.com/gpu"] == gpus
            assert ("nvidia.com/gpu", "NoSchedule") in taints
        else:
            assert "nvidia.com/gpu" not in node.status.allocatable
            assert ("nvidia.com/gpu", "NoSchedule") not in taints


def test_gpu_deployment_is_scheduled_on_h100_and_runs_on_a_loopback_ip(
    cluster: ClusterHandle, namespace: str
) -> None:
    api = cluster.api_client()
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    selector = {"nvidia.com/gpu.product": H100}
    apps.create_namespaced_deployment(namespace, gpu_deployment("two-gpus", 2, selector))

    def running_pod() -> client.V1Pod | None:
        pods = pods_of(core, namespace, "two-gpus")
        return next((p for p in pods if p.status.phase == "Running" and p.status.pod_ip), None)

    pod = wait_until(running_pod, what="the 2-GPU pod to run")
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.labels["nvidia.com/gpu.product"] == H100
    assert cluster.in_pod_cidr(pod.status.pod_ip), pod.status.pod_ip
    if cluster.pod_cidr is not None:
        assert pod.status.pod_ip.startswith("127.")


def test_deployment_asking_for_more_gpus_than_any_node_stays_pending(
    cluster: ClusterHandle, namespace: str
) -> None:
    api = cluster.api_client()
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(namespace, gpu_deployment("sixteen-gpus", 16, {}))

    def unschedulable() -> client.V1PodCondition | None:
        for pod in pods_of(core, namespace, "sixteen-gpus"):
            for condition in pod.status.conditions or []:
                if condition.type == "PodScheduled" and condition.reason == "Unschedulable":
                    return condition
        return None

    condition = wait_until(unschedulable, what="the scheduler to refuse the 16-GPU pod")
    assert condition.status == "False"
    assert "Insufficient nvidia.com/gpu" in condition.message
    (pod,) = pods_of(core, namespace, "sixteen-gpus")
    assert pod.status.phase == "Pending" and not pod.spec.node_name


def test_deleting_a_deployment_garbage_collects_replicasets_and_pods(
    cluster: ClusterHandle, namespace: str
) -> None:
    api = cluster.api_client()
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(namespace, gpu_deployment("collected", 1, {}))
    wait_until(
        lambda: any(p.status.phase == "Running" for p in pods_of(core, namespace, "collected")),
        what="the pod to run",
    )
    assert apps.list_namespaced_replica_set(namespace).items

    apps.delete_namespaced_deployment("collected", namespace, propagation_policy="Background")

    def all_gone() -> bool:
        replica_sets = apps.list_namespaced_replica_set(namespace).items
        return not replica_sets and not pods_of(core, namespace, "collected")

    wait_until(all_gone, what="the ReplicaSet and pods to be garbage-collected")


def test_restricted_namespace_rejects_a_privileged_pod(
    cluster: ClusterHandle, namespace: str
) -> None:
    core = client.CoreV1Api(cluster.api_client())
    core.patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged"},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "registry.invalid/probe:0",
                    "securityContext": {"privileged": True},
                }
            ]
        },
    }
    with pytest.raises(client.ApiException) as refused:
        core.create_namespaced_pod(namespace, pod)
    assert refused.value.status == 403
    message = json.loads(refused.value.body)["message"]
    assert 'violates PodSecurity "restricted:latest"' in message
    assert "privileged" in message


WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.e2e.modeldeploy.io"},
    "spec": {
        "group": "e2e.modeldeploy.io",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "minReplicas": {"type": "integer"},
                                    "maxReplicas": {"type": "integer"},
                                },
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "self.minReplicas <= self.maxReplicas",
                                        "message": "minReplicas must not exceed maxReplicas",
                                    }
                                ],
                            }
                        },
                    }
                },
            }
        ],
    },
}


def test_crd_with_a_cel_rule_rejects_a_bad_object_with_the_rules_message(
    cluster: ClusterHandle, namespace: str
) -> None:
    api = cluster.api_client()
    extensions = client.ApiextensionsV1Api(api)
    try:
        extensions.create_custom_resource_definition(WIDGET_CRD)
    except client.ApiException as error:
        if error.status != 409:  # created by an earlier run against an existing cluster
            raise

    def established() -> bool:
        crd = extensions.read_custom_resource_definition("widgets.e2e.modeldeploy.io")
        conditions = (crd.status.conditions if crd.status else None) or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_until(established, what="the Widget CRD to be Established")
    custom = client.CustomObjectsApi(api)

    def widget(name: str, low: int, high: int) -> dict[str, Any]:
        return {
            "apiVersion": "e2e.modeldeploy.io/v1",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": {"minReplicas": low, "maxReplicas": high},
        }

    def create(body: dict[str, Any]) -> object:
        return custom.create_namespaced_custom_object(
            "e2e.modeldeploy.io", "v1", namespace, "widgets", body
        )

    # The API server may serve the new type a moment after Established: retry on 404.
    wait_until(lambda: create(widget("good", 1, 3)), what="a valid Widget to be accepted")
    with pytest.raises(client.ApiException) as refused:
        create(widget("bad", 5, 2))
    assert refused.value.status == 422
    assert "minReplicas must not exceed maxReplicas" in refused.value.body
