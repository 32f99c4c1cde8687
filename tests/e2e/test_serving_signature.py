"""Signed models (``spec.model.signature``): a signed GGUF is verified and served; one
changed after signing never reaches the engine.

The tampered-file case of ``test_serving.py``, for a signature: a tiny real GGUF
(``gguf.GGUFWriter``) is signed with an EC P-256 key by the ``model-signing`` library, one
byte of it is flipped, and the flipped file and the bundle are served by the stand-in
https:// mirror. The public key is a ConfigMap; the operator mounts it into the fetch init
container, which the pod runner runs for real: the fetch fails with ``SignatureInvalid``
(exit 9), llama-server never starts, and the pod's termination message, ``ArtifactVerified``
and the Ready condition name the file. The API server's CEL rule refuses a signature with
two trust anchors on the way.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import model_signing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from e2e.harness import ClusterHandle, OperatorProcess, wait_until
from e2e.mirror import ModelMirror
from e2e.models import GEMMA_FILE, ensure_gemma
from e2e.podrunner import PodRun, PodRunner
from kubernetes import client
from tests.unit.fetch.payloads import GgufFactory

GROUP, VERSION, PLURAL = "modeldeploy.io", "v1alpha1", "modeldeployments"
NAME = "signed"
MODEL = "tiny-Q4_K_M.gguf"
BUNDLE = "model.sig"
KEYS = "model-signing-keys"


def publisher_key(directory: Path) -> tuple[Path, bytes]:
    """A new EC P-256 signing key: (its private PEM file, the public key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = directory / "publisher.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def signed_then_tampered(directory: Path) -> tuple[Path, Path, bytes]:
    """(the GGUF with one byte flipped, its bundle, the public key PEM)."""
    private, public = publisher_key(directory)
    signed = directory / "signed"
    signed.mkdir()
    data = GgufFactory(directory).model("Q4_K_M", padding=50_000)
    (signed / MODEL).write_bytes(data)
    bundle = directory / BUNDLE
    model_signing.signing.Config().use_elliptic_key_signer(private_key=private).sign(signed, bundle)
    tampered = bytearray(data)
    tampered[len(data) // 2] ^= 0x01
    (signed / MODEL).write_bytes(bytes(tampered))
    return signed / MODEL, bundle, public


def deployment(mirror: ModelMirror, **signature: Any) -> dict[str, Any]:
    """A small CPU GGUF ModelDeployment fetched from the mirror, with ``signature``."""
    small = {"cpu": "2", "memory": "2Gi"}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME},
        "spec": {
            "model": {
                "source": mirror.url(MODEL),
                "parameters": "270M",
                "format": "gguf",
                "servedName": NAME,
                "signature": {"bundle": BUNDLE, **signature},
            },
            "hardware": {"accelerator": "cpu"},
            "serving": {
                "contextLength": 1024,
                "maxConcurrentRequests": 2,
                "resources": {"requests": small, "limits": small},
            },
            "cache": {"size": "1Gi", "accessMode": "ReadWriteOnce"},
        },
    }


def trusted_key(core: client.CoreV1Api, namespace: str, public_key: bytes) -> dict[str, str]:
    """Put the public key in a ConfigMap; the ``publicKey`` reference to it."""
    core.create_namespaced_config_map(
        namespace,
        {"metadata": {"name": KEYS}, "data": {"publisher.pub": public_key.decode()}},
    )
    return {"configMapName": KEYS, "key": "publisher.pub"}


@contextlib.contextmanager
def served(
    cluster: ClusterHandle, namespace: str, files: dict[str, Path], llama_server: Path
) -> Iterator[tuple[ModelMirror, PodRunner]]:
    """The mirror serving ``files`` and the pod runner running this namespace's pods."""
    with (
        ModelMirror(files) as mirror,
        PodRunner(
            cluster.kubeconfig,
            cluster.workdir,
            namespace=namespace,
            node_env=mirror.plain_http_env(),
            path_dirs=[llama_server],
        ) as runner,
    ):
        yield mirror, runner


def fetch_termination(core: client.CoreV1Api, namespace: str, pod: str) -> dict[str, Any]:
    """The fetch init container's last termination message, as JSON ({} before it ends)."""
    found = core.read_namespaced_pod(pod, namespace)
    for status in found.status.init_container_statuses or []:
        if status.name != "fetch":
            continue
        ended = (status.state and status.state.terminated) or (
            status.last_state and status.last_state.terminated
        )
        if ended is not None and ended.message:
            parsed: dict[str, Any] = json.loads(ended.message)
            return parsed
    return {}


