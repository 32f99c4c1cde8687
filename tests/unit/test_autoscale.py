"""The autoscaling decision (``autoscale.decide``) over synthetic load traces, and reading a
pod's load from real engines' Prometheus text (``scrape.parse_load``)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modeldeploy.autoscale import (
    AutoscalePolicy,
    Decision,
    PodLoad,
    PodSample,
    Recommendation,
    decide,
)
from modeldeploy.runtimes import llamacpp, sglang, vllm
from modeldeploy.runtimes.base import LoadGauges
from modeldeploy.scrape import MAX_METRICS_CHARS, parse_load, sum_gauges
from modeldeploy.serve.supervisor import parse_gauges

POLICY = AutoscalePolicy(
    min_replicas=1, max_replicas=16, target_queue_depth=4, scale_down_delay_seconds=60
)
EVERY = 15.0  # seconds between decisions in the traces


def pod(running: float, waiting: float = 0, kv: float | None = None, name: str = "p") -> PodSample:
    """A Ready pod that was scraped."""
    return PodSample(name, ready=True, load=PodLoad(running, waiting, kv))


def unscraped(name: str = "u") -> PodSample:
    """A Ready pod whose scrape failed (or has not happened yet)."""
    return PodSample(name, ready=True, load=None)


def starting(name: str = "s") -> PodSample:
    """A pod not Ready yet: no metrics."""
    return PodSample(name, ready=False, load=None)


def loaded(total: float) -> list[PodSample]:
    """One Ready pod holding ``total`` requests: four in its slots, the rest queued."""
    return [pod(min(total, 4), max(total - 4, 0))]


def trace(*steps: Sequence[PodSample]) -> list[tuple[float, Sequence[PodSample]]]:
    """The samples of successive decisions, ``EVERY`` seconds apart from t=0."""
    return [(i * EVERY, samples) for i, samples in enumerate(steps)]


def run(
    steps: Sequence[tuple[float, Sequence[PodSample]]],
    current: int,
    policy: AutoscalePolicy = POLICY,
) -> list[Decision]:
    """Feed a trace to decide(), carrying replicas and window forward."""
    window: tuple[Recommendation, ...] = ()
    decisions = []
    for now, samples in steps:
        decision = decide(samples, current, policy, window, now)
        current, window = decision.desired, decision.window
        decisions.append(decision)
    return decisions


def replicas(
    steps: Sequence[tuple[float, Sequence[PodSample]]],
    current: int,
    policy: AutoscalePolicy = POLICY,
) -> list[int]:
    """The replica trajectory of a trace."""
    return [decision.desired for decision in run(steps, current, policy)]


def changes(trajectory: Sequence[int], start: int) -> int:
    """How many times the replica count moved."""
    counts = [start, *trajectory]
    return sum(a != b for a, b in itertools.pairwise(counts))


@dataclass(frozen=True)
class Case:
    name: str
    start: int
    steps: list[tuple[float, Sequence[PodSample]]]
    expected: list[int]
    policy: AutoscalePolicy = POLICY


CASES = [
    Case(
        # Load jumps from idle to 4 replicas' worth: at most doubling, so 1 -> 2 -> 4.
        "step up",
        start=1,
        steps=trace(loaded(0), loaded(0), *[loaded(16)] * 4),
        expected=[1, 1, 2, 4, 4, 4],
    ),
    Case(
        # 80 requests want 20 replicas: doubling, then +4 a decision, capped at 16.
        "spike reaches the need by bounded steps",
        start=2,
        steps=trace(*[loaded(80)] * 6),
        expected=[4, 8, 12, 16, 16, 16],
    ),
    Case(
        "a smaller maxScaleUpStep bounds the step",
        start=4,
        steps=trace(*[loaded(64)] * 4),
        expected=[6, 8, 10, 12],
        policy=replace(POLICY, max_scale_up_step=2),
    ),
    Case(
        # Idle at once after a restart (empty window): 4 is held for 60s, then one a decision.
        "drop to idle",
        start=4,
        steps=trace(*[loaded(0)] * 9),
        expected=[4, 4, 4, 4, 4, 3, 2, 1, 1],
    ),
    Case(
        "delay 0 scales down at the first lower decision",
        start=3,
        steps=trace(*[loaded(0)] * 3),
        expected=[2, 1, 1],
        policy=replace(POLICY, scale_down_delay_seconds=0),
    ),
    Case(
        "minReplicas holds under no load",
        start=3,
        steps=trace(*[loaded(0)] * 10),
        expected=[3] * 10,
        policy=replace(POLICY, min_replicas=3),
    ),
    Case(
        "maxReplicas caps",
        start=2,
        steps=trace(*[loaded(400)] * 4),
        expected=[3, 3, 3, 3],
        policy=replace(POLICY, max_replicas=3),
    ),
    Case(
        "minReplicas 0 acts as 1",
        start=2,
        steps=trace(*[loaded(0)] * 7),
        expected=[2, 2, 2, 2, 2, 1, 1],
        policy=replace(POLICY, min_replicas=0),
    ),
    Case(
        "a failed scrape holds, however long the load is low",
        start=3,
        steps=trace(*[[pod(1), unscraped()]] * 12),
        expected=[3] * 12,
    ),
    Case(
        "a failed scrape still scales up from the loads it has",
        start=2,
        steps=trace(*[[pod(4, 16), unscraped()]] * 3),
        expected=[4, 5, 5],
    ),
    Case(
        "no Ready pod scraped holds",
        start=3,
        steps=trace(*[[unscraped("a"), unscraped("b"), starting()]] * 8),
        expected=[3] * 8,
    ),
    Case(
        "no pod Ready holds",
        start=2,
        steps=trace(*[[starting("a"), starting("b")]] * 8),
        expected=[2] * 8,
    ),
    Case(
        # New replicas still starting neither add capacity nor split the load: 12 requests
        # on the one Ready pod want 3 replicas, and 3 is where it stays.
        "pods starting do not count",
        start=1,
        steps=trace(
            [pod(4, 8, name="a")],
            [pod(4, 8, name="a"), starting("b")],
            [pod(4, 8, name="a"), starting("b"), starting("c")],
            [pod(4, 8, name="a"), starting("b"), starting("c")],
        ),
        expected=[2, 3, 3, 3],
    ),
    Case(
        # A pod not Ready is not scraped for load even if it has a stale one.
        "pods not Ready carry no load",
        start=1,
        steps=trace(*[[pod(1), PodSample("old", ready=False, load=PodLoad(40, 40))]] * 3),
        expected=[1, 1, 1],
    ),
    Case(
        # Not Ready pods do not block a scale-down the way unscraped Ready ones do.
        "pods not Ready do not hold a scale-down",
        start=2,
        steps=trace(*[[pod(0), starting()]] * 6),
        expected=[2, 2, 2, 2, 2, 1],
    ),
    Case(
        # 2 requests want 1 replica, but the KV cache is 95% full on both pods: 3.
        "KV-cache pressure adds a replica",
        start=2,
        steps=trace(*[[pod(1, kv=0.95, name="a"), pod(1, kv=0.95, name="b")]] * 3),
        expected=[3, 3, 3],
    ),
    Case(
        "KV-cache pressure at exactly the threshold",
        start=1,
        steps=trace([pod(0, kv=0.9)]),
        expected=[2],
    ),
    Case(
        "KV-cache usage below the threshold adds nothing",
        start=2,
        steps=trace(*[[pod(1, kv=0.5, name="a"), pod(1, kv=0.89, name="b")]] * 6),
        expected=[2, 2, 2, 2, 2, 1],
    ),
    Case(
        "KV-cache pressure with a lower threshold",
        start=1,
        steps=trace([pod(0, kv=0.5)]),
        expected=[2],
        policy=replace(POLICY, kv_cache_high=0.5),
    ),
    Case(
        "KV-cache pressure is capped at maxReplicas",
        start=2,
        steps=trace([pod(1, kv=1.0, name="a"), pod(1, kv=1.0, name="b")]),
        expected=[2],
        policy=replace(POLICY, max_replicas=2),
    ),
    Case(
        # Above maxReplicas the count comes down to it at once, then waits like any other.
        "current above maxReplicas is clamped",
        start=10,
        steps=trace(*[loaded(0)] * 7),
        expected=[5, 5, 5, 5, 5, 4, 3],
        policy=replace(POLICY, max_replicas=5),
    ),
    Case(
        "current below minReplicas is clamped, then scales up from there",
        start=0,
        steps=trace(*[loaded(24)] * 3),
        expected=[4, 6, 6],
        policy=replace(POLICY, min_replicas=2),
    ),
    Case(
        "current 0 with minReplicas 0 is raised to 1",
        start=0,
        steps=trace(loaded(0)),
        expected=[1],
        policy=replace(POLICY, min_replicas=0),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_traces(case: Case) -> None:
    assert replicas(case.steps, case.start, case.policy) == case.expected


def test_slow_decline_steps_down_one_at_a_time_each_after_the_delay() -> None:
    # The need falls by one replica every 150s, from 4 replicas to 1.
    needs = [4] * 4 + [3] * 10 + [2] * 10 + [1] * 10
    steps = trace(*[loaded(4 * need) for need in needs])
    trajectory = replicas(steps, 4)
    downs = [i for i in range(1, len(trajectory)) if trajectory[i] < trajectory[i - 1]]
    assert trajectory[0] == 4 and trajectory[-1] == 1
    assert all(trajectory[i - 1] - trajectory[i] == 1 for i in downs)
    assert len(downs) == 3
    for i in downs:
        # The last decision whose need reached the count it left is a full delay back.
        last_high = max(j for j in range(i) if needs[j] >= trajectory[i - 1])
        assert steps[i][0] - steps[last_high][0] > POLICY.scale_down_delay_seconds
    assert trajectory == [4] * 8 + [3] * 10 + [2] * 10 + [1] * 6


FLAPPING = [
    # (loads, one per decision, repeated) around the 2/3-replica boundary.
    [7, 9],
    [9, 7],
    [8, 9, 8, 8],
    [4, 12],
    [7, 7, 7, 9],
]


@pytest.mark.parametrize("pattern", FLAPPING, ids=[str(p) for p in FLAPPING])
@pytest.mark.parametrize("start", [2, 3])
def test_steady_oscillating_load_moves_the_count_at_most_once(
    pattern: list[int], start: int
) -> None:
    steps = trace(*[loaded(pattern[i % len(pattern)]) for i in range(80)])
    trajectory = replicas(steps, start)
    assert changes(trajectory, start) <= 1
    assert trajectory[-1] == 3  # held at the higher need


def test_without_the_window_the_same_load_would_flap() -> None:
    # The test above could fail: with no stabilisation the count follows every swing.
    steps = trace(*[loaded([7, 9][i % 2]) for i in range(20)])
    assert changes(replicas(steps, 2, replace(POLICY, scale_down_delay_seconds=0)), 2) == 19


def test_scale_down_waits_a_full_window_after_missing_metrics() -> None:
    steps = trace(*[[pod(0, name="a"), pod(0, name="b")]] * 8)
    # Metrics of pod b are missing for decisions 4 and 5 (t=60, t=75).
    for i in (4, 5):
        steps[i] = (steps[i][0], [pod(0, name="a"), unscraped("b")])
    trajectory = replicas(steps, 2)
    # Without the gap it would step down at t=75; it holds until t=75 + 60 has passed.
    assert trajectory == [2, 2, 2, 2, 2, 2, 2, 2]
    more = trace(*[[pod(0, name="a"), pod(0, name="b")]] * 11)
    for i in (4, 5):
        more[i] = (more[i][0], [pod(0, name="a"), unscraped("b")])
    assert replicas(more, 2)[-2:] == [2, 1]


def test_a_gap_in_the_decisions_longer_than_the_window_does_not_hold_forever() -> None:
    # Decisions further apart than the window: each finds only older recommendations.
    steps = [(0.0, loaded(16)), (100.0, loaded(0)), (200.0, loaded(0)), (300.0, loaded(0))]
    assert replicas(steps, 1) == [2, 1, 1, 1]
    assert replicas([*steps[:1], (100.0, loaded(0))], 4) == [4, 3]


def test_restart_with_an_empty_window_does_not_scale_down_at_once() -> None:
    first = decide(loaded(0), 4, POLICY, (), 1000.0)
    assert first.desired == 4
    assert first.window[0] == Recommendation(1000.0, 4)
    assert "waits until 60s of lower demand (highest recent recommendation 4)" in first.reason


def test_window_is_pruned_to_the_delay_and_bounded() -> None:
    loads = [(i * 7) % 50 for i in range(400)]
    decisions = run(trace(*[loaded(load) for load in loads]), 1)
    for i, decision in enumerate(decisions):
        now = i * EVERY
        assert all(now - POLICY.scale_down_delay_seconds <= r.at <= now for r in decision.window)
        assert decision.window[-1].at == now
        assert len(decision.window) <= POLICY.max_replicas
    # A window entry from the future (not monotonic) or long past is dropped.
    stale = (Recommendation(-500.0, 9), Recommendation(99.0, 9))
    assert decide(loaded(0), 2, POLICY, stale, 10.0).window == (Recommendation(10.0, 1),)
    assert decide(loaded(0), 2, POLICY, stale, 10.0).desired == 1


@pytest.mark.parametrize(
    ("samples", "current", "policy", "reason"),
    [
        (
            [pod(2, 3, name="a"), pod(2, 2, name="b")],
            2,
            POLICY,
            "load 9 (running 4, waiting 5) over 2 ready pods, target 4 per replica "
            "-> 3 replicas; scaling up 2 -> 3",
        ),
        (
            loaded(80),
            2,
            POLICY,
            "load 80 (running 4, waiting 76) over 1 ready pod, target 4 per replica "
            "-> 20 replicas; capped at maxReplicas 16; scaling up 2 -> 4 (at most +2 per "
            "decision)",
        ),
        (
            [pod(1, name="a"), unscraped("b")],
            2,
            POLICY,
            "load 1 (running 1, waiting 0) over 1 of 2 ready pods (1 not scraped), target 4 "
            "per replica -> 1 replica; holding 2: 1 of 2 ready pods not scraped; never scale "
            "down on missing metrics",
        ),
        (
            [unscraped("a"), starting()],
            3,
            POLICY,
            "holding 3: no ready pod scraped (1 ready); never scale down on missing metrics",
        ),
        (
            [starting()],
            2,
            POLICY,
            "holding 2: no pod is Ready; never scale down on missing metrics",
        ),
        (
            loaded(0),
            0,
            replace(POLICY, min_replicas=0),
            "current 0 outside [1, 16] (minReplicas 0 acts as 1: scale to zero needs a "
            "gateway): clamped to 1; load 0 (running 0, waiting 0) over 1 ready pod, target 4 "
            "per replica -> 0 replicas; raised to 1 (minReplicas 0 acts as 1: scale to zero "
            "needs a gateway); holding 1",
        ),
        (
            loaded(2),
            20,
            POLICY,
            "current 20 outside [1, 16]: clamped to 16; load 2 (running 2, waiting 0) over 1 "
            "ready pod, target 4 per replica -> 1 replica; holding 16: scale-down waits until "
            "60s of lower demand (highest recent recommendation 16)",
        ),
        (
            [pod(1, kv=0.9, name="a"), pod(1, kv=1.0, name="b")],
            2,
            POLICY,
            "load 2 (running 2, waiting 0) over 2 ready pods, target 4 per replica -> 1 "
            "replica; KV cache 95% used on average (>= 90%) -> at least 3; scaling up 2 -> 3",
        ),
        (
            loaded(0),
            3,
            replace(POLICY, min_replicas=2, scale_down_delay_seconds=0),
            "load 0 (running 0, waiting 0) over 1 ready pod, target 4 per replica -> 0 "
            "replicas; raised to minReplicas 2; scaling down 3 -> 2 after 0s of lower demand",
        ),
        (
            [pod(0.5, 1.25)],
            1,
            POLICY,
            "load 1.75 (running 0.5, waiting 1.25) over 1 ready pod, target 4 per replica "
            "-> 1 replica; holding 1",
        ),
    ],
)
def test_reason_names_the_numbers(
    samples: list[PodSample], current: int, policy: AutoscalePolicy, reason: str
) -> None:
    assert decide(samples, current, policy, (), 0.0).reason == reason


def test_decision_reports_its_inputs() -> None:
    decision = decide(
        [pod(2, 3, name="a"), pod(1, 0, name="b"), unscraped("c"), starting()], 2, POLICY, (), 0
    )
    assert (decision.load, decision.running, decision.waiting) == (6, 3, 3)
    assert (decision.ready_pods, decision.scraped_pods) == (3, 2)
    assert decision.desired == 2


def test_scale_down_after_the_window_names_the_delay() -> None:
    window = (Recommendation(0.0, 3),)
    held = decide(loaded(0), 3, POLICY, window, 60.0)
    assert held.desired == 3
    assert "holding 3: scale-down waits until 60s of lower demand" in held.reason
    down = decide(loaded(0), 3, POLICY, held.window, 61.0)
    assert down.desired == 2
    assert down.reason.endswith("scaling down 3 -> 2 after 60s of lower demand")


@pytest.mark.parametrize(
    "changes_",
    [
        {"min_replicas": -1},
        {"max_replicas": 0},
        {"min_replicas": 5, "max_replicas": 4},
        {"target_queue_depth": 0},
        {"scale_down_delay_seconds": -1},
        {"scale_down_delay_seconds": math.nan},
        {"max_scale_up_step": 0},
        {"kv_cache_high": 0},
        {"kv_cache_high": 1.5},
    ],
)
def test_invalid_policies_are_refused(changes_: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="invalid autoscale policy"):
        replace(POLICY, **changes_)


@pytest.mark.parametrize(
    "values", [(-1, 0, None), (0, math.nan, None), (math.inf, 0, None), (0, 0, -0.1)]
)
def test_unusable_loads_are_refused(values: tuple[float, float, float | None]) -> None:
    with pytest.raises(ValueError):
        PodLoad(*values)


_LOADS = st.one_of(
    st.none(),
    st.builds(
        PodLoad,
        st.integers(0, 40).map(float),
        st.integers(0, 40).map(float),
        st.one_of(st.none(), st.floats(0, 1)),
    ),
)
_SAMPLES = st.lists(
    st.builds(PodSample, st.just("p"), st.booleans(), _LOADS), min_size=0, max_size=6
)


_POLICIES = st.builds(
    lambda low, spread, step, delay: AutoscalePolicy(
        min_replicas=low,
        max_replicas=max(1, low) + spread,
        target_queue_depth=3,
        scale_down_delay_seconds=delay,
        max_scale_up_step=step,
    ),
    st.integers(0, 5),
    st.integers(0, 10),
    st.integers(1, 6),
    st.sampled_from([0.0, 30.0, 60.0]),
)


@settings(max_examples=300, deadline=None)
@given(
    policy=_POLICIES,
    current=st.integers(-2, 30),
    steps=st.lists(
        st.tuples(st.sampled_from([0.0, 5.0, 15.0, 100.0]), _SAMPLES), min_size=1, max_size=20
    ),
)
def test_invariants_hold_on_any_trace(
    policy: AutoscalePolicy, current: int, steps: list[tuple[float, list[PodSample]]]
) -> None:
    low, high = policy.effective_min, policy.max_replicas
    step = policy.max_scale_up_step
    now = 0.0
    window: tuple[Recommendation, ...] = ()
    for gap, samples in steps:
        now += gap
        decision = decide(samples, current, policy, window, now)
        base = min(max(current, low), high)
        assert low <= decision.desired <= high
        assert decision.desired <= base + min(step, max(1, base))
        assert decision.desired >= base - 1
        if any(s.ready and s.load is None for s in samples):
            assert decision.desired >= base
        assert decision.reason and "\n" not in decision.reason
        assert len(decision.window) <= high
        current, window = decision.desired, decision.window


# --- parse_load on the engines' own exposition -----------------------------------------

LLAMACPP_METRICS = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 1266
# HELP llamacpp:prompt_seconds_total Prompt process time
# TYPE llamacpp:prompt_seconds_total counter
llamacpp:prompt_seconds_total 0.591
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 2048
# HELP llamacpp:tokens_predicted_seconds_total Predict process time
# TYPE llamacpp:tokens_predicted_seconds_total counter
llamacpp:tokens_predicted_seconds_total 13.337
# HELP llamacpp:n_decode_total Total number of llama_decode() calls
# TYPE llamacpp:n_decode_total counter
llamacpp:n_decode_total 1990
# HELP llamacpp:n_busy_slots_per_decode Average number of busy slots per llama_decode() call
# TYPE llamacpp:n_busy_slots_per_decode counter
llamacpp:n_busy_slots_per_decode 3.7
# HELP llamacpp:prompt_tokens_seconds Average prompt throughput in tokens/s.
# TYPE llamacpp:prompt_tokens_seconds gauge
llamacpp:prompt_tokens_seconds 2142.13
# HELP llamacpp:predicted_tokens_seconds Average generation throughput in tokens/s.
# TYPE llamacpp:predicted_tokens_seconds gauge
llamacpp:predicted_tokens_seconds 153.557
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 4
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 7
"""

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="qwen 7b"} 12.0
vllm:num_requests_running{engine="1",model_name="qwen 7b"} 9.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="qwen 7b"} 3.0
vllm:num_requests_waiting{engine="1",model_name="qwen 7b"} 0.0
# HELP vllm:num_requests_waiting_by_reason Number of requests waiting, by reason.
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",model_name="qwen 7b",reason="capacity"} 3.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="qwen 7b"} 0.92
vllm:kv_cache_usage_perc{engine="1",model_name="qwen 7b"} 0.88
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="qwen 7b"} 45312.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.04",model_name="qwen 7b"} 10.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="qwen 7b"} 42.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="qwen 7b"} 42.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="qwen 7b"} 3.21
# HELP vllm:cache_config_info Information of the LLMCache config
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",engine="0"} 1.0
"""


def _load(text: str, gauges: LoadGauges) -> PodLoad | None:
    return parse_load(text, gauges.running, gauges.waiting, gauges.kv_cache_usage)


def test_parse_load_reads_llamacpp() -> None:
    assert _load(LLAMACPP_METRICS, llamacpp.LOAD_GAUGES) == PodLoad(4, 7, None)


def test_parse_load_sums_vllm_label_sets_and_averages_kv_cache() -> None:
    load = _load(VLLM_METRICS, vllm.LOAD_GAUGES)
    assert load is not None
    assert (load.running, load.waiting) == (21, 3)
    assert load.kv_cache_usage == pytest.approx(0.90)


def test_parse_load_without_a_published_kv_gauge_has_no_kv() -> None:
    text = VLLM_METRICS.replace("vllm:kv_cache_usage_perc", "vllm:other")
    assert _load(text, vllm.LOAD_GAUGES) == PodLoad(21, 3, None)


def test_parse_load_reads_sglang() -> None:
    text = (
        'sglang:num_running_reqs{model_name="m"} 5\n'
        'sglang:num_queue_reqs{model_name="m"} 2\n'
        'sglang:token_usage{model_name="m"} 0.31\n'
    )
    assert _load(text, sglang.LOAD_GAUGES) == PodLoad(5, 2, 0.31)


@pytest.mark.parametrize(
    "text",
    [
        "",
        LLAMACPP_METRICS.replace("llamacpp:requests_deferred", "llamacpp:other"),
        LLAMACPP_METRICS.replace("llamacpp:requests_processing", "llamacpp:other"),
        "# TYPE llamacpp:requests_processing gauge\n# TYPE llamacpp:requests_deferred gauge\n",
        "<html>502 Bad Gateway</html>\n",
        LLAMACPP_METRICS + "llamacpp:broken{ 1\n",
        LLAMACPP_METRICS.replace("deferred 7", "deferred NaN"),
        LLAMACPP_METRICS.replace("deferred 7", "deferred -1"),
        LLAMACPP_METRICS.replace("processing 4", "processing +Inf"),
    ],
    ids=[
        "empty",
        "no-waiting",
        "no-running",
        "typed-but-no-samples",
        "not-prometheus",
        "malformed-line",
        "nan",
        "negative",
        "infinite",
    ],
)
def test_parse_load_refuses_absent_or_unusable_gauges(text: str) -> None:
    assert _load(text, llamacpp.LOAD_GAUGES) is None


def test_parse_load_refuses_oversize_text() -> None:
    padding = "# " + "x" * 1000 + "\n"
    text = LLAMACPP_METRICS + padding * (MAX_METRICS_CHARS // len(padding))
    assert len(text) > MAX_METRICS_CHARS
    assert _load(text, llamacpp.LOAD_GAUGES) is None
    fits = text[: MAX_METRICS_CHARS - len(padding)]
    assert _load(fits, llamacpp.LOAD_GAUGES) == PodLoad(4, 7, None)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (LLAMACPP_METRICS, llamacpp.LOAD_GAUGES.busy),
        (VLLM_METRICS, vllm.LOAD_GAUGES.busy),
        (LLAMACPP_METRICS, ("llamacpp:tokens_predicted_total",)),
        ("other 1\n", llamacpp.LOAD_GAUGES.busy),
    ],
)
def test_sum_gauges_agrees_with_the_supervisor(text: str, names: tuple[str, ...]) -> None:
    # The supervisor's drain loop reads the same sums (serve/supervisor.parse_gauges).
    assert sum_gauges(text, names) == parse_gauges(text, names)
