"""The operator resolves ``spec.model`` against the source before it plans.

A stand-in Hugging Face Hub (token-protected, LFS files redirected to a stand-in CDN) holds
tiny real GGUF files in several quantizations; a stand-in https:// mirror serves one GGUF.
The operator runs as a subprocess with ``HF_ENDPOINT`` and ``MODELDEPLOY_PLAIN_HTTP_HOSTS``
pointing at them and reads the Hub token from the Secret ``spec.model.credentialsSecret``
names. Checked: ``status.artifact`` and ``ArtifactVerified`` after a resolution, the
revision and source settings the Deployment is rendered with, that the token appears
nowhere, and the refusals (no such quantization, a pinned digest the Hub contradicts, a
mirror that no longer serves the pinned revision), which create no workload and which a
fixed spec lifts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.cluster.local import REPO
from e2e.harness import ClusterHandle, ModelDeploymentApi, OperatorProcess, wait_until
from e2e.mirror import ModelMirror
from kubernetes import client
from tests.unit.fetch.payloads import GgufFactory
from tests.unit.fetch.standins import HubStandin, RangeServer

CONDITION = "ArtifactVerified"
REPO_ID = "acme/tiny-GGUF"
SOURCE = f"hf://{REPO_ID}"
TOKEN = "hf_e2e_standin_token_5d41402abc4b2a76"
SECRET = "hub-token"
LAYERS = 3  # what the GGUF headers say; the operator must read it back
GIB = 1024**3


@dataclass
class Hub:
    """The Hub stand-in and the one commit of ``REPO_ID``."""

    server: HubStandin
    sha: str
    files: dict[str, bytes]


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> GgufFactory:
    return GgufFactory(tmp_path_factory.mktemp("gguf"))


@pytest.fixture(scope="module")
def hub(ggufs: GgufFactory) -> Iterator[Hub]:
    """A token-protected repo of Q4_K_M, Q8_0 and a two-part Q5_K_M, LFS bytes on a CDN."""
    cdn = RangeServer()
    server = HubStandin(token=TOKEN, cdn=cdn)
    cdn.start()
    server.start()
    files = {
        "README.md": b"# tiny\n",
        "tiny-Q4_K_M.gguf": ggufs.model("Q4_K_M", layers=LAYERS),
        "tiny-Q8_0.gguf": ggufs.model("Q8_0", layers=LAYERS, seed=1),
        "Q5_K_M/tiny-Q5_K_M-00001-of-00002.gguf": ggufs.model(
            "Q5_K_M", layers=LAYERS, split=(1, 2), seed=2
        ),
        "Q5_K_M/tiny-Q5_K_M-00002-of-00002.gguf": ggufs.model(
            "Q5_K_M", layers=LAYERS, split=(2, 2), seed=3
        ),
    }
    sha = server.repo(REPO_ID).commit(files)
    try:
        yield Hub(server, sha, files)
    finally:
        server.stop()
        cdn.stop()


@pytest.fixture
def mirror(ggufs: GgufFactory, tmp_path: Path) -> Iterator[ModelMirror]:
    """One GGUF on a stand-in https:// mirror (plain HTTP on 127.0.0.1)."""
    path = tmp_path / "tiny-Q4_K_M.gguf"
    path.write_bytes(ggufs.model("Q4_K_M", layers=LAYERS))
    with ModelMirror({path.name: path}) as served:
        yield served


@pytest.fixture
def operator(
    crd_cluster: ClusterHandle, namespace: str, hub: Hub, mirror: ModelMirror
) -> Iterator[OperatorProcess]:
    """The operator for this test's namespace, reaching the Hub and the mirror stand-ins."""
    env = {"HF_ENDPOINT": hub.server.url, **mirror.plain_http_env()}
    process = OperatorProcess(crd_cluster.kubeconfig, namespace, env=env).start()
    try:
        yield process
    finally:
        process.stop()


