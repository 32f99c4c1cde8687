"""Node inventory and placement: from Node objects to hardware classes to one decision.

This module owns step 2 to 5 of DESIGN.md §4. Nodes arrive as plain dicts (what
``kubectl get nodes -o yaml`` prints). Their hardware is read from the labels GPU Feature
Discovery and Node Feature Discovery publish plus allocatable resources, and the nodes that
can take a pod (Ready, schedulable, every NoSchedule/NoExecute taint tolerated) are grouped
into hardware classes:

- GPU class: architecture + ``nvidia.com/gpu.product`` + GPUs per node; its memory per GPU
  is the smallest ``nvidia.com/gpu.memory`` among its nodes (the product name fixes it);
- CPU class: architecture + CPU feature level (amx > avx512 > avx2 > baseline, from NFD's
  ``cpu-cpuid`` labels) + ``node.kubernetes.io/instance-type``; its memory and cores are the
  smallest allocatable among its nodes, so every node of a class can hold a replica.

Each class is defined by label values only, so one node-affinity term admits every node of
it and no other. ``plan_placement`` picks the engine and the smallest class that holds one
replica (``sizing.estimate_memory``) and returns a ``Placement``, or raises a
``PlacementRefusal`` naming the field to change, what was needed and what the largest node
offers. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from modeldeploy.api import ModelDeploymentSpec
from modeldeploy.catalog import (
    ACCELERATORS_FOR_ENGINE,
    ENGINES_FOR_FORMAT,
    VLLM_MIN_COMPUTE_CAPABILITY,
    Accelerator,
    Engine,
    Format,
    compute_capability,
    quantization_info,
    resolve_format,
    resolve_quantization,
)
from modeldeploy.config import OperatorConfig
from modeldeploy.sizing import (
    GIB,
    MIB,
    MemoryEstimate,
    ModelArchitecture,
    estimate_memory,
    parameters_from_name,
)

GPU_RESOURCE = "nvidia.com/gpu"
LABEL_GPU_PRESENT = "nvidia.com/gpu.present"
LABEL_GPU_PRODUCT = "nvidia.com/gpu.product"
LABEL_GPU_MEMORY = "nvidia.com/gpu.memory"
LABEL_GPU_COUNT = "nvidia.com/gpu.count"
LABEL_COMPUTE_MAJOR = "nvidia.com/gpu.compute.major"
LABEL_COMPUTE_MINOR = "nvidia.com/gpu.compute.minor"
LABEL_ARCH = "kubernetes.io/arch"
LABEL_INSTANCE_TYPE = "node.kubernetes.io/instance-type"
NFD_CPUID = "feature.node.kubernetes.io/cpu-cpuid."
LABEL_AVX2 = NFD_CPUID + "AVX2"
LABEL_AVX512F = NFD_CPUID + "AVX512F"
LABEL_AMXBF16 = NFD_CPUID + "AMXBF16"
GPU_TOLERATION: dict[str, str] = {
    "key": GPU_RESOURCE,
    "operator": "Exists",
    "effect": "NoSchedule",
}

# CPU feature levels, lowest first; each is defined by the labels that must (not) be "true".
CPU_LEVELS: tuple[str, ...] = ("baseline", "avx2", "avx512", "amx")
_LEVEL_LABELS: dict[str, str] = {"avx2": LABEL_AVX2, "avx512": LABEL_AVX512F, "amx": LABEL_AMXBF16}
AMD64 = "amd64"

_QUANTITY = re.compile(
    r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(Ki|Mi|Gi|Ti|Pi|Ei)|([numkMGTPE])|[eE]([+-]?[0-9]+))?$"
)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_POWERS_OF_TWO = (1, 2, 4, 8, 16, 32, 64)
# GPU class filters in the order they apply; a refusal names the last one that bit.
_GPU_FILTERS = ("products", "minMemoryGiB", "computeCapability", "count", "tensorParallel")


def parse_quantity(value: str | int | float) -> Fraction:
    """Parse a Kubernetes quantity (``500m``, ``64Gi``, ``128974848Ki``, ``1e3``) exactly."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a quantity")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        return Fraction(str(value))
    match = _QUANTITY.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    number, binary, decimal, exponent = match.groups()
    amount = Fraction(number)
    if binary:
        return amount * Fraction(1024) ** _BINARY[binary]
    if exponent is not None:
        return amount * Fraction(10) ** int(exponent)
    return amount * Fraction(10) ** _DECIMAL[decimal or ""]


