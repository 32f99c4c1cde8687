"""A model pod that really serves: gemma 270M (GGUF, CPU) through the whole path.

ModelDeployment -> the operator renders it -> kube-scheduler places the pod on a simulated
CPU node -> the pod runner (``e2e/podrunner/``) runs the fetch init container (a real
download from a stand-in https:// mirror on 127.0.0.1, sha256 pinned in
``spec.model.digests``) and the engine container (``modeldeploy serve-runtime llamacpp``,
i.e. llama-server) bound to the pod's IP -> ``status`` Ready -> a chat completion against
the pod IP, counted in ``/metrics`` -> delete -> every process of the pod is gone.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cyclonedx.schema import OutputFormat, SchemaVersion
from cyclonedx.validation import make_schemabased_validator
from e2e.cluster.local import REPO
from e2e.harness import ClusterHandle, OperatorProcess, wait_until
from e2e.mirror import ModelMirror
from e2e.models import GEMMA_FILE, GEMMA_SHA256, ensure_gemma
from e2e.podrunner import PodRun, PodRunner, descendants, pid_alive
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

GROUP, VERSION, PLURAL = "modeldeploy.io", "v1alpha1", "modeldeployments"
NAME = "gemma"
PORT = 8000


@pytest.fixture
def mirror() -> Iterator[ModelMirror]:
    """The gemma GGUF on a stand-in https:// mirror (plain HTTP on 127.0.0.1)."""
    with ModelMirror({GEMMA_FILE: ensure_gemma()}) as served:
        yield served


def gemma_from(mirror: ModelMirror, name: str = GEMMA_FILE) -> dict[str, Any]:
    """The CPU GGUF example, fetched from the mirror with a sha256 pinned, sized small."""
    md: dict[str, Any] = yaml.safe_load((REPO / "examples" / "gemma-270m-cpu.yaml").read_text())
    md["metadata"] = {"name": NAME}
    md["spec"]["model"].update(mirror.pinned_model(name, GEMMA_SHA256), servedName=NAME)
    small = {"cpu": "2", "memory": "2Gi"}
    md["spec"]["serving"] = {
        "contextLength": 1024,
        "maxConcurrentRequests": 2,
        "resources": {"requests": small, "limits": small},
    }
    return md


def metric(text: str, name: str) -> float:
    """The sum of one metric's samples in Prometheus text (0 when absent)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def port_open(host: str, port: int) -> bool:
    """True when something accepts connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.timeout(900)
def test_gguf_model_is_fetched_served_from_its_pod_ip_and_stopped_with_it(
    crd_cluster: ClusterHandle, namespace: str, llama_server: Path, mirror: ModelMirror
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
            custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, gemma_from(mirror)
            )
            selector = f"modeldeploy.io/model-deployment={NAME}"

            def placed() -> client.V1Pod | None:
                pods = core.list_namespaced_pod(namespace, label_selector=selector).items
                return pods[0] if len(pods) == 1 and pods[0].status.pod_ip else None

            pod = wait_until(placed, timeout=120, what="the pod to be scheduled with an IP")
            ip = pod.status.pod_ip
            assert crd_cluster.in_pod_cidr(ip)
            base = f"http://{ip}:{PORT}"

            logs = crd_cluster.workdir / "logs" / "pods"

            def healthy() -> bool:
                # A container that failed (e.g. llama-server could not bind because another
                # local cluster's pod holds this IP) fails the test now, with its log.
                run = runner.run_of(pod.metadata.name)
                for container, codes in (run.exits if run else {}).items():
                    if codes and (codes[-1] != 0 or container == "llamacpp"):
                        log = next(logs.glob(f"*_{pod.metadata.name}_{container}.log"))
                        tail = log.read_text()[-3000:]
                        raise AssertionError(f"{container} exited {codes}:\n{tail}")
                try:
                    return httpx.get(f"{base}/health", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            # The engine's own /health, not kwok's Ready: fetch, verify, load, serve.
            wait_until(healthy, timeout=600, what=f"llama-server's /health on {base}")
            run = runner.run_of(pod.metadata.name)
            assert run is not None and "llamacpp" in run.pids
            # Ours, under the served name (not another local cluster's pod on the same IP).
            models = httpx.get(f"{base}/v1/models", timeout=10).json()
            assert [m["id"] for m in models["data"]] == [NAME]
            # The init step fetched for real (from the mirror, digest verified) and succeeded.
            assert run.exits.get("fetch") == [0], run
            assert mirror.bytes_served >= ensure_gemma().stat().st_size

            ready = crd_cluster.kubectl(
                "wait", "-n", namespace, "--for=condition=Ready", f"mdep/{NAME}",
                "--timeout=120s", check=False,
            )  # fmt: skip
            assert ready.returncode == 0, ready.stderr + operator.log()[-3000:]
            # The operator resolved the source before planning and recorded the provenance;
            # the fetcher's report turned ArtifactVerified True.
            verified = crd_cluster.kubectl(
                "wait", "-n", namespace, "--for=condition=ArtifactVerified", f"mdep/{NAME}",
                "--timeout=60s", check=False,
            )  # fmt: skip
            assert verified.returncode == 0, verified.stderr + operator.log()[-3000:]
            status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME)[
                "status"
            ]
            artifact = status["artifact"]
            pinned = gemma_from(mirror)["spec"]["model"]["revision"]
            assert artifact["resolvedRevision"] == pinned
            assert artifact["files"] == [
                {"name": GEMMA_FILE, "sizeBytes": ensure_gemma().stat().st_size,
                 "sha256": GEMMA_SHA256}
            ]  # fmt: skip
            assert artifact["architecture"]["architecture"] == "gemma3"
            # Provenance: the ML-BOM the operator stored validates as CycloneDX 1.6, names the
            # served file's real sha256, and the pods name the same revision.
            bom_map = core.read_namespaced_config_map(
                status["provenance"]["bomConfigMap"], namespace
            )
            bom_text = bom_map.data["bom.cdx.json"]
            validator = make_schemabased_validator(OutputFormat.JSON, SchemaVersion.V1_6)
            assert validator.validate_str(bom_text) is None
            bom = json.loads(bom_text)
            (model,) = [c for c in bom["components"] if c["type"] == "machine-learning-model"]
            served = {
                h["content"] for f in model.get("components", []) for h in f.get("hashes", [])
            }
            assert GEMMA_SHA256 in served, model
            assert model["version"] == pinned
            pod = core.read_namespaced_pod(pod.metadata.name, namespace)
            assert pod.metadata.annotations["modeldeploy.io/model-revision"] == pinned
            statuses = {c.name: c for c in pod.status.container_statuses}
            assert statuses["llamacpp"].ready and statuses["llamacpp"].state.running

            before = httpx.get(f"{base}/metrics", timeout=10).text
            answer = httpx.post(
                f"{base}/v1/chat/completions",
                json={
                    "model": NAME,
                    "messages": [{"role": "user", "content": "Name a colour of the sky."}],
                    "max_tokens": 12,
                    "temperature": 0,
                },
                timeout=300,
            )
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["choices"][0]["message"]["content"].strip()
            after = httpx.get(f"{base}/metrics", timeout=10).text
            predicted = body["usage"]["completion_tokens"]
            assert predicted >= 1
            delta = metric(after, "llamacpp:tokens_predicted_total") - metric(
                before, "llamacpp:tokens_predicted_total"
            )
            assert delta == predicted
            prompt = metric(after, "llamacpp:prompt_tokens_total") - metric(
                before, "llamacpp:prompt_tokens_total"
            )
            assert prompt == body["usage"]["prompt_tokens"]

            running: PodRun | None = runner.run_of(pod.metadata.name)
            assert running is not None and running.pids
            pids = [p for pid in running.pids.values() for p in (pid, *descendants(pid))]
            assert len(pids) >= 2, pids  # the launcher and llama-server below it

            custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME)
            wait_until(
                lambda: not any(pid_alive(p) for p in pids),
                timeout=120,
                what=f"the pod's processes {pids} to exit",
            )
            assert not port_open(ip, PORT)
            wait_until(
                lambda: (r := runner.run_of(pod.metadata.name)) is not None and r.finished,
                timeout=30,
                what="the runner to finish the pod",
            )
        finally:
            operator.stop()


