"""One level-triggered reconcile pass for one ModelDeployment.

``reconcile`` serves every trigger (create, update, resume, the periodic drift check,
Node changes, changes of the children): it plans from the object and the node pool,
applies the children whose live copy differs from what it renders, prunes children it no
longer renders, computes the status, and writes status and Events only where something
changed. It reads nothing from the API server itself: the caller hands it a snapshot of
the cluster (``ClusterView``) and a ``Writer``; so an idle pass makes no call at all
(``drift.needs_apply`` decides which children need a write).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from modeldeploy.api import SpecError
from modeldeploy.artifacts import ArtifactState
from modeldeploy.clock import utc_now
from modeldeploy.config import OperatorConfig
from modeldeploy.decision import PlacementRefusal
from modeldeploy.drift import needs_apply
from modeldeploy.plan import plan_object
from modeldeploy.quantity import quantity_bytes
from modeldeploy.render import LABEL_MODEL_DEPLOYMENT
from modeldeploy.status import Observed, Refusal, compute_status, transitions

log = logging.getLogger(__name__)
SIZE_HINT = "spec.model.parameters"  # the field a refusal names when only the artifact can size


class Writer(Protocol):
    """The writes a pass makes: ``apply.Writer`` in the operator (the only writer), a
    recording stand-in in tests. A pass never reads through it."""

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]: ...

    def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> None: ...

    def apply_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...

    def event(
        self, md: Mapping[str, Any], event_type: str, reason: str, message: str, action: str
    ) -> None: ...


@dataclass(frozen=True)
class ClusterView:
    """What the operator's watches hold right now, as plain dicts."""

    nodes: Sequence[Mapping[str, Any]]
    children: Sequence[Mapping[str, Any]] = ()  # Deployments, Services, PVCs of this MD
    pods: Sequence[Mapping[str, Any]] = ()