def cpu_millis(value: str | int | float) -> int:
    """A CPU quantity in millicores, rounded up as the API server does."""
    return math.ceil(parse_quantity(value) * 1000)


def quantity_bytes(value: str | int | float) -> int:
    """A memory quantity in bytes, rounded up."""
    return math.ceil(parse_quantity(value))


@dataclass(frozen=True)
class Taint:
    """A node taint."""

    key: str
    value: str
    effect: str


@dataclass(frozen=True)
class NodeInfo:
    """What placement needs to know about one node."""

    name: str
    labels: tuple[tuple[str, str], ...]
    arch: str
    cpu_millis: int
    memory_bytes: int
    gpus: int
    taints: tuple[Taint, ...]
    ready: bool
    unschedulable: bool

    @property
    def label_map(self) -> dict[str, str]:
        """The labels as a dict."""
        return dict(self.labels)

    @property
    def gpu_present(self) -> bool:
        """True when GFD marked the node as a GPU node."""
        return LABEL_GPU_PRESENT in self.label_map

    @property
    def gpu_product(self) -> str | None:
        """``nvidia.com/gpu.product``."""
        return self.label_map.get(LABEL_GPU_PRODUCT)

    @property
    def gpu_memory_mib(self) -> int | None:
        """``nvidia.com/gpu.memory`` (MiB per GPU)."""
        return _int_label(self.label_map.get(LABEL_GPU_MEMORY))

    @property
    def gpu_count_label(self) -> int | None:
        """``nvidia.com/gpu.count``."""
        return _int_label(self.label_map.get(LABEL_GPU_COUNT))

    @property
    def compute_capability(self) -> tuple[int, int] | None:
        """From GFD's compute labels, else from the product name."""
        labels = self.label_map
        major = _int_label(labels.get(LABEL_COMPUTE_MAJOR))
        minor = _int_label(labels.get(LABEL_COMPUTE_MINOR))
        if major is not None:
            return (major, minor or 0)
        product = self.gpu_product
        return compute_capability(product) if product else None

    @property
    def cpu_level(self) -> str:
        """The highest CPU feature level NFD reports (``baseline`` off amd64)."""
        if self.arch != AMD64:
            return "baseline"
        labels = self.label_map
        for level in reversed(CPU_LEVELS[1:]):
            if labels.get(_LEVEL_LABELS[level]) == "true":
                return level
        return "baseline"


def _int_label(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def parse_node(obj: Mapping[str, Any]) -> NodeInfo:
    """Read a Node object (a plain dict) into a NodeInfo."""
    metadata = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    labels = {str(k): str(v) for k, v in (metadata.get("labels") or {}).items()}
    allocatable = status.get("allocatable") or status.get("capacity") or {}
    node_info = status.get("nodeInfo") or {}
    conditions = status.get("conditions") or []
    ready_states = [c.get("status") for c in conditions if c.get("type") == "Ready"]
    taints = tuple(
        Taint(str(t.get("key", "")), str(t.get("value") or ""), str(t.get("effect", "")))
        for t in spec.get("taints") or []
    )
    return NodeInfo(
        name=str(metadata.get("name", "")),
        labels=tuple(sorted(labels.items())),
        arch=labels.get(LABEL_ARCH) or str(node_info.get("architecture") or AMD64),
        cpu_millis=cpu_millis(allocatable.get("cpu", 0)),
        memory_bytes=quantity_bytes(allocatable.get("memory", 0)),
        gpus=int(parse_quantity(allocatable.get(GPU_RESOURCE, 0))),
        taints=taints,
        # A node without a Ready condition (a manifest, not a live node) counts as ready.
        ready=not ready_states or ready_states[0] == "True",
        unschedulable=bool(spec.get("unschedulable", False)),
    )


def tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Taint) -> bool:
    """True when one of the tolerations matches the taint (core/v1 semantics)."""
    for toleration in tolerations:
        effect = toleration.get("effect")
        if effect and effect != taint.effect:
            continue
        key = toleration.get("key")
        operator = toleration.get("operator") or "Equal"
        if not key:
            if operator == "Exists":
                return True
            continue
        if key != taint.key:
            continue
        if operator == "Exists" or (toleration.get("value") or "") == taint.value:
            return True
    return False


