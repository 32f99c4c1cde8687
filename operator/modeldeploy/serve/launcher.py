"""``modeldeploy serve-runtime ENGINE -- ARGS``: what a runtime container runs.

Reads the container's environment (``MODELDEPLOY_*`` from the renderer, ``POD_IP`` from
the downward API), finds the model in the cache, completes the engine's command line with
``runtimes.<engine>.launch_argv`` (model path, bind address, threads from the CPU limit, a
chat template where the GGUF lacks one) and supervises the engine (``supervisor``).
With LoRA adapters (``MODELDEPLOY_ADAPTERS``) it adds their paths; for an engine that cannot
route a request's ``model`` to an adapter (llama.cpp) it runs the adapter router
(``adapter_router``) on the rendered port and the engine on a loopback port behind it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from modeldeploy.serve.adapter_router import AdapterRoute, AdapterRouter, RouteTable
from modeldeploy.serve.model import (
    ModelNotFoundError,
    adapter_locations,
    model_location,
    read_chat_facts,
)
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
class RouterPlan:
    """The adapter router in front of an engine that cannot route adapters by name."""

    table: RouteTable
    listen_hosts: tuple[str, ...]
    listen_port: int


@dataclass(frozen=True)
class Launch:
    """The engine's command line, how to reach it, and the router in front of it (if any)."""

    argv: list[str]
    endpoint: Endpoint  # the engine itself (health, drain gauges)
    drain_seconds: float
    router: RouterPlan | None = None

    @property
    def public(self) -> Endpoint:
        """Where clients connect: the router when there is one, else the engine."""
        if self.router is None:
            return self.endpoint
        host = probe_host(",".join(self.router.listen_hosts))
        return Endpoint(host, self.router.listen_port, self.endpoint.busy_gauges)


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

    try:
        found = adapter_locations(env, runtime)
    except ModelNotFoundError as error:
        raise LaunchError(str(error)) from None
    router = None
    engine_host, engine_args = host, list(args)
    if found and runtime.routes_adapters_outside:
        # The router takes the rendered port; the engine listens on loopback behind it.
        served = env.get("MODELDEPLOY_SERVED_NAME") or "model"
        routes = tuple(AdapterRoute(f.adapter.name, i, f.scale) for i, f in enumerate(found))
        hosts = tuple(h.strip() for h in host.split(",") if h.strip())
        router = RouterPlan(RouteTable(served, routes), hosts, port)
        engine_host, port = "127.0.0.1", free_loopback_port()
        engine_args += ["--host", engine_host, "--port", str(port)]

    def chat_facts() -> ChatFacts | None:
        try:
            return read_chat_facts(model)
        except (OSError, ValueError) as error:  # the engine will say more
            log.warning("could not read %s's header: %s", model, error)
            return None

    request = LaunchRequest(
        binary=binary,
        model=model,
        args=engine_args,
        env=env,
        host=engine_host,
        threads=lambda: cpu_threads(current_cpu_max(), available_cpus()),
        chat_facts=chat_facts,
        adapters=[f.adapter for f in found],
    )
    try:
        argv = runtime.launch_argv(request)
    except ValueError as error:  # an adapter path the engine cannot take
        raise LaunchError(str(error)) from None
    endpoint = Endpoint(probe_host(engine_host), port, runtime.load_gauges.busy)
    return Launch(argv, endpoint, drain, router)


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now (the engine binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def adapter_routers(plan: RouterPlan | None, engine: Endpoint) -> Iterator[None]:
    """Run the adapter router on each listen address while the engine runs."""
    if plan is None:
        yield
        return
    routers = [
        AdapterRouter(
            plan.table,
            listen_host=listen,
            listen_port=plan.listen_port,
            upstream_host=engine.host,
            upstream_port=engine.port,
        )
        for listen in plan.listen_hosts
    ]
    try:
        for router in routers:
            router.start()
        yield
    finally:
        for router in routers:
            router.stop()


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
        with adapter_routers(launch.router, launch.endpoint):
            return supervisor.run(on_ready=ready)
    except OSError as error:  # the engine could not be executed at all
        raise LaunchError(f"cannot start {launch.argv[0]}: {error}") from None
