"""vLLM: ``vllm serve`` flags and environment from a placement, and its command line."""

from __future__ import annotations

from collections.abc import Sequence

from modeldeploy.catalog import vllm_quantization_argument
from modeldeploy.config import OperatorConfig
from modeldeploy.hardware import Placement
from modeldeploy.runtimes import has_flag

BINARY = "vllm"
# Prometheus gauges (labelled per engine and model) of running and queued requests.
BUSY_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting")

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


def launch_argv(binary: str, model_dir: str, args: Sequence[str], *, host: str) -> list[str]:
    """``vllm serve MODEL_DIR [--host HOST] ARGS`` (the rendered flags, the user's last)."""
    argv = [binary, "serve", model_dir]
    if not has_flag(args, "--host"):
        argv += ["--host", host]
    return argv + list(args)