class Api(ModelDeploymentApi):
    """Small helpers over the cluster for one namespace, served by ``operator``."""

    def __init__(self, cluster: ClusterHandle, namespace: str, operator: OperatorProcess) -> None:
        super().__init__(cluster, namespace)
        self.operator = operator

    def hub_secret(self, token: str = TOKEN, name: str = SECRET) -> None:
        body = {"metadata": {"name": name}, "stringData": {"HF_TOKEN": token}}
        self.core.create_namespaced_secret(self.namespace, body)

    def settled(self, name: str, timeout: float = 60) -> dict[str, Any]:
        """The status once a pass has written ArtifactVerified for the current generation."""

        def written() -> dict[str, Any] | None:
            md = self.md(name)
            status = md.get("status") or {}
            found = _condition(status, CONDITION)
            generation = md["metadata"]["generation"]
            if found and found.get("observedGeneration") == generation:
                return status
            return None

        try:
            return wait_until(written, timeout=timeout, what=f"{CONDITION} on mdep/{name}")
        except TimeoutError as error:
            raise AssertionError(self._explain(name, str(error))) from None

    def deployment(self, name: str) -> client.V1Deployment:
        try:
            return wait_until(
                lambda: self.apps.read_namespaced_deployment(name, self.namespace),
                timeout=30,
                what=f"Deployment {name}",
            )
        except TimeoutError:
            raise AssertionError(self._explain(name, f"no Deployment {name}")) from None

    def _explain(self, name: str, what: str) -> str:
        status = json.dumps(self.md(name).get("status"), indent=1)
        return f"{what}\nstatus: {status}\noperator log:\n{self.operator.log()[-6000:]}"

    def children(self, name: str) -> list[str]:
        selector = f"modeldeploy.io/model-deployment={name}"
        found = [
            *(f"Deployment/{d.metadata.name}" for d in self.apps.list_namespaced_deployment(
                self.namespace, label_selector=selector).items),
            *(f"Service/{s.metadata.name}" for s in self.core.list_namespaced_service(
                self.namespace, label_selector=selector).items),
            *(f"PersistentVolumeClaim/{c.metadata.name}" for c in
              self.core.list_namespaced_persistent_volume_claim(
                  self.namespace, label_selector=selector).items),
        ]  # fmt: skip
        return sorted(found)

    def kubectl_yaml(self, *what: str) -> str:
        return self.cluster.kubectl("get", "-n", self.namespace, *what, "-o", "yaml").stdout


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)


def tiny(name: str, model: dict[str, Any], replicas: int = 1) -> dict[str, Any]:
    """The CPU GGUF example, sized small, with this ``spec.model`` and no parameter hint:
    sizing has only the architecture the operator reads from the artifact."""
    md: dict[str, Any] = yaml.safe_load((REPO / "examples" / "gemma-270m-cpu.yaml").read_text())
    md["metadata"] = {"name": name}
    small = {"cpu": "1", "memory": "1Gi"}
    md["spec"].update(
        model={"format": "gguf", "servedName": "tiny", **model},
        # Within the 2048-token context the GGUF headers state (sizing reads it from there).
        serving={"contextLength": 1024, "resources": {"requests": small, "limits": small}},
        replicas=replicas,
    )
    md["spec"]["cache"]["size"] = "auto"
    return md


def from_hub(quantization: str, **extra: Any) -> dict[str, Any]:
    return {"source": SOURCE, "quantization": quantization, "credentialsSecret": SECRET, **extra}


def assert_refused(api: Api, name: str, reason: str) -> dict[str, Any]:
    """The refusal's status: ArtifactVerified and Ready False with ``reason``, phase Failed,
    Degraded, and no Deployment, Service or claim."""
    status = api.settled(name)
    artifact = _condition(status, CONDITION)
    assert artifact is not None
    assert (artifact["status"], artifact["reason"]) == ("False", reason), artifact
    ready = _condition(status, "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", reason), ready
    degraded = _condition(status, "Degraded")
    assert degraded is not None and degraded["status"] == "True", degraded
    assert status["phase"] == "Failed"
    assert "artifact" not in status
    assert api.children(name) == []
    return artifact


