"""The watcher: which pods are ours, and one ``PodWorker`` for each.

``PodRunner`` lists and watches the cluster's pods (optionally one namespace, one label
selector) and starts a worker for each pod that has an IP, is bound to a simulated node
(label ``type=kwok``) and has an image of ours. When a pod is deleted (kwok's pod-delete
stage removes it at once) or disappears from a relist, its worker stops it, within the
deletion's grace period.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from e2e.cluster.local import KWOK_NODE_SELECTOR
from e2e.podrunner.images import image_path, image_repository, llama_server_dir, our_repositories
from e2e.podrunner.pod import PodRun, PodWorker

log = logging.getLogger("e2e.podrunner")

WATCH_TIMEOUT_S = 10


class PodRunner:
    """Watch the cluster's pods and run ours that land on simulated nodes."""

    def __init__(
        self,
        kubeconfig: Path,
        workdir: Path,
        *,
        namespace: str | None = None,
        selector: str | None = None,
        node_env: Mapping[str, str] | None = None,
        images: Collection[str] | None = None,
        path_dirs: Sequence[Path] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.workdir = workdir.resolve()
        self.logs = self.workdir / "logs" / "pods"
        self.namespace = namespace
        self.selector = selector
        self.node_env = dict(node_env or {})
        self.images = frozenset(images) if images is not None else our_repositories()
        if path_dirs is None:
            found = llama_server_dir()
            path_dirs = [found] if found else []
        self.path = image_path(path_dirs)
        self.api = config.new_client_from_config(str(kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self._workers: dict[str, PodWorker] = {}
        self._kwok_nodes: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="pod-runner", daemon=True)

    def start(self) -> PodRunner:
        """Start watching in a background thread."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop every pod's processes (each within its grace period) and the watch."""
        self._stop.set()
        self._thread.join(timeout=WATCH_TIMEOUT_S + 5)
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.request_stop()
        for worker in workers:
            worker.join(timeout=worker.grace + 30)

    def __enter__(self) -> PodRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def runs(self) -> list[PodRun]:
        """A snapshot of every pod started so far (finished ones included)."""
        with self._lock:
            return [worker.snapshot() for worker in self._workers.values()]

    def run_of(self, pod_name: str) -> PodRun | None:
        """The newest run of a pod by name, if any."""
        found = [run for run in self.runs() if run.name == pod_name]
        return found[-1] if found else None

    # -- watch ---------------------------------------------------------------------------

    def _watch(self) -> None:
        # Bound methods, not partials: the watch reads the return type from the docstring.
        if self.namespace:
            list_pods: Callable[..., Any] = self.core.list_namespaced_pod
            args: tuple[str, ...] = (self.namespace,)
        else:
            list_pods, args = self.core.list_pod_for_all_namespaces, ()
        selector = {"label_selector": self.selector} if self.selector else {}
        while not self._stop.is_set():
            try:
                listed = list_pods(*args, **selector)
                self._sync_all(listed.items)
                stream = watch.Watch().stream(
                    list_pods,
                    *args,
                    resource_version=listed.metadata.resource_version,
                    timeout_seconds=WATCH_TIMEOUT_S,
                    **selector,
                )
                for event in stream:
                    if event["type"] == "ERROR":
                        break
                    self._sync(event["type"], event["object"])
                    if self._stop.is_set():
                        break
            except Exception as error:  # the API server may be restarting or stopping
                if self._stop.wait(1):
                    return
                log.warning("pod watch failed (%s); listing again", error)

    def _sync_all(self, pods: Sequence[Any]) -> None:
        live = {pod.metadata.uid for pod in pods}
        with self._lock:
            gone = [w for uid, w in self._workers.items() if uid not in live]
        for worker in gone:
            worker.request_stop()
        for pod in pods:
            self._sync("ADDED", pod)

    def _sync(self, event_type: str, pod: Any) -> None:
        uid = pod.metadata.uid
        with self._lock:
            worker = self._workers.get(uid)
        if event_type == "DELETED" or pod.metadata.deletion_timestamp:
            if worker is not None and not worker.stopping:
                grace = pod.metadata.deletion_grace_period_seconds
                worker.request_stop(float(grace) if grace else None)
            return
        if worker is not None:
            worker.observe(pod)
            return
        if not self._wanted(pod):
            return
        body = self.api.sanitize_for_serialization(pod)
        worker = PodWorker(self, body)
        with self._lock:
            self._workers[uid] = worker
        worker.start()

    def _wanted(self, pod: Any) -> bool:
        if pod.status.phase in ("Succeeded", "Failed") or not pod.status.pod_ip:
            return False
        node = pod.spec.node_name
        if not node or not self._is_kwok(node):
            return False
        containers = [*(pod.spec.init_containers or []), *pod.spec.containers]
        return any(image_repository(c.image or "") in self.images for c in containers)

    def _is_kwok(self, node: str) -> bool:
        if node not in self._kwok_nodes:
            key, _, value = KWOK_NODE_SELECTOR.partition("=")
            labels = self.core.read_node(node).metadata.labels or {}
            self._kwok_nodes[node] = labels.get(key) == value
        return self._kwok_nodes[node]
