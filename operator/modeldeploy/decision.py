"""The planner's answer: a ``Placement`` (engine, hardware class, GPUs, engine settings,
requests and limits, the reason) or a ``PlacementRefusal`` naming the field to change.

Value types only, so that runtimes, rendering and status can read a decision without the
planner. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modeldeploy.catalog import Accelerator, Engine, Format
from modeldeploy.nodes import HardwareClass
from modeldeploy.sizing import MemoryEstimate, ModelArchitecture


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
    cost_per_replica: float | None = None  # per hour, when the settings price the class
    cost_replicas: int = 1  # the replicas the total covers (maxReplicas under autoscaling)
    avoided: tuple[str, ...] = ()  # classes re-planned away from in this generation

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
        if self.cost_per_replica is not None:
            decision["costPerReplicaPerHour"] = self.cost_per_replica
            decision["costPerHour"] = round(self.cost_per_replica * self.cost_replicas, 4)
        if self.avoided:
            decision["avoidedClasses"] = list(self.avoided)
        decision["reason"] = self.reason
        return decision
