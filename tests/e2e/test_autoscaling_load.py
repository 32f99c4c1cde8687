"""The operator-native autoscaler under real load (issue 12's acceptance).

gemma 270M on the CPU class, served for real by llama-server through the pod runner, with
2 slots per pod (``maxConcurrentRequests: 2``) and ``autoscaling: native`` between 1 and 3
replicas at ``targetQueueDepth: 2``. A load generator (``e2e/load.py``) ramps streaming
chat completions from 1 to 8 in flight; 8 streams over 2 slots leave requests deferred,
so the autoscaler scales up, the new pods become Ready and answer requests; the load stops
and, after ``scaleDownDelaySeconds``, the replicas come back to 1. Every request is
answered in full, the ModelDeployment's spec and generation never change (the autoscaler
writes the Deployment and the status only), and the scale-up and scale-down show up as
Events and in ``status.autoscaling.recentDecisions``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e.autoscaling import NAME, SELECTOR, AutoscalingRig, autoscaled_gemma
from e2e.harness import ClusterHandle, wait_until
from e2e.load import LoadGenerator
from e2e.mirror import ModelMirror
from e2e.models import GEMMA_FILE, ensure_gemma
from prometheus_client.parser import text_string_to_metric_families

MAX_REPLICAS = 3
SCALE_DOWN_DELAY_SECONDS = 20
PEAK_CONCURRENCY = 8
MAX_TOKENS = 48  # about 3 s per request for 2 slots on one thread: a queue builds up

pytestmark = pytest.mark.runtime  # the real llama-server on the gemma 270M model


@pytest.fixture
def mirror() -> Iterator[ModelMirror]:
    """The gemma GGUF on a stand-in https:// mirror (plain HTTP on 127.0.0.1)."""
    with ModelMirror({GEMMA_FILE: ensure_gemma()}) as served:
        yield served


def manifest(mirror: ModelMirror) -> dict[str, Any]:
    """The autoscaled gemma between 1 and 3 replicas (3 fit one CPU node) at queue depth 2."""
    return autoscaled_gemma(
        mirror,
        max_replicas=MAX_REPLICAS,
        target_queue_depth=2,
        scale_down_delay=SCALE_DOWN_DELAY_SECONDS,
    )


class Watch(AutoscalingRig):
    """The rig, and what the test reads of the ModelDeployment, its Deployment and its pods."""

    def pods(self) -> list[str]:
        listed = self.api.core.list_namespaced_pod(self.api.namespace, label_selector=SELECTOR)
        return sorted(pod.metadata.name for pod in listed.items)

    def deferred(self) -> float:
        """Requests the Ready pods' llama-servers hold waiting for a slot, now."""
        total = 0.0
        for endpoint in self.serving():
            try:  # a pod kwok calls Ready may not listen yet
                url = f"{endpoint.base(8000)}/metrics"
                text = httpx.get(url, timeout=5, trust_env=False).text
            except httpx.HTTPError:
                continue
            total += sum(
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == "llamacpp:requests_deferred"
            )
        return total

    def event_reasons(self) -> list[str]:
        events = self.api.core.list_namespaced_event(
            self.api.namespace, field_selector=f"involvedObject.name={NAME}"
        ).items
        return [event.reason for event in events if event.involved_object.kind == "ModelDeployment"]

    def explain(self, load: LoadGenerator | None = None) -> str:
        """What a failure message shows: status, replicas, load, the operator's log tail."""
        parts = [
            f"status.autoscaling: {json.dumps(self.autoscaling(), indent=1)}",
            f"deployment (spec, ready): {self.replicas()}; pods: {self.pods()}",
            f"events: {self.event_reasons()}",
        ]
        if load is not None:
            parts.append(f"load: {json.dumps(load.summary(), indent=1)}")
        parts.append(f"operator log tail:\n{self.operator.log()[-3000:]}")
        return "\n".join(parts)


