"""Scale to zero with the gateway: minReplicas 0 means zero, and held requests wake a model."""

from __future__ import annotations

import datetime
from dataclasses import replace
from typing import Any

import pytest

from modeldeploy.api import Autoscaling
from modeldeploy.autoscale import AutoscalePolicy, PodLoad, PodSample, Recommendation, decide
from modeldeploy.demand import demand_lease_name, held_requests
from modeldeploy.gateway.wake import demand_lease
from modeldeploy.scaling import clamp, condition_message, initial_record

ZERO = AutoscalePolicy(
    min_replicas=0,
    max_replicas=4,
    target_queue_depth=4,
    scale_down_delay_seconds=60,
    zero_allowed=True,
)
IDLE = [PodSample("p", ready=True, load=PodLoad(0, 0))]


def test_without_the_gateway_minreplicas_zero_still_acts_as_one() -> None:
    decision = decide([], 0, replace(ZERO, zero_allowed=False), (), 0.0)
    assert decision.desired == 1
    autoscaling = Autoscaling(enabled=True, min_replicas=0)
    assert clamp(0, autoscaling) == 1
    record = initial_record(autoscaling, 0, None, 0)
    assert record.desired == 1
    assert "acts as 1" in condition_message(autoscaling, 0, record)


def test_at_zero_nothing_held_stays_at_zero() -> None:
    decision = decide([], 0, ZERO, (), 0.0)
    assert decision.desired == 0
    assert "no pod is Ready" in decision.reason


def test_a_held_request_wakes_a_model_at_zero_at_once() -> None:
    decision = decide([], 0, ZERO, (), 0.0, held=1)
    assert decision.desired == 1
    assert "1 held at the gateway" in decision.reason
    # Many held requests still wake one replica first (at most doubling, at least +1).
    assert decide([], 0, ZERO, (), 0.0, held=40).desired == 1


def test_an_idle_model_scales_to_zero_after_its_delay_and_not_before() -> None:
    window: tuple[Recommendation, ...] = (Recommendation(0.0, 1),)
    early = decide(IDLE, 1, ZERO, window, 30.0)
    assert early.desired == 1  # the window still holds the recommendation of 1
    late = decide(IDLE, 1, ZERO, early.window, 61.0)
    assert late.desired == 0
    assert "scaling down 1 -> 0" in late.reason


def test_with_the_gateway_the_bounds_reach_zero() -> None:
    autoscaling = Autoscaling(enabled=True, min_replicas=0)
    assert clamp(0, autoscaling, zero=True) == 0
    record = initial_record(autoscaling, 0, {"desiredReplicas": 0}, None, zero=True)
    assert record.desired == 0
    assert "acts as 1" not in condition_message(autoscaling, 0, record, zero=True)


NOW = datetime.datetime(2026, 12, 2, 4, 0, tzinfo=datetime.UTC)


def lease(renewed: str | None, held: str | None = None) -> dict[str, Any]:
    """A demand Lease as the gateway writes it."""
    annotations = {} if held is None else {"modeldeploy.io/held": held}
    return {"metadata": {"annotations": annotations}, "spec": {"renewTime": renewed}}


@pytest.mark.parametrize(
    ("renewed", "held", "expected"),
    [
        ("2026-12-02T03:59:50.000000Z", "3", 3.0),
        ("2026-12-02T03:59:50.000000Z", None, 1.0),  # a wake without a count: one
        ("2026-12-02T03:59:50.000000Z", "0", 0.0),  # the last held request was answered
        ("2026-12-02T03:59:50.000000Z", "lots", 1.0),  # hostile counts are bounded
        ("2026-12-02T03:59:50.000000Z", "-7", 0.0),
        ("2026-12-02T03:59:50.000000Z", str(10**12), 1_000_000.0),
        ("2026-12-02T03:59:50.000000Z", "9" * 5000, 1.0),  # past int()'s digit limit
        ("2026-12-02T03:59:00.000000Z", "3", 0.0),  # stale: answered or given up
        (None, "3", 0.0),
        ("yesterday", "3", 0.0),
    ],
)
def test_held_requests_from_the_demand_lease(
    renewed: str | None, held: str | None, expected: float
) -> None:
    assert held_requests(lease(renewed, held), NOW) == expected
    assert demand_lease_name("gemma") == "gemma-demand"


def test_the_count_the_gateway_writes_is_the_load_the_operator_reads() -> None:
    written = demand_lease("team", "gemma", "gateway-0", NOW, 3)
    assert held_requests(written, NOW + datetime.timedelta(seconds=5)) == 3.0
    decision = decide([], 1, ZERO, (), 0.0, held=held_requests(written, NOW))
    assert "3 held at the gateway" in decision.reason
    # Once the held requests went to a pod, the gateway writes 0: they count once, there.
    answered = demand_lease("team", "gemma", "gateway-0", NOW, 0)
    assert held_requests(answered, NOW) == 0.0