def unschedulable_reason(node: NodeInfo, tolerations: Sequence[Mapping[str, Any]]) -> str | None:
    """Why a pod with these tolerations cannot go to the node, or None."""
    if not node.ready:
        return "NotReady"
    if node.unschedulable:
        return "cordoned"
    for taint in node.taints:
        if taint.effect in {"NoSchedule", "NoExecute"} and not tolerates(tolerations, taint):
            return f"taint {taint.key}={taint.value}:{taint.effect}"
    return None


@dataclass(frozen=True)
class HardwareClass:
    """Nodes that look the same to placement, defined by label values alone."""

    accelerator: Accelerator
    arch: str
    nodes: tuple[str, ...]
    cpu_millis: int
    memory_bytes: int
    gpu_product: str | None = None
    gpu_memory_mib: int = 0
    gpus_per_node: int = 0
    gpu_count_label: int | None = None
    compute_capability: tuple[int, int] | None = None
    cpu_level: str = "baseline"
    instance_type: str | None = None

    @property
    def id(self) -> str:
        """A readable identifier: ``gpu/amd64/NVIDIA-L4/x1`` or ``cpu/amd64/avx2/c5a.4xlarge``."""
        if self.accelerator is Accelerator.GPU:
            return f"gpu/{self.arch}/{self.gpu_product}/x{self.gpus_per_node}"
        parts = ["cpu", self.arch, self.cpu_level]
        if self.instance_type:
            parts.append(self.instance_type)
        return "/".join(parts)

    @property
    def gpu_memory_bytes(self) -> int:
        """Memory of one GPU in bytes."""
        return self.gpu_memory_mib * MIB

    def match_expressions(self) -> list[dict[str, Any]]:
        """Node-affinity expressions that admit every node of this class and no other."""
        expressions: list[dict[str, Any]] = [_expr(LABEL_ARCH, "In", [self.arch])]
        if self.accelerator is Accelerator.GPU:
            expressions += [
                _expr(LABEL_GPU_PRESENT, "Exists"),
                _expr(LABEL_GPU_PRODUCT, "In", [str(self.gpu_product)]),
                _expr(LABEL_GPU_MEMORY, "Gt", [str(self.gpu_memory_mib - 1)]),
            ]
            if self.gpu_count_label is None:
                expressions.append(_expr(LABEL_GPU_COUNT, "DoesNotExist"))
            else:
                expressions.append(_expr(LABEL_GPU_COUNT, "In", [str(self.gpu_count_label)]))
            return expressions
        expressions.append(_expr(LABEL_GPU_PRESENT, "DoesNotExist"))
        if self.arch == AMD64:
            rank = CPU_LEVELS.index(self.cpu_level)
            for level in CPU_LEVELS[1:]:
                label = _LEVEL_LABELS[level]
                if CPU_LEVELS.index(level) == rank:
                    expressions.append(_expr(label, "In", ["true"]))
                elif CPU_LEVELS.index(level) > rank:
                    expressions.append(_expr(label, "NotIn", ["true"]))
        if self.instance_type is None:
            expressions.append(_expr(LABEL_INSTANCE_TYPE, "DoesNotExist"))
        else:
            expressions.append(_expr(LABEL_INSTANCE_TYPE, "In", [self.instance_type]))
        return expressions


def _expr(key: str, operator: str, values: list[str] | None = None) -> dict[str, Any]:
    expression: dict[str, Any] = {"key": key, "operator": operator}
    if values is not None:
        expression["values"] = values
    return expression


def _class_key(node: NodeInfo) -> tuple[Any, ...] | None:
    """The label values that decide a node's class; None for a GPU node GFD did not label."""
    if node.gpu_present:
        if node.gpu_product is None or node.gpu_memory_mib is None or node.gpus < 1:
            return None
        return ("gpu", node.arch, node.gpu_product, node.gpu_count_label)
    return ("cpu", node.arch, node.cpu_level, node.label_map.get(LABEL_INSTANCE_TYPE))


