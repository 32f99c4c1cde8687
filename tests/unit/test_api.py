"""Tests of the ModelDeployment API: parsing, validation errors, examples, CRD/model parity."""

from __future__ import annotations

import copy
import re
import types
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from modeldeploy.api import (
    GGUF_ONLY_QUANTIZATIONS,
    PHASES,
    QUANTIZATIONS,
    SAFETENSORS_ONLY_QUANTIZATIONS,
    ModelDeployment,
    ModelDeploymentSpec,
    SpecError,
    parse_model_deployment,
    parse_parameter_count,
    parse_spec,
)

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "modeldeploy.io_modeldeployments.yaml"
EXAMPLES = ROOT / "examples"
SHA = "a" * 64


def crd(path: Path = CRD_PATH) -> dict[str, Any]:
    """The CRD document (the ModelDeployment CRD unless ``path`` names another)."""
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def crd_version(path: Path = CRD_PATH) -> dict[str, Any]:
    """The only served version of the CRD."""
    versions: list[dict[str, Any]] = crd(path)["spec"]["versions"]
    assert len(versions) == 1
    return versions[0]


def root_schema(path: Path = CRD_PATH) -> dict[str, Any]:
    """The openAPIV3Schema of the CRD's kind."""
    schema: dict[str, Any] = crd_version(path)["schema"]["openAPIV3Schema"]
    return schema


def manifest(**spec: Any) -> dict[str, Any]:
    """A ModelDeployment object with ``spec``; the model defaults to a small GGUF repository."""
    spec.setdefault("model", {"source": "hf://org/model-GGUF"})
    return {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "demo", "namespace": "default"},
        "spec": spec,
    }


# --- parsing ---------------------------------------------------------------------------


def test_minimal_object_gets_every_default() -> None:
    deployment = parse_model_deployment(manifest())
    spec = deployment.spec
    assert spec.model.source == "hf://org/model-GGUF"
    assert (spec.model.format, spec.model.quantization, spec.engine) == ("auto", "auto", "auto")
    assert spec.model.revision is None and spec.model.files == [] and spec.model.digests == {}
    assert spec.hardware.accelerator == "auto"
    assert spec.hardware.gpu.count == "auto" and spec.hardware.gpu.is_default
    assert (spec.serving.context_length, spec.serving.max_concurrent_requests) == (4096, 4)
    assert spec.replicas == 1
    assert not spec.autoscaling.enabled
    assert (spec.autoscaling.min_replicas, spec.autoscaling.max_replicas) == (1, 4)
    assert spec.cache.enabled and spec.cache.size == "auto"
    assert spec.cache.access_mode == "ReadWriteMany"
    assert deployment.served_name == "demo"
    assert deployment.name == "demo" and deployment.namespace == "default"


def test_dump_round_trips_with_camel_case_keys() -> None:
    obj = manifest(
        model={"source": "s3://bucket/models/x", "servedName": "x", "credentialsSecret": "s3"},
        hardware={"gpu": {"count": 2, "minMemoryGiB": 40}, "nodeSelector": {"pool": "a"}},
        serving={"resources": {"requests": {"cpu": 4, "memory": "16Gi"}}},
    )
    deployment = parse_model_deployment(obj)
    dumped = deployment.model_dump(mode="json", exclude_none=True)
    assert dumped["spec"]["hardware"]["gpu"] == {"count": 2, "minMemoryGiB": 40, "products": []}
    assert dumped["spec"]["model"]["credentialsSecret"] == "s3"
    assert parse_model_deployment(dumped) == deployment


def test_models_are_frozen() -> None:
    spec = parse_model_deployment(manifest()).spec
    with pytest.raises(ValidationError):
        spec.replicas = 3


@pytest.mark.parametrize(
    ("text", "count"),
    [("270M", 270e6), ("1.5B", 1.5e9), ("7B", 7e9), ("70B", 70e9), ("1T", 1e12), ("125K", 125e3)],
)
def test_parameter_count(text: str, count: float) -> None:
    assert parse_parameter_count(text) == pytest.approx(count)
    source = parse_model_deployment(manifest(model={"source": "hf://a/b", "parameters": text}))
    assert source.spec.model.parameter_count == pytest.approx(count)


@pytest.mark.parametrize("text", ["", "7b", "B", "7 B", "1.5.2B", "-7B", "7G"])
def test_parameter_count_refuses_other_text(text: str) -> None:
    with pytest.raises(ValueError, match="parameter count"):
        parse_parameter_count(text)


