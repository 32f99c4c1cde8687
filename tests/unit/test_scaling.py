"""What autoscaling means for a pass: the count to render, status.autoscaling, the condition."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from nodepool import load_e2e_pool, model_deployment

from modeldeploy.api import Autoscaling, parse_model_deployment
from modeldeploy.autoscale import Decision
from modeldeploy.config import OperatorConfig
from modeldeploy.placement import plan_placement
from modeldeploy.render import RenderInputs, deployment_replicas, render_objects
from modeldeploy.scaling import (
    RECENT_DECISIONS,
    ScalingRecord,
    autoscaling_status,
    clamp,
    condition_message,
    initial_record,
    record_decision,
    scale_event,
)

AUTO = Autoscaling(enabled=True, min_replicas=1, max_replicas=4)
NOW = "2026-12-01T00:00:00Z"
GGUF: dict[str, Any] = {
    "model": {"source": "hf://Qwen/Qwen2.5-7B-Instruct-GGUF", "quantization": "Q4_K_M"},
    "hardware": {"accelerator": "cpu"},
}


def decision(desired: int, reason: str = "because") -> Decision:
    return Decision(
        desired=desired,
        reason=reason,
        load=5.0,
        running=2.0,
        waiting=3.0,
        ready_pods=1,
        scraped_pods=1,
        window=(),
        kv_cache_usage=0.25,
    )


@pytest.mark.parametrize(
    ("previous", "deployment", "spec_replicas", "desired", "where"),
    [
        ({"desiredReplicas": 3}, 2, 1, 3, "status"),
        (None, 2, 1, 2, "Deployment"),
        (None, None, 3, 3, "spec.replicas"),
        (None, None, 9, 4, "spec.replicas"),  # clamped to maxReplicas
        ({"desiredReplicas": 0}, None, 1, 1, "status"),  # minReplicas 0 acts as 1
    ],
)
def test_the_first_count_comes_from_status_then_the_deployment_then_the_spec(
    previous: dict[str, Any] | None,
    deployment: int | None,
    spec_replicas: int,
    desired: int,
    where: str,
) -> None:
    record = initial_record(AUTO, spec_replicas, previous, deployment)
    assert record.desired == desired
    assert where in record.reason


def test_bounds_treat_min_zero_as_one() -> None:
    zero = Autoscaling(enabled=True, min_replicas=0, max_replicas=2)
    assert [clamp(n, zero) for n in (0, 1, 2, 3)] == [1, 1, 2, 2]


def test_a_decision_records_the_load_and_only_changes_as_recent_decisions() -> None:
    record = initial_record(AUTO, 1, None, 1)
    held = record_decision(record, decision(1), NOW)
    assert held.recent == () and held.last_scale_time is None
    assert held.load == {
        "running": 2.0,
        "waiting": 3.0,
        "readyPods": 1,
        "scrapedPods": 1,
        "kvCacheUsage": 0.25,
    }
    moved = record_decision(held, decision(3, "more"), NOW)
    assert moved.last_scale_time == NOW
    assert moved.recent == ({"time": NOW, "from": 1, "to": 3, "reason": "more"},)
    for step in range(10):
        moved = record_decision(moved, decision(step % 4 + 1), NOW)
    assert len(moved.recent) <= RECENT_DECISIONS


def test_status_and_condition_of_native_mode() -> None:
    record = ScalingRecord(desired=2, reason="load 5 -> 2 replicas", load={"running": 5})
    status = autoscaling_status(AUTO, record, current_replicas=1)
    assert status == {
        "mode": "native",
        "currentReplicas": 1,
        "desiredReplicas": 2,
        "load": {"running": 5},
        "reason": "load 5 -> 2 replicas",
    }
    assert condition_message(AUTO, 2, record) == "2 replicas: load 5 -> 2 replicas"
    # kubectl scale writes spec.replicas: not used, and the condition says so.
    message = condition_message(AUTO, 5, record)
    assert "spec.replicas (5) is not used while autoscaling is enabled" in message
    assert "keeps 1 to 4" in message


def test_min_zero_is_said_to_act_as_one() -> None:
    zero = Autoscaling(enabled=True, min_replicas=0)
    record = ScalingRecord(desired=1, reason="idle")
    assert "minReplicas 0 acts as 1" in condition_message(zero, 1, record)


def test_delegated_modes_say_who_scales() -> None:
    keda = Autoscaling(enabled=True, mode="keda")
    assert autoscaling_status(keda, None, 2) == {
        "mode": "keda",
        "currentReplicas": 2,
        "reason": "replicas are left to the ScaledObject",
    }
    assert condition_message(keda, 1, None) == "replicas are left to the ScaledObject"


@pytest.mark.parametrize(
    ("before", "after", "event"),
    [
        (None, 2, None),  # the first record is no change
        (2, 2, None),
        (1, 3, "ScaledUp"),
        (3, 2, "ScaledDown"),
    ],
)
def test_an_event_for_each_change_of_the_decided_count(
    before: int | None, after: int, event: str | None
) -> None:
    previous = None if before is None else {"desiredReplicas": before}
    found = scale_event(previous, ScalingRecord(desired=after, reason="why"))
    assert (found[0] if found else None) == event
    if found:
        assert found[1] == f"from {before} to {after} replicas: why"


def _inputs(spec: dict[str, Any], replicas: int | None = None) -> RenderInputs:
    md = parse_model_deployment(model_deployment(copy.deepcopy(spec)))
    config = OperatorConfig()
    return RenderInputs(
        md, plan_placement(md.spec, load_e2e_pool(), config), config, None, replicas
    )


@pytest.mark.parametrize(
    ("autoscaling", "replicas", "expected"),
    [
        ({}, None, 2),  # autoscaling off: spec.replicas
        ({"enabled": True}, 3, 3),  # native: the autoscaler's count
        ({"enabled": True, "maxReplicas": 1}, None, 1),  # native, not decided yet: clamped
        ({"enabled": True, "mode": "keda"}, 3, None),  # KEDA owns the count
        ({"enabled": True, "mode": "hpa"}, None, None),
    ],
)
def test_the_deployment_carries_replicas_only_where_the_operator_owns_them(
    autoscaling: dict[str, Any], replicas: int | None, expected: int | None
) -> None:
    inputs = _inputs({**GGUF, "replicas": 2, "autoscaling": autoscaling}, replicas)
    assert deployment_replicas(inputs) == expected
    (deployment,) = [o for o in render_objects(inputs) if o["kind"] == "Deployment"]
    assert deployment["spec"].get("replicas") == expected


def test_delegated_modes_render_their_autoscaler_with_the_children() -> None:
    kinds = {
        mode: [
            o["kind"]
            for o in render_objects(
                _inputs({**GGUF, "autoscaling": {"enabled": True, "mode": mode}})
            )
        ]
        for mode in ("native", "keda", "hpa")
    }
    assert kinds["native"] == ["PersistentVolumeClaim", "Deployment", "Service"]
    assert kinds["keda"][-1] == "ScaledObject"
    assert kinds["hpa"][-1] == "HorizontalPodAutoscaler"
