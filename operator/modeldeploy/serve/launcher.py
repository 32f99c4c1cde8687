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

from modeldeploy.paths import cache_root
from modeldeploy.runtimes import POD_IP_ENV, RUNTIMES, Runtime, runtime_for
from modeldeploy.runtimes.base import (
    ChatFacts,
    LaunchRequest,
    bind_host,
    cpu_threads,
    flag_value,
    probe_host,
)
from modeldeploy.serve.model import model_location, read_chat_facts
from modeldeploy.serve.supervisor import (
    Endpoint,
    Supervisor,
    available_cpus,
    current_cpu_max,
)

log = logging.getLogger(__name__)

ENGINES = tuple(sorted(RUNTIMES))
DEFAULT_DRAIN_SECONDS = 50.0


class LaunchError(Exception):
    """The engine cannot be started: one line saying what is missing."""


@dataclass(frozen=True)
class Launch:
    """The engine's command line and how to reach it."""

    argv: list[str]
    endpoint: Endpoint
    drain_seconds: float


def engine_binary(engine: str, env: Mapping[str, str]) -> str:
    """The engine executable: its ``MODELDEPLOY_*`` variable, then PATH, then a local build."""
    runtime = _runtime(engine)
    explicit = env.get(runtime.binary_env)
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise LaunchError(f"{runtime.binary_env}={explicit} is not an executable")
        return explicit
    found = shutil.which(runtime.binary, path=env.get("PATH"))
    if found:
        return found
    if runtime.local_build_glob is not None:
        builds = sorted(
            cache_root(env).glob(runtime.local_build_glob), key=lambda p: p.stat().st_mtime
        )
        if builds:
            return str(builds[-1])
    raise LaunchError(runtime.missing_binary_hint)


def _runtime(engine: str) -> Runtime:
    try:
        return runtime_for(engine)
    except ValueError as error:
        raise LaunchError(str(error)) from None


def plan_launch(engine: str, args: Sequence[str], env: Mapping[str, str]) -> Launch:
    """Turn the rendered engine args and the environment into the engine's command line."""
    runtime = _runtime(engine)
    binary = engine_binary(engine, env)
    try:
        model = model_location(env, runtime)
    except Exception as error:  # ModelNotFoundError and unreadable caches alike
        raise LaunchError(str(error)) from None
    host = flag_value(args, "--host") or bind_host(env.get(POD_IP_ENV))
    port_text = flag_value(args, "--port")
    if not port_text and runtime.port_env:
        port_text = env.get(runtime.port_env)
    try:
        port = int(port_text) if port_text else runtime.default_port
    except ValueError:
        raise LaunchError(f"--port {port_text!r} is not a number") from None
    try:
        drain = float(env.get("MODELDEPLOY_DRAIN_SECONDS") or DEFAULT_DRAIN_SECONDS)
    except ValueError:
        raise LaunchError("MODELDEPLOY_DRAIN_SECONDS must be a number of seconds") from None

    def chat_facts() -> ChatFacts | None:
        try:
            return read_chat_facts(model)
        except (OSError, ValueError) as error:  # the engine will say more
            log.warning("could not read %s's header: %s", model, error)
            return None

    argv = runtime.launch_argv(
        LaunchRequest(
            binary=binary,
            model=model,
            args=args,
            env=env,
            host=host,
            threads=lambda: cpu_threads(current_cpu_max(), available_cpus()),
            chat_facts=chat_facts,
        )
    )
    return Launch(argv, Endpoint(probe_host(host), port, runtime.load_gauges.busy), drain)


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
