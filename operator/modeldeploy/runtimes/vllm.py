"""vLLM: the ``Runtime`` of ``vllm serve`` (safetensors checkpoints on NVIDIA GPUs).

Sizing: vLLM pages its KV cache (PagedAttention) and allocates blocks as tokens arrive;
the overhead is 2 GiB per GPU (CUDA context, CUDA graphs, NCCL buffers) plus the shared
share of the weights (docs/sizing.md). A replica spans a tensor-parallel group: the GPU
count must divide the attention heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from modeldeploy.catalog import Engine, vllm_quantization_argument
from modeldeploy.runtimes.base import (
    LoadGauges,
    TensorParallelGpuRuntime,
    has_flag,
)
from modeldeploy.sizing import GIB, SizingRules

if TYPE_CHECKING:
    from modeldeploy.config import OperatorConfig
    from modeldeploy.decision import Placement

BINARY = "vllm"
# Prometheus gauges (labelled per engine and model): running and queued requests, and the
# share of KV-cache blocks in use (vLLM >= 0.10 names it kv_cache_usage_perc, 0..1).
LOAD_GAUGES = LoadGauges(
    running="vllm:num_requests_running",
    waiting="vllm:num_requests_waiting",
    kv_cache_usage="vllm:kv_cache_usage_perc",
)
# Unquantized checkpoints are served in the dtype the spec names.
_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


def engine_args(
    placement: Placement, served_name: str, user_args: list[str], config: OperatorConfig
) -> list[str]:
    """Flags for ``vllm serve <model dir>``; the user's args come last and win."""
    args = [
        "--port",
        str(config.port),
        "--served-model-name",
        served_name,
        "--tensor-parallel-size",
        str(placement.tensor_parallel_size),
        "--max-model-len",
        str(placement.context_length),
        "--max-num-seqs",
        str(placement.parallel),
        "--gpu-memory-utilization",
        f"{config.gpu_memory_utilization:g}",
        "--enable-prefix-caching",
    ]
    return args + quantization_args(placement) + list(user_args)


def quantization_args(placement: Placement) -> list[str]:
    """``--quantization METHOD`` (Marlin kernels where the GPU has them) or ``--dtype``."""
    method = vllm_quantization_argument(placement.quantization, placement.compute_capability)
    if method is not None:
        return ["--quantization", method]
    if placement.quantization in _DTYPES:
        return ["--dtype", _DTYPES[placement.quantization]]
    return []


def engine_env() -> list[dict[str, str]]:
    """vLLM environment: offline (the model is local), no telemetry, caches in /tmp."""
    return [
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "DO_NOT_TRACK", "value": "1"},
        {"name": "VLLM_CACHE_ROOT", "value": "/tmp/vllm"},
    ]


def launch_argv(binary: str, model_dir: str, args: Sequence[str], *, host: str) -> list[str]:
    """``vllm serve MODEL_DIR [--host HOST] ARGS`` (the rendered flags, the user's last)."""
    argv = [binary, "serve", model_dir]
    if not has_flag(args, "--host"):
        argv += ["--host", host]
    return argv + list(args)


class VLLM(TensorParallelGpuRuntime):
    """vLLM: safetensors (16-bit, AWQ, GPTQ, FP8) on NVIDIA GPUs (``runtimes.base.Runtime``)."""

    engine = Engine.VLLM
    display_name = "vLLM"
    binary = BINARY
    binary_env = "MODELDEPLOY_VLLM"
    missing_binary_hint = "vllm not found on PATH (install vLLM, or set MODELDEPLOY_VLLM)"
    default_port = 8000
    load_gauges = LOAD_GAUGES
    flags = staticmethod(engine_args)
    command_line = staticmethod(launch_argv)
    sizing = SizingRules(engine="vllm", overhead_per_device=2 * GIB, paged_kv_cache=True)

    def image(self, config: OperatorConfig, gpu: bool) -> str:
        """The vLLM image (CUDA only)."""
        return config.vllm_image

    def architectures(self, config: OperatorConfig) -> tuple[str, ...]:
        """The CPU architectures the vLLM image is built for."""
        return config.vllm_architectures

    def engine_env(self) -> list[dict[str, str]]:
        """vLLM environment: offline, no telemetry, caches in /tmp."""
        return engine_env()


RUNTIME = VLLM()
