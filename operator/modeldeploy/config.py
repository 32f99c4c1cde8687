"""Operator settings the planner and the renderer read: images, headroom and limits.

This module owns ``OperatorConfig``, a frozen value with a default for everything, so that
planning and rendering are pure functions of (spec, nodes, config). How the running operator
fills it (environment, Helm values) belongs to the operator's entry point, not here.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modeldeploy import __version__

# The "nonroot" user of distroless images; every runtime image and the operator image run as it.
RUN_AS_USER = 65532
# The security contexts of model pods: the PodSecurity "restricted" profile. The container
# one applies to every container of the pod (the engine and the fetch init container).
POD_SECURITY_CONTEXT: Mapping[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "runAsGroup": RUN_AS_USER,
    "fsGroup": RUN_AS_USER,
    "fsGroupChangePolicy": "OnRootMismatch",
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: Mapping[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
}


@dataclass(frozen=True)
class OperatorConfig:
    """Settings for planning and rendering; every field has a working default."""

    # runtime-images/: llamacpp/Dockerfile (portable CPU), llamacpp/Dockerfile.cuda,
    # tensor-parallel/Dockerfile (vLLM and SGLang, by ENGINE build argument), operator/ (the
    # operator and the fetcher init container).
    llamacpp_image: str = f"ghcr.io/modeldeploy/llamacpp:{__version__}"
    llamacpp_gpu_image: str = f"ghcr.io/modeldeploy/llamacpp:{__version__}-cuda"
    vllm_image: str = f"ghcr.io/modeldeploy/vllm:{__version__}"
    sglang_image: str = f"ghcr.io/modeldeploy/sglang:{__version__}"
    operator_image: str = f"ghcr.io/modeldeploy/operator:{__version__}"
    image_pull_policy: str = "IfNotPresent"
    # CPU architectures each runtime image is built for; nodes of other arches are skipped.
    llamacpp_architectures: tuple[str, ...] = ("amd64", "arm64")
    vllm_architectures: tuple[str, ...] = ("amd64",)
    sglang_architectures: tuple[str, ...] = ("amd64",)
    # Share of each GPU's memory a replica may plan to use (vLLM --gpu-memory-utilization);
    # the rest absorbs fragmentation and other processes on the device.
    gpu_memory_utilization: float = 0.90
    # llama.cpp threads on CPU nodes follow the model (``sizing.cpu_threads``), at most this
    # many and at most three quarters of the smallest node's cores.
    max_cpu_threads: int = 16
    gpu_llamacpp_threads: int = 4
    # Host memory of GPU replicas (the weights live on the GPU): llama.cpp needs little;
    # vLLM loads safetensors through host memory and keeps shared memory for its workers.
    llamacpp_gpu_host_memory_bytes: int = 4 * 1024**3
    vllm_host_memory_base_bytes: int = 8 * 1024**3
    vllm_host_memory_per_gpu_bytes: int = 4 * 1024**3
    vllm_cpus_per_gpu: int = 4
    # Cache volume: "auto" sizes it at the weights times this, at least min_cache_bytes.
    cache_headroom: float = 1.25
    min_cache_bytes: int = 1024**3
    cache_mount_path: str = "/models"
    # Non-secret settings for reaching model sources (HF_ENDPOINT, AWS_ENDPOINT_URL, ...;
    # fetch.envvars.SETTINGS_VARS): the operator resolves with them and every fetch init
    # container gets them as env values.
    source_settings: tuple[tuple[str, str], ...] = ()
    port: int = 8000
    service_type: str = "ClusterIP"
    termination_grace_period_seconds: int = 60
    # securityContext of model pods (core/v1 PodSecurityContext) and of each of their
    # containers (core/v1 SecurityContext), as given: the chart's planning settings.
    pod_security_context: Mapping[str, Any] = field(
        default_factory=lambda: copy.deepcopy(dict(POD_SECURITY_CONTEXT))
    )
    container_security_context: Mapping[str, Any] = field(
        default_factory=lambda: copy.deepcopy(dict(CONTAINER_SECURITY_CONTEXT))
    )
    # Autoscaling modes keda and hpa (docs/autoscaling.md): the Prometheus that KEDA's
    # trigger queries, how often KEDA asks it, and the Pods metric prometheus-adapter serves.
    prometheus_server_address: str = "http://prometheus-operated.monitoring.svc:9090"
    keda_polling_interval_seconds: int = 15
    hpa_metric_name: str = "modeldeploy_requests_in_flight"
    # Prices (docs/placement.md): per hour of one GPU by its nvidia.com/gpu.product value, per
    # vCPU-hour and GiB-hour of CPU classes; ``price_label`` splits classes by a node label
    # (a spot/on-demand marker) whose values scale the price. With any price set, the
    # planner picks the cheapest class that fits instead of the smallest.
    gpu_prices_per_hour: Mapping[str, float] = field(default_factory=dict)
    cpu_price_per_vcpu_hour: float | None = None
    memory_price_per_gib_hour: float | None = None
    price_label: str | None = None
    price_label_multipliers: Mapping[str, float] = field(default_factory=dict)
    # A ModelDeployment whose pods stay unschedulable this long on its class is re-planned
    # onto another class (each class at most once per generation, so it never flaps).
    replan_after_seconds: int = 120
    # With the gateway (docs/gateway.md), which holds requests while a model has no pod and
    # signals the operator at once: autoscaling minReplicas 0 scales to zero. Without it,
    # minReplicas 0 acts as 1 (nothing would wake the model).
    scale_to_zero: bool = False
    # NetworkPolicyPeer objects allowed to reach model pods on the serving port (the gateway's
    # and the operator's pods; the chart fills it with gateway.enabled). Non-empty: every
    # ModelDeployment gets a NetworkPolicy admitting only them (render/network_policy.py).
    model_ingress_from: tuple[Mapping[str, Any], ...] = ()

    @property
    def priced(self) -> bool:
        """Whether any price is set (then placement minimises cost)."""
        return bool(
            self.gpu_prices_per_hour
            or self.cpu_price_per_vcpu_hour is not None
            or self.memory_price_per_gib_hour is not None
        )
