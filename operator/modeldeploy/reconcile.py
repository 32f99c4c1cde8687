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

import contextlib
import copy
import datetime
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from modeldeploy.api import ModelDeployment, SpecError, parse_model_deployment
from modeldeploy.artifacts import ArtifactState, signature_condition, verified_signer
from modeldeploy.capacity import PodUsage, Reservation, ReservationBook, free_by_node, requests_of
from modeldeploy.clock import utc_now
from modeldeploy.compliance import applying_policies, evaluate
from modeldeploy.config import OperatorConfig
from modeldeploy.decision import Placement, PlacementRefusal
from modeldeploy.drift import needs_apply
from modeldeploy.enforcement import Verdict, resolved_facts, verdict
from modeldeploy.nodes import parse_node
from modeldeploy.observed import unschedulable_since
from modeldeploy.placement import ClusterLoad
from modeldeploy.plan import plan
from modeldeploy.policy_api import ModelPolicy
from modeldeploy.provenance import PolicyRef, provenance_from
from modeldeploy.provenance import as_status as provenance_status
from modeldeploy.quantity import quantity_bytes
from modeldeploy.render import ANNOTATION_HARDWARE_CLASS, LABEL_MODEL_DEPLOYMENT, spec_hash
from modeldeploy.render.bom import bom_config_map_name, bom_hash
from modeldeploy.scaling import (
    DELEGATED_KINDS,
    ScalingRecord,
    autoscaling_status,
    condition_message,
    deployment_replicas,
    initial_record,
    scale_event,
)
from modeldeploy.status import Observed, Refusal, ScalingView, compute_status, transitions

log = logging.getLogger(__name__)
# status field: the hash of the NetworkPolicy last applied (it is not watched, so it is
# applied when this changes and deleted when it is no longer rendered).
NETWORK_POLICY_HASH = "networkPolicyHash"
# What a new spec's pods need before they start (the cache claim they mount, the traffic
# they may accept), written first in a burst of creates: the pods' scheduling, volume and
# model fetch start while the operator writes the rest (``reconcile``'s ``workload_first``).
WORKLOAD_KINDS = frozenset({"PersistentVolumeClaim", "Deployment", "NetworkPolicy"})
SIZE_HINT = "spec.model.parameters"  # the field a refusal names when only the artifact can size


class KindNotServed(Exception):  # noqa: N818 - a fact about the cluster, not a bug
    """The API server does not serve a kind the pass would apply (its CRD is absent)."""

    def __init__(self, kind: str, api_version: str) -> None:
        super().__init__(f"the cluster does not serve {kind} ({api_version})")
        self.kind = kind
        self.api_version = api_version


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
    """What the operator's watches hold right now, as plain dicts (policies parsed)."""

    nodes: Sequence[Mapping[str, Any]]
    children: Sequence[Mapping[str, Any]] = ()  # Deployments, Services, PVCs of this MD
    pods: Sequence[Mapping[str, Any]] = ()
    policies: Sequence[ModelPolicy] = ()  # every ModelPolicy of the cluster
    namespace_labels: Mapping[str, str] = field(default_factory=dict)  # of this MD's namespace
    usage: Sequence[PodUsage] | None = None  # every bound pod (None: capacity not watched)