@pytest.mark.parametrize(
    "source",
    [
        "hf://Qwen/Qwen2.5-7B-Instruct-GGUF",
        "s3://bucket/prefix/model",
        "gs://bucket/model",
        "https://example.org/models/model.gguf",
        "oci://registry.example.org/models/qwen:7b",
        "pvc://models/qwen",
    ],
)
def test_every_source_scheme_is_accepted(source: str) -> None:
    deployment = parse_model_deployment(manifest(model={"source": source}))
    assert deployment.spec.model.scheme == source.split("://", maxsplit=1)[0]


@pytest.mark.parametrize(
    "spec",
    [
        {"engine": "llamacpp", "model": {"source": "hf://a/b", "quantization": "Q4_K_M"}},
        {"engine": "vllm", "model": {"source": "hf://a/b", "quantization": "AWQ"}},
        {"model": {"source": "hf://a/b", "format": "gguf", "quantization": "BF16"}},
        {"hardware": {"accelerator": "cpu", "gpu": {}}},
        {"hardware": {"tolerations": [{"operator": "Exists"}]}},
        {
            "hardware": {
                "tolerations": [{"key": "k", "effect": "NoExecute", "tolerationSeconds": 5}]
            }
        },
        {"autoscaling": {"enabled": True, "minReplicas": 0, "maxReplicas": 1}},
        {"replicas": 0},
        {"model": {"source": "hf://a/b", "revision": "main", "digests": {"x.gguf": SHA}}},
        {"serving": {"env": [{"name": "A", "value": "1"}, {"name": "B"}]}},
        {"cache": {"size": "40Gi", "storageClassName": "fast", "accessMode": "ReadWriteOnce"}},
        {"model": {"source": "hf://a/b", "revision": None, "servedName": None}},
    ],
)
def test_valid_specs_are_accepted(spec: dict[str, Any]) -> None:
    parse_model_deployment(manifest(**spec))


