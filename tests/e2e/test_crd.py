"""The ModelDeployment CRD on a real API server: install, explain, defaults, examples, refusals.

Each refusal case is also fed to the pydantic models, which must refuse it naming the same
field: that is the evidence that the CRD's CEL rules and the models' validators agree.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.harness import CRD_NAME, ClusterHandle, install_crds
from kubernetes import client

from modeldeploy.api import SpecError, parse_model_deployment, parse_spec

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
SHA = "b" * 64


def manifest(name: str = "demo", **spec: Any) -> dict[str, Any]:
    """A ModelDeployment with ``spec``; the model defaults to a small GGUF repository."""
    spec.setdefault("model", {"source": "hf://org/model-GGUF"})
    return {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }


def create(
    cluster: ClusterHandle, namespace: str, obj: dict[str, Any], tmp_path: Path
) -> tuple[int, str]:
    """``kubectl create`` one object from a file; return the exit code and stderr."""
    path = tmp_path / f"{obj['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(obj))
    result = cluster.kubectl("create", "-n", namespace, "-f", str(path), check=False)
    return result.returncode, result.stderr


def read(cluster: ClusterHandle, namespace: str, name: str) -> dict[str, Any]:
    """The stored object as JSON."""
    result = cluster.kubectl("get", "-n", namespace, "modeldeployment", name, "-o", "json")
    stored: dict[str, Any] = json.loads(result.stdout)
    return stored


def test_crd_is_established_and_answers_to_its_short_name(
    crd_cluster: ClusterHandle, namespace: str
) -> None:
    result = crd_cluster.kubectl("get", "mdep", "-n", namespace)
    assert "No resources found" in result.stdout + result.stderr
    categories = crd_cluster.kubectl("get", "ai", "-n", namespace, check=False)
    assert categories.returncode == 0, categories.stderr


def test_applying_the_crd_again_changes_nothing(crd_cluster: ClusterHandle) -> None:
    extensions = client.ApiextensionsV1Api(crd_cluster.api_client())

    def resource_version() -> str | None:
        metadata = extensions.read_custom_resource_definition(CRD_NAME).metadata
        return metadata.resource_version if metadata else None

    before = resource_version()
    install_crds(crd_cluster)
    assert resource_version() == before


def explain(cluster: ClusterHandle, field: str) -> str:
    """``kubectl explain FIELD``'s output (asserting that it worked)."""
    result = cluster.kubectl("explain", field, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_explain_teaches_the_model_fields(crd_cluster: ClusterHandle) -> None:
    model = explain(crd_cluster, "modeldeployment.spec.model")
    for fragment in ["source", "revision", "quantization", "digests", "hf://OWNER/NAME"]:
        assert fragment in model
    quantization = explain(crd_cluster, "mdep.spec.model.quantization")
    assert "Q4_K_M" in quantization and "AWQ" in quantization
    count = explain(crd_cluster, "mdep.spec.hardware.gpu.count")
    assert "tensor parallel" in count


def test_server_defaults_equal_the_model_defaults(
    crd_cluster: ClusterHandle, namespace: str, tmp_path: Path
) -> None:
    minimal = manifest("minimal")
    code, stderr = create(crd_cluster, namespace, minimal, tmp_path)
    assert code == 0, stderr
    stored = read(crd_cluster, namespace, "minimal")
    expected = parse_spec(minimal["spec"]).model_dump(mode="json", exclude_none=True)
    assert stored["spec"] == expected
    assert parse_model_deployment(stored).spec == parse_spec(minimal["spec"])


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_every_example_applies(crd_cluster: ClusterHandle, namespace: str, example: Path) -> None:
    result = crd_cluster.kubectl("apply", "-n", namespace, "-f", str(example), check=False)
    assert result.returncode == 0, result.stderr
    for document in yaml.safe_load_all(example.read_text()):
        if not isinstance(document, dict) or document.get("kind") != "ModelDeployment":
            continue
        stored = read(crd_cluster, namespace, document["metadata"]["name"])
        assert parse_model_deployment(stored).spec == parse_model_deployment(document).spec


def test_scale_subresource_writes_spec_replicas(
    crd_cluster: ClusterHandle, namespace: str, tmp_path: Path
) -> None:
    code, stderr = create(crd_cluster, namespace, manifest("scaled"), tmp_path)
    assert code == 0, stderr
    crd_cluster.kubectl("scale", "-n", namespace, "mdep/scaled", "--replicas=3")
    assert read(crd_cluster, namespace, "scaled")["spec"]["replicas"] == 3


def test_status_is_a_subresource(
    crd_cluster: ClusterHandle, namespace: str, tmp_path: Path
) -> None:
    obj = manifest("with-status")
    obj["status"] = {"phase": "Ready"}
    code, stderr = create(crd_cluster, namespace, obj, tmp_path)
    assert code == 0, stderr
    assert "status" not in read(crd_cluster, namespace, "with-status")
    custom = client.CustomObjectsApi(crd_cluster.api_client())
    status = {
        "observedGeneration": 1,
        "phase": "Ready",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "observedGeneration": 1,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "reason": "Serving",
                "message": "1/1 replicas ready",
            }
        ],
        "decision": {"engine": "llamacpp", "accelerator": "cpu", "gpusPerReplica": 0},
        "replicas": 1,
        "readyReplicas": 1,
        "selector": "modeldeploy.io/model-deployment=with-status",
        "endpoint": "http://with-status.ns.svc:8000/v1",
    }
    custom.patch_namespaced_custom_object_status(
        "modeldeploy.io", "v1alpha1", namespace, "modeldeployments", "with-status",
        {"status": status},
    )  # fmt: skip
    assert read(crd_cluster, namespace, "with-status")["status"] == status
    wide = crd_cluster.kubectl("get", "-n", namespace, "mdep", "with-status", "-o", "wide").stdout
    for column in ["MODEL", "QUANT", "ENGINE", "ACCELERATOR", "READY", "PHASE", "ENDPOINT"]:
        assert column in wide
    assert "llamacpp" in wide and "Ready" in wide


