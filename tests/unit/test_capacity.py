"""Placement that sees free capacity, replicas and cost (capacity.py, pricing.py, placement.py).

Tables on the e2e node pool (``e2e/cluster/nodes.yaml``): full classes skipped, replicas
that fit only across classes, CPU thread sizing, cheapest-fits with and without prices,
budget refusals, a running ModelDeployment not moved when another arrives, and the re-plan
after an unschedulable wait (one reconcile pass at a time, with ``RecordingWriter`` standing
in for the API server), without flapping.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from nodepool import load_e2e_pool, model_deployment
from recording import RecordingWriter

from modeldeploy.alternatives import plan_alternatives
from modeldeploy.api import parse_model_deployment
from modeldeploy.capacity import (
    PodUsage,
    Reservation,
    ReservationBook,
    Resources,
    free_by_node,
    pod_requests,
)
from modeldeploy.config import OperatorConfig
from modeldeploy.decision import PlacementRefusal
from modeldeploy.nodes import parse_node
from modeldeploy.observed import pod_usage, unschedulable_since
from modeldeploy.placement import ClusterLoad, plan_placement
from modeldeploy.pricing import money, replica_cost
from modeldeploy.reconcile import ClusterView, reconcile
from modeldeploy.sizing import GIB, cpu_threads

POOL = load_e2e_pool()
NODES = [parse_node(node) for node in POOL]
L4, A10G = "gpu/amd64/NVIDIA-L4/x1", "gpu/amd64/NVIDIA-A10G/x4"
H100 = "gpu/amd64/NVIDIA-H100-80GB-HBM3/x8"
AVX2, AVX512 = "cpu/amd64/avx2/c5a.4xlarge", "cpu/amd64/avx512/c6i.8xlarge"
AWQ = {"model": {"source": "hf://Qwen/Qwen2.5-7B-Instruct-AWQ", "quantization": "AWQ"}}
# A small CPU model: 3B parameters, GGUF Q4_K_M.
SMALL_CPU = {
    "model": {"source": "hf://Qwen/Qwen2.5-3B-Instruct-GGUF", "quantization": "Q4_K_M"},
    "hardware": {"accelerator": "cpu"},
}
PRICES = OperatorConfig(
    gpu_prices_per_hour={"NVIDIA-L4": 0.80, "NVIDIA-A10G": 1.01, "NVIDIA-H100-80GB-HBM3": 4.10},
    cpu_price_per_vcpu_hour=0.034,
    memory_price_per_gib_hour=0.0045,
)


def spec_of(spec: dict[str, Any], **fields: Any) -> Any:
    return parse_model_deployment(model_deployment({**copy.deepcopy(spec), **fields})).spec


def used(**taken: Resources) -> ClusterLoad:
    """Free capacity with ``taken`` in use on the named nodes (dashes as underscores)."""
    usage = [PodUsage(node.replace("_", "-"), None, r) for node, r in taken.items()]
    return ClusterLoad(free=free_by_node(NODES, usage))


GPU = Resources(cpu_millis=1000, memory_bytes=GIB, gpus=1)


def test_full_classes_are_skipped() -> None:
    idle = plan_placement(spec_of(AWQ), POOL, OperatorConfig())
    assert idle.hardware_class.id == L4
    full = plan_placement(spec_of(AWQ), POOL, OperatorConfig(), load=used(gpu_l4_a=GPU))
    assert full.hardware_class.id == A10G
    assert f"{L4} lack room for 1 replica(s)" in full.reason


def test_replicas_must_all_fit_on_the_class() -> None:
    # Four AWQ replicas: the one-GPU L4 node takes one, the 4-GPU A10G node takes four.
    placement = plan_placement(spec_of(AWQ, replicas=4), POOL, OperatorConfig())
    assert placement.hardware_class.id == A10G
    # Under autoscaling only minReplicas must fit now.
    scaled = spec_of(AWQ, autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 8})
    assert plan_placement(scaled, POOL, OperatorConfig()).hardware_class.id == L4


def test_replicas_that_fit_only_across_classes_take_the_class_with_most_room() -> None:
    # Two CPU replicas; the avx2 and the avx512 node have room for one each, but one
    # Deployment's affinity admits one class: it goes where most fit, and says so.
    per_replica = plan_placement(spec_of(SMALL_CPU), POOL, OperatorConfig()).requests
    cores = int(per_replica["cpu"])
    load = used(
        cpu_avx2_a=Resources(cpu_millis=(16 - cores) * 1000 - 1),
        cpu_avx512_a=Resources(cpu_millis=(32 - cores) * 1000 - 1),
        cpu_arm64_a=Resources(cpu_millis=16_000),
    )
    placement = plan_placement(spec_of(SMALL_CPU, replicas=2), POOL, OperatorConfig(), load=load)
    assert placement.hardware_class.id == AVX2  # both take one: the smaller wins the tie
    assert "no class has room for 2 replicas now; this one takes 1" in placement.reason


def test_two_small_cpu_replicas_share_the_smallest_cpu_node() -> None:
    # The case: each replica used to ask for 12 of the 16 cores.
    placement = plan_placement(spec_of(SMALL_CPU, replicas=2), POOL, OperatorConfig())
    assert placement.hardware_class.id == AVX2
    assert int(placement.requests["cpu"]) * 2 <= 16
    # With the avx2 node (and the arm64 one) half taken, both go to the idle 32-core node.
    load = used(cpu_avx2_a=Resources(cpu_millis=10_000), cpu_arm64_a=Resources(cpu_millis=10_000))
    moved = plan_placement(spec_of(SMALL_CPU, replicas=2), POOL, OperatorConfig(), load=load)
    assert moved.hardware_class.id == AVX512


@pytest.mark.parametrize(
    ("weights_gib", "parallel", "threads"),
    [
        (0.25, 1, 3),  # gemma 270M
        (0.25, 4, 3),
        (0.25, 8, 4),  # more slots batch more work per weight read
        (2, 4, 4),  # 3B Q4_K_M
        (4.4, 4, 7),  # 7B Q4_K_M
        (40, 4, 16),  # 70B: the cap
    ],
)
def test_cpu_thread_sizing(weights_gib: float, parallel: int, threads: int) -> None:
    assert cpu_threads(int(weights_gib * GIB), parallel, max_threads=16) == threads


def test_cpu_threads_never_exceed_three_quarters_of_the_node() -> None:
    big = {**SMALL_CPU, "model": {"source": "hf://x/Llama-3.1-70B-GGUF", "quantization": "Q4_K_M"}}
    placement = plan_placement(spec_of(big), POOL, OperatorConfig())
    cores = placement.hardware_class.cpu_millis // 1000
    assert placement.threads == min(16, cores * 3 // 4)


def test_smallest_without_prices_cheapest_with_prices() -> None:
    assert plan_placement(spec_of(AWQ), POOL, OperatorConfig()).hardware_class.id == L4
    # The A10G priced under the L4: the cheapest class that fits wins.
    cheap_a10g = OperatorConfig(gpu_prices_per_hour={"NVIDIA-L4": 0.80, "NVIDIA-A10G": 0.50})
    placement = plan_placement(spec_of(AWQ), POOL, cheap_a10g)
    assert placement.hardware_class.id == A10G
    assert placement.decision()["costPerReplicaPerHour"] == 0.5
    assert "the cheapest GPU class that holds it ($0.50/h per replica)" in placement.reason
    # An unpriced class ranks after every priced one.
    only_h100 = OperatorConfig(gpu_prices_per_hour={"NVIDIA-H100-80GB-HBM3": 4.10})
    assert plan_placement(spec_of(AWQ), POOL, only_h100).hardware_class.id == H100


def test_decision_records_cost_per_replica_and_in_total() -> None:
    decision = plan_placement(spec_of(AWQ, replicas=3), POOL, PRICES).decision()
    assert decision["hardwareClass"] == A10G  # three replicas do not fit the one L4
    assert decision["costPerReplicaPerHour"] == 1.01
    assert decision["costPerHour"] == 3.03


def test_cpu_replica_cost_counts_vcpus_and_memory() -> None:
    placement = plan_placement(spec_of(SMALL_CPU), POOL, PRICES)
    cores = int(placement.requests["cpu"])
    memory_gib = placement.memory.total_bytes / GIB
    expected = round(cores * 0.034 + memory_gib * 0.0045, 4)
    assert placement.cost_per_replica == pytest.approx(expected, abs=1e-3)


def test_price_label_splits_classes_and_scales_their_price() -> None:
    pool = copy.deepcopy(POOL)
    spot = copy.deepcopy(next(n for n in pool if n["metadata"]["name"] == "gpu-l4-a"))
    spot["metadata"]["name"] = "gpu-l4-spot"
    spot["metadata"]["labels"]["karpenter.sh/capacity-type"] = "spot"
    pool.append(spot)
    config = OperatorConfig(
        gpu_prices_per_hour={"NVIDIA-L4": 0.80},
        price_label="karpenter.sh/capacity-type",
        price_label_multipliers={"spot": 0.25},
    )
    placement = plan_placement(spec_of(AWQ), pool, config)
    assert placement.hardware_class.id == f"{L4}/spot"
    assert placement.cost_per_replica == 0.2
    assert {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]} in (
        placement.hardware_class.match_expressions()
    )


@pytest.mark.parametrize(
    ("spec", "config", "message"),
    [
        (
            spec_of(AWQ, replicas=2, budget={"maxCostPerHour": 1.5}),
            PRICES,
            "$1.50/h is less than the cheapest option that fits: $2.02/h for 2 replica(s) on "
            f"{A10G} ($1.01/h each)",
        ),
        (
            spec_of(AWQ, budget={"maxCostPerHour": 5}),
            OperatorConfig(),
            "the operator has no prices to weigh a budget against",
        ),
        (
            spec_of(
                AWQ,
                autoscaling={"enabled": True, "maxReplicas": 8},
                budget={"maxCostPerHour": 5},
            ),
            PRICES,
            "$6.40/h for 8 replica(s) on " + L4,  # a budget covers maxReplicas
        ),
    ],
    ids=["cheapest named", "no prices", "maxReplicas"],
)
def test_budget_refusals(spec: Any, config: OperatorConfig, message: str) -> None:
    with pytest.raises(PlacementRefusal) as refused:
        plan_placement(spec, POOL, config)
    assert refused.value.field_path == "spec.budget.maxCostPerHour"
    assert message in refused.value.message


def test_a_budget_that_covers_the_cheapest_plan_admits_it() -> None:
    spec = spec_of(AWQ, replicas=2, budget={"maxCostPerHour": 2.02})
    assert plan_placement(spec, POOL, PRICES).decision()["costPerHour"] == 2.02


def test_a_running_deployment_is_not_moved_when_capacity_frees_elsewhere() -> None:
    # It runs on the A10G (the L4 was full when it was planned); the L4 is free now.
    load = ClusterLoad(free=free_by_node(NODES, []), current_class=A10G)
    placement = plan_placement(spec_of(AWQ), POOL, OperatorConfig(), load=load)
    assert placement.hardware_class.id == A10G
    assert "it runs on this class and still fits there" in placement.reason


def test_the_reservation_book_keeps_a_second_plan_off_the_first_ones_gpu() -> None:
    # Two ModelDeployments planned before the scheduler binds either pod.
    book = ReservationBook()
    first = plan_placement(spec_of(AWQ), POOL, OperatorConfig(), load=_booked(book, "a"))
    with book.planning() as held:
        held.record(("ns", "a"), _reserve(first))
    second = plan_placement(spec_of(AWQ), POOL, OperatorConfig(), load=_booked(book, "b"))
    assert (first.hardware_class.id, second.hardware_class.id) == (L4, A10G)
    # Once the first one's pod is bound, the pod counts and the reservation no longer does.
    bound = [PodUsage("gpu-l4-a", ("ns", "a"), pod_requests(_pod_spec(first.requests)))]
    free = free_by_node(NODES, bound, own=("ns", "b"), reservations=book.others(("ns", "b")))
    assert free["gpu-l4-a"].gpus == 0 and free["gpu-a10g-a"].gpus == 4


def _booked(book: ReservationBook, name: str) -> ClusterLoad:
    return ClusterLoad(free=free_by_node(NODES, [], ("ns", name), book.others(("ns", name))))


def _reserve(placement: Any) -> Reservation:
    requests = pod_requests(_pod_spec(placement.requests))
    return Reservation(placement.hardware_class.nodes, requests, 1)


def _pod_spec(requests: dict[str, str]) -> dict[str, Any]:
    return {"containers": [{"name": "engine", "resources": {"requests": requests}}]}


def test_pod_requests_follow_the_scheduler() -> None:
    spec = {
        "containers": [
            {"name": "a", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
            {"name": "b", "resources": {"limits": {"cpu": "500m", "nvidia.com/gpu": "1"}}},
        ],
        # The largest plain init container counts when it is larger than the containers.
        "initContainers": [{"name": "fetch", "resources": {"requests": {"memory": "4Gi"}}}],
        "overhead": {"cpu": "250m"},
    }
    assert pod_requests(spec) == Resources(cpu_millis=1750, memory_bytes=4 * GIB, gpus=1)


def test_pod_usage_counts_bound_unfinished_pods_only() -> None:
    pod: dict[str, Any] = {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "labels": {"modeldeploy.io/model-deployment": "m"},
        },
        "spec": {
            "nodeName": "cpu-avx2-a",
            "containers": [_pod_spec({"cpu": "2"})["containers"][0]],
        },
        "status": {"phase": "Running"},
    }
    assert pod_usage(pod) == PodUsage("cpu-avx2-a", ("ns", "m"), Resources(cpu_millis=2000))
    assert pod_usage({**pod, "status": {"phase": "Succeeded"}}) is None
    assert pod_usage({**pod, "spec": {"containers": []}}) is None  # not bound yet


def test_alternatives_list_every_class_with_what_is_short() -> None:
    rows = {r["hardwareClass"]: r for r in plan_alternatives(spec_of(AWQ), POOL, PRICES)}
    assert rows[L4]["chosen"] and rows[L4]["fits"] and rows[L4]["costPerReplicaPerHour"] == 0.8
    assert rows[AVX2]["short"] == "accelerator: vllm does not run on cpu"
    arm = rows["cpu/arm64/baseline/c7g.4xlarge"]
    assert arm["short"] == "architecture arm64: the vllm image is built for amd64"
    full = {
        r["hardwareClass"]: r
        for r in plan_alternatives(spec_of(AWQ), POOL, PRICES, load=used(gpu_l4_a=GPU))
    }
    assert full[L4]["short"] == "free GPUs: room for 0 of 1 replica(s) now"
    assert full[L4]["free"]["gpus"] == 0 and full[A10G]["chosen"]


def test_money_keeps_two_to_four_decimals() -> None:
    assert [money(4.1), money(0.1117), money(2.0)] == ["$4.10/h", "$0.1117/h", "$2.00/h"]
    l4 = next(c for c in _classes() if c.id == L4)
    assert replica_cost(l4, GPU, OperatorConfig()) is None  # no prices: no cost


def _classes() -> list[Any]:
    from modeldeploy.nodes import group_classes

    return group_classes(NODES)


# -- re-plan after an unschedulable wait -------------------------------------------------

T0 = "2026-01-01T00:00:00Z"


def _stuck_pod(hardware_class: str, since: str = T0) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "annotations": {"modeldeploy.io/hardware-class": hardware_class}},
        "spec": {"nodeName": None},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/7 nodes are available: 1 Insufficient nvidia.com/gpu.",
                    "lastTransitionTime": since,
                }
            ],
        },
    }


def test_unschedulable_since_counts_pods_of_the_class_only() -> None:
    pods = [_stuck_pod(L4, "2026-01-01T00:01:00Z"), _stuck_pod(A10G, T0)]
    since = unschedulable_since(pods, L4)
    assert since is not None and since.isoformat() == "2026-01-01T00:01:00+00:00"
    assert unschedulable_since(pods, H100) is None


def _pass(md: dict[str, Any], stuck_on: str | None, now: str) -> tuple[dict[str, Any], list[Any]]:
    """One pass with a Deployment present and, if given, its pods stuck on ``stuck_on``."""
    writer = RecordingWriter()
    planned = md.get("status", {}).get("decision", {}).get("hardwareClass")
    # The live Deployment, its pod template planned for the last decision's class.
    template = {"metadata": {"annotations": {"modeldeploy.io/hardware-class": planned}}}
    deployment = {
        "kind": "Deployment",
        "metadata": {"name": md["metadata"]["name"]},
        "spec": {"template": template if planned else {}},
    }
    view = ClusterView(
        POOL,
        children=[deployment],
        pods=[_stuck_pod(stuck_on)] if stuck_on else [],
        usage=[],
    )
    config = OperatorConfig(replan_after_seconds=120)
    result = reconcile(md, view, writer, config, now=now)  # type: ignore[arg-type]
    events = [call[1] for call in writer.calls if call[0] == "event"]
    return {**md, "status": result.status}, events


def test_replan_after_the_wait_moves_once_per_class_and_never_flaps() -> None:
    # The 7B AWQ fits all three GPU classes: L4, then A10G, then H100.
    md = model_deployment(copy.deepcopy(AWQ), generation=1)
    md, _ = _pass(md, None, T0)
    assert md["status"]["decision"]["hardwareClass"] == L4
    # Stuck for 60 s: under the wait, nothing moves.
    md, events = _pass(md, L4, "2026-01-01T00:01:00Z")
    assert md["status"]["decision"]["hardwareClass"] == L4
    assert ("Warning", "Replanned") not in events
    # Stuck for 121 s: re-planned onto the next class, with an Event and the reason.
    md, events = _pass(md, L4, "2026-01-01T00:02:01Z")
    decision = md["status"]["decision"]
    assert decision["hardwareClass"] == A10G and decision["avoidedClasses"] == [L4]
    assert ("Warning", "Replanned") in events
    assert f"moved from {L4}, where its pods stayed unschedulable" in decision["reason"]
    # Unstuck: it stays on the A10G although the L4 is smaller (no flapping back).
    md, events = _pass(md, None, "2026-01-01T00:03:00Z")
    assert md["status"]["decision"]["hardwareClass"] == A10G
    assert ("Warning", "Replanned") not in events
    # Stuck on every class in turn: each is tried once, then it stays where it is.
    md, _ = _pass(md, A10G, "2026-01-01T00:06:00Z")
    assert md["status"]["decision"]["hardwareClass"] == H100
    for minute in (10, 20, 30):
        md, events = _pass(md, H100, f"2026-01-01T00:{minute}:00Z")
        assert md["status"]["decision"]["hardwareClass"] == H100
        assert ("Warning", "Replanned") not in events
    assert md["status"]["decision"]["avoidedClasses"] == [A10G, H100, L4]


def test_the_class_is_read_from_the_live_deployment_when_status_lost_it() -> None:
    # A new leader, or a status write lost in a crash: the decision is gone, the Deployment
    # (planned for the A10G) is there; it stays on the A10G although the L4 is free.
    lost = model_deployment(copy.deepcopy(AWQ), generation=1)  # no status at all
    template = {"metadata": {"annotations": {"modeldeploy.io/hardware-class": A10G}}}
    view = ClusterView(
        POOL,
        children=[
            {"kind": "Deployment", "metadata": {"name": "demo"}, "spec": {"template": template}}
        ],
        usage=[],
    )
    result = reconcile(lost, view, RecordingWriter(), OperatorConfig(), now=T0)  # type: ignore[arg-type]
    assert result.status["decision"]["hardwareClass"] == A10G


def test_a_new_generation_forgets_the_avoided_classes() -> None:
    md = model_deployment(copy.deepcopy(AWQ), generation=1)
    md, _ = _pass(md, None, T0)
    md, _ = _pass(md, L4, "2026-01-01T00:05:00Z")
    assert md["status"]["decision"]["avoidedClasses"] == [L4]
    changed = {**md, "metadata": {**md["metadata"], "generation": 2}}
    changed, _ = _pass(changed, None, "2026-01-01T00:06:00Z")
    assert "avoidedClasses" not in changed["status"]["decision"]