# One SpecError, naming the field, for each kind of mistake.
BAD_SPECS: list[tuple[str, dict[str, Any], str, str]] = [
    ("no model", {"model": None}, "spec.model", "valid dictionary"),
    ("no source", {"model": {"format": "gguf"}}, "spec.model.source", "required"),
    ("bad scheme", {"model": {"source": "ftp://x/y"}}, "spec.model.source", "hf://, s3://"),
    ("no scheme", {"model": {"source": "Qwen/Qwen2.5"}}, "spec.model.source", "hf://"),
    ("hf no repo", {"model": {"source": "hf://Qwen"}}, "spec.model.source", "hf://OWNER/NAME"),
    (
        "quantization",
        {"model": {"source": "hf://a/b", "quantization": "Q4"}},
        "spec.model.quantization",
        "'Q4_K_M'",
    ),
    ("format", {"model": {"source": "hf://a/b", "format": "onnx"}}, "spec.model.format", "gguf"),
    (
        "parameters",
        {"model": {"source": "hf://a/b", "parameters": "seven"}},
        "spec.model.parameters",
        "270M",
    ),
    (
        "digest shape",
        {"model": {"source": "hf://a/b", "revision": "r", "digests": {"f": "abc"}}},
        "spec.model.digests.f",
        "64 lowercase hex",
    ),
    (
        "digests without revision",
        {"model": {"source": "hf://a/b", "digests": {"f": SHA}}},
        "spec.model.revision",
        "required when digests are pinned",
    ),
    (
        "gguf with AWQ",
        {"model": {"source": "hf://a/b", "format": "gguf", "quantization": "AWQ"}},
        "spec.model.quantization",
        "format gguf",
    ),
    (
        "safetensors with Q4_K_M",
        {"model": {"source": "hf://a/b", "format": "safetensors", "quantization": "Q4_K_M"}},
        "spec.model.quantization",
        "only as GGUF",
    ),
    (
        "secret name",
        {"model": {"source": "hf://a/b", "credentialsSecret": "HF_TOKEN"}},
        "spec.model.credentialsSecret",
        "Secret name",
    ),
    ("engine", {"engine": "tgi"}, "spec.engine", "'vllm'"),
    (
        "vllm with gguf",
        {"engine": "vllm", "model": {"source": "hf://a/b", "format": "gguf"}},
        "spec.engine",
        "format gguf",
    ),
    (
        "vllm with Q4_K_M",
        {"engine": "vllm", "model": {"source": "hf://a/b", "quantization": "Q4_K_M"}},
        "spec.engine",
        "GGUF quantization",
    ),
    ("vllm on cpu", {"engine": "vllm", "hardware": {"accelerator": "cpu"}}, "spec.engine", "GPU"),
    (
        "llamacpp with safetensors",
        {"engine": "llamacpp", "model": {"source": "hf://a/b", "format": "safetensors"}},
        "spec.engine",
        "only gguf",
    ),
    (
        "llamacpp with AWQ",
        {"engine": "llamacpp", "model": {"source": "hf://a/b", "quantization": "AWQ"}},
        "spec.engine",
        "AWQ",
    ),
    (
        "sglang with gguf",
        {"engine": "sglang", "model": {"source": "hf://a/b", "format": "gguf"}},
        "spec.engine",
        "format gguf",
    ),
    (
        "sglang with Q4_K_M",
        {"engine": "sglang", "model": {"source": "hf://a/b", "quantization": "Q4_K_M"}},
        "spec.engine",
        "GGUF quantization",
    ),
    (
        "sglang on cpu",
        {"engine": "sglang", "hardware": {"accelerator": "cpu"}},
        "spec.engine",
        "GPU",
    ),
    (
        "cpu with FP8",
        {
            "hardware": {"accelerator": "cpu"},
            "model": {"source": "hf://a/b", "quantization": "FP8"},
        },
        "spec.hardware.accelerator",
        "GPUs only",
    ),
    ("accelerator", {"hardware": {"accelerator": "tpu"}}, "spec.hardware.accelerator", "'cpu'"),
    (
        "gpu on cpu",
        {"hardware": {"accelerator": "cpu", "gpu": {"count": 1}}},
        "spec.hardware.gpu",
        "accelerator is cpu",
    ),
    ("gpu count 0", {"hardware": {"gpu": {"count": 0}}}, "spec.hardware.gpu.count", "auto or"),
    ("gpu count text", {"hardware": {"gpu": {"count": "2"}}}, "spec.hardware.gpu.count", "auto or"),
    (
        "gpu memory",
        {"hardware": {"gpu": {"minMemoryGiB": 0}}},
        "spec.hardware.gpu.minMemoryGiB",
        "greater than or equal to 1",
    ),
    (
        "toleration without key",
        {"hardware": {"tolerations": [{"value": "x"}]}},
        "spec.hardware.tolerations[0].operator",
        "Exists",
    ),
    (
        "toleration Exists with value",
        {"hardware": {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}},
        "spec.hardware.tolerations[0].value",
        "empty",
    ),
    (
        "toleration seconds",
        {"hardware": {"tolerations": [{"key": "k", "tolerationSeconds": 3}]}},
        "spec.hardware.tolerations[0].tolerationSeconds",
        "NoExecute",
    ),
    (
        "toleration effect",
        {"hardware": {"tolerations": [{"key": "k", "effect": "Never"}]}},
        "spec.hardware.tolerations[0].effect",
        "NoSchedule",
    ),
    (
        "context too short",
        {"serving": {"contextLength": 16}},
        "spec.serving.contextLength",
        "128",
    ),
    (
        "context as text",
        {"serving": {"contextLength": "4096"}},
        "spec.serving.contextLength",
        "integer",
    ),
    (
        "snake_case key",
        {"serving": {"context_length": 4096}},
        "spec.serving.context_length",
        "allowed: contextLength",
    ),
    (
        "duplicate env",
        {"serving": {"env": [{"name": "A"}, {"name": "A"}]}},
        "spec.serving.env",
        "duplicate names: A",
    ),
    (
        "env name",
        {"serving": {"env": [{"name": "1 BAD"}]}},
        "spec.serving.env[0].name",
        "environment variable",
    ),
    (
        "resource quantity",
        {"serving": {"resources": {"limits": {"memory": "lots"}}}},
        "spec.serving.resources.limits.memory",
        "quantity",
    ),
    ("negative replicas", {"replicas": -1}, "spec.replicas", "greater than or equal to 0"),
    (
        "min above max",
        {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
        "spec.autoscaling.minReplicas",
        "maxReplicas",
    ),
    ("max zero", {"autoscaling": {"maxReplicas": 0}}, "spec.autoscaling.maxReplicas", "1"),
    ("cache size", {"cache": {"size": "big"}}, "spec.cache.size", "20Gi"),
    ("access mode", {"cache": {"accessMode": "ReadOnlyMany"}}, "spec.cache.accessMode", "RWX"),
    ("unknown field", {"model": {"source": "hf://a/b"}, "gpus": 2}, "spec.gpus", "allowed: model"),
]


@pytest.mark.parametrize(
    ("spec", "field_path", "fragment"),
    [pytest.param(spec, path, fragment, id=name) for name, spec, path, fragment in BAD_SPECS],
)
def test_bad_spec_gives_one_spec_error_naming_the_field(
    spec: dict[str, Any], field_path: str, fragment: str
) -> None:
    with pytest.raises(SpecError) as raised:
        parse_model_deployment(manifest(**spec))
    assert raised.value.field_path == field_path
    assert fragment.lower() in raised.value.message.lower() or (
        fragment == "RWX" and "ReadWriteMany" in raised.value.message
    )
    assert str(raised.value).startswith(f"{field_path}: ")
    assert isinstance(raised.value, ValueError)


def test_several_problems_still_give_one_error_that_counts_the_rest() -> None:
    with pytest.raises(SpecError) as raised:
        parse_model_deployment(manifest(engine="x", replicas=-1))
    assert raised.value.field_path == "spec.engine"
    assert "(and 1 more problem)" in raised.value.message


@pytest.mark.parametrize(
    ("obj", "field_path"),
    [
        ([], ""),
        (
            {"apiVersion": "modeldeploy.io/v1", "spec": {"model": {"source": "hf://a/b"}}},
            "apiVersion",
        ),
        ({"kind": "Model", "spec": {"model": {"source": "hf://a/b"}}}, "kind"),
        ({"metadata": {"name": "x"}}, "spec"),
        (
            {"metadata": {"name": "Qwen.7b"}, "spec": {"model": {"source": "hf://a/b"}}},
            "metadata.name",
        ),
        (
            {"metadata": {"name": "a" * 64}, "spec": {"model": {"source": "hf://a/b"}}},
            "metadata.name",
        ),
    ],
)
def test_bad_envelope_gives_spec_error(obj: object, field_path: str) -> None:
    with pytest.raises(SpecError) as raised:
        parse_model_deployment(obj)
    assert raised.value.field_path == field_path


def test_parse_spec_prefixes_paths_with_spec() -> None:
    assert parse_spec({"model": {"source": "hf://a/b"}}).replicas == 1
    with pytest.raises(SpecError) as raised:
        parse_spec({"model": {"source": "hf://a/b"}, "replicas": "two"})
    assert raised.value.field_path == "spec.replicas"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=3)
    ),
    max_leaves=8,
)
SPEC_PATHS = [
    ("model",),
    ("model", "source"),
    ("model", "quantization"),
    ("model", "digests"),
    ("model", "files"),
    ("engine",),
    ("hardware",),
    ("hardware", "gpu"),
    ("hardware", "gpu", "count"),
    ("hardware", "tolerations"),
    ("serving",),
    ("serving", "env"),
    ("serving", "resources"),
    ("autoscaling",),
    ("cache", "size"),
    ("replicas",),
    ("surprise",),
]


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(SPEC_PATHS), value=JSON_VALUES)
def test_any_value_anywhere_parses_or_gives_one_spec_error(
    path: tuple[str, ...], value: object
) -> None:
    obj = manifest(model={"source": "hf://a/b"}, hardware={"gpu": {}}, serving={"env": []})
    target = obj["spec"]
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = value
    try:
        parse_model_deployment(obj)
    except SpecError as error:
        assert error.field_path.startswith("spec")
        assert error.message