def group_classes(nodes: Iterable[NodeInfo]) -> list[HardwareClass]:
    """Group nodes into hardware classes (sorted by id)."""
    groups: dict[tuple[Any, ...], list[NodeInfo]] = {}
    for node in nodes:
        key = _class_key(node)
        if key is not None:
            groups.setdefault(key, []).append(node)
    classes = []
    for key, members in groups.items():
        names = tuple(sorted(n.name for n in members))
        cpu = min(n.cpu_millis for n in members)
        memory = min(n.memory_bytes for n in members)
        first = members[0]
        if key[0] == "gpu":
            capabilities = {n.compute_capability for n in members}
            classes.append(
                HardwareClass(
                    accelerator=Accelerator.GPU,
                    arch=first.arch,
                    nodes=names,
                    cpu_millis=cpu,
                    memory_bytes=memory,
                    gpu_product=first.gpu_product,
                    gpu_memory_mib=min(n.gpu_memory_mib or 0 for n in members),
                    gpus_per_node=min(n.gpus for n in members),
                    gpu_count_label=first.gpu_count_label,
                    compute_capability=min(capabilities, key=lambda c: c or (0, 0)),
                )
            )
        else:
            classes.append(
                HardwareClass(
                    accelerator=Accelerator.CPU,
                    arch=first.arch,
                    nodes=names,
                    cpu_millis=cpu,
                    memory_bytes=memory,
                    cpu_level=first.cpu_level,
                    instance_type=first.label_map.get(LABEL_INSTANCE_TYPE),
                )
            )
    return sorted(classes, key=lambda c: c.id)


class PlacementRefusal(Exception):  # noqa: N818 - a refusal is an answer, not a bug
    """No placement satisfies the spec: which field to change, and why."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field_path = field_path
        self.message = message


@dataclass(frozen=True)
class Placement:
    """The planner's decision for one ModelDeployment."""

    engine: Engine
    accelerator: Accelerator
    format: Format
    quantization: str
    hardware_class: HardwareClass
    gpus_per_replica: int
    tensor_parallel_size: int
    memory: MemoryEstimate
    context_length: int
    parallel: int
    threads: int | None
    gpu_layers: int | None
    compute_capability: tuple[int, int] | None
    requests: dict[str, str]
    limits: dict[str, str]
    tolerations: list[dict[str, Any]]
    node_selector: dict[str, str]
    reason: str
    architecture: ModelArchitecture | None = None

    @property
    def node_affinity(self) -> dict[str, Any]:
        """``spec.affinity.nodeAffinity`` admitting exactly the chosen class."""
        return {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": self.hardware_class.match_expressions()}]
            }
        }

    def decision(self) -> dict[str, Any]:
        """The decision as camelCase JSON (``status.decision`` and ``modeldeploy plan``)."""
        decision: dict[str, Any] = {
            "engine": str(self.engine),
            "accelerator": str(self.accelerator),
            "format": str(self.format),
            "quantization": self.quantization,
            "gpusPerReplica": self.gpus_per_replica,
            "tensorParallelSize": self.tensor_parallel_size,
            "estimatedMemoryBytes": self.memory.total_bytes,
            "memory": {
                "weightsBytes": self.memory.weights_bytes,
                "kvCacheBytes": self.memory.kv_cache_bytes,
                "overheadBytes": self.memory.overhead_bytes,
            },
            "parameters": self.memory.parameters,
            "hardwareClass": self.hardware_class.id,
            "nodeCount": len(self.hardware_class.nodes),
            "contextLength": self.context_length,
            "parallel": self.parallel,
        }
        if self.threads is not None:
            decision["threads"] = self.threads
        if self.gpu_layers is not None:
            decision["gpuLayers"] = self.gpu_layers
        decision["reason"] = self.reason
        return decision


@dataclass(frozen=True)
class _Candidate:
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