@dataclass
class PassResult:
    """What one pass did."""

    result: str  # ready | progressing | degraded | invalid | unschedulable | refused | blocked
    phase: str
    writes: int = 0
    applied: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)  # as computed (and stored)
    # Only the workload was written (``reconcile``'s ``workload_first``): the rest is the
    # caller's next pass, which should see ``written``: what was applied, as rendered
    # (smaller than the API server's answer, and all that the next pass compares).
    deferred: bool = False
    written: list[dict[str, Any]] = field(default_factory=list)


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
    scaling: ScalingRecord | None = None,
    reservations: ReservationBook | None = None,
    workload_first: bool = False,
) -> PassResult:
    """Bring one ModelDeployment's children and status in line with its spec.

    ``artifact`` is the resolution of ``spec.model`` (``resolver.ArtifactResolver``): a
    refusal of the source refuses the object; without a resolution, planning uses the
    spec's hints and the init container resolves for itself. ``scaling`` is the
    operator-native autoscaler's record (``autoscaler.Autoscaler``); before its first
    decision the count starts from status, the Deployment or the spec (``scaling``).
    ``reservations`` is the operator's book of plans (``capacity.ReservationBook``): planning
    reads and records it under its lock, so two passes never plan the same free capacity.
    ``workload_first``: when the workload (``WORKLOAD_KINDS``) needs a write, write only it
    and return ``deferred``; the Service, ML-BOM, autoscaler, pruning, status and Events
    are the next pass's (``passes.reconcile_key`` runs it after other new specs' workloads).
    """
    meta = md["metadata"]
    name, namespace, uid = meta["name"], meta["namespace"], meta.get("uid", "")
    generation = int(meta.get("generation") or 1)
    previous = md.get("status") or {}
    result = PassResult(result="progressing", phase="Deploying")

    outcome: Refusal | dict[str, Any]
    desired: list[dict[str, Any]] = []
    judged: Verdict | None = None
    parsed: ModelDeployment | None = None
    record: ScalingRecord | None = None
    replanned: tuple[str, str] | None = None  # (class left, why) when the pass re-plans
    clock = now or utc_now()
    resolution = artifact.resolution if artifact is not None else None
    if artifact is not None and artifact.refused:
        # The source serves other bytes than pinned, or none that match: refuse, and keep
        # what runs (the resolver only refuses a spec that is otherwise valid).
        outcome = Refusal(artifact.reason, artifact.message)
        result.result = "refused"
    else:
        try:
            parsed = parse_model_deployment(md)
            record = _native_record(parsed, scaling, previous, view.children, config.scale_to_zero)
            replicas = record.desired if record is not None else None
            policy = _policy_ref(view)
            with _planning(reservations) as book:
                load, replanned = _cluster_load(md, view, config, book, clock)
                planned = plan(
                    parsed,
                    view.nodes,
                    config,
                    resolution=resolution,
                    replicas=replicas,
                    policy=policy,
                    load=load,
                    adapters=artifact.adapters if artifact is not None else (),
                )
                if book is not None:
                    count = replicas if replicas is not None else parsed.spec.replicas
                    book.record((namespace, name), _reservation(planned.placement, count))
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
            judged = _judge(parsed, view, artifact, outcome)
            if judged is not None and judged.blocked:
                desired = _blocked(desired)
                result.result = "blocked"
    if reservations is not None and (isinstance(outcome, Refusal) or result.result == "blocked"):
        with reservations.planning() as book:
            book.forget((namespace, name))

    live = {_key(obj): obj for obj in view.children}
    not_served: KindNotServed | None = None
    stored: dict[tuple[str, str], Mapping[str, Any]] = dict(live)
    to_apply: list[tuple[tuple[str, str], dict[str, Any]]] = []
    for rendered in desired:
        key = _key(rendered)
        obj = rendered
        if key[0] == "PersistentVolumeClaim" and key in live:
            obj = _fit_existing_claim(rendered, live[key])
        if key[0] in DELEGATED_KINDS.values() and not _autoscaler_changed(obj, previous):
            continue  # not watched: applied when it changes (docs/autoscaling.md)
        if key[0] == "ConfigMap" and not _bom_changed(obj, previous):
            continue  # the ML-BOM: the operator does not read ConfigMaps (docs/provenance.md)
        if key[0] == "NetworkPolicy" and previous.get(NETWORK_POLICY_HASH) == spec_hash(obj):
            continue  # not watched: applied when it changes (render/network_policy.py)
        if needs_apply(obj, live.get(key)):
            to_apply.append((key, obj))
    if workload_first and any(key[0] in WORKLOAD_KINDS for key, _ in to_apply):
        to_apply = [(key, obj) for key, obj in to_apply if key[0] in WORKLOAD_KINDS]
        result.deferred = True
    for key, obj in to_apply:
        try:
            stored[key] = writer.apply(obj)
        except KindNotServed as error:
            not_served = error
            continue
        result.applied.append("/".join(key))
        if workload_first:
            result.written.append(obj)
    if result.deferred:
        result.writes = len(result.applied)
        return result
    wanted = {_key(obj) for obj in desired}
    for key, child in live.items():
        # A refusal prunes nothing: a workload that runs keeps running while the spec
        # is fixed or hardware returns; only a new plan replaces or removes children.
        if not isinstance(outcome, Refusal) and key not in wanted and _owned_by(child, uid):
            writer.delete(key[0], namespace, key[1], child["metadata"].get("uid"))
            result.pruned.append("/".join(key))
            stored.pop(key, None)

    network_policy = next((o for o in desired if o["kind"] == "NetworkPolicy"), None)
    if not isinstance(outcome, Refusal):
        result.pruned += _prune_delegated(previous, desired, writer, namespace, name)
        if network_policy is None and previous.get(NETWORK_POLICY_HASH):
            writer.delete("NetworkPolicy", namespace, name)
            result.pruned.append(f"NetworkPolicy/{name}")
    deployment = next((o for k, o in stored.items() if k[0] == "Deployment"), None)
    service = next((o for k, o in stored.items() if k[0] == "Service"), None)
    endpoint = None
    if service is not None and not isinstance(outcome, Refusal):
        port = service["spec"]["ports"][0]["port"]
        endpoint = f"http://{service['metadata']['name']}.{namespace}.svc:{port}/v1"
    scaling_view = None
    if parsed is not None and parsed.spec.autoscaling.enabled and not isinstance(outcome, Refusal):
        scaling_view = _scaling_view(
            parsed, record, deployment, desired, not_served, zero=config.scale_to_zero
        )
    status = compute_status(
        generation=generation,
        outcome=outcome,
        observed=Observed(deployment, view.pods),
        desired_replicas=0
        if judged is not None and judged.blocked
        else _desired_replicas(md, record, deployment),
        scaling=scaling_view,
        compliance=judged.condition if judged is not None else None,
        blocked=judged is not None and judged.blocked,
        signature=signature_condition(parsed.spec.model, artifact, view.pods)
        if parsed is not None
        else None,
        selector=f"{LABEL_MODEL_DEPLOYMENT}={name}",
        endpoint=endpoint,
        previous=previous,
        now=clock,
        artifact=artifact,
    )
    if parsed is not None and not isinstance(outcome, Refusal):
        signer = verified_signer(parsed.spec.model, artifact, view.pods)
        provenance = provenance_from(
            parsed, resolution, policy=_policy_ref(view), signature_identity=signer
        )
        bom = next((o for o in desired if o["kind"] == "ConfigMap"), None)
        status["provenance"] = provenance_status(
            provenance,
            bom_config_map=bom_config_map_name(name),
            bom_hash=bom_hash(bom) if bom is not None else None,
        )
    if network_policy is not None:
        status[NETWORK_POLICY_HASH] = spec_hash(dict(network_policy))
    elif isinstance(outcome, Refusal) and previous.get(NETWORK_POLICY_HASH):
        status[NETWORK_POLICY_HASH] = previous[NETWORK_POLICY_HASH]  # a refusal prunes nothing
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
    moved_to = None if isinstance(outcome, Refusal) else outcome.get("hardwareClass")
    if replanned is not None and moved_to not in (None, replanned[0]):
        message = f"{replanned[1]}; re-planned onto {moved_to}"
        writer.event(md, "Warning", "Replanned", message, "Placement")
        result.writes += 1
    moved = scale_event(previous.get("autoscaling"), record) if record is not None else None
    if moved is not None:
        writer.event(md, "Normal", moved[0], moved[1], "Scale")
        result.writes += 1
    result.writes += len(result.applied) + len(result.pruned)
    return result


