"""Node inventory, hardware classes and placement over several node pools, refusals included."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import pytest
from nodepool import admitted, cpu_node, gpu_node, load_e2e_pool

from modeldeploy.api import parse_spec
from modeldeploy.config import OperatorConfig
from modeldeploy.decision import Placement, PlacementRefusal
from modeldeploy.nodes import Taint, group_classes, nominal_memory_at_least, parse_node, tolerates
from modeldeploy.placement import plan_placement
from modeldeploy.quantity import cpu_millis, parse_quantity, quantity_bytes
from modeldeploy.runtimes.base import tensor_parallel_sizes
from modeldeploy.sizing import ModelArchitecture, read_hf_config

E2E = load_e2e_pool()
CPU_ONLY = [
    cpu_node("cpu-small", cpu="8", memory="16Gi", level="avx2"),
    cpu_node("cpu-big", cpu="32", memory="128Gi", level="avx512"),
]
MIXED = [
    gpu_node("l4-1", "NVIDIA-L4", 23034, 1, cpu="8", memory="32Gi"),
    gpu_node("l4-2", "NVIDIA-L4", 23034, 1, cpu="8", memory="32Gi"),
    cpu_node("cpu-1", cpu="16", memory="64Gi", level="avx512", instance_type="c6i.4xlarge"),
    cpu_node("cpu-2", cpu="16", memory="64Gi", level="avx512", instance_type="c6i.4xlarge"),
]
SMALL_GPUS = [
    gpu_node("t4-1", "Tesla-T4", 15360, 1, cpu="8", memory="32Gi"),
    gpu_node("t4-2", "Tesla-T4", 15360, 1, cpu="8", memory="32Gi"),
    cpu_node("cpu-1", cpu="32", memory="64Gi", level="avx512"),
]
ARM = [
    cpu_node("arm-1", cpu="16", memory="64Gi", arch="arm64", instance_type="c7g.4xlarge"),
    cpu_node("arm-2", cpu="64", memory="128Gi", arch="arm64", instance_type="c7g.16xlarge"),
    gpu_node("gh200", "NVIDIA-GH200-480GB", 97871, 1, arch="arm64", compute=(9, 0)),
]
POOLS = {"e2e": E2E, "cpu-only": CPU_ONLY, "mixed": MIXED, "small-gpus": SMALL_GPUS, "arm": ARM}

QWEN_GGUF = {"source": "hf://Qwen/Qwen2.5-7B-Instruct-GGUF", "quantization": "Q4_K_M"}
LLAMA_8B = {"source": "hf://meta-llama/Llama-3.1-8B-Instruct"}
LLAMA_70B = {"source": "hf://meta-llama/Llama-3.1-70B-Instruct"}
LLAMA_8B_CONFIG = read_hf_config(
    {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "max_position_embeddings": 131072,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "torch_dtype": "bfloat16",
    }
)


def _spec(model: dict[str, Any], **rest: Any) -> dict[str, Any]:
    return {"model": model, **rest}


def _place(
    pool: list[dict[str, Any]], spec: dict[str, Any], artifact: ModelArchitecture | None = None
) -> Placement:
    return plan_placement(parse_spec(spec), pool, OperatorConfig(), artifact)


def _pod_spec(placement: Placement) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "affinity": {"nodeAffinity": placement.node_affinity},
        "tolerations": placement.tolerations,
    }
    if placement.node_selector:
        pod["nodeSelector"] = placement.node_selector
    return pod


# --- quantities ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Fraction(1, 2)),
        ("64Gi", 64 * 1024**3),
        ("128974848Ki", 128974848 * 1024),
        ("1e3", 1000),
        ("1E3", 1000),
        ("12e-3", Fraction(12, 1000)),
        ("1.5", Fraction(3, 2)),
        (".5", Fraction(1, 2)),
        ("2k", 2000),
        ("1M", 10**6),
        ("100Mi", 100 * 1024**2),
        ("0.5Gi", 512 * 1024**2),
        ("5E", 5 * 10**18),
        ("2Ei", 2 * 1024**6),
        ("250n", Fraction(250, 10**9)),
        (" 8 ", 8),
        (8, 8),
        (1.5, Fraction(3, 2)),
    ],
)
def test_parse_quantity(text: str | int | float, value: Fraction | int) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["abc", "1.2.3", "Gi", "", "1Gb", "e3", "--1"])
def test_parse_quantity_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity(text)


def test_cpu_and_memory_rounding() -> None:
    assert cpu_millis("500m") == 500
    assert cpu_millis("0.0001") == 1  # rounded up, as the API server does
    assert cpu_millis("16") == 16000
    assert quantity_bytes("1.5Ki") == 1536
    assert quantity_bytes("1m") == 1


# --- nodes and classes -------------------------------------------------------------------


def test_parse_e2e_node() -> None:
    node = parse_node(next(n for n in E2E if n["metadata"]["name"] == "gpu-h100-a"))
    assert node.gpus == 8
    assert node.gpu_product == "NVIDIA-H100-80GB-HBM3"
    assert node.gpu_memory_mib == 81559
    assert node.compute_capability == (9, 0)
    assert node.memory_bytes == 2048 * 1024**3
    assert node.cpu_millis == 192_000
    assert node.ready and not node.unschedulable
    assert node.taints == (Taint("nvidia.com/gpu", "present", "NoSchedule"),)


def test_cpu_levels() -> None:
    levels = {n["metadata"]["name"]: parse_node(n).cpu_level for n in E2E}
    assert levels["cpu-avx512-a"] == "avx512"
    assert levels["cpu-avx2-a"] == "avx2"
    assert levels["cpu-arm64-a"] == "baseline"
    assert parse_node(cpu_node("x", level="amx")).cpu_level == "amx"
    assert parse_node(cpu_node("y", level="baseline")).cpu_level == "baseline"


def test_not_ready_and_cordoned_nodes() -> None:
    not_ready = parse_node(gpu_node("a", "NVIDIA-L4", 23034, 1, ready=False))
    assert not not_ready.ready
    cordoned = cpu_node("b")
    cordoned["spec"]["unschedulable"] = True
    assert parse_node(cordoned).unschedulable
    pool = [gpu_node("a", "NVIDIA-L4", 23034, 1, ready=False), cordoned, cpu_node("c")]
    placement = _place(pool, _spec(QWEN_GGUF))
    assert placement.hardware_class.nodes == ("c",)


def test_e2e_classes() -> None:
    classes = {c.id: c for c in group_classes(parse_node(n) for n in E2E)}
    assert sorted(classes) == [
        "cpu/amd64/avx2/c5a.4xlarge",
        "cpu/amd64/avx512/c6i.8xlarge",
        "cpu/arm64/baseline/c7g.4xlarge",
        "gpu/amd64/NVIDIA-A10G/x4",
        "gpu/amd64/NVIDIA-H100-80GB-HBM3/x8",
        "gpu/amd64/NVIDIA-L4/x1",
    ]
    h100 = classes["gpu/amd64/NVIDIA-H100-80GB-HBM3/x8"]
    assert h100.nodes == ("gpu-h100-a", "gpu-h100-b")
    assert (h100.gpus_per_node, h100.gpu_memory_mib) == (8, 81559)
    assert classes["gpu/amd64/NVIDIA-A10G/x4"].compute_capability == (8, 6)


EXTRA = [
    cpu_node("plain", level="baseline"),
    cpu_node("amx", level="amx", memory="512Gi"),
    gpu_node("a100-4", "NVIDIA-A100-SXM4-80GB", 81920, 4),
    gpu_node("a100-8", "NVIDIA-A100-SXM4-80GB", 81920, 8),
    gpu_node("l4-nolabel-count", "NVIDIA-L4", 23034, 1),
]
del EXTRA[-1]["metadata"]["labels"]["nvidia.com/gpu.count"]
AFFINITY_POOLS = {
    **POOLS,
    "everything": [node for pool in POOLS.values() for node in pool] + EXTRA,
}


@pytest.mark.parametrize(
    ("pool", "class_id"),
    [
        (name, cls.id)
        for name, pool in AFFINITY_POOLS.items()
        for cls in group_classes(parse_node(n) for n in pool)
    ],
)
def test_class_affinity_admits_exactly_its_nodes(pool: str, class_id: str) -> None:
    nodes = AFFINITY_POOLS[pool]
    cls = next(c for c in group_classes(parse_node(n) for n in nodes) if c.id == class_id)
    pod = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": cls.match_expressions()}]
                }
            }
        },
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    assert admitted(pod, nodes) == set(cls.nodes)


def test_tolerations_semantics() -> None:
    taint = Taint("dedicated", "ml", "NoSchedule")
    assert tolerates([{"key": "dedicated", "operator": "Equal", "value": "ml"}], taint)
    assert tolerates([{"key": "dedicated", "operator": "Exists"}], taint)
    assert tolerates([{"operator": "Exists"}], taint)
    assert not tolerates([{"key": "dedicated", "value": "web"}], taint)
    assert not tolerates([{"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}], taint)
    assert not tolerates([], taint)


@pytest.mark.parametrize(
    ("max_gpus", "arch", "explicit", "sizes"),
    [
        (8, None, None, [1, 2, 4, 8]),
        (4, None, None, [1, 2, 4]),
        (8, ModelArchitecture(attention_heads=28, kv_heads=4), None, [1, 2, 4]),
        (8, ModelArchitecture(attention_heads=32, kv_heads=8), None, [1, 2, 4, 8]),
        (8, ModelArchitecture(attention_heads=32, kv_heads=8), 3, []),
        (8, ModelArchitecture(attention_heads=24, kv_heads=8), 3, []),  # KV heads 8 vs 3
        (8, ModelArchitecture(attention_heads=24, kv_heads=24), 3, [3]),
        (2, None, 4, []),
    ],
)
def test_tensor_parallel_sizes(
    max_gpus: int, arch: ModelArchitecture | None, explicit: int | None, sizes: list[int]
) -> None:
    assert tensor_parallel_sizes(max_gpus, arch, explicit) == sizes


# --- placement tables ----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    pool: str
    spec: dict[str, Any]
    expect: dict[str, Any]
    artifact: ModelArchitecture | None = None
    nodes: tuple[str, ...] = field(default=())


CASES = [
    Case(
        "small gguf takes the smallest GPU (L4 before the 4-GPU A10G node)",
        "e2e",
        _spec(QWEN_GGUF),
        {"engine": "llamacpp", "accelerator": "gpu", "hardwareClass": "gpu/amd64/NVIDIA-L4/x1"},
    ),
    Case(
        "gguf on cpu when asked: smallest CPU class, amd64 avx2 before arm64",
        "e2e",
        _spec(QWEN_GGUF, hardware={"accelerator": "cpu"}),
        {
            "engine": "llamacpp",
            "accelerator": "cpu",
            "hardwareClass": "cpu/amd64/avx2/c5a.4xlarge",
            "threads": 6,  # sizing.cpu_threads for 4 GiB of weights, not 3/4 of 16 cores
            "gpuLayers": 0,
            "gpusPerReplica": 0,
        },
    ),
    Case(
        "8B BF16 safetensors: vLLM on one L4",
        "e2e",
        _spec(LLAMA_8B),
        {
            "engine": "vllm",
            "format": "safetensors",
            "quantization": "BF16",
            "hardwareClass": "gpu/amd64/NVIDIA-L4/x1",
            "tensorParallelSize": 1,
        },
    ),
    Case(
        "8B BF16 with long context: two A10G, tensor parallel 2",
        "e2e",
        _spec(LLAMA_8B, serving={"contextLength": 16384, "maxConcurrentRequests": 16}),
        {"hardwareClass": "gpu/amd64/NVIDIA-A10G/x4", "gpusPerReplica": 2, "tensorParallelSize": 2},
    ),
    Case(
        "70B BF16: four H100 (TP 2 leaves no room for the cache)",
        "e2e",
        _spec(LLAMA_70B),
        {
            "engine": "vllm",
            "hardwareClass": "gpu/amd64/NVIDIA-H100-80GB-HBM3/x8",
            "gpusPerReplica": 4,
            "tensorParallelSize": 4,
            "nodeCount": 2,
        },
    ),
    Case(
        "70B AWQ: one H100 is smaller than four A10G",
        "e2e",
        _spec({"source": "hf://hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"}),
        {
            "quantization": "AWQ",
            "hardwareClass": "gpu/amd64/NVIDIA-H100-80GB-HBM3/x8",
            "gpusPerReplica": 1,
        },
    ),
    Case(
        "FP8 runs on the L4 (Ada, 8.9)",
        "e2e",
        _spec({"source": "hf://neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8"}),
        {"quantization": "FP8", "hardwareClass": "gpu/amd64/NVIDIA-L4/x1"},
    ),
    Case(
        "70B Q4_K_M on cpu fits the 64 GiB node",
        "e2e",
        _spec(
            {"source": "hf://bartowski/Llama-3.1-70B-Instruct-GGUF", "quantization": "Q4_K_M"},
            engine="llamacpp",
            hardware={"accelerator": "cpu"},
        ),
        {"accelerator": "cpu", "hardwareClass": "cpu/amd64/avx2/c5a.4xlarge"},
    ),
    Case(
        "70B Q8_0 on cpu needs the 128 GiB AVX-512 node",
        "e2e",
        _spec(
            {"source": "hf://bartowski/Llama-3.1-70B-Instruct-GGUF", "quantization": "Q8_0"},
            hardware={"accelerator": "cpu"},
        ),
        {"hardwareClass": "cpu/amd64/avx512/c6i.8xlarge", "threads": 16},
    ),
    Case(
        "405B Q4_K_M: llama.cpp splits layers over four H100",
        "e2e",
        _spec({"source": "hf://x/Llama-3.1-405B-Instruct-GGUF", "quantization": "Q4_K_M"}),
        {"engine": "llamacpp", "gpusPerReplica": 4, "tensorParallelSize": 1},
    ),
    Case(
        "explicit GPU count is honoured",
        "e2e",
        _spec(LLAMA_8B, hardware={"gpu": {"count": 2}}),
        {"gpusPerReplica": 2, "tensorParallelSize": 2, "hardwareClass": "gpu/amd64/NVIDIA-A10G/x4"},
    ),
    Case(
        "products narrow the choice",
        "e2e",
        _spec(LLAMA_8B, hardware={"gpu": {"products": ["H100"]}}),
        {"hardwareClass": "gpu/amd64/NVIDIA-H100-80GB-HBM3/x8", "gpusPerReplica": 1},
    ),
    Case(
        "minMemoryGiB narrows the choice",
        "e2e",
        _spec(QWEN_GGUF, hardware={"gpu": {"minMemoryGiB": 40}}),
        {"hardwareClass": "gpu/amd64/NVIDIA-H100-80GB-HBM3/x8"},
    ),
    Case(
        "nodeSelector picks the arm64 node",
        "e2e",
        _spec(QWEN_GGUF, hardware={"nodeSelector": {"kubernetes.io/arch": "arm64"}}),
        {"accelerator": "cpu", "hardwareClass": "cpu/arm64/baseline/c7g.4xlarge"},
    ),
    Case(
        "the GGUF header decides layers, size and KV cache",
        "e2e",
        _spec(QWEN_GGUF),
        {"gpuLayers": 33, "parameters": 8_030_261_248},
        artifact=LLAMA_8B_CONFIG,
    ),
    Case(
        "cpu-only: gguf takes the smallest CPU node that holds it",
        "cpu-only",
        _spec(QWEN_GGUF),
        {"accelerator": "cpu", "hardwareClass": "cpu/amd64/avx2", "threads": 6},
    ),
    Case(
        "mixed: gguf on an L4",
        "mixed",
        _spec(QWEN_GGUF),
        {"accelerator": "gpu", "hardwareClass": "gpu/amd64/NVIDIA-L4/x1", "nodeCount": 2},
    ),
    Case(
        "mixed: too big for the L4s, so llama.cpp on CPU",
        "mixed",
        _spec({"source": "hf://Qwen/Qwen2.5-32B-Instruct-GGUF", "quantization": "Q4_K_M"}),
        {"accelerator": "cpu", "hardwareClass": "cpu/amd64/avx512/c6i.4xlarge", "nodeCount": 2},
    ),
    Case(
        "small GPUs: 32B gguf falls back to CPU",
        "small-gpus",
        _spec({"source": "hf://Qwen/Qwen2.5-32B-Instruct-GGUF", "quantization": "Q4_K_M"}),
        {"accelerator": "cpu", "hardwareClass": "cpu/amd64/avx512"},
    ),
    Case(
        "small GPUs: AWQ 8B fits a T4 (Turing runs AWQ)",
        "small-gpus",
        _spec({"source": "hf://hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4"}),
        {"engine": "vllm", "hardwareClass": "gpu/amd64/Tesla-T4/x1", "nodeCount": 2},
    ),
    Case(
        "arm: gguf on arm64 CPU",
        "arm",
        _spec(QWEN_GGUF, hardware={"accelerator": "cpu"}),
        {"accelerator": "cpu", "hardwareClass": "cpu/arm64/baseline/c7g.4xlarge"},
    ),
    Case(
        "arm: llama.cpp image runs on the arm64 GH200",
        "arm",
        _spec(QWEN_GGUF),
        {"accelerator": "gpu", "hardwareClass": "gpu/arm64/NVIDIA-GH200-480GB/x1"},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_placement(case: Case) -> None:
    pool = POOLS[case.pool]
    placement = _place(pool, case.spec, case.artifact)
    decision = placement.decision()
    for key, value in case.expect.items():
        if key == "hardwareClass":
            assert decision[key].startswith(value), decision
        else:
            assert decision[key] == value, (key, decision)
    # The rendered affinity admits every node of the chosen class and no other.
    assert admitted(_pod_spec(placement), pool) == set(placement.hardware_class.nodes)
    # The replica fits what the class offers.
    cls = placement.hardware_class
    if placement.gpus_per_replica:
        usable = placement.gpus_per_replica * cls.gpu_memory_bytes * 0.9
        assert decision["estimatedMemoryBytes"] <= usable
    else:
        assert decision["estimatedMemoryBytes"] <= cls.memory_bytes


@dataclass(frozen=True)
class Refusal:
    name: str
    pool: str
    spec: dict[str, Any]
    field: str
    says: tuple[str, ...]
    artifact: ModelArchitecture | None = None


REFUSALS = [
    Refusal(
        "safetensors on a CPU-only cluster",
        "cpu-only",
        _spec(LLAMA_8B),
        "spec.model.format",
        ("vLLM, which needs a GPU", "largest CPU node has 128.0 GiB", "GGUF"),
    ),
    Refusal(
        "AWQ on a CPU-only cluster names the quantization",
        "cpu-only",
        _spec({"source": "hf://a/Llama-3.1-8B-AWQ", "quantization": "AWQ"}),
        "spec.model.quantization",
        ("vLLM",),
    ),
    Refusal(
        "gpu asked for on a CPU-only cluster",
        "cpu-only",
        _spec(QWEN_GGUF, hardware={"accelerator": "gpu"}),
        "spec.hardware.accelerator",
        ("gpu was asked for",),
    ),
    Refusal(
        "GPU settings on a CPU-only cluster",
        "cpu-only",
        _spec(QWEN_GGUF, hardware={"gpu": {"count": 1}}),
        "spec.hardware.gpu",
        ("GPU settings",),
    ),
    Refusal(
        "FP8 on Ampere only",
        "e2e",
        _spec(
            {"source": "hf://neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8"},
            hardware={"gpu": {"products": ["A10G"]}},
        ),
        "spec.model.quantization",
        ("compute capability 8.9", "NVIDIA-A10G (8.6)"),
    ),
    Refusal(
        "BF16 on Turing",
        "small-gpus",
        _spec(LLAMA_8B),
        "spec.model.quantization",
        ("compute capability 8.0", "Tesla-T4 (7.5)"),
    ),
    Refusal(
        "F16 8B does not fit a T4",
        "small-gpus",
        _spec({**LLAMA_8B, "quantization": "F16"}),
        "spec.model.quantization",
        ("needs", "1 x Tesla-T4", "smaller quantization"),
    ),
    Refusal(
        "405B F16 fits nowhere",
        "e2e",
        _spec({"source": "hf://meta-llama/Llama-3.1-405B-Instruct", "quantization": "F16"}),
        "spec.model.quantization",
        ("8 x NVIDIA-H100-80GB-HBM3 (79.6 GiB each", "754.4 GiB"),
    ),
    Refusal(
        "context x parallel too large",
        "e2e",
        _spec(QWEN_GGUF, serving={"contextLength": 131072, "maxConcurrentRequests": 64}),
        "spec.serving.contextLength",
        ("131072 tokens x 64 sequences", "lower contextLength"),
    ),
    Refusal(
        "more GPUs than any node has",
        "e2e",
        _spec(LLAMA_8B, hardware={"gpu": {"count": 16}}),
        "spec.hardware.gpu.count",
        ("largest GPU node has 8",),
    ),
    Refusal(
        "GPU count that does not divide the heads",
        "e2e",
        _spec(LLAMA_8B, hardware={"gpu": {"count": 3}}),
        "spec.hardware.gpu.count",
        ("32 attention heads",),
        artifact=LLAMA_8B_CONFIG,
    ),
    Refusal(
        "too few GPUs asked for",
        "e2e",
        _spec(LLAMA_70B, hardware={"gpu": {"count": 1}}),
        "spec.hardware.gpu.count",
        ("do not hold the model",),
    ),
    Refusal(
        "unknown product",
        "e2e",
        _spec(LLAMA_8B, hardware={"gpu": {"products": ["H200"]}}),
        "spec.hardware.gpu.products",
        ("NVIDIA-L4",),
    ),
    Refusal(
        "more GPU memory than any GPU has",
        "e2e",
        _spec(LLAMA_8B, hardware={"gpu": {"minMemoryGiB": 100}}),
        "spec.hardware.gpu.minMemoryGiB",
        ("79.6 GiB",),
    ),
    Refusal(
        "nodeSelector matches nothing",
        "e2e",
        _spec(QWEN_GGUF, hardware={"nodeSelector": {"pool": "missing"}}),
        "spec.hardware.nodeSelector",
        ("gpu-h100-a: nodeSelector",),
    ),
    Refusal(
        "vLLM image is amd64 only",
        "arm",
        _spec(LLAMA_8B),
        "spec.model.format",
        ("amd64",),
    ),
    Refusal(
        "no size hint and none in the name",
        "e2e",
        _spec({"source": "hf://openai-community/gpt2"}),
        "spec.model.parameters",
        ("7B",),
    ),
    Refusal(
        "context longer than the model was trained for",
        "e2e",
        _spec(LLAMA_8B, serving={"contextLength": 262144}),
        "spec.serving.contextLength",
        ("131072",),
        artifact=LLAMA_8B_CONFIG,
    ),
    Refusal(
        "GPU resources go through hardware.gpu.count",
        "e2e",
        _spec(LLAMA_8B, serving={"resources": {"limits": {"nvidia.com/gpu": 2}}}),
        "spec.serving.resources",
        ("spec.hardware.gpu.count",),
    ),
    Refusal(
        "a memory override larger than every CPU node",
        "cpu-only",
        _spec(QWEN_GGUF, serving={"resources": {"requests": {"memory": "1Ti"}}}),
        "spec.model.quantization",
        ("128.0 GiB",),
    ),
]


@pytest.mark.parametrize("refusal", REFUSALS, ids=lambda r: r.name)
def test_refusal(refusal: Refusal) -> None:
    with pytest.raises(PlacementRefusal) as caught:
        _place(POOLS[refusal.pool], refusal.spec, refusal.artifact)
    assert caught.value.field_path == refusal.field, caught.value
    for phrase in refusal.says:
        assert phrase in caught.value.message, caught.value.message
    assert str(caught.value).startswith(refusal.field + ": ")


def test_no_nodes_at_all() -> None:
    with pytest.raises(PlacementRefusal, match="the cluster has no nodes"):
        _place([], _spec(QWEN_GGUF))


def test_taint_without_toleration_excludes_the_node() -> None:
    tainted = cpu_node("ml", memory="64Gi")
    tainted["spec"]["taints"] = [{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}]
    with pytest.raises(PlacementRefusal) as caught:
        _place([tainted], _spec(QWEN_GGUF))
    assert caught.value.field_path == "spec.hardware.tolerations"
    assert "taint dedicated=ml:NoSchedule" in caught.value.message
    toleration = {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    placement = _place([tainted], _spec(QWEN_GGUF, hardware={"tolerations": [toleration]}))
    assert placement.tolerations == [toleration]
    assert admitted(_pod_spec(placement), [tainted]) == {"ml"}


def test_resources_cpu_placement() -> None:
    placement = _place(CPU_ONLY, _spec(QWEN_GGUF))
    memory = placement.memory.total_bytes
    assert placement.requests == {"cpu": "6", "memory": f"{-(-memory // 2**20)}Mi"}
    assert placement.limits == placement.requests
    assert placement.tolerations == []


def test_resources_gpu_placement() -> None:
    placement = _place(E2E, _spec(LLAMA_70B))
    assert placement.requests["nvidia.com/gpu"] == placement.limits["nvidia.com/gpu"] == "4"
    assert placement.requests["cpu"] == "16"
    assert placement.requests["memory"] == f"{(8 + 4 * 4) * 1024}Mi"
    assert "cpu" not in placement.limits  # no CPU throttling of the API server and tokenizer
    assert placement.tolerations == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_resource_overrides_replace_key_by_key() -> None:
    spec = _spec(
        QWEN_GGUF,
        hardware={"accelerator": "cpu"},
        serving={"resources": {"requests": {"cpu": "4"}, "limits": {"cpu": "8"}}},
    )
    placement = _place(CPU_ONLY, spec)
    assert placement.threads == 4
    assert placement.requests["cpu"] == "4"
    assert placement.limits["cpu"] == "8"
    assert placement.requests["memory"] == placement.limits["memory"]


def test_decision_shape() -> None:
    llama = _place(E2E, _spec(QWEN_GGUF)).decision()
    vllm = _place(E2E, _spec(LLAMA_8B)).decision()
    required = {
        "engine",
        "accelerator",
        "gpusPerReplica",
        "tensorParallelSize",
        "estimatedMemoryBytes",
        "hardwareClass",
        "nodeCount",
        "reason",
        "contextLength",
        "parallel",
    }
    assert required <= set(llama) and required <= set(vllm)
    assert {"threads", "gpuLayers"} <= set(llama)
    assert not {"threads", "gpuLayers"} & set(vllm)
    assert (
        llama["memory"]["weightsBytes"]
        + llama["memory"]["kvCacheBytes"]
        + llama["memory"]["overheadBytes"]
        == llama["estimatedMemoryBytes"]
    )
    assert "smallest GPU class" in llama["reason"]


def test_fallback_reason_says_why() -> None:
    spec = _spec({"source": "hf://Qwen/Qwen2.5-32B-Instruct-GGUF", "quantization": "Q4_K_M"})
    assert "no GPU class holds it" in _place(MIXED, spec).reason


@pytest.mark.parametrize(
    ("memory_mib", "minimum", "admitted_"),
    [
        (81559, 80, True),  # H100 80GB HBM3 as GFD reports it
        (23034, 24, True),  # L4 24GB
        (23028, 24, True),  # A10G 24GB
        (46068, 48, True),  # L40S 48GB
        (15360, 16, True),  # T4 16GB
        (81559, 86, False),
        (23034, 25, False),
    ],
)
def test_min_memory_is_nominal(memory_mib: int, minimum: int, admitted_: bool) -> None:
    assert nominal_memory_at_least(memory_mib, minimum) is admitted_