def nominal_memory_at_least(memory_mib: int, minimum: int) -> bool:
    """True when a GPU is sold with at least ``minimum`` of memory.

    GFD reports usable MiB, a little under the vendor's nominal size in GB (10^9 bytes):
    81559 MiB on an 80 GB H100, 23034 MiB on a 24 GB L4, 46068 MiB on a 48 GB L40S. So
    ``minMemoryGiB: 80`` must admit an H100 80GB: the minimum is compared as nominal GB.
    """
    return memory_mib * MIB >= minimum * 10**9


def tensor_parallel_sizes(
    max_gpus: int, architecture: ModelArchitecture | None, explicit: int | None
) -> list[int]:
    """TP sizes vLLM accepts: divisors of the attention heads, compatible with KV heads."""
    candidates = [explicit] if explicit is not None else list(_POWERS_OF_TWO)
    valid = []
    for size in candidates:
        if size > max_gpus:
            continue
        if architecture is not None:
            heads, kv_heads = architecture.attention_heads, architecture.kv_heads
            if heads and heads % size:
                continue
            if kv_heads and kv_heads % size and size % kv_heads:
                continue
        valid.append(size)
    return valid


def plan_placement(
    spec: ModelDeploymentSpec,
    nodes: Sequence[Mapping[str, Any]],
    config: OperatorConfig,
    artifact: ModelArchitecture | None = None,
) -> Placement:
    """Choose engine, hardware class, GPUs and engine settings, or raise PlacementRefusal."""
    return _Planner(spec, [parse_node(n) for n in nodes], config, artifact).plan()


