"""Engine runtimes: the command line, environment, port and probes of each engine's container.

One module per engine (``vllm``, ``llamacpp``) turns a ``Placement`` into engine arguments and
environment, and turns those plus the fetched model into the engine's own command line
(``launch_argv``); this package holds what they share. Pure: no I/O.

Container contract (the launcher is ``modeldeploy serve-runtime``, in ``modeldeploy.serve``):

    command: ["modeldeploy", "serve-runtime", ENGINE, "--"]
    args:    ENGINE_ARGS            (the engine's own flags; the user's serving.args last)

The launcher reads ``MODELDEPLOY_*`` from the environment, finds the model the fetcher
published under ``MODELDEPLOY_CACHE_DIR`` (or takes ``MODELDEPLOY_MODEL_PATH``) and runs the
engine with the model location and the bind address prepended:
``llama-server -m <first .gguf shard> --host <addr> ENGINE_ARGS`` or
``vllm serve <model directory> --host <addr> ENGINE_ARGS``. The model path is the
launcher's to add because it is only known once the revision is resolved and the files are
fetched; the bind address because it is the pod's IP (``POD_IP``, from the downward API).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from typing import Any

from modeldeploy.api import ModelDeployment
from modeldeploy.config import OperatorConfig
from modeldeploy.hardware import Placement
from modeldeploy.sizing import GIB

PORT_NAME = "http"
HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
LAUNCHER = ("modeldeploy", "serve-runtime")

# Startup may take long (weights read from the cache, CUDA graphs captured): the budget is
# a base per engine plus 10 s per GiB of weights, capped at an hour.
STARTUP_BASE_SECONDS = {"llamacpp": 120, "vllm": 600}
STARTUP_SECONDS_PER_GIB = 10
STARTUP_MAX_SECONDS = 3600
PROBE_PERIOD_SECONDS = 10
# The launcher drains in-flight requests on SIGTERM for the grace period less this margin,
# then stops the engine, so the kubelet's SIGKILL never cuts a response short.
DRAIN_MARGIN_SECONDS = 10
POD_IP_ENV = "POD_IP"


def launcher_command(engine: str) -> list[str]:
    """The container command: the launcher, the engine, then ``--`` before engine flags."""
    return [*LAUNCHER, engine, "--"]


def startup_seconds(placement: Placement) -> int:
    """How long the startup probe waits for the engine to come up."""
    weights_gib = placement.memory.weights_bytes / GIB
    budget = STARTUP_BASE_SECONDS[str(placement.engine)] + weights_gib * STARTUP_SECONDS_PER_GIB
    return min(STARTUP_MAX_SECONDS, math.ceil(budget / PROBE_PERIOD_SECONDS) * PROBE_PERIOD_SECONDS)


def probes(placement: Placement) -> dict[str, dict[str, Any]]:
    """Startup, readiness and liveness probes on ``/health`` (both engines serve it)."""
    check = {"httpGet": {"path": HEALTH_PATH, "port": PORT_NAME}}
    return {
        "startupProbe": {
            **check,
            "periodSeconds": PROBE_PERIOD_SECONDS,
            "timeoutSeconds": 5,
            "failureThreshold": startup_seconds(placement) // PROBE_PERIOD_SECONDS,
        },
        "readinessProbe": {**check, "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {
            **check,
            "periodSeconds": 15,
            "timeoutSeconds": 10,
            "failureThreshold": 4,
        },
    }


def drain_seconds(config: OperatorConfig) -> int:
    """How long the launcher lets in-flight requests finish after SIGTERM."""
    return max(0, config.termination_grace_period_seconds - DRAIN_MARGIN_SECONDS)


def model_env(
    md: ModelDeployment,
    placement: Placement,
    config: OperatorConfig,
    revision: str | None = None,
) -> list[dict[str, Any]]:
    """What the launcher needs: the model (source, revision, files, cache), pod IP, drain.

    ``revision`` is the resolved one the init container fetched; else the spec's.
    """
    model = md.spec.model
    revision = revision or model.revision
    env: list[dict[str, Any]] = [
        {"name": "MODELDEPLOY_MODEL_SOURCE", "value": model.source},
        {"name": "MODELDEPLOY_MODEL_FORMAT", "value": str(placement.format)},
        {"name": "MODELDEPLOY_QUANTIZATION", "value": placement.quantization},
        {"name": "MODELDEPLOY_CACHE_DIR", "value": config.cache_mount_path},
        {"name": "MODELDEPLOY_SERVED_NAME", "value": md.served_name},
        {"name": "MODELDEPLOY_DRAIN_SECONDS", "value": str(drain_seconds(config))},
        {"name": POD_IP_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "HOME", "value": "/tmp"},
    ]
    if revision:
        env.insert(1, {"name": "MODELDEPLOY_MODEL_REVISION", "value": revision})
    if model.files:
        env.append({"name": "MODELDEPLOY_MODEL_FILES", "value": ",".join(model.files)})
    return env


def merge_env(ours: list[dict[str, Any]], user: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our variables, minus those the user sets, then the user's in their order."""
    names = {variable["name"] for variable in user}
    return [v for v in ours if v["name"] not in names] + user


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


def has_flag(args: Sequence[str], *names: str) -> bool:
    """True when one of ``names`` appears as a flag (alone or as ``--flag=VALUE``)."""
    return any(arg.partition("=")[0] in names for arg in args)


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
