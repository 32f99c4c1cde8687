"""One pod's whole life on this machine: volumes, init containers, containers, stop.

``PodWorker`` is a thread per pod. It makes the pod's volumes (retrying with back-off while
a claim, Secret or ConfigMap is missing), runs the init containers in order, each to
completion (retried after a failure unless ``restartPolicy: Never``), then starts the
containers, restarts them per ``restartPolicy``, probes their readiness and publishes the
pod's status each tick, until the pod is deleted; then it stops every process and removes
the pod's directory. ``PodRun`` is the snapshot a test looks at.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubernetes import client

from e2e.podrunner.environment import ConfigSource, PodConfigError, container_env
from e2e.podrunner.images import image_repository
from e2e.podrunner.processes import BACKOFF_MAX_S, BACKOFF_START_S, Container, PodProcesses
from e2e.podrunner.status import StatusReporter, update_readiness
from e2e.podrunner.volumes import container_mounts, make_volumes, rewrite_env

if TYPE_CHECKING:
    from e2e.podrunner.runner import PodRunner

log = logging.getLogger("e2e.podrunner")

DEFAULT_GRACE_S = 30.0
TICK_S = 0.5


@dataclass(frozen=True)
class PodRun:
    """A snapshot of one pod the runner handles."""

    namespace: str
    name: str
    uid: str
    pod_ip: str
    pids: dict[str, int]
    exits: dict[str, list[int]]
    ready: bool
    finished: bool


class PodWorker(threading.Thread):
    """Runs one pod: volumes, init containers, containers, probes, status, stop."""

    def __init__(self, runner: PodRunner, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.runner = runner
        self.pod = pod
        self.namespace: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.pod_ip: str = pod["status"]["podIP"]
        spec = pod["spec"]
        self.grace = float(spec.get("terminationGracePeriodSeconds") or DEFAULT_GRACE_S)
        self.restart_policy: str = spec.get("restartPolicy") or "Always"
        self.dir = runner.workdir / "pods" / f"{self.namespace}_{self.pod_name}_{self.uid[:8]}"
        self.core = client.CoreV1Api(runner.api)
        self.sources = ConfigSource(self.core, self.namespace)
        self.processes = PodProcesses(self.namespace, self.pod_name, self.dir, runner.logs)
        self.reporter = StatusReporter(self.core, self.namespace, self.pod_name)
        self._halt = threading.Event()
        self.inits = [self._container(c, init=True) for c in spec.get("initContainers") or []]
        self.containers = [self._container(c, init=False) for c in spec["containers"]]
        self.volumes: dict[str, Path] = {}
        self.initialized = False

    def _container(self, spec: dict[str, Any], init: bool) -> Container:
        container = Container(spec=spec, init=init)
        if image_repository(spec.get("image", "")) not in self.runner.images:
            container.runnable = (
                f"image {spec.get('image')!r} is not one the pod runner runs "
                f"({', '.join(sorted(self.runner.images))})"
            )
        return container

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """True once the pod's stop was requested."""
        return self._halt.is_set()

    def request_stop(self, grace: float | None = None) -> None:
        """Stop the pod's processes: SIGTERM now, SIGKILL after ``grace`` (the pod's)."""
        if grace is not None and grace > 0:
            self.grace = grace
        self._halt.set()

    def observe(self, pod: Any) -> None:
        """A newer version of the pod was seen (someone else may have changed its Ready)."""
        self.reporter.observe(pod)

    def run(self) -> None:
        """The pod's whole life on this machine."""
        log.info("pod %s/%s (%s): starting on %s", self.namespace, self.pod_name, self.uid,
                 self.pod_ip)  # fmt: skip
        try:
            self._publish()
            if self._prepare() and self._run_inits():
                self.initialized = True
                self._serve()
        except Exception:
            log.exception("pod %s/%s: the runner failed", self.namespace, self.pod_name)
        finally:
            self.processes.terminate(self.all_containers(), self.grace)
            shutil.rmtree(self.dir, ignore_errors=True)
            log.info("pod %s/%s: stopped", self.namespace, self.pod_name)

    def all_containers(self) -> list[Container]:
        """Init containers, then containers."""
        return [*self.inits, *self.containers]

    def snapshot(self) -> PodRun:
        """What a test may look at."""
        with self.processes.lock:
            everything = self.all_containers()
            return PodRun(
                namespace=self.namespace,
                name=self.pod_name,
                uid=self.uid,
                pod_ip=self.pod_ip,
                pids={
                    c.name: c.process.pid
                    for c in everything
                    if c.process is not None and c.process.poll() is None
                },
                exits={c.name: list(c.exits) for c in everything},
                ready=bool(self.containers) and all(c.ready for c in self.containers),
                finished=not self.is_alive(),
            )

    def _publish(self) -> None:
        self.reporter.publish(self.initialized, self.inits, self.containers)

    # -- preparation ---------------------------------------------------------------------

    def _prepare(self) -> bool:
        """Volumes and image checks; retried with back-off while config is missing."""
        backoff = BACKOFF_START_S
        while not self._halt.is_set():
            try:
                self.volumes = make_volumes(self.pod, self.dir, self.core, self.sources)
                for container in self.all_containers():
                    if container.runnable:
                        raise PodConfigError(f"container {container.name}: {container.runnable}")
                return True
            except PodConfigError as error:
                log.warning("pod %s/%s: %s", self.namespace, self.pod_name, error)
                waiting = {"reason": "CreateContainerConfigError", "message": str(error)}
                for container in self.all_containers():
                    container.state = {"waiting": waiting}
                self._publish()
                if self._halt.wait(backoff):
                    return False
                backoff = min(BACKOFF_MAX_S, backoff * 2)
        return False

    # -- running -------------------------------------------------------------------------

    def _start(self, container: Container) -> None:
        """Start one container's process: its mounts, its environment, its command."""
        termination = self.processes.termination_file(container)
        mounts = container_mounts(container.spec, self.volumes, termination)
        runner_env = {"PATH": self.runner.path, "HOSTNAME": self.pod_name, **self.runner.node_env}
        env = container_env(container.spec, self.pod, self.sources, runner_env)
        self.processes.start(container, rewrite_env(env, mounts, runner_env), mounts)

    def _start_or_report(self, container: Container) -> bool:
        try:
            self._start(container)
        except (PodConfigError, OSError) as error:
            log.warning("pod %s/%s: %s", self.namespace, self.pod_name, error)
            container.state = {
                "waiting": {"reason": "CreateContainerConfigError", "message": str(error)}
            }
            container.next_start = time.monotonic() + BACKOFF_START_S
            self._publish()
            return False
        return True

    def _run_inits(self) -> bool:
        """Each init container to completion, in order, retried after failures."""
        for container in self.inits:
            while True:
                if self._halt.is_set():
                    return False
                if not self._start_or_report(container):
                    if self._halt.wait(BACKOFF_START_S):
                        return False
                    continue
                self._publish()
                while (status := self.processes.reap(container)) is None:
                    if self._halt.wait(TICK_S):
                        return False
                if status == 0:
                    self._publish()
                    break
                if self.restart_policy == "Never":
                    self._publish()
                    return False
                self.processes.back_off(container)
                self._publish()
                if self._halt.wait(container.backoff):
                    return False
        return True

    def _serve(self) -> None:
        """Start the containers, restart them per policy, probe readiness, until stopped."""
        for container in self.containers:
            container.state = {"waiting": {"reason": "ContainerCreating"}}
        while not self._halt.is_set():
            now = time.monotonic()
            for container in self.containers:
                if container.process is None:
                    # Not started yet, or waiting out a back-off; a finished one stays so.
                    if "waiting" in container.state and now >= container.next_start:
                        self._start_or_report(container)
                elif (status := self.processes.reap(container)) is not None:
                    if self.restart_policy == "Always" or (
                        self.restart_policy == "OnFailure" and status != 0
                    ):
                        self.processes.back_off(container)
                elif now >= container.probe_due:
                    update_readiness(container, self.pod_ip, now)
            self._publish()
            self._halt.wait(TICK_S)
