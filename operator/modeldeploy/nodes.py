"""Nodes and hardware classes: what placement reads from Node objects and how it groups them.

Nodes arrive as plain dicts (what ``kubectl get nodes -o yaml`` prints). Their hardware is
read from the labels GPU Feature Discovery and Node Feature Discovery publish plus
allocatable resources, and the nodes that can take a pod (Ready, schedulable, every
NoSchedule/NoExecute taint tolerated) are grouped into hardware classes:

- GPU class: architecture + ``nvidia.com/gpu.product`` + GPUs per node; its memory per GPU
  is the smallest ``nvidia.com/gpu.memory`` among its nodes (the product name fixes it);
- CPU class: architecture + CPU feature level (amx > avx512 > avx2 > baseline, from NFD's
  ``cpu-cpuid`` labels) + ``node.kubernetes.io/instance-type``; its memory and cores are the
  smallest allocatable among its nodes, so every node of a class can hold a replica.

Each class is defined by label values only, so one node-affinity term admits every node of
it and no other. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modeldeploy.catalog import Accelerator, compute_capability
from modeldeploy.quantity import cpu_millis, parse_quantity, quantity_bytes
from modeldeploy.sizing import MIB

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
    # The price label (``OperatorConfig.price_label``) and its value on these nodes (None:
    # the nodes lack it), when classes are split by it.
    price_label: tuple[str, str | None] | None = None

    @property
    def id(self) -> str:
        """A readable identifier: ``gpu/amd64/NVIDIA-L4/x1`` or ``cpu/amd64/avx2/c5a.4xlarge``.

        Classes split by a price label end in its value (``/spot``), or ``/-`` without it.
        """
        if self.accelerator is Accelerator.GPU:
            parts = ["gpu", self.arch, str(self.gpu_product), f"x{self.gpus_per_node}"]
        else:
            parts = ["cpu", self.arch, self.cpu_level]
            if self.instance_type:
                parts.append(self.instance_type)
        if self.price_label is not None:
            parts.append(self.price_label[1] or "-")
        return "/".join(parts)

    @property
    def gpu_memory_bytes(self) -> int:
        """Memory of one GPU in bytes."""
        return self.gpu_memory_mib * MIB

    def match_expressions(self) -> list[dict[str, Any]]:
        """Node-affinity expressions that admit every node of this class and no other."""
        expressions: list[dict[str, Any]] = [_expr(LABEL_ARCH, "In", [self.arch])]
        if self.price_label is not None:
            key, value = self.price_label
            expressions.append(
                _expr(key, "DoesNotExist") if value is None else _expr(key, "In", [value])
            )
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


def _class_key(node: NodeInfo, split_label: str | None) -> tuple[Any, ...] | None:
    """The label values that decide a node's class; None for a GPU node GFD did not label."""
    split = node.label_map.get(split_label) if split_label else None
    if node.gpu_present:
        if node.gpu_product is None or node.gpu_memory_mib is None or node.gpus < 1:
            return None
        return ("gpu", node.arch, node.gpu_product, node.gpu_count_label, split)
    return ("cpu", node.arch, node.cpu_level, node.label_map.get(LABEL_INSTANCE_TYPE), split)


def group_classes(nodes: Iterable[NodeInfo], split_label: str | None = None) -> list[HardwareClass]:
    """Group nodes into hardware classes (sorted by id), also by ``split_label``'s value."""
    groups: dict[tuple[Any, ...], list[NodeInfo]] = {}
    for node in nodes:
        key = _class_key(node, split_label)
        if key is not None:
            groups.setdefault(key, []).append(node)
    classes = []
    for key, members in groups.items():
        names = tuple(sorted(n.name for n in members))
        cpu = min(n.cpu_millis for n in members)
        memory = min(n.memory_bytes for n in members)
        first = members[0]
        price_label = (split_label, key[-1]) if split_label else None
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
                    price_label=price_label,
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
                    price_label=price_label,
                )
            )
    return sorted(classes, key=lambda c: c.id)


def nominal_memory_at_least(memory_mib: int, minimum: int) -> bool:
    """True when a GPU is sold with at least ``minimum`` of memory.

    GFD reports usable MiB, a little under the vendor's nominal size in GB (10^9 bytes):
    81559 MiB on an 80 GB H100, 23034 MiB on a 24 GB L4, 46068 MiB on a 48 GB L40S. So
    ``minMemoryGiB: 80`` must admit an H100 80GB: the minimum is compared as nominal GB.
    """
    return memory_mib * MIB >= minimum * 10**9
