"""Reconcile latency and cost of the operator on the local control plane (not a test).

Creates N ModelDeployments at once (N=1 and N=200 by default) in a fresh namespace and
prints, as JSON per N: p50/p99 seconds from create to the Deployment existing (seen by a
watch, and by the API server's audit log: from the create's completion to the first write
of the Deployment) and to ``Ready``, total wall time, the machine's load average, the
operator's peak RSS and CPU, reconcile passes, and API write calls (the operator's own
counter, and every write of the operator's user agents in the API server's audit log,
Kopf's own annotation patches included) per ModelDeployment.

The cluster gets its own node pool (one large CPU node that admits every pod of the run,
twice N: a rollout's surge too) and the example's source a stand-in Hub on loopback
(``stand_in_hub``): the point is the operator, not the scheduler's bin-packing of 200 pods
onto the simulated pool, nor this machine's DNS.

The operator runs with the environment its image sets for memory (``MALLOC_ARENA_MAX``,
``runtime-images/operator/Dockerfile``), unless ``--operator-env`` says otherwise. After the
JSON, a table on stderr puts each figure beside its target (issue 15: peak RSS under
200 MiB at N=200 and under 350 MiB at N=1000, p99 create→Deployment under 10 s at N=200)
and, with ``--compare earlier.json``, beside an earlier run's figure with the ratio.
``--tracemalloc FILE`` traces the operator's Python allocations
(``bench/memprobe/sitecustomize.py``) and writes the top sites at the traced peak to FILE;
tracing slows the operator, so use it to find where memory goes, not for the figures.

    .venv/bin/python -m bench.reconcile [--n 1 200] [--compare before.json]
        [--operator-env MALLOC_ARENA_MAX=8] [--tracemalloc /tmp/operator-heap.txt]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import json
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from e2e.cluster.local import REPO, LocalCluster
from e2e.cluster.tools import control_plane_bin_dir
from e2e.harness import ClusterHandle, OperatorProcess, install_crds, wait_until
from kubernetes import client, watch
from tests.unit.fetch.payloads import GgufFactory
from tests.unit.fetch.standins import HubStandin

GROUP, VERSION, PLURAL = "modeldeploy.io", "v1alpha1", "modeldeployments"
# What runtime-images/operator/Dockerfile sets for the operator's memory (glibc malloc: at
# most two arenas, so the passes' threads do not each fragment an arena of their own).
IMAGE_ENV = {"MALLOC_ARENA_MAX": "2"}
# The figures issue 15 asks for, by N: (peak RSS MiB, p99 create→Deployment s).
TARGETS = {200: (200.0, 10.0), 1000: (350.0, None)}
MEMPROBE = Path(__file__).parent / "memprobe"
BENCH_NODE: dict[str, Any] = {
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


HUB_REPO = "unsloth/gemma-3-270m-it-GGUF"  # the example's source


@contextlib.contextmanager
def stand_in_hub(root: Path) -> Iterator[dict[str, str]]:
    """The example's Hub repository on a local stand-in (a small real GGUF), and the
    environment that points the operator at it.

    Every first pass resolves the source as against the Hub (a listing and a read of the
    header), and no host name is looked up: offline, the resolver's lookups of the real
    Hub's name failed, and this machine's DNS answers 16 lookups at once in 5 s (one in
    2 ms), which the latencies measured rather than the operator.
    """
    hub = HubStandin()
    gguf = GgufFactory(root).model("Q4_K_M")
    hub.repo(HUB_REPO).commit({"README.md": b"# gemma\n", "gemma-3-270m-it-Q4_K_M.gguf": gguf})
    hub.start()
    try:
        yield {"HF_ENDPOINT": hub.url, **hub.env}
    finally:
        hub.stop()


def manifest(name: str) -> dict[str, Any]:
    """A small CPU GGUF ModelDeployment."""
    md: dict[str, Any] = yaml.safe_load((REPO / "examples" / "gemma-270m-cpu.yaml").read_text())
    md["metadata"] = {"name": name}
    small = {"cpu": "100m", "memory": "512Mi"}
    md["spec"]["serving"]["resources"] = {"requests": small, "limits": small}
    md["spec"]["serving"]["contextLength"] = 2048  # what the stand-in's GGUF was trained on
    return md


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of the values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class Watcher(threading.Thread):
    """Records the first time each Deployment exists and each ModelDeployment is Ready.

    Each watch resumes from the last version it saw and keeps the events as plain JSON: a
    fresh list every few seconds, decoded into the client's models, would load the machine
    the operator is measured on.
    """

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        super().__init__(daemon=True)
        self.api, self.namespace = api, namespace
        self.deployed: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        apps, custom = client.AppsV1Api(self.api), client.CustomObjectsApi(self.api)
        threads = [
            threading.Thread(
                target=self._watch,
                args=(self._deployed, apps.list_namespaced_deployment, self.namespace),
                daemon=True,
            ),
            threading.Thread(
                target=self._watch,
                args=(self._model_deployment, custom.list_namespaced_custom_object, GROUP,
                      VERSION, self.namespace, PLURAL),
                daemon=True,
            ),
        ]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _watch(self, seen: Callable[[dict[str, Any]], None], *call: Any) -> None:
        version: str | None = None
        while not self.stop.is_set():
            since = {"resource_version": version} if version else {}
            try:
                for event in watch.Watch().stream(
                    *call, timeout_seconds=2, deserialize=False, **since
                ):
                    version = event["object"]["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        seen(event["object"])
            except client.ApiException as error:
                if error.status != 410:
                    raise
                version = None  # the version expired: list again

    def _deployed(self, obj: dict[str, Any]) -> None:
        self.deployed.setdefault(obj["metadata"]["name"], time.monotonic())

    def _model_deployment(self, obj: dict[str, Any]) -> None:
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


def audit_create_to_deployment(cluster: ClusterHandle, namespace: str) -> list[float]:
    """Seconds from each ModelDeployment's create to the first write of its Deployment, by
    the API server's clock (the audit log's completion times): no watch in between."""
    assert cluster.audit_log is not None
    created: dict[str, datetime.datetime] = {}
    deployed: dict[str, datetime.datetime] = {}
    for line in cluster.audit_log.read_text().splitlines():
        entry = json.loads(line)
        ref = entry.get("objectRef", {})
        if ref.get("namespace") != namespace or ref.get("subresource") or "name" not in ref:
            continue
        if int((entry.get("responseStatus") or {}).get("code") or 0) >= 300:
            continue
        at = datetime.datetime.fromisoformat(entry["stageTimestamp"])
        if ref.get("resource") == PLURAL and entry["verb"] == "create":
            created.setdefault(ref["name"], at)
        elif ref.get("resource") == "deployments" and entry["verb"] in ("create", "patch"):
            deployed.setdefault(ref["name"], at)
    return [(deployed[n] - created[n]).total_seconds() for n in created if n in deployed]


def run_one(
    cluster: ClusterHandle, n: int, env: dict[str, str], tracemalloc: Path | None = None
) -> dict[str, Any]:
    """Create n ModelDeployments at once and measure until all are Ready."""
    namespace = f"bench-{n}-{secrets.token_hex(2)}"
    api = cluster.api_client()
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    env = dict(env)
    if tracemalloc is not None:
        path = os.pathsep.join(p for p in (str(MEMPROBE), os.environ.get("PYTHONPATH")) if p)
        env |= {"PYTHONPATH": path, "MODELDEPLOY_BENCH_TRACEMALLOC": f"{tracemalloc}.{n}"}
    operator = OperatorProcess(cluster.kubeconfig, namespace, resync_seconds=300, env=env)
    operator.start()
    watcher = Watcher(api, namespace)
    watcher.start()
    custom = client.CustomObjectsApi(api)
    created: dict[str, float] = {}

    def create(name: str) -> None:
        created[name] = time.monotonic()
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest(name))

    names = [f"md-{i:03d}" for i in range(n)]
    load_before = os.getloadavg()
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(create, names))

    def all_ready() -> bool:
        print(f"[bench] n={n}: {len(watcher.deployed)} deployed, {len(watcher.ready)} ready",
              file=sys.stderr, flush=True)  # fmt: skip
        return len(watcher.ready) >= n

    wait_until(all_ready, timeout=max(600, 2 * n), what=f"{n} Ready")
    wall = time.monotonic() - started
    load_after = os.getloadavg()
    watcher.stop.set()
    assert operator.process is not None
    peak_rss = _peak_rss_mib(operator.process.pid)
    cpu = _cpu_seconds(operator.process.pid)
    passes = operator.reconciles()
    writes = operator.metric("modeldeploy_api_writes_total")
    operator.stop()
    writes_seen = audit_writes(cluster, namespace)
    audited = audit_create_to_deployment(cluster, namespace)
    to_deployment = [watcher.deployed[m] - created[m] for m in names]
    to_ready = [watcher.ready[m] - created[m] for m in names]
    return {
        "n": n,
        "operatorEnv": env,
        "createToDeploymentSeconds": {
            "p50": round(statistics.median(to_deployment), 3),
            "p99": round(percentile(to_deployment, 99), 3),
        },
        "createToDeploymentSecondsByTheApiServer": {
            "count": len(audited),
            "p50": round(statistics.median(audited), 3) if audited else None,
            "p99": round(percentile(audited, 99), 3) if audited else None,
        },
        "createToReadySeconds": {
            "p50": round(statistics.median(to_ready), 3),
            "p99": round(percentile(to_ready, 99), 3),
        },
        "wallSeconds": round(wall, 2),
        # The machine's 1-minute load average as the creates began and once all were Ready.
        "loadAverage": {"start": round(load_before[0], 2), "end": round(load_after[0], 2)},
        "operatorPeakRssMiB": peak_rss,
        "operatorCpuSeconds": cpu,
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


def _figures(result: dict[str, Any]) -> dict[str, float]:
    return {
        "peak RSS MiB": result["operatorPeakRssMiB"],
        "p50 create→Deployment s": result["createToDeploymentSeconds"]["p50"],
        "p99 create→Deployment s": result["createToDeploymentSeconds"]["p99"],
        "p99 create→Deployment, API s": (
            result.get("createToDeploymentSecondsByTheApiServer", {}).get("p99") or 0.0
        ),
        "p99 create→Ready s": result["createToReadySeconds"]["p99"],
        "wall s": result["wallSeconds"],
        "operator CPU s": result.get("operatorCpuSeconds", 0.0),
        "passes per MD": round(result["reconcilePasses"] / result["n"], 2),
        "writes per MD": result["allWritesPerModelDeployment"],
    }


def summary(results: list[dict[str, Any]], earlier: list[dict[str, Any]] | None) -> str:
    """Each figure beside its target and, when given, an earlier run's (and the ratio)."""
    before = {r["n"]: _figures(r) for r in earlier or []}
    rows = [f"{'N':>5}  {'figure':<26}{'now':>9}{'target':>9}{'before':>9}{'now/before':>11}"]
    for result in results:
        n = result["n"]
        rss_target, p99_target = TARGETS.get(n, (None, None))
        targets = {"peak RSS MiB": rss_target, "p99 create→Deployment s": p99_target}
        for name, value in _figures(result).items():
            target, old = targets.get(name), before.get(n, {}).get(name)
            ratio = f"{value / old:.2f}" if old else "-"
            mark = "" if target is None else (" ok" if value < target else " OVER")
            rows.append(
                f"{n:>5}  {name:<26}{value:>9}{target or '-':>9}{old or '-':>9}{ratio:>11}{mark}"
            )
    return "\n".join(rows)


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of the process so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 1)


