"""``modeldeploy plan --alternatives``: every hardware class, whether it fits and why not.

Each function reads the ``placement.Planner`` of one run: for every class of the cluster,
what rules it out before sizing (no schedulable node, architecture, accelerator, a
``hardware.gpu`` filter) or after (memory, room for the replicas, budget, a past re-plan),
its free capacity and cost, and which class the planner chose. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modeldeploy import refusals
from modeldeploy.api import ModelDeploymentSpec
from modeldeploy.capacity import total_free
from modeldeploy.catalog import ACCELERATORS_FOR_ENGINE, Accelerator
from modeldeploy.config import OperatorConfig
from modeldeploy.decision import PlacementRefusal
from modeldeploy.nodes import HardwareClass, group_classes, parse_node
from modeldeploy.placement import Candidate, ClusterLoad, Planner
from modeldeploy.pricing import money
from modeldeploy.sizing import ModelArchitecture


def plan_alternatives(
    spec: ModelDeploymentSpec,
    nodes: Sequence[Mapping[str, Any]],
    config: OperatorConfig,
    artifact: ModelArchitecture | None = None,
    load: ClusterLoad | None = None,
) -> list[dict[str, Any]]:
    """Every hardware class of the nodes: whether it fits, what is short, room, cost, and
    which one the planner chooses."""
    planner = Planner(spec, [parse_node(n) for n in nodes], config, artifact, load)
    try:
        chosen: str | None = planner.plan().hardware_class.id
    except PlacementRefusal:
        chosen = None
    return alternatives(planner, chosen)


def alternatives(planner: Planner, chosen: str | None) -> list[dict[str, Any]]:
    """One row per class of the planner's nodes (sorted by class id)."""
    price_label = planner.config.price_label
    live = {c.id: c for c in group_classes(planner.schedulable(), price_label)}
    rows = []
    for cls in group_classes(planner.nodes, price_label):
        candidate = None
        short = class_short(planner, live.get(cls.id))
        if short is None:
            candidate = planner.fit(live[cls.id])
            short = candidate_short(planner, live[cls.id], candidate)
        rows.append(
            {
                "hardwareClass": cls.id,
                "accelerator": str(cls.accelerator),
                "nodes": len(cls.nodes),
                "free": total_free(planner.free, cls.nodes).as_dict(),
                "fits": short is None,
                "short": short,
                "costPerReplicaPerHour": candidate.cost if candidate else None,
                "chosen": cls.id == chosen,
            }
        )
    return rows


def class_short(planner: Planner, cls: HardwareClass | None) -> str | None:
    """What rules a class out before sizing: nodes, architecture, accelerator, GPU."""
    if cls is None:
        return "no node can take the pods (nodeSelector, taints or cordon)"
    engine = planner.engine
    arches = planner.runtime.architectures(planner.config)
    if cls.arch not in arches:
        return f"architecture {cls.arch}: the {engine} image is built for {', '.join(arches)}"
    if cls.accelerator not in ACCELERATORS_FOR_ENGINE[engine]:
        return f"accelerator: {engine} does not run on {cls.accelerator}"
    if cls.accelerator not in planner.accelerator_options():
        asked = planner.spec.hardware.accelerator
        if asked == "auto":
            return "accelerator: GPU settings are given (spec.hardware.gpu)"
        return f"accelerator: spec.hardware.accelerator is {asked}"
    if cls.accelerator is Accelerator.GPU:
        reason = planner.gpu_filter_reason(cls)
        if reason is not None:
            return f"GPU: spec.hardware.gpu {reason} rules it out"
    return None


def candidate_short(
    planner: Planner, cls: HardwareClass, candidate: Candidate | None
) -> str | None:
    """What is short once sized: memory, room for the replicas, budget, a past re-plan."""
    if candidate is None:
        need = refusals.gib(planner.estimate(1).total_bytes)
        if cls.accelerator is Accelerator.GPU:
            return (
                f"memory: one replica needs {need} and more than {cls.gpus_per_node} x "
                f"{refusals.gib(cls.gpu_memory_bytes)} GPUs (or its host memory) hold"
            )
        return f"memory: one replica needs {need}, a node has {refusals.gib(cls.memory_bytes)}"
    if candidate.hosts < planner.needed:
        what = "free GPUs" if cls.accelerator is Accelerator.GPU else "free CPU or memory"
        return f"{what}: room for {candidate.hosts} of {planner.needed} replica(s) now"
    if not planner.affordable(candidate):
        replicas = planner.budget_replicas
        if candidate.cost is None:
            return "cost: no price for this class, so the budget cannot admit it"
        return f"cost: {money(candidate.cost * replicas)} for {replicas} replica(s) is over budget"
    if cls.id in planner.load.avoid:
        return "re-planned away from: its pods stayed unschedulable there"
    return None
