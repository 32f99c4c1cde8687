"""The operator against the real control plane: create, update, drift, scale, delete (also
while no operator runs), refusals, node-pool changes, crash recovery, the release of an
earlier operator's finalizers, the drift check pausing with Kopf peering, and an idle
resync that writes nothing."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from e2e.cluster.local import REPO
from e2e.harness import (
    ClusterHandle,
    ModelDeploymentApi,
    OperatorProcess,
    install_peering_crds,
    wait_until,
)
from kubernetes import client

GROUP, VERSION, PLURAL = "modeldeploy.io", "v1alpha1", "modeldeployments"
H100 = "NVIDIA-H100-80GB-HBM3"


def example(name: str) -> dict[str, Any]:
    """An example ModelDeployment from examples/."""
    loaded: dict[str, Any] = yaml.safe_load((REPO / "examples" / name).read_text())
    return loaded


def gemma(name: str = "gemma", **spec: Any) -> dict[str, Any]:
    """The CPU GGUF example under another name, with spec overrides."""
    md = example("gemma-270m-cpu.yaml")
    md["metadata"] = {"name": name}
    md["spec"].update(spec)
    return md


def small_gemma(name: str) -> dict[str, Any]:
    """The CPU example sized so that several replicas fit its one-node CPU class."""
    small = {"cpu": "2", "memory": "2Gi"}
    md = gemma(name, serving={"resources": {"requests": small, "limits": small}})
    md["spec"]["cache"]["accessMode"] = "ReadWriteMany"
    return md


@pytest.fixture
def operator(crd_cluster: ClusterHandle, namespace: str) -> Iterator[OperatorProcess]:
    """The operator serving only this test's namespace, resyncing every second."""
    process = OperatorProcess(crd_cluster.kubeconfig, namespace).start()
    try:
        yield process
    finally:
        process.stop()


class Api(ModelDeploymentApi):
    """Small typed helpers over the cluster for one namespace."""

    def wait_ready(self, name: str, timeout: float = 90) -> None:
        # What a person would run: kubectl wait on the Ready condition.
        result = self.cluster.kubectl(
            "wait", "-n", self.namespace, "--for=condition=Ready", f"mdep/{name}",
            f"--timeout={int(timeout)}s", check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr + json.dumps(self.md(name).get("status"))

    def deployment(self, name: str) -> client.V1Deployment:
        return self.apps.read_namespaced_deployment(name, self.namespace)

    def pods(self, name: str) -> list[client.V1Pod]:
        selector = f"modeldeploy.io/model-deployment={name}"
        return list(self.core.list_namespaced_pod(self.namespace, label_selector=selector).items)

    def events(self, name: str) -> list[client.CoreV1Event]:
        selector = f"involvedObject.name={name}"
        return list(self.core.list_namespaced_event(self.namespace, field_selector=selector).items)

    def children(self, name: str) -> list[str]:
        selector = f"modeldeploy.io/model-deployment={name}"
        found = [
            *(f"Deployment/{d.metadata.name}" for d in self.apps.list_namespaced_deployment(
                self.namespace, label_selector=selector).items),
            *(f"Service/{s.metadata.name}" for s in self.core.list_namespaced_service(
                self.namespace, label_selector=selector).items),
            *(f"PersistentVolumeClaim/{c.metadata.name}" for c in
              self.core.list_namespaced_persistent_volume_claim(
                  self.namespace, label_selector=selector).items),
        ]  # fmt: skip
        return sorted(found)


def node_labels(api: Api, node: str) -> dict[str, str]:
    """The labels of a node."""
    return dict(api.core.read_node(node).metadata.labels)


def test_create_renders_schedules_and_becomes_ready(
    crd_cluster: ClusterHandle, namespace: str, operator: OperatorProcess
) -> None:
    api = Api(crd_cluster, namespace)
    cpu = gemma("chat")
    big = example("llama-70b-bf16-h100.yaml")
    api.create(cpu)
    api.create(big)
    big_name = big["metadata"]["name"]
    api.wait_ready("chat")
    api.wait_ready(big_name)

    status = api.md("chat")["status"]
    assert status["observedGeneration"] == api.md("chat")["metadata"]["generation"]
    assert status["readyReplicas"] == 1 and status["phase"] == "Ready"
    assert status["decision"]["engine"] == "llamacpp" and status["decision"]["accelerator"] == "cpu"
    assert status["endpoint"] == f"http://chat.{namespace}.svc:8000/v1"
    assert api.children("chat") == [
        "Deployment/chat", "PersistentVolumeClaim/chat-model-cache", "Service/chat",
    ]  # fmt: skip
    owner = api.deployment("chat").metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.controller) == ("ModelDeployment", "chat", True)

    # kube-scheduler placed each pod on a node of the planned class.
    (cpu_pod,) = api.pods("chat")
    assert "nvidia.com/gpu.present" not in node_labels(api, cpu_pod.spec.node_name)
    (gpu_pod,) = api.pods(big_name)
    assert node_labels(api, gpu_pod.spec.node_name)["nvidia.com/gpu.product"] == H100
    assert api.md(big_name)["status"]["decision"]["tensorParallelSize"] >= 2
    assert crd_cluster.in_pod_cidr(cpu_pod.status.pod_ip)

    progressing = api.condition("chat", "Progressing")
    assert progressing and progressing["status"] == "False"
    assert progressing["reason"] == "RolloutComplete"
    assert any(e.reason == "Planned" for e in api.events("chat"))