@given(
    number=st.decimals(min_value=1, max_value=999, places=2),
    suffix=st.sampled_from(["", "K", "M", "B", "T"]),
)
def test_parameter_count_property(number: Decimal, suffix: str) -> None:
    text = f"{number.normalize():f}{suffix}"
    scale = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[suffix]
    assert parse_parameter_count(text) == pytest.approx(float(number) * scale)


def test_quantization_families_partition_the_catalogue() -> None:
    unquantized = {"auto", "F32", "F16", "BF16"}
    assert GGUF_ONLY_QUANTIZATIONS.isdisjoint(SAFETENSORS_ONLY_QUANTIZATIONS)
    every = unquantized | GGUF_ONLY_QUANTIZATIONS | SAFETENSORS_ONLY_QUANTIZATIONS
    assert set(QUANTIZATIONS) == every
    assert {"Q4_K_M", "IQ2_M", "Q8_0"} <= GGUF_ONLY_QUANTIZATIONS


# --- examples --------------------------------------------------------------------------

EXPECTED_EXAMPLES = {
    "gemma-270m-cpu.yaml",
    "qwen-7b-awq-gpu.yaml",
    "llama-70b-bf16-h100.yaml",
    "qwen-7b-gguf-pinned.yaml",
    "gemma-270m-lora.yaml",
}


