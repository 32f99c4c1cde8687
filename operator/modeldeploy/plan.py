"""Planning end to end: a ModelDeployment and the cluster's nodes -> decision and objects.

This module owns the glue the operator's reconcile and ``modeldeploy plan`` share: validate
the object (``api``), place it (``placement``), render its children (``render``). Pure. A
spec that cannot be accepted raises ``api.SpecError``; one that no node can serve raises
``decision.PlacementRefusal``; both name the field and say what is allowed or needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modeldeploy.adapters import ResolvedAdapter, adapter_bytes
from modeldeploy.api import ModelDeployment, SpecError, parse_model_deployment
from modeldeploy.config import OperatorConfig
from modeldeploy.decision import Placement, PlacementRefusal
from modeldeploy.placement import ClusterLoad, plan_placement
from modeldeploy.provenance import PolicyRef, provenance_from
from modeldeploy.render import RenderInputs, render_objects
from modeldeploy.resolution import Resolution
from modeldeploy.sizing import ModelArchitecture

PlanError = (SpecError, PlacementRefusal)


@dataclass(frozen=True)
class Plan:
    """A placement and the objects rendered from it."""

    model_deployment: ModelDeployment
    placement: Placement
    objects: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        """``{"decision": ..., "objects": [...]}``, the shape ``modeldeploy plan`` prints."""
        return {"decision": self.placement.decision(), "objects": self.objects}


def plan(
    md: ModelDeployment,
    nodes: Sequence[Mapping[str, Any]],
    config: OperatorConfig | None = None,
    artifact: ModelArchitecture | None = None,
    resolution: Resolution | None = None,
    *,
    replicas: int | None = None,
    policy: PolicyRef | None = None,
    load: ClusterLoad | None = None,
    adapters: Sequence[ResolvedAdapter] = (),
) -> Plan:
    """Place a validated ModelDeployment on the nodes and render its children.

    ``resolution`` is the operator's resolution of ``spec.model``: sizing reads its
    architecture (unless ``artifact`` is given), the init container fetches its revision.
    ``replicas`` is the operator-native autoscaler's count (``render.RenderInputs``);
    ``policy`` the ModelPolicy that admitted it, for the provenance annotations; ``load``
    what the cluster has free and where the object runs (``placement.ClusterLoad``; None:
    every node idle); ``adapters`` the resolved ``spec.adapters`` (their bytes size each
    replica; the init container fetches their revisions).
    """
    config = config or OperatorConfig()
    if not md.name:
        raise SpecError("metadata.name", "required field is missing")
    if artifact is None and resolution is not None:
        artifact = resolution.architecture
    extra = adapter_bytes(adapters)
    placement = plan_placement(md.spec, nodes, config, artifact, load, adapter_bytes=extra)
    provenance = provenance_from(md, resolution, policy=policy)
    inputs = RenderInputs(md, placement, config, resolution, replicas, provenance, tuple(adapters))
    return Plan(md, placement, render_objects(inputs))


def plan_object(
    obj: object,
    nodes: Sequence[Mapping[str, Any]],
    config: OperatorConfig | None = None,
    artifact: ModelArchitecture | None = None,
    resolution: Resolution | None = None,
) -> Plan:
    """Validate a raw ModelDeployment object, then ``plan`` it."""
    return plan(parse_model_deployment(obj), nodes, config, artifact, resolution)