@contextlib.contextmanager
def _planning(book: ReservationBook | None) -> Iterator[ReservationBook | None]:
    """Hold the reservation book (when there is one) for one plan."""
    if book is None:
        yield None
        return
    with book.planning() as held:
        yield held


def _reservation(placement: Placement, replicas: int) -> Reservation:
    """What a plan takes: its class's nodes and each replica's requests."""
    return Reservation(
        placement.hardware_class.nodes, requests_of(placement.requests), max(0, replicas)
    )


def _cluster_load(
    md: Mapping[str, Any],
    view: ClusterView,
    config: OperatorConfig,
    book: ReservationBook | None,
    now: str,
) -> tuple[ClusterLoad | None, tuple[str, str] | None]:
    """Free capacity, the class the object runs on, and the classes to avoid.

    The class the live Deployment's pods are planned for is kept (stability; read from the
    Deployment, so a new leader or a lost status write keeps it too); a class whose
    pods stayed unschedulable for ``replan_after_seconds`` is avoided for the rest of the
    generation (each class once, so the object never flaps); the avoided classes are
    carried in ``status.decision.avoidedClasses``.
    """
    if view.usage is None:
        return None, None
    meta = md["metadata"]
    key = (meta["namespace"], meta["name"])
    previous = md.get("status") or {}
    decision = previous.get("decision") or {}
    generation = int(meta.get("generation") or 1)
    avoid = set(decision.get("avoidedClasses") or [])
    if previous.get("observedGeneration") != generation:
        avoid = set()  # a new spec may fit where the old one did not
    current = _running_class(view.children) or None
    replanned: tuple[str, str] | None = None
    stuck_class: str | None = None
    if current is not None and current not in avoid:
        since = unschedulable_since(view.pods, current)
        if since is not None:
            waited = (datetime.datetime.fromisoformat(now) - since).total_seconds()
            if waited >= config.replan_after_seconds:
                replanned = (current, f"pods stayed unschedulable on {current} for {int(waited)}s")
                avoid.add(current)
                stuck_class, current = current, None
    free = free_by_node(
        [parse_node(node) for node in view.nodes],
        view.usage,
        own=key,
        reservations=book.others(key) if book is not None else None,
    )
    return ClusterLoad(free, current, frozenset(avoid), stuck_class), replanned


