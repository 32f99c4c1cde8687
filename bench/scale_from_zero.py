"""A request at zero replicas to its first token, split into its steps (not a test).

The setup of ``tests/e2e/test_gateway_scale_from_zero.py`` on a local cluster of its own
(``e2e/gateway.py``, ``e2e/harness.py``): an operator with ``planning: scaleToZero: true``,
the pod runner, the stand-in mirror and one ``modeldeploy gateway``, and gemma 270M on the
CPU class with autoscaling ``minReplicas: 0``, ``maxReplicas: 1``. Each cycle starts with
the model at zero (no pod), sends one streaming chat completion through the gateway and
reads the first token; then the model idles ``--idle-seconds`` (its
``scaleDownDelaySeconds``) until the autoscaler scales it back to zero and its pod is gone.
The first cycle fills the model cache (the fetch downloads from the mirror); later ones
fetch from that warm cache (the cache claim outlives the pod; the mirror's byte count
shows it): the report's ``cold`` and ``warm``.

Every step is a watch event of the demand Lease, the Deployment or the pod, stamped with
the bench's ``time.monotonic()`` when it arrived, in seconds from the request:

- decision: request sent -> the demand Lease written with a held count (the gateway) ->
  Deployment ``spec.replicas`` 1 (the operator's autoscaler round);
- scheduling: -> the pod created (ReplicaSet controller) -> bound to a node (scheduler);
- fetch: -> the fetch init container running (kwok gives the pod its IP, the pod runner
  starts it) -> terminated with 0 (resolve, verify, publish; from the cache when warm);
- engine start: -> the engine container running -> the pod Ready (the runner's readiness
  probe on the engine's ``/health``: the model is loaded);
- first token: -> the first streamed token at the client (the gateway's watch sees the
  pod Ready, forwards the held request; prefill and one token).

The pod's own status timestamps (to the second) are reported beside them: the fetch
container's ``startedAt`` to ``finishedAt``, the engine's ``startedAt`` to Ready.

    .venv/bin/python bench/scale_from_zero.py [--cycles 2] [--idle-seconds 10] \\
        [--max-tokens 8] [--events bench/out/scale_from_zero.events.json]

Prints JSON on stdout, then the table on stderr. Needs ``make llama-server`` and the
control-plane binaries (``make binaries``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: bench/scale_from_zero.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from e2e.gateway import PROMPT, GatewayProcess, gemma_at_zero
from e2e.harness import ClusterHandle, ModelDeploymentApi, OperatorProcess, wait_until
from e2e.mirror import ModelMirror
from e2e.models import GEMMA_FILE, ensure_gemma
from e2e.podrunner import PodRunner, llama_server_dir
from kubernetes import client, watch

from bench.cluster import bench_cluster
from modeldeploy.artifacts import INIT_CONTAINER
from modeldeploy.demand import HELD_ANNOTATION, demand_lease_name

NAME = "gemma-zero"
NAMESPACE = "bench-scale-from-zero"
SELECTOR = f"modeldeploy.io/model-deployment={NAME}"
MAX_EVENTS = 20_000  # recorded per run, at most; a cycle makes some tens
WATCH_TIMEOUT_S = 10
SETTLE_S = 30.0  # how long the watches may lag the client's first token

# (key, label, from milestone, to milestone); a key with a dot is a sub-step.
STEPS = [
    ("decision", "decision: request -> Deployment replicas 1", "sent", "replicas"),
    ("decision.signal", "  request -> demand Lease (gateway)", "sent", "lease"),
    ("decision.operator", "  Lease -> replicas 1 (operator)", "lease", "replicas"),
    ("scheduling", "scheduling: replicas 1 -> pod bound", "replicas", "bound"),
    ("scheduling.create", "  -> pod created (ReplicaSet)", "replicas", "created"),
    ("scheduling.bind", "  created -> bound (scheduler)", "created", "bound"),
    ("fetch", "fetch: bound -> fetch done", "bound", "fetched"),
    ("fetch.start", "  bound -> fetch running (pod start)", "bound", "fetching"),
    ("fetch.run", "  fetch running -> done", "fetching", "fetched"),
    ("engine", "engine start: fetch done -> Ready", "fetched", "ready"),
    ("engine.start", "  -> engine running", "fetched", "engine"),
    ("engine.load", "  engine running -> Ready", "engine", "ready"),
    ("first_token", "first token: Ready -> first token", "ready", "first_token"),
    ("total", "total: request -> first token", "sent", "first_token"),
]


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Seen:
    """One watch event, stamped with ``time.monotonic()`` when the bench received it."""

    at: float
    kind: str  # lease | deployment | pod
    type: str  # ADDED | MODIFIED | DELETED | LISTED
    obj: Any  # the typed object (V1Lease, V1Deployment, V1Pod)


class Watches:
    """Watches of the model's demand Lease, its Deployment and its pods, recorded."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        leases = client.CoordinationV1Api(api)
        lease = {"field_selector": f"metadata.name={demand_lease_name(NAME)}"}
        deployment = {"field_selector": f"metadata.name={NAME}"}
        self.sources: dict[str, tuple[Callable[..., Any], dict[str, str]]] = {
            "lease": (leases.list_namespaced_lease, lease),
            "deployment": (apps.list_namespaced_deployment, deployment),
            "pod": (core.list_namespaced_pod, {"label_selector": SELECTOR}),
        }
        self.namespace = namespace
        self.seen: list[Seen] = []
        self.dropped = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._watch, args=(kind,), name=f"watch-{kind}", daemon=True)
            for kind in self.sources
        ]

    def start(self) -> Watches:
        """Start the watch threads."""
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop the watches (each ends within its watch timeout)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(WATCH_TIMEOUT_S + 5)

    def since(self, at: float) -> list[Seen]:
        """The events received at or after ``at``."""
        with self._lock:
            return [seen for seen in self.seen if seen.at >= at]

    def _record(self, kind: str, type_: str, obj: Any) -> None:
        with self._lock:
            if len(self.seen) >= MAX_EVENTS:
                self.dropped += 1
                return
            self.seen.append(Seen(time.monotonic(), kind, type_, obj))

    def _watch(self, kind: str) -> None:
        list_call, selector = self.sources[kind]
        while not self._stop.is_set():
            try:
                listed = list_call(self.namespace, **selector)
                for item in listed.items:
                    self._record(kind, "LISTED", item)
                version = listed.metadata.resource_version
                while not self._stop.is_set():
                    stream = watch.Watch().stream(
                        list_call,
                        self.namespace,
                        resource_version=version,
                        timeout_seconds=WATCH_TIMEOUT_S,
                        **selector,
                    )
                    for event in stream:
                        if event["type"] == "ERROR":  # e.g. 410 Gone: list again
                            raise RuntimeError(str(event["object"]))
                        self._record(kind, event["type"], event["object"])
                        version = event["object"].metadata.resource_version
            except Exception as error:  # the API server, for a moment
                if self._stop.wait(1):
                    return
                log(f"the {kind} watch failed ({error}); listing again")