# (case id, object changes, message fragment from the CRD); the pydantic models must refuse
# the same object with a SpecError whose field path the API server's error also names.
REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("scheme", {"model": {"source": "ftp://host/model"}}, "source must be a URI with scheme"),
    ("hf repository", {"model": {"source": "hf://Qwen"}}, "hf://OWNER/NAME"),
    (
        "digests without revision",
        {"model": {"source": "hf://a/b", "digests": {"m.gguf": SHA}}},
        "revision is required when digests are pinned",
    ),
    (
        "gguf with AWQ",
        {"model": {"source": "hf://a/b", "format": "gguf", "quantization": "AWQ"}},
        "format gguf cannot carry",
    ),
    (
        "safetensors with Q4_K_M",
        {"model": {"source": "hf://a/b", "format": "safetensors", "quantization": "Q4_K_M"}},
        "exist only as GGUF",
    ),
    (
        "vllm with gguf",
        {"engine": "vllm", "model": {"source": "hf://a/b", "format": "gguf"}},
        "engine vllm cannot serve format gguf",
    ),
    (
        "vllm with Q4_K_M",
        {"engine": "vllm", "model": {"source": "hf://a/b", "quantization": "Q4_K_M"}},
        "engine vllm cannot serve GGUF quantizations",
    ),
    ("vllm on cpu", {"engine": "vllm", "hardware": {"accelerator": "cpu"}}, "needs a GPU"),
    (
        "llamacpp with safetensors",
        {"engine": "llamacpp", "model": {"source": "hf://a/b", "format": "safetensors"}},
        "engine llamacpp serves only gguf",
    ),
    (
        "llamacpp with AWQ",
        {"engine": "llamacpp", "model": {"source": "hf://a/b", "quantization": "AWQ"}},
        "engine llamacpp cannot serve AWQ",
    ),
    (
        "sglang with gguf",
        {"engine": "sglang", "model": {"source": "hf://a/b", "format": "gguf"}},
        "engine sglang cannot serve format gguf",
    ),
    (
        "sglang with Q4_K_M",
        {"engine": "sglang", "model": {"source": "hf://a/b", "quantization": "Q4_K_M"}},
        "engine sglang cannot serve GGUF quantizations",
    ),
    ("sglang on cpu", {"engine": "sglang", "hardware": {"accelerator": "cpu"}}, "needs a GPU"),
    (
        "cpu with FP8",
        {
            "hardware": {"accelerator": "cpu"},
            "model": {"source": "hf://a/b", "quantization": "FP8"},
        },
        "served by vllm or sglang on GPUs only",
    ),
    (
        "gpu settings on cpu",
        {"hardware": {"accelerator": "cpu", "gpu": {"products": ["NVIDIA-L4"]}}},
        "gpu settings are not allowed when accelerator is cpu",
    ),
    ("gpu count 0", {"hardware": {"gpu": {"count": 0}}}, "count must be auto or an integer >= 1"),
    ("gpu count text", {"hardware": {"gpu": {"count": "two"}}}, "count must be auto or an integer"),
    (
        "toleration without key",
        {"hardware": {"tolerations": [{"value": "x"}]}},
        "operator must be Exists when key is empty",
    ),
    (
        "toleration Exists with value",
        {"hardware": {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}},
        "value must be empty when operator is Exists",
    ),
    (
        "tolerationSeconds",
        {"hardware": {"tolerations": [{"key": "k", "tolerationSeconds": 30}]}},
        "tolerationSeconds is only allowed with effect NoExecute",
    ),
    (
        "minReplicas above maxReplicas",
        {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
        "minReplicas must be less than or equal to maxReplicas",
    ),
    ("quantization enum", {"model": {"source": "hf://a/b", "quantization": "Q4"}}, '"Q4"'),
    (
        "engine enum",
        {"engine": "tgi"},
        'supported values: "auto", "vllm", "llamacpp", "sglang"',
    ),
    ("negative replicas", {"replicas": -1}, "greater than or equal to 0"),
    ("context as text", {"serving": {"contextLength": "4k"}}, "must be of type integer"),
    ("duplicate env", {"serving": {"env": [{"name": "A"}, {"name": "A"}]}}, "Duplicate value"),
    ("unknown field", {"gpus": 2}, 'unknown field "spec.gpus"'),
    (
        "duplicate adapters",
        {"adapters": [{"name": "a", "source": "hf://a/b"}, {"name": "a", "source": "hf://a/c"}]},
        "Duplicate value",
    ),
    (
        "adapter named like the base",
        {"adapters": [{"name": "bad", "source": "hf://a/b"}]},
        "an adapter may not take the base model's served name",
    ),
    (
        "adapter digests without revision",
        {"adapters": [{"name": "a", "source": "hf://a/b", "digests": {"a.gguf": SHA}}]},
        "revision is required when digests are pinned",
    ),
    (
        "adapter scheme",
        {"adapters": [{"name": "a", "source": "ftp://host/a"}]},
        "source must be a URI with scheme",
    ),
]


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [pytest.param(changes, fragment, id=case) for case, changes, fragment in REFUSALS],
)
def test_bad_objects_are_refused_by_server_and_models_alike(
    crd_cluster: ClusterHandle,
    namespace: str,
    tmp_path: Path,
    changes: dict[str, Any],
    fragment: str,
) -> None:
    obj = manifest("bad", **copy.deepcopy(changes))
    with pytest.raises(SpecError) as refused:
        parse_model_deployment(obj)
    code, stderr = create(crd_cluster, namespace, obj, tmp_path)
    assert code != 0, f"the API server accepted {changes}"
    assert fragment in stderr
    assert refused.value.field_path in stderr


def test_name_that_cannot_name_a_service_is_refused(
    crd_cluster: ClusterHandle, namespace: str, tmp_path: Path
) -> None:
    obj = manifest("qwen2.5-7b")
    with pytest.raises(SpecError, match=r"metadata\.name"):
        parse_model_deployment(obj)
    code, stderr = create(crd_cluster, namespace, obj, tmp_path)
    assert code != 0
    assert "metadata.name must be a DNS-1035 label" in stderr


def test_explicit_nulls_are_dropped_as_the_models_read_them(
    crd_cluster: ClusterHandle, namespace: str, tmp_path: Path
) -> None:
    obj = manifest(
        "nulls",
        model={"source": "hf://a/b", "revision": None, "servedName": None},
        cache={"storageClassName": None},
    )
    code, stderr = create(crd_cluster, namespace, obj, tmp_path)
    assert code == 0, stderr
    stored = read(crd_cluster, namespace, "nulls")
    assert "revision" not in stored["spec"]["model"]
    assert "storageClassName" not in stored["spec"]["cache"]
    assert parse_model_deployment(stored).spec == parse_model_deployment(obj).spec
