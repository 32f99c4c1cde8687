"""One OpenAI endpoint in front of two ModelDeployments: ``modeldeploy gateway`` on the
local cluster, with real llama.cpp pods.

Two small gemma 270M ModelDeployments (from the stand-in https:// mirror, sha256 pinned)
are served as ``gemma-a`` and ``gemma-b`` by the operator and the pod runner; one gateway
process on 127.0.0.1 discovers them by watching ModelDeployments and pods, and each is
reached by its model name, with httpx and with the ``openai`` client (streaming and not);
an unknown model is a 404. With ``--require-api-keys`` and a key Secret, a wrong or missing
key gets 401 and no model list, and the right key reaches the models its grant allows.

Without pods (no operator runs): the gateway follows ModelDeployments and key Secrets as
they come and go, and a request for a ModelDeployment at zero is held, signals its demand
Lease (``gateway.wake``), and past the hold time gets a 503 with ``Retry-After``.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from e2e.gateway import PROMPT, GatewayProcess, small_gemma
from e2e.harness import ClusterHandle, ModelDeploymentApi, OperatorProcess, wait_until
from e2e.mirror import ModelMirror
from e2e.models import GEMMA_FILE, ensure_gemma
from e2e.podrunner import PodRunner
from kubernetes import client
from test_serving import PORT

MODELS = ("gemma-a", "gemma-b")
KEY = "sk-e2e-gateway-7f3c"


@pytest.fixture
def mirror() -> Iterator[ModelMirror]:
    """The gemma GGUF on a stand-in https:// mirror (plain HTTP on 127.0.0.1)."""
    with ModelMirror({GEMMA_FILE: ensure_gemma()}) as served:
        yield served


def key_secret(name: str, key: str, models: str | None = None) -> dict[str, Any]:
    """An API-key Secret for the gateway, allowed ``models`` (a comma list) when given."""
    annotations = {"modeldeploy.io/models": models} if models else {}
    return {
        "metadata": {
            "name": name,
            "labels": {"modeldeploy.io/gateway-api-key": "true"},
            "annotations": annotations,
        },
        "data": {"api-key": base64.b64encode(key.encode()).decode()},
    }


def wait_serving(
    api: ModelDeploymentApi, runner: PodRunner, operator: OperatorProcess, name: str
) -> str:
    """Wait until ``name``'s one pod serves it on its IP and the ModelDeployment is Ready;
    its base URL."""
    selector = f"modeldeploy.io/model-deployment={name}"

    def serving() -> str | None:
        pods = api.core.list_namespaced_pod(api.namespace, label_selector=selector).items
        if len(pods) != 1 or not pods[0].status.pod_ip:
            return None
        run = runner.run_of(pods[0].metadata.name)
        failed = {c: e for c, e in (run.exits if run else {}).items() if e and e[-1]}
        assert not failed, (failed, operator.log()[-2000:])
        base = f"http://{pods[0].status.pod_ip}:{PORT}"
        try:
            models = httpx.get(f"{base}/v1/models", timeout=2)
            health = httpx.get(f"{base}/health", timeout=2)
        except httpx.HTTPError:
            return None
        # llama-server answers /v1/models with a 503 error body while it loads the model.
        if health.status_code != 200 or models.status_code != 200:
            return None
        if [m["id"] for m in models.json()["data"]] != [name]:
            return None
        ready = api.condition(name, "Ready")
        return base if ready and ready["status"] == "True" else None

    return wait_until(serving, timeout=600, what=f"{name} to serve from its pod")


