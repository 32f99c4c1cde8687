"""The status of a ModelDeployment, computed from what a reconcile pass saw. Pure.

``compute_status`` turns the plan outcome (a decision, or the refusal that stopped it)
and the observed children (the Deployment and its pods, as plain dicts) into the whole
``status`` object: ``metav1.Condition``-shaped ``Ready``, ``Progressing``, ``Degraded``
and ``Scheduled`` conditions with ``observedGeneration`` (and ``ArtifactVerified`` with
``status.artifact`` once the operator resolves artifacts), a ``phase``, the decision,
replica counts, the scale-subresource selector and the endpoint. A condition keeps its
``lastTransitionTime`` while its status is unchanged, so an unchanged world computes a
byte-identical status and the operator writes nothing. ``forbidden_status`` is the
status a pass leaves when the API server refused it a permission (``Degraded=True``,
reason ``Forbidden``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modeldeploy.artifacts import (
    CONDITION as ARTIFACT_CONDITION,
)
from modeldeploy.artifacts import (
    REFUSING_REASONS,
    SIGNATURE_CONDITION,
    ArtifactState,
    artifact_condition,
    artifact_status,
    fetching,
    reported_artifact,
)

AUTOSCALING_CONDITION = "Autoscaling"
COMPLIANT_CONDITION = "Compliant"
CONDITION_TYPES = (
    "Ready",
    "Progressing",
    "Degraded",
    "Scheduled",
    ARTIFACT_CONDITION,
    SIGNATURE_CONDITION,
    AUTOSCALING_CONDITION,
    COMPLIANT_CONDITION,
)

# Container waiting reasons that mean "this will not get better by waiting" (kubelet's
# reasons for images and crash loops, see pkg/kubelet/images and kuberuntime).
STUCK_WAITING_REASONS = frozenset(
    {
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)

# The decision fields the CRD's status schema declares (others would be pruned).
STATUS_DECISION_FIELDS = (
    "engine",
    "accelerator",
    "format",
    "quantization",
    "hardwareClass",
    "gpusPerReplica",
    "tensorParallelSize",
    "estimatedMemoryBytes",
    "nodeCount",
    "contextLength",
    "parallel",
    "threads",
    "gpuLayers",
    "costPerReplicaPerHour",
    "costPerHour",
    "avoidedClasses",
    "reason",
)


@dataclass(frozen=True)
class Refusal:
    """Why no workload was planned: an invalid spec or no hardware that fits."""

    reason: str  # CamelCase: InvalidSpec | NoFittingHardware | SourceUnreachable | a
    message: str  # refusing reason of artifacts.REFUSING_REASONS (DigestMismatch, ...)

    @property
    def failed(self) -> bool:
        """Whether the spec (or its source) must change: phase Failed rather than Pending."""
        return self.reason == "InvalidSpec" or self.reason in REFUSING_REASONS


@dataclass(frozen=True)
class ScalingView:
    """``status.autoscaling`` and the ``Autoscaling`` condition (status, reason, message)."""

    status: Mapping[str, Any]
    condition: tuple[bool | str, str, str]


@dataclass(frozen=True)
class Observed:
    """What the cluster holds for one ModelDeployment's workload."""

    deployment: Mapping[str, Any] | None
    pods: Sequence[Mapping[str, Any]] = ()


def condition(
    type_: str, status: bool | str, reason: str, message: str, *, generation: int, now: str
) -> dict[str, Any]:
    """A metav1.Condition as a plain dict (``status`` a bool, or "Unknown")."""
    if isinstance(status, bool):
        status = "True" if status else "False"
    return {
        "type": type_,
        "status": status,
        "observedGeneration": generation,
        "lastTransitionTime": now,
        "reason": reason,
        "message": message,
    }


