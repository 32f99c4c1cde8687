"""SGLang: the ``Runtime`` of ``python3 -m sglang.launch_server`` (safetensors on NVIDIA GPUs).

Chosen only when a spec asks for ``engine: sglang``; ``auto`` keeps vLLM for safetensors.
Flags from SGLang's server arguments (docs.sglang.io, "Server Arguments"): ``--model-path``,
``--tp-size``, ``--context-length``, ``--served-model-name``, ``--host``/``--port``,
``--mem-fraction-static`` (the share of GPU memory for weights plus the KV pool),
``--max-running-requests``, ``--enable-metrics``; health on ``/health``; Prometheus
metrics on ``/metrics`` ("Production Metrics": ``sglang:num_running_reqs``,
``sglang:num_queue_reqs``, ``sglang:token_usage``, the share of the KV pool in use).

Sizing: SGLang keeps a token-level KV pool (RadixAttention) allocated as tokens arrive, so
it is sized like vLLM's paged cache; the overhead per GPU is that of vLLM (CUDA context,
CUDA graphs, NCCL). Tensor parallelism splits attention heads as vLLM's does, and SGLang
uses ``/dev/shm`` between its tokenizer, scheduler and detokenizer processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from modeldeploy.catalog import Engine
from modeldeploy.runtimes.base import (
    LoadGauges,
    TensorParallelGpuRuntime,
    has_flag,
)
from modeldeploy.runtimes.vllm import quantization_args

if TYPE_CHECKING:
    from modeldeploy.config import OperatorConfig
    from modeldeploy.decision import Placement

PYTHON = "python3"
MODULE = "sglang.launch_server"
DEFAULT_PORT = 30000  # SGLang's own default
LOAD_GAUGES = LoadGauges(
    running="sglang:num_running_reqs",
    waiting="sglang:num_queue_reqs",
    kv_cache_usage="sglang:token_usage",
)


def plan_flags(placement: Placement, config: OperatorConfig) -> list[str]:
    """``sglang.launch_server``'s flags for what the plan fixes (vLLM's quantization flags)."""
    return [
        "--tp-size",
        str(placement.tensor_parallel_size),
        "--context-length",
        str(placement.context_length),
        "--max-running-requests",
        str(placement.parallel),
        "--mem-fraction-static",
        f"{config.gpu_memory_utilization:g}",
        "--enable-metrics",
        *quantization_args(placement),
    ]


def launch_argv(binary: str, model_dir: str, args: Sequence[str], *, host: str) -> list[str]:
    """``python3 -m sglang.launch_server --model-path DIR [--host HOST] ARGS``."""
    argv = [binary, "-m", MODULE]
    if not has_flag(args, "--model-path", "--model"):
        argv += ["--model-path", model_dir]
    if not has_flag(args, "--host"):
        # SGLang binds one address; the first of a comma list is the pod IP.
        argv += ["--host", host.split(",", maxsplit=1)[0]]
    return argv + list(args)


class SGLang(TensorParallelGpuRuntime):
    """SGLang: safetensors (16-bit, AWQ, GPTQ, FP8) on NVIDIA GPUs (``runtimes.base.Runtime``)."""

    engine = Engine.SGLANG
    display_name = "SGLang"
    binary = PYTHON
    binary_env = "MODELDEPLOY_SGLANG_PYTHON"
    missing_binary_hint = (
        "python3 with SGLang not found on PATH (install sglang, or set "
        "MODELDEPLOY_SGLANG_PYTHON to its interpreter)"
    )
    default_port = DEFAULT_PORT
    load_gauges = LOAD_GAUGES
    # ServerArgs (sglang/srt/server_args.py): NAME=PATH entries; an OpenAI request reaches
    # one as "model": "BASE:NAME" (docs.sglang.io, LoRA serving).
    lora_slots_flag = "--max-loras-per-batch"
    lora_modules_flag = "--lora-paths"
    # Beside the offline variables: caches in /tmp (the root filesystem is read-only).
    own_env = (("XDG_CACHE_HOME", "/tmp/cache"), ("TRITON_CACHE_DIR", "/tmp/triton"))
    flags = staticmethod(plan_flags)
    command_line = staticmethod(launch_argv)

    def image(self, config: OperatorConfig, gpu: bool) -> str:
        """The SGLang image (CUDA only)."""
        return config.sglang_image

    def architectures(self, config: OperatorConfig) -> tuple[str, ...]:
        """The CPU architectures the SGLang image is built for."""
        return config.sglang_architectures


RUNTIME = SGLang()
