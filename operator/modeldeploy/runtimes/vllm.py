"""vLLM: ``vllm serve`` flags and environment from a placement."""

from __future__ import annotations

from modeldeploy.catalog import vllm_quantization_argument
from modeldeploy.config import OperatorConfig
from modeldeploy.hardware import Placement

# Unquantized checkpoints are served in the dtype the spec names.
_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


def engine_args(
    placement: Placement, served_name: str, user_args: list[str], config: OperatorConfig
) -> list[str]:
    """Flags for ``vllm serve <model dir>``; the user's args come last and win."""
    args = [
        "--host",
        "0.0.0.0",
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
    method = vllm_quantization_argument(placement.quantization, placement.compute_capability)
    if method is not None:
        args += ["--quantization", method]
    elif placement.quantization in _DTYPES:
        args += ["--dtype", _DTYPES[placement.quantization]]
    return args + list(user_args)


def engine_env() -> list[dict[str, str]]:
    """vLLM environment: offline (the model is local), no telemetry, caches in /tmp."""
    return [
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "DO_NOT_TRACK", "value": "1"},
        {"name": "VLLM_CACHE_ROOT", "value": "/tmp/vllm"},
    ]