def test_update_rolls_keeps_foreign_fields_and_restores_drift(
    crd_cluster: ClusterHandle, namespace: str, operator: OperatorProcess
) -> None:
    api = Api(crd_cluster, namespace)
    # Small, so that the rollout's surge pod fits beside the old one on the class's node.
    api.create(small_gemma("chat"))
    api.wait_ready("chat")
    before = api.deployment("chat")
    old_hash = before.spec.template.metadata.annotations["modeldeploy.io/spec-hash"]

    # Someone else's annotation: not ours, so it must survive every later apply.
    crd_cluster.kubectl("annotate", "-n", namespace, "deployment/chat", "example.com/team=ml")
    api.patch_spec("chat", {"serving": {"contextLength": 2048}})

    def rolled() -> bool:
        template = api.deployment("chat").spec.template
        return template.metadata.annotations["modeldeploy.io/spec-hash"] != old_hash

    wait_until(rolled, what="the Deployment to roll to the new spec")
    api.wait_ready("chat")
    assert api.md("chat")["status"]["observedGeneration"] == 2
    deployment = api.deployment("chat")
    args = deployment.spec.template.spec.containers[0].args
    flag = dict(zip(args[::2], args[1::2], strict=False))
    # llama-server's --ctx-size is the total over its parallel slots.
    assert int(flag["--ctx-size"]) == 2048 * int(flag["--parallel"])
    assert deployment.metadata.annotations["example.com/team"] == "ml"

    # Drift: a field the operator owns is edited by hand and comes back.
    container = deployment.spec.template.spec.containers[0]
    image = container.image
    edited = f"{container.name}=registry.invalid/edited:1"
    crd_cluster.kubectl("set", "image", "-n", namespace, "deployment/chat", edited)
    wait_until(
        lambda: api.deployment("chat").spec.template.spec.containers[0].image == image,
        what="the operator to restore the image",
    )
    assert api.deployment("chat").metadata.annotations["example.com/team"] == "ml"


def test_kubectl_scale_goes_through_the_scale_subresource(
    crd_cluster: ClusterHandle, namespace: str, operator: OperatorProcess
) -> None:
    api = Api(crd_cluster, namespace)
    api.create(small_gemma("chat"))
    api.wait_ready("chat")
    crd_cluster.kubectl("scale", "-n", namespace, "mdep/chat", "--replicas=3")
    wait_until(lambda: api.deployment("chat").spec.replicas == 3, what="3 Deployment replicas")
    wait_until(
        lambda: api.md("chat").get("status", {}).get("readyReplicas") == 3,
        what="3 ready replicas in status",
    )
    api.wait_ready("chat")
    scale = api.custom.get_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, "chat")
    assert scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == "modeldeploy.io/model-deployment=chat"


def test_delete_collects_every_child_and_holds_no_finalizer(
    crd_cluster: ClusterHandle, namespace: str, operator: OperatorProcess
) -> None:
    api = Api(crd_cluster, namespace)
    api.create(gemma("chat"))
    api.wait_ready("chat")
    # No handler needs one: deletion never waits for an operator.
    assert not api.md("chat")["metadata"].get("finalizers")
    api.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "chat")

    def gone() -> bool:
        try:
            api.md("chat")
        except client.ApiException as error:
            if error.status == 404:
                return not api.children("chat") and not api.pods("chat")
            raise
        return False

    wait_until(gone, what="the ModelDeployment and all its children to be deleted")