@pytest.mark.timeout(1200)
def test_two_model_deployments_behind_one_gateway_are_reached_by_their_names(
    crd_cluster: ClusterHandle, namespace: str, llama_server: Path, mirror: ModelMirror
) -> None:
    if crd_cluster.workdir is None:
        pytest.skip("the pod runner runs pods of the local control plane only")
    api = ModelDeploymentApi(crd_cluster, namespace)
    runner = PodRunner(
        crd_cluster.kubeconfig,
        crd_cluster.workdir,
        namespace=namespace,
        node_env=mirror.plain_http_env(),
        path_dirs=[llama_server],
    )
    operator = OperatorProcess(crd_cluster.kubeconfig, namespace, env=mirror.plain_http_env())
    gateways: list[GatewayProcess] = []
    with runner:
        operator.start()
        try:
            for name in MODELS:
                api.create(small_gemma(mirror, name))
            for name in MODELS:
                wait_serving(api, runner, operator, name)

            gateway = GatewayProcess(crd_cluster.kubeconfig, namespace).start()
            gateways.append(gateway)
            assert gateway.listed() == list(MODELS)
            for name in MODELS:
                answer = wait_until(
                    lambda n=name: (r := gateway.chat(n)).status_code == 200 and r,
                    timeout=120,
                    what=f"a chat completion of {name} through the gateway",
                )
                body = answer.json()
                # llama-server answers under its alias, the served name: this pod's.
                assert body["model"] == name, body
                assert body["choices"][0]["message"]["content"].strip()
                assert body["usage"]["completion_tokens"] >= 1

            openai_client = gateway.openai()
            assert [m.id for m in openai_client.models.list()] == list(MODELS)
            for name in MODELS:
                completion = openai_client.chat.completions.create(
                    model=name, messages=PROMPT, max_tokens=8, temperature=0
                )
                assert completion.model == name
                assert (completion.choices[0].message.content or "").strip()
                stream = openai_client.chat.completions.create(
                    model=name, messages=PROMPT, max_tokens=8, temperature=0, stream=True
                )
                chunks = list(stream)
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                assert len(chunks) >= 2 and text.strip(), chunks
                assert {c.model for c in chunks} == {name}
            completions = openai_client.completions.create(
                model=MODELS[1], prompt="The sky is", max_tokens=4, temperature=0
            )
            assert completions.model == MODELS[1] and completions.choices[0].text

            unknown = gateway.chat("gemma-c")
            assert unknown.status_code == 404, unknown.text
            assert unknown.json()["error"]["code"] == "model_not_found"
            with pytest.raises(openai.NotFoundError):
                openai_client.chat.completions.create(model="gemma-c", messages=PROMPT)
            gateway.assert_watched_without_failure()
            gateway.stop()
            assert gateway.process is not None and gateway.process.returncode == 0, gateway.log()

            # API keys: a key Secret allowed gemma-a only, and a gateway that requires keys.
            api.core.create_namespaced_secret(namespace, key_secret("alice", KEY, MODELS[0]))
            keyed = GatewayProcess(crd_cluster.kubeconfig, namespace, "--require-api-keys")
            gateways.append(keyed.start())
            listed = wait_until(
                lambda: keyed.listed(KEY), timeout=30, what="the gateway to load the key"
            )
            assert listed == [MODELS[0]]
            for key in (None, "sk-wrong", f"{KEY}x", KEY[:-1]):
                refused = keyed.models(key)
                assert refused.status_code == 401, (key, refused.text)
                assert "data" not in refused.json()
                assert refused.json()["error"]["code"] == "invalid_api_key"
                assert keyed.chat(MODELS[0], key).status_code == 401
            # The right key, but not as a bearer token.
            basic = {"Authorization": f"Basic {KEY}"}
            assert (
                httpx.get(f"{keyed.base}/v1/models", headers=basic, timeout=10).status_code == 401
            )
            allowed = keyed.chat(MODELS[0], KEY)
            assert allowed.status_code == 200, allowed.text
            assert allowed.json()["model"] == MODELS[0]
            # gemma-b is not the key's to reach: not listed, and not served.
            hidden = keyed.chat(MODELS[1], KEY)
            assert hidden.status_code == 404 and "gemma-b" in hidden.text, hidden.text
            assert [m.id for m in keyed.openai(KEY).models.list()] == [MODELS[0]]
            with pytest.raises(openai.AuthenticationError):
                keyed.openai("sk-wrong").models.list()
            with pytest.raises(openai.AuthenticationError):
                keyed.openai("sk-wrong").chat.completions.create(model=MODELS[0], messages=PROMPT)
            assert KEY not in keyed.log() and "sk-wrong" not in keyed.log()
            keyed.assert_watched_without_failure()
        finally:
            for started in gateways:
                started.stop()
            operator.stop()


@pytest.mark.timeout(300)
def test_the_gateway_follows_the_cluster_and_signals_demand_for_a_model_at_zero(
    crd_cluster: ClusterHandle, namespace: str
) -> None:
    api = ModelDeploymentApi(crd_cluster, namespace)
    leases = client.CoordinationV1Api(crd_cluster.api_client())
    idle: dict[str, Any] = {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "idle"},
        "spec": {
            "model": {"source": "hf://unsloth/gemma-3-270m-it-GGUF", "servedName": "gemma-idle"},
            "autoscaling": {"enabled": True, "minReplicas": 0, "maxReplicas": 1},
        },
    }
    api.create(idle)
    gateway = GatewayProcess(crd_cluster.kubeconfig, namespace, "--hold-seconds", "2").start()
    try:
        assert wait_until(gateway.listed, timeout=30, what="the listed models") == ["gemma-idle"]

        # No pod: the request is held, the demand Lease is written, then 503 Retry-After.
        before = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
        held = gateway.chat("gemma-idle", timeout=30)
        assert held.status_code == 503, held.text
        assert held.headers.get("Retry-After")

        def signalled() -> client.V1Lease | None:
            try:
                return leases.read_namespaced_lease("idle-demand", namespace)
            except client.ApiException as error:
                if error.status == 404:
                    return None
                raise

        lease = wait_until(signalled, timeout=10, what="the demand Lease")
        assert lease.metadata.labels == {
            "modeldeploy.io/model-deployment": "idle",
            "modeldeploy.io/demand": "true",
        }
        assert lease.spec.holder_identity == gateway.identity
        assert lease.spec.lease_duration_seconds == 30  # demand.DEMAND_FRESH_SECONDS
        assert lease.spec.renew_time >= before

        # A ModelDeployment that comes is listed, and one that goes is not.
        late = {**idle, "metadata": {"name": "late"}}
        late["spec"] = {"model": {**idle["spec"]["model"], "servedName": "gemma-late"}}
        api.create(late)
        wait_until(
            lambda: gateway.listed() == ["gemma-idle", "gemma-late"], timeout=30, what="late"
        )
        api.custom.delete_namespaced_custom_object(
            "modeldeploy.io", "v1alpha1", namespace, "modeldeployments", "late"
        )
        wait_until(lambda: gateway.listed() == ["gemma-idle"], timeout=30, what="late gone")

        # A key Secret that comes turns keys on; once it goes, the gateway is open again.
        api.core.create_namespaced_secret(namespace, key_secret("bob", KEY))
        wait_until(lambda: gateway.models().status_code == 401, timeout=30, what="keys on")
        assert gateway.listed(KEY) == ["gemma-idle"]
        api.core.delete_namespaced_secret("bob", namespace)
        wait_until(lambda: gateway.models().status_code == 200, timeout=30, what="keys off")
        assert KEY not in gateway.log()
        gateway.assert_watched_without_failure()
    finally:
        gateway.stop()
    assert gateway.process is not None and gateway.process.returncode == 0, gateway.log()
