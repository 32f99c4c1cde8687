"""Engine runtimes: the registry of ``Runtime``s and the container contract they share.

One module per engine (``llamacpp``, ``vllm``, ``sglang``) implements ``base.Runtime``:
everything engine-specific (flags, env, ports, probes, metrics, sizing rules, GPU counts,
image, launch command). ``runtime_for(engine)`` is the only way other code reaches one.
This package holds what every engine's container shares. Pure: no I/O.

Container contract (the launcher is ``modeldeploy serve-runtime``, in ``modeldeploy.serve``):

    command: ["modeldeploy", "serve-runtime", ENGINE, "--"]
    args:    ENGINE_ARGS            (the engine's own flags; the user's serving.args last)

The launcher reads ``MODELDEPLOY_*`` from the environment, finds the model the fetcher
published under ``MODELDEPLOY_CACHE_DIR`` (or takes ``MODELDEPLOY_MODEL_PATH``) and runs the
engine with the model location and the bind address prepended (``Runtime.launch_argv``),
e.g. ``llama-server -m <first .gguf shard> --host <addr> ENGINE_ARGS`` or
``vllm serve <model directory> --host <addr> ENGINE_ARGS``. The model path is the
launcher's to add because it is only known once the revision is resolved and the files are
fetched; the bind address because it is the pod's IP (``POD_IP``, from the downward API).
The same holds for LoRA adapters (``MODELDEPLOY_ADAPTERS``): the launcher finds each in the
cache and the runtime adds its path (``LaunchRequest.adapters``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from modeldeploy.api import ModelDeployment
from modeldeploy.catalog import Engine
from modeldeploy.config import OperatorConfig
from modeldeploy.decision import Placement
from modeldeploy.runtimes import llamacpp, sglang, vllm
from modeldeploy.runtimes.base import (
    Runtime,
    bind_host,
    cpu_threads,
    flag_value,
    has_flag,
    probe_host,
)
from modeldeploy.sizing import GIB

# The adapters the launcher looks for in the cache: a JSON list of {name, source, revision,
# scale} in spec order (model_env).
ADAPTERS_ENV = "MODELDEPLOY_ADAPTERS"

__all__ = [
    "RUNTIMES",
    "Runtime",
    "bind_host",
    "cpu_threads",
    "flag_value",
    "has_flag",
    "probe_host",
    "runtime_for",
]

RUNTIMES: dict[Engine, Runtime] = {
    runtime.engine: runtime for runtime in (vllm.RUNTIME, llamacpp.RUNTIME, sglang.RUNTIME)
}
PORT_NAME = "http"
LAUNCHER = ("modeldeploy", "serve-runtime")

# Startup may take long (weights read from the cache, CUDA graphs captured): the budget is
# a base per engine (Runtime.startup_base_seconds) plus 10 s per GiB of weights, capped at
# an hour.
STARTUP_SECONDS_PER_GIB = 10
STARTUP_MAX_SECONDS = 3600
PROBE_PERIOD_SECONDS = 10
# The launcher drains in-flight requests on SIGTERM for the grace period less this margin,
# then stops the engine, so the kubelet's SIGKILL never cuts a response short.
DRAIN_MARGIN_SECONDS = 10
POD_IP_ENV = "POD_IP"


def runtime_for(engine: Engine | str) -> Runtime:
    """The runtime of an engine; a ValueError names the engines there are."""
    try:
        return RUNTIMES[Engine(engine)]
    except ValueError:
        raise ValueError(
            f"unknown engine {engine!r}; use one of {', '.join(sorted(RUNTIMES))}"
        ) from None


def launcher_command(engine: str) -> list[str]:
    """The container command: the launcher, the engine, then ``--`` before engine flags."""
    return [*LAUNCHER, engine, "--"]


def startup_seconds(placement: Placement) -> int:
    """How long the startup probe waits for the engine to come up."""
    weights_gib = placement.memory.weights_bytes / GIB
    base = runtime_for(placement.engine).startup_base_seconds
    budget = base + weights_gib * STARTUP_SECONDS_PER_GIB
    return min(STARTUP_MAX_SECONDS, math.ceil(budget / PROBE_PERIOD_SECONDS) * PROBE_PERIOD_SECONDS)


def probes(placement: Placement) -> dict[str, dict[str, Any]]:
    """Startup, readiness and liveness probes on the engine's health endpoint."""
    check = {"httpGet": {"path": runtime_for(placement.engine).health_path, "port": PORT_NAME}}
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
    adapter_revisions: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """What the launcher needs: the model (source, revision, files, cache), pod IP, drain,
    and the adapters (``ADAPTERS_ENV``: name, source, revision, scale, in spec order).

    ``revision`` is the resolved one the init container fetched; else the spec's; the same
    for each adapter in ``adapter_revisions``.
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
    if md.spec.adapters:
        revisions = adapter_revisions or {}
        entries = [
            {
                "name": a.name,
                "source": a.source,
                "revision": revisions.get(a.name) or a.revision,
                "scale": a.scale,
            }
            for a in md.spec.adapters
        ]
        listed = [{k: v for k, v in entry.items() if v is not None} for entry in entries]
        env.append({"name": ADAPTERS_ENV, "value": json.dumps(listed, separators=(",", ":"))})
    return env


def merge_env(ours: list[dict[str, Any]], user: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our variables, minus those the user sets, then the user's in their order."""
    names = {variable["name"] for variable in user}
    return [v for v in ours if v["name"] not in names] + user
