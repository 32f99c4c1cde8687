"""A pod's status as the runner writes it back to the API server, readiness probes included.

After kwok's "fast" pod-ready stage (it marks a bound pod Running and Ready at once, with
its IP), the runner owns the pod's status the way a kubelet does: ``Ready``,
``ContainersReady`` and ``Initialized`` conditions, and ``initContainerStatuses`` /
``containerStatuses`` with running/terminated/waiting states, exit codes, termination
messages, restart counts and ``CrashLoopBackOff``. A container is ready once its
``readinessProbe`` (``httpGet`` or ``tcpSocket`` against the pod IP, tried every second until
the first success, then every ``periodSeconds``) passes; without one, once it runs. So a
ModelDeployment's ``Ready`` follows the engine's real ``/health``, after one flap: kwok's
immediate Ready precedes the runner's first report. The phase stays ``Running`` (setting
``Pending`` would make kwok's stage mark it Ready again).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from kubernetes import client

from e2e.podrunner.processes import Container, now

log = logging.getLogger("e2e.podrunner")


def container_status(container: Container) -> dict[str, Any]:
    """The container's ``containerStatuses`` entry."""
    entry: dict[str, Any] = {
        "name": container.name,
        "image": container.spec.get("image", ""),
        "imageID": "",
        "ready": container.ready,
        "restartCount": container.restarts,
        "started": "running" in container.state,
        "state": container.state,
    }
    if container.last_state:
        entry["lastState"] = container.last_state
    return entry


class StatusReporter:
    """Writes one pod's status, only when it changed; keeps each condition's transition time."""

    def __init__(self, core: client.CoreV1Api, namespace: str, pod_name: str) -> None:
        self.core = core
        self.namespace = namespace
        self.pod_name = pod_name
        self._published: dict[str, Any] | None = None
        self._transitions: dict[str, tuple[str, str]] = {}

    def publish(
        self, initialized: bool, inits: Sequence[Container], containers: Sequence[Container]
    ) -> None:
        """Patch the pod's status with the runner's view, when it changed."""
        ready = bool(containers) and all(c.ready for c in containers)
        status: dict[str, Any] = {
            "conditions": [
                self._condition("Initialized", initialized, "ContainersNotInitialized"),
                self._condition("ContainersReady", ready, "ContainersNotReady"),
                self._condition("Ready", ready, "ContainersNotReady"),
            ],
            "containerStatuses": [container_status(c) for c in containers],
        }
        if inits:
            status["initContainerStatuses"] = [
                {**container_status(c), "ready": "terminated" in c.state and c.exits[-1:] == [0]}
                for c in inits
            ]
        if status == self._published:
            return
        try:
            self.core.patch_namespaced_pod_status(
                self.pod_name,
                self.namespace,
                {"status": status},
                _content_type="application/strategic-merge-patch+json",
            )
        except client.ApiException as error:
            if error.status != 404:
                log.warning("pod %s/%s: status patch failed: %s", self.namespace,
                            self.pod_name, error.reason)  # fmt: skip
            return
        self._published = status

    def observe(self, pod: Any) -> None:
        """Report our status again on the next publish if someone else changed the pod's Ready."""
        # kube-controller-manager marks the pods of an unreachable node not ready; a kubelet
        # that is still there reports its own view again.
        published = self._published
        if published is None:
            return
        ours = next(c["status"] for c in published["conditions"] if c["type"] == "Ready")
        theirs = next((c.status for c in pod.status.conditions or [] if c.type == "Ready"), None)
        if theirs is not None and theirs != ours:
            self._published = None

    def _condition(self, type_: str, ok: bool, reason: str) -> dict[str, Any]:
        value = "True" if ok else "False"
        previous = self._transitions.get(type_)
        if previous is None or previous[0] != value:
            self._transitions[type_] = (value, now())
        condition = {
            "type": type_,
            "status": value,
            "lastTransitionTime": self._transitions[type_][1],
        }
        if not ok:
            condition["reason"] = reason
        return condition


def update_readiness(container: Container, pod_ip: str, at: float) -> None:
    """Run the container's readiness probe (when due at ``at``) and update its readiness."""
    spec = container.spec.get("readinessProbe")
    if not spec:
        container.ready = True
        return
    ok = probe_once(spec, pod_ip, container.spec.get("ports") or [])
    period = float(spec.get("periodSeconds") or 10)
    if ok:
        container.probe_failures = 0
        container.ready = True
        container.probe_due = at + period
    else:
        container.probe_failures += 1
        if container.probe_failures >= int(spec.get("failureThreshold") or 3):
            container.ready = False
        container.probe_due = at + (period if container.ready else 1.0)


def probe_once(probe: Mapping[str, Any], pod_ip: str, ports: Sequence[Mapping[str, Any]]) -> bool:
    """One ``httpGet`` or ``tcpSocket`` check against the pod IP (exec/grpc: always true)."""
    named = {p.get("name"): p["containerPort"] for p in ports if p.get("name")}
    timeout = float(probe.get("timeoutSeconds") or 1)
    check = probe.get("httpGet") or probe.get("tcpSocket")
    if check is None:  # exec and grpc probes are not run: ready once started
        return True
    port = check["port"]
    port = int(named.get(port, port))
    host = check.get("host") or pod_ip
    if "httpGet" in probe:
        scheme = str(check.get("scheme") or "HTTP").lower()
        url = f"{scheme}://{host}:{port}{check.get('path') or '/'}"
        try:
            response = httpx.get(url, timeout=timeout, verify=False, trust_env=False)
        except httpx.HTTPError:
            return False
        return 200 <= response.status_code < 400
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