class _Planner:
    """One planning run; methods share the resolved inputs."""

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
        if "nvidia.com/gpu" in self.spec.serving.resources.requests or (
            "nvidia.com/gpu" in self.spec.serving.resources.limits
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
        schedulable = self._schedulable()
        if not schedulable:
            raise PlacementRefusal(*self._no_nodes())
        tried: list[Accelerator] = []
        for option in options:
            candidates = [
                candidate
                for candidate in map(self._fit, self._classes(schedulable, option))
                if candidate is not None
            ]
            if candidates:
                best = min(candidates, key=_Candidate.sort_key)
                return self._placement(best, fell_back=bool(tried))
            tried.append(option)
        raise PlacementRefusal(*self._misfit(schedulable, tried))

    def _blocker(self, node: NodeInfo) -> str | None:
        """Why the serving pods cannot go to this node, or None."""
        labels = node.label_map
        if any(labels.get(k) != v for k, v in self.spec.hardware.node_selector.items()):
            return "nodeSelector"
        tolerations = [*self.user_tolerations]
        if node.gpu_present:
            tolerations.append(GPU_TOLERATION)
        return unschedulable_reason(node, tolerations)

    def _schedulable(self) -> list[NodeInfo]:
        return [node for node in self.nodes if self._blocker(node) is None]

    def _classes(self, nodes: list[NodeInfo], accelerator: Accelerator) -> list[HardwareClass]:
        arches = self.config.architectures_for(str(self.engine))
        return [
            cls
            for cls in group_classes(nodes)
            if cls.accelerator is accelerator and cls.arch in arches
        ]

    def _gpu_filter_reason(self, cls: HardwareClass) -> str | None:
        gpu = self.spec.hardware.gpu
        product = (cls.gpu_product or "").lower()
        if gpu.products and not any(p.lower() in product for p in gpu.products):
            return "products"
        if gpu.min_memory_gib is not None and not nominal_memory_at_least(
            cls.gpu_memory_mib, gpu.min_memory_gib
        ):
            return "minMemoryGiB"
        if self.engine is Engine.VLLM:
            needed = self.info.vllm_min_compute_capability or VLLM_MIN_COMPUTE_CAPABILITY
            if cls.compute_capability is None or cls.compute_capability < needed:
                return "computeCapability"
        if isinstance(gpu.count, int):
            if gpu.count > cls.gpus_per_node:
                return "count"
            if self.engine is Engine.VLLM and not tensor_parallel_sizes(
                gpu.count, self.artifact, gpu.count
            ):
                return "tensorParallel"
        return None

    def _estimate(self, devices: int, tp: int = 1) -> MemoryEstimate:
        return estimate_memory(
            quantization=self.quantization,
            engine=self.engine,
            context_length=self.context_length,
            parallel=self.parallel,
            parameters=self.parameters,
            architecture=self.artifact,
            devices=devices,
            tensor_parallel_size=tp,
        )

    def _fit(self, cls: HardwareClass) -> _Candidate | None:
        if cls.accelerator is Accelerator.CPU:
            estimate = self._estimate(1)
            needed = self._override_bytes("memory") or estimate.total_bytes
            return _Candidate(cls, 0, estimate) if needed <= cls.memory_bytes else None
        if self._gpu_filter_reason(cls) is not None:
            return None
        count = self.spec.hardware.gpu.count
        explicit = count if isinstance(count, int) else None
        if self.engine is Engine.VLLM:
            sizes = tensor_parallel_sizes(cls.gpus_per_node, self.artifact, explicit)
        else:
            sizes = [explicit] if explicit else list(range(1, cls.gpus_per_node + 1))
        usable_per_gpu = cls.gpu_memory_bytes * self.config.gpu_memory_utilization
        for gpus in sizes:
            tp = gpus if self.engine is Engine.VLLM else 1
            estimate = self._estimate(gpus, tp)
            host_memory = self._gpu_host_memory(gpus)
            if (
                estimate.total_bytes <= gpus * usable_per_gpu
                and host_memory <= cls.memory_bytes
                and self._gpu_cpu_millis(gpus, cls) <= cls.cpu_millis
            ):
                return _Candidate(cls, gpus, estimate)
        return None

    def _override_bytes(self, key: str) -> int | None:
        value = self.spec.serving.resources.requests.get(key)
        return None if value is None else quantity_bytes(value)

    def _gpu_host_memory(self, gpus: int) -> int:
        override = self._override_bytes("memory")
        if override is not None:
            return override
        if self.engine is Engine.VLLM:
            return (
                self.config.vllm_host_memory_base_bytes
                + gpus * self.config.vllm_host_memory_per_gpu_bytes
            )
        return self.config.llamacpp_gpu_host_memory_bytes

    def _gpu_cpu_millis(self, gpus: int, cls: HardwareClass) -> int:
        if self.engine is Engine.VLLM:
            cores = min(self.config.vllm_cpus_per_gpu * gpus, max(1, cls.cpu_millis // 2000))
        else:
            cores = min(self.config.gpu_llamacpp_threads, max(1, cls.cpu_millis // 1000))
        return cores * 1000

    def _threads(self, cls: HardwareClass) -> int:
        override = self.spec.serving.resources.requests.get("cpu")
        if override is not None:
            return max(1, cpu_millis(override) // 1000)
        if cls.accelerator is Accelerator.GPU:
            return self._gpu_cpu_millis(1, cls) // 1000
        cores = cls.cpu_millis // 1000
        return max(1, min(self.config.max_cpu_threads, cores * 3 // 4))

    def _placement(self, best: _Candidate, fell_back: bool) -> Placement:
        cls, estimate = best.cls, best.estimate
        gpu = cls.accelerator is Accelerator.GPU
        threads: int | None = None
        gpu_layers: int | None = None
        if self.engine is Engine.LLAMACPP:
            threads = self._threads(cls)
            layers = self.artifact.layers if self.artifact else None
            # All layers plus the output layer; 999 is llama.cpp's idiom for "all".
            gpu_layers = (layers + 1 if layers else 999) if gpu else 0
        requests: dict[str, str] = {}
        limits: dict[str, str] = {}
        if gpu:
            cpu = self._gpu_cpu_millis(best.gpus, cls)
            memory = self._gpu_host_memory(best.gpus)
            requests = {"cpu": _cpu(cpu), "memory": _mib(memory), GPU_RESOURCE: str(best.gpus)}
            limits = {"memory": _mib(memory), GPU_RESOURCE: str(best.gpus)}
        else:
            assert threads is not None
            memory = self._override_bytes("memory") or estimate.total_bytes
            requests = {"cpu": str(threads), "memory": _mib(memory)}
            limits = {"cpu": str(threads), "memory": _mib(memory)}
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
            tensor_parallel_size=best.gpus if self.engine is Engine.VLLM else 1,
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

    def _reason(self, best: _Candidate, fell_back: bool) -> str:
        cls, estimate = best.cls, best.estimate
        what = f"{self.format} {self.quantization} ({_billions(estimate.parameters)} parameters)"
        need = f"needs {_gib(estimate.total_bytes)} per replica"
        if cls.accelerator is Accelerator.GPU:
            where = (
                f"{self.engine} on {best.gpus} x {cls.gpu_product} "
                f"({_gib(cls.gpu_memory_bytes)} each)"
            )
            if self.engine is Engine.VLLM and best.gpus > 1:
                where += f" with tensor parallel size {best.gpus}"
            why = "the smallest GPU class that holds it"
        else:
            where = f"{self.engine} on CPU class {cls.id} ({_gib(cls.memory_bytes)})"
            why = "no GPU class holds it" if fell_back else "the smallest CPU class that holds it"
            if self.spec.hardware.accelerator == "cpu":
                why = "accelerator cpu was asked for; " + "the smallest CPU class that holds it"
        return f"{what} {need}; {where}: {why}"

    def _no_nodes(self) -> tuple[str, str]:
        if not self.nodes:
            return "spec.hardware", "the cluster has no nodes"
        reasons = [f"{node.name}: {self._blocker(node)}" for node in self.nodes]
        detail = "; ".join(reasons[:8]) + ("; ..." if len(reasons) > 8 else "")
        field_path = (
            "spec.hardware.nodeSelector"
            if self.spec.hardware.node_selector
            else "spec.hardware.tolerations"
        )
        return field_path, f"no node can take the pods ({detail})"

    def _misfit(self, schedulable: list[NodeInfo], tried: list[Accelerator]) -> tuple[str, str]:
        arches = self.config.architectures_for(str(self.engine))
        classes = [c for c in group_classes(schedulable) if c.arch in arches]
        gpu_classes = [c for c in classes if c.accelerator is Accelerator.GPU]
        cpu_classes = [c for c in classes if c.accelerator is Accelerator.CPU]
        # Only what the engine could have used: vLLM is not offered CPU nodes.
        offer = _offer(gpu_classes, cpu_classes if Accelerator.CPU in tried else [], self.config)
        if Accelerator.GPU in tried and gpu_classes:
            blockers = {c.id: self._gpu_filter_reason(c) for c in gpu_classes}
            reasons = [b for b in blockers.values() if b is not None]
            if len(reasons) == len(gpu_classes):
                binding = max(reasons, key=_GPU_FILTERS.index)
                stage = _GPU_FILTERS.index(binding)
                # The classes that passed every filter before the binding one.
                passed = [
                    c for c in gpu_classes if _GPU_FILTERS.index(str(blockers[c.id])) >= stage
                ]
                return self._filtered(gpu_classes, passed, binding)
        if tried == [Accelerator.GPU] and not gpu_classes:
            return self._no_gpu(_offer([], cpu_classes, self.config), arches)
        if tried == [Accelerator.CPU] and not cpu_classes:
            return (
                "spec.hardware.accelerator",
                _join(
                    f"cpu was asked for, but no CPU node ({', '.join(arches)}) can take the pods",
                    offer,
                ),
            )
        estimate = self._estimate(1)
        breakdown = (
            f"{_gib(estimate.total_bytes)} per replica (weights {_gib(estimate.weights_bytes)}"
            f" + KV cache {_gib(estimate.kv_cache_bytes)} for {self.context_length} tokens x "
            f"{self.parallel} sequences + overhead {_gib(estimate.overhead_bytes)}) for "
            f"{_billions(estimate.parameters)} parameters at {self.quantization}"
        )
        override = self.spec.serving.resources.requests.get("memory")
        if override is not None:
            breakdown += f", and the memory request is set to {override}"
        count = self.spec.hardware.gpu.count
        if isinstance(count, int):
            return (
                "spec.hardware.gpu.count",
                _join(
                    f"{count} GPUs per replica do not hold the model: it needs {breakdown}", offer
                ),
            )
        if estimate.kv_cache_bytes > estimate.weights_bytes:
            field_path, hint = (
                "spec.serving.contextLength",
                "lower contextLength or maxConcurrentRequests",
            )
        else:
            field_path, hint = "spec.model.quantization", "choose a smaller quantization"
        return field_path, _join(f"no node holds one replica: it needs {breakdown}", offer, hint)

    def _no_gpu(self, cpu_offer: str, arches: tuple[str, ...]) -> tuple[str, str]:
        where = f"no GPU node ({', '.join(arches)}) can take the pods"
        if cpu_offer:
            where += f"; {cpu_offer}"
        if self.spec.hardware.accelerator == "gpu":
            return "spec.hardware.accelerator", f"gpu was asked for, but {where}"
        if self.engine is Engine.LLAMACPP:
            return "spec.hardware.gpu", f"GPU settings were given, but {where}"
        field_path = (
            "spec.model.quantization"
            if self.spec.model.quantization != "auto"
            else "spec.model.format"
        )
        return (
            field_path,
            f"{self.format} {self.quantization} is served by vLLM, which needs a GPU, but "
            f"{where}; choose a GGUF quantization (e.g. Q4_K_M) to serve on CPU",
        )

    def _filtered(
        self, classes: list[HardwareClass], passed: list[HardwareClass], binding: str
    ) -> tuple[str, str]:
        gpu = self.spec.hardware.gpu
        if binding == "products":
            available = ", ".join(sorted({str(c.gpu_product) for c in classes}))
            return (
                "spec.hardware.gpu.products",
                f"no GPU node matches {', '.join(gpu.products)}; available: {available}",
            )
        if binding == "minMemoryGiB":
            largest = max(passed, key=lambda c: (c.gpu_memory_mib, c.id))
            return (
                "spec.hardware.gpu.minMemoryGiB",
                f"no GPU has {gpu.min_memory_gib} GiB; the largest has "
                f"{_gib(largest.gpu_memory_bytes)} ({largest.gpu_product})",
            )
        if binding == "computeCapability":
            needed = self.info.vllm_min_compute_capability or VLLM_MIN_COMPUTE_CAPABILITY
            have = ", ".join(
                f"{c.gpu_product} ({_capability(c.compute_capability)})" for c in passed
            )
            return (
                "spec.model.quantization",
                f"vLLM serves {self.quantization} only on GPUs of compute capability "
                f"{_capability(needed)} or newer; the GPU nodes here have {have}",
            )
        if binding == "count":
            most = max(c.gpus_per_node for c in passed)
            return (
                "spec.hardware.gpu.count",
                f"{gpu.count} GPUs per replica asked for; the largest GPU node has {most}",
            )
        heads = self.artifact.attention_heads if self.artifact else None
        return (
            "spec.hardware.gpu.count",
            f"{gpu.count} is not a valid tensor parallel size for a model with {heads} "
            "attention heads: it must divide them",
        )


def _offer(
    gpu_classes: list[HardwareClass], cpu_classes: list[HardwareClass], config: OperatorConfig
) -> str:
    """What the largest GPU node and the largest CPU node offer, in words."""
    offers = []
    if gpu_classes:
        biggest = max(gpu_classes, key=lambda c: (c.gpus_per_node * c.gpu_memory_mib, c.id))
        offers.append(
            f"the largest GPU node has {biggest.gpus_per_node} x {biggest.gpu_product} "
            f"({_gib(biggest.gpu_memory_bytes)} each, {config.gpu_memory_utilization:.0%} usable)"
        )
    if cpu_classes:
        largest = max(cpu_classes, key=lambda c: (c.memory_bytes, c.id))
        offers.append(f"the largest CPU node has {_gib(largest.memory_bytes)} ({largest.id})")
    return "; ".join(offers)


def _join(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


def _gib(value: float) -> str:
    return f"{value / GIB:.1f} GiB"


def _mib(value: int) -> str:
    return f"{math.ceil(value / MIB)}Mi"


def _cpu(millis: int) -> str:
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def _billions(parameters: int) -> str:
    return f"{parameters / 1e9:.1f}B" if parameters >= 1e9 else f"{parameters / 1e6:.0f}M"


def _capability(value: tuple[int, int] | None) -> str:
    return "unknown" if value is None else f"{value[0]}.{value[1]}"
