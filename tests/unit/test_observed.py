"""What the operator keeps of watched objects (``observed``): node and pod facts, owners,
legacy finalizers and the peering verdict, as table tests."""

from __future__ import annotations

import copy
import datetime
from typing import Any

import pytest

from modeldeploy.observed import (
    LEGACY_FINALIZERS,
    finalizers_to_keep,
    node_facts,
    owner_key,
    peering_paused,
    pod_facts,
    snapshot,
)

NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def node(**changes: Any) -> dict[str, Any]:
    """A ready GPU node as the API server reports it, with top-level parts replaced."""
    body: dict[str, Any] = {
        "metadata": {
            "name": "gpu-1",
            "labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "resourceVersion": "100",
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": [GPU_TAINT]},
        "status": {
            "allocatable": {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "8"},
            "capacity": {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "8"},
            "conditions": [
                {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-01T00:00:00Z"}
            ],
        },
    }
    body.update(copy.deepcopy(changes))
    return copy.deepcopy(body)


def with_status(**status: Any) -> dict[str, Any]:
    """The node with parts of its status replaced."""
    base = node()
    base["status"].update(status)
    return base


NOT_READY_TAINTS = [
    GPU_TAINT,
    {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/memory-pressure", "effect": "NoSchedule"},
]


@pytest.mark.parametrize(
    ("changed", "replans"),
    [
        # The readiness rule: readiness and heartbeats are not planning facts.
        (with_status(conditions=[{"type": "Ready", "status": "False"}]), False),
        (with_status(conditions=[{"type": "Ready", "status": "Unknown"}]), False),
        (with_status(conditions=[]), False),
        (node(spec={"taints": NOT_READY_TAINTS}), False),
        (node(metadata={**node()["metadata"], "resourceVersion": "101"}), False),
        # Hardware, deliberate taints and cordon are.
        (node(spec={"taints": [GPU_TAINT], "unschedulable": True}), True),
        (node(spec={"taints": []}), True),
        (node(spec={"taints": [GPU_TAINT, {"key": "team", "effect": "NoSchedule"}]}), True),
        (node(metadata={"name": "gpu-1", "labels": {}}), True),
        (with_status(allocatable={"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "7"}), True),
        (with_status(capacity={"cpu": "32", "memory": "128Gi"}), True),
    ],
)
def test_node_facts_keep_what_planning_reads_and_not_readiness(
    changed: dict[str, Any], replans: bool
) -> None:
    assert (node_facts(changed) != node_facts(node())) is replans


def test_node_facts_shape_and_independence_from_the_body() -> None:
    body = node(spec={"taints": NOT_READY_TAINTS, "unschedulable": True})
    facts = node_facts(body)
    assert facts == {
        "metadata": {
            "name": "gpu-1",
            "labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        },
        "spec": {"taints": [GPU_TAINT], "unschedulable": True},
        "status": {
            "allocatable": {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "8"},
            "capacity": {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "8"},
        },
    }
    body["spec"]["taints"][0]["value"] = "changed"
    body["metadata"]["labels"]["x"] = "y"
    assert facts["spec"]["taints"] == [GPU_TAINT] and "x" not in facts["metadata"]["labels"]


def test_node_facts_of_a_bare_node() -> None:
    assert node_facts({"metadata": {"name": "n"}}) == {
        "metadata": {"name": "n", "labels": {}},
        "spec": {"taints": [], "unschedulable": False},
        "status": {"allocatable": {}, "capacity": {}},
    }


def test_pod_facts_keep_status_facts_only() -> None:
    waiting = {"name": "engine", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
    body: dict[str, Any] = {
        "metadata": {
            "name": "chat-1",
            "labels": {"a": "b"},
            "resourceVersion": "7",
            "annotations": {"modeldeploy.io/hardware-class": "cpu/amd64/avx2", "other": "x"},
        },
        "spec": {"nodeName": "cpu-1", "containers": [{"name": "engine", "image": "x"}]},
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.5",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [copy.deepcopy(waiting)],
            "initContainerStatuses": [],
            "startTime": "2026-01-01T00:00:00Z",
        },
    }
    facts = pod_facts(body)
    assert facts == {
        "metadata": {
            "name": "chat-1",
            "annotations": {"modeldeploy.io/hardware-class": "cpu/amd64/avx2"},
        },
        "spec": {"nodeName": "cpu-1"},
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.5",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [waiting],
            "initContainerStatuses": [],
        },
    }
    body["status"]["containerStatuses"][0]["state"] = {}
    assert facts["status"]["containerStatuses"][0]["state"] == {
        "waiting": {"reason": "CrashLoopBackOff"}
    }
    assert pod_facts({"metadata": {"name": "p"}})["status"]["conditions"] == []


@pytest.mark.parametrize(
    ("namespace", "labels", "expected"),
    [
        ("ns", {"modeldeploy.io/model-deployment": "chat"}, ("ns", "chat")),
        ("ns", {"app.kubernetes.io/managed-by": "modeldeploy"}, None),
        (None, {"modeldeploy.io/model-deployment": "chat"}, None),
        ("ns", {"modeldeploy.io/model-deployment": ""}, None),
    ],
)
def test_owner_key(namespace: str | None, labels: dict[str, str], expected: Any) -> None:
    assert owner_key(namespace, labels) == expected


def test_snapshot_is_a_deep_copy() -> None:
    body = {
        "metadata": {"name": "a", "labels": {"x": "1"}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}], "replicas": 1},
    }
    kept = snapshot(body)
    body["metadata"]["labels"]["x"] = "2"
    body["status"]["conditions"][0]["status"] = "False"
    body["status"]["conditions"].append({"type": "Progressing"})
    assert kept == {
        "metadata": {"name": "a", "labels": {"x": "1"}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}], "replicas": 1},
    }


def test_snapshot_leaves_out_metadata_no_decision_reads() -> None:
    last_applied = "kubectl.kubernetes.io/last-applied-configuration"
    body = {
        "metadata": {
            "name": "a",
            "managedFields": [{"manager": "modeldeploy", "fieldsV1": {"f:spec": {}}}],
            "annotations": {last_applied: "{...}", "modeldeploy.io/x": "1"},
        },
        "spec": {"replicas": 1},
    }
    assert snapshot(body) == {
        "metadata": {"name": "a", "annotations": {"modeldeploy.io/x": "1"}},
        "spec": {"replicas": 1},
    }
    assert "managedFields" in body["metadata"]  # the body itself is left alone


@pytest.mark.parametrize(
    ("finalizers", "keep"),
    [
        (None, None),
        ([], None),
        (["example.com/backup"], None),
        (["modeldeploy.io/finalizer"], []),
        (["kopf.zalando.org/KopfFinalizerMarker"], []),
        (["example.com/backup", "modeldeploy.io/finalizer"], ["example.com/backup"]),
        (
            ["modeldeploy.io/finalizer", "example.com/b", "kopf.zalando.org/KopfFinalizerMarker"],
            ["example.com/b"],
        ),
    ],
)
def test_finalizers_to_keep_releases_only_the_legacy_ones(
    finalizers: list[str] | None, keep: list[str] | None
) -> None:
    md = {"metadata": {"name": "chat"} | ({"finalizers": finalizers} if finalizers else {})}
    assert finalizers_to_keep(md) == keep


def test_the_legacy_finalizers_are_what_earlier_operators_and_kopf_wrote() -> None:
    # modeldeploy.io/finalizer: what the operator configured for Kopf; the other: Kopf's default.
    assert set(LEGACY_FINALIZERS) == {
        "modeldeploy.io/finalizer",
        "kopf.zalando.org/KopfFinalizerMarker",
    }


def peer(priority: int = 0, seconds_ago: float = 1, lifetime: int = 60) -> dict[str, Any]:
    """A peer entry as Kopf writes it into a peering object's status."""
    seen = NOW - datetime.timedelta(seconds=seconds_ago)
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


def peering(**peers: dict[str, Any]) -> dict[str, Any]:
    """A KopfPeering object holding ``peers``."""
    return {"metadata": {"name": "modeldeploy"}, "status": peers}


@pytest.mark.parametrize(
    ("peerings", "paused"),
    [
        ([peering(me=peer())], False),
        ([peering()], False),
        ([{"metadata": {"name": "modeldeploy"}}], False),
        ([None], True),  # the peering object is missing: Kopf waits
        ([peering(me=peer(), other=peer(priority=100))], True),
        ([peering(me=peer(), other=peer(priority=0))], True),  # same priority: all pause
        ([peering(me=peer(), other=peer(priority=-1))], False),
        ([peering(me=peer(), other=peer(priority=100, seconds_ago=120))], False),  # dead
        ([peering(other=peer(priority=100, seconds_ago=30, lifetime=60))], True),
        ([peering(other=peer(priority=100, seconds_ago=60, lifetime=60))], False),
        ([peering(other={"priority": 100})], True),  # no lastseen: alive, as for Kopf
        ([peering(other={"lastseen": "2026-01-01T11:59:30"})], True),  # naive: UTC
        ([peering(other={"lastseen": "not a time"})], True),
        ([peering(me=peer(priority=100))], False),  # ourselves, whatever we say
        ([peering(me=peer()), peering(other=peer(priority=5))], True),  # any namespace
        ([peering(me=peer()), None], True),
    ],
)
def test_peering_paused_follows_kopf(peerings: list[dict[str, Any] | None], paused: bool) -> None:
    assert peering_paused(copy.deepcopy(peerings), "me", NOW) is paused


def test_peering_paused_with_a_priority_of_our_own() -> None:
    assert not peering_paused([peering(other=peer(priority=5))], "me", NOW, priority=10)
    assert peering_paused([peering(other=peer(priority=10))], "me", NOW, priority=10)