def example_deployments() -> list[tuple[str, dict[str, Any]]]:
    """Every ModelDeployment document under examples/, with its file name."""
    found = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and document.get("kind") == "ModelDeployment":
                found.append((path.name, document))
    return found


def test_expected_examples_exist() -> None:
    assert {name for name, _ in example_deployments()} >= EXPECTED_EXAMPLES


@pytest.mark.parametrize(
    "document", [pytest.param(doc, id=name) for name, doc in example_deployments()]
)
def test_every_example_parses(document: dict[str, Any]) -> None:
    deployment = parse_model_deployment(document)
    assert deployment.spec.model.parameter_count is not None
    assert deployment.name


def test_examples_say_what_they_show() -> None:
    by_name = {name: parse_model_deployment(doc) for name, doc in example_deployments()}
    gemma = by_name["gemma-270m-cpu.yaml"].spec
    assert (gemma.model.quantization, gemma.model.parameters) == ("Q4_K_M", "270M")
    assert gemma.hardware.accelerator == "cpu"
    awq = by_name["qwen-7b-awq-gpu.yaml"].spec
    assert (awq.model.format, awq.model.quantization) == ("safetensors", "AWQ")
    llama = by_name["llama-70b-bf16-h100.yaml"].spec
    assert llama.model.quantization == "BF16" and llama.hardware.gpu.products
    pinned = by_name["qwen-7b-gguf-pinned.yaml"].spec.model
    assert pinned.revision and pinned.digests
    lora = by_name["gemma-270m-lora.yaml"].spec
    assert [a.name for a in lora.adapters] == ["gemma-3-270m-sql", "gemma-3-270m-support"]


# --- the CRD itself --------------------------------------------------------------------


def test_crd_names_and_scope() -> None:
    document = crd()
    assert document["apiVersion"] == "apiextensions.k8s.io/v1"
    assert document["metadata"]["name"] == "modeldeployments.modeldeploy.io"
    spec = document["spec"]
    assert (spec["group"], spec["scope"]) == ("modeldeploy.io", "Namespaced")
    assert spec["names"] == {
        "kind": "ModelDeployment",
        "listKind": "ModelDeploymentList",
        "plural": "modeldeployments",
        "singular": "modeldeployment",
        "shortNames": ["mdep"],
        "categories": ["ai", "modeldeploy"],
    }
    version = crd_version()
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)