def held_of(lease: client.V1Lease) -> int:
    """The count of held requests a demand Lease says (0 without one)."""
    text = (lease.metadata.annotations or {}).get(HELD_ANNOTATION, "0")
    try:
        return int(text)
    except ValueError:
        return 0


def init_state(pod: client.V1Pod) -> dict[str, Any]:
    """The fetch init container's state, as a dict with one of running/terminated/waiting."""
    for status in pod.status.init_container_statuses or []:
        if status.name == INIT_CONTAINER and status.state is not None:
            state = status.state
            return {
                key: value
                for key, value in (
                    ("running", state.running),
                    ("terminated", state.terminated),
                    ("waiting", state.waiting),
                )
                if value is not None
            }
    return {}


def fetch_succeeded(pod: client.V1Pod) -> bool:
    """The fetch init container terminated with 0."""
    terminated = init_state(pod).get("terminated")
    return terminated is not None and terminated.exit_code == 0


def engine_running(pod: client.V1Pod) -> bool:
    """Every container of the pod is running (none waiting)."""
    statuses = pod.status.container_statuses or []
    return bool(statuses) and all(
        s.state is not None and s.state.running is not None and s.state.waiting is None
        for s in statuses
    )


def pod_ready(pod: client.V1Pod) -> bool:
    """Ready, with every container ready."""
    conditions = pod.status.conditions or []
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
    statuses = pod.status.container_statuses or []
    return ready and bool(statuses) and all(s.ready for s in statuses)


