"""The Argo CD health check (examples/argocd/health.lua) on objects from real reconciles.

The operator drives ModelDeployments through the states Argo CD must tell apart: not yet
observed, rolling out, Ready, a new generation not yet observed, no hardware that fits,
a pod that cannot be scheduled. A watch records every version the API server stores;
the Lua 5.1 health check must judge each state as documented. With
``MODELDEPLOY_RECORD_ARGOCD_FIXTURES=1`` the recorded objects are written to
tests/fixtures/argocd/ (the unit tests run the check on them without a cluster).
"""

from __future__ import annotations

import copy
import json
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from e2e.argocd import health
from e2e.cluster.local import REPO
from e2e.harness import ClusterHandle, OperatorProcess, wait_until
from kubernetes import client, watch

GROUP, VERSION, PLURAL = "modeldeploy.io", "v1alpha1", "modeldeployments"
FIXTURES = REPO / "tests" / "fixtures" / "argocd"
RECORD = os.environ.get("MODELDEPLOY_RECORD_ARGOCD_FIXTURES") == "1"


def model(name: str, **spec: Any) -> dict[str, Any]:
    """The small CPU example with small requests."""
    md: dict[str, Any] = yaml.safe_load((REPO / "examples" / "gemma-270m-cpu.yaml").read_text())
    md["metadata"] = {"name": name}
    small = {"cpu": "100m", "memory": "256Mi"}
    md["spec"]["serving"]["resources"] = {"requests": small, "limits": small}
    md["spec"].update(spec)
    return md


class Recorder:
    """Every version of the namespace's ModelDeployments, as a watch delivers them."""

    def __init__(self, cluster: ClusterHandle, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(cluster.api_client())
        self.namespace = namespace
        self.versions: list[dict[str, Any]] = []
        self._watch = watch.Watch()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stopped = False

    def _run(self) -> None:
        stream = self._watch.stream(
            self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL
        )
        try:
            for event in stream:
                with self._lock:
                    self.versions.append(copy.deepcopy(event["object"]))
        except Exception:  # the stream breaks off when the watch is stopped
            if not self._stopped:
                raise

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopped = True
        self._watch.stop()

    def first(self, name: str, matches: Callable[[dict[str, Any]], bool], what: str) -> Any:
        """The first recorded version of ``name`` that ``matches`` (waits for it)."""

        def found() -> dict[str, Any] | None:
            with self._lock:
                versions = [v for v in self.versions if v["metadata"]["name"] == name]
            return next((v for v in versions if matches(v)), None)

        return wait_until(found, timeout=120, what=what)


def observed(obj: dict[str, Any]) -> int | None:
    """status.observedGeneration (None before the operator wrote a status)."""
    found: int | None = (obj.get("status") or {}).get("observedGeneration")
    return found


def cond(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    """A condition of the object ({} when absent)."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == type_), {})


def fixture(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as a commit-ready fixture: no server bookkeeping, a neutral namespace."""
    clean = copy.deepcopy(obj)
    meta = clean["metadata"]
    for key in ("managedFields", "resourceVersion", "uid", "selfLink"):
        meta.pop(key, None)
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if "last-handled" not in k
    }
    meta["annotations"] = annotations
    meta["namespace"] = "models"
    status = clean.get("status") or {}
    if "endpoint" in status:
        status["endpoint"] = status["endpoint"].replace(obj["metadata"]["namespace"], "models")
    return clean


@pytest.fixture
def operator(crd_cluster: ClusterHandle, namespace: str) -> Iterator[OperatorProcess]:
    """The operator serving this test's namespace."""
    process = OperatorProcess(crd_cluster.kubeconfig, namespace).start()
    try:
        yield process
    finally:
        process.stop()


def test_health_of_real_reconciles(
    crd_cluster: ClusterHandle, namespace: str, operator: OperatorProcess
) -> None:
    custom = client.CustomObjectsApi(crd_cluster.api_client())

    def create(md: dict[str, Any]) -> None:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, md)

    states: dict[str, dict[str, Any]] = {}
    with Recorder(crd_cluster, namespace) as recorder:
        create(model("chat"))
        states["not-observed"] = recorder.first(
            "chat", lambda v: not v.get("status"), "the object before the operator saw it"
        )
        states["rolling-out"] = recorder.first(
            "chat",
            lambda v: cond(v, "Progressing").get("reason") == "RollingOut",
            "a rollout in progress",
        )
        states["ready"] = recorder.first(
            "chat", lambda v: cond(v, "Ready").get("status") == "True", "Ready"
        )
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            "chat",
            {"spec": {"serving": {"contextLength": 2048}}},
        )
        states["new-generation"] = recorder.first(
            "chat",
            lambda v: v["metadata"]["generation"] == 2 and observed(v) == 1,
            "the new generation before the operator saw it",
        )
        states["rolling-out-new-generation"] = recorder.first(
            "chat",
            lambda v: observed(v) == 2 and cond(v, "Ready").get("status") == "False",
            "the rollout of generation 2",
        )
        states["ready-new-generation"] = recorder.first(
            "chat",
            lambda v: observed(v) == 2 and cond(v, "Ready").get("status") == "True",
            "generation 2 Ready",
        )
        gpu = {"accelerator": "gpu", "gpu": {"products": ["NVIDIA-B200"]}}
        create(model("no-hardware", hardware=gpu))
        states["unschedulable-no-hardware"] = recorder.first(
            "no-hardware",
            lambda v: cond(v, "Scheduled").get("reason") == "NoFittingHardware",
            "Scheduled=False",
        )
        # Two replicas of 100Gi: only the 128 GiB node holds one, so one pod stays Pending.
        crowded = model("crowded", replicas=2)
        big = {"cpu": "100m", "memory": "100Gi"}
        crowded["spec"]["serving"]["resources"] = {"requests": big, "limits": big}
        create(crowded)
        states["unschedulable-pod"] = recorder.first(
            "crowded",
            lambda v: cond(v, "Degraded").get("reason") == "PodUnschedulable",
            "Degraded PodUnschedulable",
        )

    expected = {
        "not-observed": ("Progressing", "Waiting for the modeldeploy operator"),
        "rolling-out": ("Progressing", "RollingOut"),
        "ready": ("Healthy", "1/1 replicas ready"),
        "new-generation": ("Progressing", "observe generation 2"),
        "rolling-out-new-generation": ("Progressing", "RollingOut"),
        "ready-new-generation": ("Healthy", "1/1 replicas ready"),
        "unschedulable-no-hardware": ("Degraded", "NoFittingHardware: "),
        "unschedulable-pod": ("Degraded", "PodUnschedulable: pod crowded-"),
    }
    judged = {name: health(obj) for name, obj in states.items()}
    for name, (status, message) in expected.items():
        assert judged[name]["status"] == status, (name, judged[name])
        assert message in judged[name]["message"], (name, judged[name])

    if RECORD:
        FIXTURES.mkdir(parents=True, exist_ok=True)
        for name, obj in states.items():
            path = FIXTURES / f"{name}.json"
            path.write_text(json.dumps(fixture(obj), indent=2, sort_keys=True) + "\n")