def _keep_transition_times(
    new: list[dict[str, Any]], previous: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    before = {c.get("type"): c for c in previous}
    for cond in new:
        old = before.get(cond["type"])
        if (
            old is not None
            and old.get("status") == cond["status"]
            and old.get("lastTransitionTime")
        ):
            cond["lastTransitionTime"] = old["lastTransitionTime"]
    return new


def pod_problem(pods: Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    """The first reason a pod cannot become ready by waiting, as (reason, message)."""
    for pod in pods:
        name = pod.get("metadata", {}).get("name", "?")
        status = pod.get("status", {})
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable":
                message = str(cond.get("message", ""))
                # kube-scheduler waits for a claim that is still being provisioned: normal
                # start-up, not a fault (volumebinding plugin's "unbound immediate" reason).
                if "unbound immediate PersistentVolumeClaims" in message:
                    continue
                return "PodUnschedulable", f"pod {name}: {message}".strip()
        for key in ("initContainerStatuses", "containerStatuses"):
            for container in status.get(key) or []:
                waiting = (container.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in STUCK_WAITING_REASONS:
                    detail = waiting.get("message") or waiting["reason"]
                    # Why it keeps failing is in the last termination (exit code and the
                    # container's termination message, e.g. the fetcher's one-line error).
                    last = (container.get("lastState") or {}).get("terminated") or {}
                    if last:
                        exit_detail = f"exited {last.get('exitCode')}"
                        if last.get("message"):
                            exit_detail += f": {str(last['message']).strip()[:512]}"
                        detail = f"{detail}; last run {exit_detail}"
                    return (
                        waiting["reason"],
                        f"pod {name} container {container.get('name')}: {detail}",
                    )
    return None


def _deployment_stuck(deployment: Mapping[str, Any]) -> str | None:
    for cond in deployment.get("status", {}).get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return str(cond.get("message", "rollout exceeded its progress deadline"))
    return None


def compute_status(
    *,
    generation: int,
    outcome: Refusal | Mapping[str, Any],
    observed: Observed,
    desired_replicas: int,
    selector: str,
    endpoint: str | None,
    previous: Mapping[str, Any],
    now: str,
    artifact: ArtifactState | None = None,
    scaling: ScalingView | None = None,
    compliance: tuple[bool, str, str] | None = None,
    blocked: bool = False,
    signature: tuple[str, str, str] | None = None,
) -> dict[str, Any]:
    """The whole status object for one pass (``outcome`` is a refusal or the decision)."""

    def cond(type_: str, status: bool | str, reason: str, message: str) -> dict[str, Any]:
        return condition(type_, status, reason, message, generation=generation, now=now)

    status: dict[str, Any] = {"observedGeneration": generation}
    if isinstance(outcome, Refusal):
        failed = outcome.failed
        conditions = [
            cond("Ready", False, outcome.reason, outcome.message),
            cond("Progressing", False, outcome.reason, "no workload is rendered"),
            cond("Degraded", True, outcome.reason, outcome.message),
            cond("Scheduled", False, outcome.reason, outcome.message),
        ]
        status["phase"] = "Failed" if failed else "Pending"
        status.update(replicas=0, readyReplicas=0, selector=selector)
    else:
        status["decision"] = {k: outcome[k] for k in STATUS_DECISION_FIELDS if k in outcome}
        conditions, phase, replicas, ready = _workload_conditions(
            cond, observed, desired_replicas, str(outcome.get("reason", ""))
        )
        status.update(phase=phase, replicas=replicas, readyReplicas=ready, selector=selector)
        if endpoint:
            status["endpoint"] = endpoint
    if artifact is not None:
        recorded = _artifact_record(artifact, observed.pods, previous)
        if recorded is not None:
            status["artifact"] = recorded
        conditions.append(cond(ARTIFACT_CONDITION, *artifact_condition(artifact, observed.pods)))
    if scaling is not None:
        status["autoscaling"] = dict(scaling.status)
        conditions.append(cond(AUTOSCALING_CONDITION, *scaling.condition))
    if signature is not None:
        conditions.append(cond(SIGNATURE_CONDITION, *signature))
    if compliance is not None:
        conditions.append(cond(COMPLIANT_CONDITION, *compliance))
    if blocked and compliance is not None:
        # A violated enforce policy: no serving pods (docs/compliance.md).
        status["phase"] = "Blocked"
        conditions = [
            cond("Ready", False, "PolicyViolation", compliance[2]) if c["type"] == "Ready" else c
            for c in conditions
        ]
    previous_conditions = previous.get("conditions") or []
    status["conditions"] = _keep_transition_times(conditions, previous_conditions)
    return status


def _artifact_record(
    artifact: ArtifactState, pods: Sequence[Mapping[str, Any]], previous: Mapping[str, Any]
) -> dict[str, Any] | None:
    """``status.artifact``: the operator's resolution, else what a pod's fetcher reported
    (kept once reported, while ``spec.model`` is unchanged)."""
    recorded = artifact_status(artifact) or reported_artifact(artifact, pods)
    if recorded is None and artifact.resolution is None and not artifact.refused:
        kept = previous.get("artifact") or {}
        if kept.get("modelHash") == artifact.model_hash:
            recorded = dict(kept)
    return recorded


def _workload_conditions(
    cond: Any, observed: Observed, desired: int, decision_reason: str
) -> tuple[list[dict[str, Any]], str, int, int]:
    scheduled = cond("Scheduled", True, "Planned", decision_reason or "placement decided")
    deployment = observed.deployment
    if deployment is None:
        return (
            [
                cond("Ready", False, "Deploying", "the Deployment is being created"),
                cond("Progressing", True, "Applying", "the Deployment is being created"),
                cond("Degraded", False, "AsExpected", "no problem observed"),
                scheduled,
            ],
            "Deploying",
            0,
            0,
        )
    dep_status = deployment.get("status", {})
    replicas = int(dep_status.get("replicas") or 0)
    ready = int(dep_status.get("readyReplicas") or 0)
    updated = int(dep_status.get("updatedReplicas") or 0)
    seen = int(dep_status.get("observedGeneration") or 0)
    current = seen >= int(deployment.get("metadata", {}).get("generation") or 0)
    rolled_out = current and updated >= desired and replicas == desired and ready >= desired

    problem = pod_problem(observed.pods)
    loading = fetching(observed.pods)
    stuck = _deployment_stuck(deployment)
    if problem is None and stuck is not None:
        problem = ("ProgressDeadlineExceeded", stuck)
    if problem:
        degraded = cond("Degraded", True, problem[0], problem[1])
    else:
        degraded = cond("Degraded", False, "AsExpected", "no problem observed")

    if rolled_out and desired == 0:
        ready_cond = cond("Ready", True, "ScaledToZero", "0 replicas requested")
        progressing = cond("Progressing", False, "RolloutComplete", "0 replicas requested")
        phase = "Ready"
    elif rolled_out:
        message = f"{ready}/{desired} replicas ready"
        ready_cond = cond("Ready", True, "Available", message)
        progressing = cond("Progressing", False, "RolloutComplete", message)
        phase = "Ready"
    elif loading and not problem and ready == 0:
        # No replica serves yet and the init containers are still downloading.
        message = f"pod {', '.join(loading)} fetching the model into the cache"
        ready_cond = cond("Ready", False, "Fetching", message)
        progressing = cond("Progressing", True, "Fetching", message)
        phase = "Fetching"
    else:
        message = f"{ready}/{desired} replicas ready, {updated}/{desired} updated"
        reason = problem[0] if problem else "RollingOut"
        ready_cond = cond("Ready", False, reason, problem[1] if problem else message)
        progressing = cond("Progressing", True, "RollingOut", message)
        phase = "Degraded" if problem else "Deploying"
    return [ready_cond, progressing, degraded, scheduled], phase, replicas, ready


def forbidden_status(
    previous: Mapping[str, Any], message: str, *, generation: int, now: str
) -> dict[str, Any]:
    """``previous`` with ``Degraded=True``, reason ``Forbidden``: the operator lacks a permission.

    The rest of the status is kept as it was (the pass that lacked the permission computed
    nothing it could write), and so is the condition's ``lastTransitionTime`` while it was
    already True.
    """
    status = {key: copy.deepcopy(value) for key, value in previous.items() if key != "conditions"}
    degraded = condition("Degraded", True, "Forbidden", message, generation=generation, now=now)
    kept = previous.get("conditions") or []
    others = [dict(c) for c in kept if c.get("type") != "Degraded"]
    status["conditions"] = [*others, *_keep_transition_times([degraded], kept)]
    return status


def transitions(
    previous: Sequence[Mapping[str, Any]], current: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """Conditions whose status or reason differs from the previous pass (for Events)."""
    before = {c.get("type"): (c.get("status"), c.get("reason")) for c in previous}
    return [c for c in current if before.get(c["type"]) != (c["status"], c["reason"])]