def test_delete_while_no_operator_runs_completes_and_collects_every_child(
    crd_cluster: ClusterHandle, namespace: str, operator: OperatorProcess
) -> None:
    api = Api(crd_cluster, namespace)
    api.create(gemma("chat"))
    api.wait_ready("chat")
    assert api.children("chat") == [
        "Deployment/chat", "PersistentVolumeClaim/chat-model-cache", "Service/chat",
    ]  # fmt: skip
    operator.stop()
    # What a person runs; kubectl waits until the object is gone, which no finalizer holds.
    deleted = crd_cluster.kubectl(
        "delete", "-n", namespace, "mdep/chat", "--wait", "--timeout=60s", check=False
    )
    assert deleted.returncode == 0, deleted.stderr
    with pytest.raises(client.ApiException) as missing:
        api.md("chat")
    assert missing.value.status == 404
    # The children are owned by it: the garbage collector deletes them, no operator needed.
    wait_until(
        lambda: not api.children("chat") and not api.pods("chat"),
        what="the garbage collector to delete the Deployment, Service, PVC and pods",
    )


LEGACY_FINALIZERS = ["modeldeploy.io/finalizer", "kopf.zalando.org/KopfFinalizerMarker"]


def test_finalizers_an_earlier_operator_left_are_released_on_first_sight(
    crd_cluster: ClusterHandle, namespace: str
) -> None:
    api = Api(crd_cluster, namespace)
    foreign = "example.com/backup"  # someone else's: kept
    kept = gemma("kept")
    kept["metadata"]["finalizers"] = [foreign, *LEGACY_FINALIZERS]
    api.create(kept)
    # Deleted while no operator ran: held Terminating by the old finalizer.
    held = gemma("held")
    held["metadata"]["finalizers"] = LEGACY_FINALIZERS[:1]
    api.create(held)
    api.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "held")
    assert api.md("held")["metadata"].get("deletionTimestamp")
    mark = len(crd_cluster.audit_log.read_text().splitlines()) if crd_cluster.audit_log else 0

    def held_gone() -> bool:
        try:
            api.md("held")
        except client.ApiException as error:
            if error.status == 404:
                return True
            raise
        return False

    process = OperatorProcess(crd_cluster.kubeconfig, namespace).start()
    try:
        wait_until(held_gone, what="the held ModelDeployment to be released and deleted")
        wait_until(
            lambda: api.md("kept")["metadata"].get("finalizers") == [foreign],
            what="the old finalizers to be released, the foreign one kept",
        )
        api.wait_ready("kept")
        if crd_cluster.audit_log is not None:
            # Released by the operator's one writer, not by Kopf.
            patches = [
                (w["userAgent"].split("/")[0], w["objectRef"]["name"])
                for w in audit_writes(crd_cluster, mark, namespace)
                if w["verb"] == "patch"
                and w["objectRef"].get("resource") == PLURAL
                and not w["objectRef"].get("subresource")
            ]
            assert sorted(patches) == [("modeldeploy", "held"), ("modeldeploy", "kept")]
    finally:
        process.stop()
        api.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "kept", {"metadata": {"finalizers": None}}
        )