def first_at(events: Sequence[Seen], test: Callable[[Seen], Any]) -> float | None:
    """When the first event passing ``test`` arrived."""
    return next((seen.at for seen in events if test(seen)), None)


def milestones(events: Sequence[Seen], old_pods: set[str]) -> tuple[dict[str, float], Any]:
    """The monotonic time of each step this cycle's events show, and this cycle's last pod
    object (None without a pod)."""
    found: dict[str, float | None] = {
        "lease": first_at(
            events, lambda s: s.kind == "lease" and s.type != "DELETED" and held_of(s.obj) >= 1
        ),
        "replicas": first_at(
            events, lambda s: s.kind == "deployment" and (s.obj.spec.replicas or 0) >= 1
        ),
    }
    pods = [s for s in events if s.kind == "pod" and s.obj.metadata.uid not in old_pods]
    mine = [s for s in pods if pods and s.obj.metadata.uid == pods[0].obj.metadata.uid]
    found["created"] = mine[0].at if mine else None
    found["bound"] = first_at(mine, lambda s: s.obj.spec.node_name)
    # kwok's stage marks a bound pod's init containers done and the pod Running and Ready at
    # once; the pod runner's own reports follow: the fetch running, then done, then the
    # engine. So only what comes after the runner's fetch counts.
    fetching = first_at(mine, lambda s: "running" in init_state(s.obj))
    found["fetching"] = fetching
    after_start = [s for s in mine if fetching is not None and s.at >= fetching]
    fetched = first_at(after_start, lambda s: fetch_succeeded(s.obj))
    found["fetched"] = fetched
    after = [s for s in mine if fetched is not None and s.at >= fetched]
    found["engine"] = first_at(after, lambda s: engine_running(s.obj))
    found["ready"] = first_at(after, lambda s: pod_ready(s.obj))
    last = mine[-1].obj if mine else None
    return {key: value for key, value in found.items() if value is not None}, last


def pod_status_seconds(pod: Any) -> dict[str, float | None]:
    """Steps as the pod's own status timestamps say (whole seconds)."""
    if pod is None:
        return {}
    state = init_state(pod).get("terminated")
    fetch = (state.finished_at - state.started_at).total_seconds() if state else None
    started = [
        s.state.running.started_at
        for s in pod.status.container_statuses or []
        if s.state is not None and s.state.running is not None
    ]
    ready = next((c for c in pod.status.conditions or [] if c.type == "Ready"), None)
    engine = None
    if started and ready is not None and ready.status == "True":
        engine = (ready.last_transition_time - max(started)).total_seconds()
    return {"fetchRunning": fetch, "engineRunningToReady": engine}


def stream_once(base: str, max_tokens: int, timeout: float) -> dict[str, Any]:
    """One streaming chat completion through the gateway; monotonic send, first token, end."""
    body = {
        "model": NAME,
        "messages": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    outcome: dict[str, Any] = {"status": None, "tokens": 0, "first_token": None, "error": None}
    outcome["sent"] = time.monotonic()
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(timeout, connect=10)) as http,
            http.stream("POST", f"{base}/v1/chat/completions", json=body) as response,
        ):
            outcome["status"] = response.status_code
            if response.status_code != 200:
                outcome["error"] = response.read().decode(errors="replace")[:500]
            else:
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line.endswith("[DONE]"):
                        continue
                    choices = json.loads(line.removeprefix("data: ")).get("choices") or []
                    if choices and (choices[0].get("delta") or {}).get("content"):
                        outcome["tokens"] += 1
                        if outcome["first_token"] is None:
                            outcome["first_token"] = time.monotonic()
    except httpx.HTTPError as error:
        outcome["error"] = f"{type(error).__name__}: {error}"
    outcome["end"] = time.monotonic()
    return outcome