def test_crd_subresources() -> None:
    assert crd_version()["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }


def test_crd_printer_columns() -> None:
    columns = {column["name"]: column for column in crd_version()["additionalPrinterColumns"]}
    assert {name: column["jsonPath"] for name, column in columns.items()} == {
        "Model": ".spec.model.source",
        "Quant": ".spec.model.quantization",
        "Engine": ".status.decision.engine",
        "Accelerator": ".status.decision.accelerator",
        "Ready": ".status.readyReplicas",
        "Desired": ".status.autoscaling.desiredReplicas",
        "Cost/h": ".status.decision.costPerHour",
        "Phase": ".status.phase",
        "Compliant": '.status.conditions[?(@.type=="Compliant")].status',
        "Endpoint": ".status.endpoint",
        "Age": ".metadata.creationTimestamp",
    }
    assert columns["Accelerator"]["priority"] == 1 and columns["Endpoint"]["priority"] == 1
    for column in columns.values():
        # A filter selects one condition: the schema path is that of the list itself.
        path = column["jsonPath"].split("[?", 1)[0].lstrip(".").split(".")
        if path[0] in {"spec", "status"}:
            assert schema_at(path), column["name"]


def schema_at(path: list[str]) -> dict[str, Any]:
    """The schema node at a dotted property path from the root."""
    node = root_schema()
    for part in path:
        node = node["properties"][part]
    return node


def walk_schema(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    """Every schema node below (and including) ``node``, with its path."""
    found = [(path, node)]
    for name, child in node.get("properties", {}).items():
        found += walk_schema(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        found += walk_schema(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += walk_schema(node["additionalProperties"], f"{path}{{}}")
    return found


def test_every_field_has_a_description() -> None:
    # The API server forbids anything but the type on metadata.
    metadata = root_schema()["properties"]["metadata"]
    assert metadata == {"type": "object"}
    missing = [
        path
        for path, node in walk_schema(root_schema(), "")
        if not node.get("description") and path != ".metadata"
    ]
    assert missing == []


def test_every_cel_rule_has_a_message() -> None:
    rules = [
        (path, rule)
        for path, node in walk_schema(root_schema(), "")
        for rule in node.get("x-kubernetes-validations", [])
    ]
    assert len(rules) >= 15
    for path, rule in rules:
        assert rule.get("message"), (path, rule["rule"])
        assert set(rule) <= {"rule", "message", "fieldPath", "reason"}, path


def test_cel_quantization_lists_match_the_catalogue() -> None:
    rules = [
        rule["rule"]
        for _, node in walk_schema(root_schema(), "")
        for rule in node.get("x-kubernetes-validations", [])
    ]
    listed = [
        re.findall(r"'([A-Z0-9_]+)'", found)
        for rule in rules
        for found in re.findall(r"in \[([^\]]*)\]", rule)
    ]
    assert listed and all(set(names) == SAFETENSORS_ONLY_QUANTIZATIONS for names in listed)
    gguf_rules = [rule for rule in rules if "startsWith('Q')" in rule]
    assert gguf_rules and all("startsWith('IQ')" in rule for rule in gguf_rules)
    assert {q for q in QUANTIZATIONS if q.startswith(("Q", "IQ"))} == GGUF_ONLY_QUANTIZATIONS


def test_status_schema() -> None:
    status = root_schema()["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == list(PHASES)
    conditions = status["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["properties"]) == {
        "type",
        "status",
        "observedGeneration",
        "lastTransitionTime",
        "reason",
        "message",
    }
    assert status["decision"]["properties"]["engine"]["enum"] == ["vllm", "llamacpp", "sglang"]
    assert status["decision"]["properties"]["accelerator"]["enum"] == ["gpu", "cpu"]
    assert {"replicas", "readyReplicas", "selector", "endpoint", "observedGeneration"} <= set(
        status
    )
    open_ended = [
        path
        for path, node in walk_schema(root_schema(), "")
        if node.get("x-kubernetes-preserve-unknown-fields")
    ]
    assert open_ended == []


# --- CRD schema and pydantic models agree ----------------------------------------------

_CONSTRAINT_ATTRIBUTES = ("ge", "le", "gt", "lt", "min_length", "max_length", "pattern")
_SIZE_KEYWORDS = {
    "string": ("minLength", "maxLength"),
    "array": ("minItems", "maxItems"),
    "object": ("minProperties", "maxProperties"),
}


def constraints_of(metadata: list[Any]) -> dict[str, Any]:
    """The pydantic constraints (ge, max_length, pattern, ...) found in field metadata."""
    found: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, FieldInfo):
            found.update(constraints_of(item.metadata))
            continue
        for attribute in _CONSTRAINT_ATTRIBUTES:
            value = getattr(item, attribute, None)
            if value is not None:
                found[attribute] = value
    return found


def openapi_constraints(constraints: dict[str, Any], schema_type: str) -> dict[str, Any]:
    """Translate pydantic constraints to the OpenAPI keywords for ``schema_type``."""
    low, high = _SIZE_KEYWORDS.get(schema_type, ("", ""))
    names = {
        "ge": "minimum",
        "le": "maximum",
        "gt": "exclusiveMinimum",
        "lt": "exclusiveMaximum",
        "min_length": low,
        "max_length": high,
        "pattern": "pattern",
    }
    return {names[key]: value for key, value in constraints.items()}


def cel_rules(schema: dict[str, Any]) -> list[str]:
    """The CEL rule texts on one schema node."""
    return [rule["rule"] for rule in schema.get("x-kubernetes-validations", [])]


def without_none(annotation: Any) -> tuple[Any, bool]:
    """Strip ``None`` from an optional annotation; say whether it was optional."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(members) < len(get_args(annotation)):
            return (members[0] if len(members) == 1 else Union[tuple(members)]), True  # noqa: UP007
    return annotation, False


def unannotated(annotation: Any) -> tuple[Any, list[Any]]:
    """Split ``Annotated[X, ...]`` into X and its metadata."""
    metadata: list[Any] = []
    while get_origin(annotation) is Annotated:
        annotation, *extra = get_args(annotation)
        metadata += extra
    return annotation, metadata


def expanded_default(schema: dict[str, Any], value: Any) -> Any:
    """Apply nested CRD defaults to ``value`` the way the API server does."""
    if isinstance(value, dict) and "properties" in schema:
        result = dict(value)
        for name, child in schema["properties"].items():
            if name in result:
                result[name] = expanded_default(child, result[name])
            elif "default" in child:
                result[name] = expanded_default(child, copy.deepcopy(child["default"]))
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [expanded_default(schema["items"], item) for item in value]
    return value


def pydantic_default(info: FieldInfo) -> Any:
    """The field's default as JSON, the way it would be stored (None fields left out)."""
    value = info.get_default(call_default_factory=True, validated_data={})
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    return value


def compare_model(schema: dict[str, Any], model: type[BaseModel], path: str) -> list[str]:
    """Differences between an object schema and a pydantic model, field by field."""
    problems: list[str] = []
    if schema.get("type") != "object":
        return [f"{path}: CRD type {schema.get('type')!r}, model {model.__name__} is an object"]
    properties: dict[str, Any] = schema.get("properties", {})
    fields = {info.alias or name: info for name, info in model.model_fields.items()}
    if set(properties) != set(fields):
        problems.append(
            f"{path}: only in CRD {sorted(set(properties) - set(fields))}, "
            f"only in {model.__name__} {sorted(set(fields) - set(properties))}"
        )
    required = {alias for alias, info in fields.items() if info.is_required()}
    if set(schema.get("required", [])) != required:
        problems.append(
            f"{path}: CRD requires {schema.get('required', [])}, model {sorted(required)}"
        )
    for alias in sorted(set(properties) & set(fields)):
        problems += compare_field(properties[alias], fields[alias], f"{path}.{alias}")
    return problems


def compare_field(schema: dict[str, Any], info: FieldInfo, path: str) -> list[str]:
    """Differences in one field: default, then type and constraints."""
    problems: list[str] = []
    annotation, _ = without_none(info.annotation)
    if info.is_required():
        if "default" in schema:
            problems.append(f"{path}: required in the model but defaulted in the CRD")
    else:
        expected = pydantic_default(info)
        if expected is None:
            if "default" in schema:
                problems.append(f"{path}: CRD default {schema['default']!r}, model has none")
        elif "default" not in schema:
            problems.append(f"{path}: model default {expected!r}, CRD has none")
        else:
            actual = expanded_default(schema, copy.deepcopy(schema["default"]))
            if actual != expected:
                problems.append(f"{path}: CRD default {actual!r} != model default {expected!r}")
    return problems + compare_type(schema, annotation, list(info.metadata), path)


def compare_type(
    schema: dict[str, Any], annotation: Any, metadata: list[Any], path: str
) -> list[str]:
    """Differences between a schema node and a (possibly Annotated) type."""
    annotation, extra = unannotated(annotation)
    metadata = metadata + extra
    origin = get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return compare_model(schema, annotation, path)
    if origin in (Union, types.UnionType):
        return compare_int_or_string(schema, annotation, path)
    expected_type = {
        str: "string",
        int: "integer",
        float: "number",
        bool: "boolean",
        list: "array",
        dict: "object",
    }
    if origin is Literal:
        values = list(get_args(annotation))
        problems = [] if schema.get("type") == "string" else [f"{path}: enum must be a string"]
        if schema.get("enum") != values:
            problems.append(f"{path}: CRD enum {schema.get('enum')} != model {values}")
        return problems
    base = origin or annotation
    schema_type = expected_type.get(base)
    if schema_type is None:
        return [f"{path}: the test cannot compare the type {annotation!r}"]
    problems = []
    if schema.get("type") != schema_type:
        problems.append(f"{path}: CRD type {schema.get('type')!r}, model {schema_type!r}")
    problems += compare_constraints(schema, constraints_of(metadata), schema_type, path)
    if base is list:
        (item,) = get_args(annotation)
        problems += compare_type(schema.get("items", {}), item, [], f"{path}[]")
    if base is dict:
        key, value = get_args(annotation)
        assert key is str, path
        problems += compare_type(schema.get("additionalProperties", {}), value, [], f"{path}{{}}")
    return problems


def compare_constraints(
    schema: dict[str, Any], constraints: dict[str, Any], schema_type: str, path: str
) -> list[str]:
    """Bounds and patterns must match; a pattern may instead be a CEL ``self.matches`` rule."""
    expected = openapi_constraints(constraints, schema_type)
    keywords = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "pattern"}
    keywords |= set(_SIZE_KEYWORDS.get(schema_type, ()))
    actual = {key: schema[key] for key in keywords if key in schema}
    pattern = expected.get("pattern")
    enforced_by_cel = any(f"self.matches('{pattern}')" in rule for rule in cel_rules(schema))
    if pattern is not None and "pattern" not in actual and enforced_by_cel:
        actual["pattern"] = pattern
    if actual != expected:
        return [f"{path}: CRD constraints {actual} != model constraints {expected}"]
    return []


def compare_int_or_string(schema: dict[str, Any], annotation: Any, path: str) -> list[str]:
    """A union of an integer and a string is an x-kubernetes-int-or-string field."""
    if not schema.get("x-kubernetes-int-or-string"):
        return [f"{path}: model {annotation!r} needs x-kubernetes-int-or-string in the CRD"]
    kinds = set()
    problems = []
    for member in get_args(annotation):
        base, metadata = unannotated(member)
        if get_origin(base) is Literal:
            kinds.add("string")
            literals = get_args(base)
            rules = " ".join(cel_rules(schema))
            missing = [value for value in literals if f"'{value}'" not in rules]
            if missing:
                problems.append(f"{path}: no CEL rule mentions {missing}")
        elif base is str:
            kinds.add("string")
            pattern = constraints_of(metadata).get("pattern")
            if schema.get("pattern") != pattern:
                problems.append(f"{path}: CRD pattern {schema.get('pattern')!r} != {pattern!r}")
        elif base is int:
            kinds.add("integer")
            bounds = constraints_of(metadata)
            if bounds and not cel_rules(schema) and "ge" in bounds and bounds["ge"] > 0:
                problems.append(f"{path}: integer bound {bounds} has no CEL rule in the CRD")
    if kinds != {"integer", "string"}:
        problems.append(f"{path}: model union {annotation!r} is not int-or-string")
    return problems


def test_crd_spec_schema_and_models_agree() -> None:
    spec_schema = root_schema()["properties"]["spec"]
    assert compare_model(spec_schema, ModelDeploymentSpec, "spec") == []


def test_crd_root_and_model_have_the_same_fields() -> None:
    schema = root_schema()
    aliases = {info.alias or name for name, info in ModelDeployment.model_fields.items()}
    assert set(schema["properties"]) == aliases
    required = {info.alias for info in ModelDeployment.model_fields.values() if info.is_required()}
    assert set(schema["required"]) == required


def test_the_parity_check_notices_a_difference() -> None:
    spec_schema = copy.deepcopy(root_schema()["properties"]["spec"])
    model_schema = spec_schema["properties"]["model"]
    model_schema["properties"]["format"]["enum"].remove("gguf")
    model_schema["properties"]["quantization"]["default"] = "Q4_K_M"
    spec_schema["properties"]["serving"]["properties"]["contextLength"]["minimum"] = 1
    spec_schema["properties"]["replicas"]["type"] = "string"
    del spec_schema["properties"]["cache"]["properties"]["size"]
    spec_schema["properties"]["hardware"]["properties"]["gpu"]["properties"]["products"][
        "default"
    ] = ["x"]
    spec_schema["required"] = []
    problems = "\n".join(compare_model(spec_schema, ModelDeploymentSpec, "spec"))
    for fragment in [
        "spec.model.format: CRD enum",
        "spec.model.quantization: CRD default",
        "spec.serving.contextLength: CRD constraints",
        "spec.replicas: CRD type",
        "spec.cache: only in CRD [], only in Cache ['size']",
        "spec.hardware: CRD default",
        "spec: CRD requires []",
    ]:
        assert fragment in problems
