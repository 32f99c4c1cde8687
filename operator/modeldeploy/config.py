"""Operator settings the planner and the renderer read: images, headroom and limits.

This module owns ``OperatorConfig``, a frozen value with a default for everything, so that
planning and rendering are pure functions of (spec, nodes, config). How the running operator
fills it (environment, Helm values) belongs to the operator's entry point, not here.
"""

from __future__ import annotations

from dataclasses import dataclass

from modeldeploy import __version__


@dataclass(frozen=True)
class OperatorConfig:
    """Settings for planning and rendering; every field has a working default."""

    # runtime-images/: llamacpp/Dockerfile (portable CPU), llamacpp/Dockerfile.cuda, vllm/,
    # operator/ (the operator and the fetcher init container).
    llamacpp_image: str = f"ghcr.io/modeldeploy/llamacpp:{__version__}"
    llamacpp_gpu_image: str = f"ghcr.io/modeldeploy/llamacpp:{__version__}-cuda"
    vllm_image: str = f"ghcr.io/modeldeploy/vllm:{__version__}"
    operator_image: str = f"ghcr.io/modeldeploy/operator:{__version__}"
    image_pull_policy: str = "IfNotPresent"
    # CPU architectures each runtime image is built for; nodes of other arches are skipped.
    llamacpp_architectures: tuple[str, ...] = ("amd64", "arm64")
    vllm_architectures: tuple[str, ...] = ("amd64",)
    # Share of each GPU's memory a replica may plan to use (vLLM --gpu-memory-utilization);
    # the rest absorbs fragmentation and other processes on the device.
    gpu_memory_utilization: float = 0.90
    # llama.cpp threads: three quarters of the smallest node's cores, at most this many
    # (token generation is memory-bound and stops scaling well before all cores).
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
    # fetch.resolve.SETTINGS_VARS): the operator resolves with them and every fetch init
    # container gets them as env values.
    source_settings: tuple[tuple[str, str], ...] = ()
    port: int = 8000
    service_type: str = "ClusterIP"
    termination_grace_period_seconds: int = 60

    def image_for(self, engine: str, gpu: bool = False) -> str:
        """The runtime image of an engine (llama.cpp's CUDA build for GPU placements)."""
        if engine == "vllm":
            return self.vllm_image
        return self.llamacpp_gpu_image if gpu else self.llamacpp_image

    def architectures_for(self, engine: str) -> tuple[str, ...]:
        """The CPU architectures an engine's image runs on."""
        return self.vllm_architectures if engine == "vllm" else self.llamacpp_architectures