@pytest.mark.timeout(600)
def test_a_fetch_that_fails_verification_is_reported_and_nothing_serves(
    crd_cluster: ClusterHandle, namespace: str, llama_server: Path, tmp_path: Path
) -> None:
    if crd_cluster.workdir is None:
        pytest.skip("the pod runner runs pods of the local control plane only")
    tampered = tmp_path / "gemma-3-270m-tampered-Q4_K_M.gguf"
    # A well-formed GGUF header (version 3, no tensors, no fields) that the resolver reads,
    # but not the file whose sha256 is pinned: only the fetcher's digest check can catch it.
    tampered.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0) + bytes(4096))
    custom = client.CustomObjectsApi(crd_cluster.api_client())
    with (
        ModelMirror({tampered.name: tampered}) as mirror,
        PodRunner(
            crd_cluster.kubeconfig,
            crd_cluster.workdir,
            namespace=namespace,
            node_env=mirror.plain_http_env(),
            path_dirs=[llama_server],
        ) as runner,
    ):
        md = gemma_from(mirror, tampered.name)  # gemma's sha256 pinned on another file
        operator = OperatorProcess(
            crd_cluster.kubeconfig, namespace, env=mirror.plain_http_env()
        ).start()
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, md)

            def fetch_failed() -> PodRun | None:
                runs = runner.runs()
                return runs[0] if runs and runs[0].exits.get("fetch") else None

            run = wait_until(fetch_failed, timeout=120, what="the fetch to fail")
            assert run.exits["fetch"][0] == 3  # modeldeploy fetch: digest mismatch
            assert "llamacpp" not in run.pids  # the engine never starts

            def reported() -> dict[str, Any] | None:
                found: dict[str, Any] = custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, NAME
                )
                conditions = found.get("status", {}).get("conditions") or []
                ready = next((c for c in conditions if c["type"] == "Ready"), None)
                return ready if ready and ready.get("reason") == "CrashLoopBackOff" else None

            ready = wait_until(reported, timeout=120, what="the failed fetch in status")
            assert ready["status"] == "False"
            assert "exited 3" in ready["message"] and "sha256" in ready["message"]
            # The fetcher's termination message says why: the bytes are not the pinned ones.
            status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME)[
                "status"
            ]
            verified = next(c for c in status["conditions"] if c["type"] == "ArtifactVerified")
            assert (verified["status"], verified["reason"]) == ("False", "DigestMismatch")
            assert tampered.name in verified["message"], verified
        finally:
            operator.stop()