@dataclass
class PassResult:
    """What one pass did."""

    result: str  # ready | progressing | degraded | invalid | unschedulable | refused
    phase: str
    writes: int = 0
    applied: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)  # as computed (and stored)


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def _fit_existing_claim(desired: dict[str, Any], live: Mapping[str, Any]) -> dict[str, Any]:
    """A claim's spec is immutable but for growing its storage request: keep the live
    access modes and class, and never ask for less than the claim already has."""
    spec = copy.deepcopy(desired["spec"])
    live_spec = live.get("spec", {})
    for immutable in ("accessModes", "storageClassName", "volumeMode"):
        if immutable in live_spec:
            spec[immutable] = live_spec[immutable]
    want = spec["resources"]["requests"]["storage"]
    have = live_spec.get("resources", {}).get("requests", {}).get("storage", want)
    if quantity_bytes(have) > quantity_bytes(want):
        spec["resources"]["requests"]["storage"] = have
    return {**desired, "spec": spec}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def reconcile(
    md: Mapping[str, Any],
    view: ClusterView,
    writer: Writer,
    config: OperatorConfig,
    *,
    now: str | None = None,
    artifact: ArtifactState | None = None,
) -> PassResult:
    """Bring one ModelDeployment's children and status in line with its spec.

    ``artifact`` is the resolution of ``spec.model`` (``resolver.ArtifactResolver``): a
    refusal of the source refuses the object; without a resolution, planning uses the
    spec's hints and the init container resolves for itself.
    """
    meta = md["metadata"]
    name, namespace, uid = meta["name"], meta["namespace"], meta.get("uid", "")
    generation = int(meta.get("generation") or 1)
    previous = md.get("status") or {}
    result = PassResult(result="progressing", phase="Deploying")

    outcome: Refusal | dict[str, Any]
    desired: list[dict[str, Any]] = []
    resolution = artifact.resolution if artifact is not None else None
    if artifact is not None and artifact.refused:
        # The source serves other bytes than pinned, or none that match: refuse, and keep
        # what runs (the resolver only refuses a spec that is otherwise valid).
        outcome = Refusal(artifact.reason, artifact.message)
        result.result = "refused"
    else:
        try:
            planned = plan_object(md, view.nodes, config, resolution=resolution)
        except SpecError as error:
            outcome = Refusal("InvalidSpec", str(error))
            result.result = "invalid"
        except PlacementRefusal as error:
            outcome = Refusal("NoFittingHardware", str(error))
            if artifact is not None and resolution is None and error.field_path == SIZE_HINT:
                outcome = Refusal(
                    artifact.reason,
                    f"{error}; the artifact could not be read to size the model: "
                    f"{artifact.message}",
                )
            result.result = "unschedulable"
        else:
            outcome = planned.placement.decision()
            desired = planned.objects

    live = {_key(obj): obj for obj in view.children}
    stored: dict[tuple[str, str], Mapping[str, Any]] = dict(live)
    for rendered in desired:
        key = _key(rendered)
        obj = rendered
        if key[0] == "PersistentVolumeClaim" and key in live:
            obj = _fit_existing_claim(rendered, live[key])
        if needs_apply(obj, live.get(key)):
            stored[key] = writer.apply(obj)
            result.applied.append("/".join(key))
    wanted = {_key(obj) for obj in desired}
    for key, child in live.items():
        # A refusal prunes nothing: a workload that runs keeps running while the spec
        # is fixed or hardware returns; only a new plan replaces or removes children.
        if not isinstance(outcome, Refusal) and key not in wanted and _owned_by(child, uid):
            writer.delete(key[0], namespace, key[1], child["metadata"].get("uid"))
            result.pruned.append("/".join(key))
            stored.pop(key, None)

    deployment = next((o for k, o in stored.items() if k[0] == "Deployment"), None)
    service = next((o for k, o in stored.items() if k[0] == "Service"), None)
    endpoint = None
    if service is not None and not isinstance(outcome, Refusal):
        port = service["spec"]["ports"][0]["port"]
        endpoint = f"http://{service['metadata']['name']}.{namespace}.svc:{port}/v1"
    status = compute_status(
        generation=generation,
        outcome=outcome,
        observed=Observed(deployment, view.pods),
        desired_replicas=int(md.get("spec", {}).get("replicas", 1)),
        selector=f"{LABEL_MODEL_DEPLOYMENT}={name}",
        endpoint=endpoint,
        previous=previous,
        now=now or utc_now(),
        artifact=artifact,
    )
    result.phase = status["phase"]
    result.status = status
    if result.result == "progressing":
        degraded = any(
            c["type"] == "Degraded" and c["status"] == "True" for c in status["conditions"]
        )
        result.result = {"Ready": "ready"}.get(
            status["phase"], "degraded" if degraded else "progressing"
        )

    if _canonical(status) != _canonical(dict(previous)):
        writer.apply_status(namespace, name, status)
        result.writes += 1
    posted: set[tuple[str, str]] = set()
    for changed in transitions(previous.get("conditions") or [], status["conditions"]):
        event = _event_for(changed)
        if event is not None and (event[1], changed["message"]) not in posted:
            posted.add((event[1], changed["message"]))
            writer.event(md, event[0], event[1], changed["message"], changed["type"])
            result.writes += 1
    result.writes += len(result.applied) + len(result.pruned)
    return result


# Which condition transitions deserve an Event, and of which type.
_EVENTS = {
    ("Scheduled", "True"): ("Normal", "Planned"),
    ("Scheduled", "False"): ("Warning", None),
    ("Ready", "True"): ("Normal", None),
    ("Degraded", "True"): ("Warning", None),
    ("ArtifactVerified", "True"): ("Normal", None),
    ("ArtifactVerified", "False"): ("Warning", None),
}


def _event_for(changed: Mapping[str, Any]) -> tuple[str, str] | None:
    """(type, reason) of the Event a condition transition deserves, if any."""
    kind = _EVENTS.get((changed["type"], changed["status"]))
    if kind is None:
        return None
    return kind[0], kind[1] or changed["reason"]
