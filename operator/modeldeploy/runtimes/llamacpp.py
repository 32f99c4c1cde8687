"""llama.cpp: the ``Runtime`` of ``llama-server`` (GGUF on CPUs and GPUs).

``engine_args`` is what the operator renders into the container's args; ``launch_argv`` is
what the launcher runs once the model file is known. A GGUF without a chat template gets
one from ``templates/`` by architecture (``chat_template_for``), unless the spec's args or
environment name one: llama-server would otherwise fall back to ChatML, which a model not
trained on it answers badly.

Sizing: llama-server allocates ``--ctx-size`` (context x parallel slots) up front, so the
KV cache counts every slot in full; the overhead is 1 GiB per device (process, compute
buffers at n_ubatch 512, CUDA context) plus the shared share of the weights
(docs/sizing.md). On GPUs every layer is offloaded and a few threads feed the GPU.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from modeldeploy.catalog import Engine, QuantizationInfo
from modeldeploy.runtimes.base import LaunchAdapter, LaunchRequest, LoadGauges, has_flag
from modeldeploy.sizing import GIB, ModelArchitecture, SizingRules

if TYPE_CHECKING:
    from modeldeploy.config import OperatorConfig
    from modeldeploy.decision import Placement

BINARY = "llama-server"
# Prometheus gauges (--metrics): requests in a slot, and requests waiting for one. Note
# requests_processing never exceeds --parallel: the queue is requests_deferred.
LOAD_GAUGES = LoadGauges(
    running="llamacpp:requests_processing", waiting="llamacpp:requests_deferred"
)
MODEL_FLAGS = ("-m", "--model")
HOST_FLAGS = ("--host",)
THREAD_FLAGS = ("-t", "--threads")
TEMPLATE_FLAGS = ("--chat-template", "--chat-template-file")
TEMPLATE_ENV = ("LLAMA_ARG_CHAT_TEMPLATE", "LLAMA_ARG_CHAT_TEMPLATE_FILE")
# Architectures (GGUF general.architecture) whose chat format we ship a template for.
_TEMPLATES = {
    "gemma": "gemma.jinja",
    "gemma2": "gemma.jinja",
    "gemma3": "gemma.jinja",
    "gemma3n": "gemma.jinja",
}
_SPLIT_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


def engine_args(
    placement: Placement, served_name: str, user_args: list[str], config: OperatorConfig
) -> list[str]:
    """Flags for ``llama-server -m <model>``; the user's args come last and win."""
    # llama-server splits --ctx-size evenly across its --parallel slots.
    total_context = placement.context_length * placement.parallel
    # Only GPU placements name GPU layers: a CPU build warns about the flag at every start.
    offload = ["--n-gpu-layers", str(placement.gpu_layers)] if placement.gpu_layers else []
    return [
        "--port",
        str(config.port),
        "--alias",
        served_name,
        "--ctx-size",
        str(total_context),
        "--parallel",
        str(placement.parallel),
        "--threads",
        str(placement.threads or 1),
        *offload,
        "--metrics",
        *user_args,
    ]


def lora_scaled(adapters: Sequence[LaunchAdapter]) -> str:
    """``--lora-scaled``'s value: every adapter at global scale 0, ids in spec order.

    A request applies an adapter by naming it (the adapter router sets its ``lora`` field);
    at scale 0 nothing else does, embeddings included. ``--lora-init-without-apply`` would
    say the same, but this build leaves the global scale at 1 with it (llama.cpp issue
    28674). The value is ``FILE:SCALE,...``, so a path may hold neither ":" nor ",".
    """
    for adapter in adapters:
        if any(c in str(adapter.path) for c in ":,"):
            raise ValueError(f"adapter {adapter.name}: llama-server cannot load {adapter.path}")
    return ",".join(f"{adapter.path}:0" for adapter in adapters)


def template_path(name: str) -> Path:
    """A chat template shipped in this package."""
    return Path(str(files("modeldeploy.runtimes").joinpath("templates", name)))


def chat_template_for(
    architecture: str | None,
    model_has_template: bool,
    args: Sequence[str],
    env: Mapping[str, str],
) -> Path | None:
    """The template file to add, or None: the model has one, the spec names one, or unknown."""
    if model_has_template or has_flag(args, *TEMPLATE_FLAGS):
        return None
    if any(env.get(name) for name in TEMPLATE_ENV):
        return None
    name = _TEMPLATES.get((architecture or "").lower())
    return template_path(name) if name else None


def first_shard(names: Sequence[str]) -> str:
    """The file to pass to ``-m``: the only GGUF, or shard 1 of a split set (projectors aside)."""
    ggufs = sorted(n for n in names if n.lower().endswith(".gguf") and "mmproj" not in n.lower())
    if not ggufs:
        raise ValueError("no .gguf file among " + (", ".join(sorted(names)) or "no files"))
    firsts = [n for n in ggufs if (m := _SPLIT_SHARD.search(n)) and int(m.group(1)) == 1]
    if len(firsts) == 1:
        return firsts[0]
    singles = [n for n in ggufs if not _SPLIT_SHARD.search(n)]
    if len(singles) == 1 and not firsts:
        return singles[0]
    raise ValueError("more than one model among " + ", ".join(ggufs) + "; select one file")


