"""End-to-end planning: the examples, and a property test over generated specs and pools."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nodepool import EXAMPLES, admitted, cpu_node, gpu_node, load_e2e_pool, model_deployment

from modeldeploy.api import SpecError
from modeldeploy.decision import PlacementRefusal
from modeldeploy.plan import plan, plan_object

E2E = load_e2e_pool()


def _example_documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(EXAMPLES.rglob("*.yaml")) + sorted(EXAMPLES.rglob("*.yml")):
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if isinstance(doc, dict) and doc.get("kind") == "ModelDeployment":
                found.append((f"{path.relative_to(EXAMPLES)}#{index}", doc))
    return found


@pytest.mark.parametrize(("name", "document"), _example_documents())
def test_every_example_plans_on_the_e2e_pool(name: str, document: dict[str, Any]) -> None:
    result = plan_object(document, E2E)
    decision = result.as_dict()["decision"]
    assert decision["engine"] in {"llamacpp", "vllm"}
    pod = next(o for o in result.objects if o["kind"] == "Deployment")["spec"]["template"]
    assert admitted(pod["spec"], E2E) == set(result.placement.hardware_class.nodes)


def test_plan_needs_a_name() -> None:
    document = model_deployment({"model": {"source": "hf://Qwen/Qwen2.5-7B-Instruct-GGUF"}})
    del document["metadata"]["name"]
    with pytest.raises(SpecError) as caught:
        plan_object(document, E2E)
    assert caught.value.field_path == "metadata.name"


def test_plan_as_dict_is_json() -> None:
    result = plan_object(
        model_deployment({"model": {"source": "hf://Qwen/Qwen2.5-7B-Instruct-GGUF"}}), E2E
    )
    data = json.loads(json.dumps(result.as_dict()))
    assert set(data) == {"decision", "objects"}
    assert plan(result.model_deployment, E2E).as_dict() == data


SOURCES = [
    "hf://Qwen/Qwen2.5-7B-Instruct-GGUF",
    "hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q8_0.gguf",
    "hf://meta-llama/Llama-3.1-8B-Instruct",
    "hf://meta-llama/Llama-3.1-70B-Instruct",
    "hf://hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
    "hf://neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8",
    "s3://models/mystery",
    "pvc://models/llama-405b.gguf",
    "https://example.com/model.gguf",
]
QUANTIZATIONS = ["auto", "F16", "BF16", "Q8_0", "Q4_K_M", "Q2_K", "IQ4_XS", "AWQ", "GPTQ", "FP8"]
EXTRA_NODES = [
    gpu_node("t4", "Tesla-T4", 15360, 1, cpu="8", memory="32Gi"),
    gpu_node("gh200", "NVIDIA-GH200-480GB", 97871, 1, arch="arm64"),
    gpu_node("down", "NVIDIA-H200", 143771, 8, ready=False),
    cpu_node("tiny", cpu="2", memory="4Gi", level="baseline"),
    cpu_node("amx", cpu="96", memory="768Gi", level="amx", instance_type="m7i.24xlarge"),
]
NODES = E2E + EXTRA_NODES

gpu_requests = st.fixed_dictionaries(
    {},
    optional={
        "count": st.one_of(st.just("auto"), st.integers(min_value=1, max_value=16)),
        "minMemoryGiB": st.integers(min_value=1, max_value=200),
        "products": st.lists(st.sampled_from(["H100", "L4", "A10G", "T4", "B200"]), max_size=2),
    },
)
specs = st.fixed_dictionaries(
    {
        "model": st.fixed_dictionaries(
            {"source": st.sampled_from(SOURCES)},
            optional={
                "parameters": st.sampled_from(["500M", "1.5B", "7B", "8B", "70B", "405B"]),
                "format": st.sampled_from(["auto", "gguf", "safetensors"]),
                "quantization": st.sampled_from(QUANTIZATIONS),
            },
        )
    },
    optional={
        "engine": st.sampled_from(["auto", "vllm", "llamacpp", "sglang"]),
        "hardware": st.fixed_dictionaries(
            {},
            optional={
                "accelerator": st.sampled_from(["auto", "gpu", "cpu"]),
                "gpu": gpu_requests,
                "nodeSelector": st.sampled_from(
                    [{}, {"kubernetes.io/arch": "arm64"}, {"kubernetes.io/arch": "amd64"}]
                ),
            },
        ),
        "serving": st.fixed_dictionaries(
            {},
            optional={
                "contextLength": st.sampled_from([512, 4096, 32768, 131072]),
                "maxConcurrentRequests": st.integers(min_value=1, max_value=64),
            },
        ),
        "replicas": st.integers(min_value=0, max_value=4),
        "cache": st.fixed_dictionaries({}, optional={"enabled": st.booleans()}),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=specs, nodes=st.lists(st.sampled_from(NODES), unique_by=lambda n: n["metadata"]["name"])
)
def test_plan_decides_or_refuses_clearly(spec: dict[str, Any], nodes: list[dict[str, Any]]) -> None:
    document = model_deployment(spec)
    try:
        result = plan_object(document, nodes)
    except (SpecError, PlacementRefusal) as error:
        assert error.field_path.startswith(("spec", "metadata"))
        assert error.message
        assert str(error).startswith(error.field_path + ": ")
        return
    decision = result.placement.decision()
    by_format = "llamacpp" if decision["format"] == "gguf" else "vllm"
    assert decision["engine"] == (
        spec["engine"] if spec.get("engine", "auto") != "auto" else by_format
    )
    if decision["engine"] in ("vllm", "sglang"):
        assert decision["accelerator"] == "gpu"
        assert decision["tensorParallelSize"] == decision["gpusPerReplica"] >= 1
    if spec.get("engine", "auto") != "auto":
        assert decision["engine"] == spec["engine"]
    accelerator = spec.get("hardware", {}).get("accelerator", "auto")
    if accelerator != "auto":
        assert decision["accelerator"] == accelerator
    deployment = next(o for o in result.objects if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert admitted(pod, nodes) == set(result.placement.hardware_class.nodes)
    assert json.dumps(result.as_dict()) == json.dumps(plan_object(document, nodes).as_dict())
