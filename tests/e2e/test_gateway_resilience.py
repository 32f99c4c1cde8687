"""The gateway under pod churn, on the local cluster with real llama.cpp pods.

A rolling update under a bounded sequential load loses no request: the Deployment surges
a new pod (maxSurge 1, maxUnavailable 0), the gateway's watch adds it once Ready and drops
the old one once it terminates (the old pod's supervisor drains before stopping
llama-server), and a request that reaches a stopping pod before anything was sent is
retried on the other. A pod whose llama-server is SIGKILLed mid-stream fails only the
stream it held: that client gets a truncated answer (a stream cut mid-way is not retried),
the stream on the other pod completes with all its tokens, and the next request through
the gateway is answered (the killed pod is ejected, then restarted by the pod runner).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e.gateway import PROMPT, GatewayProcess, small_gemma
from e2e.harness import ClusterHandle, ModelDeploymentApi, OperatorProcess, wait_until
from e2e.mirror import ModelMirror
from e2e.podrunner import PodRunner, descendants
from kubernetes import client
from test_gateway import mirror, wait_serving  # noqa: F401 - the fixture
from test_serving import PORT, metric

ROLLING = "gemma-roll"
KILLED = "gemma-kill"
MAX_REQUESTS = 150  # the rolling load's bound in count (a rollout takes ~40 here) ...
MAX_LOAD_SECONDS = 300.0  # ... and in time
AFTER_ROLLOUT = 5  # requests sent once the rollout has finished
STREAM_TOKENS = 200
MIN_READY_SECONDS = 5
CONFIG_ERROR = "CreateContainerConfigError"  # a pod the runner refuses (never starts)


def runner_for(
    crd_cluster: ClusterHandle, namespace: str, served: ModelMirror, llama: Path
) -> PodRunner:
    """The pod runner of this test's namespace, fetching from ``served``."""
    assert crd_cluster.workdir is not None
    return PodRunner(
        crd_cluster.kubeconfig,
        crd_cluster.workdir,
        namespace=namespace,
        node_env=served.plain_http_env(),
        path_dirs=[llama],
    )


def pods_of(api: ModelDeploymentApi, name: str) -> list[client.V1Pod]:
    """The pods of ModelDeployment ``name``, terminating ones included."""
    selector = f"modeldeploy.io/model-deployment={name}"
    return list(api.core.list_namespaced_pod(api.namespace, label_selector=selector).items)


def pod_ready(pod: client.V1Pod) -> bool:
    """Ready, and not terminating."""
    conditions = pod.status.conditions or []
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
    return ready and pod.metadata.deletion_timestamp is None


def backends(gateway: GatewayProcess) -> dict[str, float]:
    """The gateway's in-flight requests per backend (``namespace/pod``), idle ones at 0."""
    text = httpx.get(f"{gateway.base}/metrics", timeout=5).text
    prefix = 'modeldeploy_gateway_inflight_requests{backend="'
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            labels, _, value = line.rpartition(" ")
            found[labels[len(prefix) :].split('"', 1)[0]] = float(value)
    return found


def tails(gateway: GatewayProcess, operator: OperatorProcess) -> str:
    """The ends of the gateway's and the operator's logs, for a failure's message."""
    return f"gateway:\n{gateway.log()[-3000:]}\noperator:\n{operator.log()[-3000:]}"


class SequentialLoad(threading.Thread):
    """Short chat completions through the gateway, one after another, bounded in count and
    time; once ``finish`` is set, ``AFTER_ROLLOUT`` more, then it stops."""

    def __init__(self, gateway: GatewayProcess, model: str) -> None:
        super().__init__(name="sequential-load", daemon=True)
        self.gateway, self.model = gateway, model
        self.finish = threading.Event()
        self.outcomes: list[tuple[float, int | str]] = []  # (sent at, status or error)
        self.after_finish = 0

    def run(self) -> None:
        body = {"model": self.model, "messages": PROMPT, "max_tokens": 4, "temperature": 0}
        deadline = time.monotonic() + MAX_LOAD_SECONDS
        with httpx.Client(base_url=self.gateway.base, timeout=60) as http:
            while len(self.outcomes) < MAX_REQUESTS and time.monotonic() < deadline:
                if self.finish.is_set():
                    if self.after_finish >= AFTER_ROLLOUT:
                        return
                    self.after_finish += 1
                sent = time.monotonic()
                try:
                    answer = http.post("/v1/chat/completions", json=body)
                    outcome: int | str = answer.status_code
                    if answer.status_code != 200:
                        outcome = f"{answer.status_code}: {answer.text[:300]}"
                except httpx.HTTPError as error:
                    outcome = repr(error)
                self.outcomes.append((sent, outcome))


