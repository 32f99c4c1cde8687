"""Engine runtimes: the command line, environment, port and probes of each engine's container.

One module per engine (``vllm``, ``llamacpp``) turns a ``Placement`` into engine arguments and
environment; this package holds what they share. Pure: no I/O.

Container contract (the launcher itself is a later issue):

    command: ["modeldeploy", "serve-runtime", ENGINE, "--"]
    args:    ENGINE_ARGS            (the engine's own flags; the user's serving.args last)

The launcher reads ``MODELDEPLOY_*`` from the environment, finds the model the fetcher
published under ``MODELDEPLOY_CACHE_DIR`` and execs the engine with the model location
prepended: ``llama-server -m <first .gguf shard> ENGINE_ARGS`` or
``vllm serve <model directory> ENGINE_ARGS``. The model path is the launcher's to add
because it is only known once the revision is resolved and the files are fetched.
"""

from __future__ import annotations

import math
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


def model_env(
    md: ModelDeployment, placement: Placement, config: OperatorConfig
) -> list[dict[str, str]]:
    """What the launcher needs to find the model: source, revision, files, cache."""
    model = md.spec.model
    env = [
        {"name": "MODELDEPLOY_MODEL_SOURCE", "value": model.source},
        {"name": "MODELDEPLOY_MODEL_FORMAT", "value": str(placement.format)},
        {"name": "MODELDEPLOY_QUANTIZATION", "value": placement.quantization},
        {"name": "MODELDEPLOY_CACHE_DIR", "value": config.cache_mount_path},
        {"name": "MODELDEPLOY_SERVED_NAME", "value": md.served_name},
        {"name": "HOME", "value": "/tmp"},
    ]
    if model.revision:
        env.insert(1, {"name": "MODELDEPLOY_MODEL_REVISION", "value": model.revision})
    if model.files:
        env.append({"name": "MODELDEPLOY_MODEL_FILES", "value": ",".join(model.files)})
    return env


def merge_env(ours: list[dict[str, str]], user: list[dict[str, str]]) -> list[dict[str, str]]:
    """Our variables, minus those the user sets, then the user's in their order."""
    names = {variable["name"] for variable in user}
    return [v for v in ours if v["name"] not in names] + user
