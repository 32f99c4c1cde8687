"""The autoscaling decision: how many replicas a ModelDeployment should run, from the load
its Ready pods report. Pure: no I/O and no clock (the caller passes monotonic ``now``).

Requests per second and CPU mean little for LLM servers; requests in flight do.

- The *load* of a pod is its running + waiting requests: what it holds in its slots or
  batch plus what is queued for one. (llama.cpp's ``requests_processing`` never exceeds
  the slot count, so its queue, ``requests_deferred``, must count too.)
- ``targetQueueDepth`` is the number of requests in flight (running + waiting) that one
  replica should hold on average. The recommendation is ``ceil(total load over the scraped
  Ready pods / targetQueueDepth)``, clamped to [effective min, ``maxReplicas``].
- ``minReplicas: 0`` behaves as 1 (effective min = max(1, ``minReplicas``)) unless the
  policy allows zero (``zero_allowed``: the gateway holds requests while a pod starts and
  signals the operator). Then a model scales down to 0 like to any count, and the requests
  the gateway holds for it (``held``) count as load: at zero, any held request wakes it.
- KV-cache pressure: where pods publish KV-cache usage (0..1) and its mean over the scraped
  Ready pods is at or above ``kvCacheHigh`` (default 0.9), the recommendation is at least
  the number of scraped Ready pods + 1.

How `decide` moves from ``current`` (the Deployment's replicas) to the recommendation:

- ``current`` outside [effective min, ``maxReplicas``] is clamped first; the reason says so.
- Pods not Ready, and Ready pods without a load (not scraped yet, or the scrape failed),
  count as neither load nor capacity.
- Up at once, by at most min(``maxScaleUpStep``, max(1, current)) replicas per decision:
  never more than doubling, never more than ``maxScaleUpStep`` (default 4).
- Down by one replica per decision, and only when every recommendation made in the last
  ``scaleDownDelaySeconds`` (the stabilisation window: those with now - delay <= at <= now;
  older ones are dropped) is below current. A load that oscillates faster than the window
  therefore moves the replica count once, not back and forth.
- Missing metrics never scale down: if any Ready pod lacks a load the decision may scale up
  (from the loads it has) but not down; with no Ready pod scraped it holds current. Such a
  decision records at least current in the window, so a scale-down waits for a full window
  of complete metrics after it.
- An empty window (the operator just started) counts current as recommended now, so a
  restart does not scale down before a full window (unless the delay is 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PodLoad:
    """One successful scrape of a pod: requests running, waiting, and KV-cache usage (0..1)."""

    running: float
    waiting: float
    kv_cache_usage: float | None = None

    def __post_init__(self) -> None:
        values = [self.running, self.waiting]
        if self.kv_cache_usage is not None:
            values.append(self.kv_cache_usage)
        if not all(math.isfinite(value) and value >= 0 for value in values):
            raise ValueError(f"a pod's load must be finite and not negative: {self}")

    @property
    def total(self) -> float:
        """Running + waiting requests: what the pod holds."""
        return self.running + self.waiting


@dataclass(frozen=True)
class PodSample:
    """One pod of the Deployment this interval; ``load`` is None when it was not scraped."""

    pod: str
    ready: bool
    load: PodLoad | None


@dataclass(frozen=True)
class AutoscalePolicy:
    """The ModelDeployment's autoscaling bounds and targets."""

    min_replicas: int
    max_replicas: int
    target_queue_depth: int
    scale_down_delay_seconds: float
    max_scale_up_step: int = 4
    kv_cache_high: float = 0.9
    zero_allowed: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.min_replicas < 0:
            problems.append(f"minReplicas {self.min_replicas} < 0")
        if self.max_replicas < self.effective_min:
            problems.append(f"maxReplicas {self.max_replicas} < {self.effective_min}")
        if self.target_queue_depth < 1:
            problems.append(f"targetQueueDepth {self.target_queue_depth} < 1")
        if not self.scale_down_delay_seconds >= 0:
            problems.append(f"scaleDownDelaySeconds {self.scale_down_delay_seconds} < 0")
        if self.max_scale_up_step < 1:
            problems.append(f"maxScaleUpStep {self.max_scale_up_step} < 1")
        if not 0 < self.kv_cache_high <= 1:
            problems.append(f"kvCacheHigh {self.kv_cache_high} not in (0, 1]")
        if problems:
            raise ValueError("invalid autoscale policy: " + "; ".join(problems))

    @property
    def effective_min(self) -> int:
        """``minReplicas``, with 0 acting as 1 unless zero is allowed."""
        return self.min_replicas if self.zero_allowed else max(1, self.min_replicas)


@dataclass(frozen=True)
class Recommendation:
    """The replicas one decision recommended, at monotonic time ``at`` (seconds)."""

    at: float
    replicas: int


@dataclass(frozen=True)
class Decision:
    """What `decide` answers: the replicas to set, why, the inputs it used, its window."""

    desired: int
    reason: str  # one line a person reads in status and Events
    load: float  # total running + waiting over the scraped Ready pods
    running: float
    waiting: float
    ready_pods: int
    scraped_pods: int
    window: tuple[Recommendation, ...]  # recommendations to keep for the next call
    kv_cache_usage: float | None = None  # mean over the scraped pods that publish it


