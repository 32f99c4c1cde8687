"""A LoRA adapter served on gemma 270M in the local cluster, reached by its own model name.

The base and a real GGUF LoRA adapter (``e2e.lora``) come from a stand-in https:// mirror
on 127.0.0.1 with their sha256 pinned. The operator resolves both (it reads the adapter's
header: made for gemma3, like the base) and records them in ``status.artifact``; the pod's
one fetch init container fetches and verifies both; the launcher loads the adapter into
llama-server unapplied and puts the adapter router on the pod IP's port, so ``/v1/models``
lists base and adapter and a request naming the adapter gets it. An adapter made for
another architecture is refused before any pod exists.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e.harness import ClusterHandle, OperatorProcess, wait_until
from e2e.lora import write_lora_adapter
from e2e.mirror import ModelMirror
from e2e.models import GEMMA_FILE, ensure_gemma
from e2e.podrunner import PodRunner
from kubernetes import client
from test_serving import GROUP, NAME, PLURAL, PORT, VERSION, gemma_from

ADAPTER = "gemma-pirate"
ADAPTER_FILE = "gemma-pirate-lora.gguf"
WRONG_FILE = "llama-lora.gguf"
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A gemma3 adapter, and one that claims to be for llama."""
    root = tmp_path_factory.mktemp("adapters")
    gemma = ensure_gemma()
    return {
        ADAPTER_FILE: write_lora_adapter(gemma, root / ADAPTER_FILE, seed=7),
        WRONG_FILE: write_lora_adapter(gemma, root / WRONG_FILE, seed=7, architecture="llama"),
    }


@pytest.fixture
def mirror(adapters: dict[str, Path]) -> Iterator[ModelMirror]:
    """gemma and the adapters on a stand-in https:// mirror (plain HTTP on 127.0.0.1)."""
    with ModelMirror({GEMMA_FILE: ensure_gemma(), **adapters}) as served:
        yield served


def with_adapter(mirror: ModelMirror, adapters: dict[str, Path], file: str) -> dict[str, Any]:
    """The gemma ModelDeployment of test_serving with one adapter from the mirror, pinned."""
    md = gemma_from(mirror)
    digest = hashlib.sha256(adapters[file].read_bytes()).hexdigest()
    md["spec"]["adapters"] = [{"name": ADAPTER, **mirror.pinned_model(file, digest)}]
    return md