def _running_class(children: Sequence[Mapping[str, Any]]) -> str | None:
    """The hardware class the live Deployment's pod template was planned for, if any."""
    for child in children:
        if child.get("kind") == "Deployment":
            template = (child.get("spec") or {}).get("template") or {}
            annotations = (template.get("metadata") or {}).get("annotations") or {}
            planned = annotations.get(ANNOTATION_HARDWARE_CLASS)
            return str(planned) if planned else None
    return None


def _prune_delegated(
    previous: Mapping[str, Any],
    desired: Sequence[Mapping[str, Any]],
    writer: Writer,
    namespace: str,
    name: str,
) -> list[str]:
    """Delete the ScaledObject/HPA of a mode no longer asked for (they are not watched)."""
    kind = DELEGATED_KINDS.get(str((previous.get("autoscaling") or {}).get("mode")))
    if kind is None or any(o["kind"] == kind for o in desired):
        return []
    writer.delete(kind, namespace, name)
    return [f"{kind}/{name}"]


def _policy_ref(view: ClusterView) -> PolicyRef | None:
    """The first ModelPolicy (by name) that selects the namespace, for provenance."""
    applying = applying_policies(view.policies, view.namespace_labels)
    if not applying:
        return None
    generation = applying[0].metadata.get("generation")
    return PolicyRef(applying[0].name, int(generation) if generation is not None else None)


def _judge(
    md: ModelDeployment,
    view: ClusterView,
    artifact: ArtifactState | None,
    decision: Mapping[str, Any],
) -> Verdict | None:
    """The policies' verdict on this pass, with what resolution and planning learnt."""
    if not view.policies:
        return None
    facts = resolved_facts(
        artifact,
        decision.get("engine"),
        decision.get("accelerator"),
        verified_signer(md.spec.model, artifact, view.pods),
    )
    return verdict(evaluate(view.policies, view.namespace_labels, md, facts))


