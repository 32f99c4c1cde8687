"""What the operator keeps of the objects it watches, and what it reads from them. Pure.

Kopf's watches deliver whole objects; the operator's indexes keep projections of them:
a ModelDeployment as delivered (a deep copy), a Node's planning facts (the readiness rule:
readiness and the node lifecycle's condition taints are left out, so a missed heartbeat
never re-plans), a pod's status facts, and children keyed by the ModelDeployment that
owns them. This module owns those projections and the other decisions made from watched
objects alone: which finalizers an earlier operator left on a ModelDeployment that this
one releases, and whether Kopf peering pauses this operator (its operator-wide resync
then stays idle, as Kopf's watches do). No Kopf, no API client: plain dicts in and out.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from modeldeploy.api import SpecError
from modeldeploy.capacity import TERMINAL_PHASES, PodUsage, pod_requests
from modeldeploy.policy_api import ModelPolicy, parse_model_policy
from modeldeploy.render import ANNOTATION_HARDWARE_CLASS, LABEL_MODEL_DEPLOYMENT

Key = tuple[str, str]  # (namespace, name) of a ModelDeployment

# Taints the node lifecycle controller and kubelet set for passing conditions (NotReady,
# unreachable, pressure): scheduling and eviction deal with those; placement must not
# move a workload to another hardware class because a node missed a heartbeat.
TRANSIENT_TAINT_PREFIX = "node.kubernetes.io/"

# Finalizers earlier operators had Kopf put on every ModelDeployment for the resync timer
# (the name this operator configured, and Kopf's default). Nothing needs them any more:
# children are owned and garbage-collected, so deletion needs no operator.
LEGACY_FINALIZERS = ("modeldeploy.io/finalizer", "kopf.zalando.org/KopfFinalizerMarker")

# Kopf's defaults for a peer entry without these fields (kopf._core.engines.peering.Peer).
PEER_LIFETIME_S = 60
PEER_PRIORITY = 0


# Metadata no decision reads, left out of what the indexes keep: ``managedFields`` (server-
# side apply's field owners) is about 60% of a child's or a ModelDeployment's size in memory,
# and kubectl's last-applied annotation repeats the whole object once more.
UNREAD_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def snapshot(body: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of a watched object, safe to keep after Kopf reuses the body, without the
    metadata no decision reads (``managedFields``, kubectl's last-applied annotation)."""
    kept = {key: value for key, value in body.items() if key != "metadata"}
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    annotations = meta.get("annotations")
    if annotations and any(name in annotations for name in UNREAD_ANNOTATIONS):
        meta["annotations"] = {k: v for k, v in annotations.items() if k not in UNREAD_ANNOTATIONS}
    if "metadata" in body:
        kept["metadata"] = meta
    copied: dict[str, Any] = json_copy(kept)
    return copied


def json_copy(value: Any) -> Any:
    """A deep copy of a JSON value, as the watches deliver: its dicts and lists copied, the
    rest (strings, numbers, booleans, null) immutable and shared. A third of the time of
    ``copy.deepcopy``, which looks up every value in a memo for cycles JSON cannot have."""
    if isinstance(value, dict):
        return {key: json_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_copy(item) for item in value]
    return value