def launch_argv(
    binary: str,
    model: str,
    args: Sequence[str],
    *,
    host: str,
    threads: int | None,
    chat_template: Path | None = None,
) -> list[str]:
    """``llama-server -m MODEL [--host] [--threads] [--jinja --chat-template-file] ARGS``.

    What the rendered args (or the user's, which come last) already set is not added:
    llama-server takes the last occurrence of a flag, so the user's always win anyway.
    """
    argv = [binary]
    if not has_flag(args, *MODEL_FLAGS):
        argv += ["-m", model]
    if not has_flag(args, *HOST_FLAGS):
        argv += ["--host", host]
    if threads is not None and not has_flag(args, *THREAD_FLAGS):
        argv += ["--threads", str(threads)]
    if chat_template is not None:
        argv += ["--jinja", "--chat-template-file", str(chat_template)]
    return argv + list(args)


class LlamaCpp:
    """llama.cpp's ``llama-server``: GGUF on CPUs and NVIDIA GPUs (``runtimes.base.Runtime``)."""

    engine = Engine.LLAMACPP
    display_name = "llama.cpp"
    binary = BINARY
    binary_env = "MODELDEPLOY_LLAMA_SERVER"
    local_build_glob: str | None = "llama-server-*/bin/llama-server"
    missing_binary_hint = (
        "llama-server not found: build it with `make llama-server` "
        "(runtime-images/llamacpp/build-llama-server.sh) or set MODELDEPLOY_LLAMA_SERVER"
    )
    default_port = 8080
    port_env: str | None = "LLAMA_ARG_PORT"
    health_path = "/health"
    metrics_path = "/metrics"
    load_gauges = LOAD_GAUGES
    startup_base_seconds = 120
    sizing = SizingRules(engine="llamacpp", overhead_per_device=1 * GIB, paged_kv_cache=False)
    serves_single_file = True
    plans_threads = True
    offloads_layers = True
    # llama-server serves one model under one name; a request picks adapters with its
    # "lora" field, which the adapter router fills from the "model" name.
    routes_adapters_outside = True

    def image(self, config: OperatorConfig, gpu: bool) -> str:
        """The portable CPU build, or the CUDA build for GPU placements."""
        return config.llamacpp_gpu_image if gpu else config.llamacpp_image

    def architectures(self, config: OperatorConfig) -> tuple[str, ...]:
        """The CPU architectures the llama.cpp images are built for."""
        return config.llamacpp_architectures

    def min_compute_capability(self, info: QuantizationInfo) -> tuple[int, int] | None:
        """llama.cpp's CUDA build serves every GGUF quantization on any supported GPU."""
        return None

    def gpu_counts(
        self, max_gpus: int, architecture: ModelArchitecture | None, explicit: int | None
    ) -> list[int]:
        """Any count: llama.cpp splits layers across GPUs (no tensor-parallel constraint)."""
        return [explicit] if explicit else list(range(1, max_gpus + 1))

    def tensor_parallel_size(self, gpus: int) -> int:
        """Always 1: llama.cpp splits by layer, not by tensor."""
        return 1

    def gpu_host_memory_bytes(self, gpus: int, config: OperatorConfig) -> int:
        """Little: the weights live on the GPU."""
        return config.llamacpp_gpu_host_memory_bytes

    def gpu_cpu_cores(self, gpus: int, node_cores: int, config: OperatorConfig) -> int:
        """A few threads feed the GPU."""
        return min(config.gpu_llamacpp_threads, max(1, node_cores))

    def shared_memory_bytes(self, gpus: int) -> int | None:
        """llama.cpp is one process: no shared memory."""
        return None

    def engine_args(
        self, placement: Placement, served_name: str, user_args: list[str], config: OperatorConfig
    ) -> list[str]:
        """Flags for ``llama-server -m <model>``; the user's args come last and win."""
        return engine_args(placement, served_name, user_args, config)

    def engine_env(self) -> list[dict[str, str]]:
        """llama.cpp needs nothing beyond the shared variables."""
        return []

    def adapter_args(self, count: int, max_rank: int) -> list[str]:
        """Nothing at render time: the launcher loads the adapters at scale 0 (any rank)."""
        return []

    def model_file(self, names: Sequence[str]) -> str | None:
        """The GGUF to pass to ``-m`` (shard 1 of a split model)."""
        return first_shard(names)

    def launch_argv(self, request: LaunchRequest) -> list[str]:
        """``llama-server -m MODEL --host HOST [--threads N] [template] ARGS [--lora-scaled]``."""
        args, env = request.args, request.env
        threads = None
        if not has_flag(args, *THREAD_FLAGS) and not env.get("LLAMA_ARG_THREADS"):
            threads = request.threads()
        template = None
        if not has_flag(args, *TEMPLATE_FLAGS):
            facts = request.chat_facts()
            if facts is not None:
                template = chat_template_for(facts.architecture, facts.has_chat_template, args, env)
        argv = launch_argv(
            request.binary,
            str(request.model),
            args,
            host=request.host,
            threads=threads,
            chat_template=template,
        )
        if not request.adapters:
            return argv
        return [*argv, "--lora-scaled", lora_scaled(request.adapters)]


RUNTIME = LlamaCpp()
