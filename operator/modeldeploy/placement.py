"""Placement: from the spec and the cluster's nodes to one decision (engine, class, GPUs).

``plan_placement`` resolves format and quantization, picks the engine (catalogue order,
or the one the spec names), groups the schedulable nodes into hardware classes
(``nodes``), sizes one replica on each class with the engine's own rules
(``sizing.estimate_memory`` with ``Runtime.sizing``), and returns a ``Placement`` on the
smallest class that holds it, or raises a ``PlacementRefusal`` worded by ``refusals``
(the field to change, what was needed and what the largest node offers). Everything
engine-specific comes from the engine's ``Runtime``. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modeldeploy import refusals
from modeldeploy.api import ModelDeploymentSpec
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
from modeldeploy.quantity import cpu_millis, cpu_quantity, mib_quantity, quantity_bytes
from modeldeploy.runtimes import runtime_for
from modeldeploy.sizing import (
    MemoryEstimate,
    ModelArchitecture,
    estimate_memory,
    parameters_from_name,
)


@dataclass(frozen=True)
class Candidate:
    """A hardware class that holds one replica, with the GPUs it takes and the estimate."""

    cls: HardwareClass
    gpus: int
    estimate: MemoryEstimate

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
) -> Placement:
    """Choose engine, hardware class, GPUs and engine settings, or raise PlacementRefusal."""
    return Planner(spec, [parse_node(n) for n in nodes], config, artifact).plan()


class Planner:
    """One planning run; methods share the resolved inputs (``refusals`` reads them too)."""

    def __init__(
        self,
        spec: ModelDeploymentSpec,
        nodes: list[NodeInfo],
        config: OperatorConfig,
        artifact: ModelArchitecture | None,
    ) -> None:
        self.spec = spec
        self.nodes = nodes
        self.config = config
        self.artifact = artifact
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
        wanted = [Accelerator(accelerator)] if accelerator != "auto" else None
        options = [a for a in ACCELERATORS_FOR_ENGINE[self.engine] if wanted is None or a in wanted]
        if not options:
            raise PlacementRefusal(
                "spec.hardware.accelerator", f"{self.engine} does not run on {accelerator}"
            )
        if not self.spec.hardware.gpu.is_default and Accelerator.GPU in options:
            options = [Accelerator.GPU]  # GPU settings given: a CPU fallback would ignore them
        schedulable = self.schedulable()
        if not schedulable:
            raise PlacementRefusal(*refusals.no_nodes(self))
        tried: list[Accelerator] = []
        for option in options:
            candidates = [
                candidate
                for candidate in map(self._fit, self.classes(schedulable, option))
                if candidate is not None
            ]
            if candidates:
                best = min(candidates, key=Candidate.sort_key)
                return self._placement(best, fell_back=bool(tried))
            tried.append(option)
        raise PlacementRefusal(*refusals.misfit(self, schedulable, tried))

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
            for cls in group_classes(nodes)
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
        )

    def _fit(self, cls: HardwareClass) -> Candidate | None:
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

    def _threads(self, cls: HardwareClass) -> int:
        override = self.spec.serving.resources.requests.get("cpu")
        if override is not None:
            return max(1, cpu_millis(override) // 1000)
        if cls.accelerator is Accelerator.GPU:
            return self._gpu_cpu_millis(1, cls) // 1000
        cores = cls.cpu_millis // 1000
        return max(1, min(self.config.max_cpu_threads, cores * 3 // 4))

    def _placement(self, best: Candidate, fell_back: bool) -> Placement:
        cls, estimate = best.cls, best.estimate
        gpu = cls.accelerator is Accelerator.GPU
        threads = self._threads(cls) if self.runtime.plans_threads else None
        gpu_layers: int | None = None
        if self.runtime.offloads_layers:
            layers = self.artifact.layers if self.artifact else None
            # All layers plus the output layer; 999 is llama.cpp's idiom for "all".
            gpu_layers = (layers + 1 if layers else 999) if gpu else 0
        requests: dict[str, str] = {}
        limits: dict[str, str] = {}
        if gpu:
            cpu = self._gpu_cpu_millis(best.gpus, cls)
            memory = self._gpu_host_memory(best.gpus)
            requests = {
                "cpu": cpu_quantity(cpu),
                "memory": mib_quantity(memory),
                GPU_RESOURCE: str(best.gpus),
            }
            limits = {"memory": mib_quantity(memory), GPU_RESOURCE: str(best.gpus)}
        else:
            cores = threads if threads is not None else self._threads(cls)
            memory = self._override_bytes("memory") or estimate.total_bytes
            requests = {"cpu": str(cores), "memory": mib_quantity(memory)}
            limits = {"cpu": str(cores), "memory": mib_quantity(memory)}
        for key, value in self.spec.serving.resources.requests.items():
            requests[key] = str(value)
        for key, value in self.spec.serving.resources.limits.items():
            limits[key] = str(value)
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
            reason=self._reason(best, fell_back),
            architecture=self.artifact,
        )

    def _reason(self, best: Candidate, fell_back: bool) -> str:
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
            why = "the smallest GPU class that holds it"
        else:
            where = f"{self.engine} on CPU class {cls.id} ({refusals.gib(cls.memory_bytes)})"
            why = "no GPU class holds it" if fell_back else "the smallest CPU class that holds it"
            if self.spec.hardware.accelerator == "cpu":
                why = "accelerator cpu was asked for; " + "the smallest CPU class that holds it"
        return f"{what} {need}; {where}: {why}"