def node_facts(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a Node that planning reads: hardware, deliberate taints, cordon.

    Readiness is left out on purpose (a node that stops reporting keeps its class until it
    is deleted or relabelled), and so are heartbeats, so they trigger no re-plan.
    """
    status = body.get("status") or {}
    spec = body.get("spec") or {}
    taints = [
        json_copy(t)
        for t in spec.get("taints") or []
        if not str(t.get("key", "")).startswith(TRANSIENT_TAINT_PREFIX)
    ]
    return {
        "metadata": {
            "name": body["metadata"]["name"],
            "labels": dict(body["metadata"].get("labels") or {}),
        },
        "spec": {"taints": taints, "unschedulable": bool(spec.get("unschedulable"))},
        "status": {
            "allocatable": dict(status.get("allocatable") or {}),
            "capacity": dict(status.get("capacity") or {}),
        },
    }


def pod_facts(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a pod that status reads: node, phase, IP, conditions, container states,
    and the hardware class it was planned for."""
    status = body.get("status") or {}
    annotations = body["metadata"].get("annotations") or {}
    planned = annotations.get(ANNOTATION_HARDWARE_CLASS)
    return {
        "metadata": {
            "name": body["metadata"]["name"],
            "annotations": {ANNOTATION_HARDWARE_CLASS: planned} if planned else {},
        },
        "spec": {"nodeName": (body.get("spec") or {}).get("nodeName")},
        "status": {
            "phase": status.get("phase"),
            "podIP": status.get("podIP"),
            "conditions": json_copy(status.get("conditions") or []),
            "containerStatuses": json_copy(status.get("containerStatuses") or []),
            "initContainerStatuses": json_copy(status.get("initContainerStatuses") or []),
        },
    }


def pod_usage(body: Mapping[str, Any]) -> PodUsage | None:
    """What a bound pod takes from its node (free capacity); None: unbound or finished."""
    spec = body.get("spec") or {}
    node = spec.get("nodeName")
    if not node or (body.get("status") or {}).get("phase") in TERMINAL_PHASES:
        return None
    meta = body.get("metadata") or {}
    owner = owner_key(meta.get("namespace"), meta.get("labels") or {})
    return PodUsage(str(node), owner, pod_requests(spec))


def unschedulable_since(
    pods: Iterable[Mapping[str, Any]], hardware_class: str
) -> datetime.datetime | None:
    """Since when the longest-waiting pod planned for ``hardware_class`` is unschedulable.

    The scheduler sets ``PodScheduled=False`` with reason ``Unschedulable`` on a pod no node
    admits; its ``lastTransitionTime`` is when that began. None: no such pod.
    """
    since: list[datetime.datetime] = []
    for pod in pods:
        annotations = pod.get("metadata", {}).get("annotations") or {}
        if annotations.get(ANNOTATION_HARDWARE_CLASS) != hardware_class:
            continue
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if (
                cond.get("type") == "PodScheduled"
                and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable"
                and cond.get("lastTransitionTime")
            ):
                try:
                    at = datetime.datetime.fromisoformat(str(cond["lastTransitionTime"]))
                except ValueError:
                    continue
                since.append(at if at.tzinfo else at.replace(tzinfo=datetime.UTC))
    return min(since) if since else None


def owner_key(namespace: str | None, labels: Mapping[str, str]) -> Key | None:
    """The ModelDeployment a child belongs to, by its label; None when it names none."""
    owner = labels.get(LABEL_MODEL_DEPLOYMENT)
    return (namespace, owner) if namespace and owner else None


def finalizers_to_keep(md: Mapping[str, Any]) -> list[str] | None:
    """The finalizers to leave on ``md`` once the legacy ones are released; None: none held."""
    finalizers = list(md.get("metadata", {}).get("finalizers") or [])
    keep = [f for f in finalizers if f not in LEGACY_FINALIZERS]
    return keep if len(keep) < len(finalizers) else None


def _timestamp(value: Any, now: datetime.datetime) -> datetime.datetime:
    """A peer's ``lastseen`` (ISO 8601, naive means UTC); a missing one is now, as for Kopf."""
    if not value:
        return now
    try:
        parsed = datetime.datetime.fromisoformat(str(value))
    except ValueError:
        return now  # unreadable: taken as alive, the safe side
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def peering_paused(
    peerings: Iterable[Mapping[str, Any] | None],
    identity: str,
    now: datetime.datetime,
    priority: int = PEER_PRIORITY,
) -> bool:
    """Whether Kopf pauses this operator, by Kopf's rule, from its peering objects.

    Paused when a peering object is missing (``None``: Kopf waits until it exists), or one
    lists a live peer other than ``identity`` of higher or the same priority (Kopf pauses
    for a higher one, and pauses everyone when two have the same). A peer is live until
    ``lastseen + lifetime``.
    """
    for peering in peerings:
        if peering is None:
            return True
        for peer, info in (peering.get("status") or {}).items():
            if peer == identity or not isinstance(info, Mapping):
                continue
            lifetime = datetime.timedelta(seconds=int(info.get("lifetime", PEER_LIFETIME_S)))
            if _timestamp(info.get("lastseen"), now) + lifetime <= now:
                continue  # dead: Kopf ignores it (and cleans it up)
            if int(info.get("priority", PEER_PRIORITY)) >= priority:
                return True
    return False


def policy_facts(body: Mapping[str, Any]) -> ModelPolicy | None:
    """A ModelPolicy as the operator keeps it: parsed, or None when it is invalid."""
    try:
        return parse_model_policy(dict(body))
    except SpecError:
        return None


def policies_of(index: Mapping[str, Iterable[ModelPolicy]]) -> list[ModelPolicy]:
    """The policies an index of them holds, by name order."""
    return [policy for name in sorted(index) for policy in index[name]]


def labels_of(index: Mapping[str, Iterable[Mapping[str, str]]], namespace: str) -> dict[str, str]:
    """A namespace's labels from an index of them, with the name label Kubernetes sets."""
    labels = next(iter(index.get(namespace, [])), {})
    return {**labels, "kubernetes.io/metadata.name": namespace}