def complete(base: str, model: str) -> str:
    """A greedy completion of PROMPT by ``model``."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": 12, "temperature": 0, "seed": 1}
    response = httpx.post(f"{base}/v1/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["text"])


@pytest.mark.timeout(900)
def test_an_adapter_is_resolved_fetched_and_served_under_its_own_name(
    crd_cluster: ClusterHandle,
    namespace: str,
    llama_server: Path,
    mirror: ModelMirror,
    adapters: dict[str, Path],
) -> None:
    if crd_cluster.workdir is None:
        pytest.skip("the pod runner runs pods of the local control plane only")
    custom = client.CustomObjectsApi(crd_cluster.api_client())
    core = client.CoreV1Api(crd_cluster.api_client())
    runner = PodRunner(
        crd_cluster.kubeconfig,
        crd_cluster.workdir,
        namespace=namespace,
        node_env=mirror.plain_http_env(),
        path_dirs=[llama_server],
    )
    operator = OperatorProcess(crd_cluster.kubeconfig, namespace, env=mirror.plain_http_env())
    with runner:
        operator.start()
        try:
            md = with_adapter(mirror, adapters, ADAPTER_FILE)
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, md)
            selector = f"modeldeploy.io/model-deployment={NAME}"

            def placed() -> client.V1Pod | None:
                pods = core.list_namespaced_pod(namespace, label_selector=selector).items
                return pods[0] if len(pods) == 1 and pods[0].status.pod_ip else None

            pod = wait_until(placed, timeout=120, what="the pod to be scheduled with an IP")
            base = f"http://{pod.status.pod_ip}:{PORT}"

            def listed() -> list[str] | None:
                run = runner.run_of(pod.metadata.name)
                failed = {c: e for c, e in (run.exits if run else {}).items() if e and e[-1]}
                assert not failed, (failed, operator.log()[-2000:])
                try:
                    models = httpx.get(f"{base}/v1/models", timeout=2)
                    health = httpx.get(f"{base}/health", timeout=2)
                except httpx.HTTPError:
                    return None
                # llama-server answers /v1/models with a 503 while it loads the model.
                if health.status_code != 200 or models.status_code != 200:
                    return None
                return [m["id"] for m in models.json()["data"]]

            assert wait_until(listed, timeout=600, what=f"{base} to serve") == [NAME, ADAPTER]
            run = runner.run_of(pod.metadata.name)
            assert run is not None and run.exits.get("fetch") == [0]
            assert mirror.bytes_served >= ensure_gemma().stat().st_size + (
                adapters[ADAPTER_FILE].stat().st_size
            )
            plain = complete(base, NAME)
            tuned = complete(base, ADAPTER)
            assert tuned != plain
            assert complete(base, NAME) == plain

            status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME)[
                "status"
            ]
            (recorded,) = status["artifact"]["adapters"]
            assert recorded["name"] == ADAPTER
            assert recorded["architecture"] == "gemma3" and recorded["format"] == "gguf"
            assert recorded["resolvedRevision"] == md["spec"]["adapters"][0]["revision"]
            assert [f["name"] for f in recorded["files"]] == [ADAPTER_FILE]
            # The ML-BOM lists the adapter, with the digest the fetch verified.
            bom_map = core.read_namespaced_config_map(f"{NAME}-ml-bom", namespace)
            bom = json.loads(bom_map.data["bom.cdx.json"])
            listed_adapter = next(c for c in bom["components"] if c["name"] == ADAPTER)
            digest = hashlib.sha256(adapters[ADAPTER_FILE].read_bytes()).hexdigest()
            assert listed_adapter["hashes"] == [{"alg": "SHA-256", "content": digest}]
            assert listed_adapter["version"] == recorded["resolvedRevision"]
        finally:
            operator.stop()


@pytest.mark.timeout(300)
def test_an_adapter_for_another_architecture_is_refused_before_any_pod(
    crd_cluster: ClusterHandle, namespace: str, mirror: ModelMirror, adapters: dict[str, Path]
) -> None:
    custom = client.CustomObjectsApi(crd_cluster.api_client())
    operator = OperatorProcess(crd_cluster.kubeconfig, namespace, env=mirror.plain_http_env())
    operator.start()
    try:
        md = with_adapter(mirror, adapters, WRONG_FILE)
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, md)

        def refused() -> dict[str, Any] | None:
            found = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME)
            conditions = (found.get("status") or {}).get("conditions") or []
            verified = next((c for c in conditions if c["type"] == "ArtifactVerified"), None)
            return verified if verified and verified["status"] == "False" else None

        verified = wait_until(refused, timeout=120, what="the adapter to be refused")
        assert verified["reason"] == "IncompatibleAdapter"
        assert f"adapter {ADAPTER}" in verified["message"]
        assert "made for architecture llama; the base model is gemma3" in verified["message"]
        apps = client.AppsV1Api(crd_cluster.api_client())
        assert apps.list_namespaced_deployment(namespace).items == []
    finally:
        operator.stop()


@pytest.mark.timeout(600)
def test_a_tampered_adapter_keeps_the_engine_from_starting(
    crd_cluster: ClusterHandle,
    namespace: str,
    llama_server: Path,
    adapters: dict[str, Path],
    tmp_path: Path,
) -> None:
    if crd_cluster.workdir is None:
        pytest.skip("the pod runner runs pods of the local control plane only")
    tampered = tmp_path / ADAPTER_FILE
    data = bytearray(adapters[ADAPTER_FILE].read_bytes())
    data[-1] ^= 0xFF  # one byte of the last tensor: the header still reads as gemma3's
    tampered.write_bytes(bytes(data))
    custom = client.CustomObjectsApi(crd_cluster.api_client())
    with (
        ModelMirror({GEMMA_FILE: ensure_gemma(), ADAPTER_FILE: tampered}) as mirror,
        PodRunner(
            crd_cluster.kubeconfig,
            crd_cluster.workdir,
            namespace=namespace,
            node_env=mirror.plain_http_env(),
            path_dirs=[llama_server],
        ) as runner,
    ):
        md = with_adapter(mirror, adapters, ADAPTER_FILE)  # the untampered bytes' sha256
        operator = OperatorProcess(
            crd_cluster.kubeconfig, namespace, env=mirror.plain_http_env()
        ).start()
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, md)

            def fetch_failed() -> Any:
                runs = runner.runs()
                return runs[0] if runs and runs[0].exits.get("fetch") else None

            run = wait_until(fetch_failed, timeout=300, what="the fetch to fail")
            assert run.exits["fetch"][0] == 3  # modeldeploy fetch: digest mismatch
            assert "llamacpp" not in run.pids  # the engine never starts

            def refused() -> dict[str, Any] | None:
                found = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME)
                conditions = (found.get("status") or {}).get("conditions") or []
                verified = next((c for c in conditions if c["type"] == "ArtifactVerified"), None)
                return verified if verified and verified["status"] == "False" else None

            verified = wait_until(refused, timeout=120, what="the mismatch in status")
            assert verified["reason"] == "DigestMismatch"
            assert f"adapter {ADAPTER}" in verified["message"]
        finally:
            operator.stop()