def decide(
    samples: Sequence[PodSample],
    current: int,
    policy: AutoscalePolicy,
    window: Sequence[Recommendation],
    now: float,
    *,
    held: float = 0.0,
) -> Decision:
    """The replicas the Deployment should have now, by the rules in the module docstring;
    ``held`` is what the gateway holds for the model, waiting for a pod."""
    low, high = policy.effective_min, policy.max_replicas
    base = min(max(current, low), high)
    notes = []
    if base != current:
        zero = _ZERO_ACTS_AS_ONE if current < low and policy.min_replicas == 0 else ""
        notes.append(f"current {current} outside [{low}, {high}]{zero}: clamped to {base}")

    ready = [sample for sample in samples if sample.ready]
    loads = [sample.load for sample in ready if sample.load is not None]
    missing = len(ready) - len(loads)
    running = sum(load.running for load in loads)
    waiting = sum(load.waiting for load in loads)
    total = running + waiting
    usages = [load.kv_cache_usage for load in loads if load.kv_cache_usage is not None]
    if held > 0:
        waiting += held
        total += held
        notes.append(f"{_num(held)} held at the gateway")

    delay = policy.scale_down_delay_seconds
    kept = [r for r in window if now - delay <= r.at <= now]
    if not window and delay > 0:
        kept.append(Recommendation(now, base))

    if not loads and not held:
        why = f"no ready pod scraped ({len(ready)} ready)" if ready else "no pod is Ready"
        notes.append(f"holding {base}: {why}; never scale down on missing metrics")
        desired = recorded = base
    else:
        wanted = math.ceil(total / policy.target_queue_depth)
        pods = _count(len(ready), "ready pod")
        if missing:
            pods = f"{len(loads)} of {pods} ({missing} not scraped)"
        notes.append(
            f"load {_num(total)} (running {_num(running)}, waiting {_num(waiting)}) over {pods}, "
            f"target {policy.target_queue_depth} per replica -> {_count(wanted, 'replica')}"
        )
        recommended = _pressure_and_bounds(wanted, loads, policy, notes)
        # A partial scrape is a lower bound on demand: it may raise the window, not lower it.
        recorded = max(recommended, base) if missing else recommended
        highest = max([recorded, *(r.replicas for r in kept)])
        if recommended > base:
            step = min(policy.max_scale_up_step, max(1, base))
            desired = min(recommended, base + step)
            bound = f" (at most +{step} per decision)" if desired < recommended else ""
            notes.append(f"scaling up {base} -> {desired}{bound}")
        elif recommended == base:
            desired = base
            notes.append(f"holding {base}")
        elif missing:
            desired = base
            notes.append(
                f"holding {base}: {missing} of {_count(len(ready), 'ready pod')} not scraped; "
                "never scale down on missing metrics"
            )
        elif highest >= base:
            desired = base
            notes.append(
                f"holding {base}: scale-down waits until {_num(delay)}s of lower demand "
                f"(highest recent recommendation {highest})"
            )
        else:
            desired = base - 1
            notes.append(f"scaling down {base} -> {desired} after {_num(delay)}s of lower demand")

    return Decision(
        desired=desired,
        reason="; ".join(notes),
        load=total,
        running=running,
        waiting=waiting,
        ready_pods=len(ready),
        scraped_pods=len(loads),
        window=_record(kept, Recommendation(now, recorded)),
        kv_cache_usage=sum(usages) / len(usages) if usages else None,
    )


_ZERO_ACTS_AS_ONE = " (minReplicas 0 acts as 1: scale to zero needs a gateway)"


def _pressure_and_bounds(
    wanted: int, loads: Sequence[PodLoad], policy: AutoscalePolicy, notes: list[str]
) -> int:
    """The recommendation: ``wanted`` raised for KV-cache pressure, then bounded; noted."""
    usages = [load.kv_cache_usage for load in loads if load.kv_cache_usage is not None]
    mean = sum(usages) / len(usages) if usages else 0.0
    if usages and mean >= policy.kv_cache_high:
        notes.append(
            f"KV cache {mean:.0%} used on average (>= {policy.kv_cache_high:.0%}) "
            f"-> at least {len(loads) + 1}"
        )
        wanted = max(wanted, len(loads) + 1)
    low, high = policy.effective_min, policy.max_replicas
    if wanted < low:
        floor = f"1{_ZERO_ACTS_AS_ONE}" if policy.min_replicas == 0 else f"minReplicas {low}"
        notes.append(f"raised to {floor}")
    elif wanted > high:
        notes.append(f"capped at maxReplicas {high}")
    return min(max(wanted, low), high)


def _record(kept: Sequence[Recommendation], new: Recommendation) -> tuple[Recommendation, ...]:
    """The window after ``new``: entries not above it dropped, ``new`` last."""
    # An entry at or below a newer one can never be the window's maximum again (it leaves
    # the window first), so dropping it keeps at most maxReplicas entries and changes no
    # decision.
    return (*(r for r in kept if r.replicas > new.replicas), new)


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _num(value: float) -> str:
    return f"{round(value, 2):g}"
