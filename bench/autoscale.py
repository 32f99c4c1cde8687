"""The operator-native autoscaler under a load step on real llama.cpp pods (not a test).

The scenario of ``tests/e2e/test_autoscaling_load.py`` on a cluster of its own, with the
setup both share (``e2e/autoscaling.py``): gemma 270M on the CPU class through the pod
runner, 2 slots a pod, ``autoscaling: native``. After an idle baseline the load steps from
0 to ``--concurrency`` streaming chat completions in flight (``e2e/load.py``), holds until
the replicas settle, holds ``--steady-seconds`` more (the steady phase), then steps to 0
until the replicas are back at ``minReplicas``.

Prints JSON: seconds from the load step to the autoscaler's first scale-up decision (as
polled from ``status.autoscaling`` every ``--sample-seconds``, and as the decision's own
timestamp says, to the second), to the first new replica Ready (Deployment
``readyReplicas``; kwok marks a new pod Ready for a moment before the pod runner reports
its real readiness, so ``...AdmittedSeconds``, when the load generator saw the engine's
``/health`` answer 200 there, is the firmer figure) and to its first answer; the scale
events (Events ScaledUp/ScaledDown, and changes of ``desiredReplicas``) during the steady
phase, whose target is 0; seconds from the step down to the first scale-down decision and
to ``minReplicas``; the requests (every one should succeed). Writes a PNG (``--png``) of
the replicas (desired, Deployment, ready), the queue (waiting), running requests, and the
load generator's requests in flight, and the samples beside it (``.samples.json``).

    .venv/bin/python bench/autoscale.py [--steady-seconds 300] [--concurrency 6] \\
        [--max-replicas 4] [--target-queue-depth 2] [--scale-down-delay 60] \\
        [--autoscale-interval 15] [--max-tokens 48] [--png bench/out/autoscale.png]

Needs ``make llama-server`` and the control-plane binaries (``make binaries``), and the
``bench`` extra (matplotlib): ``.venv/bin/pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import calendar
import itertools
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: bench/autoscale.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from e2e.autoscaling import NAME, SLOTS_PER_POD, AutoscalingRig, autoscaled_gemma
from e2e.cluster.local import REPO
from e2e.harness import ClusterHandle, ModelDeploymentApi, wait_until
from e2e.mirror import ModelMirror
from e2e.models import GEMMA_FILE, ensure_gemma
from e2e.podrunner import llama_server_dir
from kubernetes import client

from bench.cluster import bench_cluster

DEFAULT_PNG = REPO / "bench" / "out" / "autoscale.png"


def manifest(mirror: ModelMirror, args: argparse.Namespace) -> dict[str, Any]:
    """gemma 270M on CPU, 2 slots a pod, one thread each, autoscaled natively."""
    return autoscaled_gemma(
        mirror,
        max_replicas=args.max_replicas,
        target_queue_depth=args.target_queue_depth,
        scale_down_delay=args.scale_down_delay,
    )


@dataclass(frozen=True)
class Sample:
    """One look at the ModelDeployment, its Deployment and the load, ``t`` s after start."""

    t: float
    desired: int | None
    current: int | None
    running: float | None
    waiting: float | None
    spec_replicas: int | None
    ready_replicas: int | None
    in_flight: int
    target: int


class Sampler(threading.Thread):
    """Samples status.autoscaling, the Deployment and the load every ``period`` seconds."""

    def __init__(self, rig: AutoscalingRig, period: float) -> None:
        super().__init__(name="sampler", daemon=True)
        self.rig, self.api, self.load, self.period = rig, rig.api, rig.load, period
        self.t0 = time.monotonic()
        self.samples: list[Sample] = []
        self.target = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stop.wait(self.period):
            try:
                sample = self.take()
            except Exception as error:  # the API server, for a moment
                print(f"[bench] sample failed: {error}", file=sys.stderr, flush=True)
                continue
            with self.lock:
                self.samples.append(sample)

    def take(self) -> Sample:
        autoscaling = self.rig.autoscaling()
        load = autoscaling.get("load") or {}
        try:
            deployment = self.api.apps.read_namespaced_deployment(NAME, self.api.namespace)
            spec_replicas = deployment.spec.replicas
            ready = deployment.status.ready_replicas or 0
        except client.ApiException:
            spec_replicas = ready = None
        return Sample(
            t=time.monotonic() - self.t0,
            desired=autoscaling.get("desiredReplicas"),
            current=autoscaling.get("currentReplicas"),
            running=load.get("running"),
            waiting=load.get("waiting"),
            spec_replicas=spec_replicas,
            ready_replicas=ready,
            in_flight=self.load.in_flight() if self.load.started_at is not None else 0,
            target=self.target,
        )

    def since(self, t: float) -> list[Sample]:
        with self.lock:
            return [s for s in self.samples if s.t >= t]

    def now(self) -> float:
        return time.monotonic() - self.t0


def scale_events(api: ModelDeploymentApi) -> dict[str, str]:
    """The ScaledUp/ScaledDown Events of the ModelDeployment: name -> reason."""
    events = api.core.list_namespaced_event(
        api.namespace, field_selector=f"involvedObject.name={NAME}"
    ).items
    return {e.metadata.name: e.reason for e in events if e.reason in ("ScaledUp", "ScaledDown")}


def epoch(rfc3339: str) -> float:
    """Seconds since the epoch of a ``YYYY-MM-DDTHH:MM:SSZ`` timestamp."""
    return float(calendar.timegm(time.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ")))


def first_decision(rig: AutoscalingRig, after_wall: float, up: bool) -> float | None:
    """Wall seconds from ``after_wall`` to the first recorded up (or down) decision after it."""
    for decision in rig.autoscaling().get("recentDecisions") or []:
        moved_up = decision["to"] > decision["from"]
        at = epoch(decision["time"])
        if moved_up == up and at >= int(after_wall):
            return round(at - after_wall, 1)
    return None


def first_time(samples: list[Sample], test: Any) -> float | None:
    """The time of the first sample passing ``test``."""
    return next((s.t for s in samples if test(s)), None)


def plot(samples: list[Sample], marks: dict[str, float], path: Path, title: str) -> None:
    """Replicas, queue and in-flight requests over time, phases marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(11, 7))

    def series(values: list[float | int | None]) -> list[float]:
        return [float("nan") if v is None else float(v) for v in values]

    top.step(t, series([s.desired for s in samples]), where="post", lw=3, alpha=0.5,
             label="desired (status)")  # fmt: skip
    top.step(t, series([s.spec_replicas for s in samples]), where="post", label="Deployment")
    top.step(t, series([s.ready_replicas for s in samples]), where="post", label="ready")
    top.set_ylabel("replicas")
    top.legend(loc="center")
    top.grid(alpha=0.3)
    bottom.plot(t, series([s.in_flight for s in samples]), label="in flight (load generator)")
    bottom.step(t, series([s.running for s in samples]), where="post", label="running (scraped)")
    bottom.step(t, series([s.waiting for s in samples]), where="post", label="waiting (scraped)")
    bottom.step(t, [float(s.target) for s in samples], where="post", ls=":", label="target")
    bottom.set_ylabel("requests")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="center")
    bottom.grid(alpha=0.3)
    for label, at in marks.items():
        for axis in (top, bottom):
            axis.axvline(at, color="grey", ls="--", lw=0.8)
        top.annotate(label, (at, 1.01), xycoords=("data", "axes fraction"), ha="center",
                     va="bottom", fontsize=8)  # fmt: skip
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run(cluster: ClusterHandle, llama: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The scenario on a started cluster; the report."""
    assert cluster.workdir is not None
    namespace = "bench-autoscale"
    client.CoreV1Api(cluster.api_client()).create_namespace({"metadata": {"name": namespace}})
    with ModelMirror({GEMMA_FILE: ensure_gemma()}) as mirror:
        rig = AutoscalingRig.build(
            cluster,
            namespace,
            mirror,
            llama,
            autoscale_interval=args.autoscale_interval,
            max_tokens=args.max_tokens,
            max_requests=args.max_requests,
            max_seconds=args.steady_seconds + 900,
        )
        sampler = Sampler(rig, args.sample_seconds)
        with rig.runner:
            operator = rig.operator.start()
            try:
                return scenario(rig, sampler, mirror, args)
            finally:
                if rig.load.running:
                    rig.load.stop(timeout=150)
                sampler.stop.set()
                operator.stop()


def scenario(
    rig: AutoscalingRig, sampler: Sampler, mirror: ModelMirror, args: argparse.Namespace
) -> dict[str, Any]:
    api, load = rig.api, rig.load
    api.create(manifest(mirror, args))
    log("waiting for 1 replica Ready")

    def one_replica() -> bool:
        return (
            rig.autoscaling().get("desiredReplicas") == 1
            and rig.replicas()[1] == 1
            and len(rig.serving()) == 1
        )

    wait_until(one_replica, timeout=600, what="1 replica Ready")
    before = api.md(NAME)
    first_pods = {e.name for e in rig.serving()}
    sampler.start()
    load.start()
    time.sleep(args.baseline_seconds)  # idle baseline (a bench: phases are timed on purpose)

    log(f"step up to {args.concurrency} in flight")
    marks: dict[str, float] = {}
    step_wall, step_t, step_mono = time.time(), sampler.now(), time.monotonic()
    marks["step up"] = step_t
    sampler.target = args.concurrency
    load.set_concurrency(args.concurrency)

    def settled() -> bool:
        desired = rig.autoscaling().get("desiredReplicas") or 0
        spec_replicas, ready_replicas = rig.replicas()
        serving = rig.serving()
        answered = load.answered_by()
        return (
            desired > 1
            and spec_replicas == desired == ready_replicas
            and len(serving) == desired
            and all(answered[e.name] > 0 for e in serving)
        )

    wait_until(settled, timeout=args.settle_timeout, what="the scale-up to settle")
    # A decision that is still moving (2 -> 3) shows in the next interval: wait for it.
    time.sleep(args.autoscale_interval * 2 + 1)
    wait_until(settled, timeout=args.settle_timeout, what="the scale-up to settle")
    settled_t = steady_start = sampler.now()
    # recentDecisions keeps the last 5: read the scale-up's before the scale-down's come.
    recorded_up = first_decision(rig, step_wall, up=True)
    marks["steady"] = steady_start
    events_before = scale_events(api)
    log(f"steady for {args.steady_seconds}s")
    time.sleep(args.steady_seconds)
    steady_end = sampler.now()
    marks["step down"] = steady_end
    events_steady = {k: v for k, v in scale_events(api).items() if k not in events_before}

    log("step down to 0")
    down_wall = time.time()
    sampler.target = 0
    load.set_concurrency(0)

    def back_to_min() -> bool:
        return rig.autoscaling().get("desiredReplicas") == 1 and rig.replicas()[1] == 1

    wait_until(
        back_to_min,
        timeout=args.scale_down_delay + args.max_replicas * (args.autoscale_interval + 30) + 120,
        what="the replicas back to 1",
    )
    down_done_t = sampler.now()
    time.sleep(args.sample_seconds * 4)  # a few samples of the end
    sampler.stop.set()
    sampler.join(10)
    load.stop()
    after = api.md(NAME)
    samples = sampler.since(0)

    records = load.records()
    new_pod_answers = [
        r.first_token or r.finished or r.started
        for r in records
        if r.pod not in first_pods and r.ok
    ]
    new_endpoint_admitted = [t for e, t in load.admitted.items() if e.name not in first_pods]
    steady = [s for s in samples if steady_start <= s.t <= steady_end]
    desired_steady = [s.desired for s in steady if s.desired is not None]
    changes = sum(1 for a, b in itertools.pairwise(desired_steady) if a != b)
    at_step = [s for s in samples if s.t >= step_t]
    after_down = [s for s in samples if s.t >= steady_end]
    first_up = first_time(at_step, lambda s: (s.desired or 0) > 1)
    first_ready = first_time(at_step, lambda s: (s.ready_replicas or 0) > 1)
    first_down = first_time(
        after_down, lambda s: s.desired is not None and s.desired < (steady[-1].desired or 0)
    )
    steady_requests = [r for r in records if steady_start <= r.started - sampler.t0 <= steady_end]

    def rel(value: float | None, origin: float) -> float | None:
        return None if value is None else round(value - origin, 1)

    summary = load.summary()
    report = {
        "benchmark": "autoscale",
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "model": GEMMA_FILE,
            "slotsPerPod": SLOTS_PER_POD,
            "threadsPerPod": 1,
            "concurrency": args.concurrency,
            "maxTokens": args.max_tokens,
            "minReplicas": 1,
            "maxReplicas": args.max_replicas,
            "targetQueueDepth": args.target_queue_depth,
            "scaleDownDelaySeconds": args.scale_down_delay,
            "autoscaleIntervalSeconds": args.autoscale_interval,
            "steadySeconds": args.steady_seconds,
            "sampleSeconds": args.sample_seconds,
        },
        "scaleUp": {
            "stepToFirstDecisionSecondsPolled": rel(first_up, step_t),
            "stepToFirstDecisionSecondsRecorded": recorded_up,
            "stepToNewReplicaReadySeconds": rel(first_ready, step_t),
            "stepToNewReplicaAdmittedSeconds": rel(
                min(new_endpoint_admitted, default=None), step_mono
            ),
            "stepToNewReplicaFirstTokenSeconds": rel(min(new_pod_answers, default=None), step_mono),
            "stepToSettledSeconds": rel(settled_t, step_t),
            "settledReplicas": steady[0].desired if steady else None,
        },
        "steady": {
            "seconds": round(steady_end - steady_start, 1),
            "scaleEvents": len(events_steady),
            "scaleEventReasons": sorted(events_steady.values()),
            "desiredChanges": changes,
            "desiredMinMax": [min(desired_steady), max(desired_steady)] if desired_steady else None,
            "waitingMax": max((s.waiting or 0 for s in steady), default=None),
            "requests": len(steady_requests),
            "errors": sum(1 for r in steady_requests if not r.ok),
        },
        "scaleDown": {
            "stepToFirstDecisionSecondsPolled": rel(first_down, steady_end),
            "stepToFirstDecisionSecondsRecorded": first_decision(rig, down_wall, up=False),
            "stepToMinReplicasSeconds": rel(down_done_t, steady_end),
        },
        "requests": {
            k: summary[k]
            for k in ("requests", "ok", "errors", "secondsP50", "secondsMax", "answeredBy")
        },
        "firstErrors": summary["firstErrors"],
        "specUnchanged": after["spec"] == before["spec"]
        and after["metadata"]["generation"] == before["metadata"]["generation"],
        "recentDecisions": (after.get("status") or {})
        .get("autoscaling", {})
        .get("recentDecisions"),
        "png": str(args.png),
    }
    plot(
        samples,
        marks,
        args.png,
        f"native autoscaling: gemma 270M, {args.concurrency} streams, target "
        f"{args.target_queue_depth}/replica, interval {args.autoscale_interval:g}s",
    )
    samples_path = args.png.with_suffix(".samples.json")
    samples_path.write_text(json.dumps([asdict(s) for s in samples]))
    report["samples"] = str(samples_path)
    return report


def main() -> None:
    """Start a cluster, run the scenario once, print JSON, write the PNG."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steady-seconds", type=float, default=300.0)
    parser.add_argument("--concurrency", type=int, default=6, help="streams in flight")
    parser.add_argument("--max-replicas", type=int, default=4)
    parser.add_argument("--target-queue-depth", type=int, default=2)
    parser.add_argument("--scale-down-delay", type=int, default=60, help="seconds")
    parser.add_argument("--autoscale-interval", type=float, default=15.0, help="seconds")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--max-requests", type=int, default=5000, help="hard cap")
    parser.add_argument("--baseline-seconds", type=float, default=10.0)
    parser.add_argument("--sample-seconds", type=float, default=0.5)
    parser.add_argument("--settle-timeout", type=float, default=300.0)
    parser.add_argument("--png", type=Path, default=DEFAULT_PNG)
    args = parser.parse_args()
    if not 0 < args.steady_seconds <= 3600:
        parser.error("--steady-seconds must be in (0, 3600]")
    if args.max_replicas < 2:
        parser.error("--max-replicas must be at least 2 to see a scale-up")
    llama = llama_server_dir()
    if llama is None:
        sys.exit("llama-server is not built: run `make llama-server`")
    with bench_cluster("autoscale") as cluster:
        report = run(cluster, llama, args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
