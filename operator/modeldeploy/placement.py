"""Placement: from the spec and the cluster's nodes to one decision (engine, class, GPUs).

``plan_placement`` resolves format and quantization, picks the engine (catalogue order,
or the one the spec names), groups the schedulable nodes into hardware classes
(``nodes``), sizes one replica on each class with the engine's own rules
(``sizing.estimate_memory`` with ``Runtime.sizing``), counts how many replicas each class's
nodes take with the capacity they have free (``capacity``), and returns a ``Placement`` on
the class the ModelDeployment already runs on while it still fits there, else on the
cheapest (with prices, ``pricing``) or smallest class with room for the replicas asked for,
within ``spec.budget``; or raises a ``PlacementRefusal`` worded by ``refusals`` (the field
to change, what was needed and what the largest node offers). ``alternatives.py`` says
the same for every class. Everything engine-specific comes from the engine's ``Runtime``.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modeldeploy import refusals
from modeldeploy.api import ModelDeploymentSpec
from modeldeploy.capacity import (
    Resources,
    allocatable,
    hosted_replicas,
    requests_of,
)
from modeldeploy.catalog import (
    ACCELERATORS_FOR_ENGINE,
    ENGINES_FOR_FORMAT,
    Accelerator,
    Engine,
    quantization_info,
    resolve_format,
    resolve_quantization,
)
from modeldeploy.config import OperatorConfig
from modeldeploy.decision import Placement, PlacementRefusal
from modeldeploy.nodes import (
    CPU_LEVELS,
    GPU_RESOURCE,
    GPU_TOLERATION,
    HardwareClass,
    NodeInfo,
    group_classes,
    nominal_memory_at_least,
    parse_node,
    unschedulable_reason,
)
from modeldeploy.pricing import money, replica_cost
from modeldeploy.quantity import cpu_millis, cpu_quantity, mib_quantity, quantity_bytes
from modeldeploy.runtimes import runtime_for
from modeldeploy.sizing import (
    MemoryEstimate,
    ModelArchitecture,
    cpu_threads,
    estimate_memory,
    parameters_from_name,
)

BUDGET = "spec.budget.maxCostPerHour"


@dataclass(frozen=True)
class ClusterLoad:
    """What is taken: free capacity per node (None: every node idle), the class the
    ModelDeployment runs on (kept while it fits), and the classes re-planned away from."""

    free: Mapping[str, Resources] | None = None
    current_class: str | None = None
    avoid: frozenset[str] = frozenset()
    stuck_class: str | None = None  # the class being re-planned away from, if any


@dataclass(frozen=True)
class Candidate:
    """A hardware class that holds one replica: GPUs, estimate, requests, room and cost."""

    cls: HardwareClass
    gpus: int
    estimate: MemoryEstimate
    threads: int | None = None
    requests: Mapping[str, str] | None = None
    limits: Mapping[str, str] | None = None
    hosts: int = 0  # replicas the class's nodes take now
    cost: float | None = None  # per replica and hour

    @property
    def per_replica(self) -> Resources:
        """What one replica requests."""
        return requests_of(self.requests or {})

    def sort_key(self) -> tuple[Any, ...]:
        """Order candidates smallest first."""
        if self.cls.accelerator is Accelerator.GPU:
            # Least GPU memory taken (in whole GiB: 23028 and 23034 MiB are the same size),
            # then fewest GPUs, then the smaller node (keeps big nodes whole for big
            # models), then a stable name order.
            return (
                self.gpus * (self.cls.gpu_memory_mib // 1024),
                self.gpus,
                self.cls.gpus_per_node,
                self.cls.gpu_memory_mib,
                self.cls.id,
            )
        # Least memory, then the higher feature level and more cores (faster), then name.
        level = CPU_LEVELS.index(self.cls.cpu_level)
        return (self.cls.memory_bytes, -level, -self.cls.cpu_millis, self.cls.id)


def plan_placement(
    spec: ModelDeploymentSpec,
    nodes: Sequence[Mapping[str, Any]],
    config: OperatorConfig,
    artifact: ModelArchitecture | None = None,
    load: ClusterLoad | None = None,
    *,
    adapter_bytes: int = 0,
) -> Placement:
    """Choose engine, hardware class, GPUs and engine settings, or raise PlacementRefusal.

    ``adapter_bytes`` is what the LoRA adapters add to each replica's memory.
    """
    nodes_info = [parse_node(n) for n in nodes]
    return Planner(spec, nodes_info, config, artifact, load, adapter_bytes=adapter_bytes).plan()


class Planner:
    """One planning run; methods share the resolved inputs (``refusals`` reads them too)."""

    def __init__(
        self,
        spec: ModelDeploymentSpec,
        nodes: list[NodeInfo],
        config: OperatorConfig,
        artifact: ModelArchitecture | None,
        load: ClusterLoad | None = None,
        *,
        adapter_bytes: int = 0,
    ) -> None:
        self.spec = spec
        self.adapter_bytes = adapter_bytes
        self.nodes = nodes
        self.config = config
        self.artifact = artifact
        self.load = load or ClusterLoad()
        self.free = dict(self.load.free or {})
        for node in nodes:
            self.free.setdefault(node.name, allocatable(node))
        scaling = spec.autoscaling
        # Room for the replicas asked for (minReplicas under autoscaling; one at least, so
        # a model scaled to zero fits when it wakes); a budget covers the most it can run.
        self.needed = max(1, scaling.min_replicas if scaling.enabled else spec.replicas)
        self.budget_replicas = scaling.max_replicas if scaling.enabled else spec.replicas
        model = spec.model
        self.format = resolve_format(model.format, model.quantization, model.source)
        if model.quantization == "auto" and artifact is not None and artifact.quantization:
            self.quantization = artifact.quantization
        else:
            self.quantization = resolve_quantization(model.quantization, self.format, model.source)
        self.info = quantization_info(self.quantization)
        if self.format not in self.info.formats:
            raise PlacementRefusal(
                "spec.model.quantization",
                f"{self.quantization} does not exist as {self.format}",
            )
        self.engine = self._engine()
        self.runtime = runtime_for(self.engine)
        self.context_length = spec.serving.context_length
        self.parallel = spec.serving.max_concurrent_requests
        self.parameters = self._parameters()
        self.user_tolerations = [t.model_dump(exclude_none=True) for t in spec.hardware.tolerations]

    def _engine(self) -> Engine:
        engines = ENGINES_FOR_FORMAT[self.format]
        if self.spec.engine == "auto":
            return engines[0]
        engine = Engine(self.spec.engine)
        if engine not in engines:
            raise PlacementRefusal(
                "spec.engine", f"{engine} cannot serve {self.format}; use {engines[0]} or auto"
            )
        return engine

    def _parameters(self) -> int:
        if self.artifact is not None and self.artifact.parameters:
            return self.artifact.parameters
        hint = self.spec.model.parameter_count
        if hint is not None:
            return round(hint)
        from_name = parameters_from_name(self.spec.model.source)
        if from_name is not None:
            return from_name
        raise PlacementRefusal(
            "spec.model.parameters",
            "cannot size the model before its artifact is read: give a size hint such as 7B",
        )

    def plan(self) -> Placement:
        """Decide, or raise PlacementRefusal."""
        trained = self.artifact.context_length if self.artifact else None
        if trained is not None and self.context_length > trained:
            raise PlacementRefusal(
                "spec.serving.contextLength",
                f"{self.context_length} exceeds the model's trained context of {trained} tokens",
            )
        if GPU_RESOURCE in self.spec.serving.resources.requests or (
            GPU_RESOURCE in self.spec.serving.resources.limits
        ):
            raise PlacementRefusal(
                "spec.serving.resources",
                "nvidia.com/gpu cannot be overridden here; set spec.hardware.gpu.count",
            )
        accelerator = self.spec.hardware.accelerator
        options = self.accelerator_options()
        if not options:
            raise PlacementRefusal(
                "spec.hardware.accelerator", f"{self.engine} does not run on {accelerator}"
            )
        budget = self.spec.budget.max_cost_per_hour
        if budget is not None and not self.config.priced:
            raise PlacementRefusal(
                BUDGET,
                "the operator has no prices to weigh a budget against; its planning settings "
                "need gpuPricesPerHour, cpuPricePerVcpuHour or memoryPricePerGibHour",
            )
        schedulable = self.schedulable()
        if not schedulable:
            raise PlacementRefusal(*refusals.no_nodes(self))
        sized: list[tuple[Accelerator, list[Candidate]]] = []
        tried: list[Accelerator] = []
        for option in options:
            candidates = [
                candidate
                for candidate in map(self.fit, self.classes(schedulable, option))
                if candidate is not None
            ]
            if candidates:
                sized.append((option, candidates))
            elif not sized:
                tried.append(option)
        if not sized:
            raise PlacementRefusal(*refusals.misfit(self, schedulable, tried))
        return self._choose(sized, fell_back=bool(tried))

    def accelerator_options(self) -> list[Accelerator]:
        """The accelerators this spec and engine allow, preferred first."""
        accelerator = self.spec.hardware.accelerator
        wanted = [Accelerator(accelerator)] if accelerator != "auto" else None
        options = [a for a in ACCELERATORS_FOR_ENGINE[self.engine] if wanted is None or a in wanted]
        if not self.spec.hardware.gpu.is_default and Accelerator.GPU in options:
            options = [Accelerator.GPU]  # GPU settings given: a CPU fallback would ignore them
        return options

    def _usable(self, candidates: list[Candidate]) -> list[Candidate]:
        """Candidates not re-planned away from (all of them when every one was)."""
        kept = [c for c in candidates if c.cls.id not in self.load.avoid]
        # Every class tried: stay where it is rather than go round again.
        stuck = [c for c in candidates if c.cls.id == self.load.stuck_class]
        return kept or stuck or candidates

    def affordable(self, candidate: Candidate) -> bool:
        """Whether ``spec.budget`` admits this candidate for the replicas it covers."""
        budget = self.spec.budget.max_cost_per_hour
        if budget is None:
            return True
        return candidate.cost is not None and candidate.cost * self.budget_replicas <= budget

    def _rank(self, candidate: Candidate) -> tuple[Any, ...]:
        """Cheapest first when priced (unpriced classes last), then smallest."""
        if not self.config.priced:
            return candidate.sort_key()
        return (candidate.cost is None, candidate.cost or 0.0, *candidate.sort_key())

    def _best(self, candidates: list[Candidate]) -> Candidate:
        for candidate in candidates:
            if candidate.cls.id == self.load.current_class:
                return candidate  # stability beats optimality: it runs there already
        return min(candidates, key=self._rank)

    def _choose(
        self, sized: list[tuple[Accelerator, list[Candidate]]], fell_back: bool
    ) -> Placement:
        """The class with room for the replicas (first accelerator first), within budget."""
        over_budget: list[Candidate] = []
        for index, (_, candidates) in enumerate(sized):
            fitting = [c for c in self._usable(candidates) if c.hosts >= self.needed]
            affordable = [c for c in fitting if self.affordable(c)]
            over_budget += [c for c in fitting if not self.affordable(c)]
            if affordable:
                best = self._best(affordable)
                why = self._why(best, candidates, fell_back or index > 0, full=index > 0)
                return self._placement(best, why)
        if over_budget:
            raise PlacementRefusal(*self._over_budget(over_budget))
        # No class has room for every replica now: the one with the most room, so the rest
        # schedule as capacity frees up (the re-plan after an unschedulable wait moves it).
        candidates = self._usable(sized[0][1])
        affordable = [c for c in candidates if self.affordable(c)]
        if not affordable:
            raise PlacementRefusal(*self._over_budget(candidates))
        staying = [c for c in affordable if c.cls.id == self.load.current_class]
        best = (staying or [min(affordable, key=lambda c: (-c.hosts, self._rank(c)))])[0]
        why = f"no class has room for {self.needed} replicas now; this one takes {best.hosts}"
        return self._placement(best, why)

    def _over_budget(self, candidates: list[Candidate]) -> tuple[str, str]:
        budget = self.spec.budget.max_cost_per_hour
        priced = [c for c in candidates if c.cost is not None]
        if not priced:
            return BUDGET, f"no hardware class that fits has a price to weigh {budget} against"
        cheapest = min(priced, key=self._rank)
        assert cheapest.cost is not None
        replicas = self.budget_replicas
        return BUDGET, (
            f"{money(float(budget or 0))} is less than the cheapest option that fits: "
            f"{money(cheapest.cost * replicas)} for {replicas} replica(s) on "
            f"{cheapest.cls.id} ({money(cheapest.cost)} each)"
        )

    def _why(
        self, best: Candidate, candidates: list[Candidate], fell_back: bool, full: bool
    ) -> str:
        """Why ``best`` won, for the decision's reason."""
        gpu = best.cls.accelerator is Accelerator.GPU
        kind = "GPU" if gpu else "CPU"
        if best.cls.id == self.load.current_class:
            return "it runs on this class and still fits there"
        if self.config.priced and best.cost is not None:
            why = f"the cheapest {kind} class that holds it ({money(best.cost)} per replica)"
        else:
            why = f"the smallest {kind} class that holds it"
        if not gpu:
            if full:
                why = f"no GPU class has room for {self.needed} replica(s) now; " + why
            elif fell_back:
                why = "no GPU class holds it"
            if self.spec.hardware.accelerator == "cpu":
                why = "accelerator cpu was asked for; " + why
        skipped = sorted(
            c.cls.id
            for c in candidates
            if c.hosts < self.needed and self._rank(c) < self._rank(best)
        )
        if skipped:
            why += f"; {', '.join(skipped)} lack room for {self.needed} replica(s)"
        return why

    def blocker(self, node: NodeInfo) -> str | None:
        """Why the serving pods cannot go to this node, or None."""
        labels = node.label_map
        if any(labels.get(k) != v for k, v in self.spec.hardware.node_selector.items()):
            return "nodeSelector"
        tolerations = [*self.user_tolerations]
        if node.gpu_present:
            tolerations.append(GPU_TOLERATION)
        return unschedulable_reason(node, tolerations)

    def schedulable(self) -> list[NodeInfo]:
        """The nodes the serving pods may go to."""
        return [node for node in self.nodes if self.blocker(node) is None]

    def classes(
        self, nodes: list[NodeInfo], accelerator: Accelerator | None = None
    ) -> list[HardwareClass]:
        """The hardware classes of ``nodes`` the engine's image runs on (of one accelerator)."""
        arches = self.runtime.architectures(self.config)
        return [
            cls
            for cls in group_classes(nodes, self.config.price_label)
            if (accelerator is None or cls.accelerator is accelerator) and cls.arch in arches
        ]

    def gpu_filter_reason(self, cls: HardwareClass) -> str | None:
        """The first of ``refusals.GPU_FILTERS`` that rules the GPU class out, or None."""
        gpu = self.spec.hardware.gpu
        product = (cls.gpu_product or "").lower()
        if gpu.products and not any(p.lower() in product for p in gpu.products):
            return "products"
        if gpu.min_memory_gib is not None and not nominal_memory_at_least(
            cls.gpu_memory_mib, gpu.min_memory_gib
        ):
            return "minMemoryGiB"
        needed = self.runtime.min_compute_capability(self.info)
        if needed is not None and (
            cls.compute_capability is None or cls.compute_capability < needed
        ):
            return "computeCapability"
        if isinstance(gpu.count, int):
            if gpu.count > cls.gpus_per_node:
                return "count"
            if not self.runtime.gpu_counts(gpu.count, self.artifact, gpu.count):
                return "tensorParallel"
        return None

    def estimate(self, devices: int, tp: int = 1) -> MemoryEstimate:
        """One replica's memory on ``devices`` GPUs (1 for a CPU) at tensor parallel ``tp``."""
        return estimate_memory(
            quantization=self.quantization,
            rules=self.runtime.sizing,
            context_length=self.context_length,
            parallel=self.parallel,
            parameters=self.parameters,
            architecture=self.artifact,
            devices=devices,
            tensor_parallel_size=tp,
            adapter_bytes=self.adapter_bytes,
        )

    def fit(self, cls: HardwareClass) -> Candidate | None:
        """The class sized for one replica, with its requests, room and cost; or None."""
        sized = self._size(cls)
        if sized is None:
            return None
        threads = self._threads(cls, sized.estimate) if self.runtime.plans_threads else None
        requests, limits = self._resources(cls, sized.gpus, sized.estimate, threads)
        candidate = Candidate(cls, sized.gpus, sized.estimate, threads, requests, limits)
        per_replica = candidate.per_replica
        return Candidate(
            cls,
            sized.gpus,
            sized.estimate,
            threads,
            requests,
            limits,
            hosts=hosted_replicas(per_replica, self.free, cls.nodes),
            cost=replica_cost(cls, per_replica, self.config),
        )

    def _size(self, cls: HardwareClass) -> Candidate | None:
        if cls.accelerator is Accelerator.CPU:
            estimate = self.estimate(1)
            needed = self._override_bytes("memory") or estimate.total_bytes
            return Candidate(cls, 0, estimate) if needed <= cls.memory_bytes else None
        if self.gpu_filter_reason(cls) is not None:
            return None
        count = self.spec.hardware.gpu.count
        explicit = count if isinstance(count, int) else None
        usable_per_gpu = cls.gpu_memory_bytes * self.config.gpu_memory_utilization
        for gpus in self.runtime.gpu_counts(cls.gpus_per_node, self.artifact, explicit):
            estimate = self.estimate(gpus, self.runtime.tensor_parallel_size(gpus))
            if (
                estimate.total_bytes <= gpus * usable_per_gpu
                and self._gpu_host_memory(gpus) <= cls.memory_bytes
                and self._gpu_cpu_millis(gpus, cls) <= cls.cpu_millis
            ):
                return Candidate(cls, gpus, estimate)
        return None

    def _override_bytes(self, key: str) -> int | None:
        value = self.spec.serving.resources.requests.get(key)
        return None if value is None else quantity_bytes(value)

    def _gpu_host_memory(self, gpus: int) -> int:
        override = self._override_bytes("memory")
        if override is not None:
            return override
        return self.runtime.gpu_host_memory_bytes(gpus, self.config)

    def _gpu_cpu_millis(self, gpus: int, cls: HardwareClass) -> int:
        return self.runtime.gpu_cpu_cores(gpus, cls.cpu_millis // 1000, self.config) * 1000

    def _threads(self, cls: HardwareClass, estimate: MemoryEstimate) -> int:
        override = self.spec.serving.resources.requests.get("cpu")
        if override is not None:
            return max(1, cpu_millis(override) // 1000)
        if cls.accelerator is Accelerator.GPU:
            return self._gpu_cpu_millis(1, cls) // 1000
        cores = max(1, cls.cpu_millis // 1000 * 3 // 4)
        sized = cpu_threads(estimate.weights_bytes, self.parallel, self.config.max_cpu_threads)
        return min(cores, sized)

    def _resources(
        self, cls: HardwareClass, gpus: int, estimate: MemoryEstimate, threads: int | None
    ) -> tuple[dict[str, str], dict[str, str]]:
        """One replica's requests and limits (the spec's overrides win)."""
        if cls.accelerator is Accelerator.GPU:
            cpu = self._gpu_cpu_millis(gpus, cls)
            memory = self._gpu_host_memory(gpus)
            requests = {
                "cpu": cpu_quantity(cpu),
                "memory": mib_quantity(memory),
                GPU_RESOURCE: str(gpus),
            }
            limits = {"memory": mib_quantity(memory), GPU_RESOURCE: str(gpus)}
        else:
            cores = threads if threads is not None else self._threads(cls, estimate)
            memory = self._override_bytes("memory") or estimate.total_bytes
            requests = {"cpu": str(cores), "memory": mib_quantity(memory)}
            limits = {"cpu": str(cores), "memory": mib_quantity(memory)}
        for key, value in self.spec.serving.resources.requests.items():
            requests[key] = str(value)
        for key, value in self.spec.serving.resources.limits.items():
            limits[key] = str(value)
        return requests, limits

    def _placement(self, best: Candidate, why: str) -> Placement:
        cls, estimate = best.cls, best.estimate
        gpu = cls.accelerator is Accelerator.GPU
        threads = best.threads
        gpu_layers: int | None = None
        if self.runtime.offloads_layers:
            layers = self.artifact.layers if self.artifact else None
            # All layers plus the output layer; 999 is llama.cpp's idiom for "all".
            gpu_layers = (layers + 1 if layers else 999) if gpu else 0
        requests = dict(best.requests or {})
        limits = dict(best.limits or {})
        tolerations = [GPU_TOLERATION] if gpu else []
        tolerations += [t for t in self.user_tolerations if t not in tolerations]
        return Placement(
            engine=self.engine,
            accelerator=cls.accelerator,
            format=self.format,
            quantization=self.quantization,
            hardware_class=cls,
            gpus_per_replica=best.gpus,
            tensor_parallel_size=self.runtime.tensor_parallel_size(best.gpus),
            memory=estimate,
            context_length=self.context_length,
            parallel=self.parallel,
            threads=threads,
            gpu_layers=gpu_layers,
            compute_capability=cls.compute_capability,
            requests=requests,
            limits=limits,
            tolerations=[dict(t) for t in tolerations],
            node_selector=dict(self.spec.hardware.node_selector),
            reason=self._reason(best, why),
            architecture=self.artifact,
            cost_per_replica=best.cost,
            cost_replicas=self.budget_replicas,
            avoided=tuple(sorted(self.load.avoid)),
        )

    def _reason(self, best: Candidate, why: str) -> str:
        cls, estimate = best.cls, best.estimate
        what = (
            f"{self.format} {self.quantization} "
            f"({refusals.billions(estimate.parameters)} parameters)"
        )
        need = f"needs {refusals.gib(estimate.total_bytes)} per replica"
        if cls.accelerator is Accelerator.GPU:
            where = (
                f"{self.engine} on {best.gpus} x {cls.gpu_product} "
                f"({refusals.gib(cls.gpu_memory_bytes)} each)"
            )
            tp = self.runtime.tensor_parallel_size(best.gpus)
            if tp > 1:
                where += f" with tensor parallel size {tp}"
        else:
            where = f"{self.engine} on CPU class {cls.id} ({refusals.gib(cls.memory_bytes)})"
        stuck = self.load.stuck_class
        if stuck is not None and stuck != cls.id:
            why += f"; moved from {stuck}, where its pods stayed unschedulable"
        return f"{what} {need}; {where}: {why}"