def at_zero(api: ModelDeploymentApi) -> bool:
    """The Deployment at zero replicas and no pod of the model left."""
    try:
        deployment = api.apps.read_namespaced_deployment(NAME, api.namespace)
    except client.ApiException as error:
        if error.status == 404:
            return False
        raise
    pods = api.core.list_namespaced_pod(api.namespace, label_selector=SELECTOR).items
    return (deployment.spec.replicas or 0) == 0 and not pods


@dataclass(frozen=True)
class Rig:
    """What a cycle reads and sends through."""

    api: ModelDeploymentApi
    watches: Watches
    gateway: GatewayProcess
    mirror: ModelMirror


def one_cycle(index: int, rig: Rig, args: argparse.Namespace) -> dict[str, Any]:
    """Wait for the model at zero, send one request, and split its way to the first token."""
    api, watches, gateway, mirror = rig.api, rig.watches, rig.gateway, rig.mirror
    log(f"cycle {index}: waiting for the model at zero")
    wait_until(lambda: at_zero(api), timeout=args.idle_seconds + 300, what=f"{NAME} at zero")
    wait_until(lambda: NAME in (gateway.listed() or []), timeout=60, what="the gateway to list it")
    old_pods = {s.obj.metadata.uid for s in watches.since(0.0) if s.kind == "pod"}
    served_before = mirror.bytes_served
    log(f"cycle {index}: one request at zero")
    outcome = stream_once(gateway.base, args.max_tokens, args.request_timeout)
    sent = outcome["sent"]

    def settled() -> tuple[dict[str, float], Any] | None:
        found = milestones(watches.since(sent), old_pods)
        return found if "ready" in found[0] else None

    try:
        times, pod = wait_until(settled, timeout=SETTLE_S, what="the watches to see the pod Ready")
    except TimeoutError:
        times, pod = milestones(watches.since(sent), old_pods)
    times = {"sent": sent, **times}
    if outcome["first_token"] is not None:
        times["first_token"] = outcome["first_token"]
    steps = {
        key: round(times[end] - times[start], 2)
        for key, _, start, end in STEPS
        if start in times and end in times
    }
    return {
        "cycle": index,
        "cache": "cold" if index == 1 else "warm",
        "status": outcome["status"],
        "tokens": outcome["tokens"],
        "error": outcome["error"],
        "mirrorBytes": mirror.bytes_served - served_before,
        "milestones": {key: round(value - sent, 2) for key, value in times.items()},
        "steps": steps,
        "podStatusSeconds": pod_status_seconds(pod),
        "pod": pod.metadata.name if pod is not None else None,
    }


def event_dump(events: Sequence[Seen], origin: float) -> list[dict[str, Any]]:
    """What each recorded event showed, for ``--events`` (the fields the steps read)."""
    out = []
    for seen in events:
        obj: Any = seen.obj
        entry: dict[str, Any] = {"t": round(seen.at - origin, 3), "kind": seen.kind,
                                 "type": seen.type, "name": obj.metadata.name}  # fmt: skip
        if seen.kind == "lease":
            entry["held"] = held_of(obj)
        elif seen.kind == "deployment":
            entry["replicas"] = obj.spec.replicas
        else:
            entry.update(
                node=obj.spec.node_name,
                ip=obj.status.pod_ip,
                init=sorted(init_state(obj)),
                running=engine_running(obj),
                ready=pod_ready(obj),
            )
        out.append(entry)
    return out


