"""Placement that sees free capacity and cost, against the real control plane and scheduler.

The simulated pool (``e2e/cluster/nodes.yaml``) has one single-GPU L4 node, one 4-GPU A10G
node, two 8-GPU H100 nodes and three CPU nodes; kube-scheduler binds the pods. Checked here:
two GPU models that both fit the one L4 end on different classes and both schedule (the
demo's Pending pod); two replicas of a small CPU model both run; a budget below the
cheapest fitting option is refused with that option named; the cost is in status and in
``kubectl get``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.cluster.local import REPO
from e2e.demo import DEMO_SETTINGS
from e2e.harness import ClusterHandle, ModelDeploymentApi, OperatorProcess, wait_until

PRICES = DEMO_SETTINGS  # the illustrative prices `make demo` runs with


def example(name: str, **spec: Any) -> dict[str, Any]:
    """An example of examples/ with its annotations kept and ``spec`` merged in."""
    md: dict[str, Any] = yaml.safe_load((REPO / "examples" / f"{name}.yaml").read_text())
    md["spec"].update(spec)
    return md


@pytest.fixture
def operator(
    crd_cluster: ClusterHandle, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """The operator for this namespace, with prices in its settings."""
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump(PRICES))
    process = OperatorProcess(crd_cluster.kubeconfig, namespace, settings_file=settings).start()
    try:
        yield process
    finally:
        process.stop()


def _bound_pods(api: ModelDeploymentApi, name: str) -> list[Any]:
    selector = f"modeldeploy.io/model-deployment={name}"
    pods = api.core.list_namespaced_pod(api.namespace, label_selector=selector).items
    return [pod for pod in pods if pod.spec.node_name and not pod.metadata.deletion_timestamp]


def _gpu_product(api: ModelDeploymentApi, node: str) -> str:
    return str(api.core.read_node(node).metadata.labels.get("nvidia.com/gpu.product", "cpu"))


def test_two_models_that_fit_the_one_l4_take_different_classes_and_both_schedule(
    crd_cluster: ClusterHandle, namespace: str, operator: OperatorProcess
) -> None:
    api = ModelDeploymentApi(crd_cluster, namespace)
    # Created back to back: the second is planned before the first one's pod is bound.
    api.create(example("qwen-7b-gguf-pinned", hardware={"accelerator": "gpu"}))
    api.create(example("qwen-7b-awq-gpu"))
    names = ("qwen-7b-gguf-pinned", "qwen-7b-awq")
    wait_until(
        lambda: all(len(_bound_pods(api, name)) == 1 for name in names),
        timeout=120,
        what="one bound pod for each model",
    )
    products = {name: _gpu_product(api, _bound_pods(api, name)[0].spec.node_name) for name in names}
    assert sorted(products.values()) == ["NVIDIA-A10G", "NVIDIA-L4"], products
    classes = {api.md(name)["status"]["decision"]["hardwareClass"] for name in names}
    assert classes == {"gpu/amd64/NVIDIA-L4/x1", "gpu/amd64/NVIDIA-A10G/x4"}


def test_two_replicas_of_a_small_cpu_model_both_run(
    crd_cluster: ClusterHandle, namespace: str, operator: OperatorProcess
) -> None:
    api = ModelDeploymentApi(crd_cluster, namespace)
    md = example("gemma-270m-cpu", replicas=2)
    md["metadata"]["name"] = "small"
    md["spec"]["model"].update(source="hf://Qwen/Qwen2.5-3B-Instruct-GGUF", parameters="3B")
    md["spec"]["model"].pop("servedName")
    md["spec"]["cache"]["accessMode"] = "ReadWriteMany"
    api.create(md)
    wait_until(lambda: len(_bound_pods(api, "small")) == 2, timeout=120, what="two bound pods")
    # The pass writes status after it applies the Deployment: under load the pods can be
    # bound first.
    decision = wait_until(
        lambda: (api.md("small").get("status") or {}).get("decision"),
        timeout=60,
        what="the decision in status",
    )
    # Sized to the model, not to three quarters of the 16-core node: both fit one class.
    assert decision["threads"] <= 8, decision
    for pod in _bound_pods(api, "small"):
        assert pod.spec.containers[0].resources.requests["cpu"] == str(decision["threads"])
    wait_until(
        lambda: api.md("small").get("status", {}).get("readyReplicas") == 2,
        timeout=120,
        what="two ready replicas",
    )


def test_a_budget_below_the_cheapest_option_is_refused_naming_it(
    crd_cluster: ClusterHandle, namespace: str, operator: OperatorProcess
) -> None:
    api = ModelDeploymentApi(crd_cluster, namespace)
    awq = example("qwen-7b-awq-gpu", autoscaling={"enabled": False}, replicas=1)
    api.create({**awq, "spec": {**awq["spec"], "budget": {"maxCostPerHour": 0.5}}})
    wait_until(
        lambda: (api.condition("qwen-7b-awq", "Scheduled") or {}).get("status") == "False",
        timeout=60,
        what="the budget refusal",
    )
    scheduled = api.condition("qwen-7b-awq", "Scheduled") or {}
    assert scheduled["reason"] == "NoFittingHardware"
    assert (
        "spec.budget.maxCostPerHour: $0.50/h is less than the cheapest option that fits: "
        "$0.80/h for 1 replica(s) on gpu/amd64/NVIDIA-L4/x1"
    ) in scheduled["message"]
    assert not _bound_pods(api, "qwen-7b-awq")

    # Raised to cover it: planned, with the cost in status and in `kubectl get`.
    api.patch_spec("qwen-7b-awq", {"budget": {"maxCostPerHour": 1.0}})
    wait_until(
        lambda: api.md("qwen-7b-awq").get("status", {}).get("decision", {}).get("costPerHour"),
        timeout=60,
        what="a priced decision",
    )
    decision = api.md("qwen-7b-awq")["status"]["decision"]
    assert (decision["costPerReplicaPerHour"], decision["costPerHour"]) == (0.8, 0.8)
    table = crd_cluster.kubectl("get", "mdep", "-n", namespace).stdout
    assert "COST/H" in table and "0.8" in table, table