def _blocked(desired: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A blocked object's children: no serving pods (Deployment at 0, no autoscaler)."""
    return [
        {**obj, "spec": {**obj["spec"], "replicas": 0}} if obj["kind"] == "Deployment" else obj
        for obj in desired
        if obj["kind"] not in DELEGATED_KINDS.values()
    ]


def _native_record(
    md: ModelDeployment,
    scaling: ScalingRecord | None,
    previous: Mapping[str, Any],
    children: Sequence[Mapping[str, Any]],
    zero: bool = False,
) -> ScalingRecord | None:
    """The native autoscaler's record for this pass, or None (autoscaling off, or not native);
    ``zero``: minReplicas 0 may mean zero (``OperatorConfig.scale_to_zero``)."""
    autoscaling = md.spec.autoscaling
    if not autoscaling.enabled or autoscaling.mode != "native":
        return None
    if scaling is not None:
        return scaling
    return initial_record(
        autoscaling,
        md.spec.replicas,
        previous.get("autoscaling"),
        deployment_replicas(children),
        zero,
    )


def _desired_replicas(
    md: Mapping[str, Any], record: ScalingRecord | None, deployment: Mapping[str, Any] | None
) -> int:
    """The replicas status compares the rollout with: the autoscaler's, else the spec's."""
    if record is not None:
        return record.desired
    autoscaling = (md.get("spec") or {}).get("autoscaling") or {}
    if autoscaling.get("enabled") and deployment is not None:
        return int((deployment.get("spec") or {}).get("replicas") or 1)  # KEDA's or the HPA's
    return int(md.get("spec", {}).get("replicas", 1))


def _bom_changed(obj: Mapping[str, Any], previous: Mapping[str, Any]) -> bool:
    """Whether the rendered ML-BOM ConfigMap differs from the one last applied."""
    return (previous.get("provenance") or {}).get("bomHash") != bom_hash(dict(obj))


def _autoscaler_changed(obj: Mapping[str, Any], previous: Mapping[str, Any]) -> bool:
    """Whether a rendered ScaledObject/HPA differs from the one this operator last applied."""
    return (previous.get("autoscaling") or {}).get("objectHash") != spec_hash(dict(obj))


def _scaling_view(
    md: ModelDeployment,
    record: ScalingRecord | None,
    deployment: Mapping[str, Any] | None,
    desired: Sequence[Mapping[str, Any]],
    not_served: KindNotServed | None,
    *,
    zero: bool = False,
) -> ScalingView:
    """``status.autoscaling`` and the ``Autoscaling`` condition of this pass."""
    autoscaling = md.spec.autoscaling
    current = int(((deployment or {}).get("spec") or {}).get("replicas") or 0)
    status = autoscaling_status(autoscaling, record, current)
    message = condition_message(autoscaling, md.spec.replicas, record, zero)
    if record is not None:
        return ScalingView(status, (True, "Native", message))
    kind = DELEGATED_KINDS[autoscaling.mode]
    if not_served is not None:
        status["reason"] = str(not_served)
        what = "KEDA" if autoscaling.mode == "keda" else "the autoscaling/v2 API"
        return ScalingView(
            status,
            (False, f"{kind}NotServed", f"{not_served}: install {what}, or use mode native"),
        )
    rendered = next((o for o in desired if o["kind"] == kind), None)
    if rendered is not None:
        status["objectHash"] = spec_hash(dict(rendered))
    return ScalingView(status, (True, "Delegated", message))


# Which condition transitions deserve an Event, and of which type.
_EVENTS = {
    ("Scheduled", "True"): ("Normal", "Planned"),
    ("Scheduled", "False"): ("Warning", None),
    ("Ready", "True"): ("Normal", None),
    ("Degraded", "True"): ("Warning", None),
    ("ArtifactVerified", "True"): ("Normal", None),
    ("ArtifactVerified", "False"): ("Warning", None),
    ("SignatureVerified", "True"): ("Normal", None),
    ("SignatureVerified", "False"): ("Warning", None),
    ("Compliant", "False"): ("Warning", "PolicyViolation"),
    ("Compliant", "True"): ("Normal", "Compliant"),
}


def _event_for(changed: Mapping[str, Any]) -> tuple[str, str] | None:
    """(type, reason) of the Event a condition transition deserves, if any."""
    kind = _EVENTS.get((changed["type"], changed["status"]))
    if kind is None:
        return None
    return kind[0], kind[1] or changed["reason"]