def test_the_drift_check_pauses_while_kopf_peering_pauses_the_operator(
    crd_cluster: ClusterHandle, namespace: str
) -> None:
    install_peering_crds(crd_cluster)
    api = Api(crd_cluster, namespace)
    peering = "modeldeploy"
    api.custom.create_namespaced_custom_object(
        "kopf.dev", "v1", namespace, "kopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": peering}},
    )  # fmt: skip
    api.create(gemma("chat"))
    process = OperatorProcess(crd_cluster.kubeconfig, namespace, peering=peering).start()

    def rounds(outcome: str) -> float:
        return process.metric("modeldeploy_resync_rounds_total", outcome=outcome)

    def set_peer(entry: dict[str, Any] | None) -> None:
        api.custom.patch_namespaced_custom_object(
            "kopf.dev", "v1", namespace, "kopfpeerings", peering,
            {"status": {"e2e-peer": entry}},
        )  # fmt: skip

    try:
        api.wait_ready("chat")
        wait_until(lambda: rounds("ran") >= 2, what="drift checks while alone in the peering")
        now = datetime.datetime.now(datetime.UTC).isoformat()
        set_peer({"priority": 100, "lifetime": 600, "lastseen": now})
        wait_until(lambda: "Pausing operations in favour of" in process.log(), what="Kopf to pause")
        paused = rounds("paused")
        wait_until(lambda: rounds("paused") > paused, what="a paused drift check")
        passes, paused = process.reconciles(), rounds("paused")
        wait_until(lambda: rounds("paused") >= paused + 3, what="three more paused drift checks")
        assert process.reconciles() == passes
        set_peer(None)  # the peer left: Kopf resumes, and so does the drift check
        wait_until(lambda: process.reconciles() >= passes + 2, what="drift checks to run again")
    finally:
        process.stop()


def test_unsatisfiable_spec_sets_conditions_posts_one_event_and_does_not_retry(
    crd_cluster: ClusterHandle, namespace: str, operator: OperatorProcess
) -> None:
    api = Api(crd_cluster, namespace)
    md = gemma("too-big", hardware={"accelerator": "gpu", "gpu": {"products": ["NVIDIA-B200"]}})
    api.create(md)

    def refused() -> dict[str, Any] | None:
        cond = api.condition("too-big", "Scheduled")
        return cond if cond and cond["status"] == "False" else None

    scheduled = wait_until(refused, what="Scheduled=False")
    assert scheduled["reason"] == "NoFittingHardware"
    assert "NVIDIA-B200" in scheduled["message"]
    assert api.md("too-big")["status"]["phase"] == "Pending"
    ready = api.condition("too-big", "Ready")
    assert ready and ready["status"] == "False"

    # Several resync passes later: still no children and still exactly one Warning.
    passes = operator.reconciles()
    wait_until(lambda: operator.reconciles() >= passes + 3, what="three more resync passes")
    assert api.children("too-big") == []
    warnings = [e for e in api.events("too-big") if e.type == "Warning"]
    assert len(warnings) == 1, [(e.reason, e.message) for e in warnings]
    assert warnings[0].reason == "NoFittingHardware"
    status_writes = operator.metric(
        "modeldeploy_api_writes_total", verb="apply", kind="ModelDeployment/status"
    )
    assert status_writes == 1


def test_node_pool_change_replans(
    crd_cluster: ClusterHandle, namespace: str, operator: OperatorProcess
) -> None:
    api = Api(crd_cluster, namespace)
    product = f"NVIDIA-L40S-{namespace[-6:]}"  # a product only this test's node has
    md = gemma("needs-new-gpu", hardware={"gpu": {"products": [product]}})
    api.create(md)
    wait_until(
        lambda: (api.condition("needs-new-gpu", "Scheduled") or {}).get("status") == "False",
        what="Scheduled=False before the node exists",
    )
    node_name = f"gpu-l40s-{namespace[-6:]}"
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node_name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": node_name,
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": product,
                "nvidia.com/gpu.memory": "46068",
                "nvidia.com/gpu.count": "1",
                "nvidia.com/gpu.compute.major": "8",
                "nvidia.com/gpu.compute.minor": "9",
            },
        },
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {
            "allocatable": {"cpu": "16", "memory": "128Gi", "pods": "110", "nvidia.com/gpu": "1"},
            "capacity": {"cpu": "16", "memory": "128Gi", "pods": "110", "nvidia.com/gpu": "1"},
        },
    }
    api.core.create_node(node)
    try:
        api.wait_ready("needs-new-gpu")
        (pod,) = api.pods("needs-new-gpu")
        assert pod.spec.node_name == node_name
        api.core.delete_node(node_name)
        wait_until(
            lambda: (
                (api.condition("needs-new-gpu", "Scheduled") or {}).get("reason")
                == "NoFittingHardware"
            ),
            what="Scheduled=False after the only fitting node left",
        )
    finally:
        try:
            api.core.delete_node(node_name)
        except client.ApiException as error:
            if error.status != 404:
                raise


