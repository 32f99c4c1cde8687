"""The autoscaling-under-load setup shared by ``tests/e2e/test_autoscaling_load.py`` and
``bench/autoscale.py``.

gemma 270M (GGUF) on the CPU class, fetched from a stand-in mirror and served for real by
llama-server through the pod runner, 2 slots a pod and one thread each, ``autoscaling:
native`` from 1 replica. ``autoscaled_gemma`` is the ModelDeployment; ``AutoscalingRig`` the
pod runner, the operator and the load generator around it (none started), and what both
read of the model while it scales.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster.local import REPO
from e2e.harness import ClusterHandle, ModelDeploymentApi, OperatorProcess
from e2e.load import Endpoint, LoadGenerator, ready_pods
from e2e.mirror import ModelMirror
from e2e.models import GEMMA_FILE, GEMMA_SHA256
from e2e.podrunner import PodRunner

NAME = "gemma"
SELECTOR = f"modeldeploy.io/model-deployment={NAME}"
SLOTS_PER_POD = 2
REQUEST_TIMEOUT_SECONDS = 120


def autoscaled_gemma(
    mirror: ModelMirror, *, max_replicas: int, target_queue_depth: int, scale_down_delay: int
) -> dict[str, Any]:
    """The CPU GGUF example from the mirror, 2 slots a pod, small enough that several
    replicas fit one CPU node, autoscaled natively between 1 and ``max_replicas``."""
    md: dict[str, Any] = yaml.safe_load((REPO / "examples" / "gemma-270m-cpu.yaml").read_text())
    md["metadata"] = {"name": NAME}
    md["spec"]["model"].update(mirror.pinned_model(GEMMA_FILE, GEMMA_SHA256), servedName=NAME)
    small = {"cpu": "1", "memory": "2Gi"}  # one llama-server thread per pod
    md["spec"]["serving"] = {
        "contextLength": 1024,
        "maxConcurrentRequests": SLOTS_PER_POD,
        "resources": {"requests": small, "limits": small},
    }
    md["spec"]["autoscaling"] = {
        "enabled": True,
        "mode": "native",
        "minReplicas": 1,
        "maxReplicas": max_replicas,
        "targetQueueDepth": target_queue_depth,
        "scaleDownDelaySeconds": scale_down_delay,
    }
    md["spec"]["cache"]["accessMode"] = "ReadWriteMany"  # one cache for every replica
    return md


@dataclass(frozen=True)
class AutoscalingRig:
    """The pieces around the autoscaled gemma of one namespace, and what they read of it."""

    api: ModelDeploymentApi
    runner: PodRunner
    operator: OperatorProcess
    load: LoadGenerator

    @classmethod
    def build(
        cls,
        cluster: ClusterHandle,
        namespace: str,
        mirror: ModelMirror,
        llama_server: Path,
        *,
        autoscale_interval: float,
        max_tokens: int,
        max_requests: int,
        max_seconds: float,
    ) -> AutoscalingRig:
        """A pod runner (the mirror's node environment, llama-server on PATH), an operator
        that fetches through the mirror and autoscales every ``autoscale_interval`` seconds,
        and a load generator over the Ready pods with those limits."""
        assert cluster.workdir is not None, "the pod runner runs pods of a local cluster only"
        api = ModelDeploymentApi(cluster, namespace)
        env = mirror.plain_http_env()
        runner = PodRunner(
            cluster.kubeconfig,
            cluster.workdir,
            namespace=namespace,
            node_env=env,
            path_dirs=[llama_server],
        )
        operator = OperatorProcess(
            cluster.kubeconfig, namespace, env=env, autoscale_interval_seconds=autoscale_interval
        )
        load = LoadGenerator(
            ready_pods(api.core, namespace, SELECTOR),
            model=NAME,
            max_tokens=max_tokens,
            max_requests=max_requests,
            max_seconds=max_seconds,
            request_timeout=REQUEST_TIMEOUT_SECONDS,
        )
        return cls(api, runner, operator, load)

    def autoscaling(self) -> dict[str, Any]:
        """The ModelDeployment's ``status.autoscaling`` (empty before the first decision)."""
        found: dict[str, Any] = (self.api.md(NAME).get("status") or {}).get("autoscaling") or {}
        return found

    def replicas(self) -> tuple[int, int]:
        """The Deployment's (spec.replicas, status.readyReplicas)."""
        deployment = self.api.apps.read_namespaced_deployment(NAME, self.api.namespace)
        return deployment.spec.replicas or 0, (deployment.status.ready_replicas or 0)

    def serving(self) -> list[Endpoint]:
        """The Ready pods the load generator sends requests to, now."""
        return ready_pods(self.api.core, self.api.namespace, SELECTOR)()