def run(cluster: ClusterHandle, llama: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The cycles on a started cluster; the report."""
    assert cluster.workdir is not None
    core = client.CoreV1Api(cluster.api_client())
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    api = ModelDeploymentApi(cluster, NAMESPACE)
    settings = cluster.workdir / "operator.yaml"
    settings.write_text("planning:\n  scaleToZero: true\n")
    with ModelMirror({GEMMA_FILE: ensure_gemma()}) as mirror:
        env = mirror.plain_http_env()
        runner = PodRunner(
            cluster.kubeconfig, cluster.workdir, namespace=NAMESPACE, node_env=env,
            path_dirs=[llama],
        )  # fmt: skip
        operator = OperatorProcess(
            cluster.kubeconfig,
            NAMESPACE,
            env=env,
            settings_file=settings,
            autoscale_interval_seconds=args.autoscale_interval,
        )
        hold = str(int(args.request_timeout))
        gateway = GatewayProcess(cluster.kubeconfig, NAMESPACE, "--hold-seconds", hold)
        watches = Watches(cluster.api_client(), NAMESPACE).start()
        origin = time.monotonic()
        cycles = []
        with runner:
            operator.start()
            gateway.start()
            try:
                api.create(gemma_at_zero(mirror, NAME, args.idle_seconds))
                rig = Rig(api, watches, gateway, mirror)
                for index in range(1, args.cycles + 1):
                    cycles.append(one_cycle(index, rig, args))
                    if cycles[-1]["status"] != 200:
                        log(f"cycle {index} failed: {cycles[-1]['error']}")
                        break
            finally:
                gateway.stop()
                operator.stop()
                watches.stop()
        if args.events:
            args.events.parent.mkdir(parents=True, exist_ok=True)
            args.events.write_text(json.dumps(event_dump(watches.since(0.0), origin), indent=1))
    return {
        "benchmark": "scale_from_zero",
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "model": GEMMA_FILE,
            "cycles": args.cycles,
            "idleSeconds": args.idle_seconds,
            "autoscaleIntervalSeconds": args.autoscale_interval,
            "maxTokens": args.max_tokens,
        },
        "eventsDropped": watches.dropped,
        "cycles": cycles,
    }


def table(report: dict[str, Any]) -> str:
    """The steps, one row each, one column per cycle."""
    cycles = report["cycles"]
    heads = [f"{c['cache']} ({c['cycle']})" for c in cycles]
    width = max(len(label) for _, label, _, _ in STEPS)
    lines = ["seconds".ljust(width) + "".join(f"{h:>12}" for h in heads)]
    for key, label, _, _ in STEPS:
        cells = [c["steps"].get(key) for c in cycles]
        lines.append(
            label.ljust(width) + "".join(f"{'-' if v is None else f'{v:.2f}':>12}" for v in cells)
        )
    lines.append("mirror bytes".ljust(width) + "".join(f"{c['mirrorBytes']:>12}" for c in cycles))
    return "\n".join(lines)


def main() -> None:
    """Start a cluster, run the cycles, print JSON, then the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=2, help="1 cold, then warm (at most 5)")
    parser.add_argument("--idle-seconds", type=int, default=10, help="scaleDownDelaySeconds")
    parser.add_argument("--autoscale-interval", type=float, default=2.0, help="seconds")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--request-timeout", type=float, default=600.0, help="seconds")
    parser.add_argument("--events", type=Path, help="write every recorded event here (JSON)")
    args = parser.parse_args()
    if not 1 <= args.cycles <= 5:
        parser.error("--cycles must be in [1, 5]")
    if not 0 <= args.idle_seconds <= 600:
        parser.error("--idle-seconds must be in [0, 600]")
    llama = llama_server_dir()
    if llama is None:
        sys.exit("llama-server is not built: run `make llama-server`")
    with bench_cluster("scale-from-zero") as cluster:
        report = run(cluster, llama, args)
    print(json.dumps(report, indent=2))
    print(table(report), file=sys.stderr)


if __name__ == "__main__":
    main()