def test_operator_killed_mid_reconcile_converges_without_duplicates_or_orphans(
    crd_cluster: ClusterHandle, namespace: str, operator: OperatorProcess
) -> None:
    api = Api(crd_cluster, namespace)
    names = [f"chat-{i}" for i in range(6)]
    for name in names:
        api.create(small_gemma(name))
    wait_until(
        lambda: api.apps.list_namespaced_deployment(namespace).items,
        what="the first Deployment",
    )
    operator.kill()  # mid-way through the batch
    operator.start()
    for name in names:
        api.wait_ready(name)
    for name in names:
        assert api.children(name) == [
            f"Deployment/{name}", f"PersistentVolumeClaim/{name}-model-cache", f"Service/{name}",
        ]  # fmt: skip
        replica_sets = api.apps.list_namespaced_replica_set(
            namespace, label_selector=f"modeldeploy.io/model-deployment={name}"
        ).items
        assert len(replica_sets) == 1, [rs.metadata.name for rs in replica_sets]
    uids = {api.md(n)["metadata"]["uid"] for n in names}
    everything = [
        *api.apps.list_namespaced_deployment(namespace).items,
        *api.core.list_namespaced_service(namespace).items,
        *api.core.list_namespaced_persistent_volume_claim(namespace).items,
    ]
    assert all(obj.metadata.owner_references[0].uid in uids for obj in everything)


def audit_writes(cluster: ClusterHandle, since_line: int, namespace: str) -> list[dict[str, Any]]:
    """Write calls in ``namespace`` recorded by the API server's audit log after a mark."""
    assert cluster.audit_log is not None
    lines = cluster.audit_log.read_text().splitlines()[since_line:]
    entries = [json.loads(line) for line in lines]
    return [
        e for e in entries
        if e.get("objectRef", {}).get("namespace") == namespace
        and str(e.get("userAgent", "")).startswith(("modeldeploy/", "kopf/"))
    ]  # fmt: skip


def test_an_idle_resync_makes_zero_write_calls(
    crd_cluster: ClusterHandle, namespace: str, operator: OperatorProcess
) -> None:
    if crd_cluster.audit_log is None:
        pytest.skip("needs the local control plane's audit log")
    api = Api(crd_cluster, namespace)
    api.create(gemma("chat"))
    api.wait_ready("chat")
    # The last writes of a rollout: the status saying it is complete, then its Event.
    wait_until(
        lambda: (
            (api.condition("chat", "Progressing") or {}).get("reason") == "RolloutComplete"
            and any(e.reason == "Available" for e in api.events("chat"))
        ),
        what="the rollout-complete status and its Available Event",
    )
    mark = len(crd_cluster.audit_log.read_text().splitlines())
    passes = operator.reconciles()
    wait_until(lambda: operator.reconciles() >= passes + 5, timeout=60, what="five resync passes")
    writes = audit_writes(crd_cluster, mark, namespace)
    assert writes == [], [(w["verb"], w["objectRef"]) for w in writes]
    # The audit log does record this operator's writes: the rollout's are there.
    assert audit_writes(crd_cluster, 0, namespace)


def test_sglang_deploys_on_the_simulated_gpu_nodes(
    crd_cluster: ClusterHandle, namespace: str, operator: OperatorProcess
) -> None:
    api = Api(crd_cluster, namespace)
    md = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": "qwen-sglang"},
        "spec": {
            "model": {
                "source": "hf://Qwen/Qwen2.5-72B-Instruct",
                "parameters": "72B",
                "format": "safetensors",
                "quantization": "BF16",
                "servedName": "qwen-72b",
            },
            "engine": "sglang",
            "hardware": {"gpu": {"products": [H100]}},
            "serving": {"contextLength": 8192, "maxConcurrentRequests": 8},
        },
    }
    api.create(md)
    api.wait_ready("qwen-sglang")
    decision = api.md("qwen-sglang")["status"]["decision"]
    assert decision["engine"] == "sglang" and decision["tensorParallelSize"] >= 2
    (container,) = api.deployment("qwen-sglang").spec.template.spec.containers
    assert container.command == ["modeldeploy", "serve-runtime", "sglang", "--"]
    assert container.args[container.args.index("--tp-size") + 1] == str(
        decision["tensorParallelSize"]
    )
    assert container.readiness_probe.http_get.path == "/health"
    (pod,) = api.pods("qwen-sglang")
    assert node_labels(api, pod.spec.node_name)["nvidia.com/gpu.product"] == H100