def test_hub_resolution_pins_revision_reads_header_and_keeps_token_secret(
    crd_cluster: ClusterHandle, namespace: str, hub: Hub, operator: OperatorProcess
) -> None:
    api = Api(crd_cluster, namespace, operator)
    api.hub_secret()
    # No replicas at first, so no (simulated) fetcher can have reported yet.
    api.create(tiny("chat", from_hub("Q4_K_M"), replicas=0))
    status = api.settled("chat")

    artifact = status.get("artifact")
    assert artifact, json.dumps(status)
    data = hub.files["tiny-Q4_K_M.gguf"]
    assert artifact["source"] == SOURCE
    assert artifact["resolvedRevision"] == hub.sha
    assert artifact["format"] == "gguf" and artifact["quantization"] == "Q4_K_M"
    assert artifact["files"] == [
        {"name": "tiny-Q4_K_M.gguf", "sizeBytes": len(data), "sha256": _sha256(data)}
    ]
    assert artifact["totalBytes"] == len(data)
    assert artifact["modelHash"]
    # Read from the GGUF header (through a ranged read redirected to the CDN).
    facts = artifact["architecture"]
    assert facts["architecture"] == "llama" and facts["layers"] == LAYERS, facts
    assert facts["hiddenSize"] == 64 and facts["parameters"] > 0, facts
    verified = _condition(status, CONDITION)
    assert verified is not None
    assert (verified["status"], verified["reason"]) == ("Unknown", "Resolved"), verified
    assert f"{SOURCE} resolved to {hub.sha}: 1 file" in verified["message"]
    assert "each pod verifies sha256" in verified["message"]

    # The Deployment fetches exactly the resolved commit, reaching the same endpoint.
    spec = api.deployment("chat").spec.template.spec
    (init,) = spec.init_containers
    args = [*(init.command or []), *(init.args or [])]
    assert "--revision" in args and args[args.index("--revision") + 1] == hub.sha, args
    init_env = {e.name: e for e in init.env or []}
    assert init_env["HF_ENDPOINT"].value == hub.server.url
    assert init_env["HF_TOKEN"].value is None
    assert init_env["HF_TOKEN"].value_from.secret_key_ref.name == SECRET
    engine_env = {e.name: e.value for e in spec.containers[0].env or []}
    assert engine_env.get("MODELDEPLOY_MODEL_REVISION") == hub.sha
    # cache.size auto: max(1 GiB, totalBytes * 1.25), in whole GiB.
    claim = api.core.read_namespaced_persistent_volume_claim("chat-model-cache", namespace)
    assert claim.spec.resources.requests["storage"] == "1Gi"

    # kwok completes init containers with exit 0 but no fetcher ran: no report, so the
    # artifact stays unverified although the pod is Ready (tests/e2e/test_serving.py shows
    # a real fetcher's report turning ArtifactVerified True).
    api.patch_spec("chat", {"replicas": 1})

    def ready() -> dict[str, Any] | None:
        status = api.md("chat").get("status") or {}
        return status if status.get("phase") == "Ready" else None

    status = wait_until(ready, timeout=60, what="chat Ready on a simulated node")
    unverified = _condition(status, CONDITION)
    assert unverified is not None, status
    assert (unverified["status"], unverified["reason"]) == ("Unknown", "Resolved"), unverified
    assert status["artifact"]["resolvedRevision"] == hub.sha

    # A wrong token is refused as such, and neither token is written anywhere.
    wrong = "hf_wrong_token_0123456789abcdef"
    api.hub_secret(wrong, name="wrong-token")
    api.create(tiny("denied", from_hub("Q4_K_M", credentialsSecret="wrong-token")))
    denied = assert_refused(api, "denied", "CredentialDenied")
    assert "HF_TOKEN" in denied["message"], denied

    written = {
        "modeldeployments": api.kubectl_yaml("mdep"),
        "events": api.kubectl_yaml("events"),
        "deployments": api.kubectl_yaml("deployments"),
        "pods": api.kubectl_yaml("pods"),
        "operator log": operator.log(),
    }
    assert hub.sha in written["modeldeployments"]  # the dump holds what it should
    for where, text in written.items():
        assert TOKEN not in text, f"the Hub token appears in the {where}"
        assert wrong not in text, f"the wrong token appears in the {where}"


