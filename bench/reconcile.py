"""Reconcile latency and cost of the operator on the local control plane (not a test).

Creates N ModelDeployments at once (N=1 and N=200 by default) in a fresh namespace and
prints, as JSON per N: p50/p99 seconds from create to the Deployment existing and to
``Ready``, total wall time, the operator's peak RSS, reconcile passes, and API write calls
(the operator's own counter, and every write of the operator's user agents in the API
server's audit log, Kopf's own annotation patches included) per ModelDeployment.

The cluster gets its own node pool (one large CPU node that admits 500 pods): the point
is the operator, not the scheduler's bin-packing of 200 pods onto the simulated pool.

    .venv/bin/python -m bench.reconcile [--n 1 200]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from e2e.cluster.local import REPO, LocalCluster
from e2e.cluster.tools import control_plane_bin_dir
from e2e.harness import ClusterHandle, OperatorProcess, install_crds, wait_until
from kubernetes import client, watch

GROUP, VERSION, PLURAL = "modeldeploy.io", "v1alpha1", "modeldeployments"
BENCH_NODE = {
    "apiVersion": "v1",
    "kind": "Node",
    "metadata": {
        "name": "bench-cpu",
        "annotations": {"kwok.x-k8s.io/node": "fake"},
        "labels": {
            "type": "kwok",
            "kubernetes.io/arch": "amd64",
            "kubernetes.io/os": "linux",
            "kubernetes.io/hostname": "bench-cpu",
            "feature.node.kubernetes.io/cpu-cpuid.AVX2": "true",
        },
    },
    "status": {
        "allocatable": {"cpu": "1000", "memory": "4Ti", "pods": "500"},
        "capacity": {"cpu": "1000", "memory": "4Ti", "pods": "500"},
    },
}


def manifest(name: str) -> dict[str, Any]:
    """A small CPU GGUF ModelDeployment."""
    md: dict[str, Any] = yaml.safe_load((REPO / "examples" / "gemma-270m-cpu.yaml").read_text())
    md["metadata"] = {"name": name}
    small = {"cpu": "100m", "memory": "512Mi"}
    md["spec"]["serving"]["resources"] = {"requests": small, "limits": small}
    return md


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of the values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class Watcher(threading.Thread):
    """Records the first time each Deployment exists and each ModelDeployment is Ready."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        super().__init__(daemon=True)
        self.api, self.namespace = api, namespace
        self.deployed: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        threads = [
            threading.Thread(target=self._deployments, daemon=True),
            threading.Thread(target=self._model_deployments, daemon=True),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _deployments(self) -> None:
        apps = client.AppsV1Api(self.api)
        while not self.stop.is_set():
            for event in watch.Watch().stream(
                apps.list_namespaced_deployment, self.namespace, timeout_seconds=2
            ):
                self.deployed.setdefault(event["object"].metadata.name, time.monotonic())

    def _model_deployments(self) -> None:
        custom = client.CustomObjectsApi(self.api)
        while not self.stop.is_set():
            for event in watch.Watch().stream(
                custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
                timeout_seconds=2,
            ):  # fmt: skip
                obj = event["object"]
                conditions = obj.get("status", {}).get("conditions") or []
                if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                    self.ready.setdefault(obj["metadata"]["name"], time.monotonic())


def audit_writes(cluster: ClusterHandle, namespace: str) -> Counter[str]:
    """Write calls by the operator (our client or Kopf) in ``namespace``, from the audit log,
    counted by verb, resource and subresource."""
    assert cluster.audit_log is not None
    counts: Counter[str] = Counter()
    for line in cluster.audit_log.read_text().splitlines():
        entry = json.loads(line)
        ref = entry.get("objectRef", {})
        if ref.get("namespace") != namespace:
            continue
        agent = str(entry.get("userAgent", ""))
        if agent.startswith(("modeldeploy/", "kopf/")):
            sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
            counts[
                f"{agent.split('/', maxsplit=1)[0]} {entry['verb']} {ref.get('resource')}{sub}"
            ] += 1
    return counts


def run_one(cluster: ClusterHandle, n: int) -> dict[str, Any]:
    """Create n ModelDeployments at once and measure until all are Ready."""
    namespace = f"bench-{n}-{secrets.token_hex(2)}"
    api = cluster.api_client()
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    operator = OperatorProcess(cluster.kubeconfig, namespace, resync_seconds=300).start()
    watcher = Watcher(api, namespace)
    watcher.start()
    custom = client.CustomObjectsApi(api)
    created: dict[str, float] = {}

    def create(name: str) -> None:
        created[name] = time.monotonic()
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest(name))

    names = [f"md-{i:03d}" for i in range(n)]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(create, names))

    def all_ready() -> bool:
        print(f"[bench] n={n}: {len(watcher.deployed)} deployed, {len(watcher.ready)} ready",
              file=sys.stderr, flush=True)  # fmt: skip
        return len(watcher.ready) >= n

    wait_until(all_ready, timeout=600, what=f"{n} Ready")
    wall = time.monotonic() - started
    watcher.stop.set()
    assert operator.process is not None
    peak_rss = _peak_rss_mib(operator.process.pid)
    passes = operator.reconciles()
    writes = operator.metric("modeldeploy_api_writes_total")
    operator.stop()
    writes_seen = audit_writes(cluster, namespace)
    to_deployment = [watcher.deployed[m] - created[m] for m in names]
    to_ready = [watcher.ready[m] - created[m] for m in names]
    return {
        "n": n,
        "createToDeploymentSeconds": {
            "p50": round(statistics.median(to_deployment), 3),
            "p99": round(percentile(to_deployment, 99), 3),
        },
        "createToReadySeconds": {
            "p50": round(statistics.median(to_ready), 3),
            "p99": round(percentile(to_ready, 99), 3),
        },
        "wallSeconds": round(wall, 2),
        "operatorPeakRssMiB": peak_rss,
        "reconcilePasses": int(passes),
        "operatorWritesPerReconcile": round(writes / passes, 2) if passes else None,
        "allWritesPerModelDeployment": round(sum(writes_seen.values()) / n, 2),
        "writesPerModelDeploymentByCall": {k: round(v / n, 2) for k, v in writes_seen.items()},
    }


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def main() -> None:
    """Start a cluster, run each N, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, nargs="+", default=[1, 200])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modeldeploy-bench-") as tmp:
        nodes = Path(tmp) / "nodes.yaml"
        nodes.write_text(yaml.safe_dump(BENCH_NODE))
        local = LocalCluster(Path(tmp) / "cluster", control_plane_bin_dir(), nodes_file=nodes)
        local.start()
        try:
            cluster = ClusterHandle(local.kubeconfig, None, workdir=local.workdir)
            install_crds(cluster)
            results = [run_one(cluster, n) for n in args.n]
        finally:
            local.stop()
    print(json.dumps({"benchmark": "reconcile", "results": results}, indent=2))


if __name__ == "__main__":
    main()