@pytest.mark.timeout(600)
def test_load_scales_up_new_pods_take_requests_and_idle_scales_back_down(
    crd_cluster: ClusterHandle, namespace: str, llama_server: Path, mirror: ModelMirror
) -> None:
    if crd_cluster.workdir is None:
        pytest.skip("the pod runner runs pods of the local control plane only")
    watch = Watch.build(
        crd_cluster,
        namespace,
        mirror,
        llama_server,
        autoscale_interval=2.0,
        max_tokens=MAX_TOKENS,
        max_requests=600,  # about 8 in flight for 4 minutes at ~3 s each, with room
        max_seconds=360,
    )
    api, runner, operator, load = watch.api, watch.runner, watch.operator, watch.load
    with runner:
        operator.start()
        try:
            api.create(manifest(mirror))
            ready = crd_cluster.kubectl(
                "wait", "-n", namespace, "--for=condition=Ready", f"mdep/{NAME}",
                "--timeout=300s", check=False,
            )  # fmt: skip
            assert ready.returncode == 0, ready.stderr + watch.explain()

            def one_replica_serving() -> bool:
                status = watch.autoscaling()
                return (
                    status.get("desiredReplicas") == 1
                    and watch.replicas() == (1, 1)
                    and len(watch.serving()) == 1
                )

            wait_until(one_replica_serving, timeout=120, what="1 replica Ready and decided")
            before = api.md(NAME)
            first_pod = watch.pods()[0]

            # Ramp 1 -> 2 -> 4 -> 8 streams, each step once the previous one answered.
            load.start()
            for step in (1, 2, 4, PEAK_CONCURRENCY):
                answered = len(load.completed())
                load.set_concurrency(step)
                if step < PEAK_CONCURRENCY:
                    wait_until(
                        lambda n=answered, s=step: len(load.completed()) >= n + s,
                        timeout=120,
                        what=f"{step} requests answered at concurrency {step}",
                    )

            def scaled_up() -> int | None:
                desired = int(watch.autoscaling().get("desiredReplicas") or 0)
                return desired if desired > 1 and watch.replicas()[0] == desired else None

            # 8 streams over at most 3 pods of 2 slots: llama-server defers some of them.
            wait_until(watch.deferred, timeout=60, what="requests deferred by llama-server")
            desired = wait_until(scaled_up, timeout=120, what="a scale-up the Deployment follows")

            def new_pods_answer() -> bool:
                status = watch.autoscaling()
                spec_replicas, ready_replicas = watch.replicas()
                if status.get("desiredReplicas") != spec_replicas or ready_replicas < 2:
                    return False
                serving = {e.name for e in watch.serving()}
                answered = load.answered_by()
                return (
                    len(serving) == spec_replicas == ready_replicas
                    and all(answered[pod] > 0 for pod in serving)
                    and any(pod != first_pod for pod in serving)
                )

            try:
                wait_until(new_pods_answer, timeout=240, what="every new pod Ready and answering")
            except TimeoutError as error:
                raise AssertionError(f"{error}\n{watch.explain(load)}") from error
            scaled_to = watch.replicas()[0]
            assert scaled_to >= desired

            load.stop()
            records = load.records()
            assert load.in_flight() == 0
            failed = [r for r in records if not r.ok]
            assert records and not failed, watch.explain(load)
            assert any(r.concurrency == PEAK_CONCURRENCY for r in records), load.summary()
            new_pods = {r.pod for r in records} - {first_pod}
            assert new_pods, load.summary()  # answered by pods the scale-up started

            def scaled_down() -> bool:
                status = watch.autoscaling()
                return (
                    status.get("desiredReplicas") == status.get("currentReplicas") == 1
                    and watch.replicas() == (1, 1)
                    and len(watch.pods()) == 1
                )

            try:
                wait_until(
                    scaled_down,
                    timeout=SCALE_DOWN_DELAY_SECONDS + 120,
                    what="the replicas back to 1 after the scale-down delay",
                )
            except TimeoutError as error:
                raise AssertionError(f"{error}\n{watch.explain(load)}") from error

            after = api.md(NAME)
            # The autoscaler writes the Deployment and the status, never the spec.
            assert after["metadata"]["generation"] == before["metadata"]["generation"]
            assert after["spec"] == before["spec"]
            assert after["spec"]["autoscaling"] == manifest(mirror)["spec"]["autoscaling"]

            wait_until(
                lambda: {"ScaledUp", "ScaledDown"} <= set(watch.event_reasons()),
                timeout=30,
                what="ScaledUp and ScaledDown Events",
            )
            status = after["status"]["autoscaling"]
            assert status["mode"] == "native"
            assert status["desiredReplicas"] == 1 and status["currentReplicas"] == 1
            decisions = status["recentDecisions"]
            ups = [d for d in decisions if d["to"] > d["from"]]
            downs = [d for d in decisions if d["to"] < d["from"]]
            assert ups and downs, decisions
            assert 2 <= max(d["to"] for d in decisions) <= MAX_REPLICAS, decisions
            assert decisions[-1]["to"] == 1 and decisions[-1]["from"] == 2, decisions
            assert all(d["to"] - d["from"] >= -1 for d in decisions), decisions  # one by one
            assert "lastScaleTime" in status and status["lastScaleTime"] == decisions[-1]["time"]
        finally:
            if load.running:
                load.stop(timeout=150)
            operator.stop()