@pytest.mark.timeout(1200)
def test_a_rolling_update_under_load_loses_no_request(
    crd_cluster: ClusterHandle,
    namespace: str,
    llama_server: Path,
    mirror: ModelMirror,  # noqa: F811 - the fixture
) -> None:
    if crd_cluster.workdir is None:
        pytest.skip("the pod runner runs pods of the local control plane only")
    api = ModelDeploymentApi(crd_cluster, namespace)
    operator = OperatorProcess(crd_cluster.kubeconfig, namespace, env=mirror.plain_http_env())
    gateway = GatewayProcess(crd_cluster.kubeconfig, namespace)
    load = SequentialLoad(gateway, ROLLING)
    with runner_for(crd_cluster, namespace, mirror, llama_server) as runner:
        operator.start()
        try:
            # One replica is enough: the rollout surges (maxSurge 1, maxUnavailable 0).
            api.create(small_gemma(mirror, ROLLING))
            wait_serving(api, runner, operator, ROLLING)
            (old,) = (pod.metadata.name for pod in pods_of(api, ROLLING))
            # kwok's fast pod-ready stage marks a new pod Ready for a moment before the pod
            # runner reports its real state (e2e/podrunner/status.py); without a
            # minReadySeconds, the Deployment controller takes that flap for a Ready pod and
            # stops the old pod while the new one still loads. A kubelet does not flap, so
            # this stands in for it. Not a field the operator renders: its apply keeps it.
            apps = client.AppsV1Api(crd_cluster.api_client())
            apps.patch_namespaced_deployment(
                ROLLING, namespace, {"spec": {"minReadySeconds": MIN_READY_SECONDS}}
            )
            gateway.start()
            wait_until(
                lambda: gateway.chat(ROLLING).status_code == 200,
                timeout=120,
                what="a first answer through the gateway",
            )

            load.start()
            wait_until(lambda: len(load.outcomes) >= 3, timeout=60, what="the load to start")
            rolled_at = time.monotonic()
            api.patch_spec(ROLLING, {"serving": {"env": [{"name": "E2E_ROLL", "value": "1"}]}})

            def rolled() -> str | None:
                if not load.is_alive():
                    failed = [o for _, o in load.outcomes if o != 200][:5]
                    raise AssertionError(
                        f"the load ended before the rollout: {len(load.outcomes)} requests, "
                        f"failures {failed}\n{tails(gateway, operator)}"
                    )
                pods = pods_of(api, ROLLING)
                if len(pods) != 1 or pods[0].metadata.name == old or not pod_ready(pods[0]):
                    return None
                new: str = pods[0].metadata.name
                return new if set(backends(gateway)) == {f"{namespace}/{new}"} else None

            new = wait_until(rolled, timeout=600, what="the new pod to replace the old one")
            assert apps.read_namespaced_deployment(ROLLING, namespace).spec.min_ready_seconds == (
                MIN_READY_SECONDS
            )
            rollout_seconds = time.monotonic() - rolled_at
            load.finish.set()
            load.join(timeout=120)
            assert not load.is_alive(), "the load did not stop"

            during = [o for sent, o in load.outcomes if sent >= rolled_at]
            failed = [o for _, o in load.outcomes if o != 200]
            assert not failed, (failed, tails(gateway, operator))
            assert load.after_finish == AFTER_ROLLOUT, (load.after_finish, len(load.outcomes))
            assert len(during) > AFTER_ROLLOUT, (len(during), rollout_seconds)
            # The requests sent after the rollout were answered by the new pod.
            (pod,) = pods_of(api, ROLLING)
            served = httpx.get(f"http://{pod.status.pod_ip}:{PORT}/metrics", timeout=10).text
            assert metric(served, "llamacpp:tokens_predicted_total") >= 4 * AFTER_ROLLOUT
            assert runner.run_of(new) is not None
            print(
                f"\n{len(load.outcomes)} requests, {len(during)} during a "
                f"{rollout_seconds:.1f}s rollout, all 200"
            )
            gateway.assert_watched_without_failure()
        finally:
            load.finish.set()
            gateway.stop()
            operator.stop()


