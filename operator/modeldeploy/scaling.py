"""What autoscaling means for one ModelDeployment's pass: the replica count to render, the
``status.autoscaling`` record, and the ``Autoscaling`` condition. Pure.

Operator-native mode (the default): the autoscaler (``autoscaler.py``) scrapes the Ready
pods and keeps a ``ScalingRecord`` per ModelDeployment; a pass renders the Deployment with
the record's ``desired`` replicas through the operator's own server-side apply, so
``ModelDeployment.spec`` is never written (Argo CD sees no drift). Before the autoscaler
has decided (a new object, a restarted operator), the count is the one recorded in
``status.autoscaling``, else the running Deployment's, else ``spec.replicas`` — each
clamped to [max(1, minReplicas), maxReplicas] (to [minReplicas, maxReplicas] with the
gateway's scale to zero, ``OperatorConfig.scale_to_zero``).

While autoscaling is enabled, ``spec.replicas`` (and so ``kubectl scale mdep``) is not
used; the condition says so when it is set to another value, instead of ignoring it
silently. In ``keda`` and ``hpa`` modes the Deployment's replicas are left to that
autoscaler (the rendered Deployment carries none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from modeldeploy.api import Autoscaling
from modeldeploy.autoscale import Decision

RECENT_DECISIONS = 5  # status.autoscaling.recentDecisions keeps this many
DELEGATED_KINDS = {"keda": "ScaledObject", "hpa": "HorizontalPodAutoscaler"}


@dataclass(frozen=True)
class ScalingRecord:
    """The operator-native autoscaler's state for one ModelDeployment, as status shows it."""

    desired: int
    reason: str
    load: Mapping[str, float | int] | None = None
    last_scale_time: str | None = None
    recent: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)


def effective_bounds(autoscaling: Autoscaling, zero: bool = False) -> tuple[int, int]:
    """[max(1, minReplicas), maxReplicas]; with ``zero`` (a gateway wakes models at zero)
    [minReplicas, maxReplicas]."""
    low = autoscaling.min_replicas if zero else max(1, autoscaling.min_replicas)
    return low, autoscaling.max_replicas


def clamp(replicas: int, autoscaling: Autoscaling, zero: bool = False) -> int:
    """``replicas`` within the effective bounds."""
    low, high = effective_bounds(autoscaling, zero)
    return max(low, min(high, replicas))


def initial_record(
    autoscaling: Autoscaling,
    spec_replicas: int,
    previous: Mapping[str, Any] | None,
    deployment_replicas: int | None,
    zero: bool = False,
) -> ScalingRecord:
    """The record before the autoscaler's first decision: the recorded count, else the
    Deployment's, else ``spec.replicas``, clamped to the bounds."""
    recorded = (previous or {}).get("desiredReplicas")
    if isinstance(recorded, int):
        start, where = recorded, "the count recorded in status"
    elif deployment_replicas is not None:
        start, where = deployment_replicas, "the Deployment's count"
    else:
        start, where = spec_replicas, "spec.replicas"
    desired = clamp(start, autoscaling, zero)
    kept = previous or {}
    return ScalingRecord(
        desired=desired,
        reason=f"starting from {where} ({desired}) until the first scrape",
        load=kept.get("load"),
        last_scale_time=kept.get("lastScaleTime"),
        recent=tuple(kept.get("recentDecisions") or ()),
    )


def record_decision(record: ScalingRecord, decision: Decision, now: str) -> ScalingRecord:
    """The record after a decision: the new count, the load seen, and the change if any."""
    load: dict[str, float | int] = {
        "running": decision.running,
        "waiting": decision.waiting,
        "readyPods": decision.ready_pods,
        "scrapedPods": decision.scraped_pods,
    }
    if decision.kv_cache_usage is not None:
        load["kvCacheUsage"] = round(decision.kv_cache_usage, 3)
    updated = replace(record, desired=decision.desired, reason=decision.reason, load=load)
    if decision.desired == record.desired:
        return updated
    change = {"time": now, "from": record.desired, "to": decision.desired}
    change["reason"] = decision.reason
    recent = (*record.recent, change)[-RECENT_DECISIONS:]
    return replace(updated, last_scale_time=now, recent=recent)


def autoscaling_status(
    autoscaling: Autoscaling, record: ScalingRecord | None, current_replicas: int
) -> dict[str, Any]:
    """``status.autoscaling``: mode, desired and current replicas, load, last change, why."""
    status: dict[str, Any] = {"mode": autoscaling.mode, "currentReplicas": current_replicas}
    if record is None:
        kind = DELEGATED_KINDS[autoscaling.mode]
        status["reason"] = f"replicas are left to the {kind}"
        return status
    status["desiredReplicas"] = record.desired
    if record.load is not None:
        status["load"] = dict(record.load)
    if record.last_scale_time is not None:
        status["lastScaleTime"] = record.last_scale_time
    status["reason"] = record.reason
    if record.recent:
        status["recentDecisions"] = [dict(change) for change in record.recent]
    return status


def condition_message(
    autoscaling: Autoscaling, spec_replicas: int, record: ScalingRecord | None, zero: bool = False
) -> str:
    """The ``Autoscaling`` condition's message: who scales, and what is not used."""
    low, high = effective_bounds(autoscaling, zero)
    if record is not None:
        parts = [f"{record.desired} replicas: {record.reason}"]
    else:
        parts = [f"replicas are left to the {DELEGATED_KINDS[autoscaling.mode]}"]
    if autoscaling.min_replicas == 0 and not zero:
        parts.append("minReplicas 0 acts as 1 until a gateway can hold requests at zero")
    if record is not None and spec_replicas != record.desired:
        parts.append(
            f"spec.replicas ({spec_replicas}) is not used while autoscaling is enabled: "
            f"the autoscaler keeps {low} to {high}"
        )
    return "; ".join(parts)


def scale_event(
    previous: Mapping[str, Any] | None, record: ScalingRecord
) -> tuple[str, str] | None:
    """(reason, message) of the Event for a change of the decided count, if it changed."""
    before = (previous or {}).get("desiredReplicas")
    if not isinstance(before, int) or before == record.desired:
        return None
    reason = "ScaledUp" if record.desired > before else "ScaledDown"
    return reason, f"from {before} to {record.desired} replicas: {record.reason}"


def deployment_replicas(children: Sequence[Mapping[str, Any]]) -> int | None:
    """``spec.replicas`` of the live Deployment among the children, if there is one."""
    for child in children:
        if child.get("kind") == "Deployment":
            replicas = (child.get("spec") or {}).get("replicas")
            return int(replicas) if replicas is not None else None
    return None
