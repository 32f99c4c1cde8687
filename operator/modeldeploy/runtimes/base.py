"""The ``Runtime`` protocol every engine module implements, and the helpers they share.

A runtime owns everything that is specific to one engine: its container arguments and
environment, its ports, health and metrics paths and the names of its load gauges, its
shared-memory needs, its launch command and binary, the host memory and CPUs it needs per
GPU, which GPU counts (tensor-parallel sizes) it accepts, how it allocates the KV cache
and what overhead it adds (``sizing.SizingRules``), and its default image. Code outside
``runtimes/`` and the catalogue asks the runtime; it never compares engine names. Which
formats an engine serves and on which accelerators is the catalogue's table
(``catalog.ENGINES_FOR_FORMAT``, ``catalog.ACCELERATORS_FOR_ENGINE``).

Pure: no I/O. What the launcher must read from disk (a GGUF's chat facts) reaches
``launch_argv`` as a callable the runtime may call.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from modeldeploy.catalog import Engine, QuantizationInfo
from modeldeploy.sizing import ModelArchitecture, SizingRules

if TYPE_CHECKING:
    from modeldeploy.config import OperatorConfig
    from modeldeploy.decision import Placement

_POWERS_OF_TWO = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class LoadGauges:
    """Prometheus gauge names an engine publishes about its load (the autoscaler's input).

    ``running``: requests being computed; ``waiting``: requests queued for a slot or a
    batch; ``kv_cache_usage``: the share (0..1) of the KV cache in use, where published.
    """

    running: str
    waiting: str
    kv_cache_usage: str | None = None

    @property
    def busy(self) -> tuple[str, ...]:
        """The gauges whose sum is the number of requests the engine holds."""
        return (self.running, self.waiting)


@dataclass(frozen=True)
class ChatFacts:
    """What a launcher reads from a model file to choose a chat template."""

    architecture: str | None
    has_chat_template: bool


@dataclass(frozen=True)
class LaunchAdapter:
    """A LoRA adapter the launcher found in the cache: its served name and its path."""

    name: str
    path: Path


@dataclass(frozen=True)
class LaunchRequest:
    """What the launcher knows when it completes the engine's command line.

    ``threads`` is the CPU budget from the container's cgroup; ``chat_facts`` reads the
    model's header (I/O, so the runtime calls it only when it needs it).
    """

    binary: str
    model: Path
    args: Sequence[str]
    env: Mapping[str, str]
    host: str
    threads: Callable[[], int]
    chat_facts: Callable[[], ChatFacts | None]
    adapters: Sequence[LaunchAdapter] = ()  # spec.adapters in spec order


class Runtime(Protocol):
    """One serving engine, as the planner, the renderer and the launcher see it."""

    engine: Engine
    # The name people read in messages ("vLLM", "llama.cpp", "SGLang").
    display_name: str
    # Executable name on PATH, and the variable that names it explicitly.
    binary: str
    binary_env: str
    # A glob under the user cache where a local build may be found (None: none is built).
    local_build_glob: str | None
    missing_binary_hint: str
    # The engine's own default port, and the variable it reads a port from (if any).
    default_port: int
    port_env: str | None
    health_path: str
    metrics_path: str
    load_gauges: LoadGauges
    # Startup probe budget: this base plus a share per GiB of weights.
    startup_base_seconds: int
    sizing: SizingRules
    # True when the engine serves a single model file rather than a directory.
    serves_single_file: bool
    # llama.cpp-style settings the planner fills: CPU threads and GPU layer offload.
    plans_threads: bool
    offloads_layers: bool
    # True when the engine cannot route a request's "model" to an adapter itself, so the
    # launcher puts the adapter router (serve/adapter_router.py) in front of it.
    routes_adapters_outside: bool

    def image(self, config: OperatorConfig, gpu: bool) -> str:
        """The runtime image for a CPU or GPU placement."""
        ...

    def architectures(self, config: OperatorConfig) -> tuple[str, ...]:
        """The CPU architectures the runtime image is built for."""
        ...

    def min_compute_capability(self, info: QuantizationInfo) -> tuple[int, int] | None:
        """The oldest GPU generation that serves this quantization (None: any)."""
        ...

    def gpu_counts(
        self, max_gpus: int, architecture: ModelArchitecture | None, explicit: int | None
    ) -> list[int]:
        """GPUs per replica worth trying on a node with ``max_gpus``, smallest first."""
        ...

    def tensor_parallel_size(self, gpus: int) -> int:
        """The tensor-parallel size for a replica spanning ``gpus`` GPUs."""
        ...

    def gpu_host_memory_bytes(self, gpus: int, config: OperatorConfig) -> int:
        """Host memory a GPU replica needs (the weights themselves live on the GPUs)."""
        ...

    def gpu_cpu_cores(self, gpus: int, node_cores: int, config: OperatorConfig) -> int:
        """Whole CPU cores a GPU replica requests on a node with ``node_cores``."""
        ...

    def shared_memory_bytes(self, gpus: int) -> int | None:
        """Size of a memory-backed ``/dev/shm`` the engine needs, or None."""
        ...

    def engine_args(
        self, placement: Placement, served_name: str, user_args: list[str], config: OperatorConfig
    ) -> list[str]:
        """The engine's flags in the container's args; the user's come last and win."""
        ...

    def engine_env(self) -> list[dict[str, str]]:
        """Environment the engine needs beyond the shared variables."""
        ...

    def adapter_args(self, count: int, max_rank: int) -> list[str]:
        """Flags that make the engine ready for ``count`` LoRA adapters of rank <= max_rank
        (their paths are added at launch, ``launch_argv``)."""
        ...

    def model_file(self, names: Sequence[str]) -> str | None:
        """The file to serve among a published model's files (None: serve the directory)."""
        ...

    def launch_argv(self, request: LaunchRequest) -> list[str]:
        """The full command line the launcher runs."""
        ...


def has_flag(args: Sequence[str], *names: str) -> bool:
    """True when one of ``names`` appears as a flag (alone or as ``--flag=VALUE``)."""
    return any(arg.partition("=")[0] in names for arg in args)


def flag_value(args: Sequence[str], *names: str) -> str | None:
    """The value of the last ``--flag VALUE`` or ``--flag=VALUE`` among ``names``, or None."""
    found: str | None = None
    for index, arg in enumerate(args):
        name, equals, value = arg.partition("=")
        if name not in names:
            continue
        if equals:
            found = value
        elif index + 1 < len(args):
            found = args[index + 1]
    return found


def tensor_parallel_sizes(
    max_gpus: int, architecture: ModelArchitecture | None, explicit: int | None
) -> list[int]:
    """TP sizes a tensor-parallel engine accepts: divisors of the attention heads.

    The KV heads must split evenly across the ranks, or the ranks across the KV heads
    (vLLM and SGLang replicate KV heads when there are more ranks than heads).
    """
    candidates = [explicit] if explicit is not None else list(_POWERS_OF_TWO)
    valid = []
    for size in candidates:
        if size > max_gpus:
            continue
        if architecture is not None:
            heads, kv_heads = architecture.attention_heads, architecture.kv_heads
            if heads and heads % size:
                continue
            if kv_heads and kv_heads % size and size % kv_heads:
                continue
        valid.append(size)
    return valid


def bind_host(pod_ip: str | None) -> str:
    """The engine's ``--host``: the pod's IP plus loopback, or every address without one.

    Binding the pod IP is what makes pods on a simulated node (loopback pod IPs, one
    network namespace) distinct; loopback is added for ``kubectl port-forward``, which
    connects to localhost inside the pod, unless the pod IP is itself loopback or the
    unspecified address (then adding it would claim a port another pod holds).
    """
    if not pod_ip:
        return "0.0.0.0"
    try:
        address = ipaddress.ip_address(pod_ip)
    except ValueError:
        return pod_ip  # a host name or a socket path: the engine decides
    if address.is_loopback or address.is_unspecified:
        return pod_ip
    return f"{pod_ip},{'::1' if address.version == 6 else '127.0.0.1'}"


def probe_host(host: str) -> str:
    """An address to reach an engine bound to ``host`` (a comma list) from the same machine."""
    first = host.split(",", maxsplit=1)[0].strip()
    if first in ("0.0.0.0", ""):
        return "127.0.0.1"
    if first == "::":
        return "::1"
    return first


def cpu_threads(cpu_max: str | None, available_cpus: int) -> int:
    """Threads for a CPU limit: cgroup v2 ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD")."""
    if cpu_max:
        quota, _, period = cpu_max.strip().partition(" ")
        if quota != "max" and quota.isdigit() and period.isdigit() and int(period) > 0:
            return max(1, min(available_cpus, int(quota) // int(period)))
    return max(1, available_cpus)


class TensorParallelGpuRuntime:
    """What engines that serve a safetensors directory on a tensor-parallel GPU group share.

    vLLM and SGLang: one rank per GPU (the count must divide the attention heads), weights
    loaded through host memory, worker processes talking over ``/dev/shm``, a KV cache
    allocated as tokens arrive, an offline environment, and the OpenAI server's ``--port``
    and ``--served-model-name``. Subclasses set the engine's own facts: its names, binary,
    port, gauges, image, extra environment, its flags for what the plan fixes (``flags``)
    and its command line around the model directory (``command_line``).
    """

    local_build_glob: str | None = None
    port_env: str | None = None
    health_path = "/health"
    metrics_path = "/metrics"
    # Loading a safetensors checkpoint and capturing CUDA graphs takes minutes.
    startup_base_seconds = 600
    serves_single_file = False
    plans_threads = False
    offloads_layers = False
    routes_adapters_outside = False
    # Each engine's LoRA flags: how many adapter slots, and the NAME=PATH list.
    lora_slots_flag: str
    lora_modules_flag: str
    # vLLM's CUDA kernels (and SGLang's, built on the same) need Volta or newer.
    min_gpu_generation = (7, 0)
    shm_bytes_per_gpu = 2 * 1024**3
    # Sizing: the KV cache is allocated as tokens arrive (vLLM's paged blocks, SGLang's token
    # pool); the overhead is 2 GiB per GPU (CUDA context, CUDA graphs, NCCL buffers).
    overhead_per_gpu = 2 * 1024**3
    # The model is local (the fetcher brought it): no hub lookups. Each engine adds its own.
    offline_env = (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"))
    own_env: tuple[tuple[str, str], ...] = ()

    # Each engine's own facts and functions.
    engine: Engine
    sizing: SizingRules  # from the engine and the rules above
    flags: Callable[[Placement, OperatorConfig], list[str]]
    command_line: Callable[..., list[str]]

    def __init__(self) -> None:
        self.sizing = SizingRules(
            engine=str(self.engine), overhead_per_device=self.overhead_per_gpu, paged_kv_cache=True
        )

    def min_compute_capability(self, info: QuantizationInfo) -> tuple[int, int] | None:
        """The quantization's own minimum, else the engine's (Volta)."""
        return info.vllm_min_compute_capability or self.min_gpu_generation

    def gpu_counts(
        self, max_gpus: int, architecture: ModelArchitecture | None, explicit: int | None
    ) -> list[int]:
        """Tensor-parallel sizes the model allows on ``max_gpus``."""
        return tensor_parallel_sizes(max_gpus, architecture, explicit)

    def tensor_parallel_size(self, gpus: int) -> int:
        """One rank per GPU."""
        return gpus

    def gpu_host_memory_bytes(self, gpus: int, config: OperatorConfig) -> int:
        """Weights load through host memory; workers keep shared memory."""
        return config.vllm_host_memory_base_bytes + gpus * config.vllm_host_memory_per_gpu_bytes

    def gpu_cpu_cores(self, gpus: int, node_cores: int, config: OperatorConfig) -> int:
        """A few cores per GPU, at most half the node's."""
        return min(config.vllm_cpus_per_gpu * gpus, max(1, node_cores // 2))

    def shared_memory_bytes(self, gpus: int) -> int | None:
        """2 GiB of ``/dev/shm`` per GPU (the container runtime's default is 64 MiB)."""
        return self.shm_bytes_per_gpu * max(1, gpus)

    def model_file(self, names: Sequence[str]) -> str | None:
        """These engines serve the model directory."""
        return None

    def engine_args(
        self, placement: Placement, served_name: str, user_args: list[str], config: OperatorConfig
    ) -> list[str]:
        """The port and served name, the engine's flags; the user's args come last and win."""
        shared = ["--port", str(config.port), "--served-model-name", served_name]
        return shared + self.flags(placement, config) + list(user_args)

    def engine_env(self) -> list[dict[str, str]]:
        """Offline, then the engine's own variables (telemetry off, caches in /tmp)."""
        return [{"name": name, "value": value} for name, value in self.offline_env + self.own_env]

    def adapter_args(self, count: int, max_rank: int) -> list[str]:
        """LoRA on, one GPU slot per adapter (all resident), slots sized for ``max_rank``."""
        return [
            "--enable-lora",
            self.lora_slots_flag,
            str(count),
            "--max-lora-rank",
            str(max_rank),
        ]

    def launch_argv(self, request: LaunchRequest) -> list[str]:
        """The engine's command line around the model directory and the bind address, then
        each adapter's NAME=PATH (the engine serves it under NAME)."""
        argv = self.command_line(
            request.binary, str(request.model), request.args, host=request.host
        )
        if request.adapters:
            argv += [self.lora_modules_flag, *(f"{a.name}={a.path}" for a in request.adapters)]
        return argv