class Stream(threading.Thread):
    """One streaming chat completion through the gateway, read to its end or its error."""

    def __init__(self, gateway: GatewayProcess, model: str) -> None:
        super().__init__(name=f"stream-{model}", daemon=True)
        self.gateway, self.model = gateway, model
        self.started = threading.Event()  # the first token arrived
        self.tokens = 0  # content deltas
        self.finish_reason: str | None = None
        self.done = False  # data: [DONE] arrived
        self.error: str | None = None
        self.usage: dict[str, Any] | None = None

    def run(self) -> None:
        body = {
            "model": self.model,
            "messages": PROMPT,
            "max_tokens": STREAM_TOKENS,
            "ignore_eos": True,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        timeout = httpx.Timeout(10, read=120)
        try:
            with httpx.stream(
                "POST", f"{self.gateway.base}/v1/chat/completions", json=body, timeout=timeout
            ) as response:
                if response.status_code != 200:
                    self.error = f"HTTP {response.status_code}: {response.read()[:300]!r}"
                    return
                for line in response.iter_lines():
                    self._line(line)
        except httpx.HTTPError as error:
            self.error = repr(error)
        finally:
            self.started.set()  # a stream that failed before its first token, too

    def _line(self, line: str) -> None:
        if not line.startswith("data: "):
            return
        data = line.removeprefix("data: ").strip()
        if data == "[DONE]":
            self.done = True
            return
        chunk = json.loads(data)
        self.usage = chunk.get("usage") or self.usage
        for choice in chunk.get("choices") or []:
            if (choice.get("delta") or {}).get("content"):
                self.tokens += 1
                self.started.set()
            self.finish_reason = choice.get("finish_reason") or self.finish_reason


def llama_server_pid(runner: PodRunner, pod: str) -> int:
    """The pid of the llama-server process below pod ``pod``'s engine container."""
    run = runner.run_of(pod)
    assert run is not None and "llamacpp" in run.pids, run
    found = [
        pid
        for pid in descendants(run.pids["llamacpp"])
        if Path(f"/proc/{pid}/comm").read_text().strip() == "llama-server"
    ]
    assert len(found) == 1, (pod, found)
    return found[0]


@pytest.mark.timeout(1200)
def test_a_pod_killed_mid_stream_fails_only_the_stream_it_held(
    crd_cluster: ClusterHandle,
    namespace: str,
    llama_server: Path,
    mirror: ModelMirror,  # noqa: F811 - the fixture
) -> None:
    if crd_cluster.workdir is None:
        pytest.skip("the pod runner runs pods of the local control plane only")
    api = ModelDeploymentApi(crd_cluster, namespace)
    operator = OperatorProcess(crd_cluster.kubeconfig, namespace, env=mirror.plain_http_env())
    gateway = GatewayProcess(crd_cluster.kubeconfig, namespace)
    with runner_for(crd_cluster, namespace, mirror, llama_server) as runner:
        operator.start()
        try:
            md = small_gemma(mirror, KILLED)
            md["spec"]["replicas"] = 2
            # Two replicas get a claim each (a generic ephemeral volume), which the pod runner
            # does not run: an emptyDir cache instead, each pod fetching from the mirror.
            md["spec"]["cache"] = {"enabled": False}
            api.create(md)

            def serving() -> set[str] | None:
                pods = pods_of(api, KILLED)
                for pod in pods:
                    statuses = [*(pod.status.init_container_statuses or [])]
                    statuses += pod.status.container_statuses or []
                    waiting = [s.state.waiting for s in statuses if s.state and s.state.waiting]
                    refused = [w.message for w in waiting if w.reason == CONFIG_ERROR]
                    assert not refused, (pod.metadata.name, refused)
                    run = runner.run_of(pod.metadata.name)
                    failed = {c: e for c, e in (run.exits if run else {}).items() if e and e[-1]}
                    assert not failed, (failed, operator.log()[-2000:])
                if len(pods) != 2 or not all(pod_ready(pod) for pod in pods):
                    return None
                for pod in pods:
                    try:
                        health = httpx.get(f"http://{pod.status.pod_ip}:{PORT}/health", timeout=2)
                    except httpx.HTTPError:
                        return None
                    if health.status_code != 200:
                        return None
                return {f"{namespace}/{pod.metadata.name}" for pod in pods}

            both = wait_until(serving, timeout=600, what=f"{KILLED}'s two pods to serve")
            gateway.start()
            wait_until(lambda: set(backends(gateway)) == both, timeout=60, what="both backends")

            # Least in-flight: the second stream goes to the pod the first does not hold.
            first, second = Stream(gateway, KILLED), Stream(gateway, KILLED)
            first.start()
            wait_until(first.started.is_set, timeout=120, what="the first stream's first token")
            assert first.error is None, (first.error, tails(gateway, operator))
            busy = {b for b, n in backends(gateway).items() if n == 1}
            assert len(busy) == 1, backends(gateway)
            (victim,) = busy
            second.start()
            wait_until(second.started.is_set, timeout=120, what="the second stream's first token")
            assert second.error is None, (second.error, tails(gateway, operator))
            assert backends(gateway) == dict.fromkeys(both, 1.0)
            (survivor,) = both - busy

            victim_pod = victim.split("/", 1)[1]
            pid = llama_server_pid(runner, victim_pod)
            survivor_pid = llama_server_pid(runner, survivor.split("/", 1)[1])
            os.kill(pid, signal.SIGKILL)
            killed_after = first.tokens
            for stream in (first, second):
                stream.join(timeout=180)
                assert not stream.is_alive(), "a stream did not end"

            # The killed pod's stream is cut short: no [DONE], fewer tokens, or an error.
            assert killed_after < STREAM_TOKENS, "the first stream ended before the kill"
            assert not first.done and first.tokens < STREAM_TOKENS, vars(first)
            assert first.finish_reason is None, vars(first)
            # The other completes with all its tokens.
            assert second.error is None and second.done, (vars(second), tails(gateway, operator))
            assert second.finish_reason == "length", vars(second)
            if second.usage is not None:
                assert second.usage["completion_tokens"] == STREAM_TOKENS, second.usage
            assert second.tokens >= STREAM_TOKENS * 0.9, vars(second)
            assert Path(f"/proc/{survivor_pid}").exists()

            # The gateway saw the stream fail, and the next requests are answered.
            errors = httpx.get(f"{gateway.base}/metrics", timeout=5).text
            assert "modeldeploy_gateway_upstream_errors_total" in errors
            assert 'kind="stream"' in errors, errors
            for _ in range(3):
                answer = gateway.chat(KILLED, timeout=60)
                assert answer.status_code == 200, (answer.text, tails(gateway, operator))

            # The runner restarts the engine; once Ready again, the gateway routes to it.
            def restarted() -> bool:
                pod = api.core.read_namespaced_pod(victim_pod, namespace)
                engine = {s.name: s for s in pod.status.container_statuses or []}["llamacpp"]
                return engine.restart_count >= 1 and pod_ready(pod) and victim in backends(gateway)

            wait_until(restarted, timeout=300, what="the killed pod to restart and return")
            run = runner.run_of(victim_pod)
            assert run is not None and run.exits["llamacpp"] and run.exits["llamacpp"][0] != 0
            print(
                f"\nkilled {victim} after {killed_after} tokens ({first.tokens} relayed, "
                f"error {first.error}); {survivor} streamed {second.tokens}"
            )
        finally:
            gateway.stop()
            operator.stop()