def test_missing_quantization_is_refused_until_the_spec_names_one_that_exists(
    crd_cluster: ClusterHandle, namespace: str, hub: Hub, operator: OperatorProcess
) -> None:
    api = Api(crd_cluster, namespace, operator)
    api.hub_secret()
    api.create(tiny("chat", from_hub("Q2_K")))
    refusal = assert_refused(api, "chat", "FileSelectionFailed")
    assert "Q2_K" in refusal["message"], refusal
    assert "available: Q4_K_M, Q5_K_M, Q8_0" in refusal["message"], refusal

    # The refusal is not sticky: a quantization the repo holds resolves and deploys.
    api.patch_spec("chat", {"model": {"quantization": "Q8_0"}})
    status = api.settled("chat")
    verified = _condition(status, CONDITION)
    assert verified is not None and verified["reason"] in ("Resolved", "Verified"), verified
    artifact = status["artifact"]
    assert artifact["quantization"] == "Q8_0" and artifact["resolvedRevision"] == hub.sha
    assert [f["name"] for f in artifact["files"]] == ["tiny-Q8_0.gguf"]
    assert status["phase"] != "Failed", status
    init = api.deployment("chat").spec.template.spec.init_containers[0]
    args = [*(init.command or []), *(init.args or [])]
    assert args[args.index("--quantization") + 1] == "Q8_0", args


def test_pinned_digest_the_hub_contradicts_is_refused(
    crd_cluster: ClusterHandle, namespace: str, hub: Hub, operator: OperatorProcess
) -> None:
    api = Api(crd_cluster, namespace, operator)
    api.hub_secret()
    wrong = "0" * 64
    model = from_hub("Q4_K_M", revision=hub.sha, digests={"tiny-Q4_K_M.gguf": wrong})
    api.create(tiny("chat", model))
    refusal = assert_refused(api, "chat", "DigestMismatch")
    published = _sha256(hub.files["tiny-Q4_K_M.gguf"])
    message = refusal["message"]
    assert f"{SOURCE}@{hub.sha}" in message, message
    assert "tiny-Q4_K_M.gguf: pinned sha256 000000000000" in message, message
    assert published[:12] in message, message


def test_mirror_that_no_longer_serves_the_pinned_revision_is_refused(
    crd_cluster: ClusterHandle,
    namespace: str,
    ggufs: GgufFactory,
    mirror: ModelMirror,
    operator: OperatorProcess,
) -> None:
    api = Api(crd_cluster, namespace, operator)
    (name, path), *_ = mirror.files.items()
    pinned = mirror.pinned_model(name, _sha256(path.read_bytes()))

    # While the mirror serves the pinned bytes, the pin resolves.
    api.create(tiny("before", pinned))
    status = api.settled("before")
    assert status.get("artifact", {}).get("resolvedRevision") == pinned["revision"], status
    assert api.deployment("before")

    # Other bytes of the same size at the same URL, so only the new ETag tells them apart:
    # the pinned revision is gone.
    other = ggufs.model("Q4_K_M", layers=LAYERS, seed=7)
    assert len(other) == path.stat().st_size and _sha256(other) != pinned["digests"][name]
    path.write_bytes(other)
    mirror.reload()
    api.create(tiny("after", pinned))
    refusal = assert_refused(api, "after", "SourceChanged")
    message = refusal["message"]
    assert f"the source no longer serves revision {pinned['revision']}" in message, message
    assert mirror.url(name) in message, message


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
