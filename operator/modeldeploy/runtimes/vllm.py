"""vLLM: the ``Runtime`` of ``vllm serve`` (safetensors checkpoints on NVIDIA GPUs).

Sizing: vLLM pages its KV cache (PagedAttention) and allocates blocks as tokens arrive;
the overhead is 2 GiB per GPU (CUDA context, CUDA graphs, NCCL buffers) plus the shared
share of the weights (docs/sizing.md). A replica spans a tensor-parallel group: the GPU
count must divide the attention heads. What vLLM shares with SGLang is
``runtimes.base.TensorParallelGpuRuntime``'s.
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


def plan_flags(placement: Placement, config: OperatorConfig) -> list[str]:
    """``vllm serve``'s flags for what the plan fixes (the base adds port and served name)."""
    return [
        "--tensor-parallel-size",
        str(placement.tensor_parallel_size),
        "--max-model-len",
        str(placement.context_length),
        "--max-num-seqs",
        str(placement.parallel),
        "--gpu-memory-utilization",
        f"{config.gpu_memory_utilization:g}",
        "--enable-prefix-caching",
        *quantization_args(placement),
    ]


def quantization_args(placement: Placement) -> list[str]:
    """``--quantization METHOD`` (Marlin kernels where the GPU has them) or ``--dtype``."""
    method = vllm_quantization_argument(placement.quantization, placement.compute_capability)
    if method is not None:
        return ["--quantization", method]
    if placement.quantization in _DTYPES:
        return ["--dtype", _DTYPES[placement.quantization]]
    return []


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
    # LoRAConfig (vllm/config/lora.py) and the OpenAI server's LoRAParserAction: NAME=PATH
    # entries, served under NAME in /v1/models and by a request's "model".
    lora_slots_flag = "--max-loras"
    lora_modules_flag = "--lora-modules"
    # Beside the offline variables: no usage statistics, caches in /tmp (read-only root).
    own_env = (
        ("VLLM_NO_USAGE_STATS", "1"),
        ("DO_NOT_TRACK", "1"),
        ("VLLM_CACHE_ROOT", "/tmp/vllm"),
    )
    flags = staticmethod(plan_flags)
    command_line = staticmethod(launch_argv)

    def image(self, config: OperatorConfig, gpu: bool) -> str:
        """The vLLM image (CUDA only)."""
        return config.vllm_image

    def architectures(self, config: OperatorConfig) -> tuple[str, ...]:
        """The CPU architectures the vLLM image is built for."""
        return config.vllm_architectures


RUNTIME = VLLM()