def main() -> None:
    """Start a cluster, run each N, print JSON (and the figures beside targets on stderr)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, nargs="+", default=[1, 200])
    parser.add_argument(
        "--operator-env", action="append", default=[], metavar="KEY=VALUE",
        help="an environment variable for the operator (over the image's MALLOC_ARENA_MAX)",
    )  # fmt: skip
    parser.add_argument("--compare", type=Path, help="an earlier run's JSON output")
    parser.add_argument("--tracemalloc", type=Path, help="write the operator's heap sites here")
    args = parser.parse_args()
    env = {**IMAGE_ENV, **dict(kv.split("=", 1) for kv in args.operator_env)}
    env = {k: v for k, v in env.items() if v != ""}  # KEY= leaves KEY unset
    earlier = json.loads(args.compare.read_text())["results"] if args.compare else None
    with tempfile.TemporaryDirectory(prefix="modeldeploy-bench-") as tmp:
        nodes = Path(tmp) / "nodes.yaml"
        pods = str(max(500, 2 * max(args.n)))  # room for every pod, and a rollout's surge
        node = {**BENCH_NODE, "status": {"allocatable": {**BENCH_NODE["status"]["allocatable"],
                                                         "pods": pods},
                                         "capacity": {**BENCH_NODE["status"]["capacity"],
                                                      "pods": pods}}}  # fmt: skip
        nodes.write_text(yaml.safe_dump(node))
        local = LocalCluster(Path(tmp) / "cluster", control_plane_bin_dir(), nodes_file=nodes)
        local.start()
        try:
            cluster = ClusterHandle(local.kubeconfig, None, workdir=local.workdir)
            install_crds(cluster)
            with stand_in_hub(Path(tmp)) as hub_env:
                results = [
                    run_one(cluster, n, {**hub_env, **env}, args.tracemalloc) for n in args.n
                ]
        finally:
            local.stop()
    print(json.dumps({"benchmark": "reconcile", "results": results}, indent=2))
    print(summary(results, earlier), file=sys.stderr)


if __name__ == "__main__":
    main()
