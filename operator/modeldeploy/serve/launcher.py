"""``modeldeploy serve-runtime ENGINE -- ARGS``: what a runtime container runs.

Reads the container's environment (``MODELDEPLOY_*`` from the renderer, ``POD_IP`` from
the downward API), finds the model in the cache, completes the engine's command line with
``runtimes.<engine>.launch_argv`` (model path, bind address, threads from the CPU limit, a
chat template where the GGUF lacks one) and supervises the engine (``supervisor``).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from modeldeploy.runtimes import (
    POD_IP_ENV,
    bind_host,
    cpu_threads,
    flag_value,
    has_flag,
    probe_host,
)
from modeldeploy.runtimes import llamacpp as llamacpp_runtime
from modeldeploy.runtimes import vllm as vllm_runtime
from modeldeploy.serve.model import model_location, read_chat_facts
from modeldeploy.serve.supervisor import (
    Endpoint,
    Supervisor,
    available_cpus,
    current_cpu_max,
)

log = logging.getLogger(__name__)

ENGINES = ("llamacpp", "vllm")
DEFAULT_PORTS = {"llamacpp": 8080, "vllm": 8000}  # each engine's own default
DEFAULT_DRAIN_SECONDS = 50.0
BINARY_ENV = {"llamacpp": "MODELDEPLOY_LLAMA_SERVER", "vllm": "MODELDEPLOY_VLLM"}


class LaunchError(Exception):
    """The engine cannot be started: one line saying what is missing."""


@dataclass(frozen=True)
class Launch:
    """The engine's command line and how to reach it."""

    argv: list[str]
    endpoint: Endpoint
    drain_seconds: float


def build_cache_root(env: Mapping[str, str]) -> Path:
    """Where ``build-llama-server.sh`` caches its builds (``MODELDEPLOY_CACHE``)."""
    if env.get("MODELDEPLOY_CACHE"):
        return Path(env["MODELDEPLOY_CACHE"])
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(base) / "modeldeploy"


def engine_binary(engine: str, env: Mapping[str, str]) -> str:
    """The engine executable: ``MODELDEPLOY_<ENGINE>``, then PATH, then a cached local build."""
    explicit = env.get(BINARY_ENV[engine])
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise LaunchError(f"{BINARY_ENV[engine]}={explicit} is not an executable")
        return explicit
    name = llamacpp_runtime.BINARY if engine == "llamacpp" else vllm_runtime.BINARY
    found = shutil.which(name, path=env.get("PATH"))
    if found:
        return found
    if engine == "llamacpp":
        builds = sorted(
            build_cache_root(env).glob("llama-server-*/bin/llama-server"),
            key=lambda p: p.stat().st_mtime,
        )
        if builds:
            return str(builds[-1])
        raise LaunchError(
            "llama-server not found: build it with `make llama-server` "
            "(runtime-images/llamacpp/build-llama-server.sh) or set MODELDEPLOY_LLAMA_SERVER"
        )
    raise LaunchError("vllm not found on PATH (install vLLM, or set MODELDEPLOY_VLLM)")


def plan_launch(engine: str, args: Sequence[str], env: Mapping[str, str]) -> Launch:
    """Turn the rendered engine args and the environment into the engine's command line."""
    if engine not in ENGINES:
        raise LaunchError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    binary = engine_binary(engine, env)
    try:
        model = model_location(env, engine)
    except Exception as error:  # ModelNotFoundError and unreadable caches alike
        raise LaunchError(str(error)) from None
    host = flag_value(args, "--host") or bind_host(env.get(POD_IP_ENV))
    port_text = flag_value(args, "--port") or (
        env.get("LLAMA_ARG_PORT") if engine == "llamacpp" else None
    )
    try:
        port = int(port_text) if port_text else DEFAULT_PORTS[engine]
    except ValueError:
        raise LaunchError(f"--port {port_text!r} is not a number") from None
    try:
        drain = float(env.get("MODELDEPLOY_DRAIN_SECONDS") or DEFAULT_DRAIN_SECONDS)
    except ValueError:
        raise LaunchError("MODELDEPLOY_DRAIN_SECONDS must be a number of seconds") from None
    if engine == "llamacpp":
        threads = None
        if not has_flag(args, *llamacpp_runtime.THREAD_FLAGS) and not env.get("LLAMA_ARG_THREADS"):
            threads = cpu_threads(current_cpu_max(), available_cpus())
        template = None
        if not has_flag(args, *llamacpp_runtime.TEMPLATE_FLAGS):
            try:
                facts = read_chat_facts(model)
            except (OSError, ValueError) as error:  # llama-server will say more
                log.warning("could not read %s's header: %s", model, error)
            else:
                template = llamacpp_runtime.chat_template_for(
                    facts.architecture, facts.has_chat_template, args, env
                )
        argv = llamacpp_runtime.launch_argv(
            binary, str(model), args, host=host, threads=threads, chat_template=template
        )
        gauges = llamacpp_runtime.BUSY_GAUGES
    else:
        argv = vllm_runtime.launch_argv(binary, str(model), args, host=host)
        gauges = vllm_runtime.BUSY_GAUGES
    return Launch(argv, Endpoint(probe_host(host), port, gauges), drain)


def serve_runtime(
    engine: str,
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    on_ready: Callable[[Launch], None] | None = None,
) -> int:
    """Run the engine under supervision; return its exit status."""
    env = dict(os.environ if env is None else env)
    launch = plan_launch(engine, args, env)
    log.info("starting %s", shlex.join(launch.argv))
    supervisor = Supervisor(launch.argv, env, launch.endpoint, drain_seconds=launch.drain_seconds)
    ready = None if on_ready is None else (lambda: on_ready(launch))
    try:
        return supervisor.run(on_ready=ready)
    except OSError as error:  # the engine could not be executed at all
        raise LaunchError(f"cannot start {launch.argv[0]}: {error}") from None
