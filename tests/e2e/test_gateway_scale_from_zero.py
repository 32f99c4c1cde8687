"""Scale from zero through the gateway, on the local cluster with a real llama.cpp pod.

A ModelDeployment with autoscaling ``minReplicas: 0`` starts at zero (no pod) under an
operator whose settings allow zero (``planning.scaleToZero``). A request through
``modeldeploy gateway`` is held, the gateway renews the ModelDeployment's demand Lease, the
operator's watch of that Lease runs an autoscaler round at once and scales to one, the pod
fetches and starts, and the held request is answered, with no error to the client. The
Lease counts the held request while it waits (``modeldeploy.io/held``), and none once it
was answered.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import httpx
import pytest
from e2e.gateway import GatewayProcess, gemma_at_zero
from e2e.harness import ClusterHandle, ModelDeploymentApi, OperatorProcess, wait_until
from e2e.mirror import ModelMirror
from e2e.podrunner import PodRunner
from kubernetes import client
from test_gateway import mirror  # noqa: F401 - the fixture

NAME = "gemma-zero"


def held_on_lease(leases: client.CoordinationV1Api, namespace: str) -> int | None:
    """The count of held requests the demand Lease says (None: no Lease or no count)."""
    try:
        lease = leases.read_namespaced_lease(f"{NAME}-demand", namespace)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    held = (lease.metadata.annotations or {}).get("modeldeploy.io/held")
    return int(held) if held is not None else None


@pytest.mark.timeout(900)
def test_a_model_at_zero_answers_its_first_request_after_its_pod_starts(
    crd_cluster: ClusterHandle,
    namespace: str,
    llama_server: Path,
    mirror: ModelMirror,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    if crd_cluster.workdir is None:
        pytest.skip("the pod runner runs pods of the local control plane only")
    settings = tmp_path / "operator.yaml"
    settings.write_text("planning:\n  scaleToZero: true\n")
    api = ModelDeploymentApi(crd_cluster, namespace)
    runner = PodRunner(
        crd_cluster.kubeconfig,
        crd_cluster.workdir,
        namespace=namespace,
        node_env=mirror.plain_http_env(),
        path_dirs=[llama_server],
    )
    operator = OperatorProcess(
        crd_cluster.kubeconfig, namespace, env=mirror.plain_http_env(), settings_file=settings
    )
    gateway = GatewayProcess(crd_cluster.kubeconfig, namespace, "--hold-seconds", "600")
    with runner, concurrent.futures.ThreadPoolExecutor(1) as pool:
        operator.start()
        gateway.start()
        try:
            api.create(gemma_at_zero(mirror, NAME, 600))

            def at_zero() -> bool:
                found = api.md(NAME).get("status") or {}
                return (found.get("autoscaling") or {}).get("desiredReplicas") == 0

            wait_until(at_zero, timeout=120, what=f"{NAME} to be planned at zero replicas")
            assert wait_until(
                lambda: gateway.listed() is not None and NAME in (gateway.listed() or []),
                timeout=60,
                what="the gateway to list the model at zero",
            )
            selector = f"modeldeploy.io/model-deployment={NAME}"
            assert api.core.list_namespaced_pod(namespace, label_selector=selector).items == []

            answer = pool.submit(gateway.chat, NAME, None, 600)
            leases = client.CoordinationV1Api(crd_cluster.api_client())
            wait_until(
                lambda: (held_on_lease(leases, namespace) or 0) >= 1,
                timeout=60,
                what="the demand Lease to count the held request",
            )
            woken = wait_until(
                lambda: api.core.list_namespaced_pod(namespace, label_selector=selector).items,
                timeout=120,
                what="the held request to wake a pod",
            )
            assert len(woken) == 1
            response: httpx.Response = answer.result(timeout=600)
            assert response.status_code == 200, (response.text, gateway.log()[-2000:])
            assert response.json()["choices"][0]["message"]["content"]
            wait_until(
                lambda: held_on_lease(leases, namespace) == 0,
                timeout=60,
                what="the demand Lease to count no held request once it was answered",
            )
            decisions = (api.md(NAME)["status"]["autoscaling"].get("recentDecisions")) or []
            assert any(d["from"] == 0 and d["to"] == 1 for d in decisions), decisions
            assert any("held at the gateway" in d["reason"] for d in decisions), decisions
        finally:
            gateway.stop()
            operator.stop()