@pytest.mark.timeout(600)
def test_a_signed_gguf_changed_after_signing_never_reaches_the_engine(
    crd_cluster: ClusterHandle, namespace: str, llama_server: Path, tmp_path: Path
) -> None:
    if crd_cluster.workdir is None:
        pytest.skip("the pod runner runs pods of the local control plane only")
    model, bundle, public_key = signed_then_tampered(tmp_path)
    api = crd_cluster.api_client()
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    key_ref = trusted_key(core, namespace, public_key)
    with served(crd_cluster, namespace, {MODEL: model, BUNDLE: bundle}, llama_server) as (
        mirror,
        runner,
    ):
        # The CRD's CEL rule: exactly one trust anchor.
        both = deployment(mirror, publicKey=key_ref, certificateChain=key_ref)
        with pytest.raises(client.ApiException) as refused:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, both)
        assert refused.value.status == 422
        assert "exactly one of publicKey or certificateChain" in str(refused.value.body)

        operator = OperatorProcess(
            crd_cluster.kubeconfig, namespace, env=mirror.plain_http_env()
        ).start()
        try:
            md = deployment(mirror, publicKey=key_ref)
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, md)

            def fetch_failed() -> PodRun | None:
                runs = runner.runs()
                return runs[0] if runs and runs[0].exits.get("fetch") else None

            run = wait_until(fetch_failed, timeout=180, what="the fetch to fail")
            assert run.exits["fetch"][0] == 9  # modeldeploy fetch: signature invalid
            assert "llamacpp" not in run.pids  # the engine never starts

            report = wait_until(
                lambda: fetch_termination(core, namespace, run.name) or None,
                timeout=60,
                what="the fetch's termination message in the pod's status",
            )
            assert report["reason"] == "SignatureInvalid", report
            assert report["error"].startswith(f"{MODEL}: its sha256 digest differs"), report
            assert "nothing was published" in report["error"]

            def reported() -> dict[str, Any] | None:
                found: dict[str, Any] = custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, NAME
                )
                conditions = found.get("status", {}).get("conditions") or []
                verified = next((c for c in conditions if c["type"] == "ArtifactVerified"), None)
                return verified if verified and verified["status"] == "False" else None

            verified = wait_until(reported, timeout=120, what="the failed signature in status")
            assert verified["reason"] == "SignatureInvalid", verified
            assert MODEL in verified["message"], verified
            assert "llamacpp" not in runner.runs()[0].pids
        finally:
            operator.stop()


def signed_gemma(directory: Path) -> tuple[Path, Path, bytes]:
    """(the real gemma 270M GGUF, its bundle signed here with a new EC P-256 key, the key)."""
    private, public = publisher_key(directory)
    signed = directory / "gemma"
    signed.mkdir()
    model = signed / GEMMA_FILE
    try:
        os.link(ensure_gemma(), model)  # the same bytes, without a 250 MB copy
    except OSError:
        shutil.copyfile(ensure_gemma(), model)
    bundle = directory / BUNDLE
    model_signing.signing.Config().use_elliptic_key_signer(private_key=private).sign(signed, bundle)
    return model, bundle, public


@pytest.mark.timeout(900)
def test_a_signed_gguf_is_verified_then_served(
    crd_cluster: ClusterHandle, namespace: str, llama_server: Path, tmp_path: Path
) -> None:
    if crd_cluster.workdir is None:
        pytest.skip("the pod runner runs pods of the local control plane only")
    model, bundle, public_key = signed_gemma(tmp_path)
    api = crd_cluster.api_client()
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    key_ref = trusted_key(core, namespace, public_key)
    with served(crd_cluster, namespace, {GEMMA_FILE: model, BUNDLE: bundle}, llama_server) as (
        mirror,
        runner,
    ):
        operator = OperatorProcess(
            crd_cluster.kubeconfig, namespace, env=mirror.plain_http_env()
        ).start()
        try:
            md = deployment(mirror, publicKey=key_ref)
            md["spec"]["model"]["source"] = mirror.url(GEMMA_FILE)
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, md)

            def serving() -> PodRun | None:
                runs = runner.runs()
                return runs[0] if runs and "llamacpp" in runs[0].pids else None

            run = wait_until(serving, timeout=600, what="the engine to start after the fetch")
            assert run.exits.get("fetch") == [0], run  # verified, then published
            pod = core.read_namespaced_pod(run.name, namespace)
            base = f"http://{pod.status.pod_ip}:8000"

            def healthy() -> bool:
                try:
                    return httpx.get(f"{base}/health", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(healthy, timeout=600, what="llama-server's /health")
            answer = httpx.post(
                f"{base}/v1/chat/completions",
                json={
                    "model": NAME,
                    "messages": [{"role": "user", "content": "Say hello."}],
                    "max_tokens": 8,
                    "temperature": 0,
                },
                timeout=300,
            )
            assert answer.status_code == 200, answer.text

            def verified() -> dict[str, Any] | None:
                found: dict[str, Any] = custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, NAME
                )
                conditions = found.get("status", {}).get("conditions") or []
                signed = next((c for c in conditions if c["type"] == "SignatureVerified"), None)
                return signed if signed and signed["status"] == "True" else None

            condition = wait_until(verified, timeout=120, what="SignatureVerified=True")
            assert condition["reason"] == "Verified" and "sha256:" in condition["message"]
        finally:
            operator.stop()
