"""The wording of placement refusals: which field to change, what was needed, what is offered.

Each function takes the ``placement.Planner`` of the run that failed and returns
``(field_path, message)`` for a ``PlacementRefusal``. Engine facts in the words (which
engine needs a GPU, the oldest GPU it serves a quantization on) come from the planner's
``Runtime``. Pure: no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modeldeploy.catalog import ACCELERATORS_FOR_ENGINE, Accelerator
from modeldeploy.config import OperatorConfig
from modeldeploy.nodes import HardwareClass, NodeInfo, group_classes
from modeldeploy.sizing import GIB

if TYPE_CHECKING:
    from modeldeploy.placement import Planner

# GPU class filters in the order the planner applies them; a refusal names the last one
# that bit.
GPU_FILTERS = ("products", "minMemoryGiB", "computeCapability", "count", "tensorParallel")


def no_nodes(planner: Planner) -> tuple[str, str]:
    """No node at all can take the serving pods (selectors, taints, readiness)."""
    if not planner.nodes:
        return "spec.hardware", "the cluster has no nodes"
    reasons = [f"{node.name}: {planner.blocker(node)}" for node in planner.nodes]
    detail = "; ".join(reasons[:8]) + ("; ..." if len(reasons) > 8 else "")
    field_path = (
        "spec.hardware.nodeSelector"
        if planner.spec.hardware.node_selector
        else "spec.hardware.tolerations"
    )
    return field_path, f"no node can take the pods ({detail})"


def misfit(
    planner: Planner, schedulable: list[NodeInfo], tried: list[Accelerator]
) -> tuple[str, str]:
    """Nodes exist, but no hardware class of the accelerators ``tried`` holds one replica."""
    arches = planner.runtime.architectures(planner.config)
    classes = [c for c in group_classes(schedulable) if c.arch in arches]
    gpu_classes = [c for c in classes if c.accelerator is Accelerator.GPU]
    cpu_classes = [c for c in classes if c.accelerator is Accelerator.CPU]
    # Only what the engine could have used: a GPU-only engine is not offered CPU nodes.
    offer = _offer(gpu_classes, cpu_classes if Accelerator.CPU in tried else [], planner.config)
    if Accelerator.GPU in tried and gpu_classes:
        blockers = {c.id: planner.gpu_filter_reason(c) for c in gpu_classes}
        reasons = [b for b in blockers.values() if b is not None]
        if len(reasons) == len(gpu_classes):
            binding = max(reasons, key=GPU_FILTERS.index)
            stage = GPU_FILTERS.index(binding)
            # The classes that passed every filter before the binding one.
            passed = [c for c in gpu_classes if GPU_FILTERS.index(str(blockers[c.id])) >= stage]
            return _filtered(planner, gpu_classes, passed, binding)
    if tried == [Accelerator.GPU] and not gpu_classes:
        return _no_gpu(planner, _offer([], cpu_classes, planner.config), arches)
    if tried == [Accelerator.CPU] and not cpu_classes:
        return (
            "spec.hardware.accelerator",
            _join(
                f"cpu was asked for, but no CPU node ({', '.join(arches)}) can take the pods",
                offer,
            ),
        )
    estimate = planner.estimate(1)
    breakdown = (
        f"{gib(estimate.total_bytes)} per replica (weights {gib(estimate.weights_bytes)}"
        f" + KV cache {gib(estimate.kv_cache_bytes)} for {planner.context_length} tokens x "
        f"{planner.parallel} sequences + overhead {gib(estimate.overhead_bytes)}) for "
        f"{billions(estimate.parameters)} parameters at {planner.quantization}"
    )
    override = planner.spec.serving.resources.requests.get("memory")
    if override is not None:
        breakdown += f", and the memory request is set to {override}"
    count = planner.spec.hardware.gpu.count
    if isinstance(count, int):
        return (
            "spec.hardware.gpu.count",
            _join(f"{count} GPUs per replica do not hold the model: it needs {breakdown}", offer),
        )
    if estimate.kv_cache_bytes > estimate.weights_bytes:
        field_path, hint = (
            "spec.serving.contextLength",
            "lower contextLength or maxConcurrentRequests",
        )
    else:
        field_path, hint = "spec.model.quantization", "choose a smaller quantization"
    return field_path, _join(f"no node holds one replica: it needs {breakdown}", offer, hint)


def _no_gpu(planner: Planner, cpu_offer: str, arches: tuple[str, ...]) -> tuple[str, str]:
    where = f"no GPU node ({', '.join(arches)}) can take the pods"
    if cpu_offer:
        where += f"; {cpu_offer}"
    if planner.spec.hardware.accelerator == "gpu":
        return "spec.hardware.accelerator", f"gpu was asked for, but {where}"
    if Accelerator.CPU in ACCELERATORS_FOR_ENGINE[planner.engine]:
        return "spec.hardware.gpu", f"GPU settings were given, but {where}"
    field_path = (
        "spec.model.quantization"
        if planner.spec.model.quantization != "auto"
        else "spec.model.format"
    )
    return (
        field_path,
        f"{planner.format} {planner.quantization} is served by {planner.runtime.display_name}, "
        f"which needs a GPU, but {where}; choose a GGUF quantization (e.g. Q4_K_M) to serve "
        "on CPU",
    )


def _filtered(
    planner: Planner, classes: list[HardwareClass], passed: list[HardwareClass], binding: str
) -> tuple[str, str]:
    gpu = planner.spec.hardware.gpu
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
            f"{gib(largest.gpu_memory_bytes)} ({largest.gpu_product})",
        )
    if binding == "computeCapability":
        needed = planner.runtime.min_compute_capability(planner.info)
        have = ", ".join(f"{c.gpu_product} ({_capability(c.compute_capability)})" for c in passed)
        return (
            "spec.model.quantization",
            f"{planner.runtime.display_name} serves {planner.quantization} only on GPUs of "
            f"compute capability {_capability(needed)} or newer; the GPU nodes here have {have}",
        )
    if binding == "count":
        most = max(c.gpus_per_node for c in passed)
        return (
            "spec.hardware.gpu.count",
            f"{gpu.count} GPUs per replica asked for; the largest GPU node has {most}",
        )
    heads = planner.artifact.attention_heads if planner.artifact else None
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
            f"({gib(biggest.gpu_memory_bytes)} each, {config.gpu_memory_utilization:.0%} usable)"
        )
    if cpu_classes:
        largest = max(cpu_classes, key=lambda c: (c.memory_bytes, c.id))
        offers.append(f"the largest CPU node has {gib(largest.memory_bytes)} ({largest.id})")
    return "; ".join(offers)


def _join(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


def gib(value: float) -> str:
    """Bytes in GiB with one decimal, for messages."""
    return f"{value / GIB:.1f} GiB"


def billions(parameters: int) -> str:
    """A parameter count as ``7.6B`` or ``270M``."""
    return f"{parameters / 1e9:.1f}B" if parameters >= 1e9 else f"{parameters / 1e6:.0f}M"


def _capability(value: tuple[int, int] | None) -> str:
    return "unknown" if value is None else f"{value[0]}.{value[1]}"
